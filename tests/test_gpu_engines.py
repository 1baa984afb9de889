"""GPU and vendor engines.

Without a GPU: engine discovery and the reasons an engine is unusable, ``--provider-options`` parsing and
exactly what reaches ``onnxruntime.InferenceSession``, native TensorRT engine-cache keys, ``unsupported``
rows in a run that asks for GPU engines, and ``ort:CPUExecutionProvider`` as a real end-to-end run of the
generic provider route. With a GPU (marked ``gpu``): every engine at fp32, fp16 and int8 against ort-cpu
FP32, the CUDA-graph and include-copies paths, and TensorRT's engine cache reused on a second activation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, save

import engines
import suite
from bench.env import environment
from bench.isolation import run_isolated
from cli.options import UsageError, engine_options_from, parse_engines
from cli.parser import build_parser
from common import precisions
from engines import EngineError, UnknownEngineError
from engines.cuda import TENSORRT_INSTALL, device_problem, gpu_environment, nvidia_smi_gpus
from engines.options import EngineOptions, parse_provider_options, provider_share
from engines.ort_cuda import OrtCudaEngine, OrtDeviceEngine
from engines.ort_trt import OrtTrtEngine, elf_needed, profile_string, provider_nvinfer, tensorrt_library_problem
from engines.tensorrt_native import TensorRTEngine, engine_cache_key, exact_profile, shapes_from_onnx
from onnx_models.artifacts import resolve
from tests.graphs import add_one_model, save_graph

GPU_ENGINES = ("ort-cuda", "ort-trt", "tensorrt")
QUICK = ["--size", "tiny", "--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3", "--accuracy-samples", "8"]
REAL_SESSION = ort.InferenceSession


@pytest.fixture
def tiny_onnx(tmp_path):
    """A real one-node ONNX model, y = x + 1 with x of shape (batch, 4), saved as ``fp32.onnx``."""
    return add_one_model(tmp_path / "fp32.onnx")


@pytest.fixture
def sessions(monkeypatch):
    """Replace onnxruntime.InferenceSession with a recorder of its arguments that then refuses to start."""
    calls = []

    def record(path, sess_options=None, providers=None, **kwargs):
        calls.append({"path": path, "options": sess_options, "providers": providers})
        raise RuntimeError("session creation recorded")

    monkeypatch.setattr(ort, "InferenceSession", record)
    return calls


def run_options(*argv: str, engine_list=("ort-cuda",)) -> dict:
    """The engine options ``suite.py run ARGV`` hands to every engine of ``engine_list``."""
    return engine_options_from(build_parser().parse_args(["run", *argv]), engine_list).as_dict()


# ----------------------------------------------------------------------------------- discovery and reasons


def test_registry_names_patterns_and_flavours():
    assert engines.engine_names() == ["ort-cpu", "ort-cuda", "ort-trt", "tensorrt"]
    assert engines.engine_patterns() == ["ort:<ProviderName>"]
    assert engines.is_engine_name("ort:OpenVINOExecutionProvider") and engines.is_engine_name("tensorrt")
    assert not engines.is_engine_name("ort:") and not engines.is_engine_name("trt")
    with pytest.raises(UnknownEngineError, match="valid engines: ort-cpu, ort-cuda, ort-trt, tensorrt, ort:<Provi"):
        engines.engine_class("ort:")
    cls = engines.engine_class("ort:ROCMExecutionProvider")
    assert cls is engines.engine_class("ort:ROCMExecutionProvider")
    assert (cls.name, cls.provider, cls.int8_flavour) == ("ort:ROCMExecutionProvider", "ROCMExecutionProvider", "cpu")
    assert engines.engine_class("ort:TensorrtExecutionProvider").int8_flavour == "tensorrt"
    # The GPU engines all consume the symmetric INT8 artifact TensorRT needs.
    assert {engines.engine_class(e).int8_flavour for e in GPU_ENGINES} == {"tensorrt"}


def test_pattern_engine_resolves_in_a_fresh_child_process():
    # Cells run in spawned children that know their engine only by name.
    assert run_isolated(engines.availability, {"name": "ort:CPUExecutionProvider"}, 120).value is None
    missing = run_isolated(engines.availability, {"name": "ort:NoSuchExecutionProvider"}, 120)
    assert missing.ok and "NoSuchExecutionProvider is not in onnxruntime.get_available_providers()" in missing.value


def test_reasons_on_this_machine():
    reasons = {e: engines.availability(e) for e in GPU_ENGINES}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        for engine in ("ort-cuda", "ort-trt"):
            assert "is not in onnxruntime.get_available_providers()" in reasons[engine]
            assert "pip install -e '.[gpu]'" in reasons[engine] and "replaces onnxruntime" in reasons[engine]
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt is not installed" in reasons["tensorrt"] and TENSORRT_INSTALL in reasons["tensorrt"]
    if device_problem() is not None:
        assert all(device_problem() in reason for reason in reasons.values())
    # The default engine list is every usable registered engine, whatever this machine has.
    assert parse_engines(None) == [e for e in engines.engine_names() if engines.availability(e) is None]


def test_reasons_follow_each_missing_piece(monkeypatch):
    import engines.ort_cuda as ort_cuda
    import engines.tensorrt_native as native

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort_cuda, "package_version", lambda *names: "1.31.1" if "onnxruntime-gpu" in names else None)
    monkeypatch.setattr(ort_cuda, "device_problem", lambda: None)
    assert OrtCudaEngine.unavailable_reason() is None
    monkeypatch.setattr(ort_cuda, "device_problem", lambda: "no CUDA device is visible to the driver")
    # No package is missing, so no install command: only the device.
    assert OrtCudaEngine.unavailable_reason() == "no CUDA device is visible to the driver"
    monkeypatch.setattr(ort_cuda, "package_version", lambda *names: "1.31.1")
    assert "both installed" in OrtCudaEngine.unavailable_reason()

    found = {"tensorrt": object()}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: found.get(name) or real_find_spec(name, *a))
    monkeypatch.setattr(native, "device_problem", lambda: None)
    monkeypatch.setattr(native, "module_version", lambda module: "11.4.0.106")
    assert TensorRTEngine.unavailable_reason() is None
    monkeypatch.setattr(native, "module_version", lambda module: "8.6.1")
    assert TensorRTEngine.unavailable_reason().startswith("TensorRT 8.6.1 is too old")


def test_elf_needed_reads_what_readelf_reads():
    import shutil
    import subprocess

    library = Path(ort.__file__).parent / "capi"
    library = next(library.glob("onnxruntime_pybind11_state*.so"))
    needed = elf_needed(library)
    assert "libc.so.6" in needed
    if shutil.which("readelf"):
        dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True).stdout
        assert needed == [line.split("[")[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    with pytest.raises(ValueError, match="not a 64-bit little-endian ELF"):
        elf_needed(Path(ort.__file__))


@pytest.mark.skipif(
    not (Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so").is_file(),
    reason="this onnxruntime has no TensorRT provider library (onnxruntime-gpu is not installed)",
)
def test_the_installed_tensorrt_provider_names_its_libnvinfer():
    # onnxruntime-gpu 1.31.1 links libnvinfer.so.10: TensorRT 11 beside it leaves ort-trt unusable.
    assert provider_nvinfer().startswith("libnvinfer.so.")
    if importlib.util.find_spec("tensorrt") is None:
        assert provider_nvinfer() in OrtTrtEngine.unavailable_reason()


def test_tensorrt_major_and_library_reasons(monkeypatch):
    import engines.ort_trt as ort_trt

    real_loader = ort_trt.load_library
    monkeypatch.setattr(ort_trt, "provider_nvinfer", lambda: "libnvinfer.so.10")
    monkeypatch.setattr(ort_trt, "module_distributions", lambda module: ["tensorrt-cu13-bindings"])
    monkeypatch.setattr(ort_trt, "module_version", lambda module: "11.4.0.106")
    reason = tensorrt_library_problem()
    assert "links libnvinfer.so.10 (TensorRT 10.x) but TensorRT 11.4.0.106 is installed" in reason
    assert "pip install 'tensorrt-cu13==10.*'" in reason
    monkeypatch.setattr(ort_trt, "module_version", lambda module: "10.16.1.11")
    monkeypatch.setattr(ort_trt, "load_library", lambda soname: f"{soname}: cannot open shared object file")
    assert "needs libnvinfer.so.10, which cannot be loaded (libnvinfer.so.10: cannot open" in tensorrt_library_problem()
    monkeypatch.setattr(ort_trt, "load_library", lambda soname: None)
    monkeypatch.setattr(ort_trt, "cuda_build_problem", lambda build, what: f"{what} needs CUDA {build}")
    assert tensorrt_library_problem() == "TensorRT 10.16.1.11 needs CUDA 13.0"
    monkeypatch.setattr(ort_trt, "provider_nvinfer", lambda: None)
    assert "no TensorRT provider library" in tensorrt_library_problem()
    # The real loader: a soname that is nowhere gives the loader's own message.
    assert "libnvinfer-absent.so.99" in real_loader("libnvinfer-absent.so.99")


def test_a_driver_older_than_the_build_is_a_reason(monkeypatch):
    import engines.cuda as cuda
    import engines.ort_cuda as ort_cuda

    assert cuda.cuda_major_of("tensorrt-cu13-bindings") == "13.0" and cuda.cuda_major_of("tensorrt") is None
    monkeypatch.setattr(cuda, "driver_cuda_version", lambda: "12.8")
    reason = cuda.cuda_build_problem("13.0", "onnxruntime-gpu 1.31.1")
    assert reason == (
        "the NVIDIA driver supports CUDA 12.8, but onnxruntime-gpu 1.31.1 is built for CUDA 13.0: install an R580 "
        "or newer driver, or a build of onnxruntime-gpu 1.31.1 for CUDA 12"
    )
    # Minor version compatibility: an older minor of the same major runs the build.
    assert cuda.cuda_build_problem("12.9", "x") is None and cuda.cuda_build_problem(None, "x") is None
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort_cuda, "package_version", lambda *names: "1.31.1" if "onnxruntime-gpu" in names else None)
    monkeypatch.setattr(ort_cuda, "device_problem", lambda: None)
    monkeypatch.setattr(ort_cuda, "ort_cuda_build", lambda: "13.0")
    assert "is built for CUDA 13.0: install an R580" in OrtCudaEngine.unavailable_reason()


def test_gpu_tests_skip_without_a_device_whatever_onnxruntime_lists(monkeypatch):
    import engines.cuda as cuda
    from tests import conftest

    class Item:
        def __init__(self, marked: bool):
            self.keywords = {"gpu": True} if marked else {}
            self.markers = []

        def add_marker(self, marker):
            self.markers.append(marker)

    # What onnxruntime-gpu says on a machine without a driver: its GPU providers are listed all the same.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(cuda, "device_problem", lambda: "no NVIDIA driver (libcuda.so.1 cannot be loaded)")
    gpu, cpu = Item(True), Item(False)
    conftest.skip_gpu_tests([gpu, cpu])
    assert [m.kwargs["reason"] for m in gpu.markers] == [
        "needs an NVIDIA GPU: no NVIDIA driver (libcuda.so.1 cannot be loaded)"
    ]
    assert cpu.markers == []
    # With a device the gpu tests run, whatever else is missing (each then skips on its own engine's reason).
    monkeypatch.setattr(cuda, "device_problem", lambda: None)
    gpu = Item(True)
    conftest.skip_gpu_tests([gpu])
    assert gpu.markers == []


def test_engines_command_lists_each_engine_and_the_pattern(capsys):
    assert suite.main(["engines"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {*engines.engine_names(), "ort:<ProviderName>"}
    for engine in GPU_ENGINES:
        reason = engines.availability(engine)
        assert (" no " in rows[engine] and reason in rows[engine]) if reason else " yes " in rows[engine]
    assert "ort:CPUExecutionProvider" in rows["ort:<ProviderName>"]


# ------------------------------------------------------------------------------ options -> InferenceSession


def test_provider_options_parsing_and_scoping():
    raw = parse_provider_options(
        '{"device_id": 1, "flag": true, "CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"},'
        ' "tensorrt": {"workspace_mib": 1024}}'
    )
    assert provider_share(raw, ["CUDAExecutionProvider", "ort-cuda"], primary=True) == {
        "device_id": 1,
        "flag": True,
        "cudnn_conv_algo_search": "HEURISTIC",
    }
    assert provider_share(raw, ["CUDAExecutionProvider"], primary=False) == {"cudnn_conv_algo_search": "HEURISTIC"}
    assert provider_share(raw, ["tensorrt"], primary=True) == {"device_id": 1, "flag": True, "workspace_mib": 1024}
    assert run_options("--provider-options", '{"a": 1}', "--cuda-graph", "--include-copies", "--threads", "3") == {
        "threads": 3,
        "provider_options": {"a": 1},
        "include_copies": True,
        "cuda_graph": True,
    }
    assert run_options() == {}
    # The options are typed: a name no engine knows is refused where an engine is made, not ignored.
    with pytest.raises(EngineError, match="unknown engine option cuda_graphs; valid: threads, provider_options"):
        OrtCudaEngine({"cuda_graphs": True})
    assert OrtCudaEngine({"cuda_graph": True}).options == EngineOptions(cuda_graph=True)
    # ort-cpu reads no provider options: given only to it, they are refused rather than silently dropped.
    with pytest.raises(UsageError, match="would be ignored: no engine of this run \\(ort-cpu\\) takes any"):
        run_options("--provider-options", '{"a": 1}', engine_list=["ort-cpu"])
    assert run_options("--provider-options", '{"a": 1}', engine_list=["ort-cpu", "ort:CPUExecutionProvider"])


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{bad", "--provider-options is not valid JSON"),
        ("[1, 2]", "--provider-options must be a JSON object"),
        ('{"foo": {"a": 1}}', "only a provider name"),
        ('{"a": [1]}', "must be a string, number or boolean"),
    ],
)
def test_bad_provider_options_are_one_clear_line(text, fragment, tmp_path, capsys):
    out = tmp_path / "never"
    assert suite.main(["run", "--models", "resnet50", "--provider-options", text, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and not out.exists()


def test_unknown_engine_names_the_pattern(capsys):
    assert suite.main(["run", "--engines", "ort-cpu,ort:", "--size", "tiny"]) == 2
    assert "unknown engine ort:; valid engines: ort-cpu, ort-cuda, ort-trt, tensorrt, ort:<ProviderName>" in (
        capsys.readouterr().err
    )
    assert parse_engines("ort-cpu,ort:CPUExecutionProvider") == ["ort-cpu", "ort:CPUExecutionProvider"]


def test_ort_cuda_session_arguments(sessions, tiny_onnx):
    with pytest.raises(EngineError, match="cannot load .*session creation recorded"):
        OrtCudaEngine({"threads": 3}).activate(tiny_onnx)
    assert sessions[-1]["providers"] == [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert sessions[-1]["options"].intra_op_num_threads == 3
    options = run_options(
        "--provider-options",
        '{"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC", "TensorrtExecutionProvider": {"trt_dla_enable": 1}}',
        "--cuda-graph",
    )
    with pytest.raises(EngineError):
        OrtCudaEngine(options).activate(tiny_onnx)
    assert sessions[-1]["providers"] == [
        ("CUDAExecutionProvider", {"device_id": "1", "enable_cuda_graph": "1", "cudnn_conv_algo_search": "HEURISTIC"}),
        "CPUExecutionProvider",
    ]


def test_ort_trt_session_arguments(sessions, tiny_onnx):
    options = run_options(
        "--provider-options",
        '{"device_id": 1, "trt_builder_optimization_level": 5,'
        ' "CUDAExecutionProvider": {"cudnn_conv_algo_search": "DEFAULT"}, "ort-cuda": {"ignored": 1}}',
        "--cuda-graph",
    )
    with pytest.raises(EngineError):
        OrtTrtEngine(options).activate(tiny_onnx, {"x": [2, 4]})
    trt, cuda, cpu = sessions[-1]["providers"]
    assert trt[0] == "TensorrtExecutionProvider" and cpu == "CPUExecutionProvider"
    cache = trt[1]["trt_engine_cache_path"]
    assert trt[1] == {
        "device_id": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(tiny_onnx.parent / "engines" / "ort-trt"),
        "trt_profile_min_shapes": "x:2x4",
        "trt_profile_opt_shapes": "x:2x4",
        "trt_profile_max_shapes": "x:2x4",
        "trt_cuda_graph_enable": "1",
        "trt_builder_optimization_level": "5",
    }
    # Precision comes from the artifact: the provider's precision switches are never set.
    assert cache.startswith(str(tiny_onnx.parent / "engines" / "ort-trt" / "fp32-")) and os.path.isdir(cache)
    assert cuda == ("CUDAExecutionProvider", {"device_id": "1", "cudnn_conv_algo_search": "DEFAULT"})
    # Another batch size gets its own engine directory rather than evicting this one's engine.
    with pytest.raises(EngineError):
        OrtTrtEngine().activate(tiny_onnx, {"x": [8, 4]})
    assert sessions[-1]["providers"][0][1]["trt_engine_cache_path"] != cache
    assert profile_string({"ids": (2, 384), "mask": (2, 384)}) == "ids:2x384,mask:2x384"
    assert profile_string({"input": (1, 512), "sr": (), "state": (2, 1, 128)}) == "input:1x512,state:2x1x128"
    with pytest.raises(EngineError, match="cannot express"):
        profile_string({"a:b": (1,)})


class StartedSession:
    """What a session that started its providers answers about itself."""

    def __init__(self, providers):
        self.providers = providers

    def get_providers(self):
        return [p[0] if isinstance(p, tuple) else p for p in self.providers]

    def get_inputs(self):
        return []

    def get_outputs(self):
        return []


def test_ort_trt_retries_without_an_explicit_profile(monkeypatch, tiny_onnx):
    calls = []
    refusal = (
        "[ONNXRuntimeError] : 11 : EP_FAIL : User needs to provide all the dynamic shape inputs with associated "
        "profiles if they want to explicitly set profiles through provider options.\nFollowing input(s) has no "
        "associated shape profiles provided: /rpn/NonZero_output_0"
    )

    def start(path, sess_options=None, providers=None, enable_fallback=1, **kwargs):
        calls.append(providers)
        if len(calls) == 1:
            # With its fallback off, ONNX Runtime raises the provider's failure (its second line names the input).
            assert enable_fallback == 0
            raise RuntimeError(refusal)
        return StartedSession(providers)

    monkeypatch.setattr(ort, "InferenceSession", start)
    monkeypatch.setattr(OrtTrtEngine, "load_libraries", lambda self: None)
    engine = OrtTrtEngine()
    engine.activate(tiny_onnx, {"x": [2, 4]})
    first, second = (dict(c[0][1]) for c in calls)
    assert first["trt_profile_min_shapes"] == "x:2x4" and not any(k.startswith("trt_profile") for k in second)
    note = engine.describe()["trt_profile"]
    assert note.startswith("implicit, built at the first run") and "/rpn/NonZero_output_0" in note
    # Any other failure to start is not retried.
    calls.clear()
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, providers=None, **k: StartedSession(providers[1:]))
    with pytest.raises(EngineError, match="could not start TensorrtExecutionProvider"):
        OrtTrtEngine().activate(tiny_onnx, {"x": [2, 4]})


def test_cuda_graph_output_shapes_come_from_inference_not_a_run(tmp_path, tiny_onnx):
    from analysis.flops import output_shapes

    assert output_shapes(tiny_onnx, {"x": (3, 4)}) == {"y": (3, 4)}
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["y"])],
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
    )
    dynamic = tmp_path / "nonzero.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(dynamic))
    assert output_shapes(dynamic, {"x": (2, 4)}) == {"y": None}
    # A declared output shape that carries the export batch is inferred afresh for the cell's batch.
    exported = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    assert output_shapes(save_graph(exported, tmp_path / "relu.onnx"), {"x": (2, 4)}) == {"y": (2, 4)}
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with BoundOnCpu({"cuda_graph": True}) as engine:
        engine.activate(tiny_onnx)
        runs = []
        real_run = engine.session.run_with_iobinding
        engine.session.run_with_iobinding = lambda *args: runs.append(args) or real_run(*args)
        np.testing.assert_array_equal(engine.infer({"x": x})["y"], x + 1)
        # The one run is the inference itself: no output-discovery run that a CUDA graph could capture.
        assert len(runs) == 1
    with BoundOnCpu({"cuda_graph": True}) as engine:
        engine.activate(dynamic)
        with pytest.raises(EngineError, match="CUDA graphs need output shapes known before the run.*cannot give y"):
            engine.infer({"x": x})


def test_named_provider_session_arguments(sessions, tiny_onnx):
    options = run_options(
        "--provider-options",
        '{"device_type": "GPU", "num_of_threads": 2, "ort:OpenVINOExecutionProvider": {"cache_dir": "/c"},'
        ' "CUDAExecutionProvider": {"ignored": 1}}',
    )
    with pytest.raises(EngineError):
        engines.engine_class("ort:OpenVINOExecutionProvider")(options).activate(tiny_onnx)
    assert sessions[-1]["providers"] == [
        ("OpenVINOExecutionProvider", {"device_type": "GPU", "num_of_threads": "2", "cache_dir": "/c"}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(EngineError):
        engines.engine_class("ort:CPUExecutionProvider")({}).activate(tiny_onnx)
    assert sessions[-1]["providers"] == [("CPUExecutionProvider", {})]


def test_a_provider_that_falls_back_is_an_error(monkeypatch, tiny_onnx):
    def fall_back(path, sess_options=None, providers=None, **kwargs):
        # What ONNX Runtime's Python layer does when a provider fails to start: print, then retry on the CPU.
        print(f"EP Error provider bridge failed when using {providers}")
        return REAL_SESSION(path, sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", fall_back)
    with pytest.raises(EngineError, match="could not start CUDAExecutionProvider and fell back to CPUExecutionPr"):
        OrtCudaEngine().activate(tiny_onnx)
    with pytest.raises(EngineError, match="did not start OpenVINOExecutionProvider.*provider bridge failed"):
        engines.engine_class("ort:OpenVINOExecutionProvider")().activate(tiny_onnx)


class BoundOnCpu(OrtDeviceEngine):
    """ort-cuda's I/O-binding engine with its buffers in CPU memory, so that a real session runs its code here."""

    name = "bound-cpu"
    primary_provider = "CPUExecutionProvider"
    device_type = "cpu"

    def provider_list(self) -> list:
        return [("CPUExecutionProvider", {})]


