"""The statistics behind every interval the suite reports (analysis.intervals) and compare()'s accuracy intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import intervals
from analysis.accuracy import compare
from analysis.intervals import (
    bootstrap_interval,
    label_ratio_interval,
    mean_interval,
    median_interval,
    normal_quantile,
    proportion_interval,
    ratio_interval,
    samples_to_decide,
    t_quantile,
    unstable,
)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 4, 2.776),
        (0.975, 9, 2.262),
        (0.975, 29, 2.045),
        (0.975, 30, 2.042),
        (0.975, 120, 1.980),
        (0.95, 10, 1.812),
        (0.995, 5, 4.032),
        (0.995, 30, 2.750),
        (0.025, 4, -2.776),
    ],
)
def test_t_quantiles_match_the_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=5e-4)


def test_normal_quantiles_and_the_t_limit():
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.995) == pytest.approx(2.575829, abs=1e-6)
    assert normal_quantile(0.5) == 0.0 and normal_quantile(0.025) == pytest.approx(-1.959964, abs=1e-6)
    assert normal_quantile(1e-10) == pytest.approx(-6.361341, abs=1e-5)
    # The exact CDF's inverse (df <= 1000) meets the Cornish-Fisher expansion (above) without a step.
    assert t_quantile(0.975, 1000) == pytest.approx(1.962339, abs=1e-6)
    assert t_quantile(0.975, 1001) == pytest.approx(t_quantile(0.975, 1000), abs=1e-5)
    assert normal_quantile(0.975) < t_quantile(0.975, 10**6) < normal_quantile(0.975) + 1e-5
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)
    with pytest.raises(ValueError):
        normal_quantile(1.0)


def test_wilson_against_the_textbook():
    lo, hi = proportion_interval(7, 8)
    assert (lo, hi) == (pytest.approx(0.529, abs=1e-3), pytest.approx(0.978, abs=1e-3))
    assert proportion_interval(8, 8)[1] == 1.0 and proportion_interval(0, 8)[0] == 0.0
    assert proportion_interval(8, 8)[0] == pytest.approx(0.6756, abs=1e-4)
    assert proportion_interval(0, 0) is None
    # Wider at 99% than at 95%.
    lo99, hi99 = proportion_interval(7, 8, 0.99)
    assert lo99 < lo and hi99 > hi


def test_median_interval_covers_the_median_95_percent_of_the_time():
    rng = np.random.default_rng(33)
    true_median = 1.0  # of lognormal(0, 1)
    covered = [lo <= true_median <= hi for lo, hi in (median_interval(rng.lognormal(0, 1, 100)) for _ in range(400))]
    assert 0.92 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_median_interval_order_statistics_and_small_n():
    # n = 100 at 95%: the 40th and 61st order statistics (the textbook ranks).
    assert median_interval(np.arange(1, 101)[::-1]) == (40.0, 61.0)
    # Five samples cannot reach 95% (even min..max covers 1 - 2/32 = 94%): min and max.
    assert median_interval([5.0, 1.0, 3.0, 2.0, 4.0]) == (1.0, 5.0)
    assert median_interval([7.0]) == (7.0, 7.0)
    assert median_interval([]) is None
    # Six samples reach 95% only with [min, max] (96.9%); at 99% they too fall short and still give min..max.
    assert median_interval(range(6)) == (0.0, 5.0) == median_interval(range(6), 0.99)


def test_median_interval_normal_approximation_for_many_samples():
    # Above EXACT_BINOMIAL_MAX_N the ranks come from the normal approximation: within one rank of the exact sum.
    n = 1500
    approx = median_interval(np.arange(n))
    limit = intervals.EXACT_BINOMIAL_MAX_N
    try:
        intervals.EXACT_BINOMIAL_MAX_N = 10**6
        exact = median_interval(np.arange(n))
    finally:
        intervals.EXACT_BINOMIAL_MAX_N = limit
    assert abs(approx[0] - exact[0]) <= 1 and abs(approx[1] - exact[1]) <= 1
    samples = np.random.default_rng(0).lognormal(0, 0.2, 100_000)
    lo, hi = median_interval(samples)
    assert lo < np.median(samples) < hi and hi - lo < 0.01


def test_mean_interval_is_student_t():
    lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert (lo, hi) == (pytest.approx(3 - half, abs=1e-5), pytest.approx(3 + half, abs=1e-5))
    assert mean_interval([1.0]) is None


def _rounds(ratio: float, rounds: int, noise: float, drift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired p50s over rounds: a drift factor common to both cells in each round, and independent noise."""
    rng = np.random.default_rng(seed)
    common = np.exp(rng.normal(0, drift, rounds))
    base = 10.0 * common * np.exp(rng.normal(0, noise, rounds))
    other = 10.0 / ratio * common * np.exp(rng.normal(0, noise, rounds))
    return base, other


