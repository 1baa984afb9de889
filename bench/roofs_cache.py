"""The cache of measured roofs: ``peaks.json`` in the suite's cache directory, one entry per machine key
(``analysis.roofs.machine_key``). ``bench.peak`` writes it after measuring; runs ask it whether their roofs
are known, and reports read it (reading measures nothing).

Several processes may measure at once (two runs, a run and ``suite.py peak``): every read-modify-write holds
an ``flock`` on ``peaks.json.lock`` and replaces the file atomically, so neither drops the other's roofs."""

from __future__ import annotations

import fcntl
import json
import platform
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from analysis.roofs import Roofs, key_string, machine_key
from common.paths import atomic_path, cache_root


def cache_path() -> Path:
    """``peaks.json`` in the suite's cache directory (``common.paths.cache_root``)."""
    return cache_root() / "peaks.json"


def local_machine_key(engine: str, threads: int | None = None) -> dict[str, Any]:
    """``machine_key`` of this machine for ``engine`` at ``threads`` (default: physical cores), with the host
    name recorded beside it (not part of the key)."""
    from bench.env import cpu_info
    from common.packages import onnxruntime_version

    facts = {"cpu": cpu_info(), "packages": {"onnxruntime": onnxruntime_version()}}
    return {**machine_key(facts, engine, threads), "host": platform.node()}


def _read() -> dict[str, Any]:
    try:
        cache = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


@contextmanager
def _locked():
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        yield


def write_roofs_file(roofs: Roofs, path: Path) -> Path:
    """``roofs`` as a JSON file at ``path`` (``suite.py peak --json``; ``--peaks FILE`` reads it back on another
    machine), written atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(roofs.to_json(), indent=2))
    return path


def cached_roofs(key: Mapping[str, Any]) -> Roofs | None:
    """The cached measured roofs for a machine key, or None (none cached, or an entry that cannot be read)."""
    entry = _read().get(key_string(key))
    try:
        return Roofs.from_json(entry) if isinstance(entry, dict) else None
    except (ValueError, TypeError):
        return None


def save_roofs(roofs: Roofs, replace: bool = False) -> bool:
    """Cache measured roofs under their machine key (``roofs.details["machine"]``); a quick measurement never
    replaces a full one unless ``replace``: a run found the cached roofs below what its cells achieved, so they
    are wrong, full or not. What a replacement replaced (source, time, values) is kept in the new entry's
    details (``replaced``). Returns True when the cache was written."""
    key = key_string(roofs.details["machine"])
    with _locked():
        cache = _read()
        old = cache.get(key)
        old_details = (old.get("details") or {}) if isinstance(old, dict) else {}
        if isinstance(old, dict) and not replace and roofs.details.get("quick") and not old_details.get("quick"):
            return False
        entry = roofs.to_json()
        if replace and isinstance(old, dict):
            entry["details"]["replaced"] = {
                "source": old.get("source"),
                "measured_at": old_details.get("measured_at"),
                "compute": old.get("compute"),
                "bandwidth": old.get("bandwidth"),
            }
        cache[key] = entry
        with atomic_path(cache_path()) as tmp:
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return True
