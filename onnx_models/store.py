"""Manifest-backed, content-addressed access to the artifacts of one model and size.

Every artifact entry records a ``key`` (a hash of everything the artifact was built from: model code
version, size, seed, opset, source artifact hash, conversion settings) and the ``sha256`` of the file. An
artifact is reused only when both match; a file whose bytes changed is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from onnx_models import store_root


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so multi-GB models do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """A short stable hash of keyword parts (JSON-serialisable), used as an artifact's build key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        manifest = self.manifest()
        manifest.setdefault("artifacts", {})[artifact] = entry
        self._write(manifest)
        return entry

    def update(self, **fields: Any) -> None:
        """Set top-level manifest fields (model-wide facts such as inputs and parameter count)."""
        manifest = self.manifest()
        manifest.update(fields)
        self._write(manifest)

    def _write(self, manifest: dict[str, Any]) -> None:
        # Atomic replace: a run killed mid-write must not leave a half manifest that hides good artifacts.
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".manifest.", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
        os.replace(tmp, self.manifest_path)


class ArtifactError(RuntimeError):
    """An artifact that is missing, corrupt or cannot be built."""
