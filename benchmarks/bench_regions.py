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
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="vit-b-16", choices=("tiny", "vit-b-16"))
    p.add_argument("--reps", type=int, default=30, help="timed calls per side and batch")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--work", type=Path, default=None, help="keep (and reuse) the two bundles here")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)

    import os

    from stp_edge.machine import machine_info

    t0 = time.monotonic()
    machine = machine_info()  # with the ONNX Runtime version
    with tempfile.TemporaryDirectory(prefix="stp-regions-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = run(args.config, work, args.reps, args.batch)
    res.update(machine=machine, load_avg_1m_at_end=f"{os.getloadavg()[0]:.2f}",
               seconds=time.monotonic() - t0,
               command="python benchmarks/bench_regions.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    table = markdown(res)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"regions_{args.config}"
    stem.with_suffix(".md").write_text(table + "\n")
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
