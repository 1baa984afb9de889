"""Content hashes: of a file's bytes (artifacts, checkpoints, brought-in files, pinned assets) and of a build's
inputs (the keys that decide whether an artifact or cache is reused)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


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
