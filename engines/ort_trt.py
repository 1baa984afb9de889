"""ONNX Runtime on the TensorRT execution provider, with the CUDA provider for whatever TensorRT does not take.

Precision comes from the artifact: the FP16 artifact carries float16 weights and casts, the INT8 artifact (the
``tensorrt`` flavour) symmetric QuantizeLinear/DequantizeLinear pairs, which TensorRT builds as explicit
quantization. ONNX Runtime's provider builds weakly typed networks (it has no strongly typed mode), where
TensorRT considers FP16 kernels only with ``trt_fp16_enable`` and refuses to build a Q/DQ network without
``trt_int8_enable``; so the switches are set from what the artifact holds (:func:`precision_switches`), and
the row says which were set and, read back from the built engines, which precision TensorRT gave each layer.
Weakly typed, TensorRT may run any float layer in FP16 once the FP16 switch is on, also a layer the artifact
kept in FP32.

The engine is built for the cell's exact input shapes (``trt_profile_*_shapes``), during session creation, so
the build lands in ``engine_build_s``; engines and TensorRT's timing cache are kept next to the artifact, in a
folder keyed by the artifact's sha256 (artifacts are rebuilt in place under fixed names, and ONNX Runtime's own
engine id hashes names, not weights or scales), the shapes, the switches and TF32. ``--no-tf32`` sets
``NVIDIA_TF32_OVERRIDE=0`` in the cell's process (the provider has no TF32 switch; TensorRT, cuBLAS and cuDNN
read the variable). Inputs and outputs are bound on the device as for ``ort-cuda``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.base import EngineError
from engines.cuda import (
    cuda_build_problem,
    cuda_major_of,
    device_problem,
    module_distributions,
    module_version,
    tf32_math,
    unusable,
)
from engines.libraries import elf_needed, load_library, provider_library
from engines.options import option_string, provider_share
from engines.ort_cuda import OrtDeviceEngine, load_gpu_libraries, ort_gpu_problems

# The marker of ONNX Runtime's refusal of an explicit profile that leaves a TensorRT subgraph's dynamic input out.
PARTIAL_PROFILE_ERROR = "User needs to provide all the dynamic shape inputs"


def provider_nvinfer() -> str | None:
    """The libnvinfer soname (``libnvinfer.so.10``) that the installed onnxruntime's TensorRT provider links, or
    None when this onnxruntime has no TensorRT provider library."""
    library = provider_library("TensorrtExecutionProvider")
    if library is None:
        return None
    return next((name for name in elf_needed(library) if name.startswith("libnvinfer.so.")), None)


def tensorrt_library_problem() -> str | None:
    """Why the TensorRT library that ONNX Runtime's TensorRT provider links cannot be loaded here, or None.

    The provider links one libnvinfer major (1.31.1: ``libnvinfer.so.10``) and dlopens it at session creation;
    another major installed beside it does not count, and ONNX Runtime would silently fall back to CUDA."""
    needed = provider_nvinfer()
    if needed is None:
        return "this onnxruntime has no TensorRT provider library (libonnxruntime_providers_tensorrt.so)"
    major = needed.rsplit(".", 1)[1]
    pin = f"pip install 'tensorrt-cu13=={major}.*' --extra-index-url https://pypi.nvidia.com"
    installed = module_version("tensorrt")
    if installed and installed.split(".")[0] != major:
        return (
            f"ONNX Runtime's TensorRT provider links {needed} (TensorRT {major}.x) but TensorRT {installed} is "
            f"installed: {pin}"
        )
    problem = load_library(needed)
    if problem is not None:
        return f"ONNX Runtime's TensorRT provider needs {needed}, which cannot be loaded ({problem}): {pin}"
    build = next((cuda_major_of(d) for d in module_distributions("tensorrt") if cuda_major_of(d)), None)
    return cuda_build_problem(build, f"TensorRT {installed}") if installed else None


# ONNX element types that make TensorRT's FP16 / BF16 kernels worth considering (TensorProto.FLOAT16, BFLOAT16).
_HALF_TYPES = {10: "trt_fp16_enable", 16: "trt_bf16_enable"}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def _version(path: Path) -> tuple[str, int, int]:
    """``path`` with its modification time and size: what the per-file caches below are keyed by, so that an
    artifact rebuilt in place is read again."""
    status = path.stat()
    return str(path), status.st_mtime_ns, status.st_size


@functools.cache
def _sha256(version: tuple[str, int, int]) -> str:
    from common.hashing import sha256_file

    return sha256_file(Path(version[0]))


def precision_switches(model_path: Path) -> dict[str, bool]:
    """The TensorRT provider's precision switches the artifact at ``model_path`` needs, from its contents (every
    graph, control-flow bodies included): ``trt_int8_enable`` when it holds QuantizeLinear/DequantizeLinear
    nodes, ``trt_fp16_enable`` / ``trt_bf16_enable`` when a tensor, initializer or Cast in it is float16 /
    bfloat16. An FP32 graph gets none."""
    return dict(_switches(_version(Path(model_path))))


@functools.cache
def _switches(version: tuple[str, int, int]) -> tuple[tuple[str, bool], ...]:
    import onnx

    model = onnx.load(version[0], load_external_data=False)
    found: set[str] = set()

    def walk(graph) -> None:
        typed = [*graph.input, *graph.output, *graph.value_info]
        for value in typed:
            found.add(_HALF_TYPES.get(value.type.tensor_type.elem_type, ""))
        for tensor in graph.initializer:
            found.add(_HALF_TYPES.get(tensor.data_type, ""))
        for node in graph.node:
            if node.op_type in _QDQ_OPS:
                found.add("trt_int8_enable")
            for attribute in node.attribute:
                if node.op_type == "Cast" and attribute.name == "to":
                    found.add(_HALF_TYPES.get(attribute.i, ""))
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)
                for body in attribute.graphs:
                    walk(body)

    walk(model.graph)
    return tuple((name, name in found) for name in ("trt_fp16_enable", "trt_bf16_enable", "trt_int8_enable"))


def engine_layer_precisions(cache: Path) -> dict[str, int]:
    """{data type: layers with an input of that type} over the TensorRT engines the provider wrote in ``cache``,
    read with TensorRT's engine inspector; empty when TensorRT cannot be imported or the engines were built
    with layer names only (the inspector then gives no types)."""
    from engines.tensorrt_native import summarise_layers

    try:
        import json

        import tensorrt as trt
    except (ImportError, OSError):
        return {}
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    counts: dict[str, int] = {}
    for path in sorted(cache.glob("*.engine")):
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            continue
        information = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        for name, count in summarise_layers(json.loads(information)).items():
            counts[name] = counts.get(name, 0) + count
    return dict(sorted(counts.items()))


def profile_string(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Shapes in the provider's profile format: ``name:2x3x224x224,other:2x384``. A 0-d input (a sample rate)
    has no dimension to profile, and ``name:`` is no shape the provider reads: it is left out."""
    shapes = {name: shape for name, shape in shapes.items() if len(shape)}
    bad = [name for name in shapes if any(c in name for c in ":,")]
    if bad:
        raise EngineError(f"ort-trt: input names {bad} contain ':' or ',', which the profile option cannot express")
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


