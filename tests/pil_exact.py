"""The exact target of the preprocessing kernel: PIL's resize and crop, normalised in the kernel's op order.

Shared by the host-built kernel tests (test_kernels_nvcc.py) and the GPU tests (test_cuda_gpu.py).
"""

from __future__ import annotations

import numpy as np

from stp_edge.preprocess import CLIP_MEAN, CLIP_STD, center_offset, resized_size


def pil_reference(rgb: np.ndarray, size: int, dtype: type = np.float32) -> np.ndarray:
    """PIL resize + crop, normalised in the kernel's float32 op order (v * scale + bias).

    The kernel reproduces PIL's integer resize and rounds each float op like NumPy, so the match is exact.
    """
    from PIL import Image

    h, w = rgb.shape[:2]
    nh, nw = resized_size(h, w, size)
    a = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BICUBIC))
    t, left = center_offset(nh, size), center_offset(nw, size)
    v = a[t : t + size, left : left + size].transpose(2, 0, 1).astype(np.float32)
    std = np.asarray(CLIP_STD, np.float32)[:, None, None]
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    bias = -np.asarray(CLIP_MEAN, np.float32)[:, None, None] / std
    return (v * scale + bias).astype(dtype)
