"""The environment of a run (``env.json``): packages, CPU model and flags, threads, execution providers, and
where there is one, the GPU with its driver, CUDA, cuDNN and TensorRT versions."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from common.cpu_isa import cpu_flags
from common.cpu_isa import describe as int8_facts

PACKAGES = (
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxslim",
    "numpy",
    "polars",
    "torch",
    "torchvision",
    "tensorflow-cpu",
    "tf2onnx",
    "mlcommons-loadgen",
    "nvidia-ml-py",
    "tensorrt",
    "tensorrt-cu12",
    "tensorrt-cu13",
)
# The CPU flags that decide which kernels run (FMA/AVX for FP32, VNNI/AMX for INT8, F16C/AVX512-FP16 for FP16).
CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def cpu_info() -> dict[str, Any]:
    """CPU model name, core counts and the relevant instruction-set flags, from /proc/cpuinfo and psutil."""
    import psutil

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                    break
    except OSError:
        pass
    flags = cpu_flags()
    return {
        "model": model,
        "logical_cores": psutil.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "flags": [f for f in CPU_FLAGS if f in flags],
        # The 8-bit kernels' instruction set, whether it is documented to saturate u8 x s8 dot products, and
        # whether ONNX Runtime's kernels here do (probed): what INT8 accuracy on this CPU depends on.
        **int8_facts(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


def environment(settings: dict[str, Any]) -> dict[str, Any]:
    """Everything a reader needs to reproduce or compare a run; ``settings`` is the run's own options."""
    from common.packages import package_version

    versions = {package: version for package in PACKAGES if (version := package_version(package))}
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "packages": versions,
        "onnxruntime_providers": providers,
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "settings": settings,
    }
    from engines.cuda import gpu_environment

    # GPUs, driver, CUDA, cuDNN and TensorRT, each only where it can be found; absent on a CPU-only machine.
    gpu = gpu_environment()
    if gpu:
        env["gpu"] = gpu
    from bench.nvml import nvml_status

    # Whether the GPU memory and energy columns can be filled here, and why not where they cannot.
    env["nvml"] = nvml_status()
    return env
