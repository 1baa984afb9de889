"""From parsed options to the library's values: model, engine and precision lists (a ``Selection``), export and
calibration settings, a run's ``RunConfig``, a brought-in ONNX file's registration, given roofs. A value the
user can fix raises ``UsageError`` with one line naming the problem and the fix; nothing here runs work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import models
from common import precisions
from models.corpus import ASSET_PREFIX
from onnx_models import model_spec

DEFAULT_ENGINES = ("ort-cpu",)


class UsageError(Exception):
    """A command-line value the user can fix; printed as one line, exit status 2."""


def split_names(value: str | None, valid: Sequence[str], kind: str, default: Sequence[str]) -> list[str]:
    """Parse a comma list of ``kind`` names (``all`` means every valid one); unknown names raise UsageError."""
    if value is None:
        return list(default)
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names == ["all"]:
        return list(valid)
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise UsageError(f"unknown {kind} {', '.join(unknown) or repr(value)}; valid {kind}s: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def parse_engines(value: str | None) -> list[str]:
    """Engine names; the default is every registered engine usable here (at least ``ort-cpu``)."""
    import engines

    if value is None:
        usable = [e for e in engines.engine_names() if engines.availability(e) is None]
        return usable or list(DEFAULT_ENGINES)
    # Names that fit a pattern (ort:<ProviderName>) are valid as typed; the rest must be registered.
    from engines.ort_provider import unknown_provider

    fixed = engines.engine_names()
    typed = [v.strip() for v in value.split(",") if v.strip() not in fixed and engines.is_engine_name(v.strip())]
    # A provider this onnxruntime has never heard of is a typo: refuse it, rather than run a matrix of
    # `unsupported` rows and exit 0.
    for name in typed:
        problem = unknown_provider(name.removeprefix("ort:")) if name.startswith("ort:") else None
        if problem:
            raise UsageError(problem)
    try:
        return split_names(value, [*fixed, *typed], "engine", DEFAULT_ENGINES)
    except UsageError as exc:
        raise UsageError(f"{exc}, {', '.join(engines.engine_patterns())}") from None


def engine_options_from(args: argparse.Namespace, engine_list: Sequence[str]):
    """The EngineOptions every engine of a run gets: threads, ``--provider-options`` (parsed JSON), include-copies,
    CUDA graphs and TF32; a malformed ``--provider-options``, or one no engine in ``engine_list`` would read, raises
    UsageError."""
    import engines
    from engines.options import EngineOptions, parse_provider_options

    provider_options: dict[str, Any] = {}
    if args.provider_options is not None:
        try:
            provider_options = parse_provider_options(args.provider_options)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not any(engines.engine_class(e).takes_provider_options for e in engine_list):
            raise UsageError(
                f"--provider-options would be ignored: no engine of this run ({', '.join(engine_list)}) takes any "
                "(ort-cpu's setting is --threads; ort:CPUExecutionProvider hands options to ONNX Runtime's CPU "
                "provider)"
            )
    return EngineOptions(
        threads=args.threads,
        provider_options=provider_options,
        include_copies=bool(args.include_copies),
        cuda_graph=bool(args.cuda_graph),
        tf32=not getattr(args, "no_tf32", False),
    )


def parse_counts(value: str, option: str) -> list[int]:
    """A comma list of positive integers (``1,8,32``), duplicates dropped; anything else raises UsageError."""
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} must be a comma list of integers, got {value!r}") from None
    if not counts or any(b < 1 for b in counts):
        raise UsageError(f"{option} must be positive integers, got {value!r}")
    return list(dict.fromkeys(counts))


def parse_batches(value: str, spec: models.ModelSpec) -> list[int]:
    """``paper`` -> the paper's batch size for ``spec``; otherwise a comma list of positive integers."""
    if value == "paper":
        return [spec.paper_batch]
    if not all(v.strip().isdigit() for v in value.split(",") if v.strip()):
        raise UsageError(f"--batch-sizes must be 'paper' or a comma list of integers, got {value!r}")
    return parse_counts(value, "--batch-sizes")


