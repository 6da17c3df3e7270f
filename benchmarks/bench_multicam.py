"""Many cameras in one `run_video`: shared encoder calls, thread plan and whole-snippet drops, measured.

N cameras are paced stand-ins (frames decoded once, handed over at the camera's frame rate, never waiting for
the reader: a frame not taken in time is late, as on a real camera), so the figures are the model and feeding
side of a run, without decode. For each N: snippets analysed and dropped, snippets per encoder call, and the
share of the cameras' snippets analysed; with the encoder calls shared across cameras (`stp_edge.run.SHARE_HOLD`
0.5, the default) and not (0), and with ONNX Runtime's pool sized by `plan_threads` (the default) and at ONNX
Runtime's own default (one thread per core). Saved to benchmarks/results/multicam_<bundle>.{md,json} with the
machine and its load average (a shared machine's load is part of the result).

    .venv/bin/python benchmarks/bench_multicam.py --bundle B.stp --cameras 2,4,8 --seconds 8
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def camera_frames(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """n BGR frames: textured background, a moving block, sensor noise (never constant)."""
    rng = np.random.default_rng(seed)
    h, w = size
    background = rng.integers(30, 200, (h, w, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        f = background.copy()
        x, y = (7 * i) % (w - 60), (h // 3 + 2 * i) % (h - 60)
        f[y:y + 60, x:x + 60] = (40 + 5 * i % 200, 220, 255 - 3 * i % 200)
        frames.append(np.clip(f.astype(np.int16) + rng.integers(-4, 5, f.shape), 0, 255).astype(np.uint8))
    return frames


def paced_source(frames: list[np.ndarray], fps: float, seconds: float, name: str, offset_s: float) -> object:
    from stp_edge.video import VideoSource, VideoStats

    class Paced(VideoSource):
        def __init__(self) -> None:
            self.source = self.target = self.name = name
            self.kind = "url"
            self.stats = VideoStats()
            self._fps = fps
            self.down_at_start = None

        @property
        def fps(self) -> float:
            return self._fps

        def frames_with_gaps(self, lazy: bool = False):
            start = time.perf_counter() + offset_s
            for i in range(int(seconds * fps)):
                delay = start + i / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self.stats.read += 1
                yield frames[i % len(frames)], None
            self.stats.ended = True

        def close(self) -> None:
            pass

        def interrupt(self) -> None:
            pass

    return Paced()


def one_run(bundle: Path, n: int, frames: list[list[np.ndarray]], *, fps: float, seconds: float, share: bool,
            threads: int | None) -> dict:
    import stp_edge.run as run_mod

    hold, run_mod.SHARE_HOLD = run_mod.SHARE_HOLD, (0.5 if share else 0.0)
    try:
        rng = np.random.default_rng(n)
        sources = [paced_source(frames[i % len(frames)], fps, seconds, f"cam{i}", float(rng.uniform(0, 16 / fps)))
                   for i in range(n)]
        kwargs = {} if threads is None else {"threads": threads}
        t0 = time.perf_counter()
        res = run_mod.run_video(sources, bundle=bundle, backend="ort-cpu", keep=False, **kwargs)
        wall = time.perf_counter() - t0
    finally:
        run_mod.SHARE_HOLD = hold
    calls = sum(res.encoder_batches.values())
    per_call = sum(k * v for k, v in res.encoder_batches.items()) / calls if calls else None
    total = res.snippets + res.dropped_snippets
    return {"cameras": n, "shared_calls": share,
            "threads": res.threads.describe() if res.threads else f"{threads} onnxruntime (ORT default: cores)",
            "snippets": res.snippets, "dropped": res.dropped_snippets,
            "analysed_share": round(res.snippets / total, 3) if total else None,
            "snippets_per_call": round(per_call, 2) if per_call else None,
            "max_per_call": max(res.encoder_batches, default=0),
            "queue_peak": max(s.queue_peak for s in res.sources), "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    from stp_edge.machine import machine_info
    from stp_edge.run import available_cores

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="bundle to serve the cameras with")
    p.add_argument("--cameras", default="2,4,8", help="comma-separated camera counts")
    p.add_argument("--fps", type=float, default=25.0, help="each camera's frame rate")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds of video per camera and run")
    p.add_argument("--size", default="360x640", help="frame HxW")
    args = p.parse_args(argv)
    h, w = (int(x) for x in args.size.split("x"))
    frames = [camera_frames(48, (h, w), seed) for seed in range(4)]
    machine, load_before = machine_info(), os.getloadavg()
    rows = []
    cores = available_cores()
    for n in (int(x) for x in args.cameras.split(",")):
        for share, threads in ((True, None), (False, None), (True, cores)):
            row = one_run(args.bundle, n, frames, fps=args.fps, seconds=args.seconds, share=share, threads=threads)
            rows.append(row)
            print(json.dumps(row), flush=True)
    head = ["cameras", "shared_calls", "threads", "snippets", "dropped", "analysed_share", "snippets_per_call",
            "max_per_call", "queue_peak", "wall_s"]
    lines = [f"# Many cameras in one run: {args.bundle.name}, {h}x{w} at {args.fps:g} fps, {args.seconds:g} s each",
             "", "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
             f"Load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} "
             f"(on {cores} cores; a shared machine's load is part of the result)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = f"multicam_{args.bundle.name.removesuffix('.stp')}"
    (RESULTS / f"{name}.md").write_text(text)
    record = {"machine": machine, "args": {**vars(args), "bundle": str(args.bundle)}, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {RESULTS / name}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
