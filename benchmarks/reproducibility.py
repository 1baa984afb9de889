"""Does a run's answer survive a second run? ``suite.py run ARGS`` twice, one after the other on one machine (the
second reuses the store the first filled), then ``compare``: how many verdicts of the second run differ from the
first's, and how many of its speed-ups lie inside the first run's 95% intervals.

    python benchmarks/reproducibility.py --out results/repro              # the default job, twice
    python benchmarks/reproducibility.py --out results/repro -- --models resnet50,bert

The two numbers (and the wall time of each run) are printed at the end; ``compare.md`` in ``--out`` has every
verdict side by side.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a new directory for both runs and the comparison")
    parser.add_argument("run_args", nargs="*", help="options for suite.py run (after --)")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out {args.out} exists; name a new directory")
    runs = [args.out / "first", args.out / "second"]
    for run in runs:
        started = time.monotonic()
        status = subprocess.call([sys.executable, str(ROOT / "suite.py"), "run", *args.run_args, "--out", str(run)])
        print(f"{run}: exit {status}, {time.monotonic() - started:.0f} s", file=sys.stderr)
        if status not in (0, 1):
            return status
    from report.compare import compare

    text, md, _ = compare(runs, out=args.out)
    print("\n".join(line for line in text.splitlines() if line.startswith("B:")))
    print(f"written: {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
