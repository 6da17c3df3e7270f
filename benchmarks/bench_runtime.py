"""Per-snippet latency of the stp-edge runtime vs the plain PyTorch pipeline a researcher would write.

    python benchmarks/bench_runtime.py [--config tiny|vit-b-16] [--snippets 40] [--resolution 1080p]

Both sides run the same random-weight model (exported once to a bundle) on the same camera-like frames, in the
same process, one snippet (16 frames, 1 sampled) at a time, as a live camera feeds them:
- plain PyTorch (`stp_edge.bench.baseline.TorchPipeline`, `stp-edge bench`'s baseline): per snippet, PIL bicubic
  resize + crop + NumPy normalise, torch eager encoder, region features, then the temporal stream on the window
  of the last 2c+1 snippets and the spatial stream, in torch;
- stp-edge: `Detector.push()` frame by frame on ONNX Runtime (CPU) with the CPU preprocessing twin.
Medians over steady-state snippets (after warm-up, once the 2c+1 window is full; results emitted by `push`,
not by the final batched `flush`) per stage and end to end, and their ratio. "total" is the time of the push
that completes a snippet (16 frames): its encoder call plus the temporal and spatial work of the snippet
emitted then. Results are saved to
benchmarks/results/runtime_<config>_<resolution>.{json,md} with the machine's CPU model.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the sibling script: `python benchmarks/bench_runtime.py` puts benchmarks/ first on sys.path
from bench_preprocess import RESOLUTIONS, machine_info, make_frames

STAGES = ("preprocess", "encoder", "temporal", "spatial", "total")


def run_interleaved(model, bundle: Path, snippets: list[list[np.ndarray]], warmup: int) -> dict[str, dict]:
    """Alternate the two pipelines snippet by snippet so machine noise hits both alike."""
    from stp_edge.api import Detector
    from stp_edge.bench.baseline import TorchPipeline

    plain = TorchPipeline(model)
    times = {"plain PyTorch": {k: [] for k in STAGES}, "stp-edge (ORT CPU)": {k: [] for k in STAGES}}
    push_ms, results = {}, []
    c = model.cfg.context
    with Detector.load(bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
        for i, frames in enumerate(snippets):
            step = plain.step(frames)
            if i >= warmup + 2 * c:  # steady state: the plain loop's window is full too
                for k in STAGES:
                    times["plain PyTorch"][k].append(step[k])
            t0 = time.perf_counter()
            for f in frames:
                results += det.push(f)
            push_ms[i] = (time.perf_counter() - t0) * 1e3
    # Steady state only: results emitted by a push (one per snippet, full window), not the batched flush.
    for r in results:
        if r.snippet + c >= warmup + 2 * c:
            for k in STAGES[:-1]:
                times["stp-edge (ORT CPU)"][k].append(r.timings[k])
            times["stp-edge (ORT CPU)"]["total"].append(push_ms[r.snippet + c])
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", choices=("tiny", "vit-b-16"))
    p.add_argument("--snippets", type=int, default=None, help="default: 2c+1 + 20 (steady state)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--resolution", default="1080p", choices=tuple(RESOLUTIONS))
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (ORT uses its default)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)

    import torch

    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.model.sources import ModelSource, build_model

    torch.set_num_threads(args.threads)
    h, w = RESOLUTIONS[args.resolution]
    from stp_edge.config import STPromptConfig

    if args.snippets is None:
        args.snippets = 2 * STPromptConfig.named(args.config).context + 1 + 20
    base = make_frames(h, w, 16, seed=1)
    rng = np.random.default_rng(0)
    # per snippet 16 frames; shift the content so features (and motion) change between snippets
    snippets = [[np.roll(f, int(rng.integers(0, 64)), axis=1) for f in base] for _ in range(args.snippets)]
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(Path(tmp) / "bench.stp", random_config=args.config, seed=0, progress=False)
        model = build_model(ModelSource("random", config=args.config, seed=0))
        rows = run_interleaved(model, bundle, snippets, args.warmup)
    base_row, ours = rows["plain PyTorch"], rows["stp-edge (ORT CPU)"]
    info = machine_info()
    machine = f"{info['cpu']}, {platform.machine()}, {info['cores']} cores"
    lines = [f"# Runtime latency per snippet, {args.config}, {args.resolution} frames ({machine})", "",
             "Medians over steady-state snippets (full 2c+1 window, after warm-up), ms. One snippet = 16 frames "
             "pushed, 1 encoded; total = the push that completes a snippet.", "",
             "| stage | plain PyTorch | stp-edge (ORT CPU) | speed-up |", "|---|---:|---:|---:|"]
    for k in ("preprocess", "encoder", "temporal", "spatial", "total"):
        lines.append(f"| {k} | {base_row[k]:.2f} | {ours[k]:.2f} | {base_row[k] / ours[k]:.2f}x |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"runtime_{args.config}_{args.resolution}"
    stem.with_suffix(".md").write_text(table + "\n\nCommand: `python benchmarks/bench_runtime.py "
                                       + " ".join(argv or sys.argv[1:]) + "`\n")
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "config": args.config,
                                                     "resolution": args.resolution, "snippets": args.snippets,
                                                     "median_ms": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
