"""One run, start to end: a RunConfig and a results directory in, rows out.

``run(config, out, ...)`` takes the directory (lock), checks a resume against its ``env.json``, plans, has the
executor build artifacts and analyses, measures each cell and appends its row the moment it is done, then
writes the tables and the summary. It decides everything a library caller could want decided; ``suite.py``
only parses options into a RunConfig and prints.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.paper import paper_comparison
from bench.cell import Cell
from bench.config import RunConfig
from bench.executor import CellRequest, LocalExecutor
from bench.plan import plan
from bench.results import ResultsBusy, ResultsFile, ResumeMismatch, resume_env, summary_markdown, write_tables
from bench.row import Row
from common.cpu_isa import isa as cpu_isa


class RunRefused(Exception):
    """The run cannot start as asked (directory in use or holding results, a resume with other settings)."""


@dataclass
class RunOutcome:
    """Where a run wrote and how its cells ended."""

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: str

    def count(self, status: str) -> int:
        """How many cells ended with ``status`` (``ok``, ``failed``, ``unsupported``)."""
        return sum(1 for r in self.rows if r.get("status") == status)


def base_row(cell: Cell, facts: dict[str, Any], bytes_model: str = "io", checkpoint: bool = False) -> Row:
    """The columns every row has, whatever its status: identity, model facts, paper comparison, and what its
    weights are (``weights``: ``trained`` in the suite and scored against labels, a user's ``checkpoint``
    (``checkpoint`` True: --weights), a brought-in ``file``, or seeded ``random`` ones: what its accuracy can be
    judged by, ``analysis.verdict``).

    ``bytes_model`` ``io`` counts weights + inputs + outputs per batch; ``activations`` adds every
    intermediate tensor written once and read once."""
    from onnx_models import model_spec

    spec = model_spec(cell.model)
    if spec.trained is not None:
        weights = "trained"
    elif spec.framework == "onnx":
        weights = "file"
    else:
        weights = "checkpoint" if checkpoint else "random"
    row = Row(
        model=cell.model,
        category=spec.category,
        framework=spec.framework,
        weights=weights,
        size=cell.size,
        engine=cell.engine,
        precision=cell.precision,
        batch_size=cell.batch_size,
        scenario=cell.scenario,
        concurrency=cell.concurrency,
        cell_id=cell.id,
        # The instruction set decides which integer kernels an INT8 cell ran on (and so its accuracy and speed).
        cpu_isa=cpu_isa(),
        flops_per_batch=facts.get("flops_per_batch"),
        mac_flops_per_batch=facts.get("mac_flops_per_batch"),
        params=facts.get("params"),
    )
    if "weight_bytes" in facts:
        row.bytes_per_batch = facts["weight_bytes"] + facts["io_bytes"]
        row.bytes_model = "weights+inputs+outputs"
        if bytes_model == "activations" and "activation_bytes" in facts:
            row.bytes_per_batch += facts["activation_bytes"]
            row.bytes_model = "weights+inputs+outputs+activations"
        row.arith_intensity = facts["flops_per_batch"] / row.bytes_per_batch if row.bytes_per_batch else None
    row.paper_flops_per_sample, row.flops_ratio_to_paper = paper_comparison(
        spec.paper_model, cell.size, row.flops_per_batch, cell.batch_size
    )
    return row


def derive(row: Row) -> None:
    """Throughput from the measured mean latency where the scenario did not measure it (the closed loop: batch
    size / mean latency), and FLOP/s from the throughput (FLOPs per batch x batches per second)."""
    if row.throughput_samples_per_s is None and row.latency_ms_mean:
        row.throughput_samples_per_s = row.batch_size / (row.latency_ms_mean / 1e3)
    if row.flops_per_batch and row.throughput_samples_per_s:
        row.flops_per_s = row.flops_per_batch * row.throughput_samples_per_s / row.batch_size
    row.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")


def loadgen_logs(cell: Cell) -> Path:
    """Where a LoadGen cell's logs go, relative to the results directory: ``loadgen/<cell id with _>``."""
    return Path("loadgen") / cell.id.replace("/", "_")


