"""``suite.py explain``: why a model's INT8 loses accuracy or speed, and (with a target) the fix.

Three parts, each written to the output directory as soon as it is done:

1. **Per-layer error** (``layer_errors``, in a child process): the FP32 graph the quantizer saw and the INT8
   artifact run side by side on the accuracy samples with graph optimisation off (Q/DQ computed exactly in
   float, so this is quantization error, not kernel error), every intermediate tensor fetched; per quantized
   node the SQNR of its inputs after quantization and of its output against FP32 (``analysis.quant_error``).
   ``layer_error.csv``, ``layer_error.png``.
2. **Per-op time** (``op_profile``, in a child process per precision): FP32 and INT8 on the engine with ONNX
   Runtime's profiler on, time per op type and group (int8 compute, quantize/dequantize, layout, float)
   side by side (``analysis.op_profile``). ``op_time.csv``, ``op_time.png``.
3. **Accuracy-driven mixed precision** (``--target-accuracy``): the nodes ranked by part 1, searched by
   ``diagnose.precision_search``; ``search.jsonl`` (each candidate as measured), ``search.csv``, ``tradeoff.png``,
   and ``int8-plan.json`` for ``suite.py run --int8-plan``.

``explain.json`` sums it up.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.executor import BUILD_TIMEOUT_S
from bench.isolation import run_isolated
from bench.model_facts import reference_outputs
from bench.timer import TimerSettings
from common.paths import atomic_path
from onnx_models.artifacts import Artifact, CalibrationSettings, ExportSettings, resolve

WARMUP_RUNS = 3
# Op types of the per-op time table that explain.json (and the printed summary) keeps, largest first.
TOP_OPS = 12


# ----------------------------------------------------------------------------------------- child work


def layer_errors(artifact: Artifact, batch: int, samples: int, threads: int | None) -> list[dict]:
    """Per quantized node of the stored INT8 ``artifact``: its input and output SQNR against the FP32 graph the
    quantizer started from, over ``samples`` accuracy samples in batches of ``batch``
    (``analysis.quant_error.node_errors`` rows, worst first)."""
    import onnx
    from onnx import numpy_helper

    from analysis.quant_error import (
        QDQ_OPS,
        GraphIndex,
        SqnrSums,
        dequantized_weight,
        float_weight_name,
        fused_bounds,
        node_errors,
        quantized_inputs,
        sqnr_db,
    )
    from bench.inputs import accuracy_feeds
    from calibration.graph import batchnorm_to_depthwise
    from onnx_models import model_spec
    from onnx_models.artifacts import cleaned_fp32
    from onnx_models.store import ModelStore

    model, size = artifact.model, artifact.size
    store = ModelStore(model, size)
    spec = model_spec(model)
    qdq = onnx.load(str(store.verified_path(artifact.name)))
    reference, _ = cleaned_fp32(store)
    reference, _ = batchnorm_to_depthwise(reference)
    q_graph, f_graph = GraphIndex.of(qdq), GraphIndex.of(reference)
    inputs = quantized_inputs(q_graph)
    float_inits = f_graph.initializers
    weights: dict[str, float] = {}
    for item in inputs:
        if item.kind == "weight" and float_weight_name(item.source) in float_inits:
            w = numpy_helper.to_array(float_inits[float_weight_name(item.source)]).astype(np.float64)
            diff = w - dequantized_weight(q_graph, item.dequantize)
            weights[item.read] = sqnr_db(float(np.sum(w * w)), float(np.sum(diff * diff)))
    activations = [i for i in inputs if i.kind == "activation"]
    quantized = {i.node for i in inputs}
    # The first output of each quantized node, where the FP32 graph has the same node (and so the same tensor).
    outputs = {
        n.name: n.output[0]
        for n in q_graph.nodes
        if n.name in quantized and n.name in f_graph.by_name and n.op_type not in QDQ_OPS
    }
    float_types = _float_tensors(reference)
    outputs = {node: tensor for node, tensor in outputs.items() if tensor in float_types}
    fused = {t: fused_bounds(f_graph, q_graph, t) for t in {i.source for i in activations} | set(outputs.values())}
    qdq_fetch = sorted({i.source for i in activations} | {i.read for i in activations} | set(outputs.values()))
    ref_fetch = sorted(set(outputs.values()))
    order = {n.name: i for i, n in enumerate(q_graph.nodes)}
    q_session = _session(_with_outputs(qdq, qdq_fetch), threads)
    f_session = _session(_with_outputs(reference, ref_fetch), threads)
    del qdq, reference, q_graph, f_graph
    act_sums, out_sums = SqnrSums(), SqnrSums()
    batches = accuracy_feeds(spec, size, batch, samples)[: max(1, math.ceil(samples / batch))]
    for feeds in batches:
        got = dict(zip(qdq_fetch, q_session.run(qdq_fetch, feeds), strict=True))
        want = dict(zip(ref_fetch, f_session.run(ref_fetch, feeds), strict=True)) if ref_fetch else {}
        for item in activations:
            act_sums.add(item.read, _clipped(got[item.source], fused[item.source]), got[item.read])
        for tensor in ref_fetch:
            if got[tensor].shape == want[tensor].shape:
                out_sums.add(tensor, want[tensor], _clipped(got[tensor], fused[tensor]))
    output_db = {node: out_sums.db(tensor) for node, tensor in outputs.items()}
    return node_errors(inputs, act_sums, weights, output_db, order)


def _clipped(values: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    """``values`` clipped to a folded Relu's or Clip's ``bounds`` (``fused_bounds``), or as they are."""
    return values if bounds is None else np.clip(values, *bounds)


def _float_tensors(model) -> set[str]:
    """The names of ``model``'s float32 tensors that shape inference can type (graph inputs and outputs too)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an untypable graph: compare only what is typed as given
        inferred = model
    graph = inferred.graph
    infos = [*graph.value_info, *graph.input, *graph.output]
    return {v.name for v in infos if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _with_outputs(model, names: list[str]):
    """A copy of ``model`` whose graph also outputs ``names`` (as float32 tensors of unknown shape)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def _session(model, threads: int | None):
    """An ONNX Runtime CPU session of ``model`` (a ModelProto) with graph optimisation off: every node runs as
    written, so Q/DQ pairs compute their rounding exactly and every tensor asked for exists."""
    from common.cores import physical_cores
    from common.ort_session import cpu_session

    return cpu_session(model, threads=threads or physical_cores(), optimize=False)


def op_profile(
    artifact: Artifact,
    engine: str,
    batch: int,
    iterations: int,
    engine_options: dict,
    trace_prefix: str,
) -> dict:
    """Run the stored ``artifact`` on ``engine`` with ONNX Runtime's profiler on: ``WARMUP_RUNS`` runs,
    then ``iterations`` profiled ones on the timing inputs at ``batch``. Returns ``rows`` and ``totals`` of
    ``analysis.op_profile.per_op_time`` and the ``trace`` file's path."""
    from analysis.op_profile import per_op_time
    from bench.inputs import timing_feeds
    from engines import engine_class
    from engines.base import EngineError
    from onnx_models import model_spec
    from onnx_models.store import ModelStore

    spec = model_spec(artifact.model)
    path = ModelStore(artifact.model, artifact.size).verified_path(artifact.name)
    feeds = timing_feeds(spec, artifact.size, batch)
    with engine_class(engine)({**engine_options, "profile": trace_prefix}) as runner:
        if not hasattr(runner, "end_profiling"):
            raise EngineError(
                f"{engine} has no per-op profiler: per-op time needs an ONNX Runtime engine (ort-cpu, ort-cuda, "
                "ort-trt, ort:<Provider>)"
            )
        runner.activate(path, {name: array.shape for name, array in feeds.items()})
        runner.prepare(feeds)
        for _ in range(WARMUP_RUNS + iterations):
            runner.run_prepared()
        trace = runner.end_profiling()
    events = json.loads(Path(trace).read_text())
    rows, totals = per_op_time(events, skip_runs=WARMUP_RUNS)
    return {"rows": rows, "totals": totals, "trace": trace}


# -------------------------------------------------------------------------------------- orchestration


@dataclass(frozen=True)
class ExplainSettings:
    """One ``explain``: the model, the engine and INT8 flavour, how many samples and runs, and the target."""

    model: str
    size: str = "full"
    engine: str = "ort-cpu"
    flavour: str | None = None  # None: the engine's own INT8 flavour
    batch_size: int = 1
    samples: int = 8
    iterations: int = 20
    target: float | None = None
    export: ExportSettings = field(default_factory=ExportSettings)
    calib: CalibrationSettings = field(default_factory=CalibrationSettings)
    timer: TimerSettings = field(default_factory=lambda: TimerSettings(0.25, 1, 1.0, 3))
    engine_options: dict = field(default_factory=dict)
    cell_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.samples < 1 or self.iterations < 1:
            raise ValueError("--batch-size, --accuracy-samples and --iterations must be at least 1")
        if self.target is not None and not 0 < self.target <= 1:
            raise ValueError(f"--target-accuracy is a fraction of FP32's accuracy in (0, 1], got {self.target:g}")
        if self.target is not None and self.calib.float_nodes:
            raise ValueError(
                "--target-accuracy searches from the fully quantized INT8 artifact: leave out --int8-plan (a plan "
                "is explained as it is, without a search)"
            )


class ExplainError(RuntimeError):
    """A step that cannot go on (a build or the FP32 reference failed); the message says which and why."""


def explain(settings: ExplainSettings, out: Path, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the parts of an explain for ``settings`` into the directory ``out``; returns the summary also
    written to ``explain.json``. Raises ExplainError when an artifact cannot be built or FP32 not measured."""
    from tqdm import tqdm

    from engines import engine_class

    say = say or (lambda line: print(line, file=sys.stderr))
    s = settings
    flavour = s.flavour or engine_class(s.engine).int8_flavour
    out.mkdir(parents=True, exist_ok=True)
    # With an INT8 plan (--int8-plan) the planned artifact is the one explained: where its time goes now.
    fp32, int8 = (resolve(s.model, s.size, p, flavour, s.calib) for p in ("fp32", "int8"))
    summary: dict[str, Any] = {
        "model": s.model,
        "size": s.size,
        "engine": s.engine,
        "flavour": flavour,
        "int8_artifact": int8.name,
        "batch_size": s.batch_size,
        "samples": s.samples,
    }
    phases = ["build", "layer error", "op time fp32", "op time int8"] + (["search"] if s.target else [])
    bar = tqdm(total=len(phases), desc="explain", unit="phase", file=sys.stderr)
    try:
        bar.set_postfix_str(f"{s.model} build")
        for artifact in (fp32, int8):
            _build(s, artifact)
        bar.update()

        bar.set_postfix_str("layer error")
        started = time.perf_counter()
        errors = _child(
            layer_errors,
            dict(
                artifact=int8,
                batch=s.batch_size,
                samples=s.samples,
                threads=s.engine_options.get("threads"),
            ),
            s.cell_timeout_s,
            "per-layer error",
        )
        summary["layer_error_s"] = time.perf_counter() - started
        _write_csv(errors, out / "layer_error.csv")
        from diagnose.plots import plot_layer_error

        plot_layer_error(errors, out / "layer_error.png", f"{s.model} ({s.size}) {int8.name}: per-layer SQNR")
        summary["quantized_nodes"] = len(errors)
        summary["worst_nodes"] = [
            {k: r[k] for k in ("node", "op_type", "sqnr_db", "output_sqnr_db")} for r in errors[:10]
        ]
        bar.update()

        profiles = {}
        for precision, artifact in (("fp32", fp32), ("int8", int8)):
            bar.set_postfix_str(f"op time {precision}")
            profiles[precision] = _child(
                op_profile,
                dict(
                    artifact=artifact,
                    engine=s.engine,
                    batch=s.batch_size,
                    iterations=s.iterations,
                    engine_options=s.engine_options,
                    trace_prefix=str(out / f"trace-{precision}"),
                ),
                s.cell_timeout_s,
                f"per-op time of {precision}",
            )
            bar.update()
        table = op_time_table(profiles["fp32"]["rows"], profiles["int8"]["rows"])
        _write_csv(table, out / "op_time.csv")
        summary["op_time_top"] = table[:TOP_OPS]
        from analysis.op_profile import group_totals
        from diagnose.plots import plot_op_time

        groups = {p: group_totals(profiles[p]["rows"]) for p in profiles}
        plot_op_time(groups, out / "op_time.png", f"{s.model} ({s.size}) on {s.engine}, batch {s.batch_size}")
        summary["op_time"] = {p: {**profiles[p]["totals"], "groups": groups[p]} for p in profiles}

        if s.target:
            bar.set_postfix_str("search")
            summary["search"] = _search(s, flavour, errors, out, lambda line: tqdm.write(line, file=sys.stderr))
            bar.update()
    finally:
        bar.close()
        with atomic_path(out / "explain.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def op_time_table(fp32: list[dict], int8: list[dict]) -> list[dict]:
    """FP32 and INT8 per-op rows (``analysis.op_profile.per_op_time``) joined on (op type, group): one row each
    with ``fp32_ms``/``int8_ms`` per run and node counts (0 where a precision lacks the op), largest first."""
    joined: dict[tuple[str, str], dict] = {}
    for precision, rows in (("fp32", fp32), ("int8", int8)):
        for row in rows:
            entry = joined.setdefault(
                (row["op_type"], row["group"]),
                dict(op_type=row["op_type"], group=row["group"], fp32_ms=0.0, int8_ms=0.0, fp32_nodes=0, int8_nodes=0),
            )
            entry[f"{precision}_ms"] = row["ms_per_run"]
            entry[f"{precision}_nodes"] = row["nodes"]
    return sorted(joined.values(), key=lambda r: -max(r["fp32_ms"], r["int8_ms"]))


def _search(s: ExplainSettings, flavour: str, errors: list[dict], out: Path, say) -> dict[str, Any]:
    """The mixed-precision search on ``errors``' ranking; writes the search files and ``int8-plan.json``."""
    from calibration.int8_plan import Int8Plan, write_plan
    from diagnose import precision_search
    from diagnose.plots import plot_tradeoff

    reference = _child(
        reference_outputs,
        dict(model=s.model, size=s.size, batch=s.batch_size, samples=s.samples),
        BUILD_TIMEOUT_S,
        "the FP32 reference outputs",
    )
    spec = precision_search.Candidate(
        model=s.model,
        size=s.size,
        engine=s.engine,
        flavour=flavour,
        batch_size=s.batch_size,
        export=s.export,
        calib=s.calib,
        timer=s.timer,
        accuracy_samples=s.samples,
        engine_options=s.engine_options,
        reference=reference,
        cell_timeout_s=s.cell_timeout_s,
    )
    ranked = [r["node"] for r in errors if r["sqnr_db"] is not None]
    log = out / "search.jsonl"
    started = time.perf_counter()
    try:
        outcome, fp32 = precision_search.search(spec, ranked, s.target, log, say)
    except RuntimeError as exc:
        raise ExplainError(str(exc)) from None
    searched_s = time.perf_counter() - started
    candidates = [_search_row(r) for r in outcome.candidates]
    _write_csv(candidates, out / "search.csv")
    result: dict[str, Any] = {
        "target": s.target,
        "metric": fp32.get("label_metric") or fp32.get("accuracy_metric"),
        "ranked_nodes": len(ranked),
        "candidates": len(outcome.candidates),
        "search_s": searched_s,
        "float_nodes": outcome.float_nodes if outcome.k is not None else None,
        "reached": outcome.k is not None,
    }
    if outcome.k is None:
        say(f"no candidate reached {s.target:g} of FP32, not even with all {len(ranked)} quantized nodes in float")
    else:
        say("timing FP32, INT8 and the chosen mixed INT8 side by side")
        confirmed = precision_search.confirmed_speedups(precision_search.confirm(spec, outcome.float_nodes, log))
        result["confirmed"] = confirmed
        chosen = confirmed.get(f"int8 +{outcome.k} float", {})
        record = {
            "target": s.target,
            "metric": result["metric"],
            "retained": chosen.get("retained"),
            "speedup": chosen.get("speedup"),
            "engine": s.engine,
            "batch_size": s.batch_size,
            "accuracy_samples": s.samples,
            "ranked_nodes": len(ranked),
            "made_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        plan = Int8Plan(s.model, s.size, flavour, tuple(outcome.float_nodes), record)
        result["plan"] = str(write_plan(plan, out / "int8-plan.json"))
    plot_tradeoff(
        candidates,
        s.target,
        out / "tradeoff.png",
        f"{s.model} ({s.size}): INT8 candidates, nodes kept in float",
    )
    return result


def _search_row(row: dict[str, Any]) -> dict[str, Any]:
    """The columns of a candidate that search.csv keeps."""
    keep = (
        "k",
        "status",
        "retained",
        "speedup",
        "latency_ms_p50",
        "accuracy_metric",
        "accuracy_value",
        "label_metric",
        "label_value",
        "int8_float_nodes",
        "reduced_mac_share",
        "artifact_sha256",
        "error",
    )
    return {k: row.get(k) for k in keep}


def _build(s: ExplainSettings, artifact: Artifact) -> None:
    """Build (or reuse) ``artifact`` in a child; ExplainError with the reason when it fails."""
    from diagnose.precision_search import build

    error = build(artifact, s.export, s.calib)
    if error:
        raise ExplainError(f"building {s.model} ({s.size}) {artifact.name} failed: {error}")


def _child(function: Callable[..., Any], kwargs: dict, timeout_s: float, what: str):
    """``function(**kwargs)`` in a child process; its value, or ExplainError naming ``what`` and the reason."""
    result = run_isolated(function, kwargs, timeout_s)
    if not result.ok:
        raise ExplainError(f"{what} failed: {result.error}")
    return result.value


def _write_csv(rows: list[dict], path: Path) -> None:
    """``rows`` as a CSV file at ``path`` (atomically); an empty table writes a header-less empty file."""
    import polars as pl

    with atomic_path(path) as tmp:
        if rows:
            pl.DataFrame(rows, infer_schema_length=None).write_csv(tmp)
        else:
            tmp.write_text("")
