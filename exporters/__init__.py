"""Exporters: a catalogue model in its framework -> FP32 ONNX, proven equal to the framework by a parity check.
The store (``onnx_models``) calls them; they use the catalogue, analysis and ``common`` only.

Each framework has one module here with a ``to_onnx`` function (see ``exporters.pytorch``); this package
picks it by the spec's framework, runs it, then checks parity against ONNX Runtime FP32.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.paths import atomic_path
from models import ModelSpec

OPSET = 17
PARITY_SEED = 1234
PARITY_BATCH = 2

# framework -> (module, pip packages it needs)
_EXPORTERS = {
    "pytorch": ("exporters.pytorch", "torch torchvision"),
    "tensorflow": ("exporters.tensorflow", "tensorflow-cpu tf2onnx"),
}


class ExportError(RuntimeError):
    """An export that could not be made or did not match its framework."""


@dataclass
class FrameworkExport:
    """What a framework exporter hands back: its version and its own outputs on the parity feeds."""

    framework_version: str
    outputs: dict[str, np.ndarray]


@dataclass
class ExportReport:
    """One finished export: where it is and how closely ONNX Runtime reproduced the framework."""

    path: Path
    framework_version: str
    opset: int
    parity_max_abs: float
    parity_max_rel: float
    parity_tolerance: float


def exporter_module(framework: str):
    """The exporter module for ``framework``; a missing framework package raises ExportError naming the fix."""
    module_name, packages = _EXPORTERS[framework]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ExportError(
            f"exporting {framework} models needs {packages} ({exc.name} is not installed); "
            "install them with: pip install -e '.[export]'"
        ) from exc


def export(spec: ModelSpec, size: str, out_path: Path, *, seed: int = 0, weights: Path | None = None) -> ExportReport:
    """Export ``spec`` at ``size`` to ``out_path`` and check parity; returns the report, raises ExportError."""
    cfg = spec.config(size)
    feeds = spec.make_feeds(size, PARITY_BATCH, PARITY_SEED)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary (another run exporting the same model into the same store must not share it), moved
    # into place only when parity holds.
    with atomic_path(out_path) as tmp:
        result = exporter_module(spec.framework).to_onnx(
            spec, cfg, tmp, seed=seed, weights=weights, opset=OPSET, feeds=feeds
        )
        max_abs, max_rel = parity_errors(tmp, feeds, result.outputs, align=spec.parity_align)
        if max_rel > spec.parity_rtol:
            # Kept under one visible name for inspection (replaced by the next failure, so they do not pile up).
            kept = out_path.with_name(f"{out_path.stem}.parity-failed{out_path.suffix}")
            os.replace(tmp, kept)
            raise ExportError(
                f"{spec.name} ({size}): ONNX Runtime output differs from {spec.framework}: max abs {max_abs:.3g}, "
                f"relative {max_rel:.3g} > tolerance {spec.parity_rtol:g}; the export is wrong, kept at {kept}"
            )
    return ExportReport(out_path, result.framework_version, OPSET, max_abs, max_rel, spec.parity_rtol)


def parity_errors(
    onnx_path: Path, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray], align=None
) -> tuple[float, float]:
    """Run ``onnx_path`` on ONNX Runtime CPU and compare with ``expected`` (by output name).

    Returns (max abs error, max abs error divided by the largest magnitude of the expected output), the
    worst over all outputs. An output that is missing or of another shape raises ExportError. ``align``
    (a spec's ``parity_align``) reorders ONNX Runtime's rows to the framework's before the comparison.
    """
    from analysis.parity import parity
    from common.ort_session import run_once

    got = run_once(onnx_path, feeds)
    names = list(got)
    if align is not None and all(name in got and got[name].shape == want.shape for name, want in expected.items()):
        got = align(expected, got)
    for name, want in expected.items():
        if name not in got:
            raise ExportError(f"the ONNX graph has no output {name!r} (it has {names})")
        if got[name].shape != want.shape:
            raise ExportError(f"output {name!r}: ONNX shape {got[name].shape} != framework shape {want.shape}")
    errors = parity((want, got[name]) for name, want in expected.items())
    return errors["max_abs_error"], errors["max_rel_error"]
