"""Deleting only what the suite owns: every path it removes must resolve inside the directory that owns it."""

from __future__ import annotations

import shutil
from pathlib import Path


class UnsafeDeleteError(RuntimeError):
    """A deletion refused because the path does not resolve strictly inside the directory that owns it."""


def remove_owned(path: Path, owner: Path) -> None:
    """Delete ``path`` (a file, or a directory and everything under it) only if it lies inside ``owner``.

    Both are resolved first (``..``, ``.`` and symbolic links followed); a path that resolves to ``owner``
    itself or anywhere outside it raises UnsafeDeleteError and nothing is deleted. A path that does not exist
    is not an error. A BYO model name that slipped through as ``..`` once made a re-registration delete the whole
    store, which by default holds source files.
    """
    resolved = Path(path).resolve()
    root = Path(owner).resolve()
    if root not in resolved.parents:
        raise UnsafeDeleteError(f"refusing to delete {path}: it resolves to {resolved}, which is not inside {root}")
    if resolved.is_dir():
        shutil.rmtree(resolved)
    elif resolved.exists():
        resolved.unlink()
