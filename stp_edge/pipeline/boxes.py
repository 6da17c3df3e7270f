"""Stage 5, boxes: an anomaly map -> boxes in original frame pixels.

The model sees the centre crop of the frame (CLIP preprocessing: short side resized to S, centre crop SxS),
i.e. the square of side min(H, W) centred in the frame (`stp_edge.geometry.crop_square`). Region cells are
mapped back into that square in original frame pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stp_edge.geometry import region_boxes, to_frame_coords
from stp_edge.results import Box


def box_class(class_probs: Sequence[float]) -> int:
    """The class a snippet's boxes carry: the most probable abnormal class (index >= 1).

    A box shows an anomaly even when the normal class is the most probable one.
    """
    return 1 + int(np.argmax(np.asarray(class_probs)[1:]))


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
