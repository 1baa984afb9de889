"""INT8 on the CPU at hand: the instruction set, the saturation of 8-bit dot products, the weight range chosen
for it, and the kernel check that tells quantization error from kernel error.

Expectations come from the arithmetic, not from the machine the tests were written on: an exact integer
kernel gives what a numpy integer product gives, bit for bit up to float rounding; a kernel that sums u8 x s8
pairs in saturating 16-bit lanes does not, for weights that use the full 8-bit range. Where a behaviour
differs by instruction set, each test checks the expectation of the machine it runs on.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import suite
from calibration import int8_recipe
from calibration.int8_recipe import weight_recipe
from calibration.loop_int8 import quantize_loop_matmuls, simulate_loop_matmuls
from common.cpu_isa import expected_saturation, isa, saturation_probe
from diagnose.int8_check import verdict
from engines.ort_cpu import OrtCpuEngine
from onnx_models.artifacts import CalibrationSettings, ensure, resolve
from onnx_models.store import ModelStore
from tests.test_units import _loop_model

SATURATES = saturation_probe()


@pytest.mark.parametrize(
    "flags, machine, name, saturates",
    [
        ({"avx2", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"}, "x86_64", "amx", False),
        ({"avx2", "avx512bw", "avx512_vnni"}, "x86_64", "avx512-vnni", False),
        ({"avx2", "avx_vnni"}, "x86_64", "avx-vnni", False),
        ({"avx2", "avx512f", "avx512bw"}, "x86_64", "avx512", True),
        ({"sse4_1", "avx", "avx2", "fma"}, "x86_64", "avx2", True),
        ({"sse4_1"}, "x86_64", "sse4.1", None),
        ({"asimd", "asimddp", "i8mm"}, "aarch64", "arm64-i8mm", False),
        ({"asimd", "asimddp"}, "aarch64", "arm64-dotprod", False),
        ({"asimd"}, "aarch64", "arm64", False),
    ],
)
def test_isa_from_cpu_flags(flags, machine, name, saturates):
    assert isa(flags, machine) == name
    assert expected_saturation(name) is saturates


def test_probe_agrees_with_what_the_isa_documents():
    """The probe measures ONNX Runtime's kernels; the ISA table says what they are documented to do."""
    expected = expected_saturation(isa())
    if expected is None:
        pytest.skip(f"no documented expectation for {isa()}; the probe alone decides ({SATURATES})")
    assert SATURATES is expected


def _exact_loop(x: np.ndarray, q: np.ndarray, scale: np.ndarray, steps: int) -> np.ndarray:
    """h = tanh(DynamicQuantizeMatMul(h, q, scale)) computed with exact integer products, as an exact kernel
    would: the activation quantized like ONNX Runtime's DynamicQuantizeLinear (uint8, range including 0)."""
    h = x
    for _ in range(steps):
        lo, hi = np.float32(min(0.0, h.min())), np.float32(max(0.0, h.max()))
        step = np.float32((hi - lo) / np.float32(255))
        zero = np.clip(np.rint(-lo / step), 0, 255)
        hq = np.clip(np.rint(h / step) + zero, 0, 255)
        acc = (hq - zero).astype(np.int64) @ q.astype(np.int64)
        h = np.tanh((acc * (step * scale)).astype(np.float32))
    return h


def _run(model, x, optimization=None):
    options = ort.SessionOptions()
    if optimization == "disabled":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("weight_max", [127, 64])