@pytest.mark.parametrize("include_copies", [False, True])
def test_io_binding_path_on_a_real_session(tiny_onnx, include_copies):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with BoundOnCpu({"include_copies": include_copies}) as engine:
        engine.activate(tiny_onnx)
        np.testing.assert_array_equal(engine.infer({"x": x})["y"], x + 1)
        bound = engine._device_outputs["y"]
        # Same shapes: the inputs are updated in place and the outputs stay where they were bound.
        np.testing.assert_array_equal(engine.infer({"x": 2 * x})["y"], 2 * x + 1)
        assert engine._device_outputs["y"] is bound
        engine.prepare({"x": 3 * x})
        engine.run_prepared()
        np.testing.assert_array_equal(engine._device_outputs["y"].numpy(), 3 * x + 1)
        if include_copies:
            # The timed copies land in host buffers allocated once (pageable here: no CUDA device), not new arrays.
            host = engine._host_outputs["y"]
            engine.run_prepared()
            assert engine._host_outputs["y"] is host
            np.testing.assert_array_equal(host, 3 * x + 1)
            assert engine.describe()["host_memory"].startswith("pageable (the bound buffers are on cpu")
        # Another batch rebinds (without CUDA graphs).
        np.testing.assert_array_equal(engine.infer({"x": x[:1]})["y"], x[:1] + 1)
        settings = engine.describe()
        assert settings["io_binding"] == "device" and settings["include_copies"] is include_copies
    with BoundOnCpu({"cuda_graph": True}) as engine:
        engine.activate(tiny_onnx)
        engine.infer({"x": x})
        with pytest.raises(EngineError, match="a CUDA graph replays fixed shapes"):
            engine.infer({"x": x[:1]})


