"""A results row: the typed record of one cell, whose fields are the results table's columns, in order.

The runner starts a row from the cell and the model's facts (``bench.runner.base_row``), the executor fills in
what the cell measured, and the results file writes it (``Row.as_dict``). Columns that only some engines give
(``h2d_ms``, ``compute_ms``, the artifact path) go to ``extra`` and follow the typed ones in the tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Row:
    """One cell: what was asked (model x engine x precision x batch size), how it ended, what it measured."""

    model: str
    category: str
    framework: str
    size: str
    engine: str
    precision: str
    batch_size: int
    # What the model's weights are: trained in the suite (scored against labels), a user's checkpoint
    # (--weights), a brought-in file, or seeded random ones; what its accuracy can be judged by (analysis.verdict).
    weights: str | None = None
    # The load scenario (bench.scenarios) and the SUT threads that served it.
    scenario: str = "latency"
    concurrency: int = 1
    # ok, failed or unsupported; None while the cell is still to be measured.
    status: str | None = None
    error: str | None = None
    iterations: int | None = None
    # The closed loop's timing rounds: how many, and each round's p50 latency (a JSON list, in the order measured;
    # the rounds of one model's cells alternate, so round i of each was measured side by side), and the id that
    # the cells measured in one interleaved group share (speed-ups pair rounds only within one group).
    rounds: int | None = None
    round_p50_ms: str | None = None
    rounds_group: str | None = None
    # Why the timing is not to be trusted (rounds that disagree, a round far from the others, wide or bimodal
    # samples: analysis.intervals.unstable), or None.
    unstable: str | None = None
    latency_ms_mean: float | None = None
    latency_ms_p50: float | None = None
    # The p50's 95% interval (order statistics of the samples, analysis.intervals.median_interval).
    latency_ms_p50_lo: float | None = None
    latency_ms_p50_hi: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_min: float | None = None
    latency_ms_max: float | None = None
    latency_ms_std: float | None = None
    # Inputs per second (a LoadGen sample is one batch, so LoadGen's rate times the batch size).
    throughput_samples_per_s: float | None = None
    # LoadGen scenarios: queries completed per second, the arrival rate the server was scheduled at (with
    # --find-peak the highest that was VALID on its own run) and the rate LoadGen's peak search answered, the
    # percentile judged and its latency, the bound, LoadGen's verdict
    # with the reason for INVALID and its early-stopping estimate, the performance runs it took, and the
    # directory of its logs (relative to the results directory).
    queries_per_s: float | None = None
    loadgen_target_qps: float | None = None
    loadgen_search_qps: float | None = None
    loadgen_percentile: float | None = None
    loadgen_percentile_latency_ms: float | None = None
    loadgen_latency_bound_ms: float | None = None
    loadgen_validity: str | None = None
    loadgen_reason: str | None = None
    loadgen_early_stopping: str | None = None
    loadgen_runs: int | None = None
    loadgen_logs: str | None = None
    flops_per_batch: float | None = None
    mac_flops_per_batch: float | None = None
    flops_per_s: float | None = None
    params: int | None = None
    bytes_per_batch: float | None = None
    bytes_model: str | None = None
    arith_intensity: float | None = None
    accuracy_metric: str | None = None
    accuracy_value: float | None = None
    # The primary metric's 95% interval, its method (wilson, bootstrap, t) and the units it counts.
    accuracy_value_lo: float | None = None
    accuracy_value_hi: float | None = None
    accuracy_interval: str | None = None
    accuracy_samples_n: int | None = None
    accuracy_cosine: float | None = None
    accuracy_max_abs_error: float | None = None
    accuracy_samples: int | None = None
    # Trained models (models.trained): the task metric against the evaluation split's labels at this precision
    # and at FP32 on the same samples, their ratio, and pass or fail at MLPerf's 99% and 99.9% of FP32.
    label_metric: str | None = None
    label_value: float | None = None
    label_value_fp32: float | None = None
    label_ratio: float | None = None
    # The ratio's 95% interval: a paired bootstrap over the evaluation samples.
    label_ratio_lo: float | None = None
    label_ratio_hi: float | None = None
    label_pass_99: bool | None = None
    label_pass_999: bool | None = None
    cpu_isa: str | None = None
    # Where the cell ran: the machine (host name; on a Ray cluster host name and node id, whose environment is
    # nodes/<node>.json) and its device (``cpu``, or ``cuda:N`` with the GPU's index on that machine).
    node: str | None = None
    device: str | None = None
    # How the engine ran FP32 convolutions and matrix products: FP32, or TF32 (GPU engines on Ampere and newer
    # unless --no-tf32; Engine.fp32_math). An "fp32" row on a GPU is one or the other, never both.
    fp32_math: str | None = None
    # A model run as a stream (--state): its output -> input pairs, fed back from one inference to the next in
    # the timed loop and over the accuracy batches (bench.inputs.Stream). None for independent inferences.
    stream: str | None = None
    # The share of the graph's multiply-accumulates that run in the precision's element type (int8 for int8 and
    # int8fp16, float16 for fp16), counted on its artifact at the check batch (analysis.quant_coverage); None for
    # fp32 and for a graph without MACs. 0 would be an artifact that runs as FP32 (INT8 builds refuse it).
    reduced_mac_share: float | None = None
    int8_weight_bits: int | None = None
    int8_conformance: str | None = None
    int8_float_nodes: int | None = None
    paper_flops_per_sample: float | None = None
    flops_ratio_to_paper: float | None = None
    engine_build_s: float | None = None
    # Resident memory (MiB) the engine's activation added to the cell's process, and the process's peak.
    engine_load_mib: float | None = None
    peak_rss_mib: float | None = None
    # GPU engines, through NVML: device memory the cell's process held after timing, and energy over the timed
    # window per input and inputs per joule (empty where NVML or its energy counter is missing: env.json's nvml).
    gpu_memory_mib: float | None = None
    energy_j_per_sample: float | None = None
    samples_per_j: float | None = None
    # The engine's describe() as JSON: what it actually ran with.
    engine_settings: str | None = None
    artifact_sha256: str | None = None
    cell_id: str | None = None
    finished_at: str | None = None
    # Columns beyond the typed ones, by name.
    extra: dict[str, Any] = field(default_factory=dict)

    def update(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Set columns from ``values`` and ``more``: typed ones as attributes, any other name in ``extra``."""
        for name, value in {**(values or {}), **more}.items():
            if name in _TYPED:
                setattr(self, name, value)
            else:
                self.extra[name] = value

    def as_dict(self) -> dict[str, Any]:
        """The row as one JSON object: the typed columns in table order, then ``extra``."""
        record = {name: getattr(self, name) for name in COLUMNS}
        record.update(self.extra)
        return record


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Row) if f.name != "extra")
_TYPED = frozenset(COLUMNS)
