"""Typed results of the runtime: one `SnippetResult` per snippet, with `Box` detections.

Field names reuse the ONNX output names of docs/architecture.md (`score`, `class_probs`, `region_scores`), so a
reader can follow a number from the graph to the JSON line. `expand_snippets` / `frame_scores` turn per-snippet
values into per-frame ones, by the one rule the runtime, the plots and the evaluation share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stp_edge.errors import UsageError


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
        score: Anomaly score p_t in [0, 1] (temporal C-branch); NaN when the temporal stream gave none (`invalid`).
        class_probs: [K] class probabilities (A-branch); index 0 is the normal class; NaN when `score` is.
        class_id: argmax of `class_probs`; -1 when `score` is NaN.
        class_name: Name of `class_id`; "" when `score` is NaN.
        is_anomaly: `score >= threshold` of the detector; None (neither normal nor anomalous) when `score` is NaN.
        region_scores: [R2] spatial region scores, or None when the spatial stream did not run (or failed).
        anomaly_map: [R, R] region scores as a grid, or None.
        boxes: Boxes from the anomaly map, in original frame pixels.
        timings: Stage name -> milliseconds spent for this snippet (shared batched work is attributed
            to every snippet of the batch).
        final: False for a provisional result of the low-latency mode (`Detector(lookahead=N)`), computed
            before all of the snippet's temporal context was encoded; its final result follows.
        invalid_reason: Why part or all of this result is missing, or None (`valid`): a graph call that failed
            (and its retry), or a graph output its contract forbids (NaN, inf, out of range, wrong shape); it
            names graph, output and snippet. The temporal stream missing: `score` is NaN and `is_anomaly` None;
            the spatial stream missing: the score stands, `region_scores`, `anomaly_map` and boxes are empty.
        sampled: Stream frame index of each frame the encoder read for this snippet (one by default).
        sampling: How they were chosen: "center" (the evenly spaced offsets, the middle frame by default) or
            "keyframe" (the snippet's first keyframe; a snippet without one under keyframe sampling says
            "center"). See `stp_edge.pipeline.snippets`.
        frame_shape: (height, width) of the stream's frames, which `boxes` are in pixels of; (0, 0) unknown.
    """

    stream: int
    snippet: int
    frame_start: int
    frame_end: int
    score: float
    class_probs: np.ndarray
    class_id: int
    class_name: str
    is_anomaly: bool | None
    region_scores: np.ndarray | None = None
    anomaly_map: np.ndarray | None = None
    boxes: tuple[Box, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    final: bool = True
    invalid_reason: str | None = None
    sampled: tuple[int, ...] = ()
    sampling: str = "center"
    frame_shape: tuple[int, int] = (0, 0)

    @property
    def valid(self) -> bool:
        """True when every field was computed from graph outputs that kept their contract."""
        return self.invalid_reason is None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (arrays become nested lists), one JSON line per snippet.

        Strict JSON: a number that is not finite is written as null (never NaN), an array holding one as null,
        and an invalid result carries `"invalid": "<reason>"` (the key is absent on valid results).
        """
        def arr(a: np.ndarray | None) -> list | None:
            if a is None:
                return None
            a = np.asarray(a, dtype=np.float64)
            return a.round(6).tolist() if a.size and np.isfinite(a).all() else None

        score = finite_or_none(self.score)
        record = {
            "stream": int(self.stream),
            "snippet": int(self.snippet),
            "frame_start": int(self.frame_start),
            "frame_end": int(self.frame_end),
            "score": score,
            "is_anomaly": None if score is None or self.is_anomaly is None else bool(self.is_anomaly),
            "class_id": None if score is None else int(self.class_id),
            "class_name": None if score is None else self.class_name,
            "class_probs": arr(self.class_probs),
            "region_scores": arr(self.region_scores),
            "anomaly_map": arr(self.anomaly_map),
            "boxes": [b.to_dict() for b in self.boxes],
            "timings": {k: None if finite_or_none(v) is None else round(float(v), 4) for k, v in self.timings.items()},
            "final": bool(self.final),
            "sampled": [int(i) for i in self.sampled],
            "sampling": str(self.sampling),
        }
        if self.invalid_reason is not None:
            record["invalid"] = str(self.invalid_reason)
        return record


def finite_or_none(value: float | None) -> float | None:
    """`value` as a float, or None when it is None, NaN or infinite (strict JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def expand_snippets(values: np.ndarray, num_frames: int, snippet_len: int = 16,
                    ranges: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Per-snippet values -> per-frame values (float64); snippet i covers frames [start_i, end_i).

    By default snippet i covers [i * snippet_len, (i + 1) * snippet_len) clipped to the video. A frame no
    snippet covers (a gap, or a tail too short for a last snippet) takes the value of the nearest covered
    frame, the earlier one on a tie; where ranges overlap, the later snippet wins. Trailing dimensions are
    kept, so boxes [n,4] expand to [num_frames,4].

    Raises:
        ValueError: `ranges` does not match `values`, a range is empty or negative, or no snippet covers any
            of `num_frames` > 0 frames.
    """
    values = np.asarray(values)
    n = values.shape[0]
    if ranges is None:
        ranges = [(i * snippet_len, min((i + 1) * snippet_len, num_frames)) for i in range(n)]
    if len(ranges) != n:
        raise UsageError(f"{n} snippet values but {len(ranges)} ranges")
    out = np.full((num_frames, *values.shape[1:]), np.nan, dtype=np.float64)
    covered = np.zeros(num_frames, bool)
    for v, (s, e) in zip(values, ranges, strict=True):
        if not 0 <= s < e:
            raise UsageError(f"snippet range [{s}, {e}) is empty or negative")
        out[s:min(e, num_frames)] = v
        covered[s:min(e, num_frames)] = True
    if num_frames and not covered.any():
        raise UsageError(f"no snippet covers any of the {num_frames} frames")
    if not covered.all():
        idx, frames = np.flatnonzero(covered), np.arange(num_frames)
        pos = np.searchsorted(idx, frames)
        after = idx[np.clip(pos, 0, len(idx) - 1)]  # first covered frame at or after each frame
        before = idx[np.clip(pos - 1, 0, len(idx) - 1)]  # last covered frame before it
        pick = np.where(np.abs(before - frames) <= np.abs(after - frames), before, after)
        out[~covered] = out[pick[~covered]]
    return out


def frame_scores(results: Iterable[SnippetResult], num_frames: int | None = None) -> np.ndarray:
    """Per-frame anomaly scores of one stream's results, by `expand_snippets`' rule.

    Args:
        results: The stream's results in emission order (a final result after its provisional one wins).
        num_frames: Frames of the video; default up to the last result's `frame_end`.
    """
    results = list(results)
    n = num_frames if num_frames is not None else max((r.frame_end for r in results), default=0)
    return expand_snippets(np.array([r.score for r in results], float), n,
                           ranges=[(r.frame_start, r.frame_end) for r in results])
