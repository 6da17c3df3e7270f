"""Throughput of `extract` and `score` over an archive: one process vs a Ray Data pipeline with 1..N actors.

    python benchmarks/bench_ray.py [--config tiny] [--videos 8] [--frames 160] [--workers 1 2] [--repeats 3]

Generates the archive (synthetic clips, 320x240), exports a random-weight bundle, starts one local Ray cluster
(all CPUs, loopback, no dashboard) and times every run end to end: each Ray run starts its actors and loads a
Detector in each, as a job on a fresh archive would. Medians over `--repeats` runs; every run recomputes every
video (resume=False). Saved to benchmarks/results/ray_<config>.{json,md} with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NOTE = ("Each Ray run starts fresh actor processes (Python, Ray and ONNX Runtime imports, one Detector each): "
        "a fixed cost of several seconds per run, here larger than the work itself. On this 2-core machine two "
        "actors, the driver and Ray's own processes share two cores, so more actors cannot be faster; the pipeline "
        "is for archives of hours and for many-core or multi-node clusters, where that fixed cost is amortised.")


def _time_runs(fn, repeats: int) -> tuple[list[float], object]:
    walls, report = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        report = fn()
        walls.append(time.perf_counter() - t0)
        assert report.ok, report.summary()
    return walls, report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=("tiny", "vit-b-16"), default="tiny")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=160, help="frames per video (16 per snippet)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import ray

    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.machine import machine_info
    from stp_edge.scale.extract import extract_features
    from stp_edge.scale.score import score_videos
    from stp_edge.synthetic import write_benchmark

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray-"))
    videos = tmp / "videos"
    write_benchmark(videos, split="bench", num_videos=args.videos, seed=0, num_frames=args.frames)
    bundle = export_bundle(tmp / "model.stp", random_config=args.config, seed=0, progress=False)
    jobs = {
        "extract": lambda out, **kw: extract_features(videos, out, bundle=bundle, progress=False, resume=False, **kw),
        "score": lambda out, **kw: score_videos(videos, bundle, out, progress=False, resume=False, **kw),
    }
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    rows = []
    try:
        for job, run in jobs.items():
            settings = [("1 process", {})] + [(f"ray, {w} actor(s)", {"ray": True, "workers": w}) for w in args.workers]
            for name, kw in settings:
                walls, report = _time_runs(lambda run=run, kw=kw, job=job: run(tmp / f"out-{job}", **kw), args.repeats)
                wall = statistics.median(walls)
                rows.append({"job": job, "setting": name, "workers": kw.get("workers", 1),
                             "processes": report.processes, "median_wall_s": round(wall, 3),
                             "walls_s": [round(w, 3) for w in walls], "videos": args.videos,
                             "snippets": report.snippets, "snippets_per_s": round(report.snippets / wall, 2),
                             "backend": ", ".join(report.backends)})
                print(f"{job:8s} {name:18s} median {wall:7.2f} s  {report.snippets / wall:8.1f} snippets/s  "
                      f"(runs {', '.join(f'{w:.2f}' for w in walls)})", flush=True)
    finally:
        ray.shutdown()
    machine = machine_info()
    meta = {"config": args.config, "videos": args.videos, "frames_per_video": args.frames, "resolution": "320x240",
            "repeats": args.repeats, "ray": ray.__version__, "machine": machine}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"ray_{args.config}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Archive throughput: one process vs Ray Data ({args.config}, {args.videos} videos x {args.frames} "
             f"frames, 320x240)", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; Ray {ray.__version__}; "
             f"backend {rows[0]['backend']}. Wall time of a whole run (Ray: actor start and Detector load "
             f"included), median of {args.repeats}.", "",
             "| job | setting | processes | median wall (s) | snippets/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['job']} | {r['setting']} | {r['processes']} | {r['median_wall_s']:.2f} | "
              f"{r['snippets_per_s']:.1f} |" for r in rows]
    lines += ["", NOTE]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
