"""The CUDA driver API calls the native TensorRT engine makes, through ctypes on ``libcuda``: the primary
context (made current on whichever thread calls), streams, events, device and pinned host memory,
asynchronous copies and CUDA graphs.

``libcuda`` ships with the NVIDIA driver, so this needs no CUDA toolkit and no Python CUDA package (pycuda
compiles against a full toolkit; ``cuda-bindings`` would be one more wheel to keep in step with the driver).
Every function is bound by the symbol that CUDA 13's ``cuda.h`` maps its API name to (``cuMemAlloc`` ->
``cuMemAlloc_v2``) with the argument types of its prototype there; ``tests/test_tensorrt_native.py`` checks
this table against a ``cuda.h`` where one is installed. Only the legacy default-stream symbols are used (no
``_ptsz``): every call here names an explicit stream.

Nothing here runs at import; the library is loaded on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engines.cuda import ATTRIBUTE_CC_MAJOR, ATTRIBUTE_CC_MINOR, CudaError, error_name, libcuda_name

_c = ctypes
# Opaque handles (CUcontext, CUstream, CUevent, CUgraph, CUgraphExec) are pointers; CUdeviceptr is an
# unsigned 64-bit integer and CUdevice an int (cuda.h, 64-bit hosts).
_HANDLE = _c.c_void_p
_DEVICEPTR = _c.c_uint64
_DEVICE = _c.c_int
_ENUM = _c.c_int

# API name -> (symbols to try, first found wins; argument types). The first symbol is the one cuda.h
# (CUDA 13.0) maps the name to; a second is an older driver's name for the same prototype.
PROTOTYPES: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]] = {
    "cuInit": (("cuInit",), (_c.c_uint,)),
    "cuGetErrorName": (("cuGetErrorName",), (_ENUM, _c.POINTER(_c.c_char_p))),
    "cuDeviceGet": (("cuDeviceGet",), (_c.POINTER(_DEVICE), _c.c_int)),
    "cuDeviceGetName": (("cuDeviceGetName",), (_c.c_char_p, _c.c_int, _DEVICE)),
    "cuDeviceGetAttribute": (("cuDeviceGetAttribute",), (_c.POINTER(_c.c_int), _ENUM, _DEVICE)),
    "cuDevicePrimaryCtxRetain": (("cuDevicePrimaryCtxRetain",), (_c.POINTER(_HANDLE), _DEVICE)),
    "cuDevicePrimaryCtxRelease": (("cuDevicePrimaryCtxRelease_v2",), (_DEVICE,)),
    "cuCtxPushCurrent": (("cuCtxPushCurrent_v2",), (_HANDLE,)),
    "cuCtxPopCurrent": (("cuCtxPopCurrent_v2",), (_c.POINTER(_HANDLE),)),
    "cuCtxGetCurrent": (("cuCtxGetCurrent",), (_c.POINTER(_HANDLE),)),
    "cuCtxSetCurrent": (("cuCtxSetCurrent",), (_HANDLE,)),
    "cuStreamCreate": (("cuStreamCreate",), (_c.POINTER(_HANDLE), _c.c_uint)),
    "cuStreamDestroy": (("cuStreamDestroy_v2",), (_HANDLE,)),
    "cuStreamSynchronize": (("cuStreamSynchronize",), (_HANDLE,)),
    "cuMemAlloc": (("cuMemAlloc_v2",), (_c.POINTER(_DEVICEPTR), _c.c_size_t)),
    "cuMemFree": (("cuMemFree_v2",), (_DEVICEPTR,)),
    "cuMemHostAlloc": (("cuMemHostAlloc",), (_c.POINTER(_c.c_void_p), _c.c_size_t, _c.c_uint)),
    "cuMemFreeHost": (("cuMemFreeHost",), (_c.c_void_p,)),
    "cuMemcpyHtoDAsync": (("cuMemcpyHtoDAsync_v2",), (_DEVICEPTR, _c.c_void_p, _c.c_size_t, _HANDLE)),
    "cuMemcpyDtoHAsync": (("cuMemcpyDtoHAsync_v2",), (_c.c_void_p, _DEVICEPTR, _c.c_size_t, _HANDLE)),
    "cuEventCreate": (("cuEventCreate",), (_c.POINTER(_HANDLE), _c.c_uint)),
    "cuEventRecord": (("cuEventRecord",), (_HANDLE, _HANDLE)),
    "cuEventSynchronize": (("cuEventSynchronize",), (_HANDLE,)),
    # cuEventElapsedTime_v2 arrived with CUDA 12.8 and is what CUDA 13's header calls; same prototype.
    "cuEventElapsedTime": (("cuEventElapsedTime_v2", "cuEventElapsedTime"), (_c.POINTER(_c.c_float), _HANDLE, _HANDLE)),
    "cuEventDestroy": (("cuEventDestroy_v2",), (_HANDLE,)),
    "cuStreamBeginCapture": (("cuStreamBeginCapture_v2",), (_HANDLE, _ENUM)),
    "cuStreamEndCapture": (("cuStreamEndCapture",), (_HANDLE, _c.POINTER(_HANDLE))),
    "cuGraphInstantiate": (("cuGraphInstantiateWithFlags",), (_c.POINTER(_HANDLE), _HANDLE, _c.c_ulonglong)),
    "cuGraphLaunch": (("cuGraphLaunch",), (_HANDLE, _HANDLE)),
    "cuGraphExecDestroy": (("cuGraphExecDestroy",), (_HANDLE,)),
    "cuGraphDestroy": (("cuGraphDestroy",), (_HANDLE,)),
}
# CUstreamCaptureMode: thread-local, as trtexec captures, so work other threads queue is not swept in.
CAPTURE_THREAD_LOCAL = 1


class Driver:
    """``libcuda`` with the functions of :data:`PROTOTYPES` bound as attributes by API name (``cuMemAlloc``),
    each returning its CUresult."""

    def __init__(self, lib: Any):
        self.symbols: dict[str, str] = {}
        missing = []
        for api, (symbols, argtypes) in PROTOTYPES.items():
            symbol = next((s for s in symbols if _has(lib, s)), None)
            if symbol is None:
                missing.append(symbols[0])
                continue
            function = getattr(lib, symbol)
            function.argtypes = list(argtypes)
            function.restype = ctypes.c_int
            setattr(self, api, function)
            self.symbols[api] = symbol
        if missing:
            raise CudaError(f"the NVIDIA driver lacks {', '.join(missing)}: it is older than CUDA 13 supports")

    def check(self, what: str, code: int) -> None:
        """Raise CudaError naming ``what`` and the CUresult unless ``code`` is CUDA_SUCCESS."""
        if code != 0:
            raise CudaError(f"{what} failed: {self.error_name(code)}")

    def error_name(self, code: int) -> str:
        name = ctypes.c_char_p()
        if self.cuGetErrorName(code, ctypes.byref(name)) == 0 and name.value:
            return name.value.decode(errors="replace")
        return error_name(code)


def _has(lib: Any, symbol: str) -> bool:
    try:
        getattr(lib, symbol)
    except AttributeError:
        return False
    return True


@functools.cache
def driver() -> Driver:
    """The driver, loaded once; CudaError when there is no ``libcuda`` (no NVIDIA driver)."""
    name = libcuda_name()
    if name is None:
        raise CudaError("no NVIDIA driver (libcuda.so.1 cannot be loaded)")
    # A CDLL of our own, found where engines.cuda's discovery found it: the prototypes set here do not change
    # the discovery calls.
    return Driver(ctypes.CDLL(name))


class Context:
    """The primary context of CUDA device ``device_id``, retained and made current on this thread.

    The primary context is the one the CUDA runtime (and so TensorRT) uses for that device, so memory and
    streams made here and TensorRT's own work live in one context.

    A context is current per thread: every thread that calls the driver or TensorRT for it must first call
    :meth:`make_current` (or :meth:`ensure_current`), as LoadGen's worker threads do, which call an engine
    activated on another thread."""

    def __init__(self, device_id: int = 0):
        lib = driver()
        lib.check("cuInit", lib.cuInit(0))
        device = _DEVICE()
        lib.check(f"cuDeviceGet({device_id})", lib.cuDeviceGet(ctypes.byref(device), int(device_id)))
        buffer = ctypes.create_string_buffer(256)
        lib.check("cuDeviceGetName", lib.cuDeviceGetName(buffer, 256, device.value))
        self.name = buffer.value.decode(errors="replace")
        self.device = device.value
        capability = []
        for attribute in (ATTRIBUTE_CC_MAJOR, ATTRIBUTE_CC_MINOR):
            value = ctypes.c_int()
            lib.check("cuDeviceGetAttribute", lib.cuDeviceGetAttribute(ctypes.byref(value), attribute, self.device))
            capability.append(value.value)
        # (9, 0) on an H100; TF32 needs 8.0 or newer.
        self.compute_capability: tuple[int, int] = (capability[0], capability[1])
        handle = _HANDLE()
        lib.check("cuDevicePrimaryCtxRetain", lib.cuDevicePrimaryCtxRetain(ctypes.byref(handle), self.device))
        self.handle = handle.value or 0
        # Per thread: whether this context was made current there, and what it replaced (restored by close).
        self._threads = threading.local()
        self._retained, self._pushed, self._pusher = True, False, threading.get_ident()
        try:
            lib.check("cuCtxPushCurrent", lib.cuCtxPushCurrent(self.handle))
        except CudaError:
            self.close()
            raise
        self._pushed = self._threads.current = True

    def make_current(self) -> None:
        """Make this context current on the calling thread: one cuCtxGetCurrent, and a cuCtxSetCurrent where
        another context (or none) is current there. Always asks the driver, so it also notices a context that
        other code made current on this thread since."""
        lib = driver()
        current = _HANDLE()
        lib.check("cuCtxGetCurrent", lib.cuCtxGetCurrent(ctypes.byref(current)))
        if (current.value or 0) != self.handle:
            lib.check("cuCtxSetCurrent", lib.cuCtxSetCurrent(self.handle))
            if threading.get_ident() != self._pusher and not hasattr(self._threads, "replaced"):
                self._threads.replaced = current.value or 0
        self._threads.current = True

    def ensure_current(self) -> None:
        """:meth:`make_current` the first time on each thread, then a thread-local flag alone (no driver
        call: a timed loop pays an attribute lookup). It trusts that nothing else on the thread changes the
        current context between calls."""
        if not getattr(self._threads, "current", False):
            self.make_current()

    def close(self) -> None:
        """Pop the context from this thread and release it (the release is tried even when the pop fails);
        safe to call twice.

        On a thread other than the one that created it, the creating thread's stack cannot be popped from
        here: the context stays on it, released, until that thread pops or replaces it; this thread gets back
        the context :meth:`make_current` replaced."""
        lib = driver()
        unbound: tuple[str, int] | None = None
        if self._pushed:
            self._pushed = False
            if threading.get_ident() == self._pusher:
                handle = _HANDLE()
                unbound = ("cuCtxPopCurrent", lib.cuCtxPopCurrent(ctypes.byref(handle)))
            elif hasattr(self._threads, "replaced"):
                unbound = ("cuCtxSetCurrent", lib.cuCtxSetCurrent(self._threads.replaced))
        if self._retained:
            self._retained = False
            lib.check("cuDevicePrimaryCtxRelease", lib.cuDevicePrimaryCtxRelease(self.device))
        if unbound is not None:
            lib.check(*unbound)


class Stream:
    """A CUDA stream (``CU_STREAM_DEFAULT`` flags, as ``cudaStreamCreate`` makes); ``handle`` is the CUstream
    as an int, the form TensorRT's ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        lib = driver()
        handle = _HANDLE()
        lib.check("cuStreamCreate", lib.cuStreamCreate(ctypes.byref(handle), 0))
        self.handle = handle.value or 0

    def synchronize(self) -> None:
        lib = driver()
        lib.check("cuStreamSynchronize", lib.cuStreamSynchronize(self.handle))

    def close(self) -> None:
        if self.handle:
            handle, self.handle = self.handle, 0
            lib = driver()
            lib.check("cuStreamDestroy", lib.cuStreamDestroy(handle))


