"""ONNX Runtime on the TensorRT execution provider, with the CUDA provider for whatever TensorRT does not take.

Precision comes from the artifact, never from the provider's ``trt_fp16_enable`` / ``trt_int8_enable``
switches: the FP16 artifact carries float16 weights and casts, the INT8 artifact (the ``tensorrt`` flavour)
symmetric QuantizeLinear/DequantizeLinear pairs, which TensorRT builds as explicit quantization. The engine
is built for the cell's exact input shapes (``trt_profile_*_shapes``), during session creation, so the build
lands in ``engine_build_s``; engines and TensorRT's timing cache are kept next to the artifact and reused.
Inputs and outputs are bound on the device as for ``ort-cuda``.
"""

from __future__ import annotations

import functools
import importlib.util
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
    unusable,
)
from engines.options import option_string, provider_share
from engines.ort_cuda import OrtDeviceEngine, load_gpu_libraries, ort_gpu_problems

# Where ONNX Runtime keeps its provider libraries, relative to the onnxruntime package.
PROVIDER_LIBRARY = Path("capi") / "libonnxruntime_providers_tensorrt.so"
# The marker of ONNX Runtime's refusal of an explicit profile that leaves a TensorRT subgraph's dynamic input out.
PARTIAL_PROFILE_ERROR = "User needs to provide all the dynamic shape inputs"


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED entries (the sonames a shared library links) of the 64-bit little-endian ELF file ``path``,
    read from its section headers; ValueError for anything else."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    section_offset = int.from_bytes(data[0x28:0x30], "little")
    entry_size, count = (int.from_bytes(data[o : o + 2], "little") for o in (0x3A, 0x3C))
    sections = []
    for index in range(count):
        base = section_offset + index * entry_size
        kind = int.from_bytes(data[base + 4 : base + 8], "little")
        offset, size = (int.from_bytes(data[base + o : base + o + 8], "little") for o in (0x18, 0x20))
        link = int.from_bytes(data[base + 0x28 : base + 0x2C], "little")
        sections.append((kind, offset, size, link))
    needed = []
    for kind, offset, size, link in sections:
        if kind != 6:  # SHT_DYNAMIC; its sh_link names the string table of the entries
            continue
        strings = sections[link][1]
        for entry in range(offset, offset + size, 16):
            tag = int.from_bytes(data[entry : entry + 8], "little", signed=True)
            if tag == 0:  # DT_NULL ends the table
                break
            if tag == 1:  # DT_NEEDED
                start = strings + int.from_bytes(data[entry + 8 : entry + 16], "little")
                needed.append(data[start : data.index(b"\0", start)].decode())
    return needed


def provider_nvinfer() -> str | None:
    """The libnvinfer soname (``libnvinfer.so.10``) that the installed onnxruntime's TensorRT provider links, or
    None when this onnxruntime has no TensorRT provider library."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    library = Path(next(iter(spec.submodule_search_locations))) / PROVIDER_LIBRARY
    if not library.is_file():
        return None
    return next((name for name in elf_needed(library) if name.startswith("libnvinfer.so.")), None)


@functools.cache
def load_library(soname: str) -> str | None:
    """Load ``soname`` the way the provider will (from the tensorrt wheel's ``tensorrt_libs``, else the loader
    path); None when it loads, else the loader's message."""
    import ctypes

    spec = importlib.util.find_spec("tensorrt_libs")
    places = [Path(p) / soname for p in (spec.submodule_search_locations or [])] if spec else []
    errors = []
    for candidate in [*(str(p) for p in places if p.is_file()), soname]:
        try:
            ctypes.CDLL(candidate)
            return None
        except OSError as exc:
            errors.append(str(exc))
    return errors[-1]


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
    explicit_profile = True
    profile_note = ""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        problems, missing = ort_gpu_problems(cls.primary_provider)
        library = tensorrt_library_problem()
        return unusable([*problems, library or "", device_problem() or ""], missing)

    def load_libraries(self) -> None:
        load_gpu_libraries(tensorrt=True)

    def cache_dir(self, shapes: Mapping[str, tuple[int, ...]] | None) -> Path:
        """Where this artifact's engines for these shapes live: ``<artifact dir>/engines/ort-trt/<artifact>-<key>``.

        One directory per artifact and profile, because the provider keeps one engine per subgraph and
        rebuilds it when the profile differs: batch sizes must not evict each other's engines."""
        from common.hashing import cache_key

        model = self.model_path or Path.home() / ".cache" / "aimatrix" / "model.onnx"
        profile = cache_key(shapes={k: list(v) for k, v in (shapes or {}).items()})
        return model.parent / "engines" / self.name / f"{model.stem}-{profile}"

    def trt_options(self) -> dict[str, str]:
        """TensorRT provider options: caches in :meth:`cache_dir`, the cell's shapes as the only profile, CUDA
        graphs if asked, then the user's share of ``--provider-options``. No precision switches."""
        shapes = self.input_shapes
        cache = self.cache_dir(shapes)
        options: dict[str, Any] = {
            "device_id": 0,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache.parent),
        }
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
        self.model_path = Path(model_path)
        self.explicit_profile, self.profile_note = True, "explicit: the cell's input shapes (min = opt = max)"
        try:
            return self._start(model_path)
        except EngineError as exc:
            refused = self.activation_log + str(exc)
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
        return super().activate_impl(model_path)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "trt_profile": self.profile_note}
