"""analysis.flops: hand-computed counts for single-op graphs, quantized variants, and torchvision references."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from analysis.flops import GraphCost, count

FLOAT = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # An IR version every onnxruntime release in use can load, for the tests that reach the runtime fallback.
    model.ir_version = 8
    return model


def _input(name: str, *dims, elem_type: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, ["N", *dims])


def _output(name: str, elem_type: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, None)


def _const(name: str, *shape: int, dtype=np.float32) -> TensorProto:
    rng = np.random.default_rng(len(name) + sum(shape))
    return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)


def _conv_model(bias: bool = True) -> onnx.ModelProto:
    # N x 4 x 10 x 10 -> N x 8 x 5 x 5 with 2 groups, stride 2, padding 1.
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    node = helper.make_node("Conv", inputs, ["y"], group=2, strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    inits = [_const("w", 8, 2, 3, 3)] + ([_const("b", 8)] if bias else [])
    return _model([node], [_input("x", 4, 10, 10)], [_output("y")], inits)


def test_conv_groups_stride_padding_bias():
    cost = count(_conv_model(), batch=2)
    mac = 2 * 2 * 8 * 5 * 5 * (4 // 2) * 3 * 3
    assert cost.mac_flops == mac
    assert cost.flops == mac + 2 * 8 * 5 * 5
    assert cost.by_op == {"Conv": mac + 2 * 8 * 5 * 5}
    assert cost.unknown_shapes == []


def test_conv_without_bias_has_no_extra_flops():
    cost = count(_conv_model(bias=False), batch=2)
    assert cost.flops == cost.mac_flops == 2 * 2 * 8 * 25 * 2 * 9


def test_batch_scales_counts():
    one, four = count(_conv_model(), batch=1), count(_conv_model(), batch=4)
    assert four.mac_flops == 4 * one.mac_flops
    assert four.flops == 4 * one.flops
    assert four.params == one.params and four.weight_bytes == one.weight_bytes


def test_conv_transpose():
    # N x 4 x 5 x 5 -> N x 6 x 11 x 11 (stride 2, kernel 3), 2 groups: weight is Cin x Cout/group x k x k.
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], group=2, strides=[2, 2])
    model = _model([node], [_input("x", 4, 5, 5)], [_output("y")], [_const("w", 4, 3, 3, 3), _const("b", 6)])
    cost = count(model, batch=3)
    mac = 2 * 3 * 4 * 5 * 5 * 3 * 3 * 3
    assert cost.mac_flops == mac
    assert cost.flops == mac + 3 * 6 * 11 * 11


def test_matmul_broadcast_batch_dims():
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = _model([node], [_input("a", 1, 5, 6)], [_output("y")], [_const("b", 3, 6, 7)])
    # (N, 1, 5, 6) @ (3, 6, 7): batch dims broadcast to (N, 3).
    assert count(model, batch=2).mac_flops == 2 * (2 * 3) * 5 * 6 * 7


def test_matmul_one_dimensional_operand():
    node = helper.make_node("MatMul", ["a", "v"], ["y"])
    model = _model([node], [_input("a", 4, 6)], [_output("y")], [_const("v", 6)])
    # (N, 4, 6) @ (6,) is (N, 4, 6) @ (6, 1) with the last dim dropped.
    assert count(model, batch=3).mac_flops == 2 * 3 * 4 * 6


def test_gemm_transposed_b_with_bias():
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1, alpha=0.5)
    model = _model([node], [_input("a", 6)], [_output("y")], [_const("w", 7, 6), _const("c", 7)])
    cost = count(model, batch=5)
    assert cost.mac_flops == 2 * 5 * 6 * 7
    assert cost.flops == 2 * 5 * 6 * 7 + 5 * 7


def test_einsum_two_operands_and_ellipsis():
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")
    model = _model([node], [_input("a", 3, 4), _input("b", 4, 5)], [_output("y")])
    assert count(model, batch=2).mac_flops == 2 * 2 * 3 * 4 * 5

    node = helper.make_node("Einsum", ["a", "w"], ["y"], equation="...ij,jk->...ik")
    model = _model([node], [_input("a", 7, 3, 4)], [_output("y")], [_const("w", 4, 5)])
    assert count(model, batch=2).mac_flops == 2 * (2 * 7) * 3 * 4 * 5


def test_einsum_single_operand_counts_elements():
    node = helper.make_node("Einsum", ["a"], ["y"], equation="bij->bj")
    cost = count(_model([node], [_input("a", 3, 4)], [_output("y")]), batch=2)
    assert cost.mac_flops == 0
    assert cost.flops == 2 * 3 * 4


def _recurrent_model(op: str, gates: int, directions: int) -> onnx.ModelProto:
    hidden, features = 4, 3
    node = helper.make_node(op, ["x", "w", "r"], ["y"], hidden_size=hidden, direction="bidirectional")
    if directions == 1:
        node = helper.make_node(op, ["x", "w", "r"], ["y"], hidden_size=hidden)
    inits = [_const("w", directions, gates * hidden, features), _const("r", directions, gates * hidden, hidden)]
    # Layout 0: (seq, batch, features); the batch is the second dimension, so the first is fixed here.
    x = helper.make_tensor_value_info("x", FLOAT, [5, "N", features])
    return _model([node], [x], [_output("y")], inits)


def test_lstm_bidirectional():
    seq, batch, hidden, features = 5, 2, 4, 3
    cost = count(_recurrent_model("LSTM", 4, 2), batch=1, input_shapes={"x": (seq, batch, features)})
    steps = 2 * seq
    assert cost.mac_flops == steps * 2 * 4 * hidden * (features + hidden) * batch
    assert cost.flops == cost.mac_flops + steps * 9 * hidden * batch


def test_gru_and_rnn():
    seq, batch, hidden, features = 5, 2, 4, 3
    shapes = {"x": (seq, batch, features)}
    gru = count(_recurrent_model("GRU", 3, 1), batch=1, input_shapes=shapes)
    assert gru.mac_flops == seq * 2 * 3 * hidden * (features + hidden) * batch
    assert gru.flops == gru.mac_flops + seq * 8 * hidden * batch
    rnn = count(_recurrent_model("RNN", 1, 1), batch=1, input_shapes=shapes)
    assert rnn.mac_flops == seq * 2 * hidden * (features + hidden) * batch


def test_softmax_maxpool_batchnorm():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["p", "s", "b", "m", "v"], ["n"]),
        helper.make_node("Flatten", ["n"], ["f"]),
        helper.make_node("Softmax", ["f"], ["y"], axis=-1),
    ]
    inits = [_const(name, 2) for name in "sbm"] + [numpy_helper.from_array(np.ones(2, np.float32), "v")]
    cost = count(_model(nodes, [_input("x", 2, 9, 9)], [_output("y")], inits), batch=3)
    pooled = 3 * 2 * 4 * 4
    assert cost.by_op == {"MaxPool": 9 * pooled, "BatchNormalization": 2 * pooled, "Softmax": 3 * pooled}
    assert cost.mac_flops == 0
    assert cost.uncounted == {"Flatten": 1}


def _loop_model(trip_count_source: str) -> onnx.ModelProto:
    """x (N, 4) -> Loop carrying s = s @ w, so each iteration is an (N, 4) @ (4, 4) MatMul."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["s", "w"], ["s_next"]), helper.make_node("Identity", ["cond"], ["cond_next"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s", FLOAT, None),
        ],
        [helper.make_tensor_value_info("cond_next", TensorProto.BOOL, []), _output("s_next")],
    )
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)]
    inits = [_const("w", 4, 4)]
    inputs = [_input("x", 4)]
    if trip_count_source == "initializer":
        inits.append(numpy_helper.from_array(np.array(5, np.int64), "trips"))
    elif trip_count_source == "constant":
        value = numpy_helper.from_array(np.array(5, np.int64), "trips_value")
        nodes.insert(0, helper.make_node("Constant", [], ["trips"], value=value))
    else:
        inputs.append(helper.make_tensor_value_info("trips", TensorProto.INT64, []))
    return _model(nodes, inputs, [_output("y")], inits)


