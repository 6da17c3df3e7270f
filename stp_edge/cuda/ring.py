"""A device feature ring per stream, laid out so that every temporal window is one contiguous slice.

The host `stp_edge.pipeline.temporal.FeatureRing` keeps the last N = 2c+1 snippets at slot `s % N`: a window
[lo, hi) that wraps around the end is two pieces, stacked by a copy. The device ring is *mirrored*: 2N slots,
snippet s written to both `s % N` and `s % N + N`, so the window [lo, hi) (hi - lo <= N) is always the
contiguous slots [lo % N, lo % N + hi - lo) and is bound in place to the temporal engine (no gather, no copy).
Each stream's ring is one allocation holding two planes, frame [2N, E] then region [2N, R2, E] (float32);
a window is a pointer into each plane.

`MirrorLayout` holds all index and byte-offset arithmetic as pure functions (tested on the CPU against the host
ring, tests/test_device_ring.py, with a NumPy array standing in for the memory image: a test of the arithmetic,
not of a GPU). `DeviceRing` is the device side: writes are device-to-device copies (`cuMemcpyDtoDAsync`, or
`cuMemcpy2DAsync` for rows at a pitch, e.g. the region windows of a whole-frame view batch) queued on the
producer's stream, never through the host. Each write also queues an asynchronous copy of the snippet's
features into a pinned check buffer, so the host can hold them to the contract (finite) at the step's sync
point (`wait_checks`) without a sync of its own: the same rule as the host path, where a snippet whose
features are NaN is a cut (`FeatureRing.append_missing`).

Ownership: the ring owns its allocation, pinned buffer, event and (where a source names no stream) its own stream.
A window (`frame_window`, `region_window`) is a view, valid until the snippets it covers are overwritten, i.e.
until N more snippets are written: readers must be finished by then (the pipeline's readers return host
results, so they are). Sources must stay valid until the copies queued on their stream have run (stream order:
a TensorRT output buffer is only overwritten by that runner's next call, on the same stream).

The driver calls go through ctypes on libcuda (`stp_edge.cuda.driver`), independent of the binding (pycuda or
cuda-python), with prototypes of their own (nothing is declared on the shared library handle). Every call needs
the device's context current: `RingContext` retains the device's primary context (the one TensorRT, CuPy and
torch share) and pushes it around each use.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from stp_edge.cuda.driver import _I, _P, _U64, CU_STREAM_NON_BLOCKING, Driver, Rows
from stp_edge.cuda.memory import DeviceArray
from stp_edge.errors import UsageError

ALIGN = 256  # the region plane starts on a 256-byte boundary (cuMemAlloc's own alignment)
NAN32 = 0x7FC00000  # float32 quiet NaN: a fresh ring reads NaN, so a bug that binds an unwritten slot shows


# --- the arithmetic ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MirrorLayout:
    """Slots and byte offsets of a mirrored ring of `capacity` snippets (2 * capacity slots).

    Attributes:
        capacity: N, the most snippets a window spans (2c+1 for the temporal stream).
        embed: E, floats per frame embedding.
        regions: R2, region features per snippet (each E floats).
        itemsize: Bytes per element (4: float32).
    """

    capacity: int
    embed: int
    regions: int
    itemsize: int = 4

    def __post_init__(self) -> None:
        if min(self.capacity, self.embed, self.regions, self.itemsize) < 1:
            raise UsageError(f"MirrorLayout needs capacity, embed, regions and itemsize >= 1, got {self}")

    @property
    def slots(self) -> int:
        """Slots per plane: 2N."""
        return 2 * self.capacity

    @property
    def frame_row(self) -> int:
        """Bytes of one snippet's frame embedding [E]."""
        return self.embed * self.itemsize

    @property
    def region_row(self) -> int:
        """Bytes of one snippet's region features [R2, E]."""
        return self.regions * self.embed * self.itemsize

    @property
    def region_base(self) -> int:
        """Byte offset of the region plane (after the frame plane, aligned)."""
        return -(-self.slots * self.frame_row // ALIGN) * ALIGN

    @property
    def nbytes(self) -> int:
        """Bytes of the whole ring (both planes)."""
        return self.region_base + self.slots * self.region_row

    def write_slots(self, snippet: int) -> tuple[int, int]:
        """The two slots snippet `snippet` is written to: s % N and s % N + N."""
        if snippet < 0:
            raise UsageError(f"MirrorLayout: snippet ids start at 0, got {snippet}")
        s = snippet % self.capacity
        return s, s + self.capacity

    def window_slots(self, lo: int, hi: int) -> tuple[int, int]:
        """Slots [start, stop) holding snippets [lo, hi) in order: always contiguous, within the 2N slots."""
        if not 0 <= lo < hi or hi - lo > self.capacity:
            raise UsageError(f"MirrorLayout: window [{lo}, {hi}) must be non-empty, start at >= 0 and span at most "
                             f"the capacity {self.capacity}")
        start = lo % self.capacity
        return start, start + hi - lo

    def frame_offset(self, slot: int) -> int:
        """Byte offset of slot `slot`'s frame embedding."""
        self._check_slot(slot)
        return slot * self.frame_row

    def region_offset(self, slot: int) -> int:
        """Byte offset of slot `slot`'s region features."""
        self._check_slot(slot)
        return self.region_base + slot * self.region_row

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot <= self.slots:  # == slots: the end of a window that ends at the last slot
            raise UsageError(f"MirrorLayout: slot {slot} outside [0, {self.slots}]")


# --- the driver calls: stp_edge.cuda.driver (Driver, Rows) --------------------------------------------------
class RingContext:
    """Device `device`'s primary context, retained until `close()`; `current()` pushes it for the duration."""

    def __init__(self, device: int = 0, driver: Driver | None = None) -> None:
        self.driver = driver or Driver()
        self.device = device
        self.driver.call("cuInit", 0)
        dev = _I()
        self.driver.call("cuDeviceGet", ctypes.byref(dev), device)
        self._dev = dev.value
        ctx = _P()
        self.driver.call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), self._dev)
        self._ctx: int | None = int(ctx.value)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        if self._ctx is None:
            raise UsageError(f"the ring context of CUDA device {self.device} was closed")
        self.driver.call("cuCtxPushCurrent_v2", self._ctx)
        try:
            yield
        finally:
            self.driver.call("cuCtxPopCurrent_v2", ctypes.byref(_P()))

    def close(self) -> None:
        """Drop the retain (idempotent); free what was allocated in the context first."""
        if self._ctx is not None:
            self._ctx = None
            self.driver.call("cuDevicePrimaryCtxRelease_v2", self._dev)


