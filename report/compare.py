"""Compare runs: "vendor A against vendor B", "1 thread against 2", "ONNX Runtime against TensorRT".

Runs are labelled A, B, C, ... in the order given; A is the baseline. Cells are joined on (model, size,
precision, batch size, scenario, concurrency, engine), or without the engine (``ignore_engine``) to compare
engines with each other.
For each other run X the ratios are X / A: ``p50`` (latency; below 1 means X is faster), ``samples/s``
(throughput) and ``FLOP/s`` (above 1 means X is faster). Cells missing or not ok in a run have no ratio.
The environments (CPU, GPU, packages, threads) are listed side by side. Written as ``compare.md``,
``compare.csv`` (raw values) and ``compare.html`` (a chart of each run's throughput against A per model and
precision, and the tables sortable; self-contained like report.html).

``split_by`` (``--split-by node``) makes each run directory several runs, one per value of that column: the rows
of one cluster run measured on vendor A's nodes against those measured on vendor B's. Split by ``node``, each
part's environment is that node's (``nodes/<node>.json``).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from analysis.verdict import MIN_SPEEDUP
from common.paths import atomic_path
from report.run_report import load_run

METRICS = (("latency_ms_p50", "p50 ms"), ("throughput_samples_per_s", "samples/s"), ("flops_per_s", "FLOP/s"))


class CompareError(ValueError):
    """Runs that cannot be compared as asked."""


def labels(count: int) -> list[str]:
    """A, B, ..., Z, then R27, R28, ..."""
    return [string.ascii_uppercase[i] if i < 26 else f"R{i + 1}" for i in range(count)]


# What makes two rows the same cell across runs (the engine too, unless it is what is compared).
KEY_FIELDS = ("model", "size", "precision", "batch_size", "scenario", "concurrency")


def _key(row: dict[str, Any], ignore_engine: bool) -> tuple:
    base = tuple(row.get(f) for f in KEY_FIELDS)
    return base if ignore_engine else (*base, row.get("engine"))


def join(runs: list[list[dict[str, Any]]], ignore_engine: bool = False) -> list[dict[str, Any]]:
    """One flat record per cell key present in any run, with each run's metrics and the ratios to run A.

    Raises CompareError when ``ignore_engine`` leaves one run with two cells for one key.
    """
    names = labels(len(runs))
    indexed: list[dict[tuple, dict]] = []
    for name, rows in zip(names, runs, strict=True):
        by_key: dict[tuple, dict] = {}
        for row in rows:
            key = _key(row, ignore_engine)
            if key in by_key:
                raise CompareError(
                    f"run {name} has cells of several engines for {key[: len(KEY_FIELDS)]} "
                    f"({by_key[key].get('engine')}, {row.get('engine')}); compare without --ignore-engine"
                )
            by_key[key] = row
        indexed.append(by_key)
    keys = list(dict.fromkeys(k for by_key in indexed for k in by_key))
    records = []
    for key in keys:
        record: dict[str, Any] = dict(zip(KEY_FIELDS, key[: len(KEY_FIELDS)], strict=True))
        engines = [by_key.get(key, {}).get("engine") for by_key in indexed]
        record["engine"] = key[-1] if not ignore_engine else " / ".join(str(e or "-") for e in engines)
        rows = [by_key.get(key) for by_key in indexed]
        record["status"] = " / ".join((r or {}).get("status") or "absent" for r in rows)
        for name, row in zip(names, rows, strict=True):
            ok = row is not None and row.get("status") == "ok"
            for column, title in METRICS:
                record[f"{title} {name}"] = row.get(column) if ok else None
        for name in names[1:]:
            for _, title in METRICS:
                base, other = record[f"{title} A"], record[f"{title} {name}"]
                record[f"{name}/A {title}"] = other / base if base and other else None
        records.append(record)
    return records


def environment_table(envs: list[dict[str, Any]], dirs: list[Path | str], runs: list[list[dict]]) -> list[list[Any]]:
    """Rows (what, value in A, value in B, ...) describing each run's machine, software and settings."""
    from analysis.roofs import engine_threads

    def cpu(key: str):
        return [env.get("cpu", {}).get(key) for env in envs]

    rows = [
        ["directory", *[str(d) for d in dirs]],
        ["cpu", *cpu("model")],
        ["cores (logical)", *cpu("logical_cores")],
        ["cores (physical)", *cpu("physical_cores")],
        ["memory GiB", *cpu("memory_gib")],
        ["cpu flags", *[" ".join(f or []) for f in cpu("flags")]],
        ["gpu", *[_gpu(env) for env in envs]],
        ["onnxruntime providers", *[", ".join(env.get("onnxruntime_providers", [])) for env in envs]],
        ["python", *[env.get("python") for env in envs]],
        ["platform", *[env.get("platform") for env in envs]],
    ]
    engines = sorted({r.get("engine") for rows in runs for r in rows if r.get("engine")})
    for engine in engines:
        rows.append(
            [
                f"{engine} threads",
                *[
                    engine_threads(rs, engine, env) if _has(rs, engine) else None
                    for rs, env in zip(runs, envs, strict=True)
                ],
            ]
        )
    packages = sorted({name for env in envs for name in env.get("packages", {})})
    rows += [[name, *[env.get("packages", {}).get(name) for env in envs]] for name in packages]
    return rows


