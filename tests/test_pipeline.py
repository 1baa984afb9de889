"""End to end on real ONNX Runtime sessions: the four tiny models through export, FP16, INT8 and a run,
plus the artifact store's caching and integrity rules and the command line's answers to bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

import suite
from common.cpu_isa import isa, saturation_probe
from models import get_model
from onnx_models.artifacts import CalibrationSettings, ensure, ensure_fp32, resolve
from onnx_models.store import ArtifactError, ModelStore
from tests.zoo import CPU_INT8

FOUR = ("resnet50", "densenet121", "wide_deep", "bert")
QUICK = ["--size", "tiny", "--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3", "--accuracy-samples", "8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run of the four tiny models at batch 2 in all three precisions on ort-cpu."""
    out = tmp_path_factory.mktemp("run")
    status = suite.main(["run", "--models", ",".join(FOUR), "--batch-sizes", "2", "--out", str(out), *QUICK])
    return status, out


def test_run_measures_every_cell(tiny_run):
    status, out = tiny_run
    assert status == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(FOUR) * 3
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows if r["error"]]
    for row in rows:
        assert row["iterations"] >= 3 and 0 < row["latency_ms_min"] <= row["latency_ms_p50"] <= row["latency_ms_max"]
        assert row["flops_per_batch"] > 0 and row["params"] > 0 and row["arith_intensity"] > 0
        assert row["flops_per_s"] == pytest.approx(row["flops_per_batch"] / (row["latency_ms_mean"] / 1e3))
        assert row["accuracy_samples"] == 8
        # Loading the engine takes memory, and the cell's process held more than that at its peak.
        assert 0 < row["engine_load_mib"] < row["peak_rss_mib"] and row["peak_rss_mib"] > 50, row
        if row["precision"] == "fp32":
            # The FP32 engine reproduces the FP32 reference exactly: the accuracy path compares like with like.
            assert row["accuracy_cosine"] == pytest.approx(1.0) and row["accuracy_max_abs_error"] < 1e-4
        else:
            assert 0.5 < row["accuracy_cosine"] <= 1.0 + 1e-9, row
    # The quick preset's five rounds: a model's three precisions timed in turns, paired by their group.
    groups = {}
    for row in rows:
        assert row["rounds"] == 5 and len(json.loads(row["round_p50_ms"])) == 5 and row["weights"] == "random"
        assert row["latency_ms_p50_lo"] <= row["latency_ms_p50"] <= row["latency_ms_p50_hi"], row
        groups.setdefault(row["rounds_group"], set()).add(row["model"])
    assert sorted(len(models) for models in groups.values()) == [1] * len(FOUR)
    assert all(len([r for r in rows if r["rounds_group"] == g]) == 3 for g in groups)
    metrics = {r["model"]: r["accuracy_metric"] for r in rows}
    assert metrics == {
        "resnet50": "top1_agreement",
        "densenet121": "top1_agreement",
        "wide_deep": "max_abs_error",
        "bert": "span_agreement",
    }


def test_run_writes_tables_env_and_samples(tiny_run):
    _, out = tiny_run
    frame = pl.read_parquet(out / "results.parquet")
    assert frame.height == len(FOUR) * 3
    assert set(suite_columns()) <= set(frame.columns)
    assert pl.read_csv(out / "results.csv").height == frame.height
    env = json.loads((out / "env.json").read_text())
    assert "CPUExecutionProvider" in env["onnxruntime_providers"] and env["cpu"]["logical_cores"] >= 1
    # Which 8-bit kernels ran: the ISA in env.json and on every row, the INT8 weight width on INT8 rows.
    assert env["cpu"]["isa"] == isa() and env["cpu"]["int8_saturates"] == saturation_probe()
    assert set(frame["cpu_isa"]) == {isa()}
    bits = 7 if saturation_probe() else 8
    assert set(frame.filter(pl.col("precision") == "int8")["int8_weight_bits"]) == {bits}
    assert frame.filter(pl.col("precision") != "int8")["int8_weight_bits"].null_count() == 2 * len(FOUR)
    assert (out / "summary.md").read_text().count("| ort-cpu |") == frame.height
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == frame.height and all(len(s["samples_ms"]) >= 3 for s in samples)


def suite_columns():
    from bench.results import COLUMNS

    return [c for c in COLUMNS if c not in ("paper_flops_per_sample", "flops_ratio_to_paper")]


def test_int8_manifest_says_what_was_quantized(tiny_run):
    for model in FOUR:
        manifest = ModelStore(model, "tiny").manifest()
        int8 = manifest["artifacts"][CPU_INT8]
        assert int8["flavour"] == "cpu" and int8["activations"] == "uint8 asymmetric"
        assert int8["calibration"]["method"] == "minmax" and int8["calibration"]["samples"] == 8
        assert sum(int8["quantized_ops"].values()) > 0
        assert not {"Gather", "Softmax"} & set(int8["quantized_ops"])
        assert manifest["artifacts"]["fp16"]["io_types"] == "float32"
        assert manifest["artifacts"]["fp32"]["parity"]["max_rel_error"] <= get_model(model).parity_rtol
        assert manifest["params"] > 0 and manifest["inputs"]


def test_resume_skips_finished_cells(tiny_run):
    _, out = tiny_run
    before = (out / "results.jsonl").read_text()
    assert suite.main(["run", "--models", "resnet50", "--batch-sizes", "2", "--out", str(out), "--resume", *QUICK]) == 0
    assert (out / "results.jsonl").read_text() == before


def test_existing_results_need_resume(tiny_run, capsys):
    _, out = tiny_run
    assert suite.main(["run", "--models", "resnet50", "--out", str(out), *QUICK]) == 2
    assert "--resume" in capsys.readouterr().err


