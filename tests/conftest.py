"""Shared fixtures: a private artifact store for the whole test session, and tiny-model builds reused by
every test that needs them (exports are the slow part).

The tests run in parallel worker processes (pytest-xdist: ``-n auto --dist loadfile`` in pyproject.toml), each
with a store of its own: tests build artifacts of one name with other settings (calibration samples, weight
ranges) and damage them on purpose, which other tests must not meet halfway through a cell. A test file runs in
one worker, so its module fixtures are made once; tests that need the same costly artifacts (the trained
track's models, trained for a minute and more each) belong in one file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from common.paths import cache_root

# Set before anything imports onnx_models, and inherited by the child processes the suite spawns, so tests
# never touch the user's own store. Each process of the session (each xdist worker) makes its own. Threads
# that wait sleep rather than spin (OpenMP's default spins): two workers share two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_STORE = Path(tempfile.mkdtemp(prefix="aimatrix-test-store-"))
os.environ["AIMATRIX_STORE"] = str(_STORE)

# Files from registry packages (assets) are verified by sha256 wherever they lie: tests share the user's
# cache of them (or the one AIMATRIX_ASSETS names) rather than download them again every session.
os.environ.setdefault("AIMATRIX_ASSETS", str(cache_root() / "assets"))
# Measured machine roofs are cached per machine; tests keep theirs out of the user's home directory.
os.environ["AIMATRIX_CACHE"] = str(_STORE / "cache")


# The slowest files (seconds on two cores, run beside the others): started first, so that no worker is left
# with one of them at the end while the other idles.
SLOW_FIRST = (
    "test_cluster.py",  # ~130, its own pytest process with Ray clusters
    "test_trained_words.py",  # ~120, trains the CRNN
    "test_trained.py",  # ~180, trains the other four
    "test_wild_onnx.py",  # ~95, ten real-world files at every precision
    "test_scenarios.py",  # ~70, LoadGen cells
    "test_explain.py",  # ~60, a mixed-precision search
    "test_zoo_vision.py",  # ~60
)


def pytest_collection_modifyitems(config, items):
    """Put the files of ``SLOW_FIRST`` first (each file's tests keep their order; ``--dist loadfile
    --no-loadscope-reorder`` hands out files in this order), and skip tests marked ``gpu`` where the NVIDIA
    driver sees no CUDA device, saying why.

    Not "CUDA in onnxruntime.get_available_providers()": onnxruntime-gpu lists its CUDA and TensorRT providers
    on a machine without a driver or a GPU too, and the tests would then run and fail."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.path)).name, len(rank)))
    skip_gpu_tests(items)


def skip_gpu_tests(items) -> None:
    """Mark the ``gpu`` tests among ``items`` skipped, with the reason, where no CUDA device is usable."""
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
    """Remove the process's private store (tiny artifacts, reference outputs, caches) when its session ends."""
    shutil.rmtree(_STORE, ignore_errors=True)


@pytest.fixture
def cached_peaks(tmp_path, monkeypatch):
    """Roofs cached for this machine in a private cache, so that the reports at the end of runs do not measure
    them (``pytestmark = pytest.mark.usefixtures("cached_peaks")`` in a file whose runs report)."""
    from analysis.roofs import Roofs
    from bench.roofs_cache import local_machine_key, save_roofs

    monkeypatch.setenv("AIMATRIX_CACHE", str(tmp_path / "peaks"))
    save_roofs(
        Roofs({"fp32": 1e11, "fp16": 1e11, "int8": 4e11}, 2e10, "test", {"machine": local_machine_key("ort-cpu")})
    )
