"""The share of a model's multiply-accumulates that its reduced-precision artifact runs in that precision
(``analysis.quant_coverage``): counted on QDQ, FP16 and Loop graphs, recorded by the builders, refused where it is
0 for INT8 (every Conv inside If bodies), carried by every row and said beside every speed-up in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import suite
from analysis.flops import count
from analysis.quant_coverage import coverage, share_text
from calibration import int8
from calibration.feeds import Feeds
from common.errors import Unsupported

F = TensorProto.FLOAT
QUICK = ["--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3", "--accuracy-samples", "4"]
# Conv of 8 x 3 x 3 x 3 over a 4 x 4 image (padded): 8 * 16 * 27 MACs per sample; then 128 x 5 MatMul.
CONV_MACS, MATMUL_MACS = 8 * 16 * 27, 128 * 5


# Roofs cached in a private cache, so that the reports at the end of runs measure nothing.
pytestmark = pytest.mark.usefixtures("cached_peaks")


def _weight(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).normal(0, 0.3, shape).astype(np.float32), name)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def conv_matmul(path: Path) -> Path:
    """x (N, 3, 4, 4) -> Conv 3x3 to 8 channels -> Relu -> (N, 128) -> MatMul to 5."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
            helper.make_node("MatMul", ["f", "M"], ["y"], name="mm"),
        ],
        "conv_matmul",
        [helper.make_tensor_value_info("x", F, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, ["N", 5])],
        [
            _weight("W", (8, 3, 3, 3)),
            _weight("B", (8,), 1),
            _weight("M", (128, 5), 2),
            numpy_helper.from_array(np.array([-1, 128]), "shape"),
        ],
    )
    return _save(graph, path)


def conv_in_if(path: Path) -> Path:
    """The Conv inside an If: 8 output channels on the then branch, 4 on the else branch, chosen by the sign of
    the input's sum. Nothing outside the bodies multiplies."""

    def branch(name: str, weight: str, out: str) -> onnx.GraphProto:
        node = helper.make_node("Conv", ["x", weight], [out], name=f"{name}_conv", pads=[1, 1, 1, 1])
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(out, F, None)])

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
            helper.make_node("Greater", ["s", "zero"], ["positive"], name="sign"),
            helper.make_node(
                "If",
                ["positive"],
                ["y"],
                name="pick",
                then_branch=branch("then", "W", "t"),
                else_branch=branch("else", "W4", "e"),
            ),
        ],
        "conv_in_if",
        [helper.make_tensor_value_info("x", F, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, None)],
        [_weight("W", (8, 3, 3, 3)), _weight("W4", (4, 3, 3, 3), 3), numpy_helper.from_array(np.float32(0), "zero")],
    )
    return _save(graph, path)


