from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stp_edge.sources import expand_sources
from stp_edge.video import Backoff, VideoError, VideoSource, open_source, parse_source


def _write_video(path, frames, fps=10.0):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()


def test_parse_source():
    assert parse_source(0) == ("camera", 0)
    assert parse_source("2") == ("camera", 2)
    assert parse_source("rtsp://cam.local/stream") == ("url", "rtsp://cam.local/stream")
    assert parse_source("http://x/y.mjpg")[0] == "url"
    assert parse_source("clip.mp4") == ("file", "clip.mp4")
    with pytest.raises(VideoError):
        parse_source(True)


def _smooth_frames(n, height=48, width=64):
    """Gradients with a moving square: smooth enough for MJPG to keep them close."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(n):
        f = np.stack([xx * 3, yy * 4, (xx + yy + 10 * i) % 256], axis=-1).astype(np.uint8)
        f[10:26, 4 * i:4 * i + 16] = 255
        frames.append(f)
    return frames


def test_reads_written_video(tmp_path):
    frames = _smooth_frames(12)
    path = tmp_path / "clip.avi"
    _write_video(path, frames)
    with open_source(path) as src:
        assert src.fps == pytest.approx(10.0)
        assert src.frame_count == 12
        got = list(src)
    assert len(got) == 12 and src.stats.read == 12 and src.stats.dropped == 0
    assert got[0].shape == (48, 64, 3) and got[0].dtype == np.uint8
    # MJPG is lossy: frames match their source closely and differ from each other
    assert np.abs(got[5].astype(int) - frames[5]).mean() < 8
    assert np.abs(got[5].astype(int) - got[6]).mean() > 2 * np.abs(got[5].astype(int) - frames[5]).mean()


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match="video file not found: .*missing.mp4"):
        open_source(tmp_path / "missing.mp4")


def test_unreadable_file(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="noise.mp4"):
        open_source(path)


def test_missing_camera_fails_quickly():
    start = time.perf_counter()
    with pytest.raises(VideoError, match="camera index 97"):
        open_source(97)
    assert time.perf_counter() - start < 10


class _FlakyCapture:
    """Wraps a real capture; grabs listed in `fail_at` fail as a broken network/decoder would."""

    def __init__(self, cap, fail_at):
        self.cap, self.fail_at, self.calls = cap, set(fail_at), 0

    def read(self):
        self.calls += 1
        if self.calls in self.fail_at:
            return False, None
        return self.cap.read()

    def get(self, prop):
        return self.cap.get(prop)

    def release(self):
        self.cap.release()


def test_failed_grabs_mid_stream_are_dropped_not_fatal(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, _smooth_frames(12))
    with open_source(path) as src:
        src._cap = _FlakyCapture(src._cap, fail_at={3, 4, 9})  # the first frame was read when opening
        got = list(src)
    assert len(got) == 12 and src.stats.read == 12 and src.stats.dropped == 3


def test_url_that_reaches_its_announced_end_ends_normally(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, _smooth_frames(6))
    with open_source(path, max_consecutive_failures=3) as src:
        src.kind = "url"  # a finite stream (a clip over HTTP): its end is an end, not a drop to reconnect
        src._cap = _FlakyCapture(src._cap, fail_at={2})
        got = list(src)
    assert len(got) == 6 and src.stats.dropped == 1
    assert not src.stats.lost and src.stats.gaps == []


@pytest.mark.parametrize("cut", [0.5, 0.8])
def test_truncated_file_reports_expected_and_read(tmp_path, cut):
    frames = _smooth_frames(12) * 3
    path = tmp_path / "clip.avi"
    _write_video(path, frames)
    with open_source(path) as src:
        assert len(list(src)) == 36
    assert (src.stats.expected, src.stats.read, src.stats.dropped, src.stats.missing) == (36, 36, 0, 0)
    data = path.read_bytes()
    cut_path = tmp_path / "cut.avi"
    cut_path.write_bytes(data[:int(len(data) * cut)])
    start = time.perf_counter()
    with open_source(cut_path) as src:
        got = list(src)
    stats = src.stats
    assert stats.expected == 36  # the header survives the cut and still promises every frame
    assert 0 < stats.read == len(got) < 36
    assert stats.missing == 36 - stats.read - stats.dropped > 0
    assert not stats.lost and stats.gaps == []  # a file is never reconnected
    assert time.perf_counter() - start < 5
    assert np.abs(got[-1].astype(int) - frames[len(got) - 1]).mean() < 8  # what was read is the right frames


def test_backoff_delays_and_validation():
    policy = Backoff(initial_s=0.1, factor=2.0, max_delay_s=0.5)
    assert [policy.delay(k) for k in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert policy.delay(10_000) == 0.5  # no overflow on endless retries
    assert Backoff.never().max_attempts == 0
    assert Backoff().max_total_s is not None  # the default gives up eventually, so a lost camera is reported
    for bad in ({"initial_s": -1}, {"factor": 0.5}, {"max_attempts": -1}, {"max_total_s": -2}):
        with pytest.raises(ValueError, match="Backoff"):
            Backoff(**bad)


class _FakeCamera:
    """A capture that delivers `n` moving frames and then fails every grab (unplugged); or fails to open."""

    def __init__(self, n=0, opened=True):
        self.n, self.opened, self.i = n, opened, 0

    def isOpened(self):
        return self.opened

    def read(self):
        if self.i >= self.n:
            return False, None
        self.i += 1
        return True, _smooth_frames(self.i)[-1]

    def get(self, prop):
        return 0.0  # a camera announces no frame count

    def set(self, prop, value):
        return False

    def release(self):
        self.opened = False


def _fake_cameras(monkeypatch, *caps):
    """Each (re)open of a VideoSource returns the next capture; then captures that do not open."""
    queue = list(caps)
    monkeypatch.setattr(VideoSource, "_open_capture", lambda self: queue.pop(0) if queue else _FakeCamera(opened=False))


def test_camera_that_drops_reconnects_then_is_lost(monkeypatch):
    _fake_cameras(monkeypatch, _FakeCamera(5), _FakeCamera(opened=False), _FakeCamera(opened=False), _FakeCamera(4))
    policy = Backoff(initial_s=0.01, factor=2.0, max_delay_s=0.02, max_attempts=3)
    with open_source(5, reconnect=policy) as src:
        pairs = list(src.frames_with_gaps())
    gaps = [(i, g) for i, (_f, g) in enumerate(pairs) if g is not None]
    assert len(pairs) == 9 and src.stats.read == 9
    assert [(i, g.frame, g.attempts) for i, g in gaps] == [(5, 5, 3)]
    assert src.stats.gaps == [gaps[0][1]] and src.stats.gap_s == gaps[0][1].lost_s > 0
    assert src.stats.lost and src.stats.expected is None
    assert src.stats.lost_reason.startswith("camera 5 lost after frame 9: 3 reconnect attempt(s)")
    assert "cannot open camera index 5" in src.stats.lost_reason


def test_camera_without_reconnect_is_lost_at_the_first_drop(monkeypatch):
    _fake_cameras(monkeypatch, _FakeCamera(5), _FakeCamera(5))
    with open_source(0, reconnect=None) as src:
        assert len(list(src)) == 5
    assert src.stats.lost and src.stats.gaps == [] and "0 reconnect attempt(s)" in src.stats.lost_reason


def test_close_stops_a_reconnect_wait(monkeypatch):
    _fake_cameras(monkeypatch, _FakeCamera(3))
    src = open_source(0, reconnect=Backoff(initial_s=30, max_total_s=None))
    got = []
    reader = threading.Thread(target=lambda: got.extend(src), daemon=True)
    reader.start()
    time.sleep(0.3)  # the reader has read 3 frames and waits 30 s before its first attempt
    start = time.perf_counter()
    src.close()
    reader.join(timeout=5)
    assert not reader.is_alive() and time.perf_counter() - start < 2
    assert len(got) == 3 and not src.stats.lost  # closed by its owner, not lost


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_expand_sources_passes_cameras_urls_and_files(tmp_path):
    clip = _touch(tmp_path / "a.mp4")
    assert expand_sources(0) == ["0"]
    assert expand_sources("rtsp://cam/1") == ["rtsp://cam/1"]
    assert expand_sources(clip) == [clip]
    with pytest.raises(VideoError, match="video source not found: .*nope.mp4"):
        expand_sources(tmp_path / "nope.mp4")


def test_expand_sources_directory(tmp_path):
    names = ["cam10.mp4", "cam2.avi", "cam1.MKV", "notes.txt", "thumb.jpg"]
    for n in names:
        _touch(tmp_path / "cams" / n)
    _touch(tmp_path / "cams" / "sub" / "cam3.mp4")  # not recursive
    got = expand_sources(tmp_path / "cams")
    assert [Path(p).name for p in got] == ["cam1.MKV", "cam2.avi", "cam10.mp4"]  # natural order
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="directory .*empty holds no video files"):
        expand_sources(tmp_path / "empty")


def test_run_dir_and_export_calib_dir_pick_the_same_files(tmp_path):
    """One definition of a folder's videos: the files directly inside it with a video extension, natural order."""
    from stp_edge.export.quantize import calibration_videos
    from stp_edge.media_files import video_files

    names = ["cam10.mp4", "cam2.AVI", "cam1.mkv", "a.webm", "b.ts", "c.MJPEG", "notes.txt", "thumb.jpg", "x.mp4.part",
             "day1/cam3.mp4", "day1/deeper/cam4.mov", "day2/cam5.avi"]
    for n in names:
        _touch(tmp_path / "clips" / n)
    (tmp_path / "clips" / "folder.mp4").mkdir()  # a folder named like a video is not one
    root = tmp_path / "clips"
    run_picks = expand_sources(root)
    calib_picks = calibration_videos(root)
    assert run_picks == [str(p) for p in calib_picks] == [str(p) for p in video_files(root)]
    assert [Path(p).name for p in run_picks] == ["a.webm", "b.ts", "c.MJPEG", "cam1.mkv", "cam2.AVI", "cam10.mp4"]
    only_nested = tmp_path / "nested"
    _touch(only_nested / "sub" / "cam.mp4")
    with pytest.raises(VideoError, match="holds no video files .*subfolders are not searched"):
        expand_sources(only_nested)
    with pytest.raises(FileNotFoundError, match="holds no video file .*subfolders are not searched"):
        calibration_videos(only_nested)


