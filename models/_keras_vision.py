"""Helpers shared by the Keras image models (CPN, SegLink, CRNN): layers that export to clean NCHW ONNX graphs.

The models take NCHW images, as ONNX and the PyTorch models do, and turn them NHWC with a ``Permute`` first
thing (Keras convolutions on CPU are NHWC only). tf2onnx writes every NHWC convolution as Transpose / Conv /
Transpose and its transpose optimiser then cancels the pairs, the input's permutation included, so the
exported graph is NCHW from end to end with no Transpose left between layers, provided every op between two
convolutions is one the optimiser can push a transpose through. Two Keras layers are not:

- ``keras.layers.BatchNormalization`` at inference is spelled ``x * scale + shift`` with the scale computed
  from the weights; since the exporter passes weights as function arguments, those are not constants, and
  tf2onnx leaves a Transpose pair around every normalisation. ``BatchNorm`` below runs the inference step as
  ``tf.compat.v1.nn.fused_batch_norm``, which tf2onnx maps to one ONNX BatchNormalization that onnxslim and
  ONNX Runtime fold into the convolution before it.
- ``keras.layers.UpSampling2D`` repeats rows and columns with Tile / Reshape chains; ``ResizeBilinear`` is
  one ONNX Resize.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

# TensorFlow's fused batch norm raises any smaller epsilon to this (nn_impl.fused_batch_norm), so the TF1 models
# that asked for less (CPN's 1e-9) ran with it; Keras's training-mode path uses the same value.
FUSED_MIN_EPSILON = 1.001e-5


@functools.cache
def layers() -> dict[str, type]:
    """The custom Keras layers, defined on first use so that importing this module never loads Keras."""
    import keras
    import tensorflow as tf

    class BatchNorm(keras.layers.BatchNormalization):
        """Keras BatchNormalization (same variables, same training step) whose inference step is a fused op.

        Only for 4-D NHWC inputs normalised over the channel axis, which is what the image models need.
        """

        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("epsilon", FUSED_MIN_EPSILON)
            super().__init__(**kwargs)

        def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
            if training:
                return super().call(inputs, training=True, mask=mask)
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                self.gamma,
                self.beta,
                mean=self.moving_mean,
                variance=self.moving_variance,
                epsilon=self.epsilon,
                is_training=False,
            )
            return outputs

    class ResizeBilinear(keras.layers.Layer):
        """Bilinear resize of an NHWC map to a fixed (height, width), TF1's ``resize_bilinear`` semantics.

        ``align_corners=False`` without half-pixel centres is what ``tf.image.resize_bilinear`` did in the
        TF1 code these models come from (ONNX Resize, coordinate mode ``asymmetric``); TF2's
        ``tf.image.resize`` would shift the sampling grid by half a pixel.
        """

        def __init__(self, size: tuple[int, int], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.size = tuple(size)

        def call(self, x: Any) -> Any:
            return tf.compat.v1.image.resize_bilinear(x, self.size, align_corners=False)

        def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
            return (input_shape[0], *self.size, input_shape[-1])

    return {"BatchNorm": BatchNorm, "ResizeBilinear": ResizeBilinear}


def to_nhwc(x: Any, name: str) -> Any:
    """NCHW Keras tensor -> NHWC (a Permute that cancels against tf2onnx's first Transpose)."""
    import keras

    return keras.layers.Permute((2, 3, 1), name=name)(x)


def to_nchw(x: Any, name: str) -> Any:
    """NHWC Keras tensor -> NCHW (a Permute that cancels against tf2onnx's last Transpose)."""
    import keras

    return keras.layers.Permute((3, 1, 2), name=name)(x)


def settle_batchnorm(
    model: Any,
    sample: Callable[[np.random.Generator, int], np.ndarray],
    seed: int,
    batches: int = 2,
    batch_size: int = 4,
) -> Any:
    """Set every BatchNorm's moving statistics to their average over seeded synthetic batches; returns ``model``.

    The Keras counterpart of ``models._vision.settle_batchnorm``: a freshly initialised network has moving
    mean 0 and variance 1 everywhere, so activations drift layer by layer; a few training-mode passes, batch
    k with momentum (k - 1) / k (a cumulative average), leave statistics that keep activations near unit
    scale as in a trained network. ``sample(rng, n)`` draws ``n`` valid inputs for the model.
    """
    import keras

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return model
    rng = np.random.default_rng(seed + 1)
    momenta = [layer.momentum for layer in norms]
    try:
        for k in range(1, batches + 1):
            for layer in norms:
                layer.momentum = (k - 1) / k
            model(sample(rng, batch_size), training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return model
