"""Keyframe-aligned sampling: its effect on the demo benchmark's AUC, next to center sampling.

    python benchmarks/bench_sampling.py [--num-videos 30] [--seed 0] [--gop 16] [--work DIR]

Exports the demo model (`export_bundle(demo=True)`), writes the synthetic test split (`write_benchmark(split=
"test")`, as scripts/eval_demo.py), re-encodes every video as H.264 with a keyframe every `--gop` frames (libx264
through PyAV: no scene-cut keyframes, no B-frames), and runs the bundle (ONNX Runtime CPU) over the H.264 split
through the PyAV source (`VideoSource(decoder="pyav")`) three ways:
- center sampling, every frame decoded (what the runtime does by default);
- keyframe sampling, every frame decoded;
- keyframe sampling, keyframes only decoded (`decode="keyframes"`): must equal the previous row exactly.
With GOP 16 every snippet's keyframe is its first frame, so keyframe sampling reads offset 0 of each snippet
where the model was trained on offset 8. For each: frame AUC / AP / TIoU (`stp_edge.eval.evaluate_videos`, as
`stp-edge eval` computes them), snippets that fell back to the center (no keyframe), and wall time. A cross-check
runs `stp_edge.eval.evaluate_bundle` on the same H.264 split: its AUC must equal the center row's.
Saves benchmarks/results/sampling_demo.{md,json} with the machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

RUNS = (("center", "full"), ("keyframe", "full"), ("keyframe", "keyframes"))


def reencode_h264(src: Path, dst: Path, gop: int) -> None:
    """`src` as H.264 (yuv420p, crf 18) with a keyframe exactly every `gop` frames, same frames and rate."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate or 25
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "0", "crf": "18"}
        for frame in inp.decode(vin):
            image = frame.to_ndarray(format="bgr24")
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def h264_split(data: Path, out: Path, gop: int) -> Path:
    """The split at `data` with every video re-encoded (`reencode_h264`) and its annotations copied."""
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(data.iterdir()):
        if f.suffix == ".mp4":
            reencode_h264(f, out / f.name, gop)
        elif f.is_file():
            shutil.copy2(f, out / f.name)
    return out


def evaluate(bundle: Path, data: Path, sampling: str, decode: str) -> dict:
    """AUC / AP / TIoU of one sampling and decode mode over the split, as `evaluate_bundle` computes them."""
    from stp_edge.api import Detector
    from stp_edge.datasets import find_video, load_ground_truth
    from stp_edge.eval.metrics import evaluate_videos
    from stp_edge.eval.run import prediction_from_results
    from stp_edge.run import run_video
    from stp_edge.video import VideoSource

    t0 = time.perf_counter()
    preds, sampled, snippets = {}, {}, 0
    with Detector.load(bundle, backend="ort-cpu", sampling=sampling) as det:
        gts = load_ground_truth(data, "synthetic", None, det.config.class_names)
        for g in gts:
            det.reset()
            results = run_video(VideoSource(find_video(data, g.name), decoder="pyav", decode=decode), detector=det)
            preds[g.name] = prediction_from_results(results, g.num_frames)
            snippets += len(results)
            for r in results:
                key = (r.sampling, tuple(o - r.frame_start for o in r.sampled))
                sampled[key] = sampled.get(key, 0) + 1
        fallbacks = sum(det.sampling_fallbacks.values())
        result = evaluate_videos(gts, preds, threshold=det.score_threshold)
    return {"sampling": sampling, "decode": decode, "auc": result.auc, "ap": result.ap, "tiou": result.tiou,
            "snippets": snippets, "fallbacks": fallbacks,
            "sampled_offsets": {f"{k[0]}@{','.join(map(str, k[1]))}": n for k, n in sorted(sampled.items())},
            "seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict], cross_auc: float, info: dict, args: argparse.Namespace) -> str:
    lines = [f"# Keyframe-aligned sampling on the demo benchmark (H.264, keyframe every {args.gop} frames)", "",
             f"Synthetic test split, {args.num_videos} videos, seed {args.seed}; demo model bundle, ONNX Runtime CPU; "
             f"machine: {info.get('cpu')} ({info.get('cores')} cores), node {info.get('node')}.", "",
             "| sampling | decode | frame AUC | AP | TIoU | snippets | fell back to center | sampled offset(s) | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        offs = ", ".join(f"{k}: {n}" for k, n in r["sampled_offsets"].items())
        lines.append(f"| {r['sampling']} | {r['decode']} | {r['auc']:.4f} | {r['ap']:.4f} | {r['tiou']:.4f} | "
                     f"{r['snippets']} | {r['fallbacks']} | {offs} | {r['seconds']} |")
    lines += ["", "s: wall time of the row's whole evaluation (decode, model, metrics) on a shared machine "
              f"(load average {info.get('load_avg_1m', '?')} at start), rows run in order, the first warming the "
              "caches: not a decode benchmark.",
              "", f"Cross-check: `evaluate_bundle` on the same H.264 split gives AUC {cross_auc:.4f} (center row).",
              f"Command: `{info['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-videos", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gop", type=int, default=16, help="keyframe interval of the H.264 re-encode")
    ap.add_argument("--work", type=Path, default=None, help="keep the bundle and splits here")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sampling_demo")
    args = ap.parse_args(argv)

    from stp_edge.eval.run import evaluate_bundle
    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.machine import machine_info
    from stp_edge.synthetic import write_benchmark

    used = [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    info = {**machine_info(), "command": "python " + " ".join(shlex.quote(a) for a in used)}
    with tempfile.TemporaryDirectory(prefix="stp-sampling-") as tmp:
        work = args.work or Path(tmp)
        bundle = export_bundle(work / "demo.stp", demo=True, overwrite=True, progress=False)
        data = work / "synthetic_test"
        write_benchmark(data, split="test", num_videos=args.num_videos, seed=args.seed)
        h264 = h264_split(data, work / f"synthetic_test_h264_g{args.gop}", args.gop)
        rows = []
        for sampling, decode in RUNS:
            rows.append(evaluate(bundle, h264, sampling, decode))
            print(json.dumps(rows[-1]), flush=True)
        cross = evaluate_bundle(bundle, h264, backend="ort-cpu", report=None)
    if abs(cross.auc - rows[0]["auc"]) > 1e-12:
        print(f"WARNING: evaluate_bundle AUC {cross.auc} != center row {rows[0]['auc']}", file=sys.stderr)
    if (rows[1]["auc"], rows[1]["ap"]) != (rows[2]["auc"], rows[2]["ap"]):
        print("WARNING: keyframes-only decoding differs from full decoding under keyframe sampling", file=sys.stderr)
    md = table(rows, cross.auc, info, args)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "evaluate_bundle_auc": cross.auc,
                                                         "gop": args.gop, "num_videos": args.num_videos,
                                                         "seed": args.seed, "machine": info}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
