"""Event clips: the event's frames with a pre-roll and post-roll, as a small MP4, without re-encoding where possible.

As NVR software does, a clip is a remux: the clip input's encoded packets are copied into an MP4 container (the
output stream is made from the input stream's codec parameters, timestamps rebased to start at 0), so a clip
costs no decoding, no encoding and no quality. Two sources:

- `clip_from_file` (file sources, media time): seek to the keyframe at or before `start_s - pre_s` and copy the
  packets up to `end_s + post_s`.
- `ClipRecorder` (live sources, wall clock): a thread reads the clip input (the camera's `clips` input, else its
  detect input) and keeps a ring of encoded packets covering the last seconds; when an event ends and its
  post-roll has arrived, the packets from the keyframe at or before `start - pre_s` to `end + post_s` are written.

A clip starts at a keyframe, so it may begin up to one GOP before `start - pre_s`. Codecs an MP4 holds and
browsers play (`REMUX_CODECS`: H.264, H.265, MPEG-4 Part 2, AV1, VP9) are remuxed; any other (MJPEG, as in the
AVIs OpenCV writes and cheap cameras serve) is transcoded to H.264 with libx264 (preset veryfast, crf 23): an
MJPEG-in-MP4 is neither small nor playable in a browser.

Every clip is written to `NAME.partial.mp4` (`stp_edge.outputs.partial_path`) and renamed to its final name only
once complete; a failure removes the partial file. `on_ready(event_id, path)` is called after the rename, so
an event update that says "clip ready" always links a whole file.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from stp_edge._deps import require
from stp_edge.outputs import partial_path, signals_deferred
from stp_edge.video import Backoff, VideoError, display_source

log = logging.getLogger(__name__)

# Codecs copied into MP4 as they are; anything else is transcoded to H.264.
REMUX_CODECS = frozenset({"h264", "hevc", "mpeg4", "av1", "vp9"})
TRANSCODE_OPTIONS = {"preset": "veryfast", "crf": "23"}
# A packet whose arrival is this much later than its timestamp maps to (clock drift, a stalled then resumed
# stream) moves the packet clock of its connection to the arrival time.
RESYNC_S = 2.0


class ClipError(VideoError):
    """A clip could not be written: the message names the source, the time range and the reason."""


# --- writing -------------------------------------------------------------------------------------------------
@dataclass
class _Packet:
    """One encoded packet with its original timestamps (the packet's own are rewritten on every mux)."""

    packet: Any
    pts: int | None
    dts: int | None
    tb: Fraction  # the time base of pts and dts (muxing rescales the packet's own in place)
    wall: float = 0.0  # live sources: wall-clock time of the packet (epoch seconds)

    @property
    def ts(self) -> int:
        return self.dts if self.dts is not None else (self.pts if self.pts is not None else 0)


def _open_mp4(path: Path) -> Any:
    av = require("av", "writing event clips")
    path.parent.mkdir(parents=True, exist_ok=True)
    # +faststart: the index goes first, so a browser plays the clip before it has loaded all of it.
    return av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})


def _write_remux(partial: Path, template: Any, runs: Sequence[tuple[Sequence[_Packet], float]]) -> int:
    """Copy packets into an MP4: each run (packets of one connection, seconds to shift it by) rebased to 0 + shift.

    Returns the number of packets written.
    """
    out = _open_mp4(partial)
    try:
        stream = out.add_stream_from_template(template)
        written = 0
        for packets, shift_s in runs:
            tb = packets[0].tb
            base = min(p.ts for p in packets)
            shift = round(shift_s / tb)
            for p in packets:
                pkt = p.packet
                pkt.pts = None if p.pts is None else p.pts - base + shift
                pkt.dts = (p.dts if p.dts is not None else p.pts if p.pts is not None else base) - base + shift
                pkt.time_base = p.tb
                pkt.stream = stream
                out.mux(pkt)
                written += 1
    finally:
        out.close()
    return written


