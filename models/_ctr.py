"""Pieces shared by the behaviour-sequence CTR models written in Keras (DIN, DIEN).

Both read a user's clicked items and their categories, padded to a fixed history length, plus the number of
real entries and the target item and category: the inputs of the DIN/DIEN code on Amazon Electronics. The
layers here are spelled so that they export as plain ONNX ops: ``Linear`` is one MatMul + Add for any rank,
``Dice`` and ``BatchNorm`` are their inference forms (population statistics) in elementwise ops.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from models import InputSpec, ModelSpec

# tf.layers.batch_normalization's epsilon, used by the DIN code's Dice and by the DIEN code's batch norm.
NORM_EPS = 1e-3

# The MLP's last layer (80 -> 2 logits) stays float in INT8: its 160 multiply-adds per sample cost nothing, and
# 8-bit logits on a range calibrated from 32 samples clip the samples that fall outside it. Measured with
# `suite.py run --size full` at batch 512 (default calibration): max abs click-probability error vs FP32 went
# from 0.203 to 0.065 for DIN and from 0.111 to 0.082 for DIEN. The name is the ONNX node tf2onnx makes of the
# "fcn_logits" layer (tests/test_zoo_recsys_nlp.py checks that it exists and stays float).
INT8_OPTIONS = {"exclude_nodes": ("fcn_logits_1/MatMul",)}

# The synthetic batch that settles the population statistics: its size, and its seed's offset from the model's.
SETTLE_BATCH = 256
SETTLE_SEED = 17

HISTORY_INPUTS = ("history_items", "history_categories", "history_length", "target_item", "target_category")


def history_inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """The five inputs: padded history item and category ids (batch, L), history length (batch,), target ids.

    The specs alone would draw lengths and padding independently; ``history_sampler`` draws them coupled.
    """
    length = cfg["history"]
    return [
        InputSpec("history_items", ("batch", length), "int64", 0, cfg["items"]),
        InputSpec("history_categories", ("batch", length), "int64", 0, cfg["categories"]),
        InputSpec("history_length", ("batch",), "int64", 1, length + 1),
        InputSpec("target_item", ("batch",), "int64", 0, cfg["items"]),
        InputSpec("target_category", ("batch",), "int64", 0, cfg["categories"]),
    ]


@functools.cache
def item_categories(items: int, categories: int) -> np.ndarray:
    """A fixed item -> category map (seeded, the same in every process), so that a sampled item always comes
    with the same category, as in the real data."""
    return np.random.default_rng(0).integers(0, categories, size=items, dtype=np.int64)


def history_sampler(cfg: Mapping[str, Any], batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Valid inputs for one batch: lengths uniform in [1, L], item ids uniform, each item's category from
    ``item_categories``, and item and category id 0 (the padding id) at every position past a row's length."""
    length = cfg["history"]
    categories = item_categories(cfg["items"], cfg["categories"])
    lengths = rng.integers(1, length + 1, size=batch, dtype=np.int64)
    items = rng.integers(0, cfg["items"], size=(batch, length), dtype=np.int64)
    real = np.arange(length)[None, :] < lengths[:, None]
    target = rng.integers(0, cfg["items"], size=batch, dtype=np.int64)
    return {
        "history_items": np.where(real, items, 0),
        "history_categories": np.where(real, categories[items], 0),
        "history_length": lengths,
        "target_item": target,
        "target_category": categories[target],
    }


