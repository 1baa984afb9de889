"""Results of a run: one JSON line per cell, appended and flushed the moment the cell finishes, then the
same rows as CSV and Parquet tables (polars) and a Markdown summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COLUMNS = (
    "model",
    "category",
    "framework",
    "size",
    "engine",
    "precision",
    "batch_size",
    "status",
    "error",
    "iterations",
    "latency_ms_mean",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p95",
    "latency_ms_p99",
    "latency_ms_min",
    "latency_ms_max",
    "latency_ms_std",
    "throughput_samples_per_s",
    "flops_per_batch",
    "mac_flops_per_batch",
    "flops_per_s",
    "params",
    "bytes_per_batch",
    "bytes_model",
    "arith_intensity",
    "accuracy_metric",
    "accuracy_value",
    "accuracy_cosine",
    "accuracy_max_abs_error",
    "accuracy_samples",
    "cpu_isa",
    "int8_weight_bits",
    "paper_flops_per_sample",
    "flops_ratio_to_paper",
    "engine_build_s",
    "engine_settings",
    "artifact_sha256",
    "cell_id",
    "finished_at",
)


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class ResultsFile:
    """``results.jsonl`` in a run directory, plus ``samples.jsonl`` with each cell's raw latencies."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "results.jsonl"
        self.samples_path = self.out_dir / "samples.jsonl"

    def append(self, row: dict[str, Any], samples_ms: list[float] | None = None) -> None:
        """Write one finished cell now, flushed to disk, so a crash later loses nothing measured."""
        if samples_ms is not None:
            _append_line(self.samples_path, {"cell_id": row["cell_id"], "samples_ms": samples_ms})
        _append_line(self.path, row)

    def rows(self) -> list[dict[str, Any]]:
        """Every row written so far; a truncated last line (a crash mid-write) is ignored."""
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def finished_ids(self) -> set[str]:
        """Cell ids already in the file, for ``--resume``."""
        return {row["cell_id"] for row in self.rows() if "cell_id" in row}


def to_frame(rows: Iterable[dict[str, Any]]):
    """The rows as a polars DataFrame with ``COLUMNS`` first (missing ones as nulls), extras after."""
    import polars as pl

    rows = list(rows)
    extras = sorted({k for row in rows for k in row} - set(COLUMNS))
    ordered = [{c: row.get(c) for c in (*COLUMNS, *extras)} for row in rows]
    return pl.DataFrame(ordered, infer_schema_length=None)


def write_tables(out_dir: Path) -> Any:
    """Write ``results.csv`` and ``results.parquet`` from ``results.jsonl``; returns the DataFrame."""
    results = ResultsFile(out_dir)
    frame = to_frame(results.rows())
    frame.write_csv(results.out_dir / "results.csv")
    frame.write_parquet(results.out_dir / "results.parquet")
    return frame


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


# (key, title) of the columns that say which cell a row is and how fast it ran: the start of the run's
# summary.md (below) and of the report's Summary table (bench/report.py), which add their own columns.
CELL_COLUMNS = (
    ("model", "model"),
    ("size", "size"),
    ("engine", "engine"),
    ("precision", "prec"),
    ("batch_size", "batch"),
    ("status", "status"),
    ("latency_ms_p50", "p50 ms"),
    ("latency_ms_p99", "p99 ms"),
    ("throughput_samples_per_s", "samples/s"),
    ("flops_per_s", "FLOP/s"),
)
SUMMARY_COLUMNS = (
    *CELL_COLUMNS,
    ("speedup_vs_fp32", "x fp32"),
    ("accuracy_metric", "accuracy metric"),
    ("accuracy_value", "value"),
    ("accuracy_cosine", "cosine"),
    ("error", "reason"),
)


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the run: one line per cell, with speed-up over FP32 of the same engine/batch."""
    fp32 = {
        (r["model"], r["size"], r["engine"], r["batch_size"]): r.get("latency_ms_p50")
        for r in rows
        if r.get("precision") == "fp32" and r.get("status") == "ok"
    }
    lines = [
        "| " + " | ".join(title for _, title in SUMMARY_COLUMNS) + " |",
        "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|",
    ]
    for row in rows:
        base = fp32.get((row.get("model"), row.get("size"), row.get("engine"), row.get("batch_size")))
        view = dict(row)
        if base and row.get("latency_ms_p50"):
            view["speedup_vs_fp32"] = base / row["latency_ms_p50"]
        if view.get("error"):
            view["error"] = str(view["error"]).replace("|", "/")[:120]
        lines.append("| " + " | ".join(_fmt(view.get(key)) for key, _ in SUMMARY_COLUMNS) + " |")
    return "\n".join(lines) + "\n"
