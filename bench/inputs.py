"""The inputs every cell is fed, the same for every precision and engine: one seeded batch to time
(``timing_feeds``) and the accuracy batches (``accuracy_feeds``), seeded too, or a trained model's evaluation
split, or a brought-in model's feeds file (``--feeds``); and how a batch list is run (``run_batches``): one
inference each, or, for a model brought in with ``--state``, as a stream that feeds each inference's state
outputs back as the next one's state inputs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

ACCURACY_SEED = 5000
TIMING_SEED = 4242


def timing_feeds(spec, size: str, batch: int) -> dict[str, np.ndarray]:
    """The batch a cell is timed on: the model's seeded sample at ``batch`` (``TIMING_SEED``), or the first
    ``batch`` samples of its feeds file."""
    if spec.config(size).get("feeds"):
        return _file_batches(spec, size, batch, 1)[0]
    return spec.make_feeds(size, batch, TIMING_SEED)


def accuracy_feeds(spec, size: str, batch: int, samples: int) -> list[dict[str, np.ndarray]]:
    """The accuracy inputs, the same for every precision and engine: for a trained model its whole evaluation
    split in batches of ``batch`` (``samples`` is ignored; a tail shorter than a batch is left out, since
    engines built for the cell's shapes take no other); for a model with a feeds file, ceil(samples / batch)
    batches of it, as many as it holds whole; else ceil(samples / batch) seeded batches."""
    if spec.trained is not None:
        from onnx_models.trained import splits

        data = splits(spec, size).eval
        total = len(next(iter(data.values())))
        return [{k: v[i : i + batch] for k, v in data.items()} for i in range(0, total - batch + 1, batch)]
    wanted = max(1, math.ceil(samples / batch))
    if spec.config(size).get("feeds"):
        return _file_batches(spec, size, batch, wanted)
    return [spec.make_feeds(size, batch, ACCURACY_SEED + i) for i in range(wanted)]


def _file_batches(spec, size: str, batch: int, wanted: int) -> list[dict[str, np.ndarray]]:
    """Up to ``wanted`` batches of ``batch`` samples of the model's feeds file, in the file's order: as many
    as it holds whole, and at least one (a file smaller than a batch is repeated to fill it, since engines built
    for the cell's shapes take no other)."""
    from calibration.feeds import FeedError, file_feeds
    from common.hashing import sha256_file

    given = spec.config(size)["feeds"]
    path = Path(given["path"])
    if not path.is_file() or sha256_file(path) != given["sha256"]:
        raise FeedError(f"the feeds file {path} changed or is gone since it was brought in; run again with --feeds")
    specs = spec.input_specs(size)
    one = file_feeds(path, specs, 1, check_ranges=False).batches
    count = max(1, min(wanted, len(one) // batch))
    batches = []
    for b in range(count):
        picks = [one[(b * batch + i) % len(one)] for i in range(batch)]
        batches.append(
            {
                s.name: picks[0][s.name]
                if s.batch_axis is None
                else np.concatenate([p[s.name] for p in picks], axis=s.batch_axis)
                for s in specs
            }
        )
    return batches


def state_pairs(spec, size: str) -> Mapping[str, str]:
    """The stream's (output -> input) pairs of a model brought in with ``--state``; empty for any other."""
    return spec.config(size).get("state") or {}


class Stream:
    """A model run as a stream: ``step(feeds)`` runs one inference with the state inputs replaced by the last
    step's state outputs (the first step takes them from ``feeds``), synchronised, outputs on the host: the
    unit the timer measures for such a model, copies of the state in and out included."""

    def __init__(self, engine, pairs: Mapping[str, str]):
        self.engine, self.pairs = engine, dict(pairs)
        self.state: dict[str, np.ndarray] = {}

    def step(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference of the stream on ``feeds``; returns its outputs."""
        outputs = self.engine.infer({**feeds, **self.state})
        self.state = {name: outputs[output] for output, name in self.pairs.items()}
        return outputs


def run_batches(engine, spec, size: str, batches: list[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The outputs of ``engine`` on each of ``batches``, in order: independent inferences, or one stream from
    the first batch's state for a model brought in with ``--state``."""
    pairs = state_pairs(spec, size)
    if not pairs:
        return [engine.infer(feeds) for feeds in batches]
    stream = Stream(engine, pairs)
    return [stream.step(feeds) for feeds in batches]
