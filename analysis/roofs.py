"""Machine roofs as data: compute per precision and memory bandwidth (``Roofs``), given ones (datasheet
presets, ``--peak-flops`` / ``--peak-bw``, a roofs file), the key measured ones are cached under, and their
printing. Pure: nothing here reads or writes files but a roofs file the user names.

Measured roofs are made by ``bench.peak`` (dense GEMMs and a streaming Add run through the engine under
test) and cached per machine (``machine_key``: CPU model, logical cores, onnxruntime version, engine, threads)
by ``bench.roofs_cache``. Named presets and given roofs describe
another machine (a datasheet); when any is given, measured roofs are not mixed in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import precisions
from common.numbers import format_rate

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}
# A run measures cached roofs again when one of its cells goes above them by more than this share. A cell's
# FLOP/s comes from its mean latency and a roof from the best iteration, so a cell sits below its roof; the margin
# leaves room for a model's kernels beating the roof GEMM's by a little (quick roofs use GEMMs of 512 at most)
# and for the FLOP count's rounding, so that only a roof clearly below the machine's is measured again.
ABOVE_ROOF_MARGIN = 0.05
# The stability of roofs cached before they were timed in passes.
NOT_CHECKED = "not checked (measured before roofs were timed in passes)"


@dataclass
class Roofs:
    """The roofs of one machine and engine.

    ``compute`` maps precision -> FLOP/s (integer ops/s for ``int8``); ``bandwidth`` is bytes/s. ``source``
    says where they come from (``measured``, ``measured (quick)``, a preset's citation, ``given``).
    ``details`` holds the measurement: machine key, per-size sweeps, kernels, time.
    """

    compute: dict[str, float]
    bandwidth: float | None
    source: str
    details: dict[str, Any] = field(default_factory=dict)

    def peak(self, precision: str) -> float | None:
        """The compute roof of ``precision``: its own, else that of the first registered precision whose
        arithmetic runs in the same element type (``int8fp16`` takes ``int8``'s: its roof is the INT8 GEMM's),
        else None."""
        if precision in self.compute:
            return self.compute[precision]
        if precision not in precisions.NAMES:
            return None
        element = precisions.get(precision).element
        twin = next((p.name for p in precisions.REGISTRY if p.element == element and p.name in self.compute), None)
        return self.compute[twin] if twin else None

    def attainable(self, precision: str, intensity: float | None) -> float | None:
        """The roofline bound min(compute roof, bandwidth * intensity) for ``precision``, or None if unknown.

        Without a bandwidth roof (or intensity) the compute roof alone is the bound.
        """
        peak = self.peak(precision)
        if peak is None:
            return None
        if self.bandwidth is None or not intensity:
            return peak
        return min(peak, self.bandwidth * intensity)

    def bound(self, precision: str, intensity: float | None) -> str | None:
        """``compute`` or ``memory``: which roof limits a point at ``intensity`` (None if unknown)."""
        peak = self.peak(precision)
        if peak is None or self.bandwidth is None or not intensity:
            return None
        return "memory" if self.bandwidth * intensity < peak else "compute"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``Roofs.from_json`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Roofs:
        """Read roofs written by ``to_json`` (or by hand: ``compute``, ``bandwidth`` and ``source``)."""
        given = {str(k): float(v) for k, v in dict(data.get("compute") or {}).items()}
        unknown = sorted(set(given) - set(precisions.NAMES))
        if unknown:
            raise ValueError(f"unknown precisions {unknown} in roofs; valid: {', '.join(precisions.NAMES)}")
        bandwidth = data.get("bandwidth")
        return cls(
            {p: given[p] for p in precisions.NAMES if p in given},
            float(bandwidth) if bandwidth is not None else None,
            str(data.get("source", "given")),
            dict(data.get("details") or {}),
        )


# Datasheet roofs. Tensor-core figures are dense (without structured sparsity); INT8 is in ops/s.
PRESETS: dict[str, Roofs] = {
    "v100": Roofs(
        {"fp32": 14e12, "fp16": 112e12},
        900e9,
        "NVIDIA V100 PCIe: FP32 14 TFLOP/s and 900 GB/s as in the AI Matrix paper's Figure 1; "
        "FP16 tensor cores 112 TFLOP/s from NVIDIA's V100 datasheet",
    ),
    "t4": Roofs(
        {"fp32": 8.1e12, "fp16": 65e12, "int8": 130e12},
        320e9,
        "NVIDIA T4 datasheet: FP32 8.1 TFLOP/s, FP16 (mixed) 65 TFLOP/s, INT8 130 TOPS, 320 GB/s",
    ),
    "a100": Roofs(
        {"fp32": 19.5e12, "fp16": 312e12, "int8": 624e12},
        2039e9,
        "NVIDIA A100 80GB SXM datasheet: FP32 19.5 TFLOP/s, FP16 tensor 312 TFLOP/s, INT8 tensor 624 TOPS "
        "(dense), 2039 GB/s",
    ),
    "h100": Roofs(
        {"fp32": 67e12, "fp16": 989e12, "int8": 1979e12},
        3.35e12,
        "NVIDIA H100 SXM datasheet: FP32 67 TFLOP/s, FP16 tensor 989 TFLOP/s, INT8 tensor 1979 TOPS (dense, "
        "half the sparsity figures), 3.35 TB/s",
    ),
    "h200": Roofs(
        {"fp32": 67e12, "fp16": 989e12, "int8": 1979e12},
        4.8e12,
        "NVIDIA H200 SXM datasheet: FP32 67 TFLOP/s, FP16 tensor 989 TFLOP/s, INT8 tensor 1979 TOPS (dense), 4.8 TB/s",
    ),
}


class PeakError(ValueError):
    """Roof values or a roofs file the user gave that cannot be used."""


# ------------------------------------------------------------------------------------------- given roofs


def parse_rate(text: str) -> float:
    """A positive rate such as ``14e12``, ``14T`` or ``900G`` (SI prefix k, M, G, T, P) -> float."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtTpP]?)\s*", text)
    if not match:
        raise PeakError(f"cannot read {text!r} as a rate; write e.g. 14e12, 14T or 900G")
    value = float(match.group(1)) * _SI[match.group(2).lower()]
    if value <= 0:
        raise PeakError(f"a roof must be positive, got {text!r}")
    return value


