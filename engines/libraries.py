"""Which shared libraries an ONNX Runtime provider needs, and which of them cannot be loaded here.

ONNX Runtime loads a provider's library (``libonnxruntime_providers_cuda.so``...) when a session asks for the
provider; when a library it links is missing, ONNX Runtime logs the loader's message on its own stderr and goes
on without the provider. Reading the library's ELF dependencies and loading each by name, as the loader will,
names the missing one in the row instead.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

# Each ONNX Runtime provider's library, relative to the onnxruntime package.
PROVIDER_LIBRARIES = {
    "CUDAExecutionProvider": Path("capi") / "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": Path("capi") / "libonnxruntime_providers_tensorrt.so",
}


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


@functools.cache
def load_library(soname: str, packages: Sequence[str] = ("tensorrt_libs",)) -> str | None:
    """Load ``soname`` the way a provider will: from one of the Python ``packages`` that ship it (the tensorrt
    wheel's ``tensorrt_libs``), else by name through the loader's path and the libraries already loaded (where
    ``onnxruntime.preload_dlls`` puts pip's CUDA and cuDNN). None when it loads, else the loader's message."""
    import ctypes

    places = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        places += [Path(p) / soname for p in (spec.submodule_search_locations or [])] if spec else []
    errors = []
    for candidate in [*(str(p) for p in places if p.is_file()), soname]:
        try:
            ctypes.CDLL(candidate)
            return None
        except OSError as exc:
            errors.append(str(exc))
    return errors[-1]


def provider_library(provider: str) -> Path | None:
    """The installed onnxruntime's library file for ``provider``, or None when it has none (the CPU package)."""
    spec = importlib.util.find_spec("onnxruntime")
    if provider not in PROVIDER_LIBRARIES or spec is None or not spec.submodule_search_locations:
        return None
    library = Path(next(iter(spec.submodule_search_locations))) / PROVIDER_LIBRARIES[provider]
    return library if library.is_file() else None


def cudnn_soname() -> str | None:
    """The cuDNN library the installed onnxruntime-gpu was built against (``libcudnn.so.9``), which its CUDA
    provider opens at run time rather than linking; None when the build does not say."""
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    version = getattr(build_and_package_info, "cudnn_version", None)
    return f"libcudnn.so.{str(version).split('.')[0]}" if version else None


def provider_library_problem(provider: str) -> str | None:
    """The first library that ``provider``'s ONNX Runtime library needs and that cannot be loaded here, as one
    line naming it and the loader's message; None when every one loads (or the provider has no library)."""
    library = provider_library(provider)
    if library is None:
        return None
    try:
        needed = elf_needed(library)
    except (OSError, ValueError) as exc:
        return f"cannot read {library.name}: {exc}"
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        needed.append(cudnn_soname() or "")
    for soname in dict.fromkeys(n for n in needed if n):
        problem = load_library(soname)
        if problem is not None:
            return f"{library.name} needs {soname}, which cannot be loaded ({problem})"
    return None