def run(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    retry_failed: bool = False,
    executor=None,
) -> RunOutcome:
    """Measure ``config``'s matrix into ``out`` (results.jsonl, samples.jsonl, env.json, results.csv/parquet,
    summary.md, and nodes/<node>.json for a cluster's nodes) on ``executor`` (default: a LocalExecutor of
    ``config.jobs``; ``cluster.executor.RayExecutor`` for a Ray cluster). With ``resume`` the cells already in ``out``
    are skipped (failed ones too unless ``retry_failed``). Raises RunRefused before anything is written when the
    run cannot start."""
    from tqdm import tqdm

    from bench.env import environment

    if retry_failed and not resume:
        raise RunRefused("--retry-failed measures the failed cells of an earlier run again: add --resume and its --out")
    results = _results_file(out)
    # The directory is this run's until it returns (or dies: the kernel drops the lock), before anything in it
    # is read or written, so two runs never append to one results.jsonl.
    try:
        lock = results.lock()
    except ResultsBusy as exc:
        raise RunRefused(str(exc)) from None
    executor = executor or LocalExecutor(config.jobs)
    with lock:
        rows = results.rows()
        if rows and not resume:
            raise RunRefused(f"{out} already holds results; pass --resume to continue it or choose another --out")
        done = results.finished_ids(except_failed=retry_failed) if resume else set()
        env = environment(config.settings())
        if rows:
            # The rows already here were measured with the stored settings: a resume must use the same ones
            # (only the matrix may differ), and env.json keeps describing them.
            try:
                env = resume_env(results.read_env(), env, results.env_path)
            except ResumeMismatch as exc:
                raise RunRefused(str(exc)) from None
        results.write_env(env)
        # Each machine that measures cells, described as env.json describes this one (a cluster's nodes).
        for name, node_env in executor.node_environments().items():
            results.write_node_env(name, {**node_env, "settings": env["settings"]})
        print(f"results -> {results.out_dir}", file=sys.stderr)

        work = plan(config, done, executor.availability)
        built = executor.build(work.builds, config.export, config.calib)
        measured_models = {c.model for c in work.runnable}
        batches = {m: list(config.batch_sizes[m]) for m in config.models if m in measured_models}
        failed_fp32 = {a.model for a in built.failures if a == a.source}
        facts = executor.facts(batches, config.size, failed_fp32, config.accuracy_samples)

        requests = []
        with tqdm(total=len(work.cells), desc="cells", unit="cell", file=sys.stderr) as bar:
            # Cells that will not be measured get their rows now; the others go to the executor, which gives
            # each one's outcome back as it ends (one at a time here, in any order from a cluster).
            rows_of: dict[str, Row] = {}
            for cell in work.cells:
                cell_facts = facts.get((cell.model, cell.batch_size), {})
                row = base_row(cell, cell_facts, config.bytes_model, config.export.weights is not None)
                row.update(_reasons(cell, work.unsupported, built))
                if row.status is not None:
                    results.append(row.as_dict(), None)
                    bar.update()
                    continue
                if cell.scenario != "latency":
                    row.loadgen_logs = str(loadgen_logs(cell))
                logs = results.out_dir / row.loadgen_logs if row.loadgen_logs else None
                rows_of[cell.id] = row
                requests.append(CellRequest(cell, cell_facts.get("reference"), logs))
            for outcome in executor.measure_all(requests, config):
                cell, measured, error = outcome.request.cell, outcome.measured, outcome.error
                bar.set_postfix_str(cell.id)
                row = rows_of[cell.id]
                # Where it ran (node, device), failed or not: a cluster's failures are read by node.
                row.update(outcome.where)
                samples = None
                if measured is not None:
                    samples = measured.pop("samples_ms")
                    row.update(measured, status="ok")
                    derive(row)
                    row.error = missing_analysis(facts.get((cell.model, cell.batch_size), {}))
                else:
                    row.update(status="failed", error=error)
                    tqdm.write(f"{cell.id}: FAILED: {error}", file=sys.stderr)
                # Written the moment it arrives: a run killed later loses nothing that finished.
                results.append(row.as_dict(), samples)
                bar.update()

        rows = results.rows()
        _measure_roofs(executor, rows, env)
        try:
            write_tables(results.out_dir)
        except ModuleNotFoundError as exc:
            # A machine that has the engines but not polars (the borrowed GPU machine of
            # benchmarks/device_check) still gets its rows and summary; only the two table files are missing.
            if exc.name != "polars":
                raise
            print("results.csv and results.parquet not written: polars is not installed", file=sys.stderr)
        summary = summary_markdown(rows)
        (results.out_dir / "summary.md").write_text(summary)
    return RunOutcome(results.out_dir, rows, summary)


