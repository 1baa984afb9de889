"""Faults 4 and 6 of issue 10: two runs sharing one store never collide or lose manifest entries, and no cache
beside the artifacts (reference outputs, FLOP counts, calibration ranges) is used unless it is the file the
suite wrote.

Every test here runs in a store of its own (``AIMATRIX_STORE`` set for the module), so damaging caches and
forcing rebuilds never disturbs the session's shared tiny artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.model_facts import count_flops, reference_outputs
from models import get_model
from onnx_models import byo
from onnx_models.artifacts import ExportSettings, ensure, ensure_fp32, resolve
from onnx_models.store import ModelStore

MODEL, SIZE = "wide_deep", "tiny"
WRITERS, RECORDS = 4, 60


@pytest.fixture(scope="module", autouse=True)
def own_store(tmp_path_factory) -> Path:
    """A store root for this module only (child processes inherit it through the environment)."""
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIMATRIX_STORE", str(root))
        yield root


@pytest.fixture(scope="module")
def spec(own_store):
    """wide_deep's spec with its tiny FP32 export built in this module's store."""
    model = get_model(MODEL)
    ensure_fp32(model, SIZE)
    return model


def _intact(path: Path, content: bytes) -> bool:
    return path.is_file() and path.read_bytes() == content


def temporaries(directory: Path) -> list[str]:
    """Names in ``directory`` that look like a write in progress."""
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


# --------------------------------------------------------------------------- fault 4: two runs, one store


def _record_many(root: str, writer: int, barrier) -> None:
    """One of several processes: record RECORDS artifacts and as many top-level fields, all its own."""
    store = ModelStore("race", "tiny", Path(root))
    store.dir.mkdir(parents=True, exist_ok=True)
    for i in range(RECORDS):
        store.path(f"w{writer}-{i}").write_bytes(f"{writer}/{i}".encode())
    barrier.wait()
    for i in range(RECORDS):
        store.record(f"w{writer}-{i}", key=str(i))
        store.update(**{f"field-w{writer}-{i}": i})


def test_concurrent_records_lose_no_manifest_entry(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(WRITERS)
    writers = [spawn.Process(target=_record_many, args=(str(tmp_path), w, barrier)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
    assert [p.exitcode for p in writers] == [0] * WRITERS
    manifest = ModelStore("race", "tiny", tmp_path).manifest()
    expected = {f"w{w}-{i}" for w in range(WRITERS) for i in range(RECORDS)}
    lost = expected - set(manifest["artifacts"])
    assert not lost, f"{len(lost)} of {len(expected)} manifest entries lost to a concurrent read-modify-write"
    fields = {f"field-w{w}-{i}" for w in range(WRITERS) for i in range(RECORDS)}
    assert fields <= set(manifest), f"{len(fields - set(manifest))} top-level fields lost"
    assert temporaries(tmp_path / "race" / "tiny") == []


def test_export_leaves_another_runs_temporary_alone(spec):
    """A second run exporting the same model at the same time must not write to, rename or delete the first
    run's temporary (the old fixed name ``fp32.tmp.onnx`` made both runs share one)."""
    store = ModelStore(MODEL, SIZE)
    foreign = store.dir / "fp32.tmp.onnx"
    foreign.write_bytes(b"another run's export in progress")
    ensure_fp32(spec, SIZE, ExportSettings(seed=1))
    assert _intact(foreign, b"another run's export in progress"), "another run's temporary was clobbered"
    assert temporaries(store.dir) == ["fp32.tmp.onnx"]
    store.verified_path("fp32")
    foreign.unlink()
    ensure_fp32(spec, SIZE)  # back to the seed the other tests use


def test_failed_parity_check_says_where_the_export_is_kept(spec, tmp_path):
    import exporters

    impossible = dataclasses.replace(spec, parity_rtol=-1.0)  # any error, even 0, is above it
    with pytest.raises(exporters.ExportError, match="kept at") as failure:
        exporters.export(impossible, SIZE, tmp_path / "fp32.onnx")
    kept = Path(str(failure.value).rsplit("kept at ", 1)[1])
    assert kept.parent == tmp_path and onnx.load(str(kept)).graph.node
    assert not (tmp_path / "fp32.onnx").exists()


