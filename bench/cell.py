"""One cell of the matrix (``Cell``) and its measurement (``run_cell``, in a child process of its own): the
artifact loaded in the engine, its accuracy checked against the FP32 reference, then timed by the suite's timer
(the closed loop) or by MLPerf LoadGen (the other scenarios)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from bench.inputs import accuracy_feeds, timing_feeds
from bench.scenarios import LoadSettings
from bench.timer import TimerSettings
from onnx_models.artifacts import Artifact


@dataclass(frozen=True)
class Cell:
    """One point of the matrix, and the artifact it measures (``onnx_models.artifacts.resolve``, worked out by
    the plan)."""

    model: str
    size: str
    engine: str
    precision: str
    batch_size: int
    # The load scenario (``bench.scenarios``) and, for those that serve queries in parallel, the SUT's threads.
    scenario: str = "latency"
    concurrency: int = 1
    artifact: Artifact | None = None

    @property
    def id(self) -> str:
        """``model/size/engine/precision/bN``, then ``/scenario`` and ``/cN`` where they are not the closed loop's
        (so the ids of latency cells, and with them the results directories of earlier runs, stay as they were)."""
        base = f"{self.model}/{self.size}/{self.engine}/{self.precision}/b{self.batch_size}"
        if self.scenario != "latency":
            base += f"/{self.scenario}"
        return base + (f"/c{self.concurrency}" if self.concurrency != 1 else "")


def run_cell(
    cell: Cell,
    timer: TimerSettings,
    accuracy_samples: int,
    engine_options: dict,
    reference: str | None,
    load: LoadSettings | None = None,
    log_dir: str | None = None,
) -> dict:
    """Measure one cell: load its artifact (``cell.artifact``) in the engine, check accuracy against
    ``reference`` (an .npz of FP32 outputs, or None to skip), then time it: with the suite's timer in the
    ``latency`` scenario, with LoadGen (``load``, a ``bench.scenarios.LoadSettings``; its logs into ``log_dir``)
    in the others. Returns the measured columns plus ``samples_ms`` (the timer's latencies; None for LoadGen
    scenarios, whose latencies are in its logs)."""
    import resource

    import psutil

    from common import precisions
    from engines import engine_class
    from onnx_models import model_spec
    from onnx_models.store import ModelStore

    c = cell
    if c.artifact is None:
        raise ValueError(f"cell {c.id} has no artifact: cells come from bench.plan.plan, which resolves them")
    spec = model_spec(c.model)
    engine_cls = engine_class(c.engine)
    store = ModelStore(c.model, c.size)
    path = store.verified_path(c.artifact.name)
    entry = store.entry(c.artifact.name)
    row: dict = {"artifact": str(path), "artifact_sha256": entry["sha256"]}
    if precisions.get(c.precision).quantized:
        from calibration.tensorrt_rules import row_text

        row["int8_weight_bits"] = entry.get("weight_bits")
        # The tensorrt flavour's check against TensorRT's Q/DQ rules: "ok" or the rules it breaks.
        row["int8_conformance"] = row_text(entry.get("tensorrt_conformance"))
        # How many nodes an INT8 plan (accuracy-driven mixed precision) kept in float; 0 when fully quantized.
        row["int8_float_nodes"] = len(entry.get("float_nodes_from_plan", ()))
    feeds = timing_feeds(spec, c.size, c.batch_size)
    expected = None
    if reference is not None:
        with np.load(reference) as data:
            expected = {name: data[name] for name in data.files}
    process = psutil.Process()
    with engine_cls(engine_options) as engine:
        resident = process.memory_info().rss
        start = time.perf_counter()
        # Engines that build for fixed shapes (TensorRT's optimisation profiles) learn the cell's shapes up front.
        engine.activate(path, {name: array.shape for name, array in feeds.items()})
        row["engine_build_s"] = time.perf_counter() - start
        row["engine_load_mib"] = (process.memory_info().rss - resident) / 2**20
        meter = _gpu_meter(engine)
        cuda = engine.cuda_device()
        row["device"] = "cpu" if cuda is None else f"cuda:{cuda}"
        try:
            if c.scenario == "latency":
                # The accuracy batches only where there is a reference to score them against.
                samples = accuracy_feeds(spec, c.size, c.batch_size, accuracy_samples) if expected is not None else []
                row.update(_closed_loop(engine, spec, c, feeds, samples, expected, timer, meter))
            else:
                # LoadGen's query sample library: the accuracy batches, scored or not.
                samples = accuracy_feeds(spec, c.size, c.batch_size, accuracy_samples)
                settings = load or LoadSettings()
                row.update(_loadgen(engine, spec, c, samples, expected, timer, settings, log_dir, meter))
        finally:
            if meter is not None:
                meter.close()
        row["engine_settings"] = json.dumps(engine.describe(), sort_keys=True)
    # ru_maxrss is in KiB on Linux: the most this cell's own process (spawned, so nothing inherited) held.
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def _gpu_meter(engine):
    """A GpuMeter on the engine's CUDA device, or None for host engines."""
    device = engine.cuda_device()
    if device is None:
        return None
    from bench.nvml import GpuMeter

    return GpuMeter(device)


