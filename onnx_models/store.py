"""Manifest-backed, content-addressed access to the artifacts of one model and size.

Every artifact entry records a ``key`` (a hash of everything the artifact was built from: model code
version, size, seed, opset, source artifact hash, conversion settings) and the ``sha256`` of the file. An
artifact is reused only when both match; a file whose bytes changed is rebuilt, never used. The caches beside
the artifacts (FLOP counts, reference outputs, calibration ranges) are held to the same rule: the manifest's
``caches`` mapping records the sha256 of each, and a cache without a matching record is deleted, not read.

Several runs may share one store: every file is written to a unique temporary beside its final name and
moved into place atomically, and every read-modify-write of the manifest holds ``<dir>/.manifest.lock``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.hashing import sha256_file
from common.paths import atomic_path, store_root, unique_temp


class ModelStore:
    """The directory and manifest of one (model, size) in the store."""

    def __init__(self, model: str, size: str, root: Path | None = None):
        self.model = model
        self.size = size
        self.dir = (root or store_root()) / model / size
        self.manifest_path = self.dir / "manifest.json"

    def path(self, artifact: str) -> Path:
        """Where artifact ``artifact`` (``fp32``, ``fp16``, ``int8``, ...) lives: ``<dir>/<artifact>.onnx``."""
        return self.dir / f"{artifact}.onnx"

    def manifest(self) -> dict[str, Any]:
        """The manifest as a dict; an absent or unreadable manifest is an empty one (everything rebuilds)."""
        try:
            return json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"model": self.model, "size": self.size, "artifacts": {}}

    def entry(self, artifact: str) -> dict[str, Any] | None:
        """The manifest entry of ``artifact``, or None."""
        return self.manifest().get("artifacts", {}).get(artifact)

    def valid(self, artifact: str, key: str) -> bool:
        """True when ``artifact`` was built with ``key`` and its file still has the recorded sha256."""
        entry = self.entry(artifact)
        path = self.path(artifact)
        if not entry or entry.get("key") != key or not path.is_file():
            return False
        return sha256_file(path) == entry.get("sha256")

    def verified_path(self, artifact: str) -> Path:
        """The artifact's path after checking its sha256 against the manifest; raises ArtifactError if not."""
        entry = self.entry(artifact)
        path = self.path(artifact)
        if not entry:
            raise ArtifactError(f"{self.model} ({self.size}) has no {artifact} artifact; build it with suite.py export")
        if not path.is_file():
            raise ArtifactError(f"{path} is missing; it will be rebuilt by the next export or run")
        if sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{path} does not match its manifest sha256 (changed or corrupt); it will be rebuilt")
        return path

    def record(self, artifact: str, key: str, **info: Any) -> dict[str, Any]:
        """Hash the artifact's file and write its manifest entry (``key``, ``sha256``, ``bytes`` and ``info``)."""
        path = self.path(artifact)
        entry = {
            "file": path.name,
            "key": key,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **info,
        }
        with self.locked():
            manifest = self.manifest()
            manifest.setdefault("artifacts", {})[artifact] = entry
            self._write(manifest)
        return entry

    def install(self, artifact: str, data: bytes, entry: dict[str, Any], fields: dict[str, Any]) -> Path:
        """Put an artifact built elsewhere (another node of a cluster) into this store: ``data`` its bytes,
        ``entry`` the manifest entry its builder recorded, ``fields`` the builder's model-wide manifest fields.

        The bytes are checked against ``entry['sha256']`` before anything is written (ArtifactError if they
        differ), written through a unique temporary and moved into place, and the entry recorded as the builder
        wrote it (same key, same sha256), all under the manifest lock. Returns the artifact's path."""
        sha = hashlib.sha256(data).hexdigest()
        if sha != entry.get("sha256"):
            raise ArtifactError(
                f"{self.model} ({self.size}) {artifact} arrived with sha256 {sha[:12]}, not the builder's "
                f"{str(entry.get('sha256'))[:12]}: not installed"
            )
        path = self.path(artifact)
        with self.locked():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            manifest = self.manifest()
            # The builder's model facts first, so the entries and caches already recorded here stay.
            manifest.update({k: v for k, v in fields.items() if k not in ("artifacts", "caches")})
            manifest.setdefault("artifacts", {})[artifact] = dict(entry)
            self._write(manifest)
        return path

    def install_cache(self, name: str, data: bytes, sha256: str) -> Path:
        """Put cache ``name`` made elsewhere (reference outputs from another node) into this store, after checking
        ``data`` against ``sha256`` (ArtifactError if it differs); returns its path, recorded like ``write_cache``."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ArtifactError(f"cache {name} of {self.model} ({self.size}) arrived corrupt: not installed")
        return self.write_cache(name, lambda tmp: tmp.write_bytes(data))

    def holds(self, artifact: str, sha256: str) -> bool:
        """Whether this store's ``artifact`` is recorded with ``sha256`` and its file has those bytes (a store
        shared with the builder, or an earlier install), so nothing needs to be sent."""
        entry = self.entry(artifact)
        path = self.path(artifact)
        return bool(entry) and entry.get("sha256") == sha256 and path.is_file() and sha256_file(path) == sha256

    def update(self, **fields: Any) -> None:
        """Set top-level manifest fields (model-wide facts such as inputs and parameter count)."""
        with self.locked():
            manifest = self.manifest()
            manifest.update(fields)
            self._write(manifest)

    @contextmanager
    def building(self, name: str) -> Iterator[None]:
        """Hold the build lock of artifact or cache ``name`` (``flock`` on ``<dir>/.<name>.build.lock``) inside
        the block. A second run, test worker or cluster node that wants the same file waits here, then finds it
        built (its caller checks again) instead of building it beside the first. Released when the block ends
        or the process dies. A store that cannot take a lock file (read-only) is built into unlocked: the build
        then fails with its own reason."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.dir / f".{name}.build.lock", "a")
        except OSError:
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this manifest's lock (``flock`` on ``<dir>/.manifest.lock``, waiting for it) inside the block.

        Every read-modify-write of the manifest runs under it, so two runs recording different artifacts keep
        both entries. Not re-entrant: a second ``locked()`` inside the block waits forever."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".manifest.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
            yield

    def cache_path(self, name: str) -> Path:
        """Where cache file ``name`` (a plain file name such as ``flops-<key>.json``) lives: in this directory."""
        if not name or Path(name).name != name or name.startswith("."):
            raise ValueError(f"a cache name is a plain file name in {self.dir}, not {name!r}")
        return self.dir / name

    def verified_cache(self, name: str) -> Path | None:
        """The path of cache ``name`` when its bytes have the sha256 recorded for it in the manifest, else None.

        A file without a matching record (truncated, edited, written before records or by a run killed
        before recording it) is deleted, so the caller rebuilds it with ``write_cache``."""
        path = self.cache_path(name)
        if not path.is_file():
            return None
        if self._cache_matches(name):
            return path
        with self.locked():
            # Look again under the lock: another run may have just replaced and recorded it.
            if self._cache_matches(name):
                return path
            path.unlink(missing_ok=True)
            manifest = self.manifest()
            if manifest.get("caches", {}).pop(name, None) is not None:
                self._write(manifest)
        return None

    def has_cache(self, name: str) -> bool:
        """Whether cache ``name`` is recorded in the manifest and present, without reading its bytes (a cheap
        test of whether to make it; a reader still goes through ``verified_cache``)."""
        return name in self.manifest().get("caches", {}) and self.cache_path(name).is_file()

    def write_cache(self, name: str, write: Callable[[Path], Any]) -> Path:
        """Write cache ``name``: ``write(tmp)`` fills a unique temporary path beside it, which is then moved into
        place and its sha256 recorded, both under the manifest lock so file and record always agree. Returns
        the cache's path; if ``write`` raises, nothing changes."""
        path = self.cache_path(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = unique_temp(path)
        try:
            write(tmp)
            sha = sha256_file(tmp)
            with self.locked():
                os.replace(tmp, path)
                self._record_cache(name, sha)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def record_cache(self, name: str) -> None:
        """Record the sha256 of cache ``name`` as it is now: for a cache a library wrote itself (ONNX Runtime's
        calibration ranges), once it is complete. A file that is gone (another run found it unrecorded and
        deleted it) is left to be rebuilt."""
        with self.locked():
            try:
                sha = sha256_file(self.cache_path(name))
            except FileNotFoundError:
                return
            self._record_cache(name, sha)

    def _cache_matches(self, name: str) -> bool:
        entry = self.manifest().get("caches", {}).get(name)
        try:
            return entry is not None and sha256_file(self.cache_path(name)) == entry.get("sha256")
        except FileNotFoundError:
            return False

    def _record_cache(self, name: str, sha: str) -> None:
        # Called with the lock held.
        manifest = self.manifest()
        manifest.setdefault("caches", {})[name] = {"sha256": sha, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._write(manifest)

    def _write(self, manifest: dict[str, Any]) -> None:
        # Atomic replace: a run killed mid-write must not leave a half manifest that hides good artifacts.
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))


class ArtifactError(RuntimeError):
    """An artifact that is missing, corrupt or cannot be built."""
