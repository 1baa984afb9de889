"""FLOPs, parameters and bytes of an ONNX graph at a concrete batch size.

``count(model, batch)`` fixes every graph input's batch dimension (dim 0, when it is symbolic or unknown) to
``batch`` (or uses ``input_shapes``), runs ONNX shape inference with data propagation, and counts each node
from the shapes of its inputs and outputs. When inference leaves a tensor that a counted node needs without a
concrete shape (data-dependent ops, custom ops), those tensors are measured instead: they are added as graph
outputs and the model is run once in ONNX Runtime (CPU, no graph optimisation) on inputs of the right dtype
at the same batch (floats are ones, integers and booleans zeros, so id inputs stay valid). Nodes whose shapes
neither route resolves are listed in ``GraphCost.unknown_shapes`` and contribute nothing.

A FLOP is one scalar arithmetic operation; a multiply-accumulate (MAC) is two. Counting rules (N batch,
"elements" means elements of the node's first output unless stated):

MAC FLOPs (``mac_flops``, also included in ``flops``):

- Conv, ConvInteger, QLinearConv (and com.microsoft FusedConv):
  2 * N * Cout * prod(out spatial) * (Cin / group) * prod(kernel). A bias adds N * Cout * prod(out spatial)
  to ``flops`` only (FusedConv's activation adds one more per element).
- ConvTranspose: 2 * N * Cin * prod(in spatial) * (Cout / group) * prod(kernel); bias as for Conv.
- MatMul, MatMulInteger, QLinearMatMul (and com.microsoft FusedMatMul, DynamicQuantizeMatMul,
  MatMulIntegerToFloat): 2 * prod(broadcast batch dims) * M * K * N, with 1-D operands promoted as numpy does.
- Gemm (and com.microsoft QGemm, FusedGemm): 2 * M * K * N; a C input adds M * N to ``flops`` only; alpha and
  beta are ignored.
- Einsum with two or more operands: (number of operands) * product of the sizes of all distinct indices, which
  is 2 * that product for the usual two operands; with one operand (a sum or transpose) the input's element
  count, in ``flops`` only.
- LSTM: per direction and time step 2 * 4 * H * (I + H) * B, plus 9 * H * B in ``flops`` for the gate
  nonlinearities and the cell update (3 sigmoids, 2 tanh, 3 multiplies, 1 add). GRU: 2 * 3 * H * (I + H) * B,
  plus 8 * H * B (2 sigmoids, 1 tanh, 3 multiplies, 2 adds). RNN: 2 * H * (I + H) * B, plus H * B for the
  activation. The sequence length and B come from the input's shape (``layout`` respected).

Quantized forms count the same MACs as their float forms, so FP32, FP16, QDQ INT8 and QOperator INT8 exports of
one model have equal ``mac_flops``. In QDQ graphs a Conv's weight is the output of a DequantizeLinear, whose
shape is the weight's shape.

Other FLOPs (``flops`` only):

- Elementwise arithmetic, comparisons and activations (Add, Sub, Mul, Div, Pow, Sqrt, Reciprocal, Exp, Log,
  Erf, Tanh, Sigmoid, Relu, LeakyRelu, PRelu, Clip, Where, Neg, Abs, HardSigmoid, HardSwish, Gelu, Softplus,
  Equal, Less, ..., CumSum): 1 per element. Variadic Sum/Max/Min: (inputs - 1) per element (at least 1); Mean:
  inputs per element.
- QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear and the com.microsoft elementwise QLinear ops (QLinearAdd,
  QLinearMul, QLinearSigmoid, QLinearLeakyRelu): 1 per element. They are arithmetic (a scale and a rounding),
  so a QDQ graph has more ``flops`` than its float original while its ``mac_flops`` are equal.
- BatchNormalization 2 per element; LayerNormalization, InstanceNormalization, GroupNormalization,
  MeanVarianceNormalization 5; RMS-style SimplifiedLayerNormalization / RMSNormalization 4;
  com.microsoft SkipLayerNormalization 6 and SkipSimplifiedLayerNormalization 5 (the skip add included);
  LRN 2 * size + 4.
- Softmax, LogSoftmax: 3 per element; Hardmax 1.
- ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL1/L2, ReduceLogSum(Exp), ReduceSumSquare,
  ArgMax, ArgMin: 1 per input element.
- MaxPool, AveragePool, LpPool: prod(kernel) per output element. GlobalAveragePool, GlobalMaxPool,
  GlobalLpPool: 1 per input element.

Control flow: a Loop's body is counted recursively, times the trip count when that is a constant (an
initializer or a Constant node; it is an upper bound when the loop condition can stop earlier); when it is not,
the body is counted once and the Loop is listed in ``unknown_shapes`` with a note. A Scan's body is counted
times the scan length (the first scan input's size along its scan axis; opset 9 and later). An If counts the
branch with more FLOPs (its MAC nodes are the ones ``GraphCost.mac_nodes`` lists). Body shapes come from shape
inference on the body with the loop-carried inputs at their outer shapes, i.e. the first iteration's shapes.

Uncounted: data movement and everything else (Reshape, Transpose, Gather, Concat, Slice, Shape, Cast,
Unsqueeze, Squeeze, Flatten, Identity, Constant, Expand, Pad, Resize, TopK, NonMaxSuppression, fused attention
kernels, ...) is listed by op type with its node count in ``uncounted``.

Parameters and bytes:

- ``params``: elements of floating-point initializers, plus integer initializers that hold quantized weights
  (the data input of a DequantizeLinear, the weight and bias inputs of the integer/QLinear ops); integer shape
  and index constants and quantization scales and zero points are excluded, so a QDQ export reports the same
  parameter count as its float original (a dynamically quantized graph adds one element per weight scale,
  which there feeds a plain Mul). Weights stored in Constant nodes instead of initializers are not
  counted. Unfused BatchNormalization keeps its running mean and variance as initializers, which count.
  An initializer that torch.onnx shares between users through Identity nodes (it stores equal-valued tensors
  once) counts once per Identity as well, so the count does not depend on the weight values.
- ``weight_bytes``: bytes of all initializers (sub-byte types packed).
- ``io_bytes``: bytes of the graph inputs and outputs for one batch.
- ``activation_bytes``: twice the bytes of every intermediate tensor of the top-level graph (each node output
  that is not a graph output and not a Constant), i.e. each written once and read once, at the dtypes and
  shapes resolved above. Tensors inside Loop/Scan/If bodies and intermediates whose shape or type stays
  unknown are left out, so it is a lower bound for the activation traffic of an unfused execution.
"""

