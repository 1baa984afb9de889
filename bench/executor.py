"""Executors: where a plan's work runs. ``LocalExecutor`` runs it on this machine, each piece in a child process
(``bench.isolation``): artifact builds, then FLOP counts and FP32 references, ``jobs`` models at a time; cells
strictly one at a time, after all of those, so that no two timings overlap and nothing else runs beside them.
A cluster executor (``cluster.executor.RayExecutor``) offers the same methods (build, facts, roofs, measure_all,
availability, node_environments).
"""

from __future__ import annotations

import heapq
import logging
import math
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cell import Cell, run_cell
from bench.isolation import kill_children, run_isolated
from bench.model_facts import count_flops, reference_outputs
from bench.plan import ArtifactJob
from bench.timer import TimerSettings
from common.errors import Unsupported
from onnx_models.artifacts import (
    Artifact,
    CalibrationSettings,
    ExportSettings,
    UnsupportedPrecision,
    ensure,
    slim_fp32,
)

log = logging.getLogger(__name__)

# The exceptions a build raises for a conversion the model cannot undergo (its cells then ``unsupported``), by the
# name the child process reports: a brought-in model's failed conversion, and a builder's refusal (an INT8 graph
# that runs none of its MACs in int8).
UNSUPPORTED_ERRORS = frozenset({UnsupportedPrecision.__name__, Unsupported.__name__})

# How long one artifact build, FLOP count or reference computation may take in its child process.
BUILD_TIMEOUT_S = 3600.0
PEAK_TIMEOUT_S = 600.0


@dataclass
class BuildOutcome:
    """What a round of builds left behind: {artifact: reason} for failures and for conversions a brought-in
    model cannot undergo (``unsupported``); everything else is in the store."""

    failures: dict[Artifact, str] = field(default_factory=dict)
    unsupported: dict[Artifact, str] = field(default_factory=dict)

    def problem(self, artifact: Artifact) -> tuple[str, str] | None:
        """(``failed`` or ``unsupported``, the reason) for ``artifact``, or None when it was built."""
        if artifact in self.unsupported:
            return "unsupported", self.unsupported[artifact]
        if artifact in self.failures:
            return "failed", self.failures[artifact]
        return None


@dataclass(frozen=True)
class CellRequest:
    """A cell to measure: the cell, its FP32 reference outputs (what the executor's ``facts`` gave, or None: no
    accuracy) and the directory for a LoadGen scenario's logs (None for the closed loop)."""

    cell: Cell
    reference: Any = None
    log_dir: Path | None = None


@dataclass
class CellOutcome:
    """How a requested cell ended: ``measured`` columns (with ``samples_ms``) or the ``error`` that failed it, and
    ``where`` it ran (the ``node`` and ``device`` columns, as far as they are known)."""

    request: CellRequest
    measured: dict[str, Any] | None
    error: str | None
    where: dict[str, Any] = field(default_factory=dict)


