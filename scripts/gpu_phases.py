"""The Python phases of scripts/gpu_check.sh; each writes one JSON object (to --out and stdout).

    env       GPU, driver, libcuda (where and how found), Python and library versions; needs no pycuda
    sanitize  two kernel cases (BGR 1080p batch 2, NV12 480p batch 1) for compute-sanitizer to watch
    thread    the CUDA preprocessor built on the main thread, called from a second one, vs the main thread
    encoder   CUDA-preprocessed images fed zero-copy to the torch reference ViT-B/16 on the GPU vs the CPU path
    timings   preprocess 1080p->224 (batch 1, 16): host frames in, kernel-only (CUDA events), H2D of the upload
              window, one snippet end to end (kernel -> fp16 ViT-B/16 by DLPack); the ViT eager and CUDA graphs
    junit     summarise a pytest JUnit XML file; a skipped test counts as a failure (a GPU check that skips
              checked nothing)
    merge     fold the phases' records and results in a scratch folder into the one results file

Run from the repository root with PYTHONPATH set by gpu_check.sh (pycuda from third_party/, stp_edge from the tree).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def frames(n: int, h: int = 1080, w: int = 1920, seed: int = 0) -> list[np.ndarray]:
    """n random-texture BGR frames (never constant: constant inputs hide unwritten outputs)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 7 * i, axis=1) for i in range(n)]


def phase_env() -> dict[str, Any]:
    import ctypes

    from stp_edge.cuda.driver import find_libcuda, load_libcuda

    found = find_libcuda()
    version = ctypes.c_int()
    load_libcuda().cuDriverGetVersion(ctypes.byref(version))
    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "libcuda": {"path": found.path, "how": found.how},
                           "driver_api": f"{version.value // 1000}.{version.value % 1000 // 10}"}
    try:
        import torch

        out["devices"] = [{"name": torch.cuda.get_device_name(i),
                           "cc": "{}.{}".format(*torch.cuda.get_device_capability(i))}
                          for i in range(torch.cuda.device_count())]
    except Exception as exc:  # recorded, not fatal: the driver facts above stand alone
        out["devices"] = f"unavailable: {exc}"
    for mod in ("torch", "cupy", "cuda.bindings", "pycuda", "onnxruntime", "cv2", "PIL", "numpy"):
        try:
            out[mod] = getattr(__import__(mod, fromlist=["_"]), "__version__", "present")
        except Exception as exc:  # absent or broken: recorded, not fatal
            out[mod] = f"unavailable: {exc}"
    try:  # the binding every later phase runs under (install may still build pycuda when BINDING=pycuda)
        from stp_edge.cuda.binding import binding_name

        out["cuda_binding"] = binding_name()
    except Exception as exc:  # recorded, not fatal
        out["cuda_binding"] = f"unavailable: {exc}"
    return out


