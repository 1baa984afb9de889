"""ONNX Runtime's CPU provider, opened for a check rather than a measurement: the one place that turns a
model (a path, a ModelProto or its bytes) into a session, for parity checks, conversion checks, shape probes,
the ISA probe and layer-by-layer comparisons. Cells are measured through ``engines.ort_cpu``, not this."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def cpu_session(model: Any, threads: int | None = None, optimize: bool = True):
    """An ``onnxruntime.InferenceSession`` of ``model`` (a path, a ModelProto or serialized bytes) on the CPU
    provider, warnings silenced. ``optimize`` False turns graph optimisation off, so every node runs as written
    (Q/DQ pairs round exactly, every tensor asked for exists); ``threads`` sets the intra-op threads (default:
    ONNX Runtime's)."""
    import onnxruntime as ort

    if isinstance(model, str | Path):
        source: Any = str(model)
    elif isinstance(model, bytes):
        source = model
    else:
        source = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_once(model: Any, feeds: dict, fetch: list[str] | None = None, optimize: bool = True) -> dict[str, Any]:
    """``model``'s outputs (``fetch``, default all) on ``feeds``, by name, from one run of ``cpu_session``.
    Raises whatever ONNX Runtime raises."""
    session = cpu_session(model, optimize=optimize)
    names = fetch or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))
