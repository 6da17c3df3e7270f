"""Benchmark CLIP preprocessing: CPU twin and CUDA kernel vs the plain PIL pipeline a researcher writes.

    python benchmarks/bench_preprocess.py [--repeats 7] [--quick] [--gpu-only] [--out benchmarks/results]

CPU: for 720p/1080p/4K frames and batches 1 and 16, the PIL pipeline (per frame: BGR->RGB, PIL bicubic
resize, crop, NumPy normalise, CHW, stack) and `CpuPreprocessor` run alternately in the same process on the
same frames; the table shows medians over repeats and their ratio. Results go to
<out>/preprocess_cpu.{json,md} with the machine's name and CPU model.

GPU (when pycuda and a CUDA device are present): `CudaPreprocessor` timed with CUDA events, (a) kernels only
on frames already on the device and (b) end to end from host frames (pinned copy + H2D + kernels), against
the memory floor = (input window bytes read + output bytes written) / device-to-device copy bandwidth
(2 x bytes / memcpy time). Written to <out>/preprocess_gpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

# PIL resizes on one thread, so by default the twin's BLAS gets one too: a per-core comparison, and the
# setting an edge box busy decoding video wants (multi-threaded BLAS on small matrices stalls badly when the
# cores are shared). Set BLAS_THREADS=N to change it; the value is recorded with the results.
BLAS_THREADS = os.environ.get("BLAS_THREADS", "1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = BLAS_THREADS

import cv2  # noqa: E402  (after the BLAS thread setting)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

cv2.setNumThreads(int(BLAS_THREADS))  # OpenCV's own pool too (cvtColor, transpose)

from stp_edge.bench.reference import pil_pipeline  # noqa: E402
from stp_edge.machine import machine_info as base_machine_info  # noqa: E402
from stp_edge.preprocess import CpuPreprocessor  # noqa: E402

RESOLUTIONS = {"720p": (720, 1280), "1080p": (1080, 1920), "4K": (2160, 3840)}
BATCHES = (1, 16)
SIZE = 224


def make_frames(h: int, w: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """Camera-like frames: smooth content plus sensor noise (never constant)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8), (w, h))
    return [cv2.add(base, rng.integers(0, 24, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def machine_info() -> dict[str, str]:
    """The machine (`stp_edge.machine.machine_info`) plus Pillow's version and this run's BLAS threads."""
    return {**base_machine_info(), "pillow": Image.__version__, "blas_threads": BLAS_THREADS}


def time_alternating(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run each function once to warm up, then `repeats` rounds in alternation; seconds per call."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def bench_cpu(repeats: int, resolutions: dict[str, tuple[int, int]]) -> list[dict[str, object]]:
    """CPU twin vs PIL pipeline at every resolution and batch size."""
    rows = []
    pre = CpuPreprocessor(SIZE)
    for name, (h, w) in resolutions.items():
        for batch in BATCHES:
            frames = make_frames(h, w, batch)
            err = float(np.abs(pre(frames) - pil_pipeline(frames)).max())
            reps = repeats if batch == 1 or h < 2000 else max(3, repeats // 2)
            t = time_alternating({"pil": lambda f=frames: pil_pipeline(f), "twin": lambda f=frames: pre(f)}, reps)
            pil_ms, twin_ms = (statistics.median(t[k]) * 1e3 for k in ("pil", "twin"))
            pil_min, twin_min = (min(t[k]) * 1e3 for k in ("pil", "twin"))
            rows.append({
                "resolution": name, "height": h, "width": w, "batch": batch, "repeats": reps,
                "pil_ms": pil_ms, "twin_ms": twin_ms, "speedup": pil_ms / twin_ms,
                "pil_min_ms": pil_min, "twin_min_ms": twin_min, "speedup_of_mins": pil_min / twin_min,
                "twin_ms_per_frame": twin_ms / batch, "max_abs_err_vs_pil": err,
            })  # fmt: skip
            print(f"  {name:>5} b{batch:<3} PIL {pil_ms:9.2f} ms  twin {twin_ms:8.2f} ms  x{pil_ms / twin_ms:5.1f}")
    return rows


def cpu_markdown(rows: list[dict[str, object]], info: dict[str, str]) -> str:
    """The CPU results as a markdown table."""
    lines = [
        "# CLIP preprocessing on the CPU: CpuPreprocessor vs the PIL pipeline",
        "",
        f"Machine: {info['node']} - {info['cpu']} ({info['cores']} cores), {info['platform']}; "
        f"numpy {info['numpy']}, OpenCV {info['opencv']}, Pillow {info['pillow']}; BLAS threads "
        f"{info['blas_threads']}. Load average (1 min) when the run started: {info['load_avg_1m']} "
        "(other jobs share this machine).",
        "Output 224x224 float32. Medians over repeats, both pipelines alternating in one process, same frames; "
        "the fastest run of each shows the cost with the least interference from other jobs.",
        "",
        "| input | batch | PIL pipeline (ms) | CPU twin (ms) | speedup | twin ms/frame | speedup of fastest runs "
        "| max abs err vs PIL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['batch']} | {r['pil_ms']:.2f} | {r['twin_ms']:.2f} | {r['speedup']:.1f}x "
            f"| {r['twin_ms_per_frame']:.2f} | {r['speedup_of_mins']:.1f}x ({r['pil_min_ms']:.1f} / "
            f"{r['twin_min_ms']:.1f} ms) | {r['max_abs_err_vs_pil']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def bench_gpu(repeats: int, resolutions: dict[str, tuple[int, int]]) -> tuple[list[dict[str, object]], dict]:
    """CudaPreprocessor timings with CUDA events; raises ImportError/RuntimeError without pycuda/GPU."""
    from stp_edge.cuda import CudaPreprocessor

    pre = CudaPreprocessor(SIZE, max_batch=max(BATCHES))
    # pycuda calls need the preprocessor's context current on this thread (it binds none at import).
    with pre.current():
        import pycuda.driver as cuda

        dev = cuda.Context.get_device()
        start, stop = cuda.Event(), cuda.Event()

        def event_ms(fn: Callable[[], object], n: int) -> float:
            fn()
            samples = []
            for _ in range(n):
                start.record(pre.stream)
                fn()
                stop.record(pre.stream)
                stop.synchronize()
                samples.append(stop.time_since(start))
            return statistics.median(samples)

        nbytes = 512 << 20
        a, b = cuda.mem_alloc(nbytes), cuda.mem_alloc(nbytes)
        copy_ms = event_ms(lambda: cuda.memcpy_dtod_async(b, a, nbytes, pre.stream), repeats)
        bandwidth = 2 * nbytes / (copy_ms * 1e-3)  # bytes read + written per second
        a.free()
        b.free()
        cpu = CpuPreprocessor(SIZE)
        rows = []
        for name, (h, w) in resolutions.items():
            for batch in BATCHES:
                frames = make_frames(h, w, batch)
                host = np.stack(frames)
                dsrc = cuda.to_device(host)
                plan = pre.plan(h, w)
                kern = event_ms(
                    lambda d=dsrc, n=batch, h=h, w=w: pre.run_device(d, n, h, w, w * 3, h * w * 3, sync=False),
                    repeats * 3,
                )
                e2e = event_ms(lambda f=frames: pre(f, sync=False), repeats * 3)
                t = time_alternating({"twin": lambda f=frames: cpu(f)}, max(3, repeats // 2))
                twin_ms = statistics.median(t["twin"]) * 1e3
                window = plan.mid_rows * (plan.cols.last - plan.cols.first) * 3
                floor_bytes = batch * (window + 3 * SIZE * SIZE * 4)
                floor_ms = floor_bytes / bandwidth * 1e3
                got = pre.to_host(pre(frames))
                err = float(np.abs(got - pil_pipeline(frames)).max())
                dsrc.free()
                rows.append({
                    "resolution": name, "batch": batch, "kernel_ms": kern, "end_to_end_ms": e2e, "floor_ms": floor_ms,
                    "floor_fraction": floor_ms / kern, "cpu_twin_ms": twin_ms, "speedup_vs_twin": twin_ms / kern,
                    "max_abs_err_vs_pil": err,
                })  # fmt: skip
                print(f"  {name:>5} b{batch:<3} kernels {kern:7.3f} ms  e2e {e2e:7.3f} ms  floor {floor_ms:6.3f} ms  "
                      f"twin {twin_ms:8.2f} ms")  # fmt: skip
        meta = {"gpu": dev.name(), "compute_capability": ".".join(map(str, dev.compute_capability())),
                "d2d_bandwidth_gbs": bandwidth / 1e9, "kernels": pre.kernels.origin}  # fmt: skip
        return rows, meta


def gpu_markdown(rows: list[dict[str, object]], meta: dict, info: dict[str, str]) -> str:
    """The GPU results as a markdown table."""
    lines = [
        "# CLIP preprocessing on the GPU: fused CUDA kernel",
        "",
        f"GPU: {meta['gpu']} (sm_{meta['compute_capability'].replace('.', '')}), measured D2D copy bandwidth "
        f"{meta['d2d_bandwidth_gbs']:.0f} GB/s; kernels {meta['kernels']}. Host: {info['cpu']}.",
        "Kernels: both passes on frames already on the device. End to end: host frames -> pinned -> H2D -> "
        "kernels. Floor: (input window read + fp32 output written) / D2D bandwidth. CUDA events, medians.",
        "",
        "| input | batch | kernels (ms) | end to end (ms) | memory floor (ms) | floor/kernels | CPU twin (ms) "
        "| kernels vs twin | max abs err vs PIL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['batch']} | {r['kernel_ms']:.3f} | {r['end_to_end_ms']:.3f} "
            f"| {r['floor_ms']:.3f} | {r['floor_fraction']:.0%} | {r['cpu_twin_ms']:.2f} "
            f"| {r['speedup_vs_twin']:.0f}x | {r['max_abs_err_vs_pil']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="720p and 1080p only, 3 repeats")
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU comparison")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    res = dict(RESOLUTIONS)
    repeats = args.repeats
    if args.quick:
        res.pop("4K")
        repeats = 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(f"machine: {info['node']} | {info['cpu']} | {info['cores']} cores")
    if not args.gpu_only:
        print("CPU twin vs PIL pipeline:")
        rows = bench_cpu(repeats, res)
        (out / "preprocess_cpu.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
        md = cpu_markdown(rows, info)
        (out / "preprocess_cpu.md").write_text(md)
        print(md)
    try:
        rows, meta = bench_gpu(repeats, res)
    except Exception as exc:  # no pycuda / no device / driver error: the CPU results stand alone
        print(f"GPU benchmark skipped: {type(exc).__name__}: {exc}")
        return 0
    (out / "preprocess_gpu.json").write_text(json.dumps({"machine": info, **meta, "rows": rows}, indent=2) + "\n")
    md = gpu_markdown(rows, meta, info)
    (out / "preprocess_gpu.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
