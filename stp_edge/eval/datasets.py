"""Frame-level evaluation of anomaly scores and boxes, and readers for the ground truth of common data sets.

Metrics (all over frames pooled across videos, as UCF-Crime / ShanghaiTech / UBnormal results are reported):
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

Readers: UCF-Crime `Temporal_Anomaly_Annotation_for_Testing_Videos.txt`, ShanghaiTech `test_frame_mask/*.npy`,
UBnormal `*_tracks.txt`, and the synthetic benchmark of `stp_edge.synthetic` (manifest + annotation + boxes).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge._deps import require


class AnnotationError(ValueError):
    """A ground-truth file is malformed; the message names the file, line and what was expected."""


@dataclass
class VideoGroundTruth:
    """Ground truth of one video.

    Attributes:
        name: video identifier (file name as the annotation spells it).
        label: video-level class name; "normal" for normal videos.
        ranges: anomalous frame ranges [start, end), 0-based.
        num_frames: frame count, or None when the annotation does not say (UCF-Crime).
        boxes: optional {frame: (x1, y1, x2, y2)} of the anomaly, in pixels.
    """

    name: str
    label: str
    ranges: list[tuple[int, int]] = field(default_factory=list)
    num_frames: int | None = None
    boxes: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)

    @property
    def anomalous(self) -> bool:
        """Whether any frame is anomalous."""
        return bool(self.ranges)

    def frame_labels(self, num_frames: int | None = None) -> np.ndarray:
        """Per-frame 0/1 labels [num_frames] (defaults to `self.num_frames`)."""
        n = self.num_frames if num_frames is None else num_frames
        if n is None:
            raise ValueError(f"{self.name}: frame count unknown; pass num_frames")
        y = np.zeros(n, np.int64)
        for s, e in self.ranges:
            y[max(0, s):min(n, e)] = 1
        return y

    def box_array(self, num_frames: int) -> np.ndarray:
        """Ground-truth boxes [num_frames, 4], NaN where none."""
        out = np.full((num_frames, 4), np.nan)
        for f, b in self.boxes.items():
            if 0 <= f < num_frames:
                out[f] = b
        return out


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
    """Frame-level metrics; None where a metric is undefined (e.g. no anomalous frames)."""

    auc: float | None
    ap: float | None
    tiou: float | None
    threshold: float
    per_class: dict[str, dict[str, Any]]
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with keys auc, ap, tiou, threshold, per_class, counts."""
        return {"auc": self.auc, "ap": self.ap, "tiou": self.tiou, "threshold": self.threshold,
                "per_class": self.per_class, "counts": self.counts}

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of `to_dict()`."""
        return json.dumps(self.to_dict(), indent=indent)


# ----------------------------------------------------------------------------------------------- metrics
def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def frame_auc_ap(scores: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    """ROC AUC and average precision of scores against 0/1 labels; (None, None) if only one class present."""
    metrics = require("sklearn.metrics", "evaluation")
    scores, labels = np.asarray(scores, float).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores has {scores.size} frames but labels has {labels.size}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores contain {int((~np.isfinite(scores)).sum())} non-finite values")
    if labels.min(initial=0) == labels.max(initial=0):
        return None, None
    return (float(metrics.roc_auc_score(labels, scores)),
            float(metrics.average_precision_score(labels, scores)))


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
        raise ValueError(f"shape mismatch: scores {scores.shape}, pred_boxes {pred_boxes.shape}, "
                         f"gt_boxes {gt_boxes.shape}, gt_labels {np.shape(gt_labels)}; expected [F], [F,4], "
                         "[F,4], [F]")
    sel = (np.asarray(gt_labels) > 0) & np.all(np.isfinite(gt_boxes), axis=1)
    if not sel.any():
        return None, 0
    iou = box_iou(pred_boxes[sel], gt_boxes[sel]) * (scores[sel] >= threshold)
    return float(iou.mean()), int(sel.sum())


def expand_snippets(values: np.ndarray, num_frames: int, snippet_len: int = 16,
                    ranges: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Per-snippet values -> per-frame values; snippet i covers frames [start_i, end_i).

    By default snippet i covers [i * snippet_len, (i + 1) * snippet_len) clipped to the video. With explicit
    `ranges`, frames no snippet covers take the value of the nearest covered frame (say, a video's tail that
    was too short for a last snippet). Trailing dimensions are kept, so boxes [n,4] expand to [num_frames,4].
    """
    values = np.asarray(values)
    n = values.shape[0]
    if ranges is None:
        ranges = [(i * snippet_len, min((i + 1) * snippet_len, num_frames)) for i in range(n)]
    if len(ranges) != n:
        raise ValueError(f"{n} snippet values but {len(ranges)} ranges")
    out = np.full((num_frames, *values.shape[1:]), np.nan, dtype=np.float64)
    covered = np.zeros(num_frames, bool)
    for v, (s, e) in zip(values, ranges, strict=True):
        if not 0 <= s < e:
            raise ValueError(f"snippet range [{s}, {e}) is empty or negative")
        out[s:min(e, num_frames)] = v
        covered[s:min(e, num_frames)] = True
    if not covered.any():
        raise ValueError(f"no snippet covers any of the {num_frames} frames")
    if not covered.all():
        idx, frames = np.flatnonzero(covered), np.arange(num_frames)
        pos = np.searchsorted(idx, frames)
        after = idx[np.clip(pos, 0, len(idx) - 1)]  # first covered frame at or after each frame
        before = idx[np.clip(pos - 1, 0, len(idx) - 1)]  # last covered frame before it
        pick = np.where(np.abs(before - frames) <= np.abs(after - frames), before, after)
        out[~covered] = out[pick[~covered]]
    return out


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
        ValueError: a video has no prediction, or prediction and ground truth disagree on the frame count.
    """
    missing = [g.name for g in gts if g.name not in preds]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} video(s): {missing[:5]}")
    per_video = []
    for g in gts:
        p = preds[g.name]
        n = len(p.scores)
        if g.num_frames is not None and g.num_frames != n:
            raise ValueError(f"{g.name}: prediction has {n} frames, ground truth {g.num_frames}")
        pb = p.boxes if p.boxes is not None else np.full((n, 4), np.nan)
        if np.shape(pb) != (n, 4):
            raise ValueError(f"{g.name}: boxes shape {np.shape(pb)}, expected ({n}, 4)")
        per_video.append((g, np.asarray(p.scores, float), g.frame_labels(n), np.asarray(pb, float),
                          g.box_array(n)))

    def pooled(items: list) -> dict[str, Any]:
        s = np.concatenate([it[1] for it in items])
        y = np.concatenate([it[2] for it in items])
        auc, ap = frame_auc_ap(s, y)
        ti, n_box = tiou(s, np.concatenate([it[3] for it in items]), np.concatenate([it[4] for it in items]),
                         y, threshold)
        return {"auc": _finite(auc), "ap": _finite(ap), "tiou": _finite(ti) if ti is not None else None,
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


# ----------------------------------------------------------------------------------------------- readers
def _range_pairs(path: Path, lineno: int, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Parse `s1 e1 s2 e2 ...` (-1 -1 = absent) into [start, end) ranges."""
    try:
        nums = [int(t) for t in tokens]
    except ValueError:
        msg = f"{path}:{lineno}: frame numbers must be integers, got {list(tokens)}"
        raise AnnotationError(msg) from None
    ranges = []
    for k in range(0, len(nums), 2):
        s, e = nums[k], nums[k + 1]
        if s == -1 and e == -1:
            continue
        if s < 0 or e <= s:
            raise AnnotationError(f"{path}:{lineno}: range {k // 2 + 1} is ({s}, {e}); expected "
                                  "0 <= start < end, or -1 -1 for absent")
        ranges.append((s, e))
    return ranges