def _score(spec, size: str, expected: dict | None, outputs: list[dict]) -> dict:
    """The accuracy columns of ``outputs`` (one dict per accuracy batch) against the FP32 ``expected``."""
    if expected is None:
        return {}
    from analysis.accuracy import compare, concat
    from onnx_models.artifacts import output_batch_axes

    got = concat(outputs, output_batch_axes(spec, size))
    row = compare(spec.task, expected, got, spec.task_options)
    row["accuracy_samples"] = next(iter(expected.values())).shape[0]
    if spec.trained is not None:
        row.update(label_columns(spec, size, expected, got))
    return row


# MLPerf's accuracy targets: 99% of FP32 for most benchmarks, 99.9% for the high-accuracy variants.
LABEL_TARGETS = (0.99, 0.999)


def label_columns(spec, size: str, expected: dict, got: dict) -> dict:
    """The trained track's columns: the task metric against the evaluation labels for this precision and for
    FP32 (``expected``, the FP32 reference on the same samples), their ratio, and pass or fail at 99% and 99.9%
    of FP32."""
    from onnx_models.trained import eval_labels

    labels = eval_labels(spec, size)
    track = spec.trained
    value = float(track.score(got, labels)[track.metric])
    fp32 = float(track.score(expected, labels)[track.metric])
    ratio = value / fp32 if fp32 else None
    return {
        "label_metric": track.metric,
        "label_value": value,
        "label_value_fp32": fp32,
        "label_ratio": ratio,
        "label_pass_99": None if ratio is None else ratio >= LABEL_TARGETS[0],
        "label_pass_999": None if ratio is None else ratio >= LABEL_TARGETS[1],
    }


def _closed_loop(engine, spec, c: Cell, feeds, samples, expected, timer, meter) -> dict:
    """The ``latency`` scenario: accuracy on the accuracy batches, then the suite's timer on staged feeds."""
    from bench.timer import measure

    row = _score(spec, c.size, expected, [engine.infer(f) for f in samples])
    engine.prepare(feeds)
    stats = measure(engine.run_prepared, timer, on_measure=meter.start if meter else None)
    if meter is not None:
        # Before the breakdown's extra pass: the energy is the timed window's alone.
        row.update(meter.stop(stats.iterations * c.batch_size))
    row.update(engine.timing_breakdown(stats.iterations))
    row.update(stats.to_row())
    row["iterations"] = stats.iterations
    row["samples_ms"] = stats.samples_ms
    return row


def _loadgen(engine, spec, c: Cell, samples, expected, timer, load, log_dir: str | None, meter) -> dict:
    """A LoadGen scenario: its accuracy mode scored by the suite's metrics, then its performance mode, on the
    accuracy batches as the query sample library (``bench.loadgen``)."""
    from pathlib import Path

    from bench import loadgen

    if log_dir is None:
        raise ValueError("a LoadGen scenario needs a directory for its logs")
    logs = Path(log_dir)
    # Logs of an earlier attempt at this cell (a failed one, retried) must not pass for this one's.
    for stale in [*logs.glob("mlperf_log_*"), *logs.glob("*/mlperf_log_*")]:
        stale.unlink()
    with loadgen.SystemUnderTest(engine, samples, c.concurrency) as sut:
        seconds = loadgen.warm_up(engine, samples[0], timer)
        row = {}
        if expected is not None:
            row.update(
                _score(spec, c.size, expected, loadgen.accuracy(sut, c.scenario, load, seconds, logs / "accuracy"))
            )
        if meter is not None:
            meter.start()
        served = sut.served
        row.update(loadgen.measure(sut, c.scenario, load, seconds, c.batch_size, logs))
        if meter is not None:
            row.update(meter.stop((sut.served - served) * c.batch_size))
    row["samples_ms"] = None
    return row
