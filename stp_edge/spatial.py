"""Spatial stream post-processing: region scores -> anomaly map -> frame-sized map and boxes.

The model sees the centre crop of the frame (CLIP preprocessing: short side resized to S, centre crop SxS),
i.e. the square of side min(H, W) centred in the frame. Every coordinate of the map is mapped back into that
square in original frame pixels (exact up to the resize's integer rounding, < 1 pixel). Pixels outside the
square were never seen by the model and get 0 in the upsampled map.
"""

from __future__ import annotations

import numpy as np

from stp_edge.regions import crop_windows
from stp_edge.results import Box


def anomaly_map(region_scores: np.ndarray) -> np.ndarray:
    """[R2] region scores (row-major) -> [R, R] map."""
    r2 = int(region_scores.shape[-1])
    R = round(np.sqrt(r2))
    if R * R != r2:
        raise ValueError(f"anomaly_map: {r2} region scores is not a square grid")
    return np.asarray(region_scores, dtype=np.float32).reshape(R, R)


def crop_square(frame_hw: tuple[int, int]) -> tuple[float, float, float]:
    """(x0, y0, side) of the centre-crop square the model sees, in original frame pixels."""
    h, w = frame_hw
    side = float(min(h, w))
    return (w - side) / 2.0, (h - side) / 2.0, side


def region_boxes(image_size: int, R: int, mode: str = "tokens") -> np.ndarray:
    """[R*R, 4] boxes (x1, y1, x2, y2) of each region in model-input pixels, row-major.

    tokens mode: the cells of an RxR grid; crops mode: the overlapping crop windows.
    """
    if mode == "crops":
        return np.array([(x, y, x + s, y + s) for y, x, s in crop_windows(image_size, R)], dtype=np.float64)
    if mode != "tokens":
        raise ValueError(f"region mode must be 'tokens' or 'crops', got {mode!r}")
    cell = image_size / R
    return np.array([(j * cell, i * cell, (j + 1) * cell, (i + 1) * cell) for i in range(R) for j in range(R)])


def to_frame_coords(boxes: np.ndarray, image_size: int, frame_hw: tuple[int, int]) -> np.ndarray:
    """Map [..., 4] boxes from model-input pixels (SxS crop) to original frame pixels."""
    x0, y0, side = crop_square(frame_hw)
    s = side / image_size
    out = np.asarray(boxes, dtype=np.float64) * s
    out[..., [0, 2]] += x0
    out[..., [1, 3]] += y0
    return out


def upsample_map(amap: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """[R, R] map -> [H, W] float32 map of the frame (bilinear inside the centre square, 0 outside)."""
    import cv2

    h, w = frame_hw
    x0, y0, side = crop_square(frame_hw)
    side_i, x0_i, y0_i = int(side), round(x0), round(y0)
    out = np.zeros((h, w), dtype=np.float32)
    out[y0_i:y0_i + side_i, x0_i:x0_i + side_i] = cv2.resize(amap.astype(np.float32), (side_i, side_i),
                                                             interpolation=cv2.INTER_LINEAR)
    return out


def boxes_from_map(amap: np.ndarray, frame_hw: tuple[int, int], image_size: int, *, threshold: float,
                   class_id: int, mode: str = "tokens", level: float = 0.5) -> list[Box]:
    """Boxes in frame pixels, the anomaly's own box first.

    Regions count as anomalous when their score is >= `threshold` and at least `level` of the way from the map's
    median (the background) to its peak: with the default 0.5 a half-maximum rule that keeps a box to the
    anomaly when a model scores the whole frame above an absolute threshold. The first box is the 8-connected
    component of such regions that holds the peak (just the peak cell when the peak is below `threshold`); the
    other components follow by score. A box is the union of its regions' cells; its score is the highest region
    score in it.
    """
    import cv2

    R = amap.shape[0]
    flat = amap.reshape(-1)
    cells = to_frame_coords(region_boxes(image_size, R, mode), image_size, frame_hw)
    top = int(np.argmax(flat))
    peak, background = float(flat[top]), float(np.median(flat))
    cut = max(threshold, background + level * (peak - background))
    mask = (amap >= cut).astype(np.uint8)
    mask.reshape(-1)[top] = 1
    n, labels, _, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    flat_labels = labels.reshape(-1)
    boxes = []
    for lab in range(1, n):
        idx = np.flatnonzero(flat_labels == lab)
        c = cells[idx]
        boxes.append(Box(float(c[:, 0].min()), float(c[:, 1].min()), float(c[:, 2].max()), float(c[:, 3].max()),
                         score=float(flat[idx].max()), class_id=class_id))
    first = int(flat_labels[top]) - 1
    rest = sorted((b for i, b in enumerate(boxes) if i != first), key=lambda b: -b.score)
    return [boxes[first], *rest]
