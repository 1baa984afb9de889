"""Brought-in files that are already reduced: what precision a file holds, read from its contents, and the FP32
graph the suite can make of it.

``detect(model)`` names the precision an ONNX graph computes in: ``int8`` where any multiply-accumulate (MAC)
operator takes quantized weights (a DequantizeLinear of an integer tensor, the QDQ format; or an integer
operator such as ConvInteger, MatMulInteger or QLinearConv), otherwise ``fp16`` or ``bf16`` where most MAC
weight elements reach their operator in that type, otherwise ``fp32``. A graph without MAC weights is named
from its floating-point constants alike. The file's name says nothing: silero-vad's ``silero_vad_half.onnx``
holds float32 weights only.

``upcast(model)`` makes an FP16 or BF16 graph FP32: float16 and bfloat16 tensors, casts and types become float32
(exact for the weights: every float16 and bfloat16 value is a float32 value), graph inputs and outputs keep their
types (a Cast next to them where they are float16). ``dequantize(model)`` makes a QDQ graph FP32: each weight's
DequantizeLinear becomes the float weight it computes, each QuantizeLinear -> DequantizeLinear pair on an
activation is dropped; a graph with integer operators is refused (``ReducedError``), since undoing those needs a
rewrite per operator.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.graphs import all_graphs, subgraphs

# Where each MAC operator (those analysis.flops counts MACs for, and ONNX Runtime's quantized forms) takes its
# weights; only inputs that come from constants count, so a MatMul of two activations names nothing. None: all.
WEIGHT_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "FusedConv": (1,),
    "MatMul": (0, 1),
    "FusedMatMul": (0, 1),
    "Gemm": (0, 1),
    "FusedGemm": (0, 1),
    "Einsum": None,
    "LSTM": (1, 2),
    "GRU": (1, 2),
    "RNN": (1, 2),
    "ConvInteger": (1,),
    "MatMulInteger": (0, 1),
    "QLinearConv": (3,),
    "QLinearMatMul": (0, 3),
    "QGemm": (0, 3),
    "DynamicQuantizeMatMul": (1,),
    "MatMulIntegerToFloat": (0, 1),
    "DynamicQuantizeLSTM": (1, 2),
}
# Operators that compute in integers, by the quantization format that writes them (ONNX Runtime's
# quantize_dynamic writes the first kind, its QOperator format the second).
INTEGER_OPS = {
    "dynamic": frozenset(
        {
            "DynamicQuantizeLinear",
            "ConvInteger",
            "MatMulInteger",
            "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat",
            "DynamicQuantizeLSTM",
        }
    ),
    "QOperator": frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QAttention"}),
}
# Nodes a weight may pass through between its constant and its operator without changing what it holds.
_PASS_THROUGH = frozenset({"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
_CLASS = {
    TensorProto.FLOAT: "fp32",
    TensorProto.DOUBLE: "fp32",
    TensorProto.FLOAT16: "fp16",
    TensorProto.BFLOAT16: "bf16",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "int8",
    **{getattr(TensorProto, n): "int8" for n in ("INT4", "UINT4") if hasattr(TensorProto, n)},
}
_BITS = {TensorProto.INT8: 8, TensorProto.UINT8: 8, **{getattr(TensorProto, n): 4 for n in ("INT4", "UINT4")}}
_REDUCED_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
_TYPE_NAME = {"fp16": "float16", "bf16": "bfloat16"}


class ReducedError(ValueError):
    """A reduced graph the suite cannot make an FP32 graph of; the message says why, in one line."""


@dataclass(frozen=True)
class FilePrecision:
    """What ``detect`` found: the ``precision`` (``fp32``, ``fp16``, ``bf16``, ``int8``), the ``quantization``
    formats of an INT8 graph (``QDQ``, ``dynamic``, ``QOperator``), how many MAC weight elements it judged by
    (``weights``; ``basis`` says whether they were MAC weights or, in a graph without any, every floating-point
    constant), each type's share of them, the quantized MAC operators by type, and the quantized weights' width."""

    precision: str
    quantization: tuple[str, ...] = ()
    weights: int = 0
    basis: str = "MAC weights"
    shares: dict[str, float] = field(default_factory=dict)
    quantized_ops: dict[str, int] = field(default_factory=dict)
    weight_bits: int | None = None

    @property
    def reduced(self) -> bool:
        """Whether the file holds a precision below FP32."""
        return self.precision != "fp32"

    @property
    def text(self) -> str:
        """The precision in words, with the evidence: ``INT8 (QDQ: 40 quantized Conv)``, ``FP16 (float16 MAC
        weights: 100% of 12,345)``, ``FP32``."""
        if self.precision == "int8":
            integer = INTEGER_OPS["dynamic"] | INTEGER_OPS["QOperator"]
            ops = ", ".join(
                f"{n} {op}" if op in integer else f"{n} quantized {op}" for op, n in sorted(self.quantized_ops.items())
            )
            return f"INT8 ({'+'.join(self.quantization)}: {ops})"
        if self.precision in _TYPE_NAME:
            share = 100 * self.shares.get(self.precision, 0.0)
            kind = _TYPE_NAME[self.precision]
            return f"{self.precision.upper()} ({kind} {self.basis}: {share:.0f}% of {self.weights:,})"
        return "FP32"

    def as_dict(self) -> dict:
        """The manifest's ``file_precision`` entry."""
        return {
            "precision": self.precision,
            "text": self.text,
            "quantization": list(self.quantization),
            "weights": self.weights,
            "basis": self.basis,
            "shares": {k: round(v, 4) for k, v in sorted(self.shares.items())},
            "quantized_ops": dict(sorted(self.quantized_ops.items())),
            "weight_bits": self.weight_bits,
        }


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every constant tensor of ``model`` by name: initializers and Constant nodes' values, bodies included."""
    found = {}
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            found[tensor.name] = tensor
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    found[node.output[0]] = value
    return found


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for graph in all_graphs(model.graph) for node in graph.node for out in node.output if out}


