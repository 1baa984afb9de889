"""Per-layer quantization error of a QDQ graph: which nodes' inputs INT8 rounds worst.

A QDQ graph (``calibration.int8``) reads each quantized input of a node through a DequantizeLinear: an
activation as ``x -> QuantizeLinear -> DequantizeLinear``, a weight as an integer initializer behind a
DequantizeLinear. ``quantized_inputs`` finds those pairs; ``SqnrSums`` accumulates, batch by batch, the signal
and noise of each pair (the value before quantization against the value the node reads) and of each node's
output in the INT8 graph against the FP32 graph's. Errors are signal-to-quantization-noise ratios in dB,
``10 log10(sum x^2 / sum (x - y)^2)`` over every element of every sample (ONNX Runtime's ``qdq_loss_debug``
computes the same ratio, but from all batches' activations held in memory at once, which a detector's
activations over a few dozen samples do not fit).

A node's own error is the worst SQNR among its quantized inputs: what keeping that node in float would
remove. The accumulated error at its output says how far the INT8 graph has drifted from FP32 by then.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_INTEGER_BIAS = 6  # onnx.TensorProto.INT32: a bias quantized to int32 (its error is negligible by design)


@dataclass(frozen=True)
class QuantizedInput:
    """One quantized input of a node: ``read`` is the DequantizeLinear output the node consumes; for an
    activation ``source`` is the float tensor before its QuantizeLinear, for a weight the integer initializer."""

    node: str
    op_type: str
    kind: str  # "activation" or "weight"
    read: str
    source: str
    dequantize: str


@dataclass(frozen=True)
class GraphIndex:
    """Lookups into one ONNX graph, built once (the functions below ask them for every tensor of a graph of
    hundreds of nodes): the node producing each tensor, each node by name, each initializer by name."""

    nodes: tuple
    producers: Mapping[str, Any]
    by_name: Mapping[str, Any]
    initializers: Mapping[str, Any]

    @classmethod
    def of(cls, model) -> GraphIndex:
        """The index of ``model``'s top-level graph (an onnx.ModelProto)."""
        nodes = tuple(model.graph.node)
        return cls(
            nodes,
            {out: node for node in nodes for out in node.output},
            {node.name: node for node in nodes},
            {init.name: init for init in model.graph.initializer},
        )


def quantized_inputs(graph: GraphIndex) -> list[QuantizedInput]:
    """Every quantized activation and weight input of the top-level non-Q/DQ nodes of ``graph``, in graph order
    (int32 biases left out)."""
    producers, initializers = graph.producers, graph.initializers
    found = []
    for node in graph.nodes:
        if node.op_type in QDQ_OPS:
            continue
        for name in node.input:
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            source = dq.input[0]
            if source in initializers:
                if initializers[source].data_type == _INTEGER_BIAS:
                    continue
                found.append(QuantizedInput(node.name, node.op_type, "weight", name, source, dq.name))
                continue
            q = producers.get(source)
            if q is not None and q.op_type == "QuantizeLinear":
                found.append(QuantizedInput(node.name, node.op_type, "activation", name, q.input[0], dq.name))
    return found


def fused_bounds(float_graph: GraphIndex, qdq_graph: GraphIndex, tensor: str) -> tuple[float, float] | None:
    """The bounds of a Relu or Clip that the quantizer folded into the quantization of ``tensor``, or None.

    ONNX Runtime's quantizer drops a Relu (or Clip) after a Conv or MatMul, gives its output name to the node
    before it, and lets the quantized range, which starts at 0, do the clipping. The tensor before the
    QuantizeLinear then holds values the FP32 graph never has; comparing it with the dequantized value would
    count the Relu as quantization error. Clipping it to these bounds first compares like with like."""
    from onnx import numpy_helper

    producer = float_graph.producers.get(tensor)
    if producer is None or producer.op_type not in ("Relu", "Clip"):
        return None
    kept = qdq_graph.producers.get(tensor)
    if kept is not None and kept.op_type == producer.op_type:
        return None
    if producer.op_type == "Relu":
        return (0.0, math.inf)
    inits = float_graph.initializers
    attrs = {a.name: a.f for a in producer.attribute}
    bounds = []
    for index, name, default in ((1, "min", -math.inf), (2, "max", math.inf)):
        given = producer.input[index] if len(producer.input) > index else ""
        bounds.append(float(numpy_helper.to_array(inits[given])) if given in inits else attrs.get(name, default))
    return (bounds[0], bounds[1])


def dequantized_weight(graph: GraphIndex, dequantize: str) -> np.ndarray:
    """The float values the DequantizeLinear node named ``dequantize`` gives its consumer: (q - zero point) x
    scale, per axis where the scale is a vector."""
    from onnx import numpy_helper

    node = graph.by_name[dequantize]
    inits = graph.initializers
    q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 else 0.0
    if np.ndim(scale) == 1 and q.ndim > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return (q - zero) * scale


def float_weight_name(quantized: str) -> str:
    """The FP32 initializer a quantized weight was made from (the quantizer appends ``_quantized``)."""
    return quantized.removesuffix("_quantized")


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise): +inf without noise, -inf for noise on a zero signal."""
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


class SqnrSums:
    """Signal and noise energy per name, accumulated over batches (float64)."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, reference: np.ndarray, test: np.ndarray) -> None:
        """Add one batch: ``reference`` is the true value, ``test`` the quantized one (same shape)."""
        ref = np.asarray(reference, dtype=np.float64)
        diff = ref - np.asarray(test, dtype=np.float64)
        self.signal[name] = self.signal.get(name, 0.0) + float(np.sum(ref * ref))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.sum(diff * diff))

    def db(self, name: str) -> float | None:
        """The SQNR of ``name`` in dB, or None where nothing was added."""
        if name not in self.signal:
            return None
        return sqnr_db(self.signal[name], self.noise[name])


def node_errors(
    inputs: Iterable[QuantizedInput],
    activation: SqnrSums,
    weight: Mapping[str, float],
    output: Mapping[str, float | None],
    order: Mapping[str, int],
) -> list[dict]:
    """One row per quantized node: ``sqnr_db`` (its worst quantized input: the ranking key, lowest first),
    ``activation_sqnr_db`` and ``weight_sqnr_db`` (worst of each kind), ``output_sqnr_db`` (accumulated error of
    its first output against FP32, from ``output``), ``position`` (its index in the graph, from ``order``).
    ``weight`` maps a weight's ``read`` name to its SQNR."""
    rows: dict[str, dict] = {}
    for item in inputs:
        row = rows.setdefault(
            item.node,
            {"node": item.node, "op_type": item.op_type, "position": order.get(item.node)},
        )
        value = activation.db(item.read) if item.kind == "activation" else weight.get(item.read)
        if value is None:
            continue
        column = f"{item.kind}_sqnr_db"
        row[column] = min(row.get(column, math.inf), value)
    for row in rows.values():
        row.setdefault("activation_sqnr_db", None)
        row.setdefault("weight_sqnr_db", None)
        known = [v for v in (row["activation_sqnr_db"], row["weight_sqnr_db"]) if v is not None]
        row["sqnr_db"] = min(known) if known else None
        row["output_sqnr_db"] = output.get(row["node"])
    return rank(list(rows.values()))


def rank(rows: list[dict]) -> list[dict]:
    """``rows`` ordered worst first (lowest ``sqnr_db``; rows without one last), ties in graph order."""
    return sorted(
        rows,
        key=lambda r: (r["sqnr_db"] is None, r["sqnr_db"] if r["sqnr_db"] is not None else 0.0, r["position"] or 0),
    )