def test_loop_matmuls_are_exact_integer_arithmetic_unless_the_kernels_saturate(weight_max):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((256, 256)) / 16).astype(np.float32)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    reference = _run(_loop_model(weight, steps=2), x)
    model = _loop_model(weight, steps=2)
    assert quantize_loop_matmuls(model, weight_max=weight_max) == 1
    (node,) = model.graph.node[0].attribute[0].g.node[:1]
    assert (node.op_type, node.domain, node.name) == ("DynamicQuantizeMatMul", "com.microsoft", "step_matmul")
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q, scale = initializers["W_int8"], initializers["W_int8_scale"]
    assert np.abs(q).max() == weight_max
    exact = _exact_loop(x, q, scale, steps=2)
    # The quantization itself: within what rounding a weight to half a step and an activation to one step
    # can do to a 256-term dot product (a worst case far above the typical error), and not exact.
    step_x = (max(0, x.max()) - min(0, x.min())) / 255
    bound = np.abs(x).sum(1).max() * scale.max() / 2 + (np.abs(weight).sum(0).max() + scale.max()) * step_x
    assert 0 < np.abs(exact - reference).max() < bound
    # The kernel: exact where it cannot saturate (7-bit weights anywhere; 8-bit ones on VNNI, AMX, Arm).
    kernel_error = np.abs(_run(model, x) - exact).max()
    if weight_max == 127 and SATURATES:
        assert kernel_error > 1e-2
    else:
        assert kernel_error < 1e-4
    # The float simulation of the same node keeps the quantization and loses the kernel, on every machine.
    assert simulate_loop_matmuls(model) == 1
    assert np.abs(_run(model, x, "disabled") - exact).max() < 1e-4


def test_loop_matmuls_leave_changing_and_small_weights_alone():
    weight = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    assert quantize_loop_matmuls(_loop_model(weight, steps=5, changes_weight=True)) == 0
    assert quantize_loop_matmuls(_loop_model(weight[:64, :64].copy(), steps=5)) == 0


