"""GNMT-style translation model (the TensorFlow NMT 4-layer GNMT recipe, WMT16 de-en) with greedy decoding.

Table I batch 128. The recipe (wmt16_gnmt_4_layer.json): LSTM cells of 1024 units (BasicLSTMCell, forget
bias 1), 4 encoder and 4 decoder layers, GNMT encoder (the first layer bidirectional, then 3 unidirectional
layers, residual connections on the last 2), normed Bahdanau attention in the gnmt_v2 arrangement (the
bottom decoder layer's new output queries the attention, whose context is fed to every upper layer and, at
the next step, to the bottom layer), residual connections on the last 2 decoder layers, separate source and
target embeddings over the 36,549-token BPE vocabulary of the recipe (vocab.bpe.32000), a bias-free output
projection, and every weight drawn uniformly from [-0.1, 0.1]. Source sentences are at most 50 tokens
(src_max_len) and padded with </s>, as the NMT iterator pads them; the decoder runs TF NMT's default maximum
of twice the source length, 100 steps. Each decoder layer starts from the encoder's final state of the same
depth (pass_hidden_state: the bidirectional layer's backward state, then the unidirectional layers').
Decoding is greedy (the recipe's beam search of width 10 is not used): the argmax token is fed back, and
after a sentence emits </s> its remaining positions are </s>.

Everything runs inside the ONNX graph: each encoder layer is a ``tf.while_loop`` over the 50 source positions
and the decoder one over the 100 target positions, all with constant trip counts, so they become ONNX Loops
that the FLOP counter multiplies out. The encoder's input-to-hidden products of all positions are computed
before each loop as one MatMul (what cuDNN does); the recurrences stop at each sentence's length, as
dynamic_rnn with sequence_length does (state frozen, outputs 0 past it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from models import InputSpec, ModelSpec

# The vocabulary files of TF NMT start with <unk>, <s>, </s>.
UNK, SOS, EOS = 0, 1, 2
FORGET_BIAS = 1.0
INIT_RANGE = 0.1


def inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """``source`` token ids (batch, S) and ``source_length`` (batch,) in [1, S]; see ``sampler``."""
    return [
        InputSpec("source", ("batch", cfg["source_len"]), "int64", 0, cfg["vocab"]),
        InputSpec("source_length", ("batch",), "int64", 1, cfg["source_len"] + 1),
    ]


def sampler(cfg: Mapping[str, Any], batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Valid sources: lengths uniform in [1, S], word ids uniform over the vocabulary without <unk>, <s> and
    </s>, and </s> (the NMT iterator's source padding) at every position past a sentence's length."""
    length = cfg["source_len"]
    lengths = rng.integers(1, length + 1, size=batch, dtype=np.int64)
    words = rng.integers(EOS + 1, cfg["vocab"], size=(batch, length), dtype=np.int64)
    return {"source": np.where(np.arange(length)[None, :] < lengths[:, None], words, EOS), "source_length": lengths}


