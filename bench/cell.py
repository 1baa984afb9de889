"""One cell of the matrix (``Cell``) and its measurement (``run_cell``, in a child process of its own): the
artifact loaded in the engine, its accuracy checked against the FP32 reference, then timed by the suite's timer
(the closed loop) or by MLPerf LoadGen (the other scenarios)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from bench.inputs import Stream, accuracy_feeds, run_batches, state_pairs, timing_feeds
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


class CellSession:
    """One cell in the process that measures it: its artifact loaded in the engine (``__init__``, which also
    checks accuracy against ``reference`` and warms the engine up on the staged timing feeds), then timed in one
    window or in rounds (``round``; other cells' rounds run between them, each in a process of its own, so that
    drift of the machine falls on every cell alike), then summed up (``finish``: the row's columns).

    The closed loop (``latency``) only: LoadGen scenarios run in one window (``run_cell``)."""

    def __init__(self, cell: Cell, timer: TimerSettings, accuracy_samples: int, engine_options: dict, reference):
        from bench.timer import warm_up

        self.cell, self.timer = cell, timer
        self.row, self.engine, self.spec, feeds, expected = _open(cell, engine_options, reference)
        self.meter = None
        try:
            self.meter = _gpu_meter(self.engine)
            # The accuracy batches only where there is a reference to score them against.
            samples = []
            if expected is not None:
                samples = accuracy_feeds(self.spec, cell.size, cell.batch_size, accuracy_samples)
            self.row.update(
                _score(self.spec, cell.size, expected, run_batches(self.engine, self.spec, cell.size, samples))
            )
            self.timed = self.engine.run_prepared
            pairs = state_pairs(self.spec, cell.size)
            if pairs:
                # A stream's state changes with every inference: each timed call feeds the last one's back.
                stream = Stream(self.engine, pairs)
                self.timed = lambda: stream.step(feeds)
                self.row["stream"] = ",".join(f"{output}->{name}" for output, name in pairs.items())
            else:
                self.engine.prepare(feeds)
            warm_up(self.timed, timer)
        except BaseException:
            if self.meter is not None:
                self.meter.close()
            self.engine.deactivate()
            raise
        self.rounds: list[list[float]] = []

    def round(self, seconds: float, min_iters: int, rewarm: int = 0) -> float:
        """Time one round: ``rewarm`` untimed runs (caches the other cells' rounds evicted), then runs until both
        ``seconds`` and ``min_iters`` are reached. Returns the round's p50 latency in ms."""
        from bench.timer import measure

        settings = TimerSettings(0.0, rewarm, seconds, max(1, min_iters))
        meter = self.meter
        stats = measure(self.timed, settings, on_measure=meter.start if meter else None)
        if meter is not None:
            meter.pause(stats.iterations * self.cell.batch_size)
        self.rounds.append(stats.samples_ms)
        return stats.p50

    def finish(self) -> dict:
        """The measured columns (latency statistics over every round's samples, each round's p50, the engine's
        timing breakdown and settings, memory) plus ``samples_ms``; the engine is released."""
        from analysis.intervals import median_interval, unstable
        from bench.timer import LatencyStats

        try:
            samples = [ms for one in self.rounds for ms in one]
            stats = LatencyStats.from_values(samples)
            rounds = [LatencyStats.from_values(r).p50 for r in self.rounds]
            row = self.row
            if self.meter is not None:
                row.update(self.meter.stop(0))
            row.update(self.engine.timing_breakdown(stats.iterations))
            row.update(stats.to_row())
            row["iterations"] = stats.iterations
            row["latency_ms_p50_lo"], row["latency_ms_p50_hi"] = median_interval(samples) or (None, None)
            row["rounds"] = len(self.rounds)
            row["round_p50_ms"] = json.dumps([round(p50, 6) for p50 in rounds])
            row["unstable"] = unstable(rounds, samples)
            row["samples_ms"] = stats.samples_ms
            row["engine_settings"] = json.dumps(self.engine.describe(), sort_keys=True)
        finally:
            if self.meter is not None:
                self.meter.close()
            self.engine.deactivate()
        row["peak_rss_mib"] = _peak_rss_mib()
        return row


def run_cell(
    cell: Cell,
    timer: TimerSettings,
    accuracy_samples: int,
    engine_options: dict,
    reference: str | None,
    load: LoadSettings | None = None,
    log_dir: str | None = None,
) -> dict:
    """Measure one cell in one window: load its artifact (``cell.artifact``) in the engine, check accuracy
    against ``reference`` (an .npz of FP32 outputs, or None to skip), then time it: with the suite's timer in the
    ``latency`` scenario (a ``CellSession`` of one round), with LoadGen (``load``, a
    ``bench.scenarios.LoadSettings``; its logs into ``log_dir``) in the others. Returns the measured columns plus
    ``samples_ms`` (the timer's latencies; None for LoadGen scenarios, whose latencies are in its logs)."""
    if cell.scenario == "latency":
        session = CellSession(cell, timer, accuracy_samples, engine_options, reference)
        session.round(timer.duration_s, timer.min_iters)
        return session.finish()
    row, engine, spec, _, expected = _open(cell, engine_options, reference)
    try:
        meter = _gpu_meter(engine)
        try:
            # LoadGen's query sample library: the accuracy batches, scored or not.
            samples = accuracy_feeds(spec, cell.size, cell.batch_size, accuracy_samples)
            row.update(_loadgen(engine, spec, cell, samples, expected, timer, load or LoadSettings(), log_dir, meter))
        finally:
            if meter is not None:
                meter.close()
        row["engine_settings"] = json.dumps(engine.describe(), sort_keys=True)
    finally:
        engine.deactivate()
    row["peak_rss_mib"] = _peak_rss_mib()
    return row


def _open(cell: Cell, engine_options: dict, reference: str | None) -> tuple:
    """Load ``cell``'s artifact into its engine: (the row's columns so far, the active engine, the model's spec,
    the timing feeds, the FP32 reference outputs or None)."""
    import psutil

    from common import precisions
    from engines import engine_class
    from onnx_models import model_spec
    from onnx_models.store import ModelStore

    if cell.artifact is None:
        raise ValueError(f"cell {cell.id} has no artifact: cells come from bench.plan.plan, which resolves them")
    spec = model_spec(cell.model)
    store = ModelStore(cell.model, cell.size)
    path = store.verified_path(cell.artifact.name)
    entry = store.entry(cell.artifact.name)
    row: dict = {"artifact": str(path), "artifact_sha256": entry["sha256"]}
    if precisions.get(cell.precision).reduced:
        # Recorded when the artifact was built (calibration's builders): how much of the work runs reduced.
        row["reduced_mac_share"] = (entry.get("mac_coverage") or {}).get("share")
    if spec.framework == "onnx":
        # A brought-in file's own precision, and what this cell runs of it: the file as brought (an FP16 file's
        # fp16 cell), its FP32 form (an upcast), or a conversion of that (onnx_models.artifacts).
        found = (store.entry(precisions.BASE) or {}).get("file_precision") or {}
        row["file_precision"] = found.get("text")
        row["artifact_origin"] = entry.get("origin") or f"a conversion of its {precisions.BASE} artifact"
    if precisions.get(cell.precision).quantized:
        from calibration.tensorrt_rules import row_text

        row["int8_weight_bits"] = entry.get("weight_bits")
        # The tensorrt flavour's check against TensorRT's Q/DQ rules: "ok" or the rules it breaks.
        row["int8_conformance"] = row_text(entry.get("tensorrt_conformance"))
        # How many nodes an INT8 plan (accuracy-driven mixed precision) kept in float; 0 when fully quantized.
        row["int8_float_nodes"] = len(entry.get("float_nodes_from_plan", ()))
    feeds = timing_feeds(spec, cell.size, cell.batch_size)
    expected = None
    if reference is not None:
        with np.load(reference) as data:
            expected = {name: data[name] for name in data.files}
    process = psutil.Process()
    engine = engine_class(cell.engine)(engine_options)
    resident = process.memory_info().rss
    start = time.perf_counter()
    # Engines that build for fixed shapes (TensorRT's optimisation profiles) learn the cell's shapes up front.
    engine.activate(path, {name: array.shape for name, array in feeds.items()})
    row["engine_build_s"] = time.perf_counter() - start
    row["engine_load_mib"] = (process.memory_info().rss - resident) / 2**20
    cuda = engine.cuda_device()
    row["device"] = "cpu" if cuda is None else f"cuda:{cuda}"
    row["fp32_math"] = engine.fp32_math()
    return row, engine, spec, feeds, expected


def _peak_rss_mib() -> float:
    """The most this process held (ru_maxrss, KiB on Linux): a cell's process is spawned, so nothing inherited."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    from analysis.intervals import label_ratio_interval
    from onnx_models.trained import eval_labels

    labels = eval_labels(spec, size)
    track = spec.trained

    def score(outputs, truth) -> float:
        return float(track.score(outputs, truth)[track.metric])

    value, fp32 = score(got, labels), score(expected, labels)
    ratio = value / fp32 if fp32 else None
    interval = None
    if ratio is not None:
        interval = label_ratio_interval(score, expected, got, labels, rows_per_sample=track.rows_per_sample)
    lo, hi = interval or (None, None)
    return {
        "label_metric": track.metric,
        "label_value": value,
        "label_value_fp32": fp32,
        "label_ratio": ratio,
        "label_ratio_lo": lo,
        "label_ratio_hi": hi,
        "label_pass_99": None if ratio is None else ratio >= LABEL_TARGETS[0],
        "label_pass_999": None if ratio is None else ratio >= LABEL_TARGETS[1],
    }


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
