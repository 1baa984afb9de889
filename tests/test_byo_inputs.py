"""Brought-in models whose inputs are not a batch of noise: a 0-d value steering an If, recurrent state with
the batch on axis 1, fully fixed shapes that need ``--input-batch-axes``, integer inputs drawn in a stated
range, a feeds file for timing and accuracy, and a stateful model run as a stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import suite
from models import byo

QUICK = ["--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3", "--accuracy-samples", "4"]
F, I64 = TensorProto.FLOAT, TensorProto.INT64
HIDDEN = 4


# Roofs cached in a private cache, so that the reports at the end of runs measure nothing.
pytestmark = pytest.mark.usefixtures("cached_peaks")


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def stream_model(path: Path, state_shape=(1, "batch", HIDDEN), x_shape=("batch", HIDDEN)) -> Path:
    """A recurrent step in the shape of a streaming audio model: ``y = relu((x + state) @ W)``, where W is the
    16 kHz weight when the 0-d ``sr`` input equals 16000 and the 8 kHz one otherwise (an If whose branches hold
    the MatMul), and ``stateN = y`` on the state's layout ``[1, batch, hidden]``."""
    rng = np.random.default_rng(0)
    w16 = numpy_helper.from_array(rng.uniform(-1, 1, (HIDDEN, HIDDEN)).astype(np.float32), "w16")
    w8 = numpy_helper.from_array(rng.uniform(-1, 1, (HIDDEN, HIDDEN)).astype(np.float32), "w8")
    rate = numpy_helper.from_array(np.array(16000, np.int64), "rate")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")

    def branch(name: str, weight: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["h", weight], [f"t_{name}"])],
            name,
            [],
            [helper.make_tensor_value_info(f"t_{name}", F, None)],
        )

    nodes = [
        helper.make_node("Squeeze", ["state", "axes"], ["s0"]),
        helper.make_node("Add", ["x", "s0"], ["h"]),
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node(
            "If", ["is16k"], ["t"], then_branch=branch("then", "w16"), else_branch=branch("else", "w8"), name="pick"
        ),
        helper.make_node("Relu", ["t"], ["y"]),
        helper.make_node("Unsqueeze", ["y", "axes"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stream",
        [
            helper.make_tensor_value_info("x", F, list(x_shape)),
            helper.make_tensor_value_info("state", F, list(state_shape)),
            helper.make_tensor_value_info("sr", I64, []),
        ],
        [helper.make_tensor_value_info("y", F, None), helper.make_tensor_value_info("stateN", F, None)],
        [w16, w8, rate, axes],
    )
    return _save(graph, path)


def test_a_0d_input_steering_an_if_asks_for_its_value(tmp_path):
    path = stream_model(tmp_path / "stream.onnx")
    with pytest.raises(byo.ByoError) as info:
        byo.describe_onnx(path)
    assert "input sr (0-d int64) decides which branch of pick runs" in str(info.value)
    assert "--input-values sr:VALUE" in str(info.value)
    described = byo.describe_onnx(path, input_values={"sr": 16000})
    inputs = {i["name"]: i for i in described["inputs"]}
    # The state's batch is on axis 1 (its first dimension is fixed, the batch dynamic elsewhere); sr has none.
    assert inputs["state"]["shape"] == [1, "batch", HIDDEN] and inputs["x"]["shape"] == ["batch", HIDDEN]
    assert inputs["sr"]["shape"] == [] and inputs["sr"]["value"] == 16000
    spec = byo.build_spec(described)
    feeds = spec.make_feeds("full", 3, 0)
    assert feeds["state"].shape == (1, 3, HIDDEN) and feeds["sr"].shape == () and int(feeds["sr"]) == 16000


def test_fixed_shapes_that_disagree_name_input_batch_axes(tmp_path):
    path = stream_model(tmp_path / "fixed.onnx", state_shape=(1, 2, HIDDEN), x_shape=(2, HIDDEN))
    with pytest.raises(byo.ByoError) as info:
        byo.describe_onnx(path, input_values={"sr": 16000})
    message = str(info.value)
    assert "the inputs' batch dimensions disagree (x 2, state 1)" in message and "--input-batch-axes" in message
    described = byo.describe_onnx(path, input_values={"sr": 16000}, input_batch_axes={"state": 1})
    assert described["fixed_batch"] == 2
    assert {i["name"]: i["shape"] for i in described["inputs"]}["state"] == [1, "batch", HIDDEN]
    with pytest.raises(byo.ByoError, match="--input-batch-axes gives state axis 3, but it has 3 dimensions"):
        byo.describe_onnx(path, input_values={"sr": 16000}, input_batch_axes={"state": 3})
    with pytest.raises(byo.ByoError, match="names inputs the model does not have: nope"):
        byo.describe_onnx(path, input_values={"sr": 16000, "nope": 1})


def test_option_texts_are_read_or_refused_with_the_way_to_write_them():
    assert byo.parse_input_batch_axes("state:1,sr:none") == {"state": 1, "sr": None}
    assert byo.parse_input_values("sr:16000,t:0.5") == {"sr": 16000.0, "t": 0.5}
    assert byo.parse_input_ranges("bytes:0..256,x:-1..1") == {"bytes": (0.0, 256.0), "x": (-1.0, 1.0)}
    assert byo.parse_state("stateN:state") == {"stateN": "state"}
    for parse, text, option in (
        (byo.parse_input_batch_axes, "state:x", "--input-batch-axes"),
        (byo.parse_input_values, "sr:fast", "--input-values"),
        (byo.parse_input_values, "sr:nan", "--input-values"),
        (byo.parse_input_ranges, "bytes:0-256", "--input-range"),
        (byo.parse_input_ranges, "bytes:9..1", "--input-range"),
        (byo.parse_state, "stateN", "--state"),
    ):
        with pytest.raises(byo.ByoError, match=option):
            parse(text)


def byte_model(path: Path) -> Path:
    """A classifier over byte values in the manner of Magika: an int32 ``bytes`` input gathered from a table of
    257 rows (256 pads), averaged, then a MatMul."""
    rng = np.random.default_rng(1)
    table = numpy_helper.from_array(rng.uniform(-1, 1, (257, 8)).astype(np.float32), "table")
    weight = numpy_helper.from_array(rng.uniform(-1, 1, (8, 3)).astype(np.float32), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "bytes"], ["embedded"]),
            helper.make_node("ReduceMean", ["embedded"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["pooled", "weight"], ["logits"]),
        ],
        "bytes",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["batch", 64])],
        [helper.make_tensor_value_info("logits", F, ["batch", 3])],
        [table, weight],
    )
    return _save(graph, path)


