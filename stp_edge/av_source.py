"""Packet-level decoding through PyAV (FFmpeg): decode only what the model reads.

`AvCapture` is the PyAV reader behind a `stp_edge.video.VideoSource` opened with `decoder="pyav"` (or "auto" on
an inter-coded file or URL). It demuxes packets and decodes them with FFmpeg (frame threads, `thread_type =
"AUTO"`), and yields lazy frames of `stp_edge.frames`, never BGR arrays: a frame is converted to BGR only where
a consumer asks for its pixels (the detector does so for the frames its snippets sample).

Decode modes (`DECODE_MODES`):
- "full": every frame is decoded (later frames depend on it) and yielded as a `DecodedFrame`, not converted.
- "keyframes": FFmpeg decodes keyframes only (`codec_context.skip_frame = "NONKEY"`); every other frame the
  container holds is yielded, at its place, as a `SkippedFrame`, which has no pixels. Usable only where every
  sampled frame is a keyframe (keyframe-aligned sampling).
Non-reference frames are not skipped ("NONREF"): FFmpeg's skip applies to every frame of the codec context, a
sampled frame included, so it is exact only for streams where no sampled frame is a non-reference frame, which
the source cannot know before it decodes.

Frame positions are exact in both modes, counted from the packets' presentation timestamps (no frame-rate
arithmetic): a frame's place is the number of packets with an earlier timestamp. Frames the container holds that
FFmpeg does not output (a stream that starts mid-GOP, a corrupt packet, open-GOP leading pictures at the start)
are counted in `dropped`; in keyframes mode a skipped frame is yielded only where full decoding would have
output one, so both modes yield the same number of frames. In keyframes mode a decoded keyframe is held until
the demuxer has read the next keyframe's packet (so every packet before it is known): a GOP of latency.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from pathlib import Path
from typing import Any

from stp_edge._deps import require
from stp_edge.frames import DecodedFrame, LazyFrame, SkippedFrame

DECODE_MODES = ("full", "keyframes")
# Keyframes mode holds a decoded keyframe until the next keyframe's packet is read; a stream whose keyframes are
# further apart than this many packets has its keyframe released anyway (its frames still counted in order).
MAX_WAIT_PACKETS = 1024
# Inter-coded codecs that `decoder="auto"` reads through PyAV: where decoding less pays. Others (MPEG-4 Part 2,
# which OpenCV writes, and intra-only MJPEG, already decoded lazily by libjpeg) stay with OpenCV under "auto", so
# their pixels are what earlier runs saw.
AUTO_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1"})


def av_available() -> bool:
    """True when PyAV imports (then files and URLs can be read packet by packet)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def probe_codec(target: str) -> str | None:
    """The codec name of a file's first video stream (FFmpeg's name: "h264", "hevc", "mjpeg"), None if unreadable."""
    import av

    try:
        with av.open(target) as container:
            return container.streams.video[0].codec_context.name if container.streams.video else None
    except Exception:  # PyAV's FFmpegError, OSError: OpenCV may still read it
        return None


def keyframe_interval(target: str, max_packets: int = 512) -> int | None:
    """The keyframe interval of a file's first video stream when it is regular, else None (read from packets only).

    The first `max_packets` packets are demuxed (nothing is decoded); keyframe positions are counted in
    presentation order from the first keyframe (a stream that starts mid-GOP delivers its first frame there). The
    interval is returned when at least two keyframes were seen and every gap between them is the same.
    """
    import av

    try:
        with av.open(target) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            packets = []
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    packets.append((packet.pts, bool(packet.is_keyframe)))
                if len(packets) >= max_packets:
                    break
    except Exception:  # PyAV's FFmpegError, OSError: unknown
        return None
    packets.sort()
    keys = [rank for rank, (_pts, key) in enumerate(packets) if key]
    gaps = {b - a for a, b in itertools.pairwise(keys)}
    return gaps.pop() if len(gaps) == 1 else None


