"""FLOPs and parameters of the FP32 exports at chosen batch sizes, against the paper's Table I, without timing
anything (``suite.py flops``): exports what the store lacks, counts in child processes, returns one record per
model and batch size and writes them as CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.paper import paper_comparison
from common import precisions
from common.paths import atomic_path
from onnx_models import model_spec
from onnx_models.artifacts import Artifact, CalibrationSettings, ExportSettings


def count_models(
    batches: dict[str, list[int]], size: str, export: ExportSettings, calib: CalibrationSettings, jobs: int = 1
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], str]]:
    """Export each model of ``batches`` ({model: batch sizes}) at ``size`` (``jobs`` at once) and count its
    FLOPs at each batch size. Returns (one record per model and batch that was counted: FLOPs, MAC FLOPs,
    parameters, the paper's FLOPs per batch and our ratio to it, the ops not counted; {(model, batch): why it
    was not counted})."""
    from bench.executor import LocalExecutor, build_models

    fp32 = {model: Artifact(model, size, precisions.BASE) for model in batches}
    failed = build_models(list(batches), fp32.values(), export, calib, "export", jobs)
    exported = {m: b for m, b in batches.items() if fp32[m] not in failed}
    facts = LocalExecutor(jobs).facts(exported, size, (), accuracy_samples=None)
    records, failures = [], {}
    for model, sizes in batches.items():
        spec = model_spec(model)
        for batch in sizes:
            cost = facts.get((model, batch), {})
            error = failed.get(fp32[model]) or cost.get("flops_error")
            if error:
                failures[(model, batch)] = error
                continue
            per_sample, ratio = paper_comparison(spec.paper_model, size, cost["flops_per_batch"], batch)
            records.append(
                {
                    "model": model,
                    "size": size,
                    "batch_size": batch,
                    "flops_per_batch": cost["flops_per_batch"],
                    "mac_flops_per_batch": cost["mac_flops_per_batch"],
                    "params": cost["params"],
                    "paper_model": spec.paper_model,
                    "paper_flops_per_batch": per_sample * batch if per_sample else None,
                    "flops_ratio_to_paper": ratio,
                    "uncounted_ops": ",".join(cost["uncounted_ops"]),
                }
            )
    return records, failures


def write_csv(records: list[dict[str, Any]], path: Path) -> Path:
    """``records`` as a CSV file at ``path`` (its directory made, the file replaced atomically); returns it."""
    import polars as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pl.DataFrame(records).write_csv(tmp)
    return path