def test_ratio_interval_covers_the_true_speed_up_and_excludes_none():
    base, other = _rounds(2.0, rounds=8, noise=0.05, drift=0.0, seed=1)
    speed_up, lo, hi = ratio_interval(base, other)
    assert lo < 2.0 < hi and lo > 1.0
    assert speed_up == pytest.approx(math.exp(np.mean(np.log(base / other))))


def test_ratio_interval_cancels_drift_common_to_both_cells():
    # Rounds drift by up to +-50% (a machine heating up, a neighbour's load) but alike for both cells.
    base, other = _rounds(1.0, rounds=6, noise=0.002, drift=0.3, seed=2)
    assert base.max() / base.min() > 1.3
    speed_up, lo, hi = ratio_interval(base, other)
    assert lo <= 1.0 <= hi and hi - lo < 0.02
    # Unpaired, the same rounds say nothing: the spread of the rounds swamps the ratio.
    assert mean_interval(np.log(base))[1] - mean_interval(np.log(base))[0] > 0.3


def test_ratio_interval_needs_two_positive_rounds():
    assert ratio_interval([1.0], [2.0]) is None
    assert ratio_interval([1.0, 0.0], [2.0, 2.0]) is None
    with pytest.raises(ValueError):
        ratio_interval([1.0, 2.0], [1.0])


def test_unstable_flags_spread_rounds_and_passes_steady_ones():
    assert unstable([12.1, 13.0, 15.5]) == "round p50s spread 28% (12.1 to 15.5 ms)"
    # Single-inference rounds of a large model scatter this much on a quiet machine.
    assert unstable([10.0, 10.1, 9.95, 10.05, 10.02]) is None and unstable([10.0, 11.7, 10.4]) is None
    assert unstable([10.0]) is None and unstable([]) is None


def test_unstable_flags_one_round_far_from_the_others():
    # Spread 15%, under the 25% rounds may disagree, but one round is far from four that agree within 0.4%.
    line = unstable([10.0, 10.02, 9.98, 10.01, 11.5])
    assert line is not None and "round 5 of 5 far from the others" in line and "spread" not in line
    # A 7% wobble is no outlier, however small the other rounds' deviations.
    assert unstable([10.0, 10.0, 10.0, 10.7]) is None


def test_unstable_checks_the_samples():
    rng = np.random.default_rng(5)
    steady = 10 * rng.lognormal(0, 0.05, 2000)
    assert unstable([10.0, 10.0], steady) is None
    wide = 10 * rng.lognormal(0, 0.5, 2000)
    assert "samples spread widely" in unstable([10.0, 10.0], wide)
    bimodal = np.r_[10 + rng.normal(0, 0.2, 700), 13 + rng.normal(0, 0.2, 300)]
    line = unstable([10.0, 10.0], bimodal)
    assert line is not None and "samples bimodal" in line and "spread widely" not in line
    # A second mode of 15% cannot move the p50 out of the first: not flagged.
    assert unstable([10.0, 10.0], np.r_[10 + rng.normal(0, 0.2, 850), 12 + rng.normal(0, 0.2, 150)]) is None
    # A far right tail (a few interrupted calls) moves the standard deviation, not the p50: not flagged.
    tail = np.r_[0.014 * rng.lognormal(0, 0.03, 5000), np.full(20, 5.0)]
    assert np.std(tail) > 5 * np.mean(tail) and unstable([0.014, 0.014], tail) is None
    # Too few samples to judge either.
    assert unstable([10.0, 10.0], wide[:10]) is None


def test_unstable_does_not_call_a_long_tail_bimodal():
    # One far outlier in a unimodal sample sends Sarle's bimodality coefficient over 5/9; no second mode here.
    rng = np.random.default_rng(6)
    samples = np.r_[10 * rng.lognormal(0, 0.03, 999), 40.0]
    z = (samples - samples.mean()) / samples.std()
    skew, kurtosis = np.mean(z**3), np.mean(z**4) - 3
    assert (skew**2 + 1) / (kurtosis + 3) > 5 / 9
    assert unstable([10.0, 10.0], samples) is None
    # Timer ticks (0.001 ms) make a comb of values, not modes.
    ticks = np.round(0.05 + rng.exponential(0.002, 5000), 3)
    assert unstable([0.05, 0.05], ticks) is None