@pytest.mark.parametrize("source", ["initializer", "constant"])
def test_loop_with_constant_trip_count(source):
    cost = count(_loop_model(source), batch=3)
    assert cost.mac_flops == 5 * 2 * 3 * 4 * 4
    assert cost.unknown_shapes == []
    assert cost.io_bytes == 2 * 3 * 4 * 4


def test_loop_with_runtime_trip_count_counts_body_once():
    cost = count(_loop_model("input"), batch=3)
    assert cost.mac_flops == 2 * 3 * 4 * 4
    assert any("trip count is not a constant" in note for note in cost.unknown_shapes)


def test_scan_counts_body_per_step():
    # Scans over the batch axis of xs (N, 4): each step adds the row to the state and projects it by w (4, 3).
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "row"], ["s_next"]), helper.make_node("MatMul", ["row", "w"], ["proj"])],
        "body",
        [helper.make_tensor_value_info("s", FLOAT, [4]), helper.make_tensor_value_info("row", FLOAT, [4])],
        [helper.make_tensor_value_info("s_next", FLOAT, [4]), helper.make_tensor_value_info("proj", FLOAT, [3])],
    )
    node = helper.make_node("Scan", ["s0", "xs"], ["s_final", "projs"], body=body, num_scan_inputs=1)
    s0 = helper.make_tensor_value_info("s0", FLOAT, [4])
    model = _model([node], [s0, _input("xs", 4)], [_output("s_final"), _output("projs")], [_const("w", 4, 3)])
    cost = count(model, batch=1, input_shapes={"xs": (6, 4)})
    assert cost.mac_flops == 6 * 2 * 4 * 3
    assert cost.flops == cost.mac_flops + 6 * 4


