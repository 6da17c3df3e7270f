"""The device feature path: encoder outputs stay on the GPU, in a mirrored ring per stream, bound in place.

Used where the encoder's runner keeps outputs on the device and the temporal and spatial runners take device
feeds (TensorRT), and where a snippet's features are plain rows of the encoder's outputs: one frame per snippet
(`frames_per_snippet` 1, nothing to average) and one frame view (the "center" policy; the R*R region windows of a
whole-frame region extent are fine: strided rows, gathered by a 2-D copy). `feature_path` decides; anything
else keeps the host path, and `Detector.features` says which runs and why.

The data flow of one step, queued on the GPU without a host copy of features; the host waits once for the
temporal results (and once more for the maps of the snippets the spatial stream runs on):
1. the encoder runs with `keep_on_device` (its outputs stay in the runner's buffers; no host sync);
2. each snippet's rows are copied device to device into both slots of its stream's `DeviceRing`
   (`stp_edge.cuda.ring`), on the encoder's stream, plus an asynchronous copy into a pinned check buffer;
3. the temporal window of one stream is bound in place (B = 1: the engine's stream waits on the ring's writes
   with an event); windows of several streams in one call are gathered device to device into one batch buffer
   (`stp_edge.cuda.ring.Gather`); only score and class_probs come back: the step's sync;
4. `settle` then reads the check copies (complete by then) and holds them to the encoder's contract: a snippet
   with NaN or inf features becomes a cut (`FeatureRing.append_missing` semantics) and an output error, exactly as
   `run_graph` makes it on the host path, and the Detector schedules the step again with the cut (optimistic: the
   common case costs no extra sync). Why a check copy rather than a device-side finiteness flag: a flag needs a
   reduction kernel of our own (none is built yet); the copy is one snippet's features (~20 KB at E=512, R2=9),
   not the (2c+1)-snippet windows the host path uploads for every snippet. Why not trust the temporal outputs'
   own check: a NaN region feature that SA2's top-k drops, or a frame-only model, leaves the score finite, and a
   cut must be known to schedule the neighbours' windows as the host path does;
5. the spatial graph reads the snippet's region slot in place (several snippets: gathered); maps come back.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stp_edge.bundle.contract import OUTPUT_RANGES, expected_io
from stp_edge.bundle.preprocessing import PreprocessSpec
from stp_edge.cuda.ring import MirrorLayout, Rows
from stp_edge.errors import UsageError
from stp_edge.pipeline.calls import Item, OnError, graph_label, output_error, run_graph, value_problem
from stp_edge.pipeline.encode import Encoder, snippet_label
from stp_edge.pipeline.snippets import Snippet
from stp_edge.pipeline.temporal import FeatureRing

FEATURES = ("auto", "host", "device")


@dataclass(frozen=True)
class FeaturePath:
    """Which feature path runs ("device" or "host") and why; `str()` is what `run` and `info` print."""

    kind: str
    why: str = ""

    def __str__(self) -> str:
        return self.kind if not self.why else f"{self.kind} ({self.why})"


def feature_path(requested: str, *, keeps_outputs: bool, takes_device_feeds: bool, frames_per_snippet: int,
                 layout: str, spec: PreprocessSpec | None) -> FeaturePath:
    """The feature path for a Detector (pure: every branch is tested on the CPU).

    Args:
        requested: "auto" (device where it can run), "host", or "device" (refused where it cannot run).
        keeps_outputs: The encoder's runner can keep outputs on the device (`Runner.keeps_outputs_on_device`).
        takes_device_feeds: The temporal and spatial runners accept device feeds.
        frames_per_snippet: Frames averaged into one snippet's features.
        layout: The encoder's region layout ("encoder": region_emb out; "host": patch_emb out, whose regions are
            pooled or cropped on the host, except with region windows: then they are the windows' embeddings).
        spec: The preprocessor's spec (its frame policy and region windows), None for a custom callable.
    """
    if requested not in FEATURES:
        raise UsageError(f"features must be one of {FEATURES}, got {requested!r}")
    if requested == "host":
        return FeaturePath("host", "asked for")
    why = None
    if not keeps_outputs:
        why = "the encoder's backend returns host outputs"
    elif not takes_device_feeds:
        why = "the temporal or spatial backend takes host inputs"
    elif frames_per_snippet != 1:
        why = f"frames_per_snippet={frames_per_snippet} features are averaged on the host"
    elif layout != "encoder" and not (spec is not None and spec.region_grid):
        why = "this bundle's region features are computed on the host (patch_emb layout)"
    elif spec is not None and spec.frame_views != 1:
        why = f"frame policy {spec.frame_policy!r} averages {spec.frame_views} views on the host"
    if why is None:
        return FeaturePath("device")
    if requested == "device":
        raise UsageError(f"features='device' cannot run here: {why}; use features='auto' or 'host'")
    return FeaturePath("host", why)


class DeviceFeatureRing(FeatureRing):
    """`FeatureRing` semantics (ids, missing snippets, segments, held windows) over a `DeviceRing`.

    `window` returns device views [T, E], [T, R2, E] of the mirrored ring (bound in place); `append_device` queues
    a snippet's copies; `settle` waits for them and turns snippets with non-finite features into cuts.
    """

    def __init__(self, capacity: int, ring: Any, context: Any) -> None:
        super().__init__(capacity)
        if ring.layout.capacity < capacity:
            raise UsageError(f"DeviceFeatureRing: a device ring of {ring.layout.capacity} snippets cannot hold "
                             f"windows of {capacity}")
        self.device, self._context = ring, context
        self._unchecked: list[int] = []
        self._found: dict[int, tuple[str, str]] = {}  # cuts found early (the check slots were about to be reused)

    def append(self, snippet: int, frame_emb: np.ndarray, region_emb: np.ndarray) -> None:
        raise UsageError("DeviceFeatureRing holds device features: use append_device (or append_missing)")

    def append_device(self, snippet: int, frame: Any, region: Any, producer: int | None) -> None:
        """Queue snippet `snippet`'s features (`stp_edge.cuda.ring.Rows`, written on stream `producer`)."""
        self._check_next(snippet)
        if len(self._unchecked) >= self.capacity:  # its check copies are about to be overwritten: read them now
            self._found.update(self.settle())
        with self._context.current():
            self.device.write(snippet, frame, region, producer)
        self._unchecked.append(snippet)
        self._advance()

    def append_missing(self, snippet: int) -> None:
        """Take snippet `snippet` without features (nothing is written: no window may include it)."""
        self._check_next(snippet)
        self._missing.add(snippet)
        self._advance()

    def mark_missing(self, snippet: int) -> None:
        """Make a held snippet a cut after the fact (its features turned out unusable)."""
        if max(0, self.count - self.capacity) <= snippet < self.count:
            self._missing.add(snippet)

    def settle(self) -> dict[int, tuple[str, str]]:
        """Wait for the queued writes; snippets with non-finite features become cuts.

        Returns: snippet -> (output name, problem) of each snippet made a cut.
        """
        bad, self._found = self._found, {}
        if not self._unchecked:
            return bad
        with self._context.current():
            self.device.wait_checks()
        oldest = max(0, self.count - self.capacity)
        for t in self._unchecked:
            if t < oldest or t in self._missing:
                continue
            frame, region = self.device.checked(t)
            for name, values in (("frame_emb", frame), ("region_emb", region)):
                why = value_problem(values, OUTPUT_RANGES["encoder"][name])  # the encoder's contract
                if why is not None:
                    bad[t] = (name, why)
                    self._missing.add(t)
                    break
        self._unchecked = []
        return bad

    def drop_unchecked(self) -> list[int]:
        """Make every held snippet whose features were not checked a cut (their check failed); returns them."""
        dropped = [t for t in self._unchecked if t not in self._missing]
        for t in dropped:
            self.mark_missing(t)
        self._unchecked = []
        return dropped

    def window(self, lo: int, hi: int) -> tuple[Any, Any]:
        """Device views frame_emb [hi-lo, E] and region_emb [hi-lo, R2, E] of snippets [lo, hi) (no copy)."""
        self._check_window(lo, hi)
        return self.device.frame_window(lo, hi), self.device.region_window(lo, hi)


