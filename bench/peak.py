"""Machine roofs for the roofline: compute per precision and memory bandwidth, measured through an engine.

Compute roofs are dense GEMMs built with ``onnx.helper`` and run by the engine under test, so the roof is
what that engine's kernels reach on this machine, not a datasheet figure:

- a float precision (``fp32``, ``fp16``: the registry's ``element``): ``MatMul`` of an (n, n) input by an
  (n, n) weight in that type (input, weight and output). ONNX Runtime's CPU provider has no float16 MatMul
  kernel on most CPUs; it inserts Casts and runs the float32 kernel, and that is what it measures.
- a quantized precision (``int8``): ``DequantizeLinear(uint8 input)`` and ``DequantizeLinear(int8 weight)``
  into ``MatMul`` into ``QuantizeLinear`` (the QDQ form the suite's INT8 artifacts use, unsigned activations
  and signed weights), which ONNX Runtime fuses into one integer kernel (``QLinearMatMul``); reported as
  integer ops/s.

A GEMM of (n, n) by (n, n) is 2 * n**3 operations (a multiply-accumulate is two), the same rule the FLOP
counter uses. Several sizes are swept; the roof is the best rate over the sweep, and each size's best and
median rates are kept so that saturation and noise can be read off.

The bandwidth roof is a streaming ``Add`` of two float32 vectors into a third, each many times the size of
the last-level cache, counted as STREAM's "Add" kernel does: 3 * 4 bytes per element (two reads, one write;
the extra read that write-allocate caches make for the destination is not counted).

ONNX Runtime sessions on the CPU provider are timed through an IOBinding with preallocated outputs:
``session.run`` copies each output into a new numpy array, which would add a read and a write of the whole
buffer to the streaming kernel. Other engines (device ones) are timed through their own ``prepare`` /
``run_prepared``, as their cells are. Every engine runs with the options (threads) a benchmark cell uses. The
default sizes suit CPUs; a GPU needs larger GEMMs to saturate (``suite.py peak --sizes 4096,8192``).

Like STREAM, a roof is the best (minimum-time) iteration: on a shared machine the median includes the
other tenants' interference, while the best run shows what the hardware and kernels can do. Results are
cached per machine (``analysis.roofs.machine_key``) by ``bench.roofs_cache``.

A best iteration is still low when other work held the cores for the whole timing window. So each point (each
GEMM size of each precision, and the stream) is timed in passes on one session until two consecutive passes'
best rates agree within ``STABLE_TOLERANCE``, at most ``MAX_PASSES`` passes (``settle``); its rate is the best
over the agreeing passes (over all of them where none agreed). The details record every pass's rate, whether
the last two agreed, and overall ``stability``: ``stable``, or ``unstable: `` and the points that never
settled, with their passes' spread.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from analysis.roofs import Roofs
from bench.roofs_cache import local_machine_key, save_roofs
from common import precisions

GEMM_SIZES = (256, 512, 1024, 2048)
QUICK_GEMM_SIZES = (128, 256, 512)
DURATION_S = 1.0
QUICK_DURATION_S = 0.25
# Each streamed array is this many times the last-level cache (three arrays move per iteration).
STREAM_LLC_MULTIPLE = 4
QUICK_STREAM_LLC_MULTIPLE = 2
FALLBACK_LLC_BYTES = 32 * 2**20
# Two consecutive passes of a point agree when their best rates differ by at most this fraction of the higher
# one. Back-to-back passes on a quiet machine agree within a few percent; other work on the cores (a build, a
# second run) costs a roof far more (the issue saw an FP32 roof of 115 GFLOP/s where a quiet machine gives 200,
# 43% low). Tighter than about 5% and the noise of a short quick pass would call quiet machines unstable.
STABLE_TOLERANCE = 0.10
# At most this many passes per point, quick measurements too (their passes are short): a point that has not
# settled by then keeps the best of its passes and is called unstable, rather than waiting on a busy machine.
MAX_PASSES = 3


# ------------------------------------------------------------------------------------------------ graphs


def gemm_model(precision: str, n: int, seed: int = 0):
    """The (n, n) x (n, n) GEMM graph of ``precision`` and one input feed: (ModelProto, {name: array})."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    entry = precisions.get(precision)
    if not entry.quantized:
        dtype = np.dtype(entry.element)
        elem = helper.np_dtype_to_tensor_dtype(dtype)
        nodes = [helper.make_node("MatMul", ["a", "w"], ["c"])]
        inits = [numpy_helper.from_array(rng.standard_normal((n, n)).astype(dtype), "w")]
        feed = rng.standard_normal((n, n)).astype(dtype)
    elif entry.element == "int8":
        elem = TensorProto.UINT8
        nodes = [
            helper.make_node("DequantizeLinear", ["a", "a_scale", "a_zero"], ["a_float"]),
            helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_float"]),
            helper.make_node("MatMul", ["a_float", "w_float"], ["c_float"]),
            helper.make_node("QuantizeLinear", ["c_float", "c_scale", "c_zero"], ["c"]),
        ]
        inits = [
            numpy_helper.from_array(rng.integers(-127, 128, (n, n)).astype(np.int8), "w"),
            numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
            numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
            numpy_helper.from_array(np.array(float(n), np.float32), "c_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "c_zero"),
        ]
        feed = rng.integers(0, 256, (n, n)).astype(np.uint8)
    else:
        raise ValueError(f"no roof GEMM for {precision}'s element type {entry.element}")
    graph = helper.make_graph(
        nodes,
        f"gemm_{precision}_{n}",
        [helper.make_tensor_value_info("a", elem, [n, n])],
        [helper.make_tensor_value_info("c", elem, [n, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model, {"a": feed}


def stream_model(elements: int):
    """The streaming ``c = a + b`` graph over float32 vectors of ``elements``: (ModelProto, feeds)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "stream_add",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [elements]) for name in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [elements])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    feeds = {"a": np.full(elements, 1.0, np.float32), "b": np.full(elements, 2.0, np.float32)}
    return model, feeds


# ------------------------------------------------------------------------------------------- measurement


def last_level_cache_bytes() -> int:
    """The largest CPU cache (from sysfs), or 32 MiB where it cannot be read."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if match:
            best = max(best, int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)])
    return best or FALLBACK_LLC_BYTES


def _timed_unit(engine, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    """The zero-argument call the timer measures: one synchronised run on ``feeds`` with outputs preallocated
    where the engine allows it (ONNX Runtime IOBinding), else the engine's own ``run_prepared``."""
    session = getattr(engine, "session", None)
    # Only for sessions on the CPU provider: binding host arrays to a device provider would add a copy each way
    # to every run, where a device engine's own run_prepared keeps its buffers on the device.
    if session is not None and session.get_providers()[:1] == ["CPUExecutionProvider"]:
        import onnxruntime as ort

        engine.validate(feeds)
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        # Run once to learn the output shapes, then bind preallocated buffers of those shapes.
        outputs = session.run(None, feeds)
        for meta, value in zip(session.get_outputs(), outputs, strict=True):
            binding.bind_ortvalue_output(meta.name, ort.OrtValue.ortvalue_from_numpy(np.empty_like(value)))
        return lambda: session.run_with_iobinding(binding)
    engine.prepare(feeds)
    return engine.run_prepared


def _kernels(engine, path: Path) -> list[str] | None:
    """Op types left after the engine's graph optimisation (ONNX Runtime engines only), to show what ran."""
    if not hasattr(engine, "session_options") or not hasattr(engine, "provider_list"):
        return None
    import onnx
    import onnxruntime as ort

    options = engine.session_options()
    optimized = path.with_suffix(".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    try:
        ort.InferenceSession(str(path), options, providers=engine.provider_list())
        return [node.op_type for node in onnx.load(str(optimized)).graph.node]
    except Exception:  # noqa: BLE001 - the kernel list is informative; a runtime that cannot save it is fine
        return None


def settle(measure_pass: Callable[[int], dict], max_passes: int = MAX_PASSES, tol: float = STABLE_TOLERANCE) -> dict:
    """Time one point in passes until two consecutive ones agree.

    ``measure_pass(index)`` times pass ``index`` (from 0) and returns ``best`` (a rate: higher is faster),
    ``median`` and ``iterations``. Passes go on until the last two passes' best rates differ by at most ``tol``
    of the higher one, or ``max_passes`` (at least 2) have run. Returns the pass with the highest best rate among
    the two that agreed (among all passes where none did), with ``passes`` (every pass's best rate, in order),
    ``agreed`` and ``spread`` (1 - lower / higher of the last two passes' best rates)."""
    if max_passes < 2:
        raise ValueError(f"a stability check needs at least 2 passes, got {max_passes}")
    runs: list[dict] = []
    while True:
        runs.append(measure_pass(len(runs)))
        if len(runs) >= 2:
            low, high = sorted((runs[-2]["best"], runs[-1]["best"]))
            spread = 1.0 - low / high if high > 0 else 0.0
            agreed = spread <= tol
            if agreed or len(runs) >= max_passes:
                break
    chosen = max(runs[-2:] if agreed else runs, key=lambda r: r["best"])
    return {**chosen, "passes": [r["best"] for r in runs], "agreed": agreed, "spread": round(spread, 4)}


def _time(
    engine_name: str,
    options: dict,
    model,
    feeds: dict,
    work: float,
    duration_s: float,
    tmp: Path,
    max_passes: int = MAX_PASSES,
    tol: float = STABLE_TOLERANCE,
) -> dict:
    """Run ``model`` on ``feeds`` in the engine and time it in passes (``settle``) on one session; ``work`` is
    FLOPs or bytes per run. The first pass warms up; the later ones find the session warm."""
    import onnx

    from bench.timer import TimerSettings, measure
    from engines import engine_class

    path = tmp / f"{model.graph.name}.onnx"
    onnx.save(model, str(path))
    with engine_class(engine_name)(options) as engine:
        engine.activate(path)
        unit = _timed_unit(engine, feeds)

        def one_pass(index: int) -> dict:
            warmup = (min(duration_s, 0.5), 1) if index == 0 else (0.0, 0)
            stats = measure(unit, TimerSettings(*warmup, duration_s, 3))
            best, median = work / (stats.min / 1e3), work / (stats.p50 / 1e3)
            return {"best": best, "median": median, "iterations": stats.iterations}

        point = settle(one_pass, max_passes, tol)
        kernels = _kernels(engine, path)
    return {**point, "kernels": kernels}


def _passes_text(point: dict, unit: str) -> str:
    """``passes 1.2e+11, 1.3e+11 FLOP/s (last two 4% apart)``: a point's passes' best rates, for the progress
    line and the stability note."""
    rates = ", ".join(f"{rate:.3g}" for rate in point["passes"])
    return f"passes {rates} {unit} (last two {100 * point['spread']:.0f}% apart)"


def stability(sweeps: dict[str, list[dict]], stream: dict) -> str:
    """``stable`` when every point's last two passes agreed, else ``unstable: `` and each point that did not
    (``gemm fp32 n=512: passes ... (25% apart)``)."""
    unsettled = [
        f"gemm {precision} n={point['n']}: {_passes_text(point, precisions.get(precision).unit)}"
        for precision, points in sweeps.items()
        for point in points
        if not point["agreed"]
    ]
    if not stream["agreed"]:
        unsettled.append(f"stream: {_passes_text(stream, 'B/s')}")
    return "unstable: " + "; ".join(unsettled) if unsettled else "stable"


def measure_roofs(
    engine: str = "ort-cpu",
    threads: int | None = None,
    quick: bool = False,
    gemm_sizes: tuple[int, ...] | None = None,
    stream_bytes: int | None = None,
    duration_s: float | None = None,
    progress: Callable[[str], None] | None = None,
    max_passes: int = MAX_PASSES,
    tol: float = STABLE_TOLERANCE,
) -> Roofs:
    """Measure the compute roof of every element type the engine's precisions run in, and the bandwidth roof.

    ``quick`` uses smaller GEMMs, shorter timing and smaller streams (``gemm_sizes``, ``stream_bytes``, the
    size of each streamed array, and ``duration_s`` per pass override either). Each point is timed in passes
    until two consecutive ones agree within ``tol``, at most ``max_passes`` (``settle``). ``progress`` gets
    one line per finished point. Returns Roofs with ``source`` ``measured`` or ``measured (quick)``.
    """
    from engines import engine_class

    sizes = tuple(gemm_sizes or (QUICK_GEMM_SIZES if quick else GEMM_SIZES))
    duration = duration_s if duration_s is not None else (QUICK_DURATION_S if quick else DURATION_S)
    llc = last_level_cache_bytes()
    array_bytes = stream_bytes or llc * (QUICK_STREAM_LLC_MULTIPLE if quick else STREAM_LLC_MULTIPLE)
    options = {"threads": threads} if threads else {}
    engine_class(engine)  # an unknown engine fails here, before anything is measured
    # One GEMM per element type: a precision whose arithmetic is another's (int8fp16's is int8's) takes that
    # one's roof (``Roofs.peak``) rather than timing the same GEMM again.
    first = {}
    for entry in precisions.REGISTRY:
        if entry.runs_on(engine):
            first.setdefault(entry.element, entry.name)
    measured = list(first.values())
    started = time.time()
    sweeps: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="aimatrix-peak-") as tmp:
        for precision in measured:
            for n in sizes:
                model, feeds = gemm_model(precision, n)
                timed = _time(engine, options, model, feeds, 2.0 * n**3, duration, Path(tmp), max_passes, tol)
                point = {"n": n, **timed}
                sweeps.setdefault(precision, []).append(point)
                if progress:
                    progress(f"gemm {precision} n={n}: {_passes_text(point, precisions.get(precision).unit)}")
        elements = max(1, array_bytes // 4)
        model, feeds = stream_model(elements)
        stream = {
            "array_bytes": elements * 4,
            **_time(engine, options, model, feeds, 12.0 * elements, duration, Path(tmp), max_passes, tol),
        }
        del feeds
        if progress:
            progress(f"stream add 3 x {elements * 4 / 2**20:.0f} MiB: {_passes_text(stream, 'B/s')}")
    return Roofs(
        compute={p: max(point["best"] for point in points) for p, points in sweeps.items()},
        bandwidth=stream["best"],
        source="measured (quick)" if quick else "measured",
        details={
            "machine": local_machine_key(engine, threads),
            "quick": quick,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "duration_s_per_point": duration,
            "max_passes": max_passes,
            "tolerance": tol,
            "stability": stability(sweeps, stream),
            "last_level_cache_bytes": llc,
            "gemm": sweeps,
            "stream": stream,
            "rule": (
                "best (minimum-time) iteration of the agreeing passes (two consecutive passes within the tolerance; "
                "of all passes where none agreed); GEMM 2*n^3 ops; stream 12 bytes per element (STREAM Add)"
            ),
        },
    )


def measure_and_cache(
    engine: str = "ort-cpu", threads: int | None = None, quick: bool = False, replace: str | None = None
) -> dict:
    """Measure (``measure_roofs``) and cache; returns the roofs as JSON (for a child process to hand back).

    ``replace`` says why the cached roofs are wrong (a run's cells went above them): it is kept in the details
    (``replaced_because``), and the new roofs replace the cached ones even where those were a full measurement
    and these are quick (``save_roofs``)."""
    roofs = measure_roofs(engine, threads, quick)
    if replace:
        roofs.details["replaced_because"] = replace
    save_roofs(roofs, replace=bool(replace))
    return roofs.to_json()
