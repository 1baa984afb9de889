"""Brought-in files that are already reduced (issue 29): an FP16 file (float16 weights and compute, float32 at its
edges, an If, like silero-vad's) is the model's fp16 cell as brought and runs at fp32 as its upcast; a QDQ INT8
file is the int8 cell and runs at fp32 dequantized; an INT8 file of integer operators has no FP32 form, so its
fp32 and fp16 cells are unsupported with the reason and its int8 cell runs without an accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import suite
from calibration import reduced
from common.hashing import sha256_file
from onnx_models.store import ModelStore
from tests.graphs import save_graph

QUICK = ["--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3", "--accuracy-samples", "4"]
F, H = TensorProto.FLOAT, TensorProto.FLOAT16


# Roofs cached in a private cache, so that the reports at the end of runs measure nothing.
pytestmark = pytest.mark.usefixtures("cached_peaks")


def _rows(out: Path) -> dict[str, dict]:
    return {r["precision"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def _run(model: Path, out: Path) -> dict[str, dict]:
    assert suite.main(["run", "--onnx", str(model), "--batch-sizes", "2", "--out", str(out), *QUICK]) == 0
    return _rows(out)


def fp16_model(path: Path) -> Path:
    """What ``convert_float_to_float16(keep_io_types=True)`` writes: float32 input and output, a Cast into
    float16 after the input and back before the output, float16 weights for a Conv and a MatMul, and an If whose
    branches compute in float16 (silero-vad's files branch on their input's shape)."""
    rng = np.random.default_rng(3)
    conv = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float16)
    bias = rng.normal(0, 0.1, 8).astype(np.float16)
    dense = rng.normal(0, 0.3, (8, 4)).astype(np.float16)
    then = helper.make_graph(
        [
            helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float16))),
            helper.make_node("Mul", ["r", "two"], ["scaled"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("scaled", H, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["same"])], "else", [], [helper.make_tensor_value_info("same", H, None)]
    )
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=H),
        helper.make_node("Conv", ["x16", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "axis3"], ["width"], axis=0),
        helper.make_node("Equal", ["width", "eight"], ["wide"]),
        helper.make_node("If", ["wide"], ["branch"], then_branch=then, else_branch=other),
        helper.make_node("GlobalAveragePool", ["branch"], ["g"]),
        helper.make_node("Flatten", ["g"], ["flat"]),
        helper.make_node("MatMul", ["flat", "d"], ["y16"]),
        helper.make_node("Cast", ["y16"], ["y"], to=F),
    ]
    graph = helper.make_graph(
        nodes,
        "half",
        [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, ["N", 4])],
        [
            numpy_helper.from_array(conv, "w"),
            numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(dense, "d"),
            numpy_helper.from_array(np.array(3), "axis3"),
            numpy_helper.from_array(np.array(8), "eight"),
        ],
    )
    return save_graph(graph, path)


def qdq_model(path: Path) -> Path:
    """What a static QDQ quantizer writes: the input and the Conv's output quantized and dequantized at once
    (uint8), the Conv's and the MatMul's weights int8 per channel and per tensor, the Conv's bias int32."""
    rng = np.random.default_rng(4)
    conv_scale = rng.uniform(0.002, 0.004, 8).astype(np.float32)
    conv = rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8)
    bias = rng.integers(-50, 50, 8).astype(np.int32)
    dense = rng.integers(-127, 128, (8, 4)).astype(np.int8)
    scalar = lambda value, name, dtype=np.float32: numpy_helper.from_array(np.array(value, dtype), name)  # noqa: E731
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["bq", "b_scale", "b_zero"], ["b"], axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "r_scale", "r_zero"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "r_scale", "r_zero"], ["rd"]),
        helper.make_node("GlobalAveragePool", ["rd"], ["g"]),
        helper.make_node("Flatten", ["g"], ["flat"]),
        helper.make_node("DequantizeLinear", ["dq", "d_scale"], ["d"]),
        helper.make_node("MatMul", ["flat", "d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, ["N", 4])],
        [
            scalar(1 / 255, "x_scale"),
            scalar(0, "x_zero", np.uint8),
            numpy_helper.from_array(conv, "wq"),
            numpy_helper.from_array(conv_scale, "w_scale"),
            numpy_helper.from_array(np.zeros(8, np.int8), "w_zero"),
            numpy_helper.from_array(bias, "bq"),
            numpy_helper.from_array(conv_scale / 255, "b_scale"),
            numpy_helper.from_array(np.zeros(8, np.int32), "b_zero"),
            scalar(0.01, "r_scale"),
            scalar(0, "r_zero", np.uint8),
            numpy_helper.from_array(dense, "dq"),
            scalar(0.004, "d_scale"),
        ],
    )
    return save_graph(graph, path)


def dynamic_model(path: Path) -> Path:
    """What ONNX Runtime's ``quantize_dynamic`` writes for a MatMul: the input quantized at run time
    (DynamicQuantizeLinear), an integer MatMulInteger, and the product scaled back to float."""
    rng = np.random.default_rng(5)
    weight = rng.integers(-127, 128, (16, 4)).astype(np.int8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=F),
        helper.make_node("Mul", ["xs", "w_scale"], ["scale"]),
        helper.make_node("Mul", ["accf", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic",
        [helper.make_tensor_value_info("x", F, ["N", 16])],
        [helper.make_tensor_value_info("y", F, ["N", 4])],
        [
            numpy_helper.from_array(weight, "wq"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
            numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
        ],
    )
    return save_graph(graph, path)


# ------------------------------------------------------------------------------------------------ detection


def test_a_files_precision_is_read_from_its_contents(tmp_path):
    half = reduced.detect(onnx.load(str(fp16_model(tmp_path / "half.onnx"))))
    assert (half.precision, half.text) == ("fp16", "FP16 (float16 MAC weights: 100% of 248)")
    qdq = reduced.detect(onnx.load(str(qdq_model(tmp_path / "qdq.onnx"))))
    assert (qdq.precision, qdq.text, qdq.weight_bits) == ("int8", "INT8 (QDQ: 1 quantized Conv, 1 quantized MatMul)", 8)
    dynamic = reduced.detect(onnx.load(str(dynamic_model(tmp_path / "dynamic.onnx"))))
    assert (dynamic.precision, dynamic.text) == ("int8", "INT8 (dynamic: 1 MatMulInteger)")
    # Named by what the weights are, not by the file's name: float32 weights under a "half" name are FP32.
    plain = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", F, ["N", 4])],
        [helper.make_tensor_value_info("y", F, ["N", 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")],
    )
    assert reduced.detect(onnx.load(str(save_graph(plain, tmp_path / "model_half.onnx")))).precision == "fp32"


def test_the_upcast_is_exact_and_keeps_float16_edges(tmp_path):
    # A file with float16 inputs and outputs (torch's model.half() export): the upcast takes and returns float16
    # as the file does, so every precision takes the same feeds, and its weights are the file's values.
    weight = np.random.default_rng(6).normal(0, 1, (4, 3)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "edges",
        [helper.make_tensor_value_info("x", H, ["N", 4])],
        [helper.make_tensor_value_info("y", H, ["N", 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = onnx.load(str(save_graph(graph, tmp_path / "edges.onnx")))
    lifted, count = reduced.upcast(model)
    assert count == 1 and reduced.detect(lifted).precision == "fp32"
    assert np.array_equal(numpy_helper.to_array(lifted.graph.initializer[0]), weight.astype(np.float32))
    assert [n.op_type for n in lifted.graph.node] == ["Cast", "MatMul", "Cast"]
    from calibration.graph import check_runs

    x = np.random.default_rng(7).uniform(0, 1, (2, 4)).astype(np.float16)
    (got,) = check_runs(lifted, {"x": x})
    assert got.dtype == np.float16
    assert np.allclose(got, (x.astype(np.float32) @ weight.astype(np.float32)).astype(np.float16), atol=1e-2)


# ------------------------------------------------------------------------------------------- through the suite


def test_an_fp16_file_is_its_fp16_cell_and_runs_at_fp32_as_its_upcast(tmp_path):
    # Before: the FP16 file was the "fp32" cell, and "fp16" converted an FP16 graph to FP16 again.
    model = fp16_model(tmp_path / "half.onnx")
    rows = _run(model, tmp_path / "run")
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}, [
        r["error"] for r in rows.values()
    ]
    store = ModelStore("byo/half", "full")
    fp32, fp16 = store.entry("fp32"), store.entry("fp16")
    assert fp32["file_precision"]["precision"] == "fp16"
    assert fp32["origin"] == "the file upcast from FP16 to FP32 (4 float16 tensors in float32, exact)"
    assert fp32["no_fp32"] is None and fp32["origin_parity"]["max_abs_error"] < 1e-2
    assert reduced.detect(onnx.load(str(store.path("fp32")))).precision == "fp32"
    # The fp16 cell is the file as brought, byte for byte; its accuracy is measured against the upcast.
    assert fp16["sha256"] == sha256_file(model) == rows["fp16"]["artifact_sha256"]
    assert fp16["origin"] == "the file as brought"
    assert rows["fp16"]["artifact_origin"] == fp16["origin"]
    assert rows["fp16"]["file_precision"] == "FP16 (float16 MAC weights: 100% of 248)"
    assert rows["fp16"]["accuracy_value"] > 0.999
    # INT8 is quantized from the FP32 upcast, as for any FP32 file.
    assert rows["int8"]["artifact_origin"] == "a conversion of its fp32 artifact"
    assert rows["int8"]["accuracy_value"] > 0.99
    # The report says it where it names the precisions.
    report = (tmp_path / "run" / "report.md").read_text()
    assert (
        "byo/half is FP16 (float16 MAC weights: 100% of 248): fp32 is the file upcast from FP16 to FP32 (4 float16 "
        "tensors in float32, exact); fp16 is the file as brought; int8 is a conversion of its fp32 artifact."
    ) in report


def test_a_qdq_file_is_its_int8_cell_and_runs_at_fp32_dequantized(tmp_path):
    model = qdq_model(tmp_path / "qdq.onnx")
    rows = _run(model, tmp_path / "run")
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}, [
        r["error"] for r in rows.values()
    ]
    store = ModelStore("byo/qdq", "full")
    fp32 = store.entry("fp32")
    assert fp32["file_precision"]["text"] == "INT8 (QDQ: 1 quantized Conv, 1 quantized MatMul)"
    assert fp32["origin"] == (
        "the file dequantized from INT8 (QDQ: 1 quantized Conv, 1 quantized MatMul) to FP32 (3 quantized weights "
        "in float32, 2 activation Q/DQ pairs removed)"
    )
    stored = onnx.load(str(store.path("fp32")))
    assert not [n for n in stored.graph.node if "Quantize" in n.op_type]
    # The file as brought is the int8 cell whatever the weight range this machine asks for (int8 or int8-w7).
    int8 = rows["int8"]
    assert sha256_file(int8["artifact"]) == sha256_file(model) == int8["artifact_sha256"]
    assert int8["artifact_origin"] == "the file as brought" and int8["int8_weight_bits"] == 8
    # The file's own weights in float: its activation quantization is all INT8 loses against them.
    assert int8["accuracy_value"] > 0.99 and rows["fp16"]["accuracy_value"] > 0.999


def test_an_integer_operator_file_runs_int8_only_and_says_why(tmp_path):
    # Before: the dynamically quantized file ran as "fp32", its "fp16" kept the quantized MatMul in float32 and
    # its "int8" quantized what was left.
    model = dynamic_model(tmp_path / "dynamic.onnx")
    rows = _run(model, tmp_path / "run")
    no_fp32 = (
        "the file is INT8 (dynamic: 1 MatMulInteger), and it has no FP32 form: it computes with integer operators "
        "(1 DynamicQuantizeLinear, 1 MatMulInteger), which are not turned back into float"
    )
    assert rows["fp32"]["status"] == "unsupported"
    assert rows["fp32"]["error"] == f"byo/dynamic has no fp32 cell: {no_fp32}"
    assert rows["fp16"]["status"] == "unsupported"
    assert rows["fp16"]["error"] == (
        f"byo/dynamic cannot be converted to fp16: {no_fp32}; FP16 or INT8 conversion of a quantized graph is not made"
    )
    int8 = rows["int8"]
    assert int8["status"] == "ok" and int8["artifact_sha256"] == sha256_file(model)
    assert int8["accuracy_value"] is None and int8["error"].startswith("accuracy not measured: ")
    assert int8["error"].endswith(f"no FP32 reference: {no_fp32}")
