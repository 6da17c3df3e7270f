"""Event clips and snapshots on real files and a real live stream.

Clips are checked by opening the written MP4 with PyAV and decoding every frame: its codec, frame count,
duration and first frame (a remux is bit-exact, so its first frame equals the source's keyframe). The live
recorder reads an H.264 stream that ffmpeg serves over HTTP on 127.0.0.1 (test_live_sources.StreamServer).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import write_avi
from test_live_sources import FFMPEG, StreamServer

from stp_edge.apps.clips import ClipError, ClipRecorder, clip_from_file
from stp_edge.apps.snapshots import SnapshotKeeper, write_snapshot
from stp_edge.bench.capacity import free_port
from stp_edge.errors import UsageError
from stp_edge.outputs import OutputError, partial_path
from stp_edge.video import Backoff

av = pytest.importorskip("av")

FPS, GOP, SECONDS = 25, 25, 10
GOP_S, FRAME_S = GOP / FPS, 1 / FPS


def _h264_frames(n: int, w: int = 160, h: int = 96) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(n):
        f = np.stack([(xx * 2 + i * 3) % 256, (yy * 3) % 256, (xx + yy + i * 5) % 256], -1).astype(np.uint8)
        f[20:40, (4 * i) % (w - 20):(4 * i) % (w - 20) + 20] = 255
        frames.append(f)
    return frames


@pytest.fixture(scope="module")
def h264_mp4(tmp_path_factory) -> Path:
    """10 s of moving 160x96 H.264 at 25 fps, a keyframe every 25 frames, with B-frames (dts != pts)."""
    path = tmp_path_factory.mktemp("clips") / "source.mp4"
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
    stream.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "bf": "2", "preset": "ultrafast"}
    for f in _h264_frames(SECONDS * FPS):
        for pkt in stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
            out.mux(pkt)
    for pkt in stream.encode(None):
        out.mux(pkt)
    out.close()
    return path


@pytest.fixture(scope="module")
def source_keyframes(h264_mp4) -> dict[float, np.ndarray]:
    """The source's keyframes as decoded BGR images, by time in seconds."""
    with av.open(str(h264_mp4)) as c:
        return {round(float(f.pts * f.time_base), 3): f.to_ndarray(format="bgr24")
                for f in c.decode(video=0) if f.key_frame}