class Event:
    """A CUDA event with timing enabled (``CU_EVENT_DEFAULT``)."""

    def __init__(self) -> None:
        lib = driver()
        handle = _HANDLE()
        lib.check("cuEventCreate", lib.cuEventCreate(ctypes.byref(handle), 0))
        self.handle = handle.value or 0

    def record(self, stream: Stream) -> None:
        lib = driver()
        lib.check("cuEventRecord", lib.cuEventRecord(self.handle, stream.handle))

    def synchronize(self) -> None:
        lib = driver()
        lib.check("cuEventSynchronize", lib.cuEventSynchronize(self.handle))

    def ms_since(self, start: Event) -> float:
        """Milliseconds of device time from ``start`` to this event; both must have completed."""
        lib = driver()
        value = ctypes.c_float()
        lib.check("cuEventElapsedTime", lib.cuEventElapsedTime(ctypes.byref(value), start.handle, self.handle))
        return float(value.value)

    def close(self) -> None:
        if self.handle:
            handle, self.handle = self.handle, 0
            lib = driver()
            lib.check("cuEventDestroy", lib.cuEventDestroy(handle))


class DeviceBuffer:
    """``nbytes`` of device memory (``cuMemAlloc``: aligned to at least 256 bytes, as TensorRT requires of
    tensor addresses); ``ptr`` is the CUdeviceptr as an int. A zero-byte request gets one byte."""

    def __init__(self, nbytes: int):
        self.nbytes = max(int(nbytes), 1)
        pointer = _DEVICEPTR()
        lib = driver()
        lib.check(f"cuMemAlloc({self.nbytes})", lib.cuMemAlloc(ctypes.byref(pointer), self.nbytes))
        self.ptr = int(pointer.value)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            lib = driver()
            lib.check("cuMemFree", lib.cuMemFree(ptr))