def test_expand_sources_glob(tmp_path):
    for n in ["cam10.mp4", "cam2.mp4", "cam1.avi", "x/cam3.mp4"]:
        _touch(tmp_path / "cams" / n)
    got = expand_sources(str(tmp_path / "cams" / "*.mp4"))
    assert [Path(p).name for p in got] == ["cam2.mp4", "cam10.mp4"]
    assert len(expand_sources(str(tmp_path / "cams" / "**" / "*.mp4"))) == 3
    with pytest.raises(VideoError, match=r"glob '.*\*\.mov' matched no files"):
        expand_sources(str(tmp_path / "cams" / "*.mov"))


def test_expand_sources_list_file(tmp_path):
    a = _touch(tmp_path / "clips" / "a.mp4")
    b = _touch(tmp_path / "b.avi")
    listing = tmp_path / "clips" / "list.txt"
    listing.write_text(f"# cameras of site 3\n\n  a.mp4  \n{b}\nrtsp://10.0.0.5/stream\n  # old: x.mp4\n2\n")
    assert expand_sources(listing) == [a, b, "rtsp://10.0.0.5/stream", "2"]  # relative to the list file
    listing.write_text("a.mp4\nmissing.mp4\n# gone.mp4\n.\nother.avi\n")
    with pytest.raises(VideoError) as err:
        expand_sources(listing)
    msg = str(err.value)
    assert "list.txt: 3 missing source(s)" in msg and "\n" not in msg
    assert "line 2: missing.mp4 not found" in msg and "line 4: . is not a file" in msg
    assert "line 5: other.avi not found" in msg and "gone.mp4" not in msg
    listing.write_text("# nothing yet\n")
    with pytest.raises(VideoError, match="names no sources"):
        expand_sources(listing)