def detect(model: onnx.ModelProto) -> FilePrecision:
    """The precision ``model`` computes in, from its contents (the module's docstring gives the rule)."""
    consts, producers = _constants(model), _producers(model)
    weights: Counter[str] = Counter()
    quantized_ops: Counter[str] = Counter()
    formats: set[str] = set()
    bits: set[int] = set()
    held = Counter(n.op_type for g in all_graphs(model.graph) for n in g.node)
    for kind, ops in INTEGER_OPS.items():
        if ops & set(held):
            formats.add(kind)

    def trace(name: str) -> tuple[str, onnx.TensorProto] | None:
        """(the type class the operator receives ``name`` in, the constant it comes from), or None."""
        seen_class = None
        for _ in range(16):  # a weight is a few steps from its constant at most
            if name in consts:
                tensor = consts[name]
                return seen_class or _CLASS.get(tensor.data_type), tensor
            node = producers.get(name)
            if node is None or not node.input:
                return None
            if node.op_type == "DequantizeLinear":
                seen_class = seen_class or "int8"
            elif node.op_type == "Cast":
                to = next((a.i for a in node.attribute if a.name == "to"), 0)
                seen_class = seen_class or _CLASS.get(to)
            elif node.op_type not in _PASS_THROUGH:
                return None
            name = node.input[0]
        return None

    for graph in all_graphs(model.graph):
        for node in graph.node:
            if node.op_type not in WEIGHT_INPUTS:
                continue
            positions = WEIGHT_INPUTS[node.op_type]
            quantized = node.op_type in INTEGER_OPS["dynamic"] | INTEGER_OPS["QOperator"]
            for i, name in enumerate(node.input):
                if not name or (positions is not None and i not in positions):
                    continue
                found = trace(name)
                if found is None or found[0] is None or len(found[1].dims) < 2:  # biases, scales, zero points
                    continue
                kind, tensor = found
                weights[kind] += int(np.prod(tensor.dims))
                if kind == "int8":
                    quantized = True
                    bits.add(_BITS.get(tensor.data_type, 8))
                    if node.op_type not in INTEGER_OPS["dynamic"] | INTEGER_OPS["QOperator"]:
                        formats.add("QDQ")
            if quantized:
                quantized_ops[node.op_type] += 1
    basis = "MAC weights"
    if not weights:
        basis = "floating-point constants"
        for tensor in consts.values():
            kind = _CLASS.get(tensor.data_type)
            if kind in ("fp32", "fp16", "bf16"):
                weights[kind] += int(np.prod(tensor.dims))
    total = sum(weights.values())
    shares = {k: v / total for k, v in weights.items()} if total else {}
    if quantized_ops:
        # Any quantized MAC operator: its MACs run in integers, which no float row may carry.
        precision = "int8"
    elif shares and max(shares, key=shares.get) in _TYPE_NAME:
        precision = max(shares, key=shares.get)
    else:
        precision = "fp32"
    return FilePrecision(
        precision,
        tuple(sorted(formats)) if precision == "int8" else (),
        total,
        basis,
        shares,
        dict(quantized_ops),
        max(bits) if bits else (8 if precision == "int8" else None),
    )


