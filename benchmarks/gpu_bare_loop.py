"""Benchmark: each GPU cell of a finished run, re-timed by a bare loop on the same engine, and one table of what
ran and what did not.

For every ``ok`` row of a GPU engine in ``DIR/results.jsonl`` the same artifact and feeds are timed again by
the loop a user would write, and its p50 is printed next to the suite's:

- ``ort-cuda``, ``ort-trt``: a session of its own with the engine's providers and options, inputs and outputs
  bound on the device (I/O binding), ``run_with_iobinding`` then ``synchronize_outputs``, timed with
  ``perf_counter``: ONNX Runtime's own calls, none of the suite's engine code.
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

from bench.cell import TIMING_SEED
from engines import engine_class
from models import get_model

GPU_ENGINES = ("ort-cuda", "ort-trt", "tensorrt")


def bare_ort(engine, artifact: Path, feeds: dict, seconds: float) -> list[float]:
    """p50 material for a bare ONNX Runtime loop: a new session with ``engine``'s providers, device binding."""
    import onnxruntime as ort

    engine.model_path = artifact
    session = ort.InferenceSession(str(artifact), engine.session_options(), providers=engine.provider_list())
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", 0)
    return _loop(lambda: (session.run_with_iobinding(binding), binding.synchronize_outputs()), seconds)


def bare_engine(engine, artifact: Path, feeds: dict, seconds: float) -> list[float]:
    """p50 material for the engine's own ``run_prepared`` in a plain loop."""
    with engine:
        engine.activate(artifact, engine.input_shapes)
        engine.prepare(feeds)
        return _loop(engine.run_prepared, seconds)


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
        engine = engine_class(engine_name)()
        engine.input_shapes = {name: array.shape for name, array in feeds.items()}
        try:
            if engine_name == "tensorrt":
                samples = bare_engine(engine, Path(row["artifact"]), feeds, args.seconds)
            else:
                samples = bare_ort(engine, Path(row["artifact"]), feeds, args.seconds)
        except Exception as exc:  # noqa: BLE001 - one cell that cannot be re-timed must not stop the table
            print(line + f"{row['latency_ms_p50']:>11.3f}{'failed':>11}{'':>8}  {type(exc).__name__}: {exc}"[:200])
            continue
        bare = float(np.percentile(samples, 50))
        print(line + f"{row['latency_ms_p50']:>11.3f}{bare:>11.3f}{row['latency_ms_p50'] / bare:>8.3f}")


if __name__ == "__main__":
    main()
