"""``tensorrt``: native TensorRT through its Python API, with pycuda for device memory, streams and events.

ONNX parser -> strongly typed network (precision comes from the artifact: FP16 weights and casts, or
symmetric Q/DQ pairs; TensorRT 11 removed the FP16/INT8 builder flags and implicit calibration, and 10.x is
asked for the same strongly typed build) -> builder config (workspace limit, one optimisation profile with the
cell's shapes, a timing cache persisted on disk) -> serialized engine, cached on disk under a key of the
artifact's sha256, the TensorRT version, the GPU name, the profile and the builder settings -> runtime ->
execution context -> ``set_input_shape`` / ``set_tensor_address`` -> ``execute_async_v3`` on a stream.

``run_prepared`` enqueues and synchronises the stream; the shared timer measures it. CUDA events recorded
around the enqueue (and around the copies) give a trtexec-style breakdown, H2D, compute and D2H, reported as
extra columns by :meth:`TensorRTEngine.timing_breakdown`. With ``include_copies`` the copies are part of the
timed region; otherwise they are measured separately after timing. With ``cuda_graph`` the enqueue is captured
once as a CUDA graph and replayed.

Works with TensorRT 10.x and 11.x; nothing here is imported before ``activate``.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.paths import atomic_path
from engines.base import Engine, EngineError
from engines.cuda import GPU_INSTALL, device_problem, module_version, unusable
from engines.options import cell_input_shapes, provider_share

MIN_TENSORRT_MAJOR = 10
WORKSPACE_MIB = 4096
# --provider-options keys this engine takes (builder and device settings).
SETTINGS = ("device_id", "workspace_mib", "builder_optimization_level", "cache_dir")
# How many copy rounds measure H2D/D2H after timing when the copies were not part of the timed region.
COPY_ROUNDS = 20

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def engine_cache_key(
    artifact_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    profile: Mapping[str, Sequence[Sequence[int]]],
    settings: Mapping[str, Any] | None = None,
) -> str:
    """The cache key of a serialized engine: everything the engine depends on. A change of the artifact, the
    TensorRT version, the GPU, any profile shape (min, opt, max of any input) or a builder setting gives a new
    key; the same inputs give the same key. ``profile`` maps input name -> (min, opt, max) shapes."""
    from onnx_models.store import cache_key

    return cache_key(
        artifact=artifact_sha256,
        tensorrt=tensorrt_version,
        gpu=gpu_name,
        profile={name: [[int(d) for d in shape] for shape in shapes] for name, shapes in sorted(profile.items())},
        settings=dict(settings or {}),
    )


def exact_profile(shapes: Mapping[str, Sequence[int]]) -> Profile:
    """One optimisation profile with min = opt = max = each input's shape: the engine is built for exactly
    the shapes it is timed on (as ``trtexec --shapes``)."""
    return {name: (tuple(shape), tuple(shape), tuple(shape)) for name, shape in shapes.items()}


def shapes_from_onnx(model_path: Path, batch: int) -> dict[str, tuple[int, ...]]:
    """Input shapes from the ONNX graph with a symbolic leading (batch) dimension set to ``batch``; any other
    symbolic dimension raises EngineError (the cell runner passes ``input_shapes`` instead)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    shapes = {}
    for item in graph.input:
        if item.name in initializers:
            continue
        dims = []
        for index, dim in enumerate(item.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif index == 0:
                dims.append(batch)
            else:
                raise EngineError(f"tensorrt: input {item.name} has a symbolic dimension {index}; pass input_shapes")
        shapes[item.name] = tuple(dims)
    return shapes


def _int_setting(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EngineError(f"tensorrt: {name} must be an integer, got {value!r}") from None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class TensorRTEngine(Engine):
    """``tensorrt``: a TensorRT engine built (or loaded from cache) from the artifact, run on a pycuda stream."""

    name = "tensorrt"
    int8_flavour = "tensorrt"

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.include_copies = bool(self.options.get("include_copies"))
        self.cuda_graph = bool(self.options.get("cuda_graph"))
        self.info: dict[str, Any] = {}
        self._compute_ms: list[float] = []
        self._h2d_ms: list[float] = []
        self._d2h_ms: list[float] = []
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, Any] = {}
        self._graph = None
        self._cuda_context = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        # Package metadata and the driver only: importing tensorrt here would load it into `suite.py engines`.
        problems, missing = [], False
        if importlib.util.find_spec("tensorrt") is None:
            problems.append("tensorrt is not installed")
            missing = True
        else:
            version = module_version("tensorrt")
            if version and int(version.split(".")[0]) < MIN_TENSORRT_MAJOR:
                problems.append(f"TensorRT {version} is too old (this engine needs 10.x or 11.x)")
                missing = True
        if importlib.util.find_spec("pycuda") is None:
            problems.append("pycuda is not installed")
            missing = True
        return unusable([*problems, device_problem() or ""], missing)

    def settings(self) -> dict[str, Any]:
        """Builder and device settings from ``--provider-options`` (plain entries and those under "tensorrt"),
        with defaults; an unknown key raises EngineError naming the keys this engine takes."""
        given = provider_share(self.options, [self.name], primary=True)
        unknown = sorted(set(given) - set(SETTINGS))
        if unknown:
            raise EngineError(
                f"tensorrt: unknown option {', '.join(unknown)} (it takes {', '.join(SETTINGS)}); put options meant "
                'for one engine under its name, as in {"ort-cuda": {...}}'
            )
        settings: dict[str, Any] = {
            "device_id": _int_setting("device_id", given.get("device_id", 0)),
            "workspace_mib": _int_setting("workspace_mib", given.get("workspace_mib", WORKSPACE_MIB)),
        }
        if "builder_optimization_level" in given:
            settings["builder_optimization_level"] = _int_setting(
                "builder_optimization_level", given["builder_optimization_level"]
            )
        if "cache_dir" in given:
            settings["cache_dir"] = str(given["cache_dir"])
        return settings

    # ------------------------------------------------------------------------------------------ activation

    def activate_impl(self, model_path: Path) -> dict[str, tuple[tuple, np.dtype]]:
        settings = self.settings()
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as exc:
            # Also a pycuda built against a CUDA that is not here: the import's own message says which library.
            raise EngineError(
                f"tensorrt: cannot import {exc.name or 'a GPU package'} ({exc}). Install: {GPU_INSTALL}"
            ) from None
        major = int(trt.__version__.split(".")[0])
        if major < MIN_TENSORRT_MAJOR:
            raise EngineError(f"tensorrt: TensorRT {trt.__version__} is too old: this engine needs 10.x or 11.x")
        self._trt, self._cuda = trt, cuda
        cuda.init()
        device = cuda.Device(settings["device_id"])
        # The primary context is the one TensorRT's runtime calls use, so pycuda's buffers and TensorRT's share it.
        self._cuda_context = device.retain_primary_context()
        self._cuda_context.push()
        try:
            return self._activate(Path(model_path), settings, device.name())
        except BaseException:
            self._release()
            raise

    def _activate(self, model_path: Path, settings: dict[str, Any], gpu: str) -> dict[str, tuple[tuple, np.dtype]]:
        from onnx_models.store import sha256_file

        trt = self._trt
        shapes = cell_input_shapes(self.options) or shapes_from_onnx(model_path, int(self.options.get("batch_size", 1)))
        profile = exact_profile(shapes)
        builder_settings = {k: v for k, v in settings.items() if k not in ("cache_dir", "device_id")}
        key = engine_cache_key(sha256_file(model_path), trt.__version__, gpu, profile, builder_settings)
        cache_dir = Path(settings.get("cache_dir") or model_path.parent / "engines" / self.name)
        engine_path = cache_dir / f"{model_path.stem}-{key}.engine"
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        start = time.perf_counter()
        engine, source = None, "cache"
        if engine_path.is_file():
            engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                # A cache file this TensorRT cannot read (truncated, or from another build) is rebuilt, never trusted.
                engine_path.unlink()
        if engine is None:
            source = "built"
            timing_path = cache_dir / f"timing-{trt.__version__}-{key_part(gpu)}.cache"
            plan = self._build(model_path, profile, builder_settings, timing_path)
            _write_atomic(engine_path, plan)
            engine_path.with_suffix(".json").write_text(
                json.dumps(
                    {
                        "artifact": str(model_path),
                        "tensorrt": trt.__version__,
                        "gpu": gpu,
                        "settings": builder_settings,
                        "profile": {n: [list(s) for s in p] for n, p in profile.items()},
                    },
                    indent=1,
                )
            )
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(f"tensorrt: cannot deserialize the engine just built: {self._logger.last_error()}")
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"tensorrt: cannot create an execution context: {self._logger.last_error()}")
        self._stream = self._cuda.Stream()
        self._events = [self._cuda.Event() for _ in range(4)]
        self._inputs, self._outputs, meta = [], [], {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
                # Dynamic dimensions (-1) accept any size within the profile; validate() skips non-int dims.
                meta[name] = (tuple(d if d >= 0 else None for d in engine.get_tensor_shape(name)), dtype)
            else:
                self._outputs.append(name)
        self.info = {
            "tensorrt": trt.__version__,
            "gpu": gpu,
            "engine_cache": "hit" if source == "cache" else "built",
            "engine_file": str(engine_path),
            "engine_key": key,
            "load_or_build_s": round(time.perf_counter() - start, 3),
            "profile": {n: list(p[1]) for n, p in profile.items()},
            "strongly_typed": True,
            **settings,
        }
        return meta

    def _build(self, model_path: Path, profile: Profile, settings: dict[str, Any], timing_path: Path) -> bytes:
        """Parse the ONNX file into a strongly typed network and build a serialized engine for ``profile``,
        reading and updating the timing cache at ``timing_path``."""
        trt, logger = self._trt, self._logger
        builder = trt.Builder(logger)
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly_typed is None and int(trt.__version__.split(".")[0]) < 11:
            raise EngineError(f"tensorrt: TensorRT {trt.__version__} cannot build strongly typed networks")
        # TensorRT 11 types every network strongly and keeps the flag only for compatibility.
        network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(model_path)):
            errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
            raise EngineError(f"tensorrt: cannot parse {model_path.name}: {errors or logger.last_error()}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_mib"] << 20)
        if "builder_optimization_level" in settings:
            config.builder_optimization_level = settings["builder_optimization_level"]
        optimisation, dynamic = builder.create_optimization_profile(), False
        for index in range(network.num_inputs):
            tensor = network.get_input(index)
            declared = tuple(tensor.shape)
            if tensor.name not in profile:
                raise EngineError(f"tensorrt: no shape given for input {tensor.name}")
            low, opt, high = profile[tensor.name]
            if len(declared) != len(opt) or any(d >= 0 and d != s for d, s in zip(declared, opt, strict=True)):
                raise EngineError(f"tensorrt: input {tensor.name} is {declared}, the cell feeds {opt}")
            if any(d < 0 for d in declared):
                optimisation.set_shape(tensor.name, low, opt, high)
                dynamic = True
        # A network whose inputs are all static takes no profile (TensorRT rejects an empty one).
        if dynamic and config.add_optimization_profile(optimisation) < 0:
            raise EngineError(f"tensorrt: the optimisation profile {profile} is invalid: {logger.last_error()}")
        cached = timing_path.read_bytes() if timing_path.is_file() else b""
        timing = config.create_timing_cache(cached)
        if timing is None or not config.set_timing_cache(timing, False):
            # An unreadable or mismatched timing cache only costs build time: start from an empty one.
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, True)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"tensorrt: building {model_path.name} failed: {logger.last_error()}")
        _write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    # ---------------------------------------------------------------------------------------- buffers, runs

    def _allocate(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set the input shapes, (re)allocate pinned host and device buffers for every I/O tensor and bind
        their addresses; with ``cuda_graph``, capture the enqueue on these addresses."""
        if shapes == self._shapes:
            return
        self._free_buffers()
        cuda, context = self._cuda, self._context
        for name in self._inputs:
            if not context.set_input_shape(name, shapes[name]):
                raise EngineError(f"tensorrt: input {name} shape {shapes[name]} is outside the engine's profile")
        for name in self._inputs + self._outputs:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"tensorrt: output {name} has a data-dependent shape {shape}, which is not supported")
            dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
            self._host[name] = cuda.pagelocked_empty(shape, dtype)
            self._device[name] = cuda.mem_alloc(max(self._host[name].nbytes, 1))
            context.set_tensor_address(name, int(self._device[name]))
        self._shapes = dict(shapes)
        if self.cuda_graph:
            from engines.cuda import CudaGraph

            # One plain enqueue first, so that TensorRT's deferred shape work is not recorded into the graph.
            self._execute()
            self._stream.synchronize()
            self._graph = CudaGraph(self._stream.handle, self._execute)

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.handle):
            raise EngineError(f"tensorrt: execute_async_v3 failed: {self._logger.last_error()}")

    def _enqueue(self) -> None:
        if self._graph is not None:
            self._graph.launch(self._stream.handle)
        else:
            self._execute()

    def _copy_in(self) -> None:
        for name in self._inputs:
            self._cuda.memcpy_htod_async(self._device[name], self._host[name], self._stream)

    def _copy_out(self) -> None:
        for name in self._outputs:
            self._cuda.memcpy_dtoh_async(self._host[name], self._device[name], self._stream)

    def _stage(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._allocate({name: tuple(array.shape) for name, array in feeds.items()})
        for name in self._inputs:
            np.copyto(self._host[name], feeds[name])

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._stage(feeds)
        self._copy_in()
        self._enqueue()
        self._copy_out()
        self._stream.synchronize()
        return {name: self._host[name].copy() for name in self._outputs}

    def prepare_impl(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._stage(feeds)
        self._copy_in()
        self._stream.synchronize()
        self._compute_ms, self._h2d_ms, self._d2h_ms = [], [], []

    def run_prepared(self) -> None:
        start, begin, end, done = self._events
        stream = self._stream
        if self.include_copies:
            start.record(stream)
            self._copy_in()
        begin.record(stream)
        self._enqueue()
        end.record(stream)
        if self.include_copies:
            self._copy_out()
            done.record(stream)
        stream.synchronize()
        self._compute_ms.append(end.time_since(begin))
        if self.include_copies:
            self._h2d_ms.append(begin.time_since(start))
            self._d2h_ms.append(done.time_since(end))

    def timing_breakdown(self, iterations: int) -> dict[str, float]:
        """Mean H2D, compute and D2H milliseconds (CUDA events) over the last ``iterations`` timed runs, and the
        median compute time. Without ``include_copies`` the copies were not timed, so H2D and D2H come from
        separate copy rounds made now."""
        if not self._compute_ms:
            return {}
        compute = self._compute_ms[-iterations:]
        if self.include_copies:
            h2d, d2h = self._h2d_ms[-iterations:], self._d2h_ms[-iterations:]
        else:
            h2d, d2h = [], []
            start, middle, end, _ = self._events
            for _ in range(min(iterations, COPY_ROUNDS)):
                start.record(self._stream)
                self._copy_in()
                middle.record(self._stream)
                self._copy_out()
                end.record(self._stream)
                self._stream.synchronize()
                h2d.append(middle.time_since(start))
                d2h.append(end.time_since(middle))
        return {
            "h2d_ms": statistics.fmean(h2d),
            "compute_ms": statistics.fmean(compute),
            "compute_ms_p50": statistics.median(compute),
            "d2h_ms": statistics.fmean(d2h),
        }

    def describe(self) -> dict[str, Any]:
        return {**self.info, "include_copies": self.include_copies, "cuda_graph": self.cuda_graph}

    # ------------------------------------------------------------------------------------------- teardown

    def _free_buffers(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None
        for allocation in self._device.values():
            allocation.free()
        self._device, self._host, self._shapes = {}, {}, {}

    def _release(self) -> None:
        # Device objects first, then the context they live in.
        self._free_buffers()
        for attribute in ("_context", "_engine", "_runtime", "_stream", "_events"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        if self._cuda_context is not None:
            self._cuda_context.pop()
            self._cuda_context.detach()
            self._cuda_context = None

    def deactivate_impl(self) -> None:
        self._release()


def key_part(text: str) -> str:
    """``text`` reduced to characters safe in a file name (``NVIDIA H200`` -> ``NVIDIA-H200``)."""
    return "".join(c if c.isalnum() or c in ".-_" else "-" for c in text)


def _make_logger(trt):
    """A TensorRT logger that keeps errors (for the row's reason) and passes warnings to stderr."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                sys.stderr.write(f"[TensorRT] ERROR: {msg}\n")
            elif severity == trt.ILogger.Severity.WARNING:
                sys.stderr.write(f"[TensorRT] WARNING: {msg}\n")

        def last_error(self) -> str:
            return self.errors[-1] if self.errors else "no error was logged"

    return Logger()
