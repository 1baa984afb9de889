"""The native TensorRT engine and the CUDA driver calls under it.

Without a GPU: the driver's ctypes prototypes against CUDA 13's ``cuda.h`` (where a copy is installed), the
wrappers on a Python fake and on a ``libcuda`` stand-in compiled against that header (the compiler checks its
definitions against the real prototypes, and ctypes really marshals every call); the engine's logic on a fake
``tensorrt`` module and a fake driver that keeps "device" memory in host bytes and logs every call: feeds reach
the device before any run or graph capture, ``run_prepared`` holds only the enqueue (or graph replay), the
copies when asked and the synchronise, the event-timed breakdown is a pass of its own, data-dependent outputs
come back at the shape TensorRT notified, ``strongly_typed`` is read from the network and kept beside the
cached engine, and the install reason.

With a GPU and TensorRT (marked ``gpu``): FP16 and INT8 engines really run lowered precision (the engine
inspector's layer types), a CUDA graph is replayed when asked and gives the plain run's outputs, an int64
Gather runs under a CUDA graph, a NonZero output comes back at its data-dependent shape, and SSD (NMS in the
graph) runs end to end.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import re
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import engines.cuda as cuda
import engines.cuda_driver as cuda_driver
import engines.tensorrt_native as native
import suite
from engines import EngineError
from engines.cuda import TENSORRT_INSTALL, CudaError, device_problem
from engines.tensorrt_native import TensorRTEngine, format_type, summarise_layers
from tests.graphs import add_one_model as add_one
from tests.graphs import save_graph

TABLE = np.arange(10, dtype=np.float32) * 2


# ------------------------------------------------------------------------------------------ ONNX models


def _save(tmp_path: Path, graph, name: str) -> Path:
    return save_graph(graph, tmp_path / f"{name}.onnx")


def add_one_model(tmp_path: Path) -> Path:
    """y = x + 1, x of shape (batch, 4)."""
    return add_one(tmp_path / "add_one.onnx")


def gather_model(tmp_path: Path) -> Path:
    """y = TABLE[ids] with int64 ids of shape (batch, 3): an id outside 0..9 reads out of bounds."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [10], TABLE.tolist())
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [table],
    )
    return _save(tmp_path, graph, "gather")


def nonzero_model(tmp_path: Path) -> Path:
    """idx = NonZero(x > 0) for x of shape (2, 4): an output of shape (2, number of positives)."""
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    graph = helper.make_graph(
        [helper.make_node("Greater", ["x", "zero"], ["positive"]), helper.make_node("NonZero", ["positive"], ["idx"])],
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [2, "count"])],
        [zero],
    )
    return _save(tmp_path, graph, "nonzero")


def matmul_model(tmp_path: Path, weight: np.ndarray) -> Path:
    """y = x @ weight, x of shape (rows, weight.shape[0])."""
    w = helper.make_tensor("w", TensorProto.FLOAT, list(weight.shape), weight.reshape(-1).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", weight.shape[1]])],
        [w],
    )
    return _save(tmp_path, graph, "matmul")


# ------------------------------------------------------------------------------- the driver's prototypes


def _cuda_header() -> Path | None:
    """A CUDA 13 ``cuda.h`` installed here (the nvidia-cuda-runtime wheel, Triton, a toolkit), or None."""
    places = [Path(p) / sub for p in sys.path for sub in ("nvidia/cu13/include", "triton/backends/nvidia/include")]
    for folder in [*places, Path("/usr/local/cuda/include")]:
        header = folder / "cuda.h"
        if header.is_file():
            found = re.search(r"#define CUDA_VERSION (\d+)", header.read_text(errors="replace"))
            if found and int(found.group(1)) >= 13000:
                return header
    return None


_C_TYPES = {
    "int": ("int", 4),
    "unsigned int": ("uint", 4),
    "size_t": ("uint", 8),
    "unsigned long long": ("uint", 8),
    "float": ("float", 4),
    "CUdeviceptr": ("uint", 8),
    "CUdevice": ("int", 4),
    "CUresult": ("int", 4),
    "CUstreamCaptureMode": ("int", 4),
    "CUdevice_attribute": ("int", 4),
    "void": None,
    "char": None,
}
_C_HANDLES = ("CUcontext", "CUstream", "CUevent", "CUgraph", "CUgraphExec")


def _c_kind(declaration: str):
    """A named C parameter's (kind, size), a pointer as ("pointer", what it points to): ``CUdeviceptr *dptr``
    -> ("pointer", ("uint", 8)); void and char pointees are None, as c_void_p and c_char_p say nothing more."""
    *type_words, _name = declaration.replace("const ", "").replace("*", " * ").split()
    base = " ".join(w for w in type_words if w != "*")
    kind = ("pointer", None) if base in _C_HANDLES else _C_TYPES[base]
    for _ in range(type_words.count("*")):
        kind = ("pointer", kind)
    return kind


def _ctypes_kind(ctype):
    if ctype in (ctypes.c_void_p, ctypes.c_char_p):
        return ("pointer", None)
    if isinstance(ctype, type) and issubclass(ctype, ctypes._Pointer):
        return ("pointer", _ctypes_kind(ctype._type_))
    if ctype is ctypes.c_float:
        return ("float", 4)
    return ("int" if ctype(-1).value < 0 else "uint", ctypes.sizeof(ctype))


@pytest.mark.skipif(_cuda_header() is None, reason="no CUDA 13 cuda.h is installed here to check against")
def test_driver_prototypes_match_cuda_h():
    text = _cuda_header().read_text(errors="replace")
    for api, (symbols, argtypes) in cuda_driver.PROTOTYPES.items():
        # The symbol: what cuda.h maps the API name to (the legacy default stream: __CUDA_API_PTSZ(x) is x).
        define = re.search(rf"^\s*#define\s+{api}\s+(?:__CUDA_API_PT(?:SZ|DS)\((\w+)\)|(\w+))", text, re.M)
        expected = (define.group(1) or define.group(2)) if define else api
        assert symbols[0] == expected, (api, symbols, expected)
        # The prototype: its first (public) declaration.
        prototype = re.search(rf"CUresult CUDAAPI {api}\((.*?)\);", text, re.S)
        assert prototype, api
        params = [p for p in prototype.group(1).split(",") if p.strip()]
        assert [_c_kind(p) for p in params] == [_ctypes_kind(t) for t in argtypes], (api, prototype.group(1))


@pytest.mark.skipif(_cuda_header() is None, reason="no CUDA 13 cuda.h is installed here to check against")
def test_error_names_match_cuda_h():
    # Every CUresult engines.cuda names, by name and value, as cuda.h's enum cudaError_enum has it.
    text = _cuda_header().read_text(errors="replace")
    enum = re.search(r"typedef enum cudaError_enum \{(.*?)\} CUresult;", text, re.S).group(1)
    results = {int(value): name for name, value in re.findall(r"^\s*(CUDA_\w+)\s*=\s*(\d+)", enum, re.M)}
    assert {code: results.get(code) for code in cuda._ERRORS} == cuda._ERRORS


