"""Verdicts the evidence carries (issue 33): a precision is faster only where its speed-up's interval clears the
minimum gain, passes or fails only on real weights' evidence and its interval, random weights borrow a trained
counterpart's labels or stay unjudged, and an unstable timing is named."""

from __future__ import annotations

import json

import pytest

from analysis.verdict import MIN_SPEEDUP, judgement, points, speedup_interval, verdicts, weights_of
from tests.test_roofline_report import _row

STAND_INS = {"resnet50": "resnet50_mnist"}


def paired(model: str, precision: str, rounds: list[float], **extra) -> dict:
    """A row whose rounds' p50s are ``rounds`` (paired with its model's other rows by ``rounds_group``)."""
    p50 = sorted(rounds)[len(rounds) // 2]
    return _row(model, precision, p50, round_p50_ms=json.dumps(rounds), rounds=len(rounds), **extra)


def labelled(ratio: float, lo: float, hi: float) -> dict:
    return {
        "weights": "trained",
        "label_ratio": ratio,
        "label_ratio_lo": lo,
        "label_ratio_hi": hi,
        "label_metric": "top1",
    }


def verdict_of(rows, threshold=0.99):
    (found,) = [v for v in verdicts(points(rows, threshold, STAND_INS), threshold) if v.model == rows[0]["model"]]
    return found


FP32 = [10.0, 11.0, 10.5, 12.0, 10.2]
QUARTER = [v / 4 for v in FP32]


def test_speed_up_interval_from_paired_rounds():
    fp32, int8 = paired("m", "fp32", FP32), paired("m", "int8", QUARTER)
    ratio, lo, hi = speedup_interval(int8, fp32)
    assert ratio == pytest.approx(4.0) and lo == pytest.approx(4.0) and hi == pytest.approx(4.0)
    # Rows timed apart (other rounds groups, or one window each) have no interval to pair.
    assert speedup_interval({**int8, "rounds_group": "other"}, fp32) is None
    assert speedup_interval({**int8, "round_p50_ms": None, "rounds": 1}, fp32) is None


def test_random_weights_borrow_their_trained_counterparts_labels():
    rows = [
        paired("resnet50", "fp32", FP32),
        paired("resnet50", "int8", QUARTER, accuracy_value=0.5),  # random logits: half the top-1s move
        paired("resnet50_mnist", "fp32", FP32, **labelled(1.0, 1.0, 1.0)),
        paired("resnet50_mnist", "int8", QUARTER, **labelled(0.998, 0.994, 1.0)),
    ]
    verdict = verdict_of(rows)
    assert verdict.decision == "deploy" and verdict.best.precision == "int8"
    assert verdict.best.evidence == "resnet50_mnist" and verdict.best.basis == "labels of resnet50_mnist (top1)"
    assert "keeps the accuracy (labels of resnet50_mnist (top1))" in verdict.reason
    # Without the counterpart's rows the same random-weight agreement of 0.5 fails nothing: it is drift.
    alone = verdict_of(rows[:2])
    assert alone.decision == "undecided" and "FAIL" not in alone.reason and "fails" not in alone.reason
    assert "its accuracy is not judged: drifts to 0.5 of FP32" in alone.reason
    assert "needs labels (a trained counterpart, --weights or a real model)" in alone.reason


def test_a_failing_counterpart_keeps_fp32_and_an_interval_reaching_the_threshold_decides_nothing():
    base = [paired("resnet50", "fp32", FP32), paired("resnet50", "int8", QUARTER, accuracy_value=1.0)]
    mnist_fp32 = paired("resnet50_mnist", "fp32", FP32, **labelled(1.0, 1.0, 1.0))
    failing = paired("resnet50_mnist", "int8", QUARTER, **labelled(0.95, 0.93, 0.97))
    verdict = verdict_of([*base, mnist_fp32, failing])
    assert verdict.decision == "keep fp32"
    assert (
        "int8 is faster (4.00x [4.00, 4.00]) but fails (0.95 [0.930, 0.970] of FP32 against labels of" in verdict.reason
    )
    reaching = paired("resnet50_mnist", "int8", QUARTER, **labelled(0.995, 0.97, 1.0))
    verdict = verdict_of([*base, mnist_fp32, reaching])
    assert (
        verdict.decision == "undecided" and "reaches 0.99: undecided, these labels cannot decide it" in verdict.reason
    )


def test_no_deploy_where_the_speed_up_interval_includes_one():
    wobble = [10.0, 10.3, 9.8, 10.1, 10.0]
    rows = [
        paired("m", "fp32", FP32, weights="checkpoint"),
        # About 1.05x on average, but round by round from 0.96x to 1.2x: not a measured gain.
        paired(
            "m", "fp16", [a / b for a, b in zip(FP32, [0.96, 1.2, 1.0, 1.15, 0.97], strict=True)], weights="checkpoint"
        ),
        paired("m", "int8", [v * 1.3 for v in wobble], weights="checkpoint"),
    ]
    points_by = {p.precision: p for p in points(rows, 0.99)}
    assert points_by["fp16"].speed == "no gain" and points_by["fp16"].speedup_lo < 1 < points_by["fp16"].speedup_hi
    assert points_by["int8"].speed == "slower"
    verdict = verdict_of(rows)
    assert verdict.decision == "keep fp32" and verdict.best.precision == "fp32"
    assert "fp16 has no measurable gain" in verdict.reason and f"not all above {MIN_SPEEDUP:g}x" in verdict.reason
    # Faster, but by less than the minimum worth deploying: no gain either.
    small = [
        paired("m", "fp32", FP32, weights="checkpoint"),
        paired("m", "fp16", [v / 1.03 for v in FP32], weights="checkpoint"),
    ]
    assert verdict_of(small).decision == "keep fp32"


def test_real_weights_are_judged_on_their_agreement_interval():
    lo_hi = {"accuracy_value_lo": 0.68, "accuracy_value_hi": 1.0, "accuracy_samples": 8}
    rows = [paired("m", "fp32", FP32, weights="file"), paired("m", "int8", QUARTER, weights="file", **lo_hi)]
    verdict = verdict_of(rows)
    assert verdict.decision == "undecided"
    assert "8 samples are too few; about 381 would decide it (--accuracy-samples)" in verdict.reason
    assert judgement(rows[1], 0.99) == ("undecided", "FP32 (top1_agreement), real weights")
    assert judgement({**rows[1], "weights": "random"}, 0.99)[0] == "unjudged"


def test_an_unstable_timing_is_named():
    rows = [
        paired("m", "fp32", FP32, weights="checkpoint"),
        paired("m", "int8", QUARTER, weights="checkpoint", unstable="round 4 is 40% from the median of the rounds"),
    ]
    verdict = verdict_of(rows)
    assert verdict.decision == "deploy" and verdict.best.unstable
    lone = verdict_of([*rows, paired("m", "fp16", [v / 0.9 for v in FP32], weights="checkpoint", unstable="bimodal")])
    assert "fp16 is slower" in lone.reason and "(its timing is flagged unstable: re-run to confirm)" in lone.reason


def test_rows_without_rounds_give_no_speed_verdict():
    rows = [
        _row("m", "fp32", 10.0, round_p50_ms=None, rounds=1, weights="checkpoint"),
        _row("m", "int8", 2.5, round_p50_ms=None, rounds=1, weights="checkpoint"),
    ]
    (point,) = [p for p in points(rows, 0.99) if p.precision == "int8"]
    assert point.speedup == pytest.approx(4.0) and point.speed is None
    verdict = verdict_of(rows)
    assert verdict.decision == "undecided" and "not timed side by side with FP32 in rounds" in verdict.reason


def test_weights_of_rows_written_before_the_column():
    assert weights_of({"weights": "checkpoint"}) == "checkpoint"
    assert weights_of({"label_ratio": 0.9}) == "trained"
    assert weights_of({"framework": "onnx"}) == "file"
    assert weights_of({"framework": "pytorch"}) == "random"


def test_report_and_compare_judge_at_the_minimum_speed_up_asked_for(tmp_path, monkeypatch, capsys):
    import suite
    from tests.test_roofline_report import _write_run

    monkeypatch.setenv("AIMATRIX_CACHE", str(tmp_path / "cache"))
    rows = [paired("m", "fp32", FP32, weights="checkpoint"), paired("m", "int8", QUARTER, weights="checkpoint")]
    run = _write_run(tmp_path / "run", rows)
    assert suite.main(["report", str(run)]) == 0
    answer = (run / "report.md").read_text().split("## Which precision to deploy")[1].split("## Speed-up")[0]
    assert "| m | deploy int8 |" in answer and "at or above 1.05x, --min-speedup" in answer
    assert suite.main(["report", str(run), "--min-speedup", "5"]) == 0
    answer = (run / "report.md").read_text().split("## Which precision to deploy")[1].split("## Speed-up")[0]
    assert (
        "| m | keep fp32 |" in answer and "int8 has no measurable gain (4.00x [4.00, 4.00], not all above 5x)" in answer
    )
    capsys.readouterr()
    for command in (["report", str(run)], ["compare", str(run), str(run)]):
        assert suite.main([*command, "--min-speedup", "0.9"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "error: --min-speedup must be a number of at least 1 (1.05: 5% faster), got 0.9", err
    assert suite.main(["compare", str(run), str(run), "--threshold", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --threshold must be in (0, 1], got 1.5"


def test_list_trained_says_which_catalogue_model_each_stands_in_for(capsys):
    import suite
    from report.run_report import counterparts

    assert suite.main(["list", "--trained"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["model", "stands", "in", "for"]
    stands = {line.split()[0]: line.split()[1] for line in out[2:]}
    assert stands == {trained: catalogue for catalogue, trained in counterparts().items()}
    assert stands["resnet50_mnist"] == "resnet50" and len(stands) == 5


def test_compare_says_whether_a_second_run_gives_the_same_answers(tmp_path):
    from report.compare import agreement, compare
    from tests.test_roofline_report import _write_run

    wobble = [1.0, 1.02, 0.98, 1.01, 0.99]
    first = [
        paired("m", "fp32", FP32, weights="checkpoint"),
        paired("m", "int8", [v / 4 * w for v, w in zip(FP32, wobble, strict=True)], weights="checkpoint"),
        paired("m", "fp16", [v * 1.2 for v in FP32], weights="checkpoint"),
    ]
    # The second run: INT8 a little slower (inside A's interval), FP16 now equal to FP32 (outside, and its
    # interval does not meet A's); the verdicts stay deploy int8.
    second = [
        paired("m", "fp32", FP32, weights="checkpoint"),
        paired("m", "int8", [v / 3.95 * w for v, w in zip(FP32, wobble[::-1], strict=True)], weights="checkpoint"),
        paired("m", "fp16", FP32, weights="checkpoint"),
    ]
    (entry,) = agreement([first, second], ["A", "B"])
    assert (entry["verdicts"], entry["changed"], entry["paired"]) == (1, 0, 2)
    assert (entry["inside"], entry["overlap"]) == (1, 1)
    assert entry["largest"][0] == pytest.approx(0.2) and entry["largest"][1] == "ort-cpu m fp16 b8"
    assert entry["lines"] == [["ort-cpu", "m", "deploy int8", "deploy int8", True]]
    int8, fp16 = sorted(entry["speeds"], key=lambda line: line[0], reverse=True)
    assert int8[0] == "ort-cpu m int8 b8" and int8[3:] == [True, True]
    assert fp16[1:] == ["0.83x [0.83, 0.83]", "1.00x [1.00, 1.00]", False, False]
    # A verdict that changes is counted and shown.
    third = [second[0], paired("m", "int8", [v / 1.01 for v in FP32], weights="checkpoint")]
    (entry,) = agreement([first, third], ["A", "C"])
    assert entry["changed"] == 1 and entry["lines"][0][2:] == ["deploy int8", "keep fp32", False]
    runs = [_write_run(tmp_path / name, rows) for name, rows in (("a", first), ("b", second))]
    text, _, _ = compare(runs, out=tmp_path / "cmp")
    assert "B: 0 of 1 verdicts differ from A's; 1 of 2 speed-ups lie inside A's interval and 1 of 2 intervals" in text
    assert "the largest difference is 20.0% (ort-cpu m fp16 b8)" in text
