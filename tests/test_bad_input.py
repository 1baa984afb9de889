"""Bad input and an unwritable store (issue 10, item 8): each is one clear line, or a row that says what it lacks,
never a traceback or a silent oddity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import suite
from bench.runner import missing_analysis
from calibration.feeds import FeedError, file_feeds
from models import get_model
from models.byo import build_spec
from onnx_models.artifacts import CalibrationSettings, calibration_feeds

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--size", "tiny", "--warmup-s", "0", "--duration-s", "0.1", "--min-iters", "3", "--accuracy-samples", "4"]


def one_error_line(capsys) -> str:
    """The single line a usage error printed on stderr (asserting there is exactly one, and no traceback)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.strip()


def small_onnx(path: Path) -> Path:
    """A valid one-node model (y = x @ w, x of shape N x 4), saved with onnx.save."""
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


# ------------------------------------------------------------------------------------------------ --out


@pytest.mark.parametrize("below", ["", "sub"])
def test_run_out_naming_a_file_is_a_usage_error(tmp_path, capsys, below):
    """``--out`` that is a file (or lies under one) is refused before anything is built or measured."""
    existing = tmp_path / "results.txt"
    existing.write_text("notes\n")
    out = existing / below if below else existing
    assert suite.main(["run", "--models", "ncf", "--out", str(out), *QUICK]) == 2
    assert one_error_line(capsys) == (
        f"error: --out {out} cannot be a results directory: {existing} is a file; name a directory"
    )
    assert existing.read_text() == "notes\n"


# ---------------------------------------------------------------------------------------------- --onnx


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "is empty (0 bytes)"),
        # Bytes that protobuf happily parses (field 1 = 7: an ir_version) but hold no graph.
        (b"\x08\x07", "is not an ONNX model: it has no graph"),
        (b"not an onnx model at all\n", "is not an ONNX model: "),
    ],
)
def test_onnx_that_is_empty_or_not_onnx_is_refused(tmp_path, store_root, capsys, content, problem):
    """An empty file, or one that is not ONNX, is one line naming the fix, and nothing is registered."""
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    assert suite.main(["run", "--onnx", str(path), "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: --onnx {path} {problem}") and line.endswith("bring a model saved with onnx.save")
    assert not (store_root / "byo" / "broken").exists()
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- calibration id ranges


def test_calibration_ids_out_of_range_are_refused_when_read(tmp_path, monkeypatch, capsys):
    """An id an embedding cannot hold is a usage error naming the input, its values and the valid range, before
    any export (an empty store of its own tells)."""
    store = tmp_path / "store"
    monkeypatch.setenv("AIMATRIX_STORE", str(store))
    spec = get_model("ncf")
    users = int(next(s.high for s in spec.input_specs("tiny") if s.name == "user"))
    feeds = spec.make_feeds("tiny", 8, 0)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**feeds, "user": np.where(np.arange(8) == 3, users, feeds["user"])})
    assert suite.main(["calibrate", "--models", "ncf", "--size", "tiny", "--data", str(bad)]) == 2
    assert one_error_line(capsys) == (
        f"error: --data does not fit ncf: {bad}: array 'user' holds values from {feeds['user'].min()} to {users}, "
        f"outside the valid range 0 to {users - 1} (it indexes a table of {users})"
    )
    assert not (store / "ncf" / "tiny" / "fp32.onnx").exists()


def test_id_range_rule(tmp_path):
    """Ids index [0, high); inputs sampled from [1, high) (masks, lengths) are valid from 0; negative ids are not;
    floats are not range-checked."""
    bert = get_model("bert").input_specs("tiny")
    vocab = int(bert[0].high)
    ok = tmp_path / "ok.npz"
    arrays = {s.name: np.zeros((2, *s.shape[1:]), np.int64) for s in bert}
    arrays["input_ids"][:, 0] = vocab - 1
    np.savez(ok, **arrays)  # attention_mask all 0: valid data, though its sampler only draws 1
    assert file_feeds(ok, bert, batch=2).samples == 2
    negative = tmp_path / "negative.npz"
    np.savez(negative, **{**arrays, "token_type_ids": np.full_like(arrays["token_type_ids"], -1)})
    with pytest.raises(FeedError, match="array 'token_type_ids' holds values from -1 to -1, outside the valid range"):
        file_feeds(negative, bert, batch=2)
    wide = get_model("wide_deep").input_specs("tiny")
    far = tmp_path / "far.npz"
    np.savez(
        far, **{s.name: np.full((2, *s.shape[1:]), 1e6, np.float32 if s.dtype == "float32" else np.int64) for s in wide}
    )
    with pytest.raises(FeedError, match="array 'categorical' holds values from 1000000 to 1000000"):
        file_feeds(far, wide, batch=2)


def test_brought_in_models_ids_are_not_range_checked(tmp_path):
    """A brought-in model's integer ranges are guesses ({0, 1} drawn for synthetic data): its data is not checked."""
    description = {
        "name": "byo/ids",
        "source": str(tmp_path / "ids.onnx"),
        "sha256": "0" * 64,
        "inputs": [{"name": "tokens", "shape": ["batch", 3], "dtype": "int64", "low": 0, "high": 2}],
        "outputs": ["y"],
        "fixed_batch": None,
    }
    data = tmp_path / "tokens.npz"
    np.savez(data, tokens=np.array([[5, 900, 3]] * 4, np.int64))
    calib = CalibrationSettings(data=data, samples=4)
    assert calibration_feeds(build_spec(description), "full", calib).samples == 4


