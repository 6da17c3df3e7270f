"""The PyAV source: packet-level decoding, frames converted to BGR only where used, keyframes-only decoding.

Every file here is written by PyAV in the test (libx264 / libx265 with B-frames and a fixed keyframe interval).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
from conftest import moving_frames

av = pytest.importorskip("av")

from stp_edge.av_source import NONREF_REASON, packet_is_nonref  # noqa: E402
from stp_edge.bench.capacity import free_port  # noqa: E402
from stp_edge.errors import UsageError  # noqa: E402
from stp_edge.frames import DecodedFrame, FrameError, SkippedFrame  # noqa: E402
from stp_edge.video import VideoError, open_source  # noqa: E402


def write(path, n=70, codec="libx264", keyint=16, bframes=2, size=(96, 64), fmt=None, keys_at=(), seed=0,
          params=""):
    """A video of `n` moving frames; `keys_at` forces keyframes there (besides every `keyint` frames)."""
    frames = moving_frames(n, height=size[1], width=size[0], seed=seed)
    params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}" + (f":{params}" if params else "")
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = ({"x264-params": params} if codec == "libx264"
                          else {"x265-params": params + ":log-level=error"})
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            if i in keys_at:
                frame.pict_type = av.video.frame.PictureType.I
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def read(path, decode="full", **kwargs):
    with open_source(path, decode=decode, **kwargs) as src:
        frames = [f for f, _gap in src.frames_with_gaps(lazy=True)]
    return src, frames


def conversions(monkeypatch) -> list[int]:
    """The indices of the frames converted to BGR from now on (`DecodedFrame.decode` calls), in order."""
    converted: list[int] = []
    real = DecodedFrame.decode

    def counting(self, **kw):
        converted.append(self.index)
        return real(self, **kw)

    monkeypatch.setattr(DecodedFrame, "decode", counting)
    return converted


def opencv_frames(path):
    with open_source(path, decoder="opencv") as src:
        return list(src), src


def pattern(frames):
    return "".join("s" if isinstance(f, SkippedFrame) else "K" if f.key else "." for f in frames)


@pytest.mark.parametrize(("codec", "keyint"), [("libx264", 16), ("libx264", 10), ("libx265", 16), ("libx265", 10)])
def test_full_and_keyframes_decoding_place_every_frame_as_opencv_does(tmp_path, codec, keyint):
    path = write(tmp_path / "a.mp4", codec=codec, keyint=keyint)
    full_src, full = read(path)
    key_src, keys = read(path, "keyframes")
    cv_frames, cv_src = opencv_frames(path)
    assert full_src.decoder == key_src.decoder == "pyav" and cv_src.decoder == "opencv"
    assert full_src.keyframe_interval == keyint and cv_src.keyframe_interval is None
    assert len(full) == len(keys) == len(cv_frames) == 70 and full_src.stats.read == key_src.stats.read == 70
    assert [f.index for f in full] == [f.index for f in keys] == list(range(70))
    assert all(isinstance(f, DecodedFrame) for f in full)
    assert pattern(full).replace(".", "s") == pattern(keys)  # keyframes decoded at the same places, others skipped
    assert pattern(full).count("K") == len(range(0, 70, keyint))  # open GOPs (x265) included
    assert full_src.stats.dropped == key_src.stats.dropped == 0 and full_src.stats.missing == 0
    assert key_src._cap.skipped == 70 - pattern(full).count("K") and key_src._cap.decoded == pattern(full).count("K")
    for f, k in zip(full, keys, strict=True):
        if k.key:
            np.testing.assert_array_equal(k.decode(), f.decode())  # bit-identical to full decoding
    with pytest.raises(FrameError, match="frame 1: not decoded"):
        keys[1].decode()


def test_pyav_bgr_is_opencv_bgr_up_to_colour_conversion_rounding(tmp_path):
    path = write(tmp_path / "a.mp4", n=20)
    _src, full = read(path)
    cv_frames, _ = opencv_frames(path)
    diffs = [np.abs(f.decode().astype(int) - c.astype(int)) for f, c in zip(full, cv_frames, strict=True)]
    # the same FFmpeg decode; only the YUV -> BGR conversion differs (swscale flags): a level or two
    assert max(d.max() for d in diffs) <= 4 and np.mean([d.mean() for d in diffs]) < 1.0


def _cut(src_path, dst_path, first_packet, fmt="matroska", last_packet=None):
    """Remux the packets [first_packet, last_packet) of a file (decode order): a stream that starts mid-GOP."""
    with av.open(str(src_path)) as inp, av.open(str(dst_path), "w", format=fmt) as out:
        ins = inp.streams.video[0]
        outs = out.add_stream_from_template(ins)
        packets = [p for p in inp.demux(ins) if p.size]
        for p in packets[first_packet:last_packet]:
            p.stream = outs
            out.mux(p)
    return dst_path


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_a_stream_starting_mid_gop_starts_at_its_first_keyframe_in_every_mode(tmp_path, codec):
    whole = write(tmp_path / "whole.mkv", codec=codec, n=64, fmt="matroska")
    _src, reference = read(whole)
    cut = _cut(whole, tmp_path / "cut.mkv", 5)  # packets 5.. of the first GOP reference frame 0: undecodable
    full_src, full = read(cut)
    key_src, keys = read(cut, "keyframes")
    cv_frames, _ = opencv_frames(cut)
    assert full[0].key and len(full) == len(keys) == len(cv_frames) == 48  # frames 16.. of the whole file
    assert full_src.keyframe_interval == 16
    assert pattern(full).replace(".", "s") == pattern(keys)
    assert full_src.stats.dropped == key_src.stats.dropped == 11  # the 11 frames of the first GOP still there
    for f, r in zip(full, reference[16:], strict=True):
        np.testing.assert_array_equal(f.decode(), r.decode())
    for k, r in zip(keys, reference[16:], strict=True):
        if k.key:
            np.testing.assert_array_equal(k.decode(), r.decode())


def test_a_truncated_file_ends_and_counts_what_is_missing(tmp_path):
    path = write(tmp_path / "a.mkv", n=64, fmt="matroska")
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    full_src, full = read(cut)
    key_src, keys = read(cut, "keyframes")
    assert 0 < len(full) < 64 and full_src.stats.ended and full_src.stats.expected == 64
    assert full_src.stats.missing == key_src.stats.missing == 64 - len(full)  # as OpenCV counts them
    assert len(keys) == len(full) == len(opencv_frames(cut)[0]) and pattern(full).replace(".", "s") == pattern(keys)
    _whole_src, whole = read(path)
    for f, w in zip(full, whole[:len(full)], strict=True):
        np.testing.assert_array_equal(f.decode(), w.decode())


def test_a_broken_stream_does_not_hang_and_counts_dropped_frames(tmp_path):
    path = write(tmp_path / "a.ts", n=64, fmt="mpegts")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    start = len(data) // 3
    data[start:start + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()  # garbage mid-stream
    bad = tmp_path / "bad.ts"
    bad.write_bytes(bytes(data))
    result = {}

    def go():
        result["full"] = read(bad)
        result["keys"] = read(bad, "keyframes")

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "reading a broken stream hung"
    (full_src, full), (key_src, keys) = result["full"], result["keys"]
    assert 0 < len(full) < 64 and full_src.stats.ended and len(full) == len(opencv_frames(bad)[0])
    assert full_src.stats.read + full_src.stats.dropped <= 64 and len(keys) == len(full)
    assert pattern(full).replace(".", "s") == pattern(keys)
    assert key_src.stats.read + key_src.stats.dropped <= 64 and len(keys) > 0


def test_detector_results_equal_pushing_fully_decoded_frames(handmade_bundle, tmp_path, monkeypatch):
    """Snippets of 4 frames sample offset 2; keyframes forced there, so keyframes-only decoding is exact too."""
    from stp_edge.api import Detector

    path = write(tmp_path / "a.mp4", n=40, keyint=4, keys_at=range(2, 40, 4))
    with Detector.load(handmade_bundle, backend="ort-cpu", spatial_on="all") as det:
        assert det.config.snippet_len == 4 and det.config.frames_per_snippet == 1
        _src, full = read(path)
        reference = [r for f in full for r in det.push(f.decode())] + det.flush()
        converted = conversions(monkeypatch)
        for mode in ("full", "keyframes"):
            converted.clear()
            _src, frames = read(path, mode)
            got = [r for f in frames for r in det.push(f)] + det.flush()
            # only the sampled frames became BGR (and a stream's first frame: the detector converts it before the
            # stream exists)
            assert converted == [0, *range(2, 40, 4)], mode
            assert [(r.frame_start, r.frame_end) for r in got] == [(r.frame_start, r.frame_end) for r in reference]
            assert [r.score for r in got] == [r.score for r in reference]
            np.testing.assert_array_equal(np.stack([r.region_scores for r in got]),
                                          np.stack([r.region_scores for r in reference]))


def test_decoder_choice_and_its_reason(tmp_path):
    h264 = write(tmp_path / "a.mp4", n=8)
    mp4v = tmp_path / "b.mp4"
    writer = cv2.VideoWriter(str(mp4v), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for f in moving_frames(8):
        writer.write(f)
    writer.release()
    with open_source(h264) as src:
        assert src.describe_decoder() == ("decoder pyav, decode full (h264 file: FFmpeg decodes, only the frames "
                                          "used are converted to BGR)")
        assert all(isinstance(f, np.ndarray) for f in src)  # plain iteration converts every frame
    with open_source(mp4v) as src:
        assert src.decoder == "opencv" and "mpeg4 file" in src.describe_decoder()
    irregular = write(tmp_path / "c.mp4", n=40, keyint=16, keys_at=(5,))  # keyframes at 0, 5, 21, 37
    with open_source(irregular) as src:
        assert src.keyframe_interval is None
    with open_source(h264, decoder="opencv") as src:
        assert src.describe_decoder() == "decoder opencv (asked for)"
    with pytest.raises(UsageError, match="needs the PyAV decoder"):
        open_source(mp4v, decode="keyframes")
    with pytest.raises(UsageError, match="decoder must be one of"):
        open_source(h264, decoder="gstreamer")
    with pytest.raises(VideoError, match="camera indices are read through OpenCV"):
        open_source(0, decoder="pyav")
    with open_source(h264, decode="keyframes") as src, pytest.raises(UsageError, match="lazy=True"):
        list(src)
    not_video = tmp_path / "x.mp4"
    not_video.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError, match="with PyAV"):
        open_source(not_video, decoder="pyav")


# --- a live stream read through PyAV: the same reconnects and gaps as OpenCV's --------------------------------
@pytest.fixture
def live_server(tmp_path):
    live = pytest.importorskip("test_live_sources")
    if live.FFMPEG is None:
        pytest.skip("ffmpeg is not installed: no server for live streams")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), live.FPS, (64, 48))
    for f in moving_frames(2 * live.FPS):
        writer.write(f)
    writer.release()
    srv = live.StreamServer(path, free_port(), tmp_path / "ffmpeg.log")
    srv.start()
    yield srv, live
    srv.kill()


def test_a_live_stream_read_by_pyav_reconnects_after_a_kill_and_a_stall(live_server):
    from stp_edge.video import Backoff

    srv, live = live_server
    policy = Backoff(initial_s=0.1, factor=2.0, max_delay_s=0.4, max_total_s=15)
    with open_source(srv.url, decoder="pyav", reconnect=policy, timeout_ms=1000) as src:
        assert src.describe_decoder() == "decoder pyav, decode full (asked for)"
        restart: list = []

        def stall():
            srv.freeze()  # no data, the connection open: PyAV's read timeout must end the read
            restart.append(live._Restart(srv, 2.0))

        frames, gaps, elapsed = live._read_through_outage(src, stall)
    restart[0].check()
    assert len(gaps) == 1 and src.stats.gaps == [gaps[0][1]] and not src.stats.lost
    assert gaps[0][1].lost_s > 1.0 and elapsed < 15
    assert all(isinstance(f, np.ndarray) and f.shape == (48, 64, 3) for f in frames)


def test_without_pyav_auto_reads_through_opencv_and_pyav_names_the_extra(tmp_path, monkeypatch):
    import sys

    from stp_edge._deps import MissingDependencyError

    path = write(tmp_path / "a.mp4", n=8)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with open_source(path) as src:
        assert src.decoder == "opencv" and "pip install 'stp-edge[h264]'" in src.describe_decoder()
        assert len(list(src)) == 8
    with pytest.raises(MissingDependencyError, match=r"stp-edge\[h264\]"):
        open_source(path, decoder="pyav")


@pytest.mark.parametrize("n", [40, 42])  # whole snippets, and a partial one at the end
def test_keyframe_sampling_gives_the_same_results_decoding_keyframes_only(handmade_bundle, tmp_path, n):
    """With keyframe-aligned sampling (the Detector's), decoding keyframes only changes no result."""
    import inspect

    from stp_edge.api import Detector

    if "sampling" not in inspect.signature(Detector.load).parameters:
        pytest.skip("this Detector has no keyframe-aligned sampling")
    path = write(tmp_path / "a.mp4", n=n, keyint=4)
    results = {}
    for mode in ("full", "keyframes"):
        with Detector.load(handmade_bundle, backend="ort-cpu", sampling="auto") as det, \
                open_source(path, decode=mode) as src:
            assert det.use_source(0, src)[0] == "keyframe" and src.keyframe_interval == 4
            out = [r for f, _gap in src.frames_with_gaps(lazy=True) for r in det.push(f)] + det.flush()
            results[mode] = [(r.frame_start, r.frame_end, r.score, r.snippet) for r in out]
        assert src.stats.read == n and src.stats.dropped == 0
    assert len(results["full"]) == -(-n // 4) and results["keyframes"] == results["full"]


# --- nonref: non-reference frames that are not sampled are never decoded ------------------------------------------
def read_nonref(path, snippet_len=16, offsets=(8,)):
    """Frames of decode="nonref", told the sampling (as a detector tells its source) once the source is open."""
    with open_source(path, decode="nonref") as src:
        src._cap.set_sampling(snippet_len, offsets)
        frames = [f for f, _gap in src.frames_with_gaps(lazy=True)]
    return src, frames


def nonref_positions(path):
    """Display positions of the non-reference frames, from the NAL headers of each packet (an independent parse)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec, extradata = stream.codec_context.name, stream.codec_context.extradata
        packets = [(p.pts, bytes(p)) for p in container.demux(stream) if p.size]
    avcc = extradata is not None and extradata[0] == 1
    size = ((extradata[4] & 3) + 1 if codec == "h264" else (extradata[21] & 3) + 1) if avcc else None
    nonref = set()
    for rank, (_pts, data) in enumerate(sorted(packets, key=lambda p: p[0])):
        units, i = [], 0
        if size:
            while i < len(data):
                n = int.from_bytes(data[i:i + size], "big")
                units.append(data[i + size:i + size + n])
                i += size + n
        else:
            units = [u for u in data.split(b"\x00\x00\x01")[1:] if u]
        if codec == "h264":
            slices = [u[0] for u in units if u[0] & 0x1F in (1, 5)]
            ref = any(h >> 5 & 3 for h in slices)
        else:
            slices = [u[0] >> 1 & 0x3F for u in units if u[0] >> 1 & 0x3F < 32]
            ref = any(t not in (0, 2, 4, 6, 8) for t in slices)
        if slices and not ref:
            nonref.add(rank)
    return nonref


def skipped_at(frames):
    return {f.index for f in frames if isinstance(f, SkippedFrame)}


@pytest.mark.parametrize(("codec", "params", "fmt"), [
    ("libx264", "b-pyramid=none", None),  # every B-frame is a non-reference frame
    ("libx264", "b-pyramid=normal", "mpegts"),  # some B-frames are references; Annex B start codes
    ("libx264", "b-pyramid=none", "matroska"),
    ("libx265", "b-pyramid=0", None),
    ("libx265", "", "mpegts"),
])
def test_nonref_decoding_skips_only_unsampled_non_reference_frames_and_changes_nothing(tmp_path, codec, params,
                                                                                     fmt):
    path = write(tmp_path / "a.video", n=70, codec=codec, params=params, fmt=fmt or "mp4")
    full_src, full = read(path)
    src, frames = read_nonref(path)
    cap = src._cap
    assert src.describe_decoder().startswith("decoder pyav, decode nonref (")
    assert [f.index for f in frames] == [f.index for f in full] == list(range(70))
    assert src.stats.read == full_src.stats.read == 70 and src.stats.dropped == full_src.stats.dropped == 0
    skipped = skipped_at(frames)
    candidates = {i for i in nonref_positions(path) if i % 16 != 8}  # non-reference, not sampled
    assert skipped and skipped <= candidates and len(skipped) >= len(candidates) // 2
    assert cap.skipped_nonref == cap.skipped == len(skipped) and cap.decoded == 70 - len(skipped)
    assert cap.nonref_stopped is None and cap.nonref_misses == 0
    assert all(f.reason == NONREF_REASON for f in frames if isinstance(f, SkippedFrame))
    for f, r in zip(frames, full, strict=True):
        if not isinstance(f, SkippedFrame):
            assert f.key == r.key
            np.testing.assert_array_equal(f.decode(), r.decode())  # every sampled frame among them
    with pytest.raises(FrameError, match="non-reference frame, not sampled"):
        frames[min(skipped)].decode()


def test_b_pyramid_references_are_decoded(tmp_path):
    """With b-pyramid, the middle B-frame of each run is a reference: fewer frames can be skipped."""
    flat = write(tmp_path / "flat.mp4", params="b-pyramid=none", bframes=3)
    pyramid = write(tmp_path / "pyramid.mp4", params="b-pyramid=normal", bframes=3)
    assert nonref_positions(pyramid) < set(range(70)) and len(nonref_positions(pyramid)) < len(nonref_positions(flat))
    for path in (flat, pyramid):
        _src, frames = read_nonref(path)
        assert skipped_at(frames) <= nonref_positions(path)
    assert 0 < len(skipped_at(read_nonref(pyramid)[1])) < len(skipped_at(read_nonref(flat)[1]))


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_nonref_decoding_of_a_stream_without_b_frames_skips_nothing(tmp_path, codec):
    path = write(tmp_path / "a.mp4", codec=codec, bframes=0)
    src, frames = read_nonref(path)
    assert len(frames) == 70 and not skipped_at(frames) and src._cap.skipped_nonref == 0


def test_nonref_decoding_untold_which_frames_are_sampled_decodes_everything(tmp_path):
    path = write(tmp_path / "a.mp4", params="b-pyramid=none")
    with open_source(path, decode="nonref") as src:
        frames = list(src)  # every frame converted to BGR: nothing may be skipped
    _src, full = read(path)
    assert len(frames) == 70 and src._cap.skipped_nonref == 0
    np.testing.assert_array_equal(frames[5], full[5].decode())


@pytest.mark.parametrize(("snippet_len", "offsets"), [(16, (8,)), (16, (2, 6, 10, 14)), (4, (2,))])
def test_nonref_decoding_never_skips_a_sampled_position(tmp_path, snippet_len, offsets):
    path = write(tmp_path / "a.ts", params="b-pyramid=none", fmt="mpegts")
    _src, frames = read_nonref(path, snippet_len, offsets)
    skipped = skipped_at(frames)
    assert skipped and all(i % snippet_len not in offsets for i in skipped)


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_nonref_decoding_of_a_stream_starting_mid_gop(tmp_path, codec):
    whole = write(tmp_path / "whole.mkv", codec=codec, n=64, fmt="matroska", params="b-pyramid=none")
    cut = _cut(whole, tmp_path / "cut.mkv", 5)
    full_src, full = read(cut)
    src, frames = read_nonref(cut)
    assert len(frames) == len(full) == 48 and [f.index for f in frames] == [f.index for f in full]
    assert src.stats.dropped == full_src.stats.dropped == 11 and skipped_at(frames)
    assert all(i % 16 != 8 for i in skipped_at(frames)) and src._cap.nonref_misses == 0
    for f, r in zip(frames, full, strict=True):
        if not isinstance(f, SkippedFrame):
            np.testing.assert_array_equal(f.decode(), r.decode())


@pytest.mark.parametrize(("codec", "fmt"), [("libx264", "matroska"), ("libx265", "mpegts")])
def test_nonref_decoding_of_a_truncated_file_gives_the_frames_of_full_decoding(tmp_path, codec, fmt):
    path = write(tmp_path / "a.video", n=64, codec=codec, fmt=fmt, params="b-pyramid=none")
    data = path.read_bytes()
    for share in (0.45, 0.6, 0.8):
        cut = tmp_path / f"cut{share}.video"
        cut.write_bytes(data[: int(len(data) * share)])
        result: dict = {}
        worker = threading.Thread(target=lambda c=cut, out=result: out.update(full=read(c), nonref=read_nonref(c)),
                                  daemon=True)
        worker.start()
        worker.join(60)
        assert not worker.is_alive(), "reading a truncated file hung"
        (full_src, full), (src, frames) = result["full"], result["nonref"]
        assert 0 < len(frames) == len(full) < 64 and src.stats.ended
        assert [f.index for f in frames] == [f.index for f in full] and src.stats.dropped == full_src.stats.dropped
        assert skipped_at(frames) and all(i % 16 != 8 for i in skipped_at(frames))
        for f, r in zip(frames, full, strict=True):
            if not isinstance(f, SkippedFrame):
                np.testing.assert_array_equal(f.decode(), r.decode())


def _avcc(*units):
    return b"".join(len(u).to_bytes(4, "big") + u for u in units)


def test_packet_is_nonref_reads_the_nal_headers():
    b_slice, p_slice = b"\x01\x9e\x41\x79", b"\x41\x9a\x22\x6c"  # nal_ref_idc 0 / 2, type 1
    sei = b"\x06\x05\x02\xaa\xbb\x80"  # user data unregistered (5), 2 bytes
    recovery = b"\x06\x06\x01\x84\x80"  # recovery point (6)
    sps = b"\x67\x64\x00\x0a"
    assert packet_is_nonref("h264", _avcc(b_slice), 4)
    assert packet_is_nonref("h264", _avcc(b"\x09\xf0", sei, b_slice, b_slice), 4)  # AUD, SEI, two slices
    assert packet_is_nonref("h264", b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01" + b_slice, None)  # Annex B
    assert not packet_is_nonref("h264", _avcc(b_slice, p_slice), 4)  # one reference slice: a reference
    assert not packet_is_nonref("h264", _avcc(recovery, b_slice), 4)
    assert not packet_is_nonref("h264", _avcc(sps, b_slice), 4)  # parameter sets must reach the decoder
    assert not packet_is_nonref("h264", _avcc(sei), 4)  # no slice
    assert not packet_is_nonref("h264", _avcc(b_slice)[:-1], 4)  # malformed
    assert not packet_is_nonref("h264", _avcc(b_slice), None)  # no start code
    assert not packet_is_nonref("mpeg4", b"\x00\x00\x01\xb6", None)  # other codecs: always decoded
    trail_n, trail_r, rasl_n = b"\x00\x01\xd0", b"\x02\x01\xd0", b"\x10\x01\xd0"
    assert packet_is_nonref("hevc", _avcc(trail_n), 4, hevc_top_tid=0)
    assert not packet_is_nonref("hevc", _avcc(trail_n), 4, hevc_top_tid=1)  # a higher sub-layer may reference it
    assert not packet_is_nonref("hevc", _avcc(trail_n), 4)  # temporal layers unknown
    assert not packet_is_nonref("hevc", _avcc(trail_r), 4, hevc_top_tid=0)
    assert not packet_is_nonref("hevc", _avcc(rasl_n), 4, hevc_top_tid=0)  # the first CRA's: FFmpeg drops them
    assert packet_is_nonref("hevc", _avcc(rasl_n), 4, hevc_top_tid=0, rasl_decodable=True)
    assert not packet_is_nonref("hevc", _avcc(b"\x14\x01\xd0"), 4, hevc_top_tid=0)  # RSV_VCL_N10: FFmpeg ignores it


@pytest.mark.parametrize("n", [40, 42])  # whole snippets, and a partial one at the end (its last frame sampled)
def test_detector_results_are_identical_decoding_non_reference_frames_only_where_sampled(handmade_bundle,
                                                                                        tmp_path, monkeypatch, n):
    """Snippets of 4 frames sample offset 2; a B-frame clip (no b-pyramid): results as with full decoding."""
    from stp_edge.api import Detector
    from stp_edge.pipeline.snippets import sample_offsets

    path = write(tmp_path / "a.mp4", n=n, keyint=16, bframes=3, params="b-pyramid=none")
    converted = conversions(monkeypatch)
    results = {}
    for mode in ("full", "nonref"):
        converted.clear()
        with Detector.load(handmade_bundle, backend="ort-cpu", spatial_on="all") as det, \
                open_source(path, decode=mode) as src:
            c = det.config
            assert c.snippet_len == 4 and det.use_source(0, src)[0] == "center"
            if mode == "nonref":
                src._cap.set_sampling(c.snippet_len, sample_offsets(c.snippet_len, c.frames_per_snippet))
            frames = [f for f, _gap in src.frames_with_gaps(lazy=True)]
            out = [r for f in frames for r in det.push(f)] + det.flush()
        results[mode] = [(r.frame_start, r.frame_end, r.sampled, r.score, r.region_scores.tobytes()) for r in out]
        # only the sampled frames became BGR (the first frame too: the detector converts it before the stream
        # exists), the last frame of a partial snippet that ends before its offset 2 included
        assert converted == [0, *range(2, n, 4)] + ([n - 1] if n % 4 and n % 4 <= 2 else []), mode
        if mode == "nonref":
            skipped = skipped_at(frames)
            assert src._cap.skipped_nonref == len(skipped) > n // 4 and all(i % 4 != 2 for i in skipped)
    assert len(results["full"]) == -(-n // 4) and results["nonref"] == results["full"]


@pytest.mark.skipif(not hasattr(__import__("stp_edge.video").video.VideoSource, "sample_only"),
                    reason="VideoSource.sample_only (the detector telling a source what it samples) is not wired")
def test_run_video_tells_a_nonref_source_what_it_samples(handmade_bundle, tmp_path):
    """`Detector.use_source` gives the source its sampling: results as with full decoding, frames skipped."""
    from stp_edge.run import run_video

    path = write(tmp_path / "a.mp4", n=42, keyint=16, bframes=3, params="b-pyramid=none")
    results, sources = {}, {}
    for mode in ("full", "nonref"):
        sources[mode] = open_source(path, decode=mode)
        out = run_video([sources[mode]], bundle=handmade_bundle, backend="ort-cpu", spatial_on="all")
        results[mode] = [(r.frame_start, r.frame_end, r.sampled, r.score) for r in out]
    assert sources["nonref"]._cap.skipped_nonref > 10 and sources["full"]._cap.skipped == 0
    assert len(results["full"]) == 11 and results["nonref"] == results["full"]
    with open_source(path, decode="nonref") as src:
        src.sample_only(4, (2,))
        assert len(list(src)) == 42 and src._cap.skipped_nonref == 0  # every frame converted: nothing skipped


def test_keyframe_sampling_and_its_center_fallback_are_exact_decoding_non_reference_frames_only(handmade_bundle,
                                                                                                tmp_path):
    """Keyframes are never skipped, nor the center frames a snippet without a keyframe falls back to."""
    from stp_edge.api import Detector

    path = write(tmp_path / "a.mp4", n=42, keyint=6, bframes=3, params="b-pyramid=none")  # not every snippet
    results = {}
    for mode in ("full", "nonref"):
        with Detector.load(handmade_bundle, backend="ort-cpu", sampling="keyframe") as det, \
                open_source(path, decode=mode) as src:
            det.use_source(0, src)
            src._cap.set_sampling(4, (2,))
            out = [r for f, _gap in src.frames_with_gaps(lazy=True) for r in det.push(f)] + det.flush()
            results[mode] = [(r.frame_start, r.sampled, r.score) for r in out]
            fallbacks = det.sampling_fallbacks.get(0, 0)
        assert fallbacks > 0 and len(out) == 11
    assert src._cap.skipped_nonref > 0 and results["nonref"] == results["full"]


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_nonref_decoding_of_a_broken_stream_does_not_hang_and_stops_skipping(tmp_path, codec):
    """Garbage mid-stream: the demuxer flags the packet corrupt (or a frame goes missing): skipping stops there."""
    path = write(tmp_path / "a.ts", n=64, codec=codec, fmt="mpegts", params="b-pyramid=none")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    start = len(data) // 3
    data[start:start + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.ts"
    bad.write_bytes(bytes(data))
    result = {}
    worker = threading.Thread(target=lambda: result.update(full=read(bad), nonref=read_nonref(bad)), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "reading a broken stream hung"
    (_full_src, full), (src, frames) = result["full"], result["nonref"]
    assert src.stats.ended and 0 < len(full) <= len(frames) < 64 and src._cap.nonref_stopped is not None
    last = max(skipped_at(frames))
    assert all(i % 16 != 8 for i in skipped_at(frames)) and last < len(frames) // 2 + 16  # none after the damage


def test_run_cli_takes_the_decoder_and_decode_mode_and_nonref_changes_no_result(tmp_path, handmade_bundle, capsys):
    import json

    from stp_edge import cli

    clip = write(tmp_path / "b.mp4", n=80, bframes=3)
    lines = {}
    for mode in ("full", "nonref"):
        out = tmp_path / f"{mode}.jsonl"
        assert cli.main(["run", str(handmade_bundle), str(clip), "--decoder", "pyav", "--decode", mode,
                         "--backend", "ort-cpu", "--jsonl", str(out)]) == 0
        said = capsys.readouterr().out
        assert f"stream 0: decoder pyav, decode {mode} (asked for)" in said
        lines[mode] = [json.loads(x) for x in out.read_text().splitlines()]
    scores = {m: [(r["frame_start"], r["score"], r["class_probs"]) for r in v if r["schema"] == "stp-edge.snippet"]
              for m, v in lines.items()}
    assert len(scores["full"]) == 80 // 4 and scores["nonref"] == scores["full"]  # snippets of 4 frames


def test_run_cli_refuses_a_decode_mode_opencv_cannot_give(tmp_path, handmade_bundle, capsys):
    from stp_edge import cli

    clip = write(tmp_path / "b.mp4", n=20)
    assert cli.main(["run", str(handmade_bundle), str(clip), "--decoder", "opencv", "--decode", "keyframes"]) == 2
    assert "decode='keyframes' needs the PyAV decoder, but OpenCV reads this source (asked for)" in \
        capsys.readouterr().err


def test_cli_decoder_choices_are_the_librarys():
    from stp_edge import cli
    from stp_edge.av_source import DECODE_MODES
    from stp_edge.bench.capacity import READ_MODES
    from stp_edge.video import DECODERS

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    opts = {a.dest: a for a in sub["run"]._actions}
    assert set(opts["decoder"].choices) == set(DECODERS) and set(opts["decode"].choices) == set(DECODE_MODES)
    assert set(next(a for a in sub["bench"]._actions if a.dest == "read").choices) == set(READ_MODES)


def test_run_video_leaves_the_model_every_core_when_its_cameras_decode_keyframes_only(tmp_path, handmade_bundle):
    from stp_edge.run import available_cores, plan_threads, run_video

    clips = [str(write(tmp_path / f"k{i}.mp4", n=32, keyint=4, bframes=0, seed=i)) for i in range(3)]
    plans = {}
    for mode in ("keyframes", "full"):
        res = run_video(clips, bundle=handmade_bundle, backend="ort-cpu", sampling="auto", keep=False,
                        source_kwargs={"decoder": "pyav", "decode": mode})
        assert res.snippets == 3 * 32 // 4
        plans[mode] = res.threads
    cores = available_cores()
    assert plans["keyframes"] == plan_threads(cores, 3, light=3) and plans["keyframes"].intra_op == cores
    assert plans["full"] == plan_threads(cores, 3)


def test_open_sources_takes_options_per_source_and_keeps_its_rules(tmp_path):
    from stp_edge.run import open_sources

    clip = write(tmp_path / "b.mp4", n=20)
    a, b = open_sources([str(clip), str(clip)], options=[{"decoder": "pyav", "decode": "nonref"}, {}])
    try:
        assert (a.decoder, a.decode_mode, b.decode_mode) == ("pyav", "nonref", "full")
    finally:
        a.close(), b.close()
    with pytest.raises(UsageError, match="one mapping per source, got 1 for 2 sources"):
        open_sources([str(clip), str(clip)], options=[{}])
    with pytest.raises(UsageError, match="needs the PyAV decoder"):  # the second fails: the first is closed again
        open_sources([str(clip), str(clip)], options=[{}, {"decoder": "opencv", "decode": "keyframes"}])
