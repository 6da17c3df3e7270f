"""Typed results of the runtime: one `SnippetResult` per snippet, with `Box` detections.

Field names reuse the ONNX output names of docs/architecture.md (`score`, `class_probs`, `region_scores`), so a
reader can follow a number from the graph to the JSON line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in original frame pixel coordinates (x2, y2 exclusive)."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {"x1": float(self.x1), "y1": float(self.y1), "x2": float(self.x2), "y2": float(self.y2),
                "score": float(self.score), "class_id": int(self.class_id)}


@dataclass(frozen=True)
class SnippetResult:
    """Everything the runtime knows about one snippet of one stream (built once, never mutated).

    Attributes:
        stream: Stream (camera) id the snippet came from.
        snippet: Snippet index within the stream, from 0.
        frame_start: First frame index of the snippet.
        frame_end: One past the last frame index (the range is [frame_start, frame_end)).
        score: Anomaly score p_t in [0, 1] (temporal C-branch).
        class_probs: [K] class probabilities (A-branch); index 0 is the normal class.
        class_id: argmax of `class_probs`.
        class_name: Name of `class_id`.
        is_anomaly: `score >= threshold` of the detector.
        region_scores: [R2] spatial region scores, or None when the spatial stream did not run.
        anomaly_map: [R, R] region scores as a grid, or None.
        boxes: Boxes from the anomaly map, in original frame pixels.
        timings: Stage name -> milliseconds spent for this snippet (shared batched work is attributed
            to every snippet of the batch).
        final: False for a provisional result of the low-latency mode (`Detector(lookahead=N)`), computed
            before all of the snippet's temporal context was encoded; its final result follows.
    """

    stream: int
    snippet: int
    frame_start: int
    frame_end: int
    score: float
    class_probs: np.ndarray
    class_id: int
    class_name: str
    is_anomaly: bool
    region_scores: np.ndarray | None = None
    anomaly_map: np.ndarray | None = None
    boxes: tuple[Box, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    final: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (arrays become nested lists), one JSON line per snippet."""
        def arr(a: np.ndarray | None) -> list | None:
            return None if a is None else np.asarray(a, dtype=np.float64).round(6).tolist()

        return {
            "stream": int(self.stream),
            "snippet": int(self.snippet),
            "frame_start": int(self.frame_start),
            "frame_end": int(self.frame_end),
            "score": float(self.score),
            "is_anomaly": bool(self.is_anomaly),
            "class_id": int(self.class_id),
            "class_name": self.class_name,
            "class_probs": arr(self.class_probs),
            "region_scores": arr(self.region_scores),
            "anomaly_map": arr(self.anomaly_map),
            "boxes": [b.to_dict() for b in self.boxes],
            "timings": {k: round(float(v), 4) for k, v in self.timings.items()},
            "final": bool(self.final),
        }