class FakeLib:
    """A stand-in ``libcuda``: every symbol of PROTOTYPES (less ``missing``) answering CUDA_SUCCESS, with
    allocations that return addresses (real host memory for cuMemHostAlloc) and a log of the calls."""

    def __init__(self, missing=()):
        self.calls: list[tuple] = []
        self.keep: dict[int, object] = {}
        # Each thread's context stack, as the driver keeps one per thread.
        self.threads = threading.local()
        self.next_device = 0x7F0000000000
        for symbols, _ in cuda_driver.PROTOTYPES.values():
            for symbol in symbols:
                if symbol not in missing:
                    setattr(self, symbol, self._function(symbol))

    def _function(self, symbol):
        def call(*args):
            self.calls.append((symbol, *args))
            handler = getattr(self, "_" + symbol, None)
            return handler(*args) if handler else 0

        return call

    def _cuMemAlloc_v2(self, out, size):
        self.next_device += 4096
        out._obj.value = self.next_device
        return 0

    def _cuMemHostAlloc(self, out, size, flags):
        memory = ctypes.create_string_buffer(size)
        out._obj.value = ctypes.addressof(memory)
        self.keep[ctypes.addressof(memory)] = memory
        return 0

    def _cuGetErrorName(self, code, out):
        out._obj.value = {2: b"CUDA_ERROR_OUT_OF_MEMORY"}.get(code, b"CUDA_ERROR_UNKNOWN")
        return 0

    def _handle(self, out, *rest):
        out._obj.value = 0x1000 + len(self.calls)
        return 0

    _cuStreamCreate = _cuEventCreate = _cuDevicePrimaryCtxRetain = _handle

    def _cuDeviceGetAttribute(self, out, attribute, device):
        out._obj.value = {cuda_driver.ATTRIBUTE_CC_MAJOR: 8, cuda_driver.ATTRIBUTE_CC_MINOR: 6}[attribute]
        return 0

    def _cuStreamEndCapture(self, stream, out):
        out._obj.value = 0xAB
        return 0

    def _stack(self) -> list:
        if not hasattr(self.threads, "stack"):
            self.threads.stack = []
        return self.threads.stack

    def _cuCtxPushCurrent_v2(self, context):
        self._stack().append(context)
        return 0

    def _cuCtxPopCurrent_v2(self, out):
        out._obj.value = self._stack().pop() if self._stack() else None
        return 0

    def _cuCtxGetCurrent(self, out):
        out._obj.value = self._stack()[-1] if self._stack() else None
        return 0

    def _cuCtxSetCurrent(self, context):
        stack = self._stack()
        if not context:
            stack[-1:] = []
        elif stack:
            stack[-1] = context
        else:
            stack.append(context)
        return 0

    def current(self):
        """The context current on the calling thread (0 for none)."""
        return self._stack()[-1] if self._stack() else 0

    def _cuGraphInstantiateWithFlags(self, out, graph, flags):
        out._obj.value = 0xCD
        return 0

    def named(self, symbol):
        return [c for c in self.calls if c[0] == symbol]


@pytest.fixture
def fake_lib(monkeypatch):
    """engines.cuda_driver bound to a FakeLib."""
    lib = FakeLib()
    bound = cuda_driver.Driver(lib)
    monkeypatch.setattr(cuda_driver, "driver", lambda: bound)
    return lib