@functools.cache
def _layers() -> dict[str, type]:
    """The NMT layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    def uniform() -> Any:
        # A fresh initializer per weight (a shared unseeded one would repeat its values); the recipe's
        # init_op "uniform" with init_weight 0.1.
        return keras.initializers.RandomUniform(-INIT_RANGE, INIT_RANGE)

    class Table(keras.layers.Layer):
        """An embedding table, looked up with a bare ``tf.gather`` (``lookup``)."""

        def __init__(self, rows: int, dim: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.rows, self.dim = rows, dim

        def build(self, input_shape: Any) -> None:
            self.table = self.add_weight(shape=(self.rows, self.dim), initializer=uniform(), name="table")

        def call(self, ids: Any) -> Any:
            return tf.gather(self.table, ids)

    class LSTMCell(keras.layers.Layer):
        """BasicLSTMCell's weights and step: gates [i, j, f, o] = x W + h U + b; c' = c sigmoid(f + 1) +
        sigmoid(i) tanh(j); h' = tanh(c') sigmoid(o). Not called on tensors itself: the encoder and decoder
        layers call ``project`` and ``step``."""

        def __init__(self, inputs: int, units: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.inputs, self.units = inputs, units
            self.kernel = self.add_weight(shape=(inputs, 4 * units), initializer=uniform(), name="kernel")
            self.recurrent_kernel = self.add_weight(
                shape=(units, 4 * units), initializer=uniform(), name="recurrent_kernel"
            )
            self.bias = self.add_weight(shape=(4 * units,), initializer="zeros", name="bias")

        def project(self, x: Any) -> Any:
            """x (..., I) -> x W + b (..., 4H): the input half of the gates."""
            return tf.matmul(x, self.kernel) + self.bias

        def step(self, projected: Any, c: Any, h: Any) -> tuple[Any, Any]:
            """One step from the projected input (batch, 4H) and the state (c, h) -> the new (c, h)."""
            i, j, f, o = tf.split(projected + tf.matmul(h, self.recurrent_kernel), 4, axis=-1)
            c = c * tf.sigmoid(f + FORGET_BIAS) + tf.sigmoid(i) * tf.tanh(j)
            return c, tf.tanh(c) * tf.sigmoid(o)

    def run_lstm(cell: Any, projected: Any, keep: Any) -> tuple[Any, Any, Any]:
        """Run ``cell`` over time-major projected inputs (L, batch, 4H) with keep (L, batch, 1) 0/1.

        Returns (outputs (L, batch, H), final c, final h); past a row's length the state is frozen and the
        output is 0, as dynamic_rnn with sequence_length.
        """
        length, units = projected.shape[0], cell.units
        zeros = tf.zeros_like(projected[0, :, :units])

        def body(t: Any, c: Any, h: Any, outputs: Any) -> tuple[Any, ...]:
            # tf.gather, not x[t]: ONNX shape inference knows a Gather's output shape, not that of a strided
            # slice at a loop-dependent offset, and the FLOP counter needs the shapes.
            keep_t = tf.gather(keep, t)
            new_c, new_h = cell.step(tf.gather(projected, t), c, h)
            c = keep_t * new_c + (1.0 - keep_t) * c
            h = keep_t * new_h + (1.0 - keep_t) * h
            return t + 1, c, h, outputs.write(t, keep_t * new_h)

        loop_vars = (tf.constant(0), zeros, zeros, tf.TensorArray(projected.dtype, size=length))
        _, c, h, outputs = tf.while_loop(lambda t, *_: t < length, body, loop_vars, maximum_iterations=length)
        return outputs.stack(), c, h

    class Encoder(keras.layers.Layer):
        """GNMT encoder: (source (batch, S), source_length (batch,)) -> [memory (batch, S, H), keys (batch, S, H),
        mask (batch, S), then (c, h) of each layer: the bidirectional layer's backward state, then the
        unidirectional layers']. The memory is the top layer's outputs, keys its attention projection."""

        def __init__(self, cfg: Mapping[str, Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            units, layers = cfg["units"], cfg["layers"]
            self.units, self.uni_layers = units, layers - 1
            self.residual_from = self.uni_layers - (layers - 2)
            self.embedding = Table(cfg["vocab"], units, name="source_embedding")
            self.forward_cell = LSTMCell(units, units, name="bidirectional_forward")
            self.backward_cell = LSTMCell(units, units, name="bidirectional_backward")
            self.cells = [
                LSTMCell(2 * units if i == 0 else units, units, name=f"unidirectional_{i}")
                for i in range(self.uni_layers)
            ]
            # Bahdanau's memory layer belongs to the attention mechanism; it runs once, on the encoder side.
            self.memory_kernel = self.add_weight(shape=(units, units), initializer=uniform(), name="memory_kernel")

        def build(self, input_shape: Any) -> None:
            self.embedding.build(input_shape[0])

        def call(self, inputs: Any) -> Any:
            source, lengths = inputs
            length = source.shape[1]
            mask = tf.cast(tf.range(length, dtype=lengths.dtype)[tf.newaxis, :] < lengths[:, tf.newaxis], "float32")
            keep = tf.transpose(mask)[:, :, tf.newaxis]
            # Inputs are projected batch-major and transposed after, and later layers read the time-major
            # outputs directly: ONNX Runtime 1.32's NchwcTransformer crashes (SIGSEGV) building a session for
            # an FP16 graph with a Transpose feeding a MatMul.
            embedded = self.embedding(source)
            forward = tf.transpose(self.forward_cell.project(embedded), (1, 0, 2))
            backward = tf.transpose(self.backward_cell.project(embedded), (1, 0, 2))
            backward = tf.reverse_sequence(backward, lengths, seq_axis=0, batch_axis=1)
            forward_out, _, _ = run_lstm(self.forward_cell, forward, keep)
            backward_out, backward_c, backward_h = run_lstm(self.backward_cell, backward, keep)
            backward_out = tf.reverse_sequence(backward_out, lengths, seq_axis=0, batch_axis=1)
            x = tf.concat([forward_out, backward_out], axis=-1)
            states = [backward_c, backward_h]
            for i, cell in enumerate(self.cells):
                out, c, h = run_lstm(cell, cell.project(x), keep)
                x = out + x if i >= self.residual_from else out
                states += [c, h]
            keys = tf.transpose(tf.matmul(x, self.memory_kernel), (1, 0, 2))
            return [tf.transpose(x, (1, 0, 2)), keys, mask, *states]

    class GreedyDecoder(keras.layers.Layer):
        """GNMT decoder with normed Bahdanau attention, greedy: the encoder's outputs -> tokens (batch, T) int64."""

        def __init__(self, cfg: Mapping[str, Any], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            units, layers = cfg["units"], cfg["layers"]
            self.units, self.steps = units, cfg["max_decode"]
            self.residual_from = 2 if layers > 2 else layers
            self.embedding = Table(cfg["vocab"], units, name="target_embedding")
            self.cells = [LSTMCell(2 * units, units, name=f"decoder_{i}") for i in range(layers)]
            self.query_kernel = self.add_weight(shape=(units, units), initializer=uniform(), name="query_kernel")
            self.attention_v = self.add_weight(shape=(units,), initializer=uniform(), name="attention_v")
            self.attention_g = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(math.sqrt(1.0 / units)), name="attention_g"
            )
            self.attention_b = self.add_weight(shape=(units,), initializer="zeros", name="attention_b")
            self.output_kernel = self.add_weight(
                shape=(units, cfg["vocab"]), initializer=uniform(), name="output_kernel"
            )

        def build(self, input_shape: Any) -> None:
            self.embedding.build((None,))

        def attend(self, query: Any, memory: Any, keys: Any, valid: Any) -> Any:
            """Normed Bahdanau: query (batch, H) -> context (batch, H) over memory (batch, S, H)."""
            normed_v = self.attention_g * self.attention_v * tf.math.rsqrt(tf.reduce_sum(tf.square(self.attention_v)))
            processed = tf.matmul(query, self.query_kernel)[:, tf.newaxis, :]
            scores = tf.reduce_sum(normed_v * tf.tanh(keys + processed + self.attention_b), axis=-1)
            alignments = tf.nn.softmax(tf.where(valid, scores, -np.inf), axis=-1)
            return tf.squeeze(tf.matmul(alignments[:, tf.newaxis, :], memory), 1)

        def call(self, inputs: Any) -> Any:
            memory, keys, mask, *states = inputs
            valid = mask > 0.0
            batch = tf.shape(memory)[0]
            start = tf.fill([batch], tf.constant(SOS, tf.int64))
            attention = tf.zeros_like(memory[:, 0, :])

            def body(t: Any, token: Any, finished: Any, attention: Any, *rest: Any) -> tuple[Any, ...]:
                *states, emitted = rest
                new_states = []
                c, h = self.cells[0].step(
                    self.cells[0].project(tf.concat([tf.gather(self.embedding.table, token), attention], -1)),
                    states[0],
                    states[1],
                )
                new_states += [c, h]
                context = self.attend(h, memory, keys, valid)
                x = h
                for i, cell in enumerate(self.cells[1:], start=1):
                    c, h = cell.step(cell.project(tf.concat([x, context], -1)), states[2 * i], states[2 * i + 1])
                    new_states += [c, h]
                    x = h + x if i >= self.residual_from else h
                best = tf.argmax(tf.matmul(x, self.output_kernel), axis=-1, output_type=tf.int64)
                token = tf.where(finished, tf.constant(EOS, tf.int64), best)
                finished = tf.logical_or(finished, tf.equal(best, EOS))
                return (t + 1, token, finished, context, *new_states, emitted.write(t, token))

            loop_vars = (
                tf.constant(0),
                start,
                tf.zeros([batch], tf.bool),
                attention,
                *states,
                tf.TensorArray(tf.int64, size=self.steps),
            )
            result = tf.while_loop(lambda t, *_: t < self.steps, body, loop_vars, maximum_iterations=self.steps)
            return tf.transpose(result[-1].stack())

    return {"Encoder": Encoder, "GreedyDecoder": GreedyDecoder}


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras GNMT: (source, source_length) -> ``tokens`` (batch, max_decode) int64."""
    import keras

    layers = _layers()
    keras.utils.set_random_seed(seed)
    if cfg["layers"] < 2:
        raise ValueError(f"GNMT needs at least 2 layers (one bidirectional), got {cfg['layers']}")
    source = keras.Input((cfg["source_len"],), dtype="int64", name="source")
    lengths = keras.Input((), dtype="int64", name="source_length")
    encoded = layers["Encoder"](cfg, name="encoder")([source, lengths])
    tokens = layers["GreedyDecoder"](cfg, name="decoder")(encoded)
    return keras.Model([source, lengths], tokens, name="nmt")


SPECS = [
    ModelSpec(
        name="nmt",
        category="language",
        framework="tensorflow",
        task="translation",
        paper_model="NMT",
        paper_batch=128,
        summary="GNMT 4-layer LSTM 1024 (bi + 3 uni encoder, normed Bahdanau), vocab 36549, greedy, src 50, 100 steps",
        configs={
            "full": {"vocab": 36549, "units": 1024, "layers": 4, "source_len": 50, "max_decode": 100},
            "tiny": {"vocab": 40, "units": 16, "layers": 4, "source_len": 6, "max_decode": 8},
        },
        inputs=inputs,
        outputs=("tokens",),
        build=build,
        sampler=sampler,
        task_options={"eos": EOS},
    )
]
