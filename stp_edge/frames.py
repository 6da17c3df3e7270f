"""A frame, as the runtime takes it in, checked where it enters.

Everything the runtime accepts becomes an (H, W, 3) uint8 BGR array, or a `FrameError` naming it.
`validate_frame` runs once per frame, at the door it comes in by: `Detector.push`/`push_many`, a `VideoSource`,
or a CPU/CUDA preprocessor called directly; what lies behind those doors (the pipeline stages, `run_video`
feeding a source's frames to its detector) takes the checked frame as it is. An `EncodedFrame` (one compressed
image of an intra-only video, from `VideoSource.frames_with_gaps(lazy=True)`) is checked when it is decoded,
which the detector does only when the snippet samples it, so 15 of 16 frames of an MJPEG video are never decoded.
A `DecodedFrame` (a frame FFmpeg decoded, from a PyAV source) is converted to BGR the same way, only when
sampled; a `SkippedFrame` holds the place of a frame FFmpeg was told not to decode (keyframes-only decoding) and
has no pixels. All three are `LazyFrame`s: what the detector and the snippet assembler check for.
A `DeviceNV12Frame` (NVDEC's output, `stp_edge.nvdec`) is the one frame that is not a host image: NV12 in device
memory, checked by `validate_frame` and kept as it is, read only by the CUDA preprocessor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stp_edge.errors import FrameError

# FrameError is defined on the ground floor (errors)
__all__ = ["DecodedFrame", "DeviceNV12Frame", "EncodedFrame", "FrameError", "LazyFrame", "SkippedFrame",
           "validate_frame"]


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
    if isinstance(frame, DeviceNV12Frame):  # a hardware decoder's frame: checked, kept on the device as it is
        return frame.check(where)
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


class LazyFrame:
    """A frame whose BGR pixels are made only if they are used: `decode(stream=)` gives them or raises FrameError.

    Attributes:
        index: Frame index in its source (frames delivered before it), for error messages.
    """

    __slots__ = ("index",)

    def decode(self, *, stream: int | None = None) -> np.ndarray:
        """The (H, W, 3) uint8 BGR image; FrameError when there is none."""
        raise NotImplementedError

    def _where(self, stream: int | None) -> str:
        return f"frame {self.index}" if stream is None else f"stream {stream} frame {self.index}"


class EncodedFrame(LazyFrame):
    """One compressed image (a JPEG) of an intra-only video: its pixels are decoded only if they are used.

    Attributes:
        data: The compressed bytes, as the container holds them.
        index: Frame index in its source, for error messages.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes, index: int) -> None:
        self.data = data
        self.index = index

    def decode(self, *, stream: int | None = None) -> np.ndarray:
        """The (H, W, 3) uint8 BGR image; FrameError when the bytes do not decode."""
        import cv2

        where = self._where(stream)
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


class DecodedFrame(LazyFrame):
    """A frame FFmpeg decoded (a PyAV `VideoFrame`, still in the codec's pixel format): converted to BGR only if used.

    Attributes:
        frame: The `av.VideoFrame`.
        index: Frame index in its source (frames delivered before it).
        key: True when the frame is a keyframe (FFmpeg's `key_frame` flag).
    """

    __slots__ = ("frame", "key")

    def __init__(self, frame: Any, index: int, key: bool) -> None:
        self.frame = frame
        self.index = index
        self.key = key

    def decode(self, *, stream: int | None = None) -> np.ndarray:
        """The (H, W, 3) uint8 BGR image (FFmpeg's swscale conversion, `to_ndarray(format="bgr24")`)."""
        try:
            image = self.frame.to_ndarray(format="bgr24")
        except Exception as exc:  # PyAV's FFmpegError, ValueError for a pixel format it cannot convert
            raise FrameError(f"{self._where(stream)}: the decoded frame ({self.frame.format.name}) does not "
                             f"convert to BGR: {exc}") from None
        return validate_frame(image, self.index, stream=stream)

    def __repr__(self) -> str:
        return f"DecodedFrame(index={self.index}, key={self.key}, {self.frame.width}x{self.frame.height})"


class SkippedFrame(LazyFrame):
    """The place of a frame FFmpeg did not decode (keyframes-only decoding): it has no pixels.

    Usable only where nothing samples it: a source decodes keyframes only when the sampled frame of every snippet
    is a keyframe.
    """

    __slots__ = ("reason",)
    key = False

    def __init__(self, index: int, reason: str = "only keyframes are decoded") -> None:
        self.index = index
        self.reason = reason

    def decode(self, *, stream: int | None = None) -> np.ndarray:
        """Always raises FrameError: the frame was not decoded, and says why."""
        raise FrameError(f"{self._where(stream)}: not decoded ({self.reason}); a frame that is sampled must be "
                         "decoded: use decode='full', or keyframe-aligned sampling")

    def __repr__(self) -> str:
        return f"SkippedFrame(index={self.index})"


