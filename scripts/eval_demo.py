"""Evaluate the demo model through its EXPORTED BUNDLE on the torch-free runtime (ONNX Runtime CPU).

    python scripts/eval_demo.py --out benchmarks/results/demo_eval.json

Exports the checkpoint (default: the embedded demo model) to a bundle, writes a held-out synthetic test split
(`write_benchmark(split="test")`: seeds and scene layouts the training never saw), runs
`stp_edge.evaluate.evaluate_bundle` on it and saves the metrics (auc, ap, tiou, per_class) with the command and
the machine that produced them.

Besides the official numbers (TIoU with the runtime's top box: the single highest region of the map), it also
reports `tiou_component`: the same metric with the box of the connected component (regions >= box_threshold)
that holds the highest region, which `boxes_from_map` also returns. It is labelled as such, never mixed in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _machine() -> dict:
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "backend": "ort-cpu"}


def _component_prediction(results, num_frames: int):
    """Per-frame scores and, per snippet, the box of the component that holds the highest region."""
    from stp_edge.evaluate import VideoPrediction, expand_snippets

    ranges = [(r.frame_start, r.frame_end) for r in results]
    scores = expand_snippets(np.array([r.score for r in results], float), num_frames, ranges=ranges)
    top = np.full((len(results), 4), np.nan)
    for k, r in enumerate(results):
        if r.boxes:
            best = r.boxes[0]  # the highest region; a component holding it shares its score
            same = [b for b in r.boxes[1:] if b.score >= best.score and b.x1 <= best.x1 and b.y1 <= best.y1
                    and b.x2 >= best.x2 and b.y2 >= best.y2]
            b = same[0] if same else best
            top[k] = (b.x1, b.y1, b.x2, b.y2)
    return VideoPrediction(scores, expand_snippets(top, num_frames, ranges=ranges))


def component_tiou(bundle: Path, data: Path, threshold: float) -> dict:
    """TIoU (overall and per class) with component boxes; same runtime, backend ort-cpu."""
    from stp_edge.api import Detector, run_video
    from stp_edge.evaluate import evaluate_videos, read_synthetic

    gts = read_synthetic(data)
    preds = {}
    with Detector.load(bundle, backend="ort-cpu") as det:
        for g in gts:
            det.reset()
            preds[g.name] = _component_prediction(list(run_video(data / g.name, detector=det)), int(g.num_frames))
    res = evaluate_videos(gts, preds, threshold=threshold)
    return {"tiou": res.tiou, "per_class": {k: v["tiou"] for k, v in res.per_class.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="checkpoint dir (default: embedded demo)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_eval.json"))
    ap.add_argument("--num-videos", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the bundle and test split here")
    args = ap.parse_args(argv)

    from stp_edge.evaluate import evaluate_bundle
    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.synthetic import write_benchmark

    with tempfile.TemporaryDirectory(prefix="stp-demo-eval-") as tmp:
        work = args.work or Path(tmp)
        t0 = time.monotonic()
        bundle = export_bundle(work / "demo.stp", checkpoint=args.checkpoint, demo=args.checkpoint is None,
                               overwrite=True, progress=False)
        data = work / "synthetic_test"
        write_benchmark(data, split="test", num_videos=args.num_videos, seed=args.seed)
        result = evaluate_bundle(bundle, data, backend="ort-cpu", report=None)
        comp = component_tiou(bundle, data, result.threshold)
        manifest = json.loads((bundle / "manifest.json").read_text())
        seconds = time.monotonic() - t0
    argv_used = argv if argv is not None else sys.argv[1:]
    out = {**result.to_dict(),
           "tiou_component": comp["tiou"], "per_class_tiou_component": comp["per_class"],
           "box_rule": {"tiou": "runtime top box = highest region cell (stp_edge.evaluate.prediction_from_results)",
                        "tiou_component": "box of the component (regions >= box_threshold) holding the highest "
                                          "region (scripts/eval_demo.py)"},
           "data": {"split": "test", "num_videos": args.num_videos, "seed": args.seed,
                    "generator": "stp_edge.synthetic.write_benchmark"},
           "model": {"source": manifest.get("source"), "config": manifest.get("config", {}).get("vision")},
           "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *argv_used]),
           "machine": _machine(), "seconds": round(seconds, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("auc", "ap", "tiou", "tiou_component")}, indent=2))
    print({k: {m: v.get(m) for m in ("auc", "tiou")} for k, v in out["per_class"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
