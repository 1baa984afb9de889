"""Load scenarios with MLPerf's real LoadGen on tiny models (the settings a run refuses are with the others in
test_run_pipeline.py): the cells it plans, the rows and logs of single-stream, multi-stream, server (with the
peak search) and offline cells, accuracy through LoadGen, the report's sections, resuming an older results
directory, and NVML's answer on a machine without it."""

from __future__ import annotations

import json
import re

import pytest

import suite
from bench.cell import Cell
from bench.loadgen import _needed_queries, early_stopping_minimum
from bench.nvml import GpuMeter, nvml_status
from bench.plan import plan
from bench.results import ResultsFile
from tests.test_run_pipeline import config_of

TINY = ["--size", "tiny", "--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3", "--accuracy-samples", "4"]
LOADGEN = ["--min-duration-s", "0.3", "--latency-bound-ms", "100"]


def test_cells_of_scenarios_and_concurrency():
    # A closed-loop cell keeps the id it had before scenarios existed (resumes of older directories match it).
    assert Cell("resnet50", "tiny", "ort-cpu", "fp32", 1).id == "resnet50/tiny/ort-cpu/fp32/b1"
    assert Cell("resnet50", "tiny", "ort-cpu", "fp32", 1, "server", 2).id == "resnet50/tiny/ort-cpu/fp32/b1/server/c2"
    config = config_of(
        "--models", "resnet50", "--size", "tiny", "--engines", "ort-cpu", "--precisions", "fp32",
        "--scenario", "latency,single-stream,offline", "--concurrency", "1,2",
    )  # fmt: skip
    ids = [c.id for c in plan(config).cells]
    # Concurrency is an axis only where queries can overlap: one closed-loop and one single-stream cell.
    assert ids == [
        "resnet50/tiny/ort-cpu/fp32/b1",
        "resnet50/tiny/ort-cpu/fp32/b1/single-stream",
        "resnet50/tiny/ort-cpu/fp32/b1/offline",
        "resnet50/tiny/ort-cpu/fp32/b1/offline/c2",
    ]
    assert config.settings()["load"]["min_duration_s"] == 5.0
    assert "load" not in config_of("--models", "resnet50").settings()


def test_early_stopping_figures():
    assert early_stopping_minimum(99) == 459 and early_stopping_minimum(90) == 44
    # LoadGen's own early-stopping texts (from its logs): the count a repeated run needs, only when that is
    # all that was missing.
    multi = {
        "early_stopping_met": False,
        "result_min_duration_met": True,
        "early_stopping_result": " * Only processed 116 queries.  * Need to process at least 662 queries for early "
        "stopping.",
    }
    assert _needed_queries(multi) == 662
    server = {
        "early_stopping_met": False,
        "early_stopping_result": " * Run unsuccessful.  * Processed 190 queries.  * Would need to run at least 269 "
        "more queries,  with the run being successful if every additional  query were under latency.",
    }
    assert _needed_queries(server) == 459
    assert _needed_queries({**server, "result_perf_constraints_met": False}) is None


@pytest.fixture(scope="module")
def scenario_run(tmp_path_factory):
    """Tiny ResNet-50 at batch 1 and 2, FP32 and INT8, in the closed loop and LoadGen's single stream, server
    (peak search under a 100 ms bound at the 90th percentile: fewer queries per step than the 99th) and offline,
    on ort-cpu."""
    out = tmp_path_factory.mktemp("scenarios")
    argv = ["run", "--models", "resnet50", "--engines", "ort-cpu", "--precisions", "fp32,int8", "--batch-sizes", "1,2"]
    argv += ["--scenario", "latency,single-stream,server,offline", "--find-peak", "--latency-percentile", "90"]
    argv += [*LOADGEN, *TINY, "--out", str(out)]
    status = suite.main(argv)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return status, out, rows


def _summary_value(text: str, label: str) -> float:
    return float(re.search(rf"^{re.escape(label)}\s*:\s*([0-9.]+)", text, re.M).group(1))


