"""SegLink (Shi, Bai and Belongie 2017) oriented text detector, written in Keras after the authors' TF code.

An SSD-style VGG-16 trunk: conv1_1 to conv5_3 (3x3, ReLU; 2x2 max pools, pool5 3x3 stride 1), fc6 and fc7
as convolutions (fc6 3x3 with dilation 6, fc7 1x1, 1024 channels each), and the extra layers conv8_1/8_2,
conv9_1/9_2, conv10_1/10_2 (1x1 then 3x3 stride 2) and conv11 (3x3 stride 2). conv4_3 is L2-normalised
across channels and rescaled by a learned per-channel factor (initialised to 20), as in SSD. For a 512x512
image the six feature layers conv4_3, fc7, conv8_2, conv9_2, conv10_2 and conv11 are 64, 32, 16, 8, 4 and 2
cells square. On each, 3x3 convolutions predict per location: 2 segment scores (text / not text), 5 segment
offsets (x, y, w, h, theta, as in the paper; the authors' released code regresses 6 channels), 16 scores for
the links to the 8 neighbours in the same layer (a text / not-text pair per neighbour), and, from the second
layer on, 8 scores for the links to the 4 cells of the layer before (one convolution gives the within- and
cross-layer link scores together, within first, as in the released code).

Outputs concatenate the per-location predictions of all layers, layer by layer, row-major within a layer:
``segment_logits`` (batch, N, 2), ``segment_offsets`` (batch, N, 5), ``within_link_logits`` (batch, N, 16) and
``cross_link_logits`` (batch, N', 8), N = 5460 and N' = 1364 at 512x512 (N' leaves out the first layer).
Combining segments and links into oriented boxes (thresholding, a depth-first search over linked segments,
box fitting) is post-processing outside the network in the original too (a custom C++ TensorFlow op,
``combine_segments``), and is not in this graph.

Input: (batch, 3, 512, 512) NCHW images with the VGG means subtracted from 0-255 pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from models import InputSpec, ModelSpec
from models._keras_vision import to_nhwc

# 0-255 pixels minus VGG's per-channel means (123.7, 116.8, 103.9): the extremes over the three channels.
PIXEL_LOW, PIXEL_HIGH = -124.0, 152.0
SEGMENT_CLASSES = 2
OFFSETS = 5
WITHIN_LINKS = 8 * 2
CROSS_LINKS = 4 * 2
L2_SCALE_INIT = 20.0
# tf.nn.l2_normalize's floor on the squared norm.
L2_EPSILON = 1e-12


def inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """One NCHW float input ``images`` (batch, 3, resolution, resolution)."""
    shape = ("batch", 3, cfg["resolution"], cfg["resolution"])
    return [InputSpec("images", shape, "float32", PIXEL_LOW, PIXEL_HIGH)]


def feature_sizes(resolution: int) -> list[int]:
    """Side of each of the six feature layers: strides 8, 16, 32, 64, 128, 256 with TF's SAME (ceil) rounding."""
    sizes, side = [], resolution
    for stride_step in (8, 2, 2, 2, 2, 2):
        side = -(-side // stride_step)
        sizes.append(side)
    return sizes


@functools.cache
def _layers() -> dict[str, type]:
    """The custom Keras layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    class L2NormScale(keras.layers.Layer):
        """SSD's conv4_3 normalisation: unit L2 norm across channels, times a learned per-channel scale."""

        def build(self, input_shape: Any) -> None:
            self.scale = self.add_weight(
                shape=(input_shape[-1],), initializer=keras.initializers.Constant(L2_SCALE_INIT), name="scale"
            )

        def call(self, x: Any) -> Any:
            # tf.nn.l2_normalize's arithmetic, x / sqrt(max(sum x^2, 1e-12)), with the sum spelled as a mean
            # times the channel count: tf2onnx moves its NHWC <-> NCHW transposes across ReduceMean (axes an
            # attribute at opset 17) but not across ReduceSum (axes an input), which would leave Transpose
            # pairs on the largest feature map.
            channels = x.shape[-1]
            sum_sq = tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) * float(channels)
            normed = x * tf.math.rsqrt(tf.maximum(sum_sq, L2_EPSILON))
            # The per-channel scale as a 1x1 depthwise convolution (one grouped ONNX Conv): a Mul by the
            # scale, which the exporter passes as a non-constant argument, leaves a Transpose pair around it,
            # and tf2onnx names those transposes in an order that changes from run to run.
            kernel = tf.reshape(self.scale, (1, 1, channels, 1))
            return tf.nn.depthwise_conv2d(normed, kernel, strides=(1, 1, 1, 1), padding="VALID")

    class FlattenCells(keras.layers.Layer):
        """(batch, h, w, c) -> (batch, h * w, c), row-major cells: one Reshape to a constant shape.

        ``keras.layers.Reshape`` builds its target from the runtime batch size (Shape / Gather / Concat / Cast
        before every Reshape in ONNX); -1 for the batch needs none of that.
        """

        def call(self, x: Any) -> Any:
            return tf.reshape(x, (-1, x.shape[1] * x.shape[2], x.shape[3]))

        def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
            return (input_shape[0], input_shape[1] * input_shape[2], input_shape[3])

    return {"L2NormScale": L2NormScale, "FlattenCells": FlattenCells}


