"""Benchmark: LoadGen's single stream against the suite's closed-loop timer, interleaved in one process so that
the drift of a shared machine falls on both alike.

A run's latency and single-stream cells are measured one after the other, minutes apart in separate processes;
on a shared machine their windows see different neighbours (8 such pairs of ResNet-50 cells here gave p90
ratios from 0.90 to 1.12, with the minimum latencies moving as much). This script activates one engine once
and alternates blocks of the two: the timer on staged feeds (``engine.run_prepared``), then LoadGen
SingleStream through the suite's SUT (``bench.loadgen``), ``--blocks`` times, and compares the pooled
percentiles and each block pair's p90:

    python benchmarks/loadgen_vs_timer.py --model resnet50 --precision fp32 [--engine ort-cpu] [--blocks 6]
        [--seconds 5] [--size full]

The model's artifact must be in the store (``suite.py run`` or ``calibrate`` makes it).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench import loadgen
from bench.inputs import TIMING_SEED, accuracy_feeds
from bench.scenarios import SINGLE_STREAM, LoadSettings
from bench.timer import TimerSettings, measure
from engines import engine_class
from models import get_model
from onnx_models.artifacts import resolve
from onnx_models.store import ModelStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", default="full")
    parser.add_argument("--engine", default="ort-cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    spec = get_model(args.model)
    artifact = resolve(args.model, args.size, args.precision, engine_class(args.engine).int8_flavour)
    path = ModelStore(args.model, args.size).verified_path(artifact.name)
    feeds = spec.make_feeds(args.size, 1, TIMING_SEED)
    samples = accuracy_feeds(spec, args.size, 1, 8)
    timer = TimerSettings(warmup_s=1.0, warmup_iters=2, duration_s=args.seconds, min_iters=10)
    # As many queries as the seconds give: LoadGen's judgement is not what is compared here.
    load = LoadSettings(min_duration_s=args.seconds, min_query_count=1)
    pooled: dict[str, list[float]] = {"timer": [], "loadgen": []}
    pairs = []
    with engine_class(args.engine)() as engine, tempfile.TemporaryDirectory() as logs:
        engine.activate(path, {name: array.shape for name, array in feeds.items()})
        engine.prepare(feeds)
        with loadgen.SystemUnderTest(engine, samples) as sut:
            seconds = loadgen.warm_up(engine, samples[0], timer)
            for block in range(args.blocks):
                timed = measure(engine.run_prepared, timer).samples_ms
                entries = sut.run(loadgen.test_settings(SINGLE_STREAM, load, "PerformanceOnly", seconds), Path(logs))
                # LoadGen logs percentiles, not samples: its p90 per block, and its queries' latencies are not
                # pooled; the timer's are.
                lg_p90 = entries["result_90.00_percentile_latency_ns"] / 1e6
                t_p90 = float(np.percentile(timed, 90))
                pooled["timer"].extend(timed)
                pooled["loadgen"].append(lg_p90)
                pairs.append((t_p90, lg_p90))
                print(f"block {block + 1}: timer p90 {t_p90:.2f} ms, LoadGen p90 {lg_p90:.2f} ms, {lg_p90 / t_p90:.3f}")
    ratios = [lg / t for t, lg in pairs]
    print(
        f"{args.model} {args.precision} {args.engine}: LoadGen / timer p90 per block: median {np.median(ratios):.3f}, "
        f"range {min(ratios):.3f}-{max(ratios):.3f}; timer pooled p90 {np.percentile(pooled['timer'], 90):.2f} ms, "
        f"LoadGen median of block p90s {np.median(pooled['loadgen']):.2f} ms"
    )


if __name__ == "__main__":
    main()
