"""The report of a run directory: ``report.md`` and one self-contained ``report.html`` (images inlined).

Sections: the summary table; speed-up of FP16 and INT8 over FP32 per model, engine and batch size; accuracy
against FP32 with pass or fail against a threshold; the roofline per engine with each cell's percent of its
roof; the comparison with the paper's Table I where the run has full-size catalogue models; the environment.

Accuracy is judged as the verdicts judge it (``analysis.verdict.judgement``): on real weights only (labels of a
trained model or of its trained counterpart, a checkpoint, a brought-in file), passing where the whole 95% interval
of the share of FP32's accuracy kept lies at or above ``threshold`` (default 0.99, as MLPerf's "99% of FP32"),
failing where it lies below, undecided in between; a random-weight model's agreement with FP32 is drift. The share
is the metric's where higher is better (agreement of top-1 classes, spans, boxes, keypoints, strings or tokens) and
the cosine similarity of the raw outputs for an error metric (the CTR models' max abs error), which has no
scale-free bound.

Roofs come from ``roofs_for``: given roofs (preset, file or values) when any; otherwise the measured roofs
cached for the machine and engine the run used (``analysis.roofs``; a run measures them, quick, when none are
cached); otherwise the roofline shows the points without roofs. Making a report measures nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from analysis.quant_coverage import share_text
from analysis.roofs import Roofs, engine_threads, machine_key, unit
from analysis.verdict import MIN_SPEEDUP, judgement, speed_key, speedup, speedup_interval
from bench.results import CELL_COLUMNS
from common import precisions
from common.numbers import format_rate, interval_text, with_interval
from common.paths import atomic_path
from report.document import Document
from report.html import TableCell, slug
from report.roofline import file_stem

DEFAULT_THRESHOLD = 0.99


# ------------------------------------------------------------------------------------------------ inputs


def load_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows of results.jsonl, env.json) of a run directory; raises FileNotFoundError if it has no results."""
    from bench.results import ResultsFile

    if not (Path(run_dir) / "results.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir} has no results.jsonl")
    results = ResultsFile(Path(run_dir))
    env_path = Path(run_dir) / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    return results.rows(), env


def roofs_for(rows: list[dict[str, Any]], env: dict[str, Any], engine: str, given: Roofs | None) -> Roofs | None:
    """The roofs to draw ``engine``'s cells against: ``given`` ones, else those cached for the machine, engine
    and threads the run used, else None. Nothing is measured here (a run measures its roofs before its report)."""
    if given is not None:
        return given
    from bench.roofs_cache import cached_roofs

    return cached_roofs(machine_key(env, engine, engine_threads(rows, engine, env)))


def paper_model(name: str) -> str | None:
    """The paper's name for a suite model, or None (unknown models, brought-in models)."""
    import models

    try:
        return models.get_model(name).paper_model
    except (models.UnknownModelError, ValueError, OSError):
        return None


# --------------------------------------------------------------------------------------------- judgements


def accuracy_verdict(row: dict[str, Any], threshold: float) -> tuple[str, str]:
    """(``pass``/``FAIL``/``undecided``/``drift``/``-``, what it is judged against) for one cell's accuracy: the
    verdicts' own judgement (``analysis.verdict.judgement``), on the 95% interval; a random-weight model's
    agreement with FP32 is drift, never a pass or a fail."""
    state, basis = judgement(row, threshold)
    shown = {"pass": "pass", "fail": "FAIL", "undecided": "undecided", "unjudged": "drift", None: "-"}[state]
    return shown, basis


# ------------------------------------------------------------------------------------------------- report


SUMMARY = (
    *CELL_COLUMNS,
    ("arith_intensity", "FLOP/byte"),
    ("accuracy_metric", "accuracy metric"),
    ("accuracy_value", "value"),
    ("error", "reason"),
)