def test_named_cpu_provider_runs_a_real_session(tiny_onnx):
    engine = engines.engine_class("ort:CPUExecutionProvider")({"threads": 1})
    with engine:
        engine.activate(tiny_onnx)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        np.testing.assert_array_equal(engine.infer({"x": x})["y"], x + 1)
        engine.prepare({"x": x})
        engine.run_prepared()
        assert engine.describe()["providers"] == ["CPUExecutionProvider"]
        assert engine.timing_breakdown(1) == {}


# --------------------------------------------------------------------------------- native TensorRT, offline


def test_tensorrt_engine_cache_key():
    base = {
        "artifact_sha256": "a" * 64,
        "tensorrt_version": "10.13.0.35",
        "gpu_name": "NVIDIA H200",
        "profile": exact_profile({"ids": (2, 384), "mask": (2, 384)}),
        "settings": {"workspace_mib": 4096},
    }
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base)
    reordered = {**base, "profile": exact_profile({"mask": (2, 384), "ids": (2, 384)})}
    assert engine_cache_key(**reordered) == key
    changes = {
        "artifact_sha256": "b" * 64,
        "tensorrt_version": "11.4.0.106",
        "gpu_name": "NVIDIA L4",
        "profile": exact_profile({"ids": (8, 384), "mask": (8, 384)}),
        "settings": {"workspace_mib": 2048},
    }
    keys = {field: engine_cache_key(**{**base, field: value}) for field, value in changes.items()}
    # Only the minimum of one input's profile changes here: still a different engine.
    wider = dict(base["profile"], ids=((1, 384), (2, 384), (2, 384)))
    keys["profile min"] = engine_cache_key(**{**base, "profile": wider})
    assert len({key, *keys.values()}) == len(keys) + 1, keys


