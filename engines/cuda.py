"""The CUDA driver reached through ctypes: is there a device, what is it, which driver and libraries. (The
driver calls the native TensorRT engine runs on, memory, streams, events and CUDA graphs, are in
``engines.cuda_driver``.)

Nothing here imports a framework or a CUDA Python package, so ``suite.py engines`` can say why a GPU engine is
unusable without loading TensorRT, and a machine without a driver gets a reason instead of a crash. The driver
API (``libcuda``) is used rather than the runtime because it ships with the driver itself: if it cannot be
loaded, no CUDA engine can run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import shutil
import subprocess
from importlib import metadata
from typing import Any

from common.packages import package_version

# What to do when a GPU package is missing.
GPU_INSTALL = (
    "pip install -e '.[gpu]' in a new virtual environment; its onnxruntime-gpu replaces onnxruntime (the two "
    "install the same module: never install both)"
)
# What to do when TensorRT is missing: its -libs wheels on PyPI are stubs that download from NVIDIA's index.
TENSORRT_INSTALL = "pip install -e '.[gpu,tensorrt]' --extra-index-url https://pypi.nvidia.com"
# CUresult codes worth naming in a reason (cuda.h's enum cudaError_enum; a test checks each against it): those
# cuInit and a first context give on a machine set up wrong, and those a failed run leaves.
_ERRORS = {
    1: "CUDA_ERROR_INVALID_VALUE",
    2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED",
    34: "CUDA_ERROR_STUB_LIBRARY",
    36: "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER",
    46: "CUDA_ERROR_DEVICE_UNAVAILABLE",
    100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE",
    201: "CUDA_ERROR_INVALID_CONTEXT",
    209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
    304: "CUDA_ERROR_OPERATING_SYSTEM",
    700: "CUDA_ERROR_ILLEGAL_ADDRESS",
    709: "CUDA_ERROR_CONTEXT_IS_DESTROYED",
    802: "CUDA_ERROR_SYSTEM_NOT_READY",
    # The driver API's counterparts of the runtime's cudaErrorInsufficientDriver (35, no CUresult): the kernel
    # module and libcuda disagree, or a forward-compatibility libcuda on a GPU that does not support it.
    803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
    900: "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
    901: "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
    999: "CUDA_ERROR_UNKNOWN",
}


class CudaError(RuntimeError):
    """A CUDA driver call that failed; the message names the call and the CUresult."""


def unusable(problems: list[str], missing_package: bool, install: str = GPU_INSTALL) -> str | None:
    """One reason line from ``problems`` (None when there are none), ending with the ``install`` command when a
    package is missing."""
    problems = list(dict.fromkeys(p for p in problems if p))
    if not problems:
        return None
    return "; ".join(problems) + (f". Install: {install}" if missing_package else "")


def error_name(code: int) -> str:
    """The CUresult name of ``code`` (``CUDA_ERROR_NO_DEVICE``), or the bare number."""
    return _ERRORS.get(code, f"CUresult {code}")


@functools.cache
def libcuda_name() -> str | None:
    """The name under which ``libcuda`` loads here (``libcuda.so.1``...), or None without an NVIDIA driver."""
    for name in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            continue
    return None


@functools.cache
def _driver() -> ctypes.CDLL | None:
    name = libcuda_name()
    return ctypes.CDLL(name) if name else None


@functools.cache
def device_problem() -> str | None:
    """None when the driver loads and sees at least one CUDA device; otherwise why not, in one line."""
    lib = _driver()
    if lib is None:
        smi = "" if shutil.which("nvidia-smi") else "; no nvidia-smi"
        return f"no NVIDIA driver (libcuda.so.1 cannot be loaded{smi})"
    code = lib.cuInit(0)
    if code != 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return f"no usable CUDA device: cuInit returned {error_name(code)}{hint}"
    count = ctypes.c_int(0)
    code = lib.cuDeviceGetCount(ctypes.byref(count))
    if code != 0 or count.value == 0:
        return "no CUDA device is visible to the driver"
    return None


def device_names() -> list[str]:
    """Names of the visible CUDA devices in driver order; empty when there is no usable device."""
    if device_problem() is not None:
        return []
    lib = _driver()
    count = ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    names = []
    for index in range(count.value):
        device = ctypes.c_int(0)
        buffer = ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(device), index) == 0 and lib.cuDeviceGetName(buffer, 256, device) == 0:
            names.append(buffer.value.decode(errors="replace"))
    return names


# CUdevice_attribute codes of the compute capability (cuda.h).
ATTRIBUTE_CC_MAJOR, ATTRIBUTE_CC_MINOR = 75, 76


def compute_capability(device_id: int = 0) -> tuple[int, int] | None:
    """The compute capability (major, minor) of CUDA device ``device_id`` (``(9, 0)`` on an H100), or None
    when there is no usable device or the driver does not say."""
    if device_problem() is not None:
        return None
    lib = _driver()
    device = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(device), int(device_id)) != 0:
        return None
    values = []
    for attribute in (ATTRIBUTE_CC_MAJOR, ATTRIBUTE_CC_MINOR):
        value = ctypes.c_int(0)
        if lib.cuDeviceGetAttribute(ctypes.byref(value), attribute, device) != 0:
            return None
        values.append(value.value)
    return values[0], values[1]


def tf32_math(allowed: bool, device_id: int = 0) -> str:
    """What FP32 convolutions and matrix products run as on CUDA device ``device_id``: ``TF32`` when the engine
    ``allowed`` it, ``NVIDIA_TF32_OVERRIDE`` does not forbid it (cuBLAS, cuDNN and TensorRT read that variable)
    and the GPU has TF32 (compute capability 8.0, Ampere, or newer; an unknown GPU is taken to have it, since
    every GPU the suite's CUDA 13 builds run on is Turing or newer and Turing is the only one without);
    ``FP32`` otherwise."""
    if not allowed or os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
        return "FP32"
    capability = compute_capability(device_id)
    return "FP32" if capability is not None and capability[0] < 8 else "TF32"


def driver_cuda_version() -> str | None:
    """The newest CUDA version the installed driver supports (``12.8``), or None without a driver."""
    lib = _driver()
    if lib is None:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0 or version.value == 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


# The oldest driver branch for each CUDA major (CUDA's release notes, "minor version compatibility").
_DRIVER_FOR_CUDA = {11: "R450", 12: "R525", 13: "R580"}


def cuda_build_problem(build: str | None, what: str) -> str | None:
    """Why the installed driver cannot run ``what`` (a package), built for CUDA ``build`` (``13.0``), or None.

    Within one CUDA major an older driver runs newer builds (minor version compatibility); across majors it
    cannot, and every session would fail with "could not start". None when either version is unknown."""
    driver = driver_cuda_version()
    if not build or not driver:
        return None
    needed, have = int(build.split(".")[0]), int(driver.split(".")[0])
    if have >= needed:
        return None
    branch = _DRIVER_FOR_CUDA.get(needed, f"a CUDA {needed} driver")
    return (
        f"the NVIDIA driver supports CUDA {driver}, but {what} is built for CUDA {build}: install an {branch} or "
        f"newer driver, or a build of {what} for CUDA {have}"
    )


def cuda_major_of(distribution: str) -> str | None:
    """The CUDA major a distribution name says it is built for (``tensorrt-cu13-bindings`` -> ``13.0``)."""
    for part in distribution.lower().replace("_", "-").split("-"):
        if part.startswith("cu") and part[2:].isdigit():
            return f"{int(part[2:])}.0"
    return None


def nvidia_smi_gpus() -> list[dict[str, Any]]:
    """Each GPU as nvidia-smi reports it (name, driver, memory in MiB, compute capability); empty without it."""
    if not shutil.which("nvidia-smi"):
        return []
    # compute_cap is a newer query field; an older nvidia-smi rejects it, so ask again without it.
    base = ("name", "driver_version", "memory.total")
    for fields in ((*base, "compute_cap"), base):
        try:
            result = subprocess.run(
                ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            return []
        if result.returncode != 0:
            continue
        gpus = []
        for line in result.stdout.strip().splitlines():
            values = [v.strip() for v in line.split(",")]
            if len(values) != len(fields):
                continue
            gpu: dict[str, Any] = {"name": values[0], "driver": values[1]}
            try:
                gpu["memory_mib"] = int(float(values[2]))
            except ValueError:
                pass
            if len(values) > 3:
                gpu["compute_capability"] = values[3]
            gpus.append(gpu)
        return gpus
    return []


def module_version(module: str) -> str | None:
    """The installed version of the distribution that provides the top-level module ``module``, read from
    package metadata without importing the module (TensorRT 10.16's ``tensorrt`` comes from ``tensorrt_cu13``,
    which wraps ``tensorrt_bindings`` from ``tensorrt-cu13-bindings``)."""
    return package_version(*module_distributions(module))


def module_distributions(module: str) -> list[str]:
    """The installed distributions that provide the top-level module ``module`` (``tensorrt`` ->
    ``["tensorrt_cu13"]`` with TensorRT 10.16), from package metadata."""
    return list(_distributions_of_modules().get(module, []))


@functools.cache
def _distributions_of_modules() -> dict[str, list[str]]:
    # Read once per process: it scans every installed distribution (a quarter of a second in the suite's venv),
    # and one availability pass asks several times.
    return metadata.packages_distributions()


def _cudnn_from_library() -> str | None:
    for name in ("libcudnn.so.9", "libcudnn.so.8", "libcudnn.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.cudnnGetVersion.restype = ctypes.c_size_t
        version = int(lib.cudnnGetVersion())
        # cuDNN 9 encodes major*10000 + minor*100 + patch; cuDNN 8 major*1000 + minor*100 + patch.
        major, rest = (version // 10000, version % 10000) if version >= 90000 else (version // 1000, version % 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    return None


def gpu_environment() -> dict[str, Any]:
    """GPU facts for ``env.json``: GPUs, driver, CUDA, cuDNN and TensorRT versions. Empty where no GPU is
    visible (CUDA libraries that a framework merely installed describe nothing then); keys whose value cannot
    be found are left out; never raises."""
    info: dict[str, Any] = {}
    try:
        gpus = nvidia_smi_gpus() or [{"name": name} for name in device_names()]
        if not gpus:
            return {}
        info["gpus"] = gpus
        driver_cuda = driver_cuda_version()
        if driver_cuda:
            info["cuda_driver_api"] = driver_cuda
        runtime = package_version("nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime")
        if runtime:
            info["cuda_runtime"] = runtime
        try:
            from onnxruntime.capi import build_and_package_info as ort_build

            if getattr(ort_build, "cuda_version", None):
                info["onnxruntime_cuda_build"] = ort_build.cuda_version
            if getattr(ort_build, "cudnn_version", None):
                info["onnxruntime_cudnn_build"] = ort_build.cudnn_version
        except ImportError:
            pass
        cudnn = package_version("nvidia-cudnn-cu12", "nvidia-cudnn-cu13") or _cudnn_from_library()
        if cudnn:
            info["cudnn"] = cudnn
        tensorrt = module_version("tensorrt") or package_version("tensorrt")
        if tensorrt:
            info["tensorrt"] = tensorrt
    except Exception as exc:  # noqa: BLE001 - an environment report must never stop a run
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info
