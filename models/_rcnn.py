"""The test-time pipeline shared by the two-stage detectors (Faster R-CNN, Mask R-CNN), as one batched graph.

torchvision's ``GeneralizedRCNN`` handles a batch as a Python list of images and returns variable-length
detections, so its ONNX export is traced for one image and branches (``If``) around every NMS. The module
here runs the same torchvision layers (backbone, RPN head, anchors, box coders, RoI heads, mask head) through
the same test-time steps, written with fixed shapes and a batch dimension that stays dynamic:

1. normalise the image (ImageNet mean and std) and pad it to the backbone's stride, as torchvision does;
2. RPN: the top ``pre_nms`` anchors by objectness per level, decoded and clipped, small boxes dropped, NMS
   per image and level, the best ``proposals`` per image (rows past the survivors are zero boxes);
3. RoI pooling, box head, class scores and per-class box regression; per image and class: score threshold,
   NMS, then the best ``detections`` per image: boxes, scores and labels padded with zeros;
4. Mask R-CNN: the mask head on every padded detection (as the TensorFlow Mask R-CNN runs it on its fixed
   100 detections), returning the 28x28 mask probability of each detection's class inside its box.

Every NMS is one ONNX NonMaxSuppression whose batch dimension carries the groups (image x level, image x
class): per-class NMS needs no coordinate offsets, which float16 could not represent at 80 classes x 1333
pixels, and no data-dependent branch.

INT8 keeps every box coordinate in float: ONNX Runtime's QDQ quantizer quantizes the convolutions, fc layers
and pooling, and data-movement ops on tensors that are already 8-bit (a predictor's output); box decoding
(Sub, Mul, Exp, Clip), RoI pooling, TopK and NMS have no QDQ kernels. Pad is the exception (see
``INT8_OPTIONS``). tests/test_zoo_detection.py checks that every quantized data-movement op carries a
network activation, never box arithmetic.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from models import InputSpec
from models._detection import nms_node

# Raw pixel values in [0, 1]: the graph normalises them with the ImageNet mean and std, as torchvision's
# detection transform does.
PIXEL_LOW, PIXEL_HIGH = 0.0, 1.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Detections below this score are dropped by the graph (py-faster-rcnn's and torchvision's test threshold);
# the accuracy comparison counts detections from the same score up.
SCORE_THRESHOLD = 0.05
# The quantizer quantizes Pad whatever its input: the padding of the smallest FPN level's proposal boxes and
# scores up to ``pre_nms`` rows (Mask R-CNN's P6) came out 8-bit, boxes at 1333 / 255 = 5-pixel steps. Pad
# is otherwise only the image's padding, whose Conv quantizes its input anyway. Keeping the score and
# box-delta predictors in float as well made no difference (Mask R-CNN, full size: INT8 box F1 0.664 against
# 0.667 with them quantized), so they are quantized like the rest of the heads.
INT8_OPTIONS = {"exclude_op_types": ["Pad"]}


def detector_inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """One NCHW float image input named ``images`` of ``cfg['height']`` x ``cfg['width']`` raw pixels in [0, 1]."""
    return [InputSpec("images", ("batch", 3, cfg["height"], cfg["width"]), "float32", PIXEL_LOW, PIXEL_HIGH)]


@functools.cache
def _nms_class():
    """The autograd Function behind ``grouped_nms`` (defined lazily: torch is imported on first use)."""
    import torch
    from torchvision.ops import nms

    class GroupedNMS(torch.autograd.Function):
        """NMS within each group: boxes (G, N, 4), scores (G, N) -> selected (M, 3) rows (group, 0, index).

        The rows are ONNX NonMaxSuppression's output with the groups as its batch: boxes at or below
        ``score_threshold`` are dropped, at most ``max_per_group`` kept per group, best first.
        """

        @staticmethod
        def forward(ctx, boxes, scores, iou_threshold: float, score_threshold: float, max_per_group: int):
            rows = []
            for group in range(boxes.shape[0]):
                candidates = torch.nonzero(scores[group] > score_threshold).flatten()
                keep = nms(boxes[group, candidates], scores[group, candidates], iou_threshold)[:max_per_group]
                index = candidates[keep]
                rows.append(torch.stack([torch.full_like(index, group), torch.zeros_like(index), index], dim=1))
            return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.int64)

        @staticmethod
        def symbolic(g, boxes, scores, iou_threshold, score_threshold, max_per_group):
            scores = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1])))
            return nms_node(g, boxes, scores, max_per_group, iou_threshold, score_threshold)

    return GroupedNMS


def grouped_nms(boxes: Any, scores: Any, iou_threshold: float, score_threshold: float, max_per_group: int) -> Any:
    """NMS in each group of boxes (G, N, 4) with scores (G, N); returns a float mask (G, N), 1 where kept.

    Boxes scoring at or below ``score_threshold`` are never kept; at most ``max_per_group`` are kept per group.
    Exported as one ONNX NonMaxSuppression (the groups are its batch dimension) and a scatter into the mask.
    """
    import torch

    selected = _nms_class().apply(boxes, scores, iou_threshold, score_threshold, max_per_group)
    count = scores.shape[1]
    flat = selected[:, 0] * count + selected[:, 2]
    mask = torch.zeros_like(scores).flatten()
    mask = mask.scatter(0, flat, torch.ones_like(flat, dtype=scores.dtype))
    return mask.reshape(scores.shape)


def clip_boxes(boxes: Any, height: int, width: int) -> Any:
    """Boxes (..., 4) as x1, y1, x2, y2 clipped to an image of ``height`` x ``width``."""
    import torch

    xs = boxes[..., 0::2].clamp(0, width)
    ys = boxes[..., 1::2].clamp(0, height)
    return torch.stack([xs, ys], dim=-1).flatten(-2)


def small_boxes(boxes: Any, min_size: float) -> Any:
    """A bool mask of boxes (..., 4) narrower or lower than ``min_size`` (torchvision's remove_small_boxes)."""
    return ((boxes[..., 2] - boxes[..., 0]) < min_size) | ((boxes[..., 3] - boxes[..., 1]) < min_size)


def gather_rows(x: Any, index: Any) -> Any:
    """Rows of ``x`` (B, N, D) at ``index`` (B, K) -> (B, K, D)."""
    import torch

    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


def rois_of(boxes: Any) -> Any:
    """Per-image boxes (B, K, 4) -> RoIs (B * K, 5) as (image index, x1, y1, x2, y2) for RoI pooling."""
    import torch

    image = torch.arange(boxes.shape[0], dtype=boxes.dtype)[:, None, None].expand(-1, boxes.shape[1], 1)
    return torch.cat([image, boxes], dim=2).flatten(0, 1)


def multiscale_roi_align(
    features: list[Any], rois: Any, output_size: int, scales: list[float], sampling_ratio: int = 2
) -> Any:
    """torchvision's MultiScaleRoIAlign on RoIs (R, 5): each RoI pooled from its FPN level (Lin et al. eqn. 1)."""
    import math

    import torch
    from torchvision.ops import roi_align
    from torchvision.ops.poolers import LevelMapper

    k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
    levels = LevelMapper(k_min, k_max)([rois[:, 1:]])
    pooled = torch.zeros(
        (rois.shape[0], features[0].shape[1], output_size, output_size), dtype=rois.dtype, device=rois.device
    )
    for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
        index = torch.nonzero(levels == level).flatten()
        values = roi_align(feature, rois[index], output_size, scale, sampling_ratio, aligned=False)
        pooled = pooled.index_put((index,), values)
    return pooled


def two_stage_detector(
    *,
    backbone: Any,
    rpn: Any,
    roi_heads: Any,
    cfg: Mapping[str, Any],
    box_pool: Callable[[list[Any], Any], Any],
    mask_pool: Callable[[list[Any], Any], Any] | None = None,
) -> Any:
    """The batched detector module ``images (B, 3, H, W) in [0, 1] -> outputs`` from torchvision's parts.

    ``backbone`` returns one feature map or an ordered dict of them (FPN); ``rpn`` is a torchvision
    RegionProposalNetwork (its head, anchor generator and box coder are used), ``roi_heads`` a torchvision
    RoIHeads (box head, predictor, box coder; mask head and predictor when ``mask_pool`` is given).
    ``box_pool(features, rois)`` and ``mask_pool`` pool RoIs (R, 5). ``cfg`` gives height, width,
    size_divisible, pre_nms, proposals, rpn_nms, rpn_min_size, box_nms and detections.

    Outputs: boxes (B, K, 4) as x1, y1, x2, y2 in input pixels, scores (B, K), labels (B, K) int64, and with a
    mask head the class mask probabilities (B, K, 28, 28) in each box; rows past the detections are zeros.
    """
    import torch

    height, width = cfg["height"], cfg["width"]
    stride = cfg["size_divisible"]
    padded = (-(-height // stride) * stride, -(-width // stride) * stride)

    class Detector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.rpn = rpn
            self.roi_heads = roi_heads
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

        def forward(self, images: torch.Tensor):
            x = (images - self.mean) / self.std
            x = torch.nn.functional.pad(x, (0, padded[1] - width, 0, padded[0] - height))
            features = self.backbone(x)
            features = list(features.values()) if isinstance(features, Mapping) else [features]
            proposals = self.propose(x, features)
            boxes, scores, labels = self.detect(features, proposals)
            if mask_pool is None:
                return boxes, scores, labels
            return boxes, scores, labels, self.masks(features, boxes, labels)

        def propose(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
            """Proposals (B, P, 4); rows past the NMS survivors are zero boxes."""
            head = self.rpn.head
            objectness, deltas = head(features)
            generator = self.rpn.anchor_generator
            generator.set_cell_anchors(x.dtype, x.device)
            sizes = [[int(s) for s in f.shape[-2:]] for f in features]
            anchors = generator.grid_anchors(sizes, [[padded[0] // h, padded[1] // w] for h, w in sizes])
            level_boxes, level_scores = [], []
            top = cfg["pre_nms"]
            for logits, delta, anchor in zip(objectness, deltas, anchors, strict=True):
                # (B, A, H, W) -> (B, H * W * A), the anchors' order.
                logits = logits.permute(0, 2, 3, 1).flatten(1)
                delta = delta.reshape(delta.shape[0], -1, 4, *delta.shape[-2:]).permute(0, 3, 4, 1, 2).flatten(1, 3)
                k = min(top, anchor.shape[0])
                logits, index = logits.topk(k, dim=1)
                boxes = self.rpn.box_coder.decode_single(
                    gather_rows(delta, index).reshape(-1, 4), anchor[index].reshape(-1, 4)
                ).reshape(-1, k, 4)
                boxes = clip_boxes(boxes, height, width)
                # Sigmoid scores lie in [0, 1]: -1 marks boxes dropped as small (and the level padding below).
                scores = torch.where(small_boxes(boxes, cfg["rpn_min_size"]), -1.0, logits.sigmoid())
                level_boxes.append(torch.nn.functional.pad(boxes, (0, 0, 0, top - k)))
                level_scores.append(torch.nn.functional.pad(scores, (0, top - k), value=-1.0))
            boxes = torch.stack(level_boxes, dim=1)
            scores = torch.stack(level_scores, dim=1)
            keep = grouped_nms(boxes.flatten(0, 1), scores.flatten(0, 1), cfg["rpn_nms"], -0.5, cfg["proposals"])
            scores = torch.where(keep.reshape(scores.shape) > 0, scores, -1.0).flatten(1)
            scores, index = scores.topk(cfg["proposals"], dim=1)
            proposals = gather_rows(boxes.flatten(1, 2), index)
            return proposals * (scores > -0.5)[..., None].to(proposals.dtype)

        def detect(self, features: list[torch.Tensor], proposals: torch.Tensor):
            """Boxes (B, K, 4), scores (B, K) and labels (B, K) of the best K detections per image."""
            heads = self.roi_heads
            count = proposals.shape[1]
            pooled = box_pool(features, rois_of(proposals))
            class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
            classes = class_logits.shape[-1]
            boxes = heads.box_coder.decode_single(box_regression, proposals.reshape(-1, 4))
            boxes = clip_boxes(boxes.reshape(-1, count, classes, 4), height, width)[:, :, 1:]
            scores = torch.softmax(class_logits, -1).reshape(-1, count, classes)[:, :, 1:]
            scores = torch.where(small_boxes(boxes, 1e-2), 0.0, scores)
            # Groups are (image, class): boxes (B * (C - 1), P, 4), scores (B * (C - 1), P).
            boxes = boxes.permute(0, 2, 1, 3)
            scores = scores.permute(0, 2, 1)
            keep = grouped_nms(
                boxes.flatten(0, 1), scores.flatten(0, 1), cfg["box_nms"], SCORE_THRESHOLD, cfg["detections"]
            )
            scores = (scores * keep.reshape(scores.shape)).flatten(1)
            scores, index = scores.topk(cfg["detections"], dim=1)
            found = scores > 0
            boxes = gather_rows(boxes.flatten(1, 2), index) * found[..., None].to(scores.dtype)
            labels = torch.where(found, torch.div(index, count, rounding_mode="floor") + 1, 0)
            return boxes, scores, labels

        def masks(self, features: list[torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            """The mask probability (B, K, M, M) of each detection's class."""
            heads = self.roi_heads
            logits = heads.mask_predictor(heads.mask_head(mask_pool(features, rois_of(boxes))))
            index = labels.flatten()[:, None, None, None].expand(-1, 1, *logits.shape[-2:])
            chosen = torch.gather(logits, 1, index).sigmoid()
            return chosen.reshape(boxes.shape[0], boxes.shape[1], *logits.shape[-2:])

    return Detector().eval()


def rescale_outputs(detector: Any, targets: Mapping[Any, float], cfg: Mapping[str, Any], seed: int) -> None:
    """Rescale each layer in ``targets`` (module -> std) so that its output has that std on a seeded image.

    Seeded random weights leave a detector's layers at arbitrary scales: objectness and class logits near
    zero give near-uniform scores (nothing passes the 0.05 threshold, or everything ties), and regression
    deltas near zero leave every box on its anchor. As in layer-sequential unit-variance initialisation, one
    forward pass of ``detector`` on a seeded ``cfg``-sized image rescales each layer (weight and bias
    together, so its output scales exactly) the first time it runs, in execution order, so later layers
    already see rescaled inputs. Deterministic for a given seed.
    """
    import torch

    def hook(module, args, output):
        std = float(output.float().std())
        scale = targets[module] / std if std > 0 else 1.0
        module.weight.data.mul_(scale)
        if module.bias is not None:
            module.bias.data.mul_(scale)
        handles.pop(module).remove()
        return output * scale

    handles = {module: module.register_forward_hook(hook) for module in targets}
    generator = torch.Generator().manual_seed(seed + 1)
    image = torch.rand((1, 3, cfg["height"], cfg["width"]), generator=generator)
    try:
        with torch.no_grad():
            detector(image)
    finally:
        for handle in handles.values():
            handle.remove()
    detector.eval()