def test_loadgen_cells_report_loadgens_own_numbers(scenario_run):
    status, out, rows = scenario_run
    assert status == 0
    assert len(rows) == 2 * 2 * 4 and {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]
    for row in rows:
        if row["scenario"] == "latency":
            assert row["loadgen_validity"] is None and row["loadgen_logs"] is None
            continue
        logs = out / row["loadgen_logs"]
        summary = (logs / "mlperf_log_summary.txt").read_text()
        # The row's logs are its last LoadGen run's; every run's stay in run-N/.
        assert (logs / f"run-{row['loadgen_runs']}" / "mlperf_log_summary.txt").read_text() == summary
        assert (logs / "mlperf_log_detail.txt").is_file() and (logs / "accuracy" / "mlperf_log_detail.txt").is_file()
        assert not list(logs.rglob("mlperf_log_trace.json")) and not list(logs.rglob("mlperf_log_accuracy.json"))
        assert row["loadgen_validity"] == re.search(r"Result is : (\w+)", summary).group(1)
        assert (row["loadgen_reason"] is None) == (row["loadgen_validity"] == "VALID")
        batch = row["batch_size"]
        if row["scenario"] == "single-stream":
            assert row["latency_ms_p90"] == pytest.approx(
                _summary_value(summary, "90.0th percentile latency (ns)") / 1e6
            )
            assert row["throughput_samples_per_s"] == pytest.approx(row["queries_per_s"] * batch)
        elif row["scenario"] == "offline":
            assert row["throughput_samples_per_s"] == pytest.approx(
                _summary_value(summary, "Samples per second") * batch
            )
            assert row["latency_ms_p99"] is None and row["loadgen_percentile"] is None
        else:
            # LoadGen's peak search, then the peak (or a rate below it) on its own run, which the row reports.
            assert "Mode     : FindPeakPerformance" in (logs / "run-1" / "mlperf_log_summary.txt").read_text()
            assert "Mode     : PerformanceOnly" in summary and row["loadgen_runs"] >= 2
            assert 0 < row["loadgen_target_qps"] <= row["loadgen_search_qps"] * 1.000001
            assert row["loadgen_latency_bound_ms"] == 100 and row["loadgen_target_qps"] > 0
            assert row["loadgen_percentile"] == 90 and row["loadgen_early_stopping"]
            if row["loadgen_validity"] == "VALID":
                assert row["loadgen_percentile_latency_ms"] <= 100
        # FLOP/s follow the scenario's own throughput.
        assert row["flops_per_s"] == pytest.approx(row["flops_per_batch"] * row["throughput_samples_per_s"] / batch)


def test_accuracy_through_loadgen_matches_the_closed_loop(scenario_run):
    """LoadGen's accuracy mode serves every sample once, in its own order and threads; the suite scores the
    outputs by sample index, so each scenario must score exactly what the closed loop scored."""
    _, _, rows = scenario_run
    closed = {(r["precision"], r["batch_size"]): r for r in rows if r["scenario"] == "latency"}
    for row in rows:
        twin = closed[(row["precision"], row["batch_size"])]
        assert (row["accuracy_metric"], row["accuracy_samples"]) == (twin["accuracy_metric"], twin["accuracy_samples"])
        assert row["accuracy_value"] == twin["accuracy_value"], row["cell_id"]
        if row["precision"] == "fp32":
            assert row["accuracy_value"] == 1.0


def test_report_relates_scenarios_and_draws_curves(scenario_run):
    _, out, _ = scenario_run
    report = (out / "report.md").read_text()
    assert "## Load scenarios (MLPerf LoadGen)" in report
    relation = report.split("### The closed loop against LoadGen's single stream")[1].split("##")[0]
    assert relation.count("| resnet50 | ort-cpu |") == 4
    # Two batch sizes per precision: a throughput-latency line for the closed loop, single stream and server.
    for scenario in ("latency", "single-stream", "server"):
        assert (out / f"curve-resnet50-tiny-ort-cpu-{scenario}.svg").stat().st_size > 0
    assert not (out / "curve-resnet50-tiny-ort-cpu-offline.svg").exists()
    assert "| scenario |" in (out / "summary.md").read_text()


def test_gpu_columns_are_empty_and_env_says_why_without_nvml(scenario_run):
    _, out, rows = scenario_run
    env = json.loads((out / "env.json").read_text())
    status = nvml_status()
    assert env["nvml"]["available"] == status["available"]
    if status["available"]:
        pytest.skip("NVML works here: the empty-column path is for machines without it")
    assert "gpu_memory_mib and the energy columns are empty" in env["nvml"]["reason"]
    assert all(r["gpu_memory_mib"] is None and r["energy_j_per_sample"] is None for r in rows)
    meter = GpuMeter()
    meter.start()
    assert meter.stop(100) == {"gpu_memory_mib": None, "energy_j_per_sample": None, "samples_per_j": None}


def test_multi_stream_and_concurrency(tmp_path):
    out = tmp_path / "multi"
    argv = ["run", "--models", "wide_deep", "--engines", "ort-cpu", "--precisions", "fp32", "--out", str(out)]
    argv += ["--scenario", "multi-stream", "--concurrency", "1,2", "--samples-per-query", "4", *LOADGEN, *TINY]
    assert suite.main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["concurrency"], r["status"]) for r in rows] == [(1, "ok"), (2, "ok")], [r["error"] for r in rows]
    for row in rows:
        # A multi-stream query is 4 batches: samples/s is four times the queries/s at batch 1.
        assert row["throughput_samples_per_s"] == pytest.approx(4 * row["queries_per_s"])
        assert row["loadgen_percentile"] == 99 and row["iterations"] >= 1
        detail = (out / row["loadgen_logs"] / "mlperf_log_detail.txt").read_text()
        assert '"key": "effective_samples_per_query", "value": 4' in detail