def _has(rows: list[dict], engine: str) -> bool:
    return any(r.get("engine") == engine for r in rows)


def _gpu(env: dict[str, Any]) -> str | None:
    """A run's GPU description, from whichever field the environment recorded (none on CPU machines)."""
    for key in ("gpu", "gpus", "cuda_devices"):
        value = env.get(key)
        if value:
            if isinstance(value, list):
                return "; ".join(v.get("name", str(v)) if isinstance(v, dict) else str(v) for v in value)
            if isinstance(value, dict):
                return str(value.get("name") or value)
            return str(value)
    return None


def compare(
    dirs: list[Path],
    ignore_engine: bool = False,
    out: Path | None = None,
    split_by: str | None = None,
    threshold: float = 0.99,
    min_speedup: float = MIN_SPEEDUP,
) -> tuple[str, Path, Path]:
    """Join the runs in ``dirs`` (each split by the values of column ``split_by`` when it is given) and write
    ``compare.md`` and ``compare.csv`` into ``out`` (default: the first run directory); verdicts are judged at
    ``threshold`` and ``min_speedup``. Returns (the Markdown text, its path, the CSV path). Raises CompareError
    for fewer than two runs or a directory without results."""
    import polars as pl

    if not dirs or (len(dirs) < 2 and split_by is None):
        raise CompareError("compare needs at least two run directories, or one and --split-by")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CompareError(f"--out {out} is a file; name a directory for compare.md and compare.csv")
    runs, envs, names_of = [], [], []
    for directory in dirs:
        try:
            rows, env = load_run(directory)
        except FileNotFoundError as exc:
            raise CompareError(str(exc)) from None
        for part, part_rows, part_env in _split(Path(directory), rows, env, split_by):
            runs.append(part_rows)
            envs.append(part_env)
            names_of.append(part)
    if len(runs) < 2:
        raise CompareError(f"{dirs[0]} has rows of one {split_by} only; nothing to compare")
    records = join(runs, ignore_engine)
    names = labels(len(runs))
    environment = environment_table(envs, names_of, runs)
    doc = comparison(
        records, names, names_of, environment, ignore_engine, agreement(runs, names, threshold, min_speedup)
    )
    text = doc.markdown()
    out_dir = Path(out) if out else Path(dirs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out_dir / "compare.md", out_dir / "compare.csv"
    frame = pl.DataFrame(records, infer_schema_length=None) if records else pl.DataFrame({"model": []})
    # Atomic, so that a comparison rewritten in place never leaves half a file.
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)
    with atomic_path(csv_path) as tmp:
        frame.write_csv(tmp)
    with atomic_path(out_dir / "compare.html") as tmp:
        tmp.write_text(doc.html("aimatrix-onnx comparison"))
    return text, md_path, csv_path


