"""CLIP preprocessing done the plain way, with PIL: the reference the runtime's preprocessing is measured against.

One definition for the `stp-edge bench` baseline, the benchmarks and the tests: PIL bicubic resize of the short
side to `size` (torchvision/CLIP `Resize`), center crop (torchvision `CenterCrop`), normalisation in the runtime's
float32 operation order (x * scale + bias), so the CUDA kernel can be checked against it bit for bit. Its geometry
is written out here, not taken from `stp_edge.preprocess`, so that it checks that module rather than repeats it. It
lives in the installed package so that tests and benchmarks import it from there; Pillow is imported only
when it runs (it comes with the `export` and `dev` extras).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stp_edge.preprocess import CLIP_MEAN, CLIP_STD


def pil_reference(rgb: np.ndarray, size: int, dtype: type = np.float32, *,
                  mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """One uint8 RGB frame [H,W,3] -> normalised CHW [3,size,size] through PIL's resize and crop.

    The kernel reproduces PIL's integer resize and rounds each float op like NumPy, so the match is exact.
    `mean` and `std` (per RGB channel, of x/255) default to CLIP's; a bundle's manifest may declare others.
    """
    from PIL import Image

    h, w = rgb.shape[:2]
    # torchvision Resize(size): short side -> size, long side int(size * long / short).
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    a = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BICUBIC))
    # torchvision CenterCrop: offset round((n - size) / 2), Python's round half to even.
    top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)
    v = a[top : top + size, left : left + size].transpose(2, 0, 1).astype(np.float32)
    std_ = np.asarray(std, np.float32)[:, None, None]
    scale = np.float32(1.0) / (np.float32(255.0) * std_)
    bias = -np.asarray(mean, np.float32)[:, None, None] / std_
    return (v * scale + bias).astype(dtype)


def pil_pipeline(frames_bgr: Sequence[np.ndarray], size: int = 224) -> np.ndarray:
    """The per-frame loop a researcher writes: BGR -> RGB, `pil_reference`, stacked -> float32 [N,3,size,size]."""
    import cv2

    return np.stack([pil_reference(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size) for bgr in frames_bgr])