# --- VideoWriter: the one writer of video files -------------------------------------------------------------
def _noise_frames(n, height=48, width=64, seed=0):
    """Smooth frames plus noise: every frame differs, so a stuck or blank write shows."""
    rng = np.random.default_rng(seed)
    return [np.clip(f.astype(int) + rng.integers(-20, 20, f.shape), 0, 255).astype(np.uint8)
            for f in _smooth_frames(n, height, width)]


def _partials(directory):
    return sorted(p.name for p in Path(directory).iterdir() if ".partial" in p.name)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.avi"])
def test_video_writer_renames_into_place_on_close(tmp_path, name):
    from stp_edge.video import VideoWriter

    frames = _smooth_frames(8)
    path = tmp_path / "out" / name  # the directory is created
    w = VideoWriter(path, 10.0, (64, 48))
    for f in frames:
        w.write(f)
    assert w.frames_written == 8
    assert not path.exists()  # nothing under the final name until close
    (partial,) = _partials(path.parent)
    assert partial.endswith(path.suffix)  # the container is chosen by the extension, so the temp name keeps it
    w.close()
    assert path.is_file() and _partials(path.parent) == []
    w.close()  # a second close is a no-op
    with open_source(path) as src:
        got = list(src)
    assert len(got) == 8 and got[0].shape == (48, 64, 3)
    assert np.abs(got[5].astype(int) - frames[5]).mean() < 8  # the frames, not blanks
    assert np.abs(got[5].astype(int) - got[6]).mean() > 1


