"""DSSD321 (Fu et al. 2017): SSD on ResNet-101 with a deconvolution (top-down) path; VOC, 21 classes; batch 2.

Bottom-up, as SSD321 in the authors' Caffe code (as public reimplementations describe it): ResNet-101 at
321x321 with the stem's max-pool unpadded (Caffe rounding) so that conv3_x is 40x40, conv5_x dilated instead
of strided (20x20, 2048 channels), then four residual extra layers (bottleneck blocks with a convolutional
shortcut) down to 10, 5, 3 and 1.

Top-down, the deconvolution module of the paper's Figure 3 at each scale from the 1x1 map back to 40x40:
the coarser map goes through a deconvolution, a 3x3 convolution and BatchNorm; the lateral map through
3x3 conv, BatchNorm, ReLU, 3x3 conv, BatchNorm (512 channels throughout); the two are multiplied
elementwise and passed through a ReLU. The deconvolution is 2x2 with stride 2 where the lateral map is
twice the size (5 -> 10 -> 20 -> 40) and 3x3 with stride 1 where it is two larger (1 -> 3 -> 5), as the
Caffe model does. Each of the six maps (the 1x1 SSD layer and the five module outputs) then goes through
the prediction module of Figure 2(c), a residual block (1x1 256, 1x1 256, 1x1 1024 with a 1x1 1024
projection shortcut), before 3x3 box and class predictors. Every location has eight default boxes
(aspect ratios 1.6, 2 and 3 as in the paper, with reciprocals, and two squares): 17,080 boxes.

Detection output (softmax, decoding, per-class NMS, top 200 padded) is SSD's, from ``models.ssd``, as are
the head settling (a random head is given a trained detector's score statistics), the damping of residual
branches before BatchNorm is settled, BatchNorm folding and the parity alignment: see that module.

Not in the paper and chosen here: the extra layers follow those reimplementations (residual blocks with a
kxk projection shortcut); the prediction module's convolutions carry BatchNorm and ReLU as ResNet blocks do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models import ModelSpec
from models._detection import align_detections
from models._vision import image_inputs, settle_batchnorm
from models.ssd import (
    OUTPUTS,
    boxes_per_location,
    damp_residual_branches,
    detection_output,
    detector,
    fold_batchnorm,
    multibox_head,
    prior_boxes,
    settle_heads,
)


def deconv_geometry(top_size: int, lateral_size: int) -> tuple[int, int]:
    """(kernel, stride) of the deconvolution taking a ``top_size`` map to ``lateral_size``: 2x2 stride 2 for a
    doubling, 3x3 stride 2 for 2n + 1 (n > 1), otherwise stride 1 with the kernel that covers the difference
    (DSSD321's 1 -> 3 -> 5)."""
    if lateral_size == 2 * top_size:
        return 2, 2
    if lateral_size == 2 * top_size + 1 and top_size > 1:
        return 3, 2
    if lateral_size > top_size:
        return lateral_size - top_size + 1, 1
    raise ValueError(f"a deconvolution cannot take a {top_size}x{top_size} map to {lateral_size}x{lateral_size}")


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, relu: bool = True) -> list[Any]:
    from torch import nn

    layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False), nn.BatchNorm2d(cout)]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


def deconvolution_module(lateral_channels: int, top_channels: int, channels: int, kernel: int, stride: int) -> Any:
    """The DSSD deconvolution module: (lateral map, coarser top-down map) -> fused map of ``channels``
    channels at the lateral map's size."""
    from torch import nn

    class DeconvolutionModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.lateral = nn.Sequential(
                *_conv_bn(lateral_channels, channels, 3, padding=1),
                *_conv_bn(channels, channels, 3, padding=1, relu=False),
            )
            self.top_down = nn.Sequential(
                nn.ConvTranspose2d(top_channels, channels, kernel, stride=stride, bias=False),
                *_conv_bn(channels, channels, 3, padding=1, relu=False),
            )
            self.relu = nn.ReLU(inplace=True)

        def forward(self, lateral, top):
            return self.relu(self.lateral(lateral) * self.top_down(top))

    return DeconvolutionModule()


