"""From a RunConfig to the work of a run: ``plan(config, done) -> Plan``.

A Plan says which cells to measure, which cannot run here and why (an engine not installed, a precision the
engine does not run), and which artifacts must exist first; it runs nothing and imports no framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bench.cell import Cell
from bench.config import RunConfig
from onnx_models.artifacts import PRECISIONS


@dataclass(frozen=True)
class ArtifactJob:
    """The artifacts of one model to build, in order (FP32 first: the others are made from it). Each entry is
    (precision, INT8 flavour)."""

    model: str
    artifacts: tuple[tuple[str, str], ...]


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
    cells = tuple(cell for cell in matrix if cell.id not in done)
    unusable = {e: availability(e) for e in config.engines}
    unsupported = {}
    for cell in cells:
        reason = unusable[cell.engine]
        if reason is None and cell.precision not in engines.engine_class(cell.engine).precisions:
            reason = f"{cell.engine} does not run {cell.precision}"
        if reason:
            unsupported[cell.id] = f"{cell.engine}: {reason}"
    runnable = [c for c in cells if c.id not in unsupported]

    def artifact(cell: Cell) -> tuple[str, str]:
        # The flavour matters only for INT8: FP16 is one artifact for every engine.
        flavour = engines.engine_class(cell.engine).int8_flavour if cell.precision == "int8" else "cpu"
        return cell.precision, flavour

    builds = []
    for model in config.models:
        # What this model's runnable cells need, in precision order; FP32 always and first: every other
        # artifact, the FLOP count and the reference outputs come from it.
        needed = {artifact(c) for c in runnable if c.model == model}
        if needed:
            rest = sorted(needed - {("fp32", "cpu")}, key=lambda pf: (PRECISIONS.index(pf[0]), pf[1]))
            builds.append(ArtifactJob(model, (("fp32", "cpu"), *rest)))
    return Plan(cells, unsupported, tuple(builds))