class OrtTrtEngine(OrtDeviceEngine):
    """``ort-trt``: TensorRT provider first, then CUDA, then CPU, for the nodes each cannot take."""

    name = "ort-trt"
    primary_provider = "TensorrtExecutionProvider"
    explicit_profile = True
    profile_note = ""
    _tf32_override: str | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        problems, missing = ort_gpu_problems(cls.primary_provider)
        library = tensorrt_library_problem()
        return unusable([*problems, library or "", device_problem() or ""], missing)

    def load_libraries(self) -> None:
        load_gpu_libraries(tensorrt=True)

    def cache_dir(self, shapes: Mapping[str, tuple[int, ...]] | None) -> Path:
        """Where this artifact's engines for these shapes live: ``<artifact dir>/engines/ort-trt/<artifact>-<key>``,
        the key made of the artifact's sha256, the shapes, the precision switches and TF32.

        One directory per artifact content and profile, because the provider keeps one engine per subgraph and
        loads whatever engine its own id names (a hash of names and versions, not of weights or Q/DQ scales):
        a rebuilt artifact must not find the old one's engine, and batch sizes must not evict each other's."""
        from common.hashing import cache_key

        model = self.model_path or Path.home() / ".cache" / "aimatrix" / "model.onnx"
        content = _sha256(_version(model)) if model.is_file() else None
        switches = precision_switches(model) if model.is_file() else {}
        key = cache_key(
            artifact=content,
            shapes={k: list(v) for k, v in (shapes or {}).items()},
            switches=switches,
            tf32=self.options.tf32,
        )
        return model.parent / "engines" / self.name / f"{model.stem}-{key}"

    def trt_options(self) -> dict[str, str]:
        """TensorRT provider options: caches in :meth:`cache_dir`, the precision switches the artifact needs
        (:func:`precision_switches`), the cell's shapes as the only profile, CUDA graphs if asked, then the
        user's share of ``--provider-options``."""
        shapes = self.input_shapes
        cache = self.cache_dir(shapes)
        options: dict[str, Any] = {
            "device_id": 0,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache.parent),
        }
        if self.model_path is not None and self.model_path.is_file():
            options.update({k: True for k, on in precision_switches(self.model_path).items() if on})
        if shapes and self.explicit_profile:
            profile = profile_string(shapes)
            options.update({f"trt_profile_{bound}_shapes": profile for bound in ("min", "opt", "max")})
        if self.cuda_graph:
            options["trt_cuda_graph_enable"] = True
        options.update(provider_share(self.options.provider_options, [self.primary_provider, self.name], primary=True))
        return {key: option_string(value) for key, value in options.items()}

    def provider_list(self) -> list:
        trt = self.trt_options()
        return [
            (self.primary_provider, trt),
            ("CUDAExecutionProvider", self.cuda_options(primary=False, device_id=trt["device_id"])),
            "CPUExecutionProvider",
        ]

    def activate_impl(self, model_path: Path):
        if not self.options.tf32 and self._tf32_override is None:
            # Read by TensorRT, cuBLAS and cuDNN when they start, which is during the session's creation below.
            self._tf32_override = os.environ.get("NVIDIA_TF32_OVERRIDE", "")
            os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
        try:
            return self._activate(Path(model_path))
        except BaseException:
            self._restore_tf32()
            raise

    def _activate(self, model_path: Path):
        self.model_path = model_path
        self.explicit_profile, self.profile_note = True, "explicit: the cell's input shapes (min = opt = max)"
        try:
            return self._start(model_path)
        except EngineError as exc:
            # ONNX Runtime's whole message (the row's reason keeps its first line) names the inputs.
            root: BaseException = exc
            while root.__cause__ is not None:
                root = root.__cause__
            refused = f"{self.activation_log}{exc}\n{root}"
            if PARTIAL_PROFILE_ERROR not in refused or not self.input_shapes:
                raise
        # ONNX Runtime split the graph between TensorRT and another provider, and a TensorRT part has a dynamic
        # input of its own, which an explicit profile would have to name; the provider then builds its
        # profiles from the shapes it is run with instead (a fixed-shape cell has one), at the first run.
        missing = refused[refused.index(PARTIAL_PROFILE_ERROR) :].split("provided:")[-1].strip().split("\n")[0]
        self.explicit_profile = False
        self.profile_note = f"implicit, built at the first run: an explicit profile was refused (needs {missing[:200]})"
        return self._start(model_path)

    def _start(self, model_path: Path):
        trt = self.trt_options()
        # The provider writes its caches but does not create missing directories on every version.
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            Path(trt[key]).mkdir(parents=True, exist_ok=True)
        meta = OrtDeviceEngine.activate_impl(self, model_path)
        if self.cuda_graph:
            self._refuse_partial_graph()
        return meta

    def _refuse_partial_graph(self) -> None:
        """With ``--cuda-graph``: an EngineError when TensorRT did not take every node of the graph, since then the
        provider cannot capture the whole run as one graph, and a row saying ``cuda_graph: true`` would time
        something else."""
        others = {p: n for p, n in self.node_providers().items() if p != self.primary_provider}
        if others:
            del self.session
            elsewhere = ", ".join(f"{n} on {p}" for p, n in sorted(others.items()))
            raise EngineError(
                f"{self.name}: --cuda-graph needs every node on TensorRT, but {elsewhere}; run without --cuda-graph "
                "(or use the tensorrt engine, which builds the whole graph)"
            )

    def fp32_math(self) -> str:
        # NVIDIA_TF32_OVERRIDE, set for --no-tf32, is read by tf32_math too.
        return tf32_math(self.options.tf32, self.device_id)

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "trt_profile": self.profile_note}
        if self.model_path is not None:
            info["trt_precision_switches"] = sorted(k for k, on in precision_switches(self.model_path).items() if on)
            cache = Path(info["provider_options"][self.primary_provider]["trt_engine_cache_path"])
            info["trt_layer_precisions"] = engine_layer_precisions(cache) or "unknown (TensorRT not importable here)"
        return info

    def deactivate_impl(self) -> None:
        try:
            super().deactivate_impl()
        finally:
            self._restore_tf32()

    def _restore_tf32(self) -> None:
        """Put ``NVIDIA_TF32_OVERRIDE`` back as it was before :meth:`activate_impl` set it."""
        if self._tf32_override is not None:
            if self._tf32_override:
                os.environ["NVIDIA_TF32_OVERRIDE"] = self._tf32_override
            else:
                os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
            self._tf32_override = None