def preset_value(args: argparse.Namespace, name: str):
    """Option ``name`` as given, or its ``--preset``'s value (the default preset's, for commands without one)."""
    from bench.config import DEFAULT_PRESET, PRESETS

    value = getattr(args, name, None)
    return PRESETS[getattr(args, "preset", None) or DEFAULT_PRESET][name] if value is None else value


# ---------------------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Brought:
    """A file brought with ``--onnx`` and registered in the store: its model ``name``, the ``path`` (a corpus
    asset's fetched file), its ``input_shapes`` text, and ``batch_sizes``: the graph's fixed batch where it has
    one and no other batch size was asked for (None otherwise)."""

    name: str
    path: Path
    input_shapes: str | None
    batch_sizes: str | None


@dataclass(frozen=True)
class Selection:
    """What a command works on: its models, engines and precisions as the user chose them (resolved, checked),
    and the brought-in file when there is one."""

    models: tuple[str, ...] = ()
    engines: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    brought: Brought | None = None


def select(args: argparse.Namespace) -> Selection:
    """The Selection of a parsed command line; UsageError for names that are not valid."""
    command = args.command
    brought = None
    model_list: list[str] = []
    if command in ("run", "explain") and args.onnx is not None:
        if command == "explain" and args.model:
            raise UsageError("explain takes a MODEL or --onnx FILE, not both")
        brought = bring_model(args)
        model_list = [brought.name]
    elif command == "explain":
        if not args.model:
            raise UsageError("explain needs a MODEL (suite.py list names them) or --onnx FILE")
        model_list = split_names(args.model, list(models.all_models()), "model", [])
        if len(model_list) != 1:
            raise UsageError("explain takes one model at a time")
    elif command in ("export", "calibrate", "flops", "run", "int8-check"):
        if args.models == "trained":
            model_list = models.trained_models()
        else:
            model_list = split_names(args.models, list(models.all_models()), "model", models.default_models())
    engine_list = parse_engines(args.engines) if command in ("calibrate", "run") else []
    precision_list = []
    if command == "run":
        # Default and "all": the precisions one of the run's engines runs, so that the default ort-cpu job plans
        # no cell of a GPU-only precision. A precision named outright is planned, and unsupported where it cannot run.
        value = None if (args.precisions or "").strip() == "all" else args.precisions
        precision_list = split_names(value, precisions.NAMES, "precision", precisions.run_by(engine_list))
    return Selection(tuple(model_list), tuple(engine_list), tuple(precision_list), brought)


