"""Roofline plots of a run, like the AI Matrix paper's Figure 1: log-log, arithmetic intensity (FLOPs per byte
under the run's byte model) against achieved FLOP/s, one roof per precision (min(compute roof, bandwidth *
intensity)) and one point per measured (model, precision, batch size), one panel per precision, points numbered
with a key under the panels (twenty models' names would cover each other), one figure per engine.

matplotlib is used through its object API on the Agg canvas (no pyplot, no display, no global backend).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from analysis.roofs import Roofs, roof_share, unit
from common import precisions
from common.numbers import format_rate

# One panel per precision side by side (FP32, FP16, INT8) and the key under them.
FIG_SIZE_IN = (15.0, 6.0)
DPI = 100
# matplotlib's markers for the registry's shapes.
MARKERS = {"circle": "o", "square": "s", "triangle": "^", "diamond": "D"}
# Roofs of different precisions can coincide (ONNX Runtime CPU runs FP16 GEMMs as FP32): dashes, by the
# precision's place in the registry, keep both visible.
LINESTYLES = ("-", "--", "-.", ":")
# The edge of a point above its roof (roofs measured under load, or a byte model that counts cached bytes).
ABOVE_EDGE = "#b0001e"


def _style(precision: str) -> tuple[str, str, str]:
    """(colour, matplotlib marker, line style) of ``precision``."""
    line = LINESTYLES[precisions.order(precision) % len(LINESTYLES)]
    return precisions.colour(precision), MARKERS[precisions.marker(precision)], line


def plotted_rows(rows: Iterable[dict[str, Any]], engine: str) -> list[dict[str, Any]]:
    """The rows of ``engine`` that can be placed on a roofline: ok, with intensity and FLOP/s above zero, measured
    by the closed loop (a LoadGen scenario's rate includes its arrival pattern, not only the engine's speed)."""
    return [
        r
        for r in rows
        if r.get("engine") == engine
        and r.get("status") == "ok"
        and r.get("scenario") == "latency"
        and (r.get("arith_intensity") or 0) > 0
        and (r.get("flops_per_s") or 0) > 0
    ]


def file_stem(engine: str) -> str:
    """``roofline-<engine>`` with anything but letters, digits, dot, dash and underscore replaced."""
    return "roofline-" + re.sub(r"[^A-Za-z0-9_.-]", "_", engine)


def model_numbers(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """{model: number from 1} in the order the ok rows first name them: the key shared by the roofline's
    markers and the report's tables."""
    names = dict.fromkeys(str(r.get("model")) for r in rows if r.get("status") == "ok" and r.get("model"))
    return {name: i for i, name in enumerate(names, start=1)}


