"""The answer a report opens with: for each engine and model, whether a lower precision can be deployed, judged
only where the evidence carries it. Pure functions over result rows (dicts as in ``results.jsonl``).

- A **point** is one (engine, model, size, precision). Its **speed-up** over FP32 comes from the paired rounds of
  the closed loop (``analysis.intervals.ratio_interval`` of the two cells' round p50s, measured side by side in
  one interleaved group), with a 95% interval; over several batch sizes (or LoadGen thread counts) the geometric
  mean of the cells' speed-ups, the lowest low end and the highest high end. It is **faster** when the whole
  interval lies at or above ``min_speedup`` (1.05: a gain worth deploying), **slower** when it lies below 1, and
  of **no measurable gain** otherwise; without an interval (cells not timed side by side: LoadGen scenarios,
  results from before rounds) it is undecided.
- Its **accuracy** is judged where the weights are real (``judgement``): a trained model's metric on its
  evaluation labels relative to FP32's (``label_ratio``, with its bootstrap interval); a user's checkpoint's or a
  brought-in file's agreement with FP32; for a random-weight catalogue model, the label ratio of its trained
  counterpart (the same architecture trained in the suite, ``counterparts``) measured in the same run on the same
  engine and precision. It **passes** when the interval's low end reaches the threshold (MLPerf's 99% of FP32 by
  default), **fails** when its high end stays below it, and is **undecided** in between. A random-weight model's
  own agreement with FP32 says how far a precision drifts from FP32, not what it costs a trained model: it is
  shown (``retained``, with its interval) but never judged (``unjudged``).
- The **verdict** of a model: deploy the fastest precision that is faster and passes; keep FP32 when every lower
  precision is settled against (not faster, or failing); otherwise undecided, with what would decide it. A cell
  whose timing is flagged unstable (``analysis.intervals.unstable``) is named, not skipped: its speed-up's
  interval comes from its rounds, so a disturbed timing widens it until it decides nothing.
- A point whose artifact runs none of the model's MACs in its precision (``reduced_mac_share`` 0,
  ``analysis.quant_coverage``) is FP32 under another name: it is never deployed, and settled against like a
  precision without gain.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from analysis.accuracy import retained, retained_and_basis
from analysis.quant_coverage import share_text
from common import precisions
from common.numbers import with_interval

# The least speed-up worth deploying: a lower precision is "faster" only when its whole interval lies above it.
MIN_SPEEDUP = 1.05


def speed_key(row: dict[str, Any]) -> tuple:
    """The cell a row's precision is compared within: model, size, engine, batch size, scenario, concurrency."""
    return (
        row.get("model"),
        row.get("size"),
        row.get("engine"),
        row.get("batch_size"),
        row.get("scenario"),
        row.get("concurrency"),
    )


def round_p50s(row: dict[str, Any]) -> list[float]:
    """The p50 latency of each timing round of ``row`` (``round_p50_ms``, a JSON list), [] where there are none."""
    try:
        values = json.loads(row.get("round_p50_ms") or "[]")
    except (TypeError, ValueError):
        return []
    return [float(v) for v in values] if isinstance(values, list) else []


def speedup(row: dict[str, Any], fp32: dict[str, Any] | None) -> float | None:
    """How much faster ``row`` is than its FP32 twin: the ratio of p50 latencies in the closed loop (as the
    paper compares), of throughputs in LoadGen scenarios (an offline run has no per-query latency)."""
    if not fp32 or row.get("status") != "ok" or fp32.get("status") != "ok":
        return None
    if row.get("scenario") == "latency":
        base, other = fp32.get("latency_ms_p50"), row.get("latency_ms_p50")
        return base / other if base and other else None
    base, other = fp32.get("throughput_samples_per_s"), row.get("throughput_samples_per_s")
    return other / base if base and other else None


def speedup_interval(row: dict[str, Any], fp32: dict[str, Any] | None) -> tuple[float, float, float] | None:
    """(speed-up, low, high) of ``row`` over its FP32 twin from their paired rounds (the geometric mean of the
    round ratios and its 95% interval), or None where the two were not timed in rounds side by side."""
    from analysis.intervals import ratio_interval

    if not fp32 or row.get("status") != "ok" or fp32.get("status") != "ok":
        return None
    if not row.get("rounds_group") or row.get("rounds_group") != fp32.get("rounds_group"):
        return None
    base, other = round_p50s(fp32), round_p50s(row)
    paired = min(len(base), len(other))
    return ratio_interval(base[:paired], other[:paired]) if paired >= 2 else None


