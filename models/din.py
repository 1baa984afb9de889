"""Deep Interest Network (Zhou et al. 2018) on Amazon Electronics, after the Model_DIN of the DIN/DIEN code.

Table I batch 512. Sizes from the Amazon Electronics preprocessing (63,001 items, 801 categories), the code's
18-wide item and category embeddings (36 per behaviour) and its maximum history length of 100. The target is
embedded like a behaviour; the local activation unit scores every behaviour h against the target t from
[h, t, h - t, h * t] with an MLP 80-40-1 whose activations are Dice (the paper's unit; the public code uses
sigmoids there); padded behaviours get weight 0 and the behaviours are pooled by a weighted sum, without a
softmax over the weights (section 4.3 of the paper). As in the code, the MLP input also carries the sum of the
behaviour embeddings and its product with the target (summed over the real behaviours only; the code also
sums the padding rows). Batch norm, MLP 200-80-2 with Dice, softmax; ``probability`` is the click column.
The user-id embedding of the code is left out: the inputs are the behaviour sequence and the target only.
Dice and the batch norm use population statistics, settled on synthetic inputs (``models._ctr.settle``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from models._ctr import (
    click_model,
    embed_behaviours,
    history_model_spec,
    keras_inputs,
    layers,
)


@functools.cache
def _din_layers() -> dict[str, type]:
    """DIN's own layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    class WeightedSumPooling(keras.layers.Layer):
        """(weights (batch, L, 1), mask (batch, L), history (batch, L, D)) -> sum_j mask_j w_j h_j, (batch, D)."""

        def call(self, inputs: Any) -> Any:
            weights, mask, history = inputs
            weights = tf.squeeze(weights, -1) * mask
            return tf.squeeze(tf.matmul(weights[:, tf.newaxis, :], history), 1)

    return {"WeightedSumPooling": WeightedSumPooling}


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras DIN: the five history inputs (``models._ctr.history_inputs``) -> ``probability`` (batch, 1)."""
    import keras

    lib, din = layers(), _din_layers()
    keras.utils.set_random_seed(seed)
    model_inputs = keras_inputs(cfg)
    history, target, mask = embed_behaviours(cfg, model_inputs)

    x = lib["Interactions"](name="activation_unit_input")([history, target])
    for i, units in enumerate(cfg["attention"]):
        x = lib["Linear"](units, name=f"activation_unit_{i}")(x)
        x = lib["Dice"](name=f"activation_unit_dice_{i}")(x)
    weights = lib["Linear"](1, name="activation_unit_weight")(x)
    interest = din["WeightedSumPooling"](name="weighted_sum_pooling")([weights, mask, history])

    return click_model("din", cfg, seed, model_inputs, (history, target, mask), interest)


SPECS = [
    history_model_spec(
        "din",
        "DIN",
        "DIN, Amazon Electronics sizes, history 100, Dice activation unit 80-40, MLP 200-80-2",
        build,
        full={"attention": (80, 40), "mlp": (200, 80)},
        tiny={"attention": (8, 4), "mlp": (8, 4)},
    )
]
