"""How far can the demo recipe go? Two ceilings of the embedded demo model, measured, not assumed.

    python benchmarks/demo_ceiling.py [--probe-minutes 10] [--out benchmarks/results]

1. Box ceiling (no model, seconds). The runtime's box is a union of region cells (`boxes_from_map`), so with
   the demo's 7x7 token grid its IoU with a ground-truth box is bounded even for a perfect model. For every
   annotated anomalous frame of the held-out test split (`write_benchmark(split="test")`, the split
   `scripts/eval_demo.py` scores), this finds the best IoU any rectangle of grid cells reaches. Its mean is the
   TIoU of a model whose scores and region choices were perfect.

2. Encoder ceiling (a few minutes). A DIAGNOSTIC that uses the per-snippet ground-truth labels the demo's
   weakly supervised training never sees: the demo encoder (same config, same cached frames, augmentation,
   bf16 autocast and thread count as `train_demo`) plus a linear head on its patch tokens (max over tokens),
   trained with BCE against each snippet's frame label, for `--probe-minutes`. Its validation snippet AUC per
   epoch is what this encoder learns in that time with FULL supervision: an upper bound on what video-level
   labels can teach it in the same time.

Writes <out>/demo_ceiling.{json,md} with the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cell_rectangles(image_size: int, grid: int, frame_hw: tuple[int, int]) -> np.ndarray:
    """[M,4] every rectangle of whole grid cells (frame pixels), M = (grid*(grid+1)/2)^2.

    The cells are the runtime's own (`region_boxes` mapped by `to_frame_coords`), so the rectangles are exactly
    the boxes `boxes_from_map` can return.
    """
    from stp_edge.spatial import region_boxes, to_frame_coords

    cells = to_frame_coords(region_boxes(image_size, grid), image_size, frame_hw).reshape(grid, grid, 4)
    x_edges = np.r_[cells[0, :, 0], cells[0, -1, 2]]
    y_edges = np.r_[cells[:, 0, 1], cells[-1, 0, 3]]
    spans = np.array([(a, b) for a in range(grid) for b in range(a + 1, grid + 1)])
    return np.array([(x_edges[a], y_edges[c], x_edges[b], y_edges[d]) for c, d in spans for a, b in spans])


def box_ceiling(grid: int, image_size: int, num_videos: int, seed: int) -> dict[str, object]:
    """Best cell-rectangle IoU per annotated anomalous frame of the test split, averaged per class and overall."""
    from stp_edge.evaluate import box_iou
    from stp_edge.synthetic import benchmark_plans

    per_class: dict[str, list[float]] = {}
    rects = None
    for label, _, plan in benchmark_plans(split="test", num_videos=num_videos, seed=seed):
        if label == "normal":
            continue
        if rects is None:
            rects = cell_rectangles(image_size, grid, (plan.layout.height, plan.layout.width))
        for f in np.flatnonzero(np.isfinite(plan.boxes[:, 0])):
            per_class.setdefault(label, []).append(float(box_iou(rects, plan.boxes[f]).max()))
    every = [v for vals in per_class.values() for v in vals]
    return {"grid": grid, "frames": len(every), "tiou_ceiling": float(np.mean(every)),
            "per_class": {k: {"tiou_ceiling": float(np.mean(v)), "frames": len(v)} for k, v in per_class.items()}}


def encoder_probe(minutes: float, train_videos: int, val_videos: int, seed: int, lr: float,
                  batch_size: int = 4) -> list[dict[str, float]]:
    """Fully supervised snippet-label training of the demo encoder (diagnostic); validation AUC per epoch."""
    import torch
    import torch.nn.functional as F

    from stp_edge.evaluate import rank_auc
    from stp_edge.model import demo_training as dt
    from stp_edge.model.clip import VisionTransformer

    settings = dt.DemoTrainSettings(seed=seed)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(seed)
    cfg = dt.demo_config()
    train = dt.make_demo_videos("train", train_videos, seed=seed, cfg=cfg, settings=settings)
    val = dt.make_demo_videos("val", val_videos, seed=seed, cfg=cfg, settings=settings)
    encoder = VisionTransformer(cfg.vision)
    head = torch.nn.Linear(cfg.vision.embed_dim, 1)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows, start, epoch = [], time.monotonic(), 0
    while time.monotonic() - start < 60 * minutes:
        encoder.train()
        order, losses = dt._epoch_order(train, rng), []
        for b in range(0, len(order), batch_size):
            videos = [train[i] for i in order[b:b + batch_size]]
            x = torch.cat([dt._augment(v.images, gen, settings) for v in videos])
            y = torch.from_numpy(np.concatenate([v.snippet_labels for v in videos])).float()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
                logit = head(encoder(x)[1]).squeeze(-1).amax(-1)
            loss = F.binary_cross_entropy_with_logits(logit.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if time.monotonic() - start > 60 * minutes:
                break
        encoder.eval()
        with torch.no_grad():
            scores = [head(encoder(v.images.float())[1]).squeeze(-1).amax(-1).numpy() for v in val]
        auc = rank_auc(np.concatenate([v.snippet_labels for v in val]), np.concatenate(scores))
        rows.append({"epoch": epoch, "minutes": round((time.monotonic() - start) / 60, 2),
                     "train_loss": float(np.mean(losses)), "val_snippet_auc": float(auc)})
        print(f"probe epoch {epoch}: {rows[-1]['minutes']:.1f} min, train loss {rows[-1]['train_loss']:.3f}, "
              f"validation snippet AUC {auc:.3f}", flush=True)
        epoch += 1
    return rows


def to_markdown(result: dict) -> str:
    lines = ["# Demo model ceilings", "", f"Machine: {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores", "", f"Command: `{result['command']}`", "",
             "## Box ceiling (perfect scores and region choice; cell-aligned boxes)", "",
             "| grid | class | frames | TIoU ceiling |", "|---|---|---|---|"]
    for b in result["box_ceiling"]:
        for k, v in sorted(b["per_class"].items()):
            lines.append(f"| {b['grid']}x{b['grid']} | {k} | {v['frames']} | {v['tiou_ceiling']:.3f} |")
        lines.append(f"| {b['grid']}x{b['grid']} | **all** | {b['frames']} | **{b['tiou_ceiling']:.3f}** |")
    probe = result.get("encoder_probe")
    if probe:
        lines += ["", "## Encoder ceiling (frame-label supervised probe, diagnostic only)", "",
                  f"{probe['train_videos']} training clips, {probe['val_videos']} validation clips, lr {probe['lr']}, "
                  f"{probe['minutes']} min.", "", "| epoch | minutes | train loss | validation snippet AUC |",
                  "|---|---|---|---|"]
        lines += [f"| {r['epoch']} | {r['minutes']:.1f} | {r['train_loss']:.3f} | {r['val_snippet_auc']:.3f} |"
                  for r in probe["epochs"]]
        best = max(r["val_snippet_auc"] for r in probe["epochs"])
        lines += ["", f"Best validation snippet AUC: **{best:.3f}**"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe-minutes", type=float, default=10.0, help="0 skips the encoder probe")
    ap.add_argument("--train-videos", type=int, default=400)
    ap.add_argument("--val-videos", type=int, default=40)
    ap.add_argument("--test-videos", type=int, default=30, help="size of the test split (as eval_demo.py)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grids", type=int, nargs="+", default=[7, 14], help="region grids for the box ceiling")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)

    from benchmarks.bench_preprocess import machine_info
    from stp_edge.model.demo_training import demo_config

    size = demo_config().vision.image_size
    result: dict[str, object] = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "box_ceiling": [box_ceiling(g, size, args.test_videos, args.seed) for g in args.grids],
    }
    for b in result["box_ceiling"]:  # type: ignore[union-attr]
        print(f"box ceiling, {b['grid']}x{b['grid']} cells: TIoU {b['tiou_ceiling']:.3f} "
              + ", ".join(f"{k} {v['tiou_ceiling']:.3f}" for k, v in sorted(b["per_class"].items())))
    if args.probe_minutes > 0:
        result["encoder_probe"] = {"minutes": args.probe_minutes, "train_videos": args.train_videos,
                                   "val_videos": args.val_videos, "lr": args.lr,
                                   "epochs": encoder_probe(args.probe_minutes, args.train_videos,
                                                           args.val_videos, args.seed, args.lr)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "demo_ceiling.md").write_text(to_markdown(result))
    print(f"wrote {args.out / 'demo_ceiling.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
