"""The model catalogue: one file per model, one registration line per file.

Importing this package must stay cheap: model files declare their specs with plain data and keep every
framework import (torch, tensorflow) inside their ``build`` functions, so ``python suite.py list`` never
loads a framework.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SIZES = ("full", "tiny")
# "onnx" is a model brought as an ONNX file (models/byo.py): copied, not exported.
FRAMEWORKS = ("pytorch", "tensorflow", "onnx")
TASKS = ("classification", "ctr", "span_qa", "detection", "pose", "ctc_text", "translation", "generic")

# Adding a model: write models/<name>.py defining SPECS (a list of ModelSpec) and add its module name here.
# The order is Table I's, which `suite.py list` and the default job follow.
_MODULES = (
    "googlenet",
    "resnet50",
    "resnet101",
    "densenet121",
    "ssd",
    "dssd",
    "mask_rcnn",
    "faster_rcnn",
    "cpn",
    "seglink",
    "crnn",
    "din",
    "dien",
    "wide_deep",
    "gcn",
    "ncf",
    "nmt",
    "bert",
    # The trained track (models.trained), after the random-weight catalogue.
    "wide_deep_adult",
    "ncf_movielens",
    "resnet50_mnist",
    "crnn_words",
    "bert_reviews",
)


class UnknownModelError(ValueError):
    """A model name that is not in the catalogue."""


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``shape`` writes the batch dimension as the string ``"batch"``: first for every
    catalogue model, elsewhere for a brought-in model's recurrent state (``(2, "batch", 128)``), and nowhere for
    an input that does not grow with the batch (a 0-d sample rate, a shared table), which is fed the same array
    at every batch size and in every batch.

    Floats are drawn uniformly from [low, high); integers uniformly from [low, high), so for an id input
    ``high`` is the vocabulary size and every sample is a valid id. ``value``, when set, is the one value every
    element holds (a sample rate, a threshold) and nothing is drawn.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    low: float = 0.0
    high: float = 1.0
    value: float | None = None

    def __post_init__(self) -> None:
        if sum(d == "batch" for d in self.shape) > 1:
            raise ValueError(f"input {self.name}: at most one dimension may be the batch, got {self.shape}")
        if any(not isinstance(d, int) for d in self.shape if d != "batch"):
            raise ValueError(f"input {self.name}: only the batch dimension may be symbolic, got {self.shape}")
        if self.high <= self.low:
            raise ValueError(f"input {self.name}: empty value range [{self.low}, {self.high})")

    @property
    def batch_axis(self) -> int | None:
        """The axis that holds the batch, or None for an input fed whole to every batch."""
        return self.shape.index("batch") if "batch" in self.shape else None

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        """The shape with the batch dimension set to ``batch``."""
        return tuple(batch if d == "batch" else d for d in self.shape)

    def sample(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Draw one valid array for this input at batch size ``batch``.

        An input without a batch axis is drawn from its own generator, seeded by its name, and leaves ``rng``
        untouched: it holds the same array in every batch and at every batch size, and adding or removing such
        an input does not change what the other inputs are fed."""
        shape = self.concrete_shape(batch)
        if self.value is not None:
            return np.full(shape, self.value, dtype=self.dtype)
        if self.batch_axis is None:
            rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            return rng.integers(int(self.low), int(self.high), size=shape, dtype=self.dtype)
        return rng.uniform(self.low, self.high, size=shape).astype(self.dtype)

    def describe(self) -> str:
        """``name:dims:dtype:values``: dims with the batch written ``batch``, values the drawn range or the one
        fixed value (``=16000``)."""
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        if self.value is not None:
            kind = f"={self.value:g}"
        elif np.issubdtype(np.dtype(self.dtype), np.integer):
            kind = f"ids<{int(self.high)}" if self.low == 0 else f"ints[{int(self.low)},{int(self.high)})"
        else:
            kind = f"[{self.low:g},{self.high:g})"
        return f"{self.name}:{dims}:{self.dtype}:{kind}"


