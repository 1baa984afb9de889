"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) loads the report of a tiny run
and of a synthetic twenty-model run; a console error, a request off the page, a missing chart or a verdict
table that disagrees with the rows fails the test. Skipped, with the reason, where no Chromium is installed
(``.ci/run`` installs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser import Browser, find_chromium
from tests.test_roofline_report import _row, _write_run

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium (apt-get install chromium, or set $CHROMIUM to its executable)"
)

THRESHOLD = 0.99


def expected_verdicts(rows: list[dict]) -> dict[str, tuple[str, str]]:
    """{model: (answer, speed-up as ``2.45x [2.45, 2.45]`` for a precision deployed, else "")} worked out here
    from the rows alone (closed loop, one batch size): a lower precision is faster when its speed-up interval
    from the paired rounds lies at or above 1.05, and passes when its label ratio (the only evidence random
    weights have not) lies at or above THRESHOLD; deploy the fastest that does both, keep fp32 when every lower
    precision is not faster, else undecided."""
    from analysis.intervals import ratio_interval

    def name(row: dict) -> str:  # as the report names a model: with its size where it is not full
        return row["model"] + ("" if row["size"] == "full" else f" ({row['size']})")

    ok = [r for r in rows if r["status"] == "ok"]
    out = {}
    for model in dict.fromkeys(map(name, ok)):
        fp32 = next(r for r in ok if name(r) == model and r["precision"] == "fp32")
        faster, passing, settled = {}, set(), True
        for row in ok:
            if name(row) != model or row["precision"] == "fp32":
                continue
            speed, lo, hi = ratio_interval(json.loads(fp32["round_p50_ms"]), json.loads(row["round_p50_ms"]))
            if lo >= 1.05:
                faster[row["precision"]] = (speed, lo, hi)
                settled = False
            if row.get("label_ratio") is not None and row["label_ratio"] >= THRESHOLD:
                passing.add(row["precision"])
        deployable = {p: v for p, v in faster.items() if p in passing}
        if deployable:
            best = max(deployable, key=lambda p: deployable[p][0])
            speed, lo, hi = deployable[best]
            out[model] = (f"deploy {best}", f"{speed:.2f}x [{lo:.2f}, {hi:.2f}]")
        else:
            out[model] = ("keep fp32" if settled else "undecided", "")
    return out


def check_page(browser: Browser, page: Path, rows: list[dict], engines: list[str]) -> dict:
    """Load ``page`` and assert what every report must show; returns facts read from the page for more checks."""
    log = browser.load(page)
    assert not log.errors, f"the page logged errors: {log.errors}"
    off_page = [url for url in log.requests if not url.startswith(("file:", "data:"))]
    assert not off_page, f"the page requested {off_page}: it must open offline"
    facts = browser.evaluate(
        """(function(){
        var out={charts:{},verdicts:{},images:[]};
        document.querySelectorAll('svg.chart.answer').forEach(function(svg){
          var engine=svg.getAttribute('aria-label').split(':')[0];
          out.charts[engine]={points:svg.querySelectorAll('g.point').length,
            failing:Array.prototype.map.call(svg.querySelectorAll('g.point.fail'),function(g){
              return g.getAttribute('data-model')+' '+g.getAttribute('data-precision');}),
            threshold:svg.querySelectorAll('line.threshold').length,
            width:svg.getBoundingClientRect().width};});
        document.querySelectorAll('table[id^=verdict-]').forEach(function(t){
          out.verdicts[t.id]=Array.prototype.map.call(t.tBodies[0].rows,function(r){
            return [r.cells[1].textContent,r.cells[2].textContent,r.cells[3].textContent,r.cells[2].className];});});
        document.querySelectorAll('img').forEach(function(img){
          out.images.push([img.alt,img.complete&&img.naturalWidth>0]);});
        out.firstSection=document.querySelector('h2').textContent;
        out.sortable=document.querySelectorAll('table.sortable').length;
        out.tables=document.querySelectorAll('table').length;
        return out;})()"""
    )
    assert facts["firstSection"] == "Which precision to deploy"
    assert facts["sortable"] == facts["tables"]
    for engine in engines:
        chart = facts["charts"].get(engine)
        assert chart, f"no answer chart for {engine}: {facts['charts']}"
        assert chart["threshold"] == 1 and chart["width"] > 300
        roofline = [ok for alt, ok in facts["images"] if alt == f"roofline of {engine}"]
        assert roofline == [True], f"the roofline of {engine} did not load: {facts['images']}"
    # Every ok (model, precision) is a point, failing ones marked; nothing else is.
    ok = [r for r in rows if r["status"] == "ok"]
    assert sum(c["points"] for c in facts["charts"].values()) == len(ok)
    expected = expected_verdicts(rows)
    table = facts["verdicts"][f"verdict-{engines[0]}"]
    assert {model: (answer, speed) for model, answer, speed, _ in table} == expected
    css = {"deploy": "pass", "keep": "", "undecided": "undecided"}
    assert all(klass == css[answer.split()[0]] for _, answer, _, klass in table), table
    return facts


