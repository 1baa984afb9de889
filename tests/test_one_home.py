"""Each fact has one home: a precision is one registry entry (the plan, the builds, the cells and the report
follow it), the store lives outside the source tree (and an old one in the tree is named, never used or
deleted), the roofs cache keeps every writer's entry, and the command line says what an interrupt left."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

import suite
from analysis.roofs import Roofs
from bench.cell import run_cell
from bench.config import RunConfig
from bench.model_facts import reference_outputs
from bench.plan import plan
from bench.roofs_cache import local_machine_key, save_roofs
from bench.timer import TimerSettings
from common import paths, precisions
from common.precisions import Precision
from onnx_models.artifacts import ensure
from onnx_models.store import ModelStore

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------- the registry


@pytest.fixture
def fp16_again(monkeypatch) -> Precision:
    """A fifth precision added the way the registry says: one entry (here reusing the FP16 builder module)."""
    entry = Precision("fp16b", "#8c564b", "diamond", "float16", builder="calibration.fp16")
    registry = (*precisions.REGISTRY, entry)
    monkeypatch.setattr(precisions, "REGISTRY", registry)
    monkeypatch.setattr(precisions, "NAMES", tuple(p.name for p in registry))
    monkeypatch.setattr(precisions, "_BY_NAME", {p.name: p for p in registry})
    return entry


def test_a_precision_is_one_registry_entry(fp16_again):
    """With one entry added, the run's configuration accepts it, the plan resolves and orders its artifact,
    the store builds it through the builder the entry names, a cell measures it, and the report's tables,
    verdicts and charts list it in its registry colour and shape. (In this process: child processes read the
    registry from its file.)"""
    from analysis.roofs import unit
    from analysis.verdict import points
    from report.roofline import _style
    from report.svg_charts import _marker

    config = RunConfig(
        models=("ncf",),
        batch_sizes={"ncf": (2,)},
        size="tiny",
        precisions=("fp16b", "fp32"),
        timer=TimerSettings(0.0, 1, 0.05, 2),
        accuracy_samples=2,
    )
    work = plan(config)
    (job,) = work.builds
    assert [a.name for a in job.artifacts] == ["fp32", "fp16b"]
    paths_built = [ensure(artifact) for artifact in job.artifacts]
    assert paths_built[1] == ModelStore("ncf", "tiny").path("fp16b")
    assert (
        ModelStore("ncf", "tiny").entry("fp16b")["source_sha256"] == ModelStore("ncf", "tiny").entry("fp32")["sha256"]
    )
    reference = reference_outputs("ncf", "tiny", 2, 2)
    rows = []
    for cell in work.cells:
        measured = run_cell(cell, config.timer, config.accuracy_samples, {}, reference)
        rows.append({**measured, "model": "ncf", "size": "tiny", "engine": cell.engine, "precision": cell.precision})
        rows[-1].update(status="ok", batch_size=2, scenario="latency", concurrency=1)
    assert {r["precision"]: r["accuracy_cosine"] > 0.99 for r in rows} == {"fp16b": True, "fp32": True}
    # FP32 first in every listing, then the registry's order, whatever order the run named them in.
    assert [p.precision for p in points(rows, 0.99)] == ["fp32", "fp16b"]
    assert unit("fp16b") == "FLOP/s" and _style("fp16b")[:2] == ("#8c564b", "D")
    assert "<polygon" in _marker("fp16b", 10, 10, "#8c564b", "#222", 1)


def test_every_engine_runs_what_the_registry_says(monkeypatch):
    """Which engines run a precision is the registry's to say: the plan marks the others unsupported."""
    only_trt = Precision("fp16t", "#17becf", "circle", "float16", "calibration.fp16", engines=("ort-trt",))
    registry = (*precisions.REGISTRY, only_trt)
    monkeypatch.setattr(precisions, "REGISTRY", registry)
    monkeypatch.setattr(precisions, "NAMES", tuple(p.name for p in registry))
    monkeypatch.setattr(precisions, "_BY_NAME", {p.name: p for p in registry})
    config = RunConfig(models=("ncf",), batch_sizes={"ncf": (1,)}, size="tiny", precisions=("fp32", "fp16t"))
    work = plan(config, availability=lambda engine: None)
    assert work.unsupported == {"ncf/tiny/ort-cpu/fp16t/b1": "ort-cpu: does not run fp16t, which runs on ort-trt only"}
    assert only_trt.runs_on("ort-trt") and not only_trt.runs_on("ort:TensorrtExecutionProvider")


# -------------------------------------------------------------------------------------------- the store


@pytest.fixture
def old_store(tmp_path, monkeypatch) -> Path:
    """A store in the old place (a package directory holding a source file beside model folders), the default
    store in a private cache directory, and no AIMATRIX_STORE."""
    old = tmp_path / "onnx_models"
    (old / "resnet50" / "tiny").mkdir(parents=True)
    (old / "resnet50" / "tiny" / "manifest.json").write_text('{"artifacts": {}}')
    (old / "resnet50" / "tiny" / "fp32.onnx").write_bytes(b"x" * 1024)
    (old / "byo" / "m").mkdir(parents=True)
    (old / "store.py").write_text("# a source file of the package")
    monkeypatch.setattr(paths, "OLD_STORE", old)
    monkeypatch.delenv("AIMATRIX_STORE")
    monkeypatch.setenv("AIMATRIX_CACHE", str(tmp_path / "cache"))
    return old


