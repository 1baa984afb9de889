"""SSD300 (Liu et al. 2016) on PASCAL VOC (21 classes) with its post-processing inside the graph; Table I batch 16.

The network is the paper's: VGG16 through conv5_3 (pool3 with ceil rounding, pool5 3x3 stride 1), fc6 and fc7
as convolutions (fc6 3x3 with dilation 6), L2 normalisation with a learned scale (20) on conv4_3, four extra
layer pairs (1x1 then 3x3), and 3x3 multibox heads on six maps (38, 19, 10, 5, 3, 1) with 4, 6, 6, 6, 4, 4
default boxes per location: 8732 boxes. Default boxes follow the VOC SSD300 prior-box layer (sizes 30 to 315
pixels, steps 8 to 300, aspect ratios 2 and 3 with their reciprocals).

Detection output runs in the graph as the Caffe DetectionOutput layer does: softmax over classes, box
decoding with variances 0.1 / 0.2 to x1, y1, x2, y2 in pixels clipped to the image, per-class score
threshold (0.01) and NMS (IoU 0.45), then the best ``top_k`` (200) detections of each image, padded with
score 0 (boxes and labels 0) to a fixed (batch, top_k) layout. NMS is ONNX NonMaxSuppression over the whole
batch and all classes at once, so the batch dimension stays dynamic.

The variants put the SSD extra layers and heads on ResNet-18/50/101 as NVIDIA's SSD300 v1.1 does: the trunk
through conv4_x (layer3) with its first block's stride set to 1, so conv4_x gives the 38x38 map, then five
extra layer pairs with BatchNorm down to 1x1; the same default boxes and post-processing. Their residual
branches are damped (RESIDUAL_SCALE) before BatchNorm is settled, and BatchNorm is folded into the
convolutions before export (``fold_batchnorm``).

Random weights make a poor detector: every class would score about 1/21 on every box, all 8732 x 20 pairs
would pass the 0.01 threshold and NMS would dominate the time, unlike a trained SSD where the background
class takes most boxes. ``settle_heads`` therefore scales the box heads to unit output spread (as trained box
regressions are, their targets being variance-normalised) and the class heads to LOGIT_SPREAD, and raises
the background logit until 1% of
(box, class) pairs pass the score threshold on seeded synthetic images, which gives about 90 candidates per
class per image before NMS and a full list of detections after it, as a trained SSD300 gives on VOC, with
scores from the threshold up to near 1.

Detections are sorted by score, and two whose scores differ by less than the PyTorch-to-ONNX Runtime float32
difference can trade places, so the parity check aligns rows first (``parity_align``, shared with the R-CNN
models); the post-processing itself matches PyTorch exactly on identical inputs, ties included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from models import ModelSpec
from models._detection import align_detections, nms_node
from models._vision import PIXEL_HIGH, PIXEL_LOW, image_inputs, settle_batchnorm

VARIANCES = (0.1, 0.2)
# Share of (default box, foreground class) pairs whose score passes the threshold on synthetic images.
CANDIDATE_FRACTION = 0.01
# Standard deviation given to the class logits. With unit spread the best of 8732 x 20 scores stays near
# 0.04 (a thin-tailed softmax); a trained detector's logits span about +-10 and its scores run from the
# threshold to near 1, which a spread of 3 reproduces.
LOGIT_SPREAD = 3.0
# Scale of each residual branch against its skip path in the ResNet trunks. With unit BatchNorm scales a
# random deep ResNet is chaotic: it amplifies any perturbation block by block. Measured undamped: PyTorch and
# ONNX Runtime float32 class logits of SSD-ResNet-50 differ by up to 5e-4 of their spread (5e-5 damped), and
# INT8 noise leaves DSSD's ResNet-101 conv4_x branch outputs at cosine 0.25 to FP32 after 23 blocks (0.95
# damped). Trained ResNets are not like that: the last BatchNorm scale of each block is small, and a damped
# branch gives the random network the same stable behaviour.
RESIDUAL_SCALE = 0.2
OUTPUTS = ("boxes", "scores", "labels")


def prior_boxes(
    feature_sizes: Sequence[int],
    image_size: int,
    box_sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    steps: Sequence[float] | None = None,
) -> Any:
    """Default boxes as a float32 tensor (boxes, 4) of centre x, centre y, width, height relative to the image.

    ``box_sizes`` has one more entry than there are maps: map k gets a square of side box_sizes[k], a square
    of side sqrt(box_sizes[k] * box_sizes[k+1]), then for each aspect ratio r a box of width s*sqrt(r) and
    height s/sqrt(r) and its transpose (s = box_sizes[k]), in the Caffe PriorBox order. Boxes run over
    locations row by row and the boxes of one location are adjacent, the layout the heads' outputs have
    after the NHWC reshape. ``steps`` are the maps' strides in pixels (image_size / map size when omitted).
    """
    import torch

    if len(box_sizes) != len(feature_sizes) + 1 or len(aspect_ratios) != len(feature_sizes):
        raise ValueError("need one aspect-ratio list per map and one more box size than maps")
    rows = []
    for k, size in enumerate(feature_sizes):
        step = (steps[k] if steps else image_size / size) / image_size
        small, big = box_sizes[k], math.sqrt(box_sizes[k] * box_sizes[k + 1])
        shapes = [(small, small), (big, big)]
        for ratio in aspect_ratios[k]:
            shapes += [
                (small * math.sqrt(ratio), small / math.sqrt(ratio)),
                (small / math.sqrt(ratio), small * math.sqrt(ratio)),
            ]
        for i in range(size):
            for j in range(size):
                cx, cy = (j + 0.5) * step, (i + 0.5) * step
                rows.extend((cx, cy, w, h) for w, h in shapes)
    return torch.tensor(rows, dtype=torch.float32)


def boxes_per_location(aspect_ratios: Sequence[Sequence[float]]) -> list[int]:
    """Default boxes at each location of each map: two squares plus two per aspect ratio."""
    return [2 + 2 * len(ratios) for ratios in aspect_ratios]


def greedy_nms(boxes: Any, scores: Any, iou_threshold: float, max_keep: int) -> Any:
    """Indices of the boxes (N, 4) that greedy NMS keeps, best first, as ONNX Runtime's NonMaxSuppression
    computes them: candidates in descending score with ties to the lower index, IoU in float32 with the same
    operations, a box dropped when its IoU with a kept box exceeds ``iou_threshold`` (boxes of zero area never
    suppress or get suppressed), at most ``max_keep`` kept. torchvision's nms sorts without a tie rule, so
    on tied scores (saturated softmax) it may keep another box than the exported graph does."""
    import torch

    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    x_min, x_max = torch.minimum(b[:, 0], b[:, 2]), torch.maximum(b[:, 0], b[:, 2])
    y_min, y_max = torch.minimum(b[:, 1], b[:, 3]), torch.maximum(b[:, 1], b[:, 3])
    inter_w = torch.minimum(x_max[:, None], x_max[None]) - torch.maximum(x_min[:, None], x_min[None])
    inter_h = torch.minimum(y_max[:, None], y_max[None]) - torch.maximum(y_min[:, None], y_min[None])
    inter = inter_w * inter_h
    area = (x_max - x_min) * (y_max - y_min)
    union = area[:, None] + area[None] - inter
    valid = (inter_w > 0) & (inter_h > 0) & (inter > 0) & (area[:, None] > 0) & (area[None] > 0) & (union > 0)
    overlaps = valid & (inter / torch.where(union > 0, union, torch.ones_like(union)) > iou_threshold)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    kept = []
    for i in range(len(order)):
        if len(kept) == max_keep:
            break
        if not suppressed[i]:
            kept.append(i)
            suppressed |= overlaps[i]
    return order[torch.tensor(kept, dtype=torch.int64)]


def _nms_function():
    import torch

    class BatchedClassNMS(torch.autograd.Function):
        """ONNX NonMaxSuppression over every image and class of a batch; eager PyTorch reproduces it.

        boxes (B, N, 4), scores (B, C, N) -> selected (M, 3) int64 rows of (image, class, box). Boxes with a
        score above ``score_threshold`` enter; a box is dropped when its IoU with a kept box of the same
        image and class exceeds ``iou_threshold``; at most ``max_per_class`` are kept per image and class.
        """

        @staticmethod
        def forward(ctx, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
            rows = [torch.zeros((0, 3), dtype=torch.int64)]
            for b in range(boxes.shape[0]):
                for c in range(scores.shape[1]):
                    candidates = torch.nonzero(scores[b, c] > score_threshold).flatten()
                    keep = greedy_nms(boxes[b, candidates], scores[b, c, candidates], iou_threshold, max_per_class)
                    kept = candidates[keep]
                    rows.append(torch.stack([torch.full_like(kept, b), torch.full_like(kept, c), kept], dim=1))
            return torch.cat(rows)

        @staticmethod
        def symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
            return nms_node(g, boxes, scores, max_per_class, iou_threshold, score_threshold)

    return BatchedClassNMS


def detection_output(priors: Any, image_size: int, score_threshold: float, iou_threshold: float, top_k: int) -> Any:
    """The post-processing module: (loc (B, N, 4), conf (B, N, classes)) -> boxes (B, top_k, 4) as x1, y1, x2, y2
    pixels clipped to the image, scores (B, top_k) and labels (B, top_k) int64 (class 0 is background and is
    never reported; unused slots have score 0, box 0 and label 0). ``priors`` come from ``prior_boxes``."""
    import torch

    nms = _nms_function()

    class DetectionOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("priors", priors)
            self.image_size = float(image_size)

        def forward(self, loc, conf):
            classes, count = conf.shape[-1] - 1, self.priors.shape[0]
            if top_k > classes * count:
                raise ValueError(f"top_k {top_k} exceeds the {classes * count} (class, box) pairs")
            scores = conf.softmax(-1)
            centre = self.priors[:, :2] + loc[..., :2] * VARIANCES[0] * self.priors[:, 2:]
            half = self.priors[:, 2:] * torch.exp(loc[..., 2:] * VARIANCES[1]) / 2
            # Clipped before NMS (as torchvision's SSD does), so the reported boxes are the ones NMS compared.
            boxes = (torch.cat([centre - half, centre + half], dim=-1) * self.image_size).clamp(0.0, self.image_size)
            foreground = scores[..., 1:].transpose(1, 2)  # (B, classes, N), NonMaxSuppression's layout
            selected = nms.apply(boxes, foreground, top_k, iou_threshold, score_threshold)
            # Scatter the kept scores into a zeroed (B, classes * N) map and take each image's best top_k:
            # one TopK for the whole batch, however many boxes each image kept.
            flat_index = (selected[:, 0] * classes + selected[:, 1]) * count + selected[:, 2]
            flat = foreground.reshape(-1)
            kept = torch.zeros_like(flat).scatter(0, flat_index, flat[flat_index])
            kept = kept.reshape(foreground.shape[0], -1)
            if torch.onnx.is_in_onnx_export():
                top_scores, top_index = kept.topk(top_k, dim=1)
            else:
                # ONNX TopK puts the lower index first among equal scores; torch.topk has no tie rule.
                top_scores, top_index = (t[:, :top_k] for t in kept.sort(dim=1, descending=True, stable=True))
            valid = top_scores > 0
            box_index = (top_index % count).unsqueeze(-1).expand(-1, -1, 4)
            top_boxes = boxes.gather(1, box_index) * valid.unsqueeze(-1).to(boxes.dtype)
            labels = torch.where(valid, top_index // count + 1, torch.zeros_like(top_index))
            return top_boxes, top_scores, labels

    return DetectionOutput()


def multibox_head(channels: Sequence[int], anchors: Sequence[int], classes: int) -> Any:
    """3x3 convolutions predicting box offsets and class logits on each map: (maps) -> (loc (B, N, 4),
    conf (B, N, classes)), boxes ordered map by map, location by location, anchor by anchor."""
    import torch
    from torch import nn

    class MultiboxHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.classes = classes
            self.anchors = list(anchors)
            self.loc = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(channels, anchors, strict=True))
            self.conf = nn.ModuleList(
                nn.Conv2d(c, a * classes, 3, padding=1) for c, a in zip(channels, anchors, strict=True)
            )
            for conv in (*self.loc, *self.conf):
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)

        def forward(self, features):
            def flat(x, width):
                return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, width)

            loc = torch.cat([flat(h(f), 4) for h, f in zip(self.loc, features, strict=True)], dim=1)
            conf = torch.cat([flat(h(f), self.classes) for h, f in zip(self.conf, features, strict=True)], dim=1)
            return loc, conf

    return MultiboxHead()


def synthetic_images(resolution: int, seed: int, batch: int = 8) -> Any:
    """A seeded batch of images in the ImageNet-normalised pixel range the inputs use."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 3, resolution, resolution), generator=generator) * (PIXEL_HIGH - PIXEL_LOW) + PIXEL_LOW


