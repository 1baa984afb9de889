"""Which execution provider ran each node, for every artifact of a run's ``ok`` rows: ONNX Runtime's profile of
the suite's own engine (the run's engine, its default options), read node by node.

    python benchmarks/device_check/node_providers.py RUN/results.jsonl OUT.jsonl [--profiles DIR]

Appends one JSON line per (model, precision, engine) to ``OUT.jsonl``: the number of nodes that ran, how many
ran on each provider, and the operator types of the nodes that did not run on the CUDA provider (on a GPU
engine, the nodes that fell back to the CPU; for ``ort-cpu``, every node).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.inputs import TIMING_SEED  # noqa: E402 - after the repository is on the path
from engines import engine_class  # noqa: E402
from models import get_model  # noqa: E402


def node_providers(trace: list[dict]) -> dict[str, tuple[str, str]]:
    """Node name -> (provider, operator type) from an ONNX Runtime profile's events (Chrome's trace format:
    one ``Node`` event per node run, ``<node>_kernel_time`` for the kernel itself)."""
    return {
        event["name"].removesuffix("_kernel_time"): (event["args"]["provider"], event["args"]["op_name"])
        for event in trace
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
    }


def summary(nodes: dict[str, tuple[str, str]]) -> dict:
    """The count of nodes, nodes per provider, and the operator types of nodes off the CUDA provider."""
    return {
        "nodes": len(nodes),
        "by_provider": dict(Counter(provider for provider, _ in nodes.values())),
        "off_gpu_ops": dict(Counter(op for provider, op in nodes.values() if provider != "CUDAExecutionProvider")),
    }


def profile_row(row: dict, profiles: Path) -> dict[str, tuple[str, str]]:
    """Run ``row``'s artifact three times on its engine with profiling on; the providers of its nodes."""
    feeds = get_model(row["model"]).make_feeds(row["size"], row["batch_size"], TIMING_SEED)
    profiles.mkdir(parents=True, exist_ok=True)
    engine = engine_class(row["engine"])({"profile": str(profiles / f"{row['model']}-{row['precision']}")})
    with engine:
        engine.activate(Path(row["artifact"]), {name: array.shape for name, array in feeds.items()})
        engine.prepare(feeds)
        for _ in range(3):
            engine.run_prepared()
        trace = engine.end_profiling()
    return node_providers(json.loads(Path(trace).read_text()))


def main(argv: list[str] | None = None) -> int:
    """Command line: one line per artifact, printed and appended to OUT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a run's results.jsonl")
    parser.add_argument("out", type=Path, help="the JSON-lines file to append to")
    parser.add_argument("--profiles", type=Path, default=Path("/tmp/aimatrix-device/profiles"), help="trace files")
    args = parser.parse_args(argv)
    done = set()
    for line in args.results.read_text().splitlines():
        row = json.loads(line)
        if row["status"] != "ok" or row["artifact"] in done:
            continue
        done.add(row["artifact"])
        entry = {"model": row["model"], "precision": row["precision"], "engine": row["engine"]}
        entry.update(summary(profile_row(row, args.profiles)))
        print(json.dumps(entry), flush=True)
        with args.out.open("a") as out:
            out.write(json.dumps(entry) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
