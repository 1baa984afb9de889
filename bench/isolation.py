"""Run work in child processes with timeouts, so that a crash, a hang or an out-of-memory in an engine or
exporter becomes a reason string instead of ending the run: one call (``run_isolated``), or an object made in a
child of its own and called there method by method (``Worker``: a cell kept warm across timing rounds).
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


def _error(exc: BaseException) -> tuple:
    """The message a child sends for ``exc``: ("error", None, traceback, type name, first line)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ("error", None, traceback.format_exc(), type(exc).__name__, message[:480])


def _child(function: Callable[..., Any], kwargs: dict, conn, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    try:
        conn.send(("ok", function(**kwargs), "", "", ""))
    except BaseException as exc:  # noqa: BLE001 - everything a child raises becomes a row reason
        conn.send(_error(exc))
    finally:
        conn.close()


def _start(target: Callable[..., None], args: tuple, duplex: bool):
    """Start ``target(*args, child_end, parent_pid)`` in a spawned process; returns (process, this end of the
    pipe). Children start with string hashing seeded (``PYTHONHASHSEED``, 0 unless the caller's environment sets
    one): tf2onnx's conversion of models with loops follows the iteration order of sets of names, and with a
    random seed the same NMT export came out in different bytes from run to run. The seed is set for the child
    alone: this process's environment is left as it was."""
    context = mp.get_context("spawn")
    # Without duplex the first end only receives (this process's) and the second only sends (the child's).
    here, there = context.Pipe(duplex=duplex)
    process = context.Process(target=target, args=(*args, there, os.getpid()), daemon=True)
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
    there.close()
    return process, here


def _wait(process, conn, timeout_s: float | None) -> tuple:
    """The child's next message, or ("timeout", ...) / ("died", ...) when none comes within ``timeout_s``."""
    if not conn.poll(timeout_s):
        return ("timeout", None, "", "", "")
    try:
        return conn.recv()
    except EOFError:
        return ("died", None, "", "", "")


def _end(process) -> None:
    """Kill (when still alive after a grace period) and reap ``process``, and forget it."""
    process.join(30)
    if process.is_alive():
        process.kill()
        process.join()
    with _LIVE_LOCK:
        _LIVE.discard(process)


def _result(process, message: tuple, timeout_s: float | None) -> ChildResult:
    """The ChildResult of a child's ``message`` (a reaped child's exit status when it sent none)."""
    status, value, detail, error_type, text = message
    if status == "ok":
        return ChildResult(True, value)
    if status == "error":
        error = f"{error_type}: {text}" if text else error_type
        return ChildResult(False, error=error, detail=detail, error_type=error_type, message=text)
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


def run_isolated(function: Callable[..., Any], kwargs: dict, timeout_s: float | None) -> ChildResult:
    """Call ``function(**kwargs)`` in a fresh (spawned) process and wait at most ``timeout_s``.

    ``function`` must be defined at the top level of a module (the child imports it by name), and arguments and
    the return value must be picklable. Returns a ChildResult; never raises for anything that happens inside
    the child (see ``_start`` for the environment children start with).

    The child never outlives this process (see ``_die_with_parent``), and an exception raised while waiting
    (KeyboardInterrupt, SystemExit, ...) kills and reaps the child before it propagates.
    """
    process, conn = _start(_child, (function, kwargs), duplex=False)
    message = ("died", None, "", "", "")
    try:
        message = _wait(process, conn, timeout_s)
    finally:
        # Killed at once on a timeout, and also when this wait itself ends by an exception (Ctrl-C, SIGTERM
        # turned into KeyboardInterrupt by suite.py, anything else): the run is over, and a child left to
        # finish would hold the CPU for up to a cell's timeout after it. Reaped before the exception goes on.
        if message[0] in ("timeout", "died"):
            process.kill()
        _end(process)
    return _result(process, message, timeout_s)


def _serve(factory: Callable[..., Any], kwargs: dict, conn, parent_pid: int) -> None:
    """A Worker's child: make ``factory(**kwargs)``, say whether that worked, then run each (method, kwargs)
    received on it and send back its result, until None (or the parent's end of the pipe) closes it."""
    _die_with_parent(parent_pid)
    try:
        try:
            served = factory(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - everything a child raises becomes a row reason
            conn.send(_error(exc))
            return
        conn.send(("ok", None, "", "", ""))
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return
            if request is None:
                return
            method, arguments = request
            try:
                conn.send(("ok", getattr(served, method)(**arguments), "", "", ""))
            except BaseException as exc:  # noqa: BLE001 - a failed call is the caller's to judge
                conn.send(_error(exc))
    finally:
        conn.close()


class Worker:
    """An object made in a child process of its own (``factory(**kwargs)``, both picklable by reference) and
    called there method by method: a cell's engine kept warm between timing rounds while other cells take
    their turn. ``start`` waits for the object; ``call`` runs one method with a timeout; ``close`` ends the
    child. A failed start or call, a crash or a hang becomes a not-ok ChildResult, and after a crash or a hang
    the worker is closed. As with ``run_isolated``, the child never outlives this process, and an exception
    raised while waiting kills it before it propagates."""

    def __init__(self, factory: Callable[..., Any], kwargs: dict):
        self._process, self._conn = _start(_serve, (factory, kwargs), duplex=True)
        self.closed = False

    def _receive(self, timeout_s: float | None) -> ChildResult:
        message = ("died", None, "", "", "")
        try:
            message = _wait(self._process, self._conn, timeout_s)
        finally:
            if message[0] in ("timeout", "died"):
                self._process.kill()
                self.close()
        return _result(self._process, message, timeout_s)

    def start(self, timeout_s: float | None) -> ChildResult:
        """Wait at most ``timeout_s`` for the object to be made: ok, or why it could not be."""
        result = self._receive(timeout_s)
        if not result.ok:
            self.close()
        return result

    def call(self, method: str, kwargs: dict, timeout_s: float | None) -> ChildResult:
        """``method(**kwargs)`` on the object in the child, waiting at most ``timeout_s`` for its result."""
        if self.closed:
            return ChildResult(False, error="the worker process has ended")
        try:
            self._conn.send((method, kwargs))
        except OSError:
            self.close()
            return _result(self._process, ("died", None, "", "", ""), timeout_s)
        return self._receive(timeout_s)

    def close(self) -> None:
        """End the child (asking it first, then by force) and reap it; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._conn.close()
        _end(self._process)