def retained_interval(row: dict[str, Any]) -> tuple[float | None, float | None]:
    """The 95% interval of ``retained(row)``: the label ratio's where it is against labels, else the agreement's;
    (None, None) where the row has none. A cell judged by its outputs' cosine (an error metric: the CTR models'
    probabilities, one number per sample, whose per-sample cosine is only a sign) has none: it is judged on the
    value."""
    if row.get("label_ratio") is not None:
        return row.get("label_ratio_lo"), row.get("label_ratio_hi")
    if retained_and_basis(row)[1].endswith("(cosine)"):
        return None, None
    return row.get("accuracy_value_lo"), row.get("accuracy_value_hi")


@dataclass(frozen=True)
class Point:
    """One precision of one model on one engine: what the answer chart draws and the verdict chooses from.

    ``speed`` is ``faster``, ``slower``, ``no gain`` or None (FP32, or no interval); ``accuracy`` is ``pass``,
    ``fail``, ``undecided`` (label-backed, the interval reaching the threshold), ``unjudged`` (random weights,
    no trained counterpart measured) or None (FP32, or nothing measured). ``basis`` says what ``retained`` is
    against; ``evidence`` names the trained model whose labels judged it (itself for a trained model).
    ``mac_share`` is the lowest ``reduced_mac_share`` of its cells: the share of the model's MACs its artifact runs
    in the precision's element type (None for FP32 and rows without it)."""

    engine: str
    model: str
    size: str
    precision: str
    speedup: float | None
    speedup_lo: float | None
    speedup_hi: float | None
    speed: str | None
    retained: float | None
    retained_lo: float | None
    retained_hi: float | None
    accuracy: str | None
    basis: str
    evidence: str | None
    unstable: str | None
    samples: int | None
    mac_share: float | None = None

    @property
    def not_reduced(self) -> bool:
        """True where the artifact runs none of the MACs in its precision: its speed-up is not the precision's."""
        return self.mac_share is not None and self.mac_share <= 0

    @property
    def passes(self) -> bool | None:
        """True where the accuracy passes, False where it fails, None where it is not judged or undecided."""
        return {"pass": True, "fail": False}.get(self.accuracy or "")


@dataclass(frozen=True)
class Verdict:
    """A model's answer on one engine: ``decision`` (``deploy``, ``keep fp32``, ``undecided``, ``none``), the
    precision to use (``best``: the one deployed, or FP32 kept), and why, with what would decide it."""

    engine: str
    model: str
    size: str
    decision: str
    best: Point | None
    reason: str


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _speed(lo: float | None, hi: float | None, min_speedup: float) -> str | None:
    if lo is None or hi is None:
        return None
    if lo >= min_speedup:
        return "faster"
    if hi < 1:
        return "slower"
    return "no gain"


def _judge(lo: float | None, hi: float | None, value: float | None, threshold: float) -> str | None:
    """``pass``, ``fail`` or ``undecided`` for a label-backed accuracy; without an interval the value decides."""
    if value is None:
        return None
    low = value if lo is None else lo
    high = value if hi is None else hi
    if low >= threshold:
        return "pass"
    if high < threshold:
        return "fail"
    return "undecided"


