"""Running a bundle over an annotated data set and scoring it: `evaluate_bundle`, `stp-edge eval`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.eval.datasets import IMAGE_EXTENSIONS, find_video, load_ground_truth
from stp_edge.eval.metrics import EvalResult, VideoPrediction, evaluate_videos, expand_snippets


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


def _run_on_frame_dir(det: Any, path: Path) -> list[Any]:
    """Push a directory of frame images (sorted by name, as ShanghaiTech ships its test set) through `det`."""
    import cv2

    results: list[Any] = []
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
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
        data: the videos: a directory written by `stp_edge.demo.synthetic.write_benchmark`, or the directory holding
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
        from stp_edge.demo.synthetic import write_benchmark

        root = Path(args.out) if args.out is not None else Path("out/eval")
        data = root / f"synthetic_{args.split}"
        write_benchmark(data, split=args.split, num_videos=args.num_videos, seed=args.seed)
    result = evaluate_bundle(args.bundle, data, backend=args.backend, out_dir=args.out,
                             fmt=getattr(args, "format", "synthetic"), annotations=getattr(args, "annotations", None))
    print(result.to_json())
    return 0