def build(
    run_dir: Path,
    threshold: float = DEFAULT_THRESHOLD,
    given: Roofs | None = None,
    min_speedup: float = MIN_SPEEDUP,
) -> Document:
    """The report of ``run_dir`` as a Document, its verdicts judged at ``threshold`` (accuracy kept) and
    ``min_speedup`` (the least gain worth deploying); draws the roofline images into ``run_dir`` on the way."""
    from report.roofline import model_numbers, plot

    run_dir = Path(run_dir)
    rows, env = load_run(run_dir)
    doc = Document()
    counts = {s: sum(1 for r in rows if r.get("status") == s) for s in ("ok", "failed", "unsupported")}
    doc.heading(1, f"aimatrix-onnx report: {run_dir.name}")
    doc.para(
        f"{len(rows)} cells: {counts['ok']} ok, {counts['failed']} failed, {counts['unsupported']} unsupported. "
        f"Run directory {run_dir.resolve()}; report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}."
    )
    shown = [p for p in precisions.NAMES if any(r.get("precision") == p for r in rows)]
    if shown:
        doc.para("Precisions: " + "; ".join(f"{p}, {precisions.get(p).text}" for p in shown) + ".")
    reduced = brought_in_precisions(rows)
    if reduced:
        doc.para(reduced)

    numbers = model_numbers(rows)
    _answer(doc, rows, threshold, min_speedup, run_dir, numbers)
    _speedups(doc, rows, threshold)
    note = fp32_math_note(rows)
    if note:
        doc.para(note)
    _accuracy(doc, rows, threshold, env)
    _labels(doc, rows)
    engines = list(dict.fromkeys(r.get("engine") for r in rows if r.get("engine")))
    roofs = {engine: roofs_for(rows, env, engine, given) for engine in engines}
    _roofline(doc, rows, roofs, run_dir, plot, numbers)
    _scenarios(doc, rows)
    _curves(doc, rows, run_dir)
    doc.heading(2, "All cells")
    doc.para("Every cell of the run as measured; the raw values are in results.csv and results.parquet.")
    doc.table(
        [title for _, title in SUMMARY],
        [[str(r.get(k))[:120] if k == "error" and r.get(k) else r.get(k) for k, _ in SUMMARY] for r in rows],
        name="cells",
    )
    _paper(doc, rows)
    _environment(doc, env)
    return doc


def brought_in_precisions(rows: list[dict[str, Any]]) -> str | None:
    """What each brought-in model whose file is not FP32 runs at each precision, from its measured rows'
    ``file_precision`` and ``artifact_origin``: "byo/half is FP16 (...): fp32 is the file upcast from FP16 to
    FP32 (...); fp16 is the file as brought; int8 is a conversion of its fp32 artifact."; None when no such
    model has a measured row. An FP16 file's fp16 cell is the file itself, not a conversion, and its fp32 cell
    is not the file: the report says so where it names the precisions."""
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for row in rows:
        text = row.get("file_precision")
        if not text or text == "FP32":
            continue
        _, origins = found.setdefault(row["model"], (text, {}))
        if row.get("artifact_origin"):
            origins.setdefault(row["precision"], row["artifact_origin"])
    sentences = []
    for model, (text, origins) in found.items():
        runs = "; ".join(f"{p} is {origins[p]}" for p in sorted(origins, key=precisions.order))
        sentences.append(f"{model} is {text}: {runs}.")
    return " ".join(sentences) or None


def counterparts() -> dict[str, str]:
    """{catalogue model: the trained model of the same architecture that stands in for it} from the catalogue
    (a trained model is a variant of the model it was trained from); {} where the catalogue cannot be read."""
    import models

    try:
        catalogue = models.all_models()
    except (ImportError, ValueError, OSError):
        return {}
    return {spec.variant_of: name for name, spec in catalogue.items() if spec.trained is not None and spec.variant_of}


DECISION_CSS = {"deploy": "pass", "keep fp32": None, "undecided": "undecided", "none": "fail"}