def test_driver_binds_the_versioned_symbols():
    lib = FakeLib()
    bound = cuda_driver.Driver(lib)
    assert bound.symbols["cuMemAlloc"] == "cuMemAlloc_v2" and bound.symbols["cuStreamDestroy"] == "cuStreamDestroy_v2"
    assert bound.symbols["cuEventElapsedTime"] == "cuEventElapsedTime_v2"
    assert lib.cuMemAlloc_v2.argtypes == [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    assert lib.cuMemcpyHtoDAsync_v2.restype is ctypes.c_int
    # A driver from before cuEventElapsedTime_v2 (CUDA 12.8) has the same prototype under the old name.
    assert cuda_driver.Driver(FakeLib(missing={"cuEventElapsedTime_v2"})).symbols["cuEventElapsedTime"] == (
        "cuEventElapsedTime"
    )
    with pytest.raises(CudaError, match="lacks cuMemAlloc_v2, cuGraphLaunch"):
        cuda_driver.Driver(FakeLib(missing={"cuMemAlloc_v2", "cuGraphLaunch"}))
    with pytest.raises(CudaError, match=r"cuMemAlloc\(8\) failed: CUDA_ERROR_OUT_OF_MEMORY"):
        bound.check("cuMemAlloc(8)", 2)


def test_driver_wrappers(fake_lib):
    stream = cuda_driver.Stream()
    assert stream.handle and fake_lib.named("cuStreamCreate")[0][2] == 0
    device = cuda_driver.DeviceBuffer(0)
    assert device.nbytes == 1 and device.ptr == fake_lib.next_device
    device.free()
    device.free()
    assert [c[1] for c in fake_lib.named("cuMemFree_v2")] == [fake_lib.next_device]
    host = cuda_driver.HostBuffer(32)
    view = host.array((2, 4), np.float32)
    view[:] = np.arange(8).reshape(2, 4)
    np.testing.assert_array_equal(host.array((8,), np.float32), np.arange(8))
    with pytest.raises(ValueError, match="needs more than the 32 bytes"):
        host.array((9,), np.float32)
    cuda_driver.copy_to_device(0x5000, view, stream)
    cuda_driver.copy_to_host(view, 0x6000, stream, nbytes=8)
    cuda_driver.copy_to_device(0x5000, np.zeros(0, np.float32), stream)
    assert fake_lib.named("cuMemcpyHtoDAsync_v2") == [
        ("cuMemcpyHtoDAsync_v2", 0x5000, view.ctypes.data, 32, stream.handle)
    ]
    assert fake_lib.named("cuMemcpyDtoHAsync_v2") == [
        ("cuMemcpyDtoHAsync_v2", view.ctypes.data, 0x6000, 8, stream.handle)
    ]
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda_driver.copy_to_device(0x5000, view.T, stream)
    context = cuda_driver.Context(0)
    assert context.compute_capability == (8, 6)
    context.close()
    context.close()
    assert len(fake_lib.named("cuCtxPopCurrent_v2")) == len(fake_lib.named("cuDevicePrimaryCtxRelease_v2")) == 1


def in_thread(function):
    """Call ``function`` on a new thread; return what it returned, or raise what it raised."""
    result = {}

    def run():
        try:
            result["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def test_context_is_made_current_on_the_calling_thread(fake_lib):
    context = cuda_driver.Context(0)
    assert fake_lib.current() == context.handle
    fake_lib.calls.clear()
    # Already current here: the driver is asked once, and nothing is changed; then the thread's flag alone.
    context.make_current()
    context.ensure_current()
    assert [c[0] for c in fake_lib.calls] == ["cuCtxGetCurrent"]

    def worker():
        fake_lib.calls.clear()
        # A new thread has no context: the first call binds it, the next ones ask nothing of the driver.
        for _ in range(3):
            context.ensure_current()
        assert fake_lib.current() == context.handle
        calls = [c[0] for c in fake_lib.calls] + [c[1] for c in fake_lib.named("cuCtxSetCurrent")]
        # Released from a thread that did not push it: this thread's binding is undone, the other's stack kept.
        context.close()
        return calls, fake_lib.current()

    calls, after = in_thread(worker)
    assert calls == ["cuCtxGetCurrent", "cuCtxSetCurrent", context.handle]
    assert after == 0 and fake_lib.current() == context.handle
    assert not fake_lib.named("cuCtxPopCurrent_v2") and len(fake_lib.named("cuDevicePrimaryCtxRelease_v2")) == 1


def test_cuda_graph_capture(fake_lib):
    stream = cuda_driver.Stream()
    queued = []
    graph = cuda_driver.CudaGraph(stream, lambda: queued.append("enqueue"))
    assert queued == ["enqueue"] and fake_lib.named("cuStreamBeginCapture_v2")[0][1:] == (stream.handle, 1)
    graph.launch(stream)
    graph.launch(stream)
    assert graph.launches == 2 and [c[1:] for c in fake_lib.named("cuGraphLaunch")] == [(0xCD, stream.handle)] * 2
    graph.close()
    graph.close()
    assert len(fake_lib.named("cuGraphExecDestroy")) == len(fake_lib.named("cuGraphDestroy")) == 1

    def failing():
        raise RuntimeError("enqueue failed")

    with pytest.raises(RuntimeError, match="enqueue failed"):
        cuda_driver.CudaGraph(stream, failing)
    # The capture was ended all the same, so the stream stays usable, and what it gave was destroyed.
    assert len(fake_lib.named("cuStreamEndCapture")) == 2 and len(fake_lib.named("cuGraphDestroy")) == 2


# A libcuda stand-in compiled against cuda.h: each function below is defined under its API name, so the
# header's macros give it the exported symbol a real driver has (cuMemAlloc -> cuMemAlloc_v2) and the compiler
# rejects a definition that disagrees with the header's prototype. "Device" memory is host memory, so copies
# really move bytes through the ctypes calls.
FAKE_LIBCUDA = r"""
#include <cuda.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int retained, ctx_token, capture_mode = -1, launches;
/* Each thread's context stack, as the driver keeps one per thread: a call that needs a context fails without
   one, with the driver's own error. */
static __thread CUcontext stack[4];
static __thread int depth;
#define current (depth ? stack[depth - 1] : NULL)
#define NEED_CONTEXT if (current == NULL) return CUDA_ERROR_INVALID_CONTEXT
static long ticks;

int fake_state(const char *what) {
    if (!strcmp(what, "retained")) return retained;
    if (!strcmp(what, "current")) return current != NULL;
    if (!strcmp(what, "capture_mode")) return capture_mode;
    if (!strcmp(what, "launches")) return launches;
    return -1;
}
CUresult CUDAAPI cuInit(unsigned int Flags) { return Flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }
CUresult CUDAAPI cuGetErrorName(CUresult error, const char **pStr) {
    *pStr = error == CUDA_ERROR_INVALID_DEVICE    ? "CUDA_ERROR_INVALID_DEVICE"
            : error == CUDA_ERROR_INVALID_CONTEXT ? "CUDA_ERROR_INVALID_CONTEXT"
                                                  : "CUDA_ERROR_UNKNOWN";
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGet(CUdevice *device, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *device = 0;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetName(char *name, int len, CUdevice dev) {
    strncpy(name, "Fake CUDA device", len);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
    if (attrib == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR) *pi = 9;
    else if (attrib == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR) *pi = 0;
    else return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    *pctx = (CUcontext)&ctx_token;
    retained++;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuDevicePrimaryCtxRelease(CUdevice dev) { retained--; return CUDA_SUCCESS; }
CUresult CUDAAPI cuCtxPushCurrent(CUcontext ctx) {
    if (depth == 4) return CUDA_ERROR_INVALID_VALUE;
    stack[depth++] = ctx;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxPopCurrent(CUcontext *pctx) {
    if (depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
    *pctx = stack[--depth];
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuCtxGetCurrent(CUcontext *pctx) { *pctx = current; return CUDA_SUCCESS; }
CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx) {
    /* As cuda.h says: replaces the top of the stack (pushes onto an empty one); NULL pops the top, if any. */
    if (ctx == NULL) depth -= depth > 0;
    else if (depth) stack[depth - 1] = ctx;
    else stack[depth++] = ctx;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamCreate(CUstream *phStream, unsigned int Flags) {
    NEED_CONTEXT;
    *phStream = (CUstream)malloc(8);
    return Flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult CUDAAPI cuStreamDestroy(CUstream hStream) { free(hStream); return CUDA_SUCCESS; }
CUresult CUDAAPI cuStreamSynchronize(CUstream hStream) { NEED_CONTEXT; return CUDA_SUCCESS; }
CUresult CUDAAPI cuMemAlloc(CUdeviceptr *dptr, size_t bytesize) {
    NEED_CONTEXT;
    *dptr = (CUdeviceptr)(uintptr_t)aligned_alloc(256, (bytesize + 255) / 256 * 256);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemFree(CUdeviceptr dptr) { NEED_CONTEXT; free((void *)(uintptr_t)dptr); return CUDA_SUCCESS; }
CUresult CUDAAPI cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags) {
    *pp = malloc(bytesize);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemFreeHost(void *p) { free(p); return CUDA_SUCCESS; }
CUresult CUDAAPI cuMemcpyHtoDAsync(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream) {
    NEED_CONTEXT;
    memcpy((void *)(uintptr_t)dstDevice, srcHost, ByteCount);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuMemcpyDtoHAsync(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream) {
    NEED_CONTEXT;
    memcpy(dstHost, (void *)(uintptr_t)srcDevice, ByteCount);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventCreate(CUevent *phEvent, unsigned int Flags) {
    *phEvent = (CUevent)calloc(1, sizeof(long));
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventRecord(CUevent hEvent, CUstream hStream) { *(long *)hEvent = ++ticks; return CUDA_SUCCESS; }
CUresult CUDAAPI cuEventSynchronize(CUevent hEvent) { return CUDA_SUCCESS; }
CUresult CUDAAPI cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
    *pMilliseconds = 0.5f * (float)(*(long *)hEnd - *(long *)hStart);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuEventDestroy(CUevent hEvent) { free(hEvent); return CUDA_SUCCESS; }
CUresult CUDAAPI cuStreamBeginCapture(CUstream hStream, CUstreamCaptureMode mode) {
    capture_mode = (int)mode;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuStreamEndCapture(CUstream hStream, CUgraph *phGraph) {
    *phGraph = (CUgraph)malloc(8);
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuGraphInstantiate(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags) {
    *phGraphExec = (CUgraphExec)malloc(8);
    return flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
CUresult CUDAAPI cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream) {
    NEED_CONTEXT;
    launches++;
    return CUDA_SUCCESS;
}
CUresult CUDAAPI cuGraphExecDestroy(CUgraphExec hGraphExec) { free(hGraphExec); return CUDA_SUCCESS; }
CUresult CUDAAPI cuGraphDestroy(CUgraph hGraph) { free(hGraph); return CUDA_SUCCESS; }
"""


@pytest.fixture(scope="module")
def compiled_libcuda(tmp_path_factory):
    """FAKE_LIBCUDA built into a shared library; skipped without a C compiler or a CUDA 13 cuda.h."""
    import shutil
    import subprocess

    header, compiler = _cuda_header(), shutil.which("cc") or shutil.which("gcc")
    if header is None or compiler is None:
        pytest.skip("needs a C compiler and a CUDA 13 cuda.h")
    folder = tmp_path_factory.mktemp("libcuda")
    (folder / "fake.c").write_text(FAKE_LIBCUDA)
    command = [compiler, "-shared", "-fPIC", "-Wall", "-Werror", "-I", str(header.parent), "-o", "libcuda.so", "fake.c"]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(folder / "libcuda.so"))


def test_driver_calls_through_ctypes_on_a_compiled_libcuda(compiled_libcuda, monkeypatch):
    lib = compiled_libcuda
    lib.fake_state.restype = ctypes.c_int
    bound = cuda_driver.Driver(lib)
    monkeypatch.setattr(cuda_driver, "driver", lambda: bound)

    def state(what: str) -> int:
        return lib.fake_state(what.encode())

    context = cuda_driver.Context(0)
    assert context.name == "Fake CUDA device" and state("retained") == 1 and state("current") == 1
    # The stand-in answers only the header's own CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_* values.
    assert context.compute_capability == (9, 0)
    with pytest.raises(CudaError, match=r"cuDeviceGet\(1\) failed: CUDA_ERROR_INVALID_DEVICE"):
        cuda_driver.Context(1)
    stream, start, end = cuda_driver.Stream(), cuda_driver.Event(), cuda_driver.Event()
    device = cuda_driver.DeviceBuffer(1000)
    assert device.ptr % 256 == 0 and device.ptr > 1 << 32  # a 64-bit address survives the round trip
    sent, back = cuda_driver.HostBuffer(1000), cuda_driver.HostBuffer(1000)
    source = sent.array((250,), np.float32)
    source[:] = np.linspace(-1, 1, 250, dtype=np.float32)
    start.record(stream)
    cuda_driver.copy_to_device(device.ptr, source, stream)
    back.array((250,), np.float32)[:] = 0
    cuda_driver.copy_to_host(back.array((250,), np.float32), device.ptr, stream, nbytes=600)
    end.record(stream)
    end.synchronize()
    stream.synchronize()
    # 600 bytes asked, 600 bytes moved: 150 floats, the rest untouched.
    np.testing.assert_array_equal(back.array((150,), np.float32), source[:150])
    assert not np.any(back.array((250,), np.float32)[150:])
    assert end.ms_since(start) == 0.5
    graph = cuda_driver.CudaGraph(stream, lambda: None)
    graph.launch(stream)
    assert graph.launches == 1 and state("launches") == 1 and state("capture_mode") == cuda_driver.CAPTURE_THREAD_LOCAL
    for thing in (graph, start, end, stream):
        thing.close()
    for buffer in (device, sent, back):
        buffer.free()
    context.close()
    assert state("retained") == 0 and state("current") == 0


def test_copies_from_another_thread_on_a_compiled_libcuda(compiled_libcuda, monkeypatch):
    # The defect LoadGen's worker threads met: the context is current only where it was activated.
    lib = compiled_libcuda
    lib.fake_state.restype = ctypes.c_int
    bound = cuda_driver.Driver(lib)
    monkeypatch.setattr(cuda_driver, "driver", lambda: bound)
    context = cuda_driver.Context(0)
    stream, device, host = cuda_driver.Stream(), cuda_driver.DeviceBuffer(64), cuda_driver.HostBuffer(64)
    data = np.arange(16, dtype=np.float32)

    def bare():
        cuda_driver.copy_to_device(device.ptr, data, stream)

    with pytest.raises(CudaError, match="cuMemcpyHtoDAsync failed: CUDA_ERROR_INVALID_CONTEXT"):
        in_thread(bare)

    def worker():
        context.ensure_current()
        cuda_driver.copy_to_device(device.ptr, data, stream)
        cuda_driver.copy_to_host(host.array((16,), np.float32), device.ptr, stream)
        stream.synchronize()
        return lib.fake_state(b"current")

    assert in_thread(worker) == 1
    np.testing.assert_array_equal(host.array((16,), np.float32), data)
    stream.close()
    device.free()
    host.free()
    context.close()
    assert lib.fake_state(b"retained") == 0 and lib.fake_state(b"current") == 0


# -------------------------------------------------------------------------- fake TensorRT, fake driver


class FakeState:
    """What the fake TensorRT and the fake driver share: device memory, a call log and knobs."""

    def __init__(self):
        self.version = "10.16.1.11"
        self.log: list[tuple] = []
        self.memory: dict[int, bytearray] = {}
        self.names: dict[int, str] = {}
        self.capturing: list | None = None
        self.next_ptr = 0x10000
        self.clock = 0
        self.builds = 0
        self.create_flags: list[int] = []
        self.verbosity = None
        self.weakly_typed = False
        self.max_output_size = 2 * 8 * 8
        self.profile_shapes: dict | None = None
        self.frees = 0
        # The context current on each thread, and how often the driver was asked to make it current.
        self.threads = threading.local()
        self.context_checks = 0
        self.tf32_flags: list[bool] = []
        self.compute_capability = (9, 0)

    def calls(self, *kinds: str) -> list[tuple]:
        return [entry for entry in self.log if entry[0] in kinds]

    def need_context(self, what: str) -> None:
        """Fail as the driver does when no context is current on the calling thread."""
        if getattr(self.threads, "current", None) is None:
            raise CudaError(f"{what} failed: CUDA_ERROR_INVALID_CONTEXT")


def fake_driver(state: FakeState):
    """A namespace with engines.cuda_driver's interface over ``state``: "device" memory is host bytes, first
    filled with 0xFF as uninitialised memory may be."""

    class Context:
        def __init__(self, device_id):
            self.name = "Fake GPU"
            self.compute_capability = state.compute_capability
            state.log.append(("context", device_id))
            # Pushed on the activating thread.
            state.threads.current = self

        def make_current(self):
            state.context_checks += 1
            state.threads.current = self

        def ensure_current(self):
            if getattr(state.threads, "current", None) is not self:
                self.make_current()

        def close(self):
            state.need_context("cuDevicePrimaryCtxRelease")
            state.log.append(("context_closed",))

    class Stream:
        handle = 0x5151

        def synchronize(self):
            state.need_context("cuStreamSynchronize")
            state.log.append(("sync",))

        def close(self):
            state.log.append(("stream_closed",))

    class Event:
        def __init__(self):
            self.time = 0

        def record(self, stream):
            state.need_context("cuEventRecord")
            state.clock += 1
            self.time = state.clock
            state.log.append(("record",))

        def synchronize(self):
            state.log.append(("event_sync",))

        def ms_since(self, start):
            return 0.25 * (self.time - start.time)

        def close(self):
            pass

    class DeviceBuffer:
        def __init__(self, nbytes):
            state.need_context("cuMemAlloc")
            self.nbytes = max(int(nbytes), 1)
            state.next_ptr += 4096 * (1 + self.nbytes // 4096)
            self.ptr = state.next_ptr
            state.memory[self.ptr] = bytearray(b"\xff" * self.nbytes)

        def free(self):
            if self.ptr:
                state.need_context("cuMemFree")
                del state.memory[self.ptr]
                self.ptr = 0
                state.frees += 1

    class HostBuffer(cuda_driver.HostBuffer):
        # The real array(): views over memory this object keeps.
        def __init__(self, nbytes):
            self.nbytes = max(int(nbytes), 1)
            self.keep = np.zeros(self.nbytes, np.uint8)
            self.ptr = self.keep.ctypes.data

        def free(self):
            self.ptr = 0
            state.frees += 1

    def copy_to_device(dst, src, stream, nbytes=None):
        state.need_context("cuMemcpyHtoDAsync")
        size = src.nbytes if nbytes is None else nbytes
        state.memory[dst][:size] = src.view(np.uint8).reshape(-1)[:size].tobytes()
        state.log.append(("htod", state.names.get(dst, dst)))

    def copy_to_host(dst, src, stream, nbytes=None):
        state.need_context("cuMemcpyDtoHAsync")
        size = dst.nbytes if nbytes is None else nbytes
        dst.view(np.uint8).reshape(-1)[:size] = np.frombuffer(bytes(state.memory[src][:size]), np.uint8)
        state.log.append(("dtoh", state.names.get(src, src)))

    class CudaGraph:
        def __init__(self, stream, enqueue):
            state.log.append(("capture",))
            state.capturing = []
            try:
                enqueue()
            finally:
                self.ops, state.capturing = state.capturing, None
            self.launches = 0

        def launch(self, stream):
            state.need_context("cuGraphLaunch")
            state.log.append(("launch",))
            for op in self.ops:
                op()
            self.launches += 1

        def close(self):
            state.log.append(("graph_closed",))

    return types.SimpleNamespace(
        Context=Context,
        Stream=Stream,
        Event=Event,
        DeviceBuffer=DeviceBuffer,
        HostBuffer=HostBuffer,
        copy_to_device=copy_to_device,
        copy_to_host=copy_to_host,
        CudaGraph=CudaGraph,
    )


# Each fake model: its inputs' dtypes, its outputs' dtypes, and its output shapes from the input shapes.
KINDS = {
    "add_one": ({"x": np.float32}, {"y": np.float32}, lambda s: {"y": s["x"]}),
    "gather": ({"ids": np.int64}, {"y": np.float32}, lambda s: {"y": s["ids"]}),
    "nonzero": ({"x": np.float32}, {"idx": np.int64}, lambda s: {"idx": (2, -1)}),
}


def fake_tensorrt(state: FakeState):
    """A namespace with the parts of the tensorrt module the engine uses, over ``state``."""
    trt = types.SimpleNamespace()
    trt.__version__ = state.version
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(TF32="tf32", SPARSE_WEIGHTS="sparse_weights")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed", LAYER_NAMES_ONLY="layer_names_only")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="json", ONELINE="oneline")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.TensorLocation = types.SimpleNamespace(DEVICE="device", HOST="host")
    trt.nptype = lambda dtype: dtype

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    class IOutputAllocator:
        def __init__(self):
            pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.kind = flags, [], None

        def get_flag(self, flag):
            return bool(self.flags & (1 << int(flag))) and not state.weakly_typed

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            import onnx

            graph = onnx.load(path).graph
            self.network.kind = graph.name
            initializers = {i.name for i in graph.initializer}
            for item in graph.input:
                if item.name not in initializers:
                    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in item.type.tensor_type.shape.dim]
                    self.network.inputs.append(Tensor(item.name, tuple(dims)))
            return True

    class TimingCache:
        def serialize(self):
            return b"timing"

    class Config:
        def __init__(self):
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            self.timing = None
            # TensorRT's default: TF32 allowed.
            self.flags = {trt.BuilderFlag.TF32}

        def get_flag(self, flag):
            return flag in self.flags

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def create_timing_cache(self, data):
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing = cache
            return True

        def get_timing_cache(self):
            return self.timing

        def add_optimization_profile(self, profile):
            return 0

    class OptimizationProfile:
        def set_shape(self, name, low, opt, high):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            state.create_flags.append(flags)
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            state.builds += 1
            state.verbosity = config.profiling_verbosity
            state.tf32_flags.append(config.get_flag(trt.BuilderFlag.TF32))
            inputs = {t.name: list(t.shape) for t in network.inputs}
            return json.dumps({"kind": network.kind, "inputs": inputs}).encode()

    class Inspector:
        def get_engine_information(self, fmt):
            assert fmt == "json"
            layer = {"Name": "add", "LayerType": "PointWise", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]}
            return json.dumps({"Layers": [layer, "a bare name"]})

    class Engine:
        def __init__(self, plan):
            self.kind = plan["kind"]
            self.declared = {name: tuple(shape) for name, shape in plan["inputs"].items()}
            self.input_types, self.output_types, self.output_shapes = KINDS[self.kind]
            self.names = [*self.input_types, *self.output_types]

        num_io_tensors = property(lambda self: len(self.names))

        def get_tensor_name(self, index):
            return self.names[index]

        def get_tensor_mode(self, name):
            return "input" if name in self.input_types else "output"

        def get_tensor_dtype(self, name):
            return {**self.input_types, **self.output_types}[name]

        def get_tensor_location(self, name):
            return "device"

        def get_tensor_shape(self, name):
            return self.declared.get(name) or self.output_shapes(self.declared)[name]

        def create_execution_context(self):
            return Context(self)

        def create_engine_inspector(self):
            return Inspector()

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses, self.allocators = engine, {}, {}, {}

        def set_input_shape(self, name, shape):
            declared = self.engine.declared[name]
            if len(shape) != len(declared) or any(d >= 0 and d != s for d, s in zip(declared, shape, strict=True)):
                return False
            # The engine was built for the profile's shape alone: the batch is fixed too.
            if state.profile_shapes and tuple(shape) != tuple(state.profile_shapes[name]):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name in self.engine.input_types:
                return self.shapes.get(name, self.engine.declared[name])
            return self.engine.output_shapes(self.shapes)[name]

        def set_tensor_address(self, name, address):
            self.addresses[name] = address
            state.names[address] = name
            return True

        def set_output_allocator(self, name, allocator):
            self.allocators[name] = allocator
            return True

        def get_max_output_size(self, name):
            return state.max_output_size

        def _read(self, name):
            dtype = np.dtype(self.engine.input_types[name])
            count = int(np.prod(self.shapes[name]))
            raw = bytes(state.memory[self.addresses[name]][: count * dtype.itemsize])
            return np.frombuffer(raw, dtype).reshape(self.shapes[name])

        def _write(self, name, array):
            state.memory[self.addresses[name]][: array.nbytes] = array.tobytes()

        def _run(self):
            if self.engine.kind == "add_one":
                self._write("y", self._read("x") + np.float32(1))
            elif self.engine.kind == "gather":
                ids = self._read("ids")
                if ids.min() < 0 or ids.max() >= len(TABLE):
                    raise RuntimeError("CUDA error: an illegal memory access was encountered (the context is lost)")
                self._write("y", TABLE[ids])
            else:
                idx = np.array(np.nonzero(self._read("x") > 0), dtype=np.int64)
                allocator = self.allocators["idx"]
                ptr = allocator.reallocate_output_async("idx", self.addresses["idx"], max(idx.nbytes, 1), 256, 0x5151)
                if not ptr:
                    return False
                self.addresses["idx"] = ptr
                state.names[ptr] = "idx"
                self._write("idx", idx)
                allocator.notify_shape("idx", idx.shape)
            return True

        def execute_async_v3(self, stream_handle):
            assert stream_handle == 0x5151
            # TensorRT's kernels run in the context current on the calling thread.
            state.need_context("execute_async_v3")
            if state.capturing is not None:
                # A capture records the work; nothing runs until the graph is launched.
                state.capturing.append(self._run)
                state.log.append(("captured",))
                return True
            state.log.append(("execute",))
            return self._run()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            try:
                return Engine(json.loads(bytes(plan)))
            except ValueError:
                return None

    for name, value in locals().copy().items():
        if isinstance(value, type):
            setattr(trt, name, value)
    return trt


