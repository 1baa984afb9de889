"""What each artifact is, and its build-or-reuse.

``Artifact`` is an artifact's identity, worked out in one place (``resolve``): model, size and precision, and
for a quantized precision the flavour the engine consumes, the weight width this machine needs and the nodes
an INT8 plan keeps in float. Its ``name`` is the file's name in the store. The run's plan resolves every
artifact once; builds, cells and executors read them.

``ensure(artifact)`` computes the artifact's build key from everything it depends on, returns the stored file
when key and sha256 match, and otherwise builds it and records it in the manifest: the FP32 export
(``ensure_fp32``), or a lower precision through the builder module the precision registry names
(``common.precisions``), from the FP32 export. A brought-in file that is already reduced (FP16, INT8: its
manifest's ``file_precision``) is its own precision's artifact as brought, and its FP32 artifact is its upcast or
dequantized form (``_from_file``). Framework and quantizer imports happen only when something has to be built.
"""

from __future__ import annotations

import functools
import importlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from common import precisions
from common.hashing import cache_key, sha256_file
from common.packages import onnxruntime_version, package_version
from common.paths import atomic_path
from common.source_hash import source_digest
from models import ModelSpec
from onnx_models.store import ArtifactError, ModelStore

log = logging.getLogger(__name__)

CHECK_SEED = 99


def _version(*packages: str) -> str:
    return package_version(*packages) or "absent"


def exporter_digest(framework: str) -> str:
    """A digest of the exporter code for ``framework`` (``pytorch`` or ``tensorflow``): the dispatch and the
    framework's exporter module, with what they import of the suite."""
    return source_digest("exporters", f"exporters.{framework}", ignore=("onnx_models", "bench", "models"))


def fp32_key(spec: ModelSpec, size: str, settings: ExportSettings) -> str:
    """The build key of ``spec``'s FP32 export at ``size``: model and exporter source, config, seed,
    checkpoint, opset and the versions of the packages that write the file (ONNX Runtime only checks it)."""
    from exporters import OPSET

    return cache_key(
        model=spec.name,
        size=size,
        code=spec.code_digest(),
        exporter=exporter_digest(spec.framework),
        config=spec.config(size),
        seed=settings.seed,
        weights=sha256_file(settings.weights) if settings.weights else None,
        opset=OPSET,
        framework=_version("torch") if spec.framework == "pytorch" else _version("tensorflow-cpu", "tensorflow"),
        converter=_version("tf2onnx") if spec.framework == "tensorflow" else None,
        onnx=_version("onnx"),
    )


@dataclass(frozen=True)
class ExportSettings:
    """What an FP32 export depends on besides the model: the weight seed and an optional checkpoint."""

    seed: int = 0
    weights: Path | None = None


