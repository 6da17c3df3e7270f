"""The runtime API: `Detector` (push frames, get `SnippetResult`s) and `run_video`.

Per snippet the encoder runs once (snippets completed by one `push_many` call, across streams, share one
encoder call); features go into a ring buffer of 2c+1 snippets per stream; the temporal graph runs on the
window around snippet t once snippet t+c is encoded (docs/architecture.md, "Streaming"); the spatial graph
runs on the snippets whose score passes the threshold (or on all). Nothing here imports torch, and
onnxruntime/TensorRT are imported only when a runner is activated.
"""

from __future__ import annotations

import importlib.util
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.backends import probe_availability, select_backend
from stp_edge.backends.base import Runner, is_device_array
from stp_edge.bundle import GRAPH_NAMES, Bundle
from stp_edge.frames import validate_frame
from stp_edge.regions import make_crops, pool_regions
from stp_edge.results import SnippetResult
from stp_edge.spatial import anomaly_map, boxes_from_map
from stp_edge.streaming import (
    FeatureRing,
    Snippet,
    SnippetAssembler,
    StreamState,
    ready_snippets,
    temporal_window,
)
from stp_edge.video import VideoStats, open_source

Preprocess = Callable[[Sequence[np.ndarray]], Any]
SPATIAL_MODES = ("flagged", "all", "off")
ORT_PROVIDERS = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def make_runners(bundle: Bundle, backend: str, device: int = 0) -> dict[str, Runner]:
    """One (inactive) runner per graph of the bundle for a resolved backend name."""
    if backend == "trt":
        from stp_edge.backends.trt import TrtRunner, cuda_device_info, load_trt

        gpu_name, cc = cuda_device_info(device)
        engine = bundle.select_engine(tensorrt_version=load_trt().__version__, compute_capability=cc,
                                      gpu_name=gpu_name)
        host_code = bool(engine.build_flags.get("version_compatible"))  # plan checked by sha256 in Bundle.load
        return {g: TrtRunner(bundle.plan_path(engine, g), device=device, name=f"{g}.plan",
                             allow_host_code=host_code) for g in GRAPH_NAMES}
    if backend not in ORT_PROVIDERS:
        raise ValueError(f"unknown backend {backend!r}; expected 'trt' or one of {sorted(ORT_PROVIDERS)}")
    from stp_edge.backends.ort import OrtRunner

    return {g: OrtRunner(bundle.graph_path(g), ORT_PROVIDERS[backend], device_id=device,
                         name=f"{g}.onnx ({backend})") for g in GRAPH_NAMES}


def make_preprocess(kind: str | Preprocess, image_size: int, *, backend: str, region_mode: str,
                    device: int = 0) -> Preprocess:
    """The preprocessing callable: "cpu", "cuda", "auto" (CUDA with TensorRT in tokens mode, else CPU).

    `device` is accepted for symmetry; the CUDA preprocessor works in the current primary context
    (`pycuda.autoprimaryctx`, device 0), so multi-GPU preprocessing is not wired yet.
    """
    if callable(kind):
        return kind
    if kind == "auto":
        kind = "cpu"
        # The CUDA kernel feeds TensorRT on the device; crops mode cuts the preprocessed images on the host.
        if backend == "trt" and region_mode == "tokens" and importlib.util.find_spec("pycuda") is not None:
            kind = "cuda"
    if kind == "cpu":
        from stp_edge.preprocess import CpuPreprocessor

        return CpuPreprocessor(image_size)
    if kind == "cuda":
        from stp_edge.cuda import CudaPreprocessor

        # The CUDA preprocessor works in the device's primary context (pycuda.autoprimaryctx), the one the
        # TensorRT runner pushes too; its output buffer is overwritten by its next call, so encode_features
        # runs the encoder on each chunk of at most `max_batch` frames before preprocessing the next.
        return CudaPreprocessor(image_size, max_batch=16)  # = the default engine profile's max batch
    raise ValueError(f"preprocess must be 'auto', 'cpu', 'cuda' or a callable, got {kind!r}")