def prediction_module(in_channels: int, mid: int, out: int) -> Any:
    """The DSSD prediction module (Figure 2(c)): a bottleneck residual block with a projection shortcut."""
    from torch import nn

    class PredictionModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Sequential(
                *_conv_bn(in_channels, mid, 1), *_conv_bn(mid, mid, 1), *_conv_bn(mid, out, 1, relu=False)
            )
            self.shortcut = nn.Sequential(*_conv_bn(in_channels, out, 1, relu=False))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.main(x) + self.shortcut(x))

    return PredictionModule()


def residual_extra(in_channels: int, out: int, kernel: int, stride: int, padding: int) -> Any:
    """An SSD321 extra layer: bottleneck block (1x1, kxk strided, 1x1) plus a kxk convolutional shortcut."""
    from torch import nn

    class ResidualExtra(nn.Module):
        def __init__(self):
            super().__init__()
            mid = out // 4
            self.main = nn.Sequential(
                *_conv_bn(in_channels, mid, 1),
                *_conv_bn(mid, mid, kernel, stride, padding),
                *_conv_bn(mid, out, 1, relu=False),
            )
            self.shortcut = nn.Sequential(*_conv_bn(in_channels, out, kernel, stride, padding, relu=False))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.main(x) + self.shortcut(x))

    return ResidualExtra()