# ------------------------------------------------------------------------------------------------ upcast


def _upcast_tensor(tensor: onnx.TensorProto) -> None:
    """Make ``tensor`` float32 in place where it is float16 or bfloat16."""
    if tensor.data_type in _REDUCED_FLOATS:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))


def _upcast_type(value: onnx.ValueInfoProto) -> None:
    kind = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if kind is not None and kind.elem_type in _REDUCED_FLOATS:
        kind.elem_type = TensorProto.FLOAT


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every use of ``old`` in ``graph`` and its bodies (which may read outer names) at ``new``."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for body in subgraphs(node):
            _rename_uses(body, old, new)


def upcast(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(an FP32 copy of ``model``, how many float16/bfloat16 constants became float32). Constants, casts,
    ``dtype`` attributes and value types in every graph become float32; a float16 graph input is cast to
    float32 where it enters, a float16 output cast back where it leaves, so the copy takes the file's feeds."""
    model = copy.deepcopy(model)
    constants = 0
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            constants += tensor.data_type in _REDUCED_FLOATS
            _upcast_tensor(tensor)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    constants += attr.t.data_type in _REDUCED_FLOATS
                    _upcast_tensor(attr.t)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    for tensor in attr.tensors:
                        _upcast_tensor(tensor)
                elif (
                    attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i in _REDUCED_FLOATS
                ):
                    attr.i = TensorProto.FLOAT
        for value in graph.value_info:
            _upcast_type(value)
        if graph is not model.graph:
            for value in (*graph.input, *graph.output):
                _upcast_type(value)
    main = model.graph
    edges = []
    for value in main.input:
        elem = value.type.tensor_type.elem_type
        if elem in _REDUCED_FLOATS:
            inner = f"{value.name}__fp32"
            _rename_uses(main, value.name, inner)
            edges.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT))
    tail = []
    for value in main.output:
        elem = value.type.tensor_type.elem_type
        if elem in _REDUCED_FLOATS:
            inner = f"{value.name}__fp32"
            for node in main.node:
                node.output[:] = [inner if name == value.name else name for name in node.output]
            _rename_uses(main, value.name, inner)
            tail.append(helper.make_node("Cast", [inner], [value.name], to=elem))
    nodes = [*edges, *main.node, *tail]
    del main.node[:]
    main.node.extend(nodes)
    return model, constants


# ----------------------------------------------------------------------------------------------- dequantize