from __future__ import annotations

import math
import tempfile
from collections import ChainMap, Counter
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model, load_external_data_for_tensor

from common.graphs import sort_nodes, subgraphs

Shape = tuple[int, ...]

# Initializers up to this many elements keep their values in the shape-inference copy: data propagation needs
# the small integer constants (Reshape targets, Slice bounds, Resize scales); larger tensors only need dims.
_KEEP_VALUES_UP_TO = 4096
# Protobuf cannot serialise a message of 2 GiB or more; bigger models go to ONNX Runtime through a file.
_PROTOBUF_LIMIT = 2**31 - 1

_FLOAT_TYPES = {
    getattr(TensorProto, name)
    for name in (
        "FLOAT",
        "FLOAT16",
        "BFLOAT16",
        "DOUBLE",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "FLOAT8E8M0",
        "FLOAT4E2M1",
        "FLOAT6E2M3",
        "FLOAT6E3M2",
    )
    if hasattr(TensorProto, name)
}
_SUBBYTE_BITS = {
    getattr(TensorProto, name): bits
    for name, bits in (
        ("INT4", 4),
        ("UINT4", 4),
        ("FLOAT4E2M1", 4),
        ("INT2", 2),
        ("UINT2", 2),
        ("FLOAT6E2M3", 6),
        ("FLOAT6E3M2", 6),
    )
    if hasattr(TensorProto, name)
}


@dataclass(frozen=True)
class Operand:
    """One input of a counted node: its name (empty for an optional input left out), element type (0 where
    unknown), the op type of the node that produced it (None for a graph input, an initializer or an empty input),
    and the element type of that producer's first input (a DequantizeLinear's integer data; 0 where there is none
    or it is unknown)."""

    name: str
    elem_type: int
    producer: str | None
    producer_input_type: int


@dataclass(frozen=True)
class MacNode:
    """One node that does multiply-accumulates, as ``count`` counted it: its ``label`` (its name, after the labels
    of the control-flow nodes around it), op type, MAC FLOPs (times the trip counts of the loops around it, as in
    ``mac_flops``), its inputs in order, and the op types of the Loop, Scan and If nodes it sits in, outermost
    first (empty at the top level)."""

    label: str
    op_type: str
    mac_flops: float
    inputs: tuple[Operand, ...]
    control_flow: tuple[str, ...]


@dataclass
class GraphCost:
    """The cost of one batch through a graph; see the module docstring for what each count includes.
    ``mac_nodes`` lists every node whose MAC FLOPs are in ``mac_flops`` (they sum to it)."""

    flops: float
    mac_flops: float
    params: int
    weight_bytes: int
    io_bytes: int
    activation_bytes: int = 0
    by_op: dict[str, float] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)
    unknown_shapes: list[str] = field(default_factory=list)
    mac_nodes: list[MacNode] = field(default_factory=list)

    @property
    def bytes_lower_bound(self) -> int:
        """Bytes any execution must move at least once: all weights plus the batch's inputs and outputs."""
        return self.weight_bytes + self.io_bytes

    @property
    def bytes_with_activations(self) -> int:
        """``bytes_lower_bound`` plus every intermediate tensor written once and read once."""
        return self.bytes_lower_bound + self.activation_bytes

    @property
    def arith_intensity(self) -> float:
        """FLOPs per byte of ``bytes_lower_bound`` (an upper bound on the real arithmetic intensity)."""
        return self.flops / self.bytes_lower_bound if self.bytes_lower_bound else 0.0


