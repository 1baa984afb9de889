"""Machine roofs, the activation byte model, the roofline plot, the report, run comparison and brought-in ONNX
models, on real ONNX Runtime sessions with small sizes (no timing thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import suite
from analysis.flops import count
from analysis.roofs import (
    PRESETS,
    PeakError,
    Roofs,
    describe,
    engine_threads,
    given_roofs,
    machine_key,
    measurement_note,
    parse_flops,
    parse_rate,
)
from bench.peak import MAX_PASSES, STABLE_TOLERANCE, measure_roofs, settle, stability
from bench.roofs_cache import cached_roofs, local_machine_key, save_roofs
from common.hashing import sha256_file
from onnx_models.store import ModelStore
from report.compare import CompareError, join
from report.roofline import DPI, FIG_SIZE_IN, plot
from report.run_report import accuracy_verdict, write_report

QUICK = ["--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3", "--accuracy-samples", "8"]


@pytest.fixture
def peak_cache(tmp_path, monkeypatch) -> Path:
    """A private roofs cache (inherited by the suite's child processes)."""
    monkeypatch.setenv("AIMATRIX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "peaks.json"


# --------------------------------------------------------------------------------------------------- peaks


def test_peaks_measured_through_the_engine(peak_cache):
    roofs = measure_roofs("ort-cpu", gemm_sizes=(16, 192), stream_bytes=2**20, duration_s=0.05)
    assert set(roofs.compute) == {"fp32", "fp16", "int8"}
    assert all(v > 0 for v in roofs.compute.values()) and roofs.bandwidth > 0
    for precision, (tiny, large) in roofs.details["gemm"].items():
        assert tiny["n"] == 16 and large["n"] == 192
        # A GEMM 1700x larger must not look orders of magnitude slower per operation than a tiny one.
        assert large["best"] > tiny["best"] / 100, precision
        assert roofs.compute[precision] == max(tiny["best"], large["best"])
    # Every point was timed in passes until two agreed (at most MAX_PASSES); its rate is the best of the agreeing
    # pair, or of all passes where none agreed, and the roofs say which points did not settle.
    points = {f"gemm {p} n={point['n']}": point for p, sweep in roofs.details["gemm"].items() for point in sweep}
    points["stream"] = roofs.details["stream"]
    for name, point in points.items():
        assert 2 <= len(point["passes"]) <= MAX_PASSES, name
        low, high = sorted(point["passes"][-2:])
        assert point["spread"] == pytest.approx(1 - low / high, abs=1e-4)
        assert point["agreed"] == (point["spread"] <= STABLE_TOLERANCE), name
        assert point["agreed"] or len(point["passes"]) == MAX_PASSES, name
        assert point["best"] == max(point["passes"][-2:] if point["agreed"] else point["passes"]), name
    assert roofs.bandwidth == points["stream"]["best"]
    unsettled = [name for name, point in points.items() if not point["agreed"]]
    stability = roofs.details["stability"]
    assert stability == "stable" if not unsettled else stability.startswith("unstable: "), stability
    assert all(f"{name}: passes" in stability for name in unsettled)
    assert roofs.details["max_passes"] == MAX_PASSES and roofs.details["tolerance"] == STABLE_TOLERANCE
    assert f"stability: {stability}" in describe(roofs)
    assert roofs.details["measured_at"] and f"Stability: {stability}." in measurement_note(roofs)
    # ONNX Runtime fuses the QDQ GEMM into one integer kernel: the INT8 roof is an integer kernel's.
    assert roofs.details["gemm"]["int8"][1]["kernels"] == ["QLinearMatMul"]
    assert roofs.details["stream"]["array_bytes"] == 2**20

    assert save_roofs(roofs) and peak_cache.is_file()
    key = local_machine_key("ort-cpu")
    assert cached_roofs(key).compute == roofs.compute
    # A quick measurement never replaces a full one.
    quick = Roofs({"fp32": 1.0}, 1.0, "measured (quick)", {"machine": key, "quick": True})
    assert not save_roofs(quick)
    assert cached_roofs(key).compute == roofs.compute
    assert cached_roofs({**key, "threads": key["threads"] + 7}) is None


def test_a_roof_point_is_timed_until_two_passes_agree():
    """Passes go on until two consecutive ones agree within the tolerance; the rate is the best of that pair (a
    slow first pass, the machine busy, does not count), and a point that never settles keeps its best pass and
    says so."""

    def scripted(*rates):
        def one_pass(index):
            return {"best": rates[index], "median": rates[index] / 2, "iterations": index}

        return one_pass

    settled = settle(scripted(60.0, 100.0, 95.0), max_passes=3, tol=0.10)
    assert settled["passes"] == [60.0, 100.0, 95.0] and settled["agreed"] and settled["best"] == 100.0
    assert settled["spread"] == pytest.approx(0.05) and settled["iterations"] == 1
    # Two agreeing passes are enough.
    assert settle(scripted(100.0, 92.0, 1.0), max_passes=3, tol=0.10)["passes"] == [100.0, 92.0]
    # The busy pass came first and last: no pair agreed, the best of all passes is kept, and it is unstable.
    unsettled = settle(scripted(100.0, 60.0, 80.0), max_passes=3, tol=0.10)
    assert unsettled["passes"] == [100.0, 60.0, 80.0] and not unsettled["agreed"] and unsettled["best"] == 100.0
    assert unsettled["spread"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        settle(scripted(1.0), max_passes=1)
    stream = {**settled, "array_bytes": 8}
    assert stability({"fp32": [{"n": 64, **settled}]}, stream) == "stable"
    text = stability({"fp32": [{"n": 64, **settled}], "int8": [{"n": 128, **unsettled}]}, stream)
    assert text == "unstable: gemm int8 n=128: passes 100, 60, 80 OP/s (last two 25% apart)"


def test_given_roofs_and_presets(tmp_path):
    assert parse_rate("14T") == 14e12 and parse_rate("900G") == 900e9 and parse_rate("1.5e3") == 1500
    assert parse_flops("14T") == {"fp32": 14e12}
    assert parse_flops("fp32=1T,int8=4T") == {"fp32": 1e12, "int8": 4e12}
    assert given_roofs() is None
    v100 = given_roofs("v100")
    assert v100.compute["fp32"] == 14e12 and v100.bandwidth == 900e9 and "Figure 1" in v100.source
    # Given values override the preset's, and only those.
    mixed = given_roofs("v100", peak_bw="1T")
    assert mixed.bandwidth == 1e12 and mixed.compute == PRESETS["v100"].compute
    assert PRESETS["v100"].bandwidth == 900e9  # the preset itself is untouched
    path = tmp_path / "roofs.json"
    path.write_text(json.dumps(Roofs({"int8": 5e12}, 2e11, "machine B").to_json()))
    assert given_roofs(str(path)).compute == {"int8": 5e12}
    for bad in ({"preset": "v99"}, {"peak_flops": "fast"}, {"peak_flops": "fp64=1T"}, {"peak_bw": "-3G"}):
        with pytest.raises(PeakError):
            given_roofs(**bad)
    roofs = Roofs({"fp32": 1e11}, 1e10, "test")
    assert roofs.attainable("fp32", 2.0) == 2e10 and roofs.bound("fp32", 2.0) == "memory"
    assert roofs.attainable("fp32", 100.0) == 1e11 and roofs.bound("fp32", 100.0) == "compute"
    assert roofs.attainable("int8", 100.0) is None


def test_peak_command_prints_given_roofs(capsys):
    assert suite.main(["peak", "--preset", "v100"]) == 0
    assert "fp32 14 TFLOP/s" in capsys.readouterr().out
    assert suite.main(["peak", "--peak-flops", "nonsense"]) == 2


# ----------------------------------------------------------------------------------------------- byte model


def conv_relu_gemm(path: Path, height: int | str = 16, batch: int | str = "N") -> Path:
    """Conv(3->8, 3x3, pad 1) + Relu + GlobalAveragePool + Flatten + Gemm(8->10), float32."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    weights = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fw"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fb"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_relu_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, height, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_activation_bytes_write_and_read_every_intermediate(tmp_path):
    cost = count(onnx.load(str(conv_relu_gemm(tmp_path / "m.onnx"))), 2)
    # Intermediates at batch 2: c and r (2x8x16x16 floats each), p (2x8x1x1) and f (2x8), each written once
    # and read once; y is a graph output (io_bytes), so not an activation.
    assert cost.activation_bytes == 2 * 4 * (2 * 8 * 16 * 16 * 2 + 2 * 8 * 2)
    assert cost.io_bytes == 4 * (2 * 3 * 16 * 16 + 2 * 10)
    assert cost.bytes_with_activations == cost.weight_bytes + cost.io_bytes + cost.activation_bytes


# --------------------------------------------------------------------------------------- synthetic results


# Five timing rounds with a little drift that falls on every precision of a model alike (as interleaved rounds
# measure it): speed-ups from paired rounds are then exact ratios, their intervals zero wide.
DRIFT = (0.99, 1.0, 1.01, 1.0, 0.995)


def _row(model, precision, p50, **extra):
    """A closed-loop row of ``model`` at batch 8 on ort-cpu, timed in five rounds paired with the other
    precisions of the model (``rounds_group``); ``extra`` sets or overrides columns."""
    row = {
        "model": model,
        "size": "full",
        "engine": "ort-cpu",
        "precision": precision,
        "batch_size": 8,
        "scenario": "latency",
        "concurrency": 1,
        "status": "ok",
        "error": None,
        "latency_ms_p50": p50,
        "latency_ms_mean": p50,
        "latency_ms_p99": p50 * 1.1 if p50 else None,
        "throughput_samples_per_s": 8 / (p50 / 1e3) if p50 else None,
        "flops_per_batch": 1e9,
        "flops_per_s": 1e9 / (p50 / 1e3) if p50 else None,
        "bytes_per_batch": 1e7,
        "bytes_model": "weights+inputs+outputs",
        "arith_intensity": 100.0,
        "accuracy_metric": "top1_agreement",
        "accuracy_value": 1.0,
        "accuracy_cosine": 1.0,
        "accuracy_max_abs_error": 0.0,
        "engine_settings": json.dumps({"intra_op_threads": 2}),
        "rounds": len(DRIFT) if p50 else None,
        "round_p50_ms": json.dumps([p50 * d for d in DRIFT]) if p50 else None,
        "rounds_group": f"{model}-b8" if p50 else None,
    }
    row["cell_id"] = f"{model}/full/ort-cpu/{precision}/b8"
    row.update(extra)
    return row


def _write_run(directory: Path, rows: list[dict], cpu: str = "Test CPU", ort: str = "1.32.0") -> Path:
    directory.mkdir(parents=True)
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {
        "python": "3.11.7",
        "cpu": {"model": cpu, "logical_cores": 2, "physical_cores": 2, "flags": ["avx2"], "memory_gib": 24},
        "packages": {"onnxruntime": ort, "numpy": "2.4"},
        "onnxruntime_providers": ["CPUExecutionProvider"],
        "settings": {"engine_options": {}},
    }
    (directory / "env.json").write_text(json.dumps(env))
    return directory


def synthetic_rows() -> list[dict]:
    return [
        _row("resnet50", "fp32", 100.0, paper_flops_per_sample=6.69e9, flops_ratio_to_paper=1.23),
        _row("resnet50", "fp16", 100.0, accuracy_value=0.995),
        _row("resnet50", "int8", 25.0, accuracy_value=0.90, accuracy_cosine=0.999),
        _row("wide_deep", "fp32", 2.0, arith_intensity=1.0, accuracy_metric="max_abs_error", accuracy_value=0.0),
        _row(
            "wide_deep",
            "int8",
            1.0,
            arith_intensity=1.0,
            accuracy_metric="max_abs_error",
            accuracy_value=0.06,
            accuracy_cosine=0.95,
        ),
        _row("wide_deep", "fp16", None, status="failed", error="engine crashed"),
    ]


def test_roofline_png_is_a_valid_image_of_the_expected_size(tmp_path):
    roofs = Roofs({"fp32": 1e11, "fp16": 1e11, "int8": 4e11}, 2e10, "test roofs")
    png, svg = plot(synthetic_rows(), roofs, tmp_path, "ort-cpu")
    assert png.name == "roofline-ort-cpu.png" and svg.name == "roofline-ort-cpu.svg"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (round(FIG_SIZE_IN[0] * DPI), round(FIG_SIZE_IN[1] * DPI))
        # Not a blank canvas: the roofs and points put several colours on it.
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 10
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


def test_accuracy_verdicts():
    """A cell's accuracy is judged on its interval where the weights are real (a checkpoint, a brought-in file,
    labels) and is drift, never pass or FAIL, on random weights."""
    real = {"weights": "checkpoint"}
    assert accuracy_verdict(_row("m", "int8", 1.0, accuracy_value=0.99, **real), 0.99)[0] == "pass"
    assert accuracy_verdict(_row("m", "int8", 1.0, accuracy_value=0.98, **real), 0.99)[0] == "FAIL"
    reaching = _row("m", "int8", 1.0, accuracy_value=0.995, accuracy_value_lo=0.95, accuracy_value_hi=1.0, **real)
    assert accuracy_verdict(reaching, 0.99) == ("undecided", "FP32 (top1_agreement), real weights")
    error_metric = _row("m", "int8", 1.0, accuracy_metric="max_abs_error", accuracy_value=5.0, **real)
    assert accuracy_verdict(error_metric, 0.99) == ("pass", "FP32 (cosine), real weights")
    assert accuracy_verdict({**error_metric, "accuracy_cosine": 0.9}, 0.99)[0] == "FAIL"
    random = _row("m", "int8", 1.0, accuracy_value=0.5)
    assert accuracy_verdict(random, 0.99) == ("drift", "FP32 (top1_agreement), random weights")
    assert accuracy_verdict({**random, "label_ratio": 0.5, "label_metric": "auc"}, 0.99) == ("FAIL", "labels (auc)")


def test_report_says_how_many_samples_would_decide_an_undecided_accuracy(tmp_path):
    """With real weights and 8 samples, 7 agreeing give a Wilson interval of [0.53, 0.98]: below 0.99, a fail;
    8 of 8 give [0.68, 1]: it reaches 0.99, undecided, and the verdict says how many samples would decide it."""
    from analysis.intervals import proportion_interval
    from analysis.roofs import Roofs
    from report.run_report import write_report

    lo, hi = proportion_interval(8, 8)
    rows = [
        _row("bert", "fp32", 9.0, weights="checkpoint"),
        _row("bert", "int8", 3.0, weights="checkpoint", accuracy_samples=8, accuracy_value_lo=lo, accuracy_value_hi=hi),
    ]
    _write_run(tmp_path / "run", rows)
    markdown, _ = write_report(tmp_path / "run", 0.99, Roofs({"fp32": 1e11, "int8": 4e11}, 1e10, "test roofs"))
    answer = markdown.read_text().split("## Which precision to deploy")[1].split("## Speed-up")[0]
    assert "| bert | undecided |" in answer
    assert "undecided, 8 samples are too few; about 381 would decide it (--accuracy-samples)" in answer


def test_report_has_every_cell_speedups_verdicts_and_roof_percentages(tmp_path, peak_cache):
    run = _write_run(tmp_path / "run", synthetic_rows())
    md, page = write_report(run, 0.99, Roofs({"fp32": 2e10, "int8": 8e10}, 1e10, "test roofs"))
    text = md.read_text()
    for row in synthetic_rows():
        assert f"| {row['model']} | full | ort-cpu | {row['precision']} | 8 | latency | {row['status']} |" in text
    # Closed-loop rows timed in paired rounds: speed-ups with their intervals (exact here: the drift is common).
    assert (
        "| resnet50 | full | ort-cpu | 8 | latency | 100 | 80 | 100 | 80 | 1.00x [1.00, 1.00] | 25 | 320 | "
        "4.00x [4.00, 4.00] |" in text
    )
    assert (
        "| wide_deep | full | ort-cpu | 8 | latency | 2 | 4,000 |  |  | failed | 1 | 8,000 | 2.00x [2.00, 2.00] |"
        in text
    )
    # Random weights: agreement is drift, never a pass or a FAIL.
    random = "FP32 (top1_agreement), random weights | drift |"
    assert f"| resnet50 | ort-cpu | fp16 | 8 | latency | top1_agreement | 0.995 |  | 1 | 0 | {random}" in text
    assert f"| resnet50 | ort-cpu | int8 | 8 | latency | top1_agreement | 0.9 |  | 0.999 | 0 | {random}" in text
    assert (
        "| wide_deep | ort-cpu | int8 | 8 | latency | max_abs_error | 0.06 |  | 0.95 | 0 | "
        "FP32 (cosine), random weights | drift |" in text
    )
    # resnet50 fp32: 1e10 FLOP/s at intensity 100 under a 2e10 compute roof; wide_deep fp32: 5e11 FLOP/s
    # is above its memory roof (1e10 B/s x 1 FLOP/B), i.e. 5000%: the table shows what was measured, marked.
    assert "| 1 | resnet50 | fp32 | 8 | 100 | 10 GFLOP/s | 20 GFLOP/s | 50.0% | compute |" in text
    assert "| 1 | resnet50 | int8 | 8 | 100 | 40 GOP/s | 80 GOP/s | 50.0% | compute |" in text
    assert "| 1 | resnet50 | fp16 | 8 | 100 | 10 GFLOP/s |  |  |  |" in text  # no fp16 roof given
    assert "| 2 | wide_deep | fp32 | 8 | 1 | 500 GFLOP/s | 10 GFLOP/s | 5000.0% | memory, above roof |" in text
    # The paper's Table I: ResNet50 at its batch 32 took 29 ms per batch on the V100 (7.33e12 FLOP/s).
    assert "| resnet50 | ort-cpu | 8 | 125 M | 6.69 G | 1.23 | 32 | 29 |  | 7.33 T | 10 G |" in text
    assert "![roofline of ort-cpu](roofline-ort-cpu.png)" in text and (run / "roofline-ort-cpu.png").is_file()
    # The answer first: INT8 is 4x (resnet50) and 2x (wide_deep) faster, but on random weights its accuracy is
    # not judged: undecided, saying what would decide it; FP16 has no measurable gain.
    assert text.index("## Which precision to deploy") < text.index("## Speed-up over FP32")
    assert (
        "| 1 | resnet50 | undecided |  |  |  | 1.00x [1.00, 1.00], 0.995 no gain, unjudged | "
        "4.00x [4.00, 4.00], 0.9 unjudged | fp16 has no measurable gain" in text
    )
    assert "| 2 | wide_deep | undecided |  |  |  |  | 2.00x [2.00, 2.00], 0.95 unjudged | int8 is faster" in text
    assert "needs labels (a trained counterpart, --weights or a real model)" in text
    assert "Random weights: resnet50, wide_deep ran with random weights" in text
    assert "![ort-cpu: speed-up over FP32 against accuracy retained](answer-ort-cpu.svg)" in text
    chart = (run / "answer-ort-cpu.svg").read_text()
    assert chart.count('class="point fail"') == 0 and chart.count('class="err speed"') == 3
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 1 and 'src="roofline' not in html
    assert html.count("<tr>") > len(synthetic_rows()) and "Test CPU" in html
    # The run was not made on this machine and nothing is cached for it: no roofs, said so, no measurement.
    md, _ = write_report(run)
    assert "No roofs for this engine's machine" in md.read_text() and not peak_cache.exists()


def _this_machines_run(directory: Path) -> tuple[Path, dict]:
    """A run directory of synthetic rows whose env.json is this machine's."""
    from bench.env import environment

    run = _write_run(directory, synthetic_rows())
    env = environment({"engine_options": {}})
    (run / "env.json").write_text(json.dumps(env))
    return run, env


def test_report_of_this_machines_run_measures_nothing(tmp_path, peak_cache, monkeypatch):
    """A report reads cached roofs and never launches a measurement, even for a run made here (it used to
    measure quick roofs itself, on whatever the machine was doing at the time)."""
    import bench.isolation
    import bench.peak

    def no_measuring(*args, **kwargs):
        raise AssertionError("the report measured")

    monkeypatch.setattr(bench.isolation, "run_isolated", no_measuring)
    monkeypatch.setattr(bench.peak, "measure_roofs", no_measuring)
    run, _ = _this_machines_run(tmp_path / "run")
    md, _ = write_report(run)
    assert "No roofs for this engine's machine" in md.read_text() and not peak_cache.exists()


def test_run_measures_missing_roofs_after_its_cells(tmp_path, peak_cache):
    """The run, not its report, measures (quick) and caches the roofs of each engine it timed when none are
    cached for this machine and thread count; cached ones are not measured again."""
    from bench.runner import _measure_roofs

    run, env = _this_machines_run(tmp_path / "run")
    rows = synthetic_rows()

    class Recorder:
        def __init__(self):
            self.calls = []

        def node_environments(self):
            return {}

        def roofs(self, engine, threads):
            self.calls.append((engine, threads))
            # Above every synthetic cell: the second run finds nothing to measure again.
            save_roofs(Roofs({"fp32": 1e12}, 1e12, "test", {"machine": machine_key(env, engine, threads)}))

    recorder = Recorder()
    _measure_roofs(recorder, rows, env)
    threads = engine_threads(rows, "ort-cpu", env)
    assert recorder.calls == [("ort-cpu", threads)]
    _measure_roofs(recorder, rows, env)
    assert len(recorder.calls) == 1
    md, _ = write_report(run)
    assert "Roofs: test." in md.read_text()


class RoofsRecorder:
    """An executor that records the roofs it is asked for and caches quick ones of ``fp32`` (FLOP/s) and
    ``bandwidth``, as ``LocalExecutor.roofs`` would through ``bench.peak.measure_and_cache``."""

    def __init__(self, env, fp32=1e11, bandwidth=1e12, nodes=None):
        self.env, self.fp32, self.bandwidth, self.nodes, self.calls = env, fp32, bandwidth, nodes or {}, []

    def node_environments(self):
        return self.nodes

    def roofs(self, engine, threads, replace=None):
        self.calls.append((engine, threads, replace))
        details = {"machine": machine_key(self.env, engine, threads), "quick": True, "measured_at": "later"}
        if replace:
            details["replaced_because"] = replace
        save_roofs(Roofs({"fp32": self.fp32}, self.bandwidth, "measured (quick)", details), replace=bool(replace))


def test_run_measures_again_cached_roofs_its_cells_went_above(tmp_path, peak_cache, capsys):
    """Roofs measured under load stay too low for every later report: a run whose cells go above the cached roofs
    measures them again (quick) and replaces them, even a full measurement, and says so; roofs the cells stay
    under are left alone, and a cluster's cells (other machines) judge nothing here."""
    from bench.runner import _measure_roofs

    run, env = _this_machines_run(tmp_path / "run")
    rows = synthetic_rows()
    threads = engine_threads(rows, "ort-cpu", env)
    key = machine_key(env, "ort-cpu", threads)
    # resnet50 fp32 achieved 1e10 FLOP/s, wide_deep fp32 5e11: a full measurement under load gave 5e9.
    loaded = {"machine": key, "quick": False, "measured_at": "2025-01-02T03:04:05+0000", "stability": "stable"}
    save_roofs(Roofs({"fp32": 5e9}, 1e12, "measured", loaded))

    cluster = RoofsRecorder(env, nodes={"node-1": env})
    _measure_roofs(cluster, rows, env)
    assert cluster.calls == [] and cached_roofs(key).compute == {"fp32": 5e9}

    recorder = RoofsRecorder(env, fp32=1e12)
    _measure_roofs(recorder, rows, env)
    ((engine, called_threads, reason),) = recorder.calls
    assert (engine, called_threads) == ("ort-cpu", threads)
    assert reason == "2 cell(s) of a run went above them (wide_deep/full/ort-cpu/fp32/b8 at 10000%)"
    err = capsys.readouterr().err
    assert "ort-cpu roofs measured 2025-01-02T03:04:05+0000 (measured) are below what this run achieved" in err
    assert "measuring them again (quick) to replace them" in err and "still above" not in err
    # The quick measurement replaced the full one, and remembers what it replaced.
    replaced = cached_roofs(key)
    assert replaced.compute == {"fp32": 1e12} and replaced.details["quick"]
    assert replaced.details["replaced"]["measured_at"] == "2025-01-02T03:04:05+0000"
    assert replaced.details["replaced"]["compute"] == {"fp32": 5e9}
    # The new roofs are above every cell: nothing is measured again.
    _measure_roofs(recorder, rows, env)
    assert len(recorder.calls) == 1
    # A margin: a cell 3% above its roof is within what a model's kernels may beat a quick GEMM by.
    save_roofs(Roofs({"fp32": 5e11 / 1.03}, 1e12, "measured", loaded), replace=True)
    _measure_roofs(recorder, rows, env)
    assert len(recorder.calls) == 1
    text = write_report(run)[0].read_text()
    assert "Roofs: measured. Measured 2025-01-02T03:04:05+0000: full" in text and "Stability: stable." in text
    assert "| 2 | wide_deep | fp32 | 8 | 1 | 500 GFLOP/s | 485 GFLOP/s | 103.0% | compute, above roof |" in text
    # Measured again and still below a cell: the run says that the measurement is not the likely cause.
    save_roofs(Roofs({"fp32": 5e9}, 1e12, "measured", loaded), replace=True)
    _measure_roofs(RoofsRecorder(env, fp32=2e10), rows, env)
    assert "1 ort-cpu cell(s) are still above the measured-again roofs (wide_deep/full/ort-cpu/fp32/b8 at 2500%)" in (
        capsys.readouterr().err
    )


def test_measure_and_cache_replaces_on_purpose(peak_cache, monkeypatch):
    """A quick measurement never replaces a full one, unless the run says why the full one is wrong."""
    import bench.peak

    key = local_machine_key("ort-cpu")
    save_roofs(Roofs({"fp32": 5e9}, 1e9, "measured", {"machine": key, "quick": False, "measured_at": "then"}))

    def quick(engine, threads, quick):
        return Roofs({"fp32": 2e11}, 3e10, "measured (quick)", {"machine": key, "quick": quick, "measured_at": "now"})

    monkeypatch.setattr(bench.peak, "measure_roofs", quick)
    bench.peak.measure_and_cache("ort-cpu", None, quick=True)
    assert cached_roofs(key).compute == {"fp32": 5e9}
    bench.peak.measure_and_cache("ort-cpu", None, quick=True, replace="a cell at 173%")
    roofs = cached_roofs(key)
    assert roofs.compute == {"fp32": 2e11} and roofs.details["replaced_because"] == "a cell at 173%"
    assert roofs.details["replaced"] == {
        "source": "measured",
        "measured_at": "then",
        "compute": {"fp32": 5e9},
        "bandwidth": 1e9,
    }
    assert measurement_note(roofs).endswith(
        "Measured again because a cell at 173%; they replaced roofs measured then (measured)."
    )


def test_report_flags_cells_above_their_roof_and_says_how_the_roofs_were_measured(tmp_path):
    """A cell above 100% of its roof is marked in the roof table, explained under it with the command that
    measures again, and edged in red in the chart; the report says when, how and how stably the roofs were
    measured."""
    rows = [_row("resnet50", "fp32", 100.0), _row("googlenet", "fp32", 10.0)]  # 1e10 and 1e11 FLOP/s
    run = _write_run(tmp_path / "run", rows)
    unstable = "unstable: gemm fp32 n=512: passes 1.2e+11, 6e+10, 9e+10 FLOP/s (last two 33% apart)"
    details = {
        "measured_at": "2025-01-02T03:04:05+0000",
        "quick": True,
        "duration_s_per_point": 0.25,
        "max_passes": 3,
        "tolerance": 0.1,
        "stability": unstable,
        "gemm": {"fp32": [{"n": 128}, {"n": 256}, {"n": 512}]},
    }
    text = write_report(run, 0.99, Roofs({"fp32": 5e10}, 1e12, "measured (quick)", details))[0].read_text()
    assert (
        "Roofs: measured (quick). Measured 2025-01-02T03:04:05+0000: quick, 3 GEMM sizes per precision and a stream, "
        "0.25 s passes, up to 3 passes per point until two agree within 10%. Stability: " + unstable + "."
    ) in text
    assert "| 1 | resnet50 | fp32 | 8 | 100 | 10 GFLOP/s | 50 GFLOP/s | 20.0% | compute |" in text
    assert "| 2 | googlenet | fp32 | 8 | 100 | 100 GFLOP/s | 50 GFLOP/s | 200.0% | compute, above roof |" in text
    assert "1 cell(s) above 100% of their roof" in text and "`python suite.py peak --engine ort-cpu`" in text
    assert 'class="fail">compute, above roof<' in (run / "report.html").read_text()
    svg = (run / "roofline-ort-cpu.svg").read_text()
    assert svg.count("stroke: #b0001e") == 1 and "red edge: 1 point(s) above their roof" in svg
    # Without a cell above its roof, no mark and no sentence; roofs cached before passes say stability is unknown.
    text = write_report(run, 0.99, Roofs({"fp32": 5e11}, 1e12, "measured", {"measured_at": "then"}))[0].read_text()
    assert "above roof" not in text and "Stability: not checked" in text
    assert "stroke: #b0001e" not in (run / "roofline-ort-cpu.svg").read_text()


def test_report_command_rejects_bad_input(tmp_path):
    assert suite.main(["report", str(tmp_path)]) == 2
    run = _write_run(tmp_path / "run", synthetic_rows())
    assert suite.main(["report", str(run), "--threshold", "99"]) == 2
    assert suite.main(["report", str(run), "--peaks", "v100", "--threshold", "0.95"]) == 0
    assert "preset v100" in (run / "report.md").read_text()


# ------------------------------------------------------------------------------------------------ compare


def test_compare_gives_known_ratios(tmp_path, capsys):
    a = _write_run(tmp_path / "a", [_row("resnet50", "fp32", 10.0), _row("bert", "int8", 40.0)], cpu="CPU A")
    b_rows = [_row("resnet50", "fp32", 5.0), _row("bert", "int8", 80.0), _row("bert", "fp32", 90.0)]
    b = _write_run(tmp_path / "b", b_rows, cpu="CPU B", ort="1.20.0")
    out = tmp_path / "cmp"
    assert suite.main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| cpu | CPU A | CPU B |" in printed and "| onnxruntime | 1.32.0 | 1.20.0 |" in printed
    frame = pl.read_csv(out / "compare.csv")
    resnet = frame.filter(pl.col("model") == "resnet50").row(0, named=True)
    assert resnet["B/A p50 ms"] == pytest.approx(0.5)
    assert resnet["B/A samples/s"] == pytest.approx(2.0)
    assert resnet["B/A FLOP/s"] == pytest.approx(2.0)
    bert = frame.filter((pl.col("model") == "bert") & (pl.col("precision") == "int8")).row(0, named=True)
    assert bert["B/A p50 ms"] == pytest.approx(2.0) and bert["B/A FLOP/s"] == pytest.approx(0.5)
    only_b = frame.filter((pl.col("model") == "bert") & (pl.col("precision") == "fp32")).row(0, named=True)
    assert only_b["status"] == "absent / ok" and only_b["B/A p50 ms"] is None
    assert (out / "compare.md").read_text() == printed.rstrip("\n") + "\n"


def test_compare_across_engines(tmp_path):
    rows_a = [_row("resnet50", "fp32", 10.0)]
    rows_b = [_row("resnet50", "fp32", 2.0, engine="tensorrt")]
    assert join([rows_a, rows_b])[0]["status"] == "ok / absent"
    joined = join([rows_a, rows_b], ignore_engine=True)
    assert len(joined) == 1 and joined[0]["engine"] == "ort-cpu / tensorrt"
    assert joined[0]["B/A p50 ms"] == pytest.approx(0.2)
    a = _write_run(tmp_path / "a", rows_a)
    assert suite.main(["compare", str(a)]) == 2
    assert suite.main(["compare", str(a), str(tmp_path / "missing")]) == 2


def test_compare_bad_out_and_repeated_cells(tmp_path, capsys):
    a = _write_run(tmp_path / "a", [_row("resnet50", "fp32", 10.0)])
    b = _write_run(tmp_path / "b", [_row("resnet50", "fp32", 7.0, status="failed"), _row("resnet50", "fp32", 5.0)])
    (tmp_path / "file").write_text("")
    assert suite.main(["compare", str(a), str(b), "--out", str(tmp_path / "file")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: --out {tmp_path / 'file'} is a file; name a directory for compare.md and compare.csv"
    )
    # A cell measured twice in one run (retried) is one cell, the later row, not "cells of several engines":
    # the run's reader gives the current row of each cell.
    assert suite.main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    (record,) = pl.read_csv(tmp_path / "cmp" / "compare.csv").to_dicts()
    assert record["B/A p50 ms"] == pytest.approx(0.5) and record["status"] == "ok / ok"
    with pytest.raises(CompareError, match="several engines"):
        join([[_row("resnet50", "fp32", 1.0), _row("resnet50", "fp32", 2.0, engine="tensorrt")]], ignore_engine=True)


# ------------------------------------------------------------------------------------- bring your own model


@pytest.fixture
def cached_peaks(peak_cache):
    """Roofs cached for this machine, so that reports at the end of runs do not measure them."""
    save_roofs(
        Roofs({"fp32": 1e11, "fp16": 1e11, "int8": 4e11}, 2e10, "test", {"machine": local_machine_key("ort-cpu")})
    )


def test_byo_model_runs_every_precision(tmp_path, cached_peaks):
    model = conv_relu_gemm(tmp_path / "small.onnx")
    out = tmp_path / "run"
    assert suite.main(["run", "--onnx", str(model), "--batch-sizes", "2", "--out", str(out), *QUICK]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["model"], r["precision"], r["status"]) for r in rows] == [
        ("byo/small", "fp32", "ok"),
        ("byo/small", "fp16", "ok"),
        ("byo/small", "int8", "ok"),
    ], [r["error"] for r in rows]
    for row in rows:
        assert row["framework"] == "onnx" and row["accuracy_metric"] == "cosine_similarity"
        assert row["accuracy_value"] == row["accuracy_cosine"] > 0.9
        # Conv 2*(2*8*16*16)*27 + bias, Relu, GAP, Gemm 2*2*8*10 + bias: the FLOP counter ran on the file.
        assert row["mac_flops_per_batch"] == 2 * 2 * 8 * 16 * 16 * 27 + 2 * 2 * 8 * 10
    store = ModelStore("byo/small", "full")
    assert store.entry("fp32")["sha256"] == sha256_file(model)  # copied as it is, not exported
    assert json.loads((store.dir.parent / "spec.json").read_text())["inputs"][0]["shape"] == ["batch", 3, 16, 16]
    assert (out / "report.html").is_file() and (out / "roofline-ort-cpu.png").is_file()


def test_byo_conversion_failure_is_unsupported(tmp_path, cached_peaks):
    # The second column is 1e6 times smaller than the first: INT8's per-tensor activation scale rounds it to
    # zero, and its reciprocal becomes infinite, so the INT8 artifact fails its check. FP32 is finite.
    weight = np.stack([np.full(16, 100.0), np.full(16, 1e-4)], axis=1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Reciprocal", ["m"], ["y"])],
        "recip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "recip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    out = tmp_path / "run"
    args = ["run", "--onnx", str(path), "--precisions", "fp32,int8", "--batch-sizes", "2", "--out", str(out)]
    assert suite.main([*args, *QUICK]) == 0
    rows = {r["precision"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["fp32"]["status"] == "ok"
    assert rows["int8"]["status"] == "unsupported"
    assert rows["int8"]["error"] == "byo/recip cannot be converted to int8: output y has NaN or infinite values"


def test_byo_unresolved_dynamic_dimension_is_one_clear_error(tmp_path, capsys):
    model = conv_relu_gemm(tmp_path / "dyn.onnx", height="height")
    assert suite.main(["run", "--onnx", str(model), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "error: dyn.onnx: dynamic dimensions without a size: x dimension 2 (height); give those inputs' full "
        "shapes with --input-shapes x:1x3x?x16 (each ? a size; the batch's is replaced by each batch size)"
    )
    assert not (tmp_path / "run").exists()
    assert suite.main(["run", "--onnx", str(model), "--input-shapes", "x:1x3x9", "--out", str(tmp_path / "r")]) == 2
    assert "rank 3, the model has rank 4" in capsys.readouterr().err


def test_byo_fixed_batch_runs_only_that_batch(tmp_path, capsys):
    model = conv_relu_gemm(tmp_path / "fixed.onnx", batch=1)
    assert suite.main(["run", "--onnx", str(model), "--batch-sizes", "4", "--out", str(tmp_path / "run")]) == 2
    assert "fixed batch dimension of 1: use --batch-sizes 1" in capsys.readouterr().err


def test_report_says_when_int8_ran_on_saturating_kernels():
    from report.run_report import kernel_note

    cpu = {"isa": "avx2", "int8_saturates": True}
    full = [_row("resnet50", "int8", 25.0, int8_weight_bits=8), _row("bert", "int8", 9.0, int8_weight_bits=7)]
    note = kernel_note(full, {"cpu": cpu})
    assert note.startswith("Warning: resnet50 ran INT8 with 8-bit weights on avx2") and "bert" not in note
    assert "7-bit weights" in kernel_note(full[1:], {"cpu": cpu})
    exact = kernel_note(full, {"cpu": {"isa": "avx512-vnni", "int8_saturates": False}})
    assert exact.startswith("INT8 on the CPU ran on avx512-vnni integer kernels, whose 8-bit dot products are exact")
    # No INT8 on the CPU (or a run from before the ISA was recorded): nothing to say.
    assert kernel_note([_row("resnet50", "fp32", 9.0)], {"cpu": cpu}) is None
    assert kernel_note(full, {"cpu": {}}) is None