def loop_matmul(steps: int, k: int = 8) -> onnx.ModelProto:
    """h <- tanh(h @ W) ``steps`` times in a Loop, W passed through the loop unchanged (tf2onnx's form)."""
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "w_in"], ["hw"], name="step_matmul"),
            helper.make_node("Tanh", ["hw"], ["h_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["w_in"], ["w_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", F, ["B", k]),
            helper.make_tensor_value_info("w_in", F, [k, k]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", F, ["B", k]),
            helper.make_tensor_value_info("w_out", F, [k, k]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "", "x", "W"], ["h", "w_final"], body=body, name="loop")],
        "loop_model",
        [helper.make_tensor_value_info("x", F, ["B", k])],
        [helper.make_tensor_value_info("h", F, ["B", k])],
        [_weight("W", (k, k)), numpy_helper.from_array(np.array(steps, dtype=np.int64), "steps")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _feeds(seed: int = 0) -> tuple[Feeds, dict]:
    rng = np.random.default_rng(seed)
    batches = [{"x": rng.normal(size=(2, 3, 4, 4)).astype(np.float32)} for _ in range(3)]
    return Feeds(batches, "test", f"digest-{seed}"), batches[0]


def _quantize(source: Path, out: Path, flavour: str = "cpu", **options) -> dict:
    feeds, check = _feeds()
    return int8.quantize(
        source,
        out,
        feeds,
        method="minmax",
        flavour=flavour,
        cache_path=out.with_suffix(".ranges.json"),
        check_feeds=check,
        **options,
    )


@pytest.mark.parametrize("flavour", ["cpu", "tensorrt"])
def test_a_quantized_conv_and_matmul_run_every_mac_in_int8(tmp_path, flavour):
    source = conv_matmul(tmp_path / "fp32.onnx")
    info = _quantize(source, tmp_path / "int8.onnx", flavour)
    # Conv and MatMul are not in KEEP_FLOAT: both get Q/DQ on activation and weight.
    assert not {"Conv", "MatMul"} & int8.KEEP_FLOAT
    covered = info["mac_coverage"]
    assert covered["macs"] == 2 * (CONV_MACS + MATMUL_MACS)  # the check batch holds 2 samples
    assert covered["macs"] == count(source, 2).mac_flops / 2  # the FLOP count's MACs, FP32 graph
    assert (covered["reduced_macs"], covered["share"], covered["body_macs"]) == (covered["macs"], 1.0, 0.0)


def test_a_node_kept_in_float_lowers_the_share_and_is_built(tmp_path):
    source = conv_matmul(tmp_path / "fp32.onnx")
    info = _quantize(source, tmp_path / "int8.onnx", exclude_nodes=("mm",))
    assert info["mac_coverage"]["share"] == pytest.approx(CONV_MACS / (CONV_MACS + MATMUL_MACS))
    assert (tmp_path / "int8.onnx").is_file()
    # Every MAC in float, but outside any body: refused too, saying the operators were kept in float.
    with pytest.raises(Unsupported, match=r"all 8.19 kMACs are in the top-level graph, every operator doing them"):
        _quantize(source, tmp_path / "none.onnx", exclude_op_types=("Conv", "MatMul"))
    assert not (tmp_path / "none.onnx").exists()


def test_int8_of_a_graph_whose_convs_sit_inside_if_bodies_is_refused(tmp_path):
    source = conv_in_if(tmp_path / "fp32.onnx")
    # The If counts its costlier branch (then: 8 channels), as the FLOP count does.
    covered = coverage(source, "fp16", {"x": (2, 3, 4, 4)})
    assert covered.macs == covered.body_macs == 2 * CONV_MACS == count(source, 2).mac_flops / 2
    assert covered.body_macs_by_op == {"If": 2 * CONV_MACS} and covered.share == 0.0
    with pytest.raises(Unsupported) as refused:
        _quantize(source, tmp_path / "int8.onnx")
    assert str(refused.value) == (
        "INT8 quantization leaves every multiply-accumulate in float: all 6.91 kMACs sit inside If bodies, which "
        "ONNX Runtime's QDQ quantizer does not enter"
    )
    assert not (tmp_path / "int8.onnx").exists()


def test_the_refusal_reaches_the_run_pipeline_as_unsupported():
    """The child process reports the exception by its name; the executor takes that name as unsupported."""
    from bench.executor import UNSUPPORTED_ERRORS
    from bench.isolation import run_isolated
    from tests.child_targets import refuse

    result = run_isolated(refuse, {"reason": "nothing runs in int8"}, 60)
    assert not result.ok and result.message == "nothing runs in int8"
    assert result.error_type in UNSUPPORTED_ERRORS


def test_loop_matmuls_given_int8_weights_count_as_int8(tmp_path):
    from calibration.loop_int8 import quantize_loop_matmuls

    model = loop_matmul(steps=3)
    shapes = {"x": (2, 8)}
    before = coverage(model, "int8", shapes)
    assert before.macs == before.body_macs == 3 * 2 * 8 * 8 and before.reduced_macs == 0
    assert int8.unquantized_reason(before, "tensorrt") == (
        "INT8 quantization leaves every multiply-accumulate in float: all 384 MACs sit inside Loop bodies, which "
        "ONNX Runtime's QDQ quantizer does not enter (the tensorrt flavour leaves Loops to TensorRT)"
    )
    assert quantize_loop_matmuls(model, min_weight_elements=0) == 1
    after = coverage(model, "int8", shapes)
    assert (after.macs, after.share, after.body_reduced_macs) == (before.macs, 1.0, before.macs)
    assert int8.unquantized_reason(after, "cpu") is None


def half_conv_float_matmul(path: Path) -> Path:
    """``conv_matmul`` with the Conv in float16 (its input cast, its weight stored as float16) and the MatMul in
    float32."""
    conv_weight = numpy_helper.from_array(numpy_helper.to_array(_weight("W", (8, 3, 3, 3))).astype(np.float16), "W")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("Conv", ["x16", "W"], ["c16"], pads=[1, 1, 1, 1]),
            helper.make_node("Cast", ["c16"], ["c"], to=F),
            helper.make_node("Reshape", ["c", "shape"], ["f"]),
            helper.make_node("MatMul", ["f", "M"], ["y"]),
        ],
        "half_conv",
        [helper.make_tensor_value_info("x", F, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, ["N", 5])],
        [conv_weight, _weight("M", (128, 5), 2), numpy_helper.from_array(np.array([-1, 128]), "shape")],
    )
    return _save(graph, path)


def test_fp16_share_counts_the_macs_whose_operands_are_float16(tmp_path):
    from calibration.fp16 import convert

    source = conv_matmul(tmp_path / "fp32.onnx")
    shapes = {"x": (2, 3, 4, 4)}
    assert coverage(source, "fp16", shapes).share == 0.0  # the FP32 graph: nothing in float16
    _, check = _feeds()
    convert(source, tmp_path / "fp16.onnx", check)
    assert coverage(tmp_path / "fp16.onnx", "fp16", shapes).share == 1.0
    mixed = coverage(half_conv_float_matmul(tmp_path / "mixed.onnx"), "fp16", shapes)
    assert mixed.share == pytest.approx(CONV_MACS / (CONV_MACS + MATMUL_MACS))
    with pytest.raises(ValueError, match="fp32 is not a reduced precision"):
        coverage(source, "fp32", shapes)