def parse_flops(text: str) -> dict[str, float]:
    """``--peak-flops``: one rate (the FP32 roof) or ``fp32=14T,fp16=112T,int8=...`` -> {precision: rate}."""
    if "=" not in text:
        return {"fp32": parse_rate(text)}
    roofs = {}
    for part in text.split(","):
        precision, _, value = part.partition("=")
        precision = precision.strip()
        if precision not in precisions.NAMES:
            valid = ", ".join(precisions.NAMES)
            raise PeakError(f"unknown precision {precision!r} in --peak-flops; valid: {valid}")
        roofs[precision] = parse_rate(value)
    return roofs


def given_roofs(preset: str | None = None, peak_flops: str | None = None, peak_bw: str | None = None) -> Roofs | None:
    """Roofs from a preset name or a roofs JSON file (``preset``), overridden by ``peak_flops``/``peak_bw``.

    Returns None when nothing is given (measured roofs apply). Raises PeakError for a name or value that
    cannot be used.
    """
    if preset is None and peak_flops is None and peak_bw is None:
        return None
    base = Roofs({}, None, "given")
    if preset is not None:
        if preset in PRESETS:
            preset_roofs = PRESETS[preset]
            base = Roofs(dict(preset_roofs.compute), preset_roofs.bandwidth, f"preset {preset}: {preset_roofs.source}")
        elif Path(preset).is_file():
            try:
                base = Roofs.from_json(json.loads(Path(preset).read_text()))
            except (ValueError, TypeError, AttributeError) as exc:
                raise PeakError(f"{preset} is not a roofs JSON file ({exc})") from None
        else:
            raise PeakError(f"unknown preset {preset!r}: not a roofs JSON file; presets: {', '.join(PRESETS)}")
    sources = [base.source] if preset is not None else []
    if peak_flops is not None:
        base.compute.update(parse_flops(peak_flops))
        sources.append(f"given --peak-flops {peak_flops}")
    if peak_bw is not None:
        base.bandwidth = parse_rate(peak_bw)
        sources.append(f"given --peak-bw {peak_bw}")
    base.source = "; ".join(sources)
    return base