class DeviceFeatures:
    """The device feature path of one Detector: its rings (one per stream, pooled), gathers and encoder calls.

    Create with the device's runners active. `close()` frees every ring (the Detector closes it before its
    runners: ring writes are queued on the encoder runner's stream). `in_place` False copies even a single window
    to a fixed address (`stp_edge.cuda.ring.Gather`), for engines replayed as CUDA graphs.
    """

    def __init__(self, encoder: Encoder, capacity: int, device: int = 0, *, in_place: bool = True) -> None:
        from stp_edge.cuda.ring import Gather, RingContext

        cfg = encoder.config
        self.encoder, self.capacity = encoder, capacity
        self.layout = MirrorLayout(capacity, cfg.vision.embed_dim, cfg.num_regions)
        self.context = RingContext(device)
        self._gather_cls, self.in_place = Gather, in_place
        self._gathers: dict[tuple[int, ...], Any] = {}
        self._free: list[Any] = []  # device rings of streams that were dropped, for the next stream
        self._all: list[Any] = []
        self._event: int | None = None  # orders the preprocessor's next chunk after the encoder's read

    def ring(self) -> DeviceFeatureRing:
        """A feature ring for a new stream (its device memory comes back to the pool when the ring is dropped)."""
        from stp_edge.cuda.ring import DeviceRing

        if self._free:
            dev = self._free.pop()
        else:
            with self.context.current():
                dev = DeviceRing(self.layout, self.context.driver)
            self._all.append(dev)
        ring = DeviceFeatureRing(self.capacity, dev, self.context)
        weakref.finalize(ring, self._free.append, dev)  # no CUDA call here: the memory is reused or closed
        return ring

    def stack(self, arrays: list[Any]) -> Any:
        """One batch feed [B, ...] from device views: the view itself for one, gathered on the device for more."""
        key = tuple(arrays[0].shape)
        with self.context.current():
            if key not in self._gathers:
                self._gathers[key] = self._gather_cls(self.context.driver, in_place=self.in_place)
            return self._gathers[key](arrays)

    def encode(self, snippets: Sequence[Snippet], rings: Mapping[int, DeviceFeatureRing], *,
               on_error: OnError | None = None) -> tuple[dict[str, float], tuple[str | None, ...]]:
        """Encode `snippets` into their streams' rings (in order); returns the timings and a problem per snippet.

        Every snippet is appended to its ring: with features, or missing when its encoder call failed.
        """
        enc = self.encoder
        views, windows = enc.views, _windows(enc)
        limits = [getattr(enc.preprocess, "max_batch", None), enc.runner.max_batch() and
                  max(1, enc.runner.max_batch() // views)]
        chunk = min([int(n) for n in limits if n] or [len(snippets)])
        timings = {"preprocess": 0.0, "encoder": 0.0}
        problems: list[str | None] = []
        for i in range(0, len(snippets), chunk):
            part = snippets[i:i + chunk]
            t0 = time.perf_counter()
            images = enc.preprocess_frames([f for s in part for f in s.frames])
            t1 = time.perf_counter()
            out, bad = self._call(images, part, views, windows, on_error)
            m = len(part)
            for j, s in enumerate(part):
                why = next((bad[v * m + j] for v in range(views) if bad[v * m + j]), None)
                ring = rings[s.stream]
                if out is None or why is not None:
                    ring.append_missing(s.index)
                else:
                    fe, re = out["frame_emb"], out.get("region_emb")
                    frame, region = snippet_rows(j, m, views, windows, self.layout, fe.ptr,
                                                 None if windows else re.ptr)
                    ring.append_device(s.index, frame, region, fe.stream)
                problems.append(why or (None if out is not None else "no output"))
            if out is not None and i + chunk < len(snippets):
                self._release_images(out["frame_emb"].stream)
            timings["preprocess"] += (t1 - t0) * 1e3
            timings["encoder"] += (time.perf_counter() - t1) * 1e3
        return timings, tuple(problems)

    def _release_images(self, encoder_stream: int | None) -> None:
        """Make the CUDA preprocessor's next chunk wait (an event) until the encoder has read this one.

        Its output buffer is overwritten by its next call, and nothing synchronised the host in between.
        """
        pre = getattr(self.encoder.preprocess, "stream_handle", None)
        if pre is None or encoder_stream is None or int(pre) == int(encoder_stream):
            return
        with self.context.current():
            if self._event is None:
                self._event = self.context.driver.new_event()
            self.context.driver.wait(int(pre), int(encoder_stream), self._event)

    def _call(self, images: Any, part: Sequence[Snippet], views: int, windows: int, on_error: OnError | None
              ) -> tuple[dict[str, Any] | None, list[str | None]]:
        """One encoder call whose outputs stay on the device; one problem per image (view-major)."""
        enc = self.encoder
        labels = [snippet_label(s) for s in part]
        names = labels if views == 1 else [  # as the host path names them (`Encoder._view_features`)
            f"{label} view {v}" if v < views - windows else f"{label} region crop {v - views + windows}"
            for v in range(views) for label in labels]
        expected = expected_io(enc.config, enc.layout())["encoder"]["outputs"]
        return run_graph(enc.runner, "encoder", {"images": images}, expected=expected, dims={"B": len(names)},
                         items=[Item(n, (j,)) for j, n in enumerate(names)], on_error=on_error,
                         keep_on_device=tuple(enc.runner.output_names()))

    def settle(self, rings: Mapping[int, DeviceFeatureRing], runner: Any,
               on_bad: Callable[[int, int, str], None]) -> list[str]:
        """Hold the features just written to the contract (`DeviceFeatureRing.settle`); returns the problems.

        `on_bad(stream, snippet, problem)` is called for each snippet made a cut.
        """
        where = graph_label("encoder", runner)
        problems = []
        for k, ring in rings.items():
            for t, (name, why) in ring.settle().items():
                text = f"{where} output {name!r} for stream {k} snippet {t}: {why}"
                on_bad(k, t, text)
                problems.append(text)
        return problems

    def error(self, problems: Sequence[str]) -> Any:
        """The `GraphOutputError` the host path's `run_graph` gives for these problems."""
        return output_error(list(problems))

    def close(self) -> None:
        """Free every ring and gather buffer, then drop the context (idempotent)."""
        with self.context.current():
            for dev in self._all:
                dev.close()
            for g in self._gathers.values():
                g.close()
            if self._event is not None:
                self.context.driver.call("cuEventDestroy_v2", self._event)
                self._event = None
        self._all, self._free, self._gathers = [], [], {}
        self.context.close()


def snippet_rows(j: int, m: int, views: int, windows: int, layout: MirrorLayout, frame_ptr: int,
                 region_ptr: int | None) -> tuple[Rows, Rows]:
    """Where frame j's features are in the outputs of an encoder call on m frames (`Rows` of frame and regions).

    frame_emb [V*m, E] is view-major (image v*m + j is view v of frame j): the frame embedding is view 0's row j.
    Regions: row j of region_emb [m, R2, E] (contiguous), or with region windows (the last `windows` views) the
    frame embeddings of images (V - W + r)*m + j, r < W: rows at a pitch of m*E (as `Encoder._view_features`).
    """
    e = layout.frame_row
    frame = Rows(frame_ptr + j * e)
    if windows:
        return frame, Rows(frame_ptr + ((views - windows) * m + j) * e, pitch=m * e)
    if region_ptr is None:
        raise UsageError("snippet_rows: region_emb is needed without region windows")
    return frame, Rows(region_ptr + j * layout.region_row)


def _windows(encoder: Encoder) -> int:
    """Region windows among the preprocessor's views (region extent "frame"), 0 without."""
    spec = getattr(encoder.preprocess, "spec", None)
    return spec.region_grid ** 2 if isinstance(spec, PreprocessSpec) else 0