def points(
    rows: Iterable[dict[str, Any]],
    threshold: float,
    counterparts: Mapping[str, str] | None = None,
    min_speedup: float = MIN_SPEEDUP,
) -> list[Point]:
    """Every (engine, model, size, precision) with an ok row, FP32 included (at speed-up 1), in the order the
    rows first name them, precisions in registry order. ``counterparts`` maps a random-weight catalogue model to
    its trained counterpart ({"resnet50": "resnet50_mnist", ...}): where the counterpart's rows are among
    ``rows``, their label-backed accuracy judges the model (see the module docstring)."""
    rows = [r for r in rows if r.get("status") == "ok"]
    counterparts = dict(counterparts or {})
    # The scenario each (engine, model, size) is judged in: the closed loop where it ran, else the first one.
    chosen: dict[tuple, str] = {}
    for row in rows:
        key = (row.get("engine"), row.get("model"), row.get("size"))
        if key not in chosen or row.get("scenario") == "latency":
            chosen[key] = row.get("scenario")
    fp32 = {speed_key(r): r for r in rows if r.get("precision") == precisions.BASE}
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row.get("engine"), row.get("model"), row.get("size"))
        if row.get("scenario") == chosen[key]:
            grouped.setdefault((*key, row.get("precision")), []).append(row)
    first_seen = {key: i for i, key in enumerate(chosen)}
    keys = sorted(grouped, key=lambda k: (first_seen[k[:3]], precisions.order(k[3]), str(k[3])))
    own = {key: _accuracy(grouped[key], threshold) for key in keys}
    out = []
    for engine, model, size, precision in keys:
        cells = grouped[(engine, model, size, precision)]
        base = precision == precisions.BASE
        intervals = [speedup_interval(r, fp32.get(speed_key(r))) for r in cells]
        ratios = [speedup(r, fp32.get(speed_key(r))) for r in cells]
        if all(intervals) and not base:
            point_speed = _geomean([i[0] for i in intervals])
            lo, hi = min(i[1] for i in intervals), max(i[2] for i in intervals)
        else:
            point_speed = _geomean([r for r in ratios if r is not None])
            lo = hi = None
        accuracy = own[(engine, model, size, precision)]
        counterpart = counterparts.get(model)
        if counterpart and accuracy["accuracy"] == "unjudged" and (engine, counterpart, size, precision) in own:
            borrowed = own[(engine, counterpart, size, precision)]
            if borrowed["evidence"]:
                accuracy = {**borrowed, "basis": borrowed["basis"].replace("labels", f"labels of {counterpart}", 1)}
        unstable = next((r.get("unstable") for r in cells if r.get("unstable")), None)
        shares = [r["reduced_mac_share"] for r in cells if r.get("reduced_mac_share") is not None]
        out.append(
            Point(
                engine=str(engine),
                model=str(model),
                size=str(size),
                precision=str(precision),
                speedup=1.0 if base and point_speed else point_speed,
                speedup_lo=None if base else lo,
                speedup_hi=None if base else hi,
                speed=None if base else _speed(lo, hi, min_speedup),
                retained=accuracy["retained"],
                retained_lo=accuracy["lo"],
                retained_hi=accuracy["hi"],
                accuracy=None if base else accuracy["accuracy"],
                basis=accuracy["basis"],
                evidence=accuracy["evidence"],
                unstable=unstable,
                samples=accuracy["samples"],
                mac_share=min(shares) if shares and not base else None,
            )
        )
    return out


def weights_of(row: dict[str, Any]) -> str:
    """What ``row``'s model weights are (its ``weights`` column; for rows written before it: ``trained`` where
    it has a label metric, ``file`` for a brought-in model, else ``random``)."""
    if row.get("weights"):
        return str(row["weights"])
    if row.get("label_ratio") is not None:
        return "trained"
    return "file" if row.get("framework") == "onnx" else "random"


def judgement(row: dict[str, Any], threshold: float) -> tuple[str | None, str]:
    """(``pass``, ``fail``, ``undecided``, ``unjudged`` or None, what it is judged against) for one cell's
    accuracy: against labels where it has them; by its agreement with FP32 where its weights are real (a user's
    checkpoint, a brought-in file); never by a random-weight model's agreement, which is drift (``unjudged``).
    None where no accuracy was measured. Judged on the 95% interval where there is one, else on the value."""
    value, basis = retained_and_basis(row)
    if value is None:
        return None, "no accuracy measured"
    lo, hi = retained_interval(row)
    if row.get("label_ratio") is not None:
        return _judge(lo, hi, value, threshold), basis
    if weights_of(row) in ("checkpoint", "file"):
        return _judge(lo, hi, value, threshold), f"{basis}, real weights"
    return "unjudged", f"{basis}, random weights"