def test_console_errors_are_caught(tmp_path):
    """The check itself: a page that logs an error or throws is seen as failing."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('broken chart');null.x;</script></body></html>")
    with Browser() as browser:
        log = browser.load(page)
    assert "broken chart" in log.console_errors[0]
    assert log.exceptions and "TypeError" in log.exceptions[0]


def synthetic_run(directory: Path, count: int = 20) -> list[dict]:
    """``count`` models in three precisions on ort-cpu, clustered on the roofline (intensities within 2x), INT8
    of every third model drifting far from FP32 (random weights: not judged), and the last three models' cells
    trained ones judged against labels (the last model's INT8 drifts but keeps its labels)."""
    rows = []
    for i in range(count):
        model = f"model_{i:02d}"
        intensity = 10.0 * (1 + (i % 5) / 5)
        fp32 = 10.0 + i
        rows.append(_row(model, "fp32", fp32, arith_intensity=intensity))
        rows.append(_row(model, "fp16", fp32 / 1.1, arith_intensity=intensity, accuracy_value=0.999))
        accuracy = 0.95 if i % 3 == 0 else 0.995
        rows.append(_row(model, "int8", fp32 / (1.5 + i / 20), arith_intensity=intensity, accuracy_value=accuracy))
    # A trained model: its INT8 agrees with FP32 less than the threshold but keeps its AUC against labels.
    labels = {"label_metric": "auc", "label_value": 0.9, "label_value_fp32": 0.9}
    rows[-1].update(label_ratio=1.001, accuracy_value=0.97, **labels)
    rows[-2].update(label_ratio=1.0, **labels)
    rows[-3].update(label_ratio=1.0, **labels)
    _write_run(directory, rows)
    return rows


def test_report_of_twenty_models_in_a_browser(tmp_path):
    from analysis.roofs import Roofs
    from report.run_report import write_report

    rows = synthetic_run(tmp_path / "run")
    _, page = write_report(tmp_path / "run", THRESHOLD, Roofs({"fp32": 1e11, "int8": 4e11}, 1e10, "test roofs"))
    with Browser() as browser:
        facts = check_page(browser, page, rows, ["ort-cpu"])
        # Random weights: no point fails, however far its INT8 drifts from FP32.
        assert facts["charts"]["ort-cpu"]["failing"] == []
        # The trained model's INT8 passes on its labels although it agrees with FP32 on only 97% of inputs.
        assert ["model_19", "deploy int8", "2.45x [2.45, 2.45]", "pass"] in facts["verdicts"]["verdict-ort-cpu"]
        # Every point has its speed-up interval as an error bar, at the bounds the rows give.
        bars = browser.evaluate(
            "Array.prototype.map.call(document.querySelectorAll('svg.chart.answer g.point'),function(g){"
            "var e=g.querySelector('line.err.speed');return e?[g.getAttribute('data-model'),"
            "g.getAttribute('data-precision'),Number(e.getAttribute('data-lo')),Number(e.getAttribute('data-hi'))]:null;})"
        )
        lower = [b for b in bars if b is not None]
        assert len(lower) == 2 * 20 and all(b[2] <= b[3] for b in lower)
        assert ["model_19", "int8", 2.45, 2.45] in [[m, p, round(lo, 2), round(hi, 2)] for m, p, lo, hi in lower]
        # Sorting by speed-up (twice: descending) and filtering work in the page.
        browser.evaluate("document.querySelector('#verdict-ort-cpu th:nth-child(4)').click()")
        browser.evaluate("document.querySelector('#verdict-ort-cpu th:nth-child(4)').click()")
        first = browser.evaluate("document.querySelector('#verdict-ort-cpu tbody tr').cells[1].textContent")
        assert first == "model_19"
        browser.evaluate(
            "var f=document.querySelector('#verdict-ort-cpu').previousElementSibling;"
            "f.value='model_0 undecided';f.dispatchEvent(new Event('input'))"
        )
        shown = browser.evaluate("document.querySelectorAll('#verdict-ort-cpu tbody tr:not([hidden])').length")
        assert shown == 10
        assert not browser.load(page).errors


def test_report_of_a_tiny_run_in_a_browser(tmp_path):
    """The report ``suite.py run`` writes for a real tiny run of two models."""
    import suite
    from tests.zoo import QUICK

    out = tmp_path / "run"
    models = ["resnet50", "wide_deep"]
    quick = [*QUICK[:2], "--batch-sizes", "1", *QUICK[4:]]
    assert suite.main(["run", "--models", ",".join(models), *quick, "--accuracy-samples", "4", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]
    with Browser() as browser:
        facts = check_page(browser, out / "report.html", rows, ["ort-cpu"])
    print(json.dumps(facts["verdicts"], indent=1))


def test_comparison_page_in_a_browser(tmp_path):
    """compare.html: one bar per cell and run after A with the ratio of the rows, n/a where a cell is missing."""
    import suite

    a = _write_run(tmp_path / "a", [_row("resnet50", "fp32", 10.0), _row("resnet50", "int8", 5.0)])
    b = _write_run(tmp_path / "b", [_row("resnet50", "fp32", 5.0), _row("resnet50", "int8", 10.0)])
    c = _write_run(tmp_path / "c", [_row("resnet50", "fp32", 20.0)])
    assert suite.main(["compare", str(a), str(b), str(c), "--out", str(tmp_path / "cmp")]) == 0
    with Browser() as browser:
        log = browser.load(tmp_path / "cmp" / "compare.html")
        assert not log.errors, log.errors
        bars = browser.evaluate(
            "Array.prototype.map.call(document.querySelectorAll('svg.chart.ratio g.bar'),function(g){"
            "return [g.getAttribute('data-cell'),g.getAttribute('data-run'),Number(g.getAttribute('data-ratio'))];})"
        )
        missing = browser.evaluate("document.querySelector('svg.chart.ratio').textContent.indexOf('C n/a')>=0")
    assert bars == [
        ["resnet50 fp32 b8", "B", 2.0],
        ["resnet50 fp32 b8", "C", 0.5],
        ["resnet50 int8 b8", "B", 0.5],
    ]
    assert missing


def test_throughput_latency_curves_in_a_browser(tmp_path):
    """A load-scenario run at several batch sizes and SUT threads: one inline curve chart per model and scenario,
    one point per ok row at that row's p99 latency and throughput, inside the plot, labels not overlapping where
    two lines nearly coincide (FP16 at 1.02x of FP32, as on a CPU)."""
    from analysis.roofs import Roofs
    from report.curves import curve_groups
    from report.run_report import write_report

    rows = []
    for model in ("resnet50", "bert"):
        for precision, speed in (("fp32", 1.0), ("fp16", 1.02), ("int8", 2.9)):
            for batch in (1, 2, 4, 8, 16, 32):
                for concurrency in (1, 2):
                    p50 = 10.0 * batch**0.8 / speed * (1.2 if concurrency == 2 else 1.0)
                    rows.append(
                        _row(
                            model, precision, p50, batch_size=batch, scenario="server", concurrency=concurrency,
                            throughput_samples_per_s=batch * concurrency * 1e3 / p50,
                            cell_id=f"{model}/full/ort-cpu/{precision}/b{batch}/server/c{concurrency}",
                        )
                    )  # fmt: skip
    rows.append(_row("resnet50", "int8", None, batch_size=64, scenario="server", status="failed", error="x"))
    _write_run(tmp_path / "run", rows)
    _, page = write_report(tmp_path / "run", THRESHOLD, Roofs({"fp32": 1e11, "int8": 4e11}, 1e10, "test roofs"))
    with Browser() as browser:
        log = browser.load(page)
        assert not log.errors, log.errors
        charts = browser.evaluate(
            """Array.prototype.map.call(document.querySelectorAll('svg.chart.curve'),function(svg){
            var frame=svg.querySelector('rect[fill=none]').getBoundingClientRect();
            var inside=true;
            var points=Array.prototype.map.call(svg.querySelectorAll('g.point'),function(g){
              var r=g.getBoundingClientRect(),x=r.left+r.width/2,y=r.top+r.height/2;
              inside=inside&&x>=frame.left&&x<=frame.right&&y>=frame.top&&y<=frame.bottom;
              return [g.getAttribute('data-line'),g.getAttribute('data-label'),
                Number(g.getAttribute('data-latency')),Number(g.getAttribute('data-throughput'))];});
            var boxes=Array.prototype.map.call(svg.querySelectorAll('g.line > text'),function(t){
              return t.getBoundingClientRect();});
            var overlaps=0;
            boxes.forEach(function(a,i){boxes.slice(i+1).forEach(function(b){
              if(a.left<b.right&&b.left<a.right&&a.top<b.bottom&&b.top<a.bottom)overlaps++;});});
            return {title:svg.getAttribute('aria-label'),points:points,inside:inside,overlaps:overlaps,
              lines:svg.querySelectorAll('polyline').length,width:svg.getBoundingClientRect().width};})"""
        )
    groups = curve_groups(rows)
    assert sorted(c["title"] for c in charts) == ["bert (full), ort-cpu, server", "resnet50 (full), ort-cpu, server"]
    for chart in charts:
        model = chart["title"].split(" ")[0]
        lines = groups[(model, "full", "ort-cpu", "server")]
        assert chart["lines"] == len(lines) == 6 and chart["width"] > 300
        expected = sorted(
            [label, f"b{r['batch_size']}" + (f" c{r['concurrency']}" if r["concurrency"] != 1 else "")]
            + [r["latency_ms_p99"], r["throughput_samples_per_s"]]
            for label, members in lines.items()
            for r in members
        )
        drawn = sorted(chart["points"])
        assert len(drawn) == len(expected) == 36
        for got, want in zip(drawn, expected, strict=True):
            assert got[:2] == want[:2] and got[2:] == pytest.approx(want[2:], rel=1e-5)
        assert chart["inside"], f"a point of {chart['title']} lies outside its plot"
        assert chart["overlaps"] == 0, f"{chart['overlaps']} point labels overlap in {chart['title']}"
