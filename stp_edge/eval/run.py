"""Running a bundle over an annotated data set and scoring it: `evaluate_bundle` (`stp-edge eval`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.datasets import (
    GroundTruthMismatch,
    VideoGroundTruth,
    attach_boxes,
    check_ground_truth,
    find_video,
    load_ground_truth,
    read_boxes,
)
from stp_edge.errors import UsageError
from stp_edge.eval.metrics import EvalResult, VideoPrediction, evaluate_videos, require_eval_dependencies
from stp_edge.media_files import IMAGE_EXTENSIONS
from stp_edge.report import plural
from stp_edge.results import expand_snippets, frame_scores
from stp_edge.video import VideoError


def prediction_from_results(results: Sequence[Any], num_frames: int) -> VideoPrediction:
    """Expand one video's `SnippetResult`s to per-frame scores and top boxes (highest box score per snippet)."""
    if not results:
        raise UsageError(f"no snippet results for a {num_frames}-frame video")
    top = np.full((len(results), 4), np.nan)
    for k, r in enumerate(results):
        if r.boxes:
            b = max(r.boxes, key=lambda b: b.score)
            top[k] = (b.x1, b.y1, b.x2, b.y2)
    boxes = expand_snippets(top, num_frames, ranges=[(r.frame_start, r.frame_end) for r in results])
    return VideoPrediction(frame_scores(results, num_frames), boxes)


@dataclasses.dataclass
class _Decoded:
    """One video's results and what its decoder saw, for `check_ground_truth`."""

    results: list[Any]
    frames: int
    dropped: int = 0
    expected: int | None = None

    @property
    def frame_hw(self) -> tuple[int, int] | None:
        """(height, width) of the decoded frames, from the results (None when they do not say)."""
        shape = tuple(self.results[0].frame_shape) if self.results else (0, 0)
        return shape if shape[0] > 0 and shape[1] > 0 else None  # type: ignore[return-value]


def _run_on_frame_dir(det: Any, path: Path) -> _Decoded:
    """Push a directory of frame images (sorted by name, as ShanghaiTech ships its test set) through `det`."""
    import cv2

    results: list[Any] = []
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
    for f in files:
        frame = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if frame is None:
            raise VideoError(f"cannot read frame image {f} (not an image, or unreadable)")
        results += det.push(frame)
    return _Decoded(results + det.flush(), len(files))


def _run_on_video(det: Any, path: Path) -> _Decoded:
    """Run `det` over a video file; its frame counts come from the decoder's `VideoStats`."""
    from stp_edge.run import run_video

    results: list[Any] = []
    out = run_video(path, detector=det, on_result=results.append)
    return _Decoded(results, out.stats.read, out.stats.dropped, out.stats.expected)


ON_MISMATCH = ("error", "skip")


def _read_box_file(boxes: str | Path | None, fmt: str) -> dict | None:
    """The ground-truth boxes of `boxes`, or None; only UCF-Crime takes a separate box file."""
    if boxes is None:
        return None
    if fmt != "ucf-crime":
        raise UsageError(f"a box file (--boxes {boxes}) goes with --format ucf-crime, got format {fmt!r} (the "
                         "synthetic benchmark brings its own boxes.csv)")
    return read_boxes(boxes)


def _attach(gts: list[VideoGroundTruth], box_gt: dict, source: str | Path,
            report: Callable[[str], None] | None) -> None:
    """Put the box file's boxes on the ground truth; say which videos it names that are not evaluated."""
    unmatched = attach_boxes(gts, box_gt, source)
    outside = sum(1 for g in gts for f in g.boxes if not any(s <= f < e for s, e in g.ranges))
    if report is not None:
        report(f"boxes: {sum(len(g.boxes) for g in gts)} frames of {sum(bool(g.boxes) for g in gts)} videos from "
               f"{source}; {outside} outside the anomalous ranges (TIoU counts only frames inside)"
               + (f"; {len(unmatched)} box video(s) not in the annotations, ignored: {', '.join(unmatched[:5])}"
                  if unmatched else ""))


def _mismatch(g: VideoGroundTruth, path: Path, decoded: _Decoded) -> str | None:
    """Why `g` does not fit the decoded video at `path` (one line), or None when it does."""
    # The container's promise only matters when the annotation has no count of its own (UCF-Crime).
    expected = decoded.expected if g.num_frames is None else None
    problems = check_ground_truth(g, decoded.frames, dropped=decoded.dropped, expected=expected,
                                  frame_hw=decoded.frame_hw)
    return "; ".join(problems) if problems else None


