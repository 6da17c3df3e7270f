"""Stage 5, boxes: an anomaly map -> boxes in original frame pixels, by one of two rules (`BOX_RULES`).

Where the regions lie (`region_cells`): with region extent "center" (manifests without `preprocess.region_grid`)
they tile the view the encoder saw, the centre crop of the frame (CLIP preprocessing: short side resized to S,
centre crop SxS, the square of side min(H, W) centred in the frame, `stp_edge.geometry.crop_square`; VadCLIP's
fixed resize makes it a rectangle, its mirror flips it), and cells are mapped back into that part of the frame;
with region extent "frame" each region is one of the R x R windows tiling the whole frame
(`stp_edge.geometry.frame_windows`), so a box can reach every edge of the frame.

Both rules share one cut level: a region counts as anomalous when its score is >= `threshold` and at least `level`
of the way from the map's median (the background) to its peak (a half-maximum rule with the default 0.5).
- "components" (ours, the default): the 8-connected components of such regions, the peak's first.
- "best_window" (retrieval, as STPrompt retrieves the best window): the one rectangle of regions whose scores
  exceed the cut by the most in total (a maximum-sum sub-rectangle of `map - cut`). A single outstanding region
  gives its own window (in crops mode the crop it was encoded from); a block above the cut gives the block, and
  weak cells that only touch it diagonally are left out, where a component would stretch its box to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stp_edge.bundle.preprocessing import PreprocessSpec, analysed_boxes
from stp_edge.config import BOX_RULES
from stp_edge.errors import UsageError
from stp_edge.geometry import frame_windows, region_boxes, to_frame_coords
from stp_edge.results import Box


def box_class(class_probs: Sequence[float]) -> int:
    """The class a snippet's boxes carry: the most probable abnormal class (index >= 1).

    A box shows an anomaly even when the normal class is the most probable one.
    """
    return 1 + int(np.argmax(np.asarray(class_probs)[1:]))


def cut_level(amap: np.ndarray, threshold: float, level: float = 0.5) -> float:
    """The score a region needs to count as anomalous: >= threshold and `level` of the way from median to peak."""
    peak, background = float(amap.max()), float(np.median(amap))
    return max(threshold, background + level * (peak - background))


def region_cells(R: int, image_size: int, frame_hw: tuple[int, int], mode: str = "tokens",
                 spec: PreprocessSpec | None = None) -> np.ndarray:
    """[R*R, 4] boxes (x1, y1, x2, y2) of the regions in frame pixels, row-major (the map's cells on the frame).

    `spec`: the bundle's preprocessing (`Bundle.preprocess_spec`): with `region_grid` R the windows tiling the whole
    frame; otherwise the cells (tokens) or crop windows (crops) of the centre view, mapped onto the part of the
    frame it shows (mirrored when it is). None: CLIP's centre square.
    """
    if spec is not None and spec.region_grid:
        if spec.region_grid != R:
            raise UsageError(f"a {R}x{R} map does not fit the bundle's {spec.region_grid}x{spec.region_grid} "
                             "region crops of the whole frame")
        return frame_windows(frame_hw, R).astype(np.float64)
    area = None if spec is None else analysed_boxes(spec, frame_hw)["regions"][0]
    return to_frame_coords(region_boxes(image_size, R, mode), image_size, frame_hw, area,
                           mirror=spec is not None and spec.mirror)


def boxes_from_map(amap: np.ndarray, frame_hw: tuple[int, int], image_size: int, *, threshold: float,
                   class_id: int, mode: str = "tokens", level: float = 0.5, rule: str = "components",
                   spec: PreprocessSpec | None = None) -> list[Box]:
    """Boxes in frame pixels, the anomaly's own box first, by `rule` (one of BOX_RULES; see the module docstring).

    "components": the first box is the component holding the peak (just the peak cell when the peak is below
    `threshold`); the other components follow by score. "best_window": one box. A box spans its regions' cells
    (`region_cells`: crop windows in crops mode, of the whole frame when `spec` says so); its score is the highest
    region score in it.
    """
    if rule not in BOX_RULES:
        raise UsageError(f"box rule must be one of {BOX_RULES}, got {rule!r}")
    cells = region_cells(amap.shape[0], image_size, frame_hw, mode, spec)
    cut = cut_level(amap, threshold, level)
    if rule == "best_window":
        r0, r1, c0, c1 = best_window(amap, cut)
        idx = np.array([r * amap.shape[1] + c for r in range(r0, r1) for c in range(c0, c1)])
        return [_box(cells[idx], amap.reshape(-1)[idx], class_id)]
    return _component_boxes(amap, cells, cut, class_id)


def best_window(amap: np.ndarray, cut: float) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), half-open: the rectangle of cells maximising sum(amap - cut).

    Ties (sums within 1e-9 relative) go to the smaller window, then the first in (row0, row1, col0, col1) order.
    When no cell reaches the cut the best rectangle is the peak cell alone (every sum is negative and a single cell
    loses least). Every rectangle is scored at once from an integral image: (R(R+1)/2)^2 of them, 784 for R=7.
    """
    R, C = amap.shape
    integral = np.zeros((R + 1, C + 1))
    integral[1:, 1:] = (np.asarray(amap, np.float64) - cut).cumsum(0).cumsum(1)
    r0, r1 = np.ogrid[:R + 1, :R + 1]
    c0, c1 = np.ogrid[:C + 1, :C + 1]
    r0, r1, c0, c1 = r0[:, :, None, None], r1[:, :, None, None], c0[None, None], c1[None, None]
    total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    valid = (r1 > r0) & (c1 > c0)
    total = np.where(valid, total, -np.inf)
    best = total.max()
    near = valid & (total >= best - 1e-9 * max(1.0, abs(best)))
    area = np.where(near, (r1 - r0) * (c1 - c0), np.iinfo(np.int64).max)
    k = int(np.argmin(area))  # argmin returns the first of equal areas: row-major over (r0, r1, c0, c1)
    a, b, c, d = np.unravel_index(k, total.shape)
    return int(a), int(b), int(c), int(d)


def _box(cells: np.ndarray, scores: np.ndarray, class_id: int) -> Box:
    """The box spanning `cells` [n, 4], scored with the highest of their `scores`."""
    return Box(float(cells[:, 0].min()), float(cells[:, 1].min()), float(cells[:, 2].max()), float(cells[:, 3].max()),
               score=float(scores.max()), class_id=class_id)


def _component_boxes(amap: np.ndarray, cells: np.ndarray, cut: float, class_id: int) -> list[Box]:
    """One box per 8-connected component of cells >= cut (the peak cell always in), the peak's first."""
    import cv2

    flat = amap.reshape(-1)
    top = int(np.argmax(flat))
    mask = (amap >= cut).astype(np.uint8)
    mask.reshape(-1)[top] = 1
    n, labels, _, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    flat_labels = labels.reshape(-1)
    boxes = []
    for lab in range(1, n):
        idx = np.flatnonzero(flat_labels == lab)
        boxes.append(_box(cells[idx], flat[idx], class_id))
    first = int(flat_labels[top]) - 1
    rest = sorted((b for i, b in enumerate(boxes) if i != first), key=lambda b: -b.score)
    return [boxes[first], *rest]