def _dequantized(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The float value a DequantizeLinear of constants computes, or None where an input is not constant."""
    names = list(node.input) + [""] * (3 - len(node.input))
    if names[0] not in consts or names[1] not in consts or (names[2] and names[2] not in consts):
        return None
    if any(a.name == "block_size" and a.i for a in node.attribute):
        raise ReducedError(f"{node.name or node.output[0]} dequantizes by blocks, which is not undone")
    x = numpy_helper.to_array(consts[names[0]]).astype(np.float64)
    scale = numpy_helper.to_array(consts[names[1]])
    zero = numpy_helper.to_array(consts[names[2]]).astype(np.float64) if names[2] else np.zeros(())
    if scale.size > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), (zero.reshape(shape) if zero.size > 1 else zero)
    return ((x - zero) * scale.astype(np.float64)).astype(scale.dtype)


def dequantize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """(an FP32 copy of QDQ ``model``, counts of what changed: ``weights`` dequantized, ``pairs`` of
    QuantizeLinear -> DequantizeLinear dropped). The weights are the file's quantized values in float: the
    copy is the file's own network without its activation quantization, not the FP32 model it was made from.

    Raises ReducedError where the graph computes with integer operators, or holds a QuantizeLinear or
    DequantizeLinear that is neither on a constant weight nor in a pair on an activation."""
    held = Counter(n.op_type for g in all_graphs(model.graph) for n in g.node)
    integer = sorted(op for ops in INTEGER_OPS.values() for op in ops if held[op])
    if integer:
        listed = ", ".join(f"{held[op]} {op}" for op in integer)
        raise ReducedError(f"it computes with integer operators ({listed}), which are not turned back into float")
    model = copy.deepcopy(model)
    consts, producers = _constants(model), _producers(model)
    counts = {"weights": 0, "pairs": 0}
    for graph in all_graphs(model.graph):
        nodes = []
        for node in graph.node:
            if node.op_type != "DequantizeLinear":
                nodes.append(node)
                continue
            value = _dequantized(node, consts)
            source = producers.get(node.input[0])
            if value is not None:
                graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                counts["weights"] += 1
            elif source is not None and source.op_type == "QuantizeLinear":
                nodes.append(helper.make_node("Identity", [source.input[0]], list(node.output), name=node.name))
                counts["pairs"] += 1
            else:
                raise ReducedError(
                    f"DequantizeLinear {node.name or node.output[0]} reads neither a constant nor a QuantizeLinear"
                )
        del graph.node[:]
        graph.node.extend(nodes)
    _drop_unused(model)
    left = [n.op_type for g in all_graphs(model.graph) for n in g.node if "QuantizeLinear" in n.op_type]
    if left:
        raise ReducedError(f"{len(left)} QuantizeLinear nodes feed something other than a DequantizeLinear")
    return model, counts


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove nodes without side effects whose outputs nothing reads (QuantizeLinear and Constant nodes left by
    ``dequantize``), then initializers nothing reads, until nothing changes."""
    while True:
        used = {o.name for o in model.graph.output}
        for graph in all_graphs(model.graph):
            used.update(name for node in graph.node for name in node.input)
            if graph is not model.graph:
                used.update(o.name for o in graph.output)
        removed = 0
        for graph in all_graphs(model.graph):
            kept = [
                n
                for n in graph.node
                if n.op_type not in ("QuantizeLinear", "Constant") or any(o in used for o in n.output)
            ]
            removed += len(graph.node) - len(kept)
            del graph.node[:]
            graph.node.extend(kept)
            tensors = [t for t in graph.initializer if t.name in used]
            removed += len(graph.initializer) - len(tensors)
            del graph.initializer[:]
            graph.initializer.extend(tensors)
        if not removed:
            return


def fp32_form(found: FilePrecision, model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """(the FP32 graph of ``model``, a file of precision ``found``, what it is in words for the manifest's
    ``origin``): FP16 and BF16 upcast, INT8 in the QDQ format dequantized. ReducedError where there is none."""
    if found.precision == "int8":
        lifted, counts = dequantize(model)
        return lifted, (
            f"the file dequantized from {found.text} to FP32 ({counts['weights']} quantized weights in float32, "
            f"{counts['pairs']} activation Q/DQ pairs removed)"
        )
    if found.precision not in _TYPE_NAME:
        raise ReducedError(f"a {found.precision} file has no FP32 form here")
    lifted, count = upcast(model)
    kind = _TYPE_NAME[found.precision]
    return lifted, f"the file upcast from {found.precision.upper()} to FP32 ({count} {kind} tensors in float32, exact)"
