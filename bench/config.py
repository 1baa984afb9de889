"""A run as data: ``RunConfig``, validated once, and the presets (the option values ``--preset`` supplies).

The command line builds a RunConfig (``suite.py`` parses, this module decides what is valid); a library caller
builds one directly. Everything a run measures with is here, so a resume can compare it and ``env.json`` can
record it (``settings()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.scenarios import CONCURRENT_SCENARIOS, LATENCY, LoadSettings, ScenarioError, check_scenarios
from bench.timer import TimerSettings
from common import precisions as registry
from common.errors import not_finite
from engines.options import EngineOptions
from onnx_models.artifacts import CalibrationSettings, ExportSettings


class ConfigError(ValueError):
    """A run setting that cannot work (a usage error: the message names the setting and the fix)."""


# Presets are RunConfig values that a command-line option overrides one by one. `quick` is the default job:
# every Table I model at batch 1 with 1 s timing windows (at least 3 iterations), 8 accuracy samples and INT8
# calibrated on 8 samples, so that the whole catalogue finishes in half an hour on two cores (in the 41-minute
# run with 32 samples, INT8 builds took 1,723 of the two build workers' seconds; with 2 s windows and 5
# iterations the cells took 11 min 22 s, with these 9 min 29 s); `paper` is the paper's batch sizes and 5 s
# windows. Both cut each closed-loop window into 5 rounds, the precisions and engines of a model taking turns
# (bench.executor), so that drift of a shared machine falls on all of them alike and a speed-up gets an interval.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "batch_sizes": "1",
        "warmup_s": 0.25,
        "duration_s": 1.0,
        "min_iters": 3,
        "rounds": 5,
        "accuracy_samples": 8,
        "samples": 8,
        "min_duration_s": 5.0,
    },
    "paper": {
        "batch_sizes": "paper",
        "warmup_s": 1.0,
        "duration_s": 5.0,
        "min_iters": 10,
        "rounds": 5,
        "accuracy_samples": 32,
        "samples": 32,
        "min_duration_s": 30.0,
    },
}
DEFAULT_PRESET = "quick"


def _finite(name: str, value: float, minimum: float, inclusive: bool) -> None:
    if problem := not_finite(name, value, minimum, inclusive):
        raise ConfigError(problem)


@dataclass(frozen=True)
class RunConfig:
    """One run: which cells (models x batch sizes x engines x precisions x scenarios at one size) and how each
    is built, timed and checked. Invalid values raise ConfigError at construction."""

    models: tuple[str, ...]
    batch_sizes: Mapping[str, tuple[int, ...]]
    size: str = "full"
    engines: tuple[str, ...] = ("ort-cpu",)
    # None: every precision one of the run's engines runs (``common.precisions.run_by``), worked out when a
    # RunConfig is made, not at import; ``precisions_by_engine`` then says so, and the plan puts each of them only
    # on the engines that run it. Precisions named outright are planned on every engine (``unsupported`` where an
    # engine cannot run one, with the reason).
    precisions: tuple[str, ...] | None = None
    precisions_by_engine: bool = False
    timer: TimerSettings = field(default_factory=TimerSettings)
    # Timing rounds each closed-loop cell's window is cut into: the cells of one model, batch size and scenario
    # (its precisions and engines) take turns round by round, each in a warm process of its own. 1: one window.
    rounds: int = 1
    export: ExportSettings = field(default_factory=ExportSettings)
    calib: CalibrationSettings = field(default_factory=CalibrationSettings)
    engine_options: EngineOptions = field(default_factory=EngineOptions)
    accuracy_samples: int = 32
    cell_timeout_s: float = 1800.0
    bytes_model: str = "io"
    # Artifact builds at once (each in its own child process); cells always run one at a time.
    jobs: int = 1
    onnx: str | None = None
    input_shapes: str | None = None
    output_batch_axes: str | None = None
    # What a brought-in model's inputs are fed, as the options gave it (--input-batch-axes, --input-values,
    # --input-range, --feeds, --state); the model's spec holds what it means.
    inputs_fed: Mapping[str, str] | None = None
    # Load scenarios (bench.scenarios): "latency" is the closed loop of bench.timer, the others LoadGen's.
    scenarios: tuple[str, ...] = (LATENCY,)
    # SUT threads serving queries at once, an axis of the scenarios that can overlap queries.
    concurrency: tuple[int, ...] = (1,)
    load: LoadSettings = field(default_factory=LoadSettings)

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("a run needs at least one model")
        missing = [m for m in self.models if not self.batch_sizes.get(m)]
        if missing:
            raise ConfigError(f"no batch size for {', '.join(missing)}")
        if any(not isinstance(b, int) or b < 1 for sizes in self.batch_sizes.values() for b in sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {dict(self.batch_sizes)}")
        if self.precisions is None:
            object.__setattr__(self, "precisions", registry.run_by(self.engines))
            object.__setattr__(self, "precisions_by_engine", True)
        valid = registry.NAMES
        unknown = [p for p in self.precisions if p not in valid]
        if unknown or not self.precisions:
            raise ConfigError(f"unknown precision {', '.join(unknown)}; valid precisions: {', '.join(valid)}")
        _finite("--warmup-s", self.timer.warmup_s, 0, inclusive=True)
        _finite("--duration-s", self.timer.duration_s, 0, inclusive=False)
        _finite("--cell-timeout", self.cell_timeout_s, 0, inclusive=False)
        threads = self.engine_options.threads
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"--threads must be a positive integer, got {threads!r}")
        if self.accuracy_samples < 1:
            raise ConfigError("--accuracy-samples must be at least 1")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"--rounds must be a positive integer, got {self.rounds!r}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")
        if self.bytes_model not in ("io", "activations"):
            raise ConfigError(f"--bytes-model must be io or activations, got {self.bytes_model!r}")
        try:
            check_scenarios(self.scenarios, self.load)
        except ScenarioError as exc:
            raise ConfigError(str(exc)) from None
        if not self.concurrency or any(not isinstance(c, int) or c < 1 for c in self.concurrency):
            raise ConfigError(f"--concurrency must be positive integers, got {self.concurrency}")
        if self.concurrency != (1,) and not set(self.scenarios) & set(CONCURRENT_SCENARIOS):
            raise ConfigError(
                f"--concurrency applies to the {', '.join(CONCURRENT_SCENARIOS)} scenarios: add one with --scenario"
            )

    def files_sha256(self) -> dict[str, str]:
        """The sha256 of each file the run reads its model or inputs from (``--onnx``, ``--calib-data``,
        ``--weights``, ``--feeds``), by option; files that cannot be read are left out (the run fails on them
        with its own message)."""
        from common.hashing import sha256_file

        given = {
            "onnx": self.onnx,
            "calib_data": self.calib.data,
            "weights": self.export.weights,
            "feeds": (self.inputs_fed or {}).get("feeds"),
        }
        found = {}
        for option, path in given.items():
            if path and Path(path).is_file():
                found[option] = sha256_file(Path(path))
        return found

    def concurrencies(self, scenario: str) -> tuple[int, ...]:
        """The concurrency values ``scenario``'s cells are measured at (only 1 where queries cannot overlap)."""
        return self.concurrency if scenario in CONCURRENT_SCENARIOS else (1,)

    def settings(self) -> dict[str, Any]:
        """What the rows were measured with, as plain JSON values (``env.json``'s ``settings``). The number of
        build jobs is left out: it changes how fast artifacts are made, not what is measured."""
        return {
            "models": list(self.models),
            "engines": list(self.engines),
            "precisions": list(self.precisions),
            "batch_sizes": {m: list(b) for m, b in self.batch_sizes.items()},
            "size": self.size,
            "timer": asdict(self.timer),
            "rounds": self.rounds,
            "calibration": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in asdict(self.calib).items()
                # INT8 plans only when given, so results directories from before plans existed still resume.
                if k != "float_nodes" or v
            },
            "export": {"seed": self.export.seed, "weights": str(self.export.weights) if self.export.weights else None},
            "engine_options": self.engine_options.as_dict(),
            "accuracy_samples": self.accuracy_samples,
            "bytes_model": self.bytes_model,
            "onnx": self.onnx,
            "input_shapes": self.input_shapes,
            # Only when given, so a directory from before the option resumes with the same settings.
            **({"output_batch_axes": self.output_batch_axes} if self.output_batch_axes else {}),
            **({"inputs_fed": dict(self.inputs_fed)} if self.inputs_fed else {}),
            # The content of every file the rows depend on: a resume whose file changed in place is refused.
            **({"files_sha256": files} if (files := self.files_sha256()) else {}),
            "scenarios": list(self.scenarios),
            "concurrency": list(self.concurrency),
            # Only a run with LoadGen scenarios records their settings, so latency-only results directories
            # written before scenarios existed still resume.
            **({"load": self.load.as_dict()} if set(self.scenarios) - {LATENCY} else {}),
        }