def test_tensorrt_settings_and_shapes(tiny_onnx):
    assert TensorRTEngine({"provider_options": {"ort-cuda": {"x": 1}}}).settings() == {
        "device_id": 0,
        "workspace_mib": 4096,
    }
    options = {"provider_options": {"device_id": 1, "tensorrt": {"workspace_mib": 1024, "cache_dir": "/c"}}}
    assert TensorRTEngine(options).settings() == {"device_id": 1, "workspace_mib": 1024, "cache_dir": "/c"}
    with pytest.raises(EngineError, match="unknown option cudnn_conv_algo_search"):
        TensorRTEngine({"provider_options": {"cudnn_conv_algo_search": "DEFAULT"}}).settings()
    with pytest.raises(EngineError, match="workspace_mib must be an integer"):
        TensorRTEngine({"provider_options": {"workspace_mib": "lots"}}).settings()
    assert shapes_from_onnx(tiny_onnx, 3) == {"x": (3, 4)}


# ------------------------------------------------------------------------------------------- environment


def fake_nvidia_smi(directory, knows_compute_cap: bool):
    """An executable ``nvidia-smi`` in ``directory`` answering the query the way a real one does."""
    script = directory / "nvidia-smi"
    reply = 'echo "NVIDIA H200, 570.86.15, 143771, 9.0"' if knows_compute_cap else "exit 2"
    script.write_text(
        f'#!/bin/sh\ncase "$*" in *compute_cap*) {reply};; *) echo "NVIDIA H200, 570.86.15, 143771";; esac\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_gpu_facts_from_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    fake_nvidia_smi(tmp_path, knows_compute_cap=True)
    gpu = {"name": "NVIDIA H200", "driver": "570.86.15", "memory_mib": 143771}
    assert nvidia_smi_gpus() == [{**gpu, "compute_capability": "9.0"}]
    fake_nvidia_smi(tmp_path, knows_compute_cap=False)
    assert nvidia_smi_gpus() == [gpu]
    assert environment({})["gpu"]["gpus"] == [gpu]


def test_no_gpu_means_no_gpu_section():
    if device_problem() is None or nvidia_smi_gpus():
        pytest.skip("this machine has a GPU")
    assert gpu_environment() == {} and "gpu" not in environment({})


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """A tiny run that asks for every engine, ort:CPUExecutionProvider included, in every precision one of them
    runs (int8fp16 is the GPU engines')."""
    out = tmp_path_factory.mktemp("mixed")
    asked = ["ort-cpu", *GPU_ENGINES, "ort:CPUExecutionProvider"]
    status = suite.main(
        ["run", "--models", "resnet50", "--engines", ",".join(asked), "--batch-sizes", "2"]
        + QUICK
        + ["--out", str(out)]
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return status, rows, out


def test_unusable_engines_give_unsupported_rows(mixed_run):
    status, rows, _ = mixed_run
    # Each engine gets the precisions it runs: the GPU engines int8fp16 too, the CPU ones no row of it.
    assert status == 0 and len(rows) == sum(len(precisions.run_by((e,))) for e in {r["engine"] for r in rows})
    assert len({r["engine"] for r in rows}) == 5
    for row in rows:
        reason = engines.availability(row["engine"])
        if reason is None:
            assert row["status"] == "ok", row["error"]
        else:
            assert row["status"] == "unsupported" and row["error"] == f"{row['engine']}: {reason}"


def test_named_cpu_provider_end_to_end(mixed_run):
    _, rows, out = mixed_run
    named = {r["precision"]: r for r in rows if r["engine"] == "ort:CPUExecutionProvider"}
    assert {p: r["status"] for p, r in named.items()} == {"fp32": "ok", "fp16": "ok", "int8": "ok"}
    assert named["fp32"]["accuracy_cosine"] == pytest.approx(1.0) and named["fp32"]["accuracy_max_abs_error"] < 1e-4
    assert named["fp16"]["accuracy_cosine"] > 0.99 and named["int8"]["accuracy_cosine"] > 0.9
    # The generic route takes the CPU-style INT8 artifact for a non-TensorRT provider, like ort-cpu.
    assert named["int8"]["artifact"].endswith(f"/{resolve('x', 'tiny', 'int8').name}.onnx")
    settings = json.loads(named["fp32"]["engine_settings"])
    assert settings["providers"] == ["CPUExecutionProvider"] and settings["io_binding"] == "host"
    assert "samples_ms" not in named["fp32"] and named["fp32"]["iterations"] >= 3
    assert json.loads((out / "env.json").read_text())["settings"]["engine_options"] == {}


# ------------------------------------------------------------------------------------------------ on a GPU


def usable_gpu_engines() -> list[str]:
    """The GPU engines usable here; a test that needs one that is not skips with its reason."""
    return [e for e in GPU_ENGINES if engines.availability(e) is None]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    if not usable_gpu_engines():
        pytest.skip(
            "no GPU engine is usable here: " + "; ".join(f"{e}: {engines.availability(e)}" for e in GPU_ENGINES)
        )
    argv = ["run", "--models", "resnet50", "--engines", ",".join(["ort-cpu", *usable_gpu_engines()])]
    status = suite.main([*argv, "--batch-sizes", "2", *QUICK, "--out", str(out)])
    return status, [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()], out


# Cosine similarity to ort-cpu FP32 each precision must reach on the tiny ResNet-50. GPU "FP32" may run its
# convolutions and matrix products in TF32 (both ONNX Runtime's CUDA provider and TensorRT allow it by
# default), hence not 1.0; ort-cpu's own INT8 reaches about 0.995 on this model.
MIN_COSINE = {"fp32": 0.999, "fp16": 0.99, "int8": 0.9}


@pytest.mark.gpu
def test_gpu_engines_agree_with_cpu_fp32(gpu_run):
    status, rows, out = gpu_run
    assert status == 0 and {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows if r["error"]]
    for row in rows:
        assert row["accuracy_cosine"] >= MIN_COSINE[row["precision"]], row
        if row["engine"] == "tensorrt":
            assert 0 < row["compute_ms"] and 0 < row["h2d_ms"] and 0 < row["d2h_ms"]
            assert json.loads(row["engine_settings"])["strongly_typed"]
        if row["engine"] in GPU_ENGINES and row["precision"] == "int8":
            assert row["artifact"].endswith("/int8-tensorrt.onnx")
    assert json.loads((out / "env.json").read_text())["gpu"]["gpus"]
    # ort-trt kept its engines next to the artifacts, for the next run to reuse.
    for row in (r for r in rows if r["engine"] == "ort-trt"):
        assert any(p.suffix == ".engine" for p in (Path(row["artifact"]).parent / "engines" / "ort-trt").rglob("*"))


@pytest.mark.gpu
def test_gpu_cuda_graph_at_every_precision(tmp_path):
    """CUDA graphs on every usable GPU engine, FP32, FP16 and INT8, with and without the copies timed."""
    if not usable_gpu_engines():
        pytest.skip("no GPU engine is usable here")
    argv = ["run", "--models", "resnet50", "--engines", ",".join(usable_gpu_engines()), "--batch-sizes", "2"]
    for copies in ([], ["--include-copies"]):
        out = tmp_path / f"run{len(copies)}"
        status = suite.main([*argv, "--cuda-graph", *copies, *QUICK, "--out", str(out)])
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert status == 0 and {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]
        for row in rows:
            settings = json.loads(row["engine_settings"])
            assert settings["cuda_graph"] and settings["include_copies"] is bool(copies)
            assert row["accuracy_cosine"] >= MIN_COSINE[row["precision"]], row


def ort_node_events(engine, artifact: Path, feeds, tmp_path) -> list[dict]:
    """The node events of ONNX Runtime's profile of one inference of ``artifact`` on ``engine``: each event's
    ``args`` (op_name, provider, input types)."""
    options = engine.session_options

    def profiling():
        chosen = options()
        chosen.enable_profiling = True
        chosen.profile_file_prefix = str(tmp_path / engine.name)
        return chosen

    engine.session_options = profiling
    with engine:
        engine.activate(artifact, {name: array.shape for name, array in feeds.items()})
        engine.infer(feeds)
        trace = Path(engine.session.end_profiling())
    return [e["args"] for e in json.loads(trace.read_text()) if e.get("cat") == "Node" and "provider" in e["args"]]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_ort_engines_really_run_the_lowered_graph(gpu_run, tmp_path, precision):
    """Which provider ran which node, from ONNX Runtime's profiler: ort-cuda runs every convolution on the GPU in
    float16 (FP16) or between Q/DQ pairs on the GPU (INT8: the CUDA provider has no integer convolution, so its
    INT8 is Q/DQ arithmetic in float); ort-trt hands every node to TensorRT (one fused engine node)."""
    from models import get_model
    from onnx_models.store import ModelStore

    feeds = get_model("resnet50").make_feeds("tiny", 2, 1)
    name = resolve("resnet50", "tiny", precision, "tensorrt").name
    artifact = ModelStore("resnet50", "tiny").verified_path(name)
    if engines.availability("ort-cuda") is None:
        events = ort_node_events(OrtCudaEngine(), artifact, feeds, tmp_path)
        convs = [e for e in events if e["op_name"] == "Conv"]
        assert convs and {e["provider"] for e in convs} == {"CUDAExecutionProvider"}
        if precision == "fp16":
            assert all("float16" in json.dumps(e.get("input_type_shape")) for e in convs)
        else:
            dq = [e for e in events if e["op_name"] == "DequantizeLinear"]
            assert dq and {e["provider"] for e in dq} == {"CUDAExecutionProvider"}
    if engines.availability("ort-trt") is None:
        events = ort_node_events(OrtTrtEngine(), artifact, feeds, tmp_path)
        assert events and {e["provider"] for e in events} == {"TensorrtExecutionProvider"}, events


@pytest.mark.gpu
def test_tensorrt_engine_cache_is_reused(gpu_run, tmp_path):
    from models import get_model
    from onnx_models.store import ModelStore

    feeds = get_model("resnet50").make_feeds("tiny", 2, 1)
    results = []
    for _ in range(2):
        with TensorRTEngine({"provider_options": {"cache_dir": str(tmp_path)}}) as engine:
            engine.activate(
                ModelStore("resnet50", "tiny").verified_path("fp16"), {k: v.shape for k, v in feeds.items()}
            )
            results.append((engine.describe(), engine.infer(feeds)))
    (first, out_first), (second, out_second) = results
    assert (first["engine_cache"], second["engine_cache"]) == ("built", "hit")
    assert first["engine_file"] == second["engine_file"] and os.path.isfile(first["engine_file"])
    assert second["load_or_build_s"] < first["load_or_build_s"]
    for name in out_first:
        np.testing.assert_array_equal(out_first[name], out_second[name])


# ------------------------------------------------------------- what a GPU row ran: switches, TF32, partitions


def half_model(path: Path) -> Path:
    """y = x + 1 computed in float16 between casts, the shape of the suite's FP16 artifacts."""
    one = helper.make_tensor("one", TensorProto.FLOAT16, [], np.array(1, np.float16).view(np.uint16).tolist())
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
            helper.make_node("Add", ["h", "one"], ["s"]),
            helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT),
        ],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [one],
    )
    return save_graph(graph, path)


