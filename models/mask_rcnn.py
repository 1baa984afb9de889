"""Mask R-CNN (He et al. 2017), torchvision's ResNet-50-FPN on COCO (81 classes), 800x1333; Table I batch 1.

``torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)``
supplies every layer; ``models._rcnn`` runs them at test time as one batched ONNX graph with torchvision's
settings: the image normalised and padded to a multiple of 32 (800x1344), RPN over the five FPN levels (15
anchors per location over the pyramid: areas 32^2..512^2 x ratios 0.5, 1, 2) keeping the best 1000 boxes
per level, NMS 0.7 per level, 1000 proposals; multi-level RoIAlign 7x7, two fc layers of 1024, 81 class
scores and per-class boxes; per class score > 0.05 and NMS 0.5, the best 100 detections; the mask head
(four 3x3 convs of 256 on 14x14 RoIAlign, a 2x deconvolution, per-class 28x28 logits).

Outputs are fixed-size: boxes, scores, labels padded to 100 rows, and masks (B, 100, 28, 28), the mask
probability of each detection's class inside its box. Unlike torchvision's ``forward``, the masks are not
pasted into full-size image planes (100 x 800 x 1333 floats per image): that is a resize-and-threshold
post-processing step outside the network, as in the TensorFlow Mask R-CNN implementations. The mask head
runs on all 100 rows, padding included, as the TensorFlow Mask R-CNN runs it on its fixed 100 detections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models import ModelSpec
from models._detection import align_detections
from models._rcnn import (
    INT8_OPTIONS,
    SCORE_THRESHOLD,
    detector_inputs,
    multiscale_roi_align,
    rescale_outputs,
    two_stage_detector,
)
from models._vision import settle_batchnorm
from models.ssd import damp_residual_branches

# Strides of the FPN levels P2..P5 that RoIAlign pools from (P6 only feeds the RPN).
FPN_SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def torchvision_model(cfg: Mapping[str, Any]) -> Any:
    """torchvision's ``MaskRCNN`` for ``cfg['backbone']`` (resnet50, resnet101, or the small ``tiny``)."""
    import torch
    from torchvision.models import resnet101
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.resnet import BasicBlock, ResNet

    classes = cfg["classes"]
    if cfg["backbone"] == "resnet50":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=classes)
    if cfg["backbone"] == "resnet101":
        # As maskrcnn_resnet50_fpn builds its backbone without pretrained weights: BatchNorm, all layers.
        backbone = _resnet_fpn_extractor(resnet101(norm_layer=torch.nn.BatchNorm2d), 5)
        return MaskRCNN(backbone, num_classes=classes)
    # tiny: one basic block per stage, a narrow FPN and narrow heads; the same pipeline and head structure.
    width = cfg["fpn"]
    resnet = ResNet(BasicBlock, [1, 1, 1, 1])
    layers = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    backbone = BackboneWithFPN(resnet, layers, [64, 128, 256, 512], width)
    return MaskRCNN(
        backbone,
        box_head=TwoMLPHead(width * 7 * 7, cfg["box_fc"]),
        box_predictor=FastRCNNPredictor(cfg["box_fc"], classes),
        mask_head=MaskRCNNHeads(width, (width, width), 1),
        mask_predictor=MaskRCNNPredictor(width, width, classes),
    )


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """The Mask R-CNN module: images (B, 3, H, W) in [0, 1] -> boxes, scores, labels, masks (seeded weights)."""
    import torch

    torch.manual_seed(seed)
    model = torchvision_model(cfg)
    # A random BatchNorm ResNet is chaotic where a trained one is not: INT8 noise grew to a cosine of 0.50
    # between the FP32 and INT8 layer4 features at full size (0.97 after layer2), and the INT8 box F1 against
    # FP32 was 0.22. Residual branches that start small (models.ssd's damping, shared with SSD and DSSD) keep
    # the random backbone in the stable regime a trained network is in: box F1 0.67, and the FP32 parity error
    # against PyTorch fell from 3.4e-4 to 5.4e-5 of the outputs' scale. Weight values only.
    damp_residual_branches(model.backbone.body)
    settle_batchnorm(model.backbone, cfg["settle_resolution"], seed)

    def box_pool(features, rois):
        return multiscale_roi_align(features[:4], rois, 7, FPN_SCALES)

    def mask_pool(features, rois):
        return multiscale_roi_align(features[:4], rois, 14, FPN_SCALES)

    heads = model.roi_heads
    detector = two_stage_detector(
        backbone=model.backbone, rpn=model.rpn, roi_heads=heads, cfg=cfg, box_pool=box_pool, mask_pool=mask_pool
    )
    # The RPN head and the box and mask predictors to a trained detector's output scales (see rescale_outputs);
    # the BatchNorm backbone is already at unit scale.
    rpn = model.rpn.head
    targets = {rpn.conv[0][0]: 1.0, rpn.cls_logits: 2.0, rpn.bbox_pred: 0.2}
    targets.update({heads.box_head.fc6: 1.0, heads.box_head.fc7: 1.0})
    targets.update({heads.box_predictor.cls_score: 3.0, heads.box_predictor.bbox_pred: 0.2})
    mask_layers = [m for m in heads.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]
    targets.update({m: 1.0 for m in mask_layers})
    targets.update({heads.mask_predictor.conv5_mask: 1.0, heads.mask_predictor.mask_fcn_logits: 2.0})
    rescale_outputs(detector, targets, cfg, seed)
    return detector


def _config(**changes: Any) -> dict[str, Any]:
    full = {
        "backbone": "resnet50",
        "height": 800,
        "width": 1333,
        "size_divisible": 32,
        "classes": 81,
        "pre_nms": 1000,
        "proposals": 1000,
        "rpn_nms": 0.7,
        "rpn_min_size": 1e-3,
        "box_nms": 0.5,
        "detections": 100,
        # BatchNorm statistics are estimated on smaller images: they do not depend on the image size.
        "settle_resolution": 224,
    }
    return {**full, **changes}


TINY = _config(
    backbone="tiny",
    height=128,
    width=192,
    fpn=32,
    box_fc=64,
    pre_nms=200,
    proposals=100,
    detections=20,
    settle_resolution=64,
)


def _spec(name: str, full: Mapping[str, Any], summary: str, variant_of: str | None = None) -> ModelSpec:
    return ModelSpec(
        name=name,
        category="detection",
        framework="pytorch",
        task="detection",
        paper_model="Mask RCNN" if variant_of is None else None,
        paper_batch=1,
        summary=summary,
        configs={"full": full, "tiny": TINY},
        inputs=detector_inputs,
        outputs=("boxes", "scores", "labels", "masks"),
        build=build,
        variant_of=variant_of,
        task_options={"score_threshold": SCORE_THRESHOLD},
        parity_align=align_detections,
        int8_options=INT8_OPTIONS,
        # The quantizer holds every activation of a calibration batch at once (Faster R-CNN at batch 4 passed
        # 15 GB); at 800x1344 this model's activations are larger still. The paper runs it at batch 1.
        calibration_batch=1,
    )


SPECS = [
    _spec("mask_rcnn", _config(), "Mask R-CNN, ResNet-50-FPN (torchvision), 800x1333, 81 COCO classes, masks"),
    _spec(
        "mask_rcnn_r101",
        _config(backbone="resnet101"),
        "variant: Mask R-CNN with a ResNet-101-FPN backbone",
        variant_of="mask_rcnn",
    ),
]
