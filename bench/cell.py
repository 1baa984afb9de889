"""Work that runs inside a child process: building one artifact, counting FLOPs, computing the FP32
reference outputs, and measuring one cell. Every function takes and returns plain picklable values.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np

from bench.timer import TimerSettings

ACCURACY_SEED = 5000
TIMING_SEED = 4242


@dataclass(frozen=True)
class Cell:
    """One point of the matrix."""

    model: str
    size: str
    engine: str
    precision: str
    batch_size: int
    # The load scenario (``bench.scenarios``) and, for those that serve queries in parallel, the SUT's threads.
    scenario: str = "latency"
    concurrency: int = 1

    @property
    def id(self) -> str:
        """``model/size/engine/precision/bN``, then ``/scenario`` and ``/cN`` where they are not the closed loop's
        (so the ids of latency cells, and with them the results directories of earlier runs, stay as they were)."""
        base = f"{self.model}/{self.size}/{self.engine}/{self.precision}/b{self.batch_size}"
        if self.scenario != "latency":
            base += f"/{self.scenario}"
        return base + (f"/c{self.concurrency}" if self.concurrency != 1 else "")


def build_artifact(model: str, size: str, precision: str, flavour: str, export: dict, calib: dict) -> str:
    """Build (or reuse) one artifact; returns its path. ``export`` and ``calib`` are the settings' fields."""
    from onnx_models import model_spec
    from onnx_models.artifacts import CalibrationSettings, ExportSettings, ensure

    path = ensure(
        model_spec(model),
        size,
        precision,
        ExportSettings(**export),
        CalibrationSettings(**calib),
        int8_flavour=flavour,
    )
    return str(path)


def clean_graph(model: str, size: str) -> None:
    """Slim the stored FP32 graph of ``model`` once, into the store's cache that its FP16 and INT8 builds start
    from (``onnx_models.artifacts.cleaned_fp32``)."""
    from onnx_models.artifacts import cleaned_fp32
    from onnx_models.store import ModelStore

    cleaned_fp32(ModelStore(model, size))


def count_flops(model: str, size: str, batches: list[int]) -> dict[int, dict]:
    """FLOPs, params and bytes of the stored FP32 artifact at each batch size: ``{batch: {column: value}}``.

    Cached next to it under the artifact's sha256; the cache is used only while its own bytes match the
    sha256 the manifest recorded for it, and is recounted otherwise.

    Inputs take the shapes of the timed feeds at each batch size, so graphs with dynamic dimensions besides
    the batch (brought-in ONNX models) are counted at the shapes that are measured."""
    from analysis.flops import count
    from onnx_models import model_spec
    from onnx_models.store import ModelStore

    store = ModelStore(model, size)
    path = store.verified_path("fp32")
    spec = model_spec(model)
    from common.source_hash import source_digest

    # Keyed by the file and by the counting rules' source: a changed rule recounts instead of reusing.
    cache = f"flops-{store.entry('fp32')['sha256'][:16]}-{source_digest('analysis.flops')[:8]}.json"
    known = _read_json_cache(store, cache)
    missing = [b for b in batches if "activation_bytes" not in known.get(str(b), {})]
    if missing:
        import onnx

        graph = onnx.load(str(path))
        for batch in missing:
            shapes = {name: array.shape for name, array in spec.make_feeds(size, batch, TIMING_SEED).items()}
            cost = count(graph, batch, shapes)
            known[str(batch)] = {
                "flops_per_batch": cost.flops,
                "mac_flops_per_batch": cost.mac_flops,
                "params": cost.params,
                "weight_bytes": cost.weight_bytes,
                "io_bytes": cost.io_bytes,
                "activation_bytes": cost.activation_bytes,
                "uncounted_ops": sorted(cost.uncounted),
                "unknown_shapes": len(cost.unknown_shapes),
            }
        text = json.dumps(known, indent=1, sort_keys=True)
        store.write_cache(cache, lambda tmp: tmp.write_text(text))
        store.update(params=known[str(missing[0])]["params"])
    return {b: known[str(b)] for b in batches}


def _read_json_cache(store, name: str) -> dict:
    """The JSON object in cache ``name`` of ``store`` if the manifest vouches for its bytes and it parses; else
    {} (and the file is deleted), so the caller counts again."""
    path = store.verified_cache(name)
    if path is None:
        return {}
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = None
    if isinstance(known, dict):
        return known
    path.unlink(missing_ok=True)
    return {}


def accuracy_feeds(spec, size: str, batch: int, samples: int) -> list[dict[str, np.ndarray]]:
    """The accuracy inputs, the same for every precision and engine: for a trained model its whole evaluation
    split in batches of ``batch`` (``samples`` is ignored; a tail shorter than a batch is left out, since
    engines built for the cell's shapes take no other), else ceil(samples / batch) seeded batches."""
    if spec.trained is not None:
        from onnx_models.trained import splits

        data = splits(spec, size).eval
        total = len(next(iter(data.values())))
        return [{k: v[i : i + batch] for k, v in data.items()} for i in range(0, total - batch + 1, batch)]
    return [spec.make_feeds(size, batch, ACCURACY_SEED + i) for i in range(max(1, math.ceil(samples / batch)))]


