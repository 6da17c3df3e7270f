"""Skip-decoding: an MJPEG file's frames reach the detector compressed and only the sampled ones are decoded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import moving_frames

from stp_edge.frames import EncodedFrame, FrameError
from stp_edge.pipeline.snippets import SnippetAssembler
from stp_edge.video import open_source


def write_video(path, frames, fourcc: str, fps: float = 15.0):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def packets(path) -> list[np.ndarray]:
    """Every frame of an MJPEG file decoded by libjpeg from its packets (what lazy decoding does)."""
    cap = cv2.VideoCapture(str(path))
    assert cap.set(cv2.CAP_PROP_FORMAT, -1)
    out = []
    while True:
        ok, pk = cap.read()
        if not ok:
            break
        out.append(cv2.imdecode(pk.ravel(), cv2.IMREAD_COLOR))
    cap.release()
    return out


def test_mjpeg_files_yield_compressed_frames_others_arrays(tmp_path):
    frames = moving_frames(12, seed=1)
    mjpg = write_video(tmp_path / "a.avi", frames, "MJPG")
    mp4 = write_video(tmp_path / "b.mp4", frames, "mp4v")
    with open_source(mjpg) as src:
        got = [f for f, _ in src.frames_with_gaps(lazy=True)]
        assert src.lazy and src.stats.read == 12
    assert isinstance(got[0], np.ndarray) and all(isinstance(f, EncodedFrame) for f in got[1:])
    assert [f.index for f in got[1:]] == list(range(1, 12))
    ref = packets(mjpg)
    np.testing.assert_array_equal(got[5].decode(), ref[5])
    with open_source(mp4) as src:
        assert all(isinstance(f, np.ndarray) for f, _ in src.frames_with_gaps(lazy=True)) and not src.lazy
    with open_source(mjpg) as src:  # plain iteration always yields arrays
        assert all(isinstance(f, np.ndarray) for f in src)


def test_run_decodes_one_frame_per_snippet_and_equals_decoding_all(handmade_bundle, tmp_path, monkeypatch):
    from stp_edge.api import Detector
    from stp_edge.run import run_video

    video = write_video(tmp_path / "clip.avi", moving_frames(42, height=60, width=80, seed=4), "MJPG")
    decoded = []
    real = EncodedFrame.decode

    def counting(self, **kw):
        decoded.append(self.index)
        return real(self, **kw)

    monkeypatch.setattr(EncodedFrame, "decode", counting)
    lazy = run_video(video, bundle=handmade_bundle, backend="ort-cpu", spatial_on="all")
    assert len(lazy) == 11
    # snippets of 4 frames sample offset 2: frames 2, 6, ..., 38 and, for the 2-frame tail, its last frame 41
    assert decoded == [*range(2, 42, 4), 41]
    with Detector.load(handmade_bundle, backend="ort-cpu", spatial_on="all") as det:
        ref = [r for f in packets(video) for r in det.push(f)] + det.flush()
    assert [(r.frame_start, r.frame_end) for r in lazy] == [(r.frame_start, r.frame_end) for r in ref]
    np.testing.assert_allclose([r.score for r in lazy], [r.score for r in ref], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.stack([r.region_scores for r in lazy]), np.stack([r.region_scores for r in ref]),
                               rtol=0, atol=1e-6)


def test_assembler_decodes_a_tail_lazily_and_drops_an_undecodable_one():
    jpg = cv2.imencode(".jpg", moving_frames(1, seed=3)[0])[1]
    good = EncodedFrame(jpg.tobytes(), 1)
    asm = SnippetAssembler(8, 1)  # samples offset 4
    asm.push(moving_frames(1, seed=2)[0])
    asm.push(good)
    tail = asm.flush()
    assert tail is not None and tail.frame_end == 2 and tail.frames[0].shape == (48, 64, 3)
    np.testing.assert_array_equal(tail.frames[0], good.decode())

    asm = SnippetAssembler(8, 1)
    asm.push(EncodedFrame(b"not a jpeg", 0))
    assert asm.flush() is None and asm.undecodable == 1
    asm = SnippetAssembler(8, 1)
    for _ in range(4):
        asm.push(good)
    with pytest.raises(FrameError, match="frame 4: the compressed image"):
        asm.push(EncodedFrame(b"\xff\xd8 broken", 4))


def test_a_corrupt_sampled_frame_is_rejected_and_counted(handmade_bundle, tmp_path):
    """A sampled packet that does not decode is skipped and counted; the stream goes on."""
    from stp_edge.api import Detector

    frames = moving_frames(12, seed=6)
    with Detector.load(handmade_bundle, backend="ort-cpu") as det:
        out = []
        for i, f in enumerate(frames):
            jpg = cv2.imencode(".jpg", f)[1].tobytes()
            if i == 2:
                with pytest.raises(FrameError, match="stream 0 frame 2"):
                    det.push(EncodedFrame(jpg[:40], i))
                continue
            out += det.push(EncodedFrame(jpg, i))
        out += det.flush()
    assert [(r.frame_start, r.frame_end) for r in out] == [(0, 4), (4, 8), (8, 11)]