def count(
    model: onnx.ModelProto | str | Path,
    batch: int,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    values: Mapping[str, np.ndarray] | None = None,
) -> GraphCost:
    """Count FLOPs, parameters and bytes of ``model`` for one batch of ``batch``.

    ``model`` is a ModelProto or a path (external data next to it is found; weights are only read when the
    ONNX Runtime fallback has to run the model). ``input_shapes`` maps input names to full concrete shapes
    and overrides ``batch`` for those inputs; every other input must have only its first dimension symbolic
    (an input whose first dimension is a fixed number keeps it: either the graph was exported for that batch,
    or the input is not batched). ``values``, the arrays a run feeds, are what the ONNX Runtime fallback runs
    on (a sample rate that picks an If branch must be the one measured); without them it runs on ones (floats)
    and zeros. A ModelProto passed in is not modified. Returns a GraphCost; raises ValueError for inputs whose
    shape cannot be made concrete.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    proto, base_dir = _load(model)
    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    feeds = _feed_shapes([vi for vi in graph.input if vi.name not in init_names], batch, dict(input_shapes or {}))

    light = _light_model(proto, base_dir, feeds)
    if light.functions:
        # Model-local functions (dynamo exports) are inlined so their nodes are counted like any other.
        light = onnx.inliner.inline_local_functions(light)
    inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    _collect_types(inferred.graph, shapes, types)
    for name, (shape, elem_type) in feeds.items():
        shapes[name] = shape
        types[name] = elem_type
    ctx = _Ctx(
        shapes,
        types,
        _constants(proto.graph),
        list(proto.opset_import),
        proto.ir_version,
        producers=_producers(light.graph),
    )

    acc = _Acc()
    _walk(light.graph, ctx, 1.0, "", acc, top=True)
    output_names = [o.name for o in graph.output]
    wanted = sorted(acc.missing | {n for n in output_names if n not in shapes})
    if wanted:
        produced = {o for node in graph.node for o in node.output if o}
        measured, error = _measure(proto, base_dir, [n for n in wanted if n in produced], feeds, types, values)
        shapes.update(measured)
        acc = _Acc()
        _walk(light.graph, ctx, 1.0, "", acc, top=True)
        if error:
            acc.unknown.append(f"onnxruntime shape fallback failed: {error}")

    io_bytes = 0
    for shape, elem_type in feeds.values():
        io_bytes += _nbytes(math.prod(shape), elem_type)
    for out in graph.output:
        if out.name in shapes:
            io_bytes += _nbytes(math.prod(shapes[out.name]), out.type.tensor_type.elem_type)
        else:
            acc.unknown.append(f"graph output {out.name}: shape unknown, left out of io_bytes")
    activation_bytes = 0
    for node in light.graph.node:
        if node.op_type == "Constant":
            continue
        for name in node.output:
            if name and name not in output_names and name in shapes:
                activation_bytes += 2 * _nbytes(math.prod(shapes[name]), types.get(name, TensorProto.UNDEFINED))
    params, weight_bytes = _weights(proto.graph)
    return GraphCost(
        flops=acc.flops,
        mac_flops=acc.mac,
        params=params,
        weight_bytes=weight_bytes,
        io_bytes=io_bytes,
        activation_bytes=activation_bytes,
        by_op=dict(acc.by_op),
        uncounted=dict(acc.uncounted),
        unknown_shapes=acc.unknown,
        mac_nodes=acc.nodes,
    )


# ---------------------------------------------------------------------------------------------------------
# Loading and shape resolution


def output_shapes(
    model: onnx.ModelProto | str | Path, input_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...] | None]:
    """{output name: shape} of ``model`` fed ``input_shapes`` (each input's full shape), by the same ONNX shape
    inference the count runs (weightless graph, declared output shapes cleared, data propagation); None for an
    output whose shape inference cannot fix (one that depends on the data). Nothing is run."""
    proto, base_dir = _load(model)
    init_names = {t.name for t in proto.graph.initializer}
    feeds = _feed_shapes([vi for vi in proto.graph.input if vi.name not in init_names], 1, dict(input_shapes))
    light = _light_model(proto, base_dir, feeds)
    if light.functions:
        light = onnx.inliner.inline_local_functions(light)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph inference cannot handle leaves every shape unknown
        return {o.name: None for o in proto.graph.output}
    shapes: dict[str, Shape] = {}
    _collect_types(inferred.graph, shapes, {})
    return {output.name: shapes.get(output.name) for output in proto.graph.output}


def _load(model: onnx.ModelProto | str | Path) -> tuple[onnx.ModelProto, Path | None]:
    if isinstance(model, onnx.ModelProto):
        return model, None
    path = Path(model)
    # External weights stay on disk: counting needs their dims only, and the fallback loads them if it runs.
    return onnx.load(str(path), load_external_data=False), path.parent


def _feed_shapes(
    inputs: list[onnx.ValueInfoProto], batch: int, overrides: dict[str, tuple[int, ...]]
) -> dict[str, tuple[Shape, int]]:
    """Concrete (shape, elem type) of each real graph input; raises ValueError where that is impossible."""
    unknown = set(overrides) - {vi.name for vi in inputs}
    if unknown:
        raise ValueError(f"input_shapes names inputs the graph does not have: {sorted(unknown)}")
    feeds = {}
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"input {vi.name}: only tensor inputs are supported")
        tensor_type = vi.type.tensor_type
        if vi.name in overrides:
            shape = tuple(int(d) for d in overrides[vi.name])
        elif not tensor_type.HasField("shape"):
            raise ValueError(f"input {vi.name}: its rank is unknown; pass its full shape in input_shapes")
        else:
            dims = []
            for i, dim in enumerate(tensor_type.shape.dim):
                if dim.WhichOneof("value") == "dim_value":
                    dims.append(dim.dim_value)
                elif i == 0:
                    dims.append(batch)
                else:
                    raise ValueError(
                        f"input {vi.name}: dimension {i} ({dim.dim_param or '?'}) is not fixed; "
                        "pass its full shape in input_shapes"
                    )
            shape = tuple(dims)
        feeds[vi.name] = (shape, tensor_type.elem_type)
    return feeds


def _light_model(
    proto: onnx.ModelProto, base_dir: Path | None, feeds: Mapping[str, tuple[Shape, int]]
) -> onnx.ModelProto:
    """The graph with concrete input shapes, cleared output shapes and weightless large initializers, its nodes
    in an order where each follows the producers of its inputs.

    Built field by field so that the weights are never copied; shape inference only reads their dims.
    """
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = light.graph
    graph.name = proto.graph.name
    graph.node.extend(proto.graph.node)
    for vi in proto.graph.input:
        new = graph.input.add()
        new.CopyFrom(vi)
        if vi.name in feeds:
            shape = new.type.tensor_type.shape
            del shape.dim[:]
            for d in feeds[vi.name][0]:
                shape.dim.add().dim_value = d
    for vi in proto.graph.output:
        # Declared output shapes may carry the export batch as a fixed number; let inference set them afresh.
        new = graph.output.add()
        new.name = vi.name
        if vi.type.HasField("tensor_type"):
            new.type.tensor_type.elem_type = vi.type.tensor_type.elem_type
        else:
            new.type.CopyFrom(vi.type)
    graph.initializer.extend(_weightless(t, base_dir) for t in proto.graph.initializer)
    graph.sparse_initializer.extend(proto.graph.sparse_initializer)
    # Shape inference reads the nodes in order: a node listed before its producer (ONNX Runtime's FP16 converter
    # appends its input casts last) would leave everything after it without a type.
    sort_nodes(graph)
    return light


def _weightless(tensor: TensorProto, base_dir: Path | None) -> TensorProto:
    numel = math.prod(tensor.dims)
    external = tensor.data_location == TensorProto.EXTERNAL
    if numel <= _KEEP_VALUES_UP_TO:
        if not external:
            return tensor
        if base_dir is not None:
            small = TensorProto()
            small.CopyFrom(tensor)
            load_external_data_for_tensor(small, str(base_dir))
            small.data_location = TensorProto.DEFAULT
            del small.external_data[:]
            return small
    bare = TensorProto()
    bare.name = tensor.name
    bare.data_type = tensor.data_type
    bare.dims.extend(tensor.dims)
    return bare


def _collect_types(graph: onnx.GraphProto, shapes: dict[str, Shape], types: dict[str, int]) -> None:
    """Record the concrete shapes and element types a graph declares (not those inside its subgraphs)."""
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if not vi.type.HasField("tensor_type"):
            continue
        tensor_type = vi.type.tensor_type
        if tensor_type.elem_type:
            types[vi.name] = tensor_type.elem_type
        if tensor_type.HasField("shape") and all(d.WhichOneof("value") == "dim_value" for d in tensor_type.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in tensor_type.shape.dim)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        types[tensor.name] = tensor.data_type


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of a graph's small initializers and Constant nodes (trip counts and similar scalars)."""
    values = {}
    for tensor in graph.initializer:
        if math.prod(tensor.dims) <= _KEEP_VALUES_UP_TO and tensor.data_location != TensorProto.EXTERNAL:
            values[tensor.name] = numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value":
                if math.prod(attr.t.dims) <= _KEEP_VALUES_UP_TO and attr.t.data_location != TensorProto.EXTERNAL:
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
                values[node.output[0]] = np.asarray(helper.get_attribute_value(attr))
    return values


def _measure(
    proto: onnx.ModelProto,
    base_dir: Path | None,
    names: list[str],
    feeds: Mapping[str, tuple[Shape, int]],
    types: Mapping[str, int],
    values: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, Shape], str | None]:
    """Run the model once in ONNX Runtime with ``names`` as extra outputs and return their real shapes.

    Returns (shapes, None), or ({}, the reason) when the model cannot run.
    """
    from common.ort_session import cpu_session

    graph = proto.graph
    present = {o.name for o in graph.output} | {i.name for i in graph.input}
    extra = [n for n in names if n not in present]
    fetch = [o.name for o in graph.output] + extra
    if base_dir is None and any(_is_external(t) for t in graph.initializer):
        return {}, "the ModelProto has external data that is not loaded; pass the model's path instead"

    # The outputs are appended for serialisation and removed again, so the caller's model is left as it was
    # and the (possibly huge) weights are only duplicated by the serialiser, or past protobuf's 2 GiB limit by
    # the copy written to a temporary file.
    if base_dir is not None and any(_is_external(t) for t in graph.initializer):
        load_external_data_for_model(proto, str(base_dir))
    for name in extra:
        vi = graph.output.add()
        vi.name = name
        if name in types:
            vi.type.tensor_type.elem_type = types[name]
    try:
        if proto.ByteSize() < _PROTOBUF_LIMIT:
            source: bytes | str = proto.SerializeToString()
            tmp_dir = None
        else:
            tmp_dir = tempfile.TemporaryDirectory()
            big = onnx.ModelProto()
            big.CopyFrom(proto)
            source = str(Path(tmp_dir.name) / "model.onnx")
            onnx.save_model(big, source, save_as_external_data=True, location="model.onnx.data")
            del big
    finally:
        if extra:
            del graph.output[len(graph.output) - len(extra) :]

    inputs = {}
    for name, (shape, elem_type) in feeds.items():
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        given = (values or {}).get(name)
        if given is not None and tuple(given.shape) == tuple(shape):
            inputs[name] = given
        else:
            inputs[name] = np.ones(shape, dtype) if elem_type in _FLOAT_TYPES else np.zeros(shape, dtype)
    try:
        values = cpu_session(source, optimize=False).run(fetch, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the shapes unknown, reported to the caller
        return {}, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        if tmp_dir is not None:
            tmp_dir.cleanup()
    return {
        n: tuple(np.asarray(v).shape) for n, v in zip(fetch, values, strict=True) if isinstance(v, np.ndarray)
    }, None


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def _nbytes(numel: int, elem_type: int) -> int:
    if elem_type in _SUBBYTE_BITS:
        return (numel * _SUBBYTE_BITS[elem_type] + 7) // 8
    if elem_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return 0
    return numel * np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


# ---------------------------------------------------------------------------------------------------------
# Parameters

# Input positions that hold quantization scales and zero points (not weights), per op type.
_QPARAM_INPUTS = {
    "QuantizeLinear": {1, 2},
    "DequantizeLinear": {1, 2},
    "QLinearConv": {1, 2, 4, 5, 6, 7},
    "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "ConvInteger": {2, 3},
    "MatMulInteger": {2, 3},
    "QGemm": {1, 2, 4, 5, 7, 8},
    "QLinearAdd": {1, 2, 4, 5, 6, 7},
    "QLinearMul": {1, 2, 4, 5, 6, 7},
    "QLinearGlobalAveragePool": {1, 2, 3, 4},
    "QLinearAveragePool": {1, 2, 3, 4},
    "QLinearSigmoid": {1, 2, 3, 4},
    "QLinearLeakyRelu": {1, 2, 3, 4},
}
# Input positions where an integer tensor is a quantized weight or bias.
_QWEIGHT_INPUTS = {
    "DequantizeLinear": {0},
    "QLinearConv": {3, 8},
    "QLinearMatMul": {0, 3},
    "ConvInteger": {0, 1},
    "MatMulInteger": {0, 1},
    "QGemm": {0, 3, 6},
    "QLinearAdd": {0, 3},
    "QLinearMul": {0, 3},
}


def _weights(graph: onnx.GraphProto) -> tuple[int, int]:
    """(params, weight bytes) of the graph's initializers, subgraphs included."""
    roles: dict[str, set[str]] = {}
    tensors: list[TensorProto] = []
    copied: list[str] = []

    def visit(g: onnx.GraphProto) -> None:
        tensors.extend(g.initializer)
        for node in g.node:
            if node.op_type == "Identity" and node.input:
                copied.append(node.input[0])
            for i, name in enumerate(node.input):
                if not name:
                    continue
                if i in _QPARAM_INPUTS.get(node.op_type, ()):
                    role = "qparam"
                elif i in _QWEIGHT_INPUTS.get(node.op_type, ()):
                    role = "qweight"
                else:
                    role = "other"
                roles.setdefault(name, set()).add(role)
            for sub in subgraphs(node):
                visit(sub)

    visit(graph)
    params = weight_bytes = 0
    param_numel: dict[str, int] = {}
    for tensor in tensors:
        numel = math.prod(tensor.dims)
        weight_bytes += _nbytes(numel, tensor.data_type)
        used_as = roles.get(tensor.name, {"other"})
        if (tensor.data_type in _FLOAT_TYPES and used_as != {"qparam"}) or "qweight" in used_as:
            params += numel
            param_numel[tensor.name] = numel
    # torch.onnx stores equal-valued weights once and feeds the other users through Identity nodes (all the
    # zero biases of an untrained model, say); counting each copy keeps params independent of weight values.
    params += sum(param_numel.get(name, 0) for name in copied)
    return params, weight_bytes


# ---------------------------------------------------------------------------------------------------------
# Counting


class _Missing(Exception):
    """A tensor a node's count needs has no concrete shape."""


@dataclass
class _Ctx:
    shapes: MutableMapping[str, Shape]
    types: MutableMapping[str, int]
    consts: Mapping[str, np.ndarray]
    opsets: list[onnx.OperatorSetIdProto]
    ir_version: int
    # The node that writes each tensor, this graph's first and then the enclosing graphs'.
    producers: Mapping[str, onnx.NodeProto] = field(default_factory=dict)
    # The op types of the control-flow nodes whose body this is, outermost first.
    scope: tuple[str, ...] = ()

    def shape(self, name: str) -> Shape:
        try:
            return self.shapes[name]
        except KeyError:
            raise _Missing(name) from None


@dataclass
class _Acc:
    flops: float = 0.0
    mac: float = 0.0
    by_op: Counter = field(default_factory=Counter)
    uncounted: Counter = field(default_factory=Counter)
    unknown: list[str] = field(default_factory=list)
    # Top-level tensors to measure with ONNX Runtime.
    missing: set[str] = field(default_factory=set)
    nodes: list[MacNode] = field(default_factory=list)

    def add(self, op: str, mac: float, other: float) -> None:
        self.mac += mac
        self.flops += mac + other
        self.by_op[op] += mac + other

    def merge(self, other: _Acc) -> None:
        self.flops += other.flops
        self.mac += other.mac
        self.by_op.update(other.by_op)
        self.uncounted.update(other.uncounted)
        self.unknown.extend(other.unknown)
        self.missing |= other.missing
        self.nodes.extend(other.nodes)


def _walk(graph: onnx.GraphProto, ctx: _Ctx, mult: float, prefix: str, acc: _Acc, top: bool) -> None:
    """Add the cost of every node of ``graph``, each multiplied by ``mult`` (enclosing loops' trip counts)."""
    for i, node in enumerate(graph.node):
        label = prefix + (node.name or f"{node.op_type}_{i}")
        if node.op_type in _CONTROL:
            try:
                _CONTROL[node.op_type](node, label, ctx, mult, acc)
            except _Missing:
                acc.unknown.append(label)
                if top:
                    acc.missing.update(n for n in node.input if n and n not in ctx.shapes)
            continue
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            acc.uncounted[node.op_type] += 1
            continue
        try:
            mac, other = handler(node, ctx)
        except _Missing:
            acc.unknown.append(label)
            if top:
                acc.missing.update(n for n in (*node.input, *node.output) if n and n not in ctx.shapes)
            continue
        acc.add(node.op_type, mac * mult, other * mult)
        if mac:
            operands = tuple(_operand(name, ctx) for name in node.input)
            acc.nodes.append(MacNode(label, node.op_type, mac * mult, operands, ctx.scope))


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output if name}