def _canonical_class(token: str, class_names: Sequence[str] | None) -> str:
    """Annotation class token -> class name ("Normal..." -> "normal", "abandoned_object" -> "abandoned object").

    With `class_names`, matching ignores case, spaces, underscores and a plural s ("RoadAccidents" matches
    "road accident"); an unmatched token is returned lower-cased with spaces for underscores.
    """
    if token.lower().startswith(("normal", "testing_normal", "training_normal")):
        return "normal"
    key = lambda s: s.replace(" ", "").replace("_", "").lower().rstrip("s")  # noqa: E731
    for c in class_names or ():
        if key(c) == key(token):
            return c
    return token.replace("_", " ").lower()


def read_temporal_annotation(path: str | Path, *, class_names: Sequence[str] | None = None,
                             num_frames: Mapping[str, int] | None = None) -> list[VideoGroundTruth]:
    """Read a UCF-Crime style temporal annotation: one video per line, `name class s1 e1 s2 e2`.

    This is the format of UCF-Crime's `Temporal_Anomaly_Annotation_for_Testing_Videos.txt` and of the
    synthetic benchmark's `Temporal_Anomaly_Annotation.txt`. Fields are whitespace-separated; -1 marks an absent
    range; normal videos have all four -1. Frame numbers are taken as 0-based, end-exclusive (the common
    reading of UCF-Crime's file, e.g. `gt[s1:e1] = 1`). Blank lines and lines starting with `#` are skipped.

    Args:
        path: the annotation file.
        class_names: if given, class tokens are matched to these names ignoring case, `_`/spaces and a
            plural s (UCF-Crime's "RoadAccidents" matches "road accident").
        num_frames: optional {video name: frame count}; UCF-Crime's file itself has none.

    Returns:
        One `VideoGroundTruth` per line.

    Raises:
        AnnotationError: a line has the wrong number of fields, non-integer frames, or an invalid range.
    """
    path = Path(path)
    out, seen = [], set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tok = line.split()
        if len(tok) < 6 or (len(tok) - 2) % 2:
            raise AnnotationError(f"{path}:{lineno}: expected 'name class s1 e1 s2 e2' (6 fields, pairs of "
                                  f"frame numbers after the class), got {len(tok)} fields: {line.strip()!r}")
        name = tok[0]
        if name in seen:
            raise AnnotationError(f"{path}:{lineno}: video {name!r} is annotated twice")
        seen.add(name)
        label = _canonical_class(tok[1], class_names)
        ranges = _range_pairs(path, lineno, tok[2:])
        if label == "normal" and ranges:
            raise AnnotationError(f"{path}:{lineno}: class {tok[1]!r} is normal but has anomalous ranges "
                                  f"{ranges}; expected -1 -1 -1 -1")
        n = (num_frames or {}).get(name)
        out.append(VideoGroundTruth(name, label, ranges, n))
    return out


