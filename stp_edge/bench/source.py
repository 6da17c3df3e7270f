"""The camera `stp-edge bench` imitates when no video is given: a generated PAL-size MJPG clip at 25 fps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CAMERA_FPS = 25.0
DEFAULT_SIZE = (576, 768)  # (H, W) of the generated video: a PAL-size surveillance camera


def write_test_video(path: Path, frames: int, size: tuple[int, int] = DEFAULT_SIZE, fps: float = CAMERA_FPS,
                     seed: int = 0) -> Path:
    """A camera-like MJPG video: a smooth random texture with a few blocks moving across it (never constant)."""
    import cv2

    from stp_edge.video import VideoWriter

    h, w = size
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 220, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    background = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    background = np.clip(background.astype(np.int16) + rng.integers(-12, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    blocks = [(int(rng.integers(0, h - 60)), int(rng.integers(0, w)), int(rng.integers(2, 9)),
               tuple(int(v) for v in rng.integers(0, 255, 3))) for _ in range(4)]
    with VideoWriter(path, fps, (w, h), "MJPG") as writer:
        for i in range(frames):
            img = background.copy()
            for y, x0, speed, colour in blocks:
                x = int(x0 + speed * i) % (w - 60)
                img[y:y + 60, x:x + 60] = colour
            writer.write(img)
    return path
