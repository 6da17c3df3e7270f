"""Stream hand-off between producers and consumers of device buffers, with events instead of host syncs.

A device buffer carries the stream its producer wrote it on in `__cuda_array_interface__["stream"]` (version 3:
None = ready, 1 = the legacy default stream, 2 = the per-thread default stream, any other int = a CUstream;
0 is forbidden as ambiguous). A consumer on another stream records an event on the producer's stream and makes
its own stream wait on it (`cuEventRecord` + `cuStreamWaitEvent`): the GPU orders the work, the host never
blocks. pycuda can record events only on its own Stream objects, so the two driver calls go through ctypes
on libcuda (stp_edge.cuda.driver: found robustly, loaded on first use; no import-time dependency).
"""

from __future__ import annotations

import ctypes
from typing import Any

from stp_edge.cuda.driver import check as _check
from stp_edge.cuda.driver import load_libcuda
from stp_edge.errors import UsageError

CU_STREAM_LEGACY = 1
CU_STREAM_PER_THREAD = 2
CU_EVENT_DISABLE_TIMING = 0x2
CU_STREAM_NON_BLOCKING = 0x1


def producer_stream(value: Any, consumer: int) -> int | None:
    """The stream a consumer on stream `consumer` must wait for before reading `value`, or None.

    None for host arrays, buffers without a stream (already synchronised) and buffers produced on `consumer`
    itself (stream order suffices).

    Raises:
        ValueError: The interface gives stream 0, which version 3 forbids (ambiguous legacy/per-thread).
    """
    cai = getattr(value, "__cuda_array_interface__", None)
    if not isinstance(cai, dict) or cai.get("stream") is None:
        return None
    stream = int(cai["stream"])
    if stream == 0:
        raise UsageError("__cuda_array_interface__ stream 0 is not allowed (version 3): the producer must give "
                         "1 (legacy default stream), 2 (per-thread default stream) or its CUstream")
    return None if stream == int(consumer) else stream


class StreamWaiter:
    """One reusable event that makes a consumer stream wait for producer streams.

    Create, use and close it while the consumer's context is current (an event belongs to a context).
    """

    def __init__(self) -> None:
        self._lib = load_libcuda()
        self._event = ctypes.c_void_p()
        _check(self._lib.cuEventCreate(ctypes.byref(self._event), CU_EVENT_DISABLE_TIMING), "cuEventCreate")

    def wait(self, consumer: int, producer: int) -> None:
        """Queue on `consumer` a wait for everything queued on `producer` so far (no host synchronisation)."""
        _check(self._lib.cuEventRecord(self._event, ctypes.c_void_p(producer)), "cuEventRecord")
        _check(self._lib.cuStreamWaitEvent(ctypes.c_void_p(consumer), self._event, 0), "cuStreamWaitEvent")

    def close(self) -> None:
        """Destroy the event (idempotent)."""
        if self._event is not None and self._event.value:
            _check(self._lib.cuEventDestroy_v2(self._event), "cuEventDestroy")
        self._event = None


def new_stream(cuda: Any) -> Any:
    """A Stream of the binding's driver API (`PrimaryContext.driver`) created non-blocking (CU_STREAM_NON_BLOCKING).

    A blocking stream waits for, and is waited for by, the legacy default stream: any library (or plain
    cudaMemcpy) using that stream in the same context would serialise with our work.
    """
    return cuda.Stream(CU_STREAM_NON_BLOCKING)
