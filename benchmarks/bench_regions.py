"""Region features in the encoder graph vs pooled on the host: encoder + pooling time per snippet, ORT CPU.

    python benchmarks/bench_regions.py [--config vit-b-16] [--reps 30] [--batch 1 8] [--work DIR]

In one process, on this machine: the same random-weight model (`export_bundle(random_config=..., seed=0)`)
exported twice, as bundles are now (`region_features="encoder"`: encoder.onnx returns region_emb, pooled in the
graph) and as they were before (`region_features="host"`: it returns patch_emb and the runtime pools it with
NumPy, `stp_edge.pipeline.encode.pool_regions`). Both run through the runtime's own encode stage
(`Encoder.encode_images`, ONNX Runtime CPU runners) on preprocessed frames of a synthetic clip; the two are
alternated call by call, the order swapped every repetition, so machine noise hits both alike. Reported per
batch: medians (and quartiles) of the whole encode stage, and for the host side its graph call and its pooling
apart; the bytes each graph hands back; the largest difference between the two region features.
Saves benchmarks/results/regions_<config>.{md,json}.

    python benchmarks/bench_regions.py --modes [--config vit-b-16] [--reps 5] [--work DIR]

`--modes` measures instead what the region mode and the frame policy cost: the model exported in tokens mode
(7x7 pooled patch tokens) and in crops mode (3x3 sliding-window crops, each encoded: the default around
pretrained ViT-B/16 weights), each run through the runtime's encode stage (`Encoder`, ONNX Runtime CPU, one
snippet per call) under every frame policy (center 1 image per frame, pad 2, tiles 3; crops mode encodes each
image and its 9 crops). Reported: the encode stage's "encoder" milliseconds per snippet (median [p25, p75]),
the images the encoder saw, and the ratio to tokens + center. Saves benchmarks/results/regions_modes_<config>.*.
Mode `crops-frame` is crops mode with region extent "frame" (the 3x3 crops tile the whole frame, cut by the
preprocessor as views; the frame brings its 9 crops once whatever the policy).

    python benchmarks/bench_regions.py --modes --only crops/center crops-frame/center --tag extent [--reps 5]

`--only MODE/POLICY ...` times just those cases (ratios then to the first); `--tag` names the result files
(regions_modes_<config>_<tag>.*), so a partial run does not replace the full table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _images(cfg, n: int) -> np.ndarray:
    """n preprocessed frames of a synthetic clip (what the encoder sees at run time)."""
    from stp_edge.preprocess import CpuPreprocessor
    from stp_edge.synthetic import generate_clip

    clip = generate_clip(11, width=640, height=360, num_frames=16 * n)
    return CpuPreprocessor(cfg.vision.image_size)(list(clip.frames[8::16][:n]))


def _quartiles(ms: list[float]) -> dict[str, float]:
    q = np.percentile(ms, [25, 50, 75])
    return {"p25": float(q[0]), "median": float(q[1]), "p75": float(q[2])}


def _time_batch(enc_new, enc_old, images: np.ndarray, reps: int) -> dict:
    """Alternate the in-graph and host-pooling encode stages on the same images; per-call milliseconds."""
    from stp_edge.pipeline.encode import pool_regions

    cfg = enc_new.config
    t = {"graph": [], "host": [], "host_encoder": [], "host_pool": []}

    def new() -> np.ndarray:
        t0 = time.perf_counter()
        region = enc_new.encode_images(images)[1]
        t["graph"].append((time.perf_counter() - t0) * 1e3)
        return region

    def old() -> np.ndarray:
        t0 = time.perf_counter()
        raw = enc_old.runner.infer_batched({"images": images})
        t1 = time.perf_counter()
        region = pool_regions(raw["patch_emb"], cfg.vision.grid, cfg.region_grid)
        t2 = time.perf_counter()
        t["host"].append((t2 - t0) * 1e3)
        t["host_encoder"].append((t1 - t0) * 1e3)
        t["host_pool"].append((t2 - t1) * 1e3)
        return region

    diff = float(np.abs(new() - old()).max())  # warm-up, and the two must agree
    for k in t:
        t[k].clear()
    for i in range(reps):
        for f in ((new, old) if i % 2 == 0 else (old, new)):
            f()
    stats = {k: _quartiles(v) for k, v in t.items()}
    return {"batch": len(images), "reps": reps, "ms": t, "stats": stats,
            "graph_vs_host": stats["graph"]["median"] / stats["host"]["median"],
            "per_snippet_ms": {k: stats[k]["median"] / len(images) for k in ("graph", "host")},
            "region_emb_max_abs_diff": diff}


def run(cfg_name: str, work: Path, reps: int, batches: list[int]) -> dict:
    from stp_edge.backends import create_runners
    from stp_edge.bundle import Bundle
    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.pipeline.encode import Encoder

    t0 = time.monotonic()
    paths = {}
    for regions in ("encoder", "host"):
        path = work / f"{cfg_name}_{regions}.stp"
        if not path.exists():
            export_bundle(path, random_config=cfg_name, seed=0, progress=False, region_features=regions)
        paths[regions] = path
    export_s = time.monotonic() - t0
    new_b, old_b = Bundle.load(paths["encoder"]), Bundle.load(paths["host"])
    if (new_b.region_features, old_b.region_features) != ("encoder", "host"):
        raise RuntimeError(f"{work}: the bundles there are not the two layouts; remove them or pick another --work")
    cfg = new_b.config
    images = _images(cfg, max(batches))
    out_bytes = {r: {k: int(np.prod([d for d in shape if isinstance(d, int)])) * 4
                     for k, shape in b.manifest["graphs"]["encoder"]["outputs"].items()}
                 for r, b in (("encoder", new_b), ("host", old_b))}
    runners = [create_runners(b, "ort-cpu", graphs=("encoder",))["encoder"] for b in (new_b, old_b)]
    with runners[0], runners[1]:
        enc_new, enc_old = (Encoder(r, None, cfg) for r in runners)
        results = [_time_batch(enc_new, enc_old, np.ascontiguousarray(images[:b]), reps) for b in batches]
    return {"config": cfg_name, "export_s": round(export_s, 1), "bytes_per_image": out_bytes,
            "grid": cfg.vision.grid, "region_grid": cfg.region_grid, "embed_dim": cfg.vision.embed_dim,
            "batches": results}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Region features in the encoder graph vs pooled on the host ({res['config']}, ORT CPU)", "",
             f"Machine: {m['node']}, {m['cpu']}, {m['cores']} cores, load {m['load_avg_1m']} at start, "
             f"{res['load_avg_1m_at_end']} at end; onnxruntime {m['onnxruntime']}.", "",
             f"Same random weights exported twice: `region_features=\"encoder\"` (encoder.onnx returns region_emb, "
             f"{res['grid']}x{res['grid']} tokens pooled to {res['region_grid']}x{res['region_grid']} in the graph) "
             f"and `\"host\"` (returns patch_emb, pooled with NumPy after the call, as before). Both through "
             f"`Encoder.encode_images`, alternated call by call; medians [p25, p75] in ms per call.", "",
             "| batch | in graph | host: total | host: encoder call | host: NumPy pooling | graph / host | "
             "per snippet: graph / host | max abs diff |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(s: dict) -> str:
        return f"{s['median']:.2f} [{s['p25']:.2f}, {s['p75']:.2f}]"

    for b in res["batches"]:
        s = b["stats"]
        lines.append(f"| {b['batch']} | {cell(s['graph'])} | {cell(s['host'])} | {cell(s['host_encoder'])} | "
                     f"{cell(s['host_pool'])} | {b['graph_vs_host']:.3f} | "
                     f"{b['per_snippet_ms']['graph']:.2f} / {b['per_snippet_ms']['host']:.2f} | "
                     f"{b['region_emb_max_abs_diff']:.1e} |")
    by = res["bytes_per_image"]
    lines += ["", "Bytes an encoder call returns per image: in graph "
              + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in by["encoder"].items()) + "; host "
              + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in by["host"].items())
              + " (on a GPU this is the device-to-host copy).", "",
              f"Command: `{res['command']}` ({res['seconds']:.0f} s, exports {res['export_s']:.0f} s)"]
    return "\n".join(lines)


POLICIES = ("center", "pad", "tiles")


MODES = {"tokens": {"region_mode": "tokens", "region_grid": 7}, "crops": {"region_mode": "crops", "region_grid": 3},
         "crops-frame": {"region_mode": "crops", "region_grid": 3, "region_extent": "frame"}}


def images_per_snippet(cfg, spec) -> int:
    """Images the encoder sees for one sampled frame: the spec's views (region windows included); with crops of the
    centre square cut in the graph, each view brings its R² crops."""
    in_graph_crops = cfg.region_mode == "crops" and not spec.region_grid
    return spec.views * (1 + (cfg.num_regions if in_graph_crops else 0))


def run_modes(cfg_name: str, work: Path, reps: int, only: list[str] | None = None) -> dict:
    """Encoder ms per snippet for tokens / crops / crops-frame x center / pad / tiles, alternated call by call."""
    import dataclasses

    from stp_edge.backends import CallLimits, create_runners
    from stp_edge.bundle import Bundle
    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.pipeline.encode import Encoder
    from stp_edge.pipeline.snippets import SnippetAssembler
    from stp_edge.preprocess import CpuPreprocessor
    from stp_edge.synthetic import generate_clip

    t0 = time.monotonic()
    wanted = only or [f"{m}/{p}" for m in MODES for p in POLICIES]
    bad = [k for k in wanted if k.split("/")[0] not in MODES or k.split("/")[-1] not in POLICIES or "/" not in k]
    if bad:
        raise SystemExit(f"--only: unknown cases {bad}; expected MODE/POLICY with MODE in {list(MODES)}, POLICY in "
                         f"{list(POLICIES)}")
    bundles = {}
    for mode in dict.fromkeys(k.split("/")[0] for k in wanted):
        path = work / f"{cfg_name}_{mode}.stp"
        if not path.exists():
            export_bundle(path, random_config=cfg_name, seed=0, progress=False, config_overrides=MODES[mode])
        bundles[mode] = Bundle.load(path)
    export_s = time.monotonic() - t0
    clip = generate_clip(11, width=768, height=576, num_frames=16)  # a 4:3 camera: tiles and pad see its sides
    cases, ms, pre_ms, images = [], {}, {}, {}
    limits = CallLimits(call_timeout_s=900)  # crops + tiles is 30 ViT-B/16 images in one call, on a shared CPU
    runners = {m: create_runners(b, "ort-cpu", graphs=("encoder",), limits=limits)["encoder"]
               for m, b in bundles.items()}
    with contextlib.ExitStack() as stack:
        for r in runners.values():
            stack.enter_context(r)
        encoders = {}
        for key in wanted:
            mode, policy = key.split("/")
            b = bundles[mode]
            cfg = b.config
            asm = SnippetAssembler(cfg.snippet_len, cfg.frames_per_snippet, 0)
            snippet = next(sn for f in clip.frames if (sn := asm.push(f)))
            spec = dataclasses.replace(b.preprocess_spec, frame_policy=policy)
            pre = CpuPreprocessor(cfg.vision.image_size, spec=spec)
            encoders[key] = (Encoder(runners[mode], pre, cfg), snippet)
            images[key] = images_per_snippet(cfg, spec)
            cases.append(key)
            ms[key], pre_ms[key] = [], []
        for key in cases:  # warm-up
            enc, snippet = encoders[key]
            enc([snippet])
        for i in range(reps):
            for key in (cases if i % 2 == 0 else cases[::-1]):
                enc, snippet = encoders[key]
                timings = enc([snippet]).timings
                ms[key].append(timings["encoder"])
                pre_ms[key].append(timings["preprocess"])
    stats = {k: _quartiles(v) for k, v in ms.items()}
    base = stats[cases[0]]["median"]
    return {"config": cfg_name, "export_s": round(export_s, 1), "frame": [576, 768], "reps": reps, "ms": ms,
            "stats": stats, "images_per_snippet": images, "baseline": cases[0], "preprocess_ms": pre_ms,
            "preprocess_stats": {k: _quartiles(v) for k, v in pre_ms.items()},
            "vs_tokens_center": {k: stats[k]["median"] / base for k in cases}}


def markdown_modes(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Encoder cost of region modes and frame policies ({res['config']}, ORT CPU)", "",
             f"Machine: {m['node']}, {m['cpu']}, {m['cores']} cores, load {m['load_avg_1m']} at start, "
             f"{res['load_avg_1m_at_end']} at end; onnxruntime {m['onnxruntime']}. A shared machine (other jobs "
             "ran): ratios measured side by side, alternated call by call, are the numbers to read.", "",
             "Random weights (same seed), exported in tokens mode (7x7 pooled patch tokens), crops mode (3x3 "
             "crops of the centre square, cut and resized inside the encoder graph, each encoded) and crops-frame "
             "(3x3 crops of the whole frame, cut and resized by the CPU preprocessor as views: their resize is in "
             "the preprocess column, not the encoder's); one snippet (one sampled 768x576 frame) per `Encoder` "
             f"call; the encode stage's \"encoder\" time, {res['reps']} calls each, median [p25, p75] ms per "
             "snippet.", "",
             f"| region mode | frame policy | images per snippet | encoder ms per snippet | vs "
             f"{res.get('baseline', 'tokens/center').replace('/', ' + ')} | preprocess ms per snippet (CPU) |",
             "|---|---|---:|---:|---:|---:|"]
    for key, s in res["stats"].items():
        mode, policy = key.split("/")
        pre = res.get("preprocess_stats", {}).get(key)
        pre_text = f"{pre['median']:.1f} [{pre['p25']:.1f}, {pre['p75']:.1f}]" if pre else "-"
        lines.append(f"| {mode} | {policy} | {res['images_per_snippet'][key]} | {s['median']:.0f} "
                     f"[{s['p25']:.0f}, {s['p75']:.0f}] | {res['vs_tokens_center'][key]:.2f}x | {pre_text} |")
    lines += ["", f"Command: `{res['command']}` ({res['seconds']:.0f} s, exports {res['export_s']:.0f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="vit-b-16", choices=("tiny", "vit-b-16"))
    p.add_argument("--reps", type=int, default=30, help="timed calls per side and batch")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--work", type=Path, default=None, help="keep (and reuse) the two bundles here")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--modes", action="store_true", help="tokens vs crops x frame policies (encoder ms per snippet)")
    p.add_argument("--only", nargs="+", metavar="MODE/POLICY", help="--modes: just these cases (e.g. crops/center "
                   "crops-frame/center); ratios to the first")
    p.add_argument("--tag", help="suffix of the result files (regions_modes_<config>_<tag>)")
    args = p.parse_args(argv)

    import os

    from stp_edge.machine import machine_info

    t0 = time.monotonic()
    machine = machine_info()  # with the ONNX Runtime version
    with tempfile.TemporaryDirectory(prefix="stp-regions-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = (run_modes(args.config, work, args.reps, args.only) if args.modes
               else run(args.config, work, args.reps, args.batch))
    res.update(machine=machine, load_avg_1m_at_end=f"{os.getloadavg()[0]:.2f}",
               seconds=time.monotonic() - t0,
               command="python benchmarks/bench_regions.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    table = markdown_modes(res) if args.modes else markdown(res)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"regions_{'modes_' if args.modes else ''}{args.config}{'_' + args.tag if args.tag else ''}"
    stem.with_suffix(".md").write_text(table + "\n")
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
