"""The Ray executor on a real Ray cluster started on this machine (tests/ray_cluster.py): a head and a second node
with other custom resources and an artifact store of its own, tiny models, a node killed mid-run, a driver
killed mid-run. No part of Ray is mocked. Each cluster is small (one CPU and 80 MiB of object store per node) and
is stopped by its fixture whatever the test did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.config import RunConfig
from bench.results import ResultsFile
from bench.runner import run
from bench.timer import TimerSettings
from cluster.executor import CPU_SLOT, RayExecutor
from onnx_models.store import ArtifactError, ModelStore
from tests.ray_cluster import NODE_IP, LocalCluster

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_ray_token(monkeypatch):
    """Local clusters without token authentication: Ray 2.60 would otherwise write a token into ~/.ray for every
    local ray.init, which the next cluster's nodes (started without it) refuse."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def _wait_nodes(address: str, alive: int, timeout_s: float = 90) -> None:
    """Wait until the cluster at ``address`` counts ``alive`` live nodes (a killed node is noticed in seconds)."""
    import ray

    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        deadline = time.monotonic() + timeout_s
        while sum(1 for n in ray.nodes() if n["Alive"]) != alive:
            assert time.monotonic() < deadline, f"the cluster did not reach {alive} live nodes"
            time.sleep(0.5)
    finally:
        ray.shutdown()


@pytest.fixture
def cluster(tmp_path):
    """(cluster, the second node's process, the nodes' stores): a head offering a CPU slot and ``vendor_a`` and a
    node offering a CPU slot and ``vendor_b``, each with an empty artifact store of its own (not the driver's), so
    everything is built in Ray workers and travels between the nodes by object store."""
    nodes = LocalCluster()
    stores = [tmp_path / "store-a", tmp_path / "store-b"]
    try:
        address = nodes.head({CPU_SLOT: 1, "vendor_a": 1}, env={"AIMATRIX_STORE": str(stores[0])})
        second = nodes.add_node({CPU_SLOT: 1, "vendor_b": 1}, env={"AIMATRIX_STORE": str(stores[1])})
        _wait_nodes(address, 2)
        yield nodes, second, stores
    finally:
        nodes.stop()


def _config(**changes) -> RunConfig:
    values = dict(
        models=("resnet50", "wide_deep"),
        batch_sizes={"resnet50": (1,), "wide_deep": (1,)},
        size="tiny",
        timer=TimerSettings(warmup_s=0.05, duration_s=0.2, min_iters=3),
        accuracy_samples=4,
    )
    return RunConfig(**{**values, **changes})