def plot(
    rows: list[dict[str, Any]],
    roofs: Roofs | None,
    out_dir: Path,
    engine: str,
    numbers: dict[str, int] | None = None,
) -> list[Path]:
    """Draw the roofline of ``engine``'s rows against ``roofs`` (None: points only) into ``out_dir``.

    One panel per precision (side by side, one y axis), so that a model's FP32, FP16 and INT8 points, which
    share an intensity, never sit on each other. Each point is a marker labelled with its model's number in
    ``numbers`` (default ``model_numbers(rows)``; ``3b8`` where a model has several batch sizes), placed clear
    of the other labels (``report.label_layout``) with a leader line where it had to move; the key (number ->
    model) is printed under the panels. Writes ``roofline-<engine>.png`` (FIG_SIZE_IN at DPI) and ``.svg``
    atomically; returns their paths.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from common.paths import atomic_path
    from report.label_layout import place_labels

    numbers = numbers or model_numbers(rows)
    points = plotted_rows(rows, engine)
    intensities = [r["arith_intensity"] for r in points]
    rates = [r["flops_per_s"] for r in points]
    shown = [*roofs.compute, *sorted({r["precision"] for r in points} - set(roofs.compute))] if roofs else []
    peaks = {p: roofs.peak(p) for p in shown if roofs.peak(p) is not None} if roofs else {}
    bandwidth = roofs.bandwidth if roofs else None
    ridges = [p / bandwidth for p in peaks.values()] if bandwidth else []
    x_values = intensities + ridges or [1.0]
    x_lo, x_hi = min(x_values) / 4, max(x_values) * 4
    y_values = rates + list(peaks.values()) or [1.0]
    y_lo, y_hi = min(y_values) / 4, max(y_values) * 3
    named = [*precisions.NAMES, *sorted({r["precision"] for r in points} - set(precisions.NAMES))]
    panels = [p for p in named if p in peaks or any(r["precision"] == p for r in points)] or [precisions.BASE]
    batches_per_model: dict[str, set] = {}
    for row in points:
        batches_per_model.setdefault(row["model"], set()).add(row["batch_size"])

    figure = Figure(figsize=FIG_SIZE_IN, dpi=DPI)
    FigureCanvasAgg(figure)
    grid = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    placements = []
    above_roof = 0
    for axes, precision in zip(grid, panels, strict=True):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlim(x_lo, x_hi)
        axes.set_ylim(y_lo, y_hi)
        peak = peaks.get(precision)
        colour, marker, line = _style(precision)
        if bandwidth:
            ridge = peak / bandwidth if peak else x_hi
            axes.plot([x_lo, ridge], [bandwidth * x_lo, bandwidth * ridge], color="#444444", linewidth=2)
        if peak:
            start = peak / bandwidth if bandwidth else x_lo
            axes.plot([start, x_hi], [peak, peak], color=colour, linestyle=line, lw=2)
        chosen = [r for r in points if r["precision"] == precision]
        # A point above its roof (analysis.roofs.above_roof) gets a thick red edge; the report's table says why.
        high = [(roof_share(roofs, r) or 0.0) > 1.0 for r in chosen]
        above_roof += sum(high)
        axes.scatter(
            [r["arith_intensity"] for r in chosen],
            [r["flops_per_s"] for r in chosen],
            color=colour,
            marker=marker,
            s=40,
            zorder=3,
            edgecolors=[ABOVE_EDGE if h else "black" for h in high],
            linewidths=[2.2 if h else 0.5 for h in high],
        )
        roof_text = f"roof {format_rate(peak, unit(precision))}" if peak else "no roof"
        axes.set_title(f"{precision} ({roof_text})", fontsize=10, color=colour)
        axes.grid(True, which="major", alpha=0.3)
        axes.grid(True, which="minor", alpha=0.1)
        placements.append((axes, chosen))
    byte_models = sorted({str(r.get("bytes_model")) for r in points if r.get("bytes_model")})
    grid[len(grid) // 2].set_xlabel(
        f"arithmetic intensity (FLOPs per byte; bytes = {', '.join(byte_models) or 'unknown'})"
    )
    grid[0].set_ylabel("achieved FLOP/s (INT8: op/s)")
    source = roofs.source if roofs else "no roofs: run `python suite.py peak` or give --peaks"
    bw_text = f"; bandwidth {format_rate(bandwidth, 'B/s')} (grey slope)" if bandwidth else ""
    above_text = f"; red edge: {above_roof} point(s) above their roof" if above_roof else ""
    figure.suptitle(f"Roofline, {engine}{bw_text}{above_text}\n{_shorten(source, 130)}", fontsize=10)
    key = [f"{numbers[m]} {m}" for m in sorted(batches_per_model, key=lambda m: numbers.get(m, 0)) if m in numbers]
    lines = [",   ".join(key[i : i + 8]) for i in range(0, len(key), 8)]
    figure.text(0.5, 0.01, "\n".join(lines), ha="center", va="bottom", fontsize=9)
    figure.tight_layout(rect=(0, 0.01 + 0.03 * len(lines), 1, 1))
    # Labels go where they are clear of each other in display pixels, known only once the layout is final.
    for axes, chosen in placements:
        several = {m for m, batches in batches_per_model.items() if len(batches) > 1}
        texts = [
            str(numbers.get(r["model"], "?")) + (f"b{r['batch_size']}" if r["model"] in several else "") for r in chosen
        ]
        anchors = [tuple(axes.transData.transform((r["arith_intensity"], r["flops_per_s"]))) for r in chosen]
        box = axes.bbox
        places = place_labels(
            anchors, [(6 * len(t) + 3, 11) for t in texts], (box.x0, box.y0, box.x1, box.y1), marker_radius=5
        )
        for row, text, place in zip(chosen, texts, places, strict=True):
            # Axes fractions, not pixels: the SVG is drawn at another resolution than the PNG.
            axes.annotate(
                text,
                (row["arith_intensity"], row["flops_per_s"]),
                xytext=((place.x - box.x0) / box.width, (place.y - box.y0) / box.height),
                textcoords="axes fraction",
                ha="center",
                va="center",
                fontsize=8,
                arrowprops={"arrowstyle": "-", "color": "#888888", "lw": 0.6} if place.leader else None,
            )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{file_stem(engine)}.png", out_dir / f"{file_stem(engine)}.svg"]
    for path in paths:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=DPI)
    return paths


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
