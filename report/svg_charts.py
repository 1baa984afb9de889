"""Charts of a report drawn as SVG text: the answer chart (speed-up over FP32 against accuracy retained), the
throughput-latency curves of a model, and the ratio chart of a comparison (run B against run A). SVG so that
the HTML report holds them inline, crisp at any zoom and with a tooltip per point, and ``report.md`` links the
same files.

Every mark carries ``data-`` attributes with its values, so a browser test can check what is drawn against
the rows it came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import NamedTuple

from analysis.verdict import Point
from common import precisions
from common.numbers import with_interval
from report.label_layout import place_labels

FAIL = "#d62728"
FONT = "font-family:sans-serif"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values between ``lo`` and ``hi`` (steps of 1, 2 or 5 times a power of ten)."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Speed-up ticks on a log axis: 1, 2, 4... and 1/2, 1/4...; with 1.5 and 3 where the axis spans little."""
    base = [2.0**k for k in range(-6, 8)]
    if hi / lo < 8:
        base += [0.75, 1.5, 3.0, 6.0]
    return sorted(t for t in base if lo <= t <= hi)


def _tick_text(value: float) -> str:
    return f"{value:g}"


def _decade_ticks(lo: float, hi: float) -> list[float]:
    """Round values on a logarithmic axis from ``lo`` to ``hi``: 1, 2 and 5 times powers of ten; only the
    powers where the axis spans more than three decades, every digit where it spans less than about a decade and
    a half, so that there are a few ticks and their labels never run into each other."""
    span = math.log10(hi / lo)
    steps = ((1,), (1, 2, 5), tuple(range(1, 10)))
    start = 0 if span > 3 else 1 if span > 1.2 else 2
    ticks: list[float] = []
    for mantissas in steps[start:]:
        ticks = [
            float(f"{m}e{e}")
            for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in mantissas
            if lo <= float(f"{m}e{e}") <= hi
        ]
        if len(ticks) >= 3:
            break
    return ticks


def _spaced(ticks: list[float], position, room) -> list[float]:
    """The ``ticks`` whose labels do not run into the previous one kept: ``position(tick)`` is its pixel
    coordinate, ``room(tick)`` the pixels its label needs along the axis."""
    kept: list[float] = []
    for tick in ticks:
        if not kept or abs(position(tick) - position(kept[-1])) >= (room(tick) + room(kept[-1])) / 2:
            kept.append(tick)
    return kept


def _count_text(value: float) -> str:
    """``20``, ``0.5``, ``21,740``: plain numbers with thousands separators, never ``2e+04``."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


@dataclass(frozen=True)
class _Frame:
    """Plot area in pixels and the data ranges mapped onto it (x logarithmic, y linear or logarithmic)."""

    left: float
    top: float
    right: float
    bottom: float
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    y_log: bool = False

    def x(self, value: float) -> float:
        span = math.log(self.x_hi) - math.log(self.x_lo)
        return self.left + (math.log(value) - math.log(self.x_lo)) / span * (self.right - self.left)

    def y(self, value: float) -> float:
        if self.y_log:
            fraction = (math.log(value) - math.log(self.y_lo)) / (math.log(self.y_hi) - math.log(self.y_lo))
        else:
            fraction = (value - self.y_lo) / (self.y_hi - self.y_lo)
        return self.bottom - fraction * (self.bottom - self.top)


def _head(kind: str, width: int, height: int, title: str) -> list[str]:
    """The opening of a chart's SVG (class ``chart <kind>``, labelled ``title``): white ground and the title."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}" style="{FONT}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]


def _grid(frame: _Frame, x_ticks: Sequence[tuple[float, str]], y_ticks: Sequence[tuple[float, str]]) -> list[str]:
    """Grid lines and tick labels of ``frame`` at the (value, label) ticks of each axis."""
    parts = []
    for tick, text in x_ticks:
        x = frame.x(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.bottom}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{x:.1f}" y="{frame.bottom + 16}" text-anchor="middle" font-size="11">{text}</text>')
    for tick, text in y_ticks:
        y = frame.y(tick)
        parts.append(f'<line x1="{frame.left}" y1="{y:.1f}" x2="{frame.right}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{text}</text>')
    return parts


