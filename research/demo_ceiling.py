"""How far can the demo recipe go? Ceilings of the demo model, measured, not assumed.

    python research/demo_ceiling.py [--probe-minutes 10] [--out research/results] [--name demo_ceiling]
    python research/demo_ceiling.py --probe-minutes 0 --train-videos 600 --reference-out DIR [--reference-grid 14
        --reference-epochs 19] --name demo_supervised_reference

1. Box ceiling (no model, seconds). The runtime's box is a union of region cells (`boxes_from_map`), so with
   the demo's 7x7 token grid its IoU with a ground-truth box is bounded even for a perfect model. For every
   annotated anomalous frame of the held-out test split (`write_benchmark(split="test")`, the split
   `scripts/eval_demo.py` scores), this finds the best IoU any rectangle of grid cells reaches. Its mean is the
   TIoU of a model whose scores and region choices were perfect. The per-snippet variant allows one rectangle
   per 16-frame snippet, as the runtime outputs.

2. Encoder ceiling (a few minutes). A DIAGNOSTIC that uses the per-snippet ground-truth labels the demo's
   weakly supervised training never sees: the demo encoder (same config, same cached frames, augmentation,
   bf16 autocast and thread count as `train_demo`) plus a linear head on its patch tokens (max over tokens),
   trained with BCE against each snippet's frame label, for `--probe-minutes`. Its validation snippet AUC per
   epoch is what this encoder learns in that time with FULL supervision: an upper bound on what video-level
   labels can teach it in the same time.

3. Supervised reference (`--reference-out DIR`, about 27 min). A DIAGNOSTIC like 2, but of the whole demo
   model and its whole training schedule: `train_demo` with the demo's settings and data, its loss replaced by
   `supervised_batch_loss`, which uses the frame labels and boxes the demo never sees (per-snippet BCE and
   class CE, and per-region BCE against each cell's coverage by the ground-truth box). It is saved like the
   demo model, so `python scripts/eval_demo.py --checkpoint DIR` scores it through the exported bundle on the
   runtime exactly as the demo model is scored: what this model, grid, box rule and CPU budget reach when the
   supervision is not the limit.

Writes <out>/<name>.{json,md} (`--name`, default demo_ceiling) with the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def cell_rectangles(image_size: int, grid: int, frame_hw: tuple[int, int]) -> np.ndarray:
    """[M,4] every rectangle of whole grid cells (frame pixels), M = (grid*(grid+1)/2)^2.

    The cells are the runtime's own (`region_boxes` mapped by `to_frame_coords`), so the rectangles are exactly
    the boxes `boxes_from_map` can return.
    """
    from stp_edge.geometry import region_boxes, to_frame_coords

    cells = to_frame_coords(region_boxes(image_size, grid), image_size, frame_hw).reshape(grid, grid, 4)
    x_edges = np.r_[cells[0, :, 0], cells[0, -1, 2]]
    y_edges = np.r_[cells[:, 0, 1], cells[-1, 0, 3]]
    spans = np.array([(a, b) for a in range(grid) for b in range(a + 1, grid + 1)])
    return np.array([(x_edges[a], y_edges[c], x_edges[b], y_edges[d]) for c, d in spans for a, b in spans])


def box_ceiling(grid: int, image_size: int, num_videos: int, seed: int, snippet_len: int = 16) -> dict[str, object]:
    """Best cell-rectangle IoU per annotated anomalous frame of the test split, averaged per class and overall.

    Two ceilings: `tiou_ceiling`, a best rectangle for every frame; `snippet_tiou_ceiling`, one rectangle per
    `snippet_len`-frame snippet (the best for the snippet's annotated frames on average), which is what the
    runtime outputs: one map and one box per snippet, applied to each of its frames. The gap between the two is
    the event moving within a snippet (0.64 s at 25 fps).
    """
    from stp_edge.metrics import box_iou
    from stp_edge.synthetic import benchmark_plans

    per_frame: dict[str, list[float]] = {}
    per_snippet: dict[str, list[float]] = {}
    rects = None
    for label, _, plan in benchmark_plans(split="test", num_videos=num_videos, seed=seed):
        if label == "normal":
            continue
        if rects is None:
            rects = cell_rectangles(image_size, grid, (plan.layout.height, plan.layout.width))
        frames = np.flatnonzero(np.isfinite(plan.boxes[:, 0]))
        if not len(frames):
            continue
        ious = np.stack([box_iou(rects, plan.boxes[f]) for f in frames], axis=1)  # [rectangles, frames]
        per_frame.setdefault(label, []).extend(ious.max(0).tolist())
        snippet = frames // snippet_len
        for k in np.unique(snippet):
            cols = ious[:, snippet == k]
            per_snippet.setdefault(label, []).extend(cols[int(cols.mean(1).argmax())].tolist())
    every = [v for vals in per_frame.values() for v in vals]
    every_snippet = [v for vals in per_snippet.values() for v in vals]
    return {"grid": grid, "frames": len(every), "tiou_ceiling": float(np.mean(every)),
            "snippet_tiou_ceiling": float(np.mean(every_snippet)),
            "per_class": {k: {"tiou_ceiling": float(np.mean(v)), "snippet_tiou_ceiling": float(np.mean(per_snippet[k])),
                              "frames": len(v)} for k, v in per_frame.items()}}


def encoder_probe(minutes: float, train_videos: int, val_videos: int, seed: int, lr: float,
                  batch_size: int = 4) -> list[dict[str, float]]:
    """Fully supervised snippet-label training of the demo encoder (diagnostic); validation AUC per epoch."""
    import torch
    import torch.nn.functional as F

    from stp_edge.demo import training as dt
    from stp_edge.metrics import rank_auc
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


def cell_coverage(box: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[R2] fraction of each cell's area (cells [R2,4], frame pixels) inside `box` [4]; 0 for a NaN box."""
    if not np.isfinite(box).all():
        return np.zeros(len(cells))
    w = np.clip(np.minimum(cells[:, 2], box[2]) - np.maximum(cells[:, 0], box[0]), 0, None)
    h = np.clip(np.minimum(cells[:, 3], box[3]) - np.maximum(cells[:, 1], box[1]), 0, None)
    return w * h / ((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1]))


