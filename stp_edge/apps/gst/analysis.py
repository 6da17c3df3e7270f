"""What the `stpedge` element computes, without GStreamer: detector, record times, events, overlay.

The element (`python/stpedge.py`) is glue: it maps each buffer to a BGR array and hands it here with its media
time; `Analysis.push` returns the snippet records (`stp_edge.records`) and event messages
(`stp_edge.apps.events`) the frame completed, which the element posts on the bus and attaches to the buffer.
Keeping this apart lets the same logic run under DeepStream's Python bindings or an appsink.

Times: a record's `media_time` is the buffer PTS of its first frame; its epoch `start_time` is the wall clock
when the first buffer arrived plus the PTS difference since that buffer. `clock` is "wall" for a live pipeline
(the PTS follow the clock), "media" for a file.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.errors import UsageError
from stp_edge.results import SnippetResult

SPATIAL = ("flagged", "all", "off")
EVENT_TYPES = {"new": "begin", "update": "update", "end": "end"}  # EventEngine type -> bus message type


@dataclass
class Settings:
    """The element's properties, as the analysis takes them (None: the bundle's or the policy's default).

    Attributes:
        bundle: Bundle directory.
        camera: Name written in records and events.
        source: The source as records name it (credentials masked by the caller).
        backend: `Detector.load` backend ("auto", "ort-cpu", "trt", ...).
        threshold: Score threshold (None: the bundle's `score_threshold`).
        spatial: "flagged", "all", "off" (None: the bundle's).
        lookahead: Provisional results N snippets after theirs (None: final results only).
        off_threshold: Score below which an open event starts to end (None: the threshold).
        min_snippets: Snippets in a row at or above the threshold that open an event (None: the policy's).
    """

    bundle: str
    camera: str
    source: str = ""
    backend: str = "auto"
    threshold: float | None = None
    spatial: str | None = None
    lookahead: int | None = None
    off_threshold: float | None = None
    min_snippets: int | None = None


@dataclass
class Step:
    """What one frame (or the end of the stream) produced: records in result order, then event messages."""

    records: list[dict[str, Any]]
    events: list[dict[str, Any]]


class Analysis:
    """One camera's detector, its frame times, its event engine and the latest result (for the overlay)."""

    def __init__(self, settings: Settings) -> None:
        from stp_edge.api import Detector
        from stp_edge.apps.events import EventEngine, EventPolicy

        if not settings.bundle:
            raise UsageError("the bundle property is required: stpedge bundle=PATH.stp")
        if not Path(settings.bundle).is_dir():
            raise UsageError(f"bundle {settings.bundle!r}: no such directory")
        if settings.spatial is not None and settings.spatial not in SPATIAL:
            raise UsageError(f"spatial must be one of {SPATIAL}, got {settings.spatial!r}")
        self.settings = settings
        self.detector = Detector.load(settings.bundle, backend=_without_openvino(settings.backend, settings.bundle),
                                      spatial_on=settings.spatial, lookahead=settings.lookahead)
        if settings.threshold is not None:
            self.detector.score_threshold = float(settings.threshold)  # is_anomaly and the spatial gate use it
        self.threshold = self.detector.score_threshold
        policy: dict[str, Any] = {"threshold": self.threshold, "region_mode": self.detector.config.region_mode}
        if settings.off_threshold is not None:
            policy["off_threshold"] = float(settings.off_threshold)
        if settings.min_snippets is not None:
            policy["min_snippets"] = int(settings.min_snippets)
        self.events = EventEngine(settings.camera, EventPolicy(**policy))
        self.class_names = tuple(self.detector.config.class_names)
        self.frames = 0  # frames pushed
        self.live = False
        self.latest: SnippetResult | None = None
        self._anchor: float | None = None  # epoch of media time 0
        self._times: dict[int, tuple[float, float]] = {}  # frame -> (media s, duration s), until its snippet ends

    @property
    def snippet_len(self) -> int:
        """Frames per snippet."""
        return int(self.detector.config.snippet_len)

    def push(self, frame: np.ndarray, media_s: float, duration_s: float, *, live: bool = False) -> Step:
        """Add one BGR frame (any layout numpy accepts; the detector copies what it keeps) at `media_s` seconds."""
        if self._anchor is None:
            self._anchor, self.live = time.time() - media_s, live
        results = self.detector.push(frame)
        self._times[self.frames] = (float(media_s), float(duration_s))
        self.frames += 1
        return self._step(results, finish=False)

    def finish(self) -> Step:
        """End of stream: the pending results and the end of any open event."""
        if self.frames == 0:
            return Step([], self.events.finish())
        results = self.detector.flush()
        return self._step(results, finish=True)

    def _step(self, results: list[SnippetResult], *, finish: bool) -> Step:
        from stp_edge.records import snippet_record

        records, events = [], []
        for r in results:
            start, _ = self._times.get(r.frame_start, (math.nan, 0.0))
            last, dur = self._times.get(r.frame_end - 1, (start, 0.0))
            record = snippet_record(r, camera=self.settings.camera, source=self.settings.source,
                                    start_time=self._anchor + start, end_time=self._anchor + last + dur,
                                    clock="wall" if self.live else "media", media_time=start,
                                    threshold=self.threshold, class_names=self.class_names)
            records.append(record)
            if r.final:
                events += self.events.add(record)
                for k in [k for k in self._times if k < r.frame_end]:  # inserted in order: the oldest
                    del self._times[k]
            if math.isfinite(r.score):
                self.latest = r
        if finish:
            events += self.events.finish()
        return Step(records, events)

    def draw(self, frame: np.ndarray) -> np.ndarray:
        """`frame` (BGR) with the latest result drawn: anomaly map, boxes, score bar and class (a new array)."""
        from stp_edge.geometry import crop_square_pixels
        from stp_edge.visualize import draw_hud, heatmap_overlay

        r = self.latest
        if r is None:
            return draw_hud(frame, None, None, self.threshold)
        if r.anomaly_map is not None:
            frame = heatmap_overlay(frame, r.anomaly_map, crop_square_pixels(frame.shape[:2]))
        boxes = [(b.x1, b.y1, b.x2, b.y2) for b in r.boxes]
        return draw_hud(frame, float(r.score), r.class_name, self.threshold, boxes)

    def close(self) -> None:
        """Release the detector's runners."""
        self.detector.close()


def snippet_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a "stpedge-snippet" bus message: the record's scalars, and the whole record as JSON."""
    keys = ("camera", "stream", "snippet", "frame_start", "frame_end", "score", "class_name", "is_anomaly",
            "final", "start_time", "end_time", "media_time", "timestamp", "clock", "invalid")
    return {**{k: record.get(k) for k in keys}, "record": json.dumps(record)}


def meta_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a `StpEdgeMeta`: score, class, decision, snippet and frame range, boxes as JSON."""
    keys = ("score", "class_name", "is_anomaly", "snippet", "frame_start", "frame_end", "final", "start_time")
    return {**{k: record.get(k) for k in keys}, "boxes": json.dumps(record.get("boxes") or [])}


def event_fields(message: dict[str, Any]) -> dict[str, Any]:
    """The fields of a "stpedge-event" bus message: type begin/update/end, the event's scalars, all as JSON."""
    after = message.get("after") or {}
    keys = ("id", "camera", "label", "score", "peak_score", "start_time", "end_time", "end_reason")
    return {"type": EVENT_TYPES.get(message.get("type", ""), message.get("type")),
            **{k: after.get(k) for k in keys}, "event": json.dumps(message)}


def _without_openvino(backend: str, bundle: str) -> str:
    """`backend`, or ONNX Runtime's CPU backend where "auto" would pick OpenVINO; OpenVINO asked for is refused.

    OpenVINO aborts inside a GStreamer process here (Debian's GStreamer 1.22 loads the system libunwind, whose
    `_Unwind_Resume` cannot unwind the C++ exceptions OpenVINO throws and catches while it loads its plugins:
    `terminate`, measured with gdb), so the element never starts it.
    """
    from stp_edge.backends import choose_backend
    from stp_edge.bundle import Bundle

    if backend.startswith("openvino"):
        raise UsageError(f"backend {backend!r} cannot run inside a GStreamer pipeline (OpenVINO aborts there: the "
                         "system libunwind GStreamer loads cannot unwind its exceptions); use ort-cpu")
    if backend == "auto" and choose_backend(backend, Bundle.load(bundle)).name.startswith("openvino"):
        return "ort-cpu"
    return backend

