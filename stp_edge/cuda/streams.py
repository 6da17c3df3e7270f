"""Stream hand-off between producers and consumers of device buffers, with events instead of host syncs.

A device buffer carries the stream its producer wrote it on in `__cuda_array_interface__["stream"]` (version 3:
None = ready, 1 = the legacy default stream, 2 = the per-thread default stream, any other int = a CUstream;
0 is forbidden as ambiguous). A consumer on another stream records an event on the producer's stream and makes
its own stream wait on it (`cuEventRecord` + `cuStreamWaitEvent`): the GPU orders the work, the host never
blocks. pycuda can record events only on its own Stream objects, so the two driver calls go through
`stp_edge.cuda.driver.Driver` (libcuda found robustly, loaded on first use; no import-time dependency).
"""

from __future__ import annotations

from typing import Any

from stp_edge.cuda.driver import CU_STREAM_NON_BLOCKING, shared_driver
from stp_edge.errors import UsageError

CU_STREAM_LEGACY = 1
CU_STREAM_PER_THREAD = 2


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
        self._drv = shared_driver()
        self._event: int | None = self._drv.new_event()

    def wait(self, consumer: int, producer: int) -> None:
        """Queue on `consumer` a wait for everything queued on `producer` so far (no host synchronisation)."""
        if self._event is None:
            raise UsageError("StreamWaiter.wait() after close()")
        self._drv.wait(consumer, producer, self._event)

    def close(self) -> None:
        """Destroy the event (idempotent)."""
        if self._event is not None:
            self._drv.call("cuEventDestroy_v2", self._event)
        self._event = None


def new_stream(cuda: Any) -> Any:
    """A Stream of the binding's driver API (`PrimaryContext.driver`) created non-blocking (CU_STREAM_NON_BLOCKING).

    A blocking stream waits for, and is waited for by, the legacy default stream: any library (or plain
    cudaMemcpy) using that stream in the same context would serialise with our work.
    """
    return cuda.Stream(CU_STREAM_NON_BLOCKING)