def _operand(name: str, ctx: _Ctx) -> Operand:
    if not name:
        return Operand("", 0, None, 0)
    producer = ctx.producers.get(name)
    if producer is None:
        return Operand(name, ctx.types.get(name, 0), None, 0)
    source = producer.input[0] if producer.input else ""
    return Operand(name, ctx.types.get(name, 0), producer.op_type, ctx.types.get(source, 0) if source else 0)


def _sub_ctx(graph: onnx.GraphProto, bound: Mapping[str, tuple[Shape | None, int]], ctx: _Ctx, within: str) -> _Ctx:
    """Shapes inside a subgraph (the body of a ``within`` node) whose inputs have the ``bound`` (shape, elem type),
    via standalone inference.

    ONNX's own Loop inference drops the shapes of loop-carried values (they may change between iterations),
    so the body is inferred as a graph of its own: its inputs get the outer shapes and the outer-scope
    values it reads become inputs (or initializers, for known constants, so data propagation can use them).
    """
    produced = set()
    consumed = []

    def scan(g: onnx.GraphProto) -> None:
        produced.update(vi.name for vi in g.input)
        produced.update(t.name for t in g.initializer)
        for node in g.node:
            consumed.extend(n for n in node.input if n)
            produced.update(n for n in node.output if n)
            for sub in subgraphs(node):
                scan(sub)

    scan(graph)
    standalone = helper.make_graph([], graph.name or "subgraph", [], [])
    standalone.node.extend(graph.node)
    sort_nodes(standalone)
    for vi in graph.input:
        new = standalone.input.add()
        new.CopyFrom(vi)
        shape, elem_type = bound.get(vi.name, (None, 0))
        if elem_type:
            new.type.tensor_type.elem_type = elem_type
        if shape is not None:
            dims = new.type.tensor_type.shape
            del dims.dim[:]
            for d in shape:
                dims.dim.add().dim_value = d
    seen = set()
    for name in consumed:
        if name in produced or name in seen:
            continue
        seen.add(name)
        if name in ctx.consts:
            standalone.initializer.append(numpy_helper.from_array(np.asarray(ctx.consts[name]), name))
        elif name in ctx.types:
            standalone.input.append(helper.make_tensor_value_info(name, ctx.types[name], ctx.shapes.get(name)))
    standalone.initializer.extend(_weightless(t, None) for t in graph.initializer)
    # The body's outputs are left undeclared: every node output then lands in value_info, which is all the
    # count reads. Declaring them breaks inference when one is a body input passed straight through (tf2onnx
    # carries loop-invariant tensors that way): ONNX then drops the shapes of unrelated nodes (a Slice of
    # that very input, measured with onnx 1.23).
    model = helper.make_model(standalone, opset_imports=ctx.opsets)
    model.ir_version = ctx.ir_version
    inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    _collect_types(inferred.graph, shapes, types)
    return _Ctx(
        ChainMap(shapes, ctx.shapes),
        ChainMap(types, ctx.types),
        ChainMap(_constants(graph), ctx.consts),
        ctx.opsets,
        ctx.ir_version,
        producers=ChainMap(_producers(graph), ctx.producers),
        scope=(*ctx.scope, within),
    )


