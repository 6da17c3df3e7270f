"""Throughput of a Triton-served Detector vs the number of client streams, beside the local runtime.

    python benchmarks/bench_triton.py [--config tiny] [--streams 1,2,4,8,16] [--snippets 12] [--repeats 3]

One random-weight bundle (exported once), camera-like frames, N streams pushed frame by frame:
- local: one `Detector` on ONNX Runtime (CPU) in this process, `push_many` batching the N streams;
- served, one client: one `Detector(backend="triton://...")`, `push_many` sending the N streams' snippets as
  one request per graph;
- served, N clients: N Detectors in N threads, one stream each, the server's dynamic batcher merging them.
The server is PyTriton's tritonserver on loopback (stp_edge/scale/serve.py, onnxruntime inside its Python
models), started here from `.venv-triton` (or $STP_EDGE_TRITON_PYTHON). Throughput = snippets (16 frames each)
finished per second of wall time, flush included; the median of `--repeats` runs. Client and server share the
machine's cores, so on a small machine the served numbers include the competition between them. Saved to
benchmarks/results/triton_<config>.{json,md} with the machine.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# the sibling script: `python benchmarks/bench_triton.py` puts benchmarks/ first on sys.path
from bench_preprocess import RESOLUTIONS, machine_info, make_frames

from stp_edge import Detector


def stream_frames(n_streams: int, n_frames: int, h: int, w: int) -> dict[int, list[np.ndarray]]:
    """Per stream: 16 camera-like base frames with a moving bright square (never constant, different per stream)."""
    out = {}
    for k in range(n_streams):
        base = make_frames(h, w, 16, seed=100 + k)
        frames = []
        for i in range(n_frames):
            f = base[i % 16].copy()
            x = (7 * i + 13 * k) % (w - h // 8)
            f[h // 3:h // 3 + h // 8, x:x + h // 8] = (40, 220, 255)
            frames.append(f)
        out[k] = frames
    return out


def run_push_many(det: Detector, frames: dict[int, list[np.ndarray]]) -> int:
    """Push every stream frame by frame (one push_many per frame index), flush; the number of results."""
    n = 0
    for i in range(len(frames[0])):
        n += len(det.push_many({k: f[i] for k, f in frames.items()}))
    return n + len(det.flush())


def run_threads(bundle: Path, backend: str, frames: dict[int, list[np.ndarray]]) -> tuple[float, int]:
    """One Detector per stream, each in its own thread (loaded before the clock starts); (seconds, results)."""
    dets = {}
    counts: dict[int, int] = {}
    ready = threading.Barrier(len(frames) + 1)

    def worker(k: int) -> None:
        det = dets[k] = Detector.load(bundle, backend=backend)  # tritonclient's client stays in its thread
        ready.wait()
        try:
            counts[k] = run_push_many(det, {0: frames[k]})
        finally:
            det.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in frames]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sum(counts.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", choices=("tiny", "vit-b-16"))
    p.add_argument("--streams", default="1,2,4,8,16")
    p.add_argument("--snippets", type=int, default=12, help="snippets per stream")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--resolution", default="720p", choices=tuple(RESOLUTIONS))
    p.add_argument("--max-batch", type=int, default=16, help="the server's max batch")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    streams = [int(s) for s in args.streams.split(",")]

    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.scale.serve import start_server

    h, w = RESOLUTIONS[args.resolution]
    info = machine_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(Path(tmp) / "bench.stp", random_config=args.config, seed=0, progress=False)
        snippet_len = Detector.load(bundle, backend="ort-cpu").config.snippet_len
        with start_server(bundle, port=free_port(), max_batch=args.max_batch, log=Path(tmp) / "server.log",
                          timeout_s=300) as url:
            backends = {"local ort-cpu": "ort-cpu", "served": f"triton://{url}"}
            for n in streams:
                frames = stream_frames(n, args.snippets * snippet_len, h, w)
                row = {"streams": n}
                for label, backend in backends.items():
                    with Detector.load(bundle, backend=backend) as det:
                        run_push_many(det, {k: f[:2 * snippet_len] for k, f in frames.items()})  # warm-up
                        times = []
                        for _ in range(args.repeats):
                            t0 = time.perf_counter()
                            count = run_push_many(det, frames)
                            times.append(time.perf_counter() - t0)
                    assert count == n * args.snippets, (label, count)
                    row[f"{label}, 1 client"] = count / statistics.median(times)
                runs = [run_threads(bundle, backends["served"], frames) for _ in range(args.repeats)]
                assert all(c == n * args.snippets for _, c in runs)
                row[f"served, {n} clients"] = n * args.snippets / statistics.median(t for t, _ in runs)
                rows.append(row)
                print(f"{n:3d} streams: " + "  ".join(f"{k} {v:8.1f}" for k, v in row.items() if k != "streams"),
                      flush=True)

    cols = ["local ort-cpu, 1 client", "served, 1 client", "served, N clients"]
    table = ["| streams | " + " | ".join(c + " (snippets/s)" for c in cols) + " |",
             "|---:|" + "---:|" * len(cols)]
    for r in rows:
        vals = [r[cols[0]], r[cols[1]], r[f"served, {r['streams']} clients"]]
        table.append(f"| {r['streams']} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    title = (f"# Triton-served Detector: throughput vs client streams, {args.config}, {args.resolution} frames "
             f"({info['cpu']}, {info['cores']} cores)")
    text = "\n".join([
        title, "",
        f"Snippets (16 frames, 1 encoded) finished per second of wall time, flush included; median of "
        f"{args.repeats} runs of {args.snippets} snippets per stream. Server: PyTriton {url.split(':')[0]} "
        f"loopback, onnxruntime CPU inside Python models, max batch {args.max_batch}, dynamic batching 500 us. "
        f"Client and server share this machine's {info['cores']} cores.", "",
        *table, "",
        "Command: `python benchmarks/bench_triton.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
    ])
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"triton_{args.config}"
    stem.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "config": args.config,
                                                     "resolution": args.resolution, "repeats": args.repeats,
                                                     "snippets_per_stream": args.snippets,
                                                     "max_batch": args.max_batch, "rows": rows}, indent=2) + "\n",
                                         encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
