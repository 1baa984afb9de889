"""``tensorrt``: native TensorRT through its Python API, with the CUDA driver API (``engines.cuda_driver``,
ctypes on ``libcuda``) for the context, device and pinned host memory, the stream, events and CUDA graphs.

ONNX parser -> strongly typed network (precision comes from the artifact: FP16 weights and casts, or
symmetric Q/DQ pairs; TensorRT 11 removed the FP16/INT8 builder flags and implicit calibration and types every
network strongly, and 10.x is asked for the same with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) ->
builder config (workspace limit, one optimisation profile with the cell's shapes, a timing cache persisted on
disk, detailed profiling information so that the engine inspector can say which precision each layer runs in)
-> serialized engine, cached on disk under a key of the artifact's sha256, the TensorRT version, the GPU
name, the profile and the builder settings, with a JSON record beside it (how it was built, whether the
network was strongly typed, read from the network at build time) -> runtime -> execution context ->
``set_input_shape`` / ``set_tensor_address`` -> ``execute_async_v3`` on a stream.

Timed region (``run_prepared``, what the shared timer measures): one ``execute_async_v3`` enqueue on the
engine's stream, or one replay of the CUDA graph captured from it when ``cuda_graph`` is asked, then a stream
synchronise; with ``include_copies`` also the copy of every input from pinned host memory to the device before
the enqueue and of every output back to pinned host memory after it. No CUDA event is recorded in it. Before
these, a thread-local check that the engine's CUDA context is current on the calling thread (an attribute
lookup; the driver is asked only the first time on a thread). The
trtexec-style breakdown (``h2d_ms``, ``compute_ms``, ``compute_ms_p50``, ``d2h_ms`` from CUDA events around
each copy and the enqueue) comes from a separate pass after timing, :meth:`TensorRTEngine.timing_breakdown`.

Outputs with data-dependent shapes (NonMaxSuppression, NonZero: the detectors' post-processing) get their
device memory from an ``IOutputAllocator``, preallocated at TensorRT's upper bound for the output where that
is known, and are read at the shape TensorRT notifies. TensorRT synchronises inside ``execute_async_v3`` to
learn such a shape, so such an engine cannot be captured as a CUDA graph: ``cuda_graph`` is refused for it
with an EngineError (rather than run without a graph under a row that says it used one).

FP32 math: TensorRT may run FP32 convolutions and matrix products in TF32 (its default, on Ampere and newer
GPUs); with ``tf32`` off (``--no-tf32``), or under ``NVIDIA_TF32_OVERRIDE=0``, the builder's TF32 flag is
cleared. Whether TF32 was allowed is in the engine's cache key and build record, and ``fp32_math()`` (written
into the row, and into ``describe()``) says which of the two an FP32 cell measured.

A CUDA context is current per thread, and LoadGen's SUT calls ``infer`` from worker threads of its own (one
at a time: ``concurrent_infer`` is False, but not always the same thread, nor the one that activated): every
entry point that reaches the driver or TensorRT first makes the engine's context current on the calling
thread. ``infer`` and ``run_prepared``, which are timed, check a thread-local flag (about 0.1 us) and ask the
driver only the first time on a thread; ``prepare``, ``timing_breakdown`` and ``deactivate`` ask the driver
every time (``cuCtxGetCurrent``, about 1 us through ctypes), so a context that other code made current on the
thread since is noticed before a timing starts.

Works with TensorRT 10.x and 11.x; nothing here imports TensorRT or loads the driver before ``activate``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.paths import atomic_path
from engines.base import Engine, EngineError
from engines.cuda import (
    TENSORRT_INSTALL,
    CudaError,
    cuda_build_problem,
    cuda_major_of,
    device_problem,
    module_distributions,
    module_version,
    unusable,
)
from engines.options import provider_share

MIN_TENSORRT_MAJOR = 10
WORKSPACE_MIB = 4096
# --provider-options keys this engine takes (builder and device settings).
SETTINGS = ("device_id", "workspace_mib", "builder_optimization_level", "cache_dir")
# The batch a symbolic leading dimension gets when ``activate`` is given no input shapes (direct API use; a
# cell always gives its shapes).
DEFAULT_BATCH = 1
# Most rounds of the event-timed pass after timing that gives the H2D / compute / D2H breakdown.
BREAKDOWN_ROUNDS = 50
# A data-dependent output whose upper bound TensorRT gives as at most this many bytes is allocated at that
# bound up front, so that the output allocator never allocates during a timed run; a larger one on demand.
MAX_PREALLOCATED_OUTPUT = 1 << 30
# How every engine is built beyond its settings; part of the cache key, so a change rebuilds. Detailed
# profiling verbosity is metadata for the engine inspector (layer names, precisions, tactics).
BUILD_RULES = {"network": "strongly_typed", "profiling_verbosity": "detailed"}

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
    from common.hashing import cache_key

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
    symbolic dimension raises EngineError (the cell runner passes its input shapes to ``activate`` instead)."""
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
                dims.append(int(batch))
            else:
                raise EngineError(
                    f"tensorrt: input {item.name} has a symbolic dimension {index}; pass input shapes to activate"
                )
        shapes[item.name] = tuple(dims)
    return shapes


