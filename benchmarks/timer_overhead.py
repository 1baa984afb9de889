"""Benchmark: the suite's reported p50 against a bare ``session.run`` loop on the same artifact and feeds.

Both run in this one process, on one ONNX Runtime session each with the same options, alternating in
rounds so that machine noise falls on both alike. Prints each side's p50 and their ratio.

    python benchmarks/timer_overhead.py [--model resnet50] [--size full] [--batch 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.inputs import TIMING_SEED
from bench.timer import TimerSettings, measure
from engines.ort_cpu import OrtCpuEngine
from models import get_model
from onnx_models.store import ModelStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", default="full")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per side per round")
    args = parser.parse_args()

    path = ModelStore(args.model, args.size).verified_path(args.precision)
    feeds = get_model(args.model).make_feeds(args.size, args.batch, TIMING_SEED)
    engine = OrtCpuEngine()
    engine.activate(path)
    engine.prepare(feeds)
    # The bare loop a user would write: its own session with the engine's options, session.run, perf_counter.
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), engine.session_options(), providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feeds)

    suite_samples: list[float] = []
    bare_samples: list[float] = []
    for _ in range(args.rounds):
        stats = measure(engine.run_prepared, TimerSettings(0.5, 2, args.seconds, 10))
        suite_samples.extend(stats.samples_ms)
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            session.run(None, feeds)
            bare_samples.append((time.perf_counter() - start) * 1e3)
    suite_p50 = float(np.percentile(suite_samples, 50))
    bare_p50 = float(np.percentile(bare_samples, 50))
    print(f"{args.model} {args.size} {args.precision} batch {args.batch}, {args.rounds} alternating rounds")
    print(f"suite timer  p50 {suite_p50:8.2f} ms  ({len(suite_samples)} runs)")
    print(f"bare loop    p50 {bare_p50:8.2f} ms  ({len(bare_samples)} runs)")
    print(f"suite / bare     {suite_p50 / bare_p50:8.4f}")


if __name__ == "__main__":
    main()
