from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from stp_edge.video import VideoError, open_source, parse_source


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


def test_live_source_ends_after_consecutive_failures(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, _smooth_frames(6))
    with open_source(path, max_consecutive_failures=3) as src:
        src.kind = "url"  # behave as a live stream: failures at the end are a disconnect, not dropped frames
        src._cap = _FlakyCapture(src._cap, fail_at={2})
        got = list(src)
    assert len(got) == 6 and src.stats.dropped == 1