class HostBuffer:
    """``nbytes`` of page-locked host memory (``cuMemHostAlloc``), which asynchronous copies need to be
    asynchronous; :meth:`array` views it as a numpy array. Views must be dropped before :meth:`free`."""

    def __init__(self, nbytes: int):
        self.nbytes = max(int(nbytes), 1)
        pointer = ctypes.c_void_p()
        lib = driver()
        lib.check(f"cuMemHostAlloc({self.nbytes})", lib.cuMemHostAlloc(ctypes.byref(pointer), self.nbytes, 0))
        self.ptr = int(pointer.value or 0)

    def array(self, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """The first ``prod(shape) * itemsize`` bytes as a C-contiguous array of ``shape`` and ``dtype``."""
        dtype = np.dtype(dtype)
        count = math.prod(int(d) for d in shape)
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"a {tuple(shape)} {dtype} array needs more than the {self.nbytes} bytes held")
        raw = (ctypes.c_ubyte * self.nbytes).from_address(self.ptr)
        return np.frombuffer(raw, dtype=np.uint8)[: count * dtype.itemsize].view(dtype).reshape(tuple(shape))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            lib = driver()
            lib.check("cuMemFreeHost", lib.cuMemFreeHost(ptr))


def copy_to_device(dst: int, src: np.ndarray, stream: Stream, nbytes: int | None = None) -> None:
    """Queue a copy of ``nbytes`` (default: all) of host array ``src`` to device address ``dst`` on ``stream``."""
    if not src.flags.c_contiguous:
        raise ValueError("copy_to_device needs a C-contiguous host array")
    size = src.nbytes if nbytes is None else int(nbytes)
    if size:
        lib = driver()
        lib.check("cuMemcpyHtoDAsync", lib.cuMemcpyHtoDAsync(dst, src.ctypes.data, size, stream.handle))


