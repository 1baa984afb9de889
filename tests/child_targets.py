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


def write_pid_and_sleep(pid_file: str, seconds: float = 60.0) -> None:
    """Write this process's pid to ``pid_file`` (atomically, so a reader never sees half of it), then sleep."""
    tmp = f"{pid_file}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, pid_file)
    time.sleep(seconds)


def ensure_counting_exports(model: str, size: str, counter: str) -> str:
    """Ensure ``model``'s FP32 artifact at ``size``, appending a line to ``counter`` for each export it makes."""
    import exporters
    from onnx_models.artifacts import ensure, resolve

    real = exporters.export

    def counted(*args, **kwargs):
        with open(counter, "a") as handle:
            handle.write("export\n")
        return real(*args, **kwargs)

    exporters.export = counted
    return str(ensure(resolve(model, size, "fp32")))


class Counter:
    """A Worker's served object: made in the child, called method by method."""

    def __init__(self, start: int, fail_to_start: bool = False):
        if fail_to_start:
            raise RuntimeError("engine would not load")
        self.value = start
        self.pid = os.getpid()

    def add(self, n: int) -> tuple[int, int]:
        self.value += n
        return self.value, self.pid

    def fail(self) -> None:
        raise ValueError("no such round")

    def crash(self) -> None:
        os.abort()

    def hang(self) -> None:
        time.sleep(60)


def refuse(reason: str) -> None:
    """Raise the exception a precision's builder refuses a conversion with (``common.errors.Unsupported``)."""
    from common.errors import Unsupported

    raise Unsupported(reason)
