"""The runtime API: `Detector`, the scheduling and lifecycle of the pipeline stages.

`Detector.push` checks a frame once (`stp_edge.frames.validate_frame`), then its route to a `SnippetResult`
passes each stage of `stp_edge.pipeline` once, in order: snippets (assembly) -> encode (preprocess, encoder
with its region features) -> temporal (feature ring, schedule, temporal graph) -> spatial -> boxes. The
Detector decides *when* each stage runs and for which snippets (docs/architecture.md, "Streaming"); the stages
decide *what* is computed. Nothing here imports torch, and onnxruntime/TensorRT are imported only when a
runner is activated. `run_video` (`stp_edge.run`) drives a Detector over video sources.

Threading: a Detector serialises its calls with a lock, so one Detector may be shared by threads (their calls
run one at a time, each on its own streams' state); for parallel throughput use one Detector per thread.

Faults: every graph call goes through `stp_edge.pipeline.calls.run_graph` (one retry; outputs held to the contract
of `stp_edge.bundle.contract`). A snippet whose call failed twice, or whose outputs break the contract, becomes
an invalid result (`SnippetResult.invalid_reason`) in its place in the stream, and the stream goes on: whatever
a stage raises, each stream's assembler, feature ring and pending snippets stay consistent. `on_invalid="error"`
(the default) then raises the error (`GraphOutputError`, `BackendCallError`, with the call's results attached);
`"mark"` returns the invalid results and raises only when the backend has failed every call for
`max_outage_s` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from stp_edge.backends import CallLimits, activate_runners, choose_backend
from stp_edge.backends.base import Runner
from stp_edge.bundle import GRAPH_NAMES, Bundle, expected_io
from stp_edge.errors import BackendCallError, InferenceError, UsageError
from stp_edge.frames import EncodedFrame, LazyFrame, validate_frame
from stp_edge.pipeline.boxes import box_class, boxes_from_map
from stp_edge.pipeline.calls import Item, run_graph
from stp_edge.pipeline.device import DeviceFeatures, FeaturePath, feature_path
from stp_edge.pipeline.encode import EncodedBatch, Encoder, Preprocess, make_preprocess, preprocess_name
from stp_edge.pipeline.snippets import Snippet, SnippetAssembler, check_sampling, choose_sampling, sample_offsets
from stp_edge.pipeline.spatial import SPATIAL_MODES, SpatialHead, SpatialOutput, spatial_gate
from stp_edge.pipeline.temporal import (
    FeatureRing,
    TemporalHead,
    TemporalOutput,
    Window,
    ready_snippets,
    temporal_chunks,
    temporal_window,
)
from stp_edge.results import SnippetResult

ON_INVALID = ("error", "mark")
MAX_OUTAGE_S = 60.0  # "mark": graph calls failing for this long in a row end the run (a restart takes less)
T = TypeVar("T")


@dataclass(frozen=True)
class SnippetInfo:
    """What the scheduler keeps of an encoded snippet until its result is emitted.

    `failed`: why the snippet has no features (its encoder call failed or broke the contract), or None.
    """

    frame_start: int
    frame_end: int
    frame_shape: tuple[int, int]
    timings: dict[str, float]
    failed: str | None = None
    sampled: tuple[int, ...] = ()  # frame indices the snippet sampled, and how (`Snippet.sampling`)
    sampling: str = "center"


@dataclass
class StreamState:
    """Bookkeeping of one stream inside a Detector: assembler, feature ring, results emitted, pending info."""

    assembler: SnippetAssembler
    ring: FeatureRing
    emitted: int = 0  # final results emitted: snippets [0, emitted)
    provisional: int = 0  # provisional results emitted: snippets [0, provisional) (low-latency mode)
    pending: dict[int, SnippetInfo] = field(default_factory=dict)


def _threaded_runners(threads: int) -> Callable[..., dict[str, Runner]]:
    """`create_runners` whose ONNX Runtime runners use `threads` threads per operator."""
    from stp_edge.backends import create_runners
    from stp_edge.backends.ort import set_intra_op_threads

    def make(*args: Any, **kwargs: Any) -> dict[str, Runner]:
        return set_intra_op_threads(create_runners(*args, **kwargs), threads)

    return make


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
        on_invalid: What a graph call that fails twice, or returns values its contract forbids, does to the call
            that made it: "error" raises (`BackendCallError`, `GraphOutputError`; the streams stay consistent
            and the call's results ride on the error), "mark" returns those snippets as invalid results.
        sampling: Which frame each snippet samples (`stp_edge.pipeline.snippets.SAMPLINGS`): "center" (the
            evenly spaced offsets the model was trained on), "keyframe" (the snippet's first keyframe, from a
            source that flags them: `DecodedFrame.key`; a snippet without one samples its center, counted in
            `sampling_fallbacks`) or "auto" (keyframe where `use_source` says the source's keyframes are aligned
            with the snippets, else center). Each result records its sampled frame (`SnippetResult.sampled`).
        features: Where the encoder's features live between the stages (`stp_edge.pipeline.device`): "auto"
            (on the GPU where the runners allow it: TensorRT, one frame and one frame view per snippet), "host",
            or "device" (refused where it cannot run).

    Attributes:
        features: The feature path that runs (`FeaturePath`: "device", or "host (why)"), for reports.
        max_outage_s: Under "mark", how long graph calls may fail without a success in between before the
            Detector raises `BackendCallError` (the backend is down, not restarting).
    """

    def __init__(self, bundle: Bundle, runners: Mapping[str, Runner], preprocess: Preprocess, *,
                 spatial_on: str = "flagged", backend: str = "custom", lookahead: int | None = None,
                 on_invalid: str = "error", sampling: str = "center", features: str = "auto") -> None:
        if spatial_on not in SPATIAL_MODES:
            raise UsageError(f"spatial_on must be one of {SPATIAL_MODES}, got {spatial_on!r}")
        if on_invalid not in ON_INVALID:
            raise UsageError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        missing = [g for g in GRAPH_NAMES if g not in runners]
        if missing:
            raise UsageError(f"Detector needs runners for {GRAPH_NAMES}; missing {missing}")
        self.bundle = bundle
        self.config = bundle.config
        self.runners = dict(runners)
        self.spatial_on = spatial_on
        self.backend = backend
        self.form: Any = None  # on a CPU backend: the `stp_edge.machine.FormChoice` that runs (set by load)
        self.score_threshold = float(self.config.score_threshold)
        self.box_threshold = float(self.config.box_threshold)
        self.context = self.config.context
        self.lookahead = self.context if lookahead is None else int(lookahead)
        if not 0 <= self.lookahead <= self.context:
            raise UsageError(f"lookahead must be in [0, context={self.context}], got {lookahead!r}")
        self.on_invalid = on_invalid
        self.sampling = check_sampling(sampling)
        self.sampling_for(None)  # a model reading several frames per snippet refuses keyframe sampling
        self._sampling: dict[int, str] = {}  # stream -> "center" | "keyframe", fixed for its source (`use_source`)
        # Snippets sampled at their center under keyframe sampling because they hold no keyframe, by stream.
        self.sampling_fallbacks: dict[int, int] = {}
        self.max_outage_s = MAX_OUTAGE_S
        self._preprocess = preprocess  # released by close() (a CUDA preprocessor holds device buffers)
        io = expected_io(self.config, bundle.region_features)
        self._spec = bundle.preprocess_spec  # where the regions lie in the frame (the boxes stage)
        self.encoder = Encoder(self.runners["encoder"], preprocess, self.config)
        self.temporal = TemporalHead(self.runners["temporal"], io["temporal"]["outputs"])
        self.spatial = SpatialHead(self.runners["spatial"], io["spatial"]["outputs"])
        self._streams: dict[int, StreamState] = {}
        self._closed = False
        # Of the push/flush in progress: errors raised at its end under "error" (invalid snippets), and in every
        # mode (anything else a stage raised, after the streams were made consistent).
        self._errors: list[InferenceError] = []
        self._fatal: list[BaseException] = []
        self._outage: dict[str, tuple[float, int]] = {}  # graph -> (first failure, failed stage calls in a row)
        # Frames of partial last snippets dropped at flush because none of them decodes (compressed frames),
        # by stream; the caller reads and clears its entries (`run_video` counts them as rejected).
        self.dropped_tail_frames: dict[int, int] = {}
        self._lock = threading.RLock()
        for runner in self.runners.values():
            if not runner.is_active:
                runner.activate()
        self._device: DeviceFeatures | None = None
        self.features = self._feature_path(features, io)

    def _feature_path(self, requested: str, io: Mapping[str, Any]) -> FeaturePath:
        """Choose the feature path (`stp_edge.pipeline.device.feature_path`) and set the device one up."""
        from stp_edge.bundle.preprocessing import PreprocessSpec

        enc, tem, spa = (self.runners[g] for g in GRAPH_NAMES)
        spec = getattr(self.encoder.preprocess, "spec", None)
        path = feature_path(requested, keeps_outputs=enc.keeps_outputs_on_device,
                            takes_device_feeds=tem.accepts_device_feeds and spa.accepts_device_feeds,
                            frames_per_snippet=self.config.frames_per_snippet, layout=self.encoder.layout(),
                            spec=spec if isinstance(spec, PreprocessSpec) else None)
        if path.kind != "device":
            return path
        try:
            self._device = DeviceFeatures(self.encoder, 2 * self.context + 1, getattr(enc, "device", 0))
        except Exception as exc:  # no driver, no device: the host path still runs
            if requested == "device":
                raise
            return FeaturePath("host", f"the device feature ring could not start: {type(exc).__name__}: {exc}")
        from stp_edge.cuda.ring import view_row

        self.temporal = TemporalHead(self.runners["temporal"], io["temporal"]["outputs"], stack=self._device.stack,
                                     row=view_row)
        self.spatial = SpatialHead(self.runners["spatial"], io["spatial"]["outputs"], stack=self._device.stack)
        return path

    @classmethod
    def load(cls, bundle: str | Path | Bundle, backend: str = "auto", preprocess: str | Preprocess = "auto",
             spatial_on: str | bool | None = None, device: int = 0, *, lookahead: int | None = None,
             allow_host_code: bool = False, on_invalid: str = "error", limits: CallLimits | None = None,
             threads: int | None = None, sampling: str = "center", precision: str = "exported",
             ort_trt_fp16: bool = False, features: str = "auto") -> Detector:
        """Load a bundle and pick its runners.

        Args:
            bundle: Bundle directory (checked by sha256) or a loaded `Bundle`.
            backend: "auto" (trt > ort-cuda > on a CPU, ort-cpu or openvino as `precision` picks), "trt", "ort",
                "ort-cuda", "ort-trt", "ort-cpu", "openvino", "openvino-gpu" (an Intel GPU), or
                "triton://HOST:PORT" (the bundle's graphs served by a Triton server; see `stp_edge.scale.serve`).
                Under "auto" a TensorRT plan this machine refuses falls back to ONNX Runtime with a warning.
            preprocess: "auto", "cpu", "cuda", or a callable frames -> [B, 3, S, S].
            spatial_on: None (the bundle's config), "flagged", "all", "off", or True ("all") / False ("off").
            device: CUDA device ordinal.
            lookahead: Provisional results N snippets after their snippet (see the class); None: final only.
            allow_host_code: Let TensorRT run the host code of version-compatible plans (never implied by the
                bundle; see `stp_edge.backends.create_runners`).
            on_invalid: "error" or "mark": what a failed graph call or an output its contract forbids does (see
                the class).
            limits: Per-call deadline, onnxruntime memory cap, Triton connect timeout, stop grace
                (`stp_edge.backends.CallLimits`); None: the defaults.
            threads: ONNX Runtime threads per operator (`intra_op_num_threads`); None: ONNX Runtime's default.
                `run_video` sizes it with `stp_edge.run.plan_threads` beside its decode threads.
            sampling: "center", "keyframe" or "auto": which frame each snippet samples (see the class).
            precision: On a CPU: "exported" (the default: the bundle's own precision; an fp32 bundle's numbers stay
                fp32), "auto" (the form fastest on this CPU, bf16 on OpenVINO included:
                `stp_edge.machine.choose_cpu_form`), "fp32", "bf16" (OpenVINO) or "int8" (an int8 bundle); the choice
                is `Detector.form`.
            ort_trt_fp16: backend "ort-trt" only: let ONNX Runtime's TensorRT provider use fp16 kernels.
            features: "auto", "host" or "device": where features live between the stages (see the class).
        """
        if on_invalid not in ON_INVALID:
            raise UsageError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        check_sampling(sampling)
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle)
        requested = backend
        choice = choose_backend(backend, bundle, device, allow_host_code=allow_host_code,
                                precision=precision)  # the engine (or the CPU form), once
        if spatial_on is None:
            spatial_on = bundle.config.spatial_on
        elif isinstance(spatial_on, bool):
            spatial_on = "all" if spatial_on else "off"
        # Runners first: a TensorRT plan refused under "auto" falls back to ONNX Runtime, and the preprocessing
        # choice follows the backend that actually runs, on the runners' device. Except ONNX Runtime on the GPU
        # fed by the CUDA preprocessor (no fallback there, no batch limit): the preprocessor comes first, so the
        # encoder session computes on its stream and takes its output without a host sync.
        early = None
        if choice.name in ("ort-cuda", "ort-trt") and (preprocess == "cuda" or hasattr(preprocess, "stream_handle")):
            early = make_preprocess(preprocess, bundle.config.vision.image_size, backend=choice.name,
                                    host_crops=bundle.host_crops, device=device, spec=bundle.preprocess_spec)
        try:
            backend, runners = activate_runners(bundle, choice.name, device, requested=requested,
                                                allow_host_code=allow_host_code, engine=choice.engine, limits=limits,
                                                make_runners=None if threads is None else _threaded_runners(threads),
                                                encoder_precision=choice.form.hint if choice.form else None,
                                                ort_trt_fp16=ort_trt_fp16,
                                                ort_compute_stream=getattr(early, "stream_handle", None))
        except BaseException:
            if early is not None and early is not preprocess:
                early.close()
            raise
        try:
            pre = early or make_preprocess(preprocess, bundle.config.vision.image_size, backend=backend,
                                           host_crops=bundle.host_crops, device=device,
                                           max_batch=runners["encoder"].max_batch() or 16,
                                           spec=bundle.preprocess_spec)
        except BaseException:
            _deactivate(runners)
            raise
        try:
            det = cls(bundle, runners, pre, spatial_on=spatial_on, backend=backend, lookahead=lookahead,
                      on_invalid=on_invalid, sampling=sampling, features=features)
            det.form = choice.form if backend == choice.name else None
            return det
        except BaseException:
            _deactivate(runners)
            raise

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
            self._closed = True
            if self._device is not None:  # its rings' writes are queued on the encoder runner's stream
                self._streams.clear()
                self._device.close()
                self._device = None
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
                self._sampling.clear()
            else:
                self._streams.pop(stream, None)
                self._sampling.pop(stream, None)

    def sampling_for(self, source: Any) -> tuple[str, str]:
        """The sampling ("center" or "keyframe") this detector's `sampling` gives a video source, and why.

        `source` is a `stp_edge.video.VideoSource` (read: `keyframe_interval`, `decode_mode`), or None (unknown).
        Raises UsageError where the option cannot run on the source (center sampling of keyframes only).
        """
        c = self.config
        return choose_sampling(self.sampling, snippet_len=c.snippet_len, frames_per_snippet=c.frames_per_snippet,
                               keyframe_interval=getattr(source, "keyframe_interval", None),
                               keyframes_only=getattr(source, "decode_mode", "full") == "keyframes")

    def use_source(self, stream: int, source: Any) -> tuple[str, str]:
        """Fix the sampling of `stream` for the source it reads (`sampling_for`); returns (sampling, why).

        `run_video` calls it for each of its sources; a stream no source was given for samples under
        `sampling_for(None)` (under "auto": center).
        """
        with self._lock:
            chosen = self.sampling_for(source)
            self._sampling[stream] = chosen[0]
            if hasattr(source, "sample_only"):  # decode="nonref" skips the non-reference frames not sampled here
                c = self.config  # (keyframe sampling: keyframes are never skipped, nor its fallback, the center)
                source.sample_only(c.snippet_len, sample_offsets(c.snippet_len, c.frames_per_snippet))
            return chosen

    def _state(self, stream: int) -> StreamState:
        if stream not in self._streams:
            c = self.config
            sampling = self._sampling.get(stream) or self.sampling_for(None)[0]
            self._streams[stream] = StreamState(SnippetAssembler(c.snippet_len, c.frames_per_snippet, stream,
                                                                 sampling=sampling),
                                                self._device.ring() if self._device is not None
                                                else FeatureRing(2 * self.context + 1))
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
            self._require_open()
            valid = {k: self._admit(k, f, checked=checked) for k, f in frames.items()}
            snippets = [s for s in (self._state(k).assembler.push(f) for k, f in valid.items()) if s is not None]
            if not snippets:
                return []
            self._errors, self._fatal = [], []
            self._encode(snippets)
            return self._finish(self._emit_ready([s.stream for s in snippets], final=False))

    def flush(self, stream: int | None = None) -> list[SnippetResult]:
        """End `stream` (or every stream): encode its partial snippet and emit every pending result.

        The stream's state is dropped, so a later push on the same id starts a new stream at frame 0.
        """
        with self._lock:
            self._require_open()
            streams = list(self._streams) if stream is None else [stream] if stream in self._streams else []
            self._errors, self._fatal = [], []
            try:
                snippets = [s for s in (self._streams[k].assembler.flush() for k in streams) if s is not None]
                if snippets:
                    self._encode(snippets)
                results = self._emit_ready(streams, final=True)
            finally:
                for k in streams:
                    asm = self._streams[k].assembler
                    if asm.fallbacks:
                        self.sampling_fallbacks[k] = self.sampling_fallbacks.get(k, 0) + asm.fallbacks
                    lost = self._streams.pop(k).assembler.undecodable_frames
                    if lost:
                        self.dropped_tail_frames[k] = self.dropped_tail_frames.get(k, 0) + lost
            return self._finish(results)

    def _require_open(self) -> None:
        if self._closed:
            raise UsageError("this Detector is closed (its runners are released); load a new one")

    def _admit(self, stream: int, frame: Any, *, checked: bool) -> np.ndarray | LazyFrame:
        """The frame as the stream keeps it: validated (as given if `checked`), lazy ones decoded if sampled."""
        if isinstance(frame, LazyFrame):  # EncodedFrame, DecodedFrame (PyAV), SkippedFrame
            state = self._streams.get(stream)
            if state is None and self._sampling.get(stream, self.sampling_for(None)[0]) == "keyframe":
                state = self._state(stream)  # a keyframe stream decodes its keyframes only, its first frame too
            if state is None:
                return frame.decode(stream=stream)
            return state.assembler.prepare(frame)
        return frame if checked else validate_frame(frame, self._frames_seen(stream), stream=stream)

    def _frames_seen(self, stream: int) -> int:
        state = self._streams.get(stream)
        return state.assembler.frames_seen if state is not None else 0

    # --- scheduling ------------------------------------------------------------------------------------------
    def encode_features(self, snippets: Sequence[Snippet]) -> EncodedBatch:
        """Run the encode stage on snippets (no streaming state is touched)."""
        return self.encoder(snippets)

    def _encode(self, snippets: Sequence[Snippet]) -> None:
        """Encode snippets and commit them to their streams: features to the ring, or a snippet without them."""
        if self._device is not None:
            self._encode_device(snippets)
            return

        def run() -> tuple[EncodedBatch | None, tuple[str | None, ...]]:
            batch = self.encoder(snippets, on_error=self._errors.append)
            return batch, tuple(batch.problem(i) for i in range(len(snippets)))

        batch, invalid = self._stage(run, lambda why: (None, (why,) * len(snippets)), graph="encoder")
        for i, s in enumerate(snippets):
            state = self._streams[s.stream]
            timings = dict(batch.timings) if batch is not None else {}
            state.pending[s.index] = SnippetInfo(s.frame_start, s.frame_end, s.frame_shape, timings, invalid[i],
                                                 s.sampled, s.sampling)
            if invalid[i] is None and batch is not None:
                state.ring.append(s.index, batch.frame_emb[i], batch.region_emb[i])
            else:
                state.ring.append_missing(s.index)  # a cut in the stream, as at its ends

    def _encode_device(self, snippets: Sequence[Snippet]) -> None:
        """`_encode` on the device feature path: features go from the encoder's outputs into the device rings.

        No host sync: the features are checked at the step's one sync, after the temporal graph (`_settle_device`);
        "encoder" then times the enqueue only, the GPU's encoder time lands in "temporal". A stage that raised leaves
        the snippets it did not reach (or reached only partly) without features.
        """
        dev = self._device
        assert dev is not None
        rings = {s.stream: self._streams[s.stream].ring for s in snippets}
        timings, invalid = self._stage(lambda: dev.encode(snippets, rings, on_error=self._errors.append),
                                       lambda why: ({}, (why,) * len(snippets)), graph="encoder")
        for i, s in enumerate(snippets):
            state = self._streams[s.stream]
            if state.ring.count == s.index:
                state.ring.append_missing(s.index)
            elif invalid[i] is not None:
                state.ring.mark_missing(s.index)  # type: ignore[attr-defined]
            state.pending[s.index] = SnippetInfo(s.frame_start, s.frame_end, s.frame_shape, dict(timings), invalid[i],
                                                 s.sampled, s.sampling)

    def _settle_device(self, streams: Sequence[int], errors: int) -> bool:
        """Hold the device features behind this step's windows to the contract; True if a snippet became a cut.

        Optimistic, so the host waits once per step: the windows were cut and the temporal graph run before the
        features' check copies were read. Its host sync (its stream waited on the ring writes with an event) has
        completed them, so this normally costs no wait. Where a snippet's features are not finite, it becomes a cut
        and an output error, as on the host path; the step's temporal results (and the errors they raised, from
        `errors` on) are dropped and the caller schedules again with the cut.
        """
        dev = self._device
        assert dev is not None
        rings = {k: self._streams[k].ring for k in streams}
        bad: dict[tuple[int, int], str] = {}
        problems: list[str] | str = self._stage(
            lambda: dev.settle(rings, self.runners["encoder"], lambda k, t, why: bad.__setitem__((k, t), why)),
            lambda why: why, graph=None)
        if isinstance(problems, str):  # settle raised (re-raised by _finish): the features were never checked
            for k, ring in rings.items():
                for t in ring.drop_unchecked():  # type: ignore[attr-defined]
                    bad[(k, t)] = problems
            problems = []
        for (k, t), why in bad.items():
            state = self._streams[k]
            if t in state.pending:
                state.pending[t] = replace(state.pending[t], failed=why)
        if bad:
            del self._errors[errors:]
        if problems:
            self._errors.append(dev.error(problems))
        return bool(bad)

    def _ready(self, streams: Iterable[int], *, final: bool) -> list[tuple[int, int, bool]]:
        """(stream, snippet, final) of every result that can be emitted now, in stream and snippet order."""
        items = []
        for k in dict.fromkeys(streams):
            state = self._streams[k]
            done = ready_snippets(state.ring.count, state.emitted, self.context, final=final,
                                  cut=state.ring.last_missing)
            items += [(k, t, True) for t in done]
            if not final and self.lookahead < self.context:
                early = ready_snippets(state.ring.count, max(state.provisional, done.stop), self.lookahead)
                items += [(k, t, False) for t in early]
                state.provisional = max(state.provisional, early.stop)
        return items

    def _emit_ready(self, streams: Iterable[int], *, final: bool) -> list[SnippetResult]:
        streams = list(dict.fromkeys(streams))
        provisional = {k: self._streams[k].provisional for k in streams}
        items = self._ready(streams, final=final)
        if not items:
            return []
        todo = [i for i, (k, t, _) in enumerate(items) if self._streams[k].pending[t].failed is None]
        nothing = np.full(self.config.num_classes, np.nan, np.float32)
        errors = len(self._errors)
        temporal = dict(zip(todo, self._stage(
            lambda: self.temporal([self._window(*items[i][:2]) for i in todo], on_error=self._errors.append),
            lambda why: [TemporalOutput(float("nan"), nothing, nothing[:0], 0.0, why)] * len(todo),
            graph="temporal" if todo else None), strict=True))
        if self._device is not None and self._settle_device(streams, errors):
            for k, n in provisional.items():  # a snippet became a cut: schedule again, with the cut
                self._streams[k].provisional = n
            return self._emit_ready(streams, final=final)
        gated = [i for i in todo if temporal[i].invalid is None
                 and spatial_gate(temporal[i].score, self.spatial_on, self.score_threshold)]
        labels = [f"stream {items[i][0]} snippet {items[i][1]}" for i in gated]
        spatial_out = self._stage(
            lambda: self.spatial([temporal[i].region_emb for i in gated], labels, on_error=self._errors.append),
            lambda why: [SpatialOutput(None, None, 0.0, why)] * len(gated), graph="spatial" if gated else None)
        spatial: dict[int, SpatialOutput] = dict(zip(gated, spatial_out, strict=True))
        results = []
        for i, (k, t, is_final) in enumerate(items):
            state = self._streams[k]
            info = state.pending.pop(t) if is_final else state.pending[t]
            results.append(self._stage(partial(self._result, k, t, info, temporal.get(i), spatial.get(i),
                                               final=is_final), partial(self._invalid, k, t, info, final=is_final),
                                       graph=None))
            if is_final:
                state.emitted = t + 1
        return results

    def _stage(self, run: Callable[[], T], fallback: Callable[[str], T], *, graph: str | None) -> T:
        """Run one stage; whatever it raises, return `fallback(reason)` so the streams stay consistent.

        What it raised is kept for the end of the push/flush (`_finish`); after an interrupt (KeyboardInterrupt,
        SystemExit) no further graph is called. When the stage calls `graph` (None: no graph call), a failed call
        counts towards that graph's outage (`max_outage_s`) and a successful one ends it.
        """
        if graph is not None and any(not isinstance(e, Exception) for e in self._fatal):
            return fallback("not run: the call was interrupted")
        before = len(self._errors)
        try:
            out = run()
        except BaseException as exc:  # re-raised by _finish, once the streams are consistent
            self._fatal.append(exc)
            return fallback(f"error: {type(exc).__name__}: {exc}")
        if graph is not None:
            self._track_outage(graph, self._errors[before:])
        return out

    def _track_outage(self, graph: str, errors: Sequence[InferenceError]) -> None:
        """Count a stage whose graph calls failed; under "mark", give up once they have failed for long."""
        failed = [e for e in errors if isinstance(e, BackendCallError)]
        if not failed:
            self._outage.pop(graph, None)
            return
        now = time.monotonic()
        since, calls = self._outage.get(graph, (now, 0))
        self._outage[graph] = (since, calls + 1)
        if self.on_invalid == "mark" and calls >= 1 and now - since >= self.max_outage_s:
            self._fatal.append(BackendCallError(
                f"{graph} graph calls have failed for {now - since:.0f} s ({calls + 1} stage calls in a row, each call "
                f"retried once; max_outage_s={self.max_outage_s:g}), the last: {failed[-1]}"))

    def _finish(self, results: list[SnippetResult]) -> list[SnippetResult]:
        """Return the call's results, or raise what went wrong with them attached (the streams are consistent)."""
        errors, fatal = self._errors, self._fatal
        self._errors, self._fatal = [], []
        first = fatal[0] if fatal else errors[0] if errors and self.on_invalid == "error" else None
        if first is None:
            return results
        try:  # every error raised here carries the call's results (an InferenceError declares the attribute)
            first.results = results  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__: its results are lost with it
            pass
        raise first

    def _window(self, stream: int, t: int) -> Window:
        ring = self._streams[stream].ring
        start, stop = ring.segment(t)  # a snippet without features cuts the stream like its ends
        lo, hi = temporal_window(t, stop, self.context, start)
        frame_emb, region_emb = ring.window(lo, hi)
        return Window(frame_emb, region_emb, t - lo, f"stream {stream} snippet {t}")

    def _result(self, stream: int, t: int, info: SnippetInfo, temporal: TemporalOutput | None,
                spatial: SpatialOutput | None, *, final: bool = True) -> SnippetResult:
        """Build the snippet's result once, boxes included (the boxes stage)."""
        if info.failed is not None or temporal is None or temporal.invalid is not None:
            why = info.failed or (temporal.invalid if temporal is not None else None) or "no temporal output"
            return self._invalid(stream, t, info, why, final=final, temporal_ms=temporal.ms if temporal else 0.0)
        t0 = time.perf_counter()
        cfg = self.config
        probs = temporal.class_probs
        class_id = int(np.argmax(probs))
        boxes = []
        amap = spatial.anomaly_map if spatial is not None else None
        if amap is not None:
            boxes = boxes_from_map(amap, info.frame_shape, cfg.vision.image_size,
                                   threshold=self.box_threshold, class_id=box_class(probs), mode=cfg.region_mode,
                                   rule=cfg.box_rule, spec=self._spec)
        timings = {**info.timings, "temporal": temporal.ms, "spatial": spatial.ms if spatial is not None else 0.0,
                   "post": (time.perf_counter() - t0) * 1e3}
        return SnippetResult(stream=stream, snippet=t, frame_start=info.frame_start, frame_end=info.frame_end,
                             score=temporal.score, class_probs=probs, class_id=class_id,
                             class_name=cfg.class_names[class_id], is_anomaly=temporal.score >= self.score_threshold,
                             region_scores=None if spatial is None else spatial.region_scores,
                             anomaly_map=amap, boxes=tuple(boxes), timings=timings, final=final,
                             invalid_reason=None if spatial is None else spatial.invalid, sampled=info.sampled,
                             sampling=info.sampling, frame_shape=tuple(info.frame_shape[:2]))

    def _invalid(self, stream: int, t: int, info: SnippetInfo, reason: str, *, final: bool,
                 temporal_ms: float = 0.0) -> SnippetResult:
        """The result of a snippet the temporal stream gave nothing for: no score, no class, the reason why."""
        return SnippetResult(stream=stream, snippet=t, frame_start=info.frame_start, frame_end=info.frame_end,
                             score=float("nan"), class_probs=np.full(self.config.num_classes, np.nan, np.float32),
                             class_id=-1, class_name="", is_anomaly=None,
                             timings={**info.timings, "temporal": temporal_ms, "spatial": 0.0, "post": 0.0},
                             final=final, invalid_reason=reason, sampled=info.sampled, sampling=info.sampling,
                             frame_shape=tuple(info.frame_shape[:2]))

    # --- offline reference -------------------------------------------------------------------------------
    def offline_scores(self, frames: Iterable[np.ndarray], *, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Scores [n] and class probs [n, K] of a whole video, with the temporal graph run once on all snippets.

        This is the offline reference that streaming must equal; it does not touch the streaming state. A failed
        graph call or an output its contract forbids raises (`BackendCallError`, `GraphOutputError`).
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
        n = frame_emb.shape[1]
        limit = (self.runners["temporal"].max_shapes() or {}).get("frame_emb")
        max_len = n if limit is None else min(n, int(limit[1]))  # a TensorRT profile bounds T (2c+1 by default)
        scores, probs = [], []
        for lo, hi, keep_lo, keep_hi in temporal_chunks(n, max(max_len, 2 * c.context + 1), c.context):
            out, _ = run_graph(self.runners["temporal"], "temporal",
                               {"frame_emb": frame_emb[:, lo:hi], "region_emb": region_emb[:, lo:hi]},
                               expected=self.temporal.outputs, dims={"B": 1, "T": hi - lo},
                               items=[Item(f"snippet {t}", (0, t - lo)) for t in range(keep_lo, keep_hi)])
            assert out is not None  # without on_error, run_graph raises instead
            scores.append(out["score"][0, keep_lo - lo:keep_hi - lo])
            probs.append(out["class_probs"][0, keep_lo - lo:keep_hi - lo])
        return np.concatenate(scores), np.concatenate(probs)

