"""ONNX Runtime on the CUDA execution provider, with feeds and outputs bound in device memory.

With I/O binding the timed region is the inference itself: inputs are copied to the device once in
``prepare``, outputs land in preallocated device buffers, and ``run_prepared`` is ``run_with_iobinding``
followed by a synchronisation of the outputs. ``include_copies`` puts the host-to-device copy of the inputs
and the device-to-host copy of the outputs back inside the timed region. ``cuda_graph`` turns on the
provider's CUDA graphs (``enable_cuda_graph``): ONNX Runtime captures the whole run once and replays it, which
needs inputs and outputs at fixed device addresses, exactly what the binding here provides.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineError
from engines.cuda import device_problem, package_version, unusable
from engines.options import option_string, provider_share
from engines.ort_cpu import _ORT_TYPES, OrtSessionEngine


def ort_gpu_problems(provider: str) -> tuple[list[str], bool]:
    """What in the installed packages keeps ONNX Runtime from running ``provider`` (not installed, both builds
    installed, provider not in ``onnxruntime.get_available_providers()``), and whether installing would help."""
    problems, missing = [], False
    try:
        import onnxruntime as ort
    except ImportError:
        problems.append("onnxruntime-gpu is not installed")
        missing = True
    else:
        if package_version("onnxruntime") and package_version("onnxruntime-gpu"):
            problems.append(
                "onnxruntime and onnxruntime-gpu are both installed and overwrite each other's module "
                "(pip uninstall -y onnxruntime onnxruntime-gpu first)"
            )
            missing = True
        elif provider not in ort.get_available_providers():
            build = "onnxruntime-gpu" if package_version("onnxruntime-gpu") else "the CPU package onnxruntime"
            problems.append(f"{provider} is not in onnxruntime.get_available_providers() ({build} is installed)")
            missing = True
    return problems, missing


def ort_gpu_problem(provider: str) -> str | None:
    """None when ONNX Runtime can run ``provider`` on a CUDA device here; otherwise every reason it cannot, with
    the install command when a package is missing."""
    problems, missing = ort_gpu_problems(provider)
    return unusable([*problems, device_problem() or ""], missing)


def load_gpu_libraries(tensorrt: bool = False) -> None:
    """Make pip-installed CUDA and cuDNN libraries (and TensorRT's, with ``tensorrt``) findable by ONNX
    Runtime's providers, which look them up by name on the loader path where pip does not put them."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None and "CUDAExecutionProvider" in ort.get_available_providers():
        with contextlib.suppress(Exception):
            preload()
    if tensorrt:
        # Importing the tensorrt wheel loads libnvinfer from its tensorrt_libs package; the TensorRT provider's
        # later dlopen by soname then finds the library already loaded.
        with contextlib.suppress(ImportError, OSError):
            import tensorrt  # noqa: F401


def _ep_error(log: str) -> str:
    """The "EP Error ..." line ONNX Runtime's Python layer prints before falling back to other providers."""
    for line in log.splitlines():
        if line.startswith("EP Error"):
            return line[len("EP Error") :].strip()[:400]
    return ""


class OrtDeviceEngine(OrtSessionEngine):
    """ONNX Runtime on a provider that runs on a CUDA device, with I/O binding; subclasses choose providers."""

    primary_provider = "CUDAExecutionProvider"
    int8_flavour = "tensorrt"
    # OrtValue device of the bound buffers.
    device_type = "cuda"

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.include_copies = bool(self.options.get("include_copies"))
        self.cuda_graph = bool(self.options.get("cuda_graph"))
        self.device_id = 0
        self.model_path: Path | None = None
        self._binding = None
        self._bound_shapes: dict[str, tuple[int, ...]] = {}
        self._device_inputs: dict[str, Any] = {}
        self._device_outputs: dict[str, Any] = {}
        self._host_feeds: dict[str, np.ndarray] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return ort_gpu_problem(cls.primary_provider)

    def cuda_options(self, primary: bool, device_id: int | str = 0) -> dict[str, str]:
        """Options of the CUDA provider: the device, CUDA graphs when it is the primary provider, then the
        user's share of ``--provider-options``."""
        options: dict[str, Any] = {"device_id": device_id}
        scopes = ["CUDAExecutionProvider"]
        if primary:
            scopes.append(self.name)
            if self.cuda_graph:
                options["enable_cuda_graph"] = True
        options.update(provider_share(self.options, scopes, primary))
        return {key: option_string(value) for key, value in options.items()}

    def load_libraries(self) -> None:
        """Make the provider's shared libraries loadable before the session is created."""
        load_gpu_libraries()

    def activate_impl(self, model_path: Path) -> dict[str, tuple[tuple, np.dtype]]:
        self.model_path = Path(model_path)
        self.load_libraries()
        first = self.provider_list()[0]
        try:
            self.device_id = int(first[1].get("device_id", 0)) if isinstance(first, tuple) else 0
        except ValueError:
            raise EngineError(f"{self.name}: device_id must be an integer, got {first[1]['device_id']!r}") from None
        # ONNX Runtime's Python layer catches a provider that fails to start, prints the error and silently
        # retries on the fallback providers; its printout is captured here so the row can say what happened.
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                meta = super().activate_impl(self.model_path)
        except EngineError as exc:
            detail = _ep_error(log.getvalue())
            raise EngineError(f"{exc}{f' ({detail})' if detail else ''}") from exc
        finally:
            sys.stderr.write(log.getvalue())
        active = self.session.get_providers()
        if not active or active[0] != self.primary_provider:
            del self.session
            detail = _ep_error(log.getvalue()) or "see ONNX Runtime's log"
            raise EngineError(
                f"{self.name}: ONNX Runtime could not start {self.primary_provider} and fell back to "
                f"{', '.join(active) or 'nothing'}: {detail}"
            )
        return meta

    def _bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Put ``feeds`` in device buffers bound to the session, reusing the buffers while shapes stay the same
        (CUDA graphs replay fixed addresses), and bind preallocated device outputs."""
        import onnxruntime as ort

        shapes = {name: tuple(array.shape) for name, array in feeds.items()}
        if self._binding is not None and shapes == self._bound_shapes:
            for name, array in feeds.items():
                self._device_inputs[name].update_inplace(np.ascontiguousarray(array))
            return
        if self._binding is not None and self.cuda_graph:
            raise EngineError(f"{self.name}: a CUDA graph replays fixed shapes; got {shapes}, had {self._bound_shapes}")
        binding = self.session.io_binding()
        inputs = {}
        for name, array in feeds.items():
            # A copy: on the CPU device an OrtValue aliases the array it is made from, and update_inplace would
            # then write into the caller's feeds.
            staged = np.array(array, order="C")
            inputs[name] = ort.OrtValue.ortvalue_from_numpy(staged, self.device_type, self.device_id)
            binding.bind_ortvalue_input(name, inputs[name])
        # Output shapes are known only after a run. One run with provider-allocated outputs finds them;
        # gpu_graph_id -1 keeps that run out of the CUDA graph, which is then captured on the fixed buffers.
        for name in self.output_names:
            binding.bind_output(name, self.device_type, self.device_id)
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", "-1")
        self.session.run_with_iobinding(binding, run_options)
        binding.synchronize_outputs()
        found = binding.get_outputs()
        binding.clear_binding_outputs()
        outputs = {}
        for name, value in zip(self.output_names, found, strict=True):
            dtype = _ORT_TYPES.get(value.data_type())
            if dtype is None:
                raise EngineError(f"{self.name}: output {name} has unsupported type {value.data_type()}")
            outputs[name] = ort.OrtValue.ortvalue_from_shape_and_type(
                value.shape(), dtype, self.device_type, self.device_id
            )
            binding.bind_ortvalue_output(name, outputs[name])
        self._binding, self._bound_shapes = binding, shapes
        self._device_inputs, self._device_outputs = inputs, outputs

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The accuracy check goes through the same bound buffers (and CUDA graph) that the timer measures.
        self._bind(feeds)
        self.session.run_with_iobinding(self._binding)
        return dict(zip(self.output_names, self._binding.copy_outputs_to_cpu(), strict=True))

    def prepare_impl(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._bind(feeds)
        self._host_feeds = {name: np.ascontiguousarray(array) for name, array in feeds.items()}

    def run_prepared(self) -> None:
        if self.include_copies:
            for name, array in self._host_feeds.items():
                self._device_inputs[name].update_inplace(array)
        self.session.run_with_iobinding(self._binding)
        if self.include_copies:
            self._binding.copy_outputs_to_cpu()
        else:
            # Returns when the device work writing the outputs has finished.
            self._binding.synchronize_outputs()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            provider_options={p[0]: p[1] for p in self.provider_list() if isinstance(p, tuple)},
            io_binding="device",
            include_copies=self.include_copies,
            cuda_graph=self.cuda_graph,
            device_id=self.device_id,
        )
        return info

    def deactivate_impl(self) -> None:
        # Device buffers go before the session that owns their allocator.
        self._binding = None
        self._device_inputs, self._device_outputs, self._host_feeds = {}, {}, {}
        self._bound_shapes = {}
        del self.session


class OrtCudaEngine(OrtDeviceEngine):
    """``ort-cuda``: the CUDA execution provider (CPU provider for the nodes it has no kernel for)."""

    name = "ort-cuda"

    def provider_list(self) -> list:
        return [("CUDAExecutionProvider", self.cuda_options(primary=True)), "CPUExecutionProvider"]
