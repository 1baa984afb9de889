"""The INT8 kernel check: is the INT8 accuracy lost on this CPU lost to quantization or to its integer kernels?

One model is run five ways on ONNX Runtime's CPU provider, on the same seeded accuracy inputs: FP32; the INT8
artifact with 8-bit weights on the real integer kernels; the same file simulated in float (graph optimisation
off, so every quantized op runs in float between its DequantizeLinear and QuantizeLinear and only the
quantization's rounding remains); and the same two with 7-bit weights. The simulated runs measure quantization
error, the gap between a real run and its simulation measures kernel error: on CPUs whose u8 x s8 dot products
saturate (``common.cpu_isa``) the 8-bit gap is large and the 7-bit one is not.

``check`` runs the whole comparison (builds through an executor, each run in a child process with
``measure_variant``); ``verdict`` is pure and compares the saved outputs.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Variant:
    """One way of running the model: a precision, the INT8 weight range, and real or simulated kernels."""

    label: str
    precision: str
    weights: str | None = None
    simulated: bool = False


VARIANTS = (
    Variant("fp32", "fp32"),
    Variant("int8 8-bit", "int8", "8bit"),
    Variant("int8 8-bit simulated", "int8", "8bit", simulated=True),
    Variant("int8 7-bit", "int8", "7bit"),
    Variant("int8 7-bit simulated", "int8", "7bit", simulated=True),
)
# A real run whose error against FP32 exceeds its simulation's by this factor (in 1 - cosine) has lost accuracy
# to the kernels: exact integer kernels round like the simulation does and land within a few per cent of it
# (7-bit weights on AVX2: ResNet-50 0.019 vs 0.019, DenseNet-121 0.0080 vs 0.0081, BERT-base 0.0028 vs 0.0028),
# while saturating ones came out 1.4x (ResNet-50), 2.9x (DenseNet-121) and 3.9x (BERT-base) above it.
KERNEL_ERROR_FACTOR = 1.2


def _simulation_file(path: Path, tmp: Path) -> Path:
    """``path`` itself, or a copy whose Loop-body DynamicQuantizeMatMuls (integer kernels that no optimisation
    level turns off) are rewritten as their float simulation."""
    import onnx

    from calibration.loop_int8 import simulate_loop_matmuls

    model = onnx.load(str(path))
    if not simulate_loop_matmuls(model):
        return path
    copy = tmp / "simulated.onnx"
    onnx.save(model, str(copy))
    return copy


def measure_variant(
    artifact,
    simulated: bool,
    batch: int,
    samples: int,
    reference: str,
    timer,
    outputs_path: str,
) -> dict:
    """Run the stored ``artifact`` (an ``onnx_models.artifacts.Artifact``) on the accuracy inputs (saving its
    outputs to ``outputs_path``), compare with the FP32 ``reference`` .npz, and time it with ``timer`` (a
    TimerSettings) unless ``simulated`` (a float simulation's speed means nothing). Returns the accuracy columns
    plus ``latency_ms_p50``/``latency_ms_mean``."""
    from analysis.accuracy import compare, concat
    from bench.inputs import accuracy_feeds, run_batches, timing_feeds
    from bench.timer import measure
    from engines.ort_cpu import OrtCpuEngine
    from onnx_models import model_spec
    from onnx_models.artifacts import output_batch_axes
    from onnx_models.store import ModelStore

    size = artifact.size
    spec = model_spec(artifact.model)
    store = ModelStore(artifact.model, size)
    path = store.verified_path(artifact.name)
    row: dict = {"artifact": artifact.name, "artifact_sha256": store.entry(artifact.name)["sha256"]}
    with tempfile.TemporaryDirectory(prefix="aimatrix-int8-check-") as tmp:
        source = _simulation_file(path, Path(tmp)) if simulated else path
        with OrtCpuEngine({"optimization": "disabled"} if simulated else {}) as engine:
            engine.activate(source)
            outputs = concat(
                run_batches(engine, spec, size, accuracy_feeds(spec, size, batch, samples)),
                output_batch_axes(spec, size),
            )
            if not simulated:
                engine.prepare(timing_feeds(spec, size, batch))
                stats = measure(engine.run_prepared, timer)
                row.update(latency_ms_p50=stats.p50, latency_ms_mean=stats.mean, iterations=stats.iterations)
    np.savez(outputs_path, **outputs)
    with np.load(reference) as data:
        expected = {name: data[name] for name in data.files}
    row.update(compare(spec.task, expected, outputs, spec.task_options))
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return row


def kernel_gap(task: str, options: dict, simulated: str, real: str) -> dict:
    """How far the real kernels' outputs (.npz ``real``) are from their float simulation (``simulated``): the
    task's agreement metric and cosine of real against simulated."""
    from analysis.accuracy import compare

    with np.load(simulated) as a, np.load(real) as b:
        gap = compare(task, {k: a[k] for k in a.files}, {k: b[k] for k in b.files}, options)
    return {"kernel_agreement": gap["accuracy_value"], "kernel_cosine": gap["accuracy_cosine"]}


def verdict(real: dict, simulated: dict) -> tuple[bool, str]:
    """(whether the kernels add error of their own, one sentence saying so and whether the task metric shows
    it) from a real run's and its simulation's accuracy rows against FP32 (``accuracy_metric``,
    ``accuracy_value``, ``accuracy_cosine``)."""
    from analysis.accuracy import higher_is_better

    metric = real["accuracy_metric"]
    higher_better = higher_is_better(metric) is not False
    real_err, sim_err = 1 - real["accuracy_cosine"], 1 - simulated["accuracy_cosine"]
    worse_metric = (
        real["accuracy_value"] < simulated["accuracy_value"]
        if higher_better
        else real["accuracy_value"] > simulated["accuracy_value"] * KERNEL_ERROR_FACTOR
    )
    costs = real_err > max(sim_err * KERNEL_ERROR_FACTOR, 1e-6)
    numbers = (
        f"{metric} {real['accuracy_value']:.3g} on the integer kernels vs {simulated['accuracy_value']:.3g} "
        f"simulated in float; 1 - cosine {real_err:.2g} vs {sim_err:.2g}"
    )
    if costs and worse_metric:
        return True, f"the kernels cost accuracy: {numbers}"
    if costs:
        return True, f"the kernels add error of their own, not (yet) visible in {metric}: {numbers}"
    return False, f"the kernels are faithful: {numbers}"


def check(
    model_list: list[str],
    size: str,
    batch: int,
    samples: int,
    timer,
    export,
    calib,
    cell_timeout_s: float,
    jobs: int = 1,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Build each model's FP32 and both INT8 widths (``jobs`` builds at once), run every ``VARIANTS`` entry on
    ``samples`` accuracy samples at batch ``batch``, and compare. Returns (one record per model and variant,
    one verdict line per model and weight width)."""
    from tqdm import tqdm

    from bench.executor import BUILD_TIMEOUT_S, build_models
    from bench.isolation import run_isolated
    from bench.model_facts import reference_outputs
    from common.cpu_isa import isa
    from onnx_models.artifacts import resolve

    def artifact(model: str, variant: Variant):
        return resolve(model, size, variant.precision, "cpu", replace(calib, int8_weights=variant.weights or "auto"))

    failures: dict = {}
    for weights in ("8bit", "7bit"):
        width = replace(calib, int8_weights=weights)
        wanted = [resolve(m, size, "int8", "cpu", width) for m in model_list]
        failures |= build_models(model_list, wanted, export, width, f"{weights} INT8", jobs)
    records: list[dict[str, Any]] = []
    verdicts: list[str] = []
    runs = [(m, v) for m in model_list for v in VARIANTS]
    with (
        tempfile.TemporaryDirectory(prefix="aimatrix-int8-check-") as tmp,
        tqdm(runs, desc="int8 check", unit="run", file=sys.stderr) as bar,
    ):
        references: dict[str, Any] = {}
        for model, variant in bar:
            bar.set_postfix_str(f"{model} {variant.label}")
            made = artifact(model, variant)
            record: dict[str, Any] = {"model": model, "size": size, "variant": variant.label, "artifact": made.name}
            record |= {"batch_size": batch, "cpu_isa": isa()}
            records.append(record)
            error = failures.get(made.source) or failures.get(made)
            if model not in references and not error:
                kwargs = {"model": model, "size": size, "batch": batch, "samples": samples}
                references[model] = run_isolated(reference_outputs, kwargs, BUILD_TIMEOUT_S)
            if not error and not references[model].ok:
                error = f"FP32 reference failed: {references[model].error}"
            if error:
                record.update(status="failed", error=error)
                continue
            outputs = Path(tmp) / f"{model}-{variant.label.replace(' ', '_')}.npz"
            kwargs = {"artifact": made, "simulated": variant.simulated, "batch": batch, "samples": samples}
            kwargs |= {"reference": references[model].value, "timer": timer, "outputs_path": str(outputs)}
            result = run_isolated(measure_variant, kwargs, cell_timeout_s)
            if not result.ok:
                record.update(status="failed", error=result.error)
                tqdm.write(f"{model} {variant.label}: FAILED: {result.error}", file=sys.stderr)
                continue
            record.update(status="ok", outputs=str(outputs), **result.value)
        for model in model_list:
            verdicts += _model_verdicts(model, [r for r in records if r["model"] == model])
        for record in records:
            record.pop("outputs", None)
    return records, verdicts


def _model_verdicts(model: str, records: list[dict[str, Any]]) -> list[str]:
    """Fill each real run's speed-up over FP32 and agreement with its simulation; return one verdict line per
    weight width."""
    from onnx_models import model_spec

    spec = model_spec(model)
    by_label = {r["variant"]: r for r in records if r.get("status") == "ok"}
    fp32 = by_label.get("fp32")
    lines = []
    for record in by_label.values():
        if fp32 and record.get("latency_ms_p50") and record is not fp32:
            record["speedup_vs_fp32"] = fp32["latency_ms_p50"] / record["latency_ms_p50"]
        simulated = by_label.get(f"{record['variant']} simulated")
        if simulated is None:
            continue
        record.update(kernel_gap(spec.task, spec.task_options, simulated["outputs"], record["outputs"]))
        costs, sentence = verdict(record, simulated)
        record["kernels_cost_accuracy"] = costs
        lines.append(f"{model} {record['variant']}: {sentence}")
    return lines


def table_line(record: dict[str, Any]) -> tuple[str, ...]:
    """One printed line of the check: model, variant, accuracy vs FP32, 1 - cosine, agreement with the
    simulation, p50 ms, speed-up over FP32."""
    if record["status"] != "ok":
        return (record["model"], record["variant"], "FAILED", record.get("error", ""), "", "", "")
    agreement = record.get("kernel_agreement")
    p50 = record.get("latency_ms_p50")
    speedup = record.get("speedup_vs_fp32")
    return (
        record["model"],
        record["variant"],
        f"{record['accuracy_metric']} {record['accuracy_value']:.3g}",
        f"{1 - record['accuracy_cosine']:.2g}",
        "-" if agreement is None else f"{agreement:.3g}",
        "-" if p50 is None else f"{p50:.3g}",
        "-" if speedup is None else f"{speedup:.2f}x",
    )


TABLE_HEADER = ("model", "variant", "accuracy vs FP32", "1 - cosine", "agrees with simulation", "p50 ms", "vs FP32")


def write_results(
    out: Path, records: list[dict[str, Any]], verdicts: list[str], cpu: dict[str, Any], settings: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``int8-check.csv`` (one line per record) and ``int8-check.json`` (the CPU's facts, ``settings``, the
    records and the verdicts) into ``out``, each atomically; returns both paths."""
    import json

    import polars as pl

    from common.paths import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    table, summary = out / "int8-check.csv", out / "int8-check.json"
    with atomic_path(table) as tmp:
        pl.DataFrame(records, infer_schema_length=None).write_csv(tmp)
    with atomic_path(summary) as tmp:
        tmp.write_text(json.dumps({"cpu": cpu, "settings": settings, "rows": records, "verdicts": verdicts}, indent=1))
    return table, summary
