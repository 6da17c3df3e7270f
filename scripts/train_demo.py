"""Train the demo model (tiny STPrompt, from scratch, video-level labels only) and save it.

    python scripts/train_demo.py --out demo_model/stp_edge_demo_model --seed 0

A thin CLI over `stp_edge.demo.training`; see its docstring for the recipe.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from stp_edge.demo.training import DEMO_OVERRIDES, DemoTrainSettings, save_demo, train_demo


def main(argv: list[str] | None = None) -> int:
    d = DemoTrainSettings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo_model/stp_edge_demo_model"), help="checkpoint directory")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock cap on optimisation")
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--train-videos", type=int, default=d.train_videos)
    ap.add_argument("--val-videos", type=int, default=d.val_videos)
    ap.add_argument("--videos-per-scene", type=int, default=d.videos_per_scene, help="clips sharing a layout")
    ap.add_argument("--translate", type=int, default=d.translate, help="random shift augmentation (pixels)")
    ap.add_argument("--num-frames", type=int, default=d.num_frames)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--spatial-weight", type=float, default=d.spatial_weight)
    ap.add_argument("--region-ce-weight", type=float, default=d.region_ce_weight)
    ap.add_argument("--region-topk", type=int, default=d.region_topk)
    ap.add_argument("--attention-mil-weight", type=float, default=d.attention_mil_weight,
                    help="weight of the auxiliary attention-MIL video classifier (training only; 0 disables it)")
    ap.add_argument("--self-train-weight", type=float, default=d.self_train_weight,
                    help="weight of the self-training terms (pseudo-labels from the model's own scores; 0 disables)")
    ap.add_argument("--self-train-start", type=float, default=d.self_train_start,
                    help="fraction of the epochs after which self-training starts")
    ap.add_argument("--self-region-topk", type=int, default=d.self_region_topk,
                    help="self-training: top-k regions of each pseudo-positive snippet pushed to abnormal (0: off)")
    ap.add_argument("--select", choices=("val_loss", "last"), default=d.select,
                    help="epoch to keep: the last one (default) or the one with the lowest video-level validation loss")
    ap.add_argument("--no-dense-normal", action="store_true",
                    help="top-k bags for normal videos too (default: every snippet/region of a normal video)")
    ap.add_argument("--no-bf16", action="store_true",
                    help="train the encoder in float32 (default: bfloat16 autocast of its forward pass, ~1.5x faster)")
    ap.add_argument("--patch-attention", type=int, default=DEMO_OVERRIDES["vision"].patch_attention,
                    help="grid radius patch tokens attend within (-1: CLIP's global attention; default %(default)s)")
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--override", action="append", default=[], metavar="FIELD=JSON",
                    help="tiny-config override, e.g. adapter_sigma=0.5 or score_threshold=0.5 (repeatable)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    if args.patch_attention != DEMO_OVERRIDES["vision"].patch_attention:
        overrides["vision"] = replace(DEMO_OVERRIDES["vision"], patch_attention=args.patch_attention)
    settings = DemoTrainSettings(
        seed=args.seed, train_videos=args.train_videos, val_videos=args.val_videos, num_frames=args.num_frames,
        videos_per_scene=args.videos_per_scene, translate=args.translate,
        epochs=args.epochs, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
        spatial_weight=args.spatial_weight, region_ce_weight=args.region_ce_weight, region_topk=args.region_topk,
        dense_normal=not args.no_dense_normal, bf16=not args.no_bf16, attention_mil_weight=args.attention_mil_weight,
        self_train_weight=args.self_train_weight, self_train_start=args.self_train_start,
        self_region_topk=args.self_region_topk, select=args.select,
        threads=args.threads, config_overrides=overrides)
    result = train_demo(settings, progress=not args.no_progress, log=lambda line: print(line, flush=True))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    out = save_demo(result, args.out, command=command)
    print(f"saved {out} (best epoch {result.best_epoch}, {result.seconds / 60:.1f} min of training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