def qdq_in_a_branch_model(path: Path) -> Path:
    """y = x + 1 with a symmetric INT8 Q/DQ pair on x inside an If body: precision switches are looked for in
    control-flow bodies too."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("zero", TensorProto.INT8, [], [0])
    body = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
            helper.make_node("Add", ["dq", "one"], ["b"]),
        ],
        "body",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4])],
        [scale, zero],
    )
    plain = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["c"])], "plain", [], [helper.make_tensor_value_info("c", 1, None)]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=body, else_branch=plain)],
        "branch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("flag", TensorProto.BOOL, [], [1]),
        ],
    )
    return save_graph(graph, path)


def test_ort_trt_sets_the_precision_switches_the_artifact_needs(sessions, tmp_path, tiny_onnx):
    """A weakly typed network (all ONNX Runtime's provider builds) considers FP16 kernels only with
    trt_fp16_enable and refuses a Q/DQ graph without trt_int8_enable: the switches follow the artifact."""
    half, quantized = half_model(tmp_path / "fp16.onnx"), qdq_in_a_branch_model(tmp_path / "int8.onnx")
    switches = {}
    for artifact in (tiny_onnx, half, quantized):
        with pytest.raises(EngineError):
            OrtTrtEngine().activate(artifact, {"x": [2, 4]})
        trt = sessions[-1]["providers"][0][1]
        switches[artifact.stem] = sorted(k for k in trt if k in ("trt_fp16_enable", "trt_int8_enable"))
        assert all(trt[k] == "1" for k in switches[artifact.stem])
    assert switches == {"fp32": [], "fp16": ["trt_fp16_enable"], "int8": ["trt_int8_enable"]}


def add_two_model(path: Path) -> Path:
    """y = x + 2, saved over ``path``: an artifact rebuilt in place under the same name."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "two"], ["y"])],
        "add_two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    return save_graph(graph, path)


def test_ort_trt_engines_are_keyed_by_the_artifacts_content(sessions, tiny_onnx):
    """An artifact rebuilt in place under its fixed name (export --seed, a recalibration) must not load the
    engine TensorRT built from the old one; nor may a --no-tf32 run load a TF32 engine."""

    def cache(options=None) -> str:
        with pytest.raises(EngineError):
            OrtTrtEngine(options).activate(tiny_onnx, {"x": [2, 4]})
        return sessions[-1]["providers"][0][1]["trt_engine_cache_path"]

    first = cache()
    assert cache() == first
    add_two_model(tiny_onnx)
    rebuilt = cache()
    assert rebuilt != first and Path(rebuilt).name.startswith("fp32-")
    assert cache({"tf32": False}) != rebuilt


def test_tf32_is_named_in_every_gpu_row_and_can_be_turned_off(sessions, tiny_onnx, monkeypatch):
    import engines.cuda as cuda_facts

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert run_options("--no-tf32") == {"tf32": False} and run_options() == {}
    with pytest.raises(EngineError):
        OrtCudaEngine({"tf32": False}).activate(tiny_onnx)
    assert sessions[-1]["providers"][0] == ("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"})
    monkeypatch.setattr(cuda_facts, "compute_capability", lambda device_id=0: (9, 0))
    assert OrtCudaEngine().fp32_math() == "TF32" and OrtTrtEngine().fp32_math() == "TF32"
    assert OrtCudaEngine({"tf32": False}).fp32_math() == "FP32"
    assert OrtCudaEngine({"provider_options": {"use_tf32": 0}}).fp32_math() == "FP32"
    monkeypatch.setattr(cuda_facts, "compute_capability", lambda device_id=0: (7, 5))
    assert OrtCudaEngine().fp32_math() == "FP32"
    monkeypatch.setattr(cuda_facts, "compute_capability", lambda device_id=0: (9, 0))

    # ort-trt: TensorRT's provider has no TF32 switch; NVIDIA_TF32_OVERRIDE=0, which TensorRT, cuBLAS and cuDNN
    # read, is set while the session is made, and put back after.
    seen = []

    def record(path, sess_options=None, providers=None, **kwargs):
        seen.append((os.environ.get("NVIDIA_TF32_OVERRIDE"), providers[1]))
        raise RuntimeError("session creation recorded")

    monkeypatch.setattr(ort, "InferenceSession", record)
    engine = OrtTrtEngine({"tf32": False})
    with pytest.raises(EngineError):
        engine.activate(tiny_onnx, {"x": [2, 4]})
    assert seen[-1] == ("0", ("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"}))
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert OrtCudaEngine().fp32_math() == "FP32"


