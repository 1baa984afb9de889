"""Machine roofs for the roofline: compute per precision and memory bandwidth, measured through an engine.

Compute roofs are dense GEMMs built with ``onnx.helper`` and run by the engine under test, so the roof is
what that engine's kernels reach on this machine, not a datasheet figure:

- ``fp32``: ``MatMul`` of an (n, n) float input by an (n, n) float weight.
- ``fp16``: the same in float16 (input, weight and output). ONNX Runtime's CPU provider has no float16
  MatMul kernel on most CPUs; it inserts Casts and runs the float32 kernel, and that is what it measures.
- ``int8``: ``DequantizeLinear(uint8 input)`` and ``DequantizeLinear(int8 weight)`` into ``MatMul`` into
  ``QuantizeLinear`` (the QDQ form the suite's INT8 artifacts use, unsigned activations and signed weights),
  which ONNX Runtime fuses into one integer kernel (``QLinearMatMul``); reported as integer ops/s.

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
cached per machine (CPU model, logical cores, onnxruntime version, engine, threads) in
``$AIMATRIX_CACHE/peaks.json`` (default ``~/.cache/aimatrix``). Named presets and given roofs describe
another machine (a datasheet); when any is given, measured roofs are not mixed in.
"""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")
GEMM_SIZES = (256, 512, 1024, 2048)
QUICK_GEMM_SIZES = (128, 256, 512)
DURATION_S = 1.0
QUICK_DURATION_S = 0.25
# Each streamed array is this many times the last-level cache (three arrays move per iteration).
STREAM_LLC_MULTIPLE = 4
QUICK_STREAM_LLC_MULTIPLE = 2
FALLBACK_LLC_BYTES = 32 * 2**20

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}


