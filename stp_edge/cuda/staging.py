"""Upload staging of the CUDA preprocessor: two slots per input size, so snippet t+1 uploads while t computes.

Discrete GPU: each slot is a pinned host buffer and a device buffer. The host copies frames into slot k's pinned
buffer, a separate copy stream moves it to slot k's device buffer, and the compute stream waits for that copy with
an event. So the upload of one call overlaps the kernels of the previous one, which read the other slot. Slot k is
reused two calls later, and three waits keep that safe:
- the host refills slot k's pinned buffer only after the copy that last read it is done (a host wait, normally
  long done);
- the copy stream overwrites slot k's device buffer only after the kernels that last read it are done (GPU wait,
  `consumed` recorded by the caller after its launches);
- the compute stream reads slot k only after its copy is done (GPU wait).

Integrated GPU (Jetson: the GPU shares the CPU's memory): no device buffer and no copy. Each slot is mapped pinned
memory (cuMemHostAlloc DEVICEMAP) that the kernels read in place through its device pointer. The host refills slot
k only after the kernels that last read it are done.

Nothing here has run on a GPU (none was lent to this work); the sizes are a pure function with a CPU test.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

CU_MEMHOSTALLOC_DEVICEMAP = 0x02
SLOTS = 2


def staging_bytes(frame_nbytes: int, capacity: int, *, mapped: bool) -> tuple[int, int]:
    """(pinned host bytes, device bytes) of one input size's staging: two slots of `capacity` frames each."""
    host = SLOTS * capacity * int(frame_nbytes)
    return host, 0 if mapped else host


@dataclass
class _Slot:
    host: np.ndarray  # pinned, [capacity, *frame shape] uint8
    dev: Any  # device allocation (discrete), None when mapped
    ptr: int  # where the kernels read: the device buffer, or the mapped host buffer's device pointer
    host_free: Any  # event: the copy that last read `host` is done (discrete)
    copied: Any  # event: this slot's upload is done (discrete)
    consumed: Any  # event: the kernels that last read `ptr` are done (recorded by the caller)


class UploadStaging:
    """The two slots of one input size (`shape` frames, `capacity` of them per call).

    Args:
        cuda: The binding's driver module (pycuda.driver or stp_edge.cuda.binding's).
        driver: `stp_edge.cuda.driver.Driver` (stream waits, mapped pointers: calls pycuda lacks).
        mapped: Integrated GPU: mapped pinned memory read in place, no device buffers, no copies.
    """

    def __init__(self, cuda: Any, driver: Any, shape: tuple[int, ...], capacity: int, *, mapped: bool) -> None:
        self._cuda, self._drv = cuda, driver
        self.mapped, self.shape, self.capacity = mapped, tuple(shape), int(capacity)
        self.slots: list[_Slot] = []
        self._turn = 0
        try:
            for _ in range(SLOTS):
                flags = CU_MEMHOSTALLOC_DEVICEMAP if mapped else 0
                host = cuda.pagelocked_empty((capacity, *shape), np.uint8, mem_flags=flags)
                dev = None if mapped else cuda.mem_alloc(host.nbytes)
                ptr = self._mapped_pointer(host) if mapped else int(dev)
                self.slots.append(_Slot(host, dev, ptr, cuda.Event(), cuda.Event(), cuda.Event()))
        except BaseException:
            self.free()
            raise

    @property
    def nbytes(self) -> tuple[int, int]:
        """(pinned host bytes, device bytes) held for this size: `staging_bytes` of its shape and capacity."""
        return staging_bytes(int(np.prod(self.shape)), self.capacity, mapped=self.mapped)

    def _mapped_pointer(self, host: np.ndarray) -> int:
        ptr = ctypes.c_uint64()
        self._drv.call("cuMemHostGetDevicePointer_v2", ctypes.byref(ptr), host.ctypes.data, 0)
        return int(ptr.value)

    def upload(self, frames: list[np.ndarray], compute_stream: Any, copy_stream: Any) -> tuple[int, Any]:
        """Stage `frames` in the next slot; returns (device pointer the kernels read, its `consumed` event).

        The caller queues its kernels on `compute_stream`, then records `consumed` on it.
        """
        slot = self.slots[self._turn]
        self._turn = (self._turn + 1) % SLOTS
        n = len(frames)
        if self.mapped:
            slot.consumed.synchronize()  # the kernels read this very memory: they must be done with it
            for b, f in enumerate(frames):
                slot.host[b] = f
            return slot.ptr, slot.consumed
        slot.host_free.synchronize()  # the copy that last read this pinned buffer
        for b, f in enumerate(frames):
            slot.host[b] = f
        # An event never recorded is complete: the first use of a slot waits for nothing.
        self._drv.call("cuStreamWaitEvent", copy_stream.handle, slot.consumed.handle, 0)
        self._cuda.memcpy_htod_async(slot.dev, slot.host[:n], copy_stream)
        slot.host_free.record(copy_stream)
        slot.copied.record(copy_stream)
        self._drv.call("cuStreamWaitEvent", compute_stream.handle, slot.copied.handle, 0)
        return slot.ptr, slot.consumed

    def free(self) -> None:
        """Free the device buffers (the caller has synchronised both streams first); pinned memory goes with GC."""
        for slot in self.slots:
            if slot.dev is not None:
                slot.dev.free()
                slot.dev = None
        self.slots = []


@dataclass
class DeviceStaging:
    """A device-only staging buffer (NVDEC frames gathered on the device), kept in the same cache."""

    dev: Any
    size: int  # bytes of `dev`

    @property
    def nbytes(self) -> tuple[int, int]:
        """(pinned host bytes, device bytes): device memory only."""
        return 0, self.size

    def free(self) -> None:
        if self.dev is not None:
            self.dev.free()
            self.dev = None