def _answer(
    doc: Document,
    rows: list[dict[str, Any]],
    threshold: float,
    min_speedup: float,
    run_dir: Path,
    numbers: dict[str, int],
) -> None:
    """Per engine: the chart of speed-up against accuracy retained and the verdict table (analysis.verdict)."""
    from analysis.verdict import points, verdicts
    from report.svg_charts import answer_chart, model_label

    stand_ins = counterparts()
    all_points = points(rows, threshold, stand_ins, min_speedup)
    doc.heading(2, "Which precision to deploy")
    if not all_points:
        doc.para("No cell finished: nothing to choose from.")
        return
    doc.para(
        "Per model, the fastest lower precision that is measurably faster than FP32 (the whole 95% interval of "
        f"its speed-up at or above {min_speedup:g}x, --min-speedup) and keeps at least {threshold:g} of FP32's "
        "accuracy on real weights (against labels, a checkpoint's or a real model's; the whole interval at or "
        "above --threshold). Where the evidence does not carry an answer, the verdict is undecided and says what "
        "would decide it. Intervals are 95%; how each is made is under the chart."
    )
    unjudged = sorted({p.model for p in all_points if p.accuracy == "unjudged"})
    if unjudged:
        paired = [m for m in unjudged if m in stand_ins]
        stand_in_text = ""
        if paired:
            names = ", ".join(f"{stand_ins[m]} for {m}" for m in paired)
            models_arg = ",".join(name for m in paired for name in (m, stand_ins[m]))
            stand_in_text = (
                f"Trained counterparts ({names}) would judge theirs against labels: "
                f"`suite.py run --models {models_arg}`. "
            )
        doc.para(
            f"Random weights: {', '.join(unjudged)} ran with random weights, whose agreement with FP32 says how far "
            "a precision drifts, not what it costs a trained model, so no deploy or fail verdict rests on it. "
            + stand_in_text
            + "Real weights (--weights) or a real model (--onnx) judge any of them."
        )
    unstable = sorted({f"{p.model} {p.precision}" for p in all_points if p.unstable})
    if unstable:
        doc.para(
            f"Unstable timing: {', '.join(unstable)} (rounds that disagree, a round far from the others, or samples "
            "spread widely or in two groups: the machine was busy, or the engine's speed drifts). Their speed-up "
            "intervals widen with it; re-run them on a quiet machine to confirm the verdicts that rest on them."
        )
    for engine in dict.fromkeys(p.engine for p in all_points):
        mine = [p for p in all_points if p.engine == engine]
        labelled = {model_label(p): numbers.get(p.model, 0) for p in mine}
        doc.heading(3, f"{engine}")
        title = f"{engine}: speed-up over FP32 against accuracy retained"
        markup = answer_chart(mine, labelled, threshold, title)
        path = run_dir / f"answer-{file_stem(engine)[len('roofline-') :]}.svg"
        with atomic_path(path) as tmp:
            tmp.write_text(markup)
        table = []
        low = [p for p in precisions.lower() if any(q.precision == p for q in mine)]
        by_key = {(model_label(p), p.precision): p for p in mine}
        for verdict in verdicts(mine, threshold, min_speedup):
            label = verdict.model if verdict.size in ("full", "None") else f"{verdict.model} ({verdict.size})"
            best = verdict.best
            decision = verdict.decision if verdict.decision != "deploy" else f"deploy {best.precision}"
            line: list[Any] = [
                numbers.get(verdict.model),
                label,
                TableCell(decision, None, DECISION_CSS[verdict.decision]),
            ]
            if verdict.decision == "deploy":
                line += [_speed_cell(best), _kept_cell(best), best.basis]
            else:
                line += [None, None, ""]
            for precision in low:
                line.append(_point_cell(by_key.get((label, precision))))
            line.append(verdict.reason)
            table.append(line)
        header = ["#", "model", "answer", "speed-up [95%]", "accuracy kept [95%]", "against"]
        doc.table(header + [f"{p}: speed-up, kept" for p in low] + ["why"], table, name=f"verdict-{slug(engine)}")
        doc.svg(markup, path, title)
        undrawn = [f"{model_label(p)} {p.precision}" for p in mine if not (p.speedup and p.retained is not None)]
        if undrawn:
            doc.para(f"Not on the chart (no speed-up or no accuracy): {', '.join(undrawn)}.")
    doc.para(
        "How these are measured. Speed-up: FP32's p50 latency over the precision's in the closed loop, the "
        "geometric mean over the batch sizes measured. The cells of one model and batch size are timed in "
        "interleaved rounds (--rounds; each in a warm process of its own), so that drift of the machine falls on "
        "every precision alike; the interval is Student's t on the logarithms of the rounds' paired ratios. "
        "Accuracy: against labels for trained models (the metric's ratio to FP32's, its interval a paired "
        "bootstrap over the evaluation samples) and, through its trained counterpart measured in the same run, "
        "for a catalogue model of the same architecture; random-weight agreement with FP32 (top-1, spans, "
        "boxes...; the outputs' cosine where the metric is an error; a Wilson interval for counted agreement) "
        "is shown as drift and never judged. MLPerf's rule is the threshold: a precision passes when it keeps "
        "that share of FP32's accuracy; accuracy is the lowest over the batch sizes measured."
    )


def _speed_cell(point) -> TableCell:
    """``2.61x [2.52, 2.70] (92% of MACs in int8)``, sorted by the speed-up."""
    speed = with_interval(point.speedup, point.speedup_lo, point.speedup_hi, "x")
    return TableCell(_with_share(speed, point.precision, point.mac_share), point.speedup, "num")


