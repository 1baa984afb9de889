"""Unit tests of the pieces that need no model: timer, accuracy metrics, feeds, isolation, results."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from analysis.accuracy import compare, ranking_agreement
from bench.isolation import run_isolated
from bench.results import ResultsFile, summary_markdown, to_frame
from bench.timer import LatencyStats, TimerSettings, measure
from calibration.feeds import FeedError, file_feeds, synthetic_feeds
from models import InputSpec
from tests import child_targets


def test_latency_stats_from_known_values():
    stats = LatencyStats.from_values([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (stats.mean, stats.p50, stats.min, stats.max) == (3.0, 3.0, 1.0, 5.0)
    assert stats.p90 == pytest.approx(4.6)
    assert stats.std == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert stats.iterations == 5
    assert set(stats.to_row()) == {f"latency_ms_{k}" for k in ("mean", "p50", "p90", "p95", "p99", "min", "max", "std")}


def test_timer_meets_duration_and_iterations():
    calls = []
    stats = measure(lambda: calls.append(time.sleep(0.002)), TimerSettings(0.0, 3, 0.05, 5))
    assert stats.iterations >= 5
    assert sum(stats.samples_ms) >= 45  # at least the 0.05 s duration was measured
    assert len(calls) == stats.iterations + 3  # warm-up runs are not measured
    assert min(stats.samples_ms) >= 1.9


def test_timer_min_iters_dominates_short_duration():
    stats = measure(lambda: None, TimerSettings(0.0, 0, 0.0, 17))
    assert stats.iterations == 17


def test_timer_rejects_bad_settings():
    with pytest.raises(ValueError):
        TimerSettings(min_iters=0)
    with pytest.raises(ValueError):
        TimerSettings(duration_s=-1)


def test_classification_agreement_and_cosine():
    ref = {"logits": np.array([[1.0, 2.0], [3.0, 1.0], [0.0, 5.0], [2.0, 1.0]])}
    cand = {"logits": np.array([[1.0, 2.0], [1.0, 3.0], [0.0, 5.0], [2.0, 1.0]])}
    result = compare("classification", ref, cand)
    assert result["accuracy_metric"] == "top1_agreement"
    assert result["accuracy_value"] == 0.75
    assert result["accuracy_max_abs_error"] == 2.0
    assert 0.5 < result["accuracy_cosine"] < 1.0


def test_span_agreement_needs_start_and_end():
    ref = {"start": np.eye(3), "end": np.eye(3)}
    cand = {"start": np.eye(3), "end": np.eye(3)[[0, 2, 1]]}
    result = compare("span_qa", ref, cand)
    assert result["accuracy_start_agreement"] == 1.0
    assert result["accuracy_value"] == pytest.approx(1 / 3)


def test_ctr_error_and_ranking():
    ref = {"p": np.array([[0.1], [0.5], [0.9]])}
    cand = {"p": np.array([[0.1], [0.95], [0.9]])}
    result = compare("ctr", ref, cand)
    assert result["accuracy_value"] == pytest.approx(0.45)
    assert result["accuracy_ranking_agreement"] == pytest.approx(2 / 3)
    assert ranking_agreement(np.array([1.0, 2.0]), np.array([5.0, 6.0])) == 1.0


def test_ranking_agreement_counts_pairs_with_ties():
    # Every pair by hand: (0,1) ref tie, skipped; (0,2) agree; (0,3) candidate tie, disagree; (1,2) agree;
    # (1,3) agree; (2,3) disagree (reference 3 < 4, candidate 9 > 2). 3 of 5 reference-ordered pairs agree.
    ref = np.array([1.0, 1.0, 3.0, 4.0])
    cand = np.array([2.0, 0.0, 9.0, 2.0])
    assert ranking_agreement(ref, cand) == pytest.approx(3 / 5)
    assert ranking_agreement(np.ones(5), np.arange(5.0)) == 1.0


def test_ranking_agreement_of_a_trained_recommenders_split_fits_in_memory():
    # 943 MovieLens users x 100 candidates: the pairwise matrix needed 66 GiB and failed every NCF cell.
    rng = np.random.default_rng(0)
    ref = rng.random(94_300)
    assert ranking_agreement(ref, ref) == 1.0
    assert ranking_agreement(ref, -ref) == 0.0


SPECS = [InputSpec("ids", ("batch", 4), "int64", 0, 10), InputSpec("x", ("batch", 2, 3), "float32", -1, 1)]


def test_input_spec_validates():
    with pytest.raises(ValueError):
        InputSpec("x", ("batch", 3, "batch"), "float32")
    with pytest.raises(ValueError):
        InputSpec("x", ("batch", "n"), "float32")
    with pytest.raises(ValueError):
        InputSpec("x", ("batch",), "float32", 1.0, 1.0)


def test_input_spec_batch_on_any_axis_or_none():
    rng = np.random.default_rng(0)
    state = InputSpec("state", (2, "batch", 128), "float32")
    assert state.batch_axis == 1 and state.sample(rng, 3).shape == (2, 3, 128)
    rate = InputSpec("sr", (), "int64", value=16000)
    assert rate.batch_axis is None and rate.sample(rng, 3).shape == () and rate.sample(rng, 3) == 16000
    assert rate.describe() == "sr:scalar:int64:=16000"
    # A tensor shared by the batch holds the same array at every batch size and whatever was drawn before it,
    # and drawing it leaves the batch's generator where it was.
    table = InputSpec("table", (4, 5), "float32")
    first = table.sample(np.random.default_rng(1), 1)
    rng = np.random.default_rng(2)
    again = table.sample(rng, 8)
    assert np.array_equal(first, again) and rng.random() == np.random.default_rng(2).random()


def test_synthetic_feeds_are_valid_and_seeded():
    feeds = synthetic_feeds(SPECS, 10, 4, seed=3)
    assert [b["ids"].shape[0] for b in feeds] == [4, 4, 2]
    assert feeds.samples == 10
    for batch in feeds:
        assert batch["ids"].min() >= 0 and batch["ids"].max() < 10 and batch["ids"].dtype == np.int64
        assert batch["x"].dtype == np.float32 and np.all(np.abs(batch["x"]) <= 1)
    again = synthetic_feeds(SPECS, 10, 4, seed=3)
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(feeds, again, strict=False))
    assert feeds.digest == again.digest != synthetic_feeds(SPECS, 10, 4, seed=4).digest


def test_feeds_reader_protocol_and_strides():
    feeds = synthetic_feeds(SPECS, 6, 2, seed=0)
    assert sum(1 for _ in iter(feeds.get_next, None)) == 3
    feeds.set_range(1, 2)
    assert feeds.get_next() is feeds.batches[1] and feeds.get_next() is None


def test_file_feeds_accepts_matching_data(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, ids=np.zeros((5, 4), np.int32), x=np.zeros((5, 2, 3), np.float64))
    feeds = file_feeds(path, SPECS, batch=2)
    assert feeds.samples == 5 and feeds.batches[0]["ids"].dtype == np.int64


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"ids": np.zeros((5, 4), np.int64)}, "lacks inputs ['x']"),
        ({"ids": np.zeros((5, 3), np.int64), "x": np.zeros((5, 2, 3), np.float32)}, "has shape (5, 3)"),
        ({"ids": np.zeros((5, 4), np.float32), "x": np.zeros((5, 2, 3), np.float32)}, "has dtype float32"),
        ({"ids": np.zeros((5, 4), np.int64), "x": np.zeros((4, 2, 3), np.float32)}, "different sample counts"),
    ],
)
def test_file_feeds_rejects_mismatches(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(FeedError) as info:
        file_feeds(path, SPECS, batch=2)
    assert message in str(info.value)


def test_file_feeds_rejects_unreadable(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(FeedError, match="cannot read"):
        file_feeds(path, SPECS, batch=2)
    with pytest.raises(FeedError, match="does not exist"):
        file_feeds(tmp_path / "absent.npz", SPECS, batch=2)


def test_isolation_returns_value_and_errors():
    assert run_isolated(child_targets.add, {"a": 2, "b": 3}, 60).value == 5
    failed = run_isolated(child_targets.fail, {}, 60)
    assert not failed.ok and failed.error == "ValueError: bad thing" and "Traceback" in failed.detail
    # The exception's type crosses the pipe as a field, not as text to match.
    assert (failed.error_type, failed.message) == ("ValueError", "bad thing")


def test_isolation_survives_crash_and_hang():
    crashed = run_isolated(child_targets.crash, {}, 60)
    assert not crashed.ok and "SIGABRT" in crashed.error
    hung = run_isolated(child_targets.hang, {}, 1.0)
    assert not hung.ok and hung.error == "timed out after 1 s"


def test_results_file_appends_and_resumes(tmp_path):
    results = ResultsFile(tmp_path)
    results.append({"cell_id": "a", "model": "m", "status": "ok", "latency_ms_p50": 2.0}, [1.0, 2.0])
    with open(results.path, "a") as handle:
        handle.write('{"cell_id": "trunc')  # a crash mid-line must not hide the rows before it
    assert results.finished_ids() == {"a"}
    assert json.loads(results.samples_path.read_text())["samples_ms"] == [1.0, 2.0]
    frame = to_frame(results.rows())
    assert frame.columns[:3] == ["model", "category", "framework"] and frame.height == 1


def test_summary_has_speedup_over_fp32():
    rows = [
        {
            "model": "m",
            "size": "tiny",
            "engine": "e",
            "precision": p,
            "batch_size": 1,
            "scenario": "latency",
            "concurrency": 1,
            "status": "ok",
            "latency_ms_p50": t,
        }
        for p, t in (("fp32", 4.0), ("int8", 1.0))
    ]
    lines = summary_markdown(rows).splitlines()
    assert len(lines) == 4 and "| 4 |" in lines[3]


def test_detection_f1_matches_same_class_boxes_only():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]]], float)
    scores = np.array([[0.9, 0.8, 0.0]])  # the third box is padding
    ref = {"boxes": boxes, "scores": scores, "labels": np.array([[1, 2, 0]])}
    cand = {"boxes": boxes + 1, "scores": scores, "labels": np.array([[1, 3, 0]])}
    result = compare("detection", ref, cand)
    assert result["accuracy_metric"] == "box_f1"
    assert (result["accuracy_box_recall"], result["accuracy_box_precision"], result["accuracy_value"]) == (
        0.5,
        0.5,
        0.5,
    )
    assert compare("detection", ref, ref)["accuracy_value"] == 1.0


def test_pose_keypoint_argmax_agreement():
    ref = np.zeros((1, 2, 3, 3))
    ref[0, 0, 1, 1] = ref[0, 1, 2, 2] = 1
    cand = ref.copy()
    cand[0, 1, 0, 0] = 2
    assert compare("pose", {"heatmaps": ref}, {"heatmaps": cand})["accuracy_value"] == 0.5


def test_ctc_decoding_and_string_agreement():
    from analysis.accuracy import ctc_greedy_decode

    frames = np.eye(4)[[[0, 0, 3, 1, 1, 3, 1], [2, 3, 3, 3, 3, 3, 3]]]
    assert ctc_greedy_decode(frames, blank=3) == [(0, 1, 1), (2,)]
    other = frames.copy()
    other[1, 0] = np.eye(4)[1]
    result = compare("ctc_text", {"logits": frames}, {"logits": other}, {"blank": 3})
    assert result["accuracy_metric"] == "string_agreement" and result["accuracy_value"] == 0.5


def test_translation_token_agreement_stops_at_eos():
    ref = {"tokens": np.array([[5, 6, 2, 0, 0]])}
    cand = {"tokens": np.array([[5, 7, 2, 9, 9]])}
    result = compare("translation", ref, cand, {"eos": 2})
    assert result["accuracy_value"] == pytest.approx(2 / 3) and result["accuracy_sentence_agreement"] == 0.0


def test_first_line_survives_empty_and_multiline_messages():
    from common.errors import first_line

    assert first_line(AssertionError()) == "AssertionError"
    assert first_line(ValueError("\n  cause here  \nmore")) == "cause here"
    assert first_line(ValueError("x" * 500), 10) == "x" * 10


def _loop_model(weight: np.ndarray, steps: int, changes_weight: bool = False):
    """x (B, K) -> a Loop of ``steps`` iterations, each h = tanh(h @ W) with W carried through the Loop (as
    tf2onnx passes a while loop's captured weights); with ``changes_weight`` the body also rescales W."""
    from onnx import TensorProto, helper, numpy_helper

    k = weight.shape[0]
    body_nodes = [
        helper.make_node("MatMul", ["h_in", "w_in"], ["hw"], name="step_matmul"),
        helper.make_node("Tanh", ["hw"], ["h_out"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    if changes_weight:
        body_nodes.append(helper.make_node("Add", ["w_in", "w_in"], ["w_out"]))
    else:
        body_nodes.append(helper.make_node("Identity", ["w_in"], ["w_out"]))
    body = helper.make_graph(
        body_nodes,
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["B", k]),
            helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [k, k]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["B", k]),
            helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [k, k]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "", "x", "W"], ["h", "w_final"], body=body, name="loop")],
        "loop_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", k])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.array(steps, dtype=np.int64), "steps")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_quantized_summary_counts_loop_matmuls(tmp_path):
    import onnx

    from calibration.int8 import quantized_summary
    from calibration.loop_int8 import quantize_loop_matmuls

    model = _loop_model(np.eye(8, dtype=np.float32), steps=2)
    path = tmp_path / "plain.onnx"
    onnx.save(model, str(path))
    assert quantized_summary(path) == {"quantized_ops": {}, "float_compute_ops": {"MatMul": 1}}
    quantize_loop_matmuls(model, min_weight_elements=0)
    onnx.save(model, str(path))
    assert quantized_summary(path) == {"quantized_ops": {"DynamicQuantizeMatMul": 1}, "float_compute_ops": {}}