def _write_transcode(partial: Path, template: Any, runs: Sequence[tuple[Sequence[_Packet], float]],
                     hi_pts: int | None) -> int:
    """Decode packets (a codec MP4 cannot carry) and encode them as H.264; returns the frames written.

    Each run (the packets of one connection) gets its own decoder and is placed at its shift in seconds.
    """
    av = require("av", "writing event clips")
    rate = Fraction(template.average_rate or template.guessed_rate or 25).limit_denominator(1001)
    out = _open_mp4(partial)
    written, last = 0, -1
    try:
        stream = out.add_stream("libx264", rate=rate)
        stream.width = template.codec_context.width // 2 * 2  # 4:2:0 needs even sizes
        stream.height = template.codec_context.height // 2 * 2
        stream.pix_fmt = "yuv420p"
        stream.options = dict(TRANSCODE_OPTIONS)
        tb = stream.codec_context.time_base or 1 / rate
        for packets, shift_s in runs:
            dec = av.CodecContext.create(template.codec_context.name, "r")
            if template.codec_context.extradata:
                dec.extradata = template.codec_context.extradata
            base, in_tb, n = min(p.ts for p in packets), packets[0].tb, 0
            for p in [*packets, None]:
                if p is not None:
                    p.packet.pts, p.packet.dts, p.packet.time_base = p.pts, p.dts, p.tb
                for frame in dec.decode(None if p is None else p.packet):
                    if frame.pts is not None and hi_pts is not None and frame.pts > hi_pts:
                        continue
                    t = shift_s + (float((frame.pts - base) * in_tb) if frame.pts is not None else n / rate)
                    n += 1
                    pts = round(t / tb)
                    if pts <= last:  # a clock that went back at a reconnect: never out of order
                        continue
                    image = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
                    image.pts, image.time_base, last = pts, tb, pts
                    for pkt in stream.encode(image):
                        out.mux(pkt)
                    written += 1
        for pkt in stream.encode(None):
            out.mux(pkt)
    finally:
        out.close()
    return written


def _write_clip(dest: Path, template: Any, runs: Sequence[tuple[Sequence[_Packet], float]],
                hi_pts: int | None = None) -> Path:
    """Remux (or transcode) `runs` to `dest` through its partial file; the partial file is removed on failure."""
    partial = partial_path(dest)
    try:
        if template.codec_context.name in REMUX_CODECS:
            n = _write_remux(partial, template, runs)
        else:
            n = _write_transcode(partial, template, runs, hi_pts)
        if n == 0:
            raise ClipError("no frame could be written")
        os.chmod(partial, 0o644)
        with signals_deferred():
            os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return dest


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__


# --- file sources --------------------------------------------------------------------------------------------
def clip_from_file(src: str | os.PathLike, start_s: float, end_s: float, out_path: str | os.PathLike, *,
                   pre_s: float = 5.0, post_s: float = 5.0) -> Path:
    """Write the clip of media time [start_s - pre_s, end_s + post_s] of a video file to `out_path` (MP4).

    Times are seconds from the first frame of the file's video stream (a record's `media_time`). The clip starts
    at the keyframe at or before `start_s - pre_s` (the pre-roll is cut at the start of the file) and ends with
    the last packet decoded at or before `end_s + post_s` (cut at the end of the file).

    Raises:
        ClipError: a bad range (negative, end before start, start past the end of the file), an unreadable source
            or an unwritable destination; the message names the file and the range, and no partial file is left.
    """
    dest = Path(out_path)
    what = f"clip {start_s}-{end_s} s (pre {pre_s} s, post {post_s} s) of {src} to {dest}"
    values = (start_s, end_s, pre_s, post_s)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or min(values) < 0:
        raise ClipError(f"{what}: times must be finite and >= 0")
    if end_s < start_s:
        raise ClipError(f"{what}: end {end_s} s is before start {start_s} s")
    av = require("av", "writing event clips")
    try:
        container = av.open(str(src))
    except Exception as exc:  # PyAV's FFmpegError (OSError subclasses and others)
        raise ClipError(f"{what}: cannot open the source ({_reason(exc)})") from exc
    try:
        if not container.streams.video:
            raise ClipError(f"{what}: the source has no video stream")
        stream = container.streams.video[0]
        packets, hi_pts = _file_packets(container, stream, start_s, end_s, pre_s, post_s, what)
        return _write_clip(dest, stream, [(packets, 0.0)], hi_pts)
    except ClipError:
        raise
    except Exception as exc:  # PyAV's errors while demuxing or muxing, OSError writing
        raise ClipError(f"{what}: {_reason(exc)}") from exc
    finally:
        container.close()