def settle_heads(net: Any, head: Any, resolution: int, seed: int, score_threshold: float) -> None:
    """Give a random multibox head a trained detector's output statistics, in place.

    ``net(images) -> (loc, conf)`` must run through ``head``. Each head convolution is scaled so that its
    outputs have a standard deviation of 1 (box offsets) or LOGIT_SPREAD (class logits) on seeded synthetic
    images; then one background-logit offset,
    added to every map's background bias, is found by bisection so that CANDIDATE_FRACTION of the
    (box, foreground class) scores exceed ``score_threshold``. Deterministic for a given seed.
    """
    import torch

    images = synthetic_images(resolution, seed + 2)
    captured: dict[Any, Any] = {}
    convs = [*head.loc, *head.conf]
    hooks = [c.register_forward_hook(lambda m, i, o: captured.__setitem__(m, o)) for c in convs]
    with torch.no_grad():
        net(images)
        for hook in hooks:
            hook.remove()
        for conv in convs:
            scale = (LOGIT_SPREAD if conv in head.conf else 1.0) / float(captured[conv].std())
            conv.weight.mul_(scale)
            conv.bias.mul_(scale)
        _, conf = net(images)
        low, high = 0.0, 40.0
        for _ in range(40):
            shift = (low + high) / 2
            shifted = conf.clone()
            shifted[..., 0] += shift
            passing = float((shifted.softmax(-1)[..., 1:] > score_threshold).float().mean())
            low, high = (shift, high) if passing > CANDIDATE_FRACTION else (low, shift)
        for conv, anchors in zip(head.conf, head.anchors, strict=True):
            conv.bias.view(anchors, head.classes)[:, 0] += high


