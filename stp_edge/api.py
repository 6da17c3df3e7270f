"""The runtime API: `Detector`, the scheduling and lifecycle of the pipeline stages.

`Detector.push` checks a frame once (`stp_edge.frames.validate_frame`), then its route to a `SnippetResult`
passes each stage of `stp_edge.pipeline` once, in order: snippets (assembly) -> encode (preprocess, encoder
with its region features) -> temporal (feature ring, schedule, temporal graph) -> spatial -> boxes. The
Detector decides *when* each stage runs and for which snippets (docs/architecture.md, "Streaming"); the stages
decide *what* is computed. Nothing here imports torch, and onnxruntime/TensorRT are imported only when a
runner is activated. `run_video` (`stp_edge.run`) drives a Detector over video sources.

Threading: a Detector serialises its calls with a lock, so one Detector may be shared by threads (their calls
run one at a time, each on its own streams' state); for parallel throughput use one Detector per thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.backends import activate_runners, choose_backend
from stp_edge.backends.base import Runner
from stp_edge.bundle import GRAPH_NAMES, Bundle
from stp_edge.errors import UsageError
from stp_edge.frames import EncodedFrame, validate_frame
from stp_edge.pipeline.boxes import box_class, boxes_from_map
from stp_edge.pipeline.encode import EncodedBatch, Encoder, Preprocess, make_preprocess, preprocess_name
from stp_edge.pipeline.snippets import Snippet, SnippetAssembler
from stp_edge.pipeline.spatial import SPATIAL_MODES, SpatialHead, SpatialOutput, spatial_gate
from stp_edge.pipeline.temporal import (
    FeatureRing,
    TemporalHead,
    TemporalOutput,
    Window,
    ready_snippets,
    temporal_window,
)
from stp_edge.results import SnippetResult


@dataclass(frozen=True)
class SnippetInfo:
    """What the scheduler keeps of an encoded snippet until its result is emitted."""

    frame_start: int
    frame_end: int
    frame_shape: tuple[int, int]
    timings: dict[str, float]


@dataclass
class StreamState:
    """Bookkeeping of one stream inside a Detector: assembler, feature ring, results emitted, pending info."""

    assembler: SnippetAssembler
    ring: FeatureRing
    emitted: int = 0  # final results emitted: snippets [0, emitted)
    provisional: int = 0  # provisional results emitted: snippets [0, provisional) (low-latency mode)
    pending: dict[int, SnippetInfo] = field(default_factory=dict)


def _deactivate(runners: Mapping[str, Runner]) -> None:
    for runner in reversed(list(runners.values())):
        if runner.is_active:
            runner.deactivate()


class Detector:
    """Streaming STPrompt: push frames of one or several streams, get a `SnippetResult` per snippet.

    Build with `Detector.load(bundle)`. A result for snippet t is final once snippet t + c has been encoded
    (c = `context`, the adapter's reach), or at `flush()`. With `lookahead=N < c` a *provisional* result
    (`final=False`) is emitted as soon as snippet t + N is encoded, computed on the features available then,
    and the final one follows c - N snippets later: an alarm can fire (N + 1) snippets after a snippet
    starts instead of (c + 1). Use as a context manager (or call `close()`) to release the runners.

    Args:
        bundle: The loaded bundle.
        runners: "encoder", "temporal", "spatial" -> Runner (activated here if not yet active).
        preprocess: frames -> images [B, 3, S, S] (NumPy or a device array the encoder runner accepts).
        spatial_on: "flagged" (score >= threshold), "all", or "off".
        backend: Name of the backend, for reports.
        lookahead: Snippets after t to wait for before a provisional result for t (0 <= N <= c); None or c:
            final results only.
    """

    def __init__(self, bundle: Bundle, runners: Mapping[str, Runner], preprocess: Preprocess, *,
                 spatial_on: str = "flagged", backend: str = "custom", lookahead: int | None = None) -> None:
        if spatial_on not in SPATIAL_MODES:
            raise UsageError(f"spatial_on must be one of {SPATIAL_MODES}, got {spatial_on!r}")
        missing = [g for g in GRAPH_NAMES if g not in runners]
        if missing:
            raise UsageError(f"Detector needs runners for {GRAPH_NAMES}; missing {missing}")
        self.bundle = bundle
        self.config = bundle.config
        self.runners = dict(runners)
        self.spatial_on = spatial_on
        self.backend = backend
        self.score_threshold = float(self.config.score_threshold)
        self.box_threshold = float(self.config.box_threshold)
        self.context = self.config.context
        self.lookahead = self.context if lookahead is None else int(lookahead)
        if not 0 <= self.lookahead <= self.context:
            raise UsageError(f"lookahead must be in [0, context={self.context}], got {lookahead!r}")
        self._preprocess = preprocess  # released by close() (a CUDA preprocessor holds device buffers)
        self.encoder = Encoder(self.runners["encoder"], preprocess, self.config)
        self.temporal = TemporalHead(self.runners["temporal"])
        self.spatial = SpatialHead(self.runners["spatial"])
        self._streams: dict[int, StreamState] = {}
        # Frames of partial last snippets dropped at flush because none of them decodes (compressed frames),
        # by stream; the caller reads and clears its entries (`run_video` counts them as rejected).
        self.dropped_tail_frames: dict[int, int] = {}
        self._lock = threading.RLock()
        for runner in self.runners.values():
            if not runner.is_active:
                runner.activate()

    @classmethod
    def load(cls, bundle: str | Path | Bundle, backend: str = "auto", preprocess: str | Preprocess = "auto",
             spatial_on: str | bool | None = None, device: int = 0, *, lookahead: int | None = None,
             allow_host_code: bool = False) -> Detector:
        """Load a bundle and pick its runners.

        Args:
            bundle: Bundle directory (checked by sha256) or a loaded `Bundle`.
            backend: "auto" (trt > ort-cuda > ort-cpu), "trt", "ort", "ort-cuda", "ort-trt", "ort-cpu", or
                "triton://HOST:PORT" (the bundle's graphs served by a Triton server; see `stp_edge.scale.serve`).
                Under "auto" a TensorRT plan this machine refuses falls back to ONNX Runtime with a warning.
            preprocess: "auto", "cpu", "cuda", or a callable frames -> [B, 3, S, S].
            spatial_on: None (the bundle's config), "flagged", "all", "off", or True ("all") / False ("off").
            device: CUDA device ordinal.
            lookahead: Provisional results N snippets after their snippet (see the class); None: final only.
            allow_host_code: Let TensorRT run the host code of version-compatible plans (never implied by the
                bundle; see `stp_edge.backends.create_runners`).
        """
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle)
        requested = backend
        choice = choose_backend(backend, bundle, device, allow_host_code=allow_host_code)  # the engine, once
        if spatial_on is None:
            spatial_on = bundle.config.spatial_on
        elif isinstance(spatial_on, bool):
            spatial_on = "all" if spatial_on else "off"
        # Runners first: a TensorRT plan refused under "auto" falls back to ONNX Runtime, and the preprocessing
        # choice follows the backend that actually runs, on the runners' device.
        backend, runners = activate_runners(bundle, choice.name, device, requested=requested,
                                            allow_host_code=allow_host_code, engine=choice.engine)
        try:
            pre = make_preprocess(preprocess, bundle.config.vision.image_size, backend=backend,
                                  host_crops=bundle.host_crops, device=device,
                                  max_batch=runners["encoder"].max_batch() or 16)
        except BaseException:
            _deactivate(runners)
            raise
        return cls(bundle, runners, pre, spatial_on=spatial_on, backend=backend, lookahead=lookahead)

    @property
    def preprocess(self) -> Preprocess:
        """The preprocessing callable in use."""
        return self.encoder.preprocess

    @property
    def preprocess_name(self) -> str:
        """"cpu", "cuda" or the name of a custom preprocessing callable's type."""
        return preprocess_name(self.encoder.preprocess)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Deactivate the runners (the detector cannot run afterwards)."""
        with self._lock:
            _deactivate(self.runners)
            close = getattr(self._preprocess, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reset(self, stream: int | None = None) -> None:
        """Forget `stream` (or every stream): frames, features, pending results."""
        with self._lock:
            if stream is None:
                self._streams.clear()
            else:
                self._streams.pop(stream, None)

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
        """Add one frame for each of several streams; snippets they complete share one encoder call.

        Every frame is validated before any stream changes, so an invalid frame raises `FrameError` and leaves
        every stream (its own included) as it was: the caller can skip that frame and go on. A frame may be an
        `EncodedFrame` (from `VideoSource.frames_with_gaps(lazy=True)`): it is decoded only if sampled.
        """
        return self._push_many(frames, checked=False)

    def _push_many(self, frames: Mapping[int, np.ndarray | EncodedFrame], *, checked: bool) -> list[SnippetResult]:
        """`push_many`, or with `checked=True` the internal door of frames a `VideoSource` already validated.

        `run_video` pushes a source's frames this way, so that each frame is checked once: arrays go in as they
        are, and only compressed frames are decoded (and checked, by `EncodedFrame.decode`).
        """
        with self._lock:
            valid = {k: self._admit(k, f, checked=checked) for k, f in frames.items()}
            snippets = [s for s in (self._state(k).assembler.push(f) for k, f in valid.items()) if s is not None]
            if not snippets:
                return []
            self._encode(snippets)
            return self._emit_ready([s.stream for s in snippets], final=False)

    def flush(self, stream: int | None = None) -> list[SnippetResult]:
        """End `stream` (or every stream): encode its partial snippet and emit every pending result.

        The stream's state is dropped, so a later push on the same id starts a new stream at frame 0.
        """
        with self._lock:
            streams = list(self._streams) if stream is None else [stream] if stream in self._streams else []
            snippets = [s for s in (self._streams[k].assembler.flush() for k in streams) if s is not None]
            try:
                if snippets:
                    self._encode(snippets)
                return self._emit_ready(streams, final=True)
            finally:
                for k in streams:
                    lost = self._streams.pop(k).assembler.undecodable_frames
                    if lost:
                        self.dropped_tail_frames[k] = self.dropped_tail_frames.get(k, 0) + lost

    def _admit(self, stream: int, frame: Any, *, checked: bool) -> np.ndarray | EncodedFrame:
        """The frame as the stream keeps it: validated (as given if `checked`), compressed ones decoded if sampled."""
        if isinstance(frame, EncodedFrame):
            state = self._streams.get(stream)
            if state is None or state.assembler.samples():
                return frame.decode(stream=stream)
            return frame
        return frame if checked else validate_frame(frame, self._frames_seen(stream), stream=stream)

    def _frames_seen(self, stream: int) -> int:
        state = self._streams.get(stream)
        return state.assembler.frames_seen if state is not None else 0

    # --- scheduling ------------------------------------------------------------------------------------------
    def encode_features(self, snippets: Sequence[Snippet]) -> EncodedBatch:
        """Run the encode stage on snippets (no streaming state is touched)."""
        return self.encoder(snippets)

    def _encode(self, snippets: Sequence[Snippet]) -> None:
        batch = self.encoder(snippets)
        for i, s in enumerate(snippets):
            state = self._streams[s.stream]
            state.pending[s.index] = SnippetInfo(s.frame_start, s.frame_end, s.frame_shape, dict(batch.timings))
            state.ring.append(s.index, batch.frame_emb[i], batch.region_emb[i])

    def _emit_ready(self, streams: Iterable[int], *, final: bool) -> list[SnippetResult]:
        items = []  # (stream, snippet, final)
        for k in dict.fromkeys(streams):
            state = self._streams[k]
            done = ready_snippets(state.ring.count, state.emitted, self.context, final=final)
            items += [(k, t, True) for t in done]
            if not final and self.lookahead < self.context:
                early = ready_snippets(state.ring.count, max(state.provisional, done.stop), self.lookahead)
                items += [(k, t, False) for t in early]
                state.provisional = max(state.provisional, early.stop)
        if not items:
            return []
        temporal = self.temporal([self._window(k, t) for k, t, _ in items])
        gated = [i for i, out in enumerate(temporal)
                 if spatial_gate(out.score, self.spatial_on, self.score_threshold)]
        spatial_out = self.spatial([temporal[i].region_emb for i in gated])
        spatial: dict[int, SpatialOutput] = dict(zip(gated, spatial_out, strict=True))
        results = []
        for i, (k, t, is_final) in enumerate(items):
            state = self._streams[k]
            info = state.pending.pop(t) if is_final else state.pending[t]
            results.append(self._result(k, t, info, temporal[i], spatial.get(i), final=is_final))
            if is_final:
                state.emitted = t + 1
        return results

    def _window(self, stream: int, t: int) -> Window:
        ring = self._streams[stream].ring
        lo, hi = temporal_window(t, ring.count, self.context)
        frame_emb, region_emb = ring.window(lo, hi)
        return Window(frame_emb, region_emb, t - lo)

    def _result(self, stream: int, t: int, info: SnippetInfo, temporal: TemporalOutput,
                spatial: SpatialOutput | None, *, final: bool = True) -> SnippetResult:
        """Build the snippet's result once, boxes included (the boxes stage)."""
        t0 = time.perf_counter()
        cfg = self.config
        probs = temporal.class_probs
        class_id = int(np.argmax(probs))
        boxes = []
        if spatial is not None:
            boxes = boxes_from_map(spatial.anomaly_map, info.frame_shape, cfg.vision.image_size,
                                   threshold=self.box_threshold, class_id=box_class(probs), mode=cfg.region_mode)
        timings = {**info.timings, "temporal": temporal.ms, "spatial": spatial.ms if spatial is not None else 0.0,
                   "post": (time.perf_counter() - t0) * 1e3}
        return SnippetResult(stream=stream, snippet=t, frame_start=info.frame_start, frame_end=info.frame_end,
                             score=temporal.score, class_probs=probs, class_id=class_id,
                             class_name=cfg.class_names[class_id], is_anomaly=temporal.score >= self.score_threshold,
                             region_scores=None if spatial is None else spatial.region_scores,
                             anomaly_map=None if spatial is None else spatial.anomaly_map,
                             boxes=tuple(boxes), timings=timings, final=final)

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
            raise UsageError("offline_scores: the video has no frames")
        feats = [self.encoder(snippets[i:i + batch]) for i in range(0, len(snippets), batch)]
        frame_emb = np.concatenate([f.frame_emb for f in feats])[None]
        region_emb = np.concatenate([f.region_emb for f in feats])[None]
        out = self.runners["temporal"].infer({"frame_emb": frame_emb, "region_emb": region_emb})
        return out["score"][0], out["class_probs"][0]