def _accuracy(cells: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The accuracy of one precision's cells: the worst cell's retained value and interval, its judgement and
    what it is against, and the model whose labels or real weights judged it."""
    measured = [r for r in cells if retained(r) is not None]
    if not measured:
        return dict.fromkeys(("retained", "lo", "hi", "accuracy", "evidence", "samples")) | {"basis": ""}
    worst = min(measured, key=retained)
    lo, hi = retained_interval(worst)
    state, basis = judgement(worst, threshold)
    return {
        "retained": retained(worst),
        "lo": lo,
        "hi": hi,
        "accuracy": state,
        "basis": basis,
        "evidence": worst.get("model") if state != "unjudged" else None,
        "samples": worst.get("accuracy_samples_n") or worst.get("accuracy_samples"),
    }


def verdicts(all_points: Iterable[Point], threshold: float = 0.99, min_speedup: float = MIN_SPEEDUP) -> list[Verdict]:
    """Per (engine, model, size) in order: deploy the fastest precision that is faster and passes; keep FP32 when
    every lower precision is settled against; otherwise undecided, the reason naming what would decide it."""
    grouped: dict[tuple, list[Point]] = {}
    for point in all_points:
        grouped.setdefault((point.engine, point.model, point.size), []).append(point)
    out = []
    for (engine, model, size), members in grouped.items():
        base = next((p for p in members if p.precision == precisions.BASE and p.speedup), None)
        if base is None:
            out.append(Verdict(engine, model, size, "none", None, "FP32 did not run: no speed-up to compare"))
            continue
        lower = [p for p in members if p.precision != precisions.BASE]
        if not lower:
            out.append(Verdict(engine, model, size, "none", None, "no lower precision ran"))
            continue
        deployable = [p for p in lower if p.speed == "faster" and p.accuracy == "pass" and not p.not_reduced]
        if deployable:
            best = max(deployable, key=lambda p: (p.speedup or 0, -precisions.order(p.precision)))
            others = [_why(p, threshold, min_speedup) for p in lower if p is not best]
            reason = f"{best.precision} is faster and keeps the accuracy ({best.basis})"
            out.append(Verdict(engine, model, size, "deploy", best, "; ".join([reason, *others])))
            continue
        settled = all(p.speed in ("no gain", "slower") or p.accuracy == "fail" or p.not_reduced for p in lower)
        reasons = "; ".join(_why(p, threshold, min_speedup) for p in lower)
        if settled:
            out.append(Verdict(engine, model, size, "keep fp32", base, reasons))
        else:
            out.append(Verdict(engine, model, size, "undecided", None, reasons))
    return out


def _why(point: Point, threshold: float, min_speedup: float) -> str:
    """One clause on ``point``: its speed and accuracy as far as they are decided, and what would decide the
    rest. An unstable timing does not by itself withhold a verdict (the speed-up's interval, made from the
    rounds, widens with it), but is named."""
    clause = _clause(point, threshold, min_speedup)
    return f"{clause} (its timing is flagged unstable: re-run to confirm)" if point.unstable else clause


def _clause(point: Point, threshold: float, min_speedup: float) -> str:
    from analysis.intervals import samples_to_decide

    name = point.precision
    if point.not_reduced:
        return f"{name} has {share_text(name, point.mac_share)}"
    if point.speed is None:
        speed = f"{name} was not timed side by side with FP32 in rounds (re-run with --rounds 5)"
    elif point.speed == "faster":
        speed = f"{name} is faster ({with_interval(point.speedup, point.speedup_lo, point.speedup_hi, 'x')})"
    elif point.speed == "slower":
        return f"{name} is slower ({with_interval(point.speedup, point.speedup_lo, point.speedup_hi, 'x')})"
    else:
        span = with_interval(point.speedup, point.speedup_lo, point.speedup_hi, "x")
        return f"{name} has no measurable gain ({span}, not all above {min_speedup:g}x)"
    if point.accuracy == "fail":
        kept = with_interval(point.retained, point.retained_lo, point.retained_hi)
        return f"{speed} but fails ({kept} of FP32 against {point.basis})"
    if point.accuracy == "pass":
        return f"{speed} and passes ({point.basis})"
    if point.accuracy == "undecided":
        kept = with_interval(point.retained, point.retained_lo, point.retained_hi)
        needed = None
        if "labels" not in point.basis and point.retained is not None and point.samples:
            needed = samples_to_decide(point.retained, threshold, point.samples)
        if needed:
            settle = f"{point.samples} samples are too few; about {needed} would decide it (--accuracy-samples)"
        else:
            settle = "these labels cannot decide it"
        return f"{speed}; its accuracy {kept} against {point.basis} reaches {threshold:g}: undecided, {settle}"
    if point.accuracy == "unjudged":
        needed = (
            samples_to_decide(point.retained, threshold, point.samples)
            if point.retained is not None and point.samples
            else None
        )
        drift = (
            f"drifts to {with_interval(point.retained, point.retained_lo, point.retained_hi)} of FP32 ({point.basis})"
        )
        more = f"; {needed} samples would settle the drift" if needed and needed > (point.samples or 0) else ""
        labels = "a trained counterpart, --weights or a real model"
        return f"{speed}; its accuracy is not judged: {drift}{more}, and needs labels ({labels})"
    return f"{speed}; no accuracy measured"
