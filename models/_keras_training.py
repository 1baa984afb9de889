"""Training a catalogue Keras model for the trained track, shared by the Keras models' track files."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def fit_and_save(
    model: Any,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    out: Path,
    *,
    epochs: int,
    batch: int,
    seed: int,
    learning_rate: float = 1e-3,
    loss: Any = "binary_crossentropy",
    clipnorm: float | None = None,
) -> None:
    """Fit ``model`` (by default binary cross-entropy on its sigmoid output; any Keras ``loss`` of
    ``(labels, outputs)`` otherwise, with ``labels`` as given) with Adam (gradients clipped to ``clipnorm``
    when given) on ``inputs`` and ``labels``, seeded, with one progress line per epoch on stderr, and write
    its weights to ``out`` in Keras's format.

    Keras 3 saves weights only to names ending ``.weights.h5``: it saves into a temporary directory under such a
    name, and the file is moved to ``out`` (the store's temporary, renamed into place by the caller)."""
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=clipnorm), loss=loss)
    names = [t.name.split(":")[0] for t in model.inputs]
    x = [inputs[name] for name in names]
    y = labels.astype(np.float32).reshape(-1, 1) if loss == "binary_crossentropy" else labels
    stdout, sys.stdout = sys.stdout, sys.stderr  # Keras prints its progress to stdout; the suite's is stderr
    try:
        model.fit(x, y, epochs=epochs, batch_size=batch, shuffle=True, verbose=2)
    finally:
        sys.stdout = stdout
    with tempfile.TemporaryDirectory(prefix="aimatrix-train-") as tmp:
        saved = Path(tmp) / "model.weights.h5"
        model.save_weights(str(saved))
        shutil.move(str(saved), str(out))