def _file_packets(container: Any, stream: Any, start_s: float, end_s: float, pre_s: float, post_s: float,
                  what: str) -> tuple[list[_Packet], int]:
    """Packets from the keyframe at or before start_s - pre_s to the last one decoded at or before end_s + post_s."""
    tb = stream.time_base
    first = stream.start_time or 0
    duration = _duration_s(container, stream)
    if duration is not None and start_s >= duration:
        raise ClipError(f"{what}: start {start_s} s is past the end of the source ({duration:.2f} s)")
    lo = first + int(max(0.0, start_s - pre_s) / tb)
    hi = first + math.ceil((end_s + post_s) / tb)
    container.seek(lo, stream=stream, backward=True, any_frame=False)
    packets: list[_Packet] = []
    for pkt in container.demux(stream):
        if pkt.size == 0:  # the flush packet at the end
            continue
        p = _Packet(pkt, pkt.pts, pkt.dts, pkt.time_base or tb)
        if p.ts > hi:
            break
        if pkt.is_keyframe and (p.pts if p.pts is not None else p.ts) <= lo:
            packets = [p]  # a later keyframe still at or before the start: the clip starts there
        elif packets or pkt.is_keyframe:
            packets.append(p)  # (a first keyframe after lo: the seek overshot, the clip starts where it can)
    if not packets:
        raise ClipError(f"{what}: no video packets in the range (the source holds "
                        f"{'an unknown length' if duration is None else f'{duration:.2f} s'})")
    return packets, hi


