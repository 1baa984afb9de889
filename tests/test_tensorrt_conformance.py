"""The ``tensorrt`` INT8 flavour against TensorRT's explicit-quantization rules (``calibration.tensorrt_rules``).

Each rule fires on a small hand-built graph that breaks it and stays quiet on one that keeps it; the quantizer's
old setting (ONNX Runtime's default QuantizeBias, INT32 biases behind DequantizeLinear) fails the check and the
flavour's own settings pass it; and every catalogue model's ``tensorrt`` artifact at tiny size passes, with the
result recorded in its manifest entry.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration import int8, tensorrt_rules
from calibration.feeds import Feeds
from calibration.loop_int8 import quantize_loop_matmuls
from calibration.tensorrt_rules import RULE_IDS, RULES, check, conformance, row_text
from models import all_models
from onnx_models.artifacts import ensure, resolve
from onnx_models.store import ModelStore
from tests.test_units import _loop_model

K, C = 4, 3  # output and input channels of the hand-built Conv


def _init(name: str, value, dtype) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _conv_model(
    *,
    x_scale=0.05,
    x_zero=(0, np.int8),
    w_scale=None,
    w_zero=True,
    w_axis=0,
    op="Conv",
    weight_shape=(K, C, 3, 3),
    opset=17,
    bias_int32=False,
    q_domain="",
) -> onnx.ModelProto:
    """x -> Q -> DQ -> ``op`` with DQ(int8 weights, per-channel) and a float bias: the form TensorRT takes.
    Each keyword breaks one thing; ``x_zero`` None leaves the zero points out."""
    rng = np.random.default_rng(0)
    channels = weight_shape[w_axis] if w_axis is not None else 1
    w_scale = np.full(channels, 0.01, np.float32) if w_scale is None else np.asarray(w_scale, np.float32)
    inits = [
        _init("w_q", rng.integers(-127, 128, weight_shape), np.int8),
        _init("w_scale", w_scale, np.float32),
        _init("bias", np.zeros(K, np.float32), np.float32),
    ]
    if not isinstance(x_scale, str):
        inits.append(_init("x_scale", x_scale, np.float32))
    x_q_inputs = ["x", "x_scale"]
    if x_zero is not None:
        inits.append(_init("x_zero", x_zero[0], x_zero[1]))
        x_q_inputs.append("x_zero")
    w_inputs = ["w_q", "w_scale"]
    if w_zero:
        inits.append(_init("w_zero", np.zeros(w_scale.shape, np.int8), np.int8))
        w_inputs.append("w_zero")
    w_attrs = {} if w_axis is None else {"axis": w_axis}
    nodes = [
        helper.make_node("QuantizeLinear", x_q_inputs, ["xq"], name="x_q", domain=q_domain),
        helper.make_node("DequantizeLinear", ["xq", *x_q_inputs[1:]], ["xd"], name="x_dq", domain=q_domain),
        helper.make_node("DequantizeLinear", w_inputs, ["w"], name="w_dq", **w_attrs),
    ]
    bias = "bias"
    if bias_int32:
        inits += [
            _init("bias_q", np.arange(K), np.int32),
            _init("bias_scale", np.full(K, 5e-4, np.float32), np.float32),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["b"], name="bias_dq", axis=0))
        bias = "b"
    if op in ("Conv", "ConvTranspose"):
        nodes.append(helper.make_node(op, ["xd", "w", bias], ["y"], name="op"))
        x_shape = [1, C if op == "Conv" else weight_shape[0], 8, 8]
    elif op == "Gemm":
        trans_b = int(weight_shape[0] == K)
        nodes.append(helper.make_node("Gemm", ["xd", "w", bias], ["y"], name="op", transB=trans_b))
        x_shape = [1, weight_shape[1] if trans_b else weight_shape[0]]
    else:
        nodes.append(helper.make_node("MatMul", ["xd", "w"], ["y"], name="op"))
        x_shape = [1, weight_shape[0]]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
        + ([helper.make_tensor_value_info("x_scale", TensorProto.FLOAT, [])] if isinstance(x_scale, str) else []),
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(len(x_shape))])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _found(model) -> set[tuple[str, str]]:
    return {(v.rule, v.node) for v in check(model)}


# --- the rules, one by one --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"op": "ConvTranspose", "weight_shape": (C, K, 3, 3), "w_axis": 1},
        {"op": "Gemm", "weight_shape": (K, C), "w_axis": 0},  # transB: [N, K], output channels first
        {"op": "Gemm", "weight_shape": (C, K), "w_axis": 1},
        {"op": "MatMul", "weight_shape": (C, K), "w_axis": 1},
        {"w_scale": [0.02], "w_axis": None},  # per-tensor weights
        {"w_zero": False},
    ],
)
def test_a_graph_in_tensorrts_form_passes(kwargs):
    model = _conv_model(**kwargs)
    onnx.checker.check_model(model)
    assert check(model) == []


def test_the_good_graph_runs_in_onnx_runtime():
    """The form the rules ask for is a valid ONNX graph ONNX Runtime runs, not a shape only the check likes."""
    model = _conv_model()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, C, 8, 8), np.float32)})
    assert y.shape == (1, K, 6, 6) and np.isfinite(y).all()


def test_contrib_domain_ops_fire():
    assert _found(_conv_model(q_domain="com.microsoft")) == {("contrib-op", "x_q"), ("contrib-op", "x_dq")}


def test_the_cpu_flavours_loop_rewrite_is_a_contrib_op_inside_the_body():
    """DynamicQuantizeMatMul (com.microsoft) is what ``calibration.loop_int8`` writes: why it is cpu-only."""
    model = _loop_model(np.eye(4, dtype=np.float32), steps=2)
    assert check(model) == []
    assert quantize_loop_matmuls(model, min_weight_elements=1) == 1
    assert [(v.rule, v.node) for v in check(model)] == [("contrib-op", "loop>body>step_matmul")]


def test_qoperator_ops_fire():
    model = _conv_model()
    model.graph.node.append(helper.make_node("MatMulInteger", ["a", "b"], ["c"], name="mmi"))
    model.graph.node.append(helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dql"))
    assert _found(model) == {("qoperator-op", "mmi"), ("qoperator-op", "dql")}


def test_int32_bias_dequantize_fires_once_per_bias():
    assert _found(_conv_model(bias_int32=True)) == {("dq-int32", "bias_dq")}


def test_uint8_activations_fire_on_quantize_and_dequantize():
    assert _found(_conv_model(x_zero=(0, np.uint8))) == {("qdq-type", "x_q"), ("qdq-type", "x_dq")}


def test_a_quantize_without_zero_point_is_uint8_by_onnx():
    violations = check(_conv_model(x_zero=None))
    assert [(v.rule, v.node) for v in violations] == [("qdq-type", "x_q")]
    assert "UINT8" in violations[0].message


def test_a_nonzero_zero_point_fires():
    violations = check(_conv_model(x_zero=(3, np.int8)))
    assert {(v.rule, v.node) for v in violations} == {("zero-point", "x_q"), ("zero-point", "x_dq")}
    assert "3" in violations[0].message


def test_a_zero_point_computed_at_run_time_fires():
    model = _conv_model()
    model.graph.node[0].input[2] = "x_zero_live"
    model.graph.node.insert(0, helper.make_node("Identity", ["x_zero_input"], ["x_zero_live"], name="id"))
    model.graph.input.append(helper.make_tensor_value_info("x_zero_input", TensorProto.INT8, []))
    assert ("zero-point", "x_q") in _found(model)


def test_a_constant_zero_point_through_identity_is_a_constant():
    model = _conv_model()
    model.graph.node.insert(0, helper.make_node("Identity", ["x_zero"], ["x_zero_copy"], name="id"))
    model.graph.node[1].input[2] = "x_zero_copy"
    assert check(model) == []


def test_a_scale_computed_at_run_time_fires():
    assert _found(_conv_model(x_scale="x_scale")) == {("scale-constant", "x_q"), ("scale-constant", "x_dq")}


def test_a_scale_from_a_constant_node_is_a_constant():
    model = _conv_model()
    scale = next(t for t in model.graph.initializer if t.name == "x_scale")
    model.graph.initializer.remove(scale)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["x_scale"], value=scale))
    assert check(model) == []


@pytest.mark.parametrize("value", [0.0, -0.1, np.inf, np.nan])
def test_a_scale_not_finite_and_positive_fires(value):
    assert _found(_conv_model(x_scale=value)) == {("scale-value", "x_q"), ("scale-value", "x_dq")}


def test_a_weight_scale_with_one_bad_channel_fires():
    assert _found(_conv_model(w_scale=[0.01, 0.01, 0.0, 0.01])) == {("scale-value", "w_dq")}


def test_a_double_scale_fires():
    model = _conv_model()
    model.graph.initializer.append(_init("w_scale", np.full(K, 0.01), np.float64))
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "w_scale"))
    assert _found(model) == {("scale-value", "w_dq")}


def test_a_scale_not_as_long_as_the_axis_fires():
    assert _found(_conv_model(w_scale=[0.01] * (K - 1))) == {("scale-shape", "w_dq")}


def test_a_zero_point_of_another_size_fires():
    model = _conv_model()
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "w_zero"))
    model.graph.initializer.append(_init("w_zero", np.zeros(2, np.int8), np.int8))
    assert _found(model) == {("scale-shape", "w_dq")}


def test_per_channel_activations_fire():
    found = _found(_conv_model(x_scale=np.full(C, 0.05), x_zero=(np.zeros(C), np.int8)))
    assert found == {("per-channel-activation", "x_q"), ("per-channel-activation", "x_dq")}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"w_axis": 1, "w_scale": [0.01] * C},  # Conv along its input channels
        {"op": "ConvTranspose", "weight_shape": (C, K, 3, 3), "w_axis": 0, "w_scale": [0.01] * C},
        {"op": "Gemm", "weight_shape": (C, K), "w_axis": 0, "w_scale": [0.01] * C},
        {"op": "MatMul", "weight_shape": (C, K), "w_axis": 0, "w_scale": [0.01] * C},
    ],
)
def test_per_channel_weights_on_the_wrong_axis_fire(kwargs):
    assert _found(_conv_model(**kwargs)) == {("per-channel-axis", "w_dq")}


def test_per_channel_weights_of_another_op_fire():
    model = _conv_model()
    model.graph.node.append(helper.make_node("Add", ["w", "w"], ["w2"], name="add"))
    violations = check(model)
    assert [(v.rule, v.node) for v in violations] == [("per-channel-axis", "w_dq")]
    assert "Add" in violations[0].message


def test_per_channel_below_opset_13_fires():
    assert _found(_conv_model(opset=12)) == {("opset", "w_dq")}


def test_quantized_tensors_across_a_body_boundary_fire():
    model = _loop_model(np.eye(4, dtype=np.float32), steps=2)
    body = model.graph.node[0].attribute[0].g
    body.input[3].type.tensor_type.elem_type = TensorProto.INT8
    assert _found(model) == {("body-io-type", "loop>body")}


def _loop_with_qdq(*, zero_type=np.int8, shadow=False) -> onnx.ModelProto:
    """A Loop whose body quantizes h with a scale and zero point of the main graph (in scope)."""
    model = _loop_model(np.eye(4, dtype=np.float32), steps=2)
    body = model.graph.node[0].attribute[0].g
    old = list(body.node)
    del body.node[:]
    body.node.extend(
        [
            helper.make_node("QuantizeLinear", ["h_in", "s", "z"], ["hq"], name="q"),
            helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["hd"], name="dq"),
        ]
    )
    for node in old:
        node.input[:] = ["hd" if name == "h_in" else name for name in node.input]
        body.node.append(node)
    model.graph.initializer.extend([_init("s", 0.05, np.float32), _init("z", 0, zero_type)])
    if shadow:  # a body input named like the outer scale hides it: the scale is no longer a constant
        body.input.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    return model


def test_rules_apply_inside_loop_bodies_with_outer_constants_in_scope():
    assert check(_loop_with_qdq()) == []
    assert _found(_loop_with_qdq(zero_type=np.uint8)) == {("qdq-type", "loop>body>q"), ("qdq-type", "loop>body>dq")}
    assert ("scale-constant", "loop>body>q") in _found(_loop_with_qdq(shadow=True))


def test_every_rule_is_in_the_documented_table():
    doc = tensorrt_rules.__doc__
    for rule in RULES:
        row = next((line for line in doc.splitlines() if line.startswith(f"{rule.id} ")), None)
        assert row is not None, rule.id
        assert row.rstrip().endswith(rule.sources), (rule.id, row)
        for source in rule.sources.split():
            assert f"- {source}" in doc, (rule.id, source)
    assert len(RULE_IDS) == len(RULES)


def test_the_record_and_the_row_text():
    record = conformance(check(_conv_model(bias_int32=True, x_zero=(0, np.uint8))))
    assert record["passed"] is False and record["rules"] == len(RULES)
    assert record["broken"] == {"dq-int32": 1, "qdq-type": 2} and record["violations_total"] == 3
    assert row_text(record) == "dq-int32: 1 node; qdq-type: 2 nodes"
    assert row_text(conformance([])) == "ok"
    assert row_text(None) is None


# --- the quantizer: the old setting fails, the flavour's passes --------------------------------------------------


def _float_conv(path):
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "G", "GB"], ["y"], name="fc", transB=1),
        ],
        "float_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [
            _init("W", rng.normal(size=(K, C, 3, 3)), np.float32),
            _init("B", rng.normal(size=K), np.float32),
            _init("G", rng.normal(size=(5, K)), np.float32),
            _init("GB", rng.normal(size=5), np.float32),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    batches = [{"x": rng.normal(size=(2, C, 8, 8)).astype(np.float32)} for _ in range(3)]
    return Feeds(batches, "test", "digest"), batches[0]


def test_quantize_bias_on_the_old_setting_fails_the_check(tmp_path):
    """ONNX Runtime's default (QuantizeBias on), which the tensorrt flavour had: INT32 biases behind DQ."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    feeds, _ = _float_conv(tmp_path / "fp32.onnx")
    options = int8.quantizer_options("tensorrt") | {"QuantizeBias": True}
    quantize_static(
        str(tmp_path / "fp32.onnx"),
        str(tmp_path / "old.onnx"),
        feeds,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options=options,
    )
    # The Conv's bias and the Gemm's.
    assert [v.rule for v in check(tmp_path / "old.onnx")] == ["dq-int32", "dq-int32"]


