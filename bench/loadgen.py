"""MLPerf LoadGen scenarios inside a cell's process: a system under test (SUT) that wraps one active engine, a
query sample library (QSL) of the cell's seeded batches, and LoadGen's own logs read back into row columns.

LoadGen decides when queries arrive and judges the run (VALID or INVALID, early stopping); the SUT only runs
``engine.infer`` on the batch a query names, on ``concurrency`` worker threads, and reports completion. A LoadGen
sample is one batch of the cell's batch size (``bench.scenarios``). The suite scores accuracy itself: in
accuracy mode the SUT keeps each sample's outputs and the caller compares them with the FP32 reference.
"""

from __future__ import annotations

import json
import math
import queue
import re
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.scenarios import MULTI_STREAM, OFFLINE, SERVER, SINGLE_STREAM, LoadSettings
from bench.timer import TimerSettings
from bench.timer import measure as time_calls

# The two logs kept per cell (LoadGen's names, which MLPerf's tools expect); the trace and the accuracy log
# (whose responses are empty: the suite scores outputs itself) are removed.
KEPT_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
# The share of the warm-up's closed-loop rate a server starts at (the peak search doubles it from there) or is
# scheduled at without --find-peak, and the offline scenario's expected rate over it (LoadGen sizes its one query
# from the expected rate: too low a guess ends the run before the minimum duration, which is INVALID).
SERVER_START_SHARE = 0.5
FIND_PEAK_START_SHARE = 0.25
OFFLINE_EXPECTED_SHARE = 1.25
# A peak that fails on its own run is retried this many times, each at this share of the rate before.
PEAK_RETRIES = 5
PEAK_STEP_DOWN = 0.9


class LoadgenError(RuntimeError):
    """LoadGen is missing, or the engine failed while serving queries."""


def loadgen():
    """The ``mlperf_loadgen`` module; LoadgenError (with the fix) where it is not installed."""
    try:
        import mlperf_loadgen
    except ImportError:
        raise LoadgenError(
            "MLPerf LoadGen is not installed (module mlperf_loadgen): reinstall the suite, pip install -e ."
        ) from None
    return mlperf_loadgen


class SystemUnderTest:
    """LoadGen's SUT and QSL over one active engine: query sample ``i`` is ``samples[i]`` (a feed dict), run by
    ``threads`` workers. While ``outputs`` is a dict (accuracy mode) each sample's outputs are kept in it. Use as
    a context manager: leaving it stops the workers and destroys LoadGen's objects."""

    def __init__(self, engine, samples: Sequence[Mapping[str, np.ndarray]], threads: int = 1):
        self.lg = loadgen()
        self.engine = engine
        self.samples = samples
        self.outputs: dict[int, dict[str, np.ndarray]] | None = None
        self.errors: list[str] = []
        self.served = 0
        self._count = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Engines whose calls share staged buffers run one query at a time; the threads still overlap the rest.
        self._infer_lock = None if engine.concurrent_infer else threading.Lock()
        self._workers = [threading.Thread(target=self._serve, daemon=True) for _ in range(threads)]
        for worker in self._workers:
            worker.start()
        self.sut = self.lg.ConstructSUT(self._issue, lambda: None)
        # Every sample is already in memory, so loading and unloading are no-ops.
        self.qsl = self.lg.ConstructQSL(len(samples), len(samples), lambda _: None, lambda _: None)

    def _issue(self, query_samples) -> None:
        # LoadGen's issuing thread must not wait for inference (a server's arrivals would be delayed by it).
        for sample in query_samples:
            self._queue.put((sample.id, sample.index))

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            query_id, index = item
            try:
                if self._infer_lock is None:
                    outputs = self.engine.infer(self.samples[index])
                else:
                    with self._infer_lock:
                        outputs = self.engine.infer(self.samples[index])
                if self.outputs is not None:
                    self.outputs[index] = outputs
            except Exception as exc:  # noqa: BLE001 - the query must still complete, or LoadGen waits forever
                self.errors.append(f"{type(exc).__name__}: {exc}")
            with self._count:
                self.served += 1
            self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(query_id, 0, 0)])

    def run(self, settings, log_dir: Path) -> dict[str, Any]:
        """One LoadGen test with ``settings`` (a ``TestSettings``), logging into ``log_dir``; returns the detail
        log's entries (``read_detail``). LoadgenError if the engine failed on any query."""
        log_dir.mkdir(parents=True, exist_ok=True)
        logs = self.lg.LogSettings()
        logs.log_output.outdir = str(log_dir)
        logs.log_output.copy_summary_to_stdout = False
        logs.enable_trace = False
        self.lg.StartTestWithLogSettings(self.sut, self.qsl, settings, logs)
        for path in log_dir.glob("mlperf_log_*"):
            if path.name not in KEPT_LOGS:
                path.unlink()
        if self.errors:
            raise LoadgenError(f"{len(self.errors)} queries failed; the first: {self.errors[0]}")
        return read_detail(log_dir / "mlperf_log_detail.txt")

    def __enter__(self) -> SystemUnderTest:
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join()
        self.lg.DestroyQSL(self.qsl)
        self.lg.DestroySUT(self.sut)


