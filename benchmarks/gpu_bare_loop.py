"""Benchmark: each GPU cell of a finished run, re-timed by a bare loop on the same engine, and one table of what
ran and what did not.

For every ``ok`` row of a GPU engine in ``DIR/results.jsonl`` the same artifact and feeds are timed again by
the loop a user would write, and its p50 is printed next to the suite's:

- ``ort-cuda``, ``ort-trt``: the session the engine starts with the run's options (so a provider that falls
  back is an error, not a CUDA timing under a TensorRT label), driven by ONNX Runtime's own calls: inputs and
  outputs bound on the device (I/O binding), ``run_with_iobinding`` then ``synchronize_outputs``, timed with
  ``perf_counter``; none of the engine's run code.
- ``tensorrt``: the suite's engine object, activated and staged once, then ``run_prepared()`` in a plain
  ``perf_counter`` loop: the suite's timer is what is compared, not the engine (a second TensorRT runner
  would be a copy of it).

Cells run with ``--cuda-graph`` or ``--include-copies`` are listed without a bare loop. Rows that did not run
are listed with their status and reason. Run after a GPU run, as
``benchmarks/gpu_check.sh`` does:

    python benchmarks/gpu_bare_loop.py DIR [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.inputs import TIMING_SEED
from engines import engine_class
from models import get_model

GPU_ENGINES = ("ort-cuda", "ort-trt", "tensorrt")


def bare_samples(engine, artifact: Path, feeds: dict, seconds: float) -> list[float]:
    """Bare-loop samples (ms) of ``engine`` on ``artifact``: activated as in the run (so a provider that fails to
    start is an error, and ort-trt's profile retry happens as it did), then, for ONNX Runtime engines, the
    engine's session driven by ONNX Runtime's own calls on a binding of our own, and for ``tensorrt`` the
    engine's ``run_prepared``."""
    import onnxruntime as ort

    with engine:
        engine.activate(artifact, {name: array.shape for name, array in feeds.items()})
        if engine.name == "tensorrt":
            engine.prepare(feeds)
            return _loop(engine.run_prepared, seconds)
        session = engine.session
        binding = session.io_binding()
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), engine.device_type, engine.device_id)
            binding.bind_ortvalue_input(name, value)
        for output in session.get_outputs():
            binding.bind_output(output.name, engine.device_type, engine.device_id)
        return _loop(lambda: (session.run_with_iobinding(binding), binding.synchronize_outputs()), seconds)


def _loop(step, seconds: float) -> list[float]:
    for _ in range(5):
        step()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 10:
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a run's results directory")
    parser.add_argument("--seconds", type=float, default=2.0, help="bare-loop seconds per cell")
    args = parser.parse_args()
    options = json.loads((args.results / "env.json").read_text())["settings"]["engine_options"]
    rows = {}
    for line in (args.results / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[(row["model"], row["precision"], row["engine"], row["batch_size"])] = row
    header = ("model", "prec", "engine", "batch", "status", "suite p50", "bare p50", "ratio")
    widths = ("<14", "<6", "<10", ">6", "<12", ">11", ">11", ">8")
    print("".join(f"{h:{w}}" + ("  " if h == "batch" else "") for h, w in zip(header, widths, strict=True)))
    for (model, precision, engine_name, batch), row in sorted(rows.items()):
        line = f"{model:<14}{precision:<6}{engine_name:<10}{batch:>6}  {row['status']:<12}"
        if row["status"] != "ok" or engine_name not in GPU_ENGINES:
            reason = f"  {row['error'][:90]}" if row.get("error") else ""
            p50 = f"{row['latency_ms_p50']:.3f}" if row.get("latency_ms_p50") is not None else "-"
            print(line + f"{p50:>11}{'':>11}{'':>8}{reason}")
            continue
        settings = json.loads(row["engine_settings"])
        if settings.get("cuda_graph") or settings.get("include_copies"):
            # The bare loops time device-resident runs without CUDA graphs, what gpu_check.sh asks for.
            print(line + f"{row['latency_ms_p50']:>11.3f}{'n/a':>11}{'':>8}  (--cuda-graph / --include-copies)")
            continue
        feeds = get_model(model).make_feeds(row["size"], batch, TIMING_SEED)
        try:
            # The run's own options (--provider-options, --threads), as env.json recorded them.
            engine = engine_class(engine_name)(options)
            samples = bare_samples(engine, Path(row["artifact"]), feeds, args.seconds)
        except Exception as exc:  # noqa: BLE001 - one cell that cannot be re-timed must not stop the table
            print(line + f"{row['latency_ms_p50']:>11.3f}{'failed':>11}{'':>8}  {type(exc).__name__}: {exc}"[:200])
            continue
        bare = float(np.percentile(samples, 50))
        print(line + f"{row['latency_ms_p50']:>11.3f}{bare:>11.3f}{row['latency_ms_p50'] / bare:>8.3f}")


if __name__ == "__main__":
    main()
