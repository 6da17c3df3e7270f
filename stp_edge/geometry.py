"""Geometry shared by the runtime, the torch model and the visualisation: one definition of each.

- `crop_square`: the centre square a CLIP-preprocessed frame keeps (short side resized to S, centre crop SxS),
  in original frame pixels. The preprocessing itself crops in *resized* pixels with torchvision's rounding
  (`stp_edge.preprocess.center_offset`); mapped back to the frame that differs from this square by less than
  one frame pixel, which is why boxes and overlays use this exact, rounding-free square.
- `crop_windows`: R*R overlapping square windows ("crops" region mode), side round(2S/(R+1)), stride
  round(S/(R+1)), where round is half-up (floor(x + 0.5)), not Python's banker's rounding; the last window is
  clamped inside the image.
- `frame_windows`: the R*R overlapping windows that tile the WHOLE frame (region extent "frame"): along each axis
  of length L, side round(2L/(R+1)) and offsets spread evenly from 0 to L - side, so the first window starts at
  the frame's edge and the last ends at the other edge; each is resized to SxS (non-square windows are squashed).
- `region_boxes` / `to_frame_coords`: where each region lies in model-input pixels, and the map from there to
  frame pixels (onto the centre crop by default, or any analysed rectangle, mirrored or not).
- `bilinear_matrix`: the [out, in] matrix of 1-D bilinear resampling with align_corners=False semantics
  (PyTorch `F.interpolate(..., mode="bilinear", align_corners=False, antialias=False)`), shared by the NumPy
  and torch crops so both give the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

from stp_edge.errors import UsageError


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def crop_square(frame_hw: tuple[int, int]) -> tuple[float, float, float]:
    """(x0, y0, side) of the centre-crop square the model sees, in original frame pixels."""
    h, w = frame_hw
    side = float(min(h, w))
    return (w - side) / 2.0, (h - side) / 2.0, side


def crop_square_pixels(frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """`crop_square` as whole pixels (x1, y1, x2, y2), for slicing a frame (x0, y0 rounded down)."""
    x0, y0, side = crop_square(frame_hw)
    x1, y1, s = math.floor(x0), math.floor(y0), int(side)
    return x1, y1, x1 + s, y1 + s


def crop_windows(S: int, R: int) -> list[tuple[int, int, int]]:
    """R*R overlapping square windows of an SxS image as (y0, x0, side), row-major.

    side = round(2S/(R+1)), stride = round(S/(R+1)); offsets are clamped so every window lies inside.
    """
    if R < 1 or S < R + 1:
        raise UsageError(f"crop_windows: need R >= 1 and S > R, got S={S}, R={R}")
    side = _round_half_up(2 * S / (R + 1))
    stride = _round_half_up(S / (R + 1))
    offs = [min(i * stride, S - side) for i in range(R)]
    return [(y, x, side) for y in offs for x in offs]


def window_offsets(length: int, R: int) -> tuple[int, list[int]]:
    """(side, offsets) of R overlapping windows along an axis of `length` samples, covering it end to end.

    side = round(2L/(R+1)) (at least 1), offsets round(i (L - side) / (R - 1)): 0 first, L - side last.
    """
    if R < 1 or length < 1:
        raise UsageError(f"window_offsets: need R >= 1 and length >= 1, got length={length}, R={R}")
    side = min(length, max(1, _round_half_up(2 * length / (R + 1))))
    if R == 1:
        return side, [0]
    return side, [_round_half_up(i * (length - side) / (R - 1)) for i in range(R)]


def frame_windows(frame_hw: tuple[int, int], R: int) -> np.ndarray:
    """[R*R, 4] int64 windows (x0, y0, x1, y1) tiling the whole H x W frame, row-major (region extent "frame").

    Each axis is cut by `window_offsets`, so windows overlap by about half and the outer ones touch the frame's
    edges: a 1920x1080 frame with R=3 gives 960x540 windows at x 0, 480, 960 and y 0, 270, 540.
    """
    h, w = (int(v) for v in frame_hw)
    sw, xs = window_offsets(w, R)
    sh, ys = window_offsets(h, R)
    return np.array([(x, y, x + sw, y + sh) for y in ys for x in xs], dtype=np.int64)


def region_boxes(image_size: int, R: int, mode: str = "tokens") -> np.ndarray:
    """[R*R, 4] boxes (x1, y1, x2, y2) of each region in model-input pixels, row-major.

    tokens mode: the cells of an RxR grid; crops mode: the overlapping crop windows.
    """
    if mode == "crops":
        return np.array([(x, y, x + s, y + s) for y, x, s in crop_windows(image_size, R)], dtype=np.float64)
    if mode != "tokens":
        raise UsageError(f"region mode must be 'tokens' or 'crops', got {mode!r}")
    cell = image_size / R
    return np.array([(j * cell, i * cell, (j + 1) * cell, (i + 1) * cell) for i in range(R) for j in range(R)])


def to_frame_coords(boxes: np.ndarray, image_size: int, frame_hw: tuple[int, int],
                    area: tuple[float, float, float, float] | None = None, mirror: bool = False) -> np.ndarray:
    """Map [..., 4] boxes from model-input pixels (the SxS view) to original frame pixels.

    `area` (x0, y0, x1, y1): the part of the frame the view shows (default: CLIP's centre square, `crop_square`);
    `mirror`: the view is mirrored left-right (x measured from the area's right edge).
    """
    if area is None:
        x0, y0, side = crop_square(frame_hw)
        area = (x0, y0, x0 + side, y0 + side)
    ax0, ay0, ax1, ay1 = (float(v) for v in area)
    b = np.asarray(boxes, dtype=np.float64)
    out = np.empty_like(b)
    sx, sy = (ax1 - ax0) / image_size, (ay1 - ay0) / image_size
    if mirror:
        out[..., 0], out[..., 2] = ax1 - b[..., 2] * sx, ax1 - b[..., 0] * sx
    else:
        out[..., 0], out[..., 2] = ax0 + b[..., 0] * sx, ax0 + b[..., 2] * sx
    out[..., 1], out[..., 3] = ay0 + b[..., 1] * sy, ay0 + b[..., 3] * sy
    return out


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float64 matrix of 1-D bilinear resampling, align_corners=False.

    Output pixel i samples source coordinate (i + 0.5) * in/out - 0.5, clamped below at 0 (as PyTorch does),
    and mixes its two neighbours; each row sums to 1.
    """
    if in_size < 1 or out_size < 1:
        raise UsageError(f"bilinear_matrix: sizes must be positive, got in={in_size}, out={out_size}")
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