def test_a_float_weight_conv_between_quantized_ones_counts_as_float(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from calibration.int8 import quantized_summary

    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z")
    weight = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x"]),
            helper.make_node("Conv", ["x", "w"], ["y"]),  # float weights: not an integer kernel
            helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
        ],
        "g",
        [helper.make_tensor_value_info("xq", TensorProto.UINT8, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("yq", TensorProto.UINT8, [1, 2, 4, 4])],
        [scale, zero, weight],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    assert quantized_summary(path) == {"quantized_ops": {}, "float_compute_ops": {"Conv": 1}}


def test_children_hash_strings_with_a_fixed_seed(monkeypatch):
    import os

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    assert run_isolated(child_targets.hash_seed, {}, 60).value == "0"
    # The seed is the child's: this process's environment (and so any other program it starts) is left alone.
    assert "PYTHONHASHSEED" not in os.environ
    monkeypatch.setenv("PYTHONHASHSEED", "7")  # a seed the user chose is kept
    assert run_isolated(child_targets.hash_seed, {}, 60).value == "7"


def test_fp16_conversion_leaves_no_repeated_cast():
    """A float16 tensor read by two nodes kept in float32: onnxruntime-gpu 1.31's converter adds the same Cast
    twice (same name, same output) and ONNX Runtime refuses the graph; the repeat is dropped."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from calibration.fp16 import drop_duplicate_nodes

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Sqrt", ["r"], ["a"], name="sqrt_a"),
            helper.make_node("Sqrt", ["r"], ["b"], name="sqrt_b"),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=["Sqrt"])
    # What 1.31's converter writes (1.32 shares one Cast): the Cast into the float32 Sqrts, once per reader.
    casts = [n for n in converted.graph.node if n.op_type == "Cast" and n.input[0] == "r"]
    assert len(casts) in (1, 2), casts
    if len(casts) == 1:
        converted.graph.node.append(casts[0])
    with pytest.raises(Exception, match="two nodes with same node name"):
        ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    assert drop_duplicate_nodes(converted.graph) == 1
    names = [n.name for n in converted.graph.node if n.name]
    assert len(names) == len(set(names))
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], 2 * np.sqrt(x), rtol=1e-3)
    # An exact repeat is dropped wherever it is, a Loop body included; a same-named node that differs is kept.
    cast = helper.make_node("Cast", ["r"], ["r32"], to=1, name="cast")
    body = helper.make_graph([cast, cast], "body", [], [])
    loop = helper.make_node("Loop", ["n", "c"], [], body=body)
    other = helper.make_node("Cast", ["r"], ["r64"], to=11, name="cast")
    outer = helper.make_graph([cast, loop, cast, other], "outer", [], [])
    assert drop_duplicate_nodes(outer) == 2
    assert [n.output[0] if n.output else "loop" for n in outer.node] == ["r32", "loop", "r64"]


def test_row_fields_are_the_columns_and_extras_follow():
    from dataclasses import fields

    from bench.results import COLUMNS
    from bench.row import Row

    assert COLUMNS == tuple(f.name for f in fields(Row))[:-1] and COLUMNS[:3] == ("model", "category", "framework")
    row = Row("resnet50", "image classification", "pytorch", "tiny", "tensorrt", "int8", 2, cell_id="c")
    row.update({"latency_ms_p50": 1.5, "h2d_ms": 0.1}, status="ok", compute_ms=0.9)
    assert (row.status, row.latency_ms_p50, row.extra) == ("ok", 1.5, {"h2d_ms": 0.1, "compute_ms": 0.9})
    record = row.as_dict()
    assert list(record) == [*COLUMNS, "h2d_ms", "compute_ms"] and record["error"] is None
