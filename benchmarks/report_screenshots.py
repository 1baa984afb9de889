"""Screenshots of a run's report.html in headless Chromium: the first screen and the roofline, as the README shows.

    python benchmarks/report_screenshots.py RUN_DIR OUT_DIR [--prefix report]

Writes OUT_DIR/<prefix>-first-screen.png (the viewport as the page opens, 1366x900) and
OUT_DIR/<prefix>-roofline.png (the first roofline figure), OUT_DIR/<prefix>-curve.png (the first throughput-latency
chart, where the run has one), and fails on any console error on the way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.paths import atomic_path  # noqa: E402
from tests.browser import Browser, BrowserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--prefix", default="report")
    args = parser.parse_args(argv)
    page = args.run_dir / "report.html"
    if not page.is_file():
        print(f"error: {page} does not exist; run `python suite.py report {args.run_dir}` first", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with Browser(width=1366, height=900) as browser:
            log = browser.load(page)
            if log.errors:
                print(f"error: the report logged errors: {log.errors}", file=sys.stderr)
                return 1
            first = args.out_dir / f"{args.prefix}-first-screen.png"
            with atomic_path(first) as tmp:
                browser.screenshot(tmp)
            roofline = args.out_dir / f"{args.prefix}-roofline.png"
            with atomic_path(roofline) as tmp:
                browser.screenshot(tmp, selector='img[alt^="roofline of"]')
            written = [first, roofline]
            if browser.evaluate("document.querySelector('svg.chart.curve')!==null"):
                curve = args.out_dir / f"{args.prefix}-curve.png"
                with atomic_path(curve) as tmp:
                    browser.screenshot(tmp, selector="svg.chart.curve")
                written.append(curve)
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