# Substrings of the engine inspector's "Format/Datatype" text (``Row major linear FP32``, ``Channel major
# FP16 format where channel % 8 == 0``, ``Row major Int8 format``) -> a data type name; first match wins.
_FORMAT_TYPES = (
    ("BFLOAT16", "BF16"),
    ("BF16", "BF16"),
    ("FP8", "FP8"),
    ("FP4", "FP4"),
    ("FP16", "FP16"),
    ("HALF", "FP16"),
    ("UINT8", "UINT8"),
    ("INT8", "INT8"),
    ("INT4", "INT4"),
    ("INT32", "INT32"),
    ("INT64", "INT64"),
    ("BOOL", "BOOL"),
    ("FP32", "FP32"),
    ("FLOAT", "FP32"),
)


def format_type(text: str) -> str:
    """The data type named in one inspector "Format/Datatype" text (``FP16``, ``INT8``...), or ``other``."""
    upper = text.upper()
    return next((name for key, name in _FORMAT_TYPES if key in upper), "other")


def summarise_layers(information: Any) -> dict[str, int]:
    """{data type: number of layers with an input of that type} from the engine inspector's JSON
    (``get_engine_information(LayerInformationFormat.JSON)``: ``{"Layers": [...], "Bindings": [...]}``, as
    trtexec's ``--exportLayerInfo`` writes; a bare list of layers is read too); empty when the engine was
    built without detailed profiling verbosity (then its layers are bare names)."""
    layers = information if isinstance(information, list) else information.get("Layers", [])
    counts: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, Mapping):
            continue
        types = {
            format_type(str(t.get("Format/Datatype", ""))) for t in layer.get("Inputs", []) if isinstance(t, Mapping)
        }
        for name in types:
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def layer_precisions(trt: Any, engine: Any) -> dict[str, int]:
    """:func:`summarise_layers` of ``engine``, read through TensorRT's engine inspector; empty when the
    inspector cannot say (a report, never a reason to fail a run)."""
    try:
        inspector = engine.create_engine_inspector()
        return summarise_layers(json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)))
    except Exception:  # noqa: BLE001 - see the docstring
        return {}


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _int_setting(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EngineError(f"tensorrt: {name} must be an integer, got {value!r}") from None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        # Also a tensorrt whose libraries (the -libs wheel, libnvinfer) are missing: the message says which.
        raise EngineError(f"tensorrt: cannot import tensorrt ({exc}). Install: {TENSORRT_INSTALL}") from None
    return tensorrt


def _import_driver() -> Any:
    from engines import cuda_driver

    return cuda_driver


class TensorRTEngine(Engine):
    """``tensorrt``: a TensorRT engine built (or loaded from cache) from the artifact, run on a CUDA stream."""

    uses_gpu = True

    name = "tensorrt"
    int8_flavour = "tensorrt"

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.include_copies = self.options.include_copies
        self.cuda_graph = self.options.cuda_graph
        self.info: dict[str, Any] = {}
        self._trt: Any = None
        self._cuda: Any = None
        self._device_context: Any = None
        self._logger: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._events: list[Any] = []
        self._allocator: Any = None
        self._graph: Any = None
        self._profile: Profile = {}
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        # Per I/O tensor at the current shapes: pinned host buffer, its array view, device buffer (the
        # data-dependent outputs keep theirs in the output allocator).
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._host_buffers: dict[str, Any] = {}
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, Any] = {}
        self._dds: list[str] = []
        self._prepared = False
        self._breakdown_rounds = 0
        self._compute_capability: tuple[int, int] | None = None
        # Whether the engine in use was built with TF32 allowed (its key's value), once activated.
        self._tf32: bool | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        # Package metadata and the driver only: importing tensorrt here would load it into `suite.py engines`.
        # Device memory, streams and events go through libcuda, which the driver brings: no other package.
        problems, missing = [], False
        if importlib.util.find_spec("tensorrt") is None:
            problems.append("tensorrt is not installed")
            missing = True
        else:
            version = module_version("tensorrt")
            if version and _major(version) < MIN_TENSORRT_MAJOR:
                problems.append(f"TensorRT {version} is too old (this engine needs 10.x or 11.x)")
                missing = True
            elif version:
                # A driver older than TensorRT's CUDA major cannot run it (its CUDA runtime refuses to start, and
                # every cell fails); the major is in the distribution's name (tensorrt_cu13).
                build = next((cuda_major_of(d) for d in module_distributions("tensorrt") if cuda_major_of(d)), None)
                problems.append(cuda_build_problem(build, f"TensorRT {version}") or "")
        return unusable([*problems, device_problem() or ""], missing, TENSORRT_INSTALL)

    def cuda_device(self) -> int | None:
        return self.settings()["device_id"]

    def tf32_allowed(self) -> bool:
        """Whether the builder may run FP32 convolutions and matrix products in TF32: TensorRT's default, off
        with ``--no-tf32``; also off under ``NVIDIA_TF32_OVERRIDE=0``, with which TensorRT uses no TF32 whatever
        its flag says (so the engine built then is the ``--no-tf32`` one, and is keyed as such)."""
        return self.options.tf32 and os.environ.get("NVIDIA_TF32_OVERRIDE") != "0"

    def fp32_math(self) -> str:
        # Ampere (compute capability 8.0) brought TF32: an older GPU computes FP32 whatever was allowed. Before
        # activation the GPU is not known yet, and only the setting answers.
        capability, allowed = self._compute_capability, self._tf32
        allowed = self.tf32_allowed() if allowed is None else allowed
        return "TF32" if allowed and (capability is None or capability >= (8, 0)) else "FP32"

    def settings(self) -> dict[str, Any]:
        """Builder and device settings from ``--provider-options`` (plain entries and those under "tensorrt"),
        with defaults; an unknown key raises EngineError naming the keys this engine takes."""
        given = provider_share(self.options.provider_options, [self.name], primary=True)
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
        trt = _import_tensorrt()
        if _major(trt.__version__) < MIN_TENSORRT_MAJOR:
            raise EngineError(f"tensorrt: TensorRT {trt.__version__} is too old: this engine needs 10.x or 11.x")
        self._trt, self._cuda = trt, _import_driver()
        try:
            # The device's primary context, current on this thread: TensorRT's runtime calls use it too.
            self._device_context = self._cuda.Context(settings["device_id"])
            self._compute_capability = tuple(self._device_context.compute_capability)
            return self._activate(Path(model_path), settings, self._device_context.name)
        except BaseException as exc:
            # The activation's own error is the one to report, not a teardown one after it.
            with contextlib.suppress(Exception):
                self._release()
            if isinstance(exc, CudaError):
                raise EngineError(f"tensorrt: {exc}") from None
            raise

    def _activate(self, model_path: Path, settings: dict[str, Any], gpu: str) -> dict[str, tuple[tuple, np.dtype]]:
        from common.hashing import sha256_file

        trt, cuda = self._trt, self._cuda
        # A cell always passes its shapes; direct API use without them gets batch DEFAULT_BATCH.
        shapes = self.input_shapes or shapes_from_onnx(model_path, DEFAULT_BATCH)
        self._profile = profile = exact_profile(shapes)
        builder_settings = {k: v for k, v in settings.items() if k not in ("cache_dir", "device_id")}
        builder_settings["tf32"] = self._tf32 = self.tf32_allowed()
        key = engine_cache_key(
            sha256_file(model_path), trt.__version__, gpu, profile, {**builder_settings, **BUILD_RULES}
        )
        cache_dir = Path(settings.get("cache_dir") or model_path.parent / "engines" / self.name)
        engine_path = cache_dir / f"{model_path.stem}-{key}.engine"
        self._logger = _make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        start = time.perf_counter()
        engine, record = self._load_cached(engine_path)
        source = "cache" if engine is not None else "built"
        if engine is None:
            timing_path = cache_dir / f"timing-{trt.__version__}-{key_part(gpu)}.cache"
            plan, strongly_typed = self._build(model_path, profile, builder_settings, timing_path)
            record = {
                "artifact": str(model_path),
                "tensorrt": trt.__version__,
                "gpu": gpu,
                "settings": builder_settings,
                "rules": BUILD_RULES,
                "profile": {n: [list(s) for s in p] for n, p in profile.items()},
                "strongly_typed": strongly_typed,
            }
            # The engine first, then its record: an engine without a record is rebuilt (see _load_cached).
            _write_atomic(engine_path, plan)
            _write_atomic(engine_path.with_suffix(".json"), json.dumps(record, indent=1).encode())
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(f"tensorrt: cannot deserialize the engine just built: {self._logger.last_error()}")
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"tensorrt: cannot create an execution context: {self._logger.last_error()}")
        self._stream = cuda.Stream()
        # start, after the inputs' copy, after the enqueue, after the outputs' copy: timing_breakdown's pass.
        self._events = [cuda.Event() for _ in range(4)]
        meta = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            if engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
                # Shape tensors live in host memory and are read at enqueue: none of the suite's models has one
                # as an input or output, and the device copies here would be wrong for it.
                raise EngineError(f"tensorrt: {name} is a shape tensor in host memory, which this engine does not run")
            try:
                self._dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            except TypeError:
                raise EngineError(
                    f"tensorrt: {name} is {engine.get_tensor_dtype(name)}, which numpy cannot hold"
                ) from None
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
                # Dynamic dimensions (-1) accept any size within the profile; validate() skips non-int dims.
                meta[name] = (tuple(d if d >= 0 else None for d in engine.get_tensor_shape(name)), self._dtypes[name])
            else:
                self._outputs.append(name)
        unknown = sorted(set(self._inputs) - set(shapes))
        if unknown:
            raise EngineError(f"tensorrt: no shape given for input {', '.join(unknown)}")
        self._allocator = _make_output_allocator(trt, cuda)
        # Buffers for the cell's shapes now: which outputs have data-dependent shapes follows from them.
        self._allocate({name: tuple(shapes[name]) for name in self._inputs})
        if self.cuda_graph and self._dds:
            raise EngineError(
                f"tensorrt: {model_path.name} cannot run as a CUDA graph: output {', '.join(self._dds)} has a "
                "data-dependent shape, which TensorRT learns by synchronising inside execute_async_v3 (no graph can "
                "capture that); run it without --cuda-graph"
            )
        self.info = {
            "tensorrt": trt.__version__,
            "gpu": gpu,
            "engine_cache": "hit" if source == "cache" else "built",
            "engine_file": str(engine_path),
            "engine_key": key,
            "load_or_build_s": round(time.perf_counter() - start, 3),
            "profile": {n: list(p[1]) for n, p in profile.items()},
            "strongly_typed": bool(record["strongly_typed"]),
            "tf32": builder_settings["tf32"],
            "fp32_math": self.fp32_math(),
            "layer_precisions": layer_precisions(trt, engine),
            **({"data_dependent_outputs": list(self._dds)} if self._dds else {}),
            **settings,
        }
        return meta

    def _load_cached(self, engine_path: Path) -> tuple[Any, dict[str, Any] | None]:
        """(engine, its build record) from the cache, or (None, None) when there is no usable pair. An engine
        whose record is missing or unreadable says nothing about how it was built, and one this TensorRT
        cannot deserialize (truncated, another build) is useless: both are deleted and rebuilt, never used."""
        if not engine_path.is_file():
            return None, None
        try:
            record = json.loads(engine_path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            record = None
        engine = None
        if isinstance(record, dict) and isinstance(record.get("strongly_typed"), bool):
            engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            engine_path.unlink(missing_ok=True)
            return None, None
        return engine, record

    def _build(
        self, model_path: Path, profile: Profile, settings: dict[str, Any], timing_path: Path
    ) -> tuple[bytes, bool]:
        """Parse the ONNX file into a strongly typed network and build a serialized engine for ``profile``,
        reading and updating the timing cache at ``timing_path``. Returns the plan and whether the network
        was strongly typed."""
        trt, logger = self._trt, self._logger
        builder = trt.Builder(logger)
        if _major(trt.__version__) >= 11:
            # TensorRT 11 types every network strongly; its STRONGLY_TYPED flag is deprecated and ignored
            # (NvInfer.h), so getFlag would only echo what was passed.
            network = builder.create_network(0)
            strongly_typed = True
        else:
            flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            if flag is None:
                raise EngineError(f"tensorrt: TensorRT {trt.__version__} cannot build strongly typed networks")
            network = builder.create_network(1 << int(flag))
            strongly_typed = bool(network.get_flag(flag))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(model_path)):
            errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
            raise EngineError(f"tensorrt: cannot parse {model_path.name}: {errors or logger.last_error()}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_mib"] << 20)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if not settings["tf32"]:
            # TF32 is a math mode of FP32 tensors, not a type, so a strongly typed network keeps the flag (set
            # by default); clearing it leaves IEEE FP32 kernels only, as trtexec's --noTF32 does.
            flag = getattr(getattr(trt, "BuilderFlag", None), "TF32", None)
            if flag is None:
                raise EngineError(
                    f"tensorrt: TensorRT {trt.__version__} has no TF32 builder flag to clear for --no-tf32"
                )
            config.clear_flag(flag)
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
        return bytes(plan), strongly_typed

    # ---------------------------------------------------------------------------------------- buffers, runs

    def _allocate(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set the input shapes and (re)allocate pinned host and device buffers for every I/O tensor at those
        shapes, binding their addresses; an output whose shape TensorRT reports with -1 (data-dependent) gets
        its device memory from the output allocator instead. Any CUDA graph is dropped: it replays old
        addresses."""
        if shapes == self._shapes:
            return
        self._free_buffers()
        cuda, context = self._cuda, self._context
        for name in self._inputs:
            if not context.set_input_shape(name, shapes[name]):
                built = {n: list(p[1]) for n, p in self._profile.items()}
                raise EngineError(
                    f"tensorrt: input {name} shape {shapes[name]} is outside the engine's profile {built}; "
                    "give the shapes to run to activate"
                )
        for name in self._inputs + self._outputs:
            dtype = self._dtypes[name]
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                if name in self._inputs:
                    raise EngineError(f"tensorrt: input {name} still has an unknown dimension {shape}")
                self._dds.append(name)
                bound = int(context.get_max_output_size(name))
                nbytes = bound if 0 < bound <= MAX_PREALLOCATED_OUTPUT else 0
                address = self._allocator.reserve(name, nbytes)
                self._host_buffers[name] = cuda.HostBuffer(self._allocator.buffers[name].nbytes)
                # The preallocated address is used unless the allocator is asked for more (NvInferRuntime.h:
                # "calling both setTensorAddress and setOutputAllocator() for the same output is allowed").
                bound_ok = context.set_tensor_address(name, address)
                if not bound_ok or not context.set_output_allocator(name, self._allocator):
                    raise EngineError(f"tensorrt: cannot bind output {name}: {self._logger.last_error()}")
                continue
            self._device[name] = cuda.DeviceBuffer(math.prod(shape) * dtype.itemsize)
            self._host_buffers[name] = cuda.HostBuffer(math.prod(shape) * dtype.itemsize)
            self._host[name] = self._host_buffers[name].array(shape, dtype)
            if not context.set_tensor_address(name, self._device[name].ptr):
                raise EngineError(f"tensorrt: cannot bind {name}: {self._logger.last_error()}")
        self._shapes = dict(shapes)

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.handle):
            detail = "; ".join(self._allocator.errors) or self._logger.last_error()
            raise EngineError(f"tensorrt: execute_async_v3 failed: {detail}")

    def _enqueue(self) -> None:
        if self._graph is not None:
            self._graph.launch(self._stream)
        else:
            self._execute()

    def _copy_in(self) -> None:
        for name in self._inputs:
            self._cuda.copy_to_device(self._device[name].ptr, self._host[name], self._stream)

    def _copy_out(self) -> None:
        for name in self._outputs:
            if name not in self._dds:
                self._cuda.copy_to_host(self._host[name], self._device[name].ptr, self._stream)
                continue
            nbytes = math.prod(self._dds_shape(name)) * self._dtypes[name].itemsize
            device = self._allocator.buffers[name]
            if self._host_buffers[name].nbytes < nbytes:
                # The allocator was asked for more than was preallocated: grow the host side to match.
                self._host_buffers[name].free()
                self._host_buffers[name] = self._cuda.HostBuffer(device.nbytes)
            target = self._host_buffers[name].array((nbytes,), np.uint8)
            self._cuda.copy_to_host(target, device.ptr, self._stream, nbytes)

    def _dds_shape(self, name: str) -> tuple[int, ...]:
        shape = self._allocator.shapes.get(name)
        if shape is None:
            raise EngineError(f"tensorrt: TensorRT did not report the shape of output {name}")
        return shape

    def _read_outputs(self) -> dict[str, np.ndarray]:
        outputs = {}
        for name in self._outputs:
            if name in self._dds:
                outputs[name] = self._host_buffers[name].array(self._dds_shape(name), self._dtypes[name]).copy()
            else:
                outputs[name] = self._host[name].copy()
        return outputs

    def _stage(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Put ``feeds`` in the device input buffers (allocating for new shapes), then, with ``cuda_graph``
        and no graph yet, capture one: warm-up and capture see the real inputs, never uninitialised memory
        (garbage int64 ids in a Gather can fault and take the CUDA context with them)."""
        self._allocate({name: tuple(feeds[name].shape) for name in self._inputs})
        for name in self._inputs:
            np.copyto(self._host[name], feeds[name])
        self._copy_in()
        self._stream.synchronize()
        if self.cuda_graph and self._graph is None:
            # One plain run first, so that TensorRT's deferred first-run work is not recorded into the graph.
            self._execute()
            self._stream.synchronize()
            self._graph = self._cuda.CudaGraph(self._stream, self._execute)

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # LoadGen times each infer: the thread-local check, as in run_prepared.
        self._device_context.ensure_current()
        self._stage(feeds)
        self._enqueue()
        self._copy_out()
        self._stream.synchronize()
        return self._read_outputs()

    def prepare_impl(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._device_context.make_current()
        self._stage(feeds)
        self._prepared = True

    def run_prepared(self) -> None:
        # Exactly the timed region the module docstring states: nothing else may go in here.
        self._device_context.ensure_current()
        if self.include_copies:
            self._copy_in()
        self._enqueue()
        if self.include_copies:
            self._copy_out()
        self._stream.synchronize()

    def timing_breakdown(self, iterations: int) -> dict[str, float]:
        """Mean H2D, compute and D2H milliseconds and the median compute time, from CUDA events recorded
        around each copy and the enqueue (graph replay with ``cuda_graph``) in a separate pass of
        ``min(iterations, BREAKDOWN_ROUNDS)`` rounds made now, after timing, on the staged feeds: as trtexec
        reports GPU compute apart from its latency, and without putting event work into the timed runs."""
        if not self._prepared:
            return {}
        self._device_context.make_current()
        start, copied_in, computed, copied_out = self._events
        stream = self._stream
        h2d, compute, d2h = [], [], []
        self._breakdown_rounds = max(1, min(int(iterations), BREAKDOWN_ROUNDS))
        for _ in range(self._breakdown_rounds):
            start.record(stream)
            self._copy_in()
            copied_in.record(stream)
            self._enqueue()
            computed.record(stream)
            self._copy_out()
            copied_out.record(stream)
            copied_out.synchronize()
            h2d.append(copied_in.ms_since(start))
            compute.append(computed.ms_since(copied_in))
            d2h.append(copied_out.ms_since(computed))
        return {
            "h2d_ms": statistics.fmean(h2d),
            "compute_ms": statistics.fmean(compute),
            "compute_ms_p50": statistics.median(compute),
            "d2h_ms": statistics.fmean(d2h),
        }

    def describe(self) -> dict[str, Any]:
        settings = {**self.info, "include_copies": self.include_copies, "cuda_graph": self.cuda_graph}
        if self._graph is not None:
            settings["cuda_graph_launches"] = self._graph.launches
        if self._dds:
            settings["output_reallocations"] = self._allocator.reallocations
        if self._breakdown_rounds:
            settings["breakdown_rounds"] = self._breakdown_rounds
        return settings

    # ------------------------------------------------------------------------------------------- teardown

    def _free_buffers(self) -> None:
        closers: list[Callable[[], None]] = []
        if self._graph is not None:
            closers.append(self._graph.close)
        # Array views of pinned memory go before the memory.
        self._host = {}
        closers += [b.free for b in self._device.values()] + [b.free for b in self._host_buffers.values()]
        self._graph, self._device, self._host_buffers, self._shapes, self._dds = None, {}, {}, {}, []
        _close_all(closers)

    def _release(self) -> None:
        # TensorRT's objects before the memory they use, that memory before the stream and events, and all of
        # it before the context it lives in; every step is tried even when an earlier one fails.
        closers: list[Callable[[], None]] = []
        if self._device_context is not None:
            # Every step below calls the driver, perhaps from a thread that has not called this engine before.
            closers.append(self._device_context.make_current)
        if self._graph is not None:
            # The graph replays TensorRT's kernels: it goes before the objects that own them.
            closers.append(self._graph.close)
            self._graph = None
        closers += [self._drop_tensorrt, self._free_buffers]
        if self._allocator is not None:
            closers.append(self._allocator.close)
        closers += [e.close for e in self._events]
        if self._stream is not None:
            closers.append(self._stream.close)
        if self._device_context is not None:
            closers.append(self._device_context.close)
        self._allocator, self._events, self._stream, self._device_context = None, [], None, None
        self._prepared = False
        _close_all(closers)

    def _drop_tensorrt(self) -> None:
        self._context = self._engine = self._runtime = None

    def deactivate_impl(self) -> None:
        self._release()


def _close_all(closers: Sequence[Callable[[], None]]) -> None:
    """Call every closer; re-raise the first failure after all have run."""
    first: BaseException | None = None
    for close in closers:
        try:
            close()
        except Exception as exc:  # noqa: BLE001 - raised below, after the others have run
            first = first or exc
    if first is not None:
        raise first


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


def _make_output_allocator(trt, cuda):
    """A ``trt.IOutputAllocator`` for the outputs with data-dependent shapes: device buffers it owns (one per
    output, grown when TensorRT asks for more than it holds, never shrunk) and the shape TensorRT notified for
    each after the last run."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, Any] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.errors: list[str] = []
            self.reallocations = 0

        def reserve(self, name: str, nbytes: int) -> int:
            """Allocate ``nbytes`` (at least one byte) for output ``name`` up front; returns its address."""
            old = self.buffers.pop(name, None)
            if old is not None:
                old.free()
            self.shapes.pop(name, None)
            self.buffers[name] = cuda.DeviceBuffer(nbytes)
            return self.buffers[name].ptr

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            # TensorRT 10.x and 11.x call this one (IOutputAllocator::reallocateOutputAsync); the stream is the
            # enqueue's, and nothing is queued on it here (cuMemAlloc is synchronous).
            return self._reallocate(tensor_name, int(size), int(alignment))

        def reallocate_output(self, tensor_name, memory, size, alignment):
            # Deprecated since 10.0; kept for a binding that still calls it.
            return self._reallocate(tensor_name, int(size), int(alignment))

        def _reallocate(self, name: str, size: int, alignment: int) -> int:
            # An exception must not escape into TensorRT: it is kept for the EngineError, and 0 (nullptr)
            # makes the enqueue fail.
            try:
                buffer = self.buffers.get(name)
                if buffer is None or buffer.nbytes < size:
                    if buffer is not None:
                        self.buffers.pop(name).free()
                    buffer = self.buffers[name] = cuda.DeviceBuffer(size)
                    self.reallocations += 1
                if alignment > 1 and buffer.ptr % alignment:
                    raise CudaError(f"the allocation at {buffer.ptr:#x} is not {alignment}-byte aligned")
                return buffer.ptr
            except Exception as exc:  # noqa: BLE001 - see above
                self.errors.append(f"allocating {size} bytes for output {name}: {exc}")
                return 0

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def close(self) -> None:
            buffers, self.buffers = list(self.buffers.values()), {}
            _close_all([b.free for b in buffers])

    return OutputAllocator()
