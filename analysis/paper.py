"""The AI Matrix paper's Table I (``analysis/table1.csv``, copied from the paper as data) and our ratio to it.

The paper's counts are hardware counts per batch measured on a V100; the suite compares FLOPs per sample, so
a model counted at any batch size can be set against them.
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

TABLE1 = Path(__file__).resolve().parent / "table1.csv"


@cache
def table1() -> dict[str, dict[str, str]]:
    """Table I's rows (strings, as in the CSV) keyed by the paper's model name (``ResNet50``, ``BERT``...)."""
    with open(TABLE1) as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


def paper_flops_per_sample(paper_model: str | None) -> float | None:
    """The paper's FLOPs per sample (its FLOPs per batch / its batch size) for ``paper_model``, or None."""
    row = table1().get(paper_model or "")
    if not row:
        return None
    return float(row["flops_per_batch"]) / float(row["batch_size"])


def flops_ratio(flops_per_batch: float | None, batch_size: int, paper_model: str | None) -> float | None:
    """Our FLOPs per sample over the paper's, or None when either side is unknown."""
    paper = paper_flops_per_sample(paper_model)
    if not paper or not flops_per_batch:
        return None
    return flops_per_batch / batch_size / paper


def paper_comparison(
    paper_model: str | None, size: str, flops_per_batch: float | None, batch_size: int
) -> tuple[float | None, float | None]:
    """(the paper's FLOPs per sample, our FLOPs per sample over it) for a model of ``size``; both None for a
    tiny model, whose shrunk architecture the paper's count does not describe, or where either side is unknown."""
    per_sample = paper_flops_per_sample(paper_model) if size == "full" else None
    if not per_sample:
        return None, None
    return per_sample, flops_ratio(flops_per_batch, batch_size, paper_model)