def phase_sanitize() -> dict[str, Any]:
    from stp_edge.cuda import CudaPreprocessor

    with CudaPreprocessor(224, max_batch=2) as pre:
        bgr = pre.to_host(pre(frames(2)))
        h, w = 480, 640
        nv12 = np.random.default_rng(1).integers(16, 236, (h * 3 // 2, w), dtype=np.uint8)
        yuv = pre.to_host(pre.from_nv12([nv12]))
    return {"cases": ["bgr8 1080x1920 batch 2", "nv12 480x640 batch 1"],
            "finite": bool(np.isfinite(bgr).all() and np.isfinite(yuv).all())}


def phase_thread() -> dict[str, Any]:
    from stp_edge.cuda import CudaPreprocessor

    batch = frames(4, 720, 1280)
    with CudaPreprocessor(224, max_batch=4) as pre:
        main = pre.to_host(pre(batch))
        got: dict[str, Any] = {}

        def worker() -> None:
            try:
                got["out"] = pre.to_host(pre(batch))
                from stp_edge.cuda.driver import current_context

                got["context_left_current"] = current_context() != 0  # driver level, not pycuda's books
            except Exception as exc:
                got["error"] = repr(exc)

        t = threading.Thread(target=worker)
        t.start()
        t.join()
    if "error" in got:
        return {"ok": False, "error": got["error"]}
    diff = float(np.abs(got["out"] - main).max())
    return {"ok": diff == 0.0 and not got["context_left_current"], "max_abs_diff": diff,
            "context_left_current": got["context_left_current"]}


def _vit(dtype: Any) -> Any:
    import torch

    from stp_edge.config import VisionConfig
    from stp_edge.model.clip import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(VisionConfig()).cuda().eval().to(dtype)


def phase_encoder() -> dict[str, Any]:
    import torch

    from stp_edge.cuda import CudaPreprocessor
    from stp_edge.preprocess import CpuPreprocessor

    batch = frames(4)
    vit = _vit(torch.float32)
    cpu_images = torch.from_numpy(CpuPreprocessor(224)(batch)).cuda()
    with CudaPreprocessor(224, max_batch=4) as pre, torch.no_grad():
        images = pre(batch)  # synchronised DeviceArray, read in place through __cuda_array_interface__
        gpu_images = torch.as_tensor(images, device="cuda")
        pixel = float((gpu_images - cpu_images).abs().max())
        (f_gpu, p_gpu), (f_cpu, p_cpu) = vit(gpu_images), vit(cpu_images)
    rel = float((f_gpu - f_cpu).norm() / f_cpu.norm())
    rel_p = float((p_gpu - p_cpu).norm() / p_cpu.norm())
    return {"pixel_max_abs_diff": pixel, "frame_emb_rel_err": rel, "patch_emb_rel_err": rel_p,
            "ok": pixel <= 2e-2 and rel <= 1e-3 and rel_p <= 1e-3}


def _cuda_ms(fn: Callable[[], Any], repeats: int, stream: Any = None) -> float:
    """Median GPU time of `fn`'s work in ms: CUDA events recorded on `stream` (torch's current one by default)."""
    import torch

    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        fn()
        stop.record(stream)
        stop.synchronize()
        samples.append(start.elapsed_time(stop))
    return statistics.median(samples)


def _wall_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `fn` in ms (it returns synchronised), after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def phase_timings(repeats: int) -> dict[str, Any]:
    import torch

    from stp_edge.cuda import CudaPreprocessor
    from stp_edge.cuda.preprocess import upload_window

    out: dict[str, Any] = {"repeats": repeats, "preprocess_1080p_ms": {}, "preprocess_kernels_1080p_ms": {},
                           "h2d_window_1080p_ms": {}, "snippet_e2e_1080p_ms": {}, "vit_b16_fp16_ms": {}}
    vit = _vit(torch.float16)
    with CudaPreprocessor(224, max_batch=16) as pre:
        ext = torch.cuda.ExternalStream(pre.stream_handle)
        for b in (1, 16):
            batch = frames(b)
            out["preprocess_1080p_ms"][str(b)] = _wall_ms(lambda batch=batch: pre(batch), repeats)  # host frames in
            # Kernel-only: frames already on the device, CUDA events on the preprocessor's own stream.
            h, w = batch[0].shape[:2]
            dev = torch.from_numpy(np.stack(batch)).cuda()
            torch.cuda.synchronize()
            out["preprocess_kernels_1080p_ms"][str(b)] = _cuda_ms(
                lambda dev=dev, b=b, h=h, w=w: pre.run_device(dev.data_ptr(), b, h, w, pitch=w * 3,
                                                              frame_stride=h * w * 3, sync=False), repeats, ext)
            # H2D of what an upload moves: the window the resize reads, from pinned memory.
            r0, r1, c0, c1 = upload_window(h, w, pre.spec)
            host = torch.from_numpy(np.stack([f[r0:r1, c0:c1] for f in batch])).pin_memory()
            out["h2d_window_1080p_ms"][str(b)] = _cuda_ms(lambda host=host: host.to("cuda", non_blocking=True),
                                                          repeats)
            # One snippet per camera end to end as far as this image allows (no TensorRT): host frames -> the
            # CUDA kernel -> the fp16 ViT-B/16 (handed over by DLPack, no copy) -> frame embeddings on the host.
            with torch.no_grad():
                out["snippet_e2e_1080p_ms"][str(b)] = _wall_ms(
                    lambda batch=batch: vit(torch.from_dlpack(pre(batch, sync=False)).half()).float().cpu(), repeats)
        # What the upload staging holds after batches of 1 and 16 (1080p): (pinned host, device) bytes.
        out["staging_bytes_1080p"] = dict(zip(("host", "device"), pre.staging_nbytes(), strict=True))
    with torch.no_grad():
        for b in (1, 16):
            x = torch.randn(b, 3, 224, 224, device="cuda", dtype=torch.float16)
            eager = _cuda_ms(lambda x=x: vit(x), repeats)
            static = x.clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    vit(static)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                vit(static)
            out["vit_b16_fp16_ms"][str(b)] = {"eager": eager, "cuda_graph": _cuda_ms(graph.replay, repeats)}
    return out


def phase_junit(path: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    cases = list(ET.parse(path).getroot().iter("testcase"))

    def named(tag: str) -> list[str]:
        return [f"{c.get('classname')}::{c.get('name')}" for c in cases if c.find(tag) is not None]

    failed, errors, skipped = named("failure"), named("error"), named("skipped")
    return {"tests": len(cases), "failed": failed, "errors": errors, "skipped": skipped,
            "ok": bool(cases) and not (failed or errors or skipped)}


# The run phases in the order gpu_check.sh runs them (most valuable numbers first).
RUN_ORDER = ("env", "install", "kernels", "timings", "encoder", "nvdec", "thread", "sanitizer")
JUNIT_PHASES = ("kernels", "nvdec")  # pytest phases: their result is the JUnit summary


def phase_merge(work: Path) -> dict[str, Any]:
    """One results object from the scratch folder: per phase its record (rc, seconds, limit) and result.

    A phase fails when its command failed or its result says `ok: false`; a pytest phase's result is its JUnit
    summary.
    """
    phases: dict[str, Any] = {}
    for name in RUN_ORDER:
        run = work / f"{name}.run.json"
        if not run.is_file():
            continue
        record = json.loads(run.read_text(encoding="utf-8"))
        result_file = work / f"{name}.json"
        if name in JUNIT_PHASES and (work / f"{name}.xml").is_file():
            record["result"] = phase_junit(work / f"{name}.xml")
        elif result_file.is_file():
            record["result"] = json.loads(result_file.read_text(encoding="utf-8"))
        result = record.get("result") or {}
        record["ok"] = record["rc"] == 0 and result.get("ok", True) is not False
        phases[name] = record
    env = (phases.get("env") or {}).get("result") or {}
    return {"schema": "stp-edge-gpu-check/1", "devices": env.get("devices"), "phases": phases,
            "failed": [n for n, r in phases.items() if not r["ok"]],
            "ok": bool(phases) and all(r["ok"] for r in phases.values())}


PHASES = {"env": phase_env, "sanitize": phase_sanitize, "thread": phase_thread, "encoder": phase_encoder}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=[*PHASES, "timings", "junit", "merge"])
    ap.add_argument("path", nargs="?", type=Path, help="junit: the pytest --junitxml file; merge: the scratch folder")
    ap.add_argument("--out", type=Path, help="write the JSON here as well")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.phase == "timings":
        result = phase_timings(args.repeats)
    elif args.phase == "junit":
        result = phase_junit(args.path)
    elif args.phase == "merge":
        result = phase_merge(args.path)
    else:
        result = PHASES[args.phase]()
    result = {"phase": args.phase, "seconds": round(time.perf_counter() - t0, 2), **result}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out is not None:  # whole or not at all: a run cut off mid-write keeps the previous version
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(args.out)
    return 0 if result.get("ok", result.get("finite", True)) else 1


if __name__ == "__main__":
    sys.exit(main())