def _with_share(text: str, precision: str, share: float | None) -> str:
    """``text`` (a speed-up) followed by the share of the MACs that ran in ``precision`` where it is known:
    ``2.61x (92% of MACs in int8)``, ``1.01x (0% of MACs in int8, not an int8 result)``."""
    note = share_text(precision, share)
    return f"{text} ({note})" if note else text


def _kept_cell(point) -> TableCell:
    """``0.9951 [0.990, 0.999]``, sorted by the accuracy kept."""
    return TableCell(with_interval(point.retained, point.retained_lo, point.retained_hi), point.retained, "num")


def _point_cell(point) -> TableCell:
    """A lower precision in the verdict table: ``2.61x [2.52, 2.70] (92% of MACs in int8), 0.875 [0.53, 0.98]
    unjudged``, coloured by what is decided (faster and passing, failing, slower, or none of its MACs in the
    precision), sorted by speed-up; empty where it did not run."""
    if point is None:
        return TableCell("")
    speed = _with_share(
        with_interval(point.speedup, point.speedup_lo, point.speedup_hi, "x"), point.precision, point.mac_share
    )
    kept = with_interval(point.retained, point.retained_lo, point.retained_hi)
    state = point.accuracy or ""
    if point.speed in ("slower", "no gain"):
        state = f"{point.speed}, {state}".rstrip(", ")
    css = "pass" if point.speed == "faster" and point.accuracy == "pass" else None
    if point.accuracy == "fail" or point.speed == "slower" or point.not_reduced:
        css = "fail"
    return TableCell(f"{speed}, {kept} {state}".strip(), point.speedup, css)


def _speedups(doc: Document, rows: list[dict[str, Any]], threshold: float) -> None:
    doc.heading(2, "Speed-up over FP32")
    doc.para(
        "FP32 p50 latency divided by a lower precision's p50 latency of the same model, size, engine, batch and "
        "scenario, with its 95% interval where the two were timed side by side in rounds (the geometric mean of "
        "the rounds' ratios then); in LoadGen scenarios, its samples/s divided by FP32's. Concurrency above 1 is "
        "marked as @N after the scenario. FAIL marks a speed-up whose cell fails its accuracy (judged as in the "
        "accuracy table: never on a random-weight model's agreement). Beside each lower precision's speed-up, the "
        "share of the model's multiply-accumulates its artifact runs in that precision (int8 for int8 and int8fp16, "
        "float16 for fp16; counted on the graph, Loop, Scan and If bodies included): at 0% the artifact does the "
        "model's arithmetic as FP32 does, and its speed-up is not the precision's."
    )
    groups: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        groups.setdefault(speed_key(row), {})[row.get("precision")] = row
    low = [p for p in precisions.lower() if any(r.get("precision") == p for r in rows)] or list(precisions.lower())
    table = []
    for (model, size, engine, batch, scenario, concurrency), by_precision in groups.items():
        base = by_precision.get(precisions.BASE, {})
        label = scenario if concurrency == 1 else f"{scenario}@{concurrency}"
        line: list[Any] = [model, size, engine, batch, label, _p50(base), _rate(base)]
        for precision in low:
            other = by_precision.get(precision, {})
            line += [_p50(other), _rate(other)]
            paired = speedup_interval(other, base) if other else None
            ratio = paired[0] if paired else (speedup(other, base) if other else None)
            text = with_interval(*paired, "x") if paired else (f"{ratio:.2f}x" if ratio else None)
            share = other.get("reduced_mac_share") if other else None
            if ratio:
                text = _with_share(text, precision, share)
            if ratio and judgement(other, threshold)[0] == "fail":
                # Marked where it is quoted: a speed-up bought with accuracy below the threshold.
                line.append(TableCell(f"{text} FAIL", ratio, "fail"))
            elif ratio and share is not None and share <= 0:
                # Nothing ran in the precision: a speed-up that must not be quoted as the precision's.
                line.append(TableCell(text, ratio, "fail"))
            else:
                line.append(TableCell(text, ratio, "num") if ratio else (other.get("status") if other else None))
        table.append(line)
    doc.table(
        ["model", "size", "engine", "batch", "scenario", "fp32 p50 ms", "fp32 samples/s"]
        + [f"{p} {what}" for p in low for what in ("p50 ms", "samples/s", "x")],
        table,
    )


def _rate(row: dict[str, Any]) -> float | None:
    return row.get("throughput_samples_per_s") if row.get("status") == "ok" else None


def _p50(row: dict[str, Any]) -> float | None:
    return row.get("latency_ms_p50") if row.get("status") == "ok" else None


