from __future__ import annotations

import numpy as np
import pytest

from stp_edge.frames import FrameError, validate_frame


def test_bgr_passes_through():
    f = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = validate_frame(f, 0)
    assert out.shape == (5, 7, 3) and np.array_equal(out, f)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1)])
def test_gray_is_replicated(shape):
    g = np.arange(35, dtype=np.uint8).reshape(shape)
    out = validate_frame(g, 3)
    assert out.shape == (5, 7, 3)
    for c in range(3):
        assert np.array_equal(out[:, :, c], g.reshape(5, 7))


def test_bgra_drops_alpha():
    f = np.random.default_rng(1).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    out = validate_frame(f, 0)
    assert out.shape == (4, 6, 3) and out.flags.c_contiguous and np.array_equal(out, f[:, :, :3])


@pytest.mark.parametrize(("frame", "message"), [
    (np.ones((4, 4, 3), np.float32), "frame 12: expected dtype uint8, got float32"),
    (np.ones((4, 4, 3), np.uint16), "frame 12: expected dtype uint8, got uint16"),
    (np.ones((4, 4, 2), np.uint8), r"frame 12: expected shape .* got \(4, 4, 2\)"),
    (np.ones((2, 4, 4, 3), np.uint8), r"got \(2, 4, 4, 3\)"),
    (np.ones((0, 4, 3), np.uint8), r"frame 12: expected a non-empty image, got shape \(0, 4, 3\)"),
    (np.ones((0, 4), np.uint8), "non-empty"),
    ([[1, 2, 3]], "frame 12: expected a numpy array .* got list"),
    (None, "got NoneType"),
])
def test_refused_frames_name_index_and_expectation(frame, message):
    with pytest.raises(FrameError, match=message):
        validate_frame(frame, 12)


# --- one check per frame: at the door it comes in by, never again behind it ---------------------------------
def _count_checks(monkeypatch) -> list[int]:
    """Count every `validate_frame` call, wherever a runtime module bound the name (indices of the frames)."""
    import sys

    import stp_edge.api
    import stp_edge.frames
    import stp_edge.preprocess
    import stp_edge.run
    import stp_edge.video  # every module that binds the name is imported before it is patched

    real, calls = stp_edge.frames.validate_frame, []

    def counting(frame, index, *, stream=None):
        calls.append(index)
        return real(frame, index, stream=stream)

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "stp_edge" and getattr(module, "validate_frame", None) is real:
            monkeypatch.setattr(module, "validate_frame", counting)
    return calls


@pytest.mark.parametrize("codec", ["mp4v", "MJPG"])
def test_run_video_checks_each_frame_once(handmade_bundle, tmp_path, monkeypatch, codec):
    """The source checks what it decodes; the detector and the preprocessor behind it do not check again."""
    from conftest import moving_frames

    from stp_edge.bundle import Bundle
    from stp_edge.pipeline.snippets import sample_offsets
    from stp_edge.run import run_video
    from stp_edge.video import CODECS, VideoWriter

    frames = moving_frames(40, seed=5)
    video = tmp_path / f"clip{CODECS[codec]}"
    with VideoWriter(video, 15.0, (frames[0].shape[1], frames[0].shape[0]), codec) as writer:
        for f in frames:
            writer.write(f)
    calls = _count_checks(monkeypatch)
    res = run_video(video, bundle=handmade_bundle, backend="ort-cpu", preprocess="cpu")
    cfg = Bundle.load(handmade_bundle).config
    assert res.frames_read == 40 and res.snippets == 40 // cfg.snippet_len
    if codec == "mp4v":  # every frame decoded by the source: checked there, once
        assert sorted(calls) == list(range(40))
    else:  # MJPEG: the first frame decoded by the source, then only the frames a snippet samples, once each
        sampled = {s + o for s in range(0, 40, cfg.snippet_len)
                   for o in sample_offsets(cfg.snippet_len, cfg.frames_per_snippet)}
        assert calls == sorted({0} | sampled)


def test_detector_push_checks_once_and_refuses_as_before(handmade_bundle, monkeypatch):
    from conftest import moving_frames

    from stp_edge.api import Detector

    calls = _count_checks(monkeypatch)
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        for f in moving_frames(16, seed=2):
            det.push(f)
        assert calls == list(range(16))  # the encode stage's preprocessing did not check the sampled frame again
        with pytest.raises(FrameError, match=r"^stream 3 frame 0: expected dtype uint8, got float32 \(convert with "):
            det.push(np.ones((48, 64, 3), np.float32), stream=3)


def test_a_preprocessor_called_directly_checks_its_frames(monkeypatch):
    from stp_edge.preprocess import CpuPreprocessor

    calls = _count_checks(monkeypatch)
    gray = np.full((40, 50), 90, np.uint8)
    out = CpuPreprocessor(32)([gray, np.dstack([gray] * 3)])
    assert calls == [0, 1] and np.array_equal(out[0], out[1])
    with pytest.raises(FrameError, match="frame 1: expected dtype uint8, got float64"):
        CpuPreprocessor(32)([gray, np.ones((40, 50, 3))])