def test_cpu_rows_say_fp32_and_the_report_names_tf32():
    from engines.ort_cpu import OrtCpuEngine
    from report.run_report import fp32_math_note

    assert OrtCpuEngine().fp32_math() == "FP32"
    cpu = {"engine": "ort-cpu", "device": "cpu", "status": "ok", "fp32_math": "FP32"}
    assert fp32_math_note([cpu]) is None
    gpu = {"engine": "ort-cuda", "device": "cuda:0", "status": "ok", "fp32_math": "TF32"}
    note = fp32_math_note([cpu, gpu, {**gpu, "engine": "tensorrt", "fp32_math": "FP32"}])
    assert note.startswith("On the GPU, FP32 convolutions and matrix products ran as FP32 on tensorrt; TF32 on ")
    assert "--no-tf32" in note


def test_onnx_runtime_never_falls_back_to_another_provider(tiny_onnx):
    """ONNX Runtime's Python layer retries a provider that fails mid-run on the next providers unless its
    fallback is off: a row would then time another provider than it names."""
    for engine in (engines.engine_class("ort:CPUExecutionProvider")(), BoundOnCpu()):
        with engine:
            engine.activate(tiny_onnx)
            assert engine.session._enable_fallback is False
            assert engine.describe()["node_providers"] == {"CPUExecutionProvider": 1}