def _conv(x: Any, filters: int, kernel: int, name: str, stride: int = 1, dilation: int = 1) -> Any:
    """3x3 / 1x1 convolution with bias and ReLU, TF SAME padding; He-initialised so random activations keep scale."""
    import keras

    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        dilation_rate=dilation,
        padding="same",
        activation="relu",
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _head(x: Any, index: int, cross_links: bool) -> dict[str, Any]:
    """The three 3x3 predictors on one feature layer, each flattened to (batch, cells, channels)."""
    import keras

    links = WITHIN_LINKS + (CROSS_LINKS if cross_links else 0)
    name = f"det_{index}"

    def predict(channels: int, kind: str) -> Any:
        y = keras.layers.Conv2D(channels, 3, padding="same", name=f"{name}_{kind}")(x)
        return _layers()["FlattenCells"](name=f"{name}_{kind}_flat")(y)

    out = {"segments": predict(SEGMENT_CLASSES, "cls"), "offsets": predict(OFFSETS, "reg")}
    link_scores = predict(links, "lnk")
    out["within"] = link_scores[:, :, :WITHIN_LINKS] if cross_links else link_scores
    if cross_links:
        out["cross"] = link_scores[:, :, WITHIN_LINKS:]
    return out


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras SegLink: images (batch, 3, R, R) -> (segment logits, offsets, within-, cross-layer links)."""
    import keras

    keras.utils.set_random_seed(seed)
    images = keras.Input((3, cfg["resolution"], cfg["resolution"]), name="images")
    x = to_nhwc(images, "to_nhwc")
    for stage, widths in enumerate(cfg["vgg"], start=1):
        for i, width in enumerate(widths, start=1):
            x = _conv(x, width, 3, f"conv{stage}_{i}")
        if stage == 4:
            conv4_3 = _layers()["L2NormScale"](name="conv4_3_norm")(x)
        if stage < 5:
            x = keras.layers.MaxPooling2D(2, 2, padding="same", name=f"pool{stage}")(x)
    x = keras.layers.MaxPooling2D(3, 1, padding="same", name="pool5")(x)
    x = _conv(x, cfg["fc"], 3, "fc6", dilation=6)
    fc7 = _conv(x, cfg["fc"], 1, "fc7")

    features = [conv4_3, fc7]
    x = fc7
    for i, (squeeze, width) in enumerate(cfg["extra"], start=8):
        x = _conv(x, squeeze, 1, f"conv{i}_1")
        x = _conv(x, width, 3, f"conv{i}_2", stride=2)
        features.append(x)
    features.append(_conv(x, cfg["conv11"], 3, "conv11", stride=2))

    heads = [_head(f, i, cross_links=i > 1) for i, f in enumerate(features, start=1)]

    def concat(kind: str) -> Any:
        return keras.layers.Concatenate(axis=1, name=kind)([h[kind] for h in heads if kind in h])

    outputs = [concat("segments"), concat("offsets"), concat("within"), concat("cross")]
    return keras.Model(images, outputs, name="seglink")


SPECS = [
    ModelSpec(
        name="seglink",
        category="text",
        framework="tensorflow",
        task="classification",
        paper_model="SegLink",
        paper_batch=8,
        summary="SegLink, SSD-style VGG-16 trunk, 6 feature layers, segments + within/cross-layer links, 512x512",
        configs={
            "full": {
                "resolution": 512,
                "vgg": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
                "fc": 1024,
                "extra": ((256, 512), (128, 256), (128, 256)),
                "conv11": 256,
            },
            "tiny": {
                "resolution": 128,
                "vgg": ((8, 8), (16, 16), (32, 32, 32), (64, 64, 64), (64, 64, 64)),
                "fc": 128,
                "extra": ((32, 64), (16, 32), (16, 32)),
                "conv11": 32,
            },
        },
        inputs=inputs,
        outputs=("segment_logits", "segment_offsets", "within_link_logits", "cross_link_logits"),
        build=build,
    )
]
