"""Functions the isolation tests run in child processes (they must be importable by module path)."""

from __future__ import annotations

import os
import time


def add(a: int, b: int) -> int:
    return a + b


def fail() -> None:
    raise ValueError("bad thing\nsecond line")


def crash() -> None:
    os.abort()


def hang() -> None:
    time.sleep(60)


def hash_seed() -> str | None:
    return os.environ.get("PYTHONHASHSEED")