def _measure_roofs(executor, rows: list[dict[str, Any]], env: dict[str, Any]) -> None:
    """Measure and cache the roofs of each engine that measured cells here and has none cached for this machine
    and thread count, so that the report (which measures nothing) can draw them. After the cells: no timing
    overlaps it.

    Cached roofs that one of this run's ok closed-loop cells went above by more than ``ABOVE_ROOF_MARGIN`` are
    wrong (measured while other work ran): they are measured again, quick, and replace the cached ones even where
    those were a full measurement, said on stderr. Above a memory roof whose measurement was stable the byte
    model is what is wrong (bytes read from cache): the report flags such a cell, and nothing is measured again.
    Cells measured on other machines (a cluster's nodes) say nothing about this machine's roofs, and the cluster
    executor measures none."""
    import engines
    from analysis.roofs import ABOVE_ROOF_MARGIN, above_roof, engine_threads, machine_key
    from bench.roofs_cache import cached_roofs

    elsewhere = bool(executor.node_environments())
    for engine in dict.fromkeys(r["engine"] for r in rows if r.get("status") == "ok"):
        threads = engine_threads(rows, engine, env)
        if engines.availability(engine) is not None:
            continue
        key = machine_key(env, engine, threads)
        cached = cached_roofs(key)
        if cached is None:
            print(f"measuring {engine} roofs for the report (quick; `suite.py peak` measures fully)", file=sys.stderr)
            error = executor.roofs(engine, threads)
        else:
            above = [] if elsewhere else above_roof(cached, rows, engine, ABOVE_ROOF_MARGIN)
            # Above a stable memory roof, the byte model counted bytes read from cache: measuring the same roof
            # again would not lift it (and would replace a full measurement with a quick one on every run).
            stable = str(cached.details.get("stability", "")) == "stable"
            above = [
                (row, share)
                for row, share in above
                if not stable or cached.bound(str(row.get("precision")), row.get("arith_intensity")) == "compute"
            ]
            if not above:
                continue
            row, share = above[0]
            when = cached.details.get("measured_at", "at an unknown time")
            reason = f"{len(above)} cell(s) of a run went above them ({row.get('cell_id')} at {100 * share:.0f}%)"
            print(
                f"{engine} roofs measured {when} ({cached.source}) are below what this run achieved: {reason}; "
                "measuring them again (quick) to replace them",
                file=sys.stderr,
            )
            error = executor.roofs(engine, threads, replace=reason)
            if not error:
                still = above_roof(cached_roofs(key), rows, engine, ABOVE_ROOF_MARGIN)
                if still:
                    print(
                        f"{len(still)} {engine} cell(s) are still above the measured-again roofs "
                        f"({still[0][0].get('cell_id')} at {100 * still[0][1]:.0f}%): above the memory roof the byte "
                        "model counts bytes read from cache, not memory; otherwise measure on a quiet machine with "
                        f"`python suite.py peak --engine {engine}`",
                        file=sys.stderr,
                    )
        if error:
            drawn = "drawn without them" if cached is None else "drawn against the cached ones, cells above marked"
            print(f"{engine} roofs not measured ({error}): the roofline is {drawn}", file=sys.stderr)


def _reasons(cell: Cell, unsupported: dict[str, str], built) -> dict[str, Any]:
    """``status`` and ``error`` of a cell that will not be measured (no engine here, a conversion the model
    cannot undergo, a failed build: the executor gives every artifact of a model whose FP32 export failed that
    failure), or ``status`` None for one to measure."""
    if cell.id in unsupported:
        return {"status": "unsupported", "error": unsupported[cell.id]}
    problem = built.problem(cell.artifact)
    return {"status": None} if problem is None else {"status": problem[0], "error": problem[1]}


def missing_analysis(facts: dict[str, Any]) -> str | None:
    """What a measured cell lacks because its FLOP count or FP32 reference failed, with the reasons, for the
    row's ``error`` column (``FLOPs not counted: ...; accuracy not measured: ...``); None when it lacks nothing.

    Without it, such a cell was an ``ok`` row silently without FLOPs or accuracy, which reads as "not
    applicable" rather than "broken"."""
    flops, reference = facts.get("flops_error"), facts.get("reference_error")
    # One cause (a read-only store) fails both, naming different files: said once, both labels first, so tables
    # that cut the reason at 120 characters still show what is missing.
    if flops and reference and re.sub(r"'[^']*'", "", flops) == re.sub(r"'[^']*'", "", reference):
        return f"FLOPs not counted and accuracy not measured: {flops}"
    notes = [f"FLOPs not counted: {flops}"] if flops else []
    notes += [f"accuracy not measured: {reference}"] if reference else []
    return "; ".join(notes) or None


def _results_file(out: Path) -> ResultsFile:
    """The results directory ``out``, created if need be; RunRefused when it, or a path above it, is a file or
    it cannot be created (creating it used to fail with a traceback)."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise RunRefused(f"--out {out} cannot be a results directory: {path} is a file; name a directory")
            break
    try:
        return ResultsFile(out)
    except OSError as exc:
        raise RunRefused(
            f"cannot create the results directory {out}: {exc.strerror or exc}; choose another --out"
        ) from None
