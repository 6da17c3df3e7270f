"""A frame, as the runtime takes it in, checked where it enters.

Everything the runtime accepts becomes an (H, W, 3) uint8 BGR array, or a `FrameError` naming it.
`validate_frame` runs once per frame, at the door it comes in by: `Detector.push`/`push_many`, a `VideoSource`,
or a CPU/CUDA preprocessor called directly; what lies behind those doors (the pipeline stages, `run_video`
feeding a source's frames to its detector) takes the checked frame as it is. An `EncodedFrame` (one compressed
image of an intra-only video, from `VideoSource.frames_with_gaps(lazy=True)`) is checked when it is decoded,
which the detector does only when the snippet samples it, so 15 of 16 frames of an MJPEG video are never decoded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stp_edge.errors import FrameError

__all__ = ["EncodedFrame", "FrameError", "validate_frame"]  # FrameError is defined on the ground floor (errors)


def validate_frame(frame: Any, index: int, *, stream: int | None = None) -> np.ndarray:
    """Check one frame and convert it to (H, W, 3) uint8 BGR.

    Accepted: (H, W, 3) uint8 BGR (returned as is, made contiguous), grayscale (H, W) or (H, W, 1) uint8
    (replicated to three channels) and BGRA (H, W, 4) uint8 (alpha dropped).

    Args:
        frame: The frame, as OpenCV delivers it.
        index: Frame index in its stream, used in error messages.
        stream: Stream id, named in error messages when given.

    Raises:
        FrameError: Not an ndarray, empty, not uint8, or an unsupported shape; the message gives the index and
            what was expected versus what was received.
    """
    where = f"frame {index}" if stream is None else f"stream {stream} frame {index}"
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"{where}: expected a numpy array (H, W, 3) uint8 BGR, got {type(frame).__name__}")
    frame = np.asarray(frame)  # subclasses as plain arrays: np.matrix cannot hold (H, W, 3), a mask is not pixels
    if frame.dtype != np.uint8:
        raise FrameError(f"{where}: expected dtype uint8, got {frame.dtype} (convert with "
                         f"cv2.convertScaleAbs or scale to 0..255 yourself)")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        if frame.size == 0:
            raise FrameError(f"{where}: expected a non-empty image, got shape {frame.shape}")
        return np.ascontiguousarray(np.repeat(frame[:, :, None], 3, axis=2))
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise FrameError(f"{where}: expected shape (H, W, 3) BGR, (H, W, 4) BGRA or (H, W) gray, "
                         f"got {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise FrameError(f"{where}: expected a non-empty image, got shape {frame.shape}")
    if frame.shape[2] == 4:
        frame = frame[:, :, :3]
    return np.ascontiguousarray(frame)


class EncodedFrame:
    """One compressed image (a JPEG) of an intra-only video: its pixels are decoded only if they are used.

    Attributes:
        data: The compressed bytes, as the container holds them.
        index: Frame index in its source, for error messages.
    """

    __slots__ = ("data", "index")

    def __init__(self, data: bytes, index: int) -> None:
        self.data = data
        self.index = index

    def decode(self, *, stream: int | None = None) -> np.ndarray:
        """The (H, W, 3) uint8 BGR image; FrameError when the bytes do not decode."""
        import cv2

        where = f"frame {self.index}" if stream is None else f"stream {stream} frame {self.index}"
        try:
            image = cv2.imdecode(np.frombuffer(self.data, np.uint8), cv2.IMREAD_COLOR) if self.data else None
        except cv2.error as exc:  # e.g. a header claiming more pixels than CV_IO_MAX_IMAGE_PIXELS
            reason = str(exc).strip().splitlines()[-1]
            raise FrameError(f"{where}: the compressed image ({len(self.data)} bytes) does not decode: "
                             f"{reason}") from None
        if image is None:
            raise FrameError(f"{where}: the compressed image ({len(self.data)} bytes) does not decode")
        return validate_frame(image, self.index, stream=stream)

    def __repr__(self) -> str:
        return f"EncodedFrame(index={self.index}, {len(self.data)} bytes)"
