"""How much of a model's multiply-accumulate work an artifact runs in its reduced precision.

``coverage(model, precision, input_shapes)`` counts the MACs of an artifact of a reduced precision (one whose
``element`` in the registry, ``common.precisions``, is not FP32's: ``fp16``, ``int8``, ``int8fp16``) at the given
input shapes with ``analysis.flops`` (the same rules and numbers as the FLOP count, Loop and Scan bodies times
their trip counts, an If by its branch with more FLOPs), and splits them: those in operators whose arithmetic
runs in the precision's element type, and, of both, those inside Loop, Scan and If bodies. A MAC here is one
multiply-accumulate (half of ``mac_flops``).

Which operators run in the element type:

- An integer element (int8 for ``int8`` and ``int8fp16``): ONNX's and ONNX Runtime's integer operators
  (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, QGemm, and the dynamically quantized
  DynamicQuantizeMatMul and MatMulIntegerToFloat that ``calibration.loop_int8`` writes into Loop bodies), and the
  QDQ form: a float operator every one of whose operands (activation and weight: inputs 0 and 1; every input of
  an Einsum; X, W and R of a recurrent cell) is the output of a DequantizeLinear of integer data of that width
  (int8 or uint8), which runtimes fuse into an integer kernel. One operand left in float (a weight the quantizer
  kept, an activation without a range) keeps the operator in float.
- A float element (float16 for ``fp16``): an operator every one of whose operands has that type.

What kernel a runtime then picks is the runtime's own (ONNX Runtime's CPU provider fuses a QDQ Conv only where a
QuantizeLinear follows it, TensorRT also without): the share says what the graph asks for. Nodes whose shapes
stay unknown to the count contribute nothing, as in the FLOP count (``unknown`` says how many).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from common import precisions
from common.numbers import format_rate

# Integer operators: their arithmetic is integer whatever produced their inputs.
INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "QGemm",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
# The inputs that are a float operator's operands (the rest are biases, initial states, lengths); every other
# counted operator's are inputs 0 and 1. None: all of them.
_OPERANDS: dict[str, tuple[int, ...] | None] = {
    "Einsum": None,
    "LSTM": (0, 1, 2),
    "GRU": (0, 1, 2),
    "RNN": (0, 1, 2),
}


@dataclass(frozen=True)
class Coverage:
    """The MACs of one batch through an artifact of ``precision`` (whose arithmetic runs in ``element``):
    ``macs`` in all, ``reduced_macs`` in operators that run in ``element``, ``body_macs`` inside Loop, Scan and If
    bodies with ``body_reduced_macs`` of them in ``element``, ``body_macs_by_op`` those by the op type of the
    outermost control-flow node around them, and ``unknown`` the nodes whose shapes the count could not resolve
    (their MACs are in none of these)."""

    precision: str
    element: str
    macs: float
    reduced_macs: float
    body_macs: float = 0.0
    body_reduced_macs: float = 0.0
    body_macs_by_op: dict[str, float] = field(default_factory=dict)
    unknown: int = 0

    @property
    def share(self) -> float | None:
        """``reduced_macs`` / ``macs`` in [0, 1]; None for a graph without MACs."""
        return self.reduced_macs / self.macs if self.macs else None

    def where(self) -> str:
        """Where the MACs sit, for a reason: ``all 1.2 GMACs sit inside If bodies``, ``800 MMACs of its 1.2
        GMACs sit inside Loop bodies``, ``all 1.2 GMACs are in the top-level graph``."""
        if not self.macs:
            return "it has no multiply-accumulates"
        total = mac_text(self.macs)
        ops = " and ".join(sorted(self.body_macs_by_op))
        if self.body_macs >= self.macs:
            return f"all {total} sit inside {ops} bodies"
        if self.body_macs:
            return f"{mac_text(self.body_macs)} of its {total} sit inside {ops} bodies"
        return f"all {total} are in the top-level graph"

    def as_dict(self) -> dict[str, Any]:
        """The fields and ``share``, as the manifest records them."""
        return {**asdict(self), "share": self.share}


def coverage(
    model,
    precision: str,
    input_shapes: Mapping[str, tuple[int, ...]],
    batch: int = 1,
    values: Mapping[str, Any] | None = None,
) -> Coverage:
    """The Coverage of ``model`` (a ModelProto or a path; a ModelProto is not modified), an artifact of the
    reduced precision ``precision``, for one batch at ``input_shapes`` (full shapes by input name; an input not
    named takes ``batch`` as its first dimension, as ``analysis.flops.count`` does). Raises ValueError for a
    precision that is not reduced (the reference: every MAC runs in its type by definition) and for shapes the
    count cannot make concrete. ``values``, the arrays of a batch, are what the count runs the graph on where
    shapes must be measured (``analysis.flops.count``)."""
    from analysis.flops import count

    spec = precisions.get(precision)
    if not spec.reduced:
        raise ValueError(f"{precision} is not a reduced precision: its MACs run in {spec.element} by definition")
    cost = count(model, batch, input_shapes, values)
    runs_in = _rule(spec.element)
    macs = reduced = body = body_reduced = 0.0
    by_op: dict[str, float] = {}
    for node in cost.mac_nodes:
        amount = node.mac_flops / 2
        inside = bool(node.control_flow)
        hit = runs_in(node)
        macs += amount
        reduced += amount if hit else 0.0
        if inside:
            body += amount
            body_reduced += amount if hit else 0.0
            by_op[node.control_flow[0]] = by_op.get(node.control_flow[0], 0.0) + amount
    return Coverage(precision, spec.element, macs, reduced, body, body_reduced, by_op, len(cost.unknown_shapes))


def _rule(element: str):
    """The test of whether a counted node (``analysis.flops.MacNode``) runs in ``element``."""
    import numpy as np
    from onnx import helper

    dtype = np.dtype(element)
    if np.issubdtype(dtype, np.integer):
        bits = dtype.itemsize * 8
        # The integer types of that width, signed or not: u8 activations with s8 weights are 8-bit arithmetic.
        widths = {helper.np_dtype_to_tensor_dtype(np.dtype(f"{sign}int{bits}")) for sign in ("", "u")}

        def dequantized(operand) -> bool:
            return operand.producer == "DequantizeLinear" and operand.producer_input_type in widths

        def runs_in(node) -> bool:
            operands = _operands(node)
            return node.op_type in INTEGER_OPS or (bool(operands) and all(dequantized(o) for o in operands))

        return runs_in
    wanted = helper.np_dtype_to_tensor_dtype(dtype)

    def runs_in_float(node) -> bool:
        operands = _operands(node)
        return node.op_type not in INTEGER_OPS and bool(operands) and all(o.elem_type == wanted for o in operands)

    return runs_in_float


def _operands(node) -> list:
    """The operands of a counted float node (see ``_OPERANDS``), optional inputs left out."""
    positions = _OPERANDS.get(node.op_type, (0, 1))
    picked = node.inputs if positions is None else [node.inputs[i] for i in positions if i < len(node.inputs)]
    return [o for o in picked if o.name]


def mac_text(macs: float) -> str:
    """MACs for people: ``1.2 GMACs``."""
    return format_rate(macs, "MACs")


def share_text(precision: str, share: float | None) -> str | None:
    """What a row's ``reduced_mac_share`` says next to its speed-up: ``92% of MACs in int8``; at 0, ``0% of MACs
    in int8, not an int8 result`` (the artifact runs as its FP32 original, so its speed-up is not the
    precision's); None for a row without a share (FP32, rows written before the column, graphs without MACs)."""
    if share is None:
        return None
    element = precisions.get(precision).element if precision in precisions.NAMES else precision
    if share <= 0:
        return f"0% of MACs in {element}, not an {precision} result"
    percent = 100 * share
    shown = "<1%" if percent < 1 else (">99%" if 99 < percent < 100 else f"{percent:.0f}%")
    return f"{shown} of MACs in {element}"
