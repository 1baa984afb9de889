"""Interleaved timing rounds (issue 33): a cell kept warm in a process of its own (``bench.isolation.Worker``),
the cells of one model grouped (``interleave_groups``) and timed in turns whose order rotates every round
(``measure_rounds``), one cell's failure leaving the others' rows whole."""

from __future__ import annotations

from types import SimpleNamespace

import psutil
import pytest

from bench import isolation
from bench.cell import Cell
from bench.executor import REWARM_RUNS, CellRequest, interleave_groups, measure_rounds
from bench.isolation import Worker
from bench.timer import TimerSettings
from tests.child_targets import Counter

# ------------------------------------------------------------------------------------------------ Worker


def test_worker_keeps_its_object_warm_between_calls():
    worker = Worker(Counter, {"start": 10})
    try:
        assert worker.start(60).ok
        first, second = worker.call("add", {"n": 1}, 30), worker.call("add", {"n": 2}, 30)
        assert first.ok and second.ok
        # One object in one process: the second call sees the first's state.
        assert first.value[0] == 11 and second.value[0] == 13 and first.value[1] == second.value[1]
        failed = worker.call("fail", {}, 30)
        assert not failed.ok and failed.error == "ValueError: no such round" and "Traceback" in failed.detail
        # A call that raised leaves the object usable.
        assert worker.call("add", {"n": 1}, 30).value[0] == 14
    finally:
        worker.close()
    assert worker.call("add", {"n": 1}, 30).error == "the worker process has ended"
    worker.close()  # twice is harmless


def test_worker_that_cannot_start_says_why():
    worker = Worker(Counter, {"start": 0, "fail_to_start": True})
    started = worker.start(60)
    assert not started.ok and started.error == "RuntimeError: engine would not load"
    assert worker.closed


def test_worker_crash_and_hang_end_the_child():
    crashed = Worker(Counter, {"start": 0})
    assert crashed.start(60).ok
    result = crashed.call("crash", {}, 30)
    assert not result.ok and "SIGABRT" in result.error and crashed.closed
    assert not crashed._process.is_alive()

    hung = Worker(Counter, {"start": 0})
    assert hung.start(60).ok
    pid = hung.call("add", {"n": 0}, 30).value[1]
    result = hung.call("hang", {}, 0.5)
    assert not result.ok and result.error == "timed out after 0.5 s" and hung.closed
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert hung._process not in isolation._LIVE


# ------------------------------------------------------------------------------------------------- groups


def request(model: str, precision: str, batch: int = 1, scenario: str = "latency", engine: str = "ort-cpu"):
    return CellRequest(Cell(model, "tiny", engine, precision, batch, scenario))


def ids(groups):
    return [[r.cell.id for r in group] for group in groups]


def test_interleave_groups_pairs_what_is_compared():
    requests = [
        request("a", "fp32"),
        request("b", "fp32"),
        request("a", "fp16"),
        request("a", "int8", engine="ort-openvino"),
        request("a", "fp32", batch=8),
        request("a", "fp16", scenario="server"),
        request("b", "int8"),
    ]
    groups = interleave_groups(requests, rounds=3)
    # One model, size, batch and concurrency: its precisions and engines together, in the order they first come;
    # a LoadGen scenario runs on its own.
    assert ids(groups) == [
        ["a/tiny/ort-cpu/fp32/b1", "a/tiny/ort-cpu/fp16/b1", "a/tiny/ort-openvino/int8/b1"],
        ["b/tiny/ort-cpu/fp32/b1", "b/tiny/ort-cpu/int8/b1"],
        ["a/tiny/ort-cpu/fp32/b8"],
        ["a/tiny/ort-cpu/fp16/b1/server"],
    ]
    # One round: every cell its own window, as before rounds existed.
    assert ids(interleave_groups(requests, rounds=1)) == [[r.cell.id] for r in requests]


# ------------------------------------------------------------------------------------------------- rounds


class FakeWorker:
    """Stands in for ``Worker`` in the same process: records every call in ``LOG`` and fails where told."""

    LOG: list[tuple[str, str, dict]] = []
    FAIL: dict[tuple[str, str], str] = {}

    def __init__(self, factory, kwargs):
        self.name = kwargs["cell"].precision
        self.rounds = 0
        self.closed = False

    def _answer(self, method: str, value=None):
        problem = self.FAIL.get((self.name, method)) or self.FAIL.get((self.name, f"{method}{self.rounds}"))
        if problem:
            return isolation.ChildResult(False, error=problem)
        return isolation.ChildResult(True, value)

    def start(self, timeout_s):
        self.LOG.append((self.name, "start", {}))
        return self._answer("start")

    def call(self, method, kwargs, timeout_s):
        assert not self.closed
        self.LOG.append((self.name, method, kwargs))
        if method == "round":
            self.rounds += 1
            return self._answer("round", 1.0)
        return self._answer(method, {"latency_ms_p50": 1.0, "rounds": self.rounds})

    def close(self):
        self.closed = True


@pytest.fixture
def fake_worker(monkeypatch):
    FakeWorker.LOG, FakeWorker.FAIL = [], {}
    monkeypatch.setattr(isolation, "Worker", FakeWorker)
    return FakeWorker


def config(rounds: int):
    return SimpleNamespace(
        timer=TimerSettings(0.25, 1, 1.0, 4),
        rounds=rounds,
        cell_timeout_s=60,
        accuracy_samples=2,
        engine_options=SimpleNamespace(as_dict=dict),
    )


def test_rounds_take_turns_in_a_rotating_order(fake_worker):
    group = [request("a", "fp32"), request("a", "fp16"), request("a", "int8")]
    results = measure_rounds(group, config(3))
    rounds = [(name, args) for name, method, args in fake_worker.LOG if method == "round"]
    assert [name for name, _ in rounds] == [
        *("fp32", "fp16", "int8"),
        *("fp16", "int8", "fp32"),
        *("int8", "fp32", "fp16"),
    ]
    # Each round is a third of the window and of the iterations (rounded up); the first warms the engine up again
    # (the other cells loaded and warmed up since its warm-up).
    assert [args["seconds"] for _, args in rounds] == [pytest.approx(1 / 3)] * 9
    assert {args["min_iters"] for _, args in rounds} == {2}
    assert [args["rewarm"] for _, args in rounds] == [REWARM_RUNS] * 3 + [0] * 6
    assert [error for _, _, error in results] == [None] * 3
    groups = {measured["rounds_group"] for _, measured, _ in results}
    assert len(groups) == 1 and all(measured["rounds"] == 3 for _, measured, _ in results)
    assert measure_rounds(group, config(3))[0][1]["rounds_group"] not in groups


def test_one_cell_failing_leaves_the_others_measured(fake_worker):
    fake_worker.FAIL = {("fp16", "round2"): "child process killed by SIGKILL", ("int8", "start"): "no INT8 kernels"}
    group = [request("a", "fp32"), request("a", "fp16"), request("a", "int8")]
    results = measure_rounds(group, config(3))
    by_precision = {req.cell.precision: (measured, error) for req, measured, error in results}
    assert by_precision["int8"] == (None, "no INT8 kernels")
    assert by_precision["fp16"] == (None, "round 2 of 3: child process killed by SIGKILL")
    measured, error = by_precision["fp32"]
    assert error is None and measured["rounds"] == 3
    # The failed cell takes no more turns; the one that never started takes none.
    turns = [name for name, method, _ in fake_worker.LOG if method == "round"]
    assert turns == ["fp32", "fp16", "fp16", "fp32", "fp32"]
