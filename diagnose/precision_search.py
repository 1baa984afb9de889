"""Accuracy-driven mixed precision: the fewest nodes to keep in float for INT8 to reach a target accuracy.

The nodes come ranked by their own quantization error (``analysis.quant_error``, worst first). A candidate
keeps the first k of them in float; the search measures k = 0, then 1, 2, 4, ... until a candidate reaches the
target, then bisects between the last k that missed and the first that reached it. Each candidate is a real
INT8 artifact (built in the store through ``onnx_models.artifacts`` with those nodes as its build setting, so
it is cached like any other and reused by a later run of its plan) measured like a cell of a run: accuracy on
the accuracy samples and latency with the suite's timer, in a child process.

Accuracy is the fraction of FP32 retained on the model's own metric (``analysis.accuracy.retained``): against
labels for a trained model, against the FP32 outputs otherwise. Bisection assumes that keeping more of the
ranked nodes in float does not lose accuracy; where measurements contradict that (few samples, noise), the
answer is the smallest k measured to reach the target next to a larger k that did not, not a global optimum.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from analysis.accuracy import retained
from bench.cell import Cell, run_cell
from bench.executor import BUILD_TIMEOUT_S
from bench.isolation import run_isolated
from bench.timer import TimerSettings
from common.numbers import fmt
from onnx_models.artifacts import Artifact, CalibrationSettings, ExportSettings, ensure, resolve


@dataclass
class SearchOutcome:
    """What the search found: ``k`` (nodes kept in float; None when even all of them miss the target), the
    ranked nodes, and every candidate measured, in the order measured."""

    k: int | None
    ranked: list[str]
    candidates: list[dict[str, Any]]

    @property
    def float_nodes(self) -> list[str]:
        """The nodes the chosen candidate keeps in float ([] when INT8 reaches the target as it is)."""
        return self.ranked[: self.k] if self.k else []


def smallest_passing(n: int, passes: Callable[[int], bool]) -> int | None:
    """The smallest k in 0..n for which ``passes(k)`` holds, found by probing 0, 1, 2, 4, ... n and bisecting
    between the last miss and the first pass; None if ``passes(n)`` fails. Each k is probed at most once
    (``passes`` is a measurement), in the order the search needs it."""
    seen: dict[int, bool] = {}

    def probe(k: int) -> bool:
        if k not in seen:
            seen[k] = passes(k)
        return seen[k]

    if probe(0):
        return 0
    low, k = 0, 1
    while True:
        k = min(k, n)
        if probe(k):
            break
        if k == n:
            return None
        low, k = k, k * 2
    high = k
    while high - low > 1:
        mid = (low + high) // 2
        if probe(mid):
            high = mid
        else:
            low = mid
    return high


@dataclass(frozen=True)
class Candidate:
    """How to build and measure one candidate: the cell (its precision), the settings, and the child timeouts."""

    model: str
    size: str
    engine: str
    flavour: str
    batch_size: int
    export: ExportSettings
    calib: CalibrationSettings
    timer: TimerSettings
    accuracy_samples: int
    engine_options: dict
    reference: str
    cell_timeout_s: float

    def artifact(self, precision: str, float_nodes: list[str] | tuple[str, ...] = ()) -> Artifact:
        """The artifact of ``precision`` in this search's flavour, with ``float_nodes`` kept in float (the
        quantized precision's only: the others have no nodes to keep)."""
        plan = ((self.model, self.size, self.flavour, tuple(float_nodes)),) if float_nodes else ()
        return resolve(self.model, self.size, precision, self.flavour, replace(self.calib, float_nodes=plan))


def build(artifact: Artifact, export: ExportSettings, calib: CalibrationSettings) -> str | None:
    """Build (or reuse) ``artifact`` in a child process (``onnx_models.artifacts.ensure``); None, or why it
    failed."""
    built = run_isolated(ensure, dict(artifact=artifact, export=export, calib=calib), BUILD_TIMEOUT_S)
    return None if built.ok else built.error


def measure(spec: Candidate, precision: str, float_nodes: list[str], built: bool = False) -> dict[str, Any]:
    """Build (or reuse; ``built``: it is known to exist, skip the build child) the artifact for ``precision`` with
    ``float_nodes`` kept in float, then measure it as a cell; returns the row's columns with ``retained``,
    ``status`` (``ok``/``failed``) and ``error``."""
    artifact = spec.artifact(precision, float_nodes)
    if not built:
        error = build(artifact, spec.export, spec.calib)
        if error:
            return {"status": "failed", "error": f"building failed: {error}"}
    cell = Cell(spec.model, spec.size, spec.engine, precision, spec.batch_size, artifact=artifact)
    result = run_isolated(
        run_cell,
        dict(
            cell=cell,
            timer=spec.timer,
            accuracy_samples=spec.accuracy_samples,
            engine_options=spec.engine_options,
            reference=spec.reference,
        ),
        spec.cell_timeout_s,
    )
    if not result.ok:
        return {"status": "failed", "error": result.error}
    row = {k: v for k, v in result.value.items() if k != "samples_ms"}
    return {**row, "status": "ok", "error": None, "retained": retained(row)}


