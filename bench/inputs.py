"""The inputs every cell is fed, the same for every precision and engine: one seeded batch to time
(``timing_feeds``) and the accuracy batches (``accuracy_feeds``), seeded too, or a trained model's evaluation
split."""

from __future__ import annotations

import math

import numpy as np

ACCURACY_SEED = 5000
TIMING_SEED = 4242


def timing_feeds(spec, size: str, batch: int) -> dict[str, np.ndarray]:
    """The batch a cell is timed on: the model's seeded sample at ``batch`` (``TIMING_SEED``)."""
    return spec.make_feeds(size, batch, TIMING_SEED)


def accuracy_feeds(spec, size: str, batch: int, samples: int) -> list[dict[str, np.ndarray]]:
    """The accuracy inputs, the same for every precision and engine: for a trained model its whole evaluation
    split in batches of ``batch`` (``samples`` is ignored; a tail shorter than a batch is left out, since
    engines built for the cell's shapes take no other), else ceil(samples / batch) seeded batches."""
    if spec.trained is not None:
        from onnx_models.trained import splits

        data = splits(spec, size).eval
        total = len(next(iter(data.values())))
        return [{k: v[i : i + batch] for k, v in data.items()} for i in range(0, total - batch + 1, batch)]
    return [spec.make_feeds(size, batch, ACCURACY_SEED + i) for i in range(max(1, math.ceil(samples / batch)))]
