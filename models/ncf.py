"""NeuMF (He et al. 2017): GMF and MLP towers over user and item embeddings, MovieLens-1M sizes.

Table I batch 256. MovieLens-1M has 6,040 users and 3,706 rated items. The layer sizes are the MLPerf NCF
reference's (predictive factors 64; MLP layers 256-256-128-64, i.e. 128-wide user and item embeddings
concatenated into 256, then ReLU layers of 256, 128 and 64), the common large configuration of the He et al.
code (whose defaults, 8 factors and 64-32-16-8, are the paper's smallest). As in that code: GMF is the
elementwise product of the GMF embeddings, the MLP tower reads the concatenated MLP embeddings, and the
prediction is a sigmoid over one dense unit on [GMF vector, last MLP layer]. The code draws embeddings from
N(0, 0.01), a starting point for training that puts every probability within 1e-4 of 0.5; here they are
drawn from N(0, 1/dim), which spreads the full model's probabilities over about 0.48-0.51 (measured on 512
samples), so that the ranking comparison of the low-precision models has differences to rank.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from models import InputSpec, ModelSpec


def inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """``user`` ids < users and ``item`` ids < items, one pair per sample, (batch,) int64 each."""
    return [
        InputSpec("user", ("batch",), "int64", 0, cfg["users"]),
        InputSpec("item", ("batch",), "int64", 0, cfg["items"]),
    ]


@functools.cache
def _table() -> type:
    """The embedding layer, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    class Table(keras.layers.Layer):
        """(batch,) ids -> (batch, dim) rows, a bare ``tf.gather`` (one ONNX Gather)."""

        def __init__(self, rows: int, dim: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.rows, self.dim = rows, dim

        def build(self, input_shape: Any) -> None:
            init = keras.initializers.RandomNormal(stddev=self.dim**-0.5)
            self.table = self.add_weight(shape=(self.rows, self.dim), initializer=init, name="table")

        def call(self, ids: Any) -> Any:
            return tf.gather(self.table, ids)

    return Table


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras NeuMF: (user, item) -> ``probability`` (batch, 1)."""
    import keras

    table = _table()
    keras.utils.set_random_seed(seed)
    user = keras.Input((), dtype="int64", name="user")
    item = keras.Input((), dtype="int64", name="item")
    mlp_dim = cfg["layers"][0] // 2

    gmf = keras.layers.Multiply(name="gmf")(
        [
            table(cfg["users"], cfg["factors"], name="gmf_user_embedding")(user),
            table(cfg["items"], cfg["factors"], name="gmf_item_embedding")(item),
        ]
    )
    x = keras.layers.Concatenate(name="mlp_input")(
        [
            table(cfg["users"], mlp_dim, name="mlp_user_embedding")(user),
            table(cfg["items"], mlp_dim, name="mlp_item_embedding")(item),
        ]
    )
    for i, units in enumerate(cfg["layers"][1:], start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"mlp_layer_{i}")(x)
    predict = keras.layers.Concatenate(name="neumf")([gmf, x])
    probability = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="lecun_uniform", name="probability")(
        predict
    )
    return keras.Model([user, item], probability, name="ncf")


SPECS = [
    ModelSpec(
        name="ncf",
        category="recommendation",
        framework="tensorflow",
        task="ctr",
        paper_model="NCF",
        paper_batch=256,
        summary="NeuMF (GMF 64 + MLP 256-256-128-64), MovieLens-1M sizes (6040 users, 3706 items)",
        configs={
            "full": {"users": 6040, "items": 3706, "factors": 64, "layers": (256, 256, 128, 64)},
            "tiny": {"users": 50, "items": 40, "factors": 4, "layers": (16, 8, 4)},
        },
        inputs=inputs,
        outputs=("probability",),
        build=build,
    )
]