def bring_model(args: argparse.Namespace) -> Brought:
    """Register ``--onnx`` (with ``--input-shapes`` and ``--output-batch-axes``) as a model the cells can find.
    ``--onnx asset:NAME`` fetches a corpus file (``models.corpus``) first, and takes the corpus' input shapes
    unless ``--input-shapes`` is given. A graph with a fixed batch runs at it unless ``--batch-sizes`` asks for
    another (a usage error)."""
    from models import byo
    from onnx_models.byo import register

    if args.models is not None or args.weights is not None:
        raise UsageError("--onnx runs one brought-in model: leave out --models and --weights")
    path, shapes = Path(args.onnx), args.input_shapes
    if str(path).startswith(ASSET_PREFIX):
        path, entry = corpus_file(str(path).removeprefix(ASSET_PREFIX))
        shapes = shapes or entry.input_shapes
        # What the corpus feeds this file, unless the command line says otherwise (then recorded as given).
        for option in ("input_values", "input_range", "state"):
            if not getattr(args, option):
                setattr(args, option, getattr(entry, option) or None)
    try:
        spec = register(
            path,
            byo.parse_input_shapes(shapes),
            byo.parse_batch_axes(args.output_batch_axes),
            feeds=args.feeds,
            input_batch_axes=byo.parse_input_batch_axes(args.input_batch_axes),
            input_values=byo.parse_input_values(args.input_values),
            input_ranges=byo.parse_input_ranges(args.input_range),
            state=byo.parse_state(args.state),
        )
    except byo.ByoError as exc:
        raise UsageError(str(exc)) from None
    for notice in spec.config(args.size).get("notices") or ():
        print(f"{path.name}: {notice}", file=sys.stderr)
    fixed = spec.config(args.size).get("fixed_batch")
    batch_sizes = None
    if args.command == "explain":
        if fixed and args.batch_size not in (1, fixed):
            raise UsageError(f"{path.name} has a fixed batch dimension of {fixed}: use --batch-size {fixed}")
        return Brought(spec.name, path, shapes, str(fixed) if fixed else None)
    if fixed and args.batch_sizes is None and preset_value(args, "batch_sizes") != "paper":
        print(f"{path.name} has a fixed batch dimension of {fixed}: measured at batch {fixed}", file=sys.stderr)
        batch_sizes = str(fixed)
    if fixed and parse_batches(batch_sizes or preset_value(args, "batch_sizes"), spec) != [fixed]:
        raise UsageError(f"{path.name} has a fixed batch dimension of {fixed}: use --batch-sizes {fixed}")
    return Brought(spec.name, path, shapes, batch_sizes)


def inputs_fed(args: argparse.Namespace) -> dict | None:
    """The options that say what a brought-in model's inputs are fed, as given (for ``env.json``), or None."""
    fed = {
        "input_batch_axes": args.input_batch_axes,
        "input_values": args.input_values,
        "input_range": args.input_range,
        "feeds": str(args.feeds.resolve()) if args.feeds else None,
        "state": args.state,
    }
    return {k: v for k, v in fed.items() if v} or None


def corpus_file(name: str):
    """(the fetched file of corpus model ``name``, its ``models.corpus.CorpusModel``); UsageError naming the
    fix."""
    import assets
    from models.corpus import CORPUS

    if name not in CORPUS:
        raise UsageError(f"unknown corpus model {name!r}; --onnx asset:NAME takes one of: {', '.join(CORPUS)}")
    try:
        return assets.fetch(CORPUS[name].asset), CORPUS[name]
    except assets.AssetError as exc:
        raise UsageError(str(exc)) from None


# ----------------------------------------------------------------------------------------------- settings


def calibration_samples(args: argparse.Namespace) -> int:
    """``--samples`` as given, else the ``run`` preset's (or, for ``calibrate``, the default preset's) value, so
    that ``calibrate`` makes the artifacts the default job uses."""
    return preset_value(args, "samples")


