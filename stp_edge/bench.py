"""`stp-edge bench`: what one process of the runtime costs on this machine, measured in one run.

`run_bench(bundle)` measures, with the bundle's own runners and the runtime's own code paths:
- per-stage median and p99 ms (decode, preprocess, encoder, temporal, spatial, post) over the final results of a
  video (the `source`, or a generated 768x576 video: a random texture with moving blocks, MJPG) decoded by
  `stp_edge.video.open_source` once per stream and pushed frame by frame (`streams` streams, `batch` of them per
  `push_many`, so an encoder call serves up to `batch` snippets: its preprocess/encoder ms are per call);
- end-to-end ms per snippet (wall time from the first decode to the last result over all snippets of all
  streams), frames/s, and how many 25 fps cameras one process keeps up with;
- alert delay: a result is final (c + 1) snippets after its snippet starts, provisional after (N + 1) with
  `lookahead=N`; in frames and in seconds at 25 fps (compute time comes on top);
- peak RSS of the process after the runtime run (`resource.getrusage`: the process' peak since it started);
- cost per new snippet at stream length 64 vs 4,096: the fast path pushes 8x8 frames through `Detector.push`
  with the encoder stage replaced by random features, so the ring buffer, scheduling, temporal and spatial
  graphs run for every snippet as in a long stream, without spending minutes in the encoder;
- the physical floor: encoder FLOPs from the config over this machine's measured matmul rate (NumPy fp32; int8
  through ONNX Runtime's MatMulInteger when onnx is installed);
- with torch installed and the weights rebuildable from the bundle's recorded source, the plain PyTorch pipeline
  a researcher would write on the same weights and frames (cv2 decode of every frame, PIL bicubic + NumPy
  preprocessing of the sampled frame, eager `STPrompt.encode`, temporal stream on the last 2c+1 snippets,
  spatial stream), alternated snippet by snippet with the runtime so machine noise hits both alike.
torch is imported only for that baseline; the rest needs only the runtime.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.errors import UsageError

STAGES = ("decode", "preprocess", "encoder", "temporal", "spatial", "post")
CAMERA_FPS = 25.0
DEFAULT_SIZE = (576, 768)  # (H, W) of the generated video: a PAL-size surveillance camera


@dataclass(frozen=True)
class StageStats:
    """Median and 99th percentile of one stage, ms, over `n` samples."""

    median_ms: float
    p99_ms: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> StageStats:
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return cls(float("nan"), float("nan"), 0)
        return cls(float(np.median(v)), float(np.percentile(v, 99)), int(v.size))


@dataclass
class BenchReport:
    """Everything `run_bench` measured; `to_dict()` is the saved JSON, `markdown()` the saved table."""

    bundle: str
    backend: str
    precision: str
    batch: int
    streams: int
    source: str
    frames_per_stream: int
    snippets: int
    load_s: float
    stages: dict[str, StageStats]
    end_to_end_ms_per_snippet: float
    frames_per_s: float
    cameras_at_25fps: float
    alert_delay: dict[str, dict[str, float]]
    peak_rss_mb: float
    stream_cost: dict[str, Any] | None
    floor: dict[str, Any]
    torch_baseline: dict[str, Any] | None
    machine: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The report as markdown tables."""
        m = self.machine
        lines = [f"# stp-edge bench: {Path(self.bundle).name}, {self.backend}, {self.precision}, batch {self.batch}, "
                 f"{self.streams} stream(s)", "",
                 f"Machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('isa')}), load {m.get('load_avg_1m')} at "
                 f"start. Source: {self.source}, {self.frames_per_stream} frames per stream, {self.snippets} final "
                 "snippets.", ""]
        base = (self.torch_baseline or {}).get("stages", {})
        lines += ["| stage | median ms | p99 ms | plain PyTorch median ms |", "|---|---:|---:|---:|"]
        for k, s in self.stages.items():
            b = base.get(k)
            lines.append(f"| {k} | {s.median_ms:.2f} | {s.p99_ms:.2f} | {'' if b is None else f'{b:.2f}'} |")
        tb = self.torch_baseline
        e2e = f"{self.end_to_end_ms_per_snippet:.2f}"
        if tb:
            e2e += (f" (plain PyTorch {tb['end_to_end_ms_per_snippet']:.2f}; stp-edge/PyTorch "
                    f"{self.end_to_end_ms_per_snippet / tb['end_to_end_ms_per_snippet']:.2f}x)")
        lines += ["", "| measure | value |", "|---|---|", f"| end-to-end ms per snippet | {e2e} |",
                  f"| frames/s (all streams) | {self.frames_per_s:.1f} |",
                  f"| cameras at 25 fps, one process | {self.cameras_at_25fps:.2f} |",
                  f"| peak RSS | {self.peak_rss_mb:.0f} MB |", f"| load (bundle + runners) | {self.load_s:.2f} s |"]
        for name, d in self.alert_delay.items():
            lines.append(f"| alert delay, {name} | {d['snippets']:.0f} snippets = {d['frames']:.0f} frames = "
                         f"{d['seconds']:.2f} s at 25 fps |")
        if self.stream_cost:
            sc = self.stream_cost
            parts = ", ".join(f"{n}: {v:.3f} ms" for n, v in sc["median_ms"].items())
            lines.append(f"| cost per new snippet by stream length | {parts} (ratio {sc['ratio']:.3f}) |")
        f = self.floor
        floor = f"{f['encoder_gflop_per_snippet']:.2f} GFLOP; fp32 {f['fp32_gflops']:.0f} GFLOP/s -> " \
                f"{f['fp32_floor_ms']:.1f} ms"
        if f.get("int8_gops"):
            floor += f"; int8 {f['int8_gops']:.0f} GOP/s -> {f['int8_floor_ms']:.1f} ms"
        lines.append(f"| encoder floor per snippet | {floor} |")
        lines += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"

    def save(self, json_out: str | os.PathLike, *, plot: bool = True) -> list[Path]:
        """Write JSON, markdown (same stem, .md) and, with matplotlib, a stage plot (.png); returns the paths."""
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2, default=float) + "\n")
        md = out.with_suffix(".md")
        md.write_text(self.markdown())
        paths = [out, md]
        if plot:
            paths.append(_plot(self, out.with_suffix(".png")))
        return paths


