"""The runtime's one device-buffer type: `DeviceArray`, a raw CUDA pointer with shape, dtype and stream.

Pure Python (no CUDA binding): the backends read it through the standard `__cuda_array_interface__` (version 3),
like any CuPy, Numba or torch array, and the CUDA preprocessor returns it, whichever binding (pycuda or
cuda-python) made it. It is also a DLPack producer (`__dlpack__`, `__dlpack_device__`: `torch.from_dlpack(a)`,
`cupy.from_dlpack(a)`), and `DeviceArray.from_cai(x)` takes any CUDA Array Interface object without a copy.

The DLPack capsule is built with ctypes (`dlpack_capsule`, a pure helper also used for host memory, so the
CPU tests check it through `np.from_dlpack`): a DLManagedTensor in a PyCapsule named "dltensor", whose deleter
drops the reference the capsule holds on the producer.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stp_edge.errors import UsageError

# DLDeviceType (dlpack.h)
KDL_CPU, KDL_CUDA, KDL_CUDA_HOST = 1, 2, 3
# DLDataTypeCode by NumPy kind: int, uint, float, complex, bool
_DL_CODES = {"i": 0, "u": 1, "f": 2, "c": 5, "b": 6}
CAPSULE_NAME = b"dltensor"  # a module constant: the capsule keeps a pointer to it


class DLDevice(ctypes.Structure):
    """dlpack.h DLDevice: device type and ordinal."""

    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    """dlpack.h DLDataType: type code, bits, lanes."""

    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    """dlpack.h DLTensor (strides in elements; NULL strides: C-contiguous)."""

    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32), ("dtype", DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    """dlpack.h DLManagedTensor: the tensor, the producer's context and the deleter the consumer calls."""


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]

# Live capsules' ctypes memory and producer references, by manager_ctx; the deleter removes its entry.
_LIVE: dict[int, tuple[Any, ...]] = {}
_LIVE_LOCK = threading.Lock()
_NEXT = [1]


@_DELETER
def _delete(managed: Any) -> None:
    with _LIVE_LOCK:
        entry = _LIVE.pop(int(managed.contents.manager_ctx or 0), None)
    del entry  # the producer may be released here, outside the lock


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype, _capsule_new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype, _capsule_valid.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _capsule_destructor(capsule: int) -> None:
    """A capsule never consumed (still named "dltensor") calls its tensor's deleter; a consumer renames it."""
    if _capsule_valid(capsule, CAPSULE_NAME):
        managed = ctypes.cast(_capsule_pointer(capsule, CAPSULE_NAME), ctypes.POINTER(DLManagedTensor))
        managed.contents.deleter(managed)


def dl_dtype(dtype: Any) -> DLDataType:
    """The DLDataType of a NumPy dtype (int, uint, float, complex, bool; one lane)."""
    dt = np.dtype(dtype)
    if dt.kind not in _DL_CODES or dt.byteorder == ">":
        raise UsageError(f"dtype {dt} has no DLPack equivalent (native-endian int, uint, float, complex or bool)")
    return DLDataType(_DL_CODES[dt.kind], dt.itemsize * 8, 1)


def dlpack_capsule(ptr: int, shape: Sequence[int], dtype: Any, device: tuple[int, int], owner: Any,
                   strides: Sequence[int] | None = None) -> Any:
    """A "dltensor" PyCapsule describing memory at `ptr` (no copy); it keeps `owner` alive until its deleter runs.

    Args:
        ptr: Address of element 0.
        shape: Array shape.
        dtype: NumPy dtype of the elements.
        device: (DLDeviceType, ordinal): (KDL_CUDA, n), (KDL_CUDA_HOST, 0) or (KDL_CPU, 0).
        owner: Object that keeps the memory valid (the producer).
        strides: Strides in elements (DLPack's unit), or None for C-contiguous.
    """
    ndim = len(shape)
    shape_arr = (ctypes.c_int64 * max(ndim, 1))(*[int(s) for s in shape])
    strides_arr = None if strides is None else (ctypes.c_int64 * max(ndim, 1))(*[int(s) for s in strides])
    managed = DLManagedTensor()
    t = managed.dl_tensor
    t.data, t.device, t.ndim, t.dtype = int(ptr) or None, DLDevice(*device), ndim, dl_dtype(dtype)
    t.shape = ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64))
    if strides_arr is not None:
        t.strides = ctypes.cast(strides_arr, ctypes.POINTER(ctypes.c_int64))
    t.byte_offset = 0
    with _LIVE_LOCK:
        key, _NEXT[0] = _NEXT[0], _NEXT[0] + 1
        _LIVE[key] = (managed, shape_arr, strides_arr, owner)
    managed.manager_ctx, managed.deleter = key, _delete
    return _capsule_new(ctypes.addressof(managed), CAPSULE_NAME, ctypes.cast(_capsule_destructor, ctypes.c_void_p))


def live_capsules() -> int:
    """How many capsules' deleters have not run yet (for tests and leak checks)."""
    with _LIVE_LOCK:
        return len(_LIVE)