def test_a_provider_library_that_cannot_load_is_named(monkeypatch, tiny_onnx, tmp_path):
    """ONNX Runtime leaves a provider whose library cannot be loaded out of the session, with no error and the
    loader's message only in its own log: the reason names the library."""
    import engines.libraries as libraries
    import engines.ort_cuda as ort_cuda

    real = Path(ort.capi.onnxruntime_pybind11_state.__file__)
    monkeypatch.setattr(libraries, "provider_library", lambda provider: real)
    monkeypatch.setattr(libraries, "elf_needed", lambda path: ["libc.so.6", "libcublasLt.so.99"])
    monkeypatch.setattr(libraries, "cudnn_soname", lambda: None)
    problem = libraries.provider_library_problem("CUDAExecutionProvider")
    assert problem.startswith(f"{real.name} needs libcublasLt.so.99, which cannot be loaded (")
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, providers=None, **k: StartedSession(providers[1:]))
    monkeypatch.setattr(OrtCudaEngine, "load_libraries", lambda self: None)
    monkeypatch.setattr(ort_cuda, "provider_library_problem", libraries.provider_library_problem)
    with pytest.raises(EngineError, match=r"fell back to CPUExecutionProvider: .*needs libcublasLt\.so\.99"):
        OrtCudaEngine().activate(tiny_onnx)


class PartitionedSession(StartedSession):
    """A started session whose graph ONNX Runtime split between providers ({provider: node count})."""

    def __init__(self, providers, split):
        super().__init__(providers)
        self.split = split

    def get_provider_graph_assignment_info(self):
        class Subgraph:
            def __init__(self, name, count):
                self.ep_name, self.count = name, count

            def get_nodes(self):
                return [object()] * self.count

        return [Subgraph(name, count) for name, count in self.split.items()]


