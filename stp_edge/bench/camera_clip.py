"""The clip a capacity benchmark's cameras replay: H.264 or H.265 written with PyAV, camera-like GOP settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stp_edge._deps import require

CODEC_ENCODERS = {"h264": "libx264", "h265": "libx265"}


def write_camera_clip(path: str | os.PathLike, size: tuple[int, int], *, seconds: float = 8.0, fps: int = 25,
                      codec: str = "h264", gop: int = 16, bframes: int = 0, seed: int = 0) -> Path:
    """A street-camera-like clip: a smooth random background with blocks moving across it and sensor noise.

    Args:
        path: The .mp4 to write.
        size: (height, width).
        seconds: Length (the server loops it).
        fps: Frame rate.
        codec: "h264" or "h265".
        gop: Keyframe interval in frames (16 = the snippet length: each snippet's first frame is a keyframe).
        bframes: B-frames between references (cameras mostly send none).
        seed: Content seed.
    """
    av = require("av", "writing H.264/H.265 camera clips")
    import cv2

    h, w = size
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 220, (h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
    background = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    blocks = [(int(rng.integers(0, h - h // 8)), int(rng.integers(0, w)), int(rng.integers(2, 9)),
               tuple(int(v) for v in rng.integers(0, 255, 3))) for _ in range(6)]
    side = max(8, h // 8)
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(CODEC_ENCODERS[codec], rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bframes),
                          "preset": "veryfast", "crf": "26"}
        if codec == "h265":
            stream.options = {**stream.options, "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:"
                              f"bframes={bframes}:log-level=error"}
        for i in range(int(seconds * fps)):
            img = background.copy()
            for y, x0, speed, colour in blocks:
                x = int(x0 + speed * i * w / 640) % max(1, w - side)
                img[y:y + side, x:x + side] = colour
            noise = rng.integers(-6, 7, (h // 4, w // 4, 1), dtype=np.int16)
            img = np.clip(img.astype(np.int16) + cv2.resize(noise, (w, h))[..., None], 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