def _row(model: str, precision: str, p50: float, **extra) -> dict:
    """A closed-loop row at batch 8 on ort-cpu, timed in three rounds paired with the model's other precisions
    (exact ratios: the rounds drift alike), its accuracy agreement 1; ``extra`` sets other columns."""
    row = {
        "model": model,
        "size": "full",
        "engine": "ort-cpu",
        "precision": precision,
        "batch_size": 8,
        "scenario": "latency",
        "concurrency": 1,
        "status": "ok",
        "latency_ms_p50": p50,
        "latency_ms_mean": p50,
        "throughput_samples_per_s": 8 / (p50 / 1e3),
        "accuracy_metric": "top1_agreement",
        "accuracy_value": 1.0,
        "rounds": 3,
        "round_p50_ms": json.dumps([p50 * d for d in (0.99, 1.0, 1.01)]),
        "rounds_group": f"{model}-b8",
        "cell_id": f"{model}/full/ort-cpu/{precision}/b8",
    }
    return {**row, **extra}


def _write_run(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True)
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "env.json").write_text(json.dumps({"cpu": {"model": "Test CPU"}, "settings": {}}))
    return directory


def test_share_text_marks_an_artifact_that_runs_nothing_reduced():
    assert share_text("int8", 0.923) == "92% of MACs in int8"
    assert share_text("int8fp16", 1.0) == "100% of MACs in int8"
    assert share_text("fp16", 0.999) == ">99% of MACs in float16"
    assert share_text("int8", 0.0) == "0% of MACs in int8, not an int8 result"
    assert share_text("fp32", None) is None


def test_a_share_of_zero_is_never_deployed_and_is_marked_in_the_report(tmp_path):
    from analysis.verdict import points, verdicts
    from bench.results import summary_markdown
    from report.run_report import write_report

    rows = [
        _row("m", "fp32", 4.0, weights="checkpoint"),
        _row("m", "fp16", 3.0, weights="checkpoint", reduced_mac_share=0.0),
        _row("m", "int8", 1.0, weights="checkpoint", reduced_mac_share=0.5),
    ]
    (verdict,) = verdicts(points(rows, 0.99))
    assert verdict.decision == "deploy" and verdict.best.precision == "int8"
    assert "fp16 has 0% of MACs in float16, not an fp16 result" in verdict.reason
    alone = verdicts(points(rows[:2], 0.99))[0]
    assert alone.decision == "keep fp32"  # faster and passing, but FP32 under the fp16 name
    assert "| 0% of MACs in float16, not an fp16 result |" in summary_markdown(rows)
    run = _write_run(tmp_path / "run", rows)
    text = write_report(run, 0.99)[0].read_text()
    assert "| 1.33x [1.33, 1.33] (0% of MACs in float16, not an fp16 result) |" in text
    assert "| deploy int8 | 4.00x [4.00, 4.00] (50% of MACs in int8) |" in text


def test_every_row_of_a_run_carries_its_share_and_the_report_says_it(tmp_path):
    out = tmp_path / "run"
    model = conv_matmul(tmp_path / "qc_convmm.onnx")
    assert suite.main(["run", "--onnx", str(model), "--batch-sizes", "2", "--out", str(out), *QUICK]) == 0
    rows = {r["precision"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}
    assert {p: r["reduced_mac_share"] for p, r in rows.items()} == {"fp32": None, "fp16": 1.0, "int8": 1.0}
    report = (out / "report.md").read_text()
    assert "(100% of MACs in int8)" in report and "(100% of MACs in float16)" in report
    assert "100% of MACs in int8" in (out / "summary.md").read_text()


def test_a_run_reports_int8_of_an_if_only_model_unsupported_with_where_its_macs_are(tmp_path):
    out = tmp_path / "run"
    model = conv_in_if(tmp_path / "qc_ifconv.onnx")
    args = ["run", "--onnx", str(model), "--precisions", "fp32,int8", "--batch-sizes", "2", "--out", str(out)]
    assert suite.main([*args, *QUICK]) == 0
    rows = {r["precision"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["fp32"]["status"] == "ok" and rows["int8"]["status"] == "unsupported"
    assert rows["int8"]["error"] == (
        "byo/qc_ifconv cannot be converted to int8: INT8 quantization leaves every multiply-accumulate in float: "
        "all 3.46 kMACs sit inside If bodies, which ONNX Runtime's QDQ quantizer does not enter"  # the check batch: 1
    )
