"""GoogLeNet / Inception v1 (Szegedy et al. 2015) from torchvision: 224x224, 1000 classes; Table I batch 32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models import ModelSpec
from models._vision import image_inputs, settle_batchnorm


def build(cfg: Mapping[str, Any], seed: int) -> Any:
    """torchvision's GoogLeNet without auxiliary heads or input transform, seeded weights, eval mode."""
    import torch
    from torchvision.models.googlenet import GoogLeNet

    torch.manual_seed(seed)
    model = GoogLeNet(num_classes=cfg["classes"], aux_logits=False, transform_input=False, init_weights=True)
    return settle_batchnorm(model, cfg["resolution"], seed)


SPECS = [
    ModelSpec(
        name="googlenet",
        category="classification",
        framework="pytorch",
        task="classification",
        paper_model="GoogLeNet",
        paper_batch=32,
        summary="GoogLeNet / Inception v1 (torchvision, BatchNorm variant), 224x224, 1000 classes",
        configs={
            "full": {"resolution": 224, "classes": 1000},
            # Same network: at 64x64 the last inception block sees 2x2 maps, which keeps every branch.
            "tiny": {"resolution": 64, "classes": 10},
        },
        inputs=image_inputs,
        outputs=("logits",),
        build=build,
    )
]