# --- the device ring ------------------------------------------------------------------------------------
class DeviceRing:
    """One stream's mirrored feature ring in device memory (create, use and close with its context current).

    Args:
        layout: The slots and offsets (`MirrorLayout`).
        driver: The libcuda calls (`RingContext.driver`).
    """

    def __init__(self, layout: MirrorLayout, driver: Driver) -> None:
        self.layout, self._drv = layout, driver
        self._own_stream: int | None = None
        self.stream: int | None = None  # the stream of the latest write: readers wait on it
        self._pending = 0  # writes whose check copies have not been waited for
        ptr = _U64()
        driver.call("cuMemAlloc_v2", ctypes.byref(ptr), layout.nbytes)
        self.ptr = int(ptr.value)
        host = _P()
        self._host = self._event = self._wait_event = 0
        try:
            self._check_bytes = layout.capacity * (layout.frame_row + layout.region_row)
            driver.call("cuMemAllocHost_v2", ctypes.byref(host), self._check_bytes)
            self._host = int(host.value)
            self._event = driver.new_event()
            self._wait_event = driver.new_event()
            self._poison()
        except BaseException:  # free what was made, in reverse; each release best effort (the first error wins)
            for name, handle in (("cuStreamDestroy_v2", self._own_stream), ("cuEventDestroy_v2", self._wait_event),
                                 ("cuEventDestroy_v2", self._event), ("cuMemFreeHost", self._host),
                                 ("cuMemFree_v2", self.ptr)):
                if handle:
                    getattr(driver, name)(handle)
            raise
        floats = self._check_bytes // 4
        self._checks = np.ctypeslib.as_array((ctypes.c_float * floats).from_address(self._host))

    def _poison(self) -> None:
        stream = self._stream_for(None)
        self._drv.call("cuMemsetD32Async", self.ptr, NAN32, self.layout.nbytes // 4, stream)
        self.stream = stream

    def _stream_for(self, producer: int | None) -> int:
        """The stream a write is queued on: its producer's, else the ring's own (made once, non-blocking)."""
        if producer is not None:
            return int(producer)
        if self._own_stream is None:
            s = _P()
            self._drv.call("cuStreamCreate", ctypes.byref(s), CU_STREAM_NON_BLOCKING)
            self._own_stream = int(s.value)
        return self._own_stream

    def write(self, snippet: int, frame: Rows, region: Rows, producer: int | None) -> None:
        """Queue the copies of snippet `snippet`'s features into its two slots and its check copy.

        `producer`: the stream the sources were written on (None: they are ready); the copies are queued on it,
        after a wait for the ring's previous writer when that was another stream (slots are reused).
        """
        lay, drv = self.layout, self._drv
        stream = self._stream_for(producer)
        if self.stream is not None and self.stream != stream:
            drv.wait(stream, self.stream, self._wait_event)
        if self._pending >= lay.capacity:  # the check slots are about to be reused
            self.wait_checks()
        for slot in lay.write_slots(snippet):
            drv.copy_rows(self.ptr + lay.frame_offset(slot), frame, lay.frame_row, 1, stream)
            drv.copy_rows(self.ptr + lay.region_offset(slot), region, lay.frame_row, lay.regions, stream)
        check = self._host + (snippet % lay.capacity) * (lay.frame_row + lay.region_row)
        slot = snippet % lay.capacity
        drv.copy_rows(check, Rows(self.ptr + lay.frame_offset(slot)), lay.frame_row, 1, stream, to_host=True)
        drv.copy_rows(check + lay.frame_row, Rows(self.ptr + lay.region_offset(slot)), lay.region_row, 1, stream,
                      to_host=True)
        drv.call("cuEventRecord", self._event, stream)
        self.stream = stream
        self._pending += 1

    def wait_checks(self) -> None:
        """Block until every queued write (and its check copy) is done: the host may then read `checked`."""
        if self._pending:
            self._drv.call("cuEventSynchronize", self._event)
            self._pending = 0

    def checked(self, snippet: int) -> tuple[np.ndarray, np.ndarray]:
        """The host copy of snippet `snippet`'s frame [E] and region [R2, E] features (after `wait_checks`).

        Valid until N more snippets are written.
        """
        lay = self.layout
        per = (lay.frame_row + lay.region_row) // 4
        row = self._checks[(snippet % lay.capacity) * per:(snippet % lay.capacity + 1) * per]
        return row[:lay.embed], row[lay.embed:].reshape(lay.regions, lay.embed)

    def frame_window(self, lo: int, hi: int) -> DeviceArray:
        """frame_emb [hi-lo, E] of snippets [lo, hi): a view of the ring, tagged with its writer's stream."""
        start, _ = self.layout.window_slots(lo, hi)
        return DeviceArray(self.ptr + self.layout.frame_offset(start), (hi - lo, self.layout.embed),
                           np.dtype(np.float32), stream=self.stream)

    def region_window(self, lo: int, hi: int) -> DeviceArray:
        """region_emb [hi-lo, R2, E] of snippets [lo, hi): a view of the ring, tagged with its writer's stream."""
        start, _ = self.layout.window_slots(lo, hi)
        lay = self.layout
        return DeviceArray(self.ptr + lay.region_offset(start), (hi - lo, lay.regions, lay.embed),
                           np.dtype(np.float32), stream=self.stream)

    def close(self) -> None:
        """Wait for queued work, free the memory, events and own stream (idempotent)."""
        if self.ptr is None:
            return
        drv = self._drv
        if self.stream is not None:
            drv.call("cuEventRecord", self._event, self.stream)
            drv.call("cuEventSynchronize", self._event)
        drv.call("cuMemFree_v2", self.ptr)
        drv.call("cuMemFreeHost", self._host)
        drv.call("cuEventDestroy_v2", self._event)
        drv.call("cuEventDestroy_v2", self._wait_event)
        if self._own_stream is not None:
            drv.call("cuStreamDestroy_v2", self._own_stream)
        self.ptr = None  # type: ignore[assignment]
        self._checks = np.empty(0, np.float32)


def view_row(arr: DeviceArray, index: int) -> DeviceArray:
    """Row `index` of a device array along dim 0, as a view (same stream)."""
    shape = tuple(arr.shape)
    if not 0 <= index < shape[0]:
        raise UsageError(f"row {index} of a device array with {shape[0]} rows")
    row = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize
    return DeviceArray(arr.ptr + index * row, shape[1:], arr.dtype, stream=arr.stream)


class Gather:
    """Stacks device arrays of one shape into one batch buffer [B, ...], device to device.

    Windows of several streams in one engine call are gathered this way; a single array is returned as is, with a
    batch dim of 1 (bound in place), unless `in_place` is False: then it is copied too, so the engine always reads
    one fixed address (what a captured CUDA graph needs: an in-place window starts at one of N slots per stream).
    The buffer is owned here and overwritten by the next call: its reader must be done by then (the pipeline's
    readers return host results). Create, use and close with the device's context current.
    """

    def __init__(self, driver: Driver, *, in_place: bool = True) -> None:
        self._drv, self.in_place = driver, in_place
        self._buf: int | None = None
        self._size = 0
        self._event = driver.new_event()

    def __call__(self, arrays: Sequence[DeviceArray]) -> DeviceArray:
        first = arrays[0]
        shape, dtype = tuple(first.shape), np.dtype(first.dtype)
        if any(tuple(a.shape) != shape or np.dtype(a.dtype) != dtype for a in arrays):
            raise UsageError(f"Gather: arrays of different shapes {sorted({tuple(a.shape) for a in arrays})}")
        if len(arrays) == 1 and self.in_place:
            return DeviceArray(first.ptr, (1, *shape), dtype, stream=first.stream)
        nbytes = first.nbytes
        drv = self._drv
        stream = first.stream
        if stream is None:
            raise UsageError("Gather: the first array names no stream to queue the copies on")
        if self._buf is None or self._size < nbytes * len(arrays):
            if self._buf is not None:
                drv.call("cuEventRecord", self._event, stream)
                drv.call("cuEventSynchronize", self._event)
                drv.call("cuMemFree_v2", self._buf)
            ptr = _U64()
            drv.call("cuMemAlloc_v2", ctypes.byref(ptr), nbytes * len(arrays))
            self._buf, self._size = int(ptr.value), nbytes * len(arrays)
        for i, a in enumerate(arrays):
            if a.stream is not None and int(a.stream) != int(stream):
                drv.wait(stream, int(a.stream), self._event)
            drv.copy_rows(self._buf + i * nbytes, Rows(a.ptr), nbytes, 1, stream)
        return DeviceArray(self._buf, (len(arrays), *shape), dtype, stream=stream)

    def close(self) -> None:
        if self._buf is not None:
            self._drv.call("cuMemFree_v2", self._buf)
            self._buf = None
        if self._event:
            self._drv.call("cuEventDestroy_v2", self._event)
            self._event = 0