def _accuracy(doc: Document, rows: list[dict[str, Any]], threshold: float, env: dict[str, Any]) -> None:
    doc.heading(2, f"Accuracy against FP32 (threshold {threshold:g})")
    doc.para(
        "Each cell's outputs on the seeded accuracy inputs against ONNX Runtime CPU FP32 on the same inputs, with "
        "the 95% interval for the samples compared (Wilson for counted agreement, a bootstrap over images or "
        "Student's t over sample cosines otherwise). Agreement metrics (higher is better) are judged by their "
        "value, error metrics (max_abs_error), which have no scale-free bound, by the cosine similarity of the "
        f"outputs: pass where the whole interval lies at or above {threshold:g}, FAIL where it lies below, "
        "undecided where it reaches the threshold; on random weights the agreement is drift (how far a precision "
        "moves the outputs), judged only through labels. FP32 cells are listed as a check of the comparison path "
        "itself."
    )
    table = []
    for row in rows:
        if row.get("status") != "ok" or row.get("accuracy_metric") is None:
            continue
        verdict, rule = accuracy_verdict(row, threshold)
        table.append(
            [
                row["model"],
                row["engine"],
                row["precision"],
                row["batch_size"],
                row["scenario"],
                row["accuracy_metric"],
                row.get("accuracy_value"),
                interval_text(row.get("accuracy_value"), row.get("accuracy_value_lo"), row.get("accuracy_value_hi")),
                row.get("accuracy_cosine"),
                row.get("accuracy_max_abs_error"),
                rule,
                verdict,
            ]
        )
    header = ["model", "engine", "prec", "batch", "scenario", "metric", "value", "95%", "cosine", "max abs error"]
    header.append("rule")
    header.append("result")
    doc.table(header, table)
    note = kernel_note(rows, env)
    if note:
        doc.para(note)


def _labels(doc: Document, rows: list[dict[str, Any]]) -> None:
    """The trained track: each cell's task metric against the evaluation labels, FP32's, and MLPerf's targets."""
    table = [
        [
            row["model"],
            row["engine"],
            row["precision"],
            row["batch_size"],
            row["scenario"],
            row["label_metric"],
            row.get("label_value"),
            row.get("label_value_fp32"),
            row.get("label_ratio"),
            {True: "pass", False: "FAIL", None: None}[row.get("label_pass_99")],
            {True: "pass", False: "FAIL", None: None}[row.get("label_pass_999")],
        ]
        for row in rows
        if row.get("status") == "ok" and row.get("label_metric")
    ]
    if not table:
        return
    doc.heading(2, "Accuracy against labels (trained models)")
    doc.para(
        "Trained models (models trained inside the suite on labelled data from pinned packages) scored on their "
        "evaluation split against its labels: the task metric at this precision, at FP32 on the same samples, "
        "their ratio, and MLPerf's targets of 99% and 99.9% of FP32. Random-weight models have no labels: their "
        "accuracy above is against FP32 only."
    )
    doc.table(
        ["model", "engine", "prec", "batch", "scenario", "metric", "value", "fp32", "ratio", "99%", "99.9%"], table
    )


# Engines whose INT8 runs on the CPU's integer kernels (the ones that saturate on x86 without VNNI or AMX).
CPU_ENGINES = ("ort-cpu", "ort:CPUExecutionProvider")


def fp32_math_note(rows: list[dict[str, Any]]) -> str | None:
    """What "fp32" meant on the GPU rows (their ``fp32_math``: TF32 or IEEE FP32), or None without GPU rows.
    TF32 rounds the inputs of FP32 convolutions and matrix products to a 10-bit mantissa, so a TF32 "fp32"
    baseline is faster and less exact than IEEE FP32, and every speed-up over it is smaller."""
    gpu = [r for r in rows if str(r.get("device") or "").startswith("cuda") and r.get("status") == "ok"]
    if not gpu:
        return None
    by_math: dict[str, set[str]] = {}
    for row in gpu:
        by_math.setdefault(str(row.get("fp32_math") or "unrecorded"), set()).add(str(row.get("engine")))
    parts = [f"{math} on {', '.join(sorted(names))}" for math, names in sorted(by_math.items())]
    note = f"On the GPU, FP32 convolutions and matrix products ran as {'; '.join(parts)} (the rows' fp32_math)."
    if "TF32" in by_math:
        note += (
            " TF32 rounds their inputs to a 10-bit mantissa: those fp32 rows are TF32, and the speed-ups over them "
            "are over TF32, not IEEE FP32; `suite.py run --no-tf32` measures true FP32."
        )
    return note