class LocalExecutor:
    """Runs builds, analyses and cells in child processes on this machine; ``jobs`` builds at once."""

    def __init__(self, jobs: int = 1, say: Callable[[str], None] | None = None):
        self.jobs = max(1, jobs)
        self.say = say or (lambda line: print(line, file=sys.stderr))

    # -------------------------------------------------------------------------------------------- builds

    def build(
        self,
        jobs: Iterable[ArtifactJob],
        export: ExportSettings,
        calib: CalibrationSettings,
        title: str = "artifacts",
    ) -> BuildOutcome:
        """Build every job's artifacts, each in a child process, ``self.jobs`` at once.

        A model's FP32 export comes first; then its graph is slimmed once (``cleaned_fp32``), and then its FP16
        and INT8 conversions are independent tasks that may run side by side. Exports start first, in the
        jobs' order; then conversions, the largest FP32 file first, so that the longest chains (BERT-large,
        NMT) start early and small ones fill the end instead of one long chain running alone while the other
        cores idle. Builds are mostly single-threaded (exporters, quantizers), so two of them use two cores.
        An interrupt (Ctrl-C, SIGTERM) kills every running build before it propagates, and no further one
        starts."""
        from tqdm import tqdm

        jobs = list(jobs)
        outcome = BuildOutcome()
        bar = tqdm(total=sum(len(j.artifacts) for j in jobs), desc=title, unit="artifact", file=sys.stderr)
        # A task is (model, an artifact to build), or (model, None): the slimming step between a model's export
        # and its conversions. The heap holds (priority, task): exports by job order, then conversions by FP32 size,
        # largest first.
        ready: list[tuple[tuple, tuple[str, Artifact | None]]] = [
            ((0, i), (j.model, j.artifacts[0])) for i, j in enumerate(jobs)
        ]
        later = {j.model: list(j.artifacts[1:]) for j in jobs}
        order = {j.model: i for i, j in enumerate(jobs)}
        base = {j.model: j.artifacts[0] for j in jobs}
        running = 0
        changed = threading.Condition()
        # Set on an interrupt: a worker whose build was just killed must not start another.
        stop = threading.Event()

        def build_one(model: str, artifact: Artifact | None) -> None:
            if artifact is None:
                size = base[model].size
                if _clean_graph_stored(model, size):
                    return
                bar.set_postfix_str(f"{model} slimming")
                result = run_isolated(slim_fp32, {"model": model, "size": size}, BUILD_TIMEOUT_S)
                if not result.ok:  # each conversion then slims the graph itself, and fails with its own reason
                    log.debug("slimming %s (%s) failed: %s", model, size, result.error)
                return
            name = artifact.name
            bar.set_postfix_str(f"{model} {name}")
            if base[model] in outcome.failures:
                outcome.failures[artifact] = outcome.failures[base[model]]
                bar.update()
                return
            result = run_isolated(ensure, {"artifact": artifact, "export": export, "calib": calib}, BUILD_TIMEOUT_S)
            if not result.ok and result.error_type in UNSUPPORTED_ERRORS:
                outcome.unsupported[artifact] = result.message
                tqdm.write(f"{model} ({artifact.size}) {name}: unsupported: {result.message}", file=sys.stderr)
            elif not result.ok:
                outcome.failures[artifact] = f"building {name} failed: {result.error}"
                tqdm.write(f"{model} ({artifact.size}) {name}: FAILED: {result.error}", file=sys.stderr)
                log.debug(result.detail)
            bar.update()

        def follow_ups(model: str, artifact: Artifact | None) -> list[tuple[str, Artifact | None]]:
            """The tasks that a finished task of ``model`` makes ready, most urgent first."""
            if artifact == base[model] and later[model]:
                if base[model] in outcome.failures:
                    return [(model, a) for a in later.pop(model)]
                return [(model, None)]
            if artifact is None:
                return [(model, a) for a in later.pop(model)]
            return []

        def worker(_: int) -> None:
            nonlocal running
            while True:
                with changed:
                    while not ready and running and not stop.is_set():
                        changed.wait(0.5)
                    if stop.is_set() or not ready:
                        changed.notify_all()
                        return
                    _, task = heapq.heappop(ready)
                    running += 1
                try:
                    build_one(*task)
                finally:
                    model = task[0]
                    size_rank = -_fp32_bytes(model, base[model].size)
                    with changed:
                        running -= 1
                        for k, follow_up in enumerate(follow_ups(model, task[1])):
                            heapq.heappush(ready, ((1, size_rank, order[model], k), follow_up))
                        changed.notify_all()

        try:
            self._each(list(range(self.jobs)), worker, stop)
        finally:
            bar.close()
        return outcome

    def _each(self, items: list, work: Callable[[Any], None], stop: threading.Event) -> None:
        """``work(item)`` for every item, ``self.jobs`` at once in worker threads (each item's work runs in
        child processes). An interrupt (Ctrl-C, SIGTERM) sets ``stop``, kills every running child and
        propagates; work not yet started is cancelled."""
        if self.jobs == 1:
            for item in items:
                work(item)
            return
        with ThreadPoolExecutor(self.jobs, thread_name_prefix="build") as pool:
            futures = [pool.submit(work, item) for item in items]
            try:
                # A bounded wait in a loop: the main thread stays interruptible by Ctrl-C and SIGTERM.
                pending = set(futures)
                while pending:
                    _, pending = wait(pending, timeout=0.5)
            except BaseException:
                stop.set()
                for future in futures:
                    future.cancel()
                kill_children()
                raise
            for future in futures:
                future.result()

    # ------------------------------------------------------------------------------------------ analyses

    def facts(
        self, batches: dict[str, list[int]], size: str, skip: Iterable[str], accuracy_samples: int | None
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """FLOPs/params/bytes and the FP32 reference outputs' path (of ``accuracy_samples`` samples; None: no
        references) for each (model, batch), in children, ``self.jobs`` models at a time (no timing runs
        meanwhile); models in ``skip`` (whose FP32 failed) are left out, and a failed count or reference leaves
        its reason in the entry (``flops_error``, ``reference_error``) for the cells' rows."""
        from tqdm import tqdm

        skip = set(skip)
        facts: dict[tuple[str, int], dict[str, Any]] = {}
        # Largest FP32 file first: the biggest models take longest to count and to run, and started last they
        # would leave the other workers idle at the end.
        todo = sorted((m for m in batches if m not in skip), key=lambda m: -_fp32_bytes(m, size))
        bar = tqdm(total=len(todo), desc="analysis", unit="model", file=sys.stderr)
        stop = threading.Event()

        def one_model(model: str) -> None:
            if stop.is_set():
                return
            bar.set_postfix_str(model)
            counted = run_isolated(
                count_flops, {"model": model, "size": size, "batches": batches[model]}, BUILD_TIMEOUT_S
            )
            for batch in batches[model]:
                # Each worker fills only its own model's entries, so the shared dict needs no lock.
                entry = facts.setdefault((model, batch), {})
                if counted.ok:
                    entry.update(counted.value[batch])
                else:
                    entry["flops_error"] = counted.error
                    tqdm.write(f"{model}: FLOP count failed: {counted.error}", file=sys.stderr)
                if stop.is_set() or accuracy_samples is None:
                    continue
                ref = run_isolated(
                    reference_outputs,
                    {"model": model, "size": size, "batch": batch, "samples": accuracy_samples},
                    BUILD_TIMEOUT_S,
                )
                if ref.ok:
                    entry["reference"] = ref.value
                else:
                    entry["reference_error"] = ref.error
                    tqdm.write(f"{model} b{batch}: FP32 reference failed: {ref.error}", file=sys.stderr)
            bar.update()

        try:
            self._each(todo, one_model, stop)
        finally:
            bar.close()
        return facts

    def roofs(self, engine: str, threads: int | None, replace: str | None = None) -> str | None:
        """Measure ``engine``'s compute and bandwidth roofs on this machine (quick) in a child and cache them
        (``bench.peak``) for reports; returns None, or the reason they could not be measured. ``replace`` says
        why the cached roofs are wrong: the new ones then replace them, even a full measurement."""
        from bench.peak import measure_and_cache

        kwargs = {"engine": engine, "threads": threads, "quick": True, "replace": replace}
        result = run_isolated(measure_and_cache, kwargs, PEAK_TIMEOUT_S)
        return None if result.ok else result.error

    # --------------------------------------------------------------------------------------------- cells

    def measure(
        self, cell: Cell, config, reference: str | None, log_dir: Path | None = None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Measure one cell in a child: (the measured columns with ``samples_ms``, None) or (None, the reason
        it failed). ``log_dir`` receives a LoadGen scenario's logs."""
        kwargs = dict(
            cell=cell,
            timer=config.timer,
            accuracy_samples=config.accuracy_samples,
            engine_options=config.engine_options.as_dict(),
            reference=reference,
            load=config.load,
            log_dir=str(log_dir) if log_dir else None,
        )
        result = run_isolated(run_cell, kwargs, config.cell_timeout_s)
        return (result.value, None) if result.ok else (None, result.error)

    def measure_all(self, requests: Iterable[CellRequest], config) -> Iterator[CellOutcome]:
        """Measure the requested cells, one timing at a time, yielding each outcome as it ends (so the caller
        writes it before the next starts). With ``config.rounds`` above 1 the closed-loop cells of one model,
        size, batch size and concurrency (its precisions and engines) are measured in interleaved rounds
        (``measure_rounds``) and end together; every other cell runs in one window of its own."""
        host = socket.gethostname()
        for group in interleave_groups(requests, config.rounds):
            if not in_rounds(group[0].cell, config.rounds):
                request = group[0]
                measured, error = self.measure(request.cell, config, request.reference, request.log_dir)
                yield CellOutcome(request, measured, error, {"node": host})
                continue
            for request, measured, error in measure_rounds(group, config):
                yield CellOutcome(request, measured, error, {"node": host})

    def availability(self, engine: str) -> str | None:
        """None when ``engine`` can run on this machine, else the reason it cannot."""
        import engines

        return engines.availability(engine)

    def node_environments(self) -> dict[str, dict[str, Any]]:
        """The environments of other machines that measure cells: none (this machine's is env.json)."""
        return {}


# Untimed runs at the start of the first round: since the cell's warm-up the other cells of its group were
# loaded, checked and warmed up, evicting its caches (the first round of the detectors and BERT ran 9-20% slower
# than the others without one). Later rounds showed no such offset, and a run before each of them would double
# the inferences of the models whose rounds hold one (a 3.8 s NMT FP16 inference: 1 s windows, 5 rounds).
REWARM_RUNS = 1


def in_rounds(cell: Cell, rounds: int) -> bool:
    """Whether ``cell`` is timed in interleaved rounds (``measure_rounds``): a closed-loop cell when ``rounds`` is
    above 1; LoadGen scenarios and ``--rounds 1`` run one window per cell (``run_cell``)."""
    return rounds > 1 and cell.scenario == "latency"


def interleave_groups(requests: Iterable[CellRequest], rounds: int) -> list[list[CellRequest]]:
    """``requests`` grouped for measurement, in the order their first cells come: with ``rounds`` above 1, the
    closed-loop cells that are compared with each other (one model, size, batch size and concurrency: its
    precisions and engines) form one group; any other cell is a group of its own."""
    groups: dict[Any, list[CellRequest]] = {}
    for index, request in enumerate(requests):
        cell = request.cell
        if in_rounds(cell, rounds):
            key: Any = (cell.model, cell.size, cell.batch_size, cell.concurrency)
        else:
            key = index
        groups.setdefault(key, []).append(request)
    return list(groups.values())


def measure_rounds(group: list[CellRequest], config) -> list[tuple[CellRequest, dict[str, Any] | None, str | None]]:
    """Measure ``group``'s closed-loop cells in ``config.rounds`` interleaved rounds: each cell's engine is loaded,
    checked for accuracy and warmed up in a process of its own (``bench.cell.CellSession`` in a
    ``bench.isolation.Worker``; all of them at once), then round after round each cell times a share of the window
    (``duration_s`` and ``min_iters`` divided by the rounds; the first after ``REWARM_RUNS`` untimed runs) while
    the others wait, in an order rotated every round, so that the machine's drift falls on every cell of the group
    alike. Returns (request, measured columns or None, the reason it failed or None) per cell, in the group's
    order; the columns hold every round's p50 (``round_p50_ms``) and the group's id (``rounds_group``), which pairs
    them for speed-up intervals."""
    import secrets

    from bench.cell import CellSession
    from bench.isolation import Worker

    timer, timeout = config.timer, config.cell_timeout_s
    share = TimerSettings(0.0, 0, timer.duration_s / config.rounds, max(1, math.ceil(timer.min_iters / config.rounds)))
    group_id = secrets.token_hex(6)
    starting: dict[int, Worker] = {}
    workers: dict[int, Worker] = {}
    errors: dict[int, str] = {}
    try:
        # The cells' processes start together: loading, the accuracy check and the warm-up are not timed, and
        # their interpreters' start-up and imports, single-threaded, overlap.
        for index, request in enumerate(group):
            kwargs = dict(
                cell=request.cell,
                timer=timer,
                accuracy_samples=config.accuracy_samples,
                engine_options=config.engine_options.as_dict(),
                reference=request.reference,
            )
            starting[index] = Worker(CellSession, kwargs)
        for index, worker in starting.items():
            started = worker.start(timeout)
            if started.ok:
                workers[index] = worker
            else:
                errors[index] = started.error
        for number in range(config.rounds):
            live = sorted(workers)
            turn = number % len(live) if live else 0
            for index in live[turn:] + live[:turn]:
                arguments = {"seconds": share.duration_s, "min_iters": share.min_iters}
                arguments["rewarm"] = 0 if number else REWARM_RUNS
                done = workers[index].call("round", arguments, timeout)
                if not done.ok:
                    errors[index] = f"round {number + 1} of {config.rounds}: {done.error}"
                    workers.pop(index).close()
        measured: dict[int, dict[str, Any]] = {}
        for index, worker in sorted(workers.items()):
            finished = worker.call("finish", {}, timeout)
            if finished.ok:
                measured[index] = {**finished.value, "rounds_group": group_id}
            else:
                errors[index] = finished.error
    finally:
        for worker in starting.values():
            worker.close()
    return [(request, measured.get(index), errors.get(index)) for index, request in enumerate(group)]


def _fp32_bytes(model: str, size: str) -> int:
    """The size of ``model``'s stored FP32 file (0 when there is none)."""
    from onnx_models.store import ModelStore

    try:
        return ModelStore(model, size).path("fp32").stat().st_size
    except OSError:
        return 0


def _clean_graph_stored(model: str, size: str) -> bool:
    """Whether the store holds a slimmed graph of ``model``'s FP32 file (its bytes are checked when a conversion
    reads it): then no child is started to make one."""
    from onnx_models.artifacts import clean_cache_name
    from onnx_models.store import ModelStore

    store = ModelStore(model, size)
    return store.entry("fp32") is not None and store.has_cache(clean_cache_name(store))


def build_models(
    models: Iterable[str],
    wanted: Iterable[Artifact],
    export: ExportSettings,
    calib: CalibrationSettings,
    title: str,
    jobs: int = 1,
) -> dict[Artifact, str]:
    """Build ``wanted`` (artifacts of any of ``models``; each model's FP32 export always), each in a child process,
    ``jobs`` at once; returns {artifact: reason} for the ones that failed or cannot be converted. What
    ``export``, ``calibrate`` and ``flops`` build before they print."""
    from bench.plan import artifact_jobs

    wanted = list(wanted)
    work = artifact_jobs([a for model in models for a in wanted if a.model == model])
    outcome = LocalExecutor(jobs).build(work, export, calib, title)
    return {**outcome.failures, **outcome.unsupported}
