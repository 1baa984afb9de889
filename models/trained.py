"""The trained track: catalogue models trained inside the suite on labelled data from pinned registry packages,
so that every precision is scored against labels, not only against its FP32 twin.

A trained model is a ModelSpec whose ``trained`` field is a TrainedTrack. The suite, not the model file, does
the rest: it fetches the track's assets (``assets.fetch``), prepares the splits once (cached by the assets'
sha256 and the code), trains once per (data, code, seed, framework version) into a checkpoint the exporter
loads like a user's ``--weights``, calibrates INT8 on the training split (never the evaluation split), and
scores every cell's outputs on the evaluation split with ``score`` against the labels
(``onnx_models.trained``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Splits:
    """Labelled data as model inputs: name -> array with samples first, and labels with samples first
    (``eval_labels`` may be any array ``score`` understands, such as the index of the held-out item per user)."""

    train: Mapping[str, np.ndarray]
    train_labels: np.ndarray
    eval: Mapping[str, np.ndarray]
    eval_labels: np.ndarray

    def __post_init__(self) -> None:
        for name, inputs, labels in (("train", self.train, self.train_labels), ("eval", self.eval, self.eval_labels)):
            counts = {k: len(v) for k, v in inputs.items()}
            if len(set(counts.values())) != 1:
                raise ValueError(f"{name} inputs disagree on the number of samples: {counts}")
            if not len(labels):
                raise ValueError(f"{name} split is empty")


@dataclass(frozen=True)
class TrainedTrack:
    """How one catalogue model is trained and scored.

    ``prepare(cfg, files)`` turns the fetched assets (asset name -> verified path) into Splits; it must be
    deterministic. ``train(cfg, splits, seed, out)`` trains the model ``build(cfg, seed)`` returns and writes
    the checkpoint the exporter's ``--weights`` loads to ``out`` (a Keras ``.weights.h5`` or a PyTorch state
    dict ``.pt``, by ``weights_suffix``); it shows progress on stderr. ``score(outputs, labels)`` gets the
    outputs of the evaluation split (name -> array, samples first) and ``eval_labels``, and returns
    ``{metric: value, ...}`` with the primary ``metric`` first (higher is better). ``chance`` is what a model
    that learnt nothing scores: a trained model must beat it by ``margin`` or the artifact build fails.
    """

    assets: tuple[str, ...]
    prepare: Callable[[Mapping[str, Any], Mapping[str, Path]], Splits]
    train: Callable[[Mapping[str, Any], Splits, int, Path], None]
    score: Callable[[Mapping[str, np.ndarray], np.ndarray], dict[str, float]]
    metric: str
    chance: float
    weights_suffix: str
    margin: float = 0.05
    # Evaluation split batches (the metric does not depend on the timed batch size; graphs with a fixed batch
    # are evaluated at it).
    eval_batch: int = 256
    # What the data is, for the report and the manifest: "Adult (UCI), 48,842 rows, 2:1 seeded split".
    data_note: str = ""
    # Installed packages whose files make the data (distribution name -> what it provides), for data made
    # rather than fetched: their versions join the splits' cache key and the provenance.
    packages: Mapping[str, str] = field(default_factory=dict)
    # Rows of the outputs (axis 0) that make one evaluation sample: 1, or a ranking model's candidates per user
    # (``score`` reads them in whole groups). A bootstrap over the evaluation samples resamples whole groups.
    rows_per_sample: int = 1
