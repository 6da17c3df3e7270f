"""The CUDA Python binding the runtime calls: pycuda, or NVIDIA's cuda-python (`cuda.bindings`) behind pycuda's API.

Every CUDA user in the runtime calls a small subset of `pycuda.driver` (contexts, streams, events, allocations,
pinned host arrays, copies, modules, prepared kernel launches). `driver()` returns that module itself, or a
`CudaPythonDriver`: the same subset written on `cuda.bindings.driver` (cuda-python >= 12.6; older wheels' `from
cuda import cuda` layout is accepted too), so the callers keep calling `cuda.<name>` whichever binding is active.

Choice: `STP_EDGE_CUDA_BINDING=auto|pycuda|cuda-python` (or the `binding` argument where a context is created).
auto takes pycuda when it is importable (what users' stacks name, and what everything was first written against),
else cuda-python. Every cuda-python call checks its CUresult and raises `CudaError` naming the call and the
result (`cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY`); a machine without a driver gets `DriverNotFoundError`.
Nothing here imports either binding at import time.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import weakref
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge._deps import MissingDependencyError
from stp_edge.cuda.driver import DriverNotFoundError
from stp_edge.errors import UsageError

ENV = "STP_EDGE_CUDA_BINDING"
BINDINGS = ("pycuda", "cuda-python")
EXTRAS = {"pycuda": "cuda", "cuda-python": "cuda-python"}  # binding -> `pip install 'stp-edge[...]'` extra
_ALIASES = {"cuda-bindings": "cuda-python", "cuda_python": "cuda-python", "cuda.bindings": "cuda-python"}

# Every `cuda.bindings.driver` name CudaPythonDriver calls (tests/test_cuda_binding.py checks them all against the
# pinned cuda-bindings, as TRT_API is checked against TensorRT).
DRIVER_API = (
    "CUresult", "CUdevice_attribute", "CUstream", "cuInit", "cuDeviceGetCount", "cuDeviceGet", "cuDeviceGetName",
    "cuDeviceGetAttribute", "cuDeviceGetPCIBusId", "cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRelease",
    "cuCtxPushCurrent", "cuCtxPopCurrent", "cuCtxGetCurrent", "cuCtxGetDevice", "cuMemAlloc", "cuMemFree",
    "cuMemHostAlloc", "cuMemFreeHost", "cuMemcpyHtoD", "cuMemcpyDtoH", "cuMemcpyHtoDAsync", "cuMemcpyDtoHAsync",
    "cuMemsetD8", "cuMemsetD16", "cuMemsetD32", "cuStreamCreate", "cuStreamSynchronize", "cuStreamDestroy",
    "cuEventCreate", "cuEventRecord", "cuEventSynchronize", "cuEventDestroy", "cuModuleLoadData",
    "cuModuleGetFunction", "cuModuleUnload", "cuLaunchKernel",
)
# pycuda `prepare` format letters -> the ctypes type cuLaunchKernel packs each argument as.
ARG_TYPES = {"P": ctypes.c_void_p, "q": ctypes.c_int64, "i": ctypes.c_int32, "f": ctypes.c_float}


def normalise(requested: str | None) -> str:
    """`requested` as "auto", "pycuda" or "cuda-python" (None and "" are auto); UsageError for anything else."""
    name = (requested or "auto").strip().lower()
    name = _ALIASES.get(name, name)
    if name not in ("auto", *BINDINGS):
        raise UsageError(f"CUDA binding must be auto, pycuda or cuda-python (${ENV} or binding=), got {requested!r}")
    return name


def choose_binding(requested: str | None, available: Collection[str]) -> str:
    """The binding to use: `requested` (auto/pycuda/cuda-python/None) given the bindings importable here.

    auto prefers pycuda (users' stacks name it), then cuda-python. Raises MissingDependencyError naming the
    extra of the binding asked for, or both extras when auto finds neither.
    """
    name = normalise(requested)
    if name == "auto":
        for binding in BINDINGS:
            if binding in available:
                return binding
        raise MissingDependencyError(
            "no CUDA Python binding is installed: pip install 'stp-edge[cuda]' (pycuda) or "
            "pip install 'stp-edge[cuda-python]' (NVIDIA's cuda-python)")
    if name not in available:
        raise MissingDependencyError(f"the CUDA binding {name} ({ENV}) is not installed: "
                                     f"pip install 'stp-edge[{EXTRAS[name]}]'")
    return name


def available_bindings() -> tuple[str, ...]:
    """The bindings importable here, looked up without importing them."""
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package is missing
            return False

    have = []
    if found("pycuda"):
        have.append("pycuda")
    if found("cuda.bindings") or found("cuda.cuda"):
        have.append("cuda-python")
    return tuple(have)


def binding_name(requested: str | None = None) -> str:
    """The binding `driver(requested)` returns: `requested`, else $STP_EDGE_CUDA_BINDING, chosen among those here."""
    return choose_binding(requested if requested is not None else os.environ.get(ENV), available_bindings())


def driver(requested: str | None = None) -> Any:
    """The driver API of the chosen binding: the `pycuda.driver` module, or the `CudaPythonDriver`."""
    name = binding_name(requested)
    if name == "pycuda":
        return importlib.import_module("pycuda.driver")
    return CudaPythonDriver()


# --- cuda-python ------------------------------------------------------------------------------------------------
class CudaError(RuntimeError):
    """A cuda-python driver call returned an error: `call` and `result` (the CUresult name) say which."""

    def __init__(self, call: str, result: str) -> None:
        super().__init__(f"{call} failed: {result}")
        self.call, self.result = call, result


_MODULE: Any = None


def cuda_bindings_driver() -> Any:
    """`cuda.bindings.driver` (cuda-python >= 12.6), or `cuda.cuda` of older wheels."""
    global _MODULE
    if _MODULE is None:
        try:
            _MODULE = importlib.import_module("cuda.bindings.driver")
        except ImportError as exc:
            try:
                _MODULE = importlib.import_module("cuda.cuda")
            except ImportError:
                raise MissingDependencyError(f"cuda-python is not installed: pip install 'stp-edge[cuda-python]'. "
                                             f"Original error: {exc}") from exc
    return _MODULE


def _no_driver(exc: BaseException) -> DriverNotFoundError:
    return DriverNotFoundError(f"no CUDA driver found (cuda-python could not load libcuda.so.1: {exc}); install the "
                               "NVIDIA driver or add its folder to LD_LIBRARY_PATH "
                               "(`python -m stp_edge.cuda.driver --dir` finds it)")


def call(name: str, *args: Any) -> Any:
    """`cuda.bindings.driver.<name>(*args)` with its CUresult checked: the value(s) after it, or None."""
    d = cuda_bindings_driver()
    try:
        out = getattr(d, name)(*args)
    except RuntimeError as exc:
        if type(exc).__name__ == "DynamicLibNotFoundError":  # cuda.pathfinder: no libcuda on this machine
            raise _no_driver(exc) from exc
        raise CudaError(name, str(exc)) from exc  # e.g. a symbol this driver lacks
    out = out if isinstance(out, tuple) else (out,)
    err = out[0]
    if int(err) != 0:
        try:
            result = d.CUresult(int(err)).name
        except ValueError:
            result = f"CUresult {int(err)}"
        raise CudaError(name, result)
    return None if len(out) == 1 else out[1] if len(out) == 2 else out[1:]


def _quiet(name: str, *args: Any) -> None:
    """A release call from a finaliser: errors (a context already gone, interpreter exit) are dropped."""
    try:
        call(name, *args)
    except Exception:  # nothing to report to at garbage collection
        pass


def _release_when_collected(owner: Any, name: str, *args: Any) -> weakref.finalize:
    """Call `name(*args)` when `owner` is garbage-collected (not at interpreter exit: the driver may be gone)."""
    fin = weakref.finalize(owner, _quiet, name, *args)
    fin.atexit = False
    return fin


def _stream(stream: Any) -> Any:
    """A CUstream from a Stream, an int handle or None (the legacy default stream)."""
    if stream is None:
        return cuda_bindings_driver().CUstream(0)
    if isinstance(stream, Stream):
        return stream.stream
    return cuda_bindings_driver().CUstream(int(getattr(stream, "handle", stream)))


class Device:
    """pycuda's `Device` subset: count, name, compute_capability, get_attribute, pci_bus_id, primary context."""

    def __init__(self, ordinal: int) -> None:
        self.handle = call("cuDeviceGet", int(ordinal))

    @staticmethod
    def count() -> int:
        return int(call("cuDeviceGetCount"))

    def name(self) -> str:
        return bytes(call("cuDeviceGetName", 256, self.handle)).split(b"\0", 1)[0].decode()

    def pci_bus_id(self) -> str:
        return bytes(call("cuDeviceGetPCIBusId", 64, self.handle)).split(b"\0", 1)[0].decode()

    def get_attribute(self, attribute: Any) -> int:
        return int(call("cuDeviceGetAttribute", attribute, self.handle))

    def compute_capability(self) -> tuple[int, int]:
        a = cuda_bindings_driver().CUdevice_attribute
        return (self.get_attribute(a.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                self.get_attribute(a.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))

    def retain_primary_context(self) -> Context:
        return Context(call("cuDevicePrimaryCtxRetain", self.handle), self)


class _DeviceAttributes:
    """pycuda's `device_attribute.INTEGRATED` spelling of `CUdevice_attribute.CU_DEVICE_ATTRIBUTE_INTEGRATED`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(cuda_bindings_driver().CUdevice_attribute, "CU_DEVICE_ATTRIBUTE_" + name)


class Context:
    """pycuda's `Context` subset: push, pop, get_current, get_device, detach (drops a primary context's retain)."""

    def __init__(self, context: Any, device: Device | None = None) -> None:
        self.context, self.handle, self._device = context, int(context), device

    def push(self) -> None:
        call("cuCtxPushCurrent", self.context)

    @staticmethod
    def pop() -> None:
        call("cuCtxPopCurrent")

    @staticmethod
    def get_current() -> Context | None:
        ctx = call("cuCtxGetCurrent")
        return None if ctx is None or int(ctx) == 0 else Context(ctx)

    @staticmethod
    def get_device() -> Device:
        dev = Device.__new__(Device)
        dev.handle = call("cuCtxGetDevice")
        return dev

    def detach(self) -> None:
        """Release the primary-context retain this object holds (cuDevicePrimaryCtxRelease; any thread)."""
        if self._device is None:
            raise UsageError("only a context from Device.retain_primary_context() can be detached")
        call("cuDevicePrimaryCtxRelease", self._device.handle)
        self._device = None


class DeviceAllocation:
    """A cuMemAlloc block: `int(a)` is the CUdeviceptr; `free()` (or garbage collection) frees it."""

    def __init__(self, nbytes: int) -> None:
        self.ptr = int(call("cuMemAlloc", int(nbytes)))
        self._finalizer = _release_when_collected(self, "cuMemFree", self.ptr)

    def __int__(self) -> int:
        return self.ptr

    __index__ = __int__

    def free(self) -> None:
        if self._finalizer.detach() is not None:
            call("cuMemFree", self.ptr)


class _PinnedHost:
    """cuMemHostAlloc memory exposed to NumPy (`__array_interface__`); freed when the last array view goes."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, flags: int) -> None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.ptr = int(call("cuMemHostAlloc", max(nbytes, 1), flags))
        _release_when_collected(self, "cuMemFreeHost", self.ptr)
        self.__array_interface__ = {"shape": shape, "typestr": dtype.str, "data": (self.ptr, False), "version": 3}


class Stream:
    """pycuda's `Stream(flags)`: `handle` (the CUstream as int), `synchronize()`; destroyed when collected."""

    def __init__(self, flags: int = 0) -> None:
        self.stream = call("cuStreamCreate", int(flags))
        self.handle = int(self.stream)
        _release_when_collected(self, "cuStreamDestroy", self.stream)

    def synchronize(self) -> None:
        call("cuStreamSynchronize", self.stream)


class Event:
    """pycuda's `Event(flags)`: `record(stream)` and `synchronize()`; destroyed when collected."""

    def __init__(self, flags: int = 0) -> None:
        self.event = call("cuEventCreate", int(flags))
        self.handle = int(self.event)
        _release_when_collected(self, "cuEventDestroy", self.event)

    def record(self, stream: Any = None) -> Event:
        call("cuEventRecord", self.event, _stream(stream))
        return self

    def synchronize(self) -> Event:
        call("cuEventSynchronize", self.event)
        return self


class Function:
    """A kernel: pycuda's `prepare(fmt)` + `prepared_async_call(grid, block, stream, *args)`, on cuLaunchKernel."""

    def __init__(self, function: Any, name: str, module: Module) -> None:
        self.function, self.name, self._module = function, name, module  # the module must outlive its functions
        self._types: tuple[Any, ...] | None = None

    def prepare(self, fmt: str) -> Function:
        unknown = sorted(set(fmt) - set(ARG_TYPES))
        if unknown:
            raise UsageError(f"kernel {self.name}: argument format {fmt!r} has letters {unknown} "
                             f"(known: {''.join(ARG_TYPES)})")
        self._types = tuple(ARG_TYPES[c] for c in fmt)
        return self

    def prepared_async_call(self, grid: Sequence[int], block: Sequence[int], stream: Any, *args: Any) -> None:
        if self._types is None:
            raise UsageError(f"kernel {self.name}: call prepare(fmt) before prepared_async_call")
        values = kernel_values(self.name, self._types, args)
        g, b = _dim3(grid), _dim3(block)
        call("cuLaunchKernel", self.function, *g, *b, 0, _stream(stream), (values, self._types), 0)


def kernel_values(name: str, types: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
    """`args` as the Python ints/floats cuLaunchKernel packs as `types` (NumPy scalars and allocations included)."""
    if len(args) != len(types):
        raise UsageError(f"kernel {name} takes {len(types)} arguments, got {len(args)}")
    return tuple(float(a) if t is ctypes.c_float else int(a) for a, t in zip(args, types, strict=True))


def _dim3(dims: Sequence[int]) -> tuple[int, int, int]:
    d = tuple(int(x) for x in dims)
    return (*d, 1, 1, 1)[:3]  # type: ignore[return-value]


class Module:
    """A loaded CUmodule (cuModuleLoadData): `get_function(name)`; unloaded when collected."""

    def __init__(self, image: bytes) -> None:
        self.module = call("cuModuleLoadData", image)
        _release_when_collected(self, "cuModuleUnload", self.module)

    def get_function(self, name: str) -> Function:
        return Function(call("cuModuleGetFunction", self.module, name.encode()), name, self)


def _host(array: np.ndarray) -> int:
    if not array.flags.c_contiguous:
        raise UsageError(f"host array of shape {array.shape} is not C-contiguous: copy it first")
    return int(array.ctypes.data)


class CudaPythonDriver:
    """The `pycuda.driver` subset the runtime calls, on cuda-python (an instance stands in for the module)."""

    name = "cuda-python"
    Error = CudaError
    Device = Device
    Context = Context
    Stream = Stream
    Event = Event
    device_attribute = _DeviceAttributes()

    @staticmethod
    def init(flags: int = 0) -> None:
        """cuInit, after loading libcuda where stp_edge.cuda.driver finds it.

        cuda-python searches the dynamic loader's path only; a driver on a read-only mount elsewhere, loaded
        first, is then found by its soname (cuda.pathfinder checks what is already loaded).
        """
        from stp_edge.cuda.driver import load_libcuda

        load_libcuda()
        call("cuInit", int(flags))

    @staticmethod
    def mem_alloc(nbytes: int) -> DeviceAllocation:
        return DeviceAllocation(nbytes)

    @staticmethod
    def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        if order != "C":
            raise UsageError("pinned host arrays are C-ordered here")
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        return np.asarray(_PinnedHost(shape, np.dtype(dtype), int(mem_flags)))

    @staticmethod
    def to_device(array: np.ndarray) -> DeviceAllocation:
        array = np.ascontiguousarray(array)
        buf = DeviceAllocation(max(array.nbytes, 1))
        call("cuMemcpyHtoD", buf.ptr, _host(array), array.nbytes)
        return buf

    @staticmethod
    def memcpy_htod(dest: Any, src: np.ndarray) -> None:
        call("cuMemcpyHtoD", int(dest), _host(src), src.nbytes)

    @staticmethod
    def memcpy_dtoh(dest: np.ndarray, src: Any) -> None:
        call("cuMemcpyDtoH", _host(dest), int(src), dest.nbytes)

    @staticmethod
    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Any = None) -> None:
        call("cuMemcpyHtoDAsync", int(dest), _host(src), src.nbytes, _stream(stream))

    @staticmethod
    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Any = None) -> None:
        call("cuMemcpyDtoHAsync", _host(dest), int(src), dest.nbytes, _stream(stream))

    @staticmethod
    def memset_d8(dest: Any, value: int, count: int) -> None:
        call("cuMemsetD8", int(dest), int(value), int(count))

    @staticmethod
    def memset_d16(dest: Any, value: int, count: int) -> None:
        call("cuMemsetD16", int(dest), int(value), int(count))

    @staticmethod
    def memset_d32(dest: Any, value: int, count: int) -> None:
        call("cuMemsetD32", int(dest), int(value), int(count))

    @staticmethod
    def module_from_buffer(image: bytes) -> Module:
        return Module(bytes(image))

    @staticmethod
    def module_from_file(path: str | Path) -> Module:
        return Module(Path(path).read_bytes())
