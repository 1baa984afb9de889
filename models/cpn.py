"""Cascaded Pyramid Network (Chen et al. 2018) for COCO keypoints, written in Keras after the authors' tf-cpn code.

ResNet-50 backbone (TF-slim resnet_v1 bottlenecks as tf-cpn arranges them: stride on the 3x3 convolution and
in the first unit of stages 2-4, 7x7 stem with explicit padding), GlobalNet (a feature pyramid: 1x1 lateral
convolutions, bilinear upsampling + 1x1 merge convolution + add, and per level a 1x1 convolution and a 3x3
convolution to 17 heatmaps) and RefineNet (level i of the pyramid goes through i bottlenecks, every level is
upsampled to the output size, concatenated, and a bottleneck and a 3x3 convolution give the final heatmaps).
Every convolution that tf-cpn writes under its ``resnet_arg_scope`` has BatchNorm and no bias, the heatmap
convolutions included; the merge convolutions outside it have a bias and no normalisation.

Outputs, channels first: ``heatmaps`` (batch, 17, H/4, W/4) from the RefineNet, the pose task's output, and
``global_heatmaps`` (batch, 4, 17, H/4, W/4), the GlobalNet's four per-level predictions resized to the
output size (res2 level first). tf-cpn supervises both in training and returns only the RefineNet's at test
time; the GlobalNet heads are kept here because they are part of the architecture (about 6% of the FLOPs).

Input: (batch, 3, 384, 288) NCHW images as tf-cpn feeds them, (BGR - pixel means) / 255. tf-cpn's test also
runs every crop's horizontal flip in the same batch and averages the two heatmaps outside the network; that
doubles the images per batch and is not part of this graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from models import InputSpec, ModelSpec
from models._keras_vision import layers, settle_batchnorm, to_nchw, to_nhwc

# (BGR - means) / 255 with tf-cpn's means (102.98, 115.95, 122.77): the extremes over all three channels.
PIXEL_LOW, PIXEL_HIGH = -0.48, 0.6
KEYPOINTS = 17
# Initial BatchNorm scale at the end of every residual branch. With scale 1 a randomly initialised BN ResNet is
# chaotic, which a trained network is not: at full size 1% input noise left this model's heatmaps with cosine
# similarity 0.50 to the clean ones (0.1% noise: 0.91; the settled torchvision ResNet-50's layer4 features
# fare the same, 0.79), so INT8 agreed with FP32 on 0.7% of keypoints (cosine 0.38) and the FP32 parity error
# of ONNX Runtime against Keras was 4e-4, within 2.5x of the tolerance. Classifiers hide this behind global
# pooling; dense heatmaps do not. Residual branches that start small (the idea of zero-initialised residuals,
# Goyal et al. 2017, without silencing the branches) tame it: with 0.3, 1% noise gives cosine 0.986, parity
# 1.4e-5, INT8 keypoint agreement 0.45 (cosine 0.955). Weight values only: graph, FLOPs and timing are equal.
RESIDUAL_GAMMA = 0.3
# Spatial reduction of the stem (stride-2 conv, stride-2 pool): the heatmaps are at the res2 level.
OUTPUT_STRIDE = 4


def inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """One NCHW float input ``images`` (batch, 3, height, width)."""
    return [InputSpec("images", ("batch", 3, cfg["height"], cfg["width"]), "float32", PIXEL_LOW, PIXEL_HIGH)]


def heatmap_size(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) of the heatmaps for an input of cfg's size."""
    return cfg["height"] // OUTPUT_STRIDE, cfg["width"] // OUTPUT_STRIDE