def kernel_note(rows: list[dict[str, Any]], env: dict[str, Any]) -> str | None:
    """What the CPU's 8-bit kernels did to the INT8 rows' accuracy, or None when no INT8 ran on the CPU: a
    warning when 8-bit weights ran where u8 x s8 dot products saturate (kernel error mixed into the accuracy),
    otherwise which weight range this CPU got and why."""
    cpu = env.get("cpu", {})
    int8 = [
        r for r in rows if r.get("precision") == "int8" and r.get("engine") in CPU_ENGINES and r.get("status") == "ok"
    ]
    if not int8 or "isa" not in cpu:
        return None
    isa = cpu["isa"]
    check = "`python suite.py int8-check --models <model>` measures the kernels against INT8 simulated in float"
    if not cpu.get("int8_saturates"):
        return f"INT8 on the CPU ran on {isa} integer kernels, whose 8-bit dot products are exact here; {check}."
    full = sorted({r["model"] for r in int8 if r.get("int8_weight_bits") == 8})
    if full:
        return (
            f"Warning: {', '.join(full)} ran INT8 with 8-bit weights on {isa}, whose u8 x s8 dot products saturate "
            f"in 16 bits: their INT8 accuracy includes kernel error, not only quantization error. Run with "
            f"--int8-weights auto (7-bit weights here) or see {check}."
        )
    return (
        f"INT8 on the CPU used 7-bit weights ([-64, 64]): 8-bit dot products saturate on {isa}, so the full range "
        f"would add kernel error; {check}."
    )


def _roofline(
    doc: Document,
    rows: list[dict[str, Any]],
    roofs: dict[str, Roofs | None],
    run_dir: Path,
    plot,
    numbers: dict[str, int],
) -> None:
    from analysis.roofs import measurement_note, roof_share

    doc.heading(2, "Roofline")
    byte_models = sorted({str(r["bytes_model"]) for r in rows if r.get("bytes_model")})
    doc.para(
        "Achieved FLOP/s (FLOPs of the FP32 graph per batch / mean latency) against arithmetic intensity "
        f"(FLOPs / bytes per batch, bytes = {', '.join(byte_models) or 'unknown'}). Bytes are counted at the FP32 "
        "graph's element sizes for every precision, so FP16 and INT8 points sit at FP32's intensity (their real "
        "intensity is higher); one panel per precision keeps them apart. Points are numbered by model (key below "
        "the panels and in the table). Percent of roof = achieved / min(compute roof of the precision, bandwidth "
        "x intensity)."
    )
    for engine, engine_roofs in roofs.items():
        doc.heading(3, engine)
        if engine_roofs is None:
            doc.para(
                "No roofs for this engine's machine: run `python suite.py peak --engine ENGINE` there, then "
                "`python suite.py report DIR`, or give --peaks."
            )
        else:
            roof_rows = [[p, format_rate(v, unit(p))] for p, v in engine_roofs.compute.items()]
            roof_rows.append(["bandwidth", format_rate(engine_roofs.bandwidth, "B/s")])
            note = measurement_note(engine_roofs)
            doc.para(f"Roofs: {engine_roofs.source}." + (f" {note}" if note else ""))
            doc.table(["roof", "value"], roof_rows)
        png, _svg = plot(rows, engine_roofs, run_dir, engine, numbers)
        doc.image(png, f"roofline of {engine}")
        table = []
        above = 0
        for row in rows:
            if row.get("engine") != engine or row.get("status") != "ok" or not row.get("flops_per_s"):
                continue
            if row.get("scenario") != "latency":
                continue
            intensity = row.get("arith_intensity")
            bound = engine_roofs.attainable(row["precision"], intensity) if engine_roofs else None
            share = roof_share(engine_roofs, row)
            bound_by = engine_roofs.bound(row["precision"], intensity) if engine_roofs else None
            if share is not None and share > 1.0:
                above += 1
                share_cell = TableCell(f"{100 * share:.1f}%", 100 * share, "fail")
                bound_by = TableCell(f"{bound_by}, above roof" if bound_by else "above roof", None, "fail")
            else:
                share_cell = TableCell(f"{100 * share:.1f}%", 100 * share, "num") if share is not None else None
            table.append(
                [
                    numbers.get(row["model"]),
                    row["model"],
                    row["precision"],
                    row["batch_size"],
                    intensity,
                    format_rate(row["flops_per_s"], unit(row["precision"])),
                    format_rate(bound, unit(row["precision"])) if bound else None,
                    share_cell,
                    bound_by,
                ]
            )
        doc.table(
            ["#", "model", "prec", "batch", "FLOP/byte", "achieved", "roof", "% of roof", "bound by"],
            table,
            name=f"roof-{slug(engine)}",
        )
        if above:
            doc.para(
                f'{above} cell(s) above 100% of their roof (marked "above roof", a red edge in the chart). No cell '
                "can run faster than its roof: the roofs were measured while other work ran (too low), or, above the "
                "memory roof, the byte model counts bytes the cell read from cache rather than memory. A run measures "
                "cached roofs again when its cells go above them; to measure them on a quiet machine run "
                f"`python suite.py peak --engine {engine}`, then `python suite.py report DIR`."
            )


