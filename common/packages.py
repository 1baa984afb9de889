"""Installed package versions, for build keys, environments and engine checks."""

from __future__ import annotations

from importlib import metadata


def package_version(*names: str) -> str | None:
    """The version of the first of the distributions ``names`` that is installed, or None. A module several
    distributions provide (onnxruntime and onnxruntime-gpu) is asked for by all of their names."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def onnxruntime_version() -> str:
    """The installed ONNX Runtime, CPU or GPU build, or "absent": what conversions, calibration, references and
    roofs depend on."""
    return package_version("onnxruntime", "onnxruntime-gpu") or "absent"
