"""DenseNet-121 (Huang et al. 2017) from torchvision: 224x224, 1000 classes; Table I batch 32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models import ModelSpec
from models._vision import image_inputs, settle_batchnorm


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """A torchvision DenseNet with the config's growth rate and blocks, seeded weights, eval mode."""
    import torch
    from torchvision.models.densenet import DenseNet

    torch.manual_seed(seed)
    model = DenseNet(
        growth_rate=cfg["growth_rate"],
        block_config=tuple(cfg["blocks"]),
        num_init_features=cfg["init_features"],
        num_classes=cfg["classes"],
    )
    return settle_batchnorm(model, cfg["resolution"], seed)


SPECS = [
    ModelSpec(
        name="densenet121",
        category="classification",
        framework="pytorch",
        task="classification",
        paper_model="DenseNet121",
        paper_batch=32,
        summary="DenseNet-121 (torchvision), growth 32, 224x224, 1000 classes",
        configs={
            "full": {
                "growth_rate": 32,
                "blocks": (6, 12, 24, 16),
                "init_features": 64,
                "resolution": 224,
                "classes": 1000,
            },
            "tiny": {"growth_rate": 8, "blocks": (2, 2, 2, 2), "init_features": 16, "resolution": 64, "classes": 10},
        },
        inputs=image_inputs,
        outputs=("logits",),
        build=build,
    )
]