def _scale_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.full(4, 3.0, np.float32), "s")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_brought_in_copy_leaves_another_runs_temporary_alone(tmp_path):
    model = byo.register(_scale_model(tmp_path / "scale.onnx"))
    size = "full"
    store = ModelStore(model.name, size)
    store.dir.mkdir(parents=True, exist_ok=True)
    foreign = store.dir / "fp32.tmp.onnx"
    foreign.write_bytes(b"another run's copy in progress")
    ensure_fp32(model, size)
    assert _intact(foreign, b"another run's copy in progress"), "another run's temporary was clobbered"
    assert temporaries(store.dir) == ["fp32.tmp.onnx"]
    store.verified_path("fp32")


def test_fp16_is_replaced_atomically_not_written_in_place(spec):
    """A run reading fp16.onnx while another rebuilds it must see the old file or the new one, never a half
    written one: the rebuild goes to a new inode (a temporary moved into place), the old one stays whole."""
    store = ModelStore(MODEL, SIZE)
    path = ensure(resolve(MODEL, SIZE, "fp16"))
    good = path.read_bytes()
    stale = store.dir / "stale.bin"
    stale.write_bytes(b"an fp16 file some reader still has open")
    os.replace(stale, path)  # changed bytes: the manifest's sha256 no longer matches, so it is rebuilt
    reader = store.dir / "reader-view.bin"
    os.link(path, reader)  # a reader's open file: the inode it holds
    assert ensure(resolve(MODEL, SIZE, "fp16")) == path
    assert reader.read_bytes() == b"an fp16 file some reader still has open", "fp16 was rewritten in place"
    assert path.read_bytes() == good and temporaries(store.dir) == []
    reader.unlink()


# ------------------------------------------------------------------------ fault 6: caches are verified


def _fresh(store: ModelStore, *patterns: str) -> None:
    """Start from no cache (and no artifact) of these names, so that each case builds its own good one."""
    for pattern in patterns:
        for path in store.dir.glob(pattern):
            path.unlink()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_npz(path: Path) -> None:
    with np.load(path) as data:
        arrays = {name: data[name].copy() for name in data.files}
    first = next(iter(arrays))
    arrays[first].flat[0] += 0.5
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_damaged_reference_outputs_are_rebuilt(spec, damage):
    _fresh(ModelStore(MODEL, SIZE), "reference-*")
    path = Path(reference_outputs(MODEL, SIZE, 2, 4))
    with np.load(path) as data:
        original = {name: data[name].copy() for name in data.files}
    _truncate(path) if damage == "truncated" else _edit_npz(path)
    assert Path(reference_outputs(MODEL, SIZE, 2, 4)) == path
    with np.load(path) as data:
        assert sorted(data.files) == sorted(original)
        for name, want in original.items():
            np.testing.assert_array_equal(data[name], want, err_msg=f"{damage} reference output {name} was used")


