"""What TensorRT's ONNX parser accepts of a QDQ graph: the explicit-quantization rules as a conformance check.

The ``tensorrt`` INT8 flavour (``calibration.int8``) and the INT8-with-FP16 artifact made from it
(``calibration.int8_fp16``: the same Q/DQ pairs with float16 scales, every other float layer in FP16) are consumed
by TensorRT (native, or through ONNX Runtime's TensorRT provider) and by ONNX Runtime's CUDA provider. TensorRT
quantizes only explicitly: precision comes from the QuantizeLinear / DequantizeLinear (Q/DQ) nodes of the graph,
and the parser refuses Q/DQ nodes it cannot turn into an IQuantizeLayer / IDequantizeLayer. ``check`` walks a
model, Loop, Scan and If bodies included, and returns each place that breaks one of the rules below;
``calibration.int8.build`` runs it after every ``tensorrt`` build, as ``calibration.int8_fp16.build`` does after
each of its builds, and records the result in the manifest (``tensorrt_conformance``), and the rows of cells that
run those artifacts carry the broken rules (``int8_conformance``).

Sources, cited by key in the table:

- [QT] TensorRT developer guide, "Working with Quantized Types" (TensorRT 10 / 11): the quantization scheme is
  symmetric; the quantized types are INT8 (signed), INT4 (weight-only), FP8 E4M3 and FP4 E2M1.
- [API] TensorRT API reference, IQuantizeLayer / IDequantizeLayer, and the operator reference pages Quantize /
  Dequantize: the scale is a build-time constant of float32, float16 or bfloat16, a scalar (per-tensor), a 1-D
  tensor as long as the quantization axis (per-channel) or a block tensor of the input's rank; all scale
  coefficients strictly positive; the zero point optional, a build-time constant of zeros only ("only symmetric
  quantization is supported"), of the scale's shape.
- [OPS] onnx-tensorrt ``docs/operators.md`` (support matrix, 10.x): DequantizeLinear takes INT8, FP8, INT4 with
  ``x_zero_point`` zero; QuantizeLinear's ``y_zero_point`` must be 0; QLinearConv, QLinearMatMul, ConvInteger,
  MatMulInteger and DynamicQuantizeLinear are not supported; Loop, If and Scan carry FP32 / FP16 / BF16 / INT32 /
  INT64 / BOOL tensors; the matrix lists ONNX-domain operators only (others need a TensorRT plugin).
- [IMP] onnx-tensorrt ``onnxOpImporters.cpp``, ``QuantDequantLinearHelper`` (10.x): a UINT8 Q/DQ input or Q zero
  point is refused and a Q without zero point is imported as INT8 (ONNX makes it UINT8); scale coefficients must
  all be positive; a per-channel scale is taken as weight quantization of a KCRS tensor ("activation quantization
  does not support per-axis quantization") and needs as many coefficients as the axis has entries.
- [BUG] onnx-tensorrt #850, TensorRT #3360, onnxruntime #14229: ONNX Runtime's ``quantize_static`` default
  (``QuantizeBias``) writes INT32 biases behind DequantizeLinear, which the parser refuses ("Invalid Node -
  ...bias_DequantizeLinear", "only activation types allowed as input to this layer").
- [MO] TensorRT Model Optimizer (``modelopt.onnx.quantization``), NVIDIA's ONNX Runtime based PTQ for TensorRT:
  ``QuantizeBias: False``, ``ActivationSymmetric: True``, per-channel axis 0 for Conv ([Cout, Cin, k...]) and 1
  for ConvTranspose ([Cin, Cout, k...]).
- [ONNX] ONNX operators QuantizeLinear / DequantizeLinear: the per-axis form (the ``axis`` attribute) exists from
  opset 13; float16 and bfloat16 scales from opset 19 (QuantizeLinear-19: ``x`` and ``y_scale`` share one type
  T1; DequantizeLinear-19: ``x_scale`` and ``y`` share one type T2; before 19 the scale is float32). Conv,
  ConvTranspose, Gemm, MatMul, the elementwise arithmetic ops and Concat take all their float inputs in one type T.
- [STI] onnx-tensorrt ``QuantDequantLinearHelper`` (10.x) on a strongly typed network: a DequantizeLinear's
  output type is its scale's type (``addDequantize(input, scale, scaleType)``), and a QuantizeLinear's scale is
  cast to its input's type only below opset 19. TensorRT's Dequantize operator page
  (docs.nvidia.com/deeplearning/tensorrt/operators/docs/Dequantize.html) gives the scale and the output one type.
  A strongly typed network inserts no casts of its own: each layer runs at the types the graph gives it.

======================  ==========================================================================  ================
id                      rule                                                                        sources
======================  ==========================================================================  ================
contrib-op              every node is in the ONNX domain ("" / ai.onnx): no com.microsoft contrib   [OPS]
                        op (ORT's contrib Q/DQ, the cpu flavour's DynamicQuantizeMatMul, fusions)
qoperator-op            no QOperator-format or dynamic-quantization op: QLinearConv,                [OPS]
                        QLinearMatMul, ConvInteger, MatMulInteger, DynamicQuantizeLinear
dq-int32                no DequantizeLinear of INT32 (ORT's quantized biases): biases stay float    [OPS] [BUG] [MO]
qdq-type                the quantized side of every Q/DQ is INT8, FP8 E4M3, INT4 or FP4 E2M1:       [QT] [OPS] [IMP]
                        never UINT8 (ORT's default activation type) or 16-bit; a Q states its
                        type by its zero point or output_dtype
zero-point              a zero point, where there is one, is a constant of zeros                    [QT] [API] [OPS]
scale-constant          the scale is a build-time constant: an initializer or a Constant (also      [API]
                        through Identity) of the graph or of one enclosing it
scale-value             every scale coefficient is finite and strictly positive; the scale is       [API] [IMP]
                        float32, float16 or bfloat16
scale-shape             the scale is a scalar, a 1-D tensor as long as the input along axis, or a   [API] [IMP]
                        block tensor of the input's rank; the zero point has as many entries
per-channel-activation  a scale of more than one coefficient quantizes a weight (a constant, or a   [IMP]
                        Q of one), never an activation
per-channel-axis        a per-channel weight is the weight operand of Conv (axis 0), ConvTranspose  [IMP] [MO]
                        (axis 1), Gemm (axis 0 with transB, else 1) or MatMul (its last axis):
                        its output channels
opset                   a model with per-channel Q/DQ imports ONNX opset 13 or later                [ONNX]
body-io-type            no Loop / Scan / If body takes or gives a quantized tensor: Q/DQ pairs      [OPS]
                        stay inside a body or outside it
scale-type              a float16 or bfloat16 scale is in a model of opset 19 or later; there, a    [ONNX] [STI]
                        Q's scale has its input's type; a DQ's output (its scale's type) meets
                        the other float inputs of the op it feeds in one type (no FP32 scale on a
                        DQ feeding an FP16 layer)
======================  ==========================================================================  ================

Loop, Scan and If bodies: TensorRT's chapters on loops and conditionals state no Q/DQ rule of their own, and the
parser imports a body's nodes with the same importers, so every rule applies inside bodies too, with the constants
of enclosing graphs in scope (a body's input of the same name hides them). ONNX Runtime's static quantizer does not
enter bodies, and the cpu flavour's Loop rewrite (``calibration.loop_int8``, ``com.microsoft``
DynamicQuantizeMatMul) is never applied to the ``tensorrt`` flavour, so its bodies stay float.

Where the check goes past the letter of its sources, it says so: ``scale-value`` also refuses an infinite scale,
which the documents do not name (NaN already fails "strictly positive"), because it dequantizes every value to
inf or NaN. What it cannot see is left alone rather than guessed: placement (which Q/DQ TensorRT fuses into INT8
kernels) is performance, not acceptance, and is not checked; a type or shape the graph does not record is not
judged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from common.graphs import all_graphs, subgraphs

DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})
# The types TensorRT quantizes to ([QT], [OPS]); FP4 E2M1 only where this onnx knows it.
QUANTIZED_TYPES = frozenset(
    t
    for t in (TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4, getattr(TensorProto, "FLOAT4E2M1", None))
    if t
)
# Types that mark a tensor as quantized, for the body boundary rule: TensorRT's and ONNX Runtime's.
INTEGER_QUANTIZED = QUANTIZED_TYPES | {TensorProto.UINT8, TensorProto.UINT4}
SCALE_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})
# Ops whose float inputs share one type T in ONNX ([ONNX]), with the inputs that do: where a DequantizeLinear
# feeds one, its output type (its scale's, [STI]) must be theirs ("scale-type"). None: every input.
SAME_TYPE_INPUTS: dict[str, tuple[int, ...] | None] = {
    "Conv": None,
    "ConvTranspose": None,
    "Gemm": None,
    "MatMul": None,
    "Add": None,
    "Sub": None,
    "Mul": None,
    "Div": None,
    "Sum": None,
    "Max": None,
    "Min": None,
    "Mean": None,
    "Concat": None,
    "PRelu": None,
    "Where": (1, 2),
}
# The ops whose weight operand (input 1) TensorRT takes per-channel scales for (axes in ``per_channel_use``).
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# How many violations the manifest lists one by one; the counts per rule cover all of them.
LISTED = 20


@dataclass(frozen=True)
class Rule:
    """One documented rule: its id, what it asks, and the sources of the module docstring that say so."""

    id: str
    text: str
    sources: str


RULES = (
    Rule("contrib-op", "every node in the ONNX domain: no com.microsoft contrib ops", "[OPS]"),
    Rule("qoperator-op", "no QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, DynamicQuantizeLinear", "[OPS]"),
    Rule("dq-int32", "no DequantizeLinear of INT32 (quantized biases); biases stay float", "[OPS] [BUG] [MO]"),
    Rule("qdq-type", "Q/DQ quantized type INT8, FP8 E4M3, INT4 or FP4 E2M1; never UINT8 or 16-bit", "[QT] [OPS] [IMP]"),
    Rule("zero-point", "zero point, if any, a constant of zeros (symmetric)", "[QT] [API] [OPS]"),
    Rule("scale-constant", "scale a build-time constant", "[API]"),
    Rule("scale-value", "scale finite, strictly positive, float32/float16/bfloat16", "[API] [IMP]"),
    Rule("scale-shape", "scale scalar, 1-D as long as the axis, or block; zero point of the same size", "[API] [IMP]"),
    Rule("per-channel-activation", "per-channel scales on weights only, never on activations", "[IMP]"),
    Rule(
        "per-channel-axis", "per-channel weights feed Conv/ConvTranspose/Gemm/MatMul on the output axis", "[IMP] [MO]"
    ),
    Rule("opset", "per-channel Q/DQ needs ONNX opset 13 or later", "[ONNX]"),
    Rule("body-io-type", "Loop/Scan/If bodies take and give no quantized tensor", "[OPS]"),
    Rule(
        "scale-type",
        "fp16/bf16 scales at opset 19+; Q scale of its input's type; DQ output of its op's type",
        "[ONNX] [STI]",
    ),
)
RULE_IDS = frozenset(rule.id for rule in RULES)


@dataclass(frozen=True)
class Violation:
    """One place a graph breaks a rule: the rule's id, the node (``outer>body>node`` inside bodies), why."""

    rule: str
    node: str
    message: str

    def as_dict(self) -> dict:
        return {"rule": self.rule, "node": self.node, "message": self.message}

    def __str__(self) -> str:
        return f"{self.rule} at {self.node}: {self.message}"