def test_samples_to_decide():
    # 7 of 8 against 0.99: Wilson's (0.529, 0.978) already lies below 0.99, so the 8 samples decide it.
    assert proportion_interval(7, 8)[1] < 0.99
    assert samples_to_decide(7 / 8, 0.99, 8) == 8
    # 8 of 8 against 0.99: (0.676, 1.0) is undecided; 381 agreeing samples put the bound above 0.99.
    needed = samples_to_decide(1.0, 0.99, 8)
    assert needed == 381
    assert proportion_interval(381, 381)[0] > 0.99 >= proportion_interval(380, 380)[0]
    # 0.995 against 0.99 takes more; a value on the threshold or too close to it never decides.
    assert samples_to_decide(0.995, 0.99, 100) > needed
    assert samples_to_decide(0.99, 0.99, 8) is None
    assert samples_to_decide(0.9901, 0.99, 8) is None


def test_bootstrap_interval_is_seeded():
    values = np.random.default_rng(7).normal(5.0, 1.0, 200)

    def mean_of(indices):
        return float(np.mean(values[indices]))

    first = bootstrap_interval(mean_of, len(values))
    assert first == bootstrap_interval(mean_of, len(values))
    assert first != bootstrap_interval(mean_of, len(values), seed=1)
    lo, hi = first
    t_lo, t_hi = mean_interval(values)
    assert lo < values.mean() < hi and abs(lo - t_lo) < 0.05 and abs(hi - t_hi) < 0.05
    assert bootstrap_interval(mean_of, 1) is None
    # Resamples with no value (NaN) are left out; with too few left there is no interval.
    assert bootstrap_interval(lambda i: math.nan, 50) is None


def test_compare_classification_has_wilson_bounds():
    ref = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]]
    cand = ref.copy()
    cand[3] = np.eye(4)[0]
    result = compare("classification", {"logits": ref}, {"logits": cand})
    assert result["accuracy_value"] == 7 / 8
    assert (result["accuracy_value_lo"], result["accuracy_value_hi"]) == proportion_interval(7, 8)
    assert result["accuracy_interval"] == "wilson" and result["accuracy_samples_n"] == 8


def test_compare_units_of_the_other_agreements():
    # Pose counts samples x keypoints; translation counts the tokens up to each sentence's end.
    heat = np.zeros((2, 3, 4, 4))
    heat[:, :, 0, 0] = 1
    cand = heat.copy()
    cand[1, 2, 3, 3] = 2
    pose = compare("pose", {"h": heat}, {"h": cand})
    assert pose["accuracy_samples_n"] == 6 and pose["accuracy_value_hi"] == proportion_interval(5, 6)[1]
    tokens = compare("translation", {"t": np.array([[5, 6, 2, 0, 0]])}, {"t": np.array([[5, 7, 2, 9, 9]])}, {"eos": 2})
    assert tokens["accuracy_samples_n"] == 3 and tokens["accuracy_value_lo"] == proportion_interval(2, 3)[0]