class Detector:
    """Streaming STPrompt: push frames of one or several streams, get a `SnippetResult` per snippet.

    Build with `Detector.load(bundle)`. A result for snippet t arrives once snippet t + lookahead has been
    encoded, or at `flush()`. Use as a context manager (or call `close()`) to release the runners.

    Args:
        bundle: The loaded bundle.
        runners: "encoder", "temporal", "spatial" -> Runner (activated here if not yet active).
        preprocess: frames -> images [B, 3, S, S] (NumPy or a device array the encoder runner accepts).
        spatial_on: "flagged" (score >= threshold), "all", or "off".
        backend: Name of the backend, for reports.
    """

    def __init__(self, bundle: Bundle, runners: Mapping[str, Runner], preprocess: Preprocess, *,
                 spatial_on: str = "flagged", backend: str = "custom") -> None:
        if spatial_on not in SPATIAL_MODES:
            raise ValueError(f"spatial_on must be one of {SPATIAL_MODES}, got {spatial_on!r}")
        missing = [g for g in GRAPH_NAMES if g not in runners]
        if missing:
            raise ValueError(f"Detector needs runners for {GRAPH_NAMES}; missing {missing}")
        self.bundle = bundle
        self.config = bundle.config
        self.runners = dict(runners)
        self.preprocess = preprocess
        self.spatial_on = spatial_on
        self.backend = backend
        self.score_threshold = float(self.config.score_threshold)
        self.box_threshold = float(self.config.box_threshold)
        self.context = self.config.context
        self._streams: dict[int, StreamState] = {}
        for runner in self.runners.values():
            if not runner.is_active:
                runner.activate()

    @classmethod
    def load(cls, bundle: str | Path | Bundle, backend: str = "auto", preprocess: str | Preprocess = "auto",
             spatial_on: str | bool | None = None, device: int = 0) -> Detector:
        """Load a bundle and pick its runners.

        Args:
            bundle: Bundle directory (checked by sha256) or a loaded `Bundle`.
            backend: "auto" (trt > ort-cuda > ort-cpu), "trt", "ort", "ort-cuda", "ort-trt" or "ort-cpu".
            preprocess: "auto", "cpu", "cuda", or a callable frames -> [B, 3, S, S].
            spatial_on: None (the bundle's config), "flagged", "all", "off", or True ("all") / False ("off").
            device: CUDA device ordinal.
        """
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle)
        if backend != "ort-cpu":
            backend = select_backend(backend, probe_availability(bundle, device))
        if spatial_on is None:
            spatial_on = bundle.config.spatial_on
        elif isinstance(spatial_on, bool):
            spatial_on = "all" if spatial_on else "off"
        pre = make_preprocess(preprocess, bundle.config.vision.image_size, backend=backend,
                              region_mode=bundle.config.region_mode, device=device)
        return cls(bundle, make_runners(bundle, backend, device), pre, spatial_on=spatial_on, backend=backend)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Deactivate the runners (the detector cannot run afterwards)."""
        for runner in reversed(list(self.runners.values())):
            if runner.is_active:
                runner.deactivate()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reset(self) -> None:
        """Forget every stream (frames, features, pending results)."""
        self._streams.clear()

    def _state(self, stream: int) -> StreamState:
        if stream not in self._streams:
            c = self.config
            self._streams[stream] = StreamState(SnippetAssembler(c.snippet_len, c.frames_per_snippet, stream),
                                                FeatureRing(2 * self.context + 1))
        return self._streams[stream]

    # --- streaming ---------------------------------------------------------------------------------------
    def push(self, frame: np.ndarray, stream: int = 0) -> list[SnippetResult]:
        """Add one frame (uint8 BGR, any size) of `stream`; return the results that became final."""
        return self.push_many({stream: frame})

    def push_many(self, frames: Mapping[int, np.ndarray]) -> list[SnippetResult]:
        """Add one frame for each of several streams; snippets they complete share one encoder call."""
        snippets = []
        for stream, frame in frames.items():
            state = self._state(stream)
            snip = state.assembler.push(validate_frame(frame, state.assembler.frames_seen))
            if snip is not None:
                snippets.append(snip)
        if not snippets:
            return []
        self._encode(snippets)
        return self._emit_ready([s.stream for s in snippets], final=False)

    def flush(self, stream: int | None = None) -> list[SnippetResult]:
        """End `stream` (or every stream): encode its partial snippet and emit every pending result.

        The stream's state is dropped, so a later push on the same id starts a new stream at frame 0.
        """
        streams = list(self._streams) if stream is None else [stream] if stream in self._streams else []
        snippets = [s for s in (self._streams[k].assembler.flush() for k in streams) if s is not None]
        if snippets:
            self._encode(snippets)
        results = self._emit_ready(streams, final=True)
        for k in streams:
            del self._streams[k]
        return results

    # --- stages ------------------------------------------------------------------------------------------
    def encode_features(self, snippets: Sequence[Snippet]) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """frame_emb [B, E] and region_emb [B, R2, E] of snippets, with stage timings in ms.

        All sampled frames go through the encoder in one call, or in chunks of the preprocessor's `max_batch`.
        """
        cfg = self.config
        k = cfg.frames_per_snippet
        frames = [f for s in snippets for f in s.frames]
        chunk = int(getattr(self.preprocess, "max_batch", 0) or len(frames))
        frame_parts, region_parts = [], []
        timings = {"preprocess": 0.0, "encoder": 0.0}
        for i in range(0, len(frames), chunk):
            t0 = time.perf_counter()
            images = self.preprocess(frames[i:i + chunk])
            timings["preprocess"] += _ms(t0)
            t0 = time.perf_counter()
            fe, re = self._encode_images(images)
            timings["encoder"] += _ms(t0)
            frame_parts.append(fe)
            region_parts.append(re)
        b = len(snippets)
        frame_emb = np.concatenate(frame_parts).reshape(b, k, -1).mean(axis=1, dtype=np.float32)
        region_emb = np.concatenate(region_parts).reshape(b, k, cfg.num_regions, -1).mean(axis=1, dtype=np.float32)
        return frame_emb, region_emb, timings

    def _encode_images(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Encoder (and region features) of preprocessed images: frame_emb [n, E], region_emb [n, R2, E]."""
        cfg = self.config
        enc = self.runners["encoder"].infer({"images": images})
        if cfg.region_mode == "tokens":
            return enc["frame_emb"], pool_regions(enc["patch_emb"], cfg.vision.grid, cfg.region_grid)
        if is_device_array(images):
            raise ValueError("crops mode cuts the preprocessed images on the host; use preprocess='cpu'")
        crops = make_crops(np.asarray(images), cfg.region_grid)
        region_emb = self.runners["encoder"].infer({"images": crops})["frame_emb"]
        return enc["frame_emb"], region_emb.reshape(len(images), cfg.num_regions, -1)

    def _encode(self, snippets: Sequence[Snippet]) -> None:
        frame_emb, region_emb, timings = self.encode_features(snippets)
        for i, s in enumerate(snippets):
            state = self._streams[s.stream]
            state.ring.append(s.index, frame_emb[i], region_emb[i])
            state.meta[s.index] = (s.frame_start, s.frame_end, s.frame_shape, dict(timings))

    def _emit_ready(self, streams: Iterable[int], *, final: bool) -> list[SnippetResult]:
        items = []
        for k in dict.fromkeys(streams):
            state = self._streams[k]
            ready = ready_snippets(state.ring.count, state.emitted, self.context, final=final)
            items += [(k, t) for t in ready]
        if not items:
            return []
        scores, probs, t_temporal = self._run_temporal(items)
        flagged = [i for i, s in enumerate(scores)
                   if self.spatial_on == "all" or (self.spatial_on == "flagged" and s >= self.score_threshold)]
        region_scores, t_spatial = self._run_spatial([items[i] for i in flagged])
        results = []
        for i, (k, t) in enumerate(items):
            t0 = time.perf_counter()
            state = self._streams[k]
            start, end, shape, timings = state.meta.pop(t)
            rs = region_scores.get((k, t))
            result = self._make_result(k, t, start, end, shape, float(scores[i]), probs[i], rs)
            state.emitted = t + 1
            result.timings = {**timings, "temporal": t_temporal[i],
                              "spatial": t_spatial if rs is not None else 0.0, "post": _ms(t0)}
            results.append(result)
        return results

    def _run_temporal(self, items: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Scores and class probs of (stream, t) items; windows of equal length share one temporal call."""
        groups: dict[int, list[int]] = defaultdict(list)
        windows = []
        for i, (k, t) in enumerate(items):
            lo, hi = temporal_window(t, self._streams[k].ring.count, self.context)
            windows.append((lo, hi))
            groups[hi - lo].append(i)
        scores = np.zeros(len(items), dtype=np.float32)
        probs = np.zeros((len(items), self.config.num_classes), dtype=np.float32)
        ms = [0.0] * len(items)
        for members in groups.values():
            t0 = time.perf_counter()
            fe, re = zip(*(self._streams[items[i][0]].ring.window(*windows[i]) for i in members), strict=True)
            out = self.runners["temporal"].infer({"frame_emb": np.stack(fe), "region_emb": np.stack(re)})
            for g, i in enumerate(members):
                pos = items[i][1] - windows[i][0]
                scores[i], probs[i] = out["score"][g, pos], out["class_probs"][g, pos]
            elapsed = _ms(t0)
            for i in members:
                ms[i] = elapsed
        return scores, probs, ms

    def _run_spatial(self, items: Sequence[tuple[int, int]]) -> tuple[dict[tuple[int, int], np.ndarray], float]:
        if not items:
            return {}, 0.0
        t0 = time.perf_counter()
        regions = np.stack([self._streams[k].ring.get(t)[1] for k, t in items])
        out = self.runners["spatial"].infer({"region_emb": regions})["region_scores"]
        return {item: out[i] for i, item in enumerate(items)}, _ms(t0)

    def _make_result(self, stream: int, t: int, start: int, end: int, shape: tuple[int, int], score: float,
                     probs: np.ndarray, region_scores: np.ndarray | None) -> SnippetResult:
        cfg = self.config
        class_id = int(np.argmax(probs))
        result = SnippetResult(stream=stream, snippet=t, frame_start=start, frame_end=end, score=score,
                               class_probs=np.asarray(probs, dtype=np.float32), class_id=class_id,
                               class_name=cfg.class_names[class_id], is_anomaly=score >= self.score_threshold)
        if region_scores is not None:
            amap = anomaly_map(region_scores)
            box_class = 1 + int(np.argmax(probs[1:]))  # boxes show an anomaly, so the top abnormal class
            result.region_scores = np.asarray(region_scores, dtype=np.float32)
            result.anomaly_map = amap
            result.boxes = boxes_from_map(amap, shape, cfg.vision.image_size, threshold=self.box_threshold,
                                          class_id=box_class, mode=cfg.region_mode)
        return result

    # --- offline reference -------------------------------------------------------------------------------
    def offline_scores(self, frames: Iterable[np.ndarray], *, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Scores [n] and class probs [n, K] of a whole video, with the temporal graph run once on all snippets.

        This is the offline reference that streaming must equal; it does not touch the streaming state.
        """
        c = self.config
        asm = SnippetAssembler(c.snippet_len, c.frames_per_snippet, stream=-1)
        snippets = []
        for i, frame in enumerate(frames):
            s = asm.push(validate_frame(frame, i))
            if s is not None:
                snippets.append(s)
        tail = asm.flush()
        snippets += [tail] if tail is not None else []
        if not snippets:
            raise ValueError("offline_scores: the video has no frames")
        feats = [self.encode_features(snippets[i:i + batch])[:2] for i in range(0, len(snippets), batch)]
        frame_emb = np.concatenate([f for f, _ in feats])[None]
        region_emb = np.concatenate([r for _, r in feats])[None]
        out = self.runners["temporal"].infer({"frame_emb": frame_emb, "region_emb": region_emb})
        return out["score"][0], out["class_probs"][0]


class VideoResults(list):
    """The `SnippetResult`s of a video, with `stats` (frames read/dropped), `fps`, `wall_s` and `threshold`."""

    def __init__(self, results: Iterable[SnippetResult] = (), *, stats: VideoStats | None = None,
                 fps: float | None = None, wall_s: float = 0.0, threshold: float = 0.5) -> None:
        super().__init__(results)
        self.stats = stats or VideoStats()
        self.fps = fps
        self.wall_s = wall_s
        self.threshold = threshold


def run_video(source: str | int | Path, *, bundle: str | Path | Bundle | None = None,
              detector: Detector | None = None, on_result: Callable[[SnippetResult], None] | None = None,
              max_frames: int | None = None, stream: int = 0, **load_kwargs: Any) -> VideoResults:
    """Run a detector over a video file, URL or camera; return every snippet's result.

    Args:
        source: File path, URL or camera index.
        bundle: Bundle to load a detector from (when `detector` is None).
        detector: An existing detector (kept open); its stream `stream` is flushed at the end.
        on_result: Called with each result as soon as it is final.
        max_frames: Stop after this many frames.
        stream: Stream id used for this source.
        **load_kwargs: Passed to `Detector.load` (backend, preprocess, spatial_on, device) with `bundle`.

    Returns:
        A list of results with `.stats` (frames read and dropped), `.fps` and `.wall_s`.
    """
    if detector is None and bundle is None:
        raise ValueError("run_video needs a bundle or a detector")
    own = detector is None
    det = detector if detector is not None else Detector.load(bundle, **load_kwargs)  # type: ignore[arg-type]
    results = VideoResults(threshold=det.score_threshold)
    decode_ms: dict[int, float] = defaultdict(float)
    snippet_len = det.config.snippet_len

    def emit(batch: list[SnippetResult]) -> None:
        for r in batch:
            r.timings = {"decode": decode_ms.pop(r.snippet, 0.0), **r.timings}
            results.append(r)
            if on_result is not None:
                on_result(r)

    start = time.perf_counter()
    try:
        with open_source(source) as src:
            results.fps = src.fps
            frames = iter(src)
            n = 0
            while max_frames is None or n < max_frames:
                t0 = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    break
                decode_ms[n // snippet_len] += _ms(t0)
                emit(det.push(frame, stream))
                n += 1
            emit(det.flush(stream))
            results.stats = src.stats
    finally:
        if own:
            det.close()
    results.wall_s = time.perf_counter() - start
    return results


def frame_scores(results: Iterable[SnippetResult], num_frames: int | None = None) -> np.ndarray:
    """Per-frame scores of one stream's results: each frame gets its snippet's score ([frame_start, frame_end))."""
    results = list(results)
    n = num_frames if num_frames is not None else max((r.frame_end for r in results), default=0)
    out = np.zeros(n, dtype=np.float32)
    for r in results:
        out[r.frame_start:min(r.frame_end, n)] = r.score
    return out


def write_overlay(source: str | int | Path, results: Sequence[SnippetResult], out: str | Path, *,
                  threshold: float = 0.5, fps: float | None = None) -> Path:
    """Re-read `source` and write it with each snippet's score, class, anomaly map and boxes drawn on its frames."""
    from stp_edge.visualize import OverlayWriter, center_crop_roi

    by_frame = {}
    for r in results:
        for i in range(r.frame_start, r.frame_end):
            by_frame[i] = r
    with open_source(source) as src:
        writer = None
        try:
            for i, frame in enumerate(src):
                if i not in by_frame:
                    break
                h, w = frame.shape[:2]
                if writer is None:
                    writer = OverlayWriter(out, fps or src.fps or 25.0, (w, h), threshold=threshold,
                                           map_roi=center_crop_roi(w, h))
                r = by_frame[i]
                writer.write(frame, r.score, r.class_name, r.anomaly_map,
                             [(b.x1, b.y1, b.x2, b.y2) for b in r.boxes])
        finally:
            if writer is not None:
                writer.close()
    return Path(out)


def plot_scores(results: Sequence[SnippetResult], out: str | Path, *, fps: float | None = None,
                threshold: float = 0.5) -> Path:
    """PNG of the per-frame score over time (matplotlib, through `stp_edge.visualize.plot_timeline`)."""
    from stp_edge.visualize import plot_timeline

    return plot_timeline(out, frame_scores(results), fps or 25.0, threshold=threshold)