def damp_residual_branches(model: Any, scale: float = RESIDUAL_SCALE) -> Any:
    """Set the last BatchNorm scale (gamma) of every residual branch to ``scale``, in place; returns ``model``.

    Covers torchvision's Bottleneck (bn3) and BasicBlock (bn2) and any block whose branch is an nn.Sequential
    called ``main`` (DSSD's extra layers and prediction modules). Call it before ``settle_batchnorm`` so that
    the statistics are estimated with the damped branches.
    """
    from torch import nn
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for module in model.modules():
        if isinstance(module, Bottleneck):
            last = module.bn3
        elif isinstance(module, BasicBlock):
            last = module.bn2
        elif isinstance(getattr(module, "main", None), nn.Sequential):
            last = [m for m in module.main if isinstance(m, nn.BatchNorm2d)][-1]
        else:
            continue
        nn.init.constant_(last.weight, scale)
    return model


def fold_batchnorm(model: Any) -> Any:
    """Fold every eval-mode BatchNorm2d into the convolution before it, in place; returns ``model``.

    Handles the two layouts these detectors use: a Conv2d followed by a BatchNorm2d in an nn.Sequential,
    and torchvision's residual blocks (``convN`` / ``bnN`` attributes). The exporter folds BatchNorm into
    the convolutions anyway; folding here too makes PyTorch compute with the very weights ONNX Runtime gets.
    Unfolded, a deep settled ResNet differs from its export by about 1e-4 of the logits' scale, and NMS and
    the top-k selection turn such differences into swapped detections, which the parity check rejects.
    Raises ValueError if a BatchNorm2d is left that neither layout covers.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for parent in list(model.modules()):
        if isinstance(parent, nn.Sequential):
            for i in range(len(parent) - 1):
                if isinstance(parent[i], nn.Conv2d) and isinstance(parent[i + 1], nn.BatchNorm2d):
                    parent[i], parent[i + 1] = fuse_conv_bn_eval(parent[i], parent[i + 1]), nn.Identity()
        for index in ("1", "2", "3"):
            conv, bn = getattr(parent, f"conv{index}", None), getattr(parent, f"bn{index}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, f"conv{index}", fuse_conv_bn_eval(conv, bn))
                setattr(parent, f"bn{index}", nn.Identity())
    left = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"BatchNorm layers not after a convolution: {left}")
    return model


def _vgg_trunk(cfg: Mapping[str, Any]) -> tuple[Any, Any, list[int]]:
    """VGG16 through conv4_3 (with L2Norm), then pool4 .. fc7; returns (to conv4_3, conv4_3 -> fc7, channels)."""
    import torch
    from torch import nn

    c1, c2, c3, c4, c5 = cfg["vgg_channels"]

    def convs(cin: int, cout: int, count: int) -> list[Any]:
        layers = []
        for i in range(count):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
        return layers

    to_conv4 = nn.Sequential(
        *convs(3, c1, 2),
        nn.MaxPool2d(2, 2),
        *convs(c1, c2, 2),
        nn.MaxPool2d(2, 2),
        *convs(c2, c3, 3),
        nn.MaxPool2d(2, 2, ceil_mode=True),  # 75 -> 38 at 300x300, as Caffe rounds
        *convs(c3, c4, 3),
    )
    fc = cfg["fc_channels"]
    to_fc7 = nn.Sequential(
        nn.MaxPool2d(2, 2),
        *convs(c4, c5, 3),
        nn.MaxPool2d(3, 1, padding=1),
        nn.Conv2d(c5, fc, 3, padding=6, dilation=6),
        nn.ReLU(inplace=True),
        nn.Conv2d(fc, fc, 1),
        nn.ReLU(inplace=True),
    )
    for module in (*to_conv4, *to_fc7):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)

    class L2Norm(nn.Module):
        """Channel-wise L2 normalisation with a learned per-channel scale (initialised to 20, as in SSD)."""

        def __init__(self, channels: int):
            super().__init__()
            self.weight = nn.Parameter(torch.full((channels,), 20.0))

        def forward(self, x):
            return x / x.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-10) * self.weight.view(1, -1, 1, 1)

    return nn.Sequential(to_conv4, L2Norm(c4)), to_fc7, [c4, fc]


def _resnet_trunk(cfg: Mapping[str, Any]) -> tuple[Any, None, list[int]]:
    """torchvision ResNet through layer3 (conv4_x) with layer3's stride removed (38x38 at 300x300)."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block = {"basic": BasicBlock, "bottleneck": Bottleneck}[cfg["block"]]
    resnet = ResNet(block, [*cfg["layers"], 1], width_per_group=cfg.get("width_per_group", 64))
    for module in resnet.layer3[0].modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
    trunk = nn.Sequential(
        resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2, resnet.layer3
    )
    return trunk, None, [256 * block.expansion]


