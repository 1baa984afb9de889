"""ONNX Runtime on the CPU execution provider, with an explicit thread count and full graph optimisation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.cores import physical_cores
from common.errors import first_line
from engines.base import Engine, EngineError

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OrtSessionEngine(Engine):
    """Shared ONNX Runtime session handling; subclasses choose the execution providers."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # InferenceSession.run is documented thread-safe; each call gets its own outputs.
    concurrent_infer = True

    def session_options(self):
        """SessionOptions: full graph optimisation, sequential execution, ``threads`` intra-op threads.

        The option ``optimization: "disabled"`` turns graph optimisation off: a QDQ graph then runs as written,
        every quantized op in float between its DequantizeLinear and QuantizeLinear (INT8 simulated in float,
        no integer kernel; ``diagnose.int8_check``)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if self.options.optimization == "disabled"
            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = int(self.options.threads or physical_cores())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Which provider took each node, for the row (node_providers).
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        if self.options.profile:
            options.enable_profiling = True
            options.profile_file_prefix = self.options.profile
        return options

    def provider_list(self) -> list:
        """Providers handed to the session, each a name or (name, options)."""
        return list(self.providers)

    def activate_impl(self, model_path: Path) -> dict[str, tuple[tuple, np.dtype]]:
        import onnxruntime as ort

        try:
            # No fallback: ONNX Runtime's Python layer would otherwise retry a provider that fails to start (and,
            # in run(), one that fails mid-run) on the next providers, and a row would time another provider.
            self.session = ort.InferenceSession(
                str(model_path), self.session_options(), providers=self.provider_list(), enable_fallback=0
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad files
            first = first_line(exc)
            raise EngineError(f"{self.name}: cannot load {model_path}: {first}") from exc
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._feeds: Mapping[str, np.ndarray] = {}
        meta = {}
        for item in self.session.get_inputs():
            if item.type not in _ORT_TYPES:
                raise EngineError(f"{self.name}: input {item.name} has unsupported type {item.type}")
            meta[item.name] = (tuple(item.shape), np.dtype(_ORT_TYPES[item.type]))
        return meta

    def node_providers(self) -> dict[str, int]:
        """{provider: number of graph nodes it was assigned} in the active session, from ONNX Runtime's own
        record of the partition; empty when this onnxruntime keeps no such record."""
        counts: dict[str, int] = {}
        try:
            subgraphs = self.session.get_provider_graph_assignment_info()
        except (AttributeError, RuntimeError):
            return counts
        for subgraph in subgraphs:
            counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
        return counts

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, dict(feeds)), strict=False))

    def prepare_impl(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._feeds = dict(feeds)

    def run_prepared(self) -> None:
        # session.run returns only when the CPU work is done, so this is already synchronised.
        self.session.run(self.output_names, self._feeds)

    def describe(self) -> dict[str, Any]:
        options = self.session_options()
        described = {
            "providers": self.session.get_providers(),
            "node_providers": self.node_providers(),
            "intra_op_threads": options.intra_op_num_threads,
        }
        if self.options.optimization == "disabled":
            described["graph_optimization"] = "disabled"
        return described

    def end_profiling(self) -> str:
        """Stop the profiler that the ``profile`` option started; returns the path of its JSON trace (one event
        per node run, Chrome's trace format)."""
        self._require_active()
        if not self.options.profile:
            raise EngineError(f"{self.name}: profiling was not asked for (the engine option profile)")
        return self.session.end_profiling()

    def deactivate_impl(self) -> None:
        del self.session


class OrtCpuEngine(OrtSessionEngine):
    """``ort-cpu``: the CPU execution provider."""

    name = "ort-cpu"
    takes_provider_options = False

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed: pip install -e '.[cpu]'"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime build has no CPUExecutionProvider"
        return None