def test_integer_inputs_are_drawn_in_the_given_range_and_recorded(tmp_path, capsys):
    path = byte_model(tmp_path / "bytes.onnx")
    assert "drawn from {0, 1}" in byo.describe_onnx(path)["notices"][0]
    described = byo.describe_onnx(path, input_ranges={"bytes": (0, 256)})
    assert "notices" not in described
    drawn = byo.build_spec(described).make_feeds("full", 64, 0)["bytes"]
    # Both ends included: the padding value 256 is drawn, and nothing above it.
    assert drawn.dtype == np.int32 and drawn.min() == 0 and drawn.max() == 256
    out = tmp_path / "run"
    args = ["run", "--onnx", str(path), "--input-range", "bytes:0..256", "--precisions", "fp32", "--out", str(out)]
    assert suite.main([*args, *QUICK]) == 0
    env = json.loads((out / "env.json").read_text())
    assert env["settings"]["inputs_fed"] == {"input_range": "bytes:0..256"}
    from onnx_models.store import ModelStore

    assert ModelStore("byo/bytes", "full").entry("fp32")["inputs"] == ["bytes:batchx64:int32:ids<257"]
    assert suite.main(["run", "--onnx", str(path), "--input-range", "bytes:0..1.5", "--out", str(tmp_path / "x")]) == 2
    assert "--input-range gives bytes 0..1.5, but it is int32: give integers" in capsys.readouterr().err