def test_ort_trt_cuda_graph_is_refused_when_tensorrt_does_not_take_every_node(monkeypatch, tiny_onnx):
    split = {"TensorrtExecutionProvider": 5, "CUDAExecutionProvider": 2}
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, providers=None, **k: PartitionedSession(providers, split))
    monkeypatch.setattr(OrtTrtEngine, "load_libraries", lambda self: None)
    with pytest.raises(EngineError, match="--cuda-graph needs every node on TensorRT, but 2 on CUDAExecutionProv"):
        OrtTrtEngine({"cuda_graph": True}).activate(tiny_onnx, {"x": [2, 4]})
    engine = OrtTrtEngine()
    engine.activate(tiny_onnx, {"x": [2, 4]})
    assert engine.node_providers() == split
    whole = {"TensorrtExecutionProvider": 7}
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, providers=None, **k: PartitionedSession(providers, whole))
    OrtTrtEngine({"cuda_graph": True}).activate(tiny_onnx, {"x": [2, 4]})


def nonzero_model(path: Path) -> Path:
    """y = the indices of x's nonzero entries: an output whose shape the data decides."""
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["r"])],
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None), helper.make_tensor_value_info("r", 1, None)],
    )
    return save_graph(graph, path)


@pytest.mark.parametrize("include_copies", [False, True])
def test_outputs_whose_shape_the_data_decides_are_bound_per_run(tmp_path, include_copies):
    """A detector's boxes differ in number from one sample to the next: a device buffer bound at the first
    run's shape fails the next ("Shape mismatch attempting to re-use buffer")."""
    model = nonzero_model(tmp_path / "nonzero.onnx")
    few = np.array([[1, 0, 0, 0], [0, 0, 0, 2]], np.float32)
    many = np.array([[1, 2, 3, 0], [4, 0, 5, 6]], np.float32)
    with BoundOnCpu({"include_copies": include_copies}) as engine:
        engine.activate(model)
        for x in (few, many, few):
            outputs = engine.infer({"x": x})
            np.testing.assert_array_equal(outputs["y"], np.array(np.nonzero(x)))
            np.testing.assert_array_equal(outputs["r"], x)
        engine.prepare({"x": many})
        engine.run_prepared()
        engine.run_prepared()
        assert engine.describe()["outputs_bound_per_run"] == ["y"]
        # The output whose shape is known keeps its one preallocated buffer.
        assert list(engine._device_outputs) == ["r"]


@pytest.mark.gpu
def test_gpu_ort_cuda_no_tf32_is_ieee_fp32(tmp_path):
    """A 512x512 matrix product on ort-cuda: with --no-tf32 as exact as FP32 (against float64), with TF32 on
    an Ampere-or-newer GPU about a thousand times less exact (a 10-bit mantissa)."""
    if engines.availability("ort-cuda") is not None:
        pytest.skip(engines.availability("ort-cuda"))
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((512, 512)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [512, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512, 512])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = save_graph(graph, tmp_path / "matmul.onnx")
    x = rng.standard_normal((512, 512)).astype(np.float32)
    exact = x.astype(np.float64) @ weight.astype(np.float64)
    errors = {}
    for tf32 in (True, False):
        with OrtCudaEngine({"tf32": tf32}) as engine:
            engine.activate(model)
            got = engine.infer({"x": x})["y"]
            errors[engine.fp32_math()] = float(np.abs(got - exact).max() / np.abs(exact).max())
    assert errors["FP32"] < 1e-5, errors
    if "TF32" in errors:
        assert errors["TF32"] > 1e-4, errors


@pytest.mark.gpu
def test_gpu_outputs_whose_shape_the_data_decides(tmp_path):
    usable = [e for e in ("ort-cuda", "ort-trt") if engines.availability(e) is None]
    if not usable:
        pytest.skip("neither ort-cuda nor ort-trt is usable here")
    model = nonzero_model(tmp_path / "nonzero.onnx")
    for name in usable:
        with engines.engine_class(name)() as engine:
            engine.activate(model, {"x": (2, 4)})
            for x in (np.eye(2, 4, dtype=np.float32), np.ones((2, 4), np.float32)):
                np.testing.assert_array_equal(engine.infer({"x": x})["y"], np.array(np.nonzero(x)))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_gpu_ort_trt_runs_the_artifacts_precision_inside_tensorrt(precision, tmp_path):
    """The precision of the layers inside the engines TensorRT built for ort-trt, read back with TensorRT's
    engine inspector: FP16 layers for the FP16 artifact, INT8 layers for the INT8 one, neither for FP32
    (with --no-tf32, so that nothing may be reduced)."""
    if engines.availability("ort-trt") is not None:
        pytest.skip(engines.availability("ort-trt"))
    from models import get_model
    from onnx_models.store import ModelStore

    feeds = get_model("resnet50").make_feeds("tiny", 2, 1)
    artifact = ModelStore("resnet50", "tiny").verified_path(resolve("resnet50", "tiny", precision, "tensorrt").name)
    with OrtTrtEngine({"tf32": False}) as engine:
        engine.activate(artifact, {k: v.shape for k, v in feeds.items()})
        engine.infer(feeds)
        layers = engine.describe()["trt_layer_precisions"]
    assert isinstance(layers, dict) and layers, f"TensorRT's inspector gave no layer types: {layers}"
    expected = {"fp32": set(), "fp16": {"FP16"}, "int8": {"INT8"}}[precision]
    assert expected <= set(layers) and not ({"FP16", "INT8"} - expected) & set(layers), layers


@pytest.mark.gpu
def test_gpu_ort_trt_never_runs_the_engine_of_an_artifact_rebuilt_in_place(tmp_path):
    """y = x + 1, then the same file rebuilt as y = x + 2: the second session must build (or find) an engine
    of the new content, not load the first one's from the provider's cache."""
    if engines.availability("ort-trt") is not None:
        pytest.skip(engines.availability("ort-trt"))
    artifact = add_one_model(tmp_path / "fp32.onnx")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with OrtTrtEngine() as engine:
        engine.activate(artifact, {"x": x.shape})
        np.testing.assert_array_equal(engine.infer({"x": x})["y"], x + 1)
    add_two_model(artifact)
    with OrtTrtEngine() as engine:
        engine.activate(artifact, {"x": x.shape})
        np.testing.assert_array_equal(engine.infer({"x": x})["y"], x + 2)
