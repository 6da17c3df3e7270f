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
- "nonref": as "full", except that a non-reference frame (no other frame is predicted from it) that the consumer
  will not sample is not sent to the decoder at all; it is yielded, at its place, as a `SkippedFrame` (reason
  `NONREF_REASON`), counted in `skipped_nonref`. Exact: every frame that is decoded is decoded from the same
  references as in full decoding, so the frames yielded (their number, their order, the pixels of every
  `DecodedFrame`) are those of "full". The reader must be told which frames are sampled (`set_sampling`:
  snippet length and sampled offsets, counted from the first frame it yields; the center offsets of
  `stp_edge.pipeline.snippets.sample_offsets`; keyframe sampling, whose fallback is the center frame, is covered
  too, keyframes being never skipped); until then, and wherever anything is in doubt, it decodes every frame.

Non-reference frames are not skipped through FFmpeg's own `skip_frame = "NONREF"`: that applies to every frame
of the codec context, a sampled frame included. "nonref" decides per packet, before the packet is sent, from the
bitstream (`packet_is_nonref`): H.264, every slice NAL unit of the access unit has nal_ref_idc 0 (AVCC length
prefixes in MP4/MKV, Annex B start codes in MPEG-TS and raw streams); H.265, the slices are sub-layer
non-reference pictures (TRAIL_N, TSA_N, STSA_N, RADL_N, and RASL_N of a CRA that is not the first of its coded
video sequence) of the highest temporal sub-layer, base layer. A packet that also carries parameter sets, an
end of sequence, a recovery point SEI or anything not understood is decoded; so is every packet of other codecs
(the demuxer's `is_disposable` flag is not trusted alone). A packet is skipped only where its frame's display
position is known exactly: constant frame rate (the stream's average rate equals its base rate), a timestamp
on a whole frame period, counted from the first frame FFmpeg output (so nothing before it is skipped: a stream
starting mid-GOP, open-GOP leading pictures), after a packet with a later timestamp was read (so it is not the
stream's last frame, which a partial snippet at the end samples). Every frame placed is checked against the
predicted position; a mismatch (a frame the decoder did not output: a corrupt packet) stops the skipping for the
rest of the stream (`nonref_stopped` says why) and a skipped frame found at a sampled position is counted in
`nonref_misses` (0 but on broken streams).

Frame positions are exact in all modes, counted from the packets' presentation timestamps (no frame-rate
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
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from stp_edge._deps import require
from stp_edge.frames import DecodedFrame, LazyFrame, SkippedFrame

DECODE_MODES = ("full", "keyframes", "nonref")
NONREF_REASON = "non-reference frame, not sampled"
# H.264 NAL unit types an access unit may hold besides non-reference slices (1) and still be skipped: SEI (without
# a recovery point), access unit delimiter, filler data. Anything else (IDR, data partitions, parameter sets, end
# of sequence or stream, SVC/MVC extensions) is decoded.
_H264_SLICE, _H264_SEI = 1, 6
_H264_HARMLESS = frozenset({_H264_SEI, 9, 12})
# H.265: sub-layer non-reference slice types (TRAIL_N, TSA_N, STSA_N, RADL_N; RASL_N apart). The reserved
# non-reference types (RSV_VCL_N10/12/14) are not skipped: FFmpeg ignores them, so full decoding outputs no frame
# for them, and a skipped frame would be one frame too many.
_HEVC_NONREF = frozenset({0, 2, 4, 6})
_HEVC_RASL_N, _HEVC_CRA, _HEVC_SPS, _HEVC_SEI = 8, 21, 33, frozenset({39, 40})
_HEVC_HARMLESS = frozenset({35, 38, *_HEVC_SEI})  # access unit delimiter, filler data, SEI (no recovery point)
_HEVC_END = frozenset({36, 37})  # end of sequence, end of bitstream: the next CRA starts afresh
_RECOVERY_POINT = 6  # SEI payload type, H.264 and H.265
# Keyframes mode holds a decoded keyframe until the next keyframe's packet is read; a stream whose keyframes are
# further apart than this many packets has its keyframe released anyway (its frames still counted in order).
MAX_WAIT_PACKETS = 1024
# Nonref mode: a packet whose timestamp lies more than this many frames before the latest one read is not
# skipped (B-frame reordering puts a frame a few frames back; more says the timestamps are not to be trusted).
MAX_REORDER = 16
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


def nal_length_size(codec: str, extradata: bytes | None) -> int | None:
    """Bytes of the NAL unit length prefix of an H.264/H.265 stream (avcC/hvcC extradata), None for Annex B."""
    if not extradata or extradata[0] != 1:  # no configuration record: start codes (MPEG-TS, raw streams)
        return None
    if codec == "h264" and len(extradata) >= 7:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) >= 23:
        return (extradata[21] & 3) + 1
    return None


def split_nal_units(data: bytes, length_size: int | None) -> list[bytes] | None:
    """The NAL units of one packet (length-prefixed, or Annex B where `length_size` is None); None if malformed."""
    units = []
    if length_size:
        i, n = 0, len(data)
        while i < n:
            if i + length_size > n:
                return None
            size = int.from_bytes(data[i:i + length_size], "big")
            i += length_size
            if size == 0 or i + size > n:
                return None
            units.append(data[i:i + size])
            i += size
        return units
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        start = data.find(b"\x00\x00\x01", begin)
        unit = data[begin:start] if start >= 0 else data[begin:]
        unit = unit.rstrip(b"\x00")  # the zero byte of a four-byte start code, trailing zeros
        if unit:
            units.append(unit)
    return units


def _sei_payload_types(payload: bytes) -> list[int] | None:
    """The payload types of an SEI message's RBSP (NAL header removed), None when it does not parse."""
    rbsp = payload.replace(b"\x00\x00\x03", b"\x00\x00")  # emulation prevention (exact enough for the headers)
    types, i, n = [], 0, len(rbsp)
    while i < n and not (i == n - 1 and rbsp[i] == 0x80):  # up to the RBSP trailing bits
        values = []
        for _ in range(2):  # payloadType, payloadSize: runs of 0xFF plus a last byte
            value = 0
            while i < n and rbsp[i] == 0xFF:
                value, i = value + 255, i + 1
            if i >= n:
                return None
            values.append(value + rbsp[i])
            i += 1
        types.append(values[0])
        i += values[1]
        if i > n:
            return None
    return types


def packet_is_nonref(codec: str, data: bytes, length_size: int | None, *, hevc_top_tid: int | None = None,
                     rasl_decodable: bool = False) -> bool:
    """True when an H.264/H.265 access unit is a non-reference picture that can be left undecoded; else False.

    H.264: at least one slice, every slice NAL unit of type 1 with nal_ref_idc 0, besides only SEI (no recovery
    point), access unit delimiters and filler. H.265: base-layer slices of a sub-layer non-reference type at
    temporal id `hevc_top_tid` (the highest sub-layer of the stream: a sub-layer non-reference picture of a lower
    one may be referenced by higher ones; None: unknown, nothing skipped), RASL_N only where `rasl_decodable`
    (its CRA is not the first of a coded video sequence, or FFmpeg drops it), besides only SEI (no recovery
    point), delimiters and filler. Other codecs, and anything that does not parse: False.
    """
    if codec not in ("h264", "hevc"):
        return False
    units = split_nal_units(data, length_size)
    if not units:
        return False
    slices = 0
    for unit in units:
        if codec == "h264":
            header_size = 1
            if unit[0] & 0x80:  # forbidden_zero_bit
                return False
            ref_idc, kind = unit[0] >> 5 & 3, unit[0] & 0x1F
            if kind == _H264_SLICE:
                if ref_idc:
                    return False
                slices += 1
                continue
            if kind not in _H264_HARMLESS:
                return False
            sei = kind == _H264_SEI
        else:
            header_size = 2
            if len(unit) < 2 or unit[0] & 0x80:
                return False
            kind, layer, tid = unit[0] >> 1 & 0x3F, (unit[0] & 1) << 5 | unit[1] >> 3, (unit[1] & 7) - 1
            if kind < 32:  # a slice
                nonref = kind in _HEVC_NONREF or (kind == _HEVC_RASL_N and rasl_decodable)
                if not nonref or layer or hevc_top_tid is None or tid != hevc_top_tid:
                    return False
                slices += 1
                continue
            if kind not in _HEVC_HARMLESS:
                return False
            sei = kind in _HEVC_SEI
        if sei:
            types = _sei_payload_types(unit[header_size:])
            if types is None or _RECOVERY_POINT in types:
                return False
    return slices > 0


def _hevc_units_of_extradata(extradata: bytes | None) -> list[bytes]:
    """The NAL units (VPS, SPS, PPS, SEI) an H.265 stream's extradata holds: hvcC arrays or Annex B."""
    if not extradata:
        return []
    if extradata[0] != 1:
        return split_nal_units(extradata, None) or []
    units, i = [], 23
    if len(extradata) < 23:
        return []
    for _ in range(extradata[22]):
        if i + 3 > len(extradata):
            break
        count, i = int.from_bytes(extradata[i + 1:i + 3], "big"), i + 3
        for _ in range(count):
            if i + 2 > len(extradata):
                return units
            size, i = int.from_bytes(extradata[i:i + 2], "big"), i + 2
            units.append(extradata[i:i + size])
            i += size
    return units


def _hevc_sps_top_tid(unit: bytes) -> int | None:
    """sps_max_sub_layers_minus1 of an H.265 SPS NAL unit (the highest temporal id), None if not an SPS."""
    if len(unit) < 3 or (unit[0] >> 1 & 0x3F) != _HEVC_SPS:
        return None
    return unit[2] >> 1 & 7


def _packet_bytes(packet: Any) -> bytes | None:
    """A packet's data, None when it has no readable buffer (then it is decoded)."""
    try:
        return bytes(packet)
    except Exception:  # PyAV's errors on a packet without data
        return None


class AvCapture:
    """One opened PyAV container: `read()` yields lazy frames in presentation order, `None` at the end.

    Args:
        target: File path or URL.
        mode: One of `DECODE_MODES`.
        timeout_ms: Open and read timeout (URLs), so a stalled stream ends a read instead of hanging it.
        sampling: "nonref" mode: (snippet_len, offsets) of the frames the consumer samples (`set_sampling`).

    Attributes:
        opened: False when the container or its video stream could not be opened (`error` says why).
        dropped: Frames the container held that FFmpeg did not output, not yet taken by `take_dropped()`.
        skipped: Frames yielded as `SkippedFrame`s (keyframes and nonref modes), in total.
        skipped_nonref: Of those, the non-reference frames not sent to the decoder (nonref mode).
        decoded: Frames FFmpeg decoded, in total.
        ended: True when the container was read to its end (EOF), as opposed to a read error or timeout.
        nonref_stopped: Nonref mode: why skipping stopped for the rest of the stream (a frame not where its
            timestamp put it), else None.
        nonref_misses: Nonref mode: skipped frames that turned out to be at a sampled position (broken streams
            only: a frame the decoder did not output shifted the frames after it).
    """

    def __init__(self, target: str | Path, mode: str = "full", *, timeout_ms: int = 10_000,
                 sampling: tuple[int, Sequence[int]] | None = None) -> None:
        av = require("av", "decoding video with FFmpeg through PyAV")
        self._av = av
        if mode not in DECODE_MODES:
            raise ValueError(f"decode mode must be one of {list(DECODE_MODES)}, got {mode!r}")
        self.mode = mode
        self.opened = False
        self.error: str | None = None
        self.dropped = self.skipped = self.decoded = self.skipped_nonref = self.nonref_misses = 0
        self.nonref_stopped: str | None = None
        self.ended = False
        self._sampling: tuple[int, frozenset[int]] | None = None
        self.set_sampling(*(sampling or (None, ())))
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
        self._init_nonref()
        self.opened = True

    def set_sampling(self, snippet_len: int | None, offsets: Sequence[int] = ()) -> None:
        """Nonref mode: the frames the consumer samples are those whose index % `snippet_len` is in `offsets`.

        Indices count the frames this reader yields from 0 (the detector's frame count of the stream, which
        restarts at a gap). `snippet_len=None` skips nothing (a consumer converting every frame). May be called
        after frames were read: packets already sent were decoded.
        """
        if snippet_len is None:
            self._sampling = None
            return
        if snippet_len < 1 or not offsets or any(not 0 <= o < snippet_len for o in offsets):
            raise ValueError(f"sampling offsets {list(offsets)} must lie in [0, snippet_len={snippet_len})")
        self._sampling = (int(snippet_len), frozenset(int(o) for o in offsets))

    def _init_nonref(self) -> None:
        """Nonref mode's state: the stream's framing, frame period and (H.265) highest temporal sub-layer."""
        self._skipped_pts: set[int] = set()  # skipped packets whose frames are not yet placed
        self._yielded = 0  # frames placed in `_out` (the index of the next one)
        self._origin: tuple[int, int] | None = None  # (pts, index) of the first frame output: positions from it
        self._max_pts: int | None = None  # the latest timestamp read (a packet with a later one exists)
        self._rasl_decodable = False  # H.265: the latest IRAP is a CRA that does not start its coded sequence
        self._fresh_cvs = True  # H.265: the next IRAP starts a coded video sequence (start, after an end NAL)
        self._period: Fraction | None = None  # frames per time-base tick, for a constant-frame-rate stream
        self._length_size: int | None = None
        self._top_tid: int | None = None
        if self.mode != "nonref" or self.codec not in ("h264", "hevc"):
            return
        extradata = self._stream.codec_context.extradata
        self._length_size = nal_length_size(self.codec, extradata)
        if self.codec == "hevc":
            tids = [t for t in map(_hevc_sps_top_tid, _hevc_units_of_extradata(extradata)) if t is not None]
            self._top_tid = max(tids) if tids else None
        avg, base, tb = self._stream.average_rate, self._stream.base_rate, self._stream.time_base
        if avg and base and tb and avg == base:  # constant frame rate: a timestamp says the display position
            self._period = Fraction(tb) * Fraction(base)

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
        if packet.is_corrupt and self.nonref_stopped is None and self.mode == "nonref":
            self.nonref_stopped = "a packet flagged corrupt by the demuxer: every frame decoded from here"
        if self.mode == "nonref" and self._period is not None and self._skippable(packet, pts):
            self._skipped_pts.add(pts)
            self.skipped_nonref += 1
        else:
            heapq.heappush(self._pending, pts)
            if packet.is_keyframe:
                self._last_key_pts = pts if self._last_key_pts is None else max(self._last_key_pts, pts)
            self._decode(packet)
        self._max_pts = pts if self._max_pts is None else max(self._max_pts, pts)
        self._place(final=False)

    def _skippable(self, packet: Any, pts: int) -> bool:
        """Nonref mode: whether this packet's frame is a non-reference frame, not sampled, known to be so exactly."""
        data = _packet_bytes(packet) if self.codec == "hevc" else None
        if data is not None:
            self._track_hevc(data)  # every packet: parameter sets, IRAPs and ends of sequence
        if (self._sampling is None or self._origin is None or self.nonref_stopped is not None or packet.is_keyframe
                or packet.pts is None or pts in self._skipped_pts or pts in self._pending
                or self._max_pts is None or pts >= self._max_pts or pts <= self._origin[0]):
            return False  # unknown sampling; before the first frame output; the last frame so far; doubt
        index = self._position(pts)
        if index is None or (self._max_pts - pts) * self._period > MAX_REORDER:
            return False  # off the frame grid, or further before the latest frame than any reordering puts it
        snippet_len, offsets = self._sampling
        if index % snippet_len in offsets:
            return False
        data = data if data is not None else _packet_bytes(packet)
        return data is not None and packet_is_nonref(self.codec, data, self._length_size,
                                                     hevc_top_tid=self._top_tid, rasl_decodable=self._rasl_decodable)

    def _position(self, pts: int) -> int | None:
        """The index full decoding gives the frame of timestamp `pts` (constant frame rate), None if not whole."""
        if self._origin is None or self._period is None:
            return None
        frames = (pts - self._origin[0]) * self._period
        whole = round(frames)
        if abs(frames - whole) > Fraction(1, 10):
            return None
        return self._origin[1] + whole

    def _track_hevc(self, data: bytes) -> None:
        """H.265: follow the highest temporal sub-layer (SPS), IRAPs and ends of sequence, for RASL pictures."""
        units = split_nal_units(data, self._length_size) or []
        for unit in units:
            if len(unit) < 2:
                continue
            kind = unit[0] >> 1 & 0x3F
            if kind == _HEVC_SPS:
                tid = _hevc_sps_top_tid(unit)
                if tid is not None:
                    self._top_tid = tid if self._top_tid is None else max(self._top_tid, tid)
            elif kind in _HEVC_END:
                self._fresh_cvs = True
            elif 16 <= kind <= 23:  # an IRAP: its RASL pictures decode unless it starts a coded video sequence
                self._rasl_decodable = kind == _HEVC_CRA and not self._fresh_cvs
                self._fresh_cvs = False
                break

    def _decode(self, packet: Any) -> None:
        try:
            frames = self._stream.codec_context.decode(packet)
        except self._av.error.EOFError:
            return
        except Exception:  # a corrupt packet: its frame is not output, and is counted dropped when placed
            if self.mode == "nonref" and self.nonref_stopped is None:
                self.nonref_stopped = "the decoder refused a packet: every frame decoded from here"
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
                self._yielded += before
            else:  # full decoding: a frame that was not output is a drop; so is anything before the first frame
                self.dropped += before
                if before and self._origin is not None and self.mode == "nonref" and self.nonref_stopped is None:
                    self.nonref_stopped = f"{before} frame(s) not output by the decoder: every frame decoded from here"
            self._place_skipped(below=pts)
            self._check_position(pts)
            self._out.append(self._output(frame))
            if self._origin is None and frame.pts is not None:
                self._origin = (pts, self._yielded)
            self._yielded += 1
            self._placed = True
        if final and self._pending:  # frames after the last decoded one
            n = len(self._pending)
            self._pending = []
            if self.mode == "keyframes" and self._placed and self.ended:
                self._out.extend(SkippedFrame(-1) for _ in range(n))
                self.skipped += n
                self._yielded += n
            else:
                self.dropped += n
        if final:
            self._place_skipped(below=None)

    def _output(self, frame: Any) -> LazyFrame:
        """The frame yielded for a decoded one, placed next (index `_yielded`): FFmpeg's frame, converted if used."""
        return DecodedFrame(frame, -1, bool(frame.key_frame))

    def _place_skipped(self, *, below: int | None) -> None:
        """Nonref mode: yield, in order, the skipped frames with a timestamp below `below` (None: all of them).

        A skipped frame's packet was read, and full decoding would have output its frame (it references frames
        that were decoded): it takes its place among the frames output, as the frames with lower timestamps do.
        """
        if not self._skipped_pts:
            return
        for p in sorted(q for q in self._skipped_pts if below is None or q < below):
            self._skipped_pts.discard(p)
            self._check_position(p, skipped=True)
            self._out.append(SkippedFrame(-1, NONREF_REASON))
            self.skipped += 1
            self._yielded += 1

    def _check_position(self, pts: int, *, skipped: bool = False) -> None:
        """Nonref mode: the frame placed next is where its timestamp says; if not, skipping stops (doubt)."""
        if self.mode != "nonref" or self._origin is None:
            return
        expected = self._position(pts)
        if skipped and self._sampling is not None and self._yielded % self._sampling[0] in self._sampling[1]:
            self.nonref_misses += 1  # a frame the consumer samples has no pixels: a shift went unseen
        if expected is not None and expected != self._yielded and self.nonref_stopped is None:
            self.nonref_stopped = (f"frame {self._yielded} has the timestamp of frame {expected} (a frame not "
                                   "output, or timestamps off the frame rate): every frame decoded from here")

    def release(self) -> None:
        """Close the container (idempotent)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a broken container: nothing to save
                pass
            self._container = None