@pytest.fixture
def fake(monkeypatch):
    """Fake tensorrt and driver modules for the engine; the state they share."""
    state = FakeState()
    monkeypatch.setattr(native, "_import_tensorrt", lambda: fake_tensorrt(state))
    monkeypatch.setattr(native, "_import_driver", lambda: fake_driver(state))
    return state


def engine_for(path: Path, shapes: dict, state: FakeState, **options) -> TensorRTEngine:
    """An activated engine on ``path`` built for ``shapes``, its cache under the model's folder."""
    state.profile_shapes = shapes
    engine = TensorRTEngine(options)
    engine.activate(path, shapes)
    return engine


def test_feeds_are_on_the_device_before_the_graph_is_captured(fake, tmp_path):
    ids = np.array([[1, 2, 3], [9, 0, 4]], dtype=np.int64)
    with engine_for(gather_model(tmp_path), {"ids": (2, 3)}, fake, cuda_graph=True) as engine:
        # Activation allocates and binds, and runs nothing: the device inputs hold garbage (0xFF: id -1).
        assert not fake.calls("execute", "captured", "capture")
        np.testing.assert_array_equal(engine.infer({"ids": ids})["y"], TABLE[ids])
        order = [e[0] for e in fake.calls("htod", "execute", "capture", "captured", "launch")]
        assert order == ["htod", "execute", "capture", "captured", "launch"], fake.log
        # New ids of the same shape: the same addresses, the same graph.
        np.testing.assert_array_equal(engine.infer({"ids": ids[::-1].copy()})["y"], TABLE[ids[::-1]])
        assert len(fake.calls("capture")) == 1 and engine.describe()["cuda_graph_launches"] == 2