def test_compare_detection_bootstraps_over_images():
    rng = np.random.default_rng(8)
    images, k = 30, 4
    corners = rng.uniform(0, 50, (images, k, 2))
    boxes = np.concatenate([corners, corners + 10], axis=-1)
    scores = np.full((images, k), 0.9)
    labels = rng.integers(0, 3, (images, k))
    moved = boxes.copy()
    moved[: images // 3, 0] += 30  # one box of a third of the images moves away: unmatched
    ref = {"boxes": boxes, "scores": scores, "labels": labels}
    cand = {"boxes": moved, "scores": scores, "labels": labels}
    result = compare("detection", ref, cand)
    assert result["accuracy_value"] == pytest.approx(110 / 120)
    assert result["accuracy_interval"] == "bootstrap" and result["accuracy_samples_n"] == images
    assert result["accuracy_value_lo"] < result["accuracy_value"] < result["accuracy_value_hi"] < 1.0
    again = compare("detection", ref, cand)
    assert (again["accuracy_value_lo"], again["accuracy_value_hi"]) == (
        result["accuracy_value_lo"],
        result["accuracy_value_hi"],
    )


def test_compare_generic_has_a_t_interval_over_sample_cosines():
    rng = np.random.default_rng(9)
    ref = rng.normal(size=(40, 16))
    cand = ref + rng.normal(0, 0.3, ref.shape)
    result = compare("generic", {"y": ref, "z": ref}, {"y": cand, "z": ref})
    assert result["accuracy_value"] == result["accuracy_cosine"] < 1.0
    assert result["accuracy_interval"] == "t" and result["accuracy_samples_n"] == 40
    assert result["accuracy_value_lo"] < result["accuracy_value"] < result["accuracy_value_hi"] <= 1.0
    same = compare("generic", {"y": ref}, {"y": ref})
    assert same["accuracy_value_lo"] == pytest.approx(1.0) and same["accuracy_value_hi"] == 1.0


def test_compare_ctr_has_no_interval():
    result = compare("ctr", {"p": np.array([[0.1], [0.5], [0.9]])}, {"p": np.array([[0.1], [0.95], [0.9]])})
    assert result["accuracy_value"] == pytest.approx(0.45)
    assert [result[k] for k in ("accuracy_value_lo", "accuracy_value_hi", "accuracy_interval")] == [None] * 3
    assert result["accuracy_samples_n"] is None


def test_label_ratio_interval_with_a_trained_classifier_score():
    from models import resnet50_mnist

    def top1(outputs, labels):
        return float(resnet50_mnist.score(outputs, labels)["top1"])

    rng = np.random.default_rng(10)
    n = 400
    labels = rng.integers(0, 10, n + 50)  # more labels than samples: score and the interval use the first n
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), labels[:n]] += 3.0  # FP32 gets most right
    got = logits.copy()
    flipped = rng.choice(n, 40, replace=False)
    got[flipped, labels[flipped]] -= 6.0  # this precision loses 40 of them
    expected, candidate = {"logits": logits}, {"logits": got}
    ratio = top1(candidate, labels) / top1(expected, labels)
    lo, hi = label_ratio_interval(top1, expected, candidate, labels)
    assert lo < ratio < hi < 1.0
    assert (lo, hi) == label_ratio_interval(top1, expected, candidate, labels)
    assert label_ratio_interval(top1, expected, expected, labels) == (1.0, 1.0)


def test_label_ratio_interval_resamples_whole_users_for_ncf():
    from models import ncf_movielens

    def hit_rate(outputs, labels):
        return float(ncf_movielens.score(outputs, labels)["hr@10"])

    rng = np.random.default_rng(11)
    users, per_user = 120, ncf_movielens.CANDIDATES
    probability = rng.uniform(0, 1, (users, per_user))
    probability[:, 0] = rng.uniform(0.85, 1.0, users)  # the held-out movie, first in each group, ranks high
    got = probability.copy()
    got[:30, 0] = 0.0  # this precision sinks it for a quarter of the users
    # As a cell gives them: rows on axis 0, 100 per user, and a tail of an incomplete group left out.
    expected = {"probability": np.r_[probability.reshape(-1), 0.5, 0.5][:, None]}
    candidate = {"probability": np.r_[got.reshape(-1), 0.5, 0.5][:, None]}
    labels = np.zeros(users, dtype=np.int64)
    ratio = hit_rate(candidate, labels) / hit_rate(expected, labels)
    lo, hi = label_ratio_interval(hit_rate, expected, candidate, labels, rows_per_sample=per_user)
    assert lo < ratio < hi < 1.0
    # Rows are not samples here: without the group size the labels cannot cover the rows.
    with pytest.raises(ValueError):
        label_ratio_interval(hit_rate, expected, candidate, labels)


def test_label_ratio_interval_skips_resamples_an_auc_cannot_score():
    from models import wide_deep_adult

    def auc(outputs, labels):
        return float(wide_deep_adult.score(outputs, labels)["auc"])

    # 6 samples, one positive: a resample without it has no AUC (ValueError) and is left out.
    labels = np.array([1, 0, 0, 0, 0, 0])
    expected = {"probability": np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])}
    got = {"probability": np.array([0.9, 0.1, 0.2, 0.3, 0.95, 0.5])}
    assert auc(got, labels) / auc(expected, labels) == 0.8
    lo, hi = label_ratio_interval(auc, expected, got, labels)
    assert lo < 0.8 < hi <= 1.0