def test_the_default_store_is_in_the_cache_directory(old_store, tmp_path, monkeypatch):
    assert paths.store_root() == tmp_path / "cache" / "store"
    monkeypatch.delenv("AIMATRIX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.store_root() == tmp_path / "xdg" / "aimatrix" / "store"
    monkeypatch.setenv("AIMATRIX_STORE", str(tmp_path / "mine"))
    assert paths.store_root() == tmp_path / "mine"


def test_a_store_in_the_old_place_is_named_in_one_line_and_left_alone(old_store, capsys, monkeypatch):
    before = sorted(p.relative_to(old_store) for p in old_store.rglob("*"))
    assert suite.main(["export", "--models", "nosuch"]) == 2
    err = capsys.readouterr().err.splitlines()
    (note,) = [line for line in err if "from before the store moved" in line]
    assert str(old_store) in note and "2 folders" in note and "not used now" in note
    assert f"mv {old_store}/{{byo,resnet50}} " in note and f"AIMATRIX_STORE={old_store}" in note
    assert sorted(p.relative_to(old_store) for p in old_store.rglob("*")) == before
    # Commands that do not touch the store say nothing of it, nor does any command once the store is chosen.
    assert suite.main(["list"]) == 0 and "store" not in capsys.readouterr().err
    monkeypatch.setenv("AIMATRIX_STORE", str(old_store))
    assert suite.main(["export", "--models", "nosuch"]) == 2
    assert "from before the store moved" not in capsys.readouterr().err


def test_a_default_run_writes_nothing_into_the_source_tree(tmp_path, monkeypatch):
    """`git status` after a default run shows nothing new: artifacts, caches and the store's token go to the
    cache directory."""

    # Caches of Python and the tools, and results/ (where other tests' runs without --out write, in parallel).
    noise = {"__pycache__", ".git", ".venv", ".pytest_cache", ".ruff_cache", "results", "aimatrix_onnx.egg-info"}

    def tree() -> set[Path]:
        return {
            p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file() and not noise & set(p.relative_to(ROOT).parts)
        }

    monkeypatch.delenv("AIMATRIX_STORE")
    monkeypatch.setenv("AIMATRIX_CACHE", str(tmp_path / "cache"))
    # Roofs known, so the run does not measure them (they are cached in the cache directory too).
    save_roofs(Roofs({"fp32": 1e11}, 2e10, "test", {"machine": local_machine_key("ort-cpu")}))
    before = tree()
    argv = ["run", "--models", "ncf", "--size", "tiny", "--precisions", "fp32", "--warmup-s", "0"]
    argv += ["--duration-s", "0.05", "--min-iters", "2", "--accuracy-samples", "2", "--out", str(tmp_path / "run")]
    assert suite.main(argv) == 0
    assert tree() - before == set()
    assert (tmp_path / "cache" / "store" / "ncf" / "tiny" / "fp32.onnx").is_file()


# -------------------------------------------------------------------------------------------- the roofs


def save_roofs_of(index: int) -> None:
    """Save roofs under a machine key of its own (run in a pool worker)."""
    from bench.roofs_cache import save_roofs

    key = {"engine": f"engine-{index}", "cpu": "test", "logical_cores": 2, "onnxruntime": "x", "threads": 1}
    save_roofs(Roofs({"fp32": float(index + 1)}, 1.0, "test", {"machine": key}))


def test_roofs_saved_at_once_by_many_processes_are_all_kept(tmp_path, monkeypatch):
    """Runs and `suite.py peak` may cache roofs at the same time: each read-modify-write of peaks.json holds a
    lock, so none drops another's entry (before, 24 saves from 6 processes kept fewer than 24)."""
    monkeypatch.setenv("AIMATRIX_CACHE", str(tmp_path))
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        pool.map(save_roofs_of, range(24))
    cache = json.loads((tmp_path / "peaks.json").read_text())
    assert len(cache) == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peaks.json", "peaks.json.lock"]


# ------------------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "command, said",
    [
        ("export", "interrupted\n"),
        ("report", "interrupted\n"),
        ("run", "interrupted; finished cells are in results.jsonl (use --resume)\n"),
    ],
)
def test_an_interrupt_says_what_it_left(command, said, monkeypatch, capsys, tmp_path):
    """Only a run has finished cells to resume; an interrupted export or report says no such thing."""

    def interrupted(args, selection):
        raise KeyboardInterrupt

    monkeypatch.setitem(suite.COMMANDS, command, interrupted)
    argv = {"export": ["export"], "report": ["report", str(tmp_path)], "run": ["run"]}[command]
    assert suite.main(argv) == 130
    assert capsys.readouterr().err.endswith(said)


def test_explain_names_its_own_options_in_errors(capsys):
    assert suite.main(["explain", "resnet50", "--size", "tiny", "--accuracy-samples", "0"]) == 2
    assert "--accuracy-samples" in capsys.readouterr().err
