"""NVDEC decoding through PyNvVideoCodec: packets demuxed by PyAV, frames kept on the GPU as NV12 (docs/gpu-decode.md).

`NvdecCapture` is the reader behind a `stp_edge.video.VideoSource` opened with `decoder="nvdec"` (or "auto" where
`choose_nvdec` allows it). It is `stp_edge.av_source.AvCapture` with another decoder: the same PyAV demuxer, the
same frame placement from packet timestamps, the same decode modes, and the packets go to NVDEC instead of FFmpeg:
- "full": every packet; "nonref": AvCapture's own choice leaves out the non-reference packets not sampled;
  "keyframes": only keyframe packets are sent, so NVDEC decodes one frame per keyframe interval (the
  keyframe-aligned mode of docs/capacity.md: with decode the binding resource, this is what multiplies the
  cameras per GPU), with the decoder in low-latency mode (the packets it sees are intra-only).
- H.264/H.265 packets of MP4/MKV (length-prefixed, AVCC/HVCC) go through FFmpeg's `h264_mp4toannexb` /
  `hevc_mp4toannexb` bitstream filter first (NVDEC's parser reads Annex B start codes, parameter sets in band);
  MPEG-TS and raw streams are Annex B already.
- PyNvVideoCodec returns each frame as NV12 in a device buffer it reuses at its next `Decode`: every frame is
  therefore copied at once (device to device, luma and chroma, on the source's own CUDA stream, the decoder's
  stream too) into a buffer of the source's pool (`FramePool`). A frame the consumer samples (the offsets it gave
  `set_sampling`), a keyframe (keyframe sampling) and the stream's last frame (a partial snippet's stand-in) are
  yielded as `stp_edge.frames.DeviceNV12Frame`; any other frame gives its buffer back at once and is yielded as
  a `SkippedFrame` (nothing of it is ever converted). A buffer returns to the pool when its frame object is
  dropped, and is rewritten only after the reads a consumer queued on it (`DeviceNV12Frame.read_on`) ran.

Colour: the matrix and range come from the stream (`colorspace` BT.709 -> "bt709", everything else, unspecified
included -> "bt601", FFmpeg's default; `color_range` JPEG -> full range), as the CPU path converts them.

Nothing here imports PyNvVideoCodec, or calls CUDA, at import time; `choose_nvdec` and the layout arithmetic are
pure (tests/test_nvdec.py runs them on the CPU).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.av_source import AvCapture, nal_length_size
from stp_edge.errors import UsageError
from stp_edge.frames import DeviceNV12Frame, LazyFrame, SkippedFrame

# FFmpeg codec name -> PyNvVideoCodec's cudaVideoCodec member, for the codecs NVDEC decodes in hardware (NVIDIA's
# Video Codec SDK support matrix: which of them a given GPU decodes is its own table, checked by the decoder).
NVDEC_CODECS = {"h264": "H264", "hevc": "HEVC", "av1": "AV1", "vp9": "VP9", "vp8": "VP8", "mpeg4": "MPEG4",
                "mpeg2video": "MPEG2", "mpeg1video": "MPEG1", "vc1": "VC1"}
# What "auto" sends to NVDEC: inter-coded codecs "auto" reads through PyAV anyway that every NVDEC generation since
# Turing decodes (the SDK's NVDEC application note: AV1 from GA10x/Ada on, not on A100/H100, so AV1, VP8 and
# MPEG-4 Part 2 go to NVDEC only where asked for; the decoder itself refuses what its GPU cannot decode).
AUTO_NVDEC_CODECS = frozenset({"h264", "hevc", "vp9"})
ANNEXB_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
NOT_SAMPLED_REASON = "decoded by NVDEC, not sampled: its frame was not kept"
MAX_LIVE_FRAMES = 64  # device frames of one source alive at once: a consumer that keeps more is refused


# --- the choice -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NvdecProbe:
    """What this machine offers for NVDEC decoding.

    Attributes:
        version: PyNvVideoCodec's version where it imports, else None.
        gpus: CUDA devices the driver sees (0 without a driver).
        error: Why NVDEC cannot be used at all (PyNvVideoCodec missing or failing to load, no driver), else None.
    """

    version: str | None
    gpus: int
    error: str | None = None


def probe_nvdec() -> NvdecProbe:
    """Import PyNvVideoCodec and count the GPUs (its import loads the driver's NVDEC/NVENC libraries)."""
    try:
        import PyNvVideoCodec as nvc
    except ImportError:
        return NvdecProbe(None, _gpu_count(), "PyNvVideoCodec is not installed (pip install pynvvideocodec)")
    except Exception as exc:  # its import raises RuntimeError where the driver's codec libraries are missing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return NvdecProbe(None, _gpu_count(), f"PyNvVideoCodec does not load ({first})")
    version = str(getattr(nvc, "__version__", "unknown"))
    gpus = _gpu_count()
    return NvdecProbe(version, gpus, None if gpus else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)")


def _gpu_count() -> int:
    """CUDA devices the driver sees (cuInit + cuDeviceGetCount through ctypes), 0 without a driver."""
    try:
        from stp_edge.cuda.driver import shared_driver

        drv = shared_driver()
        n = ctypes.c_int(0)
        return n.value if drv.cuInit(0) == 0 and drv.cuDeviceGetCount(ctypes.byref(n)) == 0 else 0
    except (OSError, AttributeError):  # no libcuda (DriverNotFoundError is an OSError), or a library without them
        return 0


def choose_nvdec(requested: str, *, kind: str, codec: str | None, probe: NvdecProbe, device: int = 0,
                 cuda_preprocess: bool | None = None) -> tuple[bool, str]:
    """Whether NVDEC decodes a source, and why (one line); UsageError naming what is missing when asked for.

    Args:
        requested: "nvdec" (asked for: refused with the reasons when it cannot run) or "auto" (NVDEC where every
            condition holds, else False and the first reason).
        kind: "file", "url" or "camera" (camera indices are read through OpenCV).
        codec: The stream's FFmpeg codec name; NVDEC decodes those of `NVDEC_CODECS`. None: not known before
            connecting (a URL): "auto" does not pick NVDEC, "nvdec" lets `NvdecCapture` check it when it opens.
        probe: `probe_nvdec()`.
        device: The CUDA device to decode on (the detector's).
        cuda_preprocess: The detector preprocesses on CUDA (NVDEC's frames stay on the GPU and only the CUDA
            preprocessor reads them); None: not known here (then "auto" does not pick NVDEC).
    """
    if requested not in ("nvdec", "auto"):
        raise UsageError(f"choose_nvdec: requested must be 'nvdec' or 'auto', got {requested!r}")
    missing = []
    if kind == "camera":
        missing.append("camera indices are read through OpenCV")
    if probe.error is not None:
        missing.append(probe.error)
    elif not 0 <= device < probe.gpus:
        missing.append(f"CUDA device {device} does not exist ({probe.gpus} visible)")
    codecs = NVDEC_CODECS if requested == "nvdec" else AUTO_NVDEC_CODECS
    if kind != "camera" and codec not in codecs and (codec is not None or requested == "auto"):
        missing.append(f"{codec or 'an unknown'} codec: decoder={requested!r} sends {', '.join(sorted(codecs))} "
                       "to NVDEC")
    if cuda_preprocess is False or (requested == "auto" and cuda_preprocess is None):
        missing.append("the detector does not preprocess on CUDA (NVDEC's frames stay on the GPU: preprocess='cuda')")
    if requested == "nvdec":
        if missing:
            raise UsageError("decoder='nvdec' cannot be used: " + "; ".join(missing))
        return True, "asked for"
    if missing:
        return False, "auto: " + missing[0]
    return True, f"auto: {codec} file, PyNvVideoCodec {probe.version} and GPU {device} present, CUDA preprocessing"


def describe_nvdec(probe: NvdecProbe, device: int, mode: str) -> str:
    """How `run` names the NVDEC decoder: "nvdec (PyNvVideoCodec 2.2.4, GPU 0, keyframes)"."""
    return f"nvdec (PyNvVideoCodec {probe.version}, GPU {device}, {mode})"


# --- decoded frames, their planes and the pool of device frames ---------------------------------------------
@dataclass(frozen=True)
class Planes:
    """Where a decoded NV12 frame's planes are: luma at `ptr`, UV at `uv_ptr`, `pitch` bytes per row (both)."""

    ptr: int
    uv_ptr: int
    pitch: int
    height: int
    width: int


def nv12_planes(luma: dict[str, Any], chroma: dict[str, Any]) -> Planes:
    """The planes of a frame from its two `__cuda_array_interface__`s (PyNvVideoCodec's `DecodedFrame.cuda()`).

    PyNvVideoCodec 2.x describes NV12 as luma (H, W, 1) uint8 with strides (pitch, 1, 1) and interleaved chroma
    (H/2, W/2, 2) with strides (pitch, 2, 1); strides None means C-contiguous (pitch = W). Anything else
    (10-bit P016, 4:4:4, a chroma pitch other than the luma's) is refused with what was found.
    """
    for name, cai in (("luma", luma), ("chroma", chroma)):
        if cai.get("typestr") != "|u1":
            raise UsageError(f"NVDEC frame {name} plane is {cai.get('typestr')}, expected 8-bit NV12 (|u1): 10-bit "
                             "and 4:4:4 streams are not supported on the device path (decode them with pyav)")
    h, w = int(luma["shape"][0]), int(luma["shape"][1])
    ch, cw = int(chroma["shape"][0]), int(chroma["shape"][1])
    if (ch, cw) != (h // 2, w // 2) or len(chroma["shape"]) != 3 or int(chroma["shape"][2]) != 2:
        raise UsageError(f"NVDEC frame chroma plane has shape {tuple(chroma['shape'])}, expected NV12's "
                         f"({h // 2}, {w // 2}, 2) for a {h}x{w} luma plane")
    pitch = int(luma["strides"][0]) if luma.get("strides") else w
    uv_pitch = int(chroma["strides"][0]) if chroma.get("strides") else 2 * cw
    if uv_pitch != pitch:
        raise UsageError(f"NVDEC frame luma pitch {pitch} differs from its chroma pitch {uv_pitch}")
    return Planes(int(luma["data"][0]), int(chroma["data"][0]), pitch, h, w)


def stream_colour(colorspace: Any, color_range: Any) -> tuple[str, bool]:
    """(matrix, full_range) of a stream from PyAV's `colorspace` and `color_range` (enum members or ints).

    BT.709 (1) -> "bt709"; everything else, unspecified (2) included -> "bt601" (FFmpeg's swscale default, what
    the CPU path converts with); color_range JPEG (2) -> full range.
    """
    return ("bt709" if _enum_value(colorspace) == 1 else "bt601"), _enum_value(color_range) == 2


def _enum_value(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return int(getattr(v, "value", v))
    except (TypeError, ValueError):
        return None


class FramePool:
    """Device NV12 frame buffers of one source, reused: one per decoded frame, back when its frame is dropped.

    A frame not kept gives its buffer back at once; a `DeviceNV12Frame` when the last reference to it goes.
    Writes are queued on the source's stream after a wait for every read a consumer queued on the buffer
    (`read_on`: an event recorded on the consumer's stream), so nothing is rewritten under a reader; no host sync.
    Create and use with the device's context current (`stp_edge.cuda.ring.RingContext`).
    """

    def __init__(self, driver: Any, ctx: Any, stream: int, limit: int = MAX_LIVE_FRAMES) -> None:
        self.driver, self.ctx, self.stream, self.limit = driver, ctx, stream, limit
        self._free: list[tuple[int, int, list[int]]] = []  # (ptr, nbytes, events to wait for)
        self._lock = threading.Lock()
        self.live = 0
        self.closed = False

    def take(self, nbytes: int) -> _Buffer:
        """A buffer of `nbytes` whose earlier readers the source's stream waits for (context current)."""
        with self._lock:
            if self.live >= self.limit:
                raise UsageError(f"{self.live} device frames of this NVDEC source are still referenced "
                                 f"(at most {self.limit}): a consumer keeps frames it does not need")
            found = next((i for i, (_, n, _) in enumerate(self._free) if n == nbytes), None)
            stale = [] if found is not None else list(self._free)
            entry = self._free.pop(found) if found is not None else None
            if found is None:
                self._free.clear()
            self.live += 1
        for ptr, _, events in stale:  # buffers of another size (the stream's resolution changed)
            self._wait(events)
            self.driver.call("cuMemFree_v2", ptr)
        if entry is None:
            p = ctypes.c_uint64()
            self.driver.call("cuMemAlloc_v2", ctypes.byref(p), nbytes)
            return _Buffer(self, int(p.value), nbytes)
        self._wait(entry[2])
        return _Buffer(self, entry[0], nbytes)

    def _wait(self, events: list[int]) -> None:
        for ev in events:
            self.driver.call("cuStreamWaitEvent", self.stream, ev, 0)
            self.driver.call("cuEventDestroy_v2", ev)

    def give_back(self, buf: _Buffer) -> None:
        """Return a buffer (any thread); after `close` it is freed at once."""
        with self._lock:
            self.live -= 1
            if not self.closed:
                self._free.append((buf.ptr, buf.nbytes, buf.events))
                return
            last = self.live == 0
        with self.ctx.current():
            self._free_after(buf.ptr, buf.events)
        if last:
            self.ctx.close()

    def close(self) -> bool:
        """Free the buffers not in use (context current); True when none is in use (the context may go)."""
        with self._lock:
            self.closed = True
            free, self._free = self._free, []
            idle = self.live == 0
        for ptr, _, events in free:
            self._free_after(ptr, events)
        return idle

    def _free_after(self, ptr: int, events: list[int]) -> None:
        """Free a buffer once the reads queued on it (`events`) have run (context current)."""
        for ev in events:
            self.driver.call("cuEventSynchronize", ev)
            self.driver.call("cuEventDestroy_v2", ev)
        self.driver.call("cuMemFree_v2", ptr)


class _Buffer:
    """One device frame's memory, owned by a `FramePool`: back to it when the last reference goes."""

    def __init__(self, pool: FramePool, ptr: int, nbytes: int) -> None:
        self.pool, self.ptr, self.nbytes = pool, ptr, nbytes
        self.events: list[int] = []
        self.download: Any = None  # set by the capture: host BGR pixels of a frame (snapshots)

    def read_on(self, stream: int) -> None:
        """A consumer queued a read on `stream` (its context current): the next write waits for it."""
        ev = self.pool.driver.new_event()
        self.pool.driver.call("cuEventRecord", ev, stream)
        self.events.append(ev)

    def __del__(self) -> None:
        try:
            self.pool.give_back(self)
        except Exception:  # interpreter shutdown, a driver already gone: nothing left to return it to
            pass


@dataclass
class _Decoded:
    """A frame NVDEC output, already copied into a pool buffer: what AvCapture places (`pts`, `key_frame`)."""

    pts: int
    key_frame: bool
    buf: _Buffer
    height: int
    width: int


def annexb_filter(stream: Any) -> Any:
    """FFmpeg's `h264_mp4toannexb`/`hevc_mp4toannexb` for a stream of length-prefixed packets, else None.

    Length prefixes: MP4 and MKV (avcC/hvcC extradata). MPEG-TS and raw streams carry start codes already; other
    codecs need no filter.
    """
    codec = stream.codec_context.name
    if codec not in ANNEXB_FILTERS or nal_length_size(codec, stream.codec_context.extradata) is None:
        return None
    from av.bitstream import BitStreamFilterContext

    return BitStreamFilterContext(ANNEXB_FILTERS[codec], stream)


def nvdec_payloads(packet: Any, mode: str, bsf: Any) -> list[tuple[bytes, int | None, bool]]:
    """What NVDEC is sent for one demuxed packet (None: the end of the stream): (bytes, pts, keyframe) each.

    Keyframes mode sends keyframe packets only (nothing else reaches the decoder: its frames are placed as
    `SkippedFrame`s); the others go through `bsf` (`annexb_filter`) where there is one, which may hold a packet
    back or add parameter sets in front of a keyframe; None drains it. Empty payloads are left out.
    """
    if packet is not None and mode == "keyframes" and not packet.is_keyframe:
        return []
    key = None if packet is None else bool(packet.is_keyframe)  # read first: the filter takes the packet's data
    if bsf is None:
        out = [] if packet is None else [packet]
    else:
        out = list(bsf.filter(packet))
    payloads = []
    for p in out:
        data = bytes(p)
        pts = p.pts if p.pts is not None else p.dts
        if data:
            payloads.append((data, None if pts is None else int(pts), bool(p.is_keyframe) if key is None else key))
    return payloads


# --- the capture ------------------------------------------------------------------------------------------------
class NvdecCapture(AvCapture):
    """`AvCapture` whose packets NVDEC decodes (module docstring); frames are `DeviceNV12Frame`s or `SkippedFrame`s.

    Args:
        target: File path or URL.
        mode: One of `stp_edge.av_source.DECODE_MODES`.
        timeout_ms: Open and read timeout (URLs).
        sampling: (snippet_len, offsets) the consumer samples (`set_sampling`); None: every frame is kept.
        device: CUDA device ordinal to decode on (the detector's).

    Attributes:
        describe: "nvdec (PyNvVideoCodec 2.2.4, GPU 0, keyframes)".
    """

    def __init__(self, target: str | Path, mode: str = "full", *, timeout_ms: int = 10_000,
                 sampling: tuple[int, Sequence[int]] | None = None, device: int = 0) -> None:
        super().__init__(target, mode, timeout_ms=timeout_ms, sampling=sampling)
        self.device = device
        self._nv = self._decoder = self._pool = self._ctx = self._bsf = None
        if not self.opened:
            return
        try:
            self._open_nvdec()
        except Exception as exc:  # PyNvVideoCodec's errors, the driver's: the source does not open, with why
            self.error = f"NVDEC: {exc}"
            self.opened = False
            self.release()

    def _open_nvdec(self) -> None:
        import PyNvVideoCodec as nvc

        from stp_edge.cuda.driver import CU_STREAM_NON_BLOCKING
        from stp_edge.cuda.ring import RingContext

        if self.codec not in NVDEC_CODECS:
            raise UsageError(f"{self.codec} is not a codec NVDEC decodes ({', '.join(sorted(NVDEC_CODECS))})")
        self._nv = nvc
        self.describe = describe_nvdec(NvdecProbe(str(getattr(nvc, "__version__", "?")), 1), self.device, self.mode)
        cc = self._stream.codec_context
        self.matrix, self.full_range = stream_colour(getattr(cc, "colorspace", None), getattr(cc, "color_range", None))
        self._ctx = RingContext(self.device)
        drv = self._ctx.driver
        with self._ctx.current():
            s = ctypes.c_void_p()
            drv.call("cuStreamCreate", ctypes.byref(s), CU_STREAM_NON_BLOCKING)
            self._cu_stream = int(s.value)
            self._pool = FramePool(drv, self._ctx, self._cu_stream)
            # Keyframes mode sends intra-only packets, each one whole picture: low latency, a frame per packet.
            latency = nvc.DisplayDecodeLatencyType.LOW if self.mode == "keyframes" else \
                nvc.DisplayDecodeLatencyType.NATIVE
            # cudacontext=0: PyNvVideoCodec retains the device's primary context, the one RingContext pushed;
            # its output copies run on our stream, so ours (queued after them on the same stream) see them done.
            self._decoder = nvc.CreateDecoder(gpuid=self.device, codec=getattr(nvc.cudaVideoCodec,
                                                                                NVDEC_CODECS[self.codec]),
                                              cudacontext=0, cudastream=self._cu_stream, usedevicememory=True,
                                              latency=latency)
        self._bsf = annexb_filter(self._stream)
        # As PyNvVideoCodec's low-latency sample sets it: the enum member itself, on each one-picture packet.
        self._end_of_picture = nvc.VideoPacketFlag.ENDOFPICTURE if self.mode == "keyframes" else None
        self._key_pts: set[int] = set()

    def _step(self) -> None:
        """AvCapture's step with the device's context current (the pool's copies and allocations need it)."""
        with self._ctx.current():
            super()._step()

    def _decode(self, packet: Any) -> None:
        """Send one packet (None: the end) to NVDEC, copying each frame it outputs into a pool buffer at once."""
        try:
            for data, pts, key in nvdec_payloads(packet, self.mode, self._bsf):
                self._send(data, pts, key)
            if packet is None:
                self._take(self._decoder.Decode(self._nv.PacketData()))  # empty packet: end of stream, flush
        except UsageError:
            raise
        except self._nv.PyNvVCExceptionUnsupported as exc:  # this GPU cannot decode the stream: say so, do not drop
            raise UsageError(f"NVDEC on GPU {self.device} cannot decode this {self.codec} stream: {exc} "
                             "(decode it with decoder='pyav')") from None
        except Exception:  # a packet NVDEC refused: its frame is not output (counted dropped when placed)
            if self.mode == "nonref" and self.nonref_stopped is None:
                self.nonref_stopped = "the decoder refused a packet: every frame decoded from here"

    def _send(self, data: bytes, pts: int | None, key: bool) -> None:
        pts = pts if pts is not None else (self._ready[-1][0] + 1 if self._ready else 0)
        if key:
            self._key_pts.add(pts)
        buf = np.frombuffer(data, np.uint8)  # alive for the call: NVDEC's parser reads it before Decode returns
        pd = self._nv.PacketData()
        pd.bsl_data, pd.bsl, pd.pts, pd.key = int(buf.ctypes.data), len(data), pts, int(key)
        if self._end_of_picture is not None:
            pd.decode_flag = self._end_of_picture
        self._take(self._decoder.Decode(pd))

    def _take(self, frames: Any) -> None:
        """Copy each output frame into a pool buffer on the decoder's stream (its output is reused next call)."""
        from stp_edge.cuda.driver import Rows
        from stp_edge.cuda.nv12 import Nv12Layout, copy_nv12

        for f in frames:
            views = f.cuda()
            planes = nv12_planes(views[0].__cuda_array_interface__, views[1].__cuda_array_interface__)
            layout = Nv12Layout(planes.height, planes.width)
            buf = self._pool.take(layout.nbytes(1))
            copy_nv12(self._pool.driver, buf.ptr, layout, Rows(planes.ptr, planes.pitch),
                      Rows(planes.uv_ptr, planes.pitch), self._cu_stream)
            buf.download = self._download
            pts = int(f.getPTS())
            self.decoded += 1
            self._ready.append((pts, _Decoded(pts, pts in self._key_pts, buf, planes.height, planes.width)))
            self._key_pts.discard(pts)

    def _output(self, frame: _Decoded) -> LazyFrame | DeviceNV12Frame:
        """A sampled frame, a keyframe or the last frame: a `DeviceNV12Frame`; any other: a `SkippedFrame`."""
        sampled = self._sampling is None or self._yielded % self._sampling[0] in self._sampling[1]
        last = self._eof and not self._ready
        if not (sampled or frame.key_frame or last):
            return SkippedFrame(-1, NOT_SAMPLED_REASON)  # `frame` dropped: its buffer goes back to the pool
        tb = self._stream.time_base
        layout_h, layout_w = frame.height, frame.width
        return DeviceNV12Frame(frame.buf.ptr, layout_w, layout_h, layout_w, layout_h * layout_w, matrix=self.matrix,
                               full_range=self.full_range, stream=self._cu_stream, device=self.device,
                               key=frame.key_frame, time=float(frame.pts * tb) if tb else None, owner=frame.buf)

    def download_nv12(self, frame: DeviceNV12Frame) -> np.ndarray:
        """A device frame's NV12 bytes on the host, [H * 3/2, W] uint8 (checks, snapshots; waits for the copy)."""
        from stp_edge.cuda.driver import Rows
        from stp_edge.cuda.nv12 import Nv12Layout, copy_nv12
        from stp_edge.errors import FrameError

        if self._ctx is None:
            raise FrameError(f"frame {frame.index}: its NVDEC source is closed; its pixels cannot be read back")
        host = np.empty((frame.height * 3 // 2, frame.width), np.uint8)
        drv = self._pool.driver
        with self._ctx.current():
            copy_nv12(drv, host.ctypes.data, Nv12Layout(frame.height, frame.width), Rows(frame.ptr, frame.pitch),
                      Rows(frame.ptr + frame.uv_offset, frame.pitch), self._cu_stream, to_host=True)
            drv.call("cuStreamSynchronize", self._cu_stream)
        return host

    def _download(self, frame: DeviceNV12Frame) -> np.ndarray:
        """Host BGR of a device frame (snapshots only: OpenCV's BT.601 limited-range NV12 conversion)."""
        import cv2

        return cv2.cvtColor(self.download_nv12(frame), cv2.COLOR_YUV2BGR_NV12)

    def release(self) -> None:
        """Close the container, the decoder and the stream; the pool frees its buffers as their frames go."""
        super().release()
        if getattr(self, "_ctx", None) is None:
            return
        ctx, self._ctx = self._ctx, None
        self._ready.clear()
        self._decoder = None  # PyNvVideoCodec's decoder, released before its stream
        with ctx.current():
            drv = ctx.driver
            if getattr(self, "_cu_stream", None):
                drv.call("cuStreamSynchronize", self._cu_stream)  # copies into pool buffers finish first
                drv.call("cuStreamDestroy_v2", self._cu_stream)
                self._cu_stream = None
            idle = self._pool.close() if self._pool is not None else True
        if idle:  # else the last buffer given back releases it (FramePool.give_back)
            ctx.close()
