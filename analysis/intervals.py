"""Intervals on the numbers the suite reports, and checks that a measurement is stable enough to trust.

Pure functions over numbers: every speed-up and accuracy gets a confidence interval (95% unless told), so that a
verdict ("faster", "fails its threshold") is given only where the whole interval carries it, and anything else
is called undecided, with how many samples would decide it. Imports only numpy and the standard library
(no scipy): the Student t and normal quantiles are computed here.

Methods, by what is measured:

- a median of latency samples: distribution-free, from order statistics (``median_interval``);
- a proportion (an agreement with FP32 counted over samples, keypoints, strings or tokens): Wilson's score
  interval (``proportion_interval``), and the sample count that would decide it (``samples_to_decide``);
- a mean (of per-sample cosines): Student's t (``mean_interval``);
- a speed-up from paired rounds: Student's t on the log ratios (``ratio_interval``);
- anything else (a detection F1, a metric against labels): the seeded percentile bootstrap
  (``bootstrap_interval``, ``label_ratio_interval``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

# Above this many samples the median's order-statistic ranks come from the normal approximation to
# Binomial(n, 1/2) (with a continuity correction; off by at most one rank from the exact ones there) instead of
# exact binomial sums, which take O(n) big-integer terms (100,000 latency samples would take seconds).
EXACT_BINOMIAL_MAX_N = 1000

# Above this many degrees of freedom t quantiles come from the Cornish-Fisher expansion around the normal
# quantile (error below 1e-9 there) instead of inverting the exact CDF, whose series has df/2 terms.
EXACT_T_MAX_DF = 1000

# unstable(): the checks pyperf makes ("pyperf check"), tuned to latencies measured in rounds. A round of a large
# model holds a single inference (1 s cut in 5 rounds), so round p50s scatter as single samples do; the limits
# were set so that a default job on a quiet 2-core machine flags only what was disturbed.
# Rounds disagree when the slowest round's p50 is more than 25% above the fastest's (single-sample rounds of the
# detectors and BERT spread up to 17% on a quiet machine); the speed-up's interval, made from the same rounds,
# already carries smaller disagreements into the verdict.
ROUND_SPREAD_MAX = 1.25
# A round is far from the others beyond 3 scaled median absolute deviations (1.4826 x MAD, a standard deviation
# for normal data) from the median of rounds: the usual robust outlier rule (Hampel's; MATLAB's isoutlier).
ROUND_OUTLIER_MADS = 3.0
MAD_TO_SD = 1.4826
# ... and never for a deviation under 10% of the median: with rounds almost equal the MAD is near 0, and a few
# percent is the scatter of single inferences, no outlier worth a line.
ROUND_OUTLIER_MIN_REL = 0.10
ROUND_OUTLIER_MIN_ROUNDS = 3
# Samples spread widely when their scaled median absolute deviation is above 15% of their median. pyperf
# compares the standard deviation with the mean (10%), but its values are means over many loops; single
# inferences of tens of microseconds have far right tails (a standard deviation of 7.7 times the mean for NCF on
# a quiet machine, from a handful of interrupted calls) that move neither the p50 nor its interval, while the
# scaled MAD stayed under 10% for every cell of that default job.
SAMPLES_MAD_MAX = 0.15
SAMPLES_SPREAD_MIN_N = 20
# Bimodal samples: two peaks of the samples' smoothed density (Gaussian kernel, Silverman's normal-reference
# bandwidth, which oversmooths a multimodal density and so finds no spurious modes in a unimodal one), each
# peak with at least 25% of the samples on its side of the lowest point between them (a smaller second mode
# cannot move the p50 out of the first; 10-20% second modes near 1.2x the first are common on CPUs), that point
# below half the smaller peak, and the peaks at least 5% of the median apart. Sarle's bimodality coefficient
# (> 5/9) is not used: it is exactly 5/9 for an exponential distribution and near 1 for any unimodal sample
# with one far outlier, both common in latencies, so it would flag most runs.
BIMODAL_MIN_N = 30
BIMODAL_MIN_MASS = 0.25
BIMODAL_MAX_DIP = 0.5
BIMODAL_MIN_SEPARATION = 0.05

# samples_to_decide() searches sample counts up to this.
DECIDE_MAX_SAMPLES = 100_000


def normal_quantile(p: float) -> float:
    """The standard normal quantile: x with P(Z <= x) = ``p``, for 0 < p < 1.

    Acklam's rational approximation (relative error 1.15e-9) refined by one Halley step on ``math.erfc``,
    which brings it to double precision. ValueError outside (0, 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, not {p}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02)
    a += (-3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01)
    b += (-1.328068155288572e01,)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00)
    c += (4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    low = 0.02425
    if p < low or p > 1 - low:
        q = math.sqrt(-2 * math.log(p if p < low else 1 - p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
        x = x if p < low else -x
    else:
        q = p - 0.5
        r = q * q
        x = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
        )
    # One Halley step: e is the CDF's error at x, u = e / pdf(x).
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - u / (1 + x * u / 2)


def _t_two_sided(theta: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` at t = sqrt(df) tan(theta), 0 <= theta < pi/2: the exact
    finite series of Abramowitz and Stegun 26.7.3 (odd df) and 26.7.4 (even df)."""
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term, total = 1.0, 1.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * c * total)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: t with P(T_df <= t) = ``p``, for 0 < p < 1 and an integer ``df`` >= 1.

    Up to EXACT_T_MAX_DF degrees of freedom the exact CDF (a finite series in the angle theta with
    t = sqrt(df) tan(theta)) is inverted by bisection on theta to double precision; above, the Cornish-Fisher
    expansion around the normal quantile (four terms). ValueError for df < 1 or p outside (0, 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, not {p}")
    if int(df) != df or df < 1:
        raise ValueError(f"t quantiles need an integer df >= 1, not {df}")
    df = int(df)
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if df > EXACT_T_MAX_DF:
        z = normal_quantile(p)
        z2 = z * z
        return (
            z
            + z * (z2 + 1) / (4 * df)
            + z * ((5 * z2 + 16) * z2 + 3) / (96 * df**2)
            + z * (((3 * z2 + 19) * z2 + 17) * z2 - 15) / (384 * df**3)
            + z * ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) / (92160 * df**4)
        )
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    target = 2 * p - 1
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _t_two_sided(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"a confidence needs 0 < c < 1, not {confidence}")
    return 1.0 - confidence


def _median_rank(n: int, alpha: float) -> int:
    """The largest j (1-based, 0 when none) with P(Binomial(n, 1/2) <= j - 1) <= alpha / 2."""
    if n > EXACT_BINOMIAL_MAX_N:
        # P(B <= j - 1) ~ Phi((j - 1 + 0.5 - n/2) / (sqrt(n)/2)) <= alpha/2.
        j = math.floor(n / 2 + 0.5 + normal_quantile(alpha / 2) * math.sqrt(n) / 2)
        return max(0, min(j, (n + 1) // 2))
    total = 2**n
    cumulative = 0  # sum of C(n, k) for k <= j - 1
    j = 0
    for k in range((n + 1) // 2):
        cumulative += math.comb(n, k)
        if cumulative / total > alpha / 2:
            break
        j = k + 1
    return j


def median_interval(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median of the population ``samples`` were drawn from.

    In: the samples (any order; independent draws), the confidence. Out: (lo, hi), or None for no samples.
    Method: order statistics. With B ~ Binomial(n, 1/2), j is the largest rank with P(B <= j - 1) <= (1 - c)/2,
    and the interval is [x_(j), x_(n-j+1)] (1-based sorted samples): it covers the median with probability at
    least c whatever the distribution. The binomial tail is summed exactly up to EXACT_BINOMIAL_MAX_N samples
    and taken from the normal approximation above. Too few samples to reach the confidence (n <= 5 at 95%:
    even [min, max] covers only 1 - 2^(1-n)) give (min, max), which then covers less than asked."""
    x = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    n = len(x)
    if n == 0:
        return None
    j = _median_rank(n, _check_confidence(confidence))
    if j < 1:
        return float(x[0]), float(x[-1])
    return float(x[j - 1]), float(x[n - j])


def proportion_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson's score interval for a proportion: ``successes`` of ``n`` (successes may be fractional, as a
    proportion times n is). Out: (lo, hi) within [0, 1] (exactly 1 at the top when every trial succeeded, 0 at the
    bottom when none did), or None for n < 1. Unlike the normal (Wald) interval it stays inside [0, 1] and does
    not collapse to a point at 0% or 100%, which is where agreement with FP32 usually is."""
    if n < 1:
        return None
    alpha = _check_confidence(confidence)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], not {successes} of {n}")
    z = normal_quantile(1 - alpha / 2)
    p = successes / n
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Student's t interval for the mean of the population ``values`` were drawn from:
    mean +- t_{1-(1-c)/2, n-1} s / sqrt(n), with s the sample standard deviation. Out: (lo, hi), or None below
    2 values. Exact for normal values, and close for other distributions once n is in the tens."""
    x = np.asarray(values, dtype=np.float64).ravel()
    n = len(x)
    if n < 2:
        return None
    alpha = _check_confidence(confidence)
    mean = float(np.mean(x))
    half = t_quantile(1 - alpha / 2, n - 1) * float(np.std(x, ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def ratio_interval(
    base: Sequence[float], other: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """The speed-up of ``other`` over ``base`` from paired rounds, with its interval.

    In: ``base[i]`` and ``other[i]``, the two cells' p50 latencies in round i, measured side by side
    (alternating). Out: (geometric mean of r_i, lo, hi) with r_i = base[i] / other[i], the interval being
    Student's t on log r_i (R - 1 degrees of freedom, R rounds) taken back by exp; None with fewer than 2 paired
    rounds or any non-positive latency. Because both cells are timed within every round, a drift the machine
    goes through between rounds (clocks, heat, neighbours) scales both latencies of a round alike and cancels in
    r_i: the interval carries the drift that does not cancel, and the round-to-round noise, instead of being
    blind to it as an interval over one run's samples is."""
    b = np.asarray(base, dtype=np.float64).ravel()
    o = np.asarray(other, dtype=np.float64).ravel()
    if len(b) != len(o):
        raise ValueError(f"paired rounds need as many base as other latencies ({len(b)} and {len(o)})")
    if len(b) < 2 or not (np.all(b > 0) and np.all(o > 0)):
        return None
    logs = np.log(b) - np.log(o)
    lo, hi = mean_interval(logs, confidence)
    return float(np.exp(np.mean(logs))), math.exp(lo), math.exp(hi)


def _ms(value: float) -> str:
    return f"{value:.3g}"


def _bimodal(samples: np.ndarray) -> str | None:
    """The bimodality check of ``unstable`` (see BIMODAL_*): a line naming the two peaks, or None.

    The density is smoothed on the log of the samples (latencies are positive and their spread is
    multiplicative: a lognormal tail then makes no false peaks), over the central 99% of them."""
    if len(samples) < BIMODAL_MIN_N or not np.all(samples > 0):
        return None
    lo_q, hi_q = np.quantile(samples, [0.005, 0.995])
    kept = np.sort(samples[(samples >= lo_q) & (samples <= hi_q)])
    if kept[-1] == kept[0]:
        return None
    x = np.log(kept)
    n = len(x)
    iqr = float(np.subtract(*np.quantile(x, [0.75, 0.25])))
    spread = min(float(np.std(x, ddof=1)), iqr / 1.349) if iqr > 0 else float(np.std(x, ddof=1))
    # Silverman's rule, never finer than the data's resolution (a timer's tick, at its widest on the log scale
    # at the smallest sample): a comb of ticks is no mode.
    tick = float(np.diff(np.unique(kept)).min()) / float(kept[0])
    bandwidth = max(0.9 * spread * n ** (-0.2), tick)
    width = bandwidth / 4
    edges = np.arange(x[0] - 4 * bandwidth, x[-1] + 4 * bandwidth + width, width)
    if len(edges) > 20_000:  # a few far tail samples stretch the grid: coarsen it
        edges = np.linspace(edges[0], edges[-1], 20_000)
        width = edges[1] - edges[0]
    counts, _ = np.histogram(x, edges)
    sigma = bandwidth / width
    k = np.arange(-math.ceil(4 * sigma), math.ceil(4 * sigma) + 1)
    density = np.convolve(counts, np.exp(-0.5 * (k / sigma) ** 2), mode="same")
    centers = (edges[:-1] + edges[1:]) / 2
    inner = density[1:-1]
    peaks = np.flatnonzero((inner > density[:-2]) & (inner >= density[2:])) + 1
    top = int(peaks[np.argmax(density[peaks])]) if len(peaks) else 0
    for peak in (int(p) for p in peaks if p != top):
        a, b = sorted((top, peak))
        valley = a + int(np.argmin(density[a : b + 1]))
        below = np.searchsorted(x, centers[valley]) / n
        mass = below if peak < top else 1 - below
        if (
            density[valley] <= BIMODAL_MAX_DIP * density[peak]
            and min(mass, 1 - mass) >= BIMODAL_MIN_MASS
            and abs(centers[peak] - centers[top]) >= math.log1p(BIMODAL_MIN_SEPARATION)
        ):
            first, second = math.exp(centers[top]), math.exp(centers[peak])
            return (
                f"samples bimodal: peaks near {_ms(first)} and {_ms(second)} ms "
                f"({mass:.0%} of samples near {_ms(second)} ms)"
            )
    return None


def unstable(round_p50s: Sequence[float], samples: Sequence[float] | None = None) -> str | None:
    """Why a cell's timing is not to be trusted as one number, as one line for people, or None when stable.

    In: the cell's p50 latency (ms) in each round, and optionally its latency samples (ms). The checks (pyperf's
    kind, thresholds in the module's constants): rounds that disagree (the slowest round's p50 more than
    ROUND_SPREAD_MAX times the fastest's), one round far from the others (beyond ROUND_OUTLIER_MADS scaled
    median absolute deviations from the median of at least ROUND_OUTLIER_MIN_ROUNDS rounds), samples spread
    widely (scaled median absolute deviation above SAMPLES_MAD_MAX of the median, with at least
    SAMPLES_SPREAD_MIN_N samples), and bimodal
    samples (two separated peaks of their smoothed density, with at least BIMODAL_MIN_N samples). Every check
    that fails adds a clause, joined by "; "."""
    found = []
    rounds = np.asarray(round_p50s, dtype=np.float64).ravel()
    if len(rounds) >= 2 and rounds.min() > 0 and rounds.max() / rounds.min() > ROUND_SPREAD_MAX:
        found.append(
            f"round p50s spread {rounds.max() / rounds.min() - 1:.0%} ({_ms(rounds.min())} to {_ms(rounds.max())} ms)"
        )
    if len(rounds) >= ROUND_OUTLIER_MIN_ROUNDS:
        median = float(np.median(rounds))
        deviation = np.abs(rounds - median)
        limit = max(ROUND_OUTLIER_MADS * MAD_TO_SD * float(np.median(deviation)), ROUND_OUTLIER_MIN_REL * median)
        far = np.flatnonzero(deviation > limit)
        if len(far):
            worst = int(far[np.argmax(deviation[far])])
            found.append(
                f"round {worst + 1} of {len(rounds)} far from the others (p50 {_ms(rounds[worst])} ms, "
                f"{deviation[worst] / median:.0%} from their median {_ms(median)} ms)"
            )
    if samples is not None:
        x = np.asarray(samples, dtype=np.float64).ravel()
        median = float(np.median(x)) if len(x) else 0.0
        if len(x) >= SAMPLES_SPREAD_MIN_N and median > 0:
            spread = MAD_TO_SD * float(np.median(np.abs(x - median))) / median
            if spread > SAMPLES_MAD_MAX:
                found.append(f"samples spread widely (scaled median absolute deviation {spread:.0%} of the median)")
        line = _bimodal(x)
        if line:
            found.append(line)
    return "; ".join(found) or None


def _decides(value: float, threshold: float, n: int, confidence: float) -> bool:
    lo, hi = proportion_interval(value * n, n, confidence)
    return lo > threshold or hi < threshold


def samples_to_decide(value: float, threshold: float, n: int, confidence: float = 0.95) -> int | None:
    """How many samples an agreement-type metric (a proportion) needs for its verdict against ``threshold``.

    In: the proportion ``value`` measured on ``n`` samples. Out: the smallest sample count m >= n at which
    Wilson's interval around the same value (value x m successes of m) lies wholly above or wholly below
    ``threshold`` (so ``n`` itself when the n samples already decide it); None when ``value == threshold`` or it
    would take more than DECIDE_MAX_SAMPLES. Wilson's bounds move monotonically toward the value as m grows, so
    the count is found by bisection."""
    if value == threshold:
        return None
    if not 0 <= value <= 1:
        raise ValueError(f"a proportion lies in [0, 1], not {value}")
    start = max(1, int(n))
    if _decides(value, threshold, start, confidence):
        return start
    if start >= DECIDE_MAX_SAMPLES or not _decides(value, threshold, DECIDE_MAX_SAMPLES, confidence):
        return None
    lo, hi = start, DECIDE_MAX_SAMPLES  # undecided at lo, decided at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _decides(value, threshold, mid, confidence):
            hi = mid
        else:
            lo = mid
    return hi


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    confidence: float = 0.95,
    resamples: int = 400,
    seed: int = 0,
) -> tuple[float, float] | None:
    """The percentile bootstrap interval of a statistic of n units.

    In: ``statistic(indices)``, the statistic of the units at ``indices`` (an int array of length n, drawn with
    replacement from range(n)); it is called ``resamples`` times, with indices from numpy's default generator
    seeded by ``seed``, so the interval is the same for the same seed. A resample whose statistic is not finite
    (NaN: undefined on that resample) is left out. Out: the (1 - c)/2 and (1 + c)/2 quantiles of the statistics
    (numpy's linear interpolation), or None for n < 2 or when fewer than half of the resamples gave a value."""
    if n < 2:
        return None
    alpha = _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < max(1, resamples / 2):
        return None
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def label_ratio_interval(
    score: Callable[[Mapping[str, np.ndarray], np.ndarray], float],
    expected: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    labels: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 400,
    seed: int = 0,
    rows_per_sample: int = 1,
) -> tuple[float, float] | None:
    """The trained track's interval: a paired percentile bootstrap of score(got) / score(expected) over the
    evaluation samples.

    In: ``score(outputs, labels)``, the primary metric against labels (``lambda outputs, labels:
    float(track.score(outputs, labels)[track.metric])``); the FP32 outputs ``expected`` and this precision's
    ``got`` (name -> array, rows on axis 0); ``labels`` (one per evaluation sample on axis 0; only the first ones,
    as many as there are samples in the outputs, are used, as ``score`` does). An evaluation sample is
    ``rows_per_sample`` consecutive rows of every output: 1 for a model whose output row is one sample, the
    number of candidates per user for a ranking model scored per group (ncf_movielens: 100); rows after the
    last complete group are left out, as ``score`` leaves them. Each resample draws samples with replacement and
    scores both outputs on the same ones (paired, so what both precisions get wrong cancels). A resample where
    the FP32 score is 0, or where ``score`` raises ValueError or ZeroDivisionError (an AUC on a resample with
    one class only), is left out (``bootstrap_interval``). Out: (lo, hi), or None below 2 samples."""
    rows = {len(v) for v in (*expected.values(), *got.values())}
    if len(rows) != 1:
        raise ValueError(f"outputs disagree on their rows: {sorted(rows)}")
    if rows_per_sample < 1:
        raise ValueError(f"rows_per_sample must be >= 1, not {rows_per_sample}")
    n = rows.pop() // rows_per_sample
    if len(labels) < n:
        raise ValueError(f"{len(labels)} labels for {n} evaluation samples")
    labels = np.asarray(labels)[:n]
    offsets = np.arange(rows_per_sample)

    def ratio(indices: np.ndarray) -> float:
        picked = (indices[:, None] * rows_per_sample + offsets).ravel()
        try:
            fp32 = score({k: v[picked] for k, v in expected.items()}, labels[indices])
            if not fp32:
                return math.nan
            return score({k: v[picked] for k, v in got.items()}, labels[indices]) / fp32
        except (ValueError, ZeroDivisionError):
            return math.nan

    return bootstrap_interval(ratio, n, confidence, resamples, seed)
