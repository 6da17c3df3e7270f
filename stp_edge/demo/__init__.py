"""The demo wing: `stp-edge demo` / `make demo`, the whole job on the demo model, end to end.

Not part of the runtime (the runtime never imports it). Its clips come from the synthetic benchmark
(`stp_edge.synthetic`); `training` is how the demo model was trained (torch). The demo weights are a separate
distribution, `stp-edge-demo-model` (demo_model/ in the repository), so a deployment wheel does not carry them.
This module:

1. export the demo model to a bundle (in a child process: exporting needs torch, running does not);
2. generate a synthetic surveillance clip with a known anomaly and write it as an ordinary video file;
3. run the torch-free runtime (ONNX Runtime on the CPU) over the file, frame by frame;
4. print the detected events and a per-stage latency table, and write an overlay video and a score plot.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.errors import MissingInputError, StpEdgeError
from stp_edge.model.sources import demo_checkpoint_dir
from stp_edge.report import Event, format_latency, latency_table, merge_events, plural


@dataclass
class DemoSummary:
    """What the demo produced: events, latency medians, output files and whether torch stayed out."""

    bundle: Path
    clip: Path
    events: list[Event]
    latency_ms: dict[str, dict[str, float]]
    outputs: dict[str, Path] = field(default_factory=dict)
    torch_imported: bool = False
    frame_auc: float | None = None


def ensure_demo_bundle(out: Path, report: Callable[[str], None] = print) -> Path:
    """Export the demo model to `out` unless an up-to-date export is already there."""
    from stp_edge.bundle import Bundle, BundleError, sha256_file

    weights = demo_checkpoint_dir() / "model.safetensors"
    if not weights.is_file():
        raise MissingInputError(f"the demo model's weights are missing ({weights}); rebuild them with "
                                "`python scripts/train_demo.py --out demo_model/stp_edge_demo_model`")
    want = sha256_file(weights)
    try:
        if Bundle.load(out).manifest.get("source", {}).get("checkpoint_sha256") == want:
            report(f"bundle   {out} (up to date)")
            return out
    except (BundleError, OSError):
        pass
    report(f"export   demo model -> {out}")
    cmd = [sys.executable, "-m", "stp_edge.cli", "export", "--demo", "-o", str(out), "--force"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StpEdgeError(f"exporting the demo model failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    return out


def write_clip(path: Path, *, seed: int, anomaly: str, seconds: float) -> dict[str, Any]:
    """Generate a synthetic clip with one anomaly, write it as a video file, return its ground truth."""
    from stp_edge.synthetic import generate_clip, write_video

    fps = 25.0
    clip = generate_clip(seed, width=320, height=240, num_frames=int(seconds * fps), anomaly=anomaly, fps=fps)
    write_video(path, clip.frames, fps, (320, 240), "mp4v", len(clip.labels))
    return {"labels": clip.labels, "event": clip.event, "class_name": clip.class_name, "fps": fps,
            "boxes": clip.boxes}


def run_demo(out_dir: str | Path = "out/demo", *, seed: int = 2026, anomaly: str = "fire",
             seconds: float = 24.0, bundle: str | Path | None = None,
             report: Callable[[str], None] = print) -> DemoSummary:
    """Run the demo; `bundle` overrides the demo model (any bundle with the same classes works)."""
    from stp_edge.api import Detector
    from stp_edge.metrics import rank_auc
    from stp_edge.results import frame_scores
    from stp_edge.run import run_video
    from stp_edge.video import describe_codec
    from stp_edge.visualize import plot_timeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle_path = Path(bundle) if bundle else ensure_demo_bundle(out / "demo.stp", report)
    clip_path = out / "clip.mp4"
    gt = write_clip(clip_path, seed=seed, anomaly=anomaly, seconds=seconds)
    s, e = gt["event"]
    report(f"clip     {clip_path}: {len(gt['labels'])} frames at {gt['fps']:.0f} fps; ground truth: "
           f"{gt['class_name']} from {s / gt['fps']:.2f}s to {e / gt['fps']:.2f}s")

    outputs = {"overlay": out / "overlay.mp4", "plot": out / "scores.png", "results": out / "results.jsonl"}
    start = time.perf_counter()
    with Detector.load(bundle_path, backend="ort-cpu", preprocess="cpu") as det:
        results = run_video(clip_path, detector=det, overlay=outputs["overlay"],  # drawn in the same pass
                            jsonl=outputs["results"])
        threshold = det.score_threshold
        class_names = det.config.class_names
    wall = time.perf_counter() - start
    summary = DemoSummary(bundle_path, clip_path, merge_events(results, class_names), latency_table(results))
    summary.torch_imported = "torch" in sys.modules

    scores = frame_scores(results, len(gt["labels"]))
    labels = (np.asarray(gt["labels"]) > 0).astype(int)
    auc = rank_auc(labels, scores)
    summary.frame_auc = None if np.isnan(auc) else auc
    _print_summary(summary, results, gt, wall, report)

    plot_timeline(outputs["plot"], scores, gt["fps"], gt_ranges=[gt["event"]], threshold=threshold,
                  title=f"stp-edge demo: {gt['class_name']} (frame AUC {summary.frame_auc:.3f})")
    summary.outputs = outputs
    codec = describe_codec(outputs["overlay"])
    for name, path in outputs.items():
        report(f"wrote    {name:<8} {path}" + (f" ({codec})" if name == "overlay" else ""))
    return summary


def _print_summary(summary: DemoSummary, results, gt, wall: float, report: Callable[[str], None]) -> None:
    fps = gt["fps"]
    report(f"runtime  ONNX Runtime (CPU), {plural(len(results), 'snippet')} of 16 frames in {wall:.1f}s "
           f"({len(gt['labels']) / wall:.0f} frames/s); torch imported by the runtime: "
           f"{'yes' if summary.torch_imported else 'no'}")
    report("events:" if summary.events else "events:  none above the threshold")
    for ev in summary.events:
        report("  " + ev.describe(fps))
    if summary.frame_auc is not None:
        report(f"frame AUC on this clip: {summary.frame_auc:.3f}")
    for line in format_latency(summary.latency_ms):
        report(line)