def _scenarios(doc: Document, rows: list[dict[str, Any]]) -> None:
    """LoadGen's results, and how its single-stream latency relates to the closed loop's."""
    loadgen = [r for r in rows if r.get("scenario") != "latency"]
    if not loadgen:
        return
    doc.heading(2, "Load scenarios (MLPerf LoadGen)")
    doc.para(
        "MLPerf LoadGen generated the queries and judged each run; a LoadGen sample is one batch of the row's "
        "batch size, so samples/s counts inputs (LoadGen's rate times the batch size). Latency is per query, "
        "from the moment LoadGen scheduled it to its completion. Each cell's LoadGen logs (summary and detail, of "
        "the performance run and of the accuracy run) are in the directory named in the last column."
    )
    table = [
        [
            r["model"],
            r["engine"],
            r["precision"],
            r["batch_size"],
            r["scenario"],
            r.get("concurrency"),
            r.get("status") if r.get("status") != "ok" else r.get("loadgen_validity"),
            r.get("queries_per_s"),
            r.get("throughput_samples_per_s"),
            f"p{r['loadgen_percentile']:g}" if r.get("loadgen_percentile") else None,
            r.get("loadgen_percentile_latency_ms"),
            r.get("loadgen_latency_bound_ms"),
            r.get("loadgen_target_qps"),
            r.get("loadgen_search_qps"),
            str(r.get("loadgen_reason") or r.get("error") or "")[:120] or None,
            r.get("loadgen_logs"),
        ]
        for r in loadgen
    ]
    header = ["model", "engine", "prec", "batch", "scenario", "threads", "result", "queries/s", "samples/s"]
    header += ["percentile", "latency ms", "bound ms", "server QPS", "peak search QPS", "reason", "logs"]
    doc.table(header, table)

    closed = {_twin(r): r for r in rows if r.get("scenario") == "latency" and r.get("status") == "ok"}
    pairs = [(closed[_twin(r)], r) for r in loadgen if r["scenario"] == "single-stream" and _twin(r) in closed]
    pairs = [
        (c, r) for c, r in pairs if r.get("status") == "ok" and r.get("latency_ms_p90") and c.get("latency_ms_p90")
    ]
    doc.heading(3, "The closed loop against LoadGen's single stream")
    doc.para(
        "The latency scenario is the suite's own timer: back-to-back inferences on feeds staged once (for GPU "
        "engines, on the device), its percentiles over the timed iterations. LoadGen's single stream issues one "
        "query at a time as well, but each query runs through the system under test: a hand-off to its worker "
        "thread, the engine's full inference call with the host copies of inputs and outputs, and the "
        "completion call back into LoadGen. On host engines that costs little, but the two cells run minutes "
        "apart, and on a shared machine their windows differ by more (ResNet-50 on two shared cores: ratios 0.90 "
        "to 1.12 across four runs); `benchmarks/loadgen_vs_timer.py` interleaves the two in one process to tell "
        "the SUT's cost from the machine's drift. On GPU engines the host copies add to LoadGen's latency."
    )
    if pairs:
        doc.table(
            ["model", "engine", "prec", "batch", "timer p90 ms", "LoadGen p90 ms", "LoadGen / timer"],
            [
                [c["model"], c["engine"], c["precision"], c["batch_size"], c["latency_ms_p90"], r["latency_ms_p90"]]
                + [f"{r['latency_ms_p90'] / c['latency_ms_p90']:.3f}"]
                for c, r in pairs
            ],
        )
    else:
        doc.para("This run has no cell measured in both scenarios (add `--scenario latency,single-stream`).")


def _twin(row: dict[str, Any]) -> tuple:
    return (row.get("model"), row.get("size"), row.get("engine"), row.get("precision"), row.get("batch_size"))