def check(model: onnx.ModelProto | str | Path) -> list[Violation]:
    """Every violation of ``RULES`` in ``model`` (a ModelProto or the path of an ONNX file), bodies included, in
    graph order; an empty list for a graph TensorRT's parser accepts by these rules."""
    base_dir = ""
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        base_dir = str(path.parent)
        # External weights are not needed (only their shapes); scales and zero points are read on their own.
        model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    walker = _Walker(opset, base_dir)
    walker.graph(model.graph, _Scope(), prefix="")
    return walker.found


def conformance(violations: Iterable[Violation]) -> dict:
    """The manifest record of one check: passed, the number of rules, counts per broken rule, the first
    ``LISTED`` violations and their total."""
    violations = list(violations)
    counts = Counter(v.rule for v in violations)
    return {
        "passed": not violations,
        "rules": len(RULES),
        "broken": dict(sorted(counts.items())),
        "violations": [v.as_dict() for v in violations[:LISTED]],
        "violations_total": len(violations),
    }


def row_text(record: dict | None) -> str | None:
    """The ``int8_conformance`` column for a manifest record: ``ok``, or each broken rule with its node count
    (``dq-int32: 18 nodes; qdq-type: 1 node``); None where no check was recorded (the cpu flavour)."""
    if not record:
        return None
    if record.get("passed"):
        return "ok"
    return "; ".join(f"{rule}: {n} node{'' if n == 1 else 's'}" for rule, n in record.get("broken", {}).items())


