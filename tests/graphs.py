"""Small ONNX graphs the engine tests share, saved at an IR version every onnxruntime in use loads (onnxruntime-gpu
1.31 reads IR 13 at most; onnx 1.23 writes 14 by default)."""

from __future__ import annotations

from pathlib import Path

from onnx import GraphProto, TensorProto, helper, save


def save_graph(graph: GraphProto, path: Path) -> Path:
    """Save ``graph`` as an opset-17, IR-8 model at ``path``; returns ``path``."""
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def add_one_model(path: Path) -> Path:
    """y = x + 1 with x of shape (batch, 4), saved at ``path``."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [one],
    )
    return save_graph(graph, path)
