"""One-line error messages for result rows and user-facing errors."""

from __future__ import annotations

import math


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message, cut at ``limit``; the exception's type name if it has none.

    Converters and runtimes raise assertions and errors with empty or multi-line messages; a row's reason
    must still be one readable line (``str(exc).splitlines()[0]`` fails on an empty message).
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def not_finite(name: str, value: object, minimum: float, inclusive: bool) -> str | None:
    """The one-line usage error for option ``name`` when ``value`` is not a finite number above ``minimum`` (or
    at least it, with ``inclusive``), such as ``--duration-s must be a finite number > 0, got nan``; None when
    it is."""
    ok = (
        isinstance(value, int | float) and math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
    )
    return None if ok else f"{name} must be a finite number {'>=' if inclusive else '>'} {minimum:g}, got {value!r}"


class Unsupported(Exception):
    """A conversion that a model cannot undergo, found while building its artifact: a fact about the model, so its
    cells are reported ``unsupported`` with this message rather than ``failed``. Raised below the store (by a
    precision's builder in ``calibration``); the run pipeline knows it by its name across the child process
    (``bench.executor``), as it knows ``onnx_models.artifacts.UnsupportedPrecision``."""