@functools.cache
def layers() -> dict[str, type]:
    """The shared Keras layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    class Linear(keras.layers.Layer):
        """x @ kernel + bias on the last axis, any rank, with an optional activation (tf.layers.dense's
        glorot-uniform kernel and zero bias). ``keras.layers.Dense`` on a rank-3 input exports as tensordot's
        Shape / Concat / Reshape around a 2-D MatMul; a broadcasting ``tf.matmul`` is one MatMul + Add."""

        def __init__(self, units: int, activation: Any = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units, self.activation = units, activation

        def build(self, input_shape: Any) -> None:
            self.kernel = self.add_weight(
                shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel"
            )
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

        def call(self, x: Any) -> Any:
            y = tf.matmul(x, self.kernel) + self.bias
            return y if self.activation is None else self.activation(y)

    class Table(keras.layers.Layer):
        """An embedding table looked up with a bare ``tf.gather`` (one ONNX Gather; ``keras.layers.Embedding``
        adds nine ops of negative-index handling). tf.get_variable's default glorot-uniform initialiser, as the
        DIN/DIEN code creates its tables."""

        def __init__(self, rows: int, dim: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.rows, self.dim = rows, dim

        def build(self, input_shape: Any) -> None:
            self.table = self.add_weight(shape=(self.rows, self.dim), initializer="glorot_uniform", name="table")

        def call(self, ids: Any) -> Any:
            return tf.gather(self.table, ids)

    class Standardizing(keras.layers.Layer):
        """Base of the layers that normalise with population statistics (``moving_mean``/``moving_variance``,
        non-trainable, per channel of the last axis); ``settle`` sets them from data."""

        def build(self, input_shape: Any) -> None:
            channels = input_shape[-1]
            self.moving_mean = self.add_weight(
                shape=(channels,), initializer="zeros", trainable=False, name="moving_mean"
            )
            self.moving_variance = self.add_weight(
                shape=(channels,), initializer="ones", trainable=False, name="moving_variance"
            )

        def normalized(self, x: Any) -> Any:
            return (x - self.moving_mean) * tf.math.rsqrt(self.moving_variance + NORM_EPS)

    class Dice(Standardizing):
        """Dice (Zhou et al. 2018, eq. 4) at inference: p = sigmoid((x - E[x]) / sqrt(Var[x] + eps)),
        out = alpha (1 - p) x + p x, with E and Var the population statistics, as the paper's test phase
        and the DIN code's batch norm inside Dice (center=False, scale=False) compute them. Alpha starts at
        zero, as in the code."""

        def build(self, input_shape: Any) -> None:
            super().build(input_shape)
            self.alpha = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="alpha")

        def call(self, x: Any) -> Any:
            p = tf.sigmoid(self.normalized(x))
            return self.alpha * (1.0 - p) * x + p * x

    class BatchNorm(Standardizing):
        """Batch normalisation at inference (population statistics, learned scale and shift)."""

        def build(self, input_shape: Any) -> None:
            super().build(input_shape)
            self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="beta")

        def call(self, x: Any) -> Any:
            return self.normalized(x) * self.gamma + self.beta

    class HistoryMask(keras.layers.Layer):
        """history_length (batch,) -> (batch, L) float mask, 1 for the first ``length`` positions."""

        def __init__(self, length: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.length = length

        def call(self, lengths: Any) -> Any:
            return tf.cast(
                tf.range(self.length, dtype=lengths.dtype)[tf.newaxis, :] < lengths[:, tf.newaxis], "float32"
            )

    class SumPooling(keras.layers.Layer):
        """(history (batch, L, D), mask (batch, L)) -> the sum of the real behaviours, (batch, D)."""

        def call(self, inputs: Any) -> Any:
            history, mask = inputs
            return tf.reduce_sum(history * mask[:, :, tf.newaxis], axis=1)

    class ClickProbability(keras.layers.Layer):
        """(batch, 2) logits -> the softmax's first column, the click probability, (batch, 1). The code's
        targets are [click, no click], so its y_hat[:, 0] is the click probability."""

        def call(self, logits: Any) -> Any:
            return tf.nn.softmax(logits, axis=-1)[:, :1]

    class Interactions(keras.layers.Layer):
        """(sequence (batch, L, D), one vector (batch, D)) -> the attention MLP's input (batch, L, 4D): for each
        position s and the vector v, [s, v, s - v, s * v] (DIN's activation unit), or with ``vector_first``
        [v, s, v - s, v * s] (DIEN's din_fcn_attention)."""

        def __init__(self, vector_first: bool = False, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.vector_first = vector_first

        def call(self, inputs: Any) -> Any:
            sequence, vector = inputs
            v = tf.broadcast_to(vector[:, tf.newaxis, :], tf.shape(sequence))
            a, b = (v, sequence) if self.vector_first else (sequence, v)
            return tf.concat([a, b, a - b, a * b], axis=-1)

    return {
        "Linear": Linear,
        "Interactions": Interactions,
        "Table": Table,
        "Dice": Dice,
        "BatchNorm": BatchNorm,
        "HistoryMask": HistoryMask,
        "Standardizing": Standardizing,
        "SumPooling": SumPooling,
        "ClickProbability": ClickProbability,
    }


def embed_behaviours(cfg: Mapping[str, Any], model_inputs: list[Any]) -> tuple[Any, Any, Any]:
    """Item and category embeddings of the history and the target, concatenated per behaviour as in the
    DIN/DIEN code: returns (history (batch, L, 2E), target (batch, 2E), mask (batch, L) float)."""
    import keras

    lib = layers()
    history_items, history_categories, history_length, target_item, target_category = model_inputs
    item_table = lib["Table"](cfg["items"], cfg["embedding_dim"], name="item_embedding")
    category_table = lib["Table"](cfg["categories"], cfg["embedding_dim"], name="category_embedding")
    history = keras.layers.Concatenate(name="history_embedding")(
        [item_table(history_items), category_table(history_categories)]
    )
    target = keras.layers.Concatenate(name="target_embedding")(
        [item_table(target_item), category_table(target_category)]
    )
    mask = lib["HistoryMask"](cfg["history"], name="history_mask")(history_length)
    return history, target, mask


def summary_features(target: Any, history: Any, mask: Any) -> list[Any]:
    """The code's hand-made features: the target, the sum of the behaviour embeddings and their product.

    The code sums all L rows, padding included; here only the real behaviours are summed (sum pooling as the
    paper describes it), so padding ids do not leak into the features.
    """
    import keras

    history_sum = layers()["SumPooling"](name="history_sum")([history, mask])
    return [target, history_sum, keras.layers.Multiply(name="target_times_history_sum")([target, history_sum])]


def mlp_head(cfg: Mapping[str, Any], x: Any) -> Any:
    """The code's build_fcn_net: batch norm, Dice MLP (``cfg["mlp"]``), 2 logits -> click probability (batch, 1)."""
    lib = layers()
    x = lib["BatchNorm"](name="fcn_bn")(x)
    for i, units in enumerate(cfg["mlp"]):
        x = lib["Linear"](units, name=f"fcn_{i}")(x)
        x = lib["Dice"](name=f"fcn_dice_{i}")(x)
    logits = lib["Linear"](2, name="fcn_logits")(x)
    return lib["ClickProbability"](name="probability")(logits)


def click_model(name: str, cfg: Mapping[str, Any], seed: int, model_inputs: list[Any], embedded: tuple, interest: Any):
    """The settled Keras model that ends either network: the MLP reads the target, the behaviour sum, their
    product and the model's ``interest`` vector. ``embedded`` is ``embed_behaviours``'s (history, target,
    mask)."""
    import keras

    history, target, mask = embedded
    features = keras.layers.Concatenate(name="fcn_input")([*summary_features(target, history, mask), interest])
    model = keras.Model(model_inputs, mlp_head(cfg, features), name=name)
    settle(model, cfg, seed)
    return model


def keras_inputs(cfg: Mapping[str, Any]) -> list[Any]:
    """Keras inputs named and shaped as ``history_inputs``."""
    import keras

    return [keras.Input(spec.shape[1:], dtype=spec.dtype, name=spec.name) for spec in history_inputs(cfg)]


def settle(model: Any, cfg: Mapping[str, Any], seed: int) -> None:
    """Set every Dice / BatchNorm layer's population statistics to its input's mean and variance on a seeded
    synthetic batch (``history_sampler``).

    A freshly initialised network has mean 0 and variance 1 there, far from the scale of its activations
    (embeddings of about 0.01), so Dice would act as a fixed half-linear unit and the click probabilities
    would all sit near 0.5. Layers are settled in graph order, each on the activations that the already
    settled layers before it produce, as a trained network's moving averages would be.
    """
    import keras

    sample = history_sampler(cfg, SETTLE_BATCH, np.random.default_rng(seed + SETTLE_SEED))
    feeds = [sample[name] for name in HISTORY_INPUTS]
    for layer in model.layers:
        if not isinstance(layer, layers()["Standardizing"]):
            continue
        x = np.asarray(keras.Model(model.inputs, layer.input)(feeds, training=False))
        axes = tuple(range(x.ndim - 1))
        layer.moving_mean.assign(x.mean(axis=axes))
        layer.moving_variance.assign(x.var(axis=axes))


# Amazon Electronics sizes and the DIN/DIEN code's dimensions, shared by both models' configs.
AMAZON_FULL = {"items": 63001, "categories": 801, "embedding_dim": 18, "history": 100}
AMAZON_TINY = {"items": 50, "categories": 7, "embedding_dim": 4, "history": 6}


def history_model_spec(name: str, paper_model: str, summary: str, build: Any, full: dict, tiny: dict) -> ModelSpec:
    """The catalogue entry of a behaviour-sequence CTR model: Table I batch 512, the five history inputs, a
    click ``probability`` output, Amazon Electronics sizes plus the model's own ``full`` / ``tiny`` settings."""
    return ModelSpec(
        name=name,
        category="recommendation",
        framework="tensorflow",
        task="ctr",
        paper_model=paper_model,
        paper_batch=512,
        summary=summary,
        configs={"full": {**AMAZON_FULL, **full}, "tiny": {**AMAZON_TINY, **tiny}},
        inputs=history_inputs,
        outputs=("probability",),
        build=build,
        sampler=history_sampler,
        int8_options=INT8_OPTIONS,
    )