def read_ucf_crime(path: str | Path, *, class_names: Sequence[str] | None = None,
                   num_frames: Mapping[str, int] | None = None) -> list[VideoGroundTruth]:
    """Read UCF-Crime's `Temporal_Anomaly_Annotation_for_Testing_Videos.txt` (`read_temporal_annotation`)."""
    return read_temporal_annotation(path, class_names=class_names, num_frames=num_frames)


def read_shanghaitech(mask_dir: str | Path) -> list[VideoGroundTruth]:
    """Read ShanghaiTech's `test_frame_mask/<video>.npy` files (1-D 0/1 arrays, one entry per frame).

    Videos with any 1 get label "anomaly" (ShanghaiTech has no class names), the others "normal".

    Raises:
        AnnotationError: the directory has no .npy files, or a mask is not a 1-D 0/1 array.
    """
    mask_dir = Path(mask_dir)
    files = sorted(mask_dir.glob("*.npy"))
    if not files:
        raise AnnotationError(f"{mask_dir}: no .npy frame masks found (expected test_frame_mask/<video>.npy)")
    out = []
    for f in files:
        m = np.load(f, allow_pickle=False)
        if m.ndim != 1 or not np.isin(m, (0, 1)).all():
            raise AnnotationError(f"{f}: expected a 1-D array of 0/1 per frame, got shape {m.shape} with "
                                  f"values {np.unique(m)[:6].tolist()}")
        ranges = _mask_to_ranges(m.astype(bool))
        out.append(VideoGroundTruth(f.stem, "anomaly" if ranges else "normal", ranges, int(m.size)))
    return out