def region_targets(boxes: np.ndarray, labels: np.ndarray, frame_hw: tuple[int, int], image_size: int, grid: int,
                   flip: bool = False) -> np.ndarray:
    """[T,R2] region targets of a video's snippets: each token cell's coverage by the snippet's box.

    boxes [T,4] in frame pixels (NaN: none), labels [T] (0: normal snippet, all targets 0). `flip`: the targets of
    the horizontally flipped input (columns mirrored; the centre crop and the grid are symmetric).
    """
    from stp_edge.geometry import region_boxes, to_frame_coords

    cells = to_frame_coords(region_boxes(image_size, grid), image_size, frame_hw)
    cov = np.stack([cell_coverage(b, cells) if lab else np.zeros(len(cells))
                    for b, lab in zip(boxes, labels, strict=True)])
    if flip:
        cov = cov.reshape(-1, grid, grid)[:, :, ::-1].reshape(len(cov), -1)
    return np.ascontiguousarray(cov)


def supervised_batch_loss(model, videos, settings, gen=None, aux=None, pseudo=None, scores_out=None):
    """`stp_edge.demo.training.batch_loss` with FULL supervision (diagnostic reference only; same signature).

    Per video: BCE of every snippet score against the sampled frame's label, class CE of every snippet (the
    video class where the frame is anomalous, normal elsewhere), BCE of every region's abnormal share against
    the fraction of its cell the ground-truth box covers, and class CE of the regions the box covers by half or
    more. The region targets flip with the image (`_augment` reports its flip).
    """
    import torch
    import torch.nn.functional as F

    from stp_edge.demo import training as dt

    if settings.translate:
        raise ValueError("supervised_batch_loss: translate augmentation would move the boxes; set translate=0")
    cfg = model.cfg
    G = cfg.region_grid
    flips: list[bool] = []
    images = [dt._augment(v.images, gen, settings, flips) if gen is not None else v.images.float() for v in videos]
    flips = flips or [False] * len(videos)
    q = model.spatial_query_features()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
        encoded = dt._encode_batch(model, images)
    terms: dict[str, list] = {}
    for v, (fe, re), flip in zip(videos, encoded, flips, strict=True):
        fe, re = fe.float(), re.float()
        score_logit, class_logit = model.temporal_logits(fe[None], re[None])
        score_logit, class_logit = score_logit[0], class_logit[0]
        y = torch.from_numpy(v.snippet_labels).float()
        cov_t = torch.from_numpy(region_targets(v.snippet_boxes, v.snippet_labels, v.frame_hw,
                                                cfg.vision.image_size, G, flip)).float()
        logits, log_abn = dt.region_logits(re, q, model.query_is_abnormal, cfg.temperature)
        p_not = torch.log1p(-log_abn.exp().clamp(max=1 - 1e-6))
        covered = cov_t >= 0.5
        video = {
            "bce": F.binary_cross_entropy_with_logits(score_logit, y),
            "ce": F.cross_entropy(class_logit, (y * v.label).long()),
            "region_bce": -(cov_t * log_abn + (1 - cov_t) * p_not).mean(),
            "region_ce": (F.cross_entropy(logits[covered], torch.full((int(covered.sum()),), v.label))
                          if covered.any() else logits.sum() * 0),
        }
        video["loss"] = (video["bce"] + video["ce"] + settings.spatial_weight * video["region_bce"]
                         + settings.region_ce_weight * video["region_ce"])
        if scores_out is not None:
            scores_out.append(torch.sigmoid(score_logit.detach()).numpy())
        for k, t in video.items():
            terms.setdefault(k, []).append(t)
    return {k: torch.stack(t).mean() for k, t in terms.items()}