def _default_opset(ctx: _Ctx) -> int:
    return next((o.version for o in ctx.opsets if o.domain in ("", "ai.onnx")), 0)


def _scalar(ctx: _Ctx, name: str) -> int | None:
    value = ctx.consts.get(name) if name else None
    if value is None or np.asarray(value).size != 1:
        return None
    return int(np.asarray(value).reshape(-1)[0])


def _loop(node: onnx.NodeProto, label: str, ctx: _Ctx, mult: float, acc: _Acc) -> None:
    body = _attr(node, "body")
    carried = list(node.input[2:])
    missing = [n for n in carried if n and n not in ctx.shapes]
    if missing:
        raise _Missing(missing[0])
    bound = {body.input[0].name: ((), TensorProto.INT64), body.input[1].name: ((), TensorProto.BOOL)}
    for outer, inner in zip(carried, body.input[2:], strict=False):
        bound[inner.name] = (ctx.shapes[outer], ctx.types.get(outer, 0))
    trips = _scalar(ctx, node.input[0] if node.input else "")
    if trips is None:
        acc.unknown.append(f"{label}: Loop trip count is not a constant; body counted once")
        trips = 1
    _walk(body, _sub_ctx(body, bound, ctx, "Loop"), mult * trips, label + "/", acc, top=False)