def run_bench(bundle: str | os.PathLike, *, backend: str = "auto", precision: str | None = None, batch: int = 1,
              streams: int = 1, source: str | os.PathLike | None = None, frames: int | None = None,
              json_out: str | os.PathLike | None = None, torch_baseline: bool = True, progress: bool = True,
              lookahead: int | None = None, stream_lengths: Sequence[int] = (64, 4096),
              checkpoint: str | os.PathLike | None = None) -> BenchReport:
    """Benchmark a bundle on this machine (see the module docstring); saves JSON/markdown/plot to `json_out`.

    Args:
        bundle: The bundle directory.
        backend: As `Detector.load` ("auto", "ort-cpu", "trt", ...).
        precision: Expected encoder precision (default: the bundle's); ONNX Runtime runs the bundle's graphs as
            exported, so another value is refused rather than silently measured at the wrong precision.
        batch: Streams per `push_many`, i.e. snippets per encoder call (<= streams).
        streams: Concurrent streams, each decoding its own copy of the source.
        source: A video file (default: a generated 768x576 MJPG video).
        frames: Frames per stream (default: enough for 2c+1+8 snippets).
        json_out: Where to save the JSON (+ .md, .png beside it); None: save nothing.
        torch_baseline: Run the plain PyTorch pipeline too, when torch and the weights are available.
        progress: Show progress bars.
        lookahead: Run the detector with provisional results N snippets late, and report that delay.
        stream_lengths: Stream lengths (snippets) at which the cost per new snippet is compared.
        checkpoint: The checkpoint a checkpoint-exported bundle came from (for the PyTorch baseline only; paths
            named inside a bundle are never opened).
    """
    from stp_edge.api import Detector
    from stp_edge.bundle import Bundle

    if batch < 1 or streams < 1 or batch > streams:
        raise UsageError(f"need 1 <= batch <= streams, got batch={batch}, streams={streams}")
    want_plot = json_out is not None and importlib.util.find_spec("matplotlib") is not None
    notes: list[str] = []
    if json_out is not None and not want_plot:
        notes.append("matplotlib is not installed (pip install 'stp-edge[eval]'): no plot saved")
    b = Bundle.load(bundle)
    cfg = b.config
    have = b.graph_precision("encoder")
    precision = precision or have
    if precision != have and not any(e.precision == precision for e in b.engines):
        raise UsageError(f"bundle {b.path} has a {have} encoder and no {precision} engines; export it with "
                         f"--precision {precision} (or build engines) to benchmark {precision}")
    frames = frames or cfg.snippet_len * (2 * cfg.context + 1 + 8)
    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="stp-bench-") as tmp:
        video = Path(source) if source is not None else write_test_video(Path(tmp) / "bench.avi", frames)
        source_desc = str(source) if source is not None else (
            f"generated {DEFAULT_SIZE[1]}x{DEFAULT_SIZE[0]} MJPG video (random texture, moving blocks)")
        t0 = time.perf_counter()
        det = Detector.load(b, backend=backend, lookahead=lookahead)
        load_s = time.perf_counter() - t0
        with det:
            # Measured before torch is imported: the runtime's own peak.
            peak_rss_mb = _peak_rss_mb() if not torch_baseline else None
            plain = _torch_baseline(b, video, checkpoint, notes) if torch_baseline else None
            run = _run_streams(det, video, frames, streams, batch, progress, between=plain)
            if peak_rss_mb is None:
                peak_rss_mb = _peak_rss_mb()
                notes.append("peak RSS includes the plain PyTorch pipeline run in the same process (interleaved); "
                             "run with torch_baseline=False (--no-torch) for the runtime's own peak")
            stream_cost = _stream_cost(det, stream_lengths, progress) if stream_lengths else None
        baseline = plain.summary() if plain is not None else None
    final = [r for r in run["results"] if r.final]
    stages = {k: StageStats.of([run["decode"].get((r.stream, r.snippet), 0.0) if k == "decode" else r.timings[k]
                                for r in final]) for k in STAGES}
    total_frames = run["frames_per_stream"] * streams
    report = BenchReport(
        bundle=str(b.path), backend=det.backend, precision=precision, batch=batch, streams=streams,
        source=source_desc, frames_per_stream=run["frames_per_stream"], snippets=len(final), load_s=load_s,
        stages=stages, end_to_end_ms_per_snippet=run["wall_s"] * 1e3 / max(1, len(final)),
        frames_per_s=total_frames / run["wall_s"], cameras_at_25fps=total_frames / run["wall_s"] / CAMERA_FPS,
        alert_delay=alert_delays(cfg.context, cfg.snippet_len, lookahead), peak_rss_mb=peak_rss_mb,
        stream_cost=stream_cost, floor=physical_floor(cfg), torch_baseline=baseline, machine=machine, notes=notes)
    notes.append("preprocess/encoder ms are per encoder call (one call serves up to `batch` snippets); temporal "
                 "ms per temporal call; decode ms per snippet of one stream (its 16 frames)")
    if not baseline:
        notes.append("peak RSS: the process' peak (getrusage) after the runtime run, before the stream-length "
                     "run; it includes whatever the calling process held before")
    notes.append("floor: NumPy's BLAS rate on one GEMM shape, not the CPU's peak; a tuned kernel (ONNX Runtime's) "
                 "can beat it, so a measured encoder below the fp32 floor is possible")
    if baseline:
        notes.append("plain PyTorch and stp-edge alternate snippet by snippet (each side's 16 frames, then the "
                     "other's), so machine noise hits both alike; each side's wall time excludes the other's")
    if json_out is not None:
        report.save(json_out, plot=want_plot)
    return report