def _extras(in_channels: int, layers: Sequence[Sequence[int]], batchnorm: bool) -> Any:
    """SSD extra layers: per entry (mid, out, stride, padding) a 1x1 conv to ``mid`` then a 3x3 conv to ``out``."""
    from torch import nn

    blocks = nn.ModuleList()
    for mid, out, stride, padding in layers:
        parts = [nn.Conv2d(in_channels, mid, 1, bias=not batchnorm)]
        parts += [nn.BatchNorm2d(mid)] if batchnorm else []
        parts += [nn.ReLU(inplace=True), nn.Conv2d(mid, out, 3, stride=stride, padding=padding, bias=not batchnorm)]
        parts += [nn.BatchNorm2d(out)] if batchnorm else []
        parts += [nn.ReLU(inplace=True)]
        for module in parts:
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        blocks.append(nn.Sequential(*parts))
        in_channels = out
    return blocks


def build_net(cfg: Mapping[str, Any]) -> Any:
    """The SSD network of ``cfg`` (VGG16 or ResNet trunk) before post-processing: images -> (loc (B, N, 4),
    conf (B, N, classes)); ``features(images)`` gives the maps the heads see, finest first."""
    from torch import nn

    first, second, channels = (_vgg_trunk if cfg["backbone"] == "vgg16" else _resnet_trunk)(cfg)
    extras = _extras(channels[-1], cfg["extras"], cfg["backbone"] != "vgg16")
    channels = channels + [layer[1] for layer in cfg["extras"]]
    head = multibox_head(channels, boxes_per_location(cfg["aspect_ratios"]), cfg["classes"])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second, self.extras, self.head = first, second, extras, head

        def features(self, x):
            maps = [self.first(x)]
            if self.second is not None:
                maps.append(self.second(maps[-1]))
            for layer in self.extras:
                maps.append(layer(maps[-1]))
            return maps

        def forward(self, x):
            return self.head(self.features(x))

    return Net()


