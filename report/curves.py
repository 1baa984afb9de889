"""Throughput against tail latency: where a model's operating points lie as the batch size (and, in LoadGen's
multi-stream, server and offline scenarios, the concurrency) grows, one line per precision, so that a reader
sees where low precision moves the curve.

One chart per (model, size, engine, scenario) that has at least two points on one precision's line, drawn as SVG
(``report.svg_charts.curve_chart``) so that the HTML report holds it inline with a tooltip per point.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.paths import atomic_path
from report.svg_charts import CurvePoint, curve_chart

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
    """``curve-<model>-<size>-<engine>-<scenario>.svg`` with anything unsafe in a file name replaced."""
    return "curve-" + re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(str(k) for k in key)) + ".svg"


def title(key: tuple) -> str:
    """``resnet50 (full), ort-cpu, server`` for a group key of ``curve_groups``."""
    model, size, engine, scenario = key
    return f"{model} ({size}), {engine}, {scenario}"


def plot_curves(rows: list[dict[str, Any]], out_dir: Path) -> list[tuple[tuple, Path, str]]:
    """Draw every group of ``curve_groups(rows)`` as an SVG into ``out_dir``; returns (group key, SVG path, SVG
    markup) triples."""
    drawn = []
    out_dir = Path(out_dir)
    for key, lines in curve_groups(rows).items():
        points = {
            label: [
                CurvePoint(
                    p[LATENCY], p[THROUGHPUT], point_label(p), str(p.get("precision")), p.get("concurrency") or 1
                )
                for p in members
            ]
            for label, members in lines.items()
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / file_name(key)
        markup = curve_chart(points, title(key))
        with atomic_path(path) as tmp:
            tmp.write_text(markup)
        drawn.append((key, path, markup))
    return drawn