def search(
    spec: Candidate,
    ranked: list[str],
    target: float,
    log: Path,
    say: Callable[[str], None],
) -> tuple[SearchOutcome, dict[str, Any]]:
    """Search the fewest of ``ranked`` nodes to keep in float for INT8 to retain ``target`` of FP32's accuracy.

    Every candidate's row is appended to ``log`` (JSON lines) the moment it is measured, FP32's first. Returns
    the outcome and the FP32 row. A candidate that fails to build or run counts as missing the target (its
    reason is in its row)."""
    fp32 = _logged(log, {"phase": "search", "k": None, "label": "fp32"}, measure(spec, "fp32", []))
    if fp32["status"] != "ok":
        raise RuntimeError(f"FP32 of {spec.model} could not be measured: {fp32['error']}")
    candidates: list[dict[str, Any]] = []

    def passes(k: int) -> bool:
        nodes = ranked[:k]
        say(f"candidate: {k} of {len(ranked)} quantized nodes in float")
        row = measure(spec, "int8", nodes)
        row = _logged(log, {"phase": "search", "k": k, "label": f"int8 +{k} float"}, _with_speed(row, fp32))
        candidates.append(row)
        ok = row["status"] == "ok" and row["retained"] is not None and row["retained"] >= target
        say(
            f"  k={k}: accuracy {fmt(row.get('retained')) or '-'} of FP32 (target {target:g}), "
            f"speed-up {fmt(row.get('speedup')) or '-'}x{'' if row['status'] == 'ok' else ': ' + str(row['error'])}"
        )
        return ok

    k = smallest_passing(len(ranked), passes)
    return SearchOutcome(k, ranked, candidates), fp32


def _with_speed(row: dict[str, Any], fp32: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``speedup`` over FP32 (p50 latency ratio) where both were timed."""
    mine, base = row.get("latency_ms_p50"), fp32.get("latency_ms_p50")
    return {**row, "speedup": base / mine if mine and base else None}


def _logged(log: Path, head: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """``head`` + ``row``, appended to ``log`` as one JSON line (flushed at once), and returned."""
    row = {**head, **row}
    with log.open("a") as handle:
        handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
    return row


def confirm(spec: Candidate, float_nodes: list[str], log: Path, rounds: int = 2) -> list[dict[str, Any]]:
    """FP32, the fully quantized INT8 and the chosen mixed INT8 timed again one after another, ``rounds`` times
    (the speed-ups reported are these side-by-side measurements, not the search's, which ran minutes apart;
    ``confirmed_speedups`` sums them up);
    each row is appended to ``log``. The search built every artifact, so none is built again."""
    rows = []
    variants = [("fp32", []), ("int8", [])] + ([("int8", float_nodes)] if float_nodes else [])
    for round_ in range(rounds):
        for precision, nodes in variants:
            label = "fp32" if precision == "fp32" else f"int8 +{len(nodes)} float"
            row = measure(spec, precision, nodes, built=True)
            head = {"phase": "confirm", "round": round_, "k": len(nodes) if precision == "int8" else None}
            rows.append(_logged(log, {**head, "label": label}, row))
    return rows


def confirmed_speedups(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label of ``confirm``'s rows: the lowest p50 latency over the rounds, the speed-up over FP32's, and
    the retained accuracy (the same every round: the inputs are seeded). The lowest, not the median: on a
    shared machine a round that another process disturbed ran 2.6x slower (DSSD, 1258 ms against 479 ms the
    round before); the undisturbed round is the measurement of the file."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok":
            by_label.setdefault(row["label"], []).append(row)
    out = {
        label: {
            "latency_ms_p50": min(r["latency_ms_p50"] for r in group),
            "retained": group[0].get("retained"),
            "accuracy_value": group[0].get("accuracy_value"),
            "label_value": group[0].get("label_value"),
        }
        for label, group in by_label.items()
    }
    base = out.get("fp32", {}).get("latency_ms_p50")
    for values in out.values():
        values["speedup"] = base / values["latency_ms_p50"] if base else None
    return out
