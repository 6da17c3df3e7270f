"""Region features in NumPy: token pooling ("tokens" mode) and sliding crops ("crops" mode).

The torch twin in `stp_edge/model/regions.py` must give the same numbers, so every operation here is a plain
mean or a matrix product with documented rounding:

- `pool_regions`: mean over (grid/R)^2 blocks of patch tokens, regions in row-major order.
- `crop_windows`: R*R overlapping square windows, side round(2S/(R+1)), stride round(S/(R+1)), where round is
  round-half-up (floor(x + 0.5)), not Python's banker's rounding; the last window is clamped inside the image.
- `bilinear_matrix`: the [out, in] matrix of 1-D bilinear resampling with align_corners=False semantics
  (PyTorch `F.interpolate(..., mode="bilinear", align_corners=False, antialias=False)`).
- `make_crops`: each window resized back to SxS as M @ crop @ M.T, one matrix per axis.
"""

from __future__ import annotations

import math

import numpy as np


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def pool_regions(patch_emb: np.ndarray, grid: int, R: int) -> np.ndarray:
    """Pool patch tokens [B, N, E] (N = grid*grid, row-major) into [B, R*R, E] region features.

    Raises:
        ValueError: N != grid*grid or R does not divide grid.
    """
    if patch_emb.ndim != 3:
        raise ValueError(f"pool_regions: patch_emb must be [B, N, E], got shape {patch_emb.shape}")
    B, N, E = patch_emb.shape
    if N != grid * grid:
        raise ValueError(f"pool_regions: patch_emb has N={N} tokens, expected grid*grid={grid * grid}")
    if R < 1 or grid % R:
        raise ValueError(f"pool_regions: region grid R={R} must divide the patch grid {grid}")
    k = grid // R
    x = patch_emb.reshape(B, R, k, R, k, E)
    return x.mean(axis=(2, 4)).reshape(B, R * R, E)


def crop_windows(S: int, R: int) -> list[tuple[int, int, int]]:
    """R*R overlapping square windows of an SxS image as (y0, x0, side), row-major.

    side = round(2S/(R+1)), stride = round(S/(R+1)); offsets are clamped so every window lies inside.
    """
    if R < 1 or S < R + 1:
        raise ValueError(f"crop_windows: need R >= 1 and S > R, got S={S}, R={R}")
    side = _round_half_up(2 * S / (R + 1))
    stride = _round_half_up(S / (R + 1))
    offs = [min(i * stride, S - side) for i in range(R)]
    return [(y, x, side) for y in offs for x in offs]


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float64 matrix of 1-D bilinear resampling, align_corners=False.

    Output pixel i samples source coordinate (i + 0.5) * in/out - 0.5, clamped below at 0 (as PyTorch does),
    and mixes its two neighbours; each row sums to 1.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bilinear_matrix: sizes must be positive, got in={in_size}, out={out_size}")
    m = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(math.floor(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        w1 = src - i0
        m[i, i0] += 1.0 - w1
        m[i, i1] += w1
    return m


def make_crops(images: np.ndarray, R: int) -> np.ndarray:
    """Cut R*R windows from each preprocessed image [B, 3, S, S] and resize each back to SxS.

    Returns:
        [B*R*R, 3, S, S] in the dtype of `images`; crops of image b occupy rows b*R*R ... (b+1)*R*R - 1 in
        row-major window order.
    """
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"make_crops: images must be [B, C, S, S], got shape {images.shape}")
    B, C, S, _ = images.shape
    windows = crop_windows(S, R)
    side = windows[0][2]
    m = bilinear_matrix(side, S).astype(images.dtype)
    out = np.empty((B, len(windows), C, S, S), dtype=images.dtype)
    for r, (y0, x0, s) in enumerate(windows):
        crop = images[:, :, y0:y0 + s, x0:x0 + s]
        out[:, r] = m @ crop @ m.T
    return out.reshape(B * len(windows), C, S, S)