# ------------------------------------------------------------------------------------------- machine key


def machine_key(env: Mapping[str, Any], engine: str, threads: int | None) -> dict[str, Any]:
    """What identifies the roofs a row is judged against: CPU model, logical cores and ONNX Runtime version of
    ``env`` (an ``env.json``, or this machine's facts in that shape), the engine and its intra-op threads
    (``threads``, else the machine's physical cores). The one definition: a run's report and the measurement
    that cached the roofs both build their key here."""
    cpu = dict(env.get("cpu") or {})
    packages = dict(env.get("packages") or {})
    threads = threads or cpu.get("physical_cores")
    return {
        "cpu": cpu.get("model"),
        "logical_cores": cpu.get("logical_cores"),
        "onnxruntime": packages.get("onnxruntime") or packages.get("onnxruntime-gpu") or "absent",
        "engine": engine,
        "threads": int(threads) if threads else None,
    }


def key_string(key: Mapping[str, Any]) -> str:
    """``machine_key`` as the one string roofs are cached under. A host name in ``key`` is not part of it:
    identical machines share their roofs."""
    return "|".join(str(key.get(k)) for k in ("engine", "cpu", "logical_cores", "onnxruntime", "threads"))


def engine_threads(rows: Iterable[Mapping[str, Any]], engine: str, env: Mapping[str, Any]) -> int | None:
    """The intra-op threads ``engine`` ran with: from its cells' settings, else the run's options or cores."""
    for row in rows:
        if row.get("engine") == engine and row.get("engine_settings"):
            try:
                threads = json.loads(row["engine_settings"]).get("intra_op_threads")
            except (json.JSONDecodeError, AttributeError):
                threads = None
            if threads:
                return int(threads)
    settings = env.get("settings", {})
    return (settings.get("engine_options") or {}).get("threads") or env.get("cpu", {}).get("physical_cores")


# ------------------------------------------------------------------------------------------ above a roof


def roof_share(roofs: Roofs | None, row: Mapping[str, Any]) -> float | None:
    """A row's achieved FLOP/s over its attainable roof (``Roofs.attainable`` at its precision and arithmetic
    intensity): above 1 is above the roof. None where the roofs, the roof or the rate is unknown."""
    if roofs is None or not row.get("flops_per_s"):
        return None
    bound = roofs.attainable(str(row.get("precision")), row.get("arith_intensity"))
    return row["flops_per_s"] / bound if bound else None


def above_roof(
    roofs: Roofs | None, rows: Iterable[Mapping[str, Any]], engine: str, margin: float = 0.0
) -> list[tuple[Mapping[str, Any], float]]:
    """(row, ``roof_share``) of each ok closed-loop row of ``engine`` above its roof by more than ``margin``
    (a share of the roof), the furthest above first. A cell cannot beat its roof: one above it means the roofs
    were measured while other work ran (too low), or, above the memory roof, that the byte model counts bytes
    the cell read from cache rather than memory."""
    found = []
    for row in rows:
        if row.get("engine") != engine or row.get("status") != "ok" or row.get("scenario") != "latency":
            continue
        share = roof_share(roofs, row)
        if share is not None and share > 1.0 + margin:
            found.append((row, share))
    return sorted(found, key=lambda item: -item[1])


