"""The engine interface every runtime implements (in the manner of Polygraphy's runners).

The base class owns the state checks and input validation; subclasses fill in the ``*_impl`` methods.
An engine never times itself: the shared timer calls ``run_prepared`` in a loop, and ``run_prepared``
returns only when the inference has finished (CUDA engines synchronise their stream).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.options import EngineOptions


class EngineError(RuntimeError):
    """An engine that cannot be used as asked (not installed, wrong state, bad feeds)."""


class Engine:
    """One runtime for ONNX artifacts.

    Class attributes: ``name`` (the registry name) and ``int8_flavour``, the flavour of the quantized artifacts
    it consumes (``cpu`` for U8S8 QDQ, ``tensorrt`` for symmetric QDQ). Which precisions an engine runs is the
    precision registry's to say (``common.precisions``): precision lives in the artifact.

    ``options`` (:class:`engines.options.EngineOptions`, or a mapping of its fields) come from the command
    line; the cell's input shapes come with :meth:`activate`.
    """

    name = "base"
    int8_flavour = "cpu"
    # Whether ``--provider-options`` mean anything to this engine (ort-cpu's settings are its thread count).
    takes_provider_options = True
    # Whether ``infer`` may be called from several threads at once (a LoadGen SUT with --concurrency above 1);
    # engines that reuse staged device buffers per call may not, and their calls are serialised.
    concurrent_infer = False
    # Whether a cell of this engine holds one CUDA GPU (a cluster gives each such cell a GPU of its own, through
    # CUDA_VISIBLE_DEVICES); host engines hold the whole node's CPU instead.
    uses_gpu = False

    def __init__(self, options: EngineOptions | Mapping[str, Any] | None = None):
        try:
            self.options = EngineOptions.of(options)
        except ValueError as exc:
            raise EngineError(f"{self.name}: {exc}") from None
        self.active = False
        self.input_shapes: dict[str, tuple[int, ...]] | None = None
        self._input_meta: dict[str, tuple[tuple, np.dtype]] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this engine can run here; otherwise why not, with the fix."""
        return None

    def activate(self, model_path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        """Load ``model_path`` and get ready to run feeds of ``input_shapes`` ({input name: shape}, the cell's),
        which engines that build for fixed shapes (TensorRT's optimisation profiles) build for; None leaves
        them to the model. Raises EngineError if already active."""
        if self.active:
            raise EngineError(f"{self.name}: already active")
        self.input_shapes = (
            {name: tuple(int(d) for d in shape) for name, shape in input_shapes.items()} if input_shapes else None
        )
        self._input_meta = self.activate_impl(Path(model_path))
        self.active = True

    def validate(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Check that ``feeds`` names every model input with a compatible shape and the exact dtype."""
        missing = sorted(set(self._input_meta) - set(feeds))
        extra = sorted(set(feeds) - set(self._input_meta))
        if missing or extra:
            raise EngineError(f"{self.name}: feeds missing {missing}, unexpected {extra}")
        for name, (shape, dtype) in self._input_meta.items():
            array = feeds[name]
            if array.dtype != dtype:
                raise EngineError(f"{self.name}: input {name} has dtype {array.dtype}, model wants {dtype}")
            fixed_mismatch = any(isinstance(d, int) and d != a for d, a in zip(shape, array.shape, strict=False))
            if len(array.shape) != len(shape) or fixed_mismatch:
                raise EngineError(f"{self.name}: input {name} has shape {array.shape}, model wants {shape}")

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on ``feeds`` and return every output as a host array, by name."""
        self._require_active()
        self.validate(feeds)
        return self.infer_impl(feeds)

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Stage ``feeds`` for repeated timed runs (on the device, for device engines)."""
        self._require_active()
        self.validate(feeds)
        self.prepare_impl(feeds)

    def run_prepared(self) -> None:
        """One synchronised inference on the staged feeds: the unit the timer measures."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The settings this engine actually ran with (threads, providers, ...), for the results row."""
        return {}

    def fp32_math(self) -> str:
        """How this engine runs FP32 convolutions and matrix products: ``FP32`` (IEEE single precision), or
        ``TF32`` where a GPU engine lets the hardware round their inputs to TensorFloat-32 (the default of
        cuBLAS, cuDNN and TensorRT on Ampere and newer GPUs; ``--no-tf32`` turns it off). Written into every
        row, so that a GPU's "fp32" row says which of the two it measured."""
        return "FP32"

    def cuda_device(self) -> int | None:
        """The CUDA device this engine runs on (its ordinal), for GPU memory and energy; None for host engines."""
        return None

    def timing_breakdown(self, iterations: int) -> dict[str, float]:
        """Extra row columns on where an inference's time goes on the engine's device (``h2d_ms``,
        ``compute_ms``, ``d2h_ms``: CUDA events, like trtexec's report), from a separate pass of at most
        ``iterations`` rounds made after timing, on the staged feeds. Empty by default. The latency columns
        still come from the shared timer alone."""
        return {}

    def deactivate(self) -> None:
        """Release the session or engine; safe to call twice."""
        if self.active:
            self.deactivate_impl()
        self.active = False

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def _require_active(self) -> None:
        if not self.active:
            raise EngineError(f"{self.name}: not active; call activate(model_path) first")

    # Subclass hooks.
    def activate_impl(self, model_path: Path) -> dict[str, tuple[tuple, np.dtype]]:
        """Load the model; return {input name: (shape with ints or symbols, numpy dtype)}."""
        raise NotImplementedError

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def prepare_impl(self, feeds: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError
