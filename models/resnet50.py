"""ResNet-50 (He et al. 2016) from torchvision: 224x224, 1000 classes; Table I batch 32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models import ModelSpec
from models._vision import image_inputs, settle_batchnorm


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A torchvision ResNet with bottleneck blocks ``cfg['layers']``, seeded weights, eval mode."""
    import torch
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(seed)
    model = ResNet(Bottleneck, list(cfg["layers"]), num_classes=cfg["classes"])
    return settle_batchnorm(model, cfg["resolution"], seed)


SPECS = [
    ModelSpec(
        name="resnet50",
        category="classification",
        framework="pytorch",
        task="classification",
        paper_model="ResNet50",
        paper_batch=32,
        summary="ResNet-50 v1.5 (torchvision), 224x224, 1000 classes",
        configs={
            "full": {"layers": (3, 4, 6, 3), "resolution": 224, "classes": 1000},
            "tiny": {"layers": (1, 1, 1, 1), "resolution": 64, "classes": 10},
        },
        inputs=image_inputs,
        outputs=("logits",),
        build=build,
    )
]