def _scan(node: onnx.NodeProto, label: str, ctx: _Ctx, mult: float, acc: _Acc) -> None:
    if _default_opset(ctx) < 9:
        # Scan-8 has a leading sequence_lens input and a batch axis; no exporter in use emits it.
        acc.unknown.append(f"{label}: Scan before opset 9 is not counted")
        return
    body = _attr(node, "body")
    n_scan = _attr(node, "num_scan_inputs")
    n_state = len(node.input) - n_scan
    axes = list(_attr(node, "scan_input_axes", [0] * n_scan))
    bound = {}
    length = None
    for j, (outer, inner) in enumerate(zip(node.input, body.input, strict=False)):
        shape = ctx.shape(outer)
        if j >= n_state:
            axis = axes[j - n_state] % len(shape)
            if length is None:
                length = shape[axis]
            shape = shape[:axis] + shape[axis + 1 :]
        bound[inner.name] = (shape, ctx.types.get(outer, 0))
    _walk(body, _sub_ctx(body, bound, ctx, "Scan"), mult * (length or 0), label + "/", acc, top=False)


def _if(node: onnx.NodeProto, label: str, ctx: _Ctx, mult: float, acc: _Acc) -> None:
    branches = []
    for name in ("then_branch", "else_branch"):
        branch = _attr(node, name)
        branch_acc = _Acc()
        _walk(branch, _sub_ctx(branch, {}, ctx, "If"), mult, f"{label}/{name}/", branch_acc, top=False)
        branches.append(branch_acc)
    acc.merge(max(branches, key=lambda a: a.flops))


