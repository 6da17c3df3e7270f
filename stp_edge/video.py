"""Video sources through OpenCV: files, RTSP/HTTP URLs and camera indices.

`open_source()` opens a source and reads its first frame, so a missing file, an undecodable file or a camera
that does not exist fails at once with a clear `VideoError`. Iterating yields (H, W, 3) uint8 BGR frames;
a frame that fails to decode mid-stream is counted in `stats.dropped` and skipped, not raised.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.pipeline.frames import FrameError, validate_frame

URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class VideoError(RuntimeError):
    """A video source cannot be opened or read."""


@dataclass
class VideoStats:
    """Counters of one source: frames delivered and frames dropped (failed grabs or invalid images)."""

    read: int = 0
    dropped: int = 0


def parse_source(source: str | int | Path) -> tuple[str, str | int]:
    """Classify a source as ("camera", index), ("url", url) or ("file", path).

    An int or a digit string is a camera index; "scheme://..." is a URL; anything else is a file path.
    """
    if isinstance(source, bool):
        raise VideoError(f"video source must be a path, URL or camera index, got {source!r}")
    if isinstance(source, int):
        return "camera", source
    s = str(source)
    if s.isdigit():
        return "camera", int(s)
    if URL_RE.match(s):
        return "url", s
    return "file", s


class VideoSource:
    """An opened OpenCV capture that yields valid BGR frames and counts dropped ones.

    Args:
        source: File path, URL (rtsp://, http://, ...) or camera index (int or digit string).
        max_consecutive_failures: Failed grabs in a row after which the stream is considered ended (live
            sources) or broken (files); single failures are dropped frames.
        timeout_ms: Open/read timeout for URL sources (FFmpeg backend).
    """

    def __init__(self, source: str | int | Path, *, max_consecutive_failures: int = 25,
                 timeout_ms: int = 10_000) -> None:
        import cv2

        self.kind, self.target = parse_source(source)
        self.source = source
        self.max_consecutive_failures = max_consecutive_failures
        self.stats = VideoStats()
        if self.kind == "file" and not Path(self.target).is_file():
            raise VideoError(f"video file not found: {self.target}")
        if self.kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            self._cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        else:
            self._cap = cv2.VideoCapture(self.target)
        if not self._cap.isOpened():
            self._cap.release()
            what = {"camera": f"camera index {self.target} (no such device, or it is busy)",
                    "url": f"stream {self.target} (unreachable, or no FFmpeg support)",
                    "file": f"video file {self.target} (not a video, or a codec OpenCV cannot decode)"}[self.kind]
            raise VideoError(f"cannot open {what}")
        self._first = self._read_valid()
        if self._first is None:
            self._cap.release()
            raise VideoError(f"cannot decode any frame from {self.kind} {self.target}")

    @property
    def fps(self) -> float | None:
        """Frames per second reported by the container/device, or None when unknown."""
        import cv2

        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        return fps if np.isfinite(fps) and fps > 0 else None

    @property
    def frame_count(self) -> int | None:
        """Number of frames in a file when the container says so; None for live sources or unknown."""
        import cv2

        if self.kind != "file":
            return None
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return n if n > 0 else None

    def _read_valid(self) -> np.ndarray | None:
        """Next valid frame, or None at the end of the source.

        Failed grabs and invalid images before a good frame count as dropped. A run of
        `max_consecutive_failures` failures ends the source: for a file it is counted as dropped (the file is
        truncated or corrupt from there), for a live source it is a disconnect, not frames.
        """
        failures = 0
        while failures < self.max_consecutive_failures:
            ok, frame = self._cap.read()
            if ok and frame is not None:
                try:
                    valid = validate_frame(frame, self.stats.read + self.stats.dropped + failures)
                except FrameError:
                    valid = None
                if valid is not None:
                    self.stats.dropped += failures
                    return valid
            elif self.kind == "file" and self._at_end():
                self.stats.dropped += failures
                return None
            failures += 1
        if self.kind == "file":
            self.stats.dropped += failures
        return None

    def _at_end(self) -> bool:
        import cv2

        n = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        pos = self._cap.get(cv2.CAP_PROP_POS_FRAMES)
        return n <= 0 or pos >= n

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield frames until the source ends."""
        if self._first is not None:
            frame, self._first = self._first, None
            self.stats.read += 1
            yield frame
        while (frame := self._read_valid()) is not None:
            self.stats.read += 1
            yield frame

    def close(self) -> None:
        """Release the capture."""
        self._cap.release()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoSource({self.kind}={self.target!r}, fps={self.fps}, frames={self.frame_count})"


def open_source(source: str | int | Path, **kwargs: Any) -> VideoSource:
    """Open a file, URL or camera index; see `VideoSource`. Raises VideoError with the reason."""
    return VideoSource(source, **kwargs)