# --- the runtime run -----------------------------------------------------------------------------------------
def _run_streams(det, video: Path, frames: int, streams: int, batch: int, progress: bool,
                 between: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Decode `video` once per stream and push frame by frame; results, per-snippet decode ms, wall time.

    `between` (the PyTorch baseline's step) is called after every snippet's frames; its time is not counted.
    """
    from tqdm.auto import tqdm

    from stp_edge.video import open_source

    L = det.config.snippet_len
    decode_ms: dict[tuple[int, int], float] = defaultdict(float)
    results, n, other_s = [], 0, 0.0
    sources = [open_source(video) for _ in range(streams)]
    try:
        iters = [(f for f, _gap in s.frames_with_gaps(lazy=True)) for s in sources]  # as `stp-edge run` reads
        start = time.perf_counter()
        for n in tqdm(range(frames), desc="bench", unit="frame", disable=not progress):
            batch_frames = {}
            for k, it in enumerate(iters):
                t0 = time.perf_counter()
                frame = next(it, None)
                decode_ms[(k, n // L)] += (time.perf_counter() - t0) * 1e3
                if frame is None:
                    break
                batch_frames[k] = frame
            if len(batch_frames) < streams:
                break
            for g in range(0, streams, batch):
                results += det.push_many({k: batch_frames[k] for k in range(g, min(g + batch, streams))})
            if between is not None and n % L == L - 1:
                t0 = time.perf_counter()
                between()
                other_s += time.perf_counter() - t0
        else:
            n = frames
        results += det.flush()
        wall_s = time.perf_counter() - start - other_s
    finally:
        for s in sources:
            s.close()
    if n == 0:
        raise UsageError(f"{video}: no frame decoded")
    return {"results": results, "decode": decode_ms, "wall_s": wall_s, "frames_per_stream": n}


def write_test_video(path: Path, frames: int, size: tuple[int, int] = DEFAULT_SIZE, fps: float = CAMERA_FPS,
                     seed: int = 0) -> Path:
    """A camera-like MJPG video: a smooth random texture with a few blocks moving across it (never constant)."""
    import cv2

    from stp_edge.video import VideoWriter

    h, w = size
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 220, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    background = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    background = np.clip(background.astype(np.int16) + rng.integers(-12, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    blocks = [(int(rng.integers(0, h - 60)), int(rng.integers(0, w)), int(rng.integers(2, 9)),
               tuple(int(v) for v in rng.integers(0, 255, 3))) for _ in range(4)]
    with VideoWriter(path, fps, (w, h), "MJPG") as writer:
        for i in range(frames):
            img = background.copy()
            for y, x0, speed, colour in blocks:
                x = int(x0 + speed * i) % (w - 60)
                img[y:y + 60, x:x + 60] = colour
            writer.write(img)
    return path


def alert_delays(context: int, snippet_len: int, lookahead: int | None) -> dict[str, dict[str, float]]:
    """Frames and seconds (at 25 fps) from a snippet's first frame until its result can be emitted."""
    def delay(n: int) -> dict[str, float]:
        return {"snippets": n + 1, "frames": (n + 1) * snippet_len, "seconds": (n + 1) * snippet_len / CAMERA_FPS}

    out = {"final": delay(context)}
    if lookahead is not None and lookahead < context:
        out[f"provisional (lookahead {lookahead})"] = delay(lookahead)
    out["provisional (lookahead 0, the minimum)"] = delay(0)
    return out


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if platform.system() == "Darwin" else rss / 1024  # bytes on macOS, KiB on Linux


# --- cost per new snippet as the stream grows ---------------------------------------------------------------
class _RandomFeatures:
    """Stands in for the encode stage: random features of the right shapes, no encoder call."""

    def __init__(self, config, seed: int = 0) -> None:
        self.config, self.rng = config, np.random.default_rng(seed)

    def __call__(self, snippets):
        from stp_edge.pipeline.encode import EncodedBatch

        c, n = self.config, len(snippets)
        e = c.vision.embed_dim
        return EncodedBatch(tuple(snippets), self.rng.standard_normal((n, e), dtype=np.float32),
                            self.rng.standard_normal((n, c.num_regions, e), dtype=np.float32),
                            {"preprocess": 0.0, "encoder": 0.0})


def _stream_cost(det, lengths: Sequence[int], progress: bool, window: int = 32) -> dict[str, Any]:
    """Median ms of one new snippet (its pushes) on streams that have run `n` snippets, for each n in `lengths`.

    Each stream is first advanced to n - window snippets, untimed; then the streams take one snippet each in
    turn, timed, for `window` rounds, so every length is measured side by side under the same machine load.
    """
    from tqdm.auto import tqdm

    window = max(1, min(window, min(lengths) // 2))  # the timed snippets lie inside each length
    real, det.encoder = det.encoder, _RandomFeatures(det.config)
    L = det.config.snippet_len
    frame = np.full((8, 8, 3), 77, np.uint8)
    ids = {n: 10_000 + i for i, n in enumerate(lengths)}  # stream ids the main run did not use
    times: dict[int, list[float]] = {n: [] for n in lengths}
    try:
        bar = tqdm(total=sum(lengths), desc="stream length", unit="snippet", disable=not progress)
        for n, k in ids.items():
            for _ in range(max(0, n - window) * L):
                det.push(frame, k)
            bar.update(max(0, n - window))
        for _ in range(window):
            for n, k in ids.items():
                t0 = time.perf_counter()
                for _ in range(L):
                    det.push(frame, k)
                times[n].append((time.perf_counter() - t0) * 1e3)
            bar.update(len(ids))
        bar.close()
    finally:
        for k in ids.values():
            det.reset(k)
        det.encoder = real
    med = {str(n): float(np.median(v)) for n, v in times.items()}
    first, last = med[str(min(lengths))], med[str(max(lengths))]
    return {"median_ms": med, "ratio": last / first, "window": window,
            "method": f"{L} pushes of 8x8 frames per snippet through Detector.push, encoder replaced by random "
                      "features (ring buffer, scheduling, temporal and spatial graphs as in a live stream); "
                      f"the last {window} snippets before each length, the lengths alternated snippet by snippet"}


# --- the physical floor ------------------------------------------------------------------------------------
def encoder_flops(config) -> float:
    """Multiply-adds x 2 of the encoder for one snippet (sampled frames, plus R^2 crops in crops mode).

    ViT: per layer 24 n w^2 (qkv, output projection, 4x MLP) + 4 n^2 w (attention), n = tokens incl. class;
    patch embedding 2 g^2 3 p^2 w; output projection 2 n w E. A convolutional stem is counted as the patch
    convolution it replaces (an underestimate).
    """
    v = config.vision
    n, w = v.num_patches + 1, v.width
    per_image = v.layers * (24 * n * w * w + 4 * n * n * w) + 2 * v.num_patches * 3 * v.patch_size ** 2 * w \
        + 2 * n * w * v.embed_dim
    images = config.frames_per_snippet * (1 + (config.num_regions if config.region_mode == "crops" else 0))
    return float(per_image * images)


def matmul_rate_fp32(config, seconds: float = 0.5) -> float:
    """GFLOP/s of NumPy's fp32 matmul on an encoder-shaped GEMM (tokens x width x 4 width), best of runs."""
    v = config.vision
    m, k, n = v.num_patches + 1, v.width, 4 * v.width
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    return 2 * m * k * n / _best_time(lambda: a @ b, seconds) / 1e9


def matmul_rate_int8(config, seconds: float = 0.5) -> float | None:
    """GOP/s of ONNX Runtime's MatMulInteger (uint8 x int8 -> int32) on the same GEMM; None without onnx/ORT."""
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort
    from onnx import TensorProto, helper

    v = config.vision
    m, k, n = v.num_patches + 1, v.width, 4 * v.width
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (m, k), dtype=np.uint8), "b": rng.integers(-127, 127, (k, n), dtype=np.int8)}
    return 2 * m * k * n / _best_time(lambda: sess.run(None, feeds), seconds) / 1e9


def _best_time(fn: Callable[[], Any], seconds: float) -> float:
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def physical_floor(config) -> dict[str, Any]:
    """Encoder GFLOP per snippet and the ms it needs at this machine's measured matmul rates (a lower bound)."""
    flops = encoder_flops(config)
    fp32 = matmul_rate_fp32(config)
    int8 = matmul_rate_int8(config)
    return {"encoder_gflop_per_snippet": flops / 1e9, "fp32_gflops": fp32, "fp32_floor_ms": flops / fp32 / 1e6,
            "int8_gops": int8, "int8_floor_ms": flops / int8 / 1e6 if int8 else None,
            "method": "config FLOPs / best-of NumPy fp32 matmul (and ORT MatMulInteger) on a tokens x width x "
                      "4*width GEMM"}


# --- the plain PyTorch pipeline --------------------------------------------------------------------------
def _torch_baseline(b, video: Path, checkpoint, notes: list[str]) -> _TorchPipeline | None:
    """The researcher's pipeline on the same weights and video; None (with a note) when it cannot run."""
    if importlib.util.find_spec("torch") is None:
        notes.append("plain PyTorch baseline skipped: torch is not installed (pip install 'stp-edge[export]')")
        return None
    source = dict(b.manifest.get("source") or {})
    if checkpoint:
        source = {"kind": "checkpoint", "checkpoint": str(checkpoint)}
    if not source or (source.get("kind") == "checkpoint" and not checkpoint) or source.get("clip_weights"):
        notes.append("plain PyTorch baseline skipped: the bundle records no rebuildable source (pass checkpoint=; "
                     "paths named inside a bundle are not opened)")
        return None
    from stp_edge.model.sources import ModelSource, build_model, weights_fingerprint

    model = build_model(ModelSource.from_manifest(source))
    want = (b.manifest.get("source") or {}).get("weights_sha256")
    if want and weights_fingerprint(model) != want:
        notes.append("plain PyTorch baseline skipped: the rebuilt weights differ from the bundle's")
        return None
    return _TorchPipeline(model, video)


def pil_preprocess(frame_bgr: np.ndarray, size: int) -> np.ndarray:
    """CLIP preprocessing as a researcher writes it: PIL bicubic short side -> size, center crop, normalise."""
    from PIL import Image

    from stp_edge.preprocess import PreprocessSpec, normalisation

    img = Image.fromarray(np.ascontiguousarray(frame_bgr[:, :, ::-1]))
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    x = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)
    scale, bias = normalisation(PreprocessSpec(size=size))
    return (x * scale + bias).transpose(2, 0, 1)[None].astype(np.float32)


class _TorchPipeline:
    """The plain PyTorch pipeline, one snippet per call, as a researcher writes it.

    cv2 decode of the snippet's 16 frames, PIL preprocessing of the middle one, eager encoder, temporal stream
    recomputed on the last 2c+1 snippets, spatial stream.
    """

    def __init__(self, model, video: Path) -> None:
        import cv2

        self.model, self.cap = model, cv2.VideoCapture(str(video))
        self.feats: list[Any] = []
        self.regions: list[Any] = []
        self.times: dict[str, list[float]] = {k: [] for k in ("decode", "preprocess", "encoder", "temporal",
                                                              "spatial", "total")}

    def __call__(self) -> None:
        import torch

        cfg = self.model.cfg
        L, c = cfg.snippet_len, cfg.context
        t0 = time.perf_counter()
        clip = [f for ok, f in (self.cap.read() for _ in range(L)) if ok]
        if len(clip) < L:
            return
        with torch.no_grad():
            t1 = time.perf_counter()
            images = torch.from_numpy(pil_preprocess(clip[L // 2], cfg.vision.image_size))
            t2 = time.perf_counter()
            fe, pe = self.model.encode(images)
            rg = self.model.regions(images, pe)
            t3 = time.perf_counter()
            self.feats.append(fe[0])
            self.regions.append(rg[0])
            lo = max(0, len(self.feats) - (2 * c + 1))
            self.model.temporal(torch.stack(self.feats[lo:])[None], torch.stack(self.regions[lo:])[None])
            t4 = time.perf_counter()
            self.model.spatial(rg)
            t5 = time.perf_counter()
        for k, (a, z) in zip(self.times, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t0, t5)), strict=True):
            self.times[k].append((z - a) * 1e3)

    def summary(self) -> dict[str, Any]:
        import torch

        self.cap.release()
        total = self.times.pop("total")
        return {"snippets": len(total), "end_to_end_ms_per_snippet": float(np.sum(total)) / max(1, len(total)),
                "stages": {k: float(np.median(v)) if v else float("nan") for k, v in self.times.items()},
                "torch": torch.__version__, "threads": torch.get_num_threads()}


# --- report helpers ------------------------------------------------------------------------------------------
def machine_description() -> dict[str, str]:
    """CPU model, cores, the int8/fp matmul instruction sets it has, load average, library versions."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16") if f in flags]
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "isa": " ".join(isa) or "unknown",
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "load_avg_1m": f"{os.getloadavg()[0]:.2f}"}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


def _plot(report: BenchReport, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.stages)
    ours = [report.stages[k].median_ms for k in names]
    p99 = [report.stages[k].p99_ms for k in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x - 0.27, ours, 0.27, label="stp-edge median")
    ax.bar(x, p99, 0.27, label="stp-edge p99")
    if report.torch_baseline:
        base = [report.torch_baseline["stages"].get(k, np.nan) for k in names]
        ax.bar(x + 0.27, base, 0.27, label="plain PyTorch median")
    ax.set_xticks(x, names)
    ax.set_ylabel("ms")
    ax.set_title(f"{Path(report.bundle).name}: {report.backend} {report.precision}, "
                 f"{report.end_to_end_ms_per_snippet:.1f} ms/snippet end to end")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def bench_cli(args: Any) -> int:
    """`stp-edge bench BUNDLE ...`: run `run_bench` and print the markdown table."""
    out = args.json or Path("benchmarks/results") / f"bench_{Path(args.bundle).name}_{args.backend}.json"
    report = run_bench(args.bundle, backend=args.backend, precision=args.precision, batch=args.batch,
                       streams=args.streams, source=getattr(args, "source", None),
                       frames=getattr(args, "frames", None), json_out=out,
                       torch_baseline=not getattr(args, "no_torch", False),
                       lookahead=getattr(args, "lookahead", None), progress=True)
    print(report.markdown())
    print(f"saved {out} (+ .md, .png)")
    return 0
