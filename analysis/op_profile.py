"""Where an inference's time goes, per op type, from ONNX Runtime's profiler trace.

ONNX Runtime's profiler (``SessionOptions.enable_profiling``) writes one Chrome-trace event per node run (``cat``
``Node``, ``name`` ending ``_kernel_time``, ``dur`` in microseconds, ``args`` with the kernel's ``op_name``,
``provider`` and input types) and one ``model_run`` event per ``run`` call. The op types are those of the
optimised graph the session executes (``QLinearConv``, ``FusedConv``, ``NhwcMaxPool``), not of the file.

Each kernel falls in a group that says what its time is for:

- ``int8 compute``: kernels on 8-bit data (QLinearConv, QGemm, MatMulIntegerToFloat, uint8 pooling, ...);
- ``quantize/dequantize``: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear left in the optimised graph,
  where a float tensor enters or leaves an 8-bit region;
- ``layout``: Transpose and NCHWc reorders the optimiser inserts between layouts;
- ``float compute``: Conv, MatMul, Gemm, recurrent and attention kernels in float;
- ``float other``: every other float kernel (element-wise, normalisation, pooling, gathers): in an INT8 graph,
  the float islands between dequantize and quantize.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

QDQ = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
LAYOUT = frozenset({"Transpose", "ReorderInput", "ReorderOutput"})
FLOAT_COMPUTE = frozenset(
    {
        "Conv",
        "FusedConv",
        "NchwcConv",
        "ConvTranspose",
        "MatMul",
        "FusedMatMul",
        "Gemm",
        "FusedGemm",
        "Einsum",
        "LSTM",
        "GRU",
        "RNN",
        "Attention",
        "MultiHeadAttention",
    }
)
_EIGHT_BIT = ("int8", "uint8")
GROUPS = ("int8 compute", "quantize/dequantize", "layout", "float compute", "float other")


def op_group(op_type: str, input_types: Iterable[str] = ()) -> str:
    """The group (``GROUPS``) of a kernel of ``op_type`` whose inputs have the element types ``input_types``."""
    if op_type in QDQ:
        return "quantize/dequantize"
    if op_type in LAYOUT:
        return "layout"
    types = list(input_types)
    if op_type.startswith(("QLinear", "QGemm", "QAttention", "QEmbed")) or "Integer" in op_type:
        return "int8 compute"
    if types and types[0] in _EIGHT_BIT:
        return "int8 compute"
    if op_type.startswith("DynamicQuantize"):  # DynamicQuantizeMatMul, DynamicQuantizeLSTM: int8 weights
        return "int8 compute"
    return "float compute" if op_type in FLOAT_COMPUTE else "float other"


def _input_types(event: Mapping[str, Any]) -> list[str]:
    """The element types of a node event's inputs, in order (``input_type_shape``: [{type: shape}, ...])."""
    return [next(iter(item)) for item in event.get("args", {}).get("input_type_shape", []) if item]


def per_op_time(events: list[Mapping[str, Any]], skip_runs: int = 0) -> tuple[list[dict], dict[str, float]]:
    """Time per (op type, group) per run, from a trace's ``events``, leaving out the first ``skip_runs`` runs
    (warm-up: first runs allocate and pack weights).

    Returns (rows, totals): each row has ``op_type``, ``group``, ``nodes`` (distinct nodes of that type),
    ``ms_per_run`` and ``share`` (of the summed kernel time), largest first; ``totals`` has ``runs``,
    ``run_ms`` (mean wall time of a ``model_run``) and ``kernel_ms`` (summed kernel time per run: less than
    ``run_ms`` by the executor's own overhead and, with intra-op threads, never more than the wall time)."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    kept = runs[skip_runs:]
    if not kept:
        raise ValueError(f"the trace holds {len(runs)} runs, none after the {skip_runs} warm-up runs")
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in kept]
    start = windows[0][0]
    totals: dict[tuple[str, str], float] = {}
    nodes: dict[tuple[str, str], set[str]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        ts = event["ts"]
        if ts < start or not any(lo <= ts <= hi for lo, hi in windows):
            continue
        op = event.get("args", {}).get("op_name", "?")
        key = (op, op_group(op, _input_types(event)))
        totals[key] = totals.get(key, 0.0) + event["dur"] / 1000.0
        nodes.setdefault(key, set()).add(event["name"])
    kernel_ms = sum(totals.values()) / len(kept)
    rows = [
        {
            "op_type": op,
            "group": group,
            "nodes": len(nodes[(op, group)]),
            "ms_per_run": ms / len(kept),
            "share": (ms / len(kept)) / kernel_ms if kernel_ms else 0.0,
        }
        for (op, group), ms in totals.items()
    ]
    rows.sort(key=lambda r: -r["ms_per_run"])
    run_ms = sum(e["dur"] for e in kept) / len(kept) / 1000.0
    return rows, {"runs": len(kept), "run_ms": run_ms, "kernel_ms": kernel_ms}


def group_totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Milliseconds per run of each group (``GROUPS`` order, every group present) from ``per_op_time`` rows."""
    out = dict.fromkeys(GROUPS, 0.0)
    for row in rows:
        out[row["group"]] = out.get(row["group"], 0.0) + row["ms_per_run"]
    return out