def read_detail(path: Path) -> dict[str, Any]:
    """The entries of LoadGen's ``mlperf_log_detail.txt``: {key: value} (the last of a repeated key), and every
    ``generic_message`` in order under that key."""
    entries: dict[str, Any] = {"generic_message": []}
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith(":::MLLOG "):
            continue
        try:
            record = json.loads(line.removeprefix(":::MLLOG "))
        except ValueError:
            continue
        if record.get("key") == "generic_message":
            entries["generic_message"].append(record.get("value"))
        else:
            entries[record.get("key")] = record.get("value")
    return entries


def warm_up(engine, sample: Mapping[str, np.ndarray], timer: TimerSettings) -> float:
    """Run ``sample`` for the timer's warm-up time and count, timing each call (``bench.timer.measure`` with the
    warm-up as its window); returns the median seconds per inference, which sizes LoadGen's expected rates."""
    window = TimerSettings(warmup_s=0, warmup_iters=0, duration_s=timer.warmup_s, min_iters=max(1, timer.warmup_iters))
    return time_calls(lambda: engine.infer(sample), window).p50 / 1e3


def test_settings(scenario: str, load: LoadSettings, mode: str, seconds: float, qps: float | None = None):
    """LoadGen's ``TestSettings`` for ``scenario`` in ``mode`` (``PerformanceOnly``, ``FindPeakPerformance``,
    ``AccuracyOnly``); ``seconds`` is the warm-up's seconds per inference, ``qps`` overrides the server's or the
    offline scenario's rate."""
    lg = loadgen()
    settings = lg.TestSettings()
    settings.scenario = {
        SINGLE_STREAM: lg.TestScenario.SingleStream,
        MULTI_STREAM: lg.TestScenario.MultiStream,
        SERVER: lg.TestScenario.Server,
        OFFLINE: lg.TestScenario.Offline,
    }[scenario]
    settings.mode = getattr(lg.TestMode, mode)
    settings.min_duration_ms = round(load.min_duration_s * 1000)
    # Unset: as few as the duration gives; a run whose early stopping wants more is repeated (``measure``).
    settings.min_query_count = load.min_query_count or 1
    fraction = load.percentile(scenario) / 100
    ns = max(1, round(seconds * 1e9))
    rate = 1 / seconds
    if scenario == SINGLE_STREAM:
        settings.single_stream_expected_latency_ns = ns
        settings.single_stream_target_latency_percentile = fraction
    elif scenario == MULTI_STREAM:
        settings.multi_stream_samples_per_query = load.samples_per_query
        settings.multi_stream_expected_latency_ns = ns * load.samples_per_query
        settings.multi_stream_target_latency_percentile = fraction
    elif scenario == SERVER:
        share = FIND_PEAK_START_SHARE if mode == "FindPeakPerformance" else SERVER_START_SHARE
        settings.server_target_qps = qps or load.target_qps or share * rate
        settings.server_target_latency_ns = round(load.latency_bound_ms * 1e6)
        settings.server_target_latency_percentile = fraction
        # The search's resolution: a tenth of the closed-loop rate's order of magnitude (1 QPS at 10-99 QPS).
        settings.server_find_peak_qps_decimals_of_precision = max(0, math.ceil(1 - math.log10(rate)))
    else:
        settings.offline_expected_qps = qps or load.target_qps or OFFLINE_EXPECTED_SHARE * rate
    return settings


def early_stopping_minimum(percentile: float) -> int:
    """The fewest queries with which LoadGen's early stopping can vouch for ``percentile`` (at 99% confidence)
    when none is over the bound: n with (percentile/100)**n <= 0.01 (459 for the 99th)."""
    return math.ceil(math.log(0.01) / math.log(percentile / 100))


