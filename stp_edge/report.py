"""Summaries of a run that stay bounded on endless sources: anomaly events and per-stage latency.

`EventTracker` merges consecutive anomalous snippets of each stream into events as results arrive;
`LatencyStats` keeps the latest per-stage timings in fixed-size windows. Both take one result at a time, so a
camera that runs for months costs the same memory on day 90 as on day 1. `merge_events` and `latency_table`
are the same over a finished list of results.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from stp_edge.results import SnippetResult

STAGES = ("decode", "preprocess", "encoder", "temporal", "spatial", "post")


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`n` and the noun in the number it takes: "1 snippet", "2 snippets", "0 snippets" (`nouns` if irregular)."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def span(frame_start: int, frame_end: int, fps: float | None) -> str:
    """A frame range in seconds when the frame rate is known, else in frames: "  1.92s -    2.56s"."""
    if fps:
        return f"{frame_start / fps:7.2f}s - {frame_end / fps:7.2f}s"
    return f"frames {frame_start}-{frame_end}"


@dataclass(frozen=True)
class Event:
    """Consecutive anomalous snippets of one stream merged into one event."""

    stream: int
    frame_start: int
    frame_end: int
    class_name: str
    peak_score: float
    box: tuple[float, float, float, float] | None

    def describe(self, fps: float | Mapping[int, float | None] | None) -> str:
        """One line: time range, class, peak score, box.

        `fps` is the frame rate of this event's stream, or of every stream (stream -> fps, for a run of several
        sources); the range is in seconds where the rate is known, in frames where it is not.
        """
        rate = fps.get(self.stream) if isinstance(fps, Mapping) else fps
        box = "no box" if self.box is None else "box ({:.0f},{:.0f})-({:.0f},{:.0f})".format(*self.box)
        return (f"stream {self.stream}  {span(self.frame_start, self.frame_end, rate)}  {self.class_name:<17} "
                f"peak score {self.peak_score:.2f}  {box}")


@dataclass
class _Run:
    first: SnippetResult
    last: SnippetResult
    prob_sum: np.ndarray
    peak: SnippetResult
    boxed: SnippetResult | None


class EventTracker:
    """Merges each stream's consecutive anomalous final results into `Event`s, one result at a time.

    An event's class is the anomaly class with the highest mean probability over the run; its box is the top
    box of the highest-scoring snippet that has one. The latest `keep` events are kept (`events`); `count`
    counts them all. Provisional results (`final=False`) are ignored: their final result follows.
    """

    def __init__(self, class_names: Sequence[str], keep: int = 1000) -> None:
        self.class_names = list(class_names)
        self.events: deque[Event] = deque(maxlen=keep)
        self.count = 0
        self._open: dict[int, _Run] = {}

    def add(self, r: SnippetResult) -> None:
        """Account for one result."""
        if not r.final:
            return
        run = self._open.get(r.stream)
        if run is not None and not (r.is_anomaly and r.snippet == run.last.snippet + 1):
            self._close(r.stream)
            run = None
        if not r.is_anomaly:
            return
        if run is None:
            self._open[r.stream] = _Run(r, r, np.asarray(r.class_probs, np.float64), r, r if r.boxes else None)
            return
        run.last = r
        run.prob_sum = run.prob_sum + r.class_probs
        if r.score > run.peak.score:
            run.peak = r
        if r.boxes and (run.boxed is None or r.score > run.boxed.score):
            run.boxed = r

    def finish(self) -> list[Event]:
        """Close every open event (the streams ended); returns the kept events in order."""
        for stream in list(self._open):
            self._close(stream)
        return list(self.events)

    def _close(self, stream: int) -> None:
        run = self._open.pop(stream)
        anomaly = 1 + int(np.argmax(run.prob_sum[1:]))
        name = self.class_names[anomaly] if anomaly < len(self.class_names) else str(anomaly)
        b = run.boxed.boxes[0] if run.boxed is not None else None
        self.events.append(Event(stream, run.first.frame_start, run.last.frame_end, name, float(run.peak.score),
                                 None if b is None else (b.x1, b.y1, b.x2, b.y2)))
        self.count += 1


def merge_events(results: Iterable[SnippetResult], class_names: Sequence[str]) -> list[Event]:
    """Runs of consecutive anomalous snippets (per stream) -> events, over a finished list of results."""
    tracker = EventTracker(class_names, keep=1 << 30)
    for r in results:
        tracker.add(r)
    return tracker.finish()


@dataclass
class LatencyStats:
    """The latest `window` timings of each stage (ms per snippet), for medians and tails of a long run."""

    window: int = 10_000
    _values: dict[str, deque[float]] = field(default_factory=dict)

    def add(self, r: SnippetResult) -> None:
        """Account for one result's timings (final results only: a provisional one shares its work)."""
        if not r.final:
            return
        total = 0.0
        for stage in STAGES:
            if stage in r.timings:
                self._values.setdefault(stage, deque(maxlen=self.window)).append(r.timings[stage])
                total += r.timings[stage]
        self._values.setdefault("total", deque(maxlen=self.window)).append(total)

    def table(self) -> dict[str, dict[str, float]]:
        """Stage -> {"median", "p90"} in ms; stages in data-flow order, then "total"."""
        return {stage: {"median": float(np.median(v)), "p90": float(np.percentile(v, 90))}
                for stage in (*STAGES, "total") if (v := self._values.get(stage))}


def latency_table(results: Iterable[SnippetResult]) -> dict[str, dict[str, float]]:
    """Median and 90th percentile of each stage's time per snippet (ms), over a finished list of results."""
    stats = LatencyStats(window=1 << 30)
    for r in results:
        stats.add(r)
    return stats.table()


def format_latency(table: dict[str, dict[str, float]]) -> list[str]:
    """The latency table as printed lines."""
    lines = ["latency per snippet (ms)   median      p90"]
    lines += [f"  {stage:<22} {v['median']:8.2f} {v['p90']:8.2f}" for stage, v in table.items()]
    return lines