def test_video_writer_abort_and_exceptions_leave_the_final_name_alone(tmp_path):
    from stp_edge.video import VideoWriter

    path = tmp_path / "clip.mp4"
    w = VideoWriter(path, 10.0, (64, 48))
    for f in _noise_frames(4):
        w.write(f)
    w.abort()
    assert not path.exists() and _partials(tmp_path) == []
    with pytest.raises(VideoError, match="after abort"):
        w.write(_noise_frames(1)[0])

    def interrupted_run():
        with VideoWriter(path, 10.0, (64, 48)) as w:
            w.write(_noise_frames(1)[0])
            raise KeyboardInterrupt

    path.write_bytes(b"the previous run's file")
    with pytest.raises(KeyboardInterrupt):
        interrupted_run()
    assert path.read_bytes() == b"the previous run's file" and _partials(tmp_path) == []

    with VideoWriter(path, 10.0, (64, 48)) as w:
        for f in _noise_frames(3):
            w.write(f)
    with open_source(path) as src:
        assert src.frame_count == 3


@pytest.mark.parametrize("fps", [0, -5, float("nan"), float("inf")])
def test_video_writer_refuses_a_bad_fps(tmp_path, fps):
    from stp_edge.video import VideoWriter

    with pytest.raises(VideoError, match=rf"x\.mp4: fps must be a finite number > 0, got {fps}"):
        VideoWriter(tmp_path / "x.mp4", fps, (64, 48))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "size", "match"), [
    ("x.mp4", (1, 1), r"1x1"),
    ("x.avi", (1, 1), r"1x1"),
    ("x.mp4", (65, 48), r"65x48: .*even"),  # OpenCV writes it, but reads back 64 pixels wide
    ("x.avi", (64, 49), r"64x49: .*even"),
    ("x.avi", (4, 4), r"4x4: .*at least 8 pixels wide"),  # OpenCV's MJPEG encoder corrupts its heap there
    ("x.mp4", (0, 48), r"0x48"),
])
def test_video_writer_refuses_sizes_that_do_not_round_trip(tmp_path, name, size, match):
    from stp_edge.video import VideoWriter

    with pytest.raises(VideoError, match=match):
        VideoWriter(tmp_path / name, 10.0, size)
    assert list(tmp_path.iterdir()) == []


