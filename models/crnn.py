"""CRNN (Shi, Bai and Yao 2015) scene-text recogniser, written in Keras after the paper's Table 4 configuration.

Seven 3x3 convolutions (64, 128, 256, 256, 512, 512 channels, padding 1, ReLU; the seventh 512 channels, 2x2,
no padding) with the paper's max pools: 2x2 stride 2 after conv1 and conv2, and 2x2 windows with stride 2
in height, 1 in width and one column of padding on each side after conv4 and conv6 (the "1x2" pools, as
in the authors' Torch code), which halve the height and widen the map by one column. BatchNorm follows conv5
and conv6. For a 32x100 image the map is 1x26x512: map-to-sequence reads its 26 columns as frames, two
bidirectional LSTM layers of 256 units per direction (outputs of the two directions concatenated) run over
them, and a linear layer gives per-frame logits over 37 classes: 10 digits + 26 letters, and the CTC blank
at index 36.

The LSTMs are written out as their cell arithmetic over the static frame count (``BiLSTM`` below: Keras
LSTM's equations and gate order), so the ONNX graph holds MatMul / Add / Sigmoid / Tanh / Mul step by step,
not ONNX LSTM ops. tf2onnx's LSTM rewriter only fires when the weights are graph constants, and the
TensorFlow exporter passes weights as function arguments (see exporters/tensorflow.py); a rolled Keras LSTM
then becomes an ONNX Loop whose body shapes the FLOP counter cannot resolve, and ``LSTM(unroll=True)`` adds a
time-major transpose, per-step input slicing and reversal ops around each direction. Unrolled, every MatMul
is counted and quantized like any other.

Input: (batch, 1, 32, 100) NCHW grayscale images scaled to [-1, 1). Output: ``logits`` (batch, 26, 37).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from models import InputSpec, ModelSpec
from models._keras_vision import layers, settle_batchnorm, to_nhwc

CLASSES = 37
BLANK = 36
HEIGHT = 32


def inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """One NCHW float input ``images`` (batch, 1, 32, width), pixels scaled to [-1, 1)."""
    return [InputSpec("images", ("batch", 1, HEIGHT, cfg["width"]), "float32", -1.0, 1.0)]


def _window_out(size: int, window: int, stride: int, padding: int) -> int:
    """Output length of a pooling window or valid convolution along one axis, ``padding`` in total."""
    return (size + padding - window) // stride + 1


def frames(width: int) -> int:
    """Frames (columns of the last feature map) for an input ``width``: the conv stack's width arithmetic.

    Two 2x2 stride-2 pools, two 2-wide stride-1 pools with one column of padding on each side (each adds a
    column), then the 2x2 valid convolution (removes one): 100 -> 50 -> 25 -> 26 -> 27 -> 26.
    """
    w = _window_out(width, 2, 2, 0)
    w = _window_out(w, 2, 2, 0)
    w = _window_out(w, 2, 1, 2)
    w = _window_out(w, 2, 1, 2)
    return _window_out(w, 2, 1, 0)


@functools.cache
def _layers() -> dict[str, type]:
    """The custom Keras layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    class BiLSTM(keras.layers.Layer):
        """A bidirectional LSTM over a static number of frames: (batch, T, I) -> (batch, T, 2 * units).

        Keras LSTM's arithmetic (gates i, f, g, o; sigmoid gates, tanh cell input and output; forget-gate bias
        initialised to 1; zero initial state), forward and backward outputs concatenated per frame as
        ``Bidirectional(merge_mode="concat")`` does. Each direction projects all frames with one MatMul, then
        adds the recurrent MatMul step by step. The first step of each direction skips the recurrent MatMul
        and the forget term, whose inputs are the zero initial state.
        """

        def __init__(self, units: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape: Any) -> None:
            gates = 4 * self.units

            def forget_bias(shape: Any, dtype: Any = None) -> Any:
                values = np.concatenate([np.zeros(self.units), np.ones(self.units), np.zeros(2 * self.units)])
                return values.astype(dtype or "float32")

            self.cells = {}
            for direction in ("forward", "backward"):
                self.cells[direction] = (
                    self.add_weight(
                        shape=(input_shape[-1], gates),
                        initializer=keras.initializers.GlorotUniform(),
                        name=f"{direction}_kernel",
                    ),
                    self.add_weight(
                        shape=(self.units, gates),
                        initializer=keras.initializers.Orthogonal(),
                        name=f"{direction}_recurrent_kernel",
                    ),
                    self.add_weight(shape=(gates,), initializer=forget_bias, name=f"{direction}_bias"),
                )

        def _run(self, x: Any, direction: str) -> Any:
            kernel, recurrent_kernel, bias = self.cells[direction]
            steps = x.shape[1]
            projected = tf.matmul(x, kernel) + bias
            order = range(steps - 1, -1, -1) if direction == "backward" else range(steps)
            outputs: list[Any] = [None] * steps
            h = c = None
            for t in order:
                z = projected[:, t]
                if h is not None:
                    z = z + tf.matmul(h, recurrent_kernel)
                i, f, g, o = tf.split(z, 4, axis=-1)
                candidate = tf.sigmoid(i) * tf.tanh(g)
                c = candidate if c is None else tf.sigmoid(f) * c + candidate
                h = tf.sigmoid(o) * tf.tanh(c)
                outputs[t] = h
            return tf.stack(outputs, axis=1)

        def call(self, x: Any) -> Any:
            return tf.concat([self._run(x, "forward"), self._run(x, "backward")], axis=-1)

        def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
            return (*input_shape[:-1], 2 * self.units)

    class Linear(keras.layers.Layer):
        """x @ kernel + bias on the last axis: one MatMul + Add (Keras Dense on 3-D input exports as a tensordot
        with runtime shape arithmetic and loses the static frame count)."""

        def __init__(self, units: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape: Any) -> None:
            self.kernel = self.add_weight(
                shape=(input_shape[-1], self.units), initializer=keras.initializers.GlorotUniform(), name="kernel"
            )
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

        def call(self, x: Any) -> Any:
            return tf.matmul(x, self.kernel) + self.bias

        def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
            return (*input_shape[:-1], self.units)

    class MapToSequence(keras.layers.Layer):
        """(batch, 1, T, C) -> (batch, T, C): the one-row map's columns, left to right, are the frames."""

        def call(self, x: Any) -> Any:
            return tf.squeeze(x, axis=1)

        def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
            return (input_shape[0], *input_shape[2:])

    return {"BiLSTM": BiLSTM, "Linear": Linear, "MapToSequence": MapToSequence}


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras CRNN: images (batch, 1, 32, W) -> per-frame logits (batch, frames(W), 37)."""
    import keras

    keras.utils.set_random_seed(seed)
    if frames(cfg["width"]) < 1:
        raise ValueError(f"CRNN input width {cfg['width']} is too narrow: the conv stack leaves no frames")
    batch_norm = layers()["BatchNorm"]
    c1, c2, c3, c4, c5, c6, c7 = cfg["channels"]
    images = keras.Input((1, HEIGHT, cfg["width"]), name="images")
    x = to_nhwc(images, "to_nhwc")

    def conv(x: Any, filters: int, name: str, norm: bool = False, kernel: int = 3, padding: str = "same") -> Any:
        x = keras.layers.Conv2D(
            filters, kernel, padding=padding, use_bias=not norm, kernel_initializer="he_normal", name=name
        )(x)
        if norm:
            x = batch_norm(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    def tall_pool(x: Any, name: str) -> Any:
        # Torch's SpatialMaxPooling(2, 2, 1, 2, 1, 0) pads with -inf; after a ReLU zero padding is the same.
        x = keras.layers.ZeroPadding2D(((0, 0), (1, 1)), name=f"{name}_pad")(x)
        return keras.layers.MaxPooling2D((2, 2), strides=(2, 1), padding="valid", name=name)(x)

    x = conv(x, c1, "conv1")
    x = keras.layers.MaxPooling2D(2, 2, name="pool1")(x)
    x = conv(x, c2, "conv2")
    x = keras.layers.MaxPooling2D(2, 2, name="pool2")(x)
    x = conv(x, c3, "conv3")
    x = conv(x, c4, "conv4")
    x = tall_pool(x, "pool3")
    x = conv(x, c5, "conv5", norm=True)
    x = conv(x, c6, "conv6", norm=True)
    x = tall_pool(x, "pool4")
    x = conv(x, c7, "conv7", kernel=2, padding="valid")

    custom = _layers()
    x = custom["MapToSequence"](name="map_to_sequence")(x)
    for i in range(cfg["lstm_layers"]):
        x = custom["BiLSTM"](cfg["hidden"], name=f"bilstm{i + 1}")(x)
    logits = custom["Linear"](CLASSES, name="logits")(x)
    model = keras.Model(images, logits, name="crnn")

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        return inputs(cfg)[0].sample(rng, n)

    return settle_batchnorm(model, sample, seed)


SPECS = [
    ModelSpec(
        name="crnn",
        category="text",
        framework="tensorflow",
        task="ctc_text",
        paper_model="CRNN",
        paper_batch=256,
        summary="CRNN, 7 conv layers + 2 BiLSTM(256), 32x100 grayscale, 37 classes (CTC blank 36)",
        configs={
            "full": {"width": 100, "channels": (64, 128, 256, 256, 512, 512, 512), "hidden": 256, "lstm_layers": 2},
            "tiny": {"width": 48, "channels": (8, 16, 32, 32, 64, 64, 64), "hidden": 16, "lstm_layers": 2},
        },
        inputs=inputs,
        outputs=("logits",),
        build=build,
        task_options={"blank": BLANK},
    )
]
