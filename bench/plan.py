"""From a RunConfig to the work of a run: ``plan(config, done) -> Plan``.

A Plan says which cells to measure, which cannot run here and why (an engine not installed, a precision the
engine does not run), and which artifacts must exist first. Every cell carries its artifact, resolved here once
(``onnx_models.artifacts.resolve``); builds, executors and the runner read it. It runs nothing and imports no
framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from bench.cell import Cell
from bench.config import RunConfig
from bench.scenarios import LATENCY
from common import precisions
from onnx_models.artifacts import Artifact, resolve


@dataclass(frozen=True)
class ArtifactJob:
    """The artifacts of one model to build, in order: FP32 first (the others are made from it), then the lower
    precisions in registry order."""

    model: str
    artifacts: tuple[Artifact, ...]


@dataclass(frozen=True)
class Plan:
    """The cells still to measure (matrix order), the reason for each that cannot run here, and the artifact
    builds the runnable ones need."""

    cells: tuple[Cell, ...]
    unsupported: Mapping[str, str] = field(default_factory=dict)
    builds: tuple[ArtifactJob, ...] = ()

    @property
    def runnable(self) -> list[Cell]:
        """The cells that have an engine here."""
        return [c for c in self.cells if c.id not in self.unsupported]


def artifact_jobs(artifacts: list[Artifact] | tuple[Artifact, ...]) -> tuple[ArtifactJob, ...]:
    """``artifacts`` grouped into one job per model (models in first-seen order), each led by its FP32 export
    and then in precision order: what an executor builds."""
    by_model: dict[str, set[Artifact]] = {}
    for artifact in artifacts:
        by_model.setdefault(artifact.model, set()).add(artifact)
    jobs = []
    for model, needed in by_model.items():
        base = next(iter(needed)).source
        rest = sorted(needed - {base}, key=lambda a: (precisions.order(a.precision), a.name))
        jobs.append(ArtifactJob(model, (base, *rest)))
    return tuple(jobs)


def plan(
    config: RunConfig,
    done: frozenset[str] | set[str] = frozenset(),
    availability: Callable[[str], str | None] | None = None,
) -> Plan:
    """The work of ``config`` less the cells in ``done`` (ids already measured, for a resume). ``availability``
    says whether an engine can run where the cells will run (None, or the reason it cannot): by default on this
    machine (``engines.availability``); a cluster executor asks its nodes."""
    import engines

    availability = availability or engines.availability

    matrix = (
        Cell(m, config.size, e, p, b, s, c)
        for m in config.models
        for b in config.batch_sizes[m]
        for e in config.engines
        for s in config.scenarios
        for c in config.concurrencies(s)
        for p in config.precisions
    )
    unusable = {e: availability(e) for e in config.engines}
    cells, unsupported = [], {}
    for cell in matrix:
        if cell.id in done:
            continue
        reason = unusable[cell.engine]
        if not precisions.get(cell.precision).runs_on(cell.engine):
            if config.precisions_by_engine:
                continue  # a default precision goes only to the engines that run it: no row of noise
            runners = precisions.get(cell.precision).engines or ()
            reason = reason or f"does not run {cell.precision}, which runs on {', '.join(runners)} only"
        if not reason and cell.scenario != LATENCY and _streams(cell.model, config.size):
            reason = (
                f"{cell.model} runs as a stream (--state): each inference takes the last one's state, and LoadGen's "
                f"{cell.scenario} scenario issues queries in any order; measure it in the latency scenario"
            )
        if reason:
            unsupported[cell.id] = f"{cell.engine}: {reason}"
            cells.append(cell)
            continue
        flavour = engines.engine_class(cell.engine).int8_flavour
        cells.append(replace(cell, artifact=resolve(cell.model, cell.size, cell.precision, flavour, config.calib)))
    builds = artifact_jobs([c.artifact for c in cells if c.artifact is not None])
    return Plan(tuple(cells), unsupported, builds)


def _streams(model: str, size: str) -> bool:
    """Whether ``model`` runs as a stream (brought in with ``--state``)."""
    from bench.inputs import state_pairs
    from onnx_models import model_spec

    return bool(state_pairs(model_spec(model), size))
