"""Roofline plots of a run, like the AI Matrix paper's Figure 1: log-log, arithmetic intensity (FLOPs per byte
under the run's byte model) against achieved FLOP/s, one roof per precision (min(compute roof, bandwidth *
intensity)) and one point per measured (model, precision, batch size), coloured by precision and labelled with
its model, one figure per engine.

matplotlib is used through its object API on the Agg canvas (no pyplot, no display, no global backend).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from analysis.roofs import PRECISIONS, Roofs, format_rate, unit

FIG_SIZE_IN = (10.0, 6.5)
DPI = 100
COLORS = {"fp32": "#1f77b4", "fp16": "#2ca02c", "int8": "#d62728"}
MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}
# Roofs of different precisions can coincide (ONNX Runtime CPU runs FP16 GEMMs as FP32): dashes keep both visible.
LINESTYLES = {"fp32": "-", "fp16": "--", "int8": "-."}


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


def plot(rows: list[dict[str, Any]], roofs: Roofs | None, out_dir: Path, engine: str) -> list[Path]:
    """Draw the roofline of ``engine``'s rows against ``roofs`` (None: points only) into ``out_dir``.

    Writes ``roofline-<engine>.png`` (FIG_SIZE_IN at DPI) and ``.svg``; returns their paths. Points take the
    colour of their precision's roof; each model (and batch size, where a model has several) is labelled
    once, next to its highest point.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = plotted_rows(rows, engine)
    intensities = [r["arith_intensity"] for r in points]
    rates = [r["flops_per_s"] for r in points]
    peaks = dict(roofs.compute) if roofs else {}
    bandwidth = roofs.bandwidth if roofs else None
    ridges = [p / bandwidth for p in peaks.values()] if bandwidth else []
    x_values = intensities + ridges or [1.0]
    x_lo, x_hi = min(x_values) / 4, max(x_values) * 4
    y_values = rates + list(peaks.values()) or [1.0]
    y_lo, y_hi = min(y_values) / 4, max(y_values) * 3

    figure = Figure(figsize=FIG_SIZE_IN, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_xscale("log")
    axes.set_yscale("log")
    if bandwidth:
        # The bandwidth slope is shared by every precision: drawn once, up to the highest ridge point.
        x_ridge = max(ridges) if ridges else x_hi
        axes.plot(
            [x_lo, x_ridge],
            [bandwidth * x_lo, bandwidth * x_ridge],
            color="#444444",
            linewidth=2,
            label=f"bandwidth {format_rate(bandwidth, 'B/s')}",
        )
    for precision in PRECISIONS:
        if precision not in peaks:
            continue
        peak = peaks[precision]
        start = peak / bandwidth if bandwidth else x_lo
        axes.plot(
            [start, x_hi],
            [peak, peak],
            color=COLORS[precision],
            linestyle=LINESTYLES[precision],
            linewidth=2,
            label=f"{precision} roof {format_rate(peak, unit(precision))}",
        )
    for precision in PRECISIONS:
        chosen = [r for r in points if r["precision"] == precision]
        if chosen:
            axes.scatter(
                [r["arith_intensity"] for r in chosen],
                [r["flops_per_s"] for r in chosen],
                color=COLORS[precision],
                marker=MARKERS[precision],
                s=45,
                zorder=3,
                edgecolors="black",
                linewidths=0.5,
                label=f"{precision} cells",
            )
    # One label per model and batch size, next to its highest point: its precisions share one intensity
    # (bytes are counted on the FP32 graph), so marker and colour tell them apart.
    batches_per_model: dict[str, set] = {}
    groups: dict[tuple, dict[str, Any]] = {}
    for row in points:
        batches_per_model.setdefault(row["model"], set()).add(row["batch_size"])
        key = (row["model"], row["batch_size"], row["arith_intensity"])
        if key not in groups or row["flops_per_s"] > groups[key]["flops_per_s"]:
            groups[key] = row
    for (model, batch, intensity), row in groups.items():
        text = model + (f" b{batch}" if len(batches_per_model[model]) > 1 else "")
        axes.annotate(text, (intensity, row["flops_per_s"]), xytext=(6, 6), textcoords="offset points", fontsize=8)
    axes.set_xlim(x_lo, x_hi)
    axes.set_ylim(y_lo, y_hi)
    byte_models = sorted({str(r.get("bytes_model")) for r in points if r.get("bytes_model")})
    axes.set_xlabel(f"arithmetic intensity (FLOPs per byte; bytes = {', '.join(byte_models) or 'unknown'})")
    axes.set_ylabel("achieved FLOP/s (INT8: op/s)")
    source = roofs.source if roofs else "no roofs: run `python suite.py peak` or give --peaks"
    axes.set_title(f"Roofline, {engine}\n{_shorten(source, 110)}", fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    axes.grid(True, which="minor", alpha=0.1)
    if points or peaks:
        axes.legend(loc="best", fontsize=8, framealpha=0.85)
    figure.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{file_stem(engine)}.png", out_dir / f"{file_stem(engine)}.svg"]
    for path in paths:
        figure.savefig(path, dpi=DPI)
    return paths


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
