"""Results of a run: one JSON line per cell, appended and flushed the moment the cell finishes, then the
same rows as CSV and Parquet tables (polars) and a Markdown summary.

A results directory belongs to one run at a time (``ResultsFile.lock``) and to one set of settings
(``env.json``; a resume must match it, see ``resume_env``). A cell may have several rows (``--retry-failed``
appends a new one); the last one is the cell's current row for every reader.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from analysis.quant_coverage import share_text
from analysis.verdict import speed_key, speedup
from bench.row import COLUMNS
from common import precisions
from common.numbers import fmt
from common.paths import atomic_path


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path``, flushed to disk.

    A process killed in the middle of a write leaves a last line without its newline; appending straight
    after it would glue this record onto the fragment and make both unreadable. So the torn line is ended
    first: the fragment stays one unreadable line (readers skip it) and this record is a line of its own.
    """
    line = (json.dumps(record) + "\n").encode()
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                line = b"\n" + line
        # One write in append mode: it lands at the end of the file whatever the position is.
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


class ResultsBusy(Exception):
    """The results directory is locked by another run; ``pid`` is that run's process id (None if unknown)."""

    def __init__(self, out_dir: Path, pid: int | None):
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"{out_dir} is in use by another run ({holder}); wait for it or choose another --out")


class ResumeMismatch(Exception):
    """A resume cannot continue this results directory: its settings differ, or they cannot be read."""


