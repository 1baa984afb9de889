"""The one timer: warm-up by time and count, then measure until both a duration and an iteration count
are met (as MLPerf LoadGen's minimum duration and query count). Raw samples are kept; statistics are
derived from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class TimerSettings:
    """Warm-up lasts until both ``warmup_s`` and ``warmup_iters`` are reached; measurement until both
    ``duration_s`` and ``min_iters`` are, but never past ``max_iters``."""

    warmup_s: float = 1.0
    warmup_iters: int = 2
    duration_s: float = 5.0
    min_iters: int = 10
    max_iters: int = 1_000_000

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.duration_s < 0:
            raise ValueError("warm-up and duration must not be negative")
        if self.warmup_iters < 0 or self.min_iters < 1 or self.max_iters < self.min_iters:
            raise ValueError("need warmup_iters >= 0 and 1 <= min_iters <= max_iters")


@dataclass
class LatencyStats:
    """Latency samples of one cell in milliseconds and the statistics derived from them."""

    samples_ms: list[float] = field(repr=False)
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float
    std: float

    @classmethod
    def from_values(cls, samples_ms: list[float]) -> LatencyStats:
        """Statistics of ``samples_ms`` (at least one value); percentiles are linear-interpolated."""
        if not samples_ms:
            raise ValueError("no latency samples")
        values = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
        return cls(
            samples_ms=[float(v) for v in values],
            mean=float(values.mean()),
            p50=float(p50),
            p90=float(p90),
            p95=float(p95),
            p99=float(p99),
            min=float(values.min()),
            max=float(values.max()),
            std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        )

    @property
    def iterations(self) -> int:
        return len(self.samples_ms)

    def to_row(self) -> dict[str, float]:
        """The statistics as ``latency_ms_<stat>`` columns."""
        stats = asdict(self)
        stats.pop("samples_ms")
        return {f"latency_ms_{k}": v for k, v in stats.items()}


def warm_up(run_once: Callable[[], None], settings: TimerSettings) -> int:
    """Run ``run_once`` until both ``settings.warmup_s`` and ``settings.warmup_iters`` are reached (untimed);
    returns how many runs that took."""
    clock = time.perf_counter_ns
    start = clock()
    done = 0
    warmup_ns = settings.warmup_s * 1e9
    while done < settings.warmup_iters or (clock() - start) < warmup_ns:
        run_once()
        done += 1
    return done


def measure(
    run_once: Callable[[], None],
    settings: TimerSettings = TimerSettings(),
    on_measure: Callable[[], None] | None = None,
) -> LatencyStats:
    """Warm up, then time ``run_once`` (a synchronised inference) repeatedly; returns its latencies.
    ``on_measure`` is called once between warm-up and measurement (a GPU energy reading's start)."""
    clock = time.perf_counter_ns
    warm_up(run_once, settings)
    if on_measure is not None:
        on_measure()
    samples: list[float] = []
    duration_ns = settings.duration_s * 1e9
    begin = clock()
    while len(samples) < settings.max_iters:
        t0 = clock()
        run_once()
        t1 = clock()
        samples.append((t1 - t0) / 1e6)
        if len(samples) >= settings.min_iters and (t1 - begin) >= duration_ns:
            break
    return LatencyStats.from_values(samples)