def test_video_writer_smallest_sizes_round_trip(tmp_path):
    from stp_edge.video import VideoWriter

    for name, (w, h) in (("tiny.mp4", (2, 2)), ("tiny.avi", (8, 2))):
        frames = [np.full((h, w, 3), 40 * k + 20, np.uint8) for k in range(3)]
        with VideoWriter(tmp_path / name, 5.0, (w, h)) as vw:
            for f in frames:
                vw.write(f)
        with open_source(tmp_path / name) as src:
            got = list(src)
        assert [g.shape for g in got] == [(h, w, 3)] * 3
        assert got[2].mean() > got[0].mean() + 40


def test_video_writer_codec_and_extension(tmp_path):
    from stp_edge.video import CODECS, VideoWriter

    assert CODECS == {"avc1": ".mp4", "mp4v": ".mp4", "MJPG": ".avi"}
    with pytest.raises(VideoError, match=r"x\.gif: .*'\.avi', '\.mp4'"):
        VideoWriter(tmp_path / "x.gif", 10.0, (64, 48))
    with pytest.raises(VideoError, match=r"x\.avi: codec 'mp4v' writes \.mp4 files"):
        VideoWriter(tmp_path / "x.avi", 10.0, (64, 48), codec="mp4v")
    with pytest.raises(VideoError, match=r"codec 'H264' .*'MJPG', 'avc1', 'mp4v'"):
        VideoWriter(tmp_path / "x.mp4", 10.0, (64, 48), codec="H264")
    assert list(tmp_path.iterdir()) == []


def test_video_writer_unwritable_directory_is_a_video_error(tmp_path):
    from stp_edge.video import VideoWriter

    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")  # refused even to root, unlike chmod
    with pytest.raises(VideoError, match=r"file/x\.mp4: cannot create"):
        VideoWriter(blocker / "x.mp4", 10.0, (64, 48))
    with pytest.raises(VideoError, match=r"file/sub/x\.avi: cannot create"):
        VideoWriter(blocker / "sub" / "x.avi", 10.0, (64, 48))


def test_video_writer_checks_every_frame(tmp_path):
    from stp_edge.video import VideoWriter

    path = tmp_path / "clip.avi"
    w = VideoWriter(path, 10.0, (64, 48))
    good = _noise_frames(4)
    for f in good[:3]:
        w.write(f)
    bad = np.ascontiguousarray(good[3][:, :60])
    with pytest.raises(VideoError, match=r"clip\.avi: frame 3: expected uint8 \(48, 64, 3\), got uint8 \(48, 60, 3\)"):
        w.write(bad)
    with pytest.raises(VideoError, match=r"frame 3: expected uint8 \(48, 64, 3\), got float32 \(48, 64, 3\)"):
        w.write(good[3].astype(np.float32))
    with pytest.raises(VideoError, match=r"frame 3: expected uint8 \(48, 64, 3\), got uint8 \(48, 64\)"):
        w.write(good[3][..., 0])
    w.write(good[3])  # refused frames were not counted and did not break the writer
    assert w.frames_written == 4
    w.close()
    with open_source(path) as src:
        assert src.frame_count == 4
    with pytest.raises(VideoError, match="after close"):
        w.write(good[0])


def test_video_writer_refuses_to_finish_an_empty_file(tmp_path):
    from stp_edge.video import VideoWriter

    w = VideoWriter(tmp_path / "x.mp4", 10.0, (64, 48))
    with pytest.raises(VideoError, match=r"x\.mp4: no frame was written"):
        w.close()
    assert list(tmp_path.iterdir()) == []


_FULL_DISK = """
import resource, signal, sys
import numpy as np
from stp_edge.video import VideoError, VideoWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
rng = np.random.default_rng(0)
w = VideoWriter(sys.argv[1], 25.0, (64, 48))
for _ in range(40):
    w.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
try:
    w.close()
except VideoError as exc:
    print("VideoError:", exc)
"""


@pytest.mark.parametrize("name", ["full.mp4", "full.avi"])
def test_video_writer_detects_a_write_the_file_system_refused(tmp_path, name):
    """OpenCV buffers and reports nothing per frame; close() reads the finished file back and says so."""
    import subprocess
    import sys

    path = tmp_path / name
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert f"VideoError: {path}: 40 frames written" in proc.stdout, proc.stdout
    assert ".partial-" not in proc.stdout  # the message names the user's path, never the temporary file
    assert not path.exists() and _partials(tmp_path) == []