def test_if_counts_the_costlier_branch():
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [], [helper.make_tensor_value_info("t", FLOAT, None)]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", FLOAT, None)]
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    model = _model([node], [c, _input("x", 4)], [_output("y")], [_const("w", 4, 4)])
    assert count(model, batch=2).mac_flops == 2 * 2 * 4 * 4


def test_params_weight_bytes_io_bytes():
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Cast", ["mm"], ["mm16"], to=TensorProto.FLOAT16),
        helper.make_node("Add", ["mm16", "b"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, 6], np.int64), "shape"),
        _const("w", 6, 7),
        _const("b", 7, dtype=np.float16),
    ]
    model = _model(nodes, [_input("x", 2, 3)], [_output("y", TensorProto.FLOAT16)], inits)
    cost = count(model, batch=5)
    assert isinstance(cost, GraphCost)
    assert cost.params == 6 * 7 + 7  # the int64 shape constant is not a parameter
    assert cost.weight_bytes == 2 * 8 + 6 * 7 * 4 + 7 * 2
    assert cost.io_bytes == 5 * 6 * 4 + 5 * 7 * 2
    assert cost.bytes_lower_bound == cost.weight_bytes + cost.io_bytes
    assert cost.arith_intensity == pytest.approx(cost.flops / cost.bytes_lower_bound)
    assert cost.uncounted == {"Reshape": 1, "Cast": 1}


def test_symbolic_non_batch_dim_needs_input_shapes():
    node = helper.make_node("MatMul", ["ids", "w"], ["y"])
    model = _model([node], [helper.make_tensor_value_info("ids", FLOAT, ["N", "seq", 4])], [_output("y")])
    model.graph.initializer.append(_const("w", 4, 2))
    with pytest.raises(ValueError, match="input_shapes"):
        count(model, batch=2)
    assert count(model, batch=2, input_shapes={"ids": (2, 9, 4)}).mac_flops == 2 * 2 * 9 * 4 * 2
    with pytest.raises(ValueError, match="does not have"):
        count(model, batch=2, input_shapes={"idz": (2, 9, 4)})


def _data_dependent_model() -> onnx.ModelProto:
    # NonZero's output length depends on the values, so only a real run can give the MatMul's shape.
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Transpose", ["nz"], ["nz_t"], perm=[1, 0]),
        helper.make_node("Cast", ["nz_t"], ["coords"], to=FLOAT),
        helper.make_node("MatMul", ["coords", "w"], ["y"]),
    ]
    return _model(nodes, [_input("x", 4)], [_output("y")], [_const("w", 2, 3)])


def test_runtime_fallback_measures_data_dependent_shapes():
    model = _data_dependent_model()
    before = model.SerializeToString()
    cost = count(model, batch=3)
    # The dummy input is all ones, so every one of the 3 * 4 elements is a nonzero (row, col) pair.
    assert cost.mac_flops == 2 * 12 * 2 * 3
    assert cost.io_bytes == 3 * 4 * 4 + 12 * 3 * 4
    assert cost.unknown_shapes == []
    assert cost.uncounted == {"NonZero": 1, "Transpose": 1, "Cast": 1}
    assert model.SerializeToString() == before


