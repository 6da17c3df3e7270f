"""Region features (torch twin of stp_edge.pipeline.encode's pooling and crops): pooled patch tokens or crops.

The crop windows and interpolation matrices come from the NumPy module, so the runtime and the reference cut
and resize exactly the same windows. These are crops of the centre image (region extent "center"); crops of the
whole frame (region extent "frame") are cut from the frame by the preprocessors (`stp_edge.preprocess`), not here.
"""

from __future__ import annotations

import torch

from stp_edge.errors import UsageError
from stp_edge.geometry import bilinear_matrix, crop_windows


def pool_regions(patch_emb: torch.Tensor, grid: int, r: int) -> torch.Tensor:
    """patch_emb [B,N,E] on a grid x grid patch layout -> [B,R*R,E], mean over (grid/R)^2 blocks, row-major."""
    b, n, e = patch_emb.shape
    if n != grid * grid or grid % r:
        raise UsageError(f"cannot pool {n} patches (grid {grid}) into {r}x{r} regions")
    s = grid // r
    x = patch_emb.reshape(b, r, s, r, s, e)
    return x.mean(dim=(2, 4)).reshape(b, r * r, e)


def make_crops(images: torch.Tensor, r: int) -> torch.Tensor:
    """images [B,3,S,S] -> [B*R*R,3,S,S]: each window resized back to SxS by fixed interpolation matrices."""
    b, c, s, _ = images.shape
    windows = crop_windows(s, r)
    side = windows[0][2]
    m = torch.from_numpy(bilinear_matrix(side, s)).to(images.dtype)  # float64 -> images' dtype
    crops = torch.stack([images[:, :, y : y + side, x : x + side] for y, x, _ in windows], dim=1)
    crops = m @ crops @ m.T  # [B, R2, 3, S, S]
    return crops.reshape(b * r * r, c, s, s)