def ratio_bars(records: list[dict[str, Any]], names: list[str]) -> list[tuple[str, str, float | None]]:
    """(cell label, run, throughput ratio to run A) for each joined cell and each run after A: what the ratio
    chart draws. The label is model, precision and batch (scenario and engine where they vary)."""
    scenarios = {r.get("scenario") for r in records}
    engines = {r.get("engine") for r in records}
    bars = []
    for record in records:
        label = f"{record['model']} {record['precision']} b{record['batch_size']}"
        if len(scenarios) > 1 or record.get("concurrency") not in (1, None):
            label += f" {record['scenario']}" + (f"@{record['concurrency']}" if record.get("concurrency") != 1 else "")
        if len(engines) > 1:
            label += f" [{record['engine']}]"
        bars += [(label, name, record.get(f"{name}/A samples/s")) for name in names[1:]]
    return bars


def comparison(
    records: list[dict[str, Any]],
    names: list[str],
    names_of: list[str],
    environment: list[list[Any]],
    ignore_engine: bool,
    agreed: list[dict[str, Any]] | None = None,
):
    """The comparison as one Document, rendered to compare.md and compare.html: the runs, how cells are joined,
    whether the other runs give run A's answers (``agreed``, from ``agreement``), the ratio chart of every run
    against A (in the HTML page), then the environments and the joined cells (in HTML sortable, filterable
    tables)."""
    from report.document import Document
    from report.svg_charts import ratio_chart

    joined = "model, size, precision, batch size, scenario, concurrency" + ("" if ignore_engine else " and engine")
    doc = Document()
    doc.heading(1, "Comparison of runs")
    doc.para("Runs: " + "; ".join(f"{n} = {d}" for n, d in zip(names, names_of, strict=True)) + ".")
    doc.para(
        f"Cells joined on {joined}. Ratios are X / A: p50 latency below 1, samples/s and FLOP/s above 1 mean X is "
        "faster than A."
    )
    if agreed:
        doc.heading(2, "Do the runs give the same answers?")
        doc.para(
            "Each run's verdicts (which precision to deploy, per engine and model, as its report gives them) against "
            "run A's, and its speed-ups against run A's 95% intervals (cells timed in rounds in both): inside the "
            "interval, and whether the two intervals overlap. Run the same matrix twice on one machine to see "
            "whether its answers survive a second run. An interval is made from one run's rounds: it holds the "
            "speed-up that run measures, not the other run's estimate, which has an error of its own (of two runs "
            "with exact 95% intervals, about 83% of the second's speed-ups lie inside the first's intervals), and "
            "differences between processes that stay fixed within a run (memory placement, threads' cores) are "
            "not in it."
        )
        for entry in agreed:
            largest = entry["largest"]
            most = f"; the largest difference is {largest[0]:.1%} ({largest[1]})" if largest else ""
            doc.para(
                f"{entry['run']}: {entry['changed']} of {entry['verdicts']} verdicts differ from A's; "
                f"{entry['inside']} of {entry['paired']} speed-ups lie inside A's interval and "
                f"{entry['overlap']} of {entry['paired']} intervals overlap A's{most}."
            )
        table = [[e["run"], *line] for e in agreed for line in e["lines"]]
        doc.table(["run", "engine", "model", "answer in A", "answer in the run", "same"], table, name="verdicts")
        speeds = [[e["run"], *line] for e in agreed for line in e["speeds"]]
        if speeds:
            header = ["run", "cell", "speed-up in A [95%]", "speed-up in the run [95%]", "inside A's", "overlap"]
            doc.table(header, speeds, name="speedups-agreement")
    bars = ratio_bars(records, names)
    if bars:
        doc.heading(2, "Throughput against run A")
        doc.para(
            "Each bar is a cell's samples/s in a run divided by its samples/s in run A: right of 1 the run is "
            "faster, left slower; n/a where the cell is missing or did not finish in one of the two."
        )
        doc.svg(ratio_chart(bars, "throughput ratio to run A", names[1:]), None, "throughput ratio to run A")
    doc.heading(2, "Environments")
    doc.table(["what", *names], environment, name="environments")
    doc.heading(2, "Cells")
    columns = list(records[0]) if records else ["model"]
    doc.table(columns, [[record[c] for c in columns] for record in records], name="cells")
    return doc