class ResultsLock:
    """An exclusive ``flock`` on ``<out>/.lock``, held until ``release()``, the end of a ``with`` block, or the
    end of the process (the kernel drops the lock with the file descriptor, also on a crash or SIGKILL)."""

    def __init__(self, handle):
        self._handle = handle

    def release(self) -> None:
        """Give the directory back (idempotent). The lock file stays: removing it would race a new holder."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ResultsLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


class ResultsFile:
    """``results.jsonl`` in a run directory, plus ``samples.jsonl`` with each cell's raw latencies."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "results.jsonl"
        self.samples_path = self.out_dir / "samples.jsonl"
        self.env_path = self.out_dir / "env.json"
        self.lock_path = self.out_dir / ".lock"

    def lock(self) -> ResultsLock:
        """Take the directory for this run now, without waiting; returns the held lock (a context manager).

        Raises ``ResultsBusy`` naming the holder's pid when another run (or another open of the lock in this
        process) holds it. Two runs appending to one ``results.jsonl`` would mix their rows."""
        # "a+" creates the file without truncating it: the holder's pid must survive our failed attempt.
        handle = open(self.lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            raise ResultsBusy(self.out_dir, int(text) if text.isdigit() else None) from None
        except BaseException:
            handle.close()
            raise
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        return ResultsLock(handle)

    def append(self, row: dict[str, Any], samples_ms: list[float] | None = None) -> None:
        """Write one finished cell now, flushed to disk, so a crash later loses nothing measured."""
        if samples_ms is not None:
            _append_line(self.samples_path, {"cell_id": row["cell_id"], "samples_ms": samples_ms})
        _append_line(self.path, row)

    def all_rows(self) -> list[dict[str, Any]]:
        """Every row in the file in file order, earlier rows of a retried cell included; lines that are not a
        JSON object (a line torn by a crash mid-write) are skipped. Rows written before scenarios existed get
        the ``scenario`` and ``concurrency`` they were measured with (the closed loop, one thread), so no reader
        has to guess them."""
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append({**row, **{k: v for k, v in _ROWS_BEFORE_SCENARIOS.items() if row.get(k) is None}})
        return rows

    def rows(self) -> list[dict[str, Any]]:
        """The current row of each cell: the last one written for its ``cell_id`` (a retry appends a new row
        and leaves the old one in the file), placed where the cell's first row was, so the order stays the
        run's matrix order. Rows without a ``cell_id`` are kept as they are."""
        current: dict[Any, dict[str, Any]] = {}
        for index, row in enumerate(self.all_rows()):
            # Updating an existing dict key keeps its first position: last value, first place.
            current[row.get("cell_id", ("no cell id", index))] = row
        return list(current.values())

    def finished_ids(self, except_failed: bool = False) -> set[str]:
        """Cell ids already in the file, for ``--resume``; with ``except_failed``, cells whose current row
        failed are left out so that the resume measures them again (``--retry-failed``)."""
        return {
            row["cell_id"]
            for row in self.rows()
            if "cell_id" in row and not (except_failed and row.get("status") == "failed")
        }

    def read_env(self) -> dict[str, Any] | None:
        """``env.json`` as a dict, or None when it is missing or unreadable."""
        try:
            env = json.loads(self.env_path.read_text())
        except (OSError, ValueError):
            return None
        return env if isinstance(env, dict) else None

    def write_env(self, env: dict[str, Any]) -> None:
        """Write ``env.json`` atomically."""
        with atomic_path(self.env_path) as tmp:
            tmp.write_text(json.dumps(env, indent=2))

    def write_node_env(self, node: str, env: dict[str, Any]) -> None:
        """Write ``nodes/<node>.json`` atomically: the environment of cluster node ``node`` (the rows' ``node``
        column), as ``env.json`` describes the driver's machine. A resume rewrites it with the same name."""
        if not node or Path(node).name != node or node.startswith("."):
            raise ValueError(f"a node name is a plain file name, not {node!r}")
        path = self.out_dir / "nodes" / f"{node}.json"
        path.parent.mkdir(exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(env, indent=2))

    def node_env(self, node: str) -> dict[str, Any] | None:
        """The environment ``write_node_env`` wrote for ``node``, or None."""
        try:
            return json.loads((self.out_dir / "nodes" / f"{node}.json").read_text())
        except (OSError, ValueError):
            return None


# The settings that say which cells a run measures rather than how it measures them. A resume may name other
# cells (a subset, or new models, engines, precisions or batch sizes); env.json then records the union, so it
# covers every row in the directory. Every other setting, and the environment that decides the numbers
# (python, package versions, CPU model, GPU names), must be the same, or the directory would mix rows
# measured in two ways under one env.json.
MATRIX_SETTINGS = ("models", "engines", "precisions", "batch_sizes", "scenarios", "concurrency")
# Directories written before scenarios existed hold closed-loop rows at concurrency 1: what their env.json's
# matrix and their rows lack is filled with that.
_MATRIX_BEFORE = {"scenarios": ["latency"], "concurrency": [1]}
_ROWS_BEFORE_SCENARIOS = {"scenario": "latency", "concurrency": 1}
# Settings that directories written before them were measured with: one timing window per cell.
_SETTINGS_BEFORE = {"rounds": 1}
# Settings that only LoadGen cells use: a directory without them has no such rows yet.
_LOADGEN_SETTINGS = ("load",)


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _measured_by(env: dict[str, Any]) -> dict[str, Any]:
    """The parts of an environment that a resume must keep, flattened to ``a.b`` keys."""
    settings = {**_SETTINGS_BEFORE, **_as_dict(env.get("settings"))}
    settings = {k: v for k, v in settings.items() if k not in MATRIX_SETTINGS}
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        # Only leaves count: an empty dict of options and an absent one are the same settings.
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", settings)
    walk("python", env.get("python"))
    walk("packages", _as_dict(env.get("packages")))
    walk("cpu", _as_dict(env.get("cpu")).get("model"))
    gpus = _as_dict(env.get("gpu")).get("gpus")
    walk("gpus", [_as_dict(gpu).get("name") for gpu in gpus] if isinstance(gpus, list) else [])
    return flat


def _union(stored: Any, current: Any) -> Any:
    """``stored`` extended by what ``current`` adds: lists keep their order with new items appended; dicts
    (batch sizes per model) merge per key."""
    if isinstance(stored, dict) and isinstance(current, dict):
        merged = dict(stored)
        for key, value in current.items():
            merged[key] = _union(stored[key], value) if key in stored else value
        return merged
    if isinstance(stored, list) and isinstance(current, list):
        return stored + [item for item in current if item not in stored]
    return current


def resume_env(stored: dict[str, Any] | None, current: dict[str, Any], env_path: Path) -> dict[str, Any]:
    """The env.json of a resumed run: ``stored`` (what the directory's rows were measured with) with the
    matrix settings widened to ``current``'s cells. ``current`` is this run's ``environment(settings)``.

    Raises ``ResumeMismatch`` (one line, naming each difference as ``key old -> new``) when a setting other
    than the matrix, or the environment that decides the numbers, differs, or when ``stored`` is None.
    """
    if stored is None or not isinstance(stored.get("settings"), dict):
        raise ResumeMismatch(
            f"cannot --resume: {env_path} is missing or unreadable, so the settings of the rows there are "
            "unknown; choose another --out"
        )
    # Compare as JSON sees them (tuples are lists, Paths strings), the way env.json stored them.
    current = json.loads(json.dumps(current, default=str))
    old, new = _measured_by(stored), _measured_by(current)
    # A resume that adds LoadGen scenarios brings their settings in; one whose directory has them must keep them.
    # Directories written before files' contents were recorded cannot tell: theirs are not compared.
    for group in (*_LOADGEN_SETTINGS, "files_sha256"):
        if group not in stored["settings"]:
            new = {k: v for k, v in new.items() if not k.startswith(f"{group}.")}
    changes = [
        f"{key} {old.get(key, 'unset')} -> {new.get(key, 'unset')}"
        for key in {**old, **new}
        if key not in old or key not in new or old[key] != new[key]
    ]
    if changes:
        raise ResumeMismatch(
            f"--resume with different settings than {env_path}: {', '.join(changes)}; "
            "use the same options or another --out"
        )
    merged = json.loads(json.dumps(stored))
    for group in _LOADGEN_SETTINGS:
        if group in current["settings"]:
            merged["settings"].setdefault(group, current["settings"][group])
    for key in MATRIX_SETTINGS:
        before = stored["settings"].get(key, _MATRIX_BEFORE.get(key))
        merged["settings"][key] = _union(before, current["settings"].get(key))
    return merged


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


# (key, title) of the columns that say which cell a row is and how fast it ran: the start of the run's
# summary.md (below) and of the report's Summary table (report/run_report.py), which add their own columns.
CELL_COLUMNS = (
    ("model", "model"),
    ("size", "size"),
    ("engine", "engine"),
    ("precision", "prec"),
    ("batch_size", "batch"),
    ("scenario", "scenario"),
    ("status", "status"),
    ("latency_ms_p50", "p50 ms"),
    ("latency_ms_p99", "p99 ms"),
    ("throughput_samples_per_s", "samples/s"),
    ("flops_per_s", "FLOP/s"),
)
SUMMARY_COLUMNS = (
    *CELL_COLUMNS,
    ("speedup_vs_fp32", "x fp32"),
    ("reduced_mac_share", "MACs in prec"),
    ("accuracy_metric", "accuracy metric"),
    ("accuracy_value", "value"),
    ("accuracy_cosine", "cosine"),
    ("error", "reason"),
)
# Trained models' columns, inserted before the reason where a run has any.
LABEL_COLUMNS = (("label_metric", "vs labels"), ("label_value", "value"), ("label_ratio", "of fp32"))


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the run: one line per cell, with speed-up over FP32 of the same engine, batch size
    and scenario, and beside it the share of the model's MACs the cell's artifact ran in its precision
    (``analysis.quant_coverage.share_text``: ``0% of MACs in int8, not an int8 result`` where none did)."""
    fp32 = {speed_key(r): r for r in rows if r.get("precision") == precisions.BASE}
    columns = SUMMARY_COLUMNS
    if any(r.get("label_metric") for r in rows):
        columns = (*SUMMARY_COLUMNS[:-1], *LABEL_COLUMNS, SUMMARY_COLUMNS[-1])
    lines = [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        view = dict(row)
        view["speedup_vs_fp32"] = speedup(row, fp32.get(speed_key(row)))
        view["reduced_mac_share"] = share_text(str(row.get("precision")), row.get("reduced_mac_share"))
        if view.get("error"):
            view["error"] = str(view["error"]).replace("|", "/")[:120]
        lines.append("| " + " | ".join(fmt(view.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"
