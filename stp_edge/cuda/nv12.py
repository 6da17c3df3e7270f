"""NV12 frames in device memory: their layout, and gathering several into one staging buffer on the device.

A hardware decoder's frames (`stp_edge.frames.DeviceNV12Frame`) each live in their own allocation; the
preprocessing kernel reads a batch from one buffer, frame b at `src + b * frame_stride`, luma rows then the
interleaved UV rows at `uv_offset`, one pitch (`CudaPreprocessor.run_device(fmt="nv12")`). `Nv12Layout` holds
that arithmetic (pure, tested on the CPU); `gather_nv12` queues the device-to-device copies (two 2-D copies per
frame, luma and chroma, whatever the source's pitch) on the consumer's stream, after a wait for each producer's
stream, and tells each frame's owner the stream it was read on (so its memory is not rewritten before). No host
round trip; the driver calls go through ctypes on libcuda (`stp_edge.cuda.driver.Driver`), whichever binding the
rest of the process uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stp_edge.errors import UsageError


@dataclass(frozen=True)
class Nv12Layout:
    """Dense NV12 frames of `height` x `width` packed one after another (pitch = width).

    Attributes:
        height, width: Frame size in pixels (even).
    """

    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0 or self.height % 2 or self.width % 2:
            raise UsageError(f"NV12 needs an even, non-empty frame size, got {self.height}x{self.width}")

    @property
    def pitch(self) -> int:
        """Bytes from one row to the next, luma and chroma."""
        return self.width

    @property
    def uv_offset(self) -> int:
        """Bytes from a frame's start to its UV plane."""
        return self.height * self.pitch

    @property
    def frame_stride(self) -> int:
        """Bytes from one frame to the next: height rows of luma and height/2 rows of interleaved UV."""
        return self.uv_offset + self.height // 2 * self.pitch

    def nbytes(self, frames: int) -> int:
        """Bytes of `frames` frames."""
        return frames * self.frame_stride

    def offset(self, b: int) -> int:
        """Bytes from the buffer's start to frame b."""
        return b * self.frame_stride


def batch_layout(frames: Sequence[Any]) -> Nv12Layout:
    """The dense layout of a batch of device NV12 frames; UsageError unless they share size, colour and device."""
    if not frames:
        raise UsageError("expected at least one device NV12 frame, got an empty sequence")
    first = frames[0]
    key = (first.height, first.width, first.matrix, first.full_range, first.device)
    for i, f in enumerate(frames):
        got = (f.height, f.width, f.matrix, f.full_range, f.device)
        if got != key:
            raise UsageError(f"device NV12 frame {i} is {got[0]}x{got[1]} {got[2]}{' full' if got[3] else ''} on "
                             f"device {got[4]}, frame 0 is {key[0]}x{key[1]} {key[2]}{' full' if key[3] else ''} on "
                             f"device {key[4]}: a batch shares size, colour and device (call once per kind)")
    return Nv12Layout(first.height, first.width)


def copy_nv12(driver: Any, dst: int, layout: Nv12Layout, luma: Any, chroma: Any, stream: int, *,
              to_host: bool = False) -> None:
    """Queue on `stream` the copy of one NV12 frame's planes into the dense frame at `dst` (luma, then chroma).

    `luma`, `chroma`: `stp_edge.cuda.driver.Rows` (pointer and pitch of each plane); `dst` is device memory, or
    host memory with `to_host`.
    """
    driver.copy_rows(dst, luma, layout.width, layout.height, stream, to_host=to_host)
    driver.copy_rows(dst + layout.uv_offset, chroma, layout.width, layout.height // 2, stream, to_host=to_host)


def gather_nv12(driver: Any, frames: Sequence[Any], dst: int, layout: Nv12Layout, stream: int) -> None:
    """Queue the copies of `frames` into the dense buffer at `dst` on `stream` (the consumer's), in order.

    The consumer's stream first waits (an event, no host sync) for each producer stream a frame names; after the
    copies, each frame is told it was read on `stream` (`DeviceNV12Frame.read_on`). Run with the device's
    context current.
    """
    from stp_edge.cuda.driver import Rows

    producers = sorted({f.stream for f in frames if f.stream is not None and f.stream != stream})
    if producers:
        event = driver.new_event()
        try:
            for producer in producers:
                driver.wait(stream, producer, event)
        finally:
            driver.call("cuEventDestroy_v2", event)  # the waits queued keep their meaning (cuStreamWaitEvent)
    for b, f in enumerate(frames):
        copy_nv12(driver, dst + layout.offset(b), layout, Rows(f.ptr, f.pitch), Rows(f.ptr + f.uv_offset, f.pitch),
                  stream)
    for f in frames:
        f.read_on(stream)