def _box(frame: _Frame, height: int, x_label: str, y_label: str) -> list[str]:
    """The plot area's outline and the two axis titles (x under the plot, y turned along the left edge)."""
    return [
        f'<rect x="{frame.left}" y="{frame.top}" width="{frame.right - frame.left}" '
        f'height="{frame.bottom - frame.top}" fill="none" stroke="#444"/>',
        f'<text x="{(frame.left + frame.right) / 2}" y="{height - 18}" text-anchor="middle" font-size="12">'
        f"{x_label}</text>",
        f'<text transform="translate(16,{(frame.top + frame.bottom) / 2}) rotate(-90)" text-anchor="middle" '
        f'font-size="12">{y_label}</text>',
    ]


def _marker(precision: str, x: float, y: float, fill: str, stroke: str, width: float) -> str:
    """An SVG marker of ``precision``'s shape (``common.precisions.marker``) centred on (x, y)."""
    style = f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"'
    shape = precisions.marker(precision)
    if shape == "square":
        return f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" {style}/>'
    if shape == "triangle":
        return f'<polygon points="{x:.1f},{y - 6:.1f} {x + 6:.1f},{y + 5:.1f} {x - 6:.1f},{y + 5:.1f}" {style}/>'
    if shape == "diamond":
        corners = f"{x:.1f},{y - 6:.1f} {x + 6:.1f},{y:.1f} {x:.1f},{y + 6:.1f} {x - 6:.1f},{y:.1f}"
        return f'<polygon points="{corners}" {style}/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" {style}/>'


