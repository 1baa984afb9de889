"""Graph clean-up before conversion: constant folding and dead-node removal with onnxslim.

Quantizers and FP16 converters work on the graph they are given; raw exporter output carries shape
arithmetic, identity chains and foldable constants that make them insert needless casts or Q/DQ pairs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)


def clean(path: Path) -> tuple[onnx.ModelProto, str]:
    """Load ``path`` and return (the slimmed model, a note on what was done).

    If onnxslim fails on a graph, the unslimmed model is returned with the reason in the note, so a
    clean-up problem never blocks an artifact.
    """
    model = onnx.load(str(path))
    try:
        import onnxslim

        slimmed = onnxslim.slim(model)
    except Exception as exc:  # noqa: BLE001 - onnxslim raises many kinds; the graph stays usable without it
        log.warning("onnxslim failed on %s (%s); using the graph as exported", path, exc)
        return model, f"not slimmed: {str(exc).splitlines()[0][:200]}"
    return slimmed, f"onnxslim {onnxslim.__version__}: {len(model.graph.node)} -> {len(slimmed.graph.node)} nodes"


def check_runs(model: onnx.ModelProto | Path, feeds: dict) -> list:
    """Open ``model`` in ONNX Runtime CPU and run it once on ``feeds``; returns the outputs.

    Raises whatever ONNX Runtime raises, and ValueError if an output holds NaN or infinity, so a broken
    conversion is caught when it is made, not when it is measured.
    """
    import numpy as np
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    for meta, value in zip(session.get_outputs(), outputs):
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(f"output {meta.name} has NaN or infinite values")
    return outputs