def test_a_stateful_model_runs_every_precision_as_a_stream(tmp_path):
    path = stream_model(tmp_path / "stream.onnx")
    out = tmp_path / "run"
    base = ["run", "--onnx", str(path), "--input-values", "sr:16000", "--state", "stateN:state"]
    assert suite.main([*base, "--batch-sizes", "1,2", "--out", str(out), *QUICK]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    cells = {(p, b) for p in ("fp32", "fp16", "int8") for b in (1, 2)}
    assert {(r["precision"], r["batch_size"]) for r in rows} == cells
    for row in rows:
        # INT8 quantizes nothing here (the MatMul sits in an If body): unsupported, with where the MACs are.
        assert row["status"] == "ok" or (row["status"] == "unsupported" and "If bodies" in row["error"]), row
        if row["status"] == "ok":
            assert row["stream"] == "stateN->state" and row["accuracy_samples"] == 4
            # FLOPs count the branch sr=16000 takes: the MatMul's 2 x 4 x 4 per sample, not zero.
            assert row["flops_per_batch"] >= 2 * HIDDEN * HIDDEN * row["batch_size"]
    env = json.loads((out / "env.json").read_text())
    assert env["settings"]["inputs_fed"] == {"input_values": "sr:16000", "state": "stateN:state"}
    # LoadGen issues queries in any order: a stream's cells there are unsupported, with the way to measure it.
    again = tmp_path / "loadgen"
    assert suite.main([*base, "--scenario", "offline", "--precisions", "fp32", "--out", str(again), *QUICK]) == 0
    (row,) = [json.loads(line) for line in (again / "results.jsonl").read_text().splitlines()]
    assert row["status"] == "unsupported" and "measure it in the latency scenario" in row["error"]


def test_a_stream_carries_its_state_from_one_inference_to_the_next(tmp_path):
    """The accuracy batches of a stream are one sequence: each step's input state is the last step's output,
    so the outputs differ from independent inferences of the same batches."""
    from bench.inputs import accuracy_feeds, run_batches
    from engines.ort_cpu import OrtCpuEngine
    from onnx_models.byo import register

    path = stream_model(tmp_path / "stream.onnx")
    spec = register(path, input_values={"sr": 16000}, state={"stateN": "state"})
    batches = accuracy_feeds(spec, "full", 1, 3)
    # A stream starts from a zero state.
    assert all(not b["state"].any() for b in batches)
    with OrtCpuEngine() as engine:
        engine.activate(path)
        streamed = run_batches(engine, spec, "full", batches)
        alone = [engine.infer(b) for b in batches]
        state = np.zeros((1, 1, HIDDEN), np.float32)
        for feeds, got in zip(batches, streamed, strict=True):
            want = engine.infer({**feeds, "state": state})
            np.testing.assert_array_equal(got["y"], want["y"])
            state = want["stateN"]
    assert np.array_equal(streamed[0]["y"], alone[0]["y"]) and not np.array_equal(streamed[2]["y"], alone[2]["y"])


def test_a_feeds_file_is_what_timing_and_accuracy_run_on(tmp_path, capsys):
    from bench.inputs import accuracy_feeds, timing_feeds
    from calibration.feeds import FeedError
    from onnx_models.byo import register

    path = stream_model(tmp_path / "stream.onnx")
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (5, HIDDEN)).astype(np.float32)
    state = rng.uniform(-1, 1, (1, 5, HIDDEN)).astype(np.float32)
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=x, state=state, sr=np.array(16000, np.int64))
    spec = register(path, feeds=feeds, input_values={"sr": 16000})
    np.testing.assert_array_equal(timing_feeds(spec, "full", 2)["state"], state[:, :2])
    batches = accuracy_feeds(spec, "full", 2, 8)
    # Five samples hold two whole batches of two, in the file's order.
    assert len(batches) == 2 and np.array_equal(np.concatenate([b["x"] for b in batches]), x[:4])
    # A file smaller than one batch is repeated to fill it.
    assert np.array_equal(timing_feeds(spec, "full", 8)["x"][5:], x[:3])
    feeds.write_bytes(b"changed")
    with pytest.raises(FeedError, match="run again with --feeds"):
        timing_feeds(spec, "full", 1)
    np.savez(feeds, x=x, state=state[:, :, :2], sr=np.array(16000, np.int64))
    args = ["run", "--onnx", str(path), "--input-values", "sr:16000", "--feeds", str(feeds), "--out", str(tmp_path)]
    assert suite.main(args) == 2
    assert "--feeds does not fit stream.onnx" in capsys.readouterr().err


