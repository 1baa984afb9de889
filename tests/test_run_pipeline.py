"""The run as data, then work: RunConfig validation, presets, plan(), and parallel artifact builds."""

from __future__ import annotations

import pytest

import suite
from bench.config import PRESETS, ConfigError, RunConfig
from bench.executor import LocalExecutor
from bench.plan import ArtifactJob, plan
from bench.timer import TimerSettings
from cli.options import calibration_samples, config_from, select
from cli.parser import build_parser
from onnx_models.artifacts import CalibrationSettings, ExportSettings, resolve
from onnx_models.store import ModelStore


def config_of(*argv: str) -> RunConfig:
    """The RunConfig that ``suite.py run ARGV`` measures with (models resnet50 and nmt unless ARGV names some)."""
    if "--models" not in argv:
        argv = ("--models", "resnet50,nmt", *argv)
    args = build_parser().parse_args(["run", *argv])
    return config_from(args, select(args))


def jobs_of(models: tuple[str, ...], precisions: tuple[str, ...]) -> list[ArtifactJob]:
    """One build job per model of ``models`` at tiny size: its ``precisions``' CPU artifacts, FP32 first."""
    return [ArtifactJob(m, tuple(resolve(m, "tiny", p) for p in precisions)) for m in models]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--duration-s", "nan"], "--duration-s must be a finite number > 0, got nan"),
        (["--duration-s", "0"], "--duration-s must be a finite number > 0, got 0.0"),
        (["--warmup-s", "-1"], "warm-up and duration must not be negative"),
        (["--warmup-s", "inf"], "--warmup-s must be a finite number >= 0, got inf"),
        (["--cell-timeout", "nan"], "--cell-timeout must be a finite number > 0, got nan"),
        (["--cell-timeout", "0"], "--cell-timeout must be a finite number > 0, got 0.0"),
        (["--threads", "0"], "--threads must be a positive integer, got 0"),
        (["--threads", "-2"], "--threads must be a positive integer, got -2"),
        (["--jobs", "0"], "--jobs must be at least 1, got 0"),
        (["--accuracy-samples", "0"], "--accuracy-samples must be at least 1"),
        (["--min-iters", "0"], "need warmup_iters >= 0 and 1 <= min_iters <= max_iters"),
        # Load scenarios (bench/scenarios.py).
        (
            ["--scenario", "bogus"],
            "unknown scenario bogus; valid scenarios: latency, single-stream, multi-stream, server, offline",
        ),
        (["--scenario", "server"], "the server scenario needs a latency bound: add --latency-bound-ms (such as 100)"),
        (["--find-peak"], "--find-peak searches the server scenario's peak QPS: add --scenario server"),
        (
            ["--concurrency", "2"],
            "--concurrency applies to the multi-stream, server, offline scenarios: add one with --scenario",
        ),
        (["--concurrency", "0"], "--concurrency must be positive integers, got '0'"),
        (["--concurrency", "x"], "--concurrency must be a comma list of integers, got 'x'"),
        (["--min-duration-s", "nan"], "--min-duration-s must be a finite number > 0, got nan"),
        (["--latency-percentile", "100"], "--latency-percentile must lie between 0 and 100 (such as 99), got 100.0"),
        (["--target-qps", "-1"], "--target-qps must be a finite number > 0, got -1.0"),
        (["--samples-per-query", "0"], "--samples-per-query must be at least 1, got 0"),
        (["--min-query-count", "0"], "--min-query-count must be at least 1, got 0"),
    ],
)
def test_values_that_cannot_work_are_usage_errors(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert suite.main(["run", "--models", "resnet50", *argv, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not out.exists()


def test_presets_and_options_over_them():
    quick = config_of()
    assert dict(quick.batch_sizes) == {"resnet50": (1,), "nmt": (1,)}
    assert (quick.timer.duration_s, quick.accuracy_samples) == (PRESETS["quick"]["duration_s"], 8)
    paper = config_of("--preset", "paper")
    assert dict(paper.batch_sizes) == {"resnet50": (32,), "nmt": (128,)}
    assert (paper.timer.duration_s, paper.timer.warmup_s, paper.accuracy_samples) == (5.0, 1.0, 32)
    mixed = config_of("--preset", "paper", "--batch-sizes", "1,2", "--duration-s", "3", "--accuracy-samples", "4")
    assert dict(mixed.batch_sizes) == {"resnet50": (1, 2), "nmt": (1, 2)}
    assert (mixed.timer.duration_s, mixed.accuracy_samples, mixed.timer.min_iters) == (3.0, 4, 10)
    # INT8 calibration samples: the preset's, or --samples; `calibrate` makes the default job's artifacts.
    assert (quick.calib.samples, paper.calib.samples) == (8, 32)
    assert config_of("--preset", "paper", "--samples", "16").calib.samples == 16
    calibrate = build_parser().parse_args(["calibrate"])
    assert calibration_samples(calibrate) == quick.calib.samples
    # The build jobs change how fast artifacts are made, not what is measured: not a setting a resume compares.
    assert "jobs" not in quick.settings() and quick.settings()["timer"]["duration_s"] == 1.0


def test_plan_lists_cells_reasons_and_builds(monkeypatch):
    import engines

    # ort-cuda unusable whatever this machine has (on a GPU machine it would be usable).
    real = engines.availability
    monkeypatch.setattr(engines, "availability", lambda e: "no GPU (test)" if e == "ort-cuda" else real(e))
    config = RunConfig(
        models=("resnet50", "wide_deep"),
        batch_sizes={"resnet50": (1, 2), "wide_deep": (4,)},
        size="tiny",
        engines=("ort-cpu", "ort-cuda"),
        precisions=("fp32", "int8"),
    )
    done = {"resnet50/tiny/ort-cpu/fp32/b1"}
    work = plan(config, done)
    assert len(work.cells) == 2 * 2 * 2 + 2 * 2 - 1 and all(c.id not in done for c in work.cells)
    # ort-cuda's cells are unsupported with the engine's reason, and need no artifacts.
    assert {c.engine for c in work.runnable} == {"ort-cpu"}
    assert set(work.unsupported.values()) == {"ort-cuda: no GPU (test)"}
    assert work.builds == tuple(jobs_of(("resnet50", "wide_deep"), ("fp32", "int8")))
    # Every runnable cell carries the artifact it measures, resolved once by the plan.
    assert all(c.artifact == resolve(c.model, "tiny", c.precision) for c in work.runnable)
    # Artifacts follow each model's own cells: with resnet50's ort-trt INT8 cells measured already (a resume),
    # only wide_deep gets the tensorrt INT8 flavour (ort-trt taken as usable here: plan() only asks).
    monkeypatch.setattr(engines, "availability", lambda e: None)
    both = RunConfig(
        models=("resnet50", "wide_deep"),
        batch_sizes={"resnet50": (1,), "wide_deep": (1,)},
        size="tiny",
        engines=("ort-cpu", "ort-trt"),
        precisions=("fp32", "int8"),
    )
    resumed = plan(both, {"resnet50/tiny/ort-trt/int8/b1"})
    trt = resolve("wide_deep", "tiny", "int8", "tensorrt")
    assert list(resumed.builds[:1]) == jobs_of(("resnet50",), ("fp32", "int8"))
    # Within one precision the flavours follow their names, which the CPU's ISA changes (int8, or int8-w7 where
    # the CPU saturates): compared as a set after the FP32 export that leads.
    (wide,) = jobs_of(("wide_deep",), ("fp32", "int8"))
    assert resumed.builds[1].model == "wide_deep" and resumed.builds[1].artifacts[0] == wide.artifacts[0]
    assert set(resumed.builds[1].artifacts) == {*wide.artifacts, trt} and len(resumed.builds) == 2
    with pytest.raises(ConfigError, match="no batch size for wide_deep"):
        RunConfig(models=("resnet50", "wide_deep"), batch_sizes={"resnet50": (1,)})
    with pytest.raises(ConfigError, match="unknown precision int4"):
        RunConfig(models=("resnet50",), batch_sizes={"resnet50": (1,)}, precisions=("int4",))
    with pytest.raises(ConfigError, match="--duration-s"):
        RunConfig(models=("resnet50",), batch_sizes={"resnet50": (1,)}, timer=TimerSettings(duration_s=float("nan")))


def test_parallel_builds_make_the_same_artifacts(tmp_path, monkeypatch):
    """Two models built two at a time give the bytes that one at a time gives (seeded exports), and a model
    whose build fails takes only its own artifacts with it."""
    shas = {}
    for jobs in (1, 2):
        monkeypatch.setenv("AIMATRIX_STORE", str(tmp_path / f"store{jobs}"))
        work = jobs_of(("ncf", "wide_deep"), ("fp32", "fp16"))
        outcome = LocalExecutor(jobs).build(work, ExportSettings(), CalibrationSettings())
        assert not outcome.failures and not outcome.unsupported
        shas[jobs] = {
            (m, a): ModelStore(m, "tiny").entry(a)["sha256"] for m in ("ncf", "wide_deep") for a in ("fp32", "fp16")
        }
    assert shas[1] == shas[2]
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setenv("AIMATRIX_STORE", str(tmp_path / "store3"))
    work = jobs_of(("ncf",), ("fp32", "fp16"))
    outcome = LocalExecutor(2).build(work, ExportSettings(weights=broken), CalibrationSettings())
    assert set(outcome.failures) == set(work[0].artifacts)


def test_analyses_run_jobs_models_at_a_time(monkeypatch):
    """FLOP counts and FP32 references run ``jobs`` models at once (the default job spent three minutes on them
    one at a time), and each model's entries get its own results, failures included."""
    import threading

    import bench.executor as executor
    from bench.isolation import ChildResult

    both_running = threading.Barrier(2, timeout=10)

    def analyse(function, kwargs, timeout_s):
        model = kwargs["model"]
        if function is executor.count_flops:
            # Passes only when the other model's count runs at the same time.
            both_running.wait()
            return ChildResult(True, {b: {"flops_per_batch": len(model) * b} for b in kwargs["batches"]})
        if model == "ncf":
            return ChildResult(False, error="reference failed")
        return ChildResult(True, f"{model}-b{kwargs['batch']}.npz")

    monkeypatch.setattr(executor, "run_isolated", analyse)
    facts = LocalExecutor(jobs=2).facts({"resnet50": [1, 8], "ncf": [1], "bert": [1]}, "tiny", ["bert"], 8)
    assert facts == {
        ("resnet50", 1): {"flops_per_batch": 8, "reference": "resnet50-b1.npz"},
        ("resnet50", 8): {"flops_per_batch": 64, "reference": "resnet50-b8.npz"},
        ("ncf", 1): {"flops_per_batch": 3, "reference_error": "reference failed"},
    }


def test_a_models_conversions_run_side_by_side_after_one_clean_up(monkeypatch):
    """After a model's export its graph is slimmed once, then its FP16 and INT8 builds are independent tasks:
    with two jobs they run at the same time (the last model's conversions used to run one after the other
    while the other core idled). A failed export starts nothing of its model and fails all of its artifacts."""
    import threading

    import bench.executor as executor
    from bench.isolation import ChildResult

    log, lock = [], threading.Lock()
    side_by_side = threading.Barrier(2, timeout=10)
    monkeypatch.setattr(executor, "_clean_graph_stored", lambda model, size: False)

    def build(function, kwargs, timeout_s):
        if function is executor.slim_fp32:
            model, step = kwargs["model"], "clean"
        else:
            model, step = kwargs["artifact"].model, kwargs["artifact"].precision
        with lock:
            log.append((model, step))
        if model == "ncf" and step == "fp32":
            return ChildResult(False, error="export failed")
        if model == "resnet50" and step in ("fp16", "int8"):
            side_by_side.wait()  # passes only while both conversions run at once
        return ChildResult(True, "path")

    monkeypatch.setattr(executor, "run_isolated", build)
    jobs = jobs_of(("resnet50", "ncf"), ("fp32", "fp16", "int8"))
    outcome = LocalExecutor(jobs=2).build(jobs, ExportSettings(), CalibrationSettings())
    mine = [step for model, step in log if model == "resnet50"]
    assert mine[:2] == ["fp32", "clean"] and sorted(mine[2:]) == ["fp16", "int8"]
    assert [step for model, step in log if model == "ncf"] == ["fp32"]
    assert set(outcome.failures) == set(jobs[1].artifacts)