class AvCapture:
    """One opened PyAV container: `read()` yields lazy frames in presentation order, `None` at the end.

    Args:
        target: File path or URL.
        mode: One of `DECODE_MODES`.
        timeout_ms: Open and read timeout (URLs), so a stalled stream ends a read instead of hanging it.

    Attributes:
        opened: False when the container or its video stream could not be opened (`error` says why).
        dropped: Frames the container held that FFmpeg did not output, not yet taken by `take_dropped()`.
        skipped: Frames yielded as `SkippedFrame`s (keyframes mode), in total.
        decoded: Frames FFmpeg decoded, in total.
        ended: True when the container was read to its end (EOF), as opposed to a read error or timeout.
    """

    def __init__(self, target: str | Path, mode: str = "full", *, timeout_ms: int = 10_000) -> None:
        av = require("av", "decoding video with FFmpeg through PyAV")
        self._av = av
        self.mode = mode
        self.opened = False
        self.error: str | None = None
        self.dropped = self.skipped = self.decoded = 0
        self.ended = False
        self._container = None
        try:
            self._container = av.open(str(target), timeout=(timeout_ms / 1000, timeout_ms / 1000))
            if not self._container.streams.video:
                self.error = "no video stream"
                self.release()
                return
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            if mode == "keyframes":
                self._stream.codec_context.skip_frame = "NONKEY"
            self.codec = self._stream.codec_context.name
        except Exception as exc:  # PyAV's FFmpegError (OSError subclasses and others), ValueError
            self.error = str(exc) or type(exc).__name__
            self.release()
            return
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.frame_count = int(self._stream.frames) or self._estimated_count()
        self._packets = self._container.demux(self._stream)
        self._pending: list[int] = []  # presentation timestamps of packets whose frames are not yet placed
        self._ready: deque[tuple[int, Any]] = deque()  # decoded (pts, av.VideoFrame), in presentation order
        self._out: deque[LazyFrame] = deque()
        self._last_key_pts: int | None = None  # the latest keyframe packet demuxed
        self._placed = False  # a frame has been yielded (frames before the first are dropped, not skipped)
        self._eof = False
        self._seq = 0  # for packets without timestamps
        self.opened = True

    def _estimated_count(self) -> int | None:
        """Frames from the duration the container announces x the frame rate (as OpenCV estimates), or None."""
        if not self.fps:
            return None
        if self._stream.duration and self._stream.time_base:
            seconds = float(self._stream.duration * self._stream.time_base)
        elif self._container.duration:
            seconds = self._container.duration / 1_000_000  # AV_TIME_BASE
        else:
            return None
        n = round(seconds * self.fps)
        return n if n > 0 else None

    def read(self) -> LazyFrame | None:
        """The next frame (`DecodedFrame` or `SkippedFrame`, its `index` set by the caller), None at the end."""
        while not self._out:
            if self._eof:
                return None
            self._step()
        return self._out.popleft()

    def take_dropped(self) -> int:
        """Frames dropped since the last call."""
        n, self.dropped = self.dropped, 0
        return n

    def _step(self) -> None:
        """Demux and decode one packet (or flush at the end), and place what became placeable."""
        try:
            packet = next(self._packets)
        except StopIteration:
            packet = None
            self.ended = True
        except Exception as exc:  # a read error or timeout mid-stream: the end of what can be read
            packet, self.error = None, str(exc) or type(exc).__name__
        if packet is None or (packet.size == 0 and packet.pts is None):  # the end (PyAV's flush packet)
            self.ended = self.ended or packet is not None
            self._decode(None)
            self._eof = True
            self._place(final=True)
            return
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None:
            pts, self._seq = self._seq, self._seq + 1
        heapq.heappush(self._pending, pts)
        if packet.is_keyframe:
            self._last_key_pts = pts if self._last_key_pts is None else max(self._last_key_pts, pts)
        self._decode(packet)
        self._place(final=False)

    def _decode(self, packet: Any) -> None:
        try:
            frames = self._stream.codec_context.decode(packet)
        except self._av.error.EOFError:
            return
        except Exception:  # a corrupt packet: its frame is not output, and is counted dropped when placed
            return
        for frame in frames:
            self.decoded += 1
            pts = frame.pts if frame.pts is not None else (self._ready[-1][0] + 1 if self._ready else 0)
            self._ready.append((pts, frame))

    def _place(self, *, final: bool) -> None:
        """Turn decoded frames into output frames once every packet before them is known."""
        while self._ready:
            pts, frame = self._ready[0]
            waiting = self._last_key_pts is None or self._last_key_pts <= pts
            if self.mode == "keyframes" and not final and waiting and len(self._pending) < MAX_WAIT_PACKETS:
                return  # packets before this keyframe may still come (open GOPs): wait for the next keyframe
            self._ready.popleft()
            before = 0
            while self._pending and self._pending[0] < pts:
                heapq.heappop(self._pending)
                before += 1
            if self._pending and self._pending[0] == pts:
                heapq.heappop(self._pending)
            if self.mode == "keyframes" and self._placed:
                self._out.extend(SkippedFrame(-1) for _ in range(before))
                self.skipped += before
            else:  # full decoding: a frame that was not output is a drop; so is anything before the first frame
                self.dropped += before
            self._out.append(DecodedFrame(frame, -1, bool(frame.key_frame)))
            self._placed = True
        if final and self._pending:  # frames after the last decoded one
            n = len(self._pending)
            self._pending = []
            if self.mode == "keyframes" and self._placed and self.ended:
                self._out.extend(SkippedFrame(-1) for _ in range(n))
                self.skipped += n
            else:
                self.dropped += n

    def release(self) -> None:
        """Close the container (idempotent)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a broken container: nothing to save
                pass
            self._container = None
