"""The precision registry: every precision the suite runs, in the order tables, charts, plans and the command
line list them, with what each means elsewhere: how its artifact is made, which engines run it, the element
type its roof GEMM computes in, and the one colour and marker shape every chart draws it with.

Every list of precisions, every per-precision colour and every per-precision branch reads this registry.
Adding a precision is one entry here and one builder module (``builder``: a module with ``key(job)`` and
``build(job, out)``, see ``calibration.fp16``), with its tests.

Data only: the command line, the plan and the reports read it without importing a converter or ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class UnknownPrecisionError(ValueError):
    """A precision name that is not in the registry."""


@dataclass(frozen=True)
class Precision:
    """One precision.

    ``name`` is what rows, options, charts and artifact names say (``int8``); ``colour`` and ``marker``
    (``circle``, ``square``, ``triangle``, ``diamond``) are how every chart draws it.
    ``element`` is the numpy type its arithmetic runs in: its roof is a GEMM in that type, counted in OP/s for
    integer types and FLOP/s for float ones. ``builder`` names the module that makes its artifact from the FP32
    export (None for the FP32 export itself). A ``quantized`` precision's artifact is a calibrated Q/DQ graph in
    the flavour the engine consumes (``Engine.int8_flavour``: ``cpu`` or ``tensorrt``) and with the weight range
    ``--int8-weights`` resolves on this machine; the others are one artifact for every engine. ``engines`` names
    the engines that run it (fixed names, or a pattern's prefix such as ``ort:``); None: every engine.
    ``text`` says in a few words what its artifact holds, for the report's list of the precisions it shows.
    """

    name: str
    colour: str
    marker: str
    element: str
    builder: str | None
    quantized: bool = False
    engines: tuple[str, ...] | None = None
    text: str = ""

    @property
    def unit(self) -> str:
        """What its compute roof counts: ``OP/s`` for integer arithmetic, ``FLOP/s`` for floating point."""
        return "OP/s" if np.issubdtype(np.dtype(self.element), np.integer) else "FLOP/s"

    @property
    def reduced(self) -> bool:
        """Whether its arithmetic runs in another element type than the reference's: the precisions whose rows
        say how much of the model's multiply-accumulate work runs in ``element`` (``analysis.quant_coverage``)."""
        return self.element != _BY_NAME[BASE].element

    def runs_on(self, engine: str) -> bool:
        """Whether engine ``engine`` (a registry name or a pattern name such as ``ort:XProvider``) runs it."""
        return self.engines is None or any(
            engine == e or (e.endswith(":") and engine.startswith(e)) for e in self.engines
        )


# The reference precision: every other precision's artifact is made from its artifact, its speed-up is over it
# and its accuracy is judged against its outputs.
BASE = "fp32"

REGISTRY: tuple[Precision, ...] = (
    Precision("fp32", "#1f77b4", "circle", "float32", builder=None, text="the FP32 export"),
    Precision(
        "fp16",
        "#2ca02c",
        "square",
        "float16",
        builder="calibration.fp16",
        text="FP16 weights and compute, FP32 inputs and outputs",
    ),
    Precision(
        "int8",
        "#ff7f0e",
        "triangle",
        "int8",
        builder="calibration.int8",
        quantized=True,
        text="calibrated INT8 Q/DQ graph; every layer that is not quantized runs in FP32",
    ),
    # INT8 where the INT8 artifact has Q/DQ pairs, every other float layer in FP16 (FP32 inputs and outputs, like
    # the FP16 artifact): what `trtexec --int8 --fp16` runs, written into the graph for strongly typed TensorRT.
    # Made from the tensorrt INT8 flavour only; ONNX Runtime's CPU provider has no float16 Conv.
    Precision(
        "int8fp16",
        "#d62728",
        "diamond",
        "int8",
        builder="calibration.int8_fp16",
        quantized=True,
        engines=("tensorrt", "ort-trt", "ort-cuda", "ort:TensorrtExecutionProvider"),
        text="the INT8 Q/DQ graph with FP16 scales and every layer that is not quantized in FP16, FP32 inputs and "
        "outputs (what trtexec --int8 --fp16 runs); GPU engines only",
    ),
)

NAMES: tuple[str, ...] = tuple(p.name for p in REGISTRY)
_BY_NAME = {p.name: p for p in REGISTRY}


def get(name: str) -> Precision:
    """The precision called ``name``; UnknownPrecisionError listing the valid ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownPrecisionError(f"unknown precision {name!r}; valid precisions: {', '.join(NAMES)}") from None


def run_by(engines) -> tuple[str, ...]:
    """Every precision that at least one of ``engines`` runs, in registry order: a run's default precisions, so
    that a run on engines that cannot run a precision plans no cell of it (the default ``ort-cpu`` job makes
    the rows it always made, none ``unsupported``)."""
    return tuple(p.name for p in REGISTRY if any(p.runs_on(e) for e in engines))


def lower() -> tuple[str, ...]:
    """Every precision but the reference, in registry order: the ones judged against FP32."""
    return tuple(n for n in NAMES if n != BASE)


def order(name: str) -> int:
    """``name``'s place in the registry (for sorting); names not in it sort after every registered one."""
    return NAMES.index(name) if name in _BY_NAME else len(NAMES)


def colour(name: str) -> str:
    """The colour every chart draws precision ``name`` in (grey for a name not in the registry)."""
    return _BY_NAME[name].colour if name in _BY_NAME else "#7f7f7f"


def marker(name: str) -> str:
    """The marker shape every chart draws precision ``name`` with (a circle for a name not in the registry)."""
    return _BY_NAME[name].marker if name in _BY_NAME else "circle"
