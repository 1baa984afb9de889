"""The figures of ``suite.py explain``: per-layer SQNR, per-op-group time, and the accuracy-speed trade-off of
the mixed-precision candidates. matplotlib through its object API on the Agg canvas (as ``report.roofline``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.op_profile import GROUPS

DPI = 110
GROUP_COLOURS = {
    "int8 compute": "#2b7bba",
    "quantize/dequantize": "#d95f02",
    "layout": "#7570b3",
    "float compute": "#1b9e77",
    "float other": "#a6a6a6",
}
# Node labels on the SQNR chart: the worst few only, or a large graph's names cover the plot.
LABELLED_NODES = 8


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, axes, path: Path, title: str, xlabel: str, ylabel: str | None, grid: bool, **legend) -> Path:
    """Label ``axes`` (``legend``: keyword arguments of its legend), lay ``figure`` out, write it to ``path``."""
    axes.set_xlabel(xlabel)
    if ylabel:
        axes.set_ylabel(ylabel)
    if grid:
        axes.grid(alpha=0.3)
    axes.set_title(title, fontsize=10)
    axes.legend(**legend)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def plot_layer_error(rows: list[Mapping[str, Any]], path: Path, title: str) -> Path:
    """Per quantized node, in graph order: the SQNR of its quantized inputs (points; the worst
    ``LABELLED_NODES`` named) and the accumulated SQNR of its output against FP32 (line). Writes ``path``."""
    ordered = sorted(rows, key=lambda r: r.get("position") or 0)
    figure = _figure(11, 4.8)
    axes = figure.add_subplot()
    xs = list(range(len(ordered)))
    own = [_finite(r.get("sqnr_db")) for r in ordered]
    acc = [_finite(r.get("output_sqnr_db")) for r in ordered]
    axes.scatter(
        [x for x, v in zip(xs, own, strict=True) if v is not None],
        [v for v in own if v is not None],
        s=14,
        color="#d95f02",
        label="inputs after quantization (node's own error)",
    )
    axes.plot(
        [x for x, v in zip(xs, acc, strict=True) if v is not None],
        [v for v in acc if v is not None],
        color="#2b7bba",
        linewidth=1.2,
        label="output against FP32 (accumulated)",
    )
    worst = sorted((v, x) for x, v in zip(xs, own, strict=True) if v is not None)[:LABELLED_NODES]
    for value, x in worst:
        axes.annotate(
            ordered[x]["node"][-28:], (x, value), fontsize=6, rotation=30, xytext=(3, -10), textcoords="offset points"
        )
    xlabel = "quantized node (graph order)"
    ylabel = "SQNR (dB, higher is better)"
    return _save(figure, axes, path, title, xlabel, ylabel, True, fontsize=8, loc="best")


def plot_op_time(groups: Mapping[str, Mapping[str, float]], path: Path, title: str) -> Path:
    """One stacked horizontal bar per precision (``groups``: precision -> group -> ms per run), split by
    op group (``analysis.op_profile.GROUPS``). Writes ``path``."""
    figure = _figure(9, 1.2 + 0.8 * len(groups))
    axes = figure.add_subplot()
    names = list(groups)
    for group in GROUPS:
        lefts = [sum(groups[p].get(g, 0.0) for g in GROUPS[: GROUPS.index(group)]) for p in names]
        widths = [groups[p].get(group, 0.0) for p in names]
        axes.barh(names, widths, left=lefts, color=GROUP_COLOURS[group], label=group)
    axes.invert_yaxis()
    legend = {"fontsize": 7, "ncol": len(GROUPS), "loc": "upper center", "bbox_to_anchor": (0.5, -0.35)}
    return _save(figure, axes, path, title, "kernel time per inference (ms)", None, False, **legend)


def plot_tradeoff(rows: list[Mapping[str, Any]], target: float, path: Path, title: str) -> Path:
    """Each measured candidate as a point of (speed-up over FP32, accuracy retained), labelled with the number
    of nodes it keeps in float; the target drawn across. Writes ``path``."""
    figure = _figure(7, 4.8)
    axes = figure.add_subplot()
    points = [r for r in rows if r.get("speedup") is not None and r.get("retained") is not None]
    for row in points:
        ok = row["retained"] >= target
        axes.scatter(row["speedup"], row["retained"], color="#1b9e77" if ok else "#d62728", s=30, zorder=3)
        axes.annotate(
            str(row["k"]), (row["speedup"], row["retained"]), fontsize=8, xytext=(4, 3), textcoords="offset points"
        )
    axes.axhline(target, color="#444444", linestyle="--", linewidth=1, label=f"target {target:g} of FP32")
    axes.axvline(1.0, color="#bbbbbb", linewidth=1)
    xlabel, ylabel = "speed-up over FP32 (p50 latency)", "accuracy retained (fraction of FP32)"
    return _save(figure, axes, path, title, xlabel, ylabel, True, fontsize=8, loc="lower left")
