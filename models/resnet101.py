"""ResNet-101 (He et al. 2016) from torchvision: 224x224, 1000 classes. Not in Table I; batch 32 as ResNet-50."""

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
        name="resnet101",
        category="classification",
        framework="pytorch",
        task="classification",
        paper_model=None,
        paper_batch=32,
        summary="ResNet-101 v1.5 (torchvision), 224x224, 1000 classes",
        configs={
            "full": {"layers": (3, 4, 23, 3), "resolution": 224, "classes": 1000},
            # The third stage stays the deepest, as in the full network.
            "tiny": {"layers": (1, 1, 2, 1), "resolution": 64, "classes": 10},
        },
        inputs=image_inputs,
        outputs=("logits",),
        build=build,
    )
]
