"""What the zoo tests share: one quick suite run of a model family at tiny size, and the import order that
keeps torchvision working in a pytest process that also imports TensorFlow."""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Sequence
from pathlib import Path

import suite
from onnx_models.artifacts import resolve

# The CPU INT8 artifact this machine builds: ``int8``, or ``int8-w7`` where its 8-bit dot products saturate.
CPU_INT8 = resolve("any", "tiny", "int8").name

# Batch 2, every precision on ort-cpu, timing cut to the minimum: the run proves each cell works, not speed.
QUICK = ["--size", "tiny", "--batch-sizes", "2", "--warmup-s", "0", "--duration-s", "0.1", "--min-iters", "2"]


def run_tiny(models: Sequence[str], out: Path) -> tuple[int, list[dict]]:
    """``suite.py run`` of ``models`` at tiny size into ``out``: (exit status, the rows of results.jsonl)."""
    status = suite.main(["run", "--models", ",".join(models), *QUICK, "--accuracy-samples", "4", "--out", str(out)])
    return status, [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def import_torch_first() -> None:
    """Import torch and torchvision (when installed) before TensorFlow.

    With TensorFlow imported first, building a torchvision model later in the same process segfaults
    (tensorflow-cpu 2.21 with torch 2.14.1); the other order works. tests/conftest.py calls this once per test
    session, before any test, so no order of test files can hit it.
    """
    for name in ("torch", "torchvision"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