def test_external_data_model_from_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_data_dependent_model(), path, save_as_external_data=True, location="model.bin", size_threshold=0)
    cost = count(path, batch=3)
    assert cost.mac_flops == 2 * 12 * 2 * 3
    assert cost.params == 6 and cost.weight_bytes == 24
    # Without the path the weights cannot be found, so the node is reported instead of guessed.
    unloaded = count(onnx.load(path, load_external_data=False), batch=3)
    assert unloaded.mac_flops == 0
    assert "MatMul_3" in unloaded.unknown_shapes


# ---------------------------------------------------------------------------------------------------------
# Quantized and half-precision variants of one model give the same MACs.


def _small_cnn(path) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w3"], ["mm"]),
        helper.make_node("Add", ["mm", "b3"], ["y"]),
    ]
    inits = [
        _const("w1", 8, 3, 3, 3),
        _const("b1", 8),
        _const("w2", 16, 8, 3, 3),
        _const("b2", 16),
        _const("w3", 16, 10),
        _const("b3", 10),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
    ]
    model = _model(nodes, [_input("x", 3, 16, 16)], [_output("y")], inits)
    onnx.save(model, path)
    return model


def test_fp16_and_int8_variants_have_the_same_macs(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.transformers import float16  # the converter calibration/fp16.py uses

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.feeds = iter([{"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.feeds, None)

    fp32 = tmp_path / "fp32.onnx"
    model = _small_cnn(fp32)
    onnx.save(float16.convert_float_to_float16(model), tmp_path / "fp16.onnx")
    quantize_static(fp32, tmp_path / "qdq.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    quantize_static(fp32, tmp_path / "qop.onnx", Reader(), quant_format=QuantFormat.QOperator)
    quantize_dynamic(fp32, tmp_path / "dynamic.onnx")

    batch = 4
    mac = 2 * batch * (8 * 16 * 16 * 3 * 9 + 16 * 7 * 7 * 8 * 9 + 16 * 10)
    costs = {name: count(tmp_path / f"{name}.onnx", batch) for name in ("fp32", "fp16", "qdq", "qop", "dynamic")}
    ops = {name: {n.op_type for n in onnx.load(tmp_path / f"{name}.onnx").graph.node} for name in costs}
    assert {"DequantizeLinear", "Conv"} <= ops["qdq"]
    assert {"QLinearConv", "QLinearMatMul"} <= ops["qop"]
    assert {"ConvInteger", "MatMulInteger"} <= ops["dynamic"]
    for name, cost in costs.items():
        assert cost.mac_flops == mac, name
        assert cost.unknown_shapes == [], name
    # Quantized weights and biases are parameters; scales and zero points are not.
    assert costs["fp16"].params == costs["qdq"].params == costs["qop"].params == costs["fp32"].params
    assert costs["qdq"].flops > costs["fp32"].flops  # Q/DQ nodes are counted as arithmetic


# ---------------------------------------------------------------------------------------------------------
# torchvision references: torchvision's "GFLOPS" column counts multiply-accumulates.


@pytest.fixture(scope="module")
def torchvision_exports(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    out = tmp_path_factory.mktemp("torchvision")
    paths = {}
    for name in ("resnet50", "densenet121"):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        paths[name] = out / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                torch.zeros(1, 3, 224, 224),
                str(paths[name]),
                dynamo=False,
                opset_version=17,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
    return paths


def test_resnet50_matches_published_macs_and_params(torchvision_exports):
    one = count(torchvision_exports["resnet50"], batch=1)
    assert one.mac_flops == pytest.approx(2 * 4.09e9, rel=0.02)
    # 25.56M with BatchNorm; the export folds BN into the convolutions, leaving one bias per channel.
    assert one.params == pytest.approx(25.56e6, rel=0.01)
    assert one.unknown_shapes == []
    eight = count(torchvision_exports["resnet50"], batch=8)
    assert eight.mac_flops == 8 * one.mac_flops
    assert eight.flops == 8 * one.flops
    assert eight.io_bytes == 8 * one.io_bytes


def test_densenet121_matches_published_macs_and_params(torchvision_exports):
    cost = count(torchvision_exports["densenet121"], batch=1)
    assert cost.mac_flops == pytest.approx(2 * 2.83e9, rel=0.03)
    assert cost.params == pytest.approx(7.98e6, rel=0.03)
    assert cost.unknown_shapes == []
