"""The answer a report opens with: for each engine and model, which precision can be deployed, how much faster
it is than FP32 and what it keeps of FP32's accuracy.

Pure functions over result rows (dicts as in ``results.jsonl``); nothing here reads files or draws.

- A **point** is one (engine, model, size, precision): its speed-up over FP32 and the accuracy it retains
  (``analysis.accuracy.retained``: the ratio to FP32 of the metric against labels for a trained model, else
  the agreement with FP32, else the cosine similarity of the outputs). Where a precision was measured at
  several batch sizes (or LoadGen thread counts), its speed-up is the geometric mean of the per-cell ratios
  and its accuracy the lowest of its cells: one cell below the threshold fails the precision.
- A point **passes** when its retained accuracy >= the threshold (MLPerf's 99% of FP32 by default).
- The **verdict** of a model is its fastest passing precision (FP32 itself when no lower precision passes,
  or nothing when FP32 did not run).

Speed-ups use the closed loop's rows (p50 latency ratio) where the model has any, else the rows of its first
LoadGen scenario (throughput ratio), so a run of only ``--scenario offline`` still gets an answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from analysis.accuracy import retained, retained_and_basis
from common import precisions


def speed_key(row: dict[str, Any]) -> tuple:
    """The cell a row's precision is compared within: model, size, engine, batch size, scenario, concurrency."""
    return (
        row.get("model"),
        row.get("size"),
        row.get("engine"),
        row.get("batch_size"),
        row.get("scenario"),
        row.get("concurrency"),
    )


def speedup(row: dict[str, Any], fp32: dict[str, Any] | None) -> float | None:
    """How much faster ``row`` is than its FP32 twin: the ratio of p50 latencies in the closed loop (as the
    paper compares), of throughputs in LoadGen scenarios (an offline run has no per-query latency)."""
    if not fp32 or row.get("status") != "ok" or fp32.get("status") != "ok":
        return None
    if row.get("scenario") == "latency":
        base, other = fp32.get("latency_ms_p50"), row.get("latency_ms_p50")
        return base / other if base and other else None
    base, other = fp32.get("throughput_samples_per_s"), row.get("throughput_samples_per_s")
    return other / base if base and other else None


def passes(row: dict[str, Any], threshold: float) -> bool | None:
    """Whether one cell keeps at least ``threshold`` of FP32's accuracy (``retained``); None where no accuracy
    was measured. The rule of the verdict, also used to mark speed-ups in the report's tables."""
    kept = retained(row)
    return None if kept is None else kept >= threshold


@dataclass(frozen=True)
class Point:
    """One precision of one model on one engine: what the answer chart draws and the verdict chooses from."""

    engine: str
    model: str
    size: str
    precision: str
    speedup: float | None  # geometric mean over the cells' ratios to FP32; None where none was timed
    retained: float | None  # the lowest retained accuracy over the cells; None where none was measured
    passes: bool | None  # retained >= threshold; None where no accuracy was measured
    basis: str  # what the accuracy is against: "labels (auc)" or "FP32 (top1_agreement)"


@dataclass(frozen=True)
class Verdict:
    """A model's answer on one engine: its fastest passing precision, or None with the reason."""

    engine: str
    model: str
    size: str
    best: Point | None
    reason: str  # why ``best`` was chosen or why there is none


def basis(row: dict[str, Any]) -> str:
    """What ``retained(row)`` is measured against, for people: ``labels (auc)`` for a trained model,
    ``FP32 (top1_agreement)`` for an agreement metric, ``FP32 (cosine)`` where the metric is an error."""
    return retained_and_basis(row)[1]


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def points(rows: Iterable[dict[str, Any]], threshold: float) -> list[Point]:
    """Every (engine, model, size, precision) with an ok row, FP32 included (at speed-up 1), in the order the
    rows first name them, precisions in FP32, FP16, INT8 order."""
    rows = [r for r in rows if r.get("status") == "ok"]
    # The scenario each (engine, model, size) is judged in: the closed loop where it ran, else the first one.
    chosen: dict[tuple, str] = {}
    for row in rows:
        key = (row.get("engine"), row.get("model"), row.get("size"))
        if key not in chosen or row.get("scenario") == "latency":
            chosen[key] = row.get("scenario")
    fp32 = {speed_key(r): r for r in rows if r.get("precision") == precisions.BASE}
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row.get("engine"), row.get("model"), row.get("size"))
        if row.get("scenario") == chosen[key]:
            grouped.setdefault((*key, row.get("precision")), []).append(row)
    first_seen = {key: i for i, key in enumerate(chosen)}
    keys = sorted(grouped, key=lambda k: (first_seen[k[:3]], precisions.order(k[3]), str(k[3])))
    out = []
    for engine, model, size, precision in keys:
        cells = grouped[(engine, model, size, precision)]
        ratios = [speedup(r, fp32.get(speed_key(r))) for r in cells]
        kept = [k for k in (retained(r) for r in cells) if k is not None]
        worst = min(kept) if kept else None
        out.append(
            Point(
                engine=str(engine),
                model=str(model),
                size=str(size),
                precision=str(precision),
                speedup=_geomean([r for r in ratios if r is not None]),
                retained=worst,
                passes=None if worst is None else worst >= threshold,
                basis=basis(cells[0]),
            )
        )
    return out


def verdicts(all_points: Iterable[Point]) -> list[Verdict]:
    """Per (engine, model, size) in order: the passing point with the highest speed-up (FP32, at 1, when it is
    the fastest that passes), or no choice with the reason."""
    grouped: dict[tuple, list[Point]] = {}
    for point in all_points:
        grouped.setdefault((point.engine, point.model, point.size), []).append(point)
    out = []
    for (engine, model, size), members in grouped.items():
        if not any(p.precision == precisions.BASE and p.speedup for p in members):
            out.append(Verdict(engine, model, size, None, "FP32 did not run: no speed-up to compare"))
            continue
        passing = [p for p in members if p.passes and p.speedup]
        if not passing:
            measured = any(p.passes is not None for p in members)
            reason = "no precision passes the threshold" if measured else "no accuracy measured"
            out.append(Verdict(engine, model, size, None, reason))
            continue
        best = max(passing, key=lambda p: (p.speedup, -precisions.order(p.precision)))
        failed = [p.precision for p in members if p.passes is False]
        faster_failed = [p.precision for p in members if p.passes is False and (p.speedup or 0) > best.speedup]
        if best.precision == precisions.BASE:
            reason = "no lower precision is faster and passes" + (f" ({', '.join(failed)} fail)" if failed else "")
        else:
            reason = "fastest that passes" + (f"; faster {', '.join(faster_failed)} fails" if faster_failed else "")
        out.append(Verdict(engine, model, size, best, reason))
    return out
