"""Video sources through OpenCV or PyAV (FFmpeg): files, RTSP/HTTP URLs and camera indices.

Two decoders read sources (`decoder=`): OpenCV, and PyAV packet by packet (`stp_edge.av_source`), whose frames
are `LazyFrame`s converted to BGR only where a consumer uses them (the detector: the frames its snippets sample),
and which can decode keyframes only (`decode="keyframes"`). `decoder="auto"` picks PyAV for H.264/H.265/VP8/VP9/
AV1 files where it is installed, OpenCV for everything else; `VideoSource.describe_decoder()` says which and why.

`open_source()` opens a source and reads its first frame, so a missing file, an undecodable file, an
unreachable stream or a camera that does not exist fails at once with a clear `VideoError` (no retry at open),
unless `retry_at_start=True`: then a live source that is down at start is reconnected in the background as one
that drops later (`down_at_start` says why it is down; its first frames arrive after a `Gap` at frame 0).
Sources are named to people by `display_source` (credentials in URLs masked); OpenCV's and FFmpeg's own log
lines about a source that cannot be opened are silenced (the `VideoError` says it once, plainly).
Iterating yields (H, W, 3) uint8 BGR frames, checked here by `stp_edge.frames.validate_frame` (a source is
their door into the runtime: `run_video` does not check them again); a frame that fails to decode mid-stream is
counted in `stats.dropped` and skipped, not raised.

Live sources (URLs and cameras) that drop or stall reconnect with bounded exponential backoff (`Backoff`;
`reconnect=None` never reconnects). Every outage that ends in a reconnect is a `Gap` in `stats.gaps`. The
frames before and after a gap are not contiguous, so a consumer that keeps a temporal window iterates
`frames_with_gaps()`, which yields `(frame, gap)` pairs: `gap` is the `Gap` that happened just before this
frame, else None; plain iteration yields frames only. A live source whose reconnect attempts are exhausted
ends with `stats.lost = True` and `stats.lost_reason`, so that a caller can exit non-zero. Opens and reads of
URL sources are bounded by `timeout_ms` (FFmpeg backend), so a stalled stream becomes a gap, never a hang.

For files, `stats.expected` is the frame count the container promises (None when it does not say) and
`stats.missing` the frames it promised but never delivered (a truncated file): counted only when the file
ended on its own (`stats.ended`), never when the reader stopped early (`--max-frames`, Ctrl-C, `close()`).

Writing: `VideoWriter` writes frames of one size with a codec of `CODECS`, under a temporary name that
`close()` renames into place; its failures are `VideoError`s too, naming the destination path, never the
temporary file. `.mp4` files are H.264 (browsers and players play it) where PyAV with libx264 is installed
(`pip install 'stp-edge[h264]'`), else MPEG-4 Part 2 through OpenCV; `check_video_output` tries a path's codec
before a long run, and `VideoWriter.codec_name` says which was chosen.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.av_source import AUTO_CODECS, DECODE_MODES, AvCapture, av_available, keyframe_interval, probe_codec
from stp_edge.errors import FrameError, StpEdgeError, UsageError
from stp_edge.frames import EncodedFrame, LazyFrame, validate_frame

URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# FFmpeg inside OpenCV reads its log level once, when OpenCV first uses it: quiet, unless the user set one. Its
# lines ("[tcp @ 0x...] Connection refused", "[h264 @ 0x...] error while decoding") would precede the one-line
# error or the dropped-frame count that already say what happened.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
# Query parameters whose values are secrets, masked by `display_source` (case-insensitive substrings).
_SECRET_PARAMS = ("pass", "pwd", "token", "secret", "key", "auth", "sig", "credential")
# Codecs whose every packet is a whole JPEG image (decodable alone): `frames_with_gaps(lazy=True)` skips decoding.
INTRA_ONLY_FOURCC = frozenset({"MJPG", "mjpg", "MJPA", "AVDJ", "jpeg", "JPEG", "dmb1"})


class VideoError(StpEdgeError, RuntimeError):
    """A video source cannot be opened or read, or a video file cannot be written."""


@dataclass(frozen=True)
class Backoff:
    """Reconnect policy of a live source: exponential delays, bounded by attempts and/or total time.

    Before attempt k (1-based) the source waits `min(initial_s * factor**(k-1), max_delay_s)`. It gives up
    after `max_attempts` attempts or once `max_total_s` seconds have passed since the outage began, whichever
    comes first (an attempt under way finishes, bounded by the open timeout). None disables a bound; with
    both None it retries forever. `Backoff.never()` (or `reconnect=None`) makes the first drop final.
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 30.0
    max_attempts: int | None = None
    max_total_s: float | None = 300.0

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_delay_s < 0:
            raise UsageError(f"Backoff delays must be >= 0, got initial_s={self.initial_s}, "
                             f"max_delay_s={self.max_delay_s}")
        if self.factor < 1:
            raise UsageError(f"Backoff factor must be >= 1, got {self.factor}")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise UsageError(f"Backoff max_attempts must be >= 0 or None, got {self.max_attempts}")
        if self.max_total_s is not None and self.max_total_s < 0:
            raise UsageError(f"Backoff max_total_s must be >= 0 or None, got {self.max_total_s}")

    @classmethod
    def never(cls) -> Backoff:
        """A policy that never reconnects: the first drop loses the source."""
        return cls(max_attempts=0)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt` (1-based)."""
        # min() before the power would still overflow for huge attempts; cap the exponent instead
        return min(self.initial_s * self.factor ** min(attempt - 1, 64), self.max_delay_s)


@dataclass(frozen=True)
class Gap:
    """One outage of a live source that ended in a reconnect.

    Attributes:
        frame: Index (in delivered frames) of the first frame after the gap; frames `frame - 1` and `frame`
            are not contiguous in time.
        lost_s: Seconds from the last frame before the gap to the first frame after it.
        attempts: Reconnect attempts it took (the last one succeeded).
        start_time: Unix time of the last frame before the gap.
    """

    frame: int
    lost_s: float
    attempts: int
    start_time: float


@dataclass
class VideoStats:
    """Counters of one source.

    Attributes:
        read: Frames delivered.
        dropped: Frames skipped mid-stream (failed grabs or invalid images followed by good frames).
        expected: Frames the file's container promises; None for live sources or when it does not say.
        gaps: Outages of a live source that ended in a reconnect, in order.
        lost: True when a live source dropped and could not be reconnected (the source ended because of it).
        lost_reason: Why, when `lost`; else None.
        ended: True when the source ended on its own (end of file, a file that stops decoding, a lost or
            finished stream); False while it is read and when the reader stopped first (a frame limit, a stop
            signal, `close()`).
    """

    read: int = 0
    dropped: int = 0
    expected: int | None = None
    gaps: list[Gap] = field(default_factory=list)
    lost: bool = False
    lost_reason: str | None = None
    ended: bool = False

    @property
    def missing(self) -> int:
        """Frames the container promised but never delivered (the file is truncated); 0 when unknown.

        Only a file that ended on its own (`ended`) can be short: one whose reader stopped early (a frame
        limit, Ctrl-C) was not read to its end, so nothing is known to be missing. Containers estimate some
        counts (from duration x fps), so a difference of a frame or two may be a rounding of the container
        rather than lost data.
        """
        if self.expected is None or not self.ended:
            return 0
        return max(self.expected - self.read - self.dropped, 0)

    @property
    def gap_s(self) -> float:
        """Total seconds lost in gaps that ended in a reconnect."""
        return sum(g.lost_s for g in self.gaps)


DEFAULT_BACKOFF = Backoff()


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


def display_source(source: str | int | Path) -> str:
    """A source as people may see it: a URL's password and secret query values masked, anything else as is.

    `rtsp://admin:hunter2@10.0.0.5/stream?token=abc` -> `rtsp://admin:***@10.0.0.5/stream?token=***`. Every
    message and summary line that names a source uses this, so logs never carry a camera's credentials.
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if isinstance(source, bool) or not isinstance(source, (str, int, Path)):
        return repr(source)
    kind, target = parse_source(source)
    if kind == "camera":
        return f"camera {target}"
    if kind == "file":
        return str(target)
    try:
        parts = urlsplit(str(target))
        netloc = parts.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            name, colon, _password = user.partition(":")
            netloc = f"{name}{':***' if colon else ''}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if any(w in k.lower() for w in _SECRET_PARAMS) else v) for k, v in pairs],
                              safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable as a URL: show its scheme only, never what might be a secret
        return f"{str(target).split('://', 1)[0]}://(unparseable URL)"


