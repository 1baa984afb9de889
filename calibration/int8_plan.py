"""INT8 plans: which nodes of a model's INT8 artifact stay in float, as found by the accuracy-driven search.

``suite.py explain MODEL --target-accuracy T`` (``diagnose.precision_search``) writes one plan file per search;
``suite.py run --int8-plan FILE`` (and ``calibrate``) builds that model's INT8 artifact with those nodes left
in float. The nodes are part of the artifact's name and build key (``onnx_models.artifacts``), so a planned
artifact is cached beside the fully quantized one and rebuilt only when its inputs change.

A plan is JSON: ``model``, ``size``, ``flavour`` (``cpu`` or ``tensorrt``) and ``float_nodes`` (node names of
the graph the quantizer sees) are what a build uses; the search's target, metric, accuracies and speed-up are
kept beside them as the record of why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.int8_recipe import FLAVOURS

KIND = "aimatrix-int8-plan"


class PlanError(ValueError):
    """A plan file that cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class Int8Plan:
    """The nodes that ``model``'s INT8 artifact of ``flavour`` at ``size`` keeps in float, and why (``record``)."""

    model: str
    size: str
    flavour: str
    float_nodes: tuple[str, ...]
    record: dict[str, Any] = field(default_factory=dict)

    def entry(self) -> tuple[str, str, str, tuple[str, ...]]:
        """The plan as a ``CalibrationSettings.float_nodes`` entry."""
        return (self.model, self.size, self.flavour, tuple(self.float_nodes))

    def as_json(self) -> dict[str, Any]:
        """The plan file's content."""
        return {
            "kind": KIND,
            "model": self.model,
            "size": self.size,
            "flavour": self.flavour,
            "float_nodes": list(self.float_nodes),
            **self.record,
        }


def write_plan(plan: Int8Plan, path: Path) -> Path:
    """Write ``plan`` to ``path`` (atomically: a unique temporary name, then replaced); returns ``path``."""
    from common.paths import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plan.as_json(), indent=1) + "\n")
    return path


def read_plan(path: Path) -> Int8Plan:
    """The plan in ``path``; PlanError (one line: the file, what is wrong, the fix) for a file that is missing,
    is not JSON, or lacks a field."""
    fix = "give a plan written by `suite.py explain MODEL --target-accuracy T`"
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PlanError(f"--int8-plan {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"--int8-plan {path} cannot be read as JSON ({exc}); {fix}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise PlanError(f'--int8-plan {path} is not an INT8 plan (no "kind": "{KIND}"); {fix}')
    for name in ("model", "size", "flavour"):
        if not isinstance(data.get(name), str):
            raise PlanError(f"--int8-plan {path} lacks {name!r}; {fix}")
    nodes = data.get("float_nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise PlanError(f"--int8-plan {path}: 'float_nodes' must be a list of node names; {fix}")
    if data["flavour"] not in FLAVOURS:
        raise PlanError(f"--int8-plan {path}: unknown INT8 flavour {data['flavour']!r}; valid: {', '.join(FLAVOURS)}")
    record = {k: v for k, v in data.items() if k not in ("kind", "model", "size", "flavour", "float_nodes")}
    return Int8Plan(data["model"], data["size"], data["flavour"], tuple(nodes), record)