def test_the_tensorrt_flavour_passes_the_check(tmp_path):
    feeds, check_feeds = _float_conv(tmp_path / "fp32.onnx")
    info = int8.quantize(
        tmp_path / "fp32.onnx",
        tmp_path / "int8.onnx",
        feeds,
        method="minmax",
        flavour="tensorrt",
        cache_path=tmp_path / "ranges.json",
        check_feeds=check_feeds,
    )
    assert check(tmp_path / "int8.onnx") == []
    assert info["quantized_ops"].get("Conv") == 1 and info["quantized_ops"].get("Gemm") == 1
    # The biases are read as the float initializers they were, not through a DequantizeLinear.
    nodes = {n.name: n for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert (nodes["conv"].input[2], nodes["fc"].input[2]) == ("B", "GB")


def test_the_cpu_flavour_keeps_its_own_options():
    """The fix is the tensorrt flavour's; the cpu flavour (u8 activations for x86 kernels) is unchanged."""
    assert int8.quantizer_options("cpu") == {
        "CalibStridedMinMax": 1,
        "ActivationSymmetric": False,
        "WeightSymmetric": True,
    }
    assert int8.quantizer_options("tensorrt")["QuantizeBias"] is False


# --- every catalogue model's tensorrt artifact at tiny size ------------------------------------------------------


@pytest.mark.parametrize("name", [name for name, spec in all_models().items() if spec.trained is None])
def test_every_catalogue_models_tensorrt_artifact_passes(name):
    """Built as the cells of a TensorRT or CUDA engine would build it; the manifest records the check. (The
    trained track's models are checked in tests/test_trained.py, which trains them anyway.)"""
    assert_tensorrt_artifact_passes(name)


def assert_tensorrt_artifact_passes(name: str) -> None:
    """Build ``name``'s tiny ``tensorrt`` INT8 artifact and assert that it keeps every rule, as recorded."""
    ensure(resolve(name, "tiny", "int8", "tensorrt"))
    entry = ModelStore(name, "tiny").entry("int8-tensorrt")
    record = entry["tensorrt_conformance"]
    assert record["rules"] == len(RULES)
    assert record["passed"], row_text(record) + f"; first: {record['violations'][:3]}"
    assert entry["flavour"] == "tensorrt" and entry["activations"] == "int8 symmetric"
