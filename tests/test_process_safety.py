"""Faults 1 and 5 of issue 10: deletions stay inside the directory the suite owns, and child processes never
outlive the run that started them (SIGKILL, SIGTERM, an interrupted wait).

The deletion tests run in a private store (``AIMATRIX_STORE`` set to a temporary directory with a sentinel
file at its root), so even the unfixed code could only ever delete that temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.isolation import run_isolated
from common.paths import UnsafeDeleteError, remove_owned
from onnx_models import byo
from tests.child_targets import write_pid_and_sleep

REPO = Path(__file__).resolve().parents[1]
INTERRUPTED = "interrupted; finished cells are in results.jsonl (use --resume)"
needs_posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals (SIGKILL, SIGTERM)")


# ------------------------------------------------------------------------------------ fault 1: byo deletions


@pytest.fixture
def private_store(tmp_path, monkeypatch) -> Path:
    """A store root of its own holding ``sentinel.txt``, which no registration may ever remove."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "sentinel.txt").write_text("keep")
    monkeypatch.setenv("AIMATRIX_STORE", str(store))
    return store


def scale_model(path: Path, scale: float) -> Path:
    """y = x * scale with x of shape [N, 4]: a valid ONNX file whose bytes differ with ``scale``."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.full(4, scale, np.float32), "s")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("filename", ["...onnx", "..onnx", "....onnx"])
def test_byo_dots_only_stem_never_deletes_outside_its_entry(tmp_path, private_store, filename):
    sources = tmp_path / "sources"
    sources.mkdir()
    other = byo.register(scale_model(sources / "other.onnx", 3.0))
    model = sources / filename
    first = byo.register(scale_model(model, 1.0))
    # Different content: the second registration removes the first one's entry, and only that.
    second = byo.register(scale_model(model, 2.0))

    assert (private_store / "sentinel.txt").read_text() == "keep"
    assert byo.spec_path(other.name).is_file(), "another brought-in model's entry was removed"
    stem = second.name.removeprefix(byo.PREFIX)
    assert second.name == first.name and stem not in ("", ".", "..")
    assert "/" not in stem and "\\" not in stem and not stem.startswith(".")
    entry = byo.spec_path(second.name).resolve().parent
    assert entry.parent == (private_store / "byo").resolve()
    assert byo.load(second.name).version == second.version != first.version


def test_remove_owned_refuses_paths_outside_the_owner(tmp_path):
    owner = tmp_path / "store" / "byo"
    (owner / "model" / "full").mkdir(parents=True)
    (owner / "model" / "spec.json").write_text("{}")
    outside = tmp_path / "keep"
    outside.mkdir()
    (owner / "link").symlink_to(outside, target_is_directory=True)

    for path in (owner, owner / ".", owner / "..", owner / "model" / ".." / "..", outside, owner / "link"):
        with pytest.raises(UnsafeDeleteError):
            remove_owned(path, owner)
    assert outside.is_dir() and (owner / "model" / "spec.json").is_file()

    remove_owned(owner / "model" / "spec.json", owner)
    remove_owned(owner / "model", owner)
    remove_owned(owner / "never-there", owner)  # nothing to remove is not an error
    assert not (owner / "model").exists() and owner.is_dir()


# --------------------------------------------------------------------------------- fault 5: orphaned children


def wait_for(predicate, timeout_s: float, interval_s: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout_s`` passes (None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return None


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs: it does not exist or is a zombie waiting for whoever reaps it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pid(path: Path) -> int | None:
    """The pid ``tests.child_targets:write_pid_and_sleep`` wrote, or None while it has not."""
    return int(path.read_text()) if path.is_file() else None


def kill_leftovers(pids) -> None:
    """Kill processes this test started that are still running, so a failing test leaves no orphans."""
    for pid in pids:
        if not gone(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@needs_posix_signals
def test_child_dies_when_parent_is_sigkilled(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = (
        "from bench.isolation import run_isolated\n"
        "from tests.child_targets import write_pid_and_sleep\n"
        f"run_isolated(write_pid_and_sleep, {{'pid_file': {str(pid_file)!r}}}, 120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    child = None
    try:
        child = wait_for(lambda: read_pid(pid_file), 30)
        assert child is not None, "the child never started"
        parent.kill()
        parent.wait(10)
        assert wait_for(lambda: gone(child), 5), f"child {child} outlived its SIGKILLed parent"
    finally:
        parent.kill()
        kill_leftovers([child] if child else [])


class _Interrupted(Exception):
    pass


@needs_posix_signals
def test_interrupted_wait_kills_the_child_at_once(tmp_path):
    pid_file = tmp_path / "child.pid"
    child: list[int] = []
    sent: list[float] = []

    def interrupt_when_child_runs() -> None:
        pid = wait_for(lambda: read_pid(pid_file), 30)
        if pid:
            child.append(pid)
        sent.append(time.monotonic())
        # A real signal, so the main thread's blocking wait on the pipe is interrupted as by Ctrl-C.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def raise_interrupted(signum, frame):
        raise _Interrupted

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    thread = threading.Thread(target=interrupt_when_child_runs)
    try:
        thread.start()
        with pytest.raises(_Interrupted):
            run_isolated(write_pid_and_sleep, {"pid_file": str(pid_file)}, 120)
        returned = time.monotonic()
        thread.join()
        assert child, "the child never started"
        assert gone(child[0]), "the child still runs after the interrupted wait returned"
        # Killed at once, not waited for (the child sleeps 60 s; the old wait gave it 30 s before a kill).
        assert returned - sent[0] < 5, f"the interrupted wait took {returned - sent[0]:.0f} s to return"
    finally:
        thread.join()
        signal.signal(signal.SIGUSR1, previous)
        kill_leftovers(child)


def spawned_children(pid: int) -> list[psutil.Process]:
    """The multiprocessing 'spawn' children of ``pid`` (not its resource tracker)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for process in children:
        try:
            if any("spawn_main" in part for part in process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


@needs_posix_signals
@pytest.mark.parametrize("models, jobs", [("wide_deep", "1"), ("nmt,bert", "2")])
def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, models, jobs):
    """Also with two builds at once in worker threads, where the interrupt reaches only the main thread."""
    env = dict(os.environ, AIMATRIX_STORE=str(tmp_path / "store"), AIMATRIX_CACHE=str(tmp_path / "cache"))
    command = [
        sys.executable,
        "suite.py",
        "run",
        "--jobs",
        jobs,
        "--models",
        models,
        "--size",
        "tiny",
        "--engines",
        "ort-cpu",
        "--precisions",
        "fp32",
        "--batch-sizes",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    suite = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    descendants: list[int] = []
    try:
        # The first spawned child is the export of the empty store's artifact.
        started = int(jobs)
        assert wait_for(lambda: len(spawned_children(suite.pid)) >= started, 60), "the run never started its builds"
        descendants = [p.pid for p in psutil.Process(suite.pid).children(recursive=True)]
        suite.send_signal(signal.SIGTERM)
        # The builds take longer than this (NMT's and BERT's exports): ending within it means they were killed,
        # not waited for, also those running in worker threads.
        try:
            _, stderr = suite.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            pytest.fail("the run had not ended 8 s after SIGTERM (or an orphan holds its stderr)")
        assert suite.returncode == 130, stderr[-2000:]
        assert INTERRUPTED in stderr
        still = [pid for pid in descendants if not wait_for(lambda pid=pid: gone(pid), 5)]
        assert not still, f"children {still} outlived the SIGTERMed run"
    finally:
        # Leftovers first: an orphan holding the run's stdout and stderr would keep communicate() waiting.
        suite.kill()
        kill_leftovers(descendants)
        suite.communicate()


def test_an_interrupt_starts_no_further_build(monkeypatch):
    """With builds in worker threads, the interrupt kills the running ones; the workers whose build was killed
    must not then start their model's next artifact (fp16, int8 after an interrupted fp32 export)."""
    import bench.executor as executor
    from bench.isolation import ChildResult
    from bench.plan import ArtifactJob
    from onnx_models.artifacts import CalibrationSettings, ExportSettings, resolve

    started, release = [], threading.Event()

    def build(function, kwargs, timeout_s):
        started.append((kwargs["artifact"].model, kwargs["artifact"].precision))
        if len(started) == 2:
            # Both workers are busy: interrupt the main thread, as Ctrl-C does.
            os.kill(os.getpid(), signal.SIGINT)
        release.wait(10)
        return ChildResult(False, error="killed by signal 9")

    def kill_children():
        release.set()
        return 2

    monkeypatch.setattr(executor, "run_isolated", build)
    monkeypatch.setattr(executor, "kill_children", kill_children)
    jobs = [
        ArtifactJob(m, tuple(resolve(m, "tiny", p) for p in ("fp32", "fp16", "int8")))
        for m in ("resnet50", "googlenet")
    ]
    # Ctrl-C as a fresh `suite.py` process meets it: SIGINT unblocked and Python's handler in place. In two full
    # runs of the suite (alone this test passed) the signal sent below had no effect at all, as if blocked or
    # handled elsewhere by what earlier tests left in this process; what was found is in the failure message.
    found = {"blocked": signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []), "handler": None}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    found["handler"] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            executor.LocalExecutor(jobs=2, say=lambda line: None).build(jobs, ExportSettings(), CalibrationSettings())
            pytest.fail(f"no KeyboardInterrupt; before the test SIGINT was {found}")
    finally:
        signal.signal(signal.SIGINT, found["handler"])
        if found["blocked"]:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    assert sorted(started) == [("googlenet", "fp32"), ("resnet50", "fp32")]