def copy_to_host(dst: np.ndarray, src: int, stream: Stream, nbytes: int | None = None) -> None:
    """Queue a copy of ``nbytes`` (default: all of ``dst``) from device address ``src`` into ``dst``."""
    if not dst.flags.c_contiguous:
        raise ValueError("copy_to_host needs a C-contiguous host array")
    size = dst.nbytes if nbytes is None else int(nbytes)
    if size:
        lib = driver()
        lib.check("cuMemcpyDtoHAsync", lib.cuMemcpyDtoHAsync(dst.ctypes.data, src, size, stream.handle))


class CudaGraph:
    """The work that ``enqueue`` puts on ``stream``, captured once as a CUDA graph and replayed by
    :meth:`launch`; ``launches`` counts the replays. The capturing context must be current."""

    def __init__(self, stream: Stream, enqueue: Callable[[], None]):
        lib = driver()
        self.launches = 0
        self._graph, self._exec = 0, 0
        lib.check("cuStreamBeginCapture", lib.cuStreamBeginCapture(stream.handle, CAPTURE_THREAD_LOCAL))
        graph = _HANDLE()
        try:
            enqueue()
        except BaseException:
            # Capture must be ended even when the enqueue failed, or the stream stays unusable.
            lib.cuStreamEndCapture(stream.handle, ctypes.byref(graph))
            self._graph = graph.value or 0
            with contextlib.suppress(CudaError):
                self.close()
            raise
        ended = lib.cuStreamEndCapture(stream.handle, ctypes.byref(graph))
        self._graph = graph.value or 0
        try:
            lib.check("cuStreamEndCapture", ended)
            executable = _HANDLE()
            lib.check("cuGraphInstantiate", lib.cuGraphInstantiate(ctypes.byref(executable), self._graph, 0))
            self._exec = executable.value or 0
        except CudaError:
            self.close()
            raise

    def launch(self, stream: Stream) -> None:
        """Replay the graph on ``stream`` (asynchronous, like any launch)."""
        lib = driver()
        lib.check("cuGraphLaunch", lib.cuGraphLaunch(self._exec, stream.handle))
        self.launches += 1

    def close(self) -> None:
        """Free the graph; safe to call twice."""
        lib = driver()
        if self._exec:
            handle, self._exec = self._exec, 0
            lib.check("cuGraphExecDestroy", lib.cuGraphExecDestroy(handle))
        if self._graph:
            handle, self._graph = self._graph, 0
            lib.check("cuGraphDestroy", lib.cuGraphDestroy(handle))
