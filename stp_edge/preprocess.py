"""CLIP preprocessing on the CPU: the NumPy/OpenCV twin of the fused CUDA kernel (kernels/preprocess.cu).

The golden function is CLIP's own: PIL bicubic resize of the short side to S (antialiased, PIL's separable
convolution), centre crop SxS, RGB, /255, mean/std normalisation, CHW. S, mean and std come from the bundle's
`PreprocessSpec` (stp_edge.bundle.preprocessing; CLIP's numbers by default). This module reproduces PIL's resize
closely enough to be bit-exact on almost every pixel:

* the filter taps are PIL's (`filter_weights`), quantised to PIL's 22-bit fixed point (`fixed_point`);
* the horizontal pass runs first and its result is rounded half-up and clipped to uint8, as PIL does
  between its two passes, then the vertical pass rounds to uint8 again (PIL's output is an 8-bit image);
* only the output pixels inside the crop are computed, and only the input rows/columns they need are read.

The CPU twin accumulates in float32 (a product of an 8-bit pixel and a 22-bit tap needs 30 bits), so a sum
that lands within ~1e-5 of a rounding boundary may round the other way than PIL's integer sum: one grey
level, on a handful of pixels per frame. The CUDA kernel uses PIL's integer arithmetic and is exact.
Both consume the same `CropResizePlan`, so the taps cannot drift apart.

No torch here: the runtime must stay torch-free.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from stp_edge.bundle.preprocessing import (  # noqa: F401  the spec a bundle declares, re-exported where it runs
    CLIP_MEAN,
    CLIP_STD,
    FRAME_POLICIES,
    IMPLEMENTED,
    PreprocessSpec,
    normalisation,
    preprocess_spec,
    view_roles,
)
from stp_edge.errors import UsageError
from stp_edge.frames import validate_frame
from stp_edge.geometry import frame_windows

# PIL's bicubic support and Keys parameter (libImaging/Resample.c).
BICUBIC_SUPPORT = 2.0
BICUBIC_A = -0.5
# PIL's fixed-point precision for 8-bit images: 32 - 8 - 2 bits.
PRECISION_BITS = 22

# YUV -> RGB: (Kr, Kb) luma coefficients of each matrix.
_YUV_MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def _block_size(scale: float) -> int:
    """Outputs per dense BLAS block for an axis downscaled by `scale` (input/output samples).

    A block of b outputs reads about b * scale + taps inputs, so small blocks multiply fewer zeros but make
    more BLAS calls and convert overlapping input rows more often. When downscaling, 4 outputs per block
    measured fastest at 720p-4K on one x86 core; when upscaling, windows overlap and larger blocks win.
    """
    return 4 if scale >= 2.0 else 8


def bicubic_filter(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic kernel (Keys, a = -0.5), evaluated in float64 with PIL's operation order."""
    a = BICUBIC_A
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def filter_weights(in_size: int, out_size: int, box: tuple[int, int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """PIL's antialiased bicubic taps for resizing one axis from `in_size` to `out_size` samples.

    Mirrors `precompute_coeffs` in Pillow's libImaging/Resample.c: the kernel is stretched by the
    downscale factor (support 2 * scale), each output's window is clipped to the image and its taps are
    normalised to sum to one. The CUDA kernel is fed these same taps (see `CropResizePlan`).

    Args:
        in_size: input samples along the axis (> 0).
        out_size: output samples along the axis (> 0).
        box: (in0, in1): resize only the span [in0, in1) to `out_size`, as PIL's `resize(..., box=...)`; its taps
            may read past the span, up to the image's edges, as PIL's do. None: the whole axis.

    Returns:
        (start, coeffs): `start[i]` is the first input index of output i (int32, shape [out_size]);
        `coeffs[i, k]` (float64, shape [out_size, ksize]) weighs input `start[i] + k`; taps past the
        window of output i are zero.
    """
    if in_size <= 0 or out_size <= 0:
        raise UsageError(f"filter_weights needs positive sizes, got in_size={in_size}, out_size={out_size}")
    in0, in1 = (0, in_size) if box is None else (int(box[0]), int(box[1]))
    if not 0 <= in0 < in1 <= in_size:
        raise UsageError(f"filter_weights box {box} is not a non-empty span of [0, {in_size})")
    scale = float(in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = in0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # PIL: xmin = (int)(center - support + 0.5), C truncation; the operands are positive past clipping.
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    k = np.arange(ksize)
    x = (k[None, :] + xmin[:, None]).astype(np.float64)
    w = bicubic_filter((x - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(k[None, :] < xmax[:, None], w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=w.copy(), where=total != 0.0)
    return xmin.astype(np.int32), w


def fixed_point(coeffs: np.ndarray) -> np.ndarray:
    """Quantise taps to PIL's 22-bit fixed point (round half away from zero), as int32."""
    scaled = coeffs * float(1 << PRECISION_BITS)
    return np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) of torchvision/CLIP `Resize(size)`: short side -> size, long = int(size*long/short)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_offset(length: int, size: int) -> int:
    """torchvision CenterCrop's offset: int(round((length - size) / 2.0)), Python (banker's) rounding."""
    return round((length - size) / 2.0)


def _crop_offset(length: int, size: int, place: str) -> int:
    """Offset of a crop of `size` in `length` samples: centred (torchvision's), at the start or at the end."""
    if place == "center":
        return center_offset(length, size)
    if place in ("start", "end"):
        return 0 if place == "start" else length - size
    raise UsageError(f"crop place must be 'center', 'start', 'end' or 'pad', got {place!r}")


@dataclass(frozen=True)
class AxisTaps:
    """Resize taps for the `size` outputs of one axis that fall inside the crop.

    Attributes:
        start: first input index of each output (absolute, int32 [size]).
        coeffs: PIL fixed-point taps (int32 [size, ksize]); value = coeffs / 2**22.
        first: first input index any output reads.
        last: one past the last input index any output reads.
    """

    start: np.ndarray
    coeffs: np.ndarray
    first: int
    last: int

    @property
    def ksize(self) -> int:
        """Taps per output (padded with zeros)."""
        return int(self.coeffs.shape[1])


def _axis_taps(in_size: int, resized: int, offset: int, size: int, lead: int = 0, out: int | None = None,
               mirror: bool = False, box: tuple[int, int] | None = None) -> AxisTaps:
    """Taps of `size` resized samples from `offset` on, placed at outputs [lead, lead + size) of `out` outputs.

    Outputs outside that span (a letterbox's bars) have all-zero taps: PIL's rounding of a zero sum is 0, so
    both the twin and the kernel write black there without a special case. `mirror` reverses the outputs; `box`
    resizes only that span of the input (`filter_weights`).
    """
    start, w = filter_weights(in_size, resized, box)
    start, w = start[offset : offset + size], w[offset : offset + size]
    out = size if out is None else out
    if lead or out != size:
        full_w = np.zeros((out, w.shape[1]), w.dtype)
        full_w[lead : lead + size] = w
        full_s = np.empty(out, start.dtype)  # bars read nothing; their neighbour's start keeps the window small
        full_s[:lead], full_s[lead + size :] = start[0], start[-1]
        full_s[lead : lead + size] = start
        start, w = full_s, full_w
    if mirror:
        start, w = start[::-1].copy(), w[::-1].copy()
    q = fixed_point(w)
    nz = q != 0
    # Trim trailing columns that are zero for every output (they only pad PIL's window).
    used = int(np.max(np.where(nz.any(axis=0))[0])) + 1 if nz.any() else 1
    q = np.ascontiguousarray(q[:, :used])
    reach = start + np.where(nz[:, :used], np.arange(used)[None, :] + 1, 0).max(axis=1)
    first = int(start.min())
    last = int(max(reach.max(), first + 1))
    return AxisTaps(start=start.astype(np.int32), coeffs=q, first=first, last=last)


@dataclass(frozen=True)
class CropResizePlan:
    """Everything the resize+crop of one input size needs, shared by the CPU twin and the CUDA kernel.

    `rows.start` and `cols.start` are absolute input indices; the horizontal pass runs over input rows
    [rows.first, rows.last) only, so its intermediate has `rows.last - rows.first` rows and `size` columns.
    One plan is one view (`views`): a crop of the resized image at (`crop_top`, `crop_left`), or a letterbox,
    whose `resized` image sits at (-crop_top, -crop_left) of the SxS output between zero-tap (black) bars.
    """

    in_h: int
    in_w: int
    size: int
    resized: tuple[int, int]
    crop_top: int
    crop_left: int
    rows: AxisTaps = field(repr=False)
    cols: AxisTaps = field(repr=False)

    @classmethod
    def build(cls, in_h: int, in_w: int, size: int, *, resize: tuple[int, int] | None = None, place: str = "center",
              mirror: bool = False) -> CropResizePlan:
        """Plan one view of an `in_h` x `in_w` image: resize, then an SxS crop (or a letterbox).

        Args:
            in_h: image height.
            in_w: image width.
            size: output side S.
            resize: (width, height) of a fixed resize; None: CLIP's (short side -> S).
            place: where the SxS crop lies in the resized image: "center" (CLIP), "start" / "end" (the left and
                right tiles of a wide image, the top and bottom of a tall one), or "pad": no crop, the whole image
                resized to fit SxS (long side -> S) and centred on black bars.
            mirror: mirror the result left-right.
        """
        if in_h <= 0 or in_w <= 0:
            raise UsageError(f"image must be non-empty, got {in_h}x{in_w}")
        if size <= 0:
            raise UsageError(f"image_size must be positive, got {size}")
        if place == "pad":
            return cls._letterbox(in_h, in_w, size, mirror)
        new_h, new_w = resized_size(in_h, in_w, size) if resize is None else (int(resize[1]), int(resize[0]))
        if min(new_h, new_w) < size:
            raise UsageError(f"resize to {new_w}x{new_h} is smaller than the {size}x{size} crop")
        top, left = _crop_offset(new_h, size, place), _crop_offset(new_w, size, place)
        rows = _axis_taps(in_h, new_h, top, size)
        cols = _axis_taps(in_w, new_w, left, size, mirror=mirror)
        return cls(in_h, in_w, size, (new_h, new_w), top, left, rows, cols)

    @classmethod
    def window(cls, in_h: int, in_w: int, size: int, box: tuple[int, int, int, int]) -> CropResizePlan:
        """The window `box` (x0, y0, x1, y1) of the image resized to SxS, as PIL's `resize((S, S), box=box)`.

        A region crop of the whole frame (`stp_edge.geometry.frame_windows`); `crop_top`/`crop_left` hold the
        window's origin and `resized` its size (height, width) in frame pixels.
        """
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= in_w and 0 <= y0 < y1 <= in_h):
            raise UsageError(f"window {box} is not inside the {in_w}x{in_h} image")
        rows = _axis_taps(in_h, size, 0, size, box=(y0, y1))
        cols = _axis_taps(in_w, size, 0, size, box=(x0, x1))
        return cls(in_h, in_w, size, (y1 - y0, x1 - x0), y0, x0, rows, cols)

    @classmethod
    def _letterbox(cls, in_h: int, in_w: int, size: int, mirror: bool) -> CropResizePlan:
        """The whole image resized so its long side is S (short side int(S*short/long)), centred on black bars."""
        long, short = max(in_h, in_w), min(in_h, in_w)
        new_short = max(1, int(size * short / long))
        new_h, new_w = (size, new_short) if in_h >= in_w else (new_short, size)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        rows = _axis_taps(in_h, new_h, 0, new_h, lead=top, out=size)
        cols = _axis_taps(in_w, new_w, 0, new_w, lead=left, out=size, mirror=mirror)
        return cls(in_h, in_w, size, (new_h, new_w), -top, -left, rows, cols)

    @classmethod
    def views(cls, in_h: int, in_w: int, spec: PreprocessSpec) -> tuple[CropResizePlan, ...]:
        """The views of `spec.frame_policy` in the order the encoder gets them (`view_roles`), then the windows.

        When `spec.region_grid` is R > 0: the R*R region windows tiling the whole frame (row-major, never mirrored).
        """
        one = functools.partial(cls.build, in_h, in_w, spec.size, resize=spec.resize, mirror=spec.mirror)
        if spec.frame_policy == "center":
            frame: tuple[CropResizePlan, ...] = (one(),)
        elif spec.frame_policy == "pad":
            frame = (one(place="pad"), one())
        elif spec.frame_policy == "tiles":
            frame = (one(place="start"), one(), one(place="end"))
        else:
            raise UsageError(f"frame_policy must be one of {FRAME_POLICIES}, got {spec.frame_policy!r}")
        if not spec.region_grid:
            return frame
        boxes = frame_windows((in_h, in_w), spec.region_grid)
        return frame + tuple(cls.window(in_h, in_w, spec.size, tuple(b)) for b in boxes)

    @property
    def mid_rows(self) -> int:
        """Rows of the intermediate (horizontally resized) image."""
        return self.rows.last - self.rows.first


def yuv_coefficients(matrix: str = "bt601", full_range: bool = False) -> dict[str, float]:
    """YCbCr -> RGB constants shared by the CPU twin and the kernel.

    R = Y' + rv*V', G = Y' - gu*U' - gv*V', B = Y' + bu*U' with Y' = (Y - y_off) * y_scale and
    U' = (U - 128) * c_scale, V' likewise; limited range maps Y 16..235 and chroma 16..240 to full scale.
    """
    if matrix not in _YUV_MATRICES:
        raise UsageError(f"unknown YUV matrix {matrix!r}; expected one of {sorted(_YUV_MATRICES)}")
    kr, kb = _YUV_MATRICES[matrix]
    kg = 1.0 - kr - kb
    return {
        "y_off": 0.0 if full_range else 16.0,
        "y_scale": 1.0 if full_range else 255.0 / 219.0,
        "c_scale": 1.0 if full_range else 255.0 / 224.0,
        "rv": 2.0 * (1.0 - kr),
        "gu": 2.0 * kb * (1.0 - kb) / kg,
        "gv": 2.0 * kr * (1.0 - kr) / kg,
        "bu": 2.0 * (1.0 - kb),
    }


def _round_u8(x: np.ndarray) -> np.ndarray:
    """PIL's clip8 in place: round half up, clip to [0, 255] (values stay float32)."""
    x += 0.5
    np.floor(x, out=x)
    np.clip(x, 0.0, 255.0, out=x)
    return x


def nv12_chroma_rows(rows: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chroma rows FFmpeg blends for each luma row of an NV12 frame: (upper, lower, weight of the lower).

    FFmpeg's conversion (swscale with its default flags, what PyAV's `to_ndarray(format="bgr24")` and so the
    CPU decode path run) replicates chroma horizontally and interpolates it vertically: luma row 2k+1 takes
    chroma row k, row 2k the mean of rows k-1 and k, row 0 chroma row 0, and row height-2 a quarter of row k-1
    and three quarters of row k. Measured against PyAV 18.1's FFmpeg for heights >= 8 (tests/test_preprocess.py).
    """
    rows = np.asarray(rows)
    lower = rows // 2
    odd = rows % 2 == 1
    upper = np.where(odd | (rows == 0), lower, lower - 1)
    weight = np.where(odd | (rows == 0), 1.0, np.where(rows == height - 2, 0.75, 0.5)).astype(np.float32)
    return upper, lower, weight


def nv12_planes_to_rgb(y: np.ndarray, uv: np.ndarray, coef: dict[str, float], row0: int = 0, col0: int = 0,
                       height: int | None = None) -> np.ndarray:
    """Convert NV12 planes to planar RGB float32 [3, h, w]: `y` is a window of the Y plane, `uv` the whole plane.

    `y` holds rows row0.. and columns col0.. of a frame of `height` rows (default: `y` is the whole Y plane);
    `uv` is the frame's whole interleaved UV plane [height/2, w/2, 2]. Chroma is upsampled as FFmpeg does
    (`nv12_chroma_rows`); values are rounded half up and clipped to 0..255, i.e. the uint8 RGB a decoder would
    output. Float32 arithmetic in the same order as the kernel.
    """
    f32 = np.float32
    upper, lower, weight = nv12_chroma_rows(np.arange(row0, row0 + y.shape[0]), height or y.shape[0])
    cols = np.arange(col0, col0 + y.shape[1]) // 2
    a, b = uv[upper][:, cols].astype(f32), uv[lower][:, cols].astype(f32)
    chroma = a + weight[:, None, None] * (b - a)  # exact: weights are 1, 1/2, 3/4
    yy = (y.astype(f32) - f32(coef["y_off"])) * f32(coef["y_scale"])
    u = (chroma[..., 0] - f32(128.0)) * f32(coef["c_scale"])
    v = (chroma[..., 1] - f32(128.0)) * f32(coef["c_scale"])
    out = np.empty((3, *y.shape), f32)
    out[0] = yy + f32(coef["rv"]) * v
    out[1] = yy - f32(coef["gu"]) * u - f32(coef["gv"]) * v
    out[2] = yy + f32(coef["bu"]) * u
    return _round_u8(out)


def nv12_to_rgb(nv12: np.ndarray, matrix: str = "bt601", full_range: bool = False) -> np.ndarray:
    """Convert one NV12 frame ([h*3/2, w] uint8) to an HxWx3 uint8 RGB image (reference helper)."""
    y, uv = split_nv12(nv12)
    rgb = nv12_planes_to_rgb(y, uv, yuv_coefficients(matrix, full_range))
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)).astype(np.uint8)


def split_nv12(nv12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views of the Y plane [h, w] and the interleaved UV plane [h/2, w/2, 2] of an NV12 frame."""
    if not isinstance(nv12, np.ndarray) or nv12.dtype != np.uint8 or nv12.ndim != 2:
        got = f"{nv12.dtype} array of shape {nv12.shape}" if isinstance(nv12, np.ndarray) else type(nv12)
        raise UsageError(f"NV12 frame must be a 2-D uint8 array of shape (h*3/2, w), got {got}")
    rows, w = nv12.shape
    h = rows * 2 // 3
    if rows % 3 or h % 2 or w % 2 or h == 0 or w == 0:
        raise UsageError(
            f"NV12 frame of shape {nv12.shape} is not (h*3/2, w) with even, non-zero h and w "
            "(Y plane of h rows followed by h/2 rows of interleaved UV)"
        )
    return nv12[:h], nv12[h:].reshape(h // 2, w // 2, 2)


class _CpuPlan:
    """A CropResizePlan as dense float32 blocks for BLAS, plus its scratch buffers.

    Layout: the uint8 input window is transposed once (cv2, SIMD) so that both passes are row-block matmuls
    on contiguous rows with channels interleaved (BGR): window^T (cols, rows*3) -> mid (S, rows*3) ->
    mid^T (rows, S*3) -> out (S, S*3). Each block converts just the input rows it reads to float32, so the
    float copy of the window stays in cache instead of streaming a 4-bytes-per-sample copy of the frame.
    """

    def __init__(self, plan: CropResizePlan):
        self.plan = plan
        self.h_blocks = self._blocks(plan.cols, _block_size(plan.in_w / plan.resized[1]))
        self.v_blocks = self._blocks(plan.rows, _block_size(plan.in_h / plan.resized[0]))
        n_rows, n_cols, size = plan.mid_rows, plan.cols.last - plan.cols.first, plan.size
        span = max(i1 - i0 for _, _, i0, i1, _ in self.h_blocks)
        # Preallocated: a fresh multi-MB array per frame costs more in page faults than the transpose itself.
        self.window_t = np.empty((n_cols, n_rows, 3), np.uint8)
        self.mid_t = np.empty((n_rows, size, 3), np.float32)
        self.rows_f32 = np.empty((span, n_rows * 3), np.float32)  # one block's input rows as float32
        self.mid = np.empty((size, n_rows * 3), np.float32)  # horizontal pass (rounded to uint8 values)
        self.out = np.empty((size, size * 3), np.float32)  # vertical pass, HWC BGR
        self.chw = np.empty((3, size, size), np.float32)  # normalised RGB

    @staticmethod
    def _blocks(taps: AxisTaps, block: int) -> list[tuple[int, int, int, int, np.ndarray]]:
        """Split outputs into runs of `block`; each run is one dense [block, span] float32 matrix."""
        out = []
        n, k = taps.coeffs.shape
        w = taps.coeffs.astype(np.float64) / float(1 << PRECISION_BITS)
        for o0 in range(0, n, block):
            o1 = min(o0 + block, n)
            i0 = int(taps.start[o0:o1].min())
            i1 = min(int((taps.start[o0:o1] + k).max()), taps.last)
            dense = np.zeros((o1 - o0, i1 - i0), np.float64)
            for j in range(o0, o1):
                s = int(taps.start[j]) - i0
                m = min(k, i1 - i0 - s)
                dense[j - o0, s : s + m] = w[j, :m]
            # Input indices relative to the window the pass reads ([first, last) of this axis).
            out.append((o0, o1, i0 - taps.first, i1 - taps.first, dense.astype(np.float32)))
        return out

    def run(self, window: np.ndarray) -> np.ndarray:
        """Resize the uint8 BGR input window [rows, cols, 3]; returns [S, S, 3] BGR (uint8 values, float32)."""
        size, n_rows = self.plan.size, self.plan.mid_rows
        src = cv2.transpose(window, dst=self.window_t).reshape(window.shape[1], n_rows * 3)
        for o0, o1, i0, i1, dense in self.h_blocks:
            rows = self.rows_f32[: i1 - i0]
            np.copyto(rows, src[i0:i1], casting="unsafe")
            np.matmul(dense, rows, out=self.mid[o0:o1])
        _round_u8(self.mid)
        mid_t = cv2.transpose(self.mid.reshape(size, n_rows, 3), dst=self.mid_t).reshape(n_rows, size * 3)
        for o0, o1, i0, i1, dense in self.v_blocks:
            np.matmul(dense, mid_t[i0:i1], out=self.out[o0:o1])
        return _round_u8(self.out).reshape(size, size, 3)


class SizeCache:
    """Per-input-size cache keeping the `capacity` sizes used last (least recently used evicted first).

    Frames whose size keeps changing (a hostile file, a camera renegotiating its resolution) must not grow
    memory without bound.

    `get(key, make)` returns the cached value or `make()`; an evicted value goes to `on_evict` (the CUDA
    preprocessor frees its device buffers there, after its stream has finished with them).
    """

    def __init__(self, capacity: int, on_evict: Callable[[Any], None] | None = None) -> None:
        if capacity < 1:
            raise UsageError(f"cache capacity must be >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self.on_evict = on_evict
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        while len(self._items) >= self.capacity:
            _, old = self._items.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(old)
        value = self._items[key] = make()
        return value

    def values(self) -> list[Any]:
        return list(self._items.values())

    def __iter__(self) -> Iterator[Any]:
        """The cached keys, least recently used first."""
        return iter(list(self._items))

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class CpuPreprocessor:
    """CLIP preprocessing of uint8 BGR (or NV12) frames on the CPU, the twin of the CUDA kernel.

    Example:
        >>> pre = CpuPreprocessor(224)
        >>> batch = pre([frame_bgr])          # np.ndarray [1, 3, 224, 224] float32

    Filter matrices and scratch buffers are cached per input size, for the `max_plans` sizes used last (a
    1080p plan holds about 9 MB, so frames whose size keeps changing must not grow memory without bound); the
    returned array is freshly allocated (callers may keep it).
    """

    def __init__(self, image_size: int = 224, dtype: Any = np.float32, *, max_plans: int = 16,
                 spec: PreprocessSpec | None = None):
        """Create a preprocessor.

        Args:
            image_size: side S of the square crop (224 for ViT-B/16; smaller for tiny test models).
            dtype: np.float32 or np.float16 output.
            max_plans: input sizes whose plans are kept (least recently used dropped first).
            spec: the bundle's preprocessing (`Bundle.preprocess_spec`: its mean and std); None: CLIP's.
        """
        if not isinstance(image_size, (int, np.integer)) or image_size <= 0:
            raise UsageError(f"image_size must be a positive int, got {image_size!r}")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float16):
            raise UsageError(f"dtype must be float32 or float16, got {self.dtype}")
        self.image_size = int(image_size)
        self.spec = preprocess_spec(self.image_size, spec)
        self.max_plans = int(max_plans)
        self._plans = SizeCache(max_plans)
        scale, bias = normalisation(self.spec)
        self._scale, self._bias = scale.reshape(3, 1, 1), bias.reshape(3, 1, 1)

    @property
    def views(self) -> int:
        """Images per frame (`PreprocessSpec.views`); the output holds them view-major: image v * B + b."""
        return self.spec.views

    def plan(self, height: int, width: int) -> CropResizePlan:
        """The (cached) resize/crop plan of an input size (its first view)."""
        return self._cpu_plans(height, width)[0].plan

    def view_plans(self, height: int, width: int) -> tuple[CropResizePlan, ...]:
        """The (cached) plans of every view of an input size (`CropResizePlan.views`)."""
        return tuple(cp.plan for cp in self._cpu_plans(height, width))

    def _cpu_plans(self, height: int, width: int) -> tuple[_CpuPlan, ...]:
        h, w = int(height), int(width)
        return self._plans.get((h, w), lambda: tuple(_CpuPlan(p) for p in CropResizePlan.views(h, w, self.spec)))

    def __call__(self, frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Preprocess HxWx3 uint8 BGR frames (any sizes) into [V*B, 3, S, S] normalised RGB (V = `views`).

        Each frame is checked first (`stp_edge.frames.validate_frame`: gray and BGRA are converted, anything else
        is a `FrameError`).
        """
        frames = self._as_list(frames, "BGR")
        return self._from_valid([validate_frame(f, i) for i, f in enumerate(frames)])

    def _from_valid(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """`__call__` of frames `validate_frame` returned, not checked again: the entry of the encode stage."""
        n = len(frames)
        out = np.empty((self.views * n, 3, self.image_size, self.image_size), self.dtype)
        for b, frame in enumerate(frames):
            for v, cp in enumerate(self._cpu_plans(frame.shape[0], frame.shape[1])):
                p = cp.plan
                self._finish(cp, frame[p.rows.first : p.rows.last, p.cols.first : p.cols.last], out[v * n + b])
        return out

    def from_nv12(
        self, frames: Sequence[np.ndarray] | np.ndarray, matrix: str = "bt601", full_range: bool = False
    ) -> np.ndarray:
        """Preprocess NV12 frames ([h*3/2, w] uint8 each) into [B, 3, S, S].

        Args:
            frames: NV12 frames; each is the Y plane followed by the interleaved UV plane.
            matrix: "bt601" (SD cameras, OpenCV's default) or "bt709" (HD).
            full_range: True for full-range (JPEG) YUV, False for limited (video) range.
        """
        coef = yuv_coefficients(matrix, full_range)
        frames = self._as_list(frames, "NV12")
        n = len(frames)
        out = np.empty((self.views * n, 3, self.image_size, self.image_size), self.dtype)
        for b, nv12 in enumerate(frames):
            try:
                y, uv = split_nv12(nv12)
            except ValueError as exc:
                raise UsageError(f"frame {b}: {exc}") from None
            for v, cp in enumerate(self._cpu_plans(y.shape[0], y.shape[1])):
                self._nv12_view(cp, y, uv, coef, out[v * n + b])
        return out

    def _nv12_view(self, cp: _CpuPlan, y: np.ndarray, uv: np.ndarray, coef: dict[str, float], out: np.ndarray
                   ) -> None:
        """One view of one NV12 frame (planes `y`, `uv`) into `out` [3, S, S]."""
        p = cp.plan
        # Convert only the window the resize reads (chroma rows come from the whole plane).
        rgb = nv12_planes_to_rgb(y[p.rows.first : p.rows.last, p.cols.first : p.cols.last], uv, coef,
                                 row0=p.rows.first, col0=p.cols.first, height=y.shape[0])
        bgr = rgb[::-1].transpose(1, 2, 0).astype(np.uint8)
        self._finish(cp, bgr, out)

    def _finish(self, cp: _CpuPlan, window: np.ndarray, out: np.ndarray) -> None:
        bgr = cp.run(window)
        for c in range(3):  # HWC BGR -> CHW RGB, normalised in float32 with the kernel's op order
            np.multiply(bgr[:, :, 2 - c], self._scale[c], out=cp.chw[c])
        cp.chw += self._bias
        out[...] = cp.chw

    @staticmethod
    def _as_list(frames: Any, kind: str) -> list[np.ndarray]:
        if isinstance(frames, np.ndarray):
            frames = [frames] if frames.ndim == (3 if kind == "BGR" else 2) else list(frames)
        frames = list(frames)
        if not frames:
            raise UsageError(f"expected at least one {kind} frame, got an empty sequence")
        return frames