def _mask_to_ranges(mask: np.ndarray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def read_ubnormal_tracks(path: str | Path) -> list[tuple[int, int, int]]:
    """Read a UBnormal `<video>_tracks.txt`: comma-separated `track_id,start,end` rows, end inclusive.

    Returns (track_id, start, end_exclusive) per row. This is the layout the UBnormal authors' own
    `write_frame_level_ground_truth.py` reads (`gt[start:end + 1] = 1`).
    """
    path = Path(path)
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        tok = [t.strip() for t in line.split(",")]
        if len(tok) != 3:
            raise AnnotationError(f"{path}:{lineno}: expected 'track_id,start_frame,end_frame' (3 fields), "
                                  f"got {len(tok)}: {line.strip()!r}")
        try:
            tid, s, e = (int(float(t)) for t in tok)
        except ValueError:
            raise AnnotationError(f"{path}:{lineno}: fields must be numbers, got {tok}") from None
        if s < 0 or e < s:
            raise AnnotationError(f"{path}:{lineno}: frames ({s}, {e}); "
                                  "expected 0 <= start <= end (end inclusive)")
        rows.append((tid, s, e + 1))
    return rows


def read_ubnormal(root: str | Path, video_names: Sequence[str] | None = None) -> list[VideoGroundTruth]:
    """Read UBnormal ground truth from the data set's own layout.

    Layout: `root/Scene<k>/<video>.mp4`, and for abnormal videos `root/Scene<k>/<video>_annotations/
    <video>_tracks.txt` (a `<video>_new_tracks.txt` next to it is preferred, as the authors' scripts do).
    Frame counts come from the video files through OpenCV. The union of all tracks' frames is anomalous.

    Args:
        root: the UBnormal directory holding the Scene folders.
        video_names: restrict to these videos (e.g. the lines of `abnormal_test_video_names.txt` and
            `normal_test_video_names.txt`); default: every video found.

    Raises:
        AnnotationError: a named video is missing, or an abnormal video has no tracks file.
    """
    import cv2

    root = Path(root)
    videos = {p.stem: p for p in sorted(root.glob("Scene*/*.mp4"))}
    names = list(video_names) if video_names is not None else sorted(videos)
    out = []
    for name in names:
        if name not in videos:
            raise AnnotationError(f"{root}: video {name!r} not found under Scene*/")
        vp = videos[name]
        cap = cv2.VideoCapture(str(vp))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        ranges: list[tuple[int, int]] = []
        if name.startswith("abnormal"):
            ann = vp.parent / f"{name}_annotations"
            tracks = ann / f"{name}_new_tracks.txt"
            tracks = tracks if tracks.exists() else ann / f"{name}_tracks.txt"
            if not tracks.exists():
                raise AnnotationError(f"{tracks}: missing tracks file for abnormal video {name!r}")
            mask = np.zeros(n, bool)
            for _, s, e in read_ubnormal_tracks(tracks):
                mask[s:min(e, n)] = True
            ranges = _mask_to_ranges(mask)
        out.append(VideoGroundTruth(name, "anomaly" if ranges else "normal", ranges, n or None))
    return out


def read_box_csv(path: str | Path) -> dict[str, dict[int, tuple[float, float, float, float]]]:
    """Read a box file with header `video,frame,x1,y1,x2,y2[,class]` into {video: {frame: box}}."""
    path = Path(path)
    out: dict[str, dict[int, tuple[float, float, float, float]]] = {}
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        want = ["video", "frame", "x1", "y1", "x2", "y2"]
        if header is None or [h.strip() for h in header[:6]] != want:
            raise AnnotationError(f"{path}:1: expected header starting {','.join(want)}, got {header}")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 6:
                raise AnnotationError(f"{path}:{lineno}: expected >= 6 fields ({','.join(want)}), got {row}")
            try:
                f, box = int(row[1]), tuple(float(v) for v in row[2:6])
            except ValueError:
                msg = f"{path}:{lineno}: frame must be an integer and x1..y2 numbers, got {row}"
                raise AnnotationError(msg) from None
            if not (box[2] > box[0] and box[3] > box[1]):
                raise AnnotationError(f"{path}:{lineno}: box {box} has x2 <= x1 or y2 <= y1")
            out.setdefault(row[0], {})[f] = box  # type: ignore[assignment]
    return out


def read_synthetic(root: str | Path) -> list[VideoGroundTruth]:
    """Read a split written by `stp_edge.synthetic.write_benchmark` (manifest, annotation and boxes).

    Raises:
        AnnotationError: the manifest and the annotation file disagree on the videos or their events.
    """
    root = Path(root)
    manifest_path = root / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{manifest_path}: cannot read the benchmark manifest: {exc}") from exc
    frames = {v["name"]: int(v["num_frames"]) for v in manifest["videos"]}
    gts = read_temporal_annotation(root / manifest.get("annotation", "Temporal_Anomaly_Annotation.txt"),
                                   class_names=manifest["class_names"], num_frames=frames)
    by_name = {v["name"]: v for v in manifest["videos"]}
    if {g.name for g in gts} != set(by_name):
        raise AnnotationError(f"{root}: annotation and manifest list different videos")
    boxes_file = root / manifest.get("boxes", "boxes.csv")
    boxes = read_box_csv(boxes_file) if boxes_file.exists() else {}
    for g in gts:
        ev = by_name[g.name]["event"]
        if (list(g.ranges[0]) if g.ranges else None) != ev:
            raise AnnotationError(f"{root}: {g.name}: annotation ranges {g.ranges} but manifest event {ev}")
        g.boxes = boxes.get(g.name, {})
    return gts


# ------------------------------------------------------------------------------------ running a bundle
def prediction_from_results(results: Sequence[Any], num_frames: int) -> VideoPrediction:
    """Expand one video's `SnippetResult`s to per-frame scores and top boxes (highest box score per snippet)."""
    if not results:
        raise ValueError(f"no snippet results for a {num_frames}-frame video")
    ranges = [(r.frame_start, r.frame_end) for r in results]
    scores = expand_snippets(np.array([r.score for r in results], float), num_frames, ranges=ranges)
    top = np.full((len(results), 4), np.nan)
    for k, r in enumerate(results):
        if r.boxes:
            b = max(r.boxes, key=lambda b: b.score)
            top[k] = (b.x1, b.y1, b.x2, b.y2)
    return VideoPrediction(scores, expand_snippets(top, num_frames, ranges=ranges))


FORMATS = ("synthetic", "ucf-crime", "shanghaitech", "ubnormal")
_VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif")


def load_ground_truth(data: str | Path, fmt: str = "synthetic", annotations: str | Path | None = None,
                      class_names: Sequence[str] | None = None) -> list[VideoGroundTruth]:
    """Ground truth of a data set in one of `FORMATS`.

    synthetic: `data` as written by `write_benchmark`; ucf-crime: `annotations` is the temporal annotation
    file; shanghaitech: `annotations` is the `test_frame_mask` directory; ubnormal: `data` is the root with the
    Scene folders.
    """
    if fmt == "synthetic":
        return read_synthetic(data)
    if fmt == "ubnormal":
        return read_ubnormal(data)
    if annotations is None:
        raise ValueError(f"format {fmt!r} needs the annotations path (--annotations)")
    if fmt == "ucf-crime":
        return read_ucf_crime(annotations, class_names=class_names)
    if fmt == "shanghaitech":
        return read_shanghaitech(annotations)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def find_video(data: Path, name: str) -> Path:
    """The file or frame directory of video `name` under `data` (searched recursively, extensions optional)."""
    stem = Path(name).stem
    candidates = [data / name, *(data / f"{stem}{ext}" for ext in _VIDEO_EXTENSIONS), data / stem]
    candidates += sorted(p for p in data.rglob(f"{stem}*") if p.stem == stem)
    for c in candidates:
        if c.is_file() or (c.is_dir() and any(f.suffix.lower() in _IMAGE_EXTENSIONS for f in c.iterdir())):
            return c
    raise FileNotFoundError(f"video {name!r} of the annotations was not found under {data} (tried a file with "
                            f"extensions {_VIDEO_EXTENSIONS} and a directory of frames)")


def _run_on_frame_dir(det: Any, path: Path) -> list[Any]:
    """Push a directory of frame images (sorted by name, as ShanghaiTech ships its test set) through `det`."""
    import cv2

    results: list[Any] = []
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in _IMAGE_EXTENSIONS)
    for f in files:
        frame = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if frame is None:
            raise OSError(f"cannot read frame image {f}")
        results += det.push(frame)
    return results + det.flush()