# ------------------------------------------------------------------------------------------- read-only store


def read_only_prefix(store: Path) -> list[str] | None:
    """A command prefix that runs what follows with ``store`` unwritable, even for root; None where this machine
    cannot make one.

    Root ignores file permissions, so as root the store is bound read-only over itself in a private mount
    namespace (``unshare -m``; it vanishes with the command). Other users get ``chmod -R a-w`` (the caller undoes
    it)."""
    if os.geteuid() != 0:
        for path in [store, *store.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return []
    if shutil.which("unshare") is None:
        return None
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
    prefix = ["unshare", "-m", "sh", "-c", script, str(store)]
    probe = subprocess.run([*prefix, "sh", "-c", f'! touch "{store}/.probe"'], capture_output=True, timeout=60)
    return prefix if probe.returncode == 0 else None


@pytest.fixture
def read_only_store(tmp_path, monkeypatch):
    """An empty store and a way to run the suite with it read-only: ``(store, run)``, ``run(argv) ->
    CompletedProcess``. The suite in this process (and its children) writes to the same store, so a test can fill
    it first. Roofs are cached, so reports measure nothing."""
    from analysis.roofs import Roofs
    from bench.roofs_cache import local_machine_key, save_roofs

    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("AIMATRIX_STORE", str(store))
    monkeypatch.setenv("AIMATRIX_CACHE", str(tmp_path / "cache"))
    save_roofs(
        Roofs({"fp32": 1e11, "fp16": 1e11, "int8": 4e11}, 2e10, "test", {"machine": local_machine_key("ort-cpu")})
    )
    made_read_only = []

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        prefix = read_only_prefix(store)
        if prefix is None:
            pytest.skip("cannot make a read-only directory here: running as root without a usable `unshare -m`")
        made_read_only.append(True)
        command = [*prefix, sys.executable, str(REPO / "suite.py"), *argv]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=600)

    yield store, run
    if made_read_only:
        for path in [store, *store.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_onnx_into_read_only_store_is_one_line(read_only_store, tmp_path):
    """Registering ``--onnx`` into an unwritable store is one line naming the store and AIMATRIX_STORE."""
    store, run = read_only_store
    brought = run(["run", "--onnx", str(small_onnx(tmp_path / "small.onnx")), "--out", str(tmp_path / "byo")])
    assert brought.returncode == 2, brought.stderr
    assert brought.stderr.count("\n") == 1 and "Traceback" not in brought.stderr, brought.stderr
    line = brought.stderr.strip()
    assert line.startswith(f"error: cannot register small.onnx in the store {store}: ") and line.endswith(
        "make it writable, or point AIMATRIX_STORE at a writable directory"
    ), line


def test_new_batch_in_read_only_store_says_what_it_lacks(read_only_store, tmp_path):
    """A cell at a batch size whose FLOPs and FP32 reference cannot be cached in the (read-only) store is measured,
    and its row says what is missing and why, instead of an ok row silently without accuracy or FLOPs."""
    store, run = read_only_store
    argv = ["run", "--models", "ncf", "--precisions", "fp32", "--engines", "ort-cpu"]
    assert suite.main([*argv, "--batch-sizes", "2", "--out", str(tmp_path / "writable"), *QUICK]) == 0
    out = tmp_path / "new-batch"
    measured = run([*argv, "--batch-sizes", "3", "--out", str(out), *QUICK])
    assert measured.returncode == 0, measured.stderr
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["status"] == "ok" and row["latency_ms_p50"] > 0
    assert row["flops_per_batch"] is None and row.get("accuracy_value") is None
    # Both failed for one reason (the store cannot be written), said once after what is missing.
    assert row["error"] and row["error"].startswith("FLOPs not counted and accuracy not measured: "), row
    assert "Read-only file system" in row["error"] or "Permission denied" in row["error"], row


def test_missing_analysis_says_each_reason():
    """Different causes are each named after what they cost; none is no note."""
    assert missing_analysis({"flops_per_batch": 1.0, "reference": "r.npz"}) is None
    assert missing_analysis({"flops_error": "KeyError: 'x'"}) == "FLOPs not counted: KeyError: 'x'"
    assert (
        missing_analysis({"flops_error": "A", "reference_error": "B"})
        == "FLOPs not counted: A; accuracy not measured: B"
    )


def test_a_feeds_file_unpacks_only_the_models_arrays(tmp_path, monkeypatch):
    """A few MB of compressed zeros can declare GBs: an array the model does not read is never unpacked, and
    arrays it does read are refused from their headers when they would not fit."""
    import tracemalloc

    from models import InputSpec

    specs = [InputSpec("x", ("batch", 4), "float32")]
    path = tmp_path / "data.npz"
    np.savez_compressed(path, x=np.ones((8, 4), np.float32), unused=np.zeros(2**28, np.uint8))
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        feeds = file_feeds(path, specs, 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert feeds.samples == 8 and peak < 2**26, peak
    import psutil

    class Tight:
        available = 64

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight)
    with pytest.raises(FeedError, match="more than half the 0.0 GiB of memory free; give a file with fewer samples"):
        file_feeds(path, specs, 4)