_QUIET_LOCK = threading.Lock()
_quiet = {"depth": 0, "level": None}  # opens under way in any thread, and the level to restore after the last


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own log (`[ WARN:0@0.02] ... can't be used to capture by name`) silenced while opening.

    The level is global to the process: readers of several sources open at once, so the level of the first
    open is restored when the last one ends.
    """
    import cv2

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:  # an OpenCV build without the logging module
        yield
        return
    with _QUIET_LOCK:
        if _quiet["depth"] == 0:
            _quiet["level"] = logging.getLogLevel()
            logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                logging.setLogLevel(_quiet["level"])


class VideoSource:
    """An opened OpenCV capture that yields valid BGR frames, counts dropped ones and reconnects live sources.

    Args:
        source: File path, URL (rtsp://, http://, ...) or camera index (int or digit string).
        max_consecutive_failures: Failed grabs in a row after which the stream is considered ended (files) or
            dropped (live sources); single failures are dropped frames.
        timeout_ms: Open/read timeout for URL sources (FFmpeg backend; best effort for cameras). A live source
            that delivers no good frame for this long is also considered dropped.
        reconnect: Reconnect policy of live sources; None never reconnects. Ignored for files.
        retry_at_start: A live source that cannot be opened is not an error: it is reconnected in the
            background under `reconnect`, as a source that drops later (`down_at_start` holds the reason).
            Files and, without this, live sources fail at once.
        decoder: "opencv", "pyav" (FFmpeg packet by packet, `stp_edge.av_source`: frames are converted to BGR
            only where used) or "auto": PyAV for H.264, H.265, VP8/9 and AV1 files where it is installed;
            OpenCV for cameras, URLs, other codecs (MPEG-4 Part 2; MJPEG, already decoded lazily by libjpeg) and
            where PyAV is absent.
        decode: "full" (every frame decoded), "keyframes" (PyAV only: keyframes decoded, the other frames
            yielded as `SkippedFrame`s; for keyframe-aligned sampling, through `frames_with_gaps(lazy=True)`) or
            "nonref" (PyAV only: as "full", but the non-reference frames the consumer does not sample are not
            decoded, yielded as `SkippedFrame`s; exact; the consumer says what it samples with `sample_only`,
            which `Detector.use_source` does; see `stp_edge.av_source`).
        cuda_device: The consumer preprocesses on this CUDA device: `decoder="auto"` may then pick "nvdec" for a file
            (`stp_edge.nvdec.choose_nvdec`), and "nvdec" decodes there (None: device 0, and "auto" never picks it).
            decoder="nvdec": PyAV demuxes, NVDEC decodes through PyNvVideoCodec, frames stay on the GPU
            (`DeviceNV12Frame`; docs/gpu-decode.md).

    Attributes:
        name: The source as people may see it (`display_source`: credentials masked).
        down_at_start: Why a live source opened with `retry_at_start` was down at start, else None.
        decoder: "opencv" or "pyav", the one reading; `decode_mode` the mode, `decoder_reason` why (`describe_decoder`).
    """

    # Defaults for what `__init__` sets: a subclass that reads frames its own way (a test's paced list of frames, a
    # benchmark's camera) without calling it is an OpenCV-read source that samples every frame.
    decoder = "opencv"
    decode_mode = "full"
    _sampled: tuple[int, tuple[int, ...]] | None = None

    def __init__(self, source: str | int | Path, *, max_consecutive_failures: int = 25,
                 timeout_ms: int = 10_000, reconnect: Backoff | None = DEFAULT_BACKOFF,
                 retry_at_start: bool = False, decoder: str = "auto", decode: str = "full",
                 cuda_device: int | None = None) -> None:
        self.kind, self.target = parse_source(source)
        self.source = source
        self.name = display_source(source)
        self.cuda_device = cuda_device
        self.decoder, self.decode_mode, self.decoder_reason = _choose_decoder(self.kind, self.target, decoder, decode,
                                                                              cuda_device)
        self.down_at_start: str | None = None
        self.max_consecutive_failures = max_consecutive_failures
        self.timeout_ms = timeout_ms
        self.reconnect = reconnect if reconnect is not None else Backoff.never()
        self.stats = VideoStats()
        self.lazy = False  # delivering `EncodedFrame`s (see frames_with_gaps)
        self._keyframe_interval: int | None = -1  # not read yet (see `keyframe_interval`)
        self._sampled: tuple[int, tuple[int, ...]] | None = None  # decode="nonref": what the consumer samples
        self._fps: float | None = None
        self._closed = threading.Event()
        self._ended = False  # reached the end the container announces: a normal end, even for a URL
        self._last_good = time.monotonic(), time.time()
        if self.kind == "file" and not Path(self.target).is_file():
            raise VideoError(f"video file not found: {self.target}")
        reason = self._connect()
        if reason is not None and not (retry_at_start and self.live):
            raise VideoError(reason)
        self.down_at_start = reason
        self.stats.expected = self.frame_count

    @property
    def live(self) -> bool:
        """True for URLs and cameras: sources that can drop and be reconnected."""
        return self.kind != "file"

    @property
    def fps(self) -> float | None:
        """Frames per second reported by the container/device at the last connect, or None when unknown.

        Kept from the connect, so it can be read from any thread, after `close()`, and for a source that was
        down at start once it came up.
        """
        return self._fps

    @property
    def frame_count(self) -> int | None:
        """Number of frames in a file when the container says so; None for live sources or unknown."""
        import cv2

        if self.kind != "file":
            return None
        if self.decoder in PACKET_DECODERS:
            return self._cap.frame_count if self._cap.opened else None
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return n if n > 0 else None

    @property
    def keyframe_interval(self) -> int | None:
        """A file's keyframe interval where it is regular (PyAV, from its first packets), else None (unknown).

        Read once, from the packets alone (nothing decoded); None for live sources and for the OpenCV decoder.
        `Detector(sampling="auto")` samples keyframes when it divides the snippet length
        (`stp_edge.pipeline.snippets.choose_sampling`). A caller that knows better (a camera's configured GOP)
        may set it.
        """
        if self._keyframe_interval == -1:
            self._keyframe_interval = (keyframe_interval(str(self.target))
                                       if self.kind == "file" and self.decoder in PACKET_DECODERS else None)
        return self._keyframe_interval

    @keyframe_interval.setter
    def keyframe_interval(self, value: int | None) -> None:
        self._keyframe_interval = value

    def sample_only(self, snippet_len: int | None, offsets: Sequence[int] = ()) -> None:
        """decode="nonref": the consumer samples the frames whose index % `snippet_len` is in `offsets`.

        Indices count from the first frame after a connect (the detector's count of the stream, which restarts
        at a gap); None: every frame is used (nothing skipped). `Detector.use_source` calls it; other decode
        modes ignore it.
        """
        self._sampled = None if snippet_len is None else (int(snippet_len), tuple(int(o) for o in offsets))
        if self.decoder in PACKET_DECODERS:
            self._cap.set_sampling(*(self._sampled or (None,)))

    def _open_capture(self) -> Any:
        """A new `cv2.VideoCapture` of the source (not checked; OpenCV's log lines about it silenced)."""
        import cv2

        if self.kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
            with _quiet_opencv():
                return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        with _quiet_opencv():
            cap = cv2.VideoCapture(self.target)
        if self.kind == "camera" and cap.isOpened():
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms)  # honoured by some backends only
        return cap

    def _connect(self) -> str | None:
        """Open the capture and read its first valid frame into `_first`; the reason on failure, else None."""
        import cv2

        if self.decoder in PACKET_DECODERS:
            return self._connect_av()
        self._cap = self._open_capture()
        self._first = None
        if not self._cap.isOpened():
            self._cap.release()
            what = {"camera": f"camera index {self.target} (no such device, or it is busy)",
                    "url": f"stream {self.name} (unreachable, or no FFmpeg support)",
                    "file": f"video file {self.target} (not a video, or a codec OpenCV cannot decode)"}[self.kind]
            return f"cannot open {what}"
        self._last_good = time.monotonic(), time.time()
        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        self._fps = fps if np.isfinite(fps) and fps > 0 else None
        self._first = self._read_valid()
        if self._first is None:
            self._cap.release()
            return f"cannot decode any frame from {self.name if self.kind == 'camera' else f'{self.kind} {self.name}'}"
        return None

    def _connect_av(self) -> str | None:
        """`_connect` through PyAV: open the container and read its first frame into `_first`."""
        self._first = None
        if self.decoder == "nvdec":
            from stp_edge.nvdec import NvdecCapture

            self._cap = NvdecCapture(self.target, self.decode_mode, timeout_ms=self.timeout_ms, sampling=self._sampled,
                                     device=self.cuda_device or 0)
        else:
            self._cap = AvCapture(self.target, self.decode_mode, timeout_ms=self.timeout_ms, sampling=self._sampled)
        if not self._cap.opened:
            what = f"stream {self.name}" if self.kind == "url" else f"video file {self.target}"
            return f"cannot open {what} with {'NVDEC' if self.decoder == 'nvdec' else 'PyAV'} ({self._cap.error})"
        self._last_good = time.monotonic(), time.time()
        self._fps = self._cap.fps
        self._first = self._read_valid()
        if self._first is None:
            self._cap.release()
            return f"cannot decode any frame from {self.kind} {self.name}"
        return None

    def _read_av(self) -> LazyFrame | None:
        """Next frame of the PyAV reader (a `DecodedFrame` or `SkippedFrame`), its frames not output counted."""
        frame = self._cap.read()
        self.stats.dropped += self._cap.take_dropped()
        if frame is None:
            self._ended = self._cap.ended
            return None
        frame.index = self.stats.read
        self._last_good = time.monotonic(), time.time()
        return frame

    def _read_valid(self) -> np.ndarray | LazyFrame | None:
        """Next valid frame, or None when the source ends (a file) or drops (a live source).

        Failed grabs and invalid images before a good frame count as dropped. A run of failures that ends the
        source is not counted: for a file the shortfall shows in `stats.missing`, for a live source it is a
        disconnect, not frames. A live source also drops when no good frame came for `timeout_ms`, or after
        `max_consecutive_failures` failures in a row. A file ends only where its container does, or where
        reading stops advancing for `max_consecutive_failures` attempts: a long corrupt run inside a file is
        skipped (and counted) up to the good frames after it.
        """
        if self.decoder in PACKET_DECODERS:
            return self._read_av()
        failures = stalled = 0
        position = self._position()
        while stalled < self.max_consecutive_failures:
            ok, frame = self._cap.read()
            if not ok and self._at_end():
                self._ended = True
                return None
            frame = frame if ok else None
            good = self._packet(frame) if self.lazy else self._image(frame, failures)
            if good is not None:
                self.stats.dropped += failures
                self._last_good = time.monotonic(), time.time()
                return good
            failures += 1
            now = self._position()
            stalled = 0 if self.kind == "file" and now > position else stalled + 1
            position = max(position, now)
            if self.live and time.monotonic() - self._last_good[0] >= self.timeout_ms / 1000:
                return None
        return None

    def _packet(self, frame: np.ndarray | None) -> EncodedFrame | None:
        """A compressed frame (lazy mode), or None for a packet that is not a whole JPEG.

        A whole JPEG starts with SOI and ends with EOI (padding aside): an empty or cut packet is a dropped
        frame, as FFmpeg's decoder would have reported it, not a frame no one can decode.
        """
        data = frame.tobytes() if frame is not None else b""
        if data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9":
            return EncodedFrame(data, self.stats.read)
        return None

    def _image(self, frame: np.ndarray | None, failures: int) -> np.ndarray | None:
        """The decoded frame if it is a valid image, else None (a dropped frame)."""
        if frame is None:
            return None
        try:
            return validate_frame(frame, self.stats.read + self.stats.dropped + failures)
        except FrameError:
            return None

    def _position(self) -> float:
        """The capture's frame position (files; 0 where the backend does not say)."""
        import cv2

        pos = self._cap.get(cv2.CAP_PROP_POS_FRAMES) if self.kind == "file" else 0.0
        return pos if np.isfinite(pos) else 0.0

    def _at_end(self) -> bool:
        """True when the capture reached the end its container announces (a file, or a finite URL)."""
        import cv2

        n = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if not 0 < n < 1e12:  # live FFmpeg streams report 0, -1 or garbage such as -1e15
            return self.kind == "file"
        return self._cap.get(cv2.CAP_PROP_POS_FRAMES) >= n

    def _reconnect(self) -> Gap | None:
        """Reopen a dropped live source with backoff; the `Gap` on success, None when lost or closed."""
        policy = self.reconnect
        self._cap.release()
        t_lost, wall_lost = self._last_good
        start = time.monotonic()
        attempt, reason = 0, "the stream ended or stalled"
        while policy.max_attempts is None or attempt < policy.max_attempts:
            elapsed = time.monotonic() - start
            if policy.max_total_s is not None and elapsed >= policy.max_total_s:
                break
            wait = policy.delay(attempt + 1)
            if policy.max_total_s is not None:
                wait = min(wait, policy.max_total_s - elapsed)
            if self._closed.wait(wait):
                return None
            attempt += 1
            failed = self._connect()
            if self._closed.is_set():
                self._cap.release()
                return None
            if failed is None:
                gap = Gap(frame=self.stats.read, lost_s=time.monotonic() - t_lost, attempts=attempt,
                          start_time=wall_lost)
                self.stats.gaps.append(gap)
                return gap
            reason = failed
        self.stats.lost = True
        what = ("was down at start and never came up" if self.down_at_start is not None and not self.stats.read
                else f"lost after frame {self.stats.read}")
        label = self.name if self.kind == "camera" else f"{self.kind} {self.name}"  # "camera 5", "url rtsp://..."
        self.stats.lost_reason = (f"{label} {what}: {attempt} reconnect attempt(s) in "
                                  f"{time.monotonic() - start:.1f} s failed (last: {reason})")
        return None

    def frames_with_gaps(self, *, lazy: bool = False) -> Iterator[tuple[np.ndarray | LazyFrame, Gap | None]]:
        """Yield `(frame, gap)` until the source ends; `gap` is the outage just before this frame, else None.

        With `lazy=True`, a file of an intra-only codec (MJPEG) yields `EncodedFrame`s after its first frame:
        the compressed images, decoded (by libjpeg) only where a consumer needs the pixels, e.g. the one frame
        of 16 a snippet samples (`Detector.push` accepts them). Other sources yield arrays as usual; `self.lazy`
        says which. libjpeg and FFmpeg decode the same JPEG to slightly different pixels (chroma upsampling),
        so every path of the runtime that reads files (run, extract, score, eval, bench) reads them lazily.

        A source read by PyAV yields, with `lazy=True`, `DecodedFrame`s (decoded by FFmpeg, converted to BGR only
        where used) and, decoding keyframes only, `SkippedFrame`s; without it, BGR arrays (each frame converted).
        """
        if self.decoder in PACKET_DECODERS:
            if not lazy and self.decoder == "nvdec":
                raise UsageError(f"{self.name}: decoder='nvdec' keeps frames on the GPU (device NV12); read it with "
                                 "frames_with_gaps(lazy=True) into a detector that preprocesses on CUDA (an overlay "
                                 "needs host frames: use decoder='pyav')")
            if not lazy and self.decode_mode == "keyframes":
                raise UsageError(f"{self.name}: decode='keyframes' yields frames without pixels in between; read "
                                 "it with frames_with_gaps(lazy=True) (the detector decodes what it samples)")
            if not lazy and self.decode_mode == "nonref":
                self.sample_only(None)  # every frame is converted: every frame is decoded
            self.lazy = lazy
        elif lazy and not self.lazy:
            self._enable_lazy()
        gap = None
        while not self._closed.is_set():
            frame, self._first = self._first, None
            if frame is None and (self.stats.read or self.down_at_start is None):
                frame = self._read_valid()
            if frame is None:
                if self._ended or not self.live:
                    self.stats.ended = True
                    return
                gap = self._reconnect()  # a drop, or a source down at start: the same bounded backoff
                if gap is None:
                    self.stats.ended = not self._closed.is_set()
                    return
                continue
            if isinstance(frame, LazyFrame) and not lazy:
                try:
                    frame = frame.decode()
                except FrameError:  # a frame FFmpeg decoded that does not convert: dropped, as OpenCV's
                    self.stats.dropped += 1
                    continue
            self.stats.read += 1
            yield frame, gap
            gap = None

    def _enable_lazy(self) -> None:
        """Switch the capture to compressed packets when this is an MJPEG file whose packets libjpeg decodes."""
        import cv2

        if self.kind != "file" or self._first is None:
            return
        fourcc = int(self._cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("latin-1")
        if fourcc not in INTRA_ONLY_FOURCC:
            return
        probe = cv2.VideoCapture(self.target)
        try:
            if not probe.set(cv2.CAP_PROP_FORMAT, -1):
                return
            ok, packet = probe.read()
            image = cv2.imdecode(packet.ravel(), cv2.IMREAD_COLOR) if ok and packet is not None else None
            if image is None or image.shape != self._first.shape:
                return  # e.g. AVI1 packets without Huffman tables: keep FFmpeg's decoder
        finally:
            probe.release()
        self.lazy = bool(self._cap.set(cv2.CAP_PROP_FORMAT, -1))

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield frames until the source ends (gaps are in `stats.gaps`; see `frames_with_gaps`)."""
        for frame, _gap in self.frames_with_gaps():
            yield frame

    def interrupt(self) -> None:
        """Make the reading thread stop at once: a reconnect wait wakes and iteration ends (any thread).

        The capture itself is released by `close()` in the thread that reads (OpenCV's captures are not safe
        to release under a read in another thread); a read or open attempt under way finishes first, bounded
        by `timeout_ms`.
        """
        self._closed.set()

    def close(self) -> None:
        """Release the capture; a source waiting to reconnect stops at once (see `interrupt`)."""
        self.interrupt()
        self._cap.release()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe_decoder(self) -> str:
        """Which decoder and mode read this source, and why, in words (`stp-edge run` prints it)."""
        if self.decoder == "nvdec" and getattr(self._cap, "describe", None):  # nvdec (PyNvVideoCodec 2.2.4, GPU 0, ...)
            return f"decoder {self._cap.describe} ({self.decoder_reason})"
        mode = "" if self.decoder == "opencv" else f", decode {self.decode_mode}"
        return f"decoder {self.decoder}{mode} ({self.decoder_reason})"

    def __repr__(self) -> str:
        return f"VideoSource({self.kind}={self.name!r}, fps={self.fps}, frames={self.frame_count})"


DECODERS = ("auto", "opencv", "pyav", "nvdec")
PACKET_DECODERS = ("pyav", "nvdec")  # PyAV demuxes packet by packet; FFmpeg or NVDEC (stp_edge.nvdec) decodes


def _choose_decoder(kind: str, target: str | int, decoder: str, decode: str,
                    cuda_device: int | None = None) -> tuple[str, str, str]:
    """(decoder, decode mode, why) for a source; UsageError/VideoError for a choice that cannot be honoured.

    "nvdec" (and "auto" where `cuda_device` says the consumer preprocesses on that CUDA device) goes through
    `stp_edge.nvdec.choose_nvdec`: refused naming what is missing, or, under "auto", CPU decoding as before.
    """
    if decoder not in DECODERS:
        raise UsageError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
    if decode not in DECODE_MODES:
        raise UsageError(f"decode must be one of {list(DECODE_MODES)}, got {decode!r}")
    if decoder == "nvdec" or (decoder == "auto" and cuda_device is not None and kind == "file"):
        from stp_edge.nvdec import choose_nvdec, probe_nvdec

        codec = probe_codec(str(target)) if kind != "camera" and av_available() and Path(str(target)).is_file() \
            else None
        if decoder == "nvdec":
            from stp_edge._deps import require

            require("av", "decoder='nvdec' (PyAV demuxes the packets NVDEC decodes)")
        use, why = choose_nvdec(decoder, kind=kind, codec=codec, probe=probe_nvdec(), device=cuda_device or 0,
                                cuda_preprocess=None if cuda_device is None else True)
        if use:
            return "nvdec", decode, why
        decoder_note = why
    else:
        decoder_note = None
    if decoder == "pyav":
        if kind == "camera":
            raise VideoError(f"camera {target}: camera indices are read through OpenCV; decoder='pyav' reads "
                             "files and URLs")
        from stp_edge._deps import require

        require("av", "decoder='pyav'")
        return "pyav", decode, "asked for"
    if decoder == "auto":
        if kind == "camera":
            why = "camera indices are read through OpenCV"
        elif kind == "url":
            why = "URLs are read through OpenCV under decoder='auto'; decoder='pyav' reads them packet by packet"
        elif not av_available():
            why = "PyAV is not installed: pip install 'stp-edge[h264]'"
        else:
            codec = probe_codec(str(target)) if Path(str(target)).is_file() else None
            if codec in AUTO_CODECS:
                note = f"; NVDEC not used ({decoder_note})" if decoder_note else ""
                return "pyav", decode, f"{codec} file: FFmpeg decodes, only the frames used are converted to BGR{note}"
            why = (f"{codec} file: decoder='auto' reads {', '.join(sorted(AUTO_CODECS))} through PyAV" if codec
                   else "PyAV cannot read it")
    else:
        why = "asked for"
    if decode != "full":
        raise UsageError(f"decode={decode!r} needs the PyAV decoder, but OpenCV reads this source ({why})")
    return "opencv", "full", why


def open_source(source: str | int | Path, **kwargs: Any) -> VideoSource:
    """Open a file, URL or camera index; see `VideoSource` (`decoder=`, `decode=`); VideoError with the reason."""
    return VideoSource(source, **kwargs)


# --- writing --------------------------------------------------------------------------------------------------
CODECS: dict[str, str] = {"avc1": ".mp4", "mp4v": ".mp4", "MJPG": ".avi"}
"""The codecs stp-edge writes (fourcc -> file extension); each gives back every frame when read with OpenCV.

"avc1" is H.264, written through PyAV's FFmpeg (libx264; `pip install 'stp-edge[h264]'`): what browsers and
players play. "mp4v" (MPEG-4 Part 2) and "MJPG" are written by OpenCV, whose wheels carry no H.264 encoder.
"""

CODEC_NAMES: dict[str, str] = {"avc1": "H.264", "mp4v": "MPEG-4 Part 2", "MJPG": "Motion JPEG"}
"""What each codec of `CODECS` is called in messages and summaries."""

# OpenCV 5.0's own MJPEG encoder (the .avi writer) corrupts its heap on frames narrower than 8 pixels (seen at
# 4x4, 5x5, 2x8, 7x9; every width >= 8 is clean).
_MIN_WIDTH = {"MJPG": 8}


def h264_available() -> bool:
    """True when PyAV is installed and its FFmpeg has the libx264 encoder (then `.mp4` files are H.264)."""
    global _H264
    if _H264 is None:
        try:
            import av

            av.codec.Codec("libx264", "w")
            _H264 = True
        except Exception:  # not installed, or an FFmpeg build without libx264 (an LGPL-only build)
            _H264 = False
    return _H264


_H264: bool | None = None


def default_codec(path: str | Path) -> str:
    """The codec `VideoWriter` picks for `path`'s extension: H.264 for .mp4 where it can, else mp4v; MJPG for .avi.

    Raises:
        VideoError: An extension stp-edge does not write, naming `path`.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".mp4":
        return "avc1" if h264_available() else "mp4v"
    if suffix == ".avi":
        return "MJPG"
    raise VideoError(f"{path}: unsupported extension {suffix or '(none)'!r}; expected one of ['.avi', '.mp4']")


def describe_codec(path: str | Path) -> str:
    """The codec `path` is written with, in words, with how to get H.264 where an .mp4 cannot have it."""
    codec = default_codec(path)
    if codec == "mp4v":
        return f"{CODEC_NAMES[codec]}; pip install 'stp-edge[h264]' for H.264, which browsers play"
    return CODEC_NAMES[codec]


class _CvEncoder:
    """OpenCV's writer (mp4v, MJPG)."""

    def __init__(self, tmp: Path, codec: str, fps: float, size: tuple[int, int]) -> None:
        import cv2

        self._writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, size)
        if not self._writer.isOpened():
            self._writer.release()
            raise OSError(f"OpenCV could not open a {codec} writer at {size[0]}x{size[1]}")

    def write(self, frame: np.ndarray) -> None:
        if self._writer.write(frame) is False:  # OpenCV >= 5 says False for a frame it skipped
            raise OSError("OpenCV's writer did not take it")

    def release(self) -> None:
        self._writer.release()


class _AvEncoder:
    """H.264 (libx264, yuv420p, +faststart so a browser starts playing before the whole file is loaded) via PyAV."""

    def __init__(self, tmp: Path, fps: float, size: tuple[int, int], *, fragmented: bool = False) -> None:
        import av

        self._av = av
        # Fragmented (1 s fragments, each flushed) when the partial file must play after a kill: a +faststart
        # file has its index written at the end, so a killed one holds nothing playable.
        options = ({"movflags": "+frag_keyframe+empty_moov+default_base_moof", "frag_duration": "1000000",
                    "flush_packets": "1"} if fragmented else {"movflags": "+faststart"})
        self._out = av.open(str(tmp), mode="w", format="mp4", options=options)
        try:
            self._stream = self._out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self._stream.width, self._stream.height = size
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        except BaseException:
            self._out.close()
            raise

    def write(self, frame: np.ndarray) -> None:
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(frame, format="bgr24")):
            self._out.mux(packet)

    def release(self) -> None:
        try:
            for packet in self._stream.encode(None):  # flush the frames the encoder holds (lookahead, B-frames)
                self._out.mux(packet)
        finally:
            self._out.close()


class VideoWriter:
    """Writes uint8 BGR frames of one size to a video file, under a temporary name until `close()`.

    The frames go to `.NAME.partial-XXXX.EXT` in the destination directory; `close()` finishes that file, reads
    it back (frame count and last frame) and renames it to `path`, so an interrupted or failed run never leaves
    a half-written file under the final name. `abort()` removes the temporary file. As a context manager it
    closes on a normal exit and aborts on an exception. Every failure is a `VideoError` naming `path` (never the
    temporary file).

    Limits: OpenCV buffers the encoded stream and reports no I/O error per frame (`cv2.VideoWriter.write`
    returns None before OpenCV 5, and True for a frame it could not flush), so a full disk or a refused write
    is detected at `close()`, by reading the finished file back, not at the frame that hit it.

    Args:
        path: Output file; its extension picks the codec (`default_codec`: .mp4 -> H.264 where PyAV with
            libx264 is installed, else mp4v; .avi -> MJPG). Missing directories are created.
        fps: Frame rate, finite and > 0.
        size: (width, height); both even and >= 2 (OpenCV reads odd sizes back cropped to even; H.264's 4:2:0
            needs even sizes), MJPG at least 8 wide.
        codec: A key of `CODECS`; default the one of the extension. It must match the extension.
        partial: The temporary name (beside `path`, same extension) instead of a hidden random one; H.264 is
            then written in 1 s fragments, so the partial file of a killed process plays up to its last second.

    Attributes:
        codec: The codec in use (a key of `CODECS`); `codec_name` says it in words ("H.264").
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], codec: str | None = None, *,
                 partial: str | Path | None = None) -> None:
        self.path = Path(path)
        self.codec = self._codec(codec)
        self.fps = self._fps(fps)
        self.size = self._size(size)
        self.frames_written = 0
        self._state = "open"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if partial is None:
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.partial-", suffix=self.path.suffix,
                                           dir=self.path.parent)
                os.close(fd)
            else:  # a visible name the caller chose (stp_edge.outputs.partial_path): found again after a kill
                tmp = str(partial)
        except OSError as exc:
            raise VideoError(f"{self.path}: cannot create the video file ({exc.strerror or exc})") from exc
        self._tmp = Path(tmp)
        try:
            self._encoder = (_AvEncoder(self._tmp, self.fps, self.size, fragmented=partial is not None)
                             if self.codec == "avc1"
                             else _CvEncoder(self._tmp, self.codec, self.fps, self.size))
        except Exception as exc:  # OSError, PyAV's FFmpegError (not always an OSError), ImportError
            self._tmp.unlink(missing_ok=True)
            raise VideoError(f"{self.path}: cannot write {self.codec_name} at {self.size[0]}x{self.size[1]} "
                             f"({self._reason(exc)})") from exc

    def _reason(self, exc: BaseException) -> str:
        """An encoder's error in words, the temporary file's name replaced by the destination's."""
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return text.replace(str(self._tmp), str(self.path))

    @property
    def codec_name(self) -> str:
        """The codec in words, for messages and summaries ("H.264", "MPEG-4 Part 2", "Motion JPEG")."""
        return CODEC_NAMES[self.codec]

    def _codec(self, codec: str | None) -> str:
        if codec is None:
            return default_codec(self.path)
        suffix = self.path.suffix.lower()
        if codec not in CODECS:
            raise VideoError(f"{self.path}: codec {codec!r} is not supported; expected one of {sorted(CODECS)}")
        if CODECS[codec] != suffix:
            raise VideoError(f"{self.path}: codec {codec!r} writes {CODECS[codec]} files, not {suffix or 'none'}")
        if codec == "avc1" and not h264_available():
            raise VideoError(f"{self.path}: H.264 needs PyAV with libx264 (pip install 'stp-edge[h264]')")
        return codec

    def _fps(self, fps: float) -> float:
        try:
            value = float(fps)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise VideoError(f"{self.path}: fps must be a finite number > 0, got {fps}")
        return value

    def _size(self, size: tuple[int, int]) -> tuple[int, int]:
        try:
            w, h = (operator.index(v) for v in size)
        except (TypeError, ValueError):
            raise VideoError(f"{self.path}: size must be (width, height) integers, got {size!r}") from None
        if w < 2 or h < 2 or w % 2 or h % 2:
            raise VideoError(f"{self.path}: size {w}x{h}: width and height must be even and >= 2 (OpenCV "
                             "reads odd sizes back cropped to even)")
        if w < _MIN_WIDTH.get(self.codec, 2):
            raise VideoError(f"{self.path}: size {w}x{h}: {self.codec} needs frames at least "
                             f"{_MIN_WIDTH[self.codec]} pixels wide (OpenCV's encoder breaks below that)")
        return w, h

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 (height, width, 3) BGR frame of the size the writer was opened with."""
        if self._state != "open":
            raise VideoError(f"{self.path}: write() after {'close' if self._state == 'closed' else 'abort'}()")
        expected = (self.size[1], self.size[0], 3)
        dtype, shape = getattr(frame, "dtype", type(frame).__name__), getattr(frame, "shape", None)
        if dtype != np.uint8 or shape != expected:
            raise VideoError(f"{self.path}: frame {self.frames_written}: expected uint8 {expected}, "
                             f"got {dtype} {shape}")
        try:
            self._encoder.write(frame)
        except Exception as exc:  # OSError (a full disk), PyAV's FFmpegError
            raise VideoError(f"{self.path}: frame {self.frames_written}: the {self.codec_name} writer did not "
                             f"take it ({self._reason(exc)})") from exc
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file, check it reads back whole, rename it to `path` (a no-op once closed or aborted).

        Raises:
            VideoError: No frame was written, or the finished file does not hold every frame (a full disk or a
                refused write); the temporary file is removed and `path` is left as it was.
        """
        if self._state != "open":
            return
        try:
            self._finish()
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise VideoError(f"{self.path}: cannot move the finished file into place ({exc})") from exc
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def _finish(self) -> None:
        """Close the encoder and check the temporary file holds every frame (VideoError naming `path`)."""
        self._state = "closed"
        try:
            self._encoder.release()
        except Exception as exc:  # PyAV flushes on release: a full disk shows here
            raise VideoError(f"{self.path}: {self.frames_written} frames written but the {self.codec_name} writer "
                             f"could not finish the file ({self._reason(exc)}: a full disk, or a write the file "
                             "system refused)") from exc
        if self.frames_written == 0:
            raise VideoError(f"{self.path}: no frame was written; a video needs at least one")
        problem = self._read_back()
        if problem:
            raise VideoError(f"{self.path}: {self.frames_written} frames written but the finished file "
                             f"{problem} (a full disk, or a write the file system refused)")

    def _read_back(self) -> str | None:
        """What is wrong with the finished temporary file, or None when it holds every frame."""
        import cv2

        with _quiet_opencv():
            cap = cv2.VideoCapture(str(self._tmp))
        try:
            if not cap.isOpened():
                return "cannot be opened"
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if n != self.frames_written:
                return f"holds {n}"
            cap.set(cv2.CAP_PROP_POS_FRAMES, n - 1)
            ok, frame = cap.read()
            if not ok or frame.shape != (self.size[1], self.size[0], 3):
                return "cannot decode its last frame"
            return None
        finally:
            cap.release()

    def abort(self) -> None:
        """Stop and remove the temporary file; `path` is left as it was (a no-op once closed or aborted)."""
        if self._state == "open":
            self._state = "aborted"
            with contextlib.suppress(Exception):  # the file is being dropped: how the encoder ends is moot
                self._encoder.release()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_video_output(path: str | Path, codec: str | None = None) -> str:
    """Write two frames as `path` would be written, read them back and remove the file; returns the codec's name.

    Run before a long job, so that an extension, codec or directory that cannot take the video fails now (a
    `VideoError` naming `path`, never the temporary test file), not after hours of analysis; nothing is left
    behind and `path` itself is not touched.
    """
    writer = VideoWriter(path, 25.0, (64, 64), codec)
    try:
        frame = np.full((64, 64, 3), 127, np.uint8)
        frame[16:48, 16:48] = (0, 128, 255)
        writer.write(frame)
        writer.write(frame)
        writer._finish()
        return writer.codec_name
    finally:
        writer._tmp.unlink(missing_ok=True)