def _duration_s(container: Any, stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


# --- live sources --------------------------------------------------------------------------------------------
@dataclass
class ClipStats:
    """What a `ClipRecorder` did.

    Attributes:
        written: Clips written (on_ready called).
        failed: Clips that could not be written (on_failed called).
        short: Clips written without all of their range (pre-roll older than the buffer, a forced end, an outage).
        connects: Successful connections to the clip input (1 + reconnects).
        outages: Times the input dropped (error, timeout, end of stream).
        lost_packets: Packets received but not recordable (before a connection's first keyframe, or after a
            change of codec parameters within one clip).
        trimmed_gops: GOPs a pending clip still wanted but the memory bounds evicted.
    """

    written: int = 0
    failed: int = 0
    short: int = 0
    connects: int = 0
    outages: int = 0
    lost_packets: int = 0
    trimmed_gops: int = 0

    def describe(self) -> str:
        return (f"{self.written} clips written, {self.failed} failed, {self.short} short; {self.connects} connects, "
                f"{self.outages} outages, {self.lost_packets} packets lost, {self.trimmed_gops} GOPs trimmed")


@dataclass
class _Connection:
    """One opened connection to the clip input; kept open while the ring holds its packets (their template)."""

    container: Any
    stream: Any
    params: tuple
    offset: float | None = None  # wall - media seconds: the packet clock of this connection
    gops: int = 0
    current: bool = True


@dataclass
class _Gop:
    conn: _Connection
    packets: list[_Packet] = field(default_factory=list)
    nbytes: int = 0

    @property
    def wall(self) -> float:
        return self.packets[0].wall


@dataclass
class _Request:
    event_id: str
    start: float
    end: float | None
    path: Path
    forced: bool = False


class ClipRecorder:
    """Records event clips from a live input (URL) by remuxing a ring buffer of its encoded packets.

    A thread reads the input with PyAV (no decoding) and keeps whole GOPs covering the last `pre_s + latency_s`
    seconds, more while a requested clip still needs them. Each packet gets a wall-clock time: its timestamp on
    the connection's clock, anchored to the earliest arrival seen (packets can arrive late, never early), so
    the times are as smooth as the stream's and follow the arrival clock (an event's times come from the
    detector, which sees a frame after its packet arrived: `pre_s` covers that delay). `request()` registers an
    event (start time as the detector saw it, epoch seconds), `finish()` its end; once packets up to
    `end + post_s` have arrived (or `stall_s` after that on a stalled input), the clip is written on the reading
    thread (a remux takes milliseconds; the input waits in the socket meanwhile) and `on_ready(event_id, path)`
    called. The input is reopened after a drop with `reconnect`'s delays.

    Memory: the ring holds at most `pre_s + latency_s + max_event_s + post_s` seconds and `max_bytes` bytes;
    an event still open `latency_s` after `start + max_event_s` gets a clip cut at `start + max_event_s`.

    Args:
        source: The clip input (a camera's `clips` input, else its detect input): a URL. (A file is read as
            fast as it demuxes, so its wall-clock times mean nothing: file sources use `clip_from_file`.)
        pre_s, post_s: Pre-roll and post-roll seconds.
        on_ready: Called (on the recorder's thread) with the event id and final path once a clip is complete.
        on_failed: Called with the event id and the reason when a clip cannot be written.
        latency_s: How long after its start time a request may come (the detector's delay in opening an event).
        max_event_s: Longest clip range kept for one event.
        max_bytes: Most bytes of packets kept.
        reconnect: Delays between reconnection attempts; default retry forever, 0.5 s doubling up to 10 s.
        timeout_s: Open and read timeout of the input (a stalled input ends a read after this).
        stall_s: Seconds past `end + post_s` after which a clip is written with the packets that did arrive.
    """

    def __init__(self, source: str, *, pre_s: float = 5.0, post_s: float = 5.0,
                 on_ready: Callable[[str, Path], None] | None = None,
                 on_failed: Callable[[str, str], None] | None = None, latency_s: float = 10.0,
                 max_event_s: float = 300.0, max_bytes: int = 256 << 20, reconnect: Backoff | None = None,
                 timeout_s: float = 5.0, stall_s: float = 10.0) -> None:
        self._av = require("av", "recording event clips")
        self.source = str(source)
        self.pre_s, self.post_s, self.latency_s = float(pre_s), float(post_s), float(latency_s)
        self.max_event_s, self.max_bytes = float(max_event_s), int(max_bytes)
        self.on_ready, self.on_failed = on_ready, on_failed
        self.reconnect = reconnect or Backoff(initial_s=0.5, max_delay_s=10.0, max_total_s=None)
        self.timeout_s, self.stall_s = float(timeout_s), float(stall_s)
        self.stats = ClipStats()
        self.error: str | None = None  # the latest input error
        self._ring: deque[_Gop] = deque()
        self._nbytes = 0
        self._now = -math.inf  # wall time of the newest packet
        self._requests: dict[str, _Request] = {}
        self._closed = False  # the reading thread has ended: a new request cannot be recorded
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"clips {display_source(self.source)}", daemon=True)

    # -- the service's side ---------------------------------------------------------------------------------
    def start(self) -> ClipRecorder:
        """Start reading the input (returns self)."""
        self._thread.start()
        return self

    def request(self, event_id: str, start_time: float, end_time: float | None = None, *,
                out_path: str | os.PathLike) -> Path:
        """Record a clip of event `event_id` from `start_time - pre_s`; returns the path it will have when ready."""
        req = _Request(str(event_id), float(start_time), None if end_time is None else float(end_time),
                       Path(out_path))
        with self._lock:
            self._requests[req.event_id] = req
            closed = self._closed
        if closed:  # the recorder was closed, or gave up on its input
            self._fail(req, f"clip of event {req.event_id}: the recorder of {display_source(self.source)} has "
                            f"stopped ({self.error or 'closed'})")
        return req.path

    def finish(self, event_id: str, end_time: float) -> None:
        """The event ended at `end_time`: its clip is written once `end_time + post_s` has been recorded."""
        with self._lock:
            req = self._requests.get(str(event_id))
            if req is not None:
                req.end = float(end_time)

    @property
    def buffered_s(self) -> float:
        """Seconds of packets in the ring (from its first keyframe to its newest packet)."""
        with self._lock:
            return self._now - self._ring[0].wall if self._ring else 0.0

    def close(self, timeout_s: float = 10.0) -> ClipStats:
        """Stop reading; clips still pending are written with what was recorded (an open event ends now)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s + self.timeout_s)
        return self.stats

    def __enter__(self) -> ClipRecorder:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the reading thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        attempt, outage_since = 0, None
        try:
            while not self._stop.is_set():
                conn = self._connect()
                if conn is not None:
                    attempt, outage_since = 0, None
                    self._read(conn)
                    if self._stop.is_set():
                        break
                    self.stats.outages += 1
                attempt += 1
                outage_since = outage_since or time.monotonic()
                policy = self.reconnect
                if (policy.max_attempts is not None and attempt > policy.max_attempts) or (
                        policy.max_total_s is not None and time.monotonic() - outage_since > policy.max_total_s):
                    log.warning("clips: giving up on %s (%s)", display_source(self.source), self.error)
                    break
                deadline = time.monotonic() + policy.delay(attempt)
                while not self._stop.is_set() and time.monotonic() < deadline:
                    self._write_due()
                    self._stop.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        finally:
            with self._lock:
                self._closed = True
            self._write_due(final=True)
            for gop in self._ring:
                gop.conn.current = False
            self._release_all()

    def _connect(self) -> _Connection | None:
        try:
            container = self._av.open(self.source, timeout=(self.timeout_s, self.timeout_s))
        except Exception as exc:  # PyAV's FFmpegError (OSError subclasses and others)
            self.error = self._masked(_reason(exc))
            return None
        if not container.streams.video:
            self.error = "no video stream"
            container.close()
            return None
        stream = container.streams.video[0]
        cc = stream.codec_context
        params = (cc.name, cc.width, cc.height, bytes(cc.extradata or b""))
        self.stats.connects += 1
        return _Connection(container, stream, params)

    def _read(self, conn: _Connection) -> None:
        try:
            for pkt in conn.container.demux(conn.stream):
                if self._stop.is_set():
                    return
                if pkt.size:
                    self._add(conn, pkt)
                self._write_due()
            self.error = "end of stream"
        except Exception as exc:  # a read error or timeout: an outage
            self.error = self._masked(_reason(exc))
        finally:
            conn.current = False
            if conn.gops == 0:
                conn.container.close()

    def _masked(self, text: str) -> str:
        """An error text with the source's credentials masked (FFmpeg's messages may quote the URL)."""
        return text.replace(self.source, display_source(self.source))

    def _wall(self, conn: _Connection, pkt: Any, arrival: float) -> float:
        ts = pkt.dts if pkt.dts is not None else pkt.pts
        if ts is None or pkt.time_base is None:
            return arrival
        t = float(ts * pkt.time_base)
        if conn.offset is None or arrival - t < conn.offset or arrival - (t + conn.offset) > RESYNC_S:
            conn.offset = arrival - t
        return t + conn.offset

    def _add(self, conn: _Connection, pkt: Any) -> None:
        p = _Packet(pkt, pkt.pts, pkt.dts, pkt.time_base or conn.stream.time_base, self._wall(conn, pkt, time.time()))
        with self._lock:
            if pkt.is_keyframe:
                self._ring.append(_Gop(conn))
                conn.gops += 1
            elif not self._ring or self._ring[-1].conn is not conn:
                self.stats.lost_packets += 1  # before this connection's first keyframe: not decodable
                return
            gop = self._ring[-1]
            gop.packets.append(p)
            gop.nbytes += pkt.size
            self._nbytes += pkt.size
            self._now = max(self._now, p.wall)
            self._trim()

    def _trim(self) -> None:
        """Drop whole GOPs from the front while the next one still starts before what anyone may need."""
        needed = self._now - (self.pre_s + self.latency_s)
        for req in self._requests.values():
            needed = min(needed, req.start - self.pre_s)
        needed = max(needed, self._now - (self.pre_s + self.latency_s + self.max_event_s + self.post_s))
        while len(self._ring) >= 2 and (self._ring[1].wall <= needed or self._nbytes > self.max_bytes):
            if self._ring[1].wall > needed:
                self.stats.trimmed_gops += 1
            gop = self._ring.popleft()
            self._nbytes -= gop.nbytes
            gop.conn.gops -= 1
            if gop.conn.gops == 0 and not gop.conn.current:
                gop.conn.container.close()

    def _release_all(self) -> None:
        with self._lock:
            conns = {id(g.conn): g.conn for g in self._ring}
            self._ring.clear()
            self._nbytes = 0
        for conn in conns.values():
            conn.container.close()

    def _write_due(self, *, final: bool = False) -> None:
        """Write the clips whose post-roll has arrived (or stalled past `stall_s`); at the end, every pending one."""
        due = []
        with self._lock:
            for req in list(self._requests.values()):
                # an event still open past max_event_s (+ latency_s for its end to come): cut there
                if req.end is None and (final or self._now - req.start > self.max_event_s + self.latency_s):
                    req.end = min(max(self._now, req.start), req.start + self.max_event_s)
                    req.forced = True
                if req.end is None:
                    continue
                if final or self._now >= req.end + self.post_s or time.time() >= req.end + self.post_s + self.stall_s:
                    due.append(self._requests.pop(req.event_id))
        for req in due:
            self._write(req)

    def _select(self, req: _Request) -> tuple[Any, list[tuple[list[_Packet], float]], bool]:
        """The template stream and runs (packets of one connection, shift seconds) of a clip; short or not."""
        lo, hi = req.start - self.pre_s, req.end + self.post_s
        with self._lock:
            gops = list(self._ring)
        first = max((i for i, g in enumerate(gops) if g.wall <= lo), default=0)
        chosen = [g for g in gops[first:] if g.wall <= hi]
        if not chosen:
            return None, [], True
        conn0 = chosen[0].conn
        runs: list[tuple[list[_Packet], float]] = []
        t0, end_s, conn_prev = chosen[0].wall, 0.0, None
        for gop in chosen:
            packets = [p for p in gop.packets if p.wall <= hi]
            if gop.conn.params != conn0.params:
                self.stats.lost_packets += len(packets)
                continue
            if gop.conn is conn_prev:
                runs[-1][0].extend(packets)
            else:  # a new connection: continue after the last one, keeping the wall-clock gap
                runs.append((packets, max(gop.wall - t0, end_s)))
            conn_prev = gop.conn
            run, shift = runs[-1]
            end_s = shift + float((run[-1].ts - min(p.ts for p in run)) * run[0].tb) + 0.04  # + a frame, about
        short = req.forced or chosen[0].wall > lo + 0.5 or self._now < hi
        return conn0.stream, runs, short

    def _write(self, req: _Request) -> None:
        what = (f"clip of event {req.event_id} ({req.start:.3f}-{req.end:.3f} s, pre {self.pre_s} s, "
                f"post {self.post_s} s) from {display_source(self.source)} to {req.path}")
        template, runs, short = self._select(req)
        if not runs:
            self._fail(req, f"{what}: no video was recorded in that range ({self.error or 'no packets yet'})")
            return
        try:
            _write_clip(req.path, template, runs)
        except Exception as exc:  # PyAV's errors, OSError, ClipError
            self._fail(req, f"{what}: {_reason(exc)}")
            return
        self.stats.written += 1
        self.stats.short += short
        if self.on_ready is not None:
            try:
                self.on_ready(req.event_id, req.path)
            except Exception:  # the service's callback: its failure must not stop the recording
                log.exception("clips: on_ready(%s) failed", req.event_id)

    def _fail(self, req: _Request, reason: str) -> None:
        with self._lock:
            self._requests.pop(req.event_id, None)
        self.stats.failed += 1
        log.warning("clips: %s", reason)
        if self.on_failed is not None:
            try:
                self.on_failed(req.event_id, reason)
            except Exception:  # the service's callback
                log.exception("clips: on_failed(%s) failed", req.event_id)