@pytest.mark.parametrize("include_copies", [False, True])
def test_run_prepared_is_the_enqueue_and_a_sync(fake, tmp_path, include_copies):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with engine_for(add_one_model(tmp_path), {"x": (2, 4)}, fake, include_copies=include_copies) as engine:
        assert engine.timing_breakdown(10) == {}
        engine.prepare({"x": x})
        fake.log.clear()
        engine.run_prepared()
        expected = (
            [("htod", "x"), ("execute",), ("dtoh", "y"), ("sync",)] if include_copies else [("execute",), ("sync",)]
        )
        assert fake.log == expected
        if include_copies:
            np.testing.assert_array_equal(engine._host["y"], x + 1)
        # The breakdown is its own pass after timing, with events around each step.
        fake.log.clear()
        breakdown = engine.timing_breakdown(7)
        assert breakdown == {"h2d_ms": 0.25, "compute_ms": 0.25, "compute_ms_p50": 0.25, "d2h_ms": 0.25}
        assert len(fake.calls("record")) == 4 * 7 and len(fake.calls("execute")) == 7
        assert engine.describe()["breakdown_rounds"] == 7
        fake.log.clear()
        engine.timing_breakdown(100_000)
        assert len(fake.calls("execute")) == native.BREAKDOWN_ROUNDS
        np.testing.assert_array_equal(engine._host["y"], x + 1)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_every_entry_point_works_from_another_thread(fake, tmp_path, cuda_graph):
    # LoadGen's workers call infer on threads of their own, never the one that activated the engine.
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    engine = engine_for(add_one_model(tmp_path), {"x": (2, 4)}, fake, cuda_graph=cuda_graph, include_copies=True)
    checks = fake.context_checks
    served = in_thread(lambda: [engine.infer({"x": x}) for _ in range(3)])
    np.testing.assert_array_equal(served[-1]["y"], x + 1)
    # The first query on a thread asks the driver; the next ones check a thread-local flag alone.
    assert fake.context_checks - checks == 1

    def timed():
        engine.prepare({"x": x})
        checks = fake.context_checks
        for _ in range(5):
            engine.run_prepared()
        # Once this thread holds the context, the timed loop asks the driver nothing more.
        return fake.context_checks - checks, engine.timing_breakdown(3)

    extra, breakdown = in_thread(timed)
    assert extra == 0 and breakdown["compute_ms"] == 0.25
    np.testing.assert_array_equal(engine._host["y"], x + 1)
    # run_prepared alone on a new thread binds the context there first.
    in_thread(engine.run_prepared)
    in_thread(engine.deactivate)
    assert not fake.memory and fake.log[-1] == ("context_closed",)