_CONTROL: dict[str, Callable[[onnx.NodeProto, str, _Ctx, float, _Acc], None]] = {
    "Loop": _loop,
    "Scan": _scan,
    "If": _if,
}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _has(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and node.input[index] != ""


def _out(node: onnx.NodeProto, ctx: _Ctx) -> int:
    return math.prod(ctx.shape(node.output[0]))


def _conv_like(weight: int, bias: int | None) -> Callable[[onnx.NodeProto, _Ctx], tuple[float, float]]:
    def cost(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
        # Output elements are N * Cout * out spatial; the weight's trailing dims are (Cin / group) * kernel.
        out = _out(node, ctx)
        mac = 2 * out * math.prod(ctx.shape(node.input[weight])[1:])
        other = out if bias is not None and _has(node, bias) else 0
        if node.op_type == "FusedConv":
            other += out * (bool(_attr(node, "activation")) + _has(node, 3))
        return mac, other

    return cost


def _conv_transpose(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
    # Every input element is scattered through (Cout / group) * kernel weights.
    mac = 2 * math.prod(ctx.shape(node.input[0])) * math.prod(ctx.shape(node.input[1])[1:])
    return mac, _out(node, ctx) if _has(node, 2) else 0


def _matmul_macs(a: Shape, b: Shape, trans_a: bool = False, trans_b: bool = False) -> int:
    a, b = list(a), list(b)
    if len(a) == 1:
        a = [1, *a]
    if len(b) == 1:
        b = [*b, 1]
    if trans_a:
        a[-2], a[-1] = a[-1], a[-2]
    if trans_b:
        b[-2], b[-1] = b[-1], b[-2]
    batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return 2 * math.prod(batch) * a[-2] * a[-1] * b[-1]


def _matmul_like(a: int, b: int) -> Callable[[onnx.NodeProto, _Ctx], tuple[float, float]]:
    def cost(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
        trans = bool(_attr(node, "transA", 0)), bool(_attr(node, "transB", 0))
        return _matmul_macs(ctx.shape(node.input[a]), ctx.shape(node.input[b]), *trans), 0

    return cost


def _gemm_like(a: int, b: int, c: int) -> Callable[[onnx.NodeProto, _Ctx], tuple[float, float]]:
    def cost(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
        shape_a, shape_b = ctx.shape(node.input[a]), ctx.shape(node.input[b])
        m, k = shape_a[::-1] if _attr(node, "transA", 0) else shape_a
        n = shape_b[0] if _attr(node, "transB", 0) else shape_b[1]
        other = m * n if _has(node, c) else 0
        if node.op_type == "FusedGemm" and _attr(node, "activation"):
            other += m * n
        return 2 * m * k * n, other

    return cost


def _einsum(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
    equation = _attr(node, "equation")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    terms = equation.split("->")[0].split(",")
    operands = [ctx.shape(name) for name in node.input]
    if len(operands) == 1:
        return 0, math.prod(operands[0])
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, operands, strict=False):
        if "..." in term:
            head, tail = term.split("...")
            n_broadcast = len(shape) - len(head) - len(tail)
            # Broadcast dims align from the right, so label them by their distance from the last one.
            labels = [*head, *(f"...{n_broadcast - j}" for j in range(n_broadcast)), *tail]
        else:
            labels = list(term)
        for label, dim in zip(labels, shape, strict=False):
            sizes[label] = max(sizes.get(label, 1), dim)
    return len(operands) * math.prod(sizes.values()), 0


def _recurrent(gates: int, pointwise: int) -> Callable[[onnx.NodeProto, _Ctx], tuple[float, float]]:
    def cost(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
        x = ctx.shape(node.input[0])
        w = ctx.shape(node.input[1])
        seq, batch = (x[1], x[0]) if _attr(node, "layout", 0) else (x[0], x[1])
        directions = w[0]
        hidden = _attr(node, "hidden_size") or w[1] // gates
        steps = directions * seq
        mac = steps * 2 * gates * hidden * (x[2] + hidden) * batch
        return mac, steps * pointwise * hidden * batch

    return cost


def _per_element(factor: float) -> Callable[[onnx.NodeProto, _Ctx], tuple[float, float]]:
    def cost(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
        return 0, factor * _out(node, ctx)

    return cost


def _variadic(extra: int) -> Callable[[onnx.NodeProto, _Ctx], tuple[float, float]]:
    def cost(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
        inputs = sum(1 for n in node.input if n)
        return 0, max(inputs - 1 + extra, 1) * _out(node, ctx)

    return cost


def _per_input_element(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
    return 0, math.prod(ctx.shape(node.input[0]))


def _pool(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
    return 0, math.prod(_attr(node, "kernel_shape")) * _out(node, ctx)


def _lrn(node: onnx.NodeProto, ctx: _Ctx) -> tuple[float, float]:
    return 0, (2 * _attr(node, "size") + 4) * _out(node, ctx)


_ONE_PER_ELEMENT = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Celu",
    "ThresholdedRelu",
    "Clip",
    "Where",
    "Neg",
    "Abs",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "FastGelu",
    "QuickGelu",
    "Mish",
    "Softplus",
    "Softsign",
    "Swish",
    "Shrink",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Mod",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "Not",
    "IsNaN",
    "IsInf",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "BitwiseNot",
    "BitShift",
    "CumSum",
    "BiasAdd",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
]
_PER_ELEMENT = {
    "BiasGelu": 2,
    "BatchNormalization": 2,
    "LayerNormalization": 5,
    "InstanceNormalization": 5,
    "GroupNormalization": 5,
    "MeanVarianceNormalization": 5,
    "SimplifiedLayerNormalization": 4,
    "RMSNormalization": 4,
    "SkipLayerNormalization": 6,
    "SkipSimplifiedLayerNormalization": 5,
    "Softmax": 3,
    "LogSoftmax": 3,
    "Hardmax": 1,
}
_REDUCTIONS = [
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ArgMax",
    "ArgMin",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
    "QLinearGlobalAveragePool",
]

_HANDLERS: dict[str, Callable[[onnx.NodeProto, _Ctx], tuple[float, float]]] = {
    "Conv": _conv_like(weight=1, bias=2),
    "FusedConv": _conv_like(weight=1, bias=2),
    "ConvInteger": _conv_like(weight=1, bias=None),
    "QLinearConv": _conv_like(weight=3, bias=8),
    "ConvTranspose": _conv_transpose,
    "MatMul": _matmul_like(0, 1),
    "FusedMatMul": _matmul_like(0, 1),
    "MatMulInteger": _matmul_like(0, 1),
    # com.microsoft's dynamically quantized products (calibration.loop_int8, quantize_dynamic): int8 weights.
    "DynamicQuantizeMatMul": _matmul_like(0, 1),
    "MatMulIntegerToFloat": _matmul_like(0, 1),
    "QLinearMatMul": _matmul_like(0, 3),
    "Gemm": _gemm_like(0, 1, 2),
    "FusedGemm": _gemm_like(0, 1, 2),
    "QGemm": _gemm_like(0, 3, 6),
    "Einsum": _einsum,
    "LSTM": _recurrent(gates=4, pointwise=9),
    "GRU": _recurrent(gates=3, pointwise=8),
    "RNN": _recurrent(gates=1, pointwise=1),
    "Sum": _variadic(0),
    "Max": _variadic(0),
    "Min": _variadic(0),
    "Mean": _variadic(1),
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "QLinearAveragePool": _pool,
    "LRN": _lrn,
    **{op: _per_element(1) for op in _ONE_PER_ELEMENT},
    **{op: _per_element(factor) for op, factor in _PER_ELEMENT.items()},
    **{op: _per_input_element for op in _REDUCTIONS},
}