def test_only_stp_edge_video_opens_a_cv2_video_writer_or_maps_codecs():
    """One writer and one codec map: a second `cv2.VideoWriter` or fourcc table creeping back fails here.

    Shipped code and benchmarks only: tests and the corpus scripts write their fixtures with OpenCV directly, on
    purpose, so that what the readers are tested on does not depend on the writer.
    """
    import ast

    repo = Path(__file__).resolve().parents[1]
    files = [p for d in ("stp_edge", "export", "benchmarks") for p in sorted((repo / d).rglob("*.py"))]
    codec_words = {"mp4v", "MJPG", ".mp4", ".avi"}
    offenders = []
    for p in files:
        if p == repo / "stp_edge" / "video.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("VideoWriter", "VideoWriter_fourcc"):
                if isinstance(node.value, ast.Name) and node.value.id == "cv2":
                    offenders.append(f"{p.relative_to(repo)}:{node.lineno} cv2.{node.attr}")
            if isinstance(node, ast.Dict):
                words = {k.value for k in [*node.keys, *node.values] if isinstance(k, ast.Constant)}
                if words & codec_words:
                    offenders.append(f"{p.relative_to(repo)}:{node.lineno} codec map")
    assert len(files) > 50 and not offenders


# --- issue 29: sources named without secrets, quiet opens, down at start, stops that do not wait -------------
@pytest.mark.parametrize(("source", "shown"), [
    ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
    ("rtsp://admin:p@ss@cam/live", "rtsp://admin:***@cam/live"),  # an unescaped @ in the password
    ("http://cam/live.ts?channel=2&token=abc123&Password=x", "http://cam/live.ts?channel=2&token=***&Password=***"),
    ("rtsp://viewer@cam/live", "rtsp://viewer@cam/live"),  # a user name alone is no secret
    ("clips/a b.mp4", "clips/a b.mp4"),
    (3, "camera 3"),
])
def test_display_source_masks_credentials(source, shown):
    from stp_edge.video import display_source

    assert display_source(source) == shown


def test_an_unreachable_url_is_named_without_its_password():
    with pytest.raises(VideoError) as info:
        open_source("http://user:hunter2@127.0.0.1:9/x.ts", timeout_ms=1000)
    assert "user:***@127.0.0.1" in str(info.value) and "hunter2" not in str(info.value)


def _fake_cameras_only(monkeypatch, *caps):
    """Like `_fake_cameras`, for cameras only: files open as usual (a run of a file and a camera)."""
    queue, real = list(caps), VideoSource._open_capture
    monkeypatch.setattr(VideoSource, "_open_capture", lambda self: (queue.pop(0) if queue else _FakeCamera(
        opened=False)) if self.kind == "camera" else real(self))


def test_a_live_source_down_at_start_is_retried_only_when_asked(monkeypatch):
    _fake_cameras(monkeypatch)
    with pytest.raises(VideoError, match="cannot open camera index 5"):
        open_source(5)  # alone, a source that cannot be opened fails at once, as before
    _fake_cameras(monkeypatch, _FakeCamera(opened=False), _FakeCamera(opened=False), _FakeCamera(4))
    policy = Backoff(initial_s=0.01, factor=2.0, max_delay_s=0.02, max_attempts=5)
    with open_source(5, reconnect=policy, retry_at_start=True) as src:
        assert "cannot open camera index 5" in src.down_at_start
        pairs = list(src.frames_with_gaps())
    assert len(pairs) == 4 and pairs[0][1] is not None and all(g is None for _f, g in pairs[1:])
    gap = pairs[0][1]
    assert (gap.frame, gap.attempts) == (0, 2) and src.stats.gaps == [gap]
    assert src.stats.lost_reason.startswith("camera 5 lost after frame 4")  # the fake camera's later drop


