"""Numbers for people, the one way every table, summary and chart writes them: ``fmt`` for a value in a table
(``21,740``, ``125 M``, ``0.9951``), ``format_rate`` for a rate with its unit (``231 GFLOP/s``). Raw values stay
in the results files."""

from __future__ import annotations

from typing import Any

# SI prefixes, largest first.
_SI = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def fmt(value: Any) -> str:
    """A table value: thousands separators up to a million (``21,740``), SI prefixes above (``125 M``,
    ``7.33 T``), four significant digits below a thousand (``0.9951``), small values in e-notation; None and
    NaN as empty, booleans and text as they are."""
    if value is None or isinstance(value, bool):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return ""
        size = abs(value)
        if size == 0:
            return "0"
        for scale, prefix in _SI[:4]:
            if size >= scale:
                return f"{value / scale:.3g} {prefix}"
        if size >= 1000:
            return f"{value:,.0f}"
        if size >= 1e-3:
            return f"{value:.4g}"
        return f"{value:.3g}"
    return str(value)


def format_rate(value: float | None, unit: str) -> str:
    """A rate with its unit and an SI prefix: ``2.31e11, "FLOP/s"`` -> ``231 GFLOP/s``; None as ``-``."""
    if value is None:
        return "-"
    for scale, prefix in _SI:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def interval_text(value: float | None, lo: float | None, hi: float | None) -> str | None:
    """An interval as ``with_interval`` writes it after ``value``: ``[0.529, 0.978]`` (as many decimals as the value
    has to four significant digits, at least three); None without an interval."""
    if lo is None or hi is None:
        return None
    text = f"{value:.4g}" if value is not None else ""
    if "e" in text:
        return f"[{lo:.4g}, {hi:.4g}]"
    decimals = max(3, len(text.partition(".")[2]))
    return f"[{lo:.{decimals}f}, {hi:.{decimals}f}]"


def with_interval(value: float | None, lo: float | None, hi: float | None, suffix: str = "") -> str:
    """A value with its interval: ``2.61x [2.52, 2.70]`` (``suffix`` ``x``: two decimals) or ``0.875 [0.529,
    0.978]`` (the value to four significant digits, its bounds as ``interval_text``); the value alone without an
    interval, ``-`` without a value."""
    if value is None:
        return "-"
    if suffix:
        text = f"{value:.2f}{suffix}"
        return text if lo is None or hi is None else f"{text} [{lo:.2f}, {hi:.2f}]"
    bounds = interval_text(value, lo, hi)
    return f"{value:.4g}" + (f" {bounds}" if bounds else "")
