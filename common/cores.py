"""The machine's core count, the one default for intra-op threads and for parallel artifact builds."""

from __future__ import annotations


def physical_cores() -> int:
    """Physical CPU cores (hyper-threads excluded; all logical cores where the count is unknown)."""
    import psutil

    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
