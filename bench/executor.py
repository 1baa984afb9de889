"""Executors: where a plan's work runs. ``LocalExecutor`` runs it on this machine, each piece in a child process
(``bench.isolation``): artifact builds, then FLOP counts and FP32 references, ``jobs`` models at a time; cells
strictly one at a time, after all of those, so that no two timings overlap and nothing else runs beside them.
A cluster executor offers the same three methods.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.cell import Cell
from bench.isolation import kill_children, run_isolated
from bench.plan import ArtifactJob
from onnx_models.artifacts import CalibrationSettings, ExportSettings

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 3600.0


@dataclass
class BuildOutcome:
    """What a round of builds left behind: {(model, artifact): reason} for failures and for conversions a
    brought-in model cannot undergo (``unsupported``); everything else is in the store."""

    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    unsupported: dict[tuple[str, str], str] = field(default_factory=dict)


class LocalExecutor:
    """Runs builds, analyses and cells in child processes on this machine; ``jobs`` builds at once."""

    def __init__(self, jobs: int = 1, say: Callable[[str], None] | None = None):
        self.jobs = max(1, jobs)
        self.say = say or (lambda line: print(line, file=sys.stderr))

    # -------------------------------------------------------------------------------------------- builds

    def build(
        self,
        jobs: Iterable[ArtifactJob],
        size: str,
        export: ExportSettings,
        calib: CalibrationSettings,
        title: str = "artifacts",
    ) -> BuildOutcome:
        """Build every job's artifacts (a model's in order, one child each; ``self.jobs`` models at a time).

        Builds are mostly single-threaded (exporters, quantizers), so two of them use two cores. An interrupt
        (Ctrl-C, SIGTERM) kills every running build before it propagates."""
        from tqdm import tqdm

        from onnx_models.artifacts import artifact_name

        jobs = list(jobs)
        outcome = BuildOutcome()
        total = sum(len(j.artifacts) for j in jobs)
        bar = tqdm(total=total, desc=title, unit="artifact", file=sys.stderr)

        # Set on an interrupt: a worker whose build was just killed must not start the model's next artifact.
        stop = threading.Event()

        def one_model(job: ArtifactJob) -> None:
            for precision, flavour in job.artifacts:
                if stop.is_set():
                    return
                artifact = artifact_name(precision, flavour, calib.int8_weights)
                bar.set_postfix_str(f"{job.model} {artifact}")
                if (job.model, "fp32") in outcome.failures:
                    outcome.failures[(job.model, artifact)] = outcome.failures[(job.model, "fp32")]
                    bar.update()
                    continue
                kwargs = dict(
                    model=job.model,
                    size=size,
                    precision=precision,
                    flavour=flavour,
                    export=asdict(export),
                    calib=asdict(calib),
                )
                result = run_isolated("bench.cell:build_artifact", kwargs, BUILD_TIMEOUT_S)
                if not result.ok and result.error.startswith("UnsupportedPrecision: "):
                    reason = result.error.removeprefix("UnsupportedPrecision: ")
                    outcome.unsupported[(job.model, artifact)] = reason
                    tqdm.write(f"{job.model} ({size}) {artifact}: unsupported: {reason}", file=sys.stderr)
                elif not result.ok:
                    outcome.failures[(job.model, artifact)] = f"building {artifact} failed: {result.error}"
                    tqdm.write(f"{job.model} ({size}) {artifact}: FAILED: {result.error}", file=sys.stderr)
                    log.debug(result.detail)
                bar.update()

        try:
            self._each(jobs, one_model, stop)
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
        self, batches: dict[str, list[int]], size: str, skip: Iterable[str], accuracy_samples: int
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """FLOPs/params/bytes and the FP32 reference outputs' path for each (model, batch), in children,
        ``self.jobs`` models at a time (no timing runs meanwhile); models in ``skip`` (whose FP32 failed) are
        left out, and a failed count or reference leaves its reason in the entry (``flops_error``,
        ``reference_error``) for the cells' rows."""
        from tqdm import tqdm

        skip = set(skip)
        facts: dict[tuple[str, int], dict[str, Any]] = {}
        todo = [m for m in batches if m not in skip]
        bar = tqdm(total=len(todo), desc="analysis", unit="model", file=sys.stderr)
        stop = threading.Event()

        def one_model(model: str) -> None:
            if stop.is_set():
                return
            bar.set_postfix_str(model)
            counted = run_isolated(
                "bench.cell:count_flops", {"model": model, "size": size, "batches": batches[model]}, BUILD_TIMEOUT_S
            )
            for batch in batches[model]:
                # Each worker fills only its own model's entries, so the shared dict needs no lock.
                entry = facts.setdefault((model, batch), {})
                if counted.ok:
                    entry.update(counted.value[batch])
                else:
                    entry["flops_error"] = counted.error
                    tqdm.write(f"{model}: FLOP count failed: {counted.error}", file=sys.stderr)
                if stop.is_set():
                    return
                ref = run_isolated(
                    "bench.cell:reference_outputs",
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

    # --------------------------------------------------------------------------------------------- cells

    def measure(self, cell: Cell, config, reference: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """Measure one cell in a child: (the measured columns with ``samples_ms``, None) or (None, the reason
        it failed)."""
        kwargs = dict(
            cell=asdict(cell),
            timer=asdict(config.timer),
            accuracy_samples=config.accuracy_samples,
            engine_options=config.engine_options.as_dict(),
            reference=reference,
            int8_weights=config.calib.int8_weights,
        )
        result = run_isolated("bench.cell:run_cell", kwargs, config.cell_timeout_s)
        return (result.value, None) if result.ok else (None, result.error)