def test_a_live_source_that_never_comes_up_is_lost_with_its_reason(monkeypatch):
    _fake_cameras(monkeypatch)
    policy = Backoff(initial_s=0.01, factor=2.0, max_delay_s=0.02, max_attempts=3)
    with open_source(5, reconnect=policy, retry_at_start=True) as src:
        assert list(src) == []
    assert src.stats.lost and src.stats.ended
    assert src.stats.lost_reason.startswith("camera 5 was down at start and never came up: 3 reconnect attempt(s)")
    with pytest.raises(VideoError, match="video file not found"):  # a file is never waited for
        open_source("/nonexistent/clip.mp4", retry_at_start=True)


def test_run_video_goes_on_when_a_camera_is_down_at_start(monkeypatch, handmade_bundle, tmp_path):
    """Issue 29: one source down at start does not stop the others; it is retried like a drop, and reported."""
    from stp_edge.run import run_video

    path = tmp_path / "clip.avi"
    _write_video(path, _smooth_frames(16))
    _fake_cameras_only(monkeypatch, _FakeCamera(opened=False), _FakeCamera(12))
    gaps = []
    res = run_video([str(path), 5], bundle=handmade_bundle, backend="ort-cpu", preprocess="cpu",
                    on_gap=lambda s, g: gaps.append((s, g.frame)),
                    source_kwargs={"reconnect": Backoff(initial_s=0.01, max_delay_s=0.02, max_attempts=3)})
    by_stream = {s: sorted(r.snippet for r in res if r.stream == s and r.final) for s in (0, 1)}
    assert by_stream == {0: [0, 1, 2, 3], 1: [0, 1, 2]}  # both streams ran: 16 and 12 frames of 4-frame snippets
    assert gaps == [(1, 0)] and res.sources[1].stats.gaps[0].frame == 0
    assert "lost after frame 12" in res.sources[1].stats.lost_reason  # the fake camera's later drop

    _fake_cameras_only(monkeypatch)  # never comes up: lost, and the file is still analysed whole
    res = run_video([str(path), 5], bundle=handmade_bundle, backend="ort-cpu", preprocess="cpu",
                    source_kwargs={"reconnect": Backoff(initial_s=0.01, max_delay_s=0.02, max_attempts=2)})
    assert [r.snippet for r in res if r.stream == 0 and r.final] == [0, 1, 2, 3]
    assert [s.stream for s in res.lost] == [1] and "was down at start" in res.sources[1].stats.lost_reason


def test_a_stop_during_a_reconnect_backoff_ends_the_run_at_once(monkeypatch, handmade_bundle):
    """Issue 26 item 12: every wait wakes on the stop; the run does not sit out a 30 s backoff (or join)."""
    from stp_edge.run import run_video

    _fake_cameras(monkeypatch, _FakeCamera(8))
    stop, seen = threading.Event(), []
    backoff = Backoff(initial_s=20.0, max_delay_s=30.0, max_total_s=None)  # the drop waits 20 s, then 30 s ...
    timer = threading.Timer(0.8, stop.set)  # long after the 8 frames: the reader is inside its 20 s wait
    timer.start()
    start = time.monotonic()
    res = run_video(5, bundle=handmade_bundle, backend="ort-cpu", preprocess="cpu", stop=stop,
                    on_frame=lambda s, n: seen.append(n), source_kwargs={"reconnect": backoff})
    took = time.monotonic() - start
    timer.cancel()
    assert len(seen) == 8 and res.stopped and not res.lost
    assert took < 0.8 + 2.0, f"the run took {took:.1f} s to end after its stop"
    assert [r.snippet for r in res if r.final] == [0, 1]  # what was read before the drop is finished and delivered


def test_interrupt_wakes_a_reconnect_wait_from_another_thread(monkeypatch):
    _fake_cameras(monkeypatch, _FakeCamera(3))
    src = open_source(0, reconnect=Backoff(initial_s=30, max_total_s=None))
    got = []
    reader = threading.Thread(target=lambda: got.extend(src), daemon=True)
    reader.start()
    time.sleep(0.3)
    start = time.perf_counter()
    src.interrupt()  # the owning thread releases the capture; this one only wakes it
    reader.join(timeout=5)
    assert not reader.is_alive() and time.perf_counter() - start < 1
    assert len(got) == 3 and not src.stats.lost and not src.stats.ended
    src.close()