def answer_chart(points: Sequence[Point], numbers: dict[str, int], threshold: float, title: str) -> str:
    """An SVG scatter of ``points``: speed-up over FP32 (log x) against accuracy retained (y), one marker per
    model and precision (shape and colour by precision), labelled with the model's number in ``numbers`` (model
    label -> number, the key being the verdict table), the threshold drawn as a line with the failing region
    shaded, failing points outlined in red with a cross, and each point's 95% intervals as error bars (speed-up
    across, accuracy up and down; ``line.err`` elements with ``data-lo`` and ``data-hi``). Points without a
    speed-up or an accuracy are left out (the caller lists them)."""
    drawn = [p for p in points if p.speedup and p.retained is not None]
    width, height = 760, 460
    speeds = [v for p in drawn for v in (p.speedup, p.speedup_lo, p.speedup_hi) if v] or [1.0]
    kept = [v for p in drawn for v in (p.retained, p.retained_lo, p.retained_hi) if v is not None] or [1.0]
    x_lo, x_hi = min(0.5, min(speeds) / 1.25), max(2.0, max(speeds) * 1.25)
    y_lo, y_hi = min(threshold, min(kept)), max(1.0, max(kept))
    pad = max((y_hi - y_lo) * 0.08, 0.002)
    frame = _Frame(64, 54, width - 20, height - 52, x_lo, x_hi, y_lo - pad, y_hi + pad)
    parts = _head("answer", width, height, title)
    # The failing region: everything below the threshold.
    ty = frame.y(threshold)
    parts.append(
        f'<rect class="fail-region" x="{frame.left}" y="{ty:.1f}" width="{frame.right - frame.left}" '
        f'height="{frame.bottom - ty:.1f}" fill="{FAIL}" fill-opacity="0.07"/>'
    )
    parts += _grid(
        frame,
        [(t, f"{_tick_text(t)}x") for t in _log_ticks(frame.x_lo, frame.x_hi)],
        [(t, f"{t:g}") for t in _nice_ticks(frame.y_lo, frame.y_hi)],
    )
    x1 = frame.x(1.0)
    parts += [
        f'<line x1="{x1:.1f}" y1="{frame.top}" x2="{x1:.1f}" y2="{frame.bottom}" stroke="#888"/>',
        f'<line class="threshold" x1="{frame.left}" y1="{ty:.1f}" x2="{frame.right}" y2="{ty:.1f}" '
        f'stroke="{FAIL}" stroke-dasharray="6 4" stroke-width="1.5" data-threshold="{threshold}"/>',
        f'<text x="{frame.left + 4}" y="{ty + 14:.1f}" font-size="11" fill="{FAIL}">'
        f"below {threshold:g} of FP32: fails</text>",
    ]
    parts += _box(frame, height, "speed-up over FP32 (faster to the right)", "accuracy retained (fraction of FP32)")
    # Points that land on one spot (every model's FP32 at 1x and 1.0; FP16 that equals FP32) share one label,
    # "1-20", instead of twenty labels fanned out around one marker.
    groups: list[list[Point]] = []
    spots: list[tuple[float, float, str]] = []
    for point in drawn:
        x, y = frame.x(point.speedup), frame.y(point.retained)
        for index, (gx, gy, precision) in enumerate(spots):
            if precision == point.precision and abs(gx - x) < 3 and abs(gy - y) < 3:
                groups[index].append(point)
                break
        else:
            spots.append((x, y, point.precision))
            groups.append([point])
    labels = [number_ranges([numbers.get(model_label(p), 0) for p in group]) for group in groups]
    places = place_labels(
        [(x, y) for x, y, _ in spots],
        [(7 * len(t) + 2, 12) for t in labels],
        (frame.left, frame.top, frame.right, frame.bottom),
    )
    for group, (x, y, _), label, place in zip(groups, spots, labels, places, strict=True):
        parts.append("<g>")
        if place.leader:
            parts.append(
                f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{place.x:.1f}" y2="{place.y:.1f}" stroke="#999" '
                'stroke-width="0.8"/>'
            )
        for point in group:
            failing = point.passes is False
            tip = (
                f"#{numbers.get(model_label(point), '?')} {model_label(point)} {point.precision}: "
                f"{with_interval(point.speedup, point.speedup_lo, point.speedup_hi, 'x')}, "
                f"{with_interval(point.retained, point.retained_lo, point.retained_hi)} of FP32 against {point.basis}"
                + (" (FAILS)" if failing else "")
            )
            color = precisions.colour(point.precision)
            parts.append(
                f'<g class="point {"fail" if failing else "pass"}" data-model="{escape(model_label(point))}" '
                f'data-precision="{point.precision}" data-speedup="{point.speedup:.6g}" '
                f'data-retained="{point.retained:.6g}" data-accuracy="{point.accuracy or ""}" '
                f'data-speed="{point.speed or ""}"><title>{escape(tip)}</title>'
                + _error_bars(frame, point, x, y, color)
                + _marker(point.precision, x, y, color, FAIL if failing else "#222", 2 if failing else 0.8)
            )
            if failing:
                parts.append(
                    f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}'
                    f'L{x + 4:.1f},{y - 4:.1f}" stroke="white" stroke-width="1.6"/>'
                )
            parts.append("</g>")
        failing = any(p.passes is False for p in group)
        parts.append(
            f'<text x="{place.x:.1f}" y="{place.y + 4:.1f}" text-anchor="middle" font-size="11" '
            f'fill="{FAIL if failing else "#222"}">{label}</text></g>'
        )
    # Legend: the shapes of the precisions drawn (FP32's always: the failing mark is drawn on it) and the failing
    # mark, in one line between the title and the plot.
    lx, ly = frame.left + 8, frame.top - 14
    present = {p.precision for p in points} | {precisions.BASE}
    for entry in (e for e in precisions.REGISTRY if e.name in present):
        parts.append(_marker(entry.name, lx, ly, entry.colour, "#222", 0.8))
        parts.append(f'<text x="{lx + 10}" y="{ly + 4}" font-size="11">{entry.name}</text>')
        lx += 60
    parts.append(_marker(precisions.BASE, lx, ly, "#bbb", FAIL, 2))
    parts.append(
        f'<text x="{lx + 10}" y="{ly + 4}" font-size="11" fill="{FAIL}">fails (accuracy below the line)</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _error_bars(frame: _Frame, point: Point, x: float, y: float, color: str) -> str:
    """A point's 95% intervals as thin lines through its marker: the speed-up's across (``line.err.speed``), the
    accuracy's up and down (``line.err.kept``), each with its bounds as ``data-lo``/``data-hi``; '' where the
    point has neither."""
    bars = []
    for kind, lo, hi in (("speed", point.speedup_lo, point.speedup_hi), ("kept", point.retained_lo, point.retained_hi)):
        if lo is None or hi is None or (kind == "speed" and not (lo and hi)):
            continue
        if kind == "speed":
            x1, y1, x2, y2 = frame.x(lo), y, frame.x(hi), y
        else:
            x1, y1, x2, y2 = x, frame.y(lo), x, frame.y(hi)
        bars.append(
            f'<line class="err {kind}" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
            f'stroke-width="1.2" data-lo="{lo:.6g}" data-hi="{hi:.6g}"/>'
        )
    return "".join(bars)


class CurvePoint(NamedTuple):
    """One operating point of a throughput-latency curve: p99 latency per query (ms), throughput (samples/s),
    its label (``b8``, ``b8 c2``), precision and SUT concurrency."""

    latency_ms: float
    throughput: float
    label: str
    precision: str
    concurrency: int


# Several concurrency lines of one precision share its colour and differ in dashes: c1 solid, c2, c4, c8.
_DASHES = ("", "6 3", "2 3", "8 3 2 3")


def _log_range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi / lo < 1.5:
        middle = math.sqrt(lo * hi)
        lo, hi = middle / 1.5, middle * 1.5
    return lo / 1.2, hi * 1.2


def curve_chart(lines: Mapping[str, Sequence[CurvePoint]], title: str) -> str:
    """An SVG of throughput (log y) against p99 latency (log x): one polyline per entry of ``lines`` (label ->
    points in order), coloured and shaped by precision, dashed by concurrency where a label names one
    (``int8 c2``), each point labelled (``b8``) clear of the others and with a tooltip of its values."""
    width, height = 760, 440
    drawn = [(name, [p for p in points if p.latency_ms > 0 and p.throughput > 0]) for name, points in lines.items()]
    every = [p for _, points in drawn for p in points]
    x_lo, x_hi = _log_range([p.latency_ms for p in every] or [1.0])
    y_lo, y_hi = _log_range([p.throughput for p in every] or [1.0])
    # The legend, one entry per line, in rows between the title and the plot (as many rows as the lines need).
    legend: list[tuple[float, int]] = []
    lx, row = 84.0, 0
    for name, _ in drawn:
        if lx + 30 + 7 * len(name) > width - 20 and lx > 84:
            lx, row = 84.0, row + 1
        legend.append((lx, row))
        lx += 30 + 7 * len(name)
    top = 48 + 18 * (row + 1)
    height += 18 * row
    frame = _Frame(76, top, width - 20, height - 52, x_lo, x_hi, y_lo, y_hi, y_log=True)
    parts = _head("curve", width, height, title)
    x_ticks = _spaced(_decade_ticks(x_lo, x_hi), frame.x, lambda t: 7 * len(_count_text(t)) + 6)
    y_ticks = _spaced(_decade_ticks(y_lo, y_hi), frame.y, lambda _: 14)
    parts += _grid(frame, [(t, _count_text(t)) for t in x_ticks], [(t, _count_text(t)) for t in y_ticks])
    parts += _box(frame, height, "p99 latency per query (ms, log)", "throughput (samples/s, log)")
    anchors = [(frame.x(p.latency_ms), frame.y(p.throughput)) for p in every]
    places = iter(
        place_labels(
            anchors, [(6 * len(p.label) + 2, 11) for p in every], (frame.left, frame.top, frame.right, frame.bottom)
        )
    )
    for (name, points), (lx, row) in zip(drawn, legend, strict=True):
        if not points:
            continue
        precision = points[0].precision
        color = precisions.colour(precision)
        dash = _DASHES[(points[0].concurrency.bit_length() - 1) % 4] if " c" in name else ""
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        path = " ".join(f"{frame.x(p.latency_ms):.1f},{frame.y(p.throughput):.1f}" for p in points)
        parts.append(
            f'<g class="line" data-line="{escape(name)}"><polyline points="{path}" fill="none" stroke="{color}" '
            f'stroke-width="1.8"{dash_attr}/>'
        )
        for point in points:
            x, y = frame.x(point.latency_ms), frame.y(point.throughput)
            place = next(places)
            tip = (
                f"{name} {point.label}: {_count_text(float(f'{point.throughput:.4g}'))} samples/s "
                f"at p99 {point.latency_ms:.4g} ms"
            )
            parts.append(
                f'<g class="point" data-line="{escape(name)}" data-label="{escape(point.label)}" '
                f'data-latency="{point.latency_ms:.6g}" data-throughput="{point.throughput:.6g}">'
                f"<title>{escape(tip)}</title>" + _marker(precision, x, y, color, "#222", 0.8) + "</g>"
            )
            if place.leader:
                parts.append(
                    f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{place.x:.1f}" y2="{place.y:.1f}" stroke="#999" '
                    'stroke-width="0.8"/>'
                )
            parts.append(
                f'<text x="{place.x:.1f}" y="{place.y + 4:.1f}" text-anchor="middle" font-size="10" '
                f'fill="#333">{escape(point.label)}</text>'
            )
        parts.append("</g>")
        ly = 40 + 18 * row
        parts.append(
            f'<line x1="{lx - 8}" y1="{ly}" x2="{lx + 8}" y2="{ly}" stroke="{color}" stroke-width="1.8"{dash_attr}/>'
            + _marker(precision, lx, ly, color, "#222", 0.8)
            + f'<text x="{lx + 14}" y="{ly + 4}" font-size="11">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def number_ranges(numbers: Sequence[int]) -> str:
    """``1-3,5,7-9`` for [1, 2, 3, 5, 7, 8, 9]: the models of points that share one spot."""
    ordered = sorted(set(numbers))
    runs: list[list[int]] = []
    for number in ordered:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


def model_label(point: Point) -> str:
    """A point's model as the report names it: ``model`` (``model (tiny)`` outside the full size)."""
    return point.model if point.size in ("full", "None") else f"{point.model} ({point.size})"


def ratio_chart(bars: Sequence[tuple[str, str, float | None]], title: str, runs: Sequence[str]) -> str:
    """An SVG of horizontal bars on a log axis centred at 1: one group per cell label, one bar per run in
    ``runs`` (their order), each bar (cell label, run, ratio) drawn from 1 to its ratio, green where the run is
    faster than run A (ratio > 1) and red where slower. A missing ratio (None) is written as "n/a"."""
    cells = list(dict.fromkeys(label for label, _, _ in bars))
    per_cell = max(1, len(runs))
    bar_h, gap = 14, 8
    left, right, top = 250, 70, 44
    width = 820
    height = top + len(cells) * (per_cell * bar_h + gap) + 40
    ratios = [r for _, _, r in bars if r]
    spread = max([abs(math.log(r)) for r in ratios] + [math.log(2)]) * 1.1
    lo, hi = math.exp(-spread), math.exp(spread)

    def x(value: float) -> float:
        return left + (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo)) * (width - left - right)

    parts = _head("ratio", width, height, title)
    for tick in _log_ticks(lo, hi):
        tx = x(tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{top - 8}" x2="{tx:.1f}" y2="{height - 36}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{tx:.1f}" y="{top - 12}" text-anchor="middle" font-size="11">{tick:g}x</text>')
    parts.append(f'<line x1="{x(1):.1f}" y1="{top - 8}" x2="{x(1):.1f}" y2="{height - 36}" stroke="#444"/>')
    y = top
    by_key = {(label, run): ratio for label, run, ratio in bars}
    for label in cells:
        parts.append(
            f'<text x="{left - 8}" y="{y + per_cell * bar_h / 2 + 4:.1f}" text-anchor="end" font-size="11">'
            f"{escape(label)}</text>"
        )
        for run in runs:
            ratio = by_key.get((label, run))
            if ratio:
                x0, x1 = sorted((x(1.0), x(ratio)))
                color = "#2ca02c" if ratio >= 1 else FAIL
                parts.append(
                    f'<g class="bar" data-cell="{escape(label)}" data-run="{escape(run)}" data-ratio="{ratio:.6g}">'
                    f"<title>{escape(label)}: {escape(run)} / A = {ratio:.3f}</title>"
                    f'<rect x="{x0:.1f}" y="{y + 1}" width="{max(x1 - x0, 1):.1f}" height="{bar_h - 2}" '
                    f'fill="{color}" fill-opacity="0.8"/>'
                    f'<text x="{x1 + 4 if ratio >= 1 else x0 - 4:.1f}" y="{y + bar_h - 3}" font-size="10" '
                    f'text-anchor="{"start" if ratio >= 1 else "end"}">{escape(run)} {ratio:.2f}x</text></g>'
                )
            else:
                parts.append(f'<text x="{x(1.0) + 4:.1f}" y="{y + bar_h - 3}" font-size="10" fill="#888">')
                parts.append(f"{escape(run)} n/a</text>")
            y += bar_h
        y += gap
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle" font-size="12">'
        "throughput of the run against run A (right of 1: faster)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)
