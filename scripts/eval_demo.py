"""Evaluate the demo model through its EXPORTED BUNDLE on the torch-free runtime (ONNX Runtime CPU).

    python scripts/eval_demo.py --out research/results/demo_eval.json

Exports the checkpoint (default: the demo model) to a bundle, writes a held-out synthetic test split
(`write_benchmark(split="test")`: seeds and scene layouts the training never saw), runs
`stp_edge.eval.evaluate_bundle` on it and saves the metrics (auc, ap, tiou, per_class) with the command and
the machine that produced them.

TIoU uses the runtime's first box: the connected group of regions around the map's peak
(`stp_edge.pipeline.boxes.boxes_from_map`, half-maximum rule).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="checkpoint dir (default: the demo model)")
    ap.add_argument("--out", type=Path, default=Path("research/results/demo_eval.json"))
    ap.add_argument("--num-videos", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the bundle and test split here")
    args = ap.parse_args(argv)

    from stp_edge.eval.run import evaluate_bundle
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
        manifest = json.loads((bundle / "manifest.json").read_text())
        seconds = time.monotonic() - t0
    argv_used = argv if argv is not None else sys.argv[1:]
    import onnxruntime

    from stp_edge.machine import machine_info

    out = {**result.to_dict(),
           "box_rule": ("runtime first box: the component around the map's peak"
                        " (stp_edge.pipeline.boxes.boxes_from_map)"),
           "data": {"split": "test", "num_videos": args.num_videos, "seed": args.seed,
                    "generator": "stp_edge.synthetic.write_benchmark"},
           "model": {"source": manifest.get("source"), "config": manifest.get("config", {}).get("vision")},
           "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *argv_used]),
           "machine": {**machine_info(), "onnxruntime": onnxruntime.__version__, "backend": "ort-cpu"},
           "seconds": round(seconds, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("auc", "ap", "tiou")}, indent=2))
    print({k: {m: v.get(m) for m in ("auc", "tiou")} for k, v in out["per_class"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
