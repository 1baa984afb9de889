"""PyTorch -> ONNX with torch.onnx.export (TorchScript route: deterministic bytes for a given seed)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import first_line
from exporters import ExportError, FrameworkExport
from models import ModelSpec


def load_checkpoint(model: torch.nn.Module, weights: Path) -> None:
    """Load a user's state_dict (or a full checkpoint holding ``state_dict``) into ``model``, strictly."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ExportError(f"cannot read checkpoint {weights}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = first_line(exc)
        raise ExportError(f"checkpoint {weights} does not fit this model: {first}") from exc


def to_onnx(
    spec: ModelSpec,
    cfg: Mapping[str, Any],
    out_path: Path,
    *,
    seed: int,
    weights: Path | None,
    opset: int,
    feeds: dict[str, np.ndarray],
) -> FrameworkExport:
    """Build the model, export it with a dynamic batch dimension, return torch's outputs on ``feeds``."""
    torch.manual_seed(seed)
    model = spec.build(cfg, seed)
    if weights is not None:
        load_checkpoint(model, weights)
    model.eval()
    input_names = [s.name for s in spec.inputs(cfg)]
    args = tuple(torch.from_numpy(feeds[name]) for name in input_names)
    dynamic = {name: {0: "batch"} for name in (*input_names, *spec.outputs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(out_path),
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=list(spec.outputs),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    with torch.no_grad():
        result = model(*args)
    if isinstance(result, torch.Tensor):
        result = (result,)
    outputs = {name: t.detach().numpy() for name, t in zip(spec.outputs, result, strict=False)}
    return FrameworkExport(f"torch {torch.__version__}", outputs)