@dataclass
class Roofs:
    """The roofs of one machine and engine.

    ``compute`` maps precision -> FLOP/s (integer ops/s for ``int8``); ``bandwidth`` is bytes/s. ``source``
    says where they come from (``measured``, ``measured (quick)``, a preset's citation, ``given``).
    ``details`` holds the measurement: machine key, per-size sweeps, kernels, time.
    """

    compute: dict[str, float]
    bandwidth: float | None
    source: str
    details: dict[str, Any] = field(default_factory=dict)

    def attainable(self, precision: str, intensity: float | None) -> float | None:
        """The roofline bound min(compute roof, bandwidth * intensity) for ``precision``, or None if unknown.

        Without a bandwidth roof (or intensity) the compute roof alone is the bound.
        """
        peak = self.compute.get(precision)
        if peak is None:
            return None
        if self.bandwidth is None or not intensity:
            return peak
        return min(peak, self.bandwidth * intensity)

    def bound(self, precision: str, intensity: float | None) -> str | None:
        """``compute`` or ``memory``: which roof limits a point at ``intensity`` (None if unknown)."""
        peak = self.compute.get(precision)
        if peak is None or self.bandwidth is None or not intensity:
            return None
        return "memory" if self.bandwidth * intensity < peak else "compute"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``Roofs.from_json`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Roofs:
        """Read roofs written by ``to_json`` (or by hand: ``compute``, ``bandwidth`` and ``source``)."""
        given = {str(k): float(v) for k, v in dict(data.get("compute") or {}).items()}
        unknown = sorted(set(given) - set(PRECISIONS))
        if unknown:
            raise ValueError(f"unknown precisions {unknown} in roofs; valid: {', '.join(PRECISIONS)}")
        bandwidth = data.get("bandwidth")
        return cls(
            {p: given[p] for p in PRECISIONS if p in given},
            float(bandwidth) if bandwidth is not None else None,
            str(data.get("source", "given")),
            dict(data.get("details") or {}),
        )


# Datasheet roofs. Tensor-core figures are dense (without structured sparsity); INT8 is in ops/s.
PRESETS: dict[str, Roofs] = {
    "v100": Roofs(
        {"fp32": 14e12, "fp16": 112e12},
        900e9,
        "NVIDIA V100 PCIe: FP32 14 TFLOP/s and 900 GB/s as in the AI Matrix paper's Figure 1; "
        "FP16 tensor cores 112 TFLOP/s from NVIDIA's V100 datasheet",
    ),
    "t4": Roofs(
        {"fp32": 8.1e12, "fp16": 65e12, "int8": 130e12},
        320e9,
        "NVIDIA T4 datasheet: FP32 8.1 TFLOP/s, FP16 (mixed) 65 TFLOP/s, INT8 130 TOPS, 320 GB/s",
    ),
    "a100": Roofs(
        {"fp32": 19.5e12, "fp16": 312e12, "int8": 624e12},
        2039e9,
        "NVIDIA A100 80GB SXM datasheet: FP32 19.5 TFLOP/s, FP16 tensor 312 TFLOP/s, INT8 tensor 624 TOPS "
        "(dense), 2039 GB/s",
    ),
    "h100": Roofs(
        {"fp32": 67e12, "fp16": 989e12, "int8": 1979e12},
        3.35e12,
        "NVIDIA H100 SXM datasheet: FP32 67 TFLOP/s, FP16 tensor 989 TFLOP/s, INT8 tensor 1979 TOPS (dense, "
        "half the sparsity figures), 3.35 TB/s",
    ),
    "h200": Roofs(
        {"fp32": 67e12, "fp16": 989e12, "int8": 1979e12},
        4.8e12,
        "NVIDIA H200 SXM datasheet: FP32 67 TFLOP/s, FP16 tensor 989 TFLOP/s, INT8 tensor 1979 TOPS (dense), 4.8 TB/s",
    ),
}


class PeakError(ValueError):
    """Roof values or a roofs file the user gave that cannot be used."""


# ------------------------------------------------------------------------------------------- given roofs


def parse_rate(text: str) -> float:
    """A positive rate such as ``14e12``, ``14T`` or ``900G`` (SI prefix k, M, G, T, P) -> float."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtTpP]?)\s*", text)
    if not match:
        raise PeakError(f"cannot read {text!r} as a rate; write e.g. 14e12, 14T or 900G")
    value = float(match.group(1)) * _SI[match.group(2).lower()]
    if value <= 0:
        raise PeakError(f"a roof must be positive, got {text!r}")
    return value


def parse_flops(text: str) -> dict[str, float]:
    """``--peak-flops``: one rate (the FP32 roof) or ``fp32=14T,fp16=112T,int8=...`` -> {precision: rate}."""
    if "=" not in text:
        return {"fp32": parse_rate(text)}
    roofs = {}
    for part in text.split(","):
        precision, _, value = part.partition("=")
        precision = precision.strip()
        if precision not in PRECISIONS:
            raise PeakError(f"unknown precision {precision!r} in --peak-flops; valid: {', '.join(PRECISIONS)}")
        roofs[precision] = parse_rate(value)
    return roofs


def given_roofs(preset: str | None = None, peak_flops: str | None = None, peak_bw: str | None = None) -> Roofs | None:
    """Roofs from a preset name or a roofs JSON file (``preset``), overridden by ``peak_flops``/``peak_bw``.

    Returns None when nothing is given (measured roofs apply). Raises PeakError for a name or value that
    cannot be used.
    """
    if preset is None and peak_flops is None and peak_bw is None:
        return None
    base = Roofs({}, None, "given")
    if preset is not None:
        if preset in PRESETS:
            preset_roofs = PRESETS[preset]
            base = Roofs(dict(preset_roofs.compute), preset_roofs.bandwidth, f"preset {preset}: {preset_roofs.source}")
        elif Path(preset).is_file():
            try:
                base = Roofs.from_json(json.loads(Path(preset).read_text()))
            except (ValueError, TypeError, AttributeError) as exc:
                raise PeakError(f"{preset} is not a roofs JSON file ({exc})") from None
        else:
            raise PeakError(f"unknown preset {preset!r}: not a roofs JSON file; presets: {', '.join(PRESETS)}")
    sources = [base.source] if preset is not None else []
    if peak_flops is not None:
        base.compute.update(parse_flops(peak_flops))
        sources.append(f"given --peak-flops {peak_flops}")
    if peak_bw is not None:
        base.bandwidth = parse_rate(peak_bw)
        sources.append(f"given --peak-bw {peak_bw}")
    base.source = "; ".join(sources)
    return base


# ------------------------------------------------------------------------------------------------ graphs


def gemm_model(precision: str, n: int, seed: int = 0):
    """The (n, n) x (n, n) GEMM graph of ``precision`` and one input feed: (ModelProto, {name: array})."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    if precision in ("fp32", "fp16"):
        dtype, elem = (np.float32, TensorProto.FLOAT) if precision == "fp32" else (np.float16, TensorProto.FLOAT16)
        nodes = [helper.make_node("MatMul", ["a", "w"], ["c"])]
        inits = [numpy_helper.from_array(rng.standard_normal((n, n)).astype(dtype), "w")]
        feed = rng.standard_normal((n, n)).astype(dtype)
    elif precision == "int8":
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
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
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


def _time(engine_name: str, options: dict, model, feeds: dict, work: float, duration_s: float, tmp: Path) -> dict:
    """Run ``model`` on ``feeds`` in the engine and time it; ``work`` is FLOPs or bytes per run."""
    import onnx

    from bench.timer import TimerSettings, measure
    from engines import engine_class

    path = tmp / f"{model.graph.name}.onnx"
    onnx.save(model, str(path))
    with engine_class(engine_name)(options) as engine:
        engine.activate(path)
        stats = measure(_timed_unit(engine, feeds), TimerSettings(min(duration_s, 0.5), 1, duration_s, 3))
        kernels = _kernels(engine, path)
    return {
        "best": work / (stats.min / 1e3),
        "median": work / (stats.p50 / 1e3),
        "iterations": stats.iterations,
        "kernels": kernels,
    }


def machine_key(engine: str, threads: int | None = None) -> dict[str, Any]:
    """What identifies a machine's roofs: CPU model, logical cores, onnxruntime version, engine, threads."""
    from bench.env import cpu_info
    from engines.ort_cpu import physical_cores

    cpu = cpu_info()
    ort_version = "absent"
    for package in ("onnxruntime", "onnxruntime-gpu"):
        try:
            ort_version = metadata.version(package)
            break
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu["model"],
        "logical_cores": cpu["logical_cores"],
        "onnxruntime": ort_version,
        "engine": engine,
        "threads": int(threads or physical_cores()),
        "host": platform.node(),
    }


def _key_string(key: Mapping[str, Any]) -> str:
    # The host name is recorded but not part of the key: identical machines share their roofs.
    return "|".join(str(key[k]) for k in ("engine", "cpu", "logical_cores", "onnxruntime", "threads"))


def measure_roofs(
    engine: str = "ort-cpu",
    threads: int | None = None,
    quick: bool = False,
    gemm_sizes: tuple[int, ...] | None = None,
    stream_bytes: int | None = None,
    duration_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Roofs:
    """Measure the compute roof of every precision the engine runs and the bandwidth roof.

    ``quick`` uses smaller GEMMs, shorter timing and smaller streams (``gemm_sizes``, ``stream_bytes``, the
    size of each streamed array, and ``duration_s`` per point override either). ``progress`` gets one line
    per finished point. Returns Roofs with ``source`` ``measured`` or ``measured (quick)``.
    """
    from engines import engine_class

    sizes = tuple(gemm_sizes or (QUICK_GEMM_SIZES if quick else GEMM_SIZES))
    duration = duration_s if duration_s is not None else (QUICK_DURATION_S if quick else DURATION_S)
    llc = last_level_cache_bytes()
    array_bytes = stream_bytes or llc * (QUICK_STREAM_LLC_MULTIPLE if quick else STREAM_LLC_MULTIPLE)
    options = {"threads": threads} if threads else {}
    precisions = [p for p in PRECISIONS if p in engine_class(engine).precisions]
    started = time.time()
    sweeps: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="aimatrix-peak-") as tmp:
        for precision in precisions:
            for n in sizes:
                model, feeds = gemm_model(precision, n)
                point = {"n": n, **_time(engine, options, model, feeds, 2.0 * n**3, duration, Path(tmp))}
                sweeps.setdefault(precision, []).append(point)
                if progress:
                    progress(f"gemm {precision} n={n}: best {point['best']:.3g}/s")
        elements = max(1, array_bytes // 4)
        model, feeds = stream_model(elements)
        stream = {
            "array_bytes": elements * 4,
            **_time(engine, options, model, feeds, 12.0 * elements, duration, Path(tmp)),
        }
        del feeds
        if progress:
            progress(f"stream add 3 x {elements * 4 / 2**20:.0f} MiB: best {stream['best']:.3g} B/s")
    return Roofs(
        compute={p: max(point["best"] for point in points) for p, points in sweeps.items()},
        bandwidth=stream["best"],
        source="measured (quick)" if quick else "measured",
        details={
            "machine": machine_key(engine, threads),
            "quick": quick,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "duration_s_per_point": duration,
            "last_level_cache_bytes": llc,
            "gemm": sweeps,
            "stream": stream,
            "rule": "best (minimum-time) iteration; GEMM 2*n^3 ops; stream 12 bytes per element (STREAM Add)",
        },
    )


# ------------------------------------------------------------------------------------------------- cache


def cache_path() -> Path:
    """``$AIMATRIX_CACHE/peaks.json``, else ``$XDG_CACHE_HOME/aimatrix/peaks.json`` (``~/.cache``)."""
    root = os.environ.get("AIMATRIX_CACHE")
    if root:
        return Path(root) / "peaks.json"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aimatrix" / "peaks.json"


def _read_cache() -> dict[str, Any]:
    try:
        return json.loads(cache_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def cached_roofs(key: Mapping[str, Any]) -> Roofs | None:
    """The cached measured roofs for a machine key (see ``machine_key``), or None."""
    entry = _read_cache().get(_key_string(key))
    return Roofs.from_json(entry) if entry else None


def save_roofs(roofs: Roofs) -> bool:
    """Cache measured roofs under their machine key; a quick measurement never replaces a full one.

    Returns True when the cache was written.
    """
    key = _key_string(roofs.details["machine"])
    cache = _read_cache()
    old = cache.get(key)
    if old and roofs.details.get("quick") and not old.get("details", {}).get("quick"):
        return False
    cache[key] = roofs.to_json()
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".peaks.", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(cache, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return True


def measure_and_cache(engine: str = "ort-cpu", threads: int | None = None, quick: bool = False) -> dict:
    """Measure (``measure_roofs``) and cache; returns the roofs as JSON (for a child process to hand back)."""
    roofs = measure_roofs(engine, threads, quick)
    save_roofs(roofs)
    return roofs.to_json()


# ---------------------------------------------------------------------------------------------- printing


def format_rate(value: float | None, unit: str) -> str:
    """``2.31e11, "FLOP/s"`` -> ``231 GFLOP/s``."""
    if value is None:
        return "-"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def unit(precision: str) -> str:
    """The compute unit of a precision: ``OP/s`` for integer precisions, ``FLOP/s`` otherwise."""
    return "OP/s" if precision == "int8" else "FLOP/s"


def describe(roofs: Roofs) -> list[str]:
    """Plain-text lines: the sweep (when measured) and the roofs."""
    lines = []
    details = roofs.details
    if "gemm" in details:
        machine = details["machine"]
        lines.append(
            f"{machine['engine']} on {machine['cpu']} ({machine['logical_cores']} logical cores, onnxruntime "
            f"{machine['onnxruntime']}, {machine['threads']} threads), measured {details['measured_at']} in "
            f"{details['seconds']} s, {details['duration_s_per_point']} s per point"
        )
        lines.append(f"{'kernel':<28}{'best':>16}{'median':>16}  median/best  ops after optimisation")
        for precision, points in details["gemm"].items():
            for point in points:
                n = point["n"]
                lines.append(
                    f"{f'gemm {precision} {n}x{n}x{n}':<28}{format_rate(point['best'], unit(precision)):>16}"
                    f"{format_rate(point['median'], unit(precision)):>16}  {point['median'] / point['best']:>11.2f}"
                    f"  {' '.join(point['kernels'] or ['?'])}"
                )
        stream = details["stream"]
        label = f"stream add 3x{stream['array_bytes'] / 2**20:.0f} MiB"
        lines.append(
            f"{label:<28}{format_rate(stream['best'], 'B/s'):>16}"
            f"{format_rate(stream['median'], 'B/s'):>16}  {stream['median'] / stream['best']:>11.2f}"
            f"  {' '.join(stream['kernels'] or ['?'])}"
        )
    roof_text = ", ".join(f"{p} {format_rate(v, unit(p))}" for p, v in roofs.compute.items())
    lines.append(
        f"roofs ({roofs.source}): {roof_text or 'no compute roof'}; bandwidth {format_rate(roofs.bandwidth, 'B/s')}"
    )
    return lines