def test_same_seed_same_bytes_and_corrupt_file_is_rebuilt(tiny_run):
    spec = get_model("resnet50")
    store = ModelStore("resnet50", "tiny")
    sha = store.entry("fp32")["sha256"]
    path = store.path("fp32")
    path.write_bytes(path.read_bytes()[:-100] + b"x" * 100)
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        store.verified_path("fp32")
    assert ensure_fp32(spec, "tiny") == path
    assert store.entry("fp32")["sha256"] == sha  # re-exported from the same seed: byte-identical


def test_calibration_cache_is_reused(tiny_run):
    store = ModelStore("wide_deep", "tiny")
    store.path(CPU_INT8).unlink()
    # The run calibrated on the quick preset's 8 samples: the same settings reuse its ranges, others do not.
    for samples in (8, 16):
        calib = CalibrationSettings(samples=samples)
        ensure(resolve("wide_deep", "tiny", "int8", calib=calib), calib=calib)
        if samples == 8:
            assert store.entry(CPU_INT8)["calibration"]["cache_reused"] is True
    assert store.entry(CPU_INT8)["calibration"]["cache_reused"] is False


def test_user_calibration_data(tiny_run, tmp_path, capsys):
    spec = get_model("wide_deep")
    good = tmp_path / "good.npz"
    feeds = spec.make_feeds("tiny", 16, 0)
    np.savez(good, **feeds)
    args = ["calibrate", "--models", "wide_deep", "--size", "tiny", "--data", str(good), "--samples", "16"]
    assert suite.main(args) == 0
    assert "good.npz" in ModelStore("wide_deep", "tiny").entry(CPU_INT8)["calibration"]["data"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**feeds, "dense": feeds["dense"][:, :2]})
    capsys.readouterr()
    assert suite.main([*args[:-4], "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dense" in err and "has shape" in err


def test_flops_refuses_bad_values_before_exporting(tmp_path, store_root, capsys):
    """A batch size of 0 or a --csv that is a directory is a usage error before any export (gcn full is
    exported by no other test, so its store directory tells whether an export ran)."""
    assert suite.main(["flops", "--models", "gcn", "--batch-sizes", "0"]) == 2
    assert capsys.readouterr().err == "error: --batch-sizes must be positive integers, got '0'\n"
    assert suite.main(["flops", "--models", "gcn", "--batch-sizes", "1", "--csv", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: --csv {tmp_path} is a directory; name a file such as {tmp_path / 'flops.csv'}\n"
    )
    assert not (store_root / "gcn" / "full").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "--models", "resnet5"], "unknown model resnet5; valid models: googlenet, resnet50, resnet101"),
        (["run", "--engines", "trt"], "unknown engine trt; valid engines: ort-cpu"),
        (["run", "--precisions", "int4"], "unknown precision int4; valid precisions: fp32, fp16, int8"),
        (["export", "--models", "nope,resnet50"], "unknown model nope"),
        (["run", "--batch-sizes", "0"], "--batch-sizes must be positive"),
        (["run", "--method", "kl"], "unknown calibration method 'kl'"),
        (["export", "--models", "resnet50", "--weights", "/nonexistent.pt"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(argv, fragment, capsys):
    assert suite.main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_onnx_in_engine_is_a_clear_error(tmp_path):
    from engines import EngineError
    from engines.ort_cpu import OrtCpuEngine

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(EngineError, match="cannot load"):
        OrtCpuEngine().activate(bad)


def test_wrong_checkpoint_is_a_failed_export(tmp_path, capsys):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"junk")
    assert suite.main(["export", "--models", "resnet50", "--size", "tiny", "--weights", str(bad)]) == 1
    assert "cannot read checkpoint" in capsys.readouterr().out


def test_list_and_engines_do_not_import_frameworks():
    # --help and list need neither onnx nor a runtime (the settings' checks once pulled onnx in via the quantizer).
    light = "import sys, suite; suite.main(['list']); assert 'onnx' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    code = (
        "import sys, suite; suite.main(['list']); suite.main(['engines']);"
        "heavy = [m for m in ('torch', 'tensorflow', 'tensorrt', 'onnxruntime') if m in sys.modules];"
        "assert heavy == ['onnxruntime'] or heavy == [], heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "resnet50" in result.stdout and "ort-cpu" in result.stdout


def test_flops_counts_without_timing(tiny_run, tmp_path, capsys):
    out = tmp_path / "flops.csv"
    args = ["flops", "--models", "resnet50,wide_deep", "--size", "tiny", "--batch-sizes", "1,4", "--csv", str(out)]
    assert suite.main(args) == 0
    table = pl.read_csv(out)
    assert table.height == 4
    per_batch = {(r["model"], r["batch_size"]): r["flops_per_batch"] for r in table.iter_rows(named=True)}
    # Everything in these two models scales with the batch.
    assert per_batch[("resnet50", 4)] == pytest.approx(4 * per_batch[("resnet50", 1)], rel=1e-6)
    assert per_batch[("wide_deep", 4)] == pytest.approx(4 * per_batch[("wide_deep", 1)], rel=1e-6)
    # A tiny model is not the paper's architecture, so it gets no ratio.
    assert table["flops_ratio_to_paper"].null_count() == 4
    assert "resnet50" in capsys.readouterr().out


def test_paper_ratio_is_per_sample():
    from analysis.paper import flops_ratio, paper_flops_per_sample

    assert paper_flops_per_sample("ResNet50") == pytest.approx(2.14e11 / 32)
    assert flops_ratio(2 * 2.14e11 / 32, 2, "ResNet50") == pytest.approx(1.0)
    assert flops_ratio(1e9, 1, None) is None and flops_ratio(None, 1, "ResNet50") is None