def settings_from(args: argparse.Namespace, selection: Selection):
    """(ExportSettings, CalibrationSettings) from the command line; bad values raise UsageError."""
    from onnx_models.artifacts import CalibrationSettings, ExportSettings

    weights = getattr(args, "weights", None)
    if weights is not None:
        if not weights.is_file():
            what = "is a directory, not a checkpoint file" if weights.is_dir() else "does not exist"
            raise UsageError(f"--weights {weights} {what}; name the checkpoint file")
        if len(selection.models) != 1:
            raise UsageError("--weights is a checkpoint for one model: name exactly one with --models")
    data = getattr(args, "data", None)
    try:
        calib = CalibrationSettings(
            method=getattr(args, "method", "minmax"),
            samples=calibration_samples(args),
            int8_weights=getattr(args, "int8_weights", "auto"),
            data=data.resolve() if data else None,
            float_nodes=int8_plans(args, selection),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if data is not None:
        from calibration.feeds import FeedError
        from onnx_models.artifacts import calibration_feeds

        for name in selection.models:
            try:
                calibration_feeds(model_spec(name), args.size, calib)
            except FeedError as exc:
                raise UsageError(f"--data does not fit {name}: {exc}") from None
    export = ExportSettings(seed=args.seed, weights=weights.resolve() if weights else None)
    return export, calib


def int8_plans(args: argparse.Namespace, selection: Selection) -> tuple:
    """The ``--int8-plan`` files as ``CalibrationSettings.float_nodes`` entries; UsageError for a file that
    cannot be used or a plan for a model or size the command does not build."""
    from calibration.int8_plan import PlanError, read_plan

    entries = []
    for name in (getattr(args, "int8_plan", None) or "").split(","):
        if not name.strip():
            continue
        try:
            plan = read_plan(Path(name.strip()))
        except PlanError as exc:
            raise UsageError(str(exc)) from None
        if plan.model not in selection.models or plan.size != args.size:
            raise UsageError(
                f"--int8-plan {name.strip()} is for {plan.model} ({plan.size}), which this command does not build "
                f"({', '.join(selection.models)} at --size {args.size}); name that model and size, or leave the "
                "plan out"
            )
        entries.append(plan.entry())
    return tuple(entries)


def config_from(args: argparse.Namespace, selection: Selection):
    """The RunConfig of ``suite.py run ARGS``: the preset's values, each overridden by its option when given;
    a value that cannot work raises UsageError."""
    from bench.config import ConfigError, RunConfig
    from bench.scenarios import SCENARIOS, LoadSettings
    from bench.timer import TimerSettings

    brought = selection.brought
    batch_text = (brought.batch_sizes if brought else None) or preset_value(args, "batch_sizes")
    batches = {m: tuple(parse_batches(batch_text, model_spec(m))) for m in selection.models}
    engine_options = engine_options_from(args, selection.engines)
    export, calib = settings_from(args, selection)
    try:
        timer = TimerSettings(
            warmup_s=preset_value(args, "warmup_s"),
            warmup_iters=1,
            duration_s=preset_value(args, "duration_s"),
            min_iters=preset_value(args, "min_iters"),
        )
        named = getattr(args, "precisions", None)
        defaulted = named is None or named.strip() == "all"
        return RunConfig(
            models=selection.models,
            batch_sizes=batches,
            size=args.size,
            engines=selection.engines,
            # Default and "all": each precision on the engines that run it (RunConfig works them out).
            precisions=None if defaulted else selection.precisions,
            timer=timer,
            rounds=preset_value(args, "rounds"),
            export=export,
            calib=calib,
            engine_options=engine_options,
            accuracy_samples=preset_value(args, "accuracy_samples"),
            cell_timeout_s=args.cell_timeout,
            bytes_model=args.bytes_model,
            jobs=args.jobs,
            onnx=str(brought.path.resolve()) if brought else None,
            input_shapes=brought.input_shapes if brought else args.input_shapes,
            output_batch_axes=getattr(args, "output_batch_axes", None),
            inputs_fed=inputs_fed(args) if brought else None,
            scenarios=tuple(split_names(args.scenario, SCENARIOS, "scenario", ("latency",))),
            concurrency=tuple(parse_counts(args.concurrency, "--concurrency")),
            load=LoadSettings(
                min_duration_s=preset_value(args, "min_duration_s"),
                min_query_count=args.min_query_count,
                target_qps=args.target_qps,
                latency_bound_ms=args.latency_bound_ms,
                latency_percentile=args.latency_percentile,
                samples_per_query=args.samples_per_query,
                find_peak=args.find_peak,
            ),
        )
    except (ConfigError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def roofs_from(args: argparse.Namespace):
    """Given roofs (``--peaks``/``--preset``, ``--peak-flops``, ``--peak-bw``) or None; bad values: UsageError."""
    from analysis.roofs import PeakError, given_roofs

    try:
        return given_roofs(args.peaks, args.peak_flops, args.peak_bw)
    except PeakError as exc:
        raise UsageError(str(exc)) from None