def reference_outputs(model: str, size: str, batch: int, samples: int) -> str:
    """FP32 ONNX Runtime CPU outputs on the accuracy inputs, cached in the store; returns the .npz path, whose
    bytes match the sha256 recorded in the manifest when it was written."""
    from analysis.accuracy import concat
    from common.hashing import cache_key
    from common.packages import onnxruntime_version
    from engines.ort_cpu import OrtCpuEngine
    from onnx_models import model_spec
    from onnx_models.artifacts import output_batch_axes
    from onnx_models.store import ModelStore

    store = ModelStore(model, size)
    fp32 = store.verified_path("fp32")
    spec = model_spec(model)
    # The outputs depend on the file, on the inputs (the model's sampler code and the accuracy seed) and on the
    # ONNX Runtime that computed them.
    axes = output_batch_axes(spec, size)
    inputs = cache_key(sampler=spec.code_digest(), seed=ACCURACY_SEED, onnxruntime=onnxruntime_version(), axes=axes)
    name = f"reference-{store.entry('fp32')['sha256'][:16]}-{inputs[:8]}-b{batch}-n{samples}.npz"
    # Only a file whose sha256 the manifest recorded is used: a truncated one would fail every cell, an edited
    # one would move every accuracy number. Anything else is deleted and computed again.
    path = store.verified_cache(name)
    if path is not None:
        return str(path)
    with OrtCpuEngine() as engine:
        engine.activate(fp32)
        outputs = concat([engine.infer(feeds) for feeds in accuracy_feeds(spec, size, batch, samples)], axes)
    return str(store.write_cache(name, lambda tmp: np.savez(tmp, **outputs)))


def run_cell(
    cell: dict,
    timer: dict,
    accuracy_samples: int,
    engine_options: dict,
    reference: str | None,
    int8_weights: str = "auto",
    load: dict | None = None,
    log_dir: str | None = None,
    float_nodes: list[str] | tuple[str, ...] = (),
    int8_flavour: str | None = None,
) -> dict:
    """Measure one cell: load the artifact in the engine, check accuracy against ``reference`` (an .npz of
    FP32 outputs, or None to skip), then time it: with the suite's timer in the ``latency`` scenario, with
    LoadGen (``load``, a LoadSettings' fields; its logs into ``log_dir``) in the others. ``int8_weights`` picks
    the CPU INT8 artifact's weight range (``calibration.int8_recipe``), ``float_nodes`` the mixed-precision one
    of an INT8 plan, ``int8_flavour`` an INT8 flavour other than the engine's (``artifact_name_for``).
    Returns the measured columns plus ``samples_ms`` (the timer's latencies; None for LoadGen scenarios, whose
    latencies are in its logs)."""
    import resource

    import psutil

    from engines import engine_class
    from onnx_models import model_spec
    from onnx_models.store import ModelStore

    c = Cell(**cell)
    spec = model_spec(c.model)
    engine_cls = engine_class(c.engine)
    artifact, _ = artifact_name_for(c.engine, c.precision, int8_weights, float_nodes, int8_flavour)
    store = ModelStore(c.model, c.size)
    path = store.verified_path(artifact)
    entry = store.entry(artifact)
    row: dict = {"artifact": str(path), "artifact_sha256": entry["sha256"]}
    if c.precision == "int8":
        from calibration.tensorrt_rules import row_text

        row["int8_weight_bits"] = entry.get("weight_bits")
        # The tensorrt flavour's check against TensorRT's Q/DQ rules: "ok" or the rules it breaks.
        row["int8_conformance"] = row_text(entry.get("tensorrt_conformance"))
        # How many nodes an INT8 plan (accuracy-driven mixed precision) kept in float; 0 when fully quantized.
        row["int8_float_nodes"] = len(entry.get("float_nodes_from_plan", ()))
    feeds = spec.make_feeds(c.size, c.batch_size, TIMING_SEED)
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
        timing = TimerSettings(**timer)
        try:
            if c.scenario == "latency":
                # The accuracy batches only where there is a reference to score them against.
                samples = accuracy_feeds(spec, c.size, c.batch_size, accuracy_samples) if expected is not None else []
                row.update(_closed_loop(engine, spec, c, feeds, samples, expected, timing, meter))
            else:
                from bench.scenarios import LoadSettings

                # LoadGen's query sample library: the accuracy batches, scored or not.
                samples = accuracy_feeds(spec, c.size, c.batch_size, accuracy_samples)
                settings = LoadSettings(**(load or {}))
                row.update(_loadgen(engine, spec, c, samples, expected, timing, settings, log_dir, meter))
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


def artifact_name_for(
    engine: str, precision: str, int8_weights: str = "auto", float_nodes=(), flavour: str | None = None
) -> tuple[str, str]:
    """(store artifact name, INT8 flavour) that ``engine`` runs at ``precision``; ``int8_weights`` is the CPU
    INT8 weight range asked for (``auto``, ``8bit``, ``7bit``), ``float_nodes`` the nodes an INT8 plan keeps in
    float (``float_nodes_for``), ``flavour`` an INT8 flavour other than the engine's own (``suite.py explain``
    runs the ``tensorrt`` flavour's graph on ONNX Runtime's CPU provider where no GPU is at hand)."""
    from engines import engine_class
    from onnx_models.artifacts import artifact_name

    flavour = flavour or engine_class(engine).int8_flavour
    return artifact_name(precision, flavour, int8_weights, tuple(float_nodes)), flavour


def float_nodes_for(cell: Cell, calib) -> tuple[str, ...]:
    """The nodes that ``calib``'s INT8 plans (CalibrationSettings) keep in float in ``cell``'s INT8 artifact."""
    from engines import engine_class

    if cell.precision != "int8":
        return ()
    return calib.float_nodes_for(cell.model, cell.size, engine_class(cell.engine).int8_flavour)
