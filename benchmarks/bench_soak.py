"""Soak: memory and per-snippet latency of one Detector over a long multi-stream run, sampled as it goes.

    python benchmarks/bench_soak.py [--frames 100000] [--streams 4] [--size 64x48] [--sample-every 200]

One tiny random-weight bundle (exported in a subprocess unless --bundle, so this process never imports torch
and its RSS is the runtime's), N streams of small camera-like frames pushed frame by frame with `push_many`
(their snippets share encoder calls), each stream reusing one frame buffer as OpenCV's `cap.read(img)` idiom
does (a textured background, a moving square and the frame number drawn in, never constant).

Every `--sample-every` snippets: resident memory (VmRSS of /proc/self/status), and the wall and process CPU
time of the `push_many` calls that completed snippets in that window (ms per snippet: call time / snippets it
emitted). CPU time counts every thread of the process (ONNX Runtime's included) and is what the flatness check
uses: on a machine shared with other jobs the wall time follows their load. Flat means: after the warm-up
(first sample left out), the last decile of samples is within `RSS_BOUND_MIB` of the first decile's mean RSS,
and its median CPU ms per snippet within `LATENCY_BOUND` x the first decile's. Saved to
benchmarks/results/soak_<config>[_<tag>].{json,md} with the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stp_edge import Detector
from stp_edge.machine import machine_info

RSS_BOUND_MIB = 8.0
LATENCY_BOUND = (0.67, 1.5)  # last/first decile median CPU ms per snippet


def rss_mib() -> float:
    """Resident set size of this process in MiB (VmRSS of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Camera:
    """One stream's frames, written into one reused buffer (the `cap.read(img)` idiom)."""

    def __init__(self, k: int, width: int, height: int) -> None:
        rng = np.random.default_rng(1000 + k)
        small = rng.integers(30, 200, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        self.background = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        self.noise = [rng.integers(0, 12, (height, width, 3), dtype=np.uint8) for _ in range(8)]
        self.buf = np.empty_like(self.background)
        self.k, self.w, self.h = k, width, height

    def read(self, i: int) -> np.ndarray:
        np.add(self.background, self.noise[i % 8], out=self.buf)
        side = max(self.h // 4, 2)
        x = (3 * i + 11 * self.k) % (self.w - side)
        y = (self.h // 3 + i // 7) % (self.h - side)
        self.buf[y:y + side, x:x + side] = (40 + 7 * i % 200, 220, 255 - 3 * i % 200)
        self.buf[0, :4] = np.frombuffer(int(i).to_bytes(4, "little"), np.uint8)[:, None]  # the frame number
        return self.buf


def soak(det: Detector, n_streams: int, frames_per_stream: int, size: tuple[int, int], sample_every: int,
         report: Any = print) -> dict[str, Any]:
    """Push `frames_per_stream` frames of each stream; return samples and totals."""
    cams = [Camera(k, *size) for k in range(n_streams)]
    samples: list[dict[str, Any]] = []
    window_ms: list[float] = []
    window_cpu: list[float] = []
    all_cpu: list[float] = []
    all_ms: list[float] = []
    snippets = next_sample = 0
    next_edge = {k: 0 for k in range(n_streams)}
    bad_scores = 0
    t_start = time.perf_counter()

    def take(r: Any) -> None:
        nonlocal bad_scores
        if r.frame_start != next_edge[r.stream] or not r.final:
            raise RuntimeError(f"stream {r.stream}: snippet {r.snippet} starts at frame {r.frame_start}, "
                               f"expected {next_edge[r.stream]} (final={r.final})")
        next_edge[r.stream] = r.frame_end
        bad_scores += not (math.isfinite(r.score) and 0.0 <= r.score <= 1.0)

    for i in range(frames_per_stream):
        batch = {k: cam.read(i) for k, cam in enumerate(cams)}
        t0, c0 = time.perf_counter(), time.process_time()
        out = det.push_many(batch)
        dt, dc = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
        if not out:
            continue
        for r in out:
            take(r)
        window_ms += [dt / len(out)] * len(out)
        all_ms += [dt / len(out)] * len(out)
        window_cpu += [dc / len(out)] * len(out)
        all_cpu += [dc / len(out)] * len(out)
        snippets += len(out)
        if snippets >= next_sample:
            samples.append({"snippets": snippets, "frames": (i + 1) * n_streams,
                            "elapsed_s": round(time.perf_counter() - t_start, 3), "rss_mib": round(rss_mib(), 2),
                            "ms_per_snippet_median": round(statistics.median(window_ms), 4),
                            "ms_per_snippet_p99": round(float(np.percentile(window_ms, 99)), 4),
                            "cpu_ms_per_snippet_median": round(statistics.median(window_cpu), 4),
                            "load_avg_1m": round(os.getloadavg()[0], 2)})
            if report is not None and len(samples) % 5 == 1:
                s = samples[-1]
                report(f"{s['frames']:>8d} frames {s['snippets']:>6d} snippets  RSS {s['rss_mib']:8.2f} MiB  "
                       f"{s['ms_per_snippet_median']:7.3f} ms/snippet ({s['cpu_ms_per_snippet_median']:7.3f} CPU)  "
                       f"{s['elapsed_s']:7.1f} s")
            window_ms, window_cpu = [], []
            next_sample += sample_every
    for r in det.flush():
        take(r)
        snippets += 1
    wall = time.perf_counter() - t_start
    expected = n_streams * math.ceil(frames_per_stream / det.config.snippet_len)
    if snippets != expected or any(e != frames_per_stream for e in next_edge.values()):
        raise RuntimeError(f"{snippets} snippets covering {next_edge}, expected {expected} covering "
                           f"{frames_per_stream} frames per stream")
    return {"samples": samples, "snippets": snippets, "frames": n_streams * frames_per_stream, "wall_s": wall,
            "bad_scores": bad_scores, "all_ms": all_ms, "all_cpu": all_cpu}


def verdict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """First vs last decile of the samples after the first (warm-up): RSS and latency, and whether flat."""
    steady = samples[1:]
    d = max(len(steady) // 10, 1)
    first, last = steady[:d], steady[-d:]
    rss_first = statistics.mean(s["rss_mib"] for s in first)
    rss_last = statistics.mean(s["rss_mib"] for s in last)
    lat_first = statistics.median(s["cpu_ms_per_snippet_median"] for s in first)
    lat_last = statistics.median(s["cpu_ms_per_snippet_median"] for s in last)
    wall_first = statistics.median(s["ms_per_snippet_median"] for s in first)
    wall_last = statistics.median(s["ms_per_snippet_median"] for s in last)
    def slope(part: list[dict[str, Any]]) -> float:
        """Least-squares RSS slope in MiB per 1,000 snippets."""
        if len(part) < 2:
            return 0.0
        return float(np.polyfit([s["snippets"] for s in part], [s["rss_mib"] for s in part], 1)[0]) * 1000

    ratio = lat_last / lat_first
    return {"samples_per_decile": d, "rss_first_decile_mib": round(rss_first, 2),
            "rss_last_decile_mib": round(rss_last, 2), "rss_growth_mib": round(rss_last - rss_first, 2),
            "rss_slope_mib_per_1000_snippets": round(slope(steady), 4),
            "rss_slope_second_half_mib_per_1000_snippets": round(slope(steady[len(steady) // 2:]), 4),
            "rss_bound_mib": RSS_BOUND_MIB,
            "rss_flat": abs(rss_last - rss_first) <= RSS_BOUND_MIB,
            "cpu_first_decile_ms": round(lat_first, 4), "cpu_last_decile_ms": round(lat_last, 4),
            "wall_first_decile_ms": round(wall_first, 4), "wall_last_decile_ms": round(wall_last, 4),
            "load_first_decile": round(statistics.mean(s["load_avg_1m"] for s in first), 2),
            "load_last_decile": round(statistics.mean(s["load_avg_1m"] for s in last), 2),
            "latency_ratio_last_first": round(ratio, 3), "latency_bound": list(LATENCY_BOUND),
            "latency_flat": LATENCY_BOUND[0] <= ratio <= LATENCY_BOUND[1]}


def markdown(res: dict[str, Any]) -> str:
    v, m, a = res["verdict"], res["machine"], res["args"]
    lines = [
        f"# Soak: {res['frames']:,} frames, {a['streams']} streams, one Detector ({a['config']}, {res['backend']}, "
        f"{a['size']} frames)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']} (host {m['node']}, load {m['load_avg_1m']}"
        " at start). NumPy " + m["numpy"] + ", OpenCV " + m["opencv"] + ".",
        "",
        f"{res['snippets']:,} snippets in {res['wall_s']:.1f} s ({res['frames'] / res['wall_s']:.0f} frames/s); "
        f"median {res['ms_per_snippet_median']:.3f} ms per snippet (wall of the push_many calls that completed "
        f"snippets, per snippet), p99 {res['ms_per_snippet_p99']:.3f} ms; CPU time (all threads) median "
        f"{res['cpu_ms_per_snippet_median']:.3f} ms per snippet. Scores outside [0, 1] or not "
        f"finite: {res['bad_scores']}.",
        "",
        "| | first decile | last decile | change | bound | flat |",
        "|---|---:|---:|---:|---:|:---:|",
        f"| RSS (MiB) | {v['rss_first_decile_mib']:.2f} | {v['rss_last_decile_mib']:.2f} | "
        f"{v['rss_growth_mib']:+.2f} MiB | +-{v['rss_bound_mib']:.0f} MiB | {'yes' if v['rss_flat'] else 'NO'} |",
        f"| CPU ms per snippet (median) | {v['cpu_first_decile_ms']:.3f} | {v['cpu_last_decile_ms']:.3f} | "
        f"x{v['latency_ratio_last_first']:.3f} | x{v['latency_bound'][0]}..x{v['latency_bound'][1]} | "
        f"{'yes' if v['latency_flat'] else 'NO'} |",
        f"| wall ms per snippet (median) | {v['wall_first_decile_ms']:.3f} | {v['wall_last_decile_ms']:.3f} | "
        f"x{v['wall_last_decile_ms'] / v['wall_first_decile_ms']:.3f} | (not checked) | |",
        f"| load average (1 min) | {v['load_first_decile']:.2f} | {v['load_last_decile']:.2f} | | | |",
        "",
        f"RSS slope (least squares, MiB per 1,000 snippets): {v['rss_slope_mib_per_1000_snippets']:+.4f} over the "
        f"run after the first sample, {v['rss_slope_second_half_mib_per_1000_snippets']:+.4f} over its second "
        f"half. Load average at the end: {res['load_avg_1m_at_end']:.2f}. Deciles: {v['samples_per_decile']} "
        f"samples each, one sample every {a['sample_every']} snippets; the first sample (warm-up) is left out.",
        "",
        "| frames | snippets | elapsed (s) | RSS (MiB) | wall ms/snippet median | p99 | CPU ms/snippet median | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    samples = res["samples"]
    step = max(len(samples) // 12, 1)
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        lines.append(f"| {s['frames']:,} | {s['snippets']:,} | {s['elapsed_s']:.1f} | {s['rss_mib']:.2f} | "
                     f"{s['ms_per_snippet_median']:.3f} | {s['ms_per_snippet_p99']:.3f} | "
                     f"{s['cpu_ms_per_snippet_median']:.3f} | {s['load_avg_1m']:.2f} |")
    lines += ["", f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def export_random(tmp: Path, config: str) -> Path:
    """Export a random-weight bundle of `config` in a subprocess (torch stays out of this process)."""
    out = tmp / f"{config}.stp"
    code = ("import sys; from stp_edge.export.bundle_export import export_bundle; "
            "export_bundle(sys.argv[1], random_config=sys.argv[2], seed=0, progress=False)")
    subprocess.run([sys.executable, "-c", code, str(out), config], check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000, help="frames in all, over every stream")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--size", default="64x48", help="frame WIDTHxHEIGHT")
    ap.add_argument("--sample-every", type=int, default=200, help="snippets between samples")
    ap.add_argument("--config", default="tiny", help="random config of the exported bundle")
    ap.add_argument("--bundle", type=Path, help="an existing bundle instead of exporting one")
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                    help="directory for soak_<config>[_<tag>].{json,md}")
    ap.add_argument("--tag", help="suffix of the result files' names")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    machine = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle if args.bundle is not None else export_random(Path(tmp), args.config)
        with Detector.load(bundle, backend=args.backend, preprocess="cpu") as det:
            run = soak(det, args.streams, args.frames // args.streams, (width, height), args.sample_every)
            backend = det.backend
    all_ms, all_cpu = run.pop("all_ms"), run.pop("all_cpu")
    res = {"args": {**vars(args), "bundle": str(args.bundle) if args.bundle else None, "out": str(args.out)},
           "machine": machine, "backend": backend, **{k: v for k, v in run.items() if k != "samples"},
           "ms_per_snippet_median": statistics.median(all_ms),
           "ms_per_snippet_p99": float(np.percentile(all_ms, 99)),
           "cpu_ms_per_snippet_median": statistics.median(all_cpu),
           "verdict": verdict(run["samples"]), "load_avg_1m_at_end": os.getloadavg()[0], "samples": run["samples"],
           "command": "python benchmarks/bench_soak.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"soak_{args.config}{'_' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0 if res["verdict"]["rss_flat"] and res["verdict"]["latency_flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