def bottom_up(cfg: Mapping[str, Any]) -> Any:
    """ResNet-101 trunk (conv3_x and dilated conv5_x) plus the extra layers: images -> list of maps, finest first."""
    from torch import nn
    from torchvision.models.resnet import Bottleneck, ResNet

    resnet = ResNet(
        Bottleneck,
        list(cfg["layers"]),
        width_per_group=cfg.get("width_per_group", 64),
        replace_stride_with_dilation=[False, False, True],
    )
    resnet.maxpool.padding = 0

    class BottomUp(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv3 = nn.Sequential(
                resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2
            )
            self.conv5 = nn.Sequential(resnet.layer3, resnet.layer4)
            extras, channels = [], 2048
            for out, kernel, stride, padding in cfg["extras"]:
                extras.append(residual_extra(channels, out, kernel, stride, padding))
                channels = out
            self.extras = nn.ModuleList(extras)
            self.channels = [512, 2048, *(e[0] for e in cfg["extras"])]

        def forward(self, x):
            maps = [self.conv3(x)]
            maps.append(self.conv5(maps[-1]))
            for layer in self.extras:
                maps.append(layer(maps[-1]))
            return maps

    return BottomUp()


def feature_sizes(cfg: Mapping[str, Any]) -> list[int]:
    """The bottom-up map sizes at the config's resolution, computed on the meta device (no arithmetic)."""
    import torch

    with torch.device("meta"):
        trunk = bottom_up(cfg).eval()
        maps = trunk(torch.zeros(1, 3, cfg["resolution"], cfg["resolution"]))
    sizes = [m.shape[-1] for m in maps]
    if len(sizes) != len(cfg["aspect_ratios"]) or min(sizes) < 1:
        raise ValueError(f"DSSD config gives feature maps {sizes}, not one per aspect-ratio list")
    return sizes


def build_net(cfg: Mapping[str, Any]) -> Any:
    """The DSSD network before post-processing: images -> (loc (B, N, 4), conf (B, N, classes)); its
    ``pyramid(images)`` gives the six maps the predictors see, finest first."""
    from torch import nn

    up = bottom_up(cfg)
    sizes = feature_sizes(cfg)
    width = cfg["deconv_channels"]
    deconvs = nn.ModuleList()
    for level in range(len(sizes) - 1):
        top_channels = up.channels[-1] if level == len(sizes) - 2 else width
        kernel, stride = deconv_geometry(sizes[level + 1], sizes[level])
        deconvs.append(deconvolution_module(up.channels[level], top_channels, width, kernel, stride))
    mid, out = cfg["prediction_channels"]
    pyramid_channels = [width] * (len(sizes) - 1) + [up.channels[-1]]
    predictions = nn.ModuleList(prediction_module(c, mid, out) for c in pyramid_channels)
    head = multibox_head([out] * len(sizes), boxes_per_location(cfg["aspect_ratios"]), cfg["classes"])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bottom_up, self.deconvs, self.predictions, self.head = up, deconvs, predictions, head
            self.sizes = sizes

        def pyramid(self, images):
            maps = self.bottom_up(images)
            top_down = [maps[-1]]
            for level in range(len(maps) - 2, -1, -1):
                top_down.append(self.deconvs[level](maps[level], top_down[-1]))
            return top_down[::-1]

        def forward(self, images):
            return self.head([p(m) for p, m in zip(self.predictions, self.pyramid(images), strict=True)])

    return Net()


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """DSSD with seeded weights, settled BatchNorm and head statistics, eval mode:
    images (B, 3, R, R) -> boxes (B, top_k, 4), scores (B, top_k), labels (B, top_k)."""
    import torch

    torch.manual_seed(seed)
    net = build_net(cfg)
    settle_batchnorm(damp_residual_branches(net), cfg["resolution"], seed)
    settle_heads(net.eval(), net.head, cfg["resolution"], seed, cfg["score_threshold"])
    fold_batchnorm(net)
    priors = prior_boxes(net.sizes, cfg["resolution"], cfg["box_sizes"], cfg["aspect_ratios"])
    post = detection_output(priors, cfg["resolution"], cfg["score_threshold"], cfg["nms_iou"], cfg["top_k"])
    return detector(net, post).eval()


def _aspect_ratios(maps: int) -> tuple[Sequence[float], ...]:
    return ((1.6, 2.0, 3.0),) * maps


SPECS = [
    ModelSpec(
        name="dssd",
        category="detection",
        framework="pytorch",
        task="detection",
        paper_model="DSSD",
        paper_batch=2,
        summary="DSSD321: ResNet-101, deconvolution and prediction modules, 21 VOC classes, NMS in the graph",
        configs={
            "full": {
                "resolution": 321,
                "classes": 21,
                "layers": (3, 4, 23, 3),
                # (out channels, kernel, stride, padding): 20 -> 10 -> 5 -> 3 -> 1
                "extras": ((1024, 2, 2, 0), (1024, 2, 2, 0), (1024, 3, 1, 0), (1024, 3, 1, 0)),
                "deconv_channels": 512,
                "prediction_channels": (256, 1024),
                # 32 to 353 pixels out of 321, the authors' SSD321 prior sizes.
                "box_sizes": (0.1, 0.2, 0.38, 0.56, 0.74, 0.92, 1.1),
                "aspect_ratios": _aspect_ratios(6),
                "score_threshold": 0.01,
                "nms_iou": 0.45,
                "top_k": 200,
            },
            # 97x97 gives maps 12, 6, 3, 1: both deconvolution kinds (1 -> 3 stride 1, then doublings).
            "tiny": {
                "resolution": 97,
                "classes": 5,
                "layers": (1, 1, 1, 1),
                "width_per_group": 16,
                "extras": ((64, 2, 2, 0), (64, 3, 1, 0)),
                "deconv_channels": 32,
                "prediction_channels": (16, 64),
                "box_sizes": (0.1, 0.3, 0.5, 0.7, 0.9),
                "aspect_ratios": _aspect_ratios(4),
                "score_threshold": 0.01,
                "nms_iou": 0.45,
                "top_k": 50,
            },
        },
        inputs=image_inputs,
        outputs=OUTPUTS,
        build=build,
        parity_align=align_detections,
    )
]
