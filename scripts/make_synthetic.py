"""Write a split of the synthetic anomaly benchmark (videos + UCF-Crime style annotation + boxes + manifest).

    python scripts/make_synthetic.py --out data/synth/test --split test --num-videos 24 --seed 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from stp_edge.synthetic import ANOMALY_CLASSES, write_benchmark
from stp_edge.video import CODECS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--split", required=True, help="split name (train/test/...); layouts differ per split")
    ap.add_argument("--num-videos", required=True, type=int)
    ap.add_argument("--seed", required=True, type=int)
    ap.add_argument("--num-frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--anomaly-ratio", type=float, default=0.5)
    ap.add_argument("--classes", nargs="+", default=list(ANOMALY_CLASSES), metavar="CLASS",
                    help=f"anomaly classes to use (quote names with spaces); default all of {ANOMALY_CLASSES}")
    ap.add_argument("--num-scenes", type=int, default=None, help="camera layouts in the split")
    ap.add_argument("--codec", choices=sorted(CODECS), default="mp4v")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    manifest = write_benchmark(args.out, split=args.split, num_videos=args.num_videos, seed=args.seed,
                               width=args.width, height=args.height, num_frames=args.num_frames, fps=args.fps,
                               anomaly_ratio=args.anomaly_ratio, classes=args.classes,
                               num_scenes=args.num_scenes, codec=args.codec, progress=not args.quiet)
    print(f"wrote {args.num_videos} videos to {args.out} in {time.perf_counter() - t0:.1f} s ({manifest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
