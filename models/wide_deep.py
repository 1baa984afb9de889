"""Wide & Deep (Cheng et al. 2016) on Census-Income features, after TensorFlow's wide_deep census example.

Table I batch 2048. The example's feature columns become three fixed-width inputs so the ONNX graph has no
string or sparse ops: standardised continuous features, one hashed id per categorical column, one hashed id
per crossed column. The model re-bases each column's ids onto its own rows of a shared table (per-column
offsets), which is what separate per-column tables compute, with one Gather per table.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from models import InputSpec, ModelSpec

DENSE_COLUMNS = ("age", "education_num", "capital_gain", "capital_loss", "hours_per_week")
CATEGORICAL_COLUMNS = (
    "workclass",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "gender",
    "native_country",
)
CROSSED_COLUMNS = (
    "education_x_occupation",
    "age_buckets_x_education_x_occupation",
    "native_country_x_occupation",
)
# Continuous features arrive standardised (zero mean, unit variance), so almost every value lies in [-3, 3).
DENSE_LOW, DENSE_HIGH = -3.0, 3.0


def inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """The three inputs at one size: ``dense`` floats, ``categorical`` ids < vocab, ``crosses`` ids < buckets."""
    return [
        InputSpec("dense", ("batch", len(DENSE_COLUMNS)), "float32", DENSE_LOW, DENSE_HIGH),
        InputSpec("categorical", ("batch", len(CATEGORICAL_COLUMNS)), "int64", 0, cfg["vocab"]),
        InputSpec("crosses", ("batch", len(CROSSED_COLUMNS)), "int64", 0, cfg["cross_buckets"]),
    ]


@functools.cache
def _layers() -> tuple[type, type]:
    """The custom Keras layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import numpy as np
    import tensorflow as tf

    def column_offsets(columns: int, rows_per_column: int) -> np.ndarray:
        # Column c's ids 0..rows_per_column-1 map to rows c*rows_per_column.. of the table.
        return np.arange(columns, dtype=np.int64) * rows_per_column

    class ColumnEmbedding(keras.layers.Layer):
        """Per-column embeddings in one (columns*rows, dim) table: (batch, columns) ids -> (batch, columns, dim).

        ``keras.layers.Embedding`` goes through ``keras.ops.take``, whose negative-index fix exports as nine
        extra ONNX ops per table; ids here are always valid, so a bare ``tf.gather`` gives a single Gather.
        """

        def __init__(self, columns: int, rows: int, dim: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.columns, self.rows, self.dim = columns, rows, dim

        def build(self, input_shape: Any) -> None:
            # tf.feature_column.embedding_column's default initialiser: truncated normal, stddev 1/sqrt(dim).
            init = keras.initializers.TruncatedNormal(stddev=self.dim**-0.5)
            self.table = self.add_weight(shape=(self.columns * self.rows, self.dim), initializer=init, name="table")

        def call(self, ids: Any) -> Any:
            return tf.gather(self.table, ids + column_offsets(self.columns, self.rows))

    class WideLinear(keras.layers.Layer):
        """The wide part: a linear model over one-hot categorical and crossed ids, (batch, 1) logit.

        A one-hot row times a weight vector is that id's weight, so the logit is a Gather of per-id weights
        (an embedding of dim 1) summed over the columns, plus a bias. Both inputs share one table.
        """

        def __init__(self, vocab: int, cross_buckets: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.vocab, self.cross_buckets = vocab, cross_buckets

        def build(self, input_shape: Any) -> None:
            rows = len(CATEGORICAL_COLUMNS) * self.vocab + len(CROSSED_COLUMNS) * self.cross_buckets
            # TF's LinearModel starts at zero; small random weights instead, so the wide path carries signal
            # through the parity check as a trained model's would.
            init = keras.initializers.TruncatedNormal(stddev=0.1)
            self.weights_per_id = self.add_weight(shape=(rows, 1), initializer=init, name="weights")
            self.bias = self.add_weight(shape=(1,), initializer="zeros", name="bias")

        def call(self, inputs: Any) -> Any:
            categorical, crosses = inputs
            # Crossed ids live after all the categorical rows, each crossed column in its own block.
            cross_base = len(CATEGORICAL_COLUMNS) * self.vocab
            ids = tf.concat(
                [
                    categorical + column_offsets(len(CATEGORICAL_COLUMNS), self.vocab),
                    crosses + (cross_base + column_offsets(len(CROSSED_COLUMNS), self.cross_buckets)),
                ],
                axis=1,
            )
            return tf.reduce_sum(tf.gather(self.weights_per_id, ids), axis=1) + self.bias

    return ColumnEmbedding, WideLinear


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras Wide & Deep model: inputs (dense, categorical, crosses) -> ``probability`` (batch, 1)."""
    import keras

    column_embedding, wide_linear = _layers()
    keras.utils.set_random_seed(seed)
    dense = keras.Input((len(DENSE_COLUMNS),), dtype="float32", name="dense")
    categorical = keras.Input((len(CATEGORICAL_COLUMNS),), dtype="int64", name="categorical")
    crosses = keras.Input((len(CROSSED_COLUMNS),), dtype="int64", name="crosses")

    wide_logit = wide_linear(cfg["vocab"], cfg["cross_buckets"], name="wide")([categorical, crosses])
    embedded = column_embedding(len(CATEGORICAL_COLUMNS), cfg["vocab"], cfg["embedding_dim"], name="deep_embeddings")(
        categorical
    )
    x = keras.layers.Reshape((len(CATEGORICAL_COLUMNS) * cfg["embedding_dim"],), name="deep_flatten")(embedded)
    x = keras.layers.Concatenate(name="deep_concat")([x, dense])
    for i, units in enumerate(cfg["hidden"]):
        x = keras.layers.Dense(units, activation="relu", name=f"deep_hidden_{i}")(x)
    deep_logit = keras.layers.Dense(1, name="deep_logit")(x)

    logit = keras.layers.Add(name="logit")([wide_logit, deep_logit])
    probability = keras.layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model([dense, categorical, crosses], probability, name="wide_deep")


SPECS = [
    ModelSpec(
        name="wide_deep",
        category="recommendation",
        framework="tensorflow",
        task="ctr",
        paper_model="Wide&Deep",
        paper_batch=2048,
        summary="Wide & Deep, Census-Income features (TF wide_deep example), DNN 100-75-50-25",
        configs={
            # Shared vocab 1000 = the example's largest hashed column (occupation, native_country); crosses
            # use its hash_bucket_size=1000 per crossed column.
            "full": {"vocab": 1000, "cross_buckets": 1000, "embedding_dim": 8, "hidden": (100, 75, 50, 25)},
            "tiny": {"vocab": 32, "cross_buckets": 16, "embedding_dim": 4, "hidden": (16, 8)},
        },
        inputs=inputs,
        outputs=("probability",),
        build=build,
    )
]