def agreement(
    runs: list[list[dict[str, Any]]], names: list[str], threshold: float = 0.99, min_speedup: float = MIN_SPEEDUP
) -> list[dict[str, Any]]:
    """For each run after A: how many of its verdicts (``analysis.verdict``) differ from A's, over the (engine,
    model, size) both judged (``lines``: per verdict, A's answer, the run's, and whether they agree); and over the
    speed-ups with an interval in both (cells timed in rounds), how many of its speed-ups lie inside A's 95%
    interval (``inside``), how many of its intervals overlap A's (``overlap``), and the largest difference between
    the two speed-ups (``largest``: (the relative difference, the cell), or None) (``speeds``: per speed-up, the
    cell, A's, the run's, inside, overlapping)."""
    import math

    from analysis.verdict import points, speed_key, speedup_interval, verdicts
    from common.numbers import with_interval
    from report.run_report import counterparts

    def answers(rows: list[dict[str, Any]]) -> dict[tuple, str]:
        judged = verdicts(points(rows, threshold, stand_ins, min_speedup), threshold, min_speedup)
        return {
            (v.engine, v.model, v.size): v.decision + (f" {v.best.precision}" if v.decision == "deploy" else "")
            for v in judged
        }

    def intervals(rows: list[dict[str, Any]]) -> dict[tuple, tuple[float, float, float]]:
        base = {speed_key(r): r for r in rows if r.get("precision") == "fp32"}
        found = {}
        for row in rows:
            paired = speedup_interval(row, base.get(speed_key(row))) if row.get("precision") != "fp32" else None
            if paired:
                found[(*speed_key(row), row.get("precision"))] = paired
        return found

    def cell(key: tuple) -> str:
        model, size, engine, batch, scenario, concurrency, precision = key
        where = "" if size == "full" else f" ({size})"
        load = "" if scenario == "latency" and concurrency == 1 else f" {scenario}@{concurrency}"
        return f"{engine} {model}{where} {precision} b{batch}{load}"

    stand_ins = counterparts()
    first, first_intervals = answers(runs[0]), intervals(runs[0])
    out = []
    for name, rows in zip(names[1:], runs[1:], strict=True):
        mine, mine_intervals = answers(rows), intervals(rows)
        shared = [k for k in first if k in mine]
        lines = [
            [k[0], k[1] + ("" if k[2] == "full" else f" ({k[2]})"), first[k], mine[k], first[k] == mine[k]]
            for k in shared
        ]
        speeds, inside, overlap, largest = [], 0, 0, None
        for key in (k for k in first_intervals if k in mine_intervals):
            a, b = first_intervals[key], mine_intervals[key]
            holds, meets = a[1] <= b[0] <= a[2], a[1] <= b[2] and b[1] <= a[2]
            inside, overlap = inside + holds, overlap + meets
            difference = abs(math.log(b[0] / a[0]))
            if largest is None or difference > largest[0]:
                largest = (difference, cell(key))
            speeds.append([cell(key), with_interval(*a, "x"), with_interval(*b, "x"), holds, meets])
        out.append(
            {
                "run": name,
                "verdicts": len(shared),
                "changed": sum(1 for k in shared if first[k] != mine[k]),
                "paired": len(speeds),
                "inside": inside,
                "overlap": overlap,
                "largest": None if largest is None else (math.expm1(largest[0]), largest[1]),
                "lines": lines,
                "speeds": speeds,
            }
        )
    return out


def _split(
    directory: Path, rows: list[dict[str, Any]], env: dict[str, Any], split_by: str | None
) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(label, rows, environment) of each part of one run: the whole run without ``split_by``, else one part per
    value of that column in the order they first appear (split by node, with that node's environment)."""
    if split_by is None:
        return [(str(directory), rows, env)]
    from bench.results import ResultsFile

    values = list(dict.fromkeys(r.get(split_by) for r in rows))
    parts = []
    for value in values:
        node_env = ResultsFile(directory).node_env(str(value)) if split_by == "node" and value else None
        part_rows = [r for r in rows if r.get(split_by) == value]
        parts.append((f"{directory} [{split_by}={value}]", part_rows, node_env or env))
    return parts
