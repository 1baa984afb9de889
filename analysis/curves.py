"""Throughput against tail latency: where a model's operating points lie as the batch size (and, in LoadGen's
multi-stream, server and offline scenarios, the concurrency) grows, one line per precision, so that a reader
sees where low precision moves the curve.

One figure per (model, size, engine, scenario) that has at least two points on one precision's line; matplotlib
through its object API on the Agg canvas, as the roofline.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from analysis.roofline import COLORS, DPI, MARKERS

FIG_SIZE_IN = (7.0, 4.8)
# The latency axis: the 99th percentile, what a latency bound is usually set on.
LATENCY = "latency_ms_p99"
THROUGHPUT = "throughput_samples_per_s"


def curve_groups(rows: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, list[dict[str, Any]]]]:
    """{(model, size, engine, scenario): {line label: ok rows with a p99 latency and a throughput, in order}},
    keeping only groups where some line has two points or more.

    A line is one precision across batch sizes; where a group was measured at several batch sizes and several
    concurrency values, one line per precision and concurrency (``int8 c2``), so that no line zig-zags between
    the two axes; where only the concurrency varies, one line per precision across it."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") != "ok" or not row.get(LATENCY) or not row.get(THROUGHPUT):
            continue
        key = (row.get("model"), row.get("size"), row.get("engine"), row.get("scenario"))
        groups.setdefault(key, []).append(row)
    curves = {}
    for key, members in groups.items():
        both = len({r.get("batch_size") for r in members}) > 1 and len({r.get("concurrency") for r in members}) > 1
        lines: dict[str, list[dict[str, Any]]] = {}
        for row in sorted(members, key=lambda r: (r.get("batch_size") or 0, r.get("concurrency"))):
            label = str(row.get("precision")) + (f" c{row.get('concurrency')}" if both else "")
            lines.setdefault(label, []).append(row)
        if any(len(points) > 1 for points in lines.values()):
            curves[key] = lines
    return curves


def point_label(row: dict[str, Any]) -> str:
    """``b8``, or ``b8 c2`` where the SUT served with more than one thread."""
    concurrency = row.get("concurrency")
    return f"b{row.get('batch_size')}" + (f" c{concurrency}" if concurrency != 1 else "")


def file_name(key: tuple) -> str:
    """``curve-<model>-<size>-<engine>-<scenario>.png`` with anything unsafe in a file name replaced."""
    return "curve-" + re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(str(k) for k in key)) + ".png"


def plot_curves(rows: list[dict[str, Any]], out_dir: Path) -> list[tuple[tuple, Path]]:
    """Draw every group of ``curve_groups(rows)`` into ``out_dir``; returns (group key, PNG path) pairs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    # Plain numbers on the logarithmic axes (20, 50, 200), not 2 x 10^1; on an axis spanning more than a decade
    # only the 2s and 5s between decades, so the labels never run into each other.
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    sparse = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else "")

    drawn = []
    out_dir = Path(out_dir)
    for key, lines in curve_groups(rows).items():
        model, size, engine, scenario = key
        figure = Figure(figsize=FIG_SIZE_IN)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for label, points in lines.items():
            x = [p[LATENCY] for p in points]
            y = [p[THROUGHPUT] for p in points]
            precision = points[0].get("precision")
            concurrency = points[0]["concurrency"]
            axes.plot(
                x,
                y,
                marker=MARKERS.get(precision, "o"),
                color=COLORS.get(precision),
                # Several concurrency lines of one precision share its colour and differ in dashes.
                linestyle=("-", "--", "-.", ":")[(concurrency.bit_length() - 1) % 4] if " c" in label else "-",
                label=label,
            )
            for point, px, py in zip(points, x, y, strict=True):
                axes.annotate(point_label(point), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axes.set_xscale("log")
        axes.set_yscale("log")
        for axis, column in ((axes.xaxis, LATENCY), (axes.yaxis, THROUGHPUT)):
            values = [p[column] for points in lines.values() for p in points]
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(plain if max(values) < 10 * min(values) else sparse)
        axes.set_xlabel("p99 latency per query (ms)")
        axes.set_ylabel("throughput (samples/s)")
        axes.set_title(f"{model} ({size}), {engine}, {scenario}", fontsize=10)
        axes.grid(True, which="both", alpha=0.2)
        axes.legend(loc="best", fontsize=8)
        figure.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / file_name(key)
        figure.savefig(path, dpi=DPI)
        drawn.append((key, path))
    return drawn
