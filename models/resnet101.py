"""ResNet-101 (He et al. 2016) from torchvision: 224x224, 1000 classes. Not in Table I; batch 32 as ResNet-50."""

from __future__ import annotations

from models import ModelSpec
from models._vision import image_inputs

# Same torchvision ResNet code as ResNet-50, with 23 blocks in the third stage.
from models.resnet50 import build

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
