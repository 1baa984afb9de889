"""Which weight range an INT8 artifact uses: full 8-bit, or 7-bit where the CPU's dot products saturate.

The ``cpu`` flavour runs on ONNX Runtime's integer kernels of the machine at hand. Where those sum pairs of
u8 x s8 products in saturating 16-bit lanes (x86 without VNNI or AMX, see ``common.cpu_isa``), full-range
weights give wrong sums and the INT8 accuracy drops for a reason that has nothing to do with quantization;
weights in [-64, 64] cannot saturate, at the cost of one bit of weight resolution. ``auto`` asks the installed
ONNX Runtime (``common.cpu_isa.saturation_probe``) and picks 7-bit weights only where it saturates. The
``tensorrt`` flavour is consumed by GPU kernels that accumulate in 32 bits: always full range.

The chosen width is part of the artifact's name and build key, so an artifact built for one machine is never
reused on another that needs the other width.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.cpu_isa import isa, saturation_probe, weight_max

WEIGHT_RANGES = ("auto", "8bit", "7bit")
# Calibration methods and INT8 flavours (``calibration.int8``), here so that settings can be checked without
# importing the quantizer and onnx.
METHODS = ("minmax", "entropy", "percentile")
FLAVOURS = ("cpu", "tensorrt")


@dataclass(frozen=True)
class WeightRecipe:
    """The weight width of an INT8 artifact and why it was chosen."""

    bits: int
    reason: str

    @property
    def weight_max(self) -> int:
        """The largest weight magnitude: 127 for 8-bit weights, 64 for 7-bit ones."""
        return weight_max(self.bits)


def weight_recipe(flavour: str, requested: str = "auto") -> WeightRecipe:
    """The weight width for an INT8 artifact of ``flavour`` (``cpu`` or ``tensorrt``); ``requested`` is
    ``auto`` (decided by this machine's kernels), ``8bit`` or ``7bit`` (the user's choice, ``cpu`` only)."""
    if requested not in WEIGHT_RANGES:
        raise ValueError(f"unknown INT8 weight range {requested!r}; valid: {', '.join(WEIGHT_RANGES)}")
    if flavour != "cpu":
        return WeightRecipe(8, f"{flavour} flavour: GPU integer kernels accumulate in 32 bits")
    if requested != "auto":
        return WeightRecipe(int(requested[0]), f"given (--int8-weights {requested})")
    machine = isa()
    saturates = saturation_probe()
    if saturates:
        return WeightRecipe(7, f"auto: u8 x s8 dot products saturate on {machine} (probed), so weights in [-64, 64]")
    if saturates is None:
        return WeightRecipe(8, "auto: ONNX Runtime is not importable to probe the kernels; full range")
    return WeightRecipe(8, f"auto: u8 x s8 dot products are exact on {machine} (probed); full range")