class _Builder:
    """Creates named Keras layers for one CPN; conv + BatchNorm (+ ReLU) units as tf-cpn's slim arg scope."""

    def __init__(self) -> None:
        import keras

        self.keras = keras
        self.layers = layers()

    def conv_bn(
        self, x: Any, filters: int, kernel: int, name: str, stride: int = 1, relu: bool = True, gamma: float = 1.0
    ) -> Any:
        """slim ``conv2d`` under resnet_arg_scope: convolution without bias, BatchNorm, optional ReLU.

        A strided convolution is slim's ``conv2d_same``: explicit symmetric padding, then VALID (TF's own
        SAME would pad only the bottom and right for an even input). ``gamma`` is the BatchNorm scale's
        initial value.
        """
        keras = self.keras
        if stride > 1 and kernel > 1:
            pad = kernel - 1
            x = keras.layers.ZeroPadding2D(((pad // 2, pad - pad // 2),) * 2, name=f"{name}_pad")(x)
            padding = "valid"
        else:
            padding = "same"
        x = keras.layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, use_bias=False, kernel_initializer="he_normal", name=name
        )(x)
        gamma_init = keras.initializers.Constant(gamma)
        x = self.layers["BatchNorm"](gamma_initializer=gamma_init, name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def bottleneck(self, x: Any, depth: int, mid: int, stride: int, name: str) -> Any:
        """slim resnet_v1 bottleneck: 1x1 -> 3x3 (stride) -> 1x1, projection shortcut when the depth changes."""
        keras = self.keras
        if x.shape[-1] == depth:
            shortcut = x if stride == 1 else keras.layers.MaxPooling2D(1, stride, name=f"{name}_subsample")(x)
        else:
            shortcut = self.conv_bn(x, depth, 1, f"{name}_shortcut", stride=stride, relu=False)
        y = self.conv_bn(x, mid, 1, f"{name}_conv1")
        y = self.conv_bn(y, mid, 3, f"{name}_conv2", stride=stride)
        y = self.conv_bn(y, depth, 1, f"{name}_conv3", relu=False, gamma=RESIDUAL_GAMMA)
        y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
        return keras.layers.ReLU(name=f"{name}_out")(y)

    def resnet(self, x: Any, cfg: Mapping[str, Any]) -> list[Any]:
        """The backbone: (res2, res3, res4, res5) feature maps at strides 4, 8, 16, 32."""
        keras = self.keras
        x = self.conv_bn(x, cfg["stem"], 7, "conv1", stride=2)
        # tf-cpn pads by one and pools VALID; after the ReLU a zero pad equals a -inf pad.
        x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = keras.layers.MaxPooling2D(3, 2, padding="valid", name="pool1")(x)
        features = []
        for stage, (units, mid) in enumerate(zip(cfg["blocks"], cfg["widths"], strict=True)):
            for unit in range(units):
                stride = 2 if stage > 0 and unit == 0 else 1
                x = self.bottleneck(x, mid * 4, mid, stride, f"res{stage + 2}_unit{unit + 1}")
            features.append(x)
        return features

    def global_net(self, features: list[Any], cfg: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
        """GlobalNet: (pyramid features, per-level heatmaps at the output size), both res2 level first."""
        keras = self.keras
        size = heatmap_size(cfg)
        pyramid, heads = [], []
        last = None
        for level in reversed(range(len(features))):
            name = f"global_res{level + 2}"
            lateral = self.conv_bn(features[level], cfg["pyramid"], 1, f"{name}_lateral")
            if last is not None:
                up = self.layers["ResizeBilinear"](tuple(lateral.shape[1:3]), name=f"{name}_upsample")(last)
                up = keras.layers.Conv2D(cfg["pyramid"], 1, name=f"{name}_merge")(up)
                lateral = keras.layers.Add(name=f"{name}_add")([up, lateral])
            last = lateral
            head = self.conv_bn(last, cfg["pyramid"], 1, f"{name}_head")
            head = self.conv_bn(head, KEYPOINTS, 3, f"{name}_heatmap", relu=False)
            if tuple(head.shape[1:3]) != size:
                head = self.layers["ResizeBilinear"](size, name=f"{name}_heatmap_resize")(head)
            pyramid.insert(0, last)
            heads.insert(0, head)
        return pyramid, heads

    def refine_net(self, pyramid: list[Any], cfg: Mapping[str, Any]) -> Any:
        """RefineNet: level i through i bottlenecks, all upsampled and concatenated, bottleneck, 3x3 to heatmaps."""
        keras = self.keras
        size = heatmap_size(cfg)
        depth, mid = cfg["pyramid"], cfg["refine_mid"]
        branches = []
        for level, x in enumerate(pyramid):
            for j in range(level):
                x = self.bottleneck(x, depth, mid, 1, f"refine_res{level + 2}_conv{j}")
            # The res2 level is already at the output size; tf-cpn's resize to the same size is an identity.
            if tuple(x.shape[1:3]) != size:
                x = self.layers["ResizeBilinear"](size, name=f"refine_res{level + 2}_upsample")(x)
            branches.append(x)
        x = keras.layers.Concatenate(name="refine_concat")(branches)
        x = self.bottleneck(x, depth, mid, 1, "refine_final_bottleneck")
        return self.conv_bn(x, KEYPOINTS, 3, "refine_out", relu=False)


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A seeded Keras CPN: images (batch, 3, H, W) -> (heatmaps (batch, 17, H/4, W/4), global_heatmaps)."""
    import keras

    if cfg["height"] % 32 or cfg["width"] % 32:
        raise ValueError(f"CPN input {cfg['height']}x{cfg['width']}: both sides must be multiples of 32")
    keras.utils.set_random_seed(seed)
    builder = _Builder()
    images = keras.Input((3, cfg["height"], cfg["width"]), name="images")
    features = builder.resnet(to_nhwc(images, "to_nhwc"), cfg)
    pyramid, global_heads = builder.global_net(features, cfg)
    refined = builder.refine_net(pyramid, cfg)

    heatmaps = to_nchw(refined, "heatmaps")
    height, width = heatmap_size(cfg)
    levels = [
        keras.layers.Reshape((1, KEYPOINTS, height, width), name=f"global_res{i + 2}_level")(
            to_nchw(head, f"global_res{i + 2}_nchw")
        )
        for i, head in enumerate(global_heads)
    ]
    global_heatmaps = keras.layers.Concatenate(axis=1, name="global_heatmaps")(levels)
    model = keras.Model(images, [heatmaps, global_heatmaps], name="cpn")

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        return inputs(cfg)[0].sample(rng, n)

    return settle_batchnorm(model, sample, seed)


SPECS = [
    ModelSpec(
        name="cpn",
        category="detection",
        framework="tensorflow",
        task="pose",
        paper_model="CPN",
        paper_batch=8,
        summary="Cascaded Pyramid Network, ResNet-50 GlobalNet + RefineNet (tf-cpn), 384x288, 17 COCO keypoints",
        configs={
            "full": {
                "height": 384,
                "width": 288,
                "stem": 64,
                "blocks": (3, 4, 6, 3),
                "widths": (64, 128, 256, 512),
                "pyramid": 256,
                "refine_mid": 128,
            },
            "tiny": {
                "height": 96,
                "width": 64,
                "stem": 8,
                "blocks": (1, 1, 1, 1),
                "widths": (4, 8, 16, 32),
                "pyramid": 16,
                "refine_mid": 8,
            },
        },
        inputs=inputs,
        outputs=("heatmaps", "global_heatmaps"),
        build=build,
    )
]