@dataclass(frozen=True)
class ModelSpec:
    """Everything the suite knows about one catalogue model.

    ``configs`` maps each size (``full``, ``tiny``) to the hyper-parameters ``build`` takes.
    ``inputs(cfg)`` gives the input specs for one size, ``build(cfg, seed)`` returns the framework model
    (a ``torch.nn.Module`` in eval mode, or a Keras model whose inputs carry the input names and whose
    outputs come in the order of ``outputs``). Artifacts are keyed by ``code_digest()``, the source of the
    code that builds and samples the model, so an edit rebuilds them; ``version`` is a brought-in model's file
    hash (catalogue models leave it at "1").
    """

    name: str
    category: str
    framework: str
    task: str
    paper_model: str | None
    paper_batch: int
    summary: str
    configs: Mapping[str, Mapping[str, Any]]
    inputs: Callable[[Mapping[str, Any]], list[InputSpec]]
    outputs: tuple[str, ...]
    build: Callable[[Mapping[str, Any], int], Any]
    version: str = "1"
    # Parity tolerance between the framework and ONNX Runtime FP32: max abs error relative to the output's
    # largest magnitude.
    parity_rtol: float = 1e-3
    # A variant (``bert_base`` of ``bert``) is listed and runnable but left out of the default job.
    variant_of: str | None = None
    # Inputs whose validity couples several arrays (history lengths and masks, graph edges) need their own
    # sampler: ``sampler(cfg, batch, rng) -> {name: array}``. Without one, each InputSpec samples itself.
    sampler: Callable[[Mapping[str, Any], int, np.random.Generator], dict[str, np.ndarray]] | None = None
    # Options for the task's accuracy metric (``analysis.accuracy.compare``), e.g. {"blank": 36} for CTC.
    task_options: Mapping[str, Any] = field(default_factory=dict)
    # Model-specific INT8 choices: {"exclude_op_types": [...], "exclude_nodes": [...]} keep those in float
    # on top of calibration.int8.KEEP_FLOAT (say why in the model file).
    int8_options: Mapping[str, Any] = field(default_factory=dict)
    # A smaller INT8 calibration batch than the default, for models whose calibration would not fit in memory:
    # the quantizer holds every intermediate tensor of a batch at once (about 4 GB per image for Faster R-CNN).
    calibration_batch: int | None = None
    # Outputs whose row order rests on near-equal scores (detections sorted by score) are compared with the
    # framework's after ``parity_align(framework_outputs, onnx_outputs)`` reorders the ONNX rows to match.
    parity_align: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    notes: str = ""
    # The trained track (models.trained.TrainedTrack): trained inside the suite on labelled data and scored
    # against labels. None for the random-weight catalogue.
    trained: Any = None

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"{self.name}: framework must be one of {FRAMEWORKS}")
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: task must be one of {TASKS}")
        missing = [s for s in SIZES if s not in self.configs]
        if missing:
            raise ValueError(f"{self.name}: no config for sizes {missing}")

    def code_digest(self) -> str:
        """A digest of the source that builds and samples this model: the modules of ``build``, ``inputs`` and
        ``sampler`` and every project module they import (the registry itself included, not followed). A
        brought-in model has no code: its ``version`` (the file's sha256) stands for it."""
        if self.framework == "onnx":
            return self.version
        from common.source_hash import source_digest

        track = self.trained
        functions = (
            self.build,
            self.inputs,
            self.sampler,
            *((track.prepare, track.train, track.score) if track else ()),
        )
        modules = sorted({f.__module__ for f in functions if f is not None})
        # The registry loads every model lazily; following it would make each model's key depend on all others.
        return source_digest(*modules, leaves=("models",), ignore=("onnx_models", "bench"))

    def config(self, size: str) -> Mapping[str, Any]:
        """The hyper-parameters for ``size``; a size that does not exist raises ValueError."""
        if size not in self.configs:
            raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
        return self.configs[size]

    def input_specs(self, size: str) -> list[InputSpec]:
        """The input specs at ``size``."""
        return self.inputs(self.config(size))

    def sample_batch(self, size: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One batch of valid inputs drawn from ``rng`` (the model's sampler, or each InputSpec's)."""
        if self.sampler is not None:
            return self.sampler(self.config(size), batch, rng)
        return {spec.name: spec.sample(rng, batch) for spec in self.input_specs(size)}

    def make_feeds(self, size: str, batch: int, seed: int) -> dict[str, np.ndarray]:
        """Seeded, valid inputs for one batch: the same (size, batch, seed) always gives the same arrays."""
        return self.sample_batch(size, batch, np.random.default_rng(seed))


def _load() -> dict[str, ModelSpec]:
    registry: dict[str, ModelSpec] = {}
    for module_name in _MODULES:
        module = importlib.import_module(f"models.{module_name}")
        for spec in module.SPECS:
            if spec.name in registry:
                raise ValueError(f"model {spec.name!r} registered twice")
            registry[spec.name] = spec
    return registry


_REGISTRY: dict[str, ModelSpec] | None = None


def all_models() -> dict[str, ModelSpec]:
    """Every catalogue model, by name, in catalogue order."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _load()
    return _REGISTRY


def default_models() -> list[str]:
    """The models the default job runs: every catalogue model that is neither a variant of another nor trained
    (the trained track trains for minutes; ``--models trained`` runs it)."""
    return [name for name, spec in all_models().items() if spec.variant_of is None and spec.trained is None]


def trained_models() -> list[str]:
    """The trained track's models (``--models trained``), in catalogue order."""
    return [name for name, spec in all_models().items() if spec.trained is not None]


def get_model(name: str) -> ModelSpec:
    """The catalogue spec called ``name``; an unknown name raises UnknownModelError listing the valid ones.
    Models brought in with ``--onnx`` (``byo/<stem>``) live in the store: ``onnx_models.model_spec`` finds
    both kinds."""
    models = all_models()
    if name not in models:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(models)}")
    return models[name]
