"""Run one piece of work in a child process with a timeout, so that a crash, a hang or an out-of-memory
in an engine or exporter becomes a reason string instead of ending the run.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ChildResult:
    """``ok`` with the function's return value, or not ok with a one-line ``error`` (``Type: message``, or what
    ended the child: a timeout, a signal), the exception's ``error_type`` and ``message`` apart (empty when the
    child raised nothing), and the traceback (``detail``)."""

    ok: bool
    value: Any = None
    error: str = ""
    detail: str = ""
    error_type: str = ""
    message: str = ""


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Children started by run_isolated and not yet reaped, from any thread: builds run several at once in worker
# threads, and an interrupt reaches only the main thread, which must end them all (kill_children).
_LIVE: set = set()
_LIVE_LOCK = threading.Lock()


def kill_children() -> int:
    """SIGKILL every child ``run_isolated`` is waiting on, in any thread (their waits then return failed
    results); returns how many there were."""
    with _LIVE_LOCK:
        live = [p for p in _LIVE if p.is_alive()]
    for process in live:
        process.kill()
    return len(live)


def _die_with_parent(parent_pid: int) -> None:
    """Make this (child) process end when the process ``parent_pid`` that started it ends, however it ends.

    On Linux the kernel is asked to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``):
    a parent killed by SIGKILL runs no cleanup of its own, and its child used to run on under PID 1 for up to
    a cell's timeout. The request only covers a parent that dies after it is made, so a parent that died
    between starting this process and now (``os.getppid()`` is no longer ``parent_pid``) ends it here.
    Where prctl is missing (other systems) only that check is made. The kernel tracks the parent *thread*:
    ``run_isolated`` blocks its calling thread until the child has ended, so that thread outlives the child.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no usable libc prctl: the check below is all there is
    if os.getppid() != parent_pid:
        os._exit(1)


def _child(function: Callable[..., Any], kwargs: dict, conn, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    try:
        conn.send(("ok", function(**kwargs), "", "", ""))
    except BaseException as exc:  # noqa: BLE001 - everything a child raises becomes a row reason
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        conn.send(("error", None, traceback.format_exc(), type(exc).__name__, message[:480]))
    finally:
        conn.close()


def run_isolated(function: Callable[..., Any], kwargs: dict, timeout_s: float | None) -> ChildResult:
    """Call ``function(**kwargs)`` in a fresh (spawned) process and wait at most ``timeout_s``.

    ``function`` must be defined at the top level of a module (the child imports it by name), and arguments and
    the return value must be picklable. Returns a ChildResult; never raises for anything that happens inside
    the child. Children start with string hashing seeded (``PYTHONHASHSEED``, 0 unless the caller's
    environment sets one): tf2onnx's conversion of models with loops follows the iteration order of sets of
    names, and with a random seed the same NMT export came out in different bytes from run to run. The seed is
    set for the child alone: this process's environment is left as it was.

    The child never outlives this process (see ``_die_with_parent``), and an exception raised while waiting
    (KeyboardInterrupt, SystemExit, ...) kills and reaps the child before it propagates.
    """
    context = mp.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(function, kwargs, child, os.getpid()), daemon=True)
    with _LIVE_LOCK:
        # The spawned interpreter reads the seed from the environment it starts with, which is this process's
        # at start(); every start goes through this lock, so the setting is seen by this child alone.
        seeded = "PYTHONHASHSEED" not in os.environ
        if seeded:
            os.environ["PYTHONHASHSEED"] = "0"
        try:
            process.start()
        finally:
            if seeded:
                del os.environ["PYTHONHASHSEED"]
        _LIVE.add(process)
    child.close()
    status, value, detail, error_type, message = "died", None, "", "", ""
    ended = False
    try:
        if parent.poll(timeout_s):
            try:
                status, value, detail, error_type, message = parent.recv()
            except EOFError:
                pass
        else:
            status = "timeout"
        ended = status != "timeout"
    finally:
        # Killed at once on a timeout, and also when this wait itself ends by an exception (Ctrl-C, SIGTERM
        # turned into KeyboardInterrupt by suite.py, anything else): the run is over, and a child left to
        # finish would hold the CPU for up to a cell's timeout after it. Reaped before the exception goes on.
        if not ended:
            process.kill()
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()
        with _LIVE_LOCK:
            _LIVE.discard(process)
    if status == "ok":
        return ChildResult(True, value)
    if status == "error":
        error = f"{error_type}: {message}" if message else error_type
        return ChildResult(False, error=error, detail=detail, error_type=error_type, message=message)
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