def test_data_dependent_output_is_read_at_the_notified_shape(fake, tmp_path):
    path = nonzero_model(tmp_path)
    first = np.array([[1, -1, 2, -3], [0, 5, 0, 0]], dtype=np.float32)
    second = np.array([[1, 1, 1, 1], [1, 1, 1, -1]], dtype=np.float32)
    with engine_for(path, {"x": (2, 4)}, fake, include_copies=True) as engine:
        for x in (first, second, first):
            out = engine.infer({"x": x})["idx"]
            assert out.dtype == np.int64
            np.testing.assert_array_equal(out, np.array(np.nonzero(x > 0)))
        engine.prepare({"x": second})
        engine.run_prepared()
        settings = engine.describe()
        # TensorRT's upper bound (2 x 8 int64) was allocated up front: nothing was allocated during the runs.
        assert settings["data_dependent_outputs"] == ["idx"] and settings["output_reallocations"] == 0
    # Without a known bound the allocator grows the buffer when TensorRT asks, and the host side follows.
    fake.max_output_size = -1
    with engine_for(path, {"x": (2, 4)}, fake) as engine:
        np.testing.assert_array_equal(engine.infer({"x": second})["idx"], np.array(np.nonzero(second > 0)))
        assert engine.describe()["output_reallocations"] == 1


def test_cuda_graph_is_refused_for_data_dependent_outputs(fake, tmp_path):
    with pytest.raises(EngineError, match="cannot run as a CUDA graph: output idx has a data-dependent shape"):
        engine_for(nonzero_model(tmp_path), {"x": (2, 4)}, fake, cuda_graph=True)
    # Everything made for the failed activation was released, the context last.
    assert fake.log[-1] == ("context_closed",) and not fake.memory


def test_strongly_typed_comes_from_the_network_and_stays_with_the_engine(fake, tmp_path):
    path = add_one_model(tmp_path)
    fake.weakly_typed = True
    infos = []
    for _ in range(2):
        with engine_for(path, {"x": (2, 4)}, fake) as engine:
            infos.append(engine.describe())
    built, hit = infos
    assert (built["engine_cache"], hit["engine_cache"]) == ("built", "hit") and fake.builds == 1
    assert built["strongly_typed"] is False and hit["strongly_typed"] is False
    record = json.loads(Path(built["engine_file"]).with_suffix(".json").read_text())
    assert record["strongly_typed"] is False and record["rules"] == native.BUILD_RULES
    # TensorRT 10 is asked for a strongly typed network; detailed profiling feeds the engine inspector.
    assert fake.create_flags == [1 << 1] and fake.verbosity == "detailed"
    assert built["layer_precisions"] == {"FP32": 1}
    # An engine without its record says nothing about how it was built: rebuilt.
    Path(built["engine_file"]).with_suffix(".json").unlink()
    with engine_for(path, {"x": (2, 4)}, fake) as engine:
        assert engine.describe()["engine_cache"] == "built" and fake.builds == 2