def test_a_latency_directory_from_before_scenarios_resumes_with_loadgen_cells(tmp_path):
    """Directories written before scenarios existed have no scenarios, concurrency or load settings in env.json
    and no scenario or concurrency in their rows; resuming one with a LoadGen scenario must keep its rows
    described, and read, as closed-loop rows."""
    out = tmp_path / "old"
    base = ["run", "--models", "ncf", "--engines", "ort-cpu", "--precisions", "fp32", "--out", str(out), *TINY]
    assert suite.main(base) == 0
    env_path = out / "env.json"
    env = json.loads(env_path.read_text())
    for key in ("scenarios", "concurrency"):
        env["settings"].pop(key)
    env_path.write_text(json.dumps(env))
    old = json.loads((out / "results.jsonl").read_text())
    del old["scenario"], old["concurrency"]
    (out / "results.jsonl").write_text(json.dumps(old) + "\n")
    assert suite.main([*base, "--resume", "--scenario", "offline", *LOADGEN]) == 0
    settings = json.loads(env_path.read_text())["settings"]
    assert settings["scenarios"] == ["latency", "offline"] and settings["concurrency"] == [1]
    assert settings["load"]["min_duration_s"] == 0.3
    assert "scenario" not in json.loads((out / "results.jsonl").read_text().splitlines()[0])
    rows = ResultsFile(out).rows()
    assert [(r["scenario"], r["concurrency"]) for r in rows] == [("latency", 1), ("offline", 1)]
    summary = (out / "summary.md").read_text()
    assert "| ncf | tiny | ort-cpu | fp32 | 1 | latency | ok |" in summary
    assert "| ncf | tiny | ort-cpu | fp32 | 1 | offline | ok |" in summary
    # The load settings are now the directory's: a resume with others is refused.
    again = [*base, "--resume", "--scenario", "offline", "--min-duration-s", "0.5", "--latency-bound-ms", "1"]
    assert suite.main(again) == 2


@pytest.mark.gpu
def test_gpu_cells_record_device_memory_and_energy(tmp_path):
    out = tmp_path / "gpu"
    argv = ["run", "--models", "resnet50", "--engines", "ort-cuda", "--precisions", "fp32", "--out", str(out)]
    assert suite.main([*argv, "--scenario", "latency,offline", *LOADGEN, *TINY]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    nvml = json.loads((out / "env.json").read_text())["nvml"]
    assert nvml["available"], nvml["reason"]
    counter = all(gpu["energy_counter"] for gpu in nvml["gpus"])
    for row in rows:
        assert row["status"] == "ok" and row["gpu_memory_mib"] > 0, row
        if counter:
            assert row["energy_j_per_sample"] > 0
            assert row["samples_per_j"] == pytest.approx(1 / row["energy_j_per_sample"])


def test_curves_keep_batch_and_concurrency_apart(tmp_path):
    from xml.etree import ElementTree

    from report.curves import curve_groups, plot_curves

    def row(precision, batch, concurrency, scenario="server"):
        return {
            "model": "m", "size": "full", "engine": "ort-cpu", "scenario": scenario, "status": "ok",
            "precision": precision, "batch_size": batch, "concurrency": concurrency,
            "latency_ms_p99": 10.0 * batch * concurrency, "throughput_samples_per_s": 100.0 * batch,
        }  # fmt: skip

    both = [row(p, b, c) for p in ("fp32", "int8") for b in (1, 2) for c in (1, 2)]
    only_threads = [row("int8", 1, c, "offline-like") for c in (1, 2, 4)]
    single = [row("fp32", 1, 1, "alone")]
    groups = curve_groups(both + only_threads + single)
    # Both axes vary: one line per precision and concurrency, each across batch sizes.
    lines = groups[("m", "full", "ort-cpu", "server")]
    assert sorted(lines) == ["fp32 c1", "fp32 c2", "int8 c1", "int8 c2"]
    assert [(p["batch_size"], p["concurrency"]) for p in lines["int8 c2"]] == [(1, 2), (2, 2)]
    # Only the concurrency varies: one line per precision across it. One point: no curve.
    assert [p["concurrency"] for p in groups[("m", "full", "ort-cpu", "offline-like")]["int8"]] == [1, 2, 4]
    assert ("m", "full", "ort-cpu", "alone") not in groups
    drawn = {key: path for key, path, _ in plot_curves(both + only_threads, tmp_path)}
    assert len(drawn) == 2
    # Well-formed SVG with one marker per row and one polyline per line.
    server = ElementTree.parse(drawn[("m", "full", "ort-cpu", "server")]).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert len([g for g in server.iter(f"{ns}g") if g.get("class") == "point"]) == len(both)
    assert len(list(server.iter(f"{ns}polyline"))) == 4