class _Scope:
    """What a graph sees: constants (name -> TensorProto) and element types, its own over its enclosing graphs'."""

    def __init__(self, consts: dict | None = None, types: dict | None = None):
        self.consts: dict[str, TensorProto] = dict(consts or {})
        self.types: dict[str, int] = dict(types or {})

    def enter(self, graph: onnx.GraphProto) -> _Scope:
        inner = _Scope(self.consts, self.types)
        for vi in graph.input:  # a body's input hides an outer constant of the same name
            inner.consts.pop(vi.name, None)
            inner.types.pop(vi.name, None)
        for vi in (*graph.input, *graph.value_info, *graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                inner.types[vi.name] = vi.type.tensor_type.elem_type
        for tensor in graph.initializer:
            inner.consts[tensor.name] = tensor
            inner.types[tensor.name] = tensor.data_type
        return inner


def _constant_value(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a Constant node makes, for the forms a scale or zero point can take."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else str(elem_type)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """name -> (node, input index) for every use in ``graph`` and in the bodies nested in it."""
    found: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for g in all_graphs(graph):
        for node in g.node:
            for index, name in enumerate(node.input):
                if name:
                    found.setdefault(name, []).append((node, index))
    return found


class _Walker:
    def __init__(self, opset: int, base_dir: str):
        self.opset = opset
        self.base_dir = base_dir
        self.found: list[Violation] = []

    def add(self, rule: str, node: str, message: str) -> None:
        if rule not in RULE_IDS:
            raise ValueError(f"no rule {rule!r} in RULES")  # a typo here would report a rule nobody documented
        self.found.append(Violation(rule, node, message))

    def value(self, tensor: TensorProto) -> np.ndarray | None:
        """The array of a constant, or None where its bytes are out of reach (external data not found)."""
        try:
            return numpy_helper.to_array(tensor, self.base_dir)
        except Exception:  # noqa: BLE001 - unreadable means not judged, never a false violation
            return None

    def graph(self, graph: onnx.GraphProto, outer: _Scope, prefix: str) -> None:
        scope = outer.enter(graph)
        producers: dict[str, onnx.NodeProto] = {}
        consumers = _consumers(graph)
        for index, node in enumerate(graph.node):
            label = prefix + (node.name or f"{node.op_type}#{index}")
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
                tensor = _constant_value(node)
                if tensor is not None:
                    scope.consts[node.output[0]] = tensor
                    scope.types[node.output[0]] = tensor.data_type
            elif node.op_type == "Identity" and node.input and node.output:
                if node.input[0] in scope.consts:
                    scope.consts[node.output[0]] = scope.consts[node.input[0]]
                if node.input[0] in scope.types:
                    scope.types[node.output[0]] = scope.types[node.input[0]]
            self.node(node, label, scope, producers, consumers)
            for output in node.output:
                producers[output] = node
            for body in subgraphs(node):
                self.body_boundary(body, label)
                self.graph(body, scope, prefix=f"{label}>{body.name or 'body'}>")

    def node(self, node, label, scope, producers, consumers) -> None:
        if node.domain not in DEFAULT_DOMAINS:
            self.add(
                "contrib-op",
                label,
                f"{node.op_type} of domain {node.domain}: TensorRT's parser imports ONNX-domain operators only",
            )
            return
        if node.op_type in QOPERATOR_OPS:
            self.add("qoperator-op", label, f"{node.op_type} is not supported by TensorRT's parser; use Q/DQ pairs")
            return
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            self.qdq(node, label, scope, producers, consumers)
        elif node.op_type in SAME_TYPE_INPUTS:
            self.dq_meets_one_type(node, label, scope, producers)

    def dq_meets_one_type(self, node, label, scope, producers) -> None:
        """``scale-type`` at an op whose float inputs share one type: a DequantizeLinear input whose type (its
        scale's) differs from another float input's. A strongly typed TensorRT network casts nothing itself."""
        wanted = SAME_TYPE_INPUTS[node.op_type]
        typed = [
            (name, scope.types[name])
            for index, name in enumerate(node.input)
            # The float types a scale may have: a scale of another type is ``scale-value``'s, not reported twice.
            if name and (wanted is None or index in wanted) and scope.types.get(name) in SCALE_TYPES
        ]
        counts = Counter(t for _, t in typed)
        if len(counts) < 2:
            return
        # The DequantizeLinear whose type is not the one most inputs have is the one named (ties: graph order).
        common = counts.most_common(1)[0][0]
        for name, elem in sorted(typed, key=lambda item: item[1] == common):
            producer = producers.get(name)
            if producer is None or producer.op_type != "DequantizeLinear":
                continue
            others = sorted({_type_name(t) for n, t in typed if t != elem})
            self.add(
                "scale-type",
                label,
                f"{node.op_type} reads {_type_name(elem)} from DequantizeLinear {producer.name or name!r} (its scale's "
                f"type) and {', '.join(others)} from its other inputs; give the scale their type",
            )
            return

    def qdq(self, node, label, scope, producers, consumers) -> None:
        is_dq = node.op_type == "DequantizeLinear"
        x = node.input[0]
        scale = node.input[1] if len(node.input) > 1 else ""
        zero = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        qtype = self.quantized_type(node, scope, zero)
        if is_dq and qtype == TensorProto.INT32:
            # The node has to go as a whole (the bias stays float), so its scale and axis are not judged too.
            self.add("dq-int32", label, f"DequantizeLinear of INT32 {x!r} (a quantized bias); keep biases float")
            return
        if not is_dq and not zero and not _attr(node, "output_dtype", 0):
            self.add(
                "qdq-type",
                label,
                "QuantizeLinear with neither zero point nor output_dtype is UINT8 by ONNX's rule (TensorRT reads INT8)",
            )
        elif qtype is not None and qtype not in QUANTIZED_TYPES:
            self.add("qdq-type", label, f"{node.op_type} of {_type_name(qtype)}; TensorRT quantizes to INT8/FP8/INT4")
        if qtype is not None:
            scope.types[node.output[0]] = qtype if not is_dq else scope.types.get(scale, TensorProto.FLOAT)

        zero_values = None
        if zero:
            if zero not in scope.consts:
                self.add("zero-point", label, f"zero point {zero!r} is not a constant")
            else:
                zero_values = self.value(scope.consts[zero])
                if zero_values is not None and np.any(zero_values.astype(np.float64) != 0):
                    first = zero_values.reshape(-1)[np.flatnonzero(zero_values.astype(np.float64))[0]]
                    self.add("zero-point", label, f"zero point {first} (asymmetric); TensorRT needs 0")

        if not scale:
            return  # an invalid node; the ONNX checker, not this check, says so
        if scale not in scope.consts:
            self.add("scale-constant", label, f"scale {scale!r} is computed at run time, not a build-time constant")
            return
        tensor = scope.consts[scale]
        values = self.value(tensor)
        if tensor.data_type not in SCALE_TYPES:
            self.add("scale-value", label, f"scale of {_type_name(tensor.data_type)}; TensorRT takes float32/16, bf16")
        elif tensor.data_type != TensorProto.FLOAT and self.opset < 19:
            self.add(
                "scale-type",
                label,
                f"{_type_name(tensor.data_type)} scale in a model of opset {self.opset}; ONNX takes it from 19",
            )
        elif not is_dq and self.opset >= 19 and scope.types.get(x, tensor.data_type) != tensor.data_type:
            self.add(
                "scale-type",
                label,
                f"QuantizeLinear of {_type_name(scope.types[x])} {x!r} with a {_type_name(tensor.data_type)} scale; "
                "at opset 19 they share one type",
            )
        if values is not None:
            flat = values.astype(np.float32).ravel()
            bad = flat[~(np.isfinite(flat) & (flat > 0))]
            if bad.size:
                self.add("scale-value", label, f"scale coefficient {bad[0]} is not finite and strictly positive")
        dims = list(tensor.dims)
        size = int(np.prod(dims)) if dims else 1
        if zero_values is not None and zero_values.size != size:
            self.add("scale-shape", label, f"zero point has {zero_values.size} entries, the scale {size}")
        if size <= 1:
            return

        # Per-channel (or block) scale: only on a weight, along its output channels.
        weight = self.weight_dims(x, scope, producers)
        if weight is None:
            self.add("per-channel-activation", label, f"{size} scales on activation {x!r}; activations are per-tensor")
            return
        if self.opset < 13:
            self.add("opset", label, f"per-channel {node.op_type} in a model of opset {self.opset}; it needs 13+")
        rank = len(weight)
        axis = _attr(node, "axis", 1)
        if len(dims) > 1:
            if len(dims) != rank:
                self.add("scale-shape", label, f"scale of rank {len(dims)} for a weight of rank {rank}")
            return  # block quantization: its own shape rules, which this flavour does not use
        if not -rank <= axis < rank:
            self.add("scale-shape", label, f"axis {axis} outside a weight of rank {rank}")
            return
        axis %= rank
        if weight[axis] != size:
            self.add("scale-shape", label, f"{size} scales for {weight[axis]} entries along axis {axis}")
        if is_dq:
            self.per_channel_use(node, label, axis, rank, consumers)

    def quantized_type(self, node, scope: _Scope, zero: str) -> int | None:
        """The quantized side's element type: a DQ's input, a Q's zero point or output_dtype; None where the
        graph does not record it (or a Q states neither, which ONNX makes UINT8)."""
        if node.op_type == "DequantizeLinear":
            found = scope.types.get(node.input[0])
            if found is None and zero:
                found = scope.types.get(zero)
            return found
        if zero:
            return scope.types.get(zero)
        output_dtype = _attr(node, "output_dtype", 0)
        return output_dtype or None

    def weight_dims(self, name: str, scope: _Scope, producers) -> list[int] | None:
        """The dims of ``name`` if it is a weight (a constant, or a QuantizeLinear of one), else None."""
        if name in scope.consts:
            return list(scope.consts[name].dims)
        producer = producers.get(name)
        if producer is not None and producer.op_type == "QuantizeLinear" and producer.input[0] in scope.consts:
            return list(scope.consts[producer.input[0]].dims)
        return None

    def per_channel_use(self, node, label, axis: int, rank: int, consumers) -> None:
        seen: set[int] = set()
        for user, index in consumers.get(node.output[0], []):
            if id(user) in seen:
                continue  # one violation per using node, however many of its inputs read the weight
            seen.add(id(user))
            if user.op_type not in WEIGHT_OPS or index != 1:
                self.add(
                    "per-channel-axis",
                    label,
                    f"per-channel weight is input {index} of {user.op_type} {user.name!r}; TensorRT takes per-channel "
                    "scales on the weights of Conv, ConvTranspose, Gemm and MatMul",
                )
                continue
            if user.op_type == "Conv":
                expected = 0
            elif user.op_type == "ConvTranspose":
                expected = 1
            elif user.op_type == "Gemm":
                expected = 0 if _attr(user, "transB", 0) else 1
            else:
                expected = rank - 1
            if axis != expected:
                self.add(
                    "per-channel-axis",
                    label,
                    f"axis {axis} of a {user.op_type} weight; its output channels are axis {expected}",
                )

    def body_boundary(self, body: onnx.GraphProto, label: str) -> None:
        for kind, values in (("input", body.input), ("output", body.output)):
            for vi in values:
                elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
                if elem in INTEGER_QUANTIZED:
                    self.add(
                        "body-io-type",
                        f"{label}>{body.name or 'body'}",
                        f"body {kind} {vi.name!r} is {_type_name(elem)}; Loop/Scan/If carry float or index tensors",
                    )