def evaluate_bundle(bundle: str | Path, data: str | Path, *, backend: str = "auto",
                    threshold: float | None = None, out_dir: str | Path | None = None,
                    report: Callable[[str], None] | None = print, fmt: str = "synthetic",
                    annotations: str | Path | None = None, on_mismatch: str = "error",
                    boxes: str | Path | None = None) -> EvalResult:
    """Run a bundle over every annotated video of a data set and evaluate it.

    Each video's ground truth is checked against the video as decoded (`check_ground_truth`: frame count,
    ranges and boxes inside the video, no frame lost mid-decode, no truncation). A video that does not fit
    never counts silently: by default the run stops with `GroundTruthMismatch`; with `on_mismatch="skip"` the
    video is reported, left out of the metrics and listed in `EvalResult.excluded`.

    Args:
        bundle: the exported model directory.
        data: the videos: a directory written by `stp_edge.synthetic.write_benchmark`, or the directory holding
            a real data set's video files or frame folders (searched recursively by name).
        fmt: annotation format, one of `FORMATS`.
        annotations: the annotation file/directory for "ucf-crime" and "shanghaitech".
        boxes: "ucf-crime" only: ground-truth boxes for TIoU, Liu & Ma's published pickle (`Test_annotation.pkl`,
            `stp_edge.datasets.read_liu_ma_boxes`) or a `video,frame,x1,y1,x2,y2` CSV; matched to the annotation's
            videos by name. Without it TIoU is None (UCF-Crime's temporal file has no boxes).
        backend: runtime backend for `Detector.load`.
        threshold: TIoU score threshold; default the bundle's score threshold.
        out_dir: if given, writes `eval.json` and one score-timeline PNG per video there.
        report: called with one progress line per video (None for silence).
        on_mismatch: "error" (stop at the first video whose ground truth does not fit it) or "skip".

    Returns:
        The `EvalResult`.

    Raises:
        GroundTruthMismatch: a video does not fit its ground truth (under "error"), or none does (under "skip").
        MissingDependencyError: scikit-learn (or, with `out_dir`, matplotlib) is missing; raised before any
            video is scored.
    """
    from stp_edge.api import Detector

    if on_mismatch not in ON_MISMATCH:
        raise UsageError(f"on_mismatch must be one of {ON_MISMATCH}, got {on_mismatch!r}")
    require_eval_dependencies(plots=out_dir is not None)
    box_gt = _read_box_file(boxes, fmt)  # before the model loads: a bad box file fails in a second, not an hour
    data = Path(data)
    preds: dict[str, VideoPrediction] = {}
    kept: list[VideoGroundTruth] = []
    excluded: dict[str, str] = {}
    with Detector.load(bundle, backend=backend) as det:
        gts = load_ground_truth(data, fmt, annotations, det.config.class_names)
        if not gts:
            raise GroundTruthMismatch(f"the {fmt} ground truth of {annotations or data} lists no video")
        if box_gt is not None:
            _attach(gts, box_gt, boxes, report)
        thr = float(det.score_threshold if threshold is None else threshold)
        for g in gts:
            det.reset()
            path = find_video(data, g.name)
            decoded = _run_on_frame_dir(det, path) if path.is_dir() else _run_on_video(det, path)
            problem = _mismatch(g, path, decoded)
            if problem is not None:
                if on_mismatch == "error":
                    raise GroundTruthMismatch(f"{g.name} ({path}): ground truth does not match the video: "
                                              f"{problem} (on_mismatch='skip' leaves such videos out and "
                                              "lists them)")
                excluded[g.name] = problem
                if report is not None:
                    report(f"{g.name}: SKIPPED ({path}): {problem}")
                continue
            kept.append(dataclasses.replace(g, num_frames=decoded.frames))
            preds[g.name] = prediction_from_results(decoded.results, decoded.frames)
            if report is not None:
                top = max(r.score for r in decoded.results)
                report(f"{g.name}: {plural(len(decoded.results), 'snippet')}, max score {top:.3f}")
    if not kept:
        raise GroundTruthMismatch(f"no video of {len(gts)} matches its ground truth: "
                                  + "; ".join(f"{k}: {v}" for k, v in excluded.items()))
    result = evaluate_videos(kept, preds, threshold=thr)
    result.excluded = excluded
    if out_dir is not None:
        from stp_edge.visualize import plot_timeline

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(result.to_json() + "\n")
        manifest = data / "manifest.json"
        fps = float(json.loads(manifest.read_text()).get("fps", 25.0)) if manifest.is_file() else 25.0
        for g in kept:
            plot_timeline(out / f"{Path(g.name).stem}_timeline.png", preds[g.name].scores, fps,
                          gt_ranges=g.ranges, threshold=thr, title=f"{g.name} ({g.label})")
    return result