def consumer_wait(producer: int | None, stream: int | None) -> int | None:
    """The stream a DLPack consumer asked for (array API `stream`) that must wait for `producer`, or None.

    CUDA semantics: None is the legacy default stream (1), 1 legacy, 2 per-thread default, any other int a
    CUstream; -1 asks for no synchronisation; 0 is ambiguous and refused. None when the producer has no pending
    work (stream None) or the consumer is on the producer's own stream.
    """
    if stream == 0:
        raise BufferError("__dlpack__(stream=0) is ambiguous for CUDA: pass 1 (legacy default), 2 (per-thread) "
                          "or a CUstream")
    if producer is None or stream == -1:
        return None
    consumer = 1 if stream is None else int(stream)
    return None if consumer == int(producer) else consumer


@dataclass(frozen=True)
class DeviceArray:
    """A dense (C-contiguous) array in device memory (or pinned host memory, `pinned=True`).

    Attributes:
        ptr: The CUdeviceptr as int (bind it to TensorRT as is).
        shape: Array shape.
        dtype: Element type.
        stream: The CUstream (as int) the producer wrote it on, or None when it is ready (already synchronised).
            A consumer on another stream must wait on it (`__cuda_array_interface__["stream"]`).
        device: CUDA device ordinal (DLPack's device id).
        pinned: Page-locked host memory (DLPack kDLCUDAHost) rather than device memory.
        owner: What keeps the memory valid (e.g. the array `from_cai` took it from); not compared.
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    stream: int | None = None
    device: int = 0
    pinned: bool = False
    owner: Any = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        cai: dict[str, Any] = {"shape": tuple(self.shape), "typestr": np.dtype(self.dtype).str,
                               "data": (int(self.ptr), False), "strides": None, "version": 3}
        if self.stream is not None:
            cai["stream"] = int(self.stream)
        return cai

    @classmethod
    def from_cai(cls, obj: Any, device: int | None = None) -> DeviceArray:
        """A DeviceArray over any `__cuda_array_interface__` object (CuPy, torch, Numba), no copy; keeps `obj`.

        Raises:
            UsageError: `obj` has no interface, a mask, or strides that are not C-contiguous.
        """
        cai = getattr(obj, "__cuda_array_interface__", None)
        if not isinstance(cai, dict):
            raise UsageError(f"{type(obj).__name__} has no __cuda_array_interface__")
        shape, dtype = tuple(int(s) for s in cai["shape"]), np.dtype(cai["typestr"])
        if cai.get("mask") is not None:
            raise UsageError("masked __cuda_array_interface__ arrays are not supported")
        strides = cai.get("strides")
        if strides is not None and tuple(strides) != _c_strides(shape, dtype.itemsize) and 0 not in shape:
            raise UsageError(f"{type(obj).__name__} of shape {shape} has strides {tuple(strides)}, not C-contiguous "
                             f"{_c_strides(shape, dtype.itemsize)}: make it contiguous first")
        stream = cai.get("stream")
        if device is None:  # torch: .device.index; CuPy: .device.id; Numba: none (0)
            dev = getattr(obj, "device", None)
            device = next((int(v) for v in (getattr(dev, "index", None), getattr(dev, "id", None))
                           if isinstance(v, int)), 0)
        return cls(int(cai["data"][0]), shape, dtype, None if stream is None else int(stream), int(device),
                   owner=obj)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (KDL_CUDA_HOST, 0) if self.pinned else (KDL_CUDA, int(self.device))

    def __dlpack__(self, *, stream: int | None = None, max_version: tuple[int, int] | None = None,
                   dl_device: tuple[int, int] | None = None, copy: bool | None = None) -> Any:
        """A DLPack capsule of this memory; the consumer's `stream` is made to wait for the producer's (no host sync).

        Follows the Python array API standard: see `consumer_wait` for `stream`. An unversioned "dltensor"
        capsule is returned whatever `max_version` says (allowed to producers without DLPack 1.0 support);
        `copy=True` and a `dl_device` other than this array's are refused (BufferError): nothing is copied here.
        """
        if copy:
            raise BufferError("DeviceArray cannot copy in __dlpack__ (copy=True); copy on the consumer side")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"DeviceArray lives on {self.__dlpack_device__()}, cannot export to {tuple(dl_device)}")
        consumer = consumer_wait(self.stream, stream)
        if consumer is not None:
            from stp_edge.cuda.driver import current_context
            from stp_edge.cuda.streams import StreamWaiter

            if current_context() == 0:
                raise BufferError("__dlpack__ with a consumer stream needs a current CUDA context on this thread")
            waiter = StreamWaiter()
            try:
                waiter.wait(consumer, int(self.stream))  # type: ignore[arg-type]
            finally:
                waiter.close()  # the queued wait keeps the event until it completes
        return dlpack_capsule(self.ptr, self.shape, self.dtype, self.__dlpack_device__(), self)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for s in reversed(shape):
        strides.append(step)
        step *= max(s, 1)
    return tuple(reversed(strides))