def _curves(doc: Document, rows: list[dict[str, Any]], run_dir: Path) -> None:
    """Throughput against p99 latency across batch sizes and concurrency, one figure per model, engine and
    scenario (only where a precision has two points or more)."""
    from report.curves import plot_curves, title

    drawn = plot_curves(rows, run_dir)
    if not drawn:
        return
    doc.heading(2, "Throughput against latency")
    doc.para(
        "Each line is one precision; its points are the batch sizes (bN) and SUT threads (cN) measured, "
        "throughput in samples/s against the 99th percentile latency per query, both axes logarithmic. Up and "
        "to the left is better: where the INT8 or FP16 line lies above FP32's at the same latency, low precision "
        "serves more at that bound."
    )
    for key, path, markup in drawn:
        model, _, engine, scenario = key
        doc.heading(3, title(key))
        doc.svg(markup, path, f"throughput against p99 latency of {model} on {engine}, {scenario}")


def _paper(doc: Document, rows: list[dict[str, Any]]) -> None:
    from analysis.paper import table1

    table = []
    for row in rows:
        if row.get("precision") != "fp32" or not row.get("paper_flops_per_sample"):
            continue
        if row.get("scenario") != "latency":
            continue
        paper = table1().get(paper_model(row["model"]) or "", {})
        paper_batch = int(paper["batch_size"]) if paper.get("batch_size") else None
        table.append(
            [
                row["model"],
                row["engine"],
                row["batch_size"],
                row["flops_per_batch"] / row["batch_size"] if row.get("flops_per_batch") else None,
                row["paper_flops_per_sample"],
                row.get("flops_ratio_to_paper"),
                paper_batch,
                float(paper["time_per_batch_s"]) * 1e3 if paper.get("time_per_batch_s") else None,
                row.get("latency_ms_mean") if row.get("batch_size") == paper_batch else None,
                float(paper["flops_per_s"]) if paper.get("flops_per_s") else None,
                row.get("flops_per_s"),
            ]
        )
    if not table:
        return
    doc.heading(2, "The paper's Table I")
    doc.para(
        "Our analytic FLOPs per sample (FP32 graph) against the paper's hardware counts on an NVIDIA V100 (FP32, "
        "no tensor cores), and the paper's time per batch at its batch size against ours where the batch matches."
    )
    doc.table(
        [
            "model",
            "engine",
            "batch",
            "FLOPs/sample",
            "paper FLOPs/sample",
            "ratio",
            "paper batch",
            "paper ms/batch",
            "our mean ms/batch",
            "paper FLOP/s",
            "our FLOP/s",
        ],
        table,
    )


def _environment(doc: Document, env: dict[str, Any]) -> None:
    doc.heading(2, "Environment")
    if not env:
        doc.para("The run directory has no env.json.")
        return
    cpu = env.get("cpu", {})
    facts = [
        ["cpu", cpu.get("model")],
        ["cores (logical / physical)", f"{cpu.get('logical_cores')} / {cpu.get('physical_cores')}"],
        ["memory GiB", cpu.get("memory_gib")],
        ["cpu flags", " ".join(cpu.get("flags", []))],
        ["8-bit kernels", f"{cpu.get('isa')}, dot products {'saturate' if cpu.get('int8_saturates') else 'exact'}"],
        ["python", env.get("python")],
        ["platform", env.get("platform")],
        ["onnxruntime providers", ", ".join(env.get("onnxruntime_providers", []))],
    ]
    facts += [[name, version] for name, version in env.get("packages", {}).items()]
    doc.table(["what", "value"], facts)
    doc.code(json.dumps(env, indent=2))


def write_report(
    run_dir: Path,
    threshold: float = DEFAULT_THRESHOLD,
    given: Roofs | None = None,
    min_speedup: float = MIN_SPEEDUP,
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (and the roofline images) into ``run_dir``; returns both paths.
    ``given`` roofs replace the cached measured ones; ``threshold`` and ``min_speedup`` judge the verdicts."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the accuracy threshold must be in (0, 1], got {threshold:g}")
    if not 1 <= min_speedup < float("inf"):
        raise ValueError(f"the least speed-up worth deploying must be a number >= 1, got {min_speedup:g}")
    run_dir = Path(run_dir)
    doc = build(run_dir, threshold, given, min_speedup)
    md, html_path = run_dir / "report.md", run_dir / "report.html"
    # Atomic: a report rewritten while someone has the old one open never leaves half a file.
    with atomic_path(md) as tmp:
        tmp.write_text(doc.markdown())
    with atomic_path(html_path) as tmp:
        tmp.write_text(doc.html(f"aimatrix-onnx report: {run_dir.name}"))
    return md, html_path
