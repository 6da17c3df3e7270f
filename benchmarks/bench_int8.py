"""INT8 (Q/DQ) encoder vs fp32 on ONNX Runtime CPU: speed, embedding cosine, and the demo model's AUC loss.

    python benchmarks/bench_int8.py [--config vit-b-16] [--calib-videos 4] [--test-videos 30] [--skip-demo]

In one process, on this machine:
1. speed: the fp32 and the INT8 encoder of the same random-weight model (`export_bundle(random_config=...)`,
   INT8 calibrated on synthetic clips) through the runtime's own ONNX Runtime CPU runners, batch 1 and 16,
   the two graphs alternated call by call so machine noise hits both alike; ratio of medians;
2. accuracy: worst and mean cosine of frame and region embeddings, INT8 vs fp32, on preprocessed frames of
   held-out synthetic clips (seeds the calibration never saw; synthetic renders stand in for real frames here,
   no real video can be downloaded on this machine);
3. the demo model exported fp32 and INT8 (calibrated on synthetic clips of another split), each evaluated with
   `stp_edge.eval.evaluate_bundle` on the synthetic test split (`write_benchmark(split="test")`, as
   scripts/eval_demo.py): frame AUC loss in points.
Saves benchmarks/results/int8_<config>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = {"speedup": 2.0, "cosine": 0.99, "auc_loss_points": 0.5}


def _clips(out: Path, split: str, n: int, seed: int, num_frames: int) -> Path:
    from stp_edge.synthetic import write_benchmark

    write_benchmark(out, split=split, num_videos=n, seed=seed, num_frames=num_frames)
    return out


def _frames(data: Path, cfg, n: int) -> np.ndarray:
    from stp_edge.export.quantize import calibration_set

    return calibration_set(data, cfg, max_frames=n).images


def _speed(fp32, int8, images: np.ndarray, batch: int, reps: int) -> dict:
    x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    times = {"fp32": [], "int8": []}
    for runner in (fp32, int8):  # warm-up
        runner.infer({"images": x})
    for _ in range(reps):
        for name, runner in (("fp32", fp32), ("int8", int8)):
            t0 = time.perf_counter()
            runner.infer({"images": x})
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "reps": reps, "median_ms": med, "ms": times, "speedup": med["fp32"] / med["int8"],
            "per_pair_ratio": [round(a / b, 3) for a, b in zip(times["fp32"], times["int8"], strict=True)]}


def _cosines(fp32, int8, images: np.ndarray) -> dict:
    from stp_edge.export.verify import embedding_cosine

    out = {}
    ref = {k: [] for k in ("frame_emb", "region_emb")}  # the encoder's outputs (region_emb: pooled in the graph)
    got = {k: [] for k in ref}
    for i in range(0, len(images), 8):
        a, b = fp32.infer({"images": images[i:i + 8]}), int8.infer({"images": images[i:i + 8]})
        for k in ref:
            ref[k].append(a[k])
            got[k].append(b[k])
    for k in ref:
        r, g = np.concatenate(ref[k]), np.concatenate(got[k])
        rows = [embedding_cosine(g[j:j + 1], r[j:j + 1]) for j in range(len(r))] if k == "frame_emb" else \
            [embedding_cosine(g[j], r[j]) for j in range(len(r))]
        out[k] = {"min": float(np.min(rows)), "mean": float(np.mean(rows)), "n_images": len(r)}
    return out


def encoder_part(cfg_name: str, work: Path, calib: Path, held_out: Path, reps1: int, reps16: int,
                 calib_frames: int) -> dict:
    from stp_edge.backends import create_runners
    from stp_edge.bundle import Bundle
    from stp_edge.export.bundle_export import export_bundle

    t0 = time.monotonic()
    b32 = export_bundle(work / f"{cfg_name}_fp32.stp", random_config=cfg_name, seed=0, progress=False)
    b8 = export_bundle(work / f"{cfg_name}_int8.stp", random_config=cfg_name, seed=0, precision="int8",
                       calib=calib, calib_frames=calib_frames, progress=False)
    export_s = time.monotonic() - t0
    bundles = Bundle.load(b32), Bundle.load(b8)
    images = _frames(held_out, bundles[0].config, 32)
    fp32 = create_runners(bundles[0], "ort-cpu", graphs=("encoder",))["encoder"]
    int8 = create_runners(bundles[1], "ort-cpu", graphs=("encoder",))["encoder"]
    with fp32, int8:
        cos = _cosines(fp32, int8, images)
        speed = [_speed(fp32, int8, images, 1, reps1), _speed(fp32, int8, images, 16, reps16)]
    return {"config": cfg_name, "export_s": round(export_s, 1), "cosine": cos, "speed": speed,
            "quantization": bundles[1].manifest["exporter"]["quantization"]}


def demo_part(work: Path, calib: Path, test_videos: int, calib_frames: int) -> dict:
    from stp_edge.eval.run import evaluate_bundle
    from stp_edge.export.bundle_export import export_bundle

    data = work / "synthetic_test"
    _clips(data, "test", test_videos, 0, 300)
    out = {}
    for precision in ("fp32", "int8"):
        extra = {"calib": calib, "calib_frames": calib_frames} if precision == "int8" else {}
        bundle = export_bundle(work / f"demo_{precision}.stp", demo=True, precision=precision, progress=False,
                               **extra)
        res = evaluate_bundle(bundle, data, backend="ort-cpu", report=None)
        out[precision] = {"auc": res.auc, "ap": res.ap, "tiou": res.tiou}
    out["auc_loss_points"] = 100 * (out["fp32"]["auc"] - out["int8"]["auc"])
    out["data"] = {"split": "test", "num_videos": test_videos, "seed": 0,
                   "generator": "stp_edge.synthetic.write_benchmark"}
    return out


def markdown(res: dict) -> str:
    m, enc = res["machine"], res["encoder"]
    lines = [f"# INT8 (Q/DQ) encoder vs fp32, ONNX Runtime CPU ({m['cpu']}, {m['cores']} cores, "
             f"load {m['load_avg_1m']} at start)", "",
             f"Model: {enc['config']} random weights; INT8 calibrated on "
             f"{enc['quantization']['calibration']['num_frames']} frames of synthetic clips; "
             f"{enc['quantization']['activations']} activations, "
             f"{enc['quantization']['weights']} weights. fp32 and INT8 alternated call by call; medians.", "",
             "| batch | fp32 ms | INT8 ms | speed-up (target >= 2x) | met |", "|---:|---:|---:|---:|:--:|"]
    for s in enc["speed"]:
        ok = s["speedup"] >= TARGETS["speedup"]
        lines.append(f"| {s['batch']} | {s['median_ms']['fp32']:.1f} | {s['median_ms']['int8']:.1f} | "
                     f"{s['speedup']:.2f}x | {'yes' if ok else 'no'} |")
    lines += ["", "| embedding | worst cosine (target >= 0.99) | mean cosine | images | met |",
              "|---|---:|---:|---:|:--:|"]
    for k, c in enc["cosine"].items():
        lines.append(f"| {k} | {c['min']:.5f} | {c['mean']:.5f} | {c['n_images']} | "
                     f"{'yes' if c['min'] >= TARGETS['cosine'] else 'no'} |")
    lines.append("")
    lines.append("Held-out frames: preprocessed frames of synthetic clips (stp_edge.synthetic, seeds the "
                 "calibration never saw). They stand in for real frames: no real video is available here.")
    if res.get("demo"):
        d = res["demo"]
        ok = d["auc_loss_points"] <= TARGETS["auc_loss_points"]
        lines += ["", f"Demo model on the synthetic test split ({d['data']['num_videos']} videos), evaluate_bundle, "
                  "ORT CPU:", "", "| precision | frame AUC | AP | TIoU |", "|---|---:|---:|---:|"]
        for p in ("fp32", "int8"):
            lines.append(f"| {p} | {d[p]['auc']:.4f} | {d[p]['ap']:.4f} | {d[p]['tiou']:.4f} |")
        lines += ["", f"AUC loss: {d['auc_loss_points']:.2f} points (target <= 0.5): {'met' if ok else 'NOT met'}."]
    lines += ["", f"Command: `{res['command']}` ({res['seconds']:.0f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="vit-b-16", choices=("tiny", "vit-b-16"))
    p.add_argument("--calib-videos", type=int, default=4)
    p.add_argument("--calib-frames", type=int, default=64)
    p.add_argument("--test-videos", type=int, default=30)
    p.add_argument("--reps1", type=int, default=9, help="timed calls per graph at batch 1")
    p.add_argument("--reps16", type=int, default=3, help="timed calls per graph at batch 16")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)

    from stp_edge.machine import machine_info

    t0 = time.monotonic()
    res = {"machine": machine_info(), "targets": TARGETS,
           "command": "python benchmarks/bench_int8.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="stp-int8-") as tmp:
        work = Path(tmp)
        calib = _clips(work / "calib", "int8-calib", args.calib_videos, 7, 256)
        held_out = _clips(work / "held_out", "int8-held-out", 4, 8, 128)
        res["encoder"] = encoder_part(args.config, work, calib, held_out, args.reps1, args.reps16,
                                      args.calib_frames)
        print(json.dumps({"speed": [(s["batch"], round(s["speedup"], 2)) for s in res["encoder"]["speed"]],
                          "cosine": res["encoder"]["cosine"]}), flush=True)
        if not args.skip_demo:
            res["demo"] = demo_part(work, calib, args.test_videos, args.calib_frames)
    res["seconds"] = time.monotonic() - t0
    table = markdown(res)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"int8_{args.config}"
    stem.with_suffix(".md").write_text(table + "\n")
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
