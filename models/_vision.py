"""Helpers shared by the PyTorch image models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models import InputSpec

# ImageNet-normalised pixels: (0 - 0.485) / 0.229 to (1 - 0.406) / 0.225, the range torchvision models see.
PIXEL_LOW, PIXEL_HIGH = -2.1, 2.6


def image_inputs(cfg: Mapping[str, Any]) -> list[InputSpec]:
    """One NCHW float image input named ``images`` at the config's resolution."""
    return [InputSpec("images", ("batch", 3, cfg["resolution"], cfg["resolution"]), "float32", PIXEL_LOW, PIXEL_HIGH)]


def settle_batchnorm(model: Any, resolution: int, seed: int, batches: int = 4, batch_size: int = 8) -> Any:
    """Re-estimate BatchNorm running statistics on seeded synthetic images and return the model in eval mode.

    A freshly initialised network has running mean 0 and variance 1 in every BatchNorm, so activations grow
    layer by layer and the logits are meaningless for accuracy comparisons. A few forward passes in train
    mode with cumulative averaging give statistics that keep activations near unit scale, as in a trained
    network. Deterministic for a given seed.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            x = torch.rand((batch_size, 3, resolution, resolution), generator=generator)
            model((x * (PIXEL_HIGH - PIXEL_LOW)) + PIXEL_LOW)
    return model.eval()
