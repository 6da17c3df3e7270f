"""Primitive metrics of scores and boxes, NumPy only: a ROC AUC for small sets and the IoU of boxes.

The ground floor under the evaluation wing (`stp_edge.eval.metrics`) and the demo model's training diagnostics.
"""

from __future__ import annotations

import numpy as np


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the probability that a random positive outscores a random negative (ties count half).

    NumPy only (no scikit-learn), for diagnostics on small sets; NaN when only one class is present.
    """
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, float).ravel()
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not pos.size or not neg.size:
        return float("nan")
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes [N,4] and [N,4] (x1, y1, x2, y2); NaN rows give 0."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = lambda z: np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.nan_to_num(iou, nan=0.0)