def test_flops_count_the_branch_a_fixed_value_takes(tmp_path):
    from analysis.flops import count
    from common.graphs import fold_fixed_ifs

    path = stream_model(tmp_path / "stream.onnx")
    model = onnx.load(str(path))
    feeds = {"x": np.ones((2, HIDDEN), np.float32), "state": np.zeros((1, 2, HIDDEN), np.float32)}
    feeds["sr"] = np.array(16000, np.int64)
    folded, notes = fold_fixed_ifs(model, feeds, ["sr"])
    assert notes == ["If pick resolved to its then_branch by the fixed value of sr"]
    read = {name for node in folded.graph.node for name in node.input}
    assert [n.op_type for n in folded.graph.node].count("If") == 0 and "w16" in read and "w8" not in read
    assert count(folded, 2, {k: v.shape for k, v in feeds.items()}, feeds).mac_flops == 2 * 2 * HIDDEN * HIDDEN
    # Not fixed, the If stays: it depends on an input that changes from batch to batch.
    assert fold_fixed_ifs(model, feeds, [])[0] == model
    assert len(fold_fixed_ifs(model, feeds, ["x"])[1]) == 0


def test_a_streams_calibration_sees_the_states_it_carries(tmp_path):
    """Calibrated on its zero start state alone, a stream's INT8 ranges would clip every later state: each
    calibration batch gets the state the FP32 file returned on the batch before."""
    from calibration.feeds import carry_state, synthetic_feeds
    from common.ort_session import cpu_session
    from onnx_models.byo import register

    path = stream_model(tmp_path / "stream.onnx")
    spec = register(path, input_values={"sr": 16000}, state={"stateN": "state"})
    specs = spec.input_specs("full")
    drawn = synthetic_feeds(specs, 3, 1, seed=0)
    carried = carry_state(drawn, path, {"stateN": "state"})
    assert not carried.batches[0]["state"].any() and carried.digest == drawn.digest
    session = cpu_session(path)
    state = session.run(["stateN"], carried.batches[0])[0]
    np.testing.assert_array_equal(carried.batches[1]["state"], state)
    assert carried.batches[1]["state"].any()


def test_a_resume_refuses_a_brought_in_file_or_feeds_changed_in_place(tmp_path, capsys):
    """The FP32 row of the old file and the INT8 row of the new one must never share a results directory."""
    path = byte_model(tmp_path / "bytes.onnx")
    out = tmp_path / "run"
    base = ["run", "--onnx", str(path), "--input-range", "bytes:0..256", "--out", str(out), *QUICK]
    assert suite.main([*base, "--precisions", "fp32"]) == 0
    assert set(json.loads((out / "env.json").read_text())["settings"]["files_sha256"]) == {"onnx"}
    changed = onnx.load(str(path))
    changed.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones((8, 3), np.float32), "weight"))
    onnx.save(changed, path)
    capsys.readouterr()
    assert suite.main([*base, "--precisions", "fp32,int8", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "--resume with different settings" in error and "files_sha256.onnx" in error
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