def test_ray_and_local_executors_measure_the_same_cells(cluster, tmp_path):
    """The same tiny matrix through the local executor and a two-node cluster whose nodes build in stores of their
    own, timed in three interleaved rounds: the same cells and statuses, byte-identical artifacts (sha256), equal
    accuracy values, and a model's precisions paired by one rounds group measured on one node; each row names
    the node and device it ran on, each node's environment is in nodes/, and each file a node used is in its store
    with the builder's bytes. (Built in Ray workers under Ray's OMP_NUM_THREADS=1, ResNet-50 came out in other
    bytes than the local executor's.)"""
    nodes, _, stores = cluster
    local = run(_config(rounds=3), tmp_path / "local")
    with RayExecutor(nodes.address) as executor:
        assert executor.ship, "the nodes' own stores were taken for a shared one"
        names = executor.names()
        remote = run(_config(rounds=3), tmp_path / "ray", executor=executor)
    key = lambda r: r["cell_id"]  # noqa: E731
    mine, theirs = sorted(local.rows, key=key), sorted(remote.rows, key=key)
    assert [(r["cell_id"], r["status"]) for r in mine] == [(r["cell_id"], r["status"]) for r in theirs]
    assert all(r["status"] == "ok" for r in theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert a["artifact_sha256"] == b["artifact_sha256"], a["cell_id"]
        assert a["accuracy_value"] == b["accuracy_value"], a["cell_id"]
        assert b["node"] in names and b["device"] == "cpu"
        # Both executors time a model's precisions in three interleaved rounds, on one node, paired by group.
        assert a["rounds"] == b["rounds"] == 3 and len(json.loads(b["round_p50_ms"])) == 3
    for rows in (mine, theirs):
        groups = {(r["model"], r["rounds_group"]) for r in rows}
        assert len(groups) == 2 and {r["rounds_group"] for r in rows if r["model"] == "resnet50"} != {None}
    for model in ("resnet50", "wide_deep"):
        assert len({r["node"] for r in theirs if r["model"] == model}) == 1
    assert sorted(p.stem for p in (tmp_path / "ray" / "nodes").glob("*.json")) == names
    for row in theirs:
        store = next(s for s in stores if Path(row["artifact"]).is_relative_to(s))
        artifact = Path(row["artifact"]).stem
        assert ModelStore(row["model"], "tiny", root=store).entry(artifact)["sha256"] == row["artifact_sha256"]


def _cell_running_in(group: int) -> bool:
    """Whether a process of session ``group`` (a node's processes) runs a spawned child (a cell, in the cell phase)."""
    for process in psutil.process_iter(["cmdline"]):
        try:
            if os.getsid(process.pid) == group and "multiprocessing.spawn" in " ".join(process.info["cmdline"] or []):
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _rows(out: Path) -> list[str]:
    path = out / "results.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_killed_node_fails_its_cell_and_a_killed_driver_loses_nothing(cluster, tmp_path):
    """Kill the second node while it measures a cell: that cell's row is failed and says the node left, the other
    cells are measured on the head. Then kill the driver: every row written so far stays, and --resume
    --retry-failed on what is left of the cluster finishes the matrix with every cell ok."""
    nodes, second, _ = cluster
    out = tmp_path / "run"
    argv = [sys.executable, "suite.py", "run", "--executor", "ray", "--ray-address", nodes.address]
    argv += ["--models", "wide_deep", "--size", "tiny", "--batch-sizes", "1,2,3", "--precisions", "fp32,int8"]
    argv += ["--warmup-s", "0.05", "--duration-s", "2", "--accuracy-samples", "4", "--out", str(out)]
    # One window per cell, so that each task is one cell (in rounds a model's precisions share a task and a node).
    argv += ["--rounds", "1"]
    driver = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Cells have begun once a row is written; then kill the second node while a cell runs on it.
        _wait(lambda: _rows(out), 240, "the first row")
        _wait(lambda: _cell_running_in(second.pid), 60, "a cell on the second node")
        nodes.kill_node(second)
        _wait(lambda: any('"failed"' in line for line in _rows(out)), 60, "the killed node's row")
        failed = [json.loads(line) for line in _rows(out) if '"failed"' in line]
        assert len(failed) == 1
        assert "left the cluster" in failed[0]["error"] or "worker running it died" in failed[0]["error"]
        if "left the cluster" in failed[0]["error"]:
            assert failed[0]["node"], "the row of a cell lost with its node names the node"
        # One more cell measured on the head after the kill, then the driver dies at once.
        count = len(_rows(out))
        _wait(lambda: len(_rows(out)) > count, 60, "a row after the kill")
        driver.kill()
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(30)
    before = _rows(out)
    print(
        "rows when the driver was killed:",
        [(r["cell_id"], r["status"], r["node"], r["error"]) for r in map(json.loads, before)],
    )
    assert 3 <= len(before) < 6, "the driver was to be killed mid-run"
    _wait_nodes(nodes.address, 1)
    resumed = subprocess.run([*argv, "--resume", "--retry-failed"], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = _rows(out)
    assert after[: len(before)] == before, "a finished row was lost or changed"
    rows = ResultsFile(out).rows()
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert len(after) == 6 + 1, "each cell once, plus the failed row of the retried one"


def test_cells_no_live_node_can_run_fail_instead_of_waiting(tmp_path):
    """When the only node that runs host cells leaves, the cell it was measuring fails (the node left) and the cells
    still waiting fail too, naming the missing resource: Ray alone would keep them pending for ever."""
    nodes = LocalCluster()
    try:
        # The head builds but measures nothing (no CPU slot); the second node is the only one that measures.
        address = nodes.head({"vendor_a": 1})
        second = nodes.add_node({CPU_SLOT: 1, "vendor_b": 1})
        _wait_nodes(address, 2)
        out = tmp_path / "run"
        argv = [sys.executable, "suite.py", "run", "--executor", "ray", "--ray-address", address, "--out", str(out)]
        argv += ["--models", "wide_deep", "--size", "tiny", "--batch-sizes", "1,2", "--precisions", "fp32"]
        argv += ["--warmup-s", "0.05", "--duration-s", "2", "--accuracy-samples", "4"]
        driver = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait(lambda: (out / "samples.jsonl").exists() or _cell_running_in(second.pid), 240, "a cell")
            _wait(lambda: _cell_running_in(second.pid), 60, "a cell on the second node")
            nodes.kill_node(second)
            _, err = driver.communicate(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(30)
        assert driver.returncode == 1, err[-2000:]
        rows = sorted((json.loads(line) for line in _rows(out)), key=lambda r: r["cell_id"])
        print("rows after the only measuring node left:", [(r["cell_id"], r["status"], r["error"]) for r in rows])
        assert [r["status"] for r in rows] == ["failed", "failed"]
        errors = " | ".join(r["error"] for r in rows)
        assert f"no live node of the Ray cluster offers {CPU_SLOT} any more" in errors
    finally:
        nodes.stop()


def test_a_local_cluster_starts_and_stops_with_the_executor():
    """Without an address the executor starts a one-node cluster offering the CPU slot, finds one shared store and
    stops the cluster when it is closed."""
    import ray

    with RayExecutor(None, num_cpus=1, object_store_bytes=80 * 2**20, node_ip=NODE_IP) as executor:
        assert len(executor.names()) == 1 and not executor.ship
        assert executor.availability("ort-cpu") is None
        assert "no node of the Ray cluster has a GPU" in (executor.availability("ort-cuda") or "")
    assert not ray.is_initialized()


def test_cluster_usage_errors_are_one_line(tmp_path, capsys):
    """An address nobody answers at, --ray-address without --executor ray, --onnx on a cluster and a missing ray
    package each end with one line naming the fix (exit status 2), never a traceback."""
    import suite

    base = ["run", "--models", "wide_deep", "--size", "tiny", "--out", str(tmp_path / "r")]
    assert suite.main([*base, "--executor", "ray", "--ray-address", f"{NODE_IP}:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach a Ray cluster at 127.0.0.2:1" in err and "ray start --head" in err
    assert "Traceback" not in err
    assert suite.main([*base, "--ray-address", "auto"]) == 2
    assert "add --executor ray" in capsys.readouterr().err
    missing = "import sys; sys.modules['ray'] = None; import suite; sys.exit(suite.main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", missing, *base, "--executor", "ray"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "needs the ray package" in done.stderr and ".[cluster]" in done.stderr


def test_an_artifact_from_another_node_is_installed_only_with_its_bytes(tmp_path):
    """A store installs an artifact sent from another node only when the bytes match the builder's sha256, under the
    builder's key; corrupt bytes leave nothing behind."""
    import hashlib

    store = ModelStore("wide_deep", "tiny", root=tmp_path)
    data = b"an onnx file's bytes"
    entry = {"key": "k1", "sha256": hashlib.sha256(data).hexdigest(), "file": "fp32.onnx"}
    with pytest.raises(ArtifactError, match="not installed"):
        store.install("fp32", data + b"!", entry, {"task": "ctr"})
    assert not store.path("fp32").exists() and store.entry("fp32") is None
    path = store.install("fp32", data, entry, {"task": "ctr"})
    assert path.read_bytes() == data and store.valid("fp32", "k1") and store.holds("fp32", entry["sha256"])
    assert store.manifest()["task"] == "ctr"
    path.write_bytes(b"changed")
    assert not store.holds("fp32", entry["sha256"])


def test_compare_splits_one_cluster_run_by_node(tmp_path):
    """One run's rows measured on two kinds of node compare as two runs (vendor A against vendor B), each with its
    node's environment from nodes/."""
    from report.compare import CompareError, compare

    results = ResultsFile(tmp_path)
    results.write_env({"cpu": {"model": "driver cpu"}, "settings": {}})
    for node, p50 in (("host-a", 4.0), ("host-b", 2.0)):
        results.write_node_env(node, {"cpu": {"model": f"{node} cpu"}, "settings": {}})
        row = {"model": "wide_deep", "size": "tiny", "engine": "ort-cpu", "precision": "fp32", "batch_size": 1}
        row.update(status="ok", latency_ms_p50=p50, node=node, cell_id=f"wide_deep/tiny/ort-cpu/fp32/b1#{node}")
        results.append(row)
    text, md, _ = compare([tmp_path], split_by="node", out=tmp_path / "cmp")
    assert "[node=host-a]" in text and "[node=host-b]" in text
    assert "host-a cpu" in text and "host-b cpu" in text and "driver cpu" not in text
    assert "| 0.5 |" in text  # B's p50 over A's
    with pytest.raises(CompareError, match="at least two"):
        compare([tmp_path])
