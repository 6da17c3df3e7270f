"""Frame-level metrics of anomaly scores and boxes.

All over frames pooled across videos, as UCF-Crime / ShanghaiTech / UBnormal results are reported:
- `auc`: ROC AUC of frame scores against frame labels (anomalous = 1);
- `ap`: average precision (scikit-learn's step-wise definition, no interpolation);
- per class, one-vs-normal: all frames of the normal videos plus all frames of that class's videos;
- `tiou`: localization in the sense of the UCF-Crime spatio-temporal literature (Liu & Ma, "Exploring
  Background-bias for Anomaly Detection in Surveillance Videos", ACM MM 2019, which annotated boxes on the
  UCF-Crime test anomalies; STPrompt reports the same metric):

      TIoU = (1 / N) * sum_{j=1..N} IoU(P_j, G_j) * [s_j >= threshold]

  over the N frames that are anomalous and carry a ground-truth box G_j, where P_j is the predicted box of
  frame j (the detector's top box) and s_j its frame score. A frame with no predicted box, or whose score is
  below the threshold, contributes 0. Frames without a ground-truth box are not counted.

Frame ranges everywhere are 0-based and half-open, [start, end).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stp_edge._deps import require
from stp_edge.datasets import GroundTruthMismatch, VideoGroundTruth, check_ground_truth
from stp_edge.errors import UsageError
from stp_edge.metrics import box_iou
from stp_edge.results import finite_or_none


@dataclass
class VideoPrediction:
    """A detector's output for one video, expanded to frames.

    Attributes:
        scores: anomaly score per frame [F].
        boxes: top predicted box per frame [F, 4] (x1, y1, x2, y2), NaN where none; None if not localizing.
    """

    scores: np.ndarray
    boxes: np.ndarray | None = None


@dataclass
class EvalResult:
    """Frame-level metrics; None where a metric is undefined (e.g. no anomalous frames).

    `excluded` maps each video left out because its ground truth does not fit it to the reason
    (`evaluate_bundle(on_mismatch="skip")`); the metrics and counts cover the other videos only.
    """

    auc: float | None
    ap: float | None
    tiou: float | None
    threshold: float
    per_class: dict[str, dict[str, Any]]
    counts: dict[str, int]
    excluded: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with keys auc, ap, tiou, threshold, per_class, counts, excluded."""
        return {"auc": self.auc, "ap": self.ap, "tiou": self.tiou, "threshold": self.threshold,
                "per_class": self.per_class, "counts": self.counts, "excluded": self.excluded}

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of `to_dict()`."""
        return json.dumps(self.to_dict(), indent=indent)



def require_eval_dependencies(plots: bool = False) -> None:
    """Fail now, naming the `eval` extra, when what the metrics (scikit-learn) or plots (matplotlib) need is missing.

    Called before any video is scored: finding out after hours of scoring would waste them.
    """
    require("sklearn.metrics", "evaluation (frame AUC/AP)")
    if plots:
        require("matplotlib", "evaluation plots (--out)")


def frame_auc_ap(scores: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    """ROC AUC and average precision of scores against 0/1 labels; (None, None) if only one class present."""
    metrics = require("sklearn.metrics", "evaluation")
    scores, labels = np.asarray(scores, float).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise UsageError(f"scores has {scores.size} frames but labels has {labels.size}")
    if not np.all(np.isfinite(scores)):
        raise UsageError(f"scores contain {int((~np.isfinite(scores)).sum())} non-finite values")
    if labels.min(initial=0) == labels.max(initial=0):
        return None, None
    return (float(metrics.roc_auc_score(labels, scores)),
            float(metrics.average_precision_score(labels, scores)))


def tiou(scores: np.ndarray, pred_boxes: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
         threshold: float = 0.5) -> tuple[float | None, int]:
    """TIoU over anomalous frames with a ground-truth box (see the module docstring).

    Args:
        scores: frame scores [F].
        pred_boxes: predicted top box per frame [F,4], NaN where none.
        gt_boxes: ground-truth box per frame [F,4], NaN where none.
        gt_labels: 0/1 anomalous frame labels [F].
        threshold: a frame's IoU counts only if its score is >= threshold.

    Returns:
        (TIoU or None when no frame qualifies, number of frames averaged over).
    """
    scores = np.asarray(scores, float)
    pred_boxes, gt_boxes = np.asarray(pred_boxes, float), np.asarray(gt_boxes, float)
    n = scores.shape[0]
    if pred_boxes.shape != (n, 4) or gt_boxes.shape != (n, 4) or np.shape(gt_labels) != (n,):
        raise UsageError(f"shape mismatch: scores {scores.shape}, pred_boxes {pred_boxes.shape}, "
                         f"gt_boxes {gt_boxes.shape}, gt_labels {np.shape(gt_labels)}; expected [F], [F,4], "
                         "[F,4], [F]")
    sel = (np.asarray(gt_labels) > 0) & np.all(np.isfinite(gt_boxes), axis=1)
    if not sel.any():
        return None, 0
    iou = box_iou(pred_boxes[sel], gt_boxes[sel]) * (scores[sel] >= threshold)
    return float(iou.mean()), int(sel.sum())


def evaluate_videos(gts: Sequence[VideoGroundTruth], preds: Mapping[str, VideoPrediction], *,
                    threshold: float = 0.5) -> EvalResult:
    """Pool frames over videos and compute AUC, AP, TIoU overall and per class (one-vs-normal).

    Args:
        gts: ground truth, one per video.
        preds: predictions keyed by `VideoGroundTruth.name`; every ground-truth video must have one.
        threshold: score threshold for TIoU gating.

    Returns:
        An `EvalResult`.

    Raises:
        ValueError: a video has no prediction.
        GroundTruthMismatch: a video's ground truth does not fit its prediction's frames (frame count, a range
            or box past the end): never clipped silently.
    """
    missing = [g.name for g in gts if g.name not in preds]
    if missing:
        raise UsageError(f"no prediction for {len(missing)} video(s): {missing[:5]}")
    per_video = []
    for g in gts:
        p = preds[g.name]
        n = len(p.scores)
        if g.num_frames is not None and g.num_frames != n:
            raise GroundTruthMismatch(f"{g.name}: prediction has {n} frames, ground truth {g.num_frames}")
        problems = check_ground_truth(g, n)
        if problems:
            raise GroundTruthMismatch(f"{g.name}: " + "; ".join(problems))
        pb = p.boxes if p.boxes is not None else np.full((n, 4), np.nan)
        if np.shape(pb) != (n, 4):
            raise UsageError(f"{g.name}: boxes shape {np.shape(pb)}, expected ({n}, 4)")
        per_video.append((g, np.asarray(p.scores, float), g.frame_labels(n), np.asarray(pb, float),
                          g.box_array(n)))

    def pooled(items: list) -> dict[str, Any]:
        s = np.concatenate([it[1] for it in items])
        y = np.concatenate([it[2] for it in items])
        auc, ap = frame_auc_ap(s, y)
        ti, n_box = tiou(s, np.concatenate([it[3] for it in items]), np.concatenate([it[4] for it in items]),
                         y, threshold)
        return {"auc": finite_or_none(auc), "ap": finite_or_none(ap), "tiou": finite_or_none(ti),
                "videos": len(items), "frames": int(y.size), "anomalous_frames": int(y.sum()),
                "box_frames": n_box}

    overall = pooled(per_video)
    normal = [it for it in per_video if not it[0].anomalous]
    per_class = {}
    for cls in sorted({it[0].label for it in per_video if it[0].anomalous}):
        per_class[cls] = pooled(normal + [it for it in per_video if it[0].anomalous and it[0].label == cls])
    counts = {"videos": len(per_video), "normal_videos": len(normal),
              "anomalous_videos": len(per_video) - len(normal), "frames": overall["frames"],
              "anomalous_frames": overall["anomalous_frames"], "box_frames": overall["box_frames"]}
    return EvalResult(overall["auc"], overall["ap"], overall["tiou"], threshold, per_class, counts)
