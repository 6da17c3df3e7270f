"""`stp-edge` command line: a thin layer over library functions, one per subcommand.

    stp-edge export (--checkpoint PATH | --demo | --random) -o OUT.stp   stp_edge.export.bundle_export
    stp-edge verify BUNDLE                                              stp_edge.export.verify
    stp-edge build-engines BUNDLE [--precision fp16|fp32]               stp_edge.export.trt_build
    stp-edge run SOURCE --bundle B [--jsonl OUT]                        stp_edge.api.run_video
    stp-edge info BUNDLE                                                stp_edge.bundle.Bundle
    stp-edge eval ... / stp-edge demo --out DIR                         stp_edge.eval / stp_edge.demo

Library errors (bad bundle, unreadable video, missing dependency, ...) are printed as one line and exit with
code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

EXIT_USAGE = 2


def _library_errors() -> tuple[type[BaseException], ...]:
    from stp_edge.backends.base import RunnerError
    from stp_edge.bundle import BundleError
    from stp_edge.pipeline.frames import FrameError
    from stp_edge.video import VideoError

    return BundleError, VideoError, FrameError, RunnerError, ImportError, ValueError, OSError


# --- commands ---------------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint, the demo model or a random model to a bundle."""
    from stp_edge.export.bundle_export import export_bundle

    out = export_bundle(args.out, checkpoint=args.checkpoint, clip_weights=args.clip_weights, demo=args.demo,
                        random_config=args.config if args.random else None, seed=args.seed,
                        precision=args.precision, opset=args.opset, simplify=not args.no_simplify,
                        overwrite=args.force, progress=True)
    print(f"wrote {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a bundle's graphs against the torch reference on fresh random inputs."""
    from stp_edge.export.verify import verify_bundle

    report = verify_bundle(args.bundle, checkpoint=args.checkpoint, seed=args.seed, batch=args.batch,
                           backends=tuple(args.backend or ("ort",)))
    print("verify: OK" if report.ok else "verify: FAILED")
    return 0 if report.ok else 1


def cmd_build_engines(args: argparse.Namespace) -> int:
    """Build TensorRT engines for a bundle on this GPU (engines/<gpu>-<precision>/ and the manifest)."""
    from stp_edge.export.trt_build import build_bundle_engines

    out = build_bundle_engines(args.bundle, precision=args.precision, max_batch=args.max_batch,
                               max_snippets=args.max_snippets, device=args.device,
                               version_compatible=args.version_compatible,
                               hardware_compatibility=args.hardware_compatibility, progress=True)
    print(f"wrote {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a bundle's manifest (checked by sha256 unless --no-check)."""
    from stp_edge.bundle import Bundle

    bundle = Bundle.load(args.bundle, verify=not args.no_check)
    print(json.dumps(bundle.manifest, indent=2) if args.json else bundle.summary())
    return 0


def _event_line(r: Any) -> str:
    line = (f"stream {r.stream} snippet {r.snippet:5d} frames [{r.frame_start}, {r.frame_end}) "
            f"score {r.score:.3f} {r.class_name}")
    if r.boxes:
        b = r.boxes[0]
        line += f" box ({b.x1:.0f},{b.y1:.0f})-({b.x2:.0f},{b.y2:.0f})"
    return line


def cmd_run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run a bundle over a video and print anomalous snippets; optionally write JSON lines, overlay, plot."""
    from stp_edge.api import run_video

    out = out or sys.stdout
    jsonl = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None

    def on_result(r: Any) -> None:
        if jsonl is not None:
            jsonl.write(json.dumps(r.to_dict()) + "\n")
        if r.is_anomaly or args.verbose:
            print(("ANOMALY " if r.is_anomaly else "        ") + _event_line(r), file=out, flush=True)

    try:
        source: str | int = int(args.source) if args.source.isdigit() else args.source
        results = run_video(source, bundle=args.bundle, backend=args.backend, on_result=on_result,
                            max_frames=args.max_frames, spatial_on="all" if args.spatial_all else None)
    finally:
        if jsonl is not None:
            jsonl.close()
    n_anom = sum(r.is_anomaly for r in results)
    rate = results.stats.read / results.wall_s if results.wall_s else 0.0
    print(f"{len(results)} snippets, {n_anom} anomalous; {results.stats.read} frames read, "
          f"{results.stats.dropped} dropped; {rate:.1f} frames/s", file=out)
    if args.overlay:
        from stp_edge.api import write_overlay

        write_overlay(source, results, args.overlay, fps=results.fps, threshold=results.threshold)
        print(f"wrote {args.overlay}", file=out)
    if args.plot:
        from stp_edge.api import plot_scores

        plot_scores(results, args.plot, fps=results.fps, threshold=results.threshold)
        print(f"wrote {args.plot}", file=out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the STPrompt heads on pre-extracted snippet features with video-level labels (top-k MIL)."""
    from stp_edge.model.train import train_features_cli

    return train_features_cli(args)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a bundle on a labelled (synthetic) benchmark: frame AUC, localisation."""
    from stp_edge.eval.run import evaluate_cli

    return int(evaluate_cli(args) or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    """Export the embedded demo model and run the runtime on a generated clip."""
    from stp_edge.demo import run_demo

    run_demo(args.out, anomaly=args.anomaly, seed=args.seed, seconds=args.seconds)
    return 0


# --- parser -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The `stp-edge` argument parser (every subcommand has --help)."""
    p = argparse.ArgumentParser(prog="stp-edge", description="STPrompt video anomaly detection on edge GPUs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("export", help="export a model to a bundle (ONNX graphs + manifest)",
                       description=cmd_export.__doc__)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="trained STPrompt checkpoint")
    src.add_argument("--demo", action="store_true", help="the embedded demo model")
    src.add_argument("--random", action="store_true", help="random weights (for tests and benchmarks)")
    e.add_argument("--config", choices=("tiny", "vit-b-16"), default="tiny", help="config of --random")
    e.add_argument("--seed", type=int, default=0, help="seed of --random")
    e.add_argument("-o", "--out", type=Path, required=True, help="output bundle directory (NAME.stp)")
    e.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    e.add_argument("--clip-weights", type=Path, help="OpenAI CLIP weights (.pt archive or state_dict) to load")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    e.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    e.add_argument("--force", action="store_true", help="replace OUT if it exists")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("verify", help="check a bundle against the torch reference", description=cmd_verify.__doc__)
    v.add_argument("bundle", type=Path)
    v.add_argument("--seed", type=int, help="seed of the random inputs (default: fresh, printed)")
    v.add_argument("--batch", type=int, default=2, help="batch size of the inputs")
    v.add_argument("--checkpoint", type=Path, help="the checkpoint the bundle came from (default: its manifest)")
    v.add_argument("--backend", action="append", choices=("ort", "trt"), default=None,
                   help="backends to compare with torch (repeatable; default: ort)")
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("build-engines", help="build TensorRT engines for a bundle on this GPU",
                       description=cmd_build_engines.__doc__)
    b.add_argument("bundle", type=Path)
    b.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                   help="engine precision (fp16: the encoder in fp16, the heads as exported)")
    b.add_argument("--max-batch", type=int, default=16, help="largest batch of snippets (default: 16)")
    b.add_argument("--max-snippets", type=int, help="largest temporal window T (default: the streaming window 2c+1)")
    b.add_argument("--version-compatible", action="store_true",
                   help="plans that later TensorRT versions of the same major can load")
    b.add_argument("--hardware-compatibility", choices=("ampere_plus", "same_compute_capability"),
                   help="plans for any Ampere+ GPU, or any GPU of this compute capability")
    b.add_argument("--device", type=int, default=0, help="CUDA device to build on")
    b.set_defaults(func=cmd_build_engines)

    r = sub.add_parser("run", help="run a bundle on a video file, URL or camera", description=cmd_run.__doc__)
    r.add_argument("source", help="video file, rtsp:// or http:// URL, or camera index")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument("--backend", default="auto", choices=("auto", "trt", "ort", "ort-cuda", "ort-trt", "ort-cpu"))
    r.add_argument("--jsonl", type=Path, help="write one JSON line per snippet")
    r.add_argument("--overlay", type=Path, help="write the video with scores, maps and boxes (mp4)")
    r.add_argument("--plot", type=Path, help="write a plot of the scores (png)")
    r.add_argument("--spatial-all", action="store_true", help="run the spatial stream on every snippet")
    r.add_argument("--max-frames", type=int, help="stop after this many frames")
    r.add_argument("-v", "--verbose", action="store_true", help="print every snippet, not only anomalies")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("info", help="print a bundle's manifest", description=cmd_info.__doc__)
    i.add_argument("bundle", type=Path)
    i.add_argument("--json", action="store_true", help="print the raw manifest JSON")
    i.add_argument("--no-check", action="store_true", help="skip the sha256 checks")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train STPrompt heads on extracted features (video labels only)",
                       description=cmd_train.__doc__)
    t.add_argument("features", type=Path, help="directory of .npz files: frame_emb [T,E], region_emb [T,R2,E], label")
    init = t.add_mutually_exclusive_group()
    init.add_argument("--init", type=Path, help="STPrompt checkpoint to start from (keeps its CLIP weights)")
    init.add_argument("--config", choices=("tiny", "vit-b-16"), default="vit-b-16", help="config of a new model")
    t.add_argument("--clip-weights", type=Path, help="OpenAI CLIP weights for a new model's frozen encoders")
    t.add_argument("--classes", help="comma-separated class names, normal first (default: the config's)")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("-o", "--out", type=Path, required=True, help="output checkpoint directory")
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a bundle on a labelled benchmark", description=cmd_eval.__doc__)
    ev.add_argument("bundle", type=Path)
    ev.add_argument("--data", type=Path, help="videos (and, for synthetic, ground truth); default: generate a "
                    "synthetic split")
    ev.add_argument("--format", default="synthetic", choices=("synthetic", "ucf-crime", "shanghaitech", "ubnormal"),
                    help="annotation format of --data")
    ev.add_argument("--annotations", type=Path, help="UCF-Crime temporal annotation file, or ShanghaiTech's "
                    "test_frame_mask directory")
    ev.add_argument("--split", default="test")
    ev.add_argument("--num-videos", type=int, default=8, help="videos to generate when --data is absent")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--backend", default="auto")
    ev.add_argument("--out", type=Path, help="directory for the report and plots")
    ev.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="export the demo model and run it on a generated clip",
                       description=cmd_demo.__doc__)
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    d.add_argument("--anomaly", default="fire",
                   choices=("fighting", "falling", "running", "abandoned object", "fire"),
                   help="anomaly in the generated clip (default: fire, the class the demo model detects best)")
    d.add_argument("--seed", type=int, default=2026, help="seed of the generated clip")
    d.add_argument("--seconds", type=float, default=24.0, help="length of the generated clip")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `stp-edge`; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _library_errors() as exc:
        print(f"stp-edge {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