def supervised_reference(out_dir: Path, minutes: float, train_videos: int, val_videos: int, seed: int,
                         command: str, grid: int = 7, epochs: int | None = None) -> dict[str, object]:
    """Train the demo model with `supervised_batch_loss` (demo settings otherwise) and save it to `out_dir`.

    `grid` other than the demo's 7: the same encoder with patch size image_size / grid (one stride-2 stem layer
    fewer for 14), so the token and region grid is grid x grid. `epochs`: the schedule's length (default the
    demo's); a finer grid costs more per epoch, so fewer epochs fit the time cap.
    """
    from dataclasses import replace

    from stp_edge.demo import training as dt

    overrides: dict[str, object] = {}
    vision = dt.DEMO_OVERRIDES["vision"]
    if grid != vision.grid:
        overrides = {"vision": replace(vision, patch_size=vision.image_size // grid), "region_grid": grid}
    settings = dt.DemoTrainSettings(seed=seed, train_videos=train_videos, val_videos=val_videos, minutes=minutes,
                                    attention_mil_weight=0.0, self_train_weight=0.0, config_overrides=overrides,
                                    epochs=dt.DemoTrainSettings.epochs if epochs is None else epochs)
    result = dt.train_demo(settings, loss_fn=supervised_batch_loss, progress=False)
    dt.save_demo(result, out_dir, command=command)
    last = result.history[-1]
    return {"out": str(out_dir), "grid": grid, "minutes": minutes, "train_videos": train_videos,
            "val_videos": val_videos,
            "epochs_run": len(result.history), "stopped_early": result.stopped_early,
            "train_seconds": round(result.seconds, 1), "val_snippet_auc": last.get("val_snippet_auc"),
            "val_top_region_iou": last.get("val_top_region_iou"),
            "evaluate": f"python scripts/eval_demo.py --checkpoint {out_dir} --out research/results/"
                        f"demo_supervised_eval{'' if grid == 7 else f'_{grid}'}.json"}


def to_markdown(result: dict) -> str:
    """The markdown report of `main`'s result (box ceilings, probe epochs, supervised reference)."""
    lines = ["# Demo model ceilings", "", f"Machine: {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores", "", f"Command: `{result['command']}`", "",
             "## Box ceiling (perfect scores and region choice; cell-aligned boxes)", "",
             "Per frame: the best rectangle of grid cells for every frame. Per snippet: one rectangle per 16-frame",
             "snippet, scored on each of its frames, as the runtime outputs one box per snippet.", "",
             "| grid | class | frames | TIoU ceiling, per frame | TIoU ceiling, per snippet |", "|---|---|---|---|---|"]
    for b in result["box_ceiling"]:
        g = f"{b['grid']}x{b['grid']}"
        for k, v in sorted(b["per_class"].items()):
            lines.append(f"| {g} | {k} | {v['frames']} | {v['tiou_ceiling']:.3f} | "
                         f"{v.get('snippet_tiou_ceiling', float('nan')):.3f} |")
        lines.append(f"| {g} | **all** | {b['frames']} | **{b['tiou_ceiling']:.3f}** | "
                     f"**{b.get('snippet_tiou_ceiling', float('nan')):.3f}** |")
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
    ref = result.get("supervised_reference")
    if ref:
        lines += ["", "## Supervised reference (frame labels and boxes, diagnostic only)", "",
                  f"The demo model ({ref.get('grid', 7)}x{ref.get('grid', 7)} token grid) and schedule trained on "
                  f"frame labels and boxes: {ref['train_videos']} training "
                  f"clips, {ref['epochs_run']} epochs in {ref['train_seconds'] / 60:.1f} min"
                  f"{' (cut by the time cap)' if ref['stopped_early'] else ''}; saved to `{ref['out']}`. Last "
                  f"epoch on the validation split: snippet AUC {ref['val_snippet_auc']:.3f}, top-region IoU "
                  f"(gated) {ref['val_top_region_iou']:.3f}. Test split through the runtime: `{ref['evaluate']}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure the ceilings asked for and write <out>/<name>.json and .md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe-minutes", type=float, default=10.0, help="0 skips the encoder probe")
    ap.add_argument("--train-videos", type=int, default=400)
    ap.add_argument("--val-videos", type=int, default=40)
    ap.add_argument("--test-videos", type=int, default=30, help="size of the test split (as eval_demo.py)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grids", type=int, nargs="+", default=[7, 14], help="region grids for the box ceiling")
    ap.add_argument("--reference-out", type=Path, default=None,
                    help="train the frame-and-box supervised reference model into this directory (~27 min)")
    ap.add_argument("--reference-minutes", type=float, default=27.0, help="time cap of the reference's training")
    ap.add_argument("--reference-grid", type=int, default=7, help="token/region grid of the reference (7 or 14)")
    ap.add_argument("--reference-epochs", type=int, default=None, help="schedule length (default the demo's)")
    ap.add_argument("--out", type=Path, default=Path("research/results"))
    ap.add_argument("--name", default="demo_ceiling", help="writes <out>/<name>.json and .md")
    args = ap.parse_args(argv)

    from stp_edge.demo.training import demo_config
    from stp_edge.machine import machine_info

    size = demo_config().vision.image_size
    result: dict[str, object] = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "box_ceiling": [box_ceiling(g, size, args.test_videos, args.seed) for g in args.grids],
    }
    for b in result["box_ceiling"]:  # type: ignore[union-attr]
        print(f"box ceiling, {b['grid']}x{b['grid']} cells: TIoU {b['tiou_ceiling']:.3f} per frame, "
              f"{b['snippet_tiou_ceiling']:.3f} per snippet; "
              + ", ".join(f"{k} {v['tiou_ceiling']:.3f}/{v['snippet_tiou_ceiling']:.3f}"
                          for k, v in sorted(b["per_class"].items())))
    if args.probe_minutes > 0:
        result["encoder_probe"] = {"minutes": args.probe_minutes, "train_videos": args.train_videos,
                                   "val_videos": args.val_videos, "lr": args.lr,
                                   "epochs": encoder_probe(args.probe_minutes, args.train_videos,
                                                           args.val_videos, args.seed, args.lr)}
    if args.reference_out is not None:
        result["supervised_reference"] = supervised_reference(
            args.reference_out, args.reference_minutes, args.train_videos, args.val_videos, args.seed,
            str(result["command"]), args.reference_grid, args.reference_epochs)
        print(f"supervised reference saved to {args.reference_out}: {result['supervised_reference']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(to_markdown(result))
    print(f"wrote {args.out / args.name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