def feature_sizes(cfg: Mapping[str, Any]) -> list[int]:
    """The sizes of the maps the heads see at the config's resolution, computed on the meta device."""
    import torch

    with torch.device("meta"):
        maps = build_net(cfg).eval().features(torch.zeros(1, 3, cfg["resolution"], cfg["resolution"]))
    sizes = [m.shape[-1] for m in maps]
    if len(sizes) != len(cfg["aspect_ratios"]) or min(sizes) < 1:
        raise ValueError(f"SSD config gives feature maps {sizes}, not one per aspect-ratio list")
    return sizes


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """The SSD of ``cfg`` with seeded weights and settled statistics, eval mode:
    images (B, 3, R, R) -> boxes (B, top_k, 4), scores (B, top_k), labels (B, top_k)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = build_net(cfg)
    sizes = feature_sizes(cfg)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        settle_batchnorm(damp_residual_branches(net), cfg["resolution"], seed)
    settle_heads(net.eval(), net.head, cfg["resolution"], seed, cfg["score_threshold"])
    fold_batchnorm(net)
    priors = prior_boxes(sizes, cfg["resolution"], cfg["box_sizes"], cfg["aspect_ratios"], cfg.get("steps"))
    post = detection_output(priors, cfg["resolution"], cfg["score_threshold"], cfg["nms_iou"], cfg["top_k"])
    return detector(net, post).eval()


def detector(net: Any, post: Any) -> Any:
    """One module from ``net`` (images -> (loc, conf)) and ``post`` (``detection_output``): images -> detections."""
    from torch import nn

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.post = net, post

        def forward(self, images):
            return self.post(*self.net(images))

    return Detector()


# The VOC SSD300 prior boxes (Caffe ssd_pascal.py): sizes 30, 60, 111, 162, 213, 264 (and 315 for the last
# map's second square) pixels out of 300, steps 8, 16, 32, 64, 100, 300.
_SSD300 = {
    "resolution": 300,
    "classes": 21,
    "box_sizes": (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05),
    "aspect_ratios": ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    "steps": (8, 16, 32, 64, 100, 300),
    "score_threshold": 0.01,
    "nms_iou": 0.45,
    "top_k": 200,
}
# Tiny: 128x128 (VGG; 96x96 for ResNet trunks), narrow, four maps, five classes. The two unpadded 3x3 extras
# of SSD300 need a 5x5 map to start from, which a small input does not give, so tiny stops one level earlier.
_TINY = {
    "resolution": 128,
    "classes": 5,
    "box_sizes": (0.1, 0.3, 0.5, 0.7, 0.9),
    "aspect_ratios": ((2,), (2, 3), (2, 3), (2,)),
    "score_threshold": 0.01,
    "nms_iou": 0.45,
    "top_k": 50,
}
_VGG_FULL = {
    **_SSD300,
    "backbone": "vgg16",
    "vgg_channels": (64, 128, 256, 512, 512),
    "fc_channels": 1024,
    "extras": ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)),
}
_VGG_TINY = {
    **_TINY,
    "backbone": "vgg16",
    "vgg_channels": (8, 16, 32, 64, 64),
    "fc_channels": 128,
    "extras": ((32, 64, 2, 1), (16, 32, 2, 1)),
}
# NVIDIA SSD300 v1.1 extras: 38 -> 19 -> 10 -> 5 -> 3 -> 1.
_RESNET_EXTRAS = ((256, 512, 2, 1), (256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))
_RESNET_TINY_EXTRAS = ((32, 64, 2, 1), (32, 64, 2, 1), (16, 32, 2, 1))


def _spec(name: str, summary: str, full: dict, tiny: dict, variant_of: str | None, paper_model: str | None):
    return ModelSpec(
        name=name,
        category="detection",
        framework="pytorch",
        task="detection",
        paper_model=paper_model,
        paper_batch=16,
        summary=summary,
        configs={"full": full, "tiny": tiny},
        inputs=image_inputs,
        outputs=OUTPUTS,
        build=build,
        parity_align=align_detections,
        variant_of=variant_of,
    )


def _resnet_configs(block: str, layers: tuple[int, int, int], tiny_layers: tuple[int, int, int]) -> tuple[dict, dict]:
    full = {**_SSD300, "backbone": "resnet", "block": block, "layers": layers, "extras": _RESNET_EXTRAS}
    # Tiny: 96x96 (maps 12, 6, 3, 2) and, for bottleneck blocks, a quarter of the inner width: the ResNet stem
    # and conv4_x at stride 8 make even one block per stage costly at 128x128.
    tiny = {
        **_TINY,
        "resolution": 96,
        "backbone": "resnet",
        "block": block,
        "layers": tiny_layers,
        "width_per_group": 64 if block == "basic" else 16,
        "extras": _RESNET_TINY_EXTRAS,
    }
    return full, tiny


SPECS = [
    _spec(
        "ssd",
        "SSD300, VGG16 trunk, 21 VOC classes, 8732 default boxes, NMS in the graph",
        _VGG_FULL,
        _VGG_TINY,
        None,
        "SSD",
    ),
    _spec(
        "ssd_resnet18",
        "variant: SSD300 on a ResNet-18 trunk (conv4_x at stride 8)",
        *_resnet_configs("basic", (2, 2, 2), (1, 1, 1)),
        "ssd",
        None,
    ),
    _spec(
        "ssd_resnet50",
        "variant: SSD300 on a ResNet-50 trunk (conv4_x at stride 8)",
        *_resnet_configs("bottleneck", (3, 4, 6), (1, 1, 1)),
        "ssd",
        None,
    ),
    _spec(
        "ssd_resnet101",
        "variant: SSD300 on a ResNet-101 trunk (conv4_x at stride 8)",
        *_resnet_configs("bottleneck", (3, 4, 23), (1, 1, 2)),
        "ssd",
        None,
    ),
]
