"""How far one set of outputs is from another that should be the same: an ONNX export against its framework,
a normalized brought-in graph against the file as it came. Pure: arrays in, numbers out."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def parity(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The worst over ``pairs`` of (expected, got) arrays of equal shape: ``max_abs_error``; ``max_rel_error``,
    each output's max abs error over its largest magnitude (its abs error where that is 0); and
    ``max_abs_reference``, the largest magnitude of any expected output."""
    worst_abs = worst_rel = largest = 0.0
    for want, have in pairs:
        diff = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)), initial=0.0))
        scale = float(np.max(np.abs(want.astype(np.float64)), initial=0.0))
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale if scale > 0 else diff)
        largest = max(largest, scale)
    return {"max_abs_error": worst_abs, "max_rel_error": worst_rel, "max_abs_reference": largest}
