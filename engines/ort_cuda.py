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

from common.packages import package_version
from engines.base import EngineError
from engines.cuda import CudaError, cuda_build_problem, device_problem, tf32_math, unusable
from engines.libraries import provider_library_problem
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
        else:
            problems.append(cuda_build_problem(ort_cuda_build(), f"onnxruntime-gpu {ort.__version__}") or "")
    return problems, missing


def ort_cuda_build() -> str | None:
    """The CUDA version the installed onnxruntime-gpu was built for (``13.0``), or None."""
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    return getattr(build_and_package_info, "cuda_version", None) or None


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

    uses_gpu = True

    primary_provider = "CUDAExecutionProvider"
    int8_flavour = "tensorrt"
    # OrtValue device of the bound buffers.
    device_type = "cuda"
    # Every call binds the same device buffers.
    concurrent_infer = False

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.include_copies = self.options.include_copies
        self.cuda_graph = self.options.cuda_graph
        self.device_id = 0
        self.model_path: Path | None = None
        self._binding = None
        self._bound_shapes: dict[str, tuple[int, ...]] = {}
        self._device_inputs: dict[str, Any] = {}
        self._device_outputs: dict[str, Any] = {}
        # Outputs whose shape depends on the data: bound to the device afresh before every run.
        self._per_run_outputs: list[str] = []
        self._host_feeds: dict[str, np.ndarray] = {}
        self._host_outputs: dict[str, np.ndarray] = {}
        self._pinned: dict[str, Any] = {}
        self._pin_context = None
        self._copy_stream = None
        self.host_memory = "none: copies not timed"
        self.activation_log = ""

    def cuda_device(self) -> int | None:
        return self.device_id

    def fp32_math(self) -> str:
        providers = self.provider_list()
        cuda = next((p[1] for p in providers if isinstance(p, tuple) and p[0] == "CUDAExecutionProvider"), {})
        return tf32_math(self.options.tf32 and cuda.get("use_tf32", "1") != "0", self.device_id)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return ort_gpu_problem(cls.primary_provider)

    def cuda_options(self, primary: bool, device_id: int | str = 0) -> dict[str, str]:
        """Options of the CUDA provider: the device, TF32 off with ``--no-tf32``, CUDA graphs when it is the
        primary provider, then the user's share of ``--provider-options``."""
        options: dict[str, Any] = {"device_id": device_id}
        if not self.options.tf32:
            # The provider's default is TF32 on (use_tf32=1) for FP32 convolutions and matrix products.
            options["use_tf32"] = False
        scopes = ["CUDAExecutionProvider"]
        if primary:
            scopes.append(self.name)
            if self.cuda_graph:
                options["enable_cuda_graph"] = True
        options.update(provider_share(self.options.provider_options, scopes, primary))
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
            self.activation_log = log.getvalue()
            sys.stderr.write(self.activation_log)
        active = self.session.get_providers()
        if not active or active[0] != self.primary_provider:
            del self.session
            # ONNX Runtime leaves a provider whose library cannot be loaded out of the session without an error;
            # what its loader said went to ONNX Runtime's log, so the library is looked for again here.
            detail = (
                _ep_error(log.getvalue())
                or provider_library_problem(self.primary_provider)
                or "see ONNX Runtime's log above"
            )
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
        outputs = {}
        layout = self._output_layout(binding, shapes)
        # In the model's output order, which is the order the binding gives its outputs back in (binding an
        # output again later keeps its place).
        for name in self.output_names:
            if name not in layout:
                binding.bind_output(name, self.device_type, self.device_id)
                continue
            shape, dtype = layout[name]
            outputs[name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device_type, self.device_id)
            binding.bind_ortvalue_output(name, outputs[name])
        self._per_run_outputs = [name for name in self.output_names if name not in layout]
        self._binding, self._bound_shapes = binding, shapes
        self._device_inputs, self._device_outputs = inputs, outputs

    def _bind_per_run(self) -> None:
        """Bind each data-dependent output to the device with no buffer, so that ONNX Runtime allocates it at
        this run's shape: a buffer kept from an earlier run of another shape would fail the run ("Shape mismatch
        attempting to re-use buffer")."""
        for name in self._per_run_outputs:
            self._binding.bind_output(name, self.device_type, self.device_id)

    def _output_layout(self, binding, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[tuple, type]]:
        """{output: (shape, numpy dtype)} for the feeds' ``shapes``, for preallocated device outputs; an output
        whose shape depends on the data is left out (it is bound per run).

        With CUDA graphs the shapes come from ONNX shape inference, with no run: a run before the buffers are
        fixed could be captured into the graph (the CUDA provider skips runs marked ``gpu_graph_id`` -1, but
        the TensorRT provider counts every run towards its capture), and outputs whose shape depends on the
        data cannot be replayed at all. Without CUDA graphs one run with provider-allocated outputs finds the
        shapes, and shape inference says which of them the data decides (an output it cannot fix is taken to
        be one: binding it per run costs a little time, a fixed buffer of the wrong size fails the run)."""
        import onnxruntime as ort

        if self.cuda_graph:
            from analysis.flops import output_shapes

            inferred = output_shapes(self.model_path, shapes)
            missing = [name for name in self.output_names if inferred.get(name) is None]
            if missing:
                raise EngineError(
                    f"{self.name}: CUDA graphs need output shapes known before the run; ONNX shape inference "
                    f"cannot give {', '.join(missing)} (shapes that depend on the data): run without --cuda-graph"
                )
            types = {o.name: o.type for o in self.session.get_outputs()}
            layout = {}
            for name in self.output_names:
                if types[name] not in _ORT_TYPES:
                    raise EngineError(f"{self.name}: output {name} has unsupported type {types[name]}")
                layout[name] = (inferred[name], _ORT_TYPES[types[name]])
            return layout
        from analysis.flops import output_shapes

        inferred = output_shapes(self.model_path, shapes)
        for name in self.output_names:
            binding.bind_output(name, self.device_type, self.device_id)
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", "-1")
        self.session.run_with_iobinding(binding, run_options)
        binding.synchronize_outputs()
        found = binding.get_outputs()
        binding.clear_binding_outputs()
        layout = {}
        for name, value in zip(self.output_names, found, strict=True):
            if value.data_type() not in _ORT_TYPES:
                raise EngineError(f"{self.name}: output {name} has unsupported type {value.data_type()}")
            if inferred.get(name) is not None:
                layout[name] = (tuple(value.shape()), _ORT_TYPES[value.data_type()])
        return layout

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The accuracy check goes through the same bound buffers (and CUDA graph) that the timer measures.
        self._bind(feeds)
        self._bind_per_run()
        self.session.run_with_iobinding(self._binding)
        return dict(zip(self.output_names, self._binding.copy_outputs_to_cpu(), strict=True))

    def prepare_impl(self, feeds: Mapping[str, np.ndarray]) -> None:
        self._bind(feeds)
        if self.include_copies:
            self._stage_host(feeds)

    def _stage_host(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Host buffers for the copies timed with ``include_copies``, allocated once: page-locked memory from the
        driver (in the device's primary context, the one ONNX Runtime's CUDA runtime uses), copied to and from
        the bound device buffers on a stream of our own, as the native TensorRT engine and trtexec do, so that
        every GPU engine times the same transfers. Where the driver gives none (bound buffers on another
        device), pageable memory and ONNX Runtime's own copies, recorded as such."""
        self._release_host()
        layouts = {name: (tuple(v.shape()), _ORT_TYPES[v.data_type()]) for name, v in self._device_outputs.items()}
        sizes = {name: array.nbytes for name, array in feeds.items()}
        sizes.update({f"out:{n}": np.dtype(t).itemsize * int(np.prod(shape)) for n, (shape, t) in layouts.items()})
        try:
            if self.device_type != "cuda":
                raise CudaError(f"the bound buffers are on {self.device_type}, not a CUDA device")
            from engines.cuda_driver import Context, HostBuffer, Stream, copy_to_device, copy_to_host

            # Bound once here: run_prepared is the timed loop.
            self._copies = (copy_to_device, copy_to_host)
            self._pin_context = Context(self.device_id)
            self._copy_stream = Stream()
            for key, size in sizes.items():
                self._pinned[key] = HostBuffer(size)
            self.host_memory = "page-locked"
        except CudaError as exc:
            self._release_host()
            self.host_memory = f"pageable ({exc})"
        self._host_feeds = {}
        for name, array in feeds.items():
            self._host_feeds[name] = self._host_array(name, array.shape, array.dtype)
            np.copyto(self._host_feeds[name], array)
        self._host_outputs = {name: self._host_array(f"out:{name}", *layout) for name, layout in layouts.items()}

    def _host_array(self, key: str, shape: tuple, dtype) -> np.ndarray:
        """A host array of ``shape``: a view of the page-locked buffer ``key`` when there is one."""
        return self._pinned[key].array(shape, dtype) if key in self._pinned else np.empty(shape, dtype)

    def run_prepared(self) -> None:
        if self._per_run_outputs:
            self._bind_per_run()
        if not self.include_copies:
            self.session.run_with_iobinding(self._binding)
            # Returns when the device work writing the outputs has finished.
            self._binding.synchronize_outputs()
            return
        stream = self._copy_stream
        if stream is None:
            for name, array in self._host_feeds.items():
                self._device_inputs[name].update_inplace(array)
            self.session.run_with_iobinding(self._binding)
            for name, array in self._host_outputs.items():
                np.copyto(array, self._device_outputs[name].numpy())
            self._copy_per_run_outputs()
            return
        copy_to_device, copy_to_host = self._copies
        for name, array in self._host_feeds.items():
            copy_to_device(self._device_inputs[name].data_ptr(), array, stream)
        stream.synchronize()
        # run_with_iobinding returns after ONNX Runtime has synchronised its own stream.
        self.session.run_with_iobinding(self._binding)
        for name, array in self._host_outputs.items():
            copy_to_host(array, self._device_outputs[name].data_ptr(), stream)
        stream.synchronize()
        self._copy_per_run_outputs()

    def _copy_per_run_outputs(self) -> None:
        """Copy each data-dependent output to the host, at this run's shape, through ONNX Runtime (its size is
        known only now, so no page-locked buffer was made for it)."""
        if self._per_run_outputs:
            values = dict(zip(self.output_names, self._binding.get_outputs(), strict=True))
            for name in self._per_run_outputs:
                values[name].numpy()

    def _release_host(self) -> None:
        # Views of the pinned memory go before the memory, the memory and the stream before their context.
        self._host_feeds, self._host_outputs = {}, {}
        for buffer in self._pinned.values():
            with contextlib.suppress(CudaError):
                buffer.free()
        if self._copy_stream is not None:
            with contextlib.suppress(CudaError):
                self._copy_stream.close()
        self._pinned, self._copy_stream = {}, None
        if self._pin_context is not None:
            with contextlib.suppress(CudaError):
                self._pin_context.close()
            self._pin_context = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            provider_options={p[0]: p[1] for p in self.provider_list() if isinstance(p, tuple)},
            io_binding="device",
            include_copies=self.include_copies,
            host_memory=self.host_memory,
            cuda_graph=self.cuda_graph,
            device_id=self.device_id,
            fp32_math=self.fp32_math(),
        )
        if self._per_run_outputs:
            info["outputs_bound_per_run"] = list(self._per_run_outputs)
        return info

    def deactivate_impl(self) -> None:
        # Device buffers go before the session that owns their allocator.
        self._release_host()
        self._binding = None
        self._device_inputs, self._device_outputs = {}, {}
        self._per_run_outputs, self._bound_shapes = [], {}
        del self.session


class OrtCudaEngine(OrtDeviceEngine):
    """``ort-cuda``: the CUDA execution provider (CPU provider for the nodes it has no kernel for)."""

    name = "ort-cuda"

    def provider_list(self) -> list:
        return [("CUDAExecutionProvider", self.cuda_options(primary=True)), "CPUExecutionProvider"]