def probe(path: Path) -> dict:
    """Decode every frame of a written clip: codec, packets, frames, duration, first frame."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        packets = [p for p in c.demux(stream) if p.size]
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    pts = [f.pts for f in frames]
    return {"codec": stream.codec_context.name, "packets": len(packets), "frames": len(frames),
            "duration": float((max(pts) - min(pts)) * frames[0].time_base) + FRAME_S,
            "first_key": frames[0].key_frame, "first": frames[0].to_ndarray(format="bgr24"),
            "size": path.stat().st_size}


# --- clip_from_file --------------------------------------------------------------------------------------
def test_file_clip_is_a_remux_from_the_keyframe_before_the_pre_roll(h264_mp4, source_keyframes, tmp_path):
    out = tmp_path / "ev" / "clip.mp4"
    partial_path(out).parent.mkdir(parents=True)
    partial_path(out).write_bytes(b"left by a killed run")
    written = clip_from_file(h264_mp4, 4.3, 5.6, out, pre_s=1.0, post_s=1.0)
    assert written == out and out.is_file() and not partial_path(out).exists()
    info = probe(out)
    wanted = (5.6 - 4.3) + 1.0 + 1.0
    assert info["codec"] == "h264"
    assert wanted <= info["duration"] <= wanted + GOP_S + FRAME_S, info["duration"]
    assert info["first_key"] and info["frames"] == info["packets"]  # every packet decodes to a frame
    # bit-exact copy: its first frame is the source's keyframe at 3.0 s (the last one at or before 4.3 - 1.0)
    assert np.array_equal(info["first"], source_keyframes[3.0])
    assert info["size"] < h264_mp4.stat().st_size / 2


def test_file_clip_pre_roll_stops_at_the_start_of_the_file(h264_mp4, source_keyframes, tmp_path):
    info = probe(clip_from_file(h264_mp4, 0.4, 1.0, tmp_path / "c.mp4", pre_s=2.0, post_s=0.5))
    assert np.array_equal(info["first"], source_keyframes[0.0])
    assert 1.5 <= info["duration"] <= 1.5 + GOP_S + FRAME_S


def test_file_clip_of_mjpeg_is_transcoded_to_h264(tmp_path):
    frames = _h264_frames(SECONDS * FPS)
    src = write_avi(tmp_path / "cam.avi", frames, fps=FPS)
    out = clip_from_file(src, 4.0, 5.0, tmp_path / "c.mp4", pre_s=1.0, post_s=1.0)
    info = probe(out)
    assert info["codec"] == "h264" and info["first_key"]
    assert abs(info["frames"] - 3 * FPS) <= 1, info["frames"]  # MJPEG: every frame is a keyframe
    # the first frame is the source's at 3.0 s (frame 75), not any other: the moving square places it
    diffs = [np.abs(info["first"].astype(int) - f.astype(int)).mean() for f in frames[70:81]]
    assert int(np.argmin(diffs)) == 5 and diffs[5] < 12, diffs  # lossy twice (MJPEG, then H.264 4:2:0)
    assert not partial_path(out).exists()


@pytest.mark.parametrize(("start", "end", "pre", "words"), [
    (20.0, 21.0, 1.0, "past the end of the source"),
    (5.0, 4.0, 1.0, "before start"),
    (-1.0, 2.0, 1.0, "finite and >= 0"),
    (1.0, float("nan"), 1.0, "finite and >= 0"),
])
def test_file_clip_bad_range_names_file_and_range(h264_mp4, tmp_path, start, end, pre, words):
    out = tmp_path / "c.mp4"
    with pytest.raises(ClipError) as err:
        clip_from_file(h264_mp4, start, end, out, pre_s=pre, post_s=1.0)
    msg = str(err.value)
    assert words in msg and str(h264_mp4) in msg and f"{start}-{end} s" in msg, msg
    assert not out.exists() and not partial_path(out).exists()


def test_file_clip_unreadable_source_or_destination_leaves_nothing(h264_mp4, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video file at all" * 50)
    for src in (junk, tmp_path / "missing.mp4"):
        out = tmp_path / "c.mp4"
        with pytest.raises(ClipError, match="cannot open the source") as err:
            clip_from_file(src, 1.0, 2.0, out, pre_s=1.0, post_s=1.0)
        assert str(src) in str(err.value) and "1.0-2.0 s" in str(err.value)
        assert not out.exists() and not partial_path(out).exists()
    blocker = tmp_path / "file"
    blocker.write_text("a file where the clip's directory should be")
    with pytest.raises(ClipError, match=str(blocker)):
        clip_from_file(h264_mp4, 1.0, 2.0, blocker / "c.mp4", pre_s=1.0, post_s=1.0)


# --- ClipRecorder on a live stream -----------------------------------------------------------------------
class H264StreamServer(StreamServer):
    """test_live_sources' camera, serving the H.264 file's packets as they are (as an IP camera does)."""

    def _spawn(self) -> None:
        cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip),
               "-c:v", "copy", "-f", "mpegts", "-listen", "1", self.url]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: no server for live streams")
def test_recorder_writes_event_clips_with_pre_and_post_roll_once_complete(h264_mp4, source_keyframes, tmp_path):
    server = H264StreamServer(h264_mp4, free_port(), tmp_path / "ffmpeg.log")
    server.start()
    seen: dict = {}
    both = threading.Event()

    def on_ready(event_id: str, path: Path) -> None:
        # the file must be whole when this is called: final name, no partial, every frame decodes
        seen[event_id] = {"at": time.time(), "partial": partial_path(path).exists(), "info": probe(path)}
        if len(seen) == 2:
            both.set()

    rec = ClipRecorder(server.url, pre_s=1.0, post_s=1.0, latency_s=2.0, on_ready=on_ready, timeout_s=3.0)
    try:
        rec.start()
        deadline = time.monotonic() + 20
        while rec.buffered_s < 2.5:  # then start - pre_s falls mid-GOP
            assert time.monotonic() < deadline, f"no stream: {rec.error}; {server.log.read_text()[-500:]}"
            time.sleep(0.05)
        t0 = time.time()
        out = rec.request("ev1", t0, out_path=tmp_path / "clips" / "ev1.mp4")
        # a second event inside the first: its clip shares packets with the first's, written before it
        rec.request("ev1b", t0 + 0.5, t0 + 1.5, out_path=tmp_path / "clips" / "ev1b.mp4")
        time.sleep(2.0)
        rec.finish("ev1", t0 + 2.0)
        assert "ev1" not in seen and not out.exists()  # the post-roll has not been recorded yet
        assert both.wait(15), f"clips: {sorted(seen)}, {rec.stats.describe()}, {rec.error}"
        time.sleep(0.3)
        # nothing pending: the ring is back to pre_s + latency_s (+ the GOP that reaches back to it)
        assert rec.buffered_s <= 1.0 + 2.0 + GOP_S + 0.2, rec.buffered_s
    finally:
        stats = rec.close()
        server.kill()
    assert seen["ev1"]["at"] >= t0 + 2.0 + 1.0 and seen["ev1b"]["at"] >= t0 + 1.5 + 1.0
    for event_id, length in (("ev1", 2.0), ("ev1b", 1.0)):
        info, wanted = seen[event_id]["info"], length + 1.0 + 1.0
        assert not seen[event_id]["partial"]
        assert info["codec"] == "h264" and info["first_key"] and info["frames"] == info["packets"]
        assert wanted - 0.2 <= info["duration"] <= wanted + GOP_S + 0.2, (event_id, info["duration"])
        assert any(np.array_equal(info["first"], k) for k in source_keyframes.values())  # a real keyframe
    assert (stats.written, stats.failed, stats.short) == (2, 0, 0), stats.describe()


class MjpegStreamServer(StreamServer):
    """A cheap camera: Motion JPEG as multipart HTTP (mpjpeg), which an MP4 cannot carry as it is."""

    def _spawn(self) -> None:
        cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip),
               "-c:v", "mjpeg", "-q:v", "5", "-f", "mpjpeg", "-listen", "1", self.url]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: no server for live streams")
def test_recorder_transcodes_a_live_mjpeg_input_to_h264(h264_mp4, tmp_path):
    server = MjpegStreamServer(h264_mp4, free_port(), tmp_path / "ffmpeg.log")
    server.start()
    ready = threading.Event()
    rec = ClipRecorder(server.url, pre_s=1.0, post_s=1.0, latency_s=2.0, timeout_s=3.0,
                       on_ready=lambda e, p: ready.set())
    try:
        rec.start()
        deadline = time.monotonic() + 20
        while rec.buffered_s < 2.5:
            assert time.monotonic() < deadline, f"no stream: {rec.error}; {server.log.read_text()[-500:]}"
            time.sleep(0.05)
        t0 = time.time()
        out = rec.request("ev5", t0, t0 + 1.0, out_path=tmp_path / "ev5.mp4")
        assert ready.wait(15), rec.stats.describe()
    finally:
        stats = rec.close()
        server.kill()
    info = probe(out)
    assert info["codec"] == "h264" and info["frames"] == info["packets"] and stats.written == 1
    # every MJPEG frame is a keyframe: the clip is the range itself, to a frame
    assert abs(info["duration"] - 3.0) <= 2 * FRAME_S + 0.05, info["duration"]


def test_recorder_without_input_reports_the_clip_failed(tmp_path):
    failed: list = []
    done = threading.Event()
    port = free_port()
    url = f"http://cam:secret@127.0.0.1:{port}/none.ts"
    rec = ClipRecorder(url, pre_s=1.0, post_s=0.5, on_failed=lambda e, why: (failed.append((e, why)), done.set()),
                       reconnect=Backoff(initial_s=0.1, max_attempts=2, max_total_s=None), timeout_s=1.0)
    rec.start()
    now = time.time()
    out = rec.request("ev2", now - 1.0, now - 0.9, out_path=tmp_path / "ev2.mp4")
    assert done.wait(10)
    stats = rec.close()
    why = failed[0][1]
    assert failed[0][0] == "ev2" and "no video was recorded" in why, failed
    assert f"http://cam:***@127.0.0.1:{port}/none.ts" in why and "secret" not in why  # credentials masked
    assert not out.exists() and not partial_path(out).exists()
    assert stats.failed == 1 and stats.written == 0 and stats.connects == 0
    rec.request("ev4", now, now + 1, out_path=tmp_path / "ev4.mp4")  # after the end: refused at once
    assert failed[-1][0] == "ev4" and "has stopped" in failed[-1][1] and rec.stats.failed == 2


# --- snapshots -------------------------------------------------------------------------------------------
def _scene(w: int = 1280, h: int = 720) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 200, yy % 150 + 50, (xx + yy) % 120], -1).astype(np.uint8)


def test_snapshot_is_a_small_jpeg_with_boxes_written_atomically(tmp_path):
    frame = _scene()
    box = {"x1": 400, "y1": 200, "x2": 800, "y2": 500, "score": 0.9, "class_name": "fighting",
           "norm": [400 / 1280, 200 / 720, 800 / 1280, 500 / 720]}
    plain = cv2.imread(str(write_snapshot(frame, tmp_path / "plain.jpg")))
    path = write_snapshot(frame, tmp_path / "snaps" / "ev.jpg", boxes=[box, (100, 100, 300, 300)])
    img = cv2.imread(str(path))
    assert img.shape == (360, 640, 3) and plain.shape == img.shape
    # box edges at half scale: (200, 100)-(399, 249) and (50, 50)-(149, 149), red where the plain one is not
    for y, x in ((175, 200), (249, 300), (100, 50), (149, 100)):
        b, g, r = img[y, x].astype(int)
        assert r > 150 and g < 90 and b < 90, (y, x, img[y, x], plain[y, x])
    assert np.abs(img.astype(int) - plain.astype(int)).max() > 100
    assert path.stat().st_size < 100_000
    inode = path.stat().st_ino
    write_snapshot(frame[::2, ::2], path, max_width=320)  # replaced by rename, not rewritten in place
    assert path.stat().st_ino != inode and cv2.imread(str(path)).shape == (180, 320, 3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ev.jpg"]  # no temporary left


def test_snapshot_failure_leaves_no_temporary(tmp_path):
    (tmp_path / "taken.jpg").mkdir()
    with pytest.raises(OutputError, match="taken.jpg"):
        write_snapshot(_scene(320, 240), tmp_path / "taken.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.jpg"]
    with pytest.raises(UsageError, match="uint8"):
        write_snapshot(np.zeros((10, 10), np.float32), tmp_path / "x.jpg")


def test_snapshot_keeper_keeps_recent_snippets_downscaled(tmp_path):
    keeper = SnapshotKeeper(keep=3, max_width=320)
    frames = [_scene() // (i + 1) for i in range(5)]
    for i, f in enumerate(frames):
        keeper.add(i, f)
    expected = cv2.resize(frames[4], (320, 180), interpolation=cv2.INTER_AREA)
    frames[4][:] = 0  # the keeper holds its own copy
    assert len(keeper) == 3 and keeper.get(0) is None and keeper.get(1) is None
    kept = keeper.get(4)
    assert kept.shape == (180, 320, 3) and kept.max() > 0 and np.array_equal(kept, expected)
    assert not np.array_equal(keeper.get(3), kept)
    assert keeper.frame_size(4) == (1280, 720)
    # a pixel box in full-frame coordinates lands where it belongs on the downscaled frame
    path = write_snapshot(kept, tmp_path / "s.jpg", boxes=[(640, 360, 1280, 720)],
                          frame_size=keeper.frame_size(4))
    img = cv2.imread(str(path))
    assert img[90, 200, 2] > 150 and img[90, 200, 1] < 90  # its top edge: y 90, x 160..319


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed: no server for live streams")
def test_recorder_reconnects_and_an_event_across_the_outage_gets_both_sides(h264_mp4, tmp_path):
    server = H264StreamServer(h264_mp4, free_port(), tmp_path / "ffmpeg.log")
    server.start()
    got: dict = {}
    ready = threading.Event()
    rec = ClipRecorder(server.url, pre_s=0.5, post_s=0.5, latency_s=1.0, timeout_s=2.0,
                       reconnect=Backoff(initial_s=0.2, max_delay_s=0.4, max_total_s=None),
                       on_ready=lambda e, p: (got.update(info=probe(p)), ready.set()))
    try:
        rec.start()
        deadline = time.monotonic() + 20
        while rec.buffered_s < 1.0:
            assert time.monotonic() < deadline, f"no stream: {rec.error}"
            time.sleep(0.05)
        t0 = time.time()
        rec.request("ev3", t0, out_path=tmp_path / "ev3.mp4")
        time.sleep(1.0)
        server.kill()  # the camera drops mid-event
        time.sleep(1.0)
        server.start()
        while rec.stats.connects < 2:
            assert time.monotonic() < deadline, f"no reconnect: {rec.error}, {rec.stats.describe()}"
            time.sleep(0.05)
        time.sleep(1.5)
        t_end = time.time()
        rec.finish("ev3", t_end)
        assert ready.wait(15), rec.stats.describe()
    finally:
        stats = rec.close()
        server.kill()
    assert stats.outages >= 1 and stats.connects >= 2 and stats.written == 1, stats.describe()
    info = got["info"]
    assert info["first_key"] and info["frames"] == info["packets"]
    # packets from both connections, placed at their wall-clock times (the outage is a gap, not a cut)
    span = t_end + 0.5 - (t0 - 0.5)
    assert info["frames"] >= 0.9 * span * FPS - 1.5 * FPS, info["frames"]  # all but the outage (<= 1.5 s)
    # a restarted server sends a first burst (ffmpeg's initial read burst), placed before its arrival
    assert span - 0.6 <= info["duration"] <= span + GOP_S + 0.8, (info["duration"], span)