def _needed_queries(entries: Mapping[str, Any]) -> int | None:
    """How many queries LoadGen's early stopping says a run needs, when that is all it lacked; else None."""
    if entries.get("early_stopping_met") is not False or _failures(entries, early_stopping=False):
        return None
    text = str(entries.get("early_stopping_result", ""))
    if more := re.search(r"run at least (\d+) more queries", text):
        done = re.search(r"Processed (\d+) queries", text)
        return int(more.group(1)) + (int(done.group(1)) if done else 0)
    if least := re.search(r"at least (\d+) queries", text):
        return int(least.group(1))
    return None


def _failures(entries: Mapping[str, Any], early_stopping: bool = True) -> list[str]:
    """Why LoadGen judged a run INVALID, one phrase per unmet requirement."""
    reasons = [str(entries.get("result_invalid_reason") or "").strip().rstrip(".")]
    checks = [
        ("result_min_duration_met", "the minimum duration was not reached"),
        ("result_min_queries_met", "fewer queries than the minimum query count"),
        ("result_perf_constraints_met", "the latency bound was exceeded at the target percentile"),
    ]
    if early_stopping:
        checks.append(("early_stopping_met", "early stopping not satisfied (see loadgen_early_stopping)"))
    reasons += [text for key, text in checks if entries.get(key) is False]
    return [r for r in reasons if r]


def peak_qps(entries: Mapping[str, Any]) -> float | None:
    """The QPS LoadGen's FindPeakPerformance mode settled on, from its messages; None if it found none."""
    for message in reversed(entries.get("generic_message", [])):
        if found := re.search(r"Found peak performance field: ([0-9.]+)", str(message)):
            return float(found.group(1))
    return None


class _Runs:
    """The performance runs of one cell: each logs into ``run-N/`` under the cell's log directory, and the last
    one's logs are copied up into it (``loadgen_logs`` points there; the history stays beside)."""

    def __init__(self, sut: SystemUnderTest, scenario: str, seconds: float, log_dir: Path):
        self.sut, self.scenario, self.seconds, self.log_dir = sut, scenario, seconds, log_dir
        self.count = 0

    def run(self, load: LoadSettings, mode: str = "PerformanceOnly", qps: float | None = None) -> dict[str, Any]:
        self.count += 1
        where = self.log_dir / f"run-{self.count}"
        entries = self.sut.run(test_settings(self.scenario, load, mode, self.seconds, qps), where)
        for name in KEPT_LOGS:
            shutil.copyfile(where / name, self.log_dir / name)
        return entries

    def judged(self, load: LoadSettings, qps: float | None = None) -> dict[str, Any]:
        """A performance run, repeated once where it is INVALID only for lack of queries (with the count early
        stopping names) or, offline, because it ended before its minimum duration (at twice the rate reached)."""
        entries = self.run(load, qps=qps)
        if entries.get("result_validity") == "VALID":
            return entries
        if needed := _needed_queries(entries):
            return self.run(LoadSettings(**{**load.as_dict(), "min_query_count": math.ceil(needed * 1.1)}), qps=qps)
        if self.scenario == OFFLINE and entries.get("result_min_duration_met") is False:
            measured = float(entries.get("result_samples_per_second") or 0)
            return self.run(load, qps=max(measured, 1 / self.seconds) * 2)
        return entries