def _edit_json(path: Path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _double_flops(counts: dict) -> dict:
    for entry in counts.values():
        entry["flops_per_batch"] *= 2
    return counts


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_damaged_flops_cache_is_rebuilt(spec, damage):
    store = ModelStore(MODEL, SIZE)
    _fresh(store, "flops-*")
    original = count_flops(MODEL, SIZE, [1, 3])
    (cache,) = store.dir.glob("flops-*.json")
    _truncate(cache) if damage == "truncated" else _edit_json(cache, _double_flops)
    assert count_flops(MODEL, SIZE, [1, 3]) == original, f"the {damage} FLOPs cache was used"


def _widen_ranges(ranges: dict) -> dict:
    for tensor in ranges["data"].values():
        tensor["highest"]["data"] = [4 * x + 1 for x in tensor["highest"]["data"]]
    return ranges


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_damaged_calibration_cache_is_rebuilt(spec, damage):
    store = ModelStore(MODEL, SIZE)
    name = resolve(MODEL, SIZE, "int8").name
    _fresh(store, "calibration-*", f"{name}.onnx")
    ensure(resolve(MODEL, SIZE, "int8"))
    (cache,) = store.dir.glob("calibration-*.json")
    ranges, int8_sha = json.loads(cache.read_text()), store.entry(name)["sha256"]
    _truncate(cache) if damage == "truncated" else _edit_json(cache, _widen_ranges)
    store.path(name).unlink()  # the INT8 artifact is rebuilt, so the calibration cache is read
    ensure(resolve(MODEL, SIZE, "int8"))
    assert store.entry(name)["calibration"]["cache_reused"] is False, f"the {damage} calibration cache was used"
    assert json.loads(cache.read_text()) == ranges
    assert store.entry(name)["sha256"] == int8_sha
    store.path(name).unlink()  # the recalibrated cache is trusted again
    ensure(resolve(MODEL, SIZE, "int8"))
    assert store.entry(name)["calibration"]["cache_reused"] is True
    assert temporaries(store.dir) == []


def test_graph_clean_up_is_made_once_per_fp32_file(spec, monkeypatch):
    """The FP16 build and every INT8 build after it read the cleaned graph from the store's cache instead of
    running onnxslim again (97 s per artifact on BERT-large), and build the bytes a fresh clean-up gives."""
    import calibration.graph

    store = ModelStore(MODEL, SIZE)
    name = resolve(MODEL, SIZE, "int8").name
    _fresh(store, "clean-*", "fp16.onnx", f"{name}.onnx")
    ensure(resolve(MODEL, SIZE, "fp16"))
    (cache,) = store.dir.glob("clean-*.onnx")
    ensure(resolve(MODEL, SIZE, "int8"))
    shas = {a: store.entry(a)["sha256"] for a in ("fp16", name)}

    def no_clean(path):
        raise AssertionError(f"{path} was cleaned again")

    monkeypatch.setattr(calibration.graph, "clean", no_clean)
    for artifact in shas:
        store.path(artifact).unlink()
    ensure(resolve(MODEL, SIZE, "fp16"))
    ensure(resolve(MODEL, SIZE, "int8"))
    assert {a: store.entry(a)["sha256"] for a in shas} == shas
    assert store.entry(name)["graph_cleanup"].startswith("onnxslim ")
    assert cache.is_file() and temporaries(store.dir) == []


def _scale_largest_weight(path: Path) -> None:
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 3, weight.name))
    onnx.save(model, str(path))


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_damaged_clean_graph_cache_is_rebuilt(spec, damage):
    store = ModelStore(MODEL, SIZE)
    name = resolve(MODEL, SIZE, "int8").name
    _fresh(store, "clean-*", f"{name}.onnx")
    ensure(resolve(MODEL, SIZE, "int8"))
    (cache,) = store.dir.glob("clean-*.onnx")
    good, int8_sha = cache.read_bytes(), store.entry(name)["sha256"]
    _truncate(cache) if damage == "truncated" else _scale_largest_weight(cache)
    store.path(name).unlink()
    ensure(resolve(MODEL, SIZE, "int8"))
    assert store.entry(name)["sha256"] == int8_sha, f"the {damage} clean-up cache was used"
    assert cache.read_bytes() == good


def test_two_processes_wanting_one_artifact_build_it_once(own_store, tmp_path):
    """Two runs (or test workers, or cluster nodes on a shared store) asking for the same artifact at once: the
    second waits on the artifact's build lock and reuses what the first built, instead of exporting it too."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.isolation import run_isolated
    from tests.child_targets import ensure_counting_exports

    counter = tmp_path / "exports"
    kwargs = {"model": "ncf", "size": SIZE, "counter": str(counter)}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_isolated(ensure_counting_exports, kwargs, 600), range(2)))
    assert [r.error for r in results if not r.ok] == []
    assert results[0].value == results[1].value == str(ModelStore("ncf", SIZE).path("fp32"))
    assert counter.read_text().splitlines() == ["export"]
