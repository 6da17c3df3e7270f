"""Region features (torch twin of stp_edge/regions.py): pooled patch tokens or sliding-window crops."""

from __future__ import annotations

import numpy as np
import torch


def pool_regions(patch_emb: torch.Tensor, grid: int, r: int) -> torch.Tensor:
    """patch_emb [B,N,E] on a grid x grid patch layout -> [B,R*R,E], mean over (grid/R)^2 blocks, row-major."""
    b, n, e = patch_emb.shape
    if n != grid * grid or grid % r:
        raise ValueError(f"cannot pool {n} patches (grid {grid}) into {r}x{r} regions")
    s = grid // r
    x = patch_emb.reshape(b, r, s, r, s, e)
    return x.mean(dim=(2, 4)).reshape(b, r * r, e)


def crop_windows(size: int, r: int) -> list[tuple[int, int, int]]:
    """R*R overlapping square windows (y0, x0, side): side round(2S/(R+1)), stride round(S/(R+1)), row-major."""
    side = round(2 * size / (r + 1))
    stride = round(size / (r + 1))
    starts = [min(i * stride, size - side) for i in range(r)]
    return [(y, x, side) for y in starts for x in starts]


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out,in] matrix of 1-D bilinear interpolation with align_corners=False (half-pixel centres)."""
    m = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    for o in range(out_size):
        src = min(max((o + 0.5) * scale - 0.5, 0.0), in_size - 1)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, in_size - 1)
        frac = src - i0
        m[o, i0] += 1.0 - frac
        m[o, i1] += frac
    return m.astype(np.float32)


def make_crops(images: torch.Tensor, r: int) -> torch.Tensor:
    """images [B,3,S,S] -> [B*R*R,3,S,S]: each window resized back to SxS by fixed interpolation matrices."""
    b, c, s, _ = images.shape
    windows = crop_windows(s, r)
    side = windows[0][2]
    m = torch.from_numpy(bilinear_matrix(side, s)).to(images.dtype)
    crops = torch.stack([images[:, :, y : y + side, x : x + side] for y, x, _ in windows], dim=1)
    crops = m @ crops @ m.T  # [B, R2, 3, S, S]
    return crops.reshape(b * r * r, c, s, s)
