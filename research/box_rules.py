"""Would another box rule reach the TIoU target? Re-boxes a bundle's own region maps with other rules.

    python scripts/eval_demo.py --checkpoint DIR --work W --out E.json   # keeps W/demo.stp and W/synthetic_test
    python research/box_rules.py W/demo.stp W/synthetic_test --out research/results/NAME.md

Runs the bundle (ONNX Runtime CPU) over the anomalous videos of a `write_benchmark` split once, keeps every
snippet's score and region scores, and recomputes the snippet's box with the runtime's rule
(`stp_edge.pipeline.boxes.boxes_from_map`: the 8-connected component around the map's peak of the regions at or above
max(absolute threshold, median + level x (peak - median))) for a grid of (level, absolute threshold) pairs.
The runtime's own setting is level 0.5 with the bundle's box threshold; its row reproduces `eval_demo.py`'s
TIoU. Rules are compared on the split they are scored on, so the best row is optimistic: an upper bound for
this family of rules, not a tuned result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def component_box(amap: np.ndarray, frame_hw: tuple[int, int], image_size: int, mode: str, level: float,
                  threshold: float) -> np.ndarray:
    """(x1, y1, x2, y2) of the runtime's first box (`boxes_from_map`) for another level / absolute threshold."""
    from stp_edge.pipeline.boxes import boxes_from_map

    b = boxes_from_map(amap, frame_hw, image_size, threshold=threshold, class_id=0, mode=mode, level=level)[0]
    return np.array([b.x1, b.y1, b.x2, b.y2])


def main(argv: list[str] | None = None) -> int:
    """Run the bundle once, re-box its maps with every (level, threshold) rule, print the TIoU table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("data", type=Path, help="a directory written by stp_edge.synthetic.write_benchmark")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.2, 0.35, 0.5, 0.65, 0.8])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    ap.add_argument("--out", type=Path, default=None, help="write the table (markdown) here")
    args = ap.parse_args(argv)

    import cv2

    from stp_edge.api import Detector
    from stp_edge.datasets import find_video, load_ground_truth
    from stp_edge.eval.metrics import tiou
    from stp_edge.pipeline.spatial import anomaly_map
    from stp_edge.results import expand_snippets
    from stp_edge.run import run_video

    rules = [(lv, th) for lv in args.levels for th in args.thresholds]
    pooled: dict[tuple[float, float], dict[str, list[tuple[float, int]]]] = {r: {} for r in rules}
    with Detector.load(args.bundle, backend="ort-cpu") as det:
        cfg, thr = det.config, det.score_threshold
        for g in load_ground_truth(args.data, "synthetic", None, cfg.class_names):
            if g.label == "normal":
                continue
            det.reset()
            path = find_video(args.data, g.name)
            res = list(run_video(path, detector=det))
            cap = cv2.VideoCapture(str(path))
            hw = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
            cap.release()
            F, ranges = int(g.num_frames), [(r.frame_start, r.frame_end) for r in res]
            scores = expand_snippets(np.array([r.score for r in res], float), F, ranges=ranges)
            maps = {k: anomaly_map(np.asarray(r.region_scores, float)) for k, r in enumerate(res)
                    if r.region_scores is not None}  # none where the spatial stream was skipped (low score)
            for rule in rules:
                boxes = np.full((len(res), 4), np.nan)
                for k, amap in maps.items():
                    boxes[k] = component_box(amap, hw, cfg.vision.image_size, cfg.region_mode, *rule)
                t, n = tiou(scores, expand_snippets(boxes, F, ranges=ranges), g.box_array(F), g.frame_labels(F), thr)
                if t is not None:
                    pooled[rule].setdefault(g.label, []).append((t, n))

    def mean(items: list[tuple[float, int]]) -> float:
        return sum(t * n for t, n in items) / sum(n for _, n in items)

    classes = sorted({c for per in pooled.values() for c in per})
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    lines = [f"# Box rules on `{args.bundle}` ({args.data})", "", f"Command: `{command}` (the bundle and split from",
             "`scripts/eval_demo.py --checkpoint DIR --work W`); ONNX Runtime CPU.", "",
             f"Runtime rule: level 0.5, threshold {cfg.box_threshold}. Score gate {thr}.", "",
             "| level | abs. threshold | TIoU | " + " | ".join(classes) + " |",
             "|---|---|---|" + "---|" * len(classes)]
    for rule in rules:
        per = pooled[rule]
        every = [x for v in per.values() for x in v]
        lines.append(f"| {rule[0]} | {rule[1]} | {mean(every):.3f} | "
                     + " | ".join(f"{mean(per[c]):.3f}" if c in per else "-" for c in classes) + " |")
    best = max(rules, key=lambda r: mean([x for v in pooled[r].values() for x in v]))
    lines += ["", f"Best rule on this split: level {best[0]}, threshold {best[1]}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