def _qdq_matmul(weight_q: np.ndarray) -> object:
    """x (uint8 range, scale 1, zero point 0) -> DQ -> MatMul with the int8 weight (scale 1) -> Q (uint8) as a
    QDQ graph that ONNX Runtime fuses into one integer kernel; outputs are scaled into the uint8 range."""
    k, n = weight_q.shape
    out_scale = np.float32(255 * 127 * k / 255)
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "one", "zu"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "one", "zu"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "one", "zs"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
            helper.make_node("QuantizeLinear", ["y", "out_scale", "zu"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "out_scale", "zu"], ["out"]),
        ],
        "qdq_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, n])],
        [
            numpy_helper.from_array(weight_q, "w"),
            numpy_helper.from_array(np.float32(1), "one"),
            numpy_helper.from_array(out_scale, "out_scale"),
            numpy_helper.from_array(np.uint8(0), "zu"),
            numpy_helper.from_array(np.int8(0), "zs"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_simulated_qdq_runs_in_float_and_real_kernels_saturate_only_where_probed(tmp_path):
    """The kernel check's premise: graph optimisation off runs the QDQ graph in float (the exact quantized
    product); on, ONNX Runtime fuses it into its integer kernel, which matches that product unless it
    saturates. Activations 255 and weights 127 are the worst case."""
    k = 64
    x = np.full((4, k), 255, np.float32)
    path = tmp_path / "qdq.onnx"
    for weight_value in (127, 64):
        path.write_bytes(_qdq_matmul(np.full((k, 8), weight_value, np.int8)).SerializeToString())
        exact = 255 * weight_value * k
        out_scale = 255 * 127 * k / 255
        results = {}
        for mode in ("enabled", "disabled"):
            with OrtCpuEngine({"optimization": mode, "threads": 1}) as engine:
                engine.activate(path)
                (results[mode],) = engine.infer({"x": x}).values()
        assert np.allclose(results["disabled"], np.round(exact / out_scale) * out_scale)
        saturated = not np.allclose(results["enabled"], results["disabled"])
        assert saturated is (weight_value == 127 and bool(SATURATES))


def int8_name(flavour: str = "cpu", weights: str = "auto") -> str:
    """The name of the INT8 artifact of ``flavour`` with weight range ``weights`` resolved on this machine."""
    return resolve("resnet50", "tiny", "int8", flavour, CalibrationSettings(int8_weights=weights)).name


def test_auto_weight_range_follows_the_probe(monkeypatch):
    monkeypatch.setattr(int8_recipe, "saturation_probe", lambda: True)
    monkeypatch.setattr(int8_recipe, "isa", lambda: "avx2")
    recipe = weight_recipe("cpu")
    assert (recipe.bits, recipe.weight_max) == (7, 64) and "avx2" in recipe.reason
    assert int8_name() == "int8-w7" and int8_name("cpu", "8bit") == "int8"
    monkeypatch.setattr(int8_recipe, "saturation_probe", lambda: False)
    assert weight_recipe("cpu").bits == 8 and int8_name() == "int8"
    assert weight_recipe("cpu", "7bit").bits == 7 and "given" in weight_recipe("cpu", "7bit").reason
    # TensorRT's kernels accumulate in 32 bits: full range whatever the CPU or the request.
    assert weight_recipe("tensorrt", "7bit").bits == 8 and int8_name("tensorrt") == "int8-tensorrt"
    with pytest.raises(ValueError, match="auto, 8bit, 7bit"):
        weight_recipe("cpu", "6bit")
    with pytest.raises(ValueError, match="--int8-weights"):
        CalibrationSettings(int8_weights="full")


def _weight_extremes(path) -> int:
    """The largest |value| of the int8 initializers that DequantizeLinear reads (the quantized weights)."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {t.name: t for t in graph.initializer if t.data_type == TensorProto.INT8}
    read = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"} & set(weights)
    return max(int(np.abs(numpy_helper.to_array(weights[name]).astype(np.int32)).max()) for name in read)


def test_weight_range_is_in_the_artifact_name_key_and_manifest():
    store = ModelStore("resnet50", "tiny")
    for weights, name, extreme in (("8bit", "int8", 127), ("7bit", "int8-w7", 64)):
        calib = CalibrationSettings(int8_weights=weights)
        path = ensure(resolve("resnet50", "tiny", "int8", calib=calib), calib=calib)
        assert path == store.path(name)
        entry = store.entry(name)
        assert entry["weight_bits"] == int(weights[0]) and entry["built_on_isa"] == isa()
        # The reason is the first build's: an auto build with the same width is the same artifact.
        assert f"[-{extreme}, {extreme}]" in entry["weights"] and entry["weight_recipe"]
        assert _weight_extremes(path) == extreme
    # Same FP32 file, calibration and options: only the weight range tells the two builds apart.
    assert store.entry("int8")["key"] != store.entry("int8-w7")["key"]
    assert store.entry("int8")["calibration"]["cache"] == store.entry("int8-w7")["calibration"]["cache"]


def test_verdict_tells_kernel_error_from_quantization_error():
    row = {"accuracy_metric": "top1_agreement"}
    simulated = {**row, "accuracy_value": 0.9, "accuracy_cosine": 0.99}
    assert verdict({**row, "accuracy_value": 0.9, "accuracy_cosine": 0.9895}, simulated)[0] is False
    costs, sentence = verdict({**row, "accuracy_value": 0.7, "accuracy_cosine": 0.95}, simulated)
    assert costs and sentence.startswith("the kernels cost accuracy: top1_agreement 0.7")
    costs, sentence = verdict({**row, "accuracy_value": 0.9, "accuracy_cosine": 0.97}, simulated)
    assert costs and "not (yet) visible in top1_agreement" in sentence
    ctr = {"accuracy_metric": "max_abs_error"}
    assert verdict(
        {**ctr, "accuracy_value": 0.1, "accuracy_cosine": 0.9},
        {**ctr, "accuracy_value": 0.01, "accuracy_cosine": 0.999},
    )[0]


def test_int8_check_command(tmp_path, capsys):
    out = tmp_path / "check"
    argv = ["int8-check", "--models", "resnet50", "--size", "tiny", "--accuracy-samples", "8", "--out", str(out)]
    status = suite.main([*argv, "--warmup-s", "0", "--duration-s", "0.1", "--min-iters", "2"])
    assert status == 0
    report = json.loads((out / "int8-check.json").read_text())
    assert report["cpu"]["isa"] == isa() and report["cpu"]["int8_saturates"] is SATURATES
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["fp32", "int8 8-bit", "int8 8-bit simulated", "int8 7-bit", "int8 7-bit simulated"]
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["fp32"]["accuracy_value"] == 1 and rows["int8 8-bit"]["speedup_vs_fp32"] > 0
    assert "latency_ms_p50" not in rows["int8 7-bit simulated"]
    # 7-bit weights cannot saturate anywhere; 8-bit ones cost accuracy exactly where the probe says so.
    assert rows["int8 7-bit"]["kernels_cost_accuracy"] is False
    assert rows["int8 8-bit"]["kernels_cost_accuracy"] is bool(SATURATES)
    printed = capsys.readouterr().out
    assert "resnet50 int8 8-bit: the kernels" in printed and "resnet50 int8 7-bit: the kernels are faithful" in printed
