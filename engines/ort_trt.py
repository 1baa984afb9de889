"""ONNX Runtime on the TensorRT execution provider, with the CUDA provider for whatever TensorRT does not take.

Precision comes from the artifact, never from the provider's ``trt_fp16_enable`` / ``trt_int8_enable``
switches: the FP16 artifact carries float16 weights and casts, the INT8 artifact (the ``tensorrt`` flavour)
symmetric QuantizeLinear/DequantizeLinear pairs, which TensorRT builds as explicit quantization. The engine
is built for the cell's exact input shapes (``trt_profile_*_shapes``), during session creation, so the build
lands in ``engine_build_s``; engines and TensorRT's timing cache are kept next to the artifact and reused.
Inputs and outputs are bound on the device as for ``ort-cuda``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.base import EngineError
from engines.cuda import device_problem, module_version, unusable
from engines.options import cell_input_shapes, option_string, provider_share
from engines.ort_cuda import OrtDeviceEngine, load_gpu_libraries, ort_gpu_problems

MIN_TENSORRT_MAJOR = 10


def tensorrt_library_problem() -> str | None:
    """Why TensorRT's own libraries (which the provider loads at session creation) are not usable, or None."""
    import ctypes.util

    if importlib.util.find_spec("tensorrt") is None and ctypes.util.find_library("nvinfer") is None:
        return "TensorRT is not installed (the TensorRT provider loads its libnvinfer)"
    version = module_version("tensorrt")
    if version and int(version.split(".")[0]) < MIN_TENSORRT_MAJOR:
        return f"TensorRT {version} is too old ({MIN_TENSORRT_MAJOR} or newer is needed)"
    return None


def profile_string(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Shapes in the provider's profile format: ``name:2x3x224x224,other:2x384``."""
    bad = [name for name in shapes if any(c in name for c in ":,")]
    if bad:
        raise EngineError(f"ort-trt: input names {bad} contain ':' or ',', which the profile option cannot express")
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


class OrtTrtEngine(OrtDeviceEngine):
    """``ort-trt``: TensorRT provider first, then CUDA, then CPU, for the nodes each cannot take."""

    name = "ort-trt"
    primary_provider = "TensorrtExecutionProvider"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        problems, missing = ort_gpu_problems(cls.primary_provider)
        library = tensorrt_library_problem()
        return unusable([*problems, library or "", device_problem() or ""], missing or library is not None)

    def load_libraries(self) -> None:
        load_gpu_libraries(tensorrt=True)

    def cache_dir(self, shapes: Mapping[str, tuple[int, ...]] | None) -> Path:
        """Where this artifact's engines for these shapes live: ``<artifact dir>/engines/ort-trt/<artifact>-<key>``.

        One directory per artifact and profile, because the provider keeps one engine per subgraph and
        rebuilds it when the profile differs: batch sizes must not evict each other's engines."""
        from onnx_models.store import cache_key

        model = self.model_path or Path.home() / ".cache" / "aimatrix" / "model.onnx"
        profile = cache_key(shapes={k: list(v) for k, v in (shapes or {}).items()})
        return model.parent / "engines" / self.name / f"{model.stem}-{profile}"

    def trt_options(self) -> dict[str, str]:
        """TensorRT provider options: caches in :meth:`cache_dir`, the cell's shapes as the only profile, CUDA
        graphs if asked, then the user's share of ``--provider-options``. No precision switches."""
        shapes = cell_input_shapes(self.options)
        cache = self.cache_dir(shapes)
        options: dict[str, Any] = {
            "device_id": 0,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache.parent),
        }
        if shapes:
            profile = profile_string(shapes)
            options.update({f"trt_profile_{bound}_shapes": profile for bound in ("min", "opt", "max")})
        if self.cuda_graph:
            options["trt_cuda_graph_enable"] = True
        options.update(provider_share(self.options, [self.primary_provider, self.name], primary=True))
        return {key: option_string(value) for key, value in options.items()}

    def provider_list(self) -> list:
        trt = self.trt_options()
        return [
            (self.primary_provider, trt),
            ("CUDAExecutionProvider", self.cuda_options(primary=False, device_id=trt["device_id"])),
            "CPUExecutionProvider",
        ]

    def activate_impl(self, model_path: Path):
        self.model_path = Path(model_path)
        trt = self.trt_options()
        # The provider writes its caches but does not create missing directories on every version.
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            Path(trt[key]).mkdir(parents=True, exist_ok=True)
        return super().activate_impl(model_path)