def measurement_note(roofs: Roofs) -> str | None:
    """When and how measured roofs were measured and how stable they were, in a sentence or two (None for
    given roofs): ``Measured 2025-...: quick, 3 GEMM sizes per precision and a stream, 0.25 s passes, up to 3
    passes per point until two agree within 10%. Stability: stable.``"""
    details = roofs.details
    if "measured_at" not in details:
        return None
    how = "quick" if details.get("quick") else "full"
    sizes = {len(points) for points in (details.get("gemm") or {}).values()}
    size_text = f"{max(sizes)} GEMM sizes per precision and a stream" if sizes else "GEMMs and a stream"
    text = f"Measured {details['measured_at']}: {how}, {size_text}, {details.get('duration_s_per_point')} s passes"
    if "stability" in details:
        text += (
            f", up to {details.get('max_passes')} passes per point until two agree within "
            f"{100 * details.get('tolerance', 0):.0f}%. Stability: {details['stability']}."
        )
    else:
        text += f". Stability: {NOT_CHECKED}."
    if details.get("replaced_because"):
        replaced = details.get("replaced") or {}
        text += (
            f" Measured again because {details['replaced_because']}; they replaced roofs measured "
            f"{replaced.get('measured_at') or 'at an unknown time'} ({replaced.get('source') or 'unknown source'})."
        )
    return text


# ---------------------------------------------------------------------------------------------- printing


def unit(precision: str) -> str:
    """The compute unit of a precision: ``OP/s`` for integer precisions, ``FLOP/s`` otherwise."""
    return precisions.get(precision).unit if precision in precisions.NAMES else "FLOP/s"


def describe(roofs: Roofs) -> list[str]:
    """Plain-text lines: the sweep (when measured) and the roofs."""
    lines = []
    details = roofs.details
    if "gemm" in details:
        machine = details["machine"]
        lines.append(
            f"{machine['engine']} on {machine['cpu']} ({machine['logical_cores']} logical cores, onnxruntime "
            f"{machine['onnxruntime']}, {machine['threads']} threads), measured {details['measured_at']} in "
            f"{details['seconds']} s, {details['duration_s_per_point']} s per pass"
            + (f", up to {details['max_passes']} passes per point" if "max_passes" in details else "")
        )
        lines.append(f"{'kernel':<28}{'best':>16}{'median':>16}  median/best  passes     ops after optimisation")
        for precision, points in details["gemm"].items():
            for point in points:
                n = point["n"]
                lines.append(
                    f"{f'gemm {precision} {n}x{n}x{n}':<28}{format_rate(point['best'], unit(precision)):>16}"
                    f"{format_rate(point['median'], unit(precision)):>16}  {point['median'] / point['best']:>11.2f}"
                    f"  {_passes(point):<9}  {' '.join(point['kernels'] or ['?'])}"
                )
        stream = details["stream"]
        label = f"stream add 3x{stream['array_bytes'] / 2**20:.0f} MiB"
        lines.append(
            f"{label:<28}{format_rate(stream['best'], 'B/s'):>16}"
            f"{format_rate(stream['median'], 'B/s'):>16}  {stream['median'] / stream['best']:>11.2f}"
            f"  {_passes(stream):<9}  {' '.join(stream['kernels'] or ['?'])}"
        )
        lines.append(f"stability: {details.get('stability', NOT_CHECKED)}")
    roof_text = ", ".join(f"{p} {format_rate(v, unit(p))}" for p, v in roofs.compute.items())
    lines.append(
        f"roofs ({roofs.source}): {roof_text or 'no compute roof'}; bandwidth {format_rate(roofs.bandwidth, 'B/s')}"
    )
    return lines


def _passes(point: Mapping[str, Any]) -> str:
    """``2 agree`` or ``3 differ``: how many passes a point took and whether its last two agreed."""
    if "passes" not in point:
        return "1"
    return f"{len(point['passes'])} {'agree' if point.get('agreed') else 'differ'}"