def measure(
    sut: SystemUnderTest, scenario: str, load: LoadSettings, seconds: float, batch: int, log_dir: Path
) -> dict[str, Any]:
    """Run ``scenario``'s performance test and return the row's columns (``_Runs.judged``: repeated once with
    LoadGen's own figure where only queries or duration were short).

    A server with ``find_peak`` first runs LoadGen's FindPeakPerformance search. Its steps are short runs, and a
    short run at a rate above the model's capacity can stay under the bound because its queue has not built up
    yet (seen with BERT-base on two cores: a 3.4 QPS "peak" against 2.5 samples/s offline). So the peak is then
    run on its own, with as many queries as early stopping needs; while that run is INVALID the rate steps down
    by ``PEAK_STEP_DOWN`` (at most ``PEAK_RETRIES`` times). ``loadgen_target_qps`` is the rate of the final run,
    ``loadgen_search_qps`` the search's answer."""
    runs = _Runs(sut, scenario, seconds, log_dir)
    if not (scenario == SERVER and load.find_peak):
        entries = runs.judged(load)
        target = entries.get("effective_target_qps") if scenario == SERVER else None
        return _columns(entries, scenario, load, batch, runs.count, target)
    percentile = load.percentile(SERVER)
    # Each step of the search is judged on its own percentile: with a few dozen queries a p99 is luck, so every
    # step (and every confirming run) serves at least as many as early stopping needs when no query is late.
    steady = LoadSettings(
        **{**load.as_dict(), "min_query_count": load.min_query_count or early_stopping_minimum(percentile)}
    )
    searched = peak_qps(runs.run(steady, "FindPeakPerformance"))
    if searched is None:
        raise LoadgenError(
            f"no QPS met the {load.latency_bound_ms:g} ms bound at the {percentile:g}th percentile: raise "
            f"--latency-bound-ms (LoadGen's log: {log_dir})"
        )
    for step in range(PEAK_RETRIES + 1):
        target = searched * PEAK_STEP_DOWN**step
        entries = runs.judged(steady, qps=target)
        if entries.get("result_validity") == "VALID":
            break
    row = _columns(entries, scenario, load, batch, runs.count, target)
    row["loadgen_search_qps"] = searched
    return row


def _columns(
    entries: Mapping[str, Any], scenario: str, load: LoadSettings, batch: int, runs: int, target: float | None
) -> dict[str, Any]:
    """A performance run's row columns from its detail log."""
    percentile = load.percentile(scenario)
    per_query = "per_query_" if scenario == MULTI_STREAM else ""
    query = "query_" if scenario == MULTI_STREAM else ""

    def ms(key: str) -> float | None:
        value = entries.get(key)
        return value / 1e6 if isinstance(value, int | float) else None

    row: dict[str, Any] = {
        "loadgen_validity": entries.get("result_validity"),
        "loadgen_reason": "; ".join(_failures(entries)) or None if entries.get("result_validity") != "VALID" else None,
        "loadgen_early_stopping": " ".join(str(entries.get("early_stopping_result") or "").split()) or None,
        "loadgen_runs": runs,
        "loadgen_percentile": percentile if scenario != OFFLINE else None,
        "loadgen_latency_bound_ms": load.latency_bound_ms if scenario == SERVER else None,
        "loadgen_target_qps": target,
        "iterations": entries.get("result_query_count"),
    }
    if scenario != OFFLINE:
        # Per-query latency as LoadGen measured it: from the query's scheduled issue to its completion.
        row.update(
            latency_ms_mean=ms(f"result_mean_{query}latency_ns"),
            latency_ms_min=ms(f"result_min_{query}latency_ns"),
            latency_ms_max=ms(f"result_max_{query}latency_ns"),
            **{f"latency_ms_p{p}": ms(f"result_{p}.00_percentile_{per_query}latency_ns") for p in (50, 90, 95, 99)},
        )
        row["loadgen_percentile_latency_ms"] = ms(f"result_{percentile:.2f}_percentile_{per_query}latency_ns")
    if scenario == SINGLE_STREAM:
        row["queries_per_s"] = entries.get("result_qps_with_loadgen_overhead")
        samples_per_query = 1
    elif scenario == MULTI_STREAM:
        mean = row["latency_ms_mean"]
        row["queries_per_s"] = 1e3 / mean if mean else None
        samples_per_query = load.samples_per_query
    elif scenario == SERVER:
        row["queries_per_s"] = entries.get("result_completed_samples_per_sec")
        samples_per_query = 1
    else:
        rate = entries.get("result_samples_per_second")
        row["throughput_samples_per_s"] = rate * batch if rate else None
        return row
    qps = row["queries_per_s"]
    row["throughput_samples_per_s"] = qps * samples_per_query * batch if qps else None
    return row


def accuracy(sut: SystemUnderTest, scenario: str, load: LoadSettings, seconds: float, log_dir: Path) -> list[dict]:
    """Run LoadGen's accuracy mode (every sample once, in ``scenario``'s pattern); returns the outputs of each
    sample in sample order, for the suite's own metrics."""
    sut.outputs = outputs = {}
    try:
        sut.run(test_settings(scenario, load, "AccuracyOnly", seconds), log_dir)
    finally:
        sut.outputs = None
    missing = [i for i in range(len(sut.samples)) if i not in outputs]
    if missing:
        raise LoadgenError(f"LoadGen's accuracy run left {len(missing)} samples without outputs")
    return [outputs[i] for i in range(len(sut.samples))]
