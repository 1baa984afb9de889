"""Run one piece of work in a child process with a timeout, so that a crash, a hang or an out-of-memory
in an engine or exporter becomes a reason string instead of ending the run.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import traceback
from dataclasses import dataclass
from typing import Any


@dataclass
class ChildResult:
    """``ok`` with the function's return value, or not ok with a one-line ``error`` (and the traceback)."""

    ok: bool
    value: Any = None
    error: str = ""
    detail: str = ""


def _child(target: str, kwargs: dict, conn) -> None:
    try:
        module_name, func_name = target.split(":")
        value = getattr(importlib.import_module(module_name), func_name)(**kwargs)
        conn.send(("ok", value, ""))
    except BaseException as exc:  # noqa: BLE001 - everything a child raises becomes a row reason
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        conn.send(("error", f"{type(exc).__name__}: {message}"[:500], traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(target: str, kwargs: dict, timeout_s: float | None) -> ChildResult:
    """Call ``module:function`` with ``kwargs`` in a fresh (spawned) process and wait at most ``timeout_s``.

    Arguments and the return value must be picklable. Returns a ChildResult; never raises for anything
    that happens inside the child. Children start with string hashing seeded (``PYTHONHASHSEED``, 0 unless
    the caller set one): tf2onnx's conversion of models with loops follows the iteration order of sets of
    names, and with a random seed the same NMT export came out in different bytes from run to run.
    """
    os.environ.setdefault("PYTHONHASHSEED", "0")
    context = mp.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(target, kwargs, child), daemon=True)
    process.start()
    child.close()
    status, value, detail = "died", None, ""
    try:
        if parent.poll(timeout_s):
            try:
                status, value, detail = parent.recv()
            except EOFError:
                pass
        else:
            status, value, detail = "timeout", None, ""
    finally:
        if status == "timeout":
            process.kill()
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()
    if status == "ok":
        return ChildResult(True, value)
    if status == "error":
        return ChildResult(False, error=value, detail=detail)
    if status == "timeout":
        return ChildResult(False, error=f"timed out after {timeout_s:g} s")
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (likely out of memory)" if name == "SIGKILL" else ""
        return ChildResult(False, error=f"child process killed by {name}{hint}")
    return ChildResult(False, error=f"child process exited with code {code} without a result")
