from __future__ import annotations

import numpy as np
import pytest

from stp_edge.pipeline.frames import FrameError, validate_frame


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
