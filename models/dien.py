"""DIEN, the Deep Interest Evolution Network (Zhou et al. 2019), after Model_DIN_V2_Gru_Vec_attGru of the DIEN code.

Table I batch 512. Amazon Electronics sizes and the code's dimensions: 18-wide item and category embeddings
(36 per behaviour), GRU hidden size 36, history length 100. The interest extractor is a GRU over the behaviour
sequence; the attention of the code's din_fcn_attention scores each extracted interest against the target
(query = PReLU(dense(target)), MLP 80-40-1 with sigmoids over [q, o, q - o, q * o], padding masked, softmax);
the interest evolution layer is the AUGRU, a GRU whose update gate is scaled by the attention score
(the code's VecAttGRUCell), and its state at each row's last real behaviour is the evolved interest. Both
recurrences stop at each row's length, as dynamic_rnn with sequence_length does: the state is frozen and the
outputs are 0 past it. The MLP (batch norm, 200-80-2 with Dice, softmax) reads the target, the behaviour sum,
their product and the evolved interest. Left out: the user-id embedding (the inputs are the behaviour
sequence and the target) and the auxiliary loss, which only trains.

The recurrences are ``tf.while_loop``s with a constant trip count (the history length) and become ONNX Loops.
The input-to-hidden products of all steps are computed before the loop, as one MatMul over the sequence
(what cuDNN does), so only the hidden-to-hidden products run inside the loop body.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from models._ctr import (
    click_model,
    embed_behaviours,
    history_model_spec,
    keras_inputs,
    layers,
)

# The code pads masked attention scores with -2**32 + 1 before the softmax.
SCORE_PADDING = -(2.0**32) + 1.0


@functools.cache
def dien_layers() -> dict[str, type]:
    """DIEN's own layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    class InterestGRU(keras.layers.Layer):
        """A GRU over the behaviour sequence in TensorFlow's GRUCell form; with attention scores, the AUGRU.

        Inputs ``[x, mask (batch, L)]`` or, when ``attentional``, ``[x, mask, scores (batch, L)]``, with x
        (batch, L, I), or (L, batch, I) when ``time_major``. Each step (``step``): r, u = sigmoid(x W_ru +
        h U_ru + b_ru); c = tanh(x W_c + (r * h) U_c + b_c); for the AUGRU u = (1 - score) u;
        h' = u h + (1 - u) c. Past a row's length the state is kept and the output is 0. Returns (outputs
        (L, batch, H), time-major as the loop stacks them, and the final state (batch, H)) when
        ``return_sequences``, else the final state. Gate biases start at 1, as in GRUCell.
        """

        def __init__(
            self, units: int, attentional: bool, return_sequences: bool, time_major: bool, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)
            self.units, self.attentional, self.return_sequences = units, attentional, return_sequences
            self.time_major = time_major

        def build(self, input_shape: Any) -> None:
            features, units = input_shape[0][-1], self.units
            # Input kernel and bias for [r | u | c]; the recurrent kernels are split so that the loop body
            # never slices a weight.
            self.input_kernel = self.add_weight(
                shape=(features, 3 * units), initializer="glorot_uniform", name="input_kernel"
            )
            self.gate_kernel = self.add_weight(
                shape=(units, 2 * units), initializer="glorot_uniform", name="gate_kernel"
            )
            self.candidate_kernel = self.add_weight(
                shape=(units, units), initializer="glorot_uniform", name="candidate_kernel"
            )
            bias = np.concatenate([np.ones(2 * units), np.zeros(units)]).astype("float32")
            self.bias = self.add_weight(shape=(3 * units,), initializer=keras.initializers.Constant(bias), name="bias")

        def project_inputs(self, x: Any) -> Any:
            """x (..., I) -> x [W_ru | W_c] + [b_ru | b_c], (..., 3H): the input half of every step."""
            return tf.matmul(x, self.input_kernel) + self.bias

        def step(self, projected: Any, state: Any, score: Any = None) -> Any:
            """One cell step: projected inputs (batch, 3H), state (batch, H), score (batch, 1) or None -> new state."""
            units = self.units
            gates = tf.sigmoid(projected[:, : 2 * units] + tf.matmul(state, self.gate_kernel))
            reset, update = gates[:, :units], gates[:, units:]
            candidate = tf.tanh(projected[:, 2 * units :] + tf.matmul(reset * state, self.candidate_kernel))
            if score is not None:
                update = (1.0 - score) * update
            return update * state + (1.0 - update) * candidate

        def call(self, inputs: Any) -> Any:
            x, mask = inputs[0], inputs[1]
            length = mask.shape[1]
            # Time-major, so that step t reads row t of each tensor. A batch-major x is projected first and
            # the product transposed, never the other way round: ONNX Runtime 1.32's NchwcTransformer
            # crashes (SIGSEGV) building a session for an FP16 graph with a Transpose feeding a MatMul.
            projected = self.project_inputs(x)
            if not self.time_major:
                projected = tf.transpose(projected, (1, 0, 2))
            keep = tf.transpose(mask)[:, :, tf.newaxis]
            scores = tf.transpose(inputs[2])[:, :, tf.newaxis] if self.attentional else None
            state = tf.zeros_like(projected[0, :, : self.units])
            outputs = tf.TensorArray(x.dtype, size=length) if self.return_sequences else None

            def body(t: Any, state: Any, *rest: Any) -> tuple[Any, ...]:
                # tf.gather rather than x[t]: a Gather's output shape is known to ONNX shape inference, a
                # strided slice at a loop-dependent offset is not, and the FLOP counter needs the shapes.
                score = tf.gather(scores, t) if scores is not None else None
                new = self.step(tf.gather(projected, t), state, score)
                keep_t = tf.gather(keep, t)
                state = keep_t * new + (1.0 - keep_t) * state
                if outputs is None:
                    return t + 1, state
                return t + 1, state, rest[0].write(t, keep_t * new)

            loop_vars = (tf.constant(0), state) if outputs is None else (tf.constant(0), state, outputs)
            result = tf.while_loop(lambda t, *_: t < length, body, loop_vars, maximum_iterations=length)
            if outputs is None:
                return result[1]
            return result[2].stack(), result[1]

    class PReLU(keras.layers.Layer):
        """max(0, x) + alpha min(0, x) per channel, alpha starting at 0.1 (the code's prelu)."""

        def build(self, input_shape: Any) -> None:
            self.alpha = self.add_weight(
                shape=(input_shape[-1],), initializer=keras.initializers.Constant(0.1), name="alpha"
            )

        def call(self, x: Any) -> Any:
            return tf.maximum(0.0, x) + self.alpha * tf.minimum(0.0, x)

    class MaskedSoftmax(keras.layers.Layer):
        """(scores (batch, L, 1), mask (batch, L)) -> softmax over the real positions, (batch, L)."""

        def call(self, inputs: Any) -> Any:
            scores, mask = inputs
            scores = tf.where(mask > 0.0, tf.squeeze(scores, -1), SCORE_PADDING)
            return tf.nn.softmax(scores, axis=-1)

    class BatchMajor(keras.layers.Layer):
        """(L, batch, D) -> (batch, L, D)."""

        def call(self, x: Any) -> Any:
            return tf.transpose(x, (1, 0, 2))

    return {
        "InterestGRU": InterestGRU,
        "PReLU": PReLU,
        "MaskedSoftmax": MaskedSoftmax,
        "BatchMajor": BatchMajor,
    }


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras DIEN: the five history inputs (``models._ctr.history_inputs``) -> ``probability`` (batch, 1)."""
    import keras

    lib, dien = layers(), dien_layers()
    keras.utils.set_random_seed(seed)
    model_inputs = keras_inputs(cfg)
    history, target, mask = embed_behaviours(cfg, model_inputs)
    hidden = cfg["hidden"]

    interests_time_major, _ = dien["InterestGRU"](
        hidden, attentional=False, return_sequences=True, time_major=False, name="interest_extractor"
    )([history, mask])
    interests = dien["BatchMajor"](name="interests")(interests_time_major)
    query = lib["Linear"](hidden, name="attention_query")(target)
    query = dien["PReLU"](name="attention_query_prelu")(query)
    x = lib["Interactions"](vector_first=True, name="attention_input")([interests, query])
    for i, units in enumerate(cfg["attention"]):
        x = lib["Linear"](units, activation=keras.activations.sigmoid, name=f"attention_{i}")(x)
    scores = lib["Linear"](1, name="attention_score")(x)
    scores = dien["MaskedSoftmax"](name="attention_softmax")([scores, mask])
    evolved = dien["InterestGRU"](
        hidden, attentional=True, return_sequences=False, time_major=True, name="interest_evolution"
    )([interests_time_major, mask, scores])

    return click_model("dien", cfg, seed, model_inputs, (history, target, mask), evolved)


SPECS = [
    history_model_spec(
        "dien",
        "DIEN",
        "DIEN, Amazon Electronics sizes, history 100, GRU 36 + attention 80-40 + AUGRU 36, MLP 200-80-2",
        build,
        full={"hidden": 36, "attention": (80, 40), "mlp": (200, 80)},
        tiny={"hidden": 8, "attention": (8, 4), "mlp": (8, 4)},
    )
]