def evaluate_bundle(bundle: str | Path, data: str | Path, *, backend: str = "auto",
                    threshold: float | None = None, out_dir: str | Path | None = None,
                    report: Any = print, fmt: str = "synthetic",
                    annotations: str | Path | None = None) -> EvalResult:
    """Run a bundle over every annotated video of a data set and evaluate it.

    Args:
        bundle: the exported model directory.
        data: the videos: a directory written by `stp_edge.synthetic.write_benchmark`, or the directory holding
            a real data set's video files or frame folders (searched recursively by name).
        fmt: annotation format, one of `FORMATS`.
        annotations: the annotation file/directory for "ucf-crime" and "shanghaitech".
        backend: runtime backend for `Detector.load`.
        threshold: TIoU score threshold; default the bundle's score threshold.
        out_dir: if given, writes `eval.json` and one score-timeline PNG per video there.
        report: called with one progress line per video (None for silence).

    Returns:
        The `EvalResult`.
    """
    from stp_edge.api import Detector, run_video

    data = Path(data)
    preds: dict[str, VideoPrediction] = {}
    with Detector.load(bundle, backend=backend) as det:
        gts = load_ground_truth(data, fmt, annotations, det.config.class_names)
        thr = float(det.score_threshold if threshold is None else threshold)
        for g in gts:
            det.reset()
            path = find_video(data, g.name)
            results = _run_on_frame_dir(det, path) if path.is_dir() else list(run_video(path, detector=det))
            if not g.num_frames:  # UCF-Crime's annotations carry no frame counts: take the video's
                g.num_frames = max((r.frame_end for r in results), default=0)
            preds[g.name] = prediction_from_results(list(results), int(g.num_frames or 0))
            if report is not None:
                report(f"{g.name}: {len(results)} snippets, max score {max(r.score for r in results):.3f}")
    result = evaluate_videos(gts, preds, threshold=thr)
    if out_dir is not None:
        from stp_edge.visualize import plot_timeline

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(result.to_json() + "\n")
        manifest = data / "manifest.json"
        fps = float(json.loads(manifest.read_text()).get("fps", 25.0)) if manifest.is_file() else 25.0
        for g in gts:
            plot_timeline(out / f"{Path(g.name).stem}_timeline.png", preds[g.name].scores, fps,
                          gt_ranges=g.ranges, threshold=thr, title=f"{g.name} ({g.label})")
    return result


def evaluate_cli(args: Any) -> int:
    """`stp-edge eval`: evaluate `args.bundle` on `args.data`, or on a synthetic split generated first.

    Uses args.bundle, args.data, args.split, args.num_videos, args.seed, args.backend, args.out.
    """
    data = args.data
    if data is None:
        from stp_edge.synthetic import write_benchmark

        root = Path(args.out) if args.out is not None else Path("out/eval")
        data = root / f"synthetic_{args.split}"
        write_benchmark(data, split=args.split, num_videos=args.num_videos, seed=args.seed)
    result = evaluate_bundle(args.bundle, data, backend=args.backend, out_dir=args.out,
                             fmt=getattr(args, "format", "synthetic"), annotations=getattr(args, "annotations", None))
    print(result.to_json())
    return 0
