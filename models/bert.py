"""BERT (Devlin et al. 2019) with a SQuAD span head, written in Keras: BERT-large (Table I batch 2) and BERT-base.

The encoder follows the original TensorFlow BERT: word + position + token-type embeddings, post-LayerNorm
transformer layers (eps 1e-12), exact (erf) GELU, additive attention mask (1 - mask) * -10000, weights drawn
from a truncated normal with stddev 0.02 (biases 0, layer-norm scales 1). Dropout is an identity at
inference and is left out. Attention is spelled with matmul / reshape / transpose / softmax rather than
``keras.layers.MultiHeadAttention`` (built on einsum), and the custom layers below avoid the extra ops some
Keras layers add on export: the ONNX graph is plain Gather / MatMul / Add / Reshape / Transpose / Softmax,
with layer norms in the pattern ONNX Runtime fuses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from models import InputSpec, ModelSpec

LAYER_NORM_EPS = 1e-12
INIT_STDDEV = 0.02
# Added to the attention scores of masked-out keys, as in the original BERT (softmax weight ~ e^-10000 = 0).
MASK_PENALTY = -10000.0


def inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """The three (batch, seq_len) int64 inputs: token ids < vocab, segment ids < type_vocab, attention mask."""
    shape = ("batch", cfg["seq_len"])
    return [
        InputSpec("input_ids", shape, "int64", 0, cfg["vocab"]),
        InputSpec("token_type_ids", shape, "int64", 0, cfg["type_vocab"]),
        # The sampler draws integers uniformly from [low, high), so [1, 2) gives a mask of all ones: every
        # position is a real token. That is the valid choice for fixed-length synthetic batches; a uniform
        # 0/1 mask would punch random holes in the middle of sequences, which no tokenizer produces.
        InputSpec("attention_mask", shape, "int64", 1, 2),
    ]


@functools.cache
def _layers() -> dict[str, type]:
    """The custom Keras layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    def initializer() -> Any:
        # A fresh instance per weight: an unseeded Keras initializer fixes its seed when constructed, so a
        # shared instance would give every weight the same values. The global seed makes each one repeatable.
        return keras.initializers.TruncatedNormal(stddev=INIT_STDDEV)

    class Linear(keras.layers.Layer):
        """x @ kernel + bias on the last axis, for inputs of any rank, with an optional activation.

        ``keras.layers.Dense`` on a (batch, L, H) input goes through ``tf.tensordot``, which exports as
        Shape / Concat / Reshape around a 2-D MatMul; a broadcasting ``tf.matmul`` exports as one MatMul + Add.
        """

        def __init__(self, units: int, activation: Any = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units, self.activation = units, activation

        def build(self, input_shape: Any) -> None:
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer=initializer(), name="kernel")
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

        def call(self, x: Any) -> Any:
            y = tf.matmul(x, self.kernel) + self.bias
            return y if self.activation is None else self.activation(y)

    class LayerNorm(keras.layers.Layer):
        """Layer normalisation over the last axis, eps 1e-12.

        Spelled ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div / Mul / Add, the pattern ONNX Runtime
        fuses into one LayerNormalization. ``keras.layers.LayerNormalization`` (tf.nn.moments, rsqrt, folded
        shift) comes out of tf2onnx with its means turned into GlobalAveragePool, which nothing fuses.
        """

        def build(self, input_shape: Any) -> None:
            self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="beta")

        def call(self, x: Any) -> Any:
            centered = x - tf.reduce_mean(x, axis=-1, keepdims=True)
            variance = tf.reduce_mean(tf.pow(centered, 2.0), axis=-1, keepdims=True)
            return centered / tf.sqrt(variance + LAYER_NORM_EPS) * self.gamma + self.beta

    def gelu(x: Any) -> Any:
        # Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as the original BERT; not the tanh approximation. Spelled
        # out because tf.nn.gelu(approximate=False) uses Erfc, which tf2onnx cannot convert. (TF's constant
        # folding turns the division into a multiplication by 1/sqrt 2: the TensorFlow form of the pattern,
        # which onnxruntime.transformers' optimizer fuses into Gelu and ORT's built-in GeluFusion does not.)
        return x * (1.0 + tf.math.erf(x / math.sqrt(2.0))) * 0.5

    class Embeddings(keras.layers.Layer):
        """(input_ids, token_type_ids) -> LayerNorm(word + position + token-type embedding), (batch, L, hidden).

        Lookups use a bare ``tf.gather``: ``keras.layers.Embedding`` goes through ``keras.ops.take``, whose
        negative-index fix exports as nine extra ONNX ops per table in front of the Gather.
        """

        def __init__(self, cfg: Mapping[str, Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.cfg = dict(cfg)
            self.norm = LayerNorm(name="layer_norm")

        def build(self, input_shape: Any) -> None:
            hidden = self.cfg["hidden"]
            self.word = self.add_weight(shape=(self.cfg["vocab"], hidden), initializer=initializer(), name="word")
            self.position = self.add_weight(
                shape=(self.cfg["max_positions"], hidden), initializer=initializer(), name="position"
            )
            self.token_type = self.add_weight(
                shape=(self.cfg["type_vocab"], hidden), initializer=initializer(), name="token_type"
            )
            self.norm.build((None, None, hidden))

        def call(self, inputs: Any) -> Any:
            input_ids, token_type_ids = inputs
            # Positions are 0..L-1 for every sequence and L is static, so the first L rows of the table are
            # added directly (a constant after export) instead of gathering position ids.
            positions = self.position[: input_ids.shape[1]]
            x = tf.gather(self.word, input_ids) + tf.gather(self.token_type, token_type_ids) + positions
            return self.norm(x)

    class AttentionBias(keras.layers.Layer):
        """(batch, L) 0/1 mask -> (batch, 1, 1, L) additive bias: 0 for real tokens, -10000 for padding."""

        def call(self, mask: Any) -> Any:
            keep = tf.cast(mask, self.compute_dtype)[:, tf.newaxis, tf.newaxis, :]
            return (1.0 - keep) * MASK_PENALTY

    class TransformerLayer(keras.layers.Layer):
        """One post-LN encoder layer: (hidden (batch, L, H), bias (batch, 1, 1, L)) -> (batch, L, H)."""

        def __init__(self, cfg: Mapping[str, Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            hidden, heads = cfg["hidden"], cfg["heads"]
            if hidden % heads:
                raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
            self.heads, self.head_dim = heads, hidden // heads
            self.query = Linear(hidden, name="query")
            self.key = Linear(hidden, name="key")
            self.value = Linear(hidden, name="value")
            self.attention_output = Linear(hidden, name="attention_output")
            self.attention_norm = LayerNorm(name="attention_norm")
            self.intermediate = Linear(cfg["intermediate"], gelu, name="intermediate")
            self.output_dense = Linear(hidden, name="output")
            self.output_norm = LayerNorm(name="output_norm")

        def build(self, input_shape: Any) -> None:
            hidden = self.heads * self.head_dim
            for layer in (self.query, self.key, self.value, self.attention_output):
                layer.build((None, None, hidden))
            self.attention_norm.build((None, None, hidden))
            self.intermediate.build((None, None, hidden))
            self.output_dense.build((None, None, self.intermediate.units))
            self.output_norm.build((None, None, hidden))

        def _split_heads(self, x: Any, length: int) -> Any:
            # (batch, L, H) -> (batch, heads, L, head_dim)
            return tf.transpose(tf.reshape(x, (-1, length, self.heads, self.head_dim)), (0, 2, 1, 3))

        def call(self, inputs: Any) -> Any:
            x, bias = inputs
            length = x.shape[1]
            q = self._split_heads(self.query(x), length)
            k = self._split_heads(self.key(x), length)
            v = self._split_heads(self.value(x), length)
            scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(self.head_dim)) + bias
            context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
            context = tf.reshape(tf.transpose(context, (0, 2, 1, 3)), (-1, length, self.heads * self.head_dim))
            x = self.attention_norm(x + self.attention_output(context))
            return self.output_norm(x + self.output_dense(self.intermediate(x)))

    class SpanHead(keras.layers.Layer):
        """SQuAD head: (batch, L, H) -> start and end logits, each (batch, L), from one Dense(2)."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.logits = Linear(2, name="logits")

        def build(self, input_shape: Any) -> None:
            self.logits.build(input_shape)

        def call(self, x: Any) -> Any:
            start, end = tf.unstack(self.logits(x), num=2, axis=-1)
            return start, end

    return {
        "Embeddings": Embeddings,
        "AttentionBias": AttentionBias,
        "TransformerLayer": TransformerLayer,
        "SpanHead": SpanHead,
    }


def encoder(cfg: Mapping[str, Any], seed: int) -> tuple[list[Any], Any]:
    """The seeded Keras BERT encoder of ``cfg``: its inputs (input_ids, token_type_ids, attention_mask), each
    (batch, seq_len) int64, and the last layer's hidden states (batch, seq_len, hidden), for a head to follow."""
    import keras

    layers = _layers()
    keras.utils.set_random_seed(seed)
    length = cfg["seq_len"]
    if length > cfg["max_positions"]:
        raise ValueError(f"seq_len {length} exceeds max_positions {cfg['max_positions']}")
    input_ids = keras.Input((length,), dtype="int64", name="input_ids")
    token_type_ids = keras.Input((length,), dtype="int64", name="token_type_ids")
    attention_mask = keras.Input((length,), dtype="int64", name="attention_mask")

    x = layers["Embeddings"](cfg, name="embeddings")([input_ids, token_type_ids])
    bias = layers["AttentionBias"](name="attention_bias")(attention_mask)
    for i in range(cfg["layers"]):
        x = layers["TransformerLayer"](cfg, name=f"layer_{i}")([x, bias])
    return [input_ids, token_type_ids, attention_mask], x


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras BERT for span QA: (input_ids, token_type_ids, attention_mask) -> (start_logits, end_logits)."""
    import keras

    inputs, x = encoder(cfg, seed)
    start_logits, end_logits = _layers()["SpanHead"](name="qa_outputs")(x)
    return keras.Model(inputs, [start_logits, end_logits], name="bert")


def _config(layers: int, hidden: int, heads: int, intermediate: int) -> dict[str, Any]:
    # Everything but the encoder's size is shared by both variants: WordPiece vocab, SQuAD sequence length.
    return {
        "layers": layers,
        "hidden": hidden,
        "heads": heads,
        "intermediate": intermediate,
        "vocab": 30522,
        "type_vocab": 2,
        "max_positions": 512,
        "seq_len": 384,
    }


TINY = {
    "layers": 2,
    "hidden": 64,
    "heads": 2,
    "intermediate": 128,
    "vocab": 1000,
    "type_vocab": 2,
    "max_positions": 64,
    "seq_len": 32,
}

SPECS = [
    ModelSpec(
        name="bert",
        category="language",
        framework="tensorflow",
        task="span_qa",
        paper_model="BERT",
        paper_batch=2,
        summary="BERT-large (24 layers, 1024 hidden, 16 heads), SQuAD span head, seq len 384",
        configs={"full": _config(24, 1024, 16, 4096), "tiny": TINY},
        inputs=inputs,
        outputs=("start_logits", "end_logits"),
        build=build,
    ),
    ModelSpec(
        name="bert_base",
        category="language",
        framework="tensorflow",
        task="span_qa",
        paper_model=None,
        paper_batch=2,
        summary="BERT-base (12 layers, 768 hidden, 12 heads), SQuAD span head, seq len 384",
        configs={"full": _config(12, 768, 12, 3072), "tiny": TINY},
        inputs=inputs,
        outputs=("start_logits", "end_logits"),
        build=build,
        variant_of="bert",
    ),
]
