"""One-line error messages for result rows and user-facing errors."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message, cut at ``limit``; the exception's type name if it has none.

    Converters and runtimes raise assertions and errors with empty or multi-line messages; a row's reason
    must still be one readable line (``str(exc).splitlines()[0]`` fails on an empty message).
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__