# --- issue 29: "TRUNCATED" only for a file that ended early on its own --------------------------------------
def test_a_file_read_in_part_is_not_truncated(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, _smooth_frames(12) * 3)
    with open_source(path) as src:
        for n, _frame in enumerate(src, 1):
            if n == 10:
                break  # a frame limit, Ctrl-C: the reader stops, the file did not end
    assert (src.stats.expected, src.stats.read, src.stats.ended, src.stats.missing) == (36, 10, False, 0)
    with open_source(path) as src:
        assert len(list(src)) == 36
    assert src.stats.ended and src.stats.missing == 0


def test_run_video_with_a_frame_limit_or_a_stop_reports_nothing_missing(handmade_bundle, tmp_path):
    from stp_edge.run import run_video

    path = tmp_path / "clip.avi"
    _write_video(path, _smooth_frames(12) * 4)
    res = run_video(path, bundle=handmade_bundle, backend="ort-cpu", preprocess="cpu", max_frames=16)
    assert res.stats.read == 16 and res.stats.expected == 48 and res.stats.missing == 0
    stop, pushed = threading.Event(), []

    def on_frame(stream, read):  # Ctrl-C after 8 frames
        pushed.append(read)
        if len(pushed) == 8:
            stop.set()

    res = run_video(path, bundle=handmade_bundle, backend="ort-cpu", preprocess="cpu", stop=stop, on_frame=on_frame)
    assert res.stopped and len(pushed) < 48 and res.stats.expected == 48 and res.stats.missing == 0


# --- issue 29: H.264 where PyAV allows it, and the codec said ------------------------------------------------
def test_mp4_is_h264_where_pyav_has_libx264(tmp_path):
    from stp_edge.video import VideoWriter, h264_available

    if not h264_available():
        pytest.skip("PyAV with libx264 is not installed (pip install 'stp-edge[h264]'): .mp4 is MPEG-4 Part 2")
    path = tmp_path / "clip.mp4"
    frames = _smooth_frames(8)
    with VideoWriter(path, 29.97, (64, 48)) as w:
        for f in frames:
            w.write(f)
    assert (w.codec, w.codec_name) == ("avc1", "H.264")
    cap = cv2.VideoCapture(str(path))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert fourcc.lower() in ("avc1", "h264") and abs(fps - 29.97) < 0.01
    with open_source(path) as src:
        got = list(src)
    assert len(got) == 8 and np.abs(got[5].astype(int) - frames[5]).mean() < 8


def test_without_pyav_mp4_falls_back_to_mpeg4_and_says_how_to_get_h264(tmp_path, monkeypatch):
    import stp_edge.video as video

    monkeypatch.setattr(video, "_H264", False)
    assert video.default_codec("x.mp4") == "mp4v" and video.default_codec("x.AVI") == "MJPG"
    assert "stp-edge[h264]" in video.describe_codec("x.mp4") and video.describe_codec("x.avi") == "Motion JPEG"
    with video.VideoWriter(tmp_path / "clip.mp4", 10.0, (64, 48)) as w:
        w.write(_smooth_frames(1)[0])
    assert w.codec_name == "MPEG-4 Part 2"
    with pytest.raises(VideoError, match=r"clip2\.mp4: H\.264 needs PyAV with libx264"):
        video.VideoWriter(tmp_path / "clip2.mp4", 10.0, (64, 48), codec="avc1")


def test_check_video_output_names_the_path_and_leaves_nothing(tmp_path):
    from stp_edge.video import CODEC_NAMES, check_video_output

    assert check_video_output(tmp_path / "out" / "a.avi") == "Motion JPEG"
    assert check_video_output(tmp_path / "out" / "a.mp4") in CODEC_NAMES.values()
    with pytest.raises(VideoError) as info:
        check_video_output(tmp_path / "out" / "overlay.mkv")
    assert str(info.value).startswith(f"{tmp_path / 'out' / 'overlay.mkv'}: unsupported extension '.mkv'")
    assert list((tmp_path / "out").iterdir()) == []  # no probe, no partial, no a.avi