def test_no_tf32_clears_the_builder_flag_and_keys_the_engine(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    path = add_one_model(tmp_path)
    runs = {}
    for tf32 in (True, False):
        with engine_for(path, {"x": (2, 4)}, fake, tf32=tf32) as engine:
            runs[tf32] = (engine.describe(), engine.fp32_math())
    (on, on_math), (off, off_math) = runs[True], runs[False]
    # TensorRT allows TF32 by default: --no-tf32 clears the flag, and the engine is a different one.
    assert fake.tf32_flags == [True, False] and fake.builds == 2 and on["engine_key"] != off["engine_key"]
    assert (on_math, on["fp32_math"], off_math, off["fp32_math"]) == ("TF32", "TF32", "FP32", "FP32")
    assert (on["tf32"], off["tf32"]) == (True, False)
    assert json.loads(Path(off["engine_file"]).with_suffix(".json").read_text())["settings"]["tf32"] is False
    # NVIDIA_TF32_OVERRIDE=0 keeps TensorRT from TF32 whatever the flag: that is the --no-tf32 engine.
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    with engine_for(path, {"x": (2, 4)}, fake) as engine:
        assert engine.fp32_math() == "FP32" and engine.describe()["engine_key"] == off["engine_key"]
    assert fake.builds == 2
    # A GPU older than Ampere has no TF32: its FP32 is FP32 whatever was allowed.
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    fake.compute_capability = (7, 5)
    with engine_for(path, {"x": (2, 4)}, fake) as engine:
        assert engine.fp32_math() == "FP32" and engine.describe()["fp32_math"] == "FP32"


def test_tensorrt_11_networks_are_strongly_typed(fake, tmp_path):
    fake.version = "11.4.0.106"
    with engine_for(add_one_model(tmp_path), {"x": (2, 4)}, fake) as engine:
        assert engine.describe()["strongly_typed"] is True and engine.describe()["tensorrt"] == "11.4.0.106"
    # 11 types every network strongly and ignores the deprecated flag: none is passed.
    assert fake.create_flags == [0]


def test_shapes_without_input_shapes_are_batch_one(fake, tmp_path):
    fake.profile_shapes = {"x": (1, 4)}
    with TensorRTEngine() as engine:
        engine.activate(add_one_model(tmp_path))
        assert engine.describe()["profile"] == {"x": [1, 4]}
        np.testing.assert_array_equal(engine.infer({"x": np.ones((1, 4), np.float32)})["y"], np.full((1, 4), 2))
        with pytest.raises(EngineError, match=r"outside the engine's profile \{'x': \[1, 4\]\}; give the shapes"):
            engine.infer({"x": np.ones((3, 4), np.float32)})


def test_teardown_frees_everything(fake, tmp_path):
    with engine_for(add_one_model(tmp_path), {"x": (2, 4)}, fake, cuda_graph=True) as engine:
        engine.infer({"x": np.zeros((2, 4), np.float32)})
    # Two device and two pinned host buffers (x, y), the graph before them, the context last.
    assert not fake.memory and fake.frees == 4 and fake.log[-1] == ("context_closed",)
    assert fake.log.index(("graph_closed",)) < fake.log.index(("stream_closed",))


@pytest.mark.skipif(device_problem() is None, reason="this machine has a CUDA device")
def test_no_driver_is_a_clear_error(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_import_driver", lambda: cuda_driver)
    with pytest.raises(EngineError, match=r"^tensorrt: no NVIDIA driver \(libcuda.so.1 cannot be loaded\)$"):
        TensorRTEngine().activate(add_one_model(tmp_path))


def test_reason_and_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(native, "device_problem", lambda: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorrt" else real_find_spec(n, *a))
    assert TensorRTEngine.unavailable_reason() == f"tensorrt is not installed. Install: {TENSORRT_INSTALL}"
    assert "--extra-index-url https://pypi.nvidia.com" in TENSORRT_INSTALL and ".[gpu,tensorrt]" in TENSORRT_INSTALL
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "tensorrt" else real_find_spec(n, *a)
    )
    monkeypatch.setattr(native, "module_version", lambda module: "10.16.1.11")
    # The driver API comes with the driver: no Python CUDA package is asked for.
    assert TensorRTEngine.unavailable_reason() is None
    monkeypatch.setattr(native, "device_problem", lambda: "no CUDA device is visible to the driver")
    assert TensorRTEngine.unavailable_reason() == "no CUDA device is visible to the driver"


def test_a_driver_older_than_the_tensorrt_build_is_a_reason(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(native, "device_problem", lambda: None)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "tensorrt" else real_find_spec(n, *a)
    )
    monkeypatch.setattr(native, "module_version", lambda module: "10.16.1.11")
    # TensorRT 10.16's tensorrt module comes from tensorrt_cu13 (its metadata's name).
    monkeypatch.setattr(cuda, "_distributions_of_modules", lambda: {"tensorrt": ["tensorrt_cu13"]})
    # A CUDA 12.8 driver cannot run a CUDA 13 build (no compatibility across majors).
    monkeypatch.setattr(cuda, "driver_cuda_version", lambda: "12.8")
    assert TensorRTEngine.unavailable_reason() == (
        "the NVIDIA driver supports CUDA 12.8, but TensorRT 10.16.1.11 is built for CUDA 13.0: install an R580 or "
        "newer driver, or a build of TensorRT 10.16.1.11 for CUDA 12"
    )
    # Within the major an older driver runs a newer build; an unknown build or driver says nothing.
    for driver, distributions in (("13.0", ["tensorrt_cu13"]), ("12.8", ["tensorrt"]), (None, [])):
        monkeypatch.setattr(cuda, "driver_cuda_version", lambda driver=driver: driver)
        monkeypatch.setattr(cuda, "_distributions_of_modules", lambda d=distributions: {"tensorrt": d})
        assert TensorRTEngine.unavailable_reason() is None


def test_without_the_package_the_error_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineError, match=r"cannot import tensorrt .*Install: pip install -e '\.\[gpu,tensorrt\]'"):
        TensorRTEngine().activate(add_one_model(tmp_path))


def test_layer_types_from_the_engine_inspector():
    assert [format_type(t) for t in ("Row major linear FP32", "Channel major FP16 format where channel % 8 == 0")] == [
        "FP32",
        "FP16",
    ]
    assert [format_type(t) for t in ("Thirty-two wide channel vectorized row major Int8 format", "BFloat16")] == [
        "INT8",
        "BF16",
    ]
    assert format_type("Row major linear UInt8") == "UINT8" and format_type("Row major linear Int64") == "INT64"
    layers = {
        "Layers": [
            {"Name": "conv", "Inputs": [{"Format/Datatype": "Row major Int8 format"}, {"Format/Datatype": "Int8"}]},
            {"Name": "dq", "Inputs": [{"Format/Datatype": "Row major Int8 format"}]},
            {"Name": "head", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
            "a layer name alone (LAYER_NAMES_ONLY)",
        ]
    }
    assert summarise_layers(layers) == summarise_layers(layers["Layers"]) == {"FP32": 1, "INT8": 2}
    assert summarise_layers({"Layers": ["conv", "relu"]}) == {}


# ------------------------------------------------------------------------------------------------ on a GPU

needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
QUICK = ["--size", "tiny", "--warmup-s", "0", "--duration-s", "0.2", "--min-iters", "3", "--accuracy-samples", "8"]


def _resnet_artifact(precision: str) -> Path:
    from onnx_models.artifacts import ensure, resolve

    return ensure(resolve("resnet50", "tiny", precision, "tensorrt"))


def _resnet_feeds():
    from models import get_model

    return get_model("resnet50").make_feeds("tiny", 2, 1)


def _shapes(feeds) -> dict:
    return {name: list(array.shape) for name, array in feeds.items()}


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_gpu_engines_run_the_artifacts_precision(precision, tmp_path):
    feeds = _resnet_feeds()
    options = {"provider_options": {"cache_dir": str(tmp_path)}}
    with TensorRTEngine(options) as engine:
        engine.activate(_resnet_artifact(precision), _shapes(feeds))
        settings = engine.describe()
    assert engine._engine is None and settings["strongly_typed"] is True
    # The inspector's layer input types (an empty count would mean it said nothing).
    types_seen = settings["layer_precisions"]
    assert types_seen, settings
    lowered = {"fp32": set(), "fp16": {"FP16"}, "int8": {"INT8"}}[precision]
    assert lowered <= set(types_seen), types_seen
    if precision == "fp32":
        # A strongly typed FP32 network has nothing in FP16 or INT8 (TF32 inside FP32 layers is allowed).
        assert not {"FP16", "INT8", "FP8"} & set(types_seen), types_seen


@pytest.mark.gpu
@needs_tensorrt
def test_gpu_cuda_graph_is_replayed_and_matches_plain_runs(tmp_path):
    feeds = _resnet_feeds()
    options = {"provider_options": {"cache_dir": str(tmp_path)}}
    outputs = []
    for cuda_graph in (False, True):
        with TensorRTEngine({**options, "cuda_graph": cuda_graph}) as engine:
            engine.activate(_resnet_artifact("fp32"), _shapes(feeds))
            outputs.append(engine.infer(feeds))
            engine.prepare(feeds)
            for _ in range(5):
                engine.run_prepared()
            breakdown = engine.timing_breakdown(5)
            settings = engine.describe()
        assert breakdown["compute_ms"] > 0 and breakdown["h2d_ms"] > 0 and breakdown["d2h_ms"] > 0
        if cuda_graph:
            # infer, 5 timed runs, 5 breakdown rounds: all replays of one captured graph.
            assert settings["cuda_graph_launches"] == 11
        else:
            assert "cuda_graph_launches" not in settings
    plain, graphed = outputs
    for name in plain:
        np.testing.assert_allclose(graphed[name], plain[name], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_tensorrt
def test_gpu_int64_gather_under_a_cuda_graph(tmp_path):
    ids = np.array([[1, 2, 3], [9, 0, 4]], dtype=np.int64)
    with TensorRTEngine({"cuda_graph": True}) as engine:
        engine.activate(gather_model(tmp_path), {"ids": [2, 3]})
        for batch in (ids, ids[::-1].copy()):
            np.testing.assert_array_equal(engine.infer({"ids": batch})["y"], TABLE[batch])
        assert engine.describe()["cuda_graph_launches"] == 2


@pytest.mark.gpu
@needs_tensorrt
def test_gpu_data_dependent_output(tmp_path):
    path = nonzero_model(tmp_path)
    with TensorRTEngine({"include_copies": True}) as engine:
        engine.activate(path, {"x": [2, 4]})
        for x in (np.array([[1, -1, 2, -3], [0, 5, 0, 0]], np.float32), np.ones((2, 4), np.float32)):
            np.testing.assert_array_equal(engine.infer({"x": x})["idx"], np.array(np.nonzero(x > 0)))
        engine.prepare({"x": np.ones((2, 4), np.float32)})
        engine.run_prepared()
        assert engine.timing_breakdown(3)["compute_ms"] > 0
        assert engine.describe()["data_dependent_outputs"] == ["idx"]
    with pytest.raises(EngineError, match="cannot run as a CUDA graph"):
        TensorRTEngine({"cuda_graph": True}).activate(path, {"x": [2, 4]})


@pytest.mark.gpu
@needs_tensorrt
def test_gpu_detection_model_runs(tmp_path):
    argv = ["run", "--models", "ssd", "--engines", "tensorrt", "--precisions", "fp32", "--batch-sizes", "2"]
    assert suite.main([*argv, *QUICK, "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"], [r["error"] for r in rows]
    assert rows[0]["accuracy_metric"] == "box_f1" and rows[0]["accuracy_value"] >= 0.9, rows[0]


@pytest.mark.gpu
@needs_tensorrt
def test_gpu_calls_from_another_thread(tmp_path):
    # The real driver refuses a copy on a thread where no context is current: each entry point binds it.
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with TensorRTEngine({"include_copies": True, "provider_options": {"cache_dir": str(tmp_path)}}) as engine:
        engine.activate(add_one_model(tmp_path), {"x": [2, 4]})
        np.testing.assert_array_equal(in_thread(lambda: engine.infer({"x": x}))["y"], x + 1)

        def timed():
            engine.prepare({"x": x})
            for _ in range(3):
                engine.run_prepared()
            return engine.timing_breakdown(3)

        assert in_thread(timed)["compute_ms"] > 0
        np.testing.assert_array_equal(engine._host["y"], x + 1)


@pytest.mark.gpu
@needs_tensorrt
def test_gpu_loadgen_scenarios_on_tensorrt(tmp_path):
    # LoadGen's SUT calls infer from worker threads (two at --concurrency 2), never the activating one.
    argv = ["run", "--models", "resnet50", "--engines", "tensorrt", "--precisions", "fp32", "--batch-sizes", "1"]
    argv += ["--scenario", "latency,single-stream,offline", "--concurrency", "1,2", "--min-duration-s", "0.3"]
    assert suite.main([*argv, *QUICK, "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * 4, [r["error"] for r in rows]
    closed = next(r for r in rows if r["scenario"] == "latency")
    for row in rows:
        if row["scenario"] != "latency":
            assert row["loadgen_validity"] and row["throughput_samples_per_s"] > 0, row
        # LoadGen's accuracy run served every sample from its workers: scored as the closed loop's outputs were.
        assert row["accuracy_value"] == closed["accuracy_value"], row["cell_id"]


@pytest.mark.gpu
@needs_tensorrt
def test_gpu_no_tf32_computes_in_fp32(tmp_path):
    # 1 + 2**-12 is exact in FP32 and rounds to 1 in TF32 (10 mantissa bits): x @ w is 256.125 in FP32 and
    # 256 in TF32. TF32 is only allowed, never required, so only the --no-tf32 engine's answer is certain.
    weight = np.full((256, 64), 1 + 2**-12, np.float32)
    x = np.full((64, 256), 1 + 2**-12, np.float32)
    with TensorRTEngine({"tf32": False, "provider_options": {"cache_dir": str(tmp_path)}}) as engine:
        engine.activate(matmul_model(tmp_path, weight), {"x": [64, 256]})
        y = engine.infer({"x": x})["y"]
        assert engine.fp32_math() == "FP32" and engine.describe()["tf32"] is False
    np.testing.assert_allclose(y, x.astype(np.float64) @ weight, rtol=1e-5)