class DeviceNV12Frame:
    """A decoded frame in device memory, NV12 (NVDEC's output, `stp_edge.nvdec`): it stays on the GPU.

    The luma plane is `height` rows of `width` bytes at `ptr`, `pitch` bytes apart; the interleaved UV plane is
    `height // 2` rows at `ptr + uv_offset`, at the same pitch (the layout `CudaPreprocessor.run_device(fmt="nv12")`
    reads). The memory belongs to `owner` (the source's pool of device frames) and stays valid while this object
    lives: a frame is immutable, so a consumer keeps the object itself (`copy()` returns it) where it would copy
    an array. `Detector.push` accepts it; the snippet assembler keeps it; the encode stage hands the frames of a
    batch to `CudaPreprocessor.from_device_nv12` (no host round trip). It has no host pixels: CPU preprocessing
    cannot read it.

    Attributes:
        ptr: CUdeviceptr of the luma plane, as int.
        pitch: Bytes from one row to the next (both planes).
        height, width: Frame size in pixels (even: NV12 chroma is subsampled 2x2).
        uv_offset: Bytes from `ptr` to the UV plane (>= height * pitch).
        matrix: "bt601" or "bt709", the stream's YCbCr matrix; `full_range`: full-range (JPEG) YCbCr.
        stream: The CUstream (int) the producer wrote the frame on, None when it is ready: a consumer on another
            stream waits on it first (as `__cuda_array_interface__["stream"]` says).
        device: CUDA device ordinal the memory lives on.
        index: Frame index in its source; `key`: a keyframe; `time`: media time in seconds, or None.
        owner: Who owns the memory (kept alive with the frame); its `read_on(stream)`, where it has one, is told
            the stream a consumer read the frame on, so that the memory is not rewritten before that read ran.
    """

    __slots__ = ("device", "full_range", "height", "index", "key", "matrix", "owner", "pitch", "ptr", "stream", "time",
                 "uv_offset", "width")
    ndim = 3

    def __init__(self, ptr: int, pitch: int, height: int, width: int, uv_offset: int | None = None, *,
                 matrix: str = "bt601", full_range: bool = False, stream: int | None = None, device: int = 0,
                 index: int = -1, key: bool = False, time: float | None = None, owner: Any = None) -> None:
        self.ptr, self.pitch, self.height, self.width = int(ptr), int(pitch), int(height), int(width)
        self.uv_offset = int(height) * int(pitch) if uv_offset is None else int(uv_offset)
        self.matrix, self.full_range = matrix, bool(full_range)
        self.stream = None if stream is None else int(stream)
        self.device, self.index, self.key, self.time, self.owner = int(device), index, bool(key), time, owner

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, 3): the size of the BGR image the frame stands for (what a snippet records)."""
        return (self.height, self.width, 3)

    def copy(self) -> DeviceNV12Frame:
        """The frame itself: it is immutable and owns its memory, so keeping it is keeping a copy."""
        return self

    def check(self, where: str = "frame") -> DeviceNV12Frame:
        """The frame if its layout is one NV12 frame can have, else FrameError naming the field."""
        if self.ptr <= 0:
            raise FrameError(f"{where}: device NV12 frame without memory (ptr={self.ptr})")
        if self.height <= 0 or self.width <= 0 or self.height % 2 or self.width % 2:
            raise FrameError(f"{where}: a device NV12 frame needs an even, non-empty size, got "
                             f"{self.height}x{self.width}")
        if self.pitch < self.width:
            raise FrameError(f"{where}: pitch {self.pitch} is below the row of {self.width} bytes")
        if self.uv_offset < self.height * self.pitch:
            raise FrameError(f"{where}: uv_offset {self.uv_offset} overlaps the luma plane "
                             f"({self.height} rows x pitch {self.pitch} = {self.height * self.pitch} bytes)")
        if self.matrix not in ("bt601", "bt709"):
            raise FrameError(f"{where}: matrix must be 'bt601' or 'bt709', got {self.matrix!r}")
        return self

    def decode(self, *, stream: int | None = None) -> np.ndarray:
        """Host (H, W, 3) uint8 BGR pixels from the owner's `download` (event snapshots); FrameError without one.

        The pipeline never calls it: its frames stay on the device.
        """
        download = getattr(self.owner, "download", None)
        where = f"frame {self.index}" if stream is None else f"stream {stream} frame {self.index}"
        if download is None:
            raise FrameError(f"{where}: a device NV12 frame without an owner that downloads it has no host pixels")
        return validate_frame(download(self), self.index, stream=stream)

    def read_on(self, stream: int) -> None:
        """A consumer queued a read of the frame on `stream` (told to the owner, which reuses the memory after it)."""
        hook = getattr(self.owner, "read_on", None)
        if hook is not None:
            hook(stream)

    def __repr__(self) -> str:
        return (f"DeviceNV12Frame(index={self.index}, key={self.key}, {self.width}x{self.height}, pitch={self.pitch}, "
                f"device={self.device}, {self.matrix}{' full' if self.full_range else ''})")
