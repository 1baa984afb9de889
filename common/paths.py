"""Files the suite writes and deletes: written through a unique temporary and renamed into place, so no reader
or crash sees half a file; deleted only when they resolve inside the directory that owns them."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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


def cache_root() -> Path:
    """The suite's per-user cache directory: ``$AIMATRIX_CACHE``, else ``$XDG_CACHE_HOME/aimatrix`` (``~/.cache``)."""
    root = os.environ.get("AIMATRIX_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aimatrix"


def store_root() -> Path:
    """The artifact store's root: ``$AIMATRIX_STORE`` if set, else ``store`` in the suite's cache directory
    (``cache_root``). Never inside the source tree: a store there once had a source file deleted through it."""
    given = os.environ.get("AIMATRIX_STORE")
    return Path(given) if given else cache_root() / "store"


# Where the store was kept before it moved out of the source tree: the onnx_models package directory.
OLD_STORE = Path(__file__).resolve().parent.parent / "onnx_models"


def old_store_note() -> str | None:
    """One line naming a store left in the old place (``OLD_STORE``: model folders holding a manifest, or
    brought-in models) with how to move it or use it where it is; None when there is none or ``AIMATRIX_STORE``
    chooses the store. Nothing is moved or deleted: the user decides."""
    if os.environ.get("AIMATRIX_STORE") or not OLD_STORE.is_dir():
        return None
    folders = sorted(
        d.name for d in OLD_STORE.iterdir() if d.is_dir() and (any(d.glob("*/manifest.json")) or d.name == "byo")
    )
    if not folders:
        return None
    size = sum(f.stat().st_size for name in folders for f in (OLD_STORE / name).rglob("*") if f.is_file())
    new = store_root()
    moved = folders[0] if len(folders) == 1 else "{" + ",".join(folders) + "}"
    return (
        f"note: {OLD_STORE} holds an artifact store from before the store moved out of the source tree "
        f"({len(folders)} folders, {size / 2**30:.1f} GiB); it is not used now (the store is {new}): move it with "
        f"`mkdir -p {new} && mv {OLD_STORE}/{moved} {new}/`, or use it where it is with AIMATRIX_STORE={OLD_STORE}"
    )


def unique_temp(final: Path) -> Path:
    """A new name beside ``final`` for writing it: ``.<name>.<pid>.<random>.tmp<suffix>``, not yet created.

    Same directory, so ``os.replace`` onto ``final`` is atomic; pid and random part, so two runs (or two
    threads) writing the same file never share a temporary; the suffix kept, so tools that go by it
    (``np.savez``, ONNX savers) write exactly this path."""
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{final.suffix}")


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a unique temporary path (``unique_temp``) to write ``final`` through: when the block ends without
    an exception it replaces ``final`` atomically, otherwise it is removed. Readers see the old file or the
    whole new one, never part of it."""
    tmp = unique_temp(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
