"""The trained track's artifacts: labelled splits, the trained checkpoint, calibration data from the training
split, and the evaluation split with its labels (``models.trained`` says what a track provides).

Everything is a store cache of the model's store entry, keyed by content: the splits by the assets' pinned
sha256 and the model's code; the checkpoint by the splits, the code, the seed, the config and the framework's
version. The manifest records where the data came from (package, version, file, sha256, licence).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from common.hashing import cache_key
from common.packages import package_version
from models import ModelSpec
from models.trained import Splits
from onnx_models.store import ModelStore

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A trained model that did not learn (no better than chance on its evaluation split), or data that
    cannot be prepared; the message says which and the numbers."""


def provenance(spec: ModelSpec) -> list[dict[str, str]]:
    """Where each of the track's files comes from: asset, package, version, file in the wheel, sha256, licence;
    then each installed package the data is made with, its version and what it provides."""
    import assets

    found = []
    for name in spec.trained.assets:
        asset = assets.get(name)
        found.append(
            {
                "asset": name,
                "package": asset.wheel.requirement,
                "file": asset.member,
                "sha256": asset.sha256,
                "licence": asset.wheel.licence,
            }
        )
    found += [
        {"installed": f"{package}=={package_version(package)}", "provides": provides}
        for package, provides in spec.trained.packages.items()
    ]
    return found


def _splits_name(spec: ModelSpec, size: str) -> str:
    import assets

    digests = [assets.get(name).sha256 for name in spec.trained.assets]
    makers = {package: package_version(package) for package in spec.trained.packages}
    key = cache_key(assets=digests, packages=makers, code=spec.code_digest(), config=spec.config(size))
    return f"splits-{key}.npz"


def splits(spec: ModelSpec, size: str) -> Splits:
    """The track's labelled splits, prepared from the fetched assets once and cached in the store."""
    import assets

    store = ModelStore(spec.name, size)
    name = _splits_name(spec, size)
    cached = store.verified_cache(name)
    if cached is None:
        files = {asset: assets.fetch(asset) for asset in spec.trained.assets}
        log.info("preparing the labelled data of %s (%s)", spec.name, size)
        data = spec.trained.prepare(spec.config(size), files)
        arrays = {f"train/{k}": v for k, v in data.train.items()}
        arrays |= {f"eval/{k}": v for k, v in data.eval.items()}
        arrays |= {"train_labels": data.train_labels, "eval_labels": data.eval_labels}
        store.dir.mkdir(parents=True, exist_ok=True)
        cached = store.write_cache(name, lambda tmp: np.savez(tmp, **arrays))
    with np.load(cached) as stored:
        return Splits(
            train={k.removeprefix("train/"): stored[k] for k in stored.files if k.startswith("train/")},
            train_labels=stored["train_labels"],
            eval={k.removeprefix("eval/"): stored[k] for k in stored.files if k.startswith("eval/")},
            eval_labels=stored["eval_labels"],
        )


def _framework_version(spec: ModelSpec) -> str | None:
    return package_version("torch") if spec.framework == "pytorch" else package_version("tensorflow-cpu", "tensorflow")


def ensure_checkpoint(spec: ModelSpec, size: str, seed: int) -> Path:
    """The trained checkpoint of ``spec`` at ``size``: trained from ``seed`` on the training split unless a cached
    one with the same data, code, seed, config and framework version is in the store."""
    store = ModelStore(spec.name, size)
    track = spec.trained
    key = cache_key(
        data=_splits_name(spec, size),
        code=spec.code_digest(),
        seed=seed,
        config=spec.config(size),
        framework=_framework_version(spec),
    )
    name = f"trained-{key}{track.weights_suffix}"
    cached = store.verified_cache(name)
    if cached is not None:
        return cached
    with store.building(name):
        # Another process may have trained it while this one waited for the lock.
        cached = store.verified_cache(name)
        return cached if cached is not None else _train(spec, size, seed, store, name)


def _train(spec: ModelSpec, size: str, seed: int, store: ModelStore, name: str) -> Path:
    """Train ``spec`` into the store's cache ``name`` (the build lock held); returns its path."""
    from common.paths import atomic_path

    track = spec.trained
    data = splits(spec, size)
    log.info("training %s (%s) on %d samples, seed %d", spec.name, size, len(data.train_labels), seed)
    path = store.cache_path(name)
    store.dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        track.train(spec.config(size), data, seed, tmp)
    store.record_cache(name)
    return path


def calibration_file(spec: ModelSpec, size: str, samples: int, seed: int) -> Path:
    """An ``.npz`` of ``samples`` rows of the training split (a seeded draw, never the evaluation split) under
    the model's input names, for ``calibration.feeds.file_feeds``."""
    store = ModelStore(spec.name, size)
    name = f"calibration-data-{cache_key(data=_splits_name(spec, size), samples=samples, seed=seed)}.npz"
    cached = store.verified_cache(name)
    if cached is not None:
        return cached
    data = splits(spec, size)
    total = len(data.train_labels)
    rows = np.sort(np.random.default_rng(seed).permutation(total)[: min(samples, total)])
    arrays = {k: v[rows] for k, v in data.train.items()}
    return store.write_cache(name, lambda tmp: np.savez(tmp, **arrays))


def eval_batches(spec: ModelSpec, size: str) -> list[dict[str, np.ndarray]]:
    """The evaluation split in batches of the track's ``eval_batch`` (a fixed-batch graph's batch, if any),
    in order; the last batch may be shorter."""
    data = splits(spec, size)
    batch = spec.config(size).get("fixed_batch") or spec.trained.eval_batch
    # Samples, not labels: a label may cover several samples (a user's 100 ranked candidates).
    total = len(next(iter(data.eval.values())))
    return [{k: v[i : i + batch] for k, v in data.eval.items()} for i in range(0, total, batch)]


def eval_labels(spec: ModelSpec, size: str) -> np.ndarray:
    """The labels of the evaluation split, as ``score`` takes them."""
    return splits(spec, size).eval_labels


def check_learnt(spec: ModelSpec, value: float) -> None:
    """TrainingError unless ``value`` (the FP32 metric on the evaluation split) beats chance by the margin."""
    track = spec.trained
    if not value > track.chance + track.margin:
        raise TrainingError(
            f"{spec.name} did not learn: {track.metric} {value:.4f} on the evaluation split, chance is "
            f"{track.chance:.4f} (needs > {track.chance + track.margin:.4f})"
        )
