"""Faster R-CNN (Ren et al. 2015) with a VGG16 backbone on PASCAL VOC, as py-faster-rcnn; Table I batch 1.

torchvision's detection layers with py-faster-rcnn's test-time settings, run by the batched pipeline of
``models._rcnn`` (proposals, RoI pooling and both NMS stages are in the ONNX graph, with a dynamic batch):

- VGG16 conv1_1..conv5_3 (stride 16, Caffe's ceil-mode pooling), the 600x1000 image fed as it is;
- RPN: 3x3 conv 512, 9 anchors (areas 128^2, 256^2, 512^2 x ratios 0.5, 1, 2), the 6000 best boxes decoded
  and clipped, boxes under 16 pixels dropped, NMS 0.7, 300 proposals;
- RoI max pooling 7x7 (ONNX MaxRoiPool, as py-faster-rcnn), fc6 and fc7 of 4096, 21 class scores and
  per-class box regression (weights 10, 10, 5, 5 = py-faster-rcnn's normalisation stds 0.1, 0.1, 0.2, 0.2);
- per class: score > 0.05, NMS 0.3; the best 100 detections per image, padded to 100 rows.
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
    rescale_outputs,
    two_stage_detector,
)

# conv1_1 .. conv5_3 of VGG16 (torchvision's configuration "D" without the last pooling): stride 16.
VGG16_CONV5 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """The Faster R-CNN module: images (B, 3, H, W) in [0, 1] -> boxes, scores, labels (seeded weights)."""
    import torch
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
    from torchvision.models.vgg import make_layers
    from torchvision.ops import roi_pool

    torch.manual_seed(seed)
    backbone = make_layers(list(cfg["vgg"]), batch_norm=False)
    for module in backbone.modules():
        if isinstance(module, torch.nn.MaxPool2d):
            # Caffe rounds pooled sizes up: 600x1000 -> 38x63 at conv5_3, as in py-faster-rcnn.
            module.ceil_mode = True
    channels = cfg["vgg"][-1]
    anchors = AnchorGenerator(sizes=(cfg["anchor_sizes"],), aspect_ratios=((0.5, 1.0, 2.0),))
    # The training-only arguments (matchers, samplers) do not take part in inference.
    rpn = RegionProposalNetwork(anchors, RPNHead(channels, 9), 0.7, 0.3, 256, 0.5, {}, {}, 0.7)
    pool = cfg["roi_pool"]
    roi_heads = RoIHeads(
        None,
        TwoMLPHead(channels * pool * pool, cfg["fc"]),
        FastRCNNPredictor(cfg["fc"], cfg["classes"]),
        0.5,
        0.5,
        512,
        0.25,
        None,
        SCORE_THRESHOLD,
        cfg["box_nms"],
        cfg["detections"],
    )

    def box_pool(features, rois):
        return roi_pool(features[0], rois, pool, 1.0 / 16)

    detector = two_stage_detector(backbone=backbone, rpn=rpn, roi_heads=roi_heads, cfg=cfg, box_pool=box_pool)
    # Unit-scale trunk and fc layers; objectness and class logits spread enough that scores separate (the
    # class logit std sets how confident detections are); regression deltas of a trained detector's size.
    targets = {m: 1.0 for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)}
    head = rpn.head
    targets.update({head.conv[0][0]: 1.0, head.cls_logits: 2.0, head.bbox_pred: 0.2})
    box_head, predictor = roi_heads.box_head, roi_heads.box_predictor
    targets.update({box_head.fc6: 1.0, box_head.fc7: 1.0, predictor.cls_score: 3.0, predictor.bbox_pred: 0.2})
    rescale_outputs(detector, targets, cfg, seed)
    return detector


def _config(**changes: Any) -> dict[str, Any]:
    full = {
        "vgg": VGG16_CONV5,
        "height": 600,
        "width": 1000,
        "size_divisible": 1,
        "anchor_sizes": (128, 256, 512),
        "pre_nms": 6000,
        "proposals": 300,
        "rpn_nms": 0.7,
        # py-faster-rcnn's RPN drops proposals under 16 pixels at the test scale (torchvision: 1e-3).
        "rpn_min_size": 16.0,
        "roi_pool": 7,
        "fc": 4096,
        "classes": 21,
        "box_nms": 0.3,
        "detections": 100,
    }
    return {**full, **changes}


SPECS = [
    ModelSpec(
        name="faster_rcnn",
        category="detection",
        framework="pytorch",
        task="detection",
        paper_model="Faster R-CNN",
        paper_batch=1,
        summary="Faster R-CNN, VGG16 (py-faster-rcnn), 600x1000, 21 VOC classes; RPN, RoI pooling, NMS in graph",
        configs={
            "full": _config(),
            "tiny": _config(
                vgg=(8, "M", 16, "M", 32, "M", 32, "M", 64),
                height=128,
                width=192,
                anchor_sizes=(32, 64, 128),
                pre_nms=600,
                proposals=50,
                rpn_min_size=4.0,
                fc=128,
                detections=20,
            ),
        },
        inputs=detector_inputs,
        outputs=("boxes", "scores", "labels"),
        build=build,
        task_options={"score_threshold": SCORE_THRESHOLD},
        parity_align=align_detections,
        int8_options=INT8_OPTIONS,
        # Calibrating the full model at the default batch of 4 took over 15 GB (every VGG16 activation of four
        # 600x1000 images at once); the paper runs it at batch 1.
        calibration_batch=1,
    )
]