@dataclass(frozen=True)
class CalibrationSettings:
    """How INT8 is calibrated: method, number of samples, batch size of the calibration runs, data file."""

    method: str = "minmax"
    samples: int = 32
    batch: int = 4
    data: Path | None = None
    seed: int = 7
    # Weight range of the cpu INT8 flavour: auto (7-bit where this CPU's dot products saturate), 8bit, 7bit.
    int8_weights: str = "auto"
    # Mixed precision (an INT8 plan of ``diagnose.precision_search``): the nodes an INT8 artifact keeps in float,
    # as (model, size, flavour, (node, ...)) entries; a model without an entry is quantized as usual.
    float_nodes: tuple[tuple[str, str, str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        from calibration.int8_recipe import METHODS, WEIGHT_RANGES

        # Settings cross into child processes as their fields (lists there): back to tuples, sorted and unique.
        plans = tuple((m, s, f, tuple(sorted(set(nodes)))) for m, s, f, nodes in self.float_nodes)
        if len({entry[:3] for entry in plans}) != len(plans):
            raise ValueError("two INT8 plans name the same model, size and INT8 flavour; give one")
        object.__setattr__(self, "float_nodes", plans)

        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.int8_weights not in WEIGHT_RANGES:
            raise ValueError(f"unknown --int8-weights {self.int8_weights!r}; valid: {', '.join(WEIGHT_RANGES)}")
        if self.samples < 1 or self.batch < 1:
            raise ValueError("calibration samples and batch must be at least 1")

    def float_nodes_for(self, model: str, size: str, flavour: str) -> tuple[str, ...]:
        """The nodes ``model``'s INT8 artifact of ``flavour`` at ``size`` keeps in float (sorted; () for none)."""
        return next((nodes for m, s, f, nodes in self.float_nodes if (m, s, f) == (model, size, flavour)), ())


def float_nodes_suffix(float_nodes: tuple[str, ...] | list[str]) -> str:
    """The artifact-name suffix of a mixed-precision INT8 build: ``-mixed<count>-<digest>`` of its float nodes,
    so that each set of exclusions is its own artifact beside the fully quantized one; '' for none."""
    if not float_nodes:
        return ""
    return f"-mixed{len(float_nodes)}-{cache_key(nodes=sorted(float_nodes))[:8]}"


@dataclass(frozen=True)
class Artifact:
    """One artifact of the store, fully resolved (``resolve`` makes it): ``model``, ``size`` and ``precision``;
    for a quantized precision its ``flavour`` (``cpu``, ``tensorrt``), ``weight_bits`` (8, or 7 where the CPU's
    dot products saturate) and the ``float_nodes`` an INT8 plan keeps in float. Plain data: it crosses into
    child processes and Ray tasks as it is."""

    model: str
    size: str
    precision: str
    flavour: str = "cpu"
    weight_bits: int | None = None
    float_nodes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The artifact's name in the store (its file is ``<name>.onnx``): the precision (``fp32``, ``fp16``);
        for a quantized precision also ``-<flavour>`` unless it is ``cpu``, ``-w<bits>`` below 8 bits and
        :func:`float_nodes_suffix` (so ``int8``, ``int8-w7``, ``int8-tensorrt``, ``int8-mixed3-1a2b3c4d``)."""
        if not precisions.get(self.precision).quantized:
            return self.precision
        name = self.precision if self.flavour == "cpu" else f"{self.precision}-{self.flavour}"
        if self.weight_bits is not None and self.weight_bits != 8:
            name += f"-w{self.weight_bits}"
        return name + float_nodes_suffix(self.float_nodes)

    @property
    def source(self) -> Artifact:
        """The FP32 artifact this one is made from (itself for FP32)."""
        return Artifact(self.model, self.size, precisions.BASE)


def resolve(
    model: str, size: str, precision: str, flavour: str = "cpu", calib: CalibrationSettings | None = None
) -> Artifact:
    """The artifact of ``model`` at ``size`` and ``precision`` for an engine whose quantized flavour is
    ``flavour``: the one place an artifact's identity is worked out. For a quantized precision ``calib`` gives
    the weight range asked for (resolved for this machine, ``calibration.int8_recipe``) and the INT8 plans;
    other precisions are one artifact whatever the flavour. Raises UnknownPrecisionError for an unknown name."""
    if not precisions.get(precision).quantized:
        return Artifact(model, size, precision)
    from calibration.int8_recipe import weight_recipe

    calib = calib or CalibrationSettings()
    bits = weight_recipe(flavour, calib.int8_weights).bits
    return Artifact(model, size, precision, flavour, bits, calib.float_nodes_for(model, size, flavour))


def ensure_fp32(spec: ModelSpec, size: str, settings: ExportSettings = ExportSettings()) -> Path:
    """The FP32 ONNX of ``spec`` at ``size``, exported (with parity check) unless a valid one is stored."""
    if spec.framework == "onnx":
        return _copy_onnx(spec, size)
    if spec.trained is not None and settings.weights is None:
        from onnx_models.trained import ensure_checkpoint

        # The trained track's weights come from training inside the suite, cached like an artifact.
        settings = ExportSettings(seed=settings.seed, weights=ensure_checkpoint(spec, size, settings.seed))
    store = ModelStore(spec.name, size)
    weights_sha = sha256_file(settings.weights) if settings.weights else None
    key = fp32_key(spec, size, settings)
    if store.valid("fp32", key):
        return store.path("fp32")
    with store.building("fp32"):
        # Another process may have exported it while this one waited for the lock.
        if store.valid("fp32", key):
            return store.path("fp32")
        return _export(spec, size, settings, store, key, weights_sha)


def _export(
    spec: ModelSpec, size: str, settings: ExportSettings, store: ModelStore, key: str, weights_sha: str | None
) -> Path:
    """Export ``spec`` into ``store`` as its FP32 artifact (the build lock held) and record it under ``key``."""
    import exporters

    log.info("exporting %s (%s)", spec.name, size)
    report = exporters.export(spec, size, store.path("fp32"), seed=settings.seed, weights=settings.weights)
    trained = _trained_info(spec, size, store.path("fp32")) if spec.trained is not None else None
    store.record(
        "fp32",
        key,
        framework_version=report.framework_version,
        opset=report.opset,
        seed=settings.seed,
        weights=str(settings.weights) if settings.weights else "seeded random",
        weights_sha256=weights_sha,
        parity={
            "max_abs_error": report.parity_max_abs,
            "max_rel_error": report.parity_max_rel,
            "tolerance_rel": report.parity_tolerance,
        },
        **({"trained": trained} if trained else {}),
    )
    _record_model_facts(spec, size, store)
    return store.path("fp32")


def _trained_info(spec: ModelSpec, size: str, path: Path) -> dict:
    """The manifest's ``trained`` entry for the exported ``path``: its scores on the evaluation split against the
    labels, chance, the data and where it came from. Raises TrainingError if the model learnt nothing."""
    from analysis.accuracy import concat
    from common.ort_session import cpu_session
    from onnx_models import trained

    track = spec.trained
    session = cpu_session(path)
    names = [o.name for o in session.get_outputs()]
    outputs = concat(
        [dict(zip(names, session.run(names, feeds), strict=True)) for feeds in trained.eval_batches(spec, size)]
    )
    scores = {k: float(v) for k, v in track.score(outputs, trained.eval_labels(spec, size)).items()}
    trained.check_learnt(spec, scores[track.metric])
    return {
        "metric": track.metric,
        "fp32_scores": scores,
        "chance": track.chance,
        "data": track.data_note,
        "provenance": trained.provenance(spec),
    }


def _copy_onnx(spec: ModelSpec, size: str) -> Path:
    """A brought-in ONNX file becomes its FP32 artifact: normalized (``onnx_models.normalize``: initializers no
    longer inputs, Constant weights as initializers, old opsets upgraded) and proven to give the file's own
    outputs on ONNX Runtime CPU, or copied as it is where the file needed nothing or cannot be normalized (the
    reason is recorded as ``not_normalized``, and FP16 and INT8 are then unsupported with it). The manifest
    records what was changed, the parity, and each output's batch axis (``output_batch_axes``).

    The file's own precision is read from its contents (``calibration.reduced.detect``) and recorded as
    ``file_precision``. An FP16 or BF16 file is stored upcast to FP32, an INT8 file in the QDQ format
    dequantized (``origin`` says which, ``origin_parity`` how far its outputs are from the file's); an INT8 file
    with integer operators, or one whose FP32 form does not run, is stored as it is with ``no_fp32`` giving the
    reason, and has no FP32 cell and no FP32 reference (``ensure``)."""
    import onnx

    from analysis.parity import parity as max_errors
    from calibration import reduced
    from exporters import OPSET
    from onnx_models.normalize import NormalizeError, default_opset, normalize

    store = ModelStore(spec.name, size)
    cfg = spec.config(size)
    source = Path(cfg["onnx"])
    if not source.is_file():
        raise ArtifactError(f"{source} (brought with --onnx) no longer exists")
    sha = sha256_file(source)
    if sha != cfg["sha256"]:
        raise ArtifactError(f"{source} changed since it was brought in; run again with --onnx to register it anew")
    key = cache_key(
        model=spec.name,
        source_sha256=sha,
        # v3: the file's precision is read and recorded, a reduced file is stored as its FP32 form.
        rule="byo-import-v3",
        inputs=cfg["inputs"],
        batch_axes=cfg.get("output_batch_axes"),
        code=source_digest("onnx_models.normalize"),
        reduced=source_digest("calibration.reduced"),
        onnx=_version("onnx"),
        onnxruntime=onnxruntime_version(),
    )
    if store.valid("fp32", key):
        return store.path("fp32")
    log.info("importing %s", source)
    check = spec.make_feeds(size, 1, CHECK_SEED)
    expected = _run_file(source, check, "the file as brought")
    model = onnx.load(str(source))
    opset = default_opset(model)
    found = reduced.detect(model)
    problem, parity = None, "none needed: the file is used as it is"
    try:
        model, notes = normalize(model, OPSET, {name: a.shape for name, a in zip(spec.outputs, expected, strict=True)})
    except NormalizeError as exc:
        model, notes, problem = None, [], str(exc)
    if model is not None and notes:
        try:
            got = _run_file(model, check, "the normalized graph")
        except ArtifactError as exc:
            problem = str(exc)
        else:
            parity = {k: v for k, v in max_errors(zip(expected, got, strict=True)).items() if k != "max_rel_error"}
            if parity["max_abs_error"] > _NORMALIZE_TOLERANCE * max(1.0, parity["max_abs_reference"]):
                problem = f"normalizing changed the outputs (max abs error {parity['max_abs_error']:.3g})"
    kept = model if model is not None and notes and problem is None else None
    origin, no_fp32, origin_parity = "the file", None, None
    if found.reduced:
        try:
            lifted, what = reduced.fp32_form(found, kept or onnx.load(str(source)))
            got = _run_file(lifted, check, "its FP32 form")
        except (reduced.ReducedError, ArtifactError) as exc:
            no_fp32 = f"the file is {found.text}, and it has no FP32 form: {exc}"
        else:
            origin_parity = {
                k: v for k, v in max_errors(zip(expected, got, strict=True)).items() if k != "max_rel_error"
            }
            kept, origin = lifted, what
    elif kept is not None:
        origin = "the file, normalized"
    store.dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(store.path("fp32")) as tmp:  # a unique name: another run may be importing the same file
        if kept is not None:
            onnx.save(kept, str(tmp))
        else:
            shutil.copyfile(source, tmp)
    axes = batch_axes(spec, size, store.path("fp32"))
    store.record(
        "fp32",
        key,
        source=str(source),
        source_sha256=sha,
        source_opset=opset,
        normalized=notes if problem is None else [],
        not_normalized=problem,
        parity=parity if problem is None else "none: the brought-in file is FP32 as it is",
        output_batch_axes=axes,
        # What the file's inputs are fed (shapes, ranges, fixed values): the checks above ran on them.
        inputs=cfg["inputs"],
        file_precision=found.as_dict(),
        origin=origin,
        origin_parity=origin_parity,
        no_fp32=no_fp32,
    )
    if found.reduced:
        log.info("%s: the file is %s; its FP32 artifact is %s", spec.name, found.text, no_fp32 or origin)
    if problem is not None:
        log.warning("%s is used as it is for FP32; FP16 and INT8 cannot be made: %s", spec.name, problem)
    _record_model_facts(spec, size, store)
    return store.path("fp32")


# Normalizing only moves weights and renames opsets: outputs may differ by float rounding, nothing more.
_NORMALIZE_TOLERANCE = 1e-4


def _run_file(model, feeds: dict, what: str) -> list:
    """The outputs of ``model`` (a path or a ModelProto) on ONNX Runtime CPU; ArtifactError naming ``what``."""
    from calibration.graph import check_runs
    from common.errors import first_line

    try:
        return check_runs(model, feeds)
    except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime raises is the reason
        raise ArtifactError(f"{what} does not run on ONNX Runtime CPU: {first_line(exc)}") from None


def _leading_axis(shape: tuple[int, ...]) -> int | None:
    """The batch axis assumed where running cannot tell: the first, or none for a scalar."""
    return 0 if len(shape) else None


def batch_axes(spec: ModelSpec, size: str, path: Path) -> dict[str, int | None]:
    """Each output's batch axis, found by running ``path``: an output whose shape at batch 2 is its shape at
    batch 1 with one axis doubled has its batch there; one that does not change has none (None: compared
    whole); for a graph with a fixed batch N, the first axis of size N, or none. Anything else keeps axis 0.

    Declared output shapes are not trusted: ddddocr's OCR declares (1, seqlen) and returns (seqlen, 1, 8210).
    Axes the user gave (``--output-batch-axes``) are taken as they are, once checked against the outputs' ranks."""
    cfg = spec.config(size)
    fixed, given = cfg.get("fixed_batch"), cfg.get("output_batch_axes")
    names = list(spec.outputs)
    if given:
        shapes = [o.shape for o in _run_file(path, spec.make_feeds(size, fixed or 1, CHECK_SEED), "the FP32 file")]
        for name, shape in zip(names, shapes, strict=True):
            if given[name] >= len(shape):
                raise ArtifactError(
                    f"--output-batch-axes gives {name} axis {given[name]}, but it has {len(shape)} axes {shape}"
                )
        return dict(given)
    if fixed:
        shapes = [o.shape for o in _run_file(path, spec.make_feeds(size, fixed, CHECK_SEED), "the FP32 file")]
        # No axis of size N: the whole output belongs to the batch (a batch-1 graph returning (classes,)).
        return {n: next((i for i, d in enumerate(s) if d == fixed), None) for n, s in zip(names, shapes, strict=True)}
    one = [o.shape for o in _run_file(path, spec.make_feeds(size, 1, CHECK_SEED), "the FP32 file")]
    try:
        two = [o.shape for o in _run_file(path, spec.make_feeds(size, 2, CHECK_SEED), "the FP32 file")]
    except ArtifactError:
        return {n: _leading_axis(s) for n, s in zip(names, one, strict=True)}
    axes: dict[str, int | None] = {}
    for name, a, b in zip(names, one, two, strict=True):
        if a == b:
            axes[name] = None
            continue
        doubled = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if y == 2 * x and x > 0]
        others_equal = len(a) == len(b) and all(
            x == y for i, (x, y) in enumerate(zip(a, b, strict=True)) if i not in doubled
        )
        axes[name] = doubled[0] if len(doubled) == 1 and others_equal else _leading_axis(a)
    return axes


def output_batch_axes(spec: ModelSpec, size: str) -> dict[str, int | None]:
    """The batch axis of each output of ``spec`` (empty: all on axis 0, as every catalogue model): the user's
    ``--output-batch-axes`` or what the import of a brought-in model found."""
    given = spec.config(size).get("output_batch_axes")
    if given:
        return dict(given)
    if spec.framework != "onnx":
        return {}
    entry = ModelStore(spec.name, size).entry("fp32") or {}
    return dict(entry.get("output_batch_axes") or {})


class UnsupportedPrecision(ArtifactError):
    """A brought-in model that the FP16 or INT8 conversion cannot handle: a fact about the model, whose cells
    are reported ``unsupported`` with this reason rather than failed."""


def _record_model_facts(spec: ModelSpec, size: str, store: ModelStore) -> None:
    """What the manifest says about the model beside its artifacts (the FLOP count, a separate analysis, adds
    ``params`` when it first counts)."""
    store.update(
        framework=spec.framework,
        category=spec.category,
        task=spec.task,
        config=dict(spec.config(size)),
        inputs=[s.describe() for s in spec.input_specs(size)],
        outputs=list(spec.outputs),
        code_digest=spec.code_digest(),
    )


# Where a cached clean-up keeps its note (calibration.graph.clean's second value) inside the ONNX file.
_CLEAN_NOTE = "aimatrix.graph_cleanup"
# onnx.save writes one protobuf: a cleaned graph this large is not cached (ONNX's 2 GiB limit, with margin).
_CLEAN_CACHE_MAX_BYTES = 1_800_000_000


def clean_cache_name(store: ModelStore) -> str:
    """The name of the store cache that holds the slimmed graph of the stored FP32 file (``cleaned_fp32``)."""
    key = cache_key(
        source=store.entry("fp32")["sha256"],
        code=source_digest("calibration.graph"),
        onnx=_version("onnx"),
        onnxslim=_version("onnxslim"),
    )
    return f"clean-{key}.onnx"


def cleaned_fp32(store: ModelStore):
    """(the FP32 export slimmed for conversion, the clean-up note): ``calibration.graph.clean`` of the stored
    FP32 file, made once per FP32 file and kept as a store cache (``clean-<key>.onnx``) for the FP16 and every
    INT8 build after it. onnxslim's shape inference took 97 s on BERT-large and 53 s on NMT, once per
    artifact, on the critical path of the default job."""
    import onnx

    from calibration.graph import clean

    name = clean_cache_name(store)
    cached = store.verified_cache(name)
    if cached is not None:
        model = onnx.load(str(cached))
        notes = [p for p in model.metadata_props if p.key == _CLEAN_NOTE]
        if notes:
            note = notes[0].value
            model.metadata_props.remove(notes[0])
            return model, note
    model, note = clean(store.path("fp32"))
    if model.ByteSize() < _CLEAN_CACHE_MAX_BYTES:

        def write(tmp: Path) -> None:
            entry = model.metadata_props.add(key=_CLEAN_NOTE, value=note)
            try:
                onnx.save(model, str(tmp))
            finally:
                model.metadata_props.remove(entry)

        store.write_cache(name, write)
    return model, note


def calibration_feeds(spec: ModelSpec, size: str, calib: CalibrationSettings):
    """The calibration batches: synthetic from the input specs, or the user's ``.npz`` checked against them."""
    from calibration.feeds import file_feeds, synthetic_feeds

    specs = spec.input_specs(size)
    # A brought-in graph with a fixed batch dimension N (models/byo.py) is calibrated N samples at a time.
    # A model whose calibration would not fit in memory at the default batch names a smaller one.
    batch = spec.config(size).get("fixed_batch") or min(calib.batch, spec.calibration_batch or calib.batch)
    if spec.config(size).get("state") and not spec.config(size).get("fixed_batch"):
        batch = 1  # a stream is calibrated one step at a time, so that its states grow as in use (carry_state)
    if calib.data is None and spec.trained is not None:
        from onnx_models.trained import calibration_file

        # A trained model calibrates on its training split, never on the data it is scored on.
        return file_feeds(calibration_file(spec, size, calib.samples, calib.seed), specs, batch, calib.samples)
    if calib.data is not None:
        # A catalogue model's integer inputs index tables of known sizes, so ids outside them are refused when
        # the file is read; a brought-in model's ranges are guesses ({0, 1}), so its data is taken as it is.
        return file_feeds(calib.data, specs, batch, calib.samples, check_ranges=spec.framework != "onnx")
    return synthetic_feeds(
        specs, calib.samples, batch, calib.seed, lambda batch, rng: spec.sample_batch(size, batch, rng)
    )


@dataclass
class BuildJob:
    """What a precision's builder module gets (``key(job)``, ``build(job, out)``): the ``artifact`` to make, its
    model's ``spec``, the ``store`` it goes into, the stored ``fp32`` file it is made from and the calibration
    settings; the slimmed graph, a batch to check the result on and the calibration data when it asks."""

    artifact: Artifact
    spec: ModelSpec
    store: ModelStore
    fp32: Path
    calib: CalibrationSettings

    @property
    def source_sha256(self) -> str:
        """The sha256 of the FP32 file the artifact is made from."""
        return self.store.entry(precisions.BASE)["sha256"]

    def cleaned(self):
        """(the FP32 graph slimmed for conversion, the clean-up note): ``cleaned_fp32``."""
        return cleaned_fp32(self.store)

    def check_feeds(self) -> dict:
        """One seeded batch (batch 1, or the graph's fixed batch) the result must run on."""
        return self.spec.make_feeds(self.artifact.size, 1, CHECK_SEED)

    @functools.cached_property
    def calibration(self):
        """The calibration batches (``calibration_feeds``), made once per job; for a stream (``--state``) with
        the states its FP32 file carries from batch to batch."""
        feeds = calibration_feeds(self.spec, self.artifact.size, self.calib)
        pairs = self.spec.config(self.artifact.size).get("state")
        if pairs:
            from calibration.feeds import carry_state

            feeds = carry_state(feeds, self.fp32, pairs)
        return feeds


def ensure(
    artifact: Artifact,
    export: ExportSettings = ExportSettings(),
    calib: CalibrationSettings = CalibrationSettings(),
) -> Path:
    """The stored file of ``artifact``, built first when no valid one is stored; returns its path.

    For a brought-in model (framework ``onnx``) a conversion that fails raises UnsupportedPrecision: a fact about
    the model, which its rows report as ``unsupported``; so does FP32 of a file that has no FP32 form, and any
    artifact ``_from_file`` refuses. The file as brought is its own precision's artifact (``_from_file``)."""
    from onnx_models import model_spec

    spec = model_spec(artifact.model)
    fp32 = ensure_fp32(spec, artifact.size, export)
    store = ModelStore(artifact.model, artifact.size)
    if spec.framework == "onnx":
        brought = _from_file(artifact, spec, store, fp32)
        if brought is not None:
            return brought
    if artifact.precision == precisions.BASE:
        return fp32
    if spec.framework != "onnx":
        return _build(BuildJob(artifact, spec, store, fp32, calib))
    precision = artifact.precision
    problem = store.entry(precisions.BASE).get("not_normalized")
    if problem:
        raise UnsupportedPrecision(f"{spec.name} cannot be converted to {precision}: {problem}")
    try:
        return _build(BuildJob(artifact, spec, store, fp32, calib))
    except Exception as exc:  # noqa: BLE001 - whatever the converter or its check raises is the reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedPrecision(f"{spec.name} cannot be converted to {precision}: {reason}") from exc


def _from_file(artifact: Artifact, spec: ModelSpec, store: ModelStore, fp32: Path) -> Path | None:
    """What a brought-in file of a reduced precision (the FP32 entry's ``file_precision``) gives ``artifact``:
    the file as brought where it is of the artifact's precision, the stored FP32 form for FP32, or None where
    the artifact is converted as usual (from that FP32 form). UnsupportedPrecision, with the reason, where it
    cannot be had: FP32 of a file that has no FP32 form (``no_fp32``), a conversion from it, and for an INT8 file
    every other quantized artifact (it is quantized already: its ``int8`` is the file)."""
    entry = store.entry(precisions.BASE) or {}
    found = entry.get("file_precision") or {"precision": precisions.BASE}
    held, text, no_fp32 = found["precision"], found.get("text"), entry.get("no_fp32")
    precision = artifact.precision
    if precision == precisions.BASE:
        if no_fp32:
            raise UnsupportedPrecision(f"{spec.name} has no fp32 cell: {no_fp32}")
        return fp32
    if precision == held and not artifact.float_nodes:
        if artifact.flavour == "tensorrt" and found.get("quantization") != ["QDQ"]:
            raise UnsupportedPrecision(
                f"{spec.name} cannot be run as {artifact.name}: the file is {text}; TensorRT takes Q/DQ graphs only"
            )
        return _as_brought(artifact, spec, store, found)
    if held == "int8" and precisions.get(precision).quantized:
        kept = f"keeping {len(artifact.float_nodes)} nodes in float" if artifact.float_nodes else "quantizing it again"
        raise UnsupportedPrecision(
            f"{spec.name} cannot be converted to {artifact.name}: the file is already {text}; its int8 cell is the "
            f"file as brought, and {kept} is not made"
        )
    if no_fp32:
        what = "FP16 or INT8 conversion of a quantized graph is not made" if held == "int8" else "nothing to convert"
        raise UnsupportedPrecision(f"{spec.name} cannot be converted to {precision}: {no_fp32}; {what}")
    return None


def _as_brought(artifact: Artifact, spec: ModelSpec, store: ModelStore, found: dict) -> Path:
    """The brought-in file itself as ``artifact`` (a copy, byte for byte), recorded with ``origin`` "the file as
    brought": an FP16 file is the model's fp16 cell, an INT8 file its int8 cell, not a conversion."""
    cfg = spec.config(artifact.size)
    name = artifact.name
    key = cache_key(rule="byo-as-brought", source_sha256=cfg["sha256"], artifact=name)
    if store.valid(name, key):
        return store.path(name)
    with store.building(name):
        if store.valid(name, key):
            return store.path(name)
        with atomic_path(store.path(name)) as tmp:
            shutil.copyfile(cfg["onnx"], tmp)
        if sha256_file(store.path(name)) != cfg["sha256"]:
            raise ArtifactError(f"{cfg['onnx']} changed since it was brought in; run again with --onnx to register it")
        info = {"weight_bits": found.get("weight_bits")} if precisions.get(artifact.precision).quantized else {}
        info["mac_coverage"] = _file_coverage(store.path(name), artifact, spec)
        store.record(
            name,
            key,
            source=cfg["onnx"],
            source_sha256=cfg["sha256"],
            origin="the file as brought",
            **info,
        )
    return store.path(name)


def _file_coverage(path: Path, artifact: Artifact, spec: ModelSpec) -> dict | None:
    """How much of a brought-in file's work runs in its own precision (``analysis.quant_coverage``, at the
    check batch's shapes), as the builders record it for the artifacts they make; None where it cannot be
    counted (the row then leaves the share empty)."""
    import onnx

    from analysis.quant_coverage import coverage
    from common.graphs import fold_fixed_ifs

    feeds = spec.make_feeds(artifact.size, 1, CHECK_SEED)
    # An If that a fixed input (a sample rate) decides is counted as the branch that runs, as FLOPs are.
    fixed = [s.name for s in spec.input_specs(artifact.size) if s.value is not None]
    model, _ = fold_fixed_ifs(onnx.load(str(path)), feeds, fixed)
    try:
        return coverage(model, artifact.precision, {k: a.shape for k, a in feeds.items()}, values=feeds).as_dict()
    except ValueError:
        return None


def _build(job: BuildJob) -> Path:
    """Reuse or build ``job``'s artifact with its precision's builder module. The build key holds the FP32 file,
    the builder's source (and what it imports of the suite), ONNX Runtime's version and the builder's own
    parts (``builder.key``)."""
    artifact = job.artifact
    module = precisions.get(artifact.precision).builder
    builder = importlib.import_module(module)
    key = cache_key(
        precision=artifact.precision,
        source=job.source_sha256,
        code=source_digest(module),
        onnxruntime=onnxruntime_version(),
        **builder.key(job),
    )
    name = artifact.name
    if job.store.valid(name, key):
        return job.store.path(name)
    with job.store.building(name):
        if job.store.valid(name, key):  # built by another process while this one waited for the lock
            return job.store.path(name)
        log.info("building %s (%s) %s", artifact.model, artifact.size, name)
        info = builder.build(job, job.store.path(name))
        job.store.record(name, key, source_sha256=job.source_sha256, **info)
    return job.store.path(name)


def slim_fp32(model: str, size: str) -> None:
    """Slim the stored FP32 graph of ``model`` once, into the store's cache that its lower precisions' builds
    start from (``cleaned_fp32``); a child process's work between an export and its conversions."""
    cleaned_fp32(ModelStore(model, size))
