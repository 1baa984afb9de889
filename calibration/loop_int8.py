"""INT8 weights for the MatMuls inside Loop bodies (recurrent cells, decoders), for ONNX Runtime on CPU.

ONNX Runtime's static QDQ quantizer does not enter Loop, Scan or If bodies, and its calibrators collect no
ranges there; a recurrent model (DIEN's GRUs, NMT's LSTM encoder and greedy decoder) so kept all of its
per-step arithmetic in float, and its INT8 artifact ran no faster than FP32. Here each MatMul in a Loop body
whose second operand is a weight (a float initializer of the main graph handed to the Loop and passed through
every iteration unchanged, the form tf2onnx gives a ``tf.while_loop``'s captured variables) becomes one
``com.microsoft.DynamicQuantizeMatMul``: the weight is stored as int8 with one symmetric scale per output
column, and the activation is quantized to uint8 at run time from its own range, so no calibration is needed
(what ``onnxruntime.quantization.quantize_dynamic`` does for MatMuls outside loops).

The node is an ONNX Runtime contrib op: only the ``cpu`` INT8 flavour gets this; TensorRT builds Loops of its
own and the ``tensorrt`` flavour leaves them in float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONTRIB_DOMAIN = "com.microsoft"
FUSED_OP = "DynamicQuantizeMatMul"
# Smaller weights stay float: quantizing the activation at every step costs more than the int8 product saves.
# DIEN's GRU weights (36 x 108, 36 x 72) measured 2.35 ms per batch-1 inference in float and 3.17 ms rewritten;
# NMT's (2048 x 4096 and up) 1174 ms and 364 ms.
MIN_WEIGHT_ELEMENTS = 1 << 16


def quantize_loop_matmuls(
    model: onnx.ModelProto, min_weight_elements: int = MIN_WEIGHT_ELEMENTS, weight_max: int = 127
) -> int:
    """Rewrite ``model`` in place: MatMuls in top-level Loop bodies whose weight is passed through the loop and
    has at least ``min_weight_elements`` values become DynamicQuantizeMatMul with int8 per-column weights in
    [-weight_max, weight_max] (127, or 64 where the CPU's dot products saturate: ``common.cpu_isa``).
    Returns how many MatMuls were rewritten."""
    initializers = {t.name: t for t in model.graph.initializer}
    quantized: dict[str, tuple[str, str, str]] = {}
    rewritten = 0
    for loop in (n for n in model.graph.node if n.op_type == "Loop"):
        body = next(a.g for a in loop.attribute if a.name == "body")
        weights = {
            inner: outer
            for inner, outer in _passthrough_weights(loop, body, initializers).items()
            if np.prod(initializers[outer].dims) >= min_weight_elements
        }
        for index, node in enumerate(list(body.node)):
            if node.op_type != "MatMul" or node.input[1] not in weights:
                continue
            source = weights[node.input[1]]
            if source not in quantized:
                quantized[source] = _add_int8_weight(model.graph, initializers[source], weight_max)
            q_name, scale_name, zero_name = quantized[source]
            fused = helper.make_node(
                FUSED_OP,
                [node.input[0], q_name, scale_name, zero_name],
                list(node.output),
                name=node.name or f"{loop.name}_matmul_{index}",
                domain=CONTRIB_DOMAIN,
            )
            body.node[index].CopyFrom(fused)
            rewritten += 1
    if rewritten and not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return rewritten


def _passthrough_weights(
    loop: onnx.NodeProto, body: onnx.GraphProto, initializers: dict[str, onnx.TensorProto]
) -> dict[str, str]:
    """{body input name: main-graph initializer name} for the Loop's 2-D float initializer inputs that the body
    returns unchanged (so the value is the same in every iteration)."""
    # Loop inputs: trip count, condition, then the carried values; body inputs: iteration, condition, the
    # carried values; body outputs: condition, the carried values, then the scan outputs.
    identity_of = {n.output[0]: n.input[0] for n in body.node if n.op_type == "Identity"}
    found = {}
    for k, outer in enumerate(loop.input[2:]):
        tensor = initializers.get(outer)
        if tensor is None or tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
            continue
        inner = body.input[k + 2].name
        returned = body.output[k + 1].name
        if identity_of.get(returned, returned) == inner:
            found[inner] = outer
    return found


def _add_int8_weight(graph: onnx.GraphProto, weight: onnx.TensorProto, weight_max: int) -> tuple[str, str, str]:
    """Add ``weight`` (K, N) as int8 in [-weight_max, weight_max] with a symmetric scale per column N and a zero
    point of 0 to the main graph's initializers; returns the three names (the Loop body reads them from the
    outer scope)."""
    values = numpy_helper.to_array(weight).astype(np.float32)
    scale = np.abs(values).max(axis=0) / float(weight_max)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(values / scale), -weight_max, weight_max).astype(np.int8)
    names = (f"{weight.name}_int8", f"{weight.name}_int8_scale", f"{weight.name}_int8_zero_point")
    graph.initializer.extend(
        [
            numpy_helper.from_array(q, names[0]),
            numpy_helper.from_array(scale, names[1]),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), names[2]),
        ]
    )
    return names


def simulate_loop_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place: each DynamicQuantizeMatMul in a Loop body becomes the same arithmetic in
    float (DynamicQuantizeLinear and DequantizeLinear of the activation, DequantizeLinear of the int8 weight,
    MatMul), so that with graph optimisation off the quantization error stays and no integer kernel runs.
    Returns how many nodes were rewritten."""
    rewritten = 0
    for loop in (n for n in model.graph.node if n.op_type == "Loop"):
        body = next(a.g for a in loop.attribute if a.name == "body")
        nodes = []
        for node in body.node:
            if node.op_type != FUSED_OP or node.domain != CONTRIB_DOMAIN:
                nodes.append(node)
                continue
            x, w, w_scale, w_zero = node.input
            tag = f"{node.name or node.output[0]}_sim"
            nodes += [
                helper.make_node("DynamicQuantizeLinear", [x], [f"{tag}_xq", f"{tag}_xs", f"{tag}_xz"]),
                helper.make_node("DequantizeLinear", [f"{tag}_xq", f"{tag}_xs", f"{tag}_xz"], [f"{tag}_x"]),
                helper.make_node("DequantizeLinear", [w, w_scale, w_zero], [f"{tag}_w"], axis=1),
                helper.make_node("MatMul", [f"{tag}_x", f"{tag}_w"], list(node.output), name=node.name),
            ]
            rewritten += 1
        del body.node[:]
        body.node.extend(nodes)
    return rewritten
