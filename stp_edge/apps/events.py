"""Events from snippets: one "new", a few "update"s and one "end" per anomaly, instead of a line per snippet.

A camera app wants to hear once that a fight started, not 25 times a second that a snippet scored 0.93. The
`EventEngine` turns a camera's final snippet records (`stp_edge.records`) into Frigate-shaped event messages
(`{"type": "new"|"update"|"end", "before": ..., "after": ...}`, docs/schemas/event.schema.json):

- an event opens after `min_snippets` consecutive snippets *trigger* (score >= threshold, inside the zones);
- it updates on a new peak score, a new class or a newly entered zone, at most once per `update_interval_s` of
  event time, except that the first time a class appears in an event is sent at once;
- it ends once no snippet has *held* it (score >= off_threshold, not outside the zones) for `cutoff_s`
  (hysteresis: a dip between the two thresholds, or a short one below both, ends nothing), or when it lasts
  `max_duration_s` (a new event may then open);
- `attach` adds a snapshot or clip to an open or recently ended event (the clip's "ready" update comes only
  once its file is complete).

Records the engine does not use: provisional ones (`final: false`, superseded by their final one) and ones
without a score (`score: null`, an invalid result): such a record neither opens, extends nor ends an event and
does not break a run of triggering snippets, since it says nothing about the scene. Times are the records'
own (`start_time`, `end_time`), so files (media clock) and live streams (wall clock) behave alike. The engine
keeps O(1) state however long the stream: the open event, a pending run, the last few ended events.
"""

from __future__ import annotations

import copy
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from stp_edge.apps.zones import Zone, Zones, region_centres
from stp_edge.errors import UsageError
from stp_edge.records import SCHEMA_VERSION, rfc3339

EVENT = "stp-edge.event"
END_REASONS = ("below_threshold", "max_duration", "stream_end")
ATTACHABLE = ("snapshot", "clip", "clip_ready")
KEEP_ENDED = 64  # ended events `attach` can still update (a clip completes a post-roll after the end)


def _number(name: str, value: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise UsageError(f"event policy: {name} must be a number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]" if math.isfinite(hi) else f"{'>' if lo_open else '>='} {lo}"
        raise UsageError(f"event policy: {name} must be {'in ' if math.isfinite(hi) else ''}{rng}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class EventPolicy:
    """When snippets make an event: thresholds with hysteresis, how many snippets, how often updates, how long.

    Attributes:
        threshold: A snippet triggers when its score is >= this (and it lies in the zones).
        off_threshold: An open event holds while scores stay >= this; None: threshold - 0.1, at least 0.
        min_snippets: Consecutive triggering final snippets that open an event (1 opens on the first).
        update_interval_s: At most one "update" per this many seconds of event time (a class new to the
            event is sent at once).
        cutoff_s: An event ends once no snippet has held it for this long (record times).
        max_duration_s: An event this long ends ("max_duration"); if the scene stays anomalous, a new one opens
            after `min_snippets` more triggering snippets.
        zones: Where anomalies count (`stp_edge.apps.zones`); None or empty: the whole frame.
        region_threshold: A region cell counts for the zones when its score is >= this (snippets without boxes);
            None: `threshold`. An open event holds on cells >= min(this, off_threshold).
        region_mode: The bundle's region layout, "tokens" (grid cells) or "crops" (overlapping windows), which
            places each region's centre on the frame.
    """

    threshold: float = 0.5
    off_threshold: float | None = None
    min_snippets: int = 2
    update_interval_s: float = 5.0
    cutoff_s: float = 2.0
    max_duration_s: float = 300.0
    zones: Zones | None = None
    region_threshold: float | None = None
    region_mode: str = "tokens"

    def __post_init__(self) -> None:
        threshold = _number("threshold", self.threshold, 0.0, 1.0)
        if self.off_threshold is not None:
            off = _number("off_threshold", self.off_threshold, 0.0, 1.0)
            if off > threshold:
                raise UsageError(f"event policy: off_threshold ({off}) must be <= threshold ({threshold}): an "
                                 "event ends when the score falls below the lower, off threshold")
        if self.region_threshold is not None:
            _number("region_threshold", self.region_threshold, 0.0, 1.0)
        if isinstance(self.min_snippets, bool) or not isinstance(self.min_snippets, int) or self.min_snippets < 1:
            raise UsageError(f"event policy: min_snippets must be an integer >= 1, got {self.min_snippets!r}")
        _number("update_interval_s", self.update_interval_s, 0.0)
        _number("cutoff_s", self.cutoff_s, 0.0)
        _number("max_duration_s", self.max_duration_s, 0.0, lo_open=True)
        if self.region_mode not in ("tokens", "crops"):
            raise UsageError(f"event policy: region_mode must be 'tokens' or 'crops', got {self.region_mode!r}")
        zones = self.zones
        if zones is not None and not isinstance(zones, Zones):
            if isinstance(zones, Zone) or not isinstance(zones, Sequence):
                raise UsageError(f"event policy: zones must be a Zones (a list of Zone) or None, got {zones!r}")
            object.__setattr__(self, "zones", Zones(zones))

    @property
    def off_level(self) -> float:
        """The off threshold in effect (`off_threshold`, or threshold - 0.1 clipped at 0)."""
        return float(self.off_threshold) if self.off_threshold is not None else max(0.0, self.threshold - 0.1)

    @property
    def region_level(self) -> float:
        """The region threshold in effect (`region_threshold`, or `threshold`)."""
        return float(self.region_threshold) if self.region_threshold is not None else float(self.threshold)


def default_event_id(camera: str, start_time: float) -> str:
    """`<camera>-<start ms>-<6 random hex>`: sortable by time, unique across restarts."""
    return f"{camera}-{round(start_time * 1000)}-{secrets.token_hex(3)}"


@dataclass
class _Track:
    """An event being built: a run of triggering snippets until it opens, then the open event."""

    event: dict[str, Any]
    count: int = 1
    opened: bool = False
    last_sent: dict[str, Any] | None = None
    last_update_time: float = 0.0
    dirty: bool = False
    labels_seen: set[str] = field(default_factory=set)
    hold_end: float = 0.0  # end_time of the last snippet that held the event
    below_since: float | None = None  # start_time of the first snippet since then that did not


class EventEngine:
    """One camera's event state machine: `add` final snippet records, get event messages back.

    Args:
        camera: The camera's name, in every event and its id.
        policy: Thresholds, timing and zones.
        new_id: `(camera, start_time) -> id` for a new event (default `default_event_id`).
        keep_ended: How many ended events `attach` can still update.
    """

    def __init__(self, camera: str, policy: EventPolicy, *,
                 new_id: Callable[[str, float], str] | None = None, keep_ended: int = KEEP_ENDED) -> None:
        if not isinstance(camera, str) or not camera:
            raise UsageError(f"EventEngine: camera must be a non-empty name, got {camera!r}")
        if not isinstance(policy, EventPolicy):
            raise UsageError(f"EventEngine: policy must be an EventPolicy, got {type(policy).__name__}")
        self.camera = camera
        self.policy = policy
        self._new_id = new_id or default_event_id
        self._keep_ended = max(0, int(keep_ended))
        self._track: _Track | None = None
        self._ended: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._last: tuple[float, int] | None = None  # (end_time, frame_end) of the last scored final record
        self._cells_key: tuple | None = None
        self._cells: tuple[np.ndarray, list[list[str]]] | None = None

    @property
    def open_event(self) -> dict[str, Any] | None:
        """A copy of the open event object (as the next message would carry it), or None."""
        t = self._track
        return copy.deepcopy(t.event) if t is not None and t.opened else None

    def add(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Feed one snippet record (in snippet order); returns the event messages it causes (often none)."""
        if not isinstance(record, Mapping):
            raise UsageError(f"EventEngine.add: expected a snippet record (a dict), got {type(record).__name__}")
        if record.get("camera", self.camera) != self.camera:
            raise UsageError(f"EventEngine for camera {self.camera!r} got a record of camera {record['camera']!r}")
        if record.get("final", True) is False:
            return []
        score = record.get("score")
        if score is None or isinstance(score, bool) or not math.isfinite(float(score)):
            return []
        start, end = _time(record, "start_time"), _time(record, "end_time")
        score = float(score)
        self._last = (end, int(record.get("frame_end") or 0))
        p = self.policy
        triggers, zones_in = self._in_zones(record, score, p.threshold, p.region_level, unknown=False)
        t = self._track
        if t is None or not t.opened:
            if not triggers:
                self._track = None
                return []
            if t is None:
                t = self._track = _Track(self._start(record, score))
            else:
                t.count += 1
            self._absorb(t, record, score, zones_in, trigger=True)
            t.hold_end = end
            return [self._open(t, end)] if t.count >= p.min_snippets else []
        holds, hold_zones = (True, zones_in) if triggers else self._in_zones(
            record, score, p.off_level, min(p.region_level, p.off_level), unknown=True)
        t.event["score"] = score
        if holds:
            self._absorb(t, record, score, hold_zones, trigger=triggers)
            t.hold_end, t.below_since = end, None
        elif t.below_since is None:
            t.below_since = start
        if t.below_since is not None and end - t.below_since >= p.cutoff_s:
            return [self._end(t, "below_threshold", t.hold_end)]
        if end - t.event["start_time"] >= p.max_duration_s:
            return [self._end(t, "max_duration", t.hold_end)]
        return self._maybe_update(t, end)

    def finish(self, reason: str = "stream_end") -> list[dict[str, Any]]:
        """End the open event (the stream ended or the app stops); end_time is the last scored record's."""
        if reason not in END_REASONS:
            raise UsageError(f"EventEngine.finish: reason must be one of {END_REASONS}, got {reason!r}")
        t = self._track
        if t is None or not t.opened or self._last is None:
            self._track = None  # a run that never opened an event is dropped
            return []
        end, frame_end = self._last
        t.event["frame_end"] = max(t.event["frame_end"], frame_end)
        return [self._end(t, reason, max(end, t.event["start_time"]))]

    def attach(self, event_id: str, **fields: Any) -> dict[str, Any] | None:
        """Set `snapshot`, `clip` (paths) or `clip_ready` on an open or recently ended event.

        Returns the "update" message when a value changed; None when nothing changed or the event is unknown
        (never opened here, or older than the last `keep_ended` ended ones).
        """
        unknown = sorted(set(fields) - set(ATTACHABLE))
        if unknown:
            raise UsageError(f"EventEngine.attach: unknown field(s) {unknown}; expected some of {list(ATTACHABLE)}")
        values = {k: _attachable(k, v) for k, v in fields.items()}
        t = self._track
        if t is not None and t.opened and t.event["id"] == event_id:
            if all(t.event[k] == v for k, v in values.items()):
                return None
            t.event.update(values)
            t.dirty = False  # the message carries every pending change
            return self._send(t, "update", count=True)
        ended = self._ended.get(event_id)
        if ended is None or all(ended[k] == v for k, v in values.items()):
            return None
        after = copy.deepcopy(ended)
        after.update(values)
        after["updates"] += 1
        self._ended[event_id] = after
        return _message("update", ended, after)

    def annotate(self, event_id: str, **fields: Any) -> bool:
        """Set `snapshot`, `clip` or `clip_ready` on the open event without a message of its own.

        For the caller that adds them to the message it is about to send (the event's "new" gets its snapshot
        and clip path in the same message): the engine's copy agrees with what went out, and the next message's
        `before` says so. False when `event_id` is not the open event.
        """
        unknown = sorted(set(fields) - set(ATTACHABLE))
        if unknown:
            raise UsageError(f"EventEngine.annotate: unknown field(s) {unknown}; expected some of {list(ATTACHABLE)}")
        t = self._track
        if t is None or not t.opened or t.event["id"] != event_id:
            return False
        values = {k: _attachable(k, v) for k, v in fields.items()}
        t.event.update(values)
        if t.last_sent is not None and t.last_sent.get("id") == event_id:
            t.last_sent.update(values)
        return True

    # -- internals -----------------------------------------------------------------------------------------------

    def _start(self, record: Mapping[str, Any], score: float) -> dict[str, Any]:
        start = _time(record, "start_time")
        return {
            "id": None, "camera": self.camera, "stream": int(record.get("stream") or 0),
            "source": record.get("source"), "label": None, "score": score, "peak_score": -1.0, "peak_time": start,
            "start_time": start, "end_time": None, "timestamp": rfc3339(start),
            "frame_start": int(record.get("frame_start") or 0), "frame_end": int(record.get("frame_end") or 0),
            "boxes": [], "zones": [], "snapshot": None, "clip": None, "clip_ready": False, "end_reason": None,
            "updates": 0,
        }

    def _absorb(self, t: _Track, record: Mapping[str, Any], score: float, zones_in: set[str], *,
                trigger: bool) -> None:
        """Fold a snippet that triggers (or, once open, holds) into the event; mark what a message must say."""
        ev = t.event
        ev["score"] = score
        ev["frame_end"] = max(ev["frame_end"], int(record.get("frame_end") or 0))
        if trigger and score > ev["peak_score"]:
            start, end = _time(record, "start_time"), _time(record, "end_time")
            ev.update(peak_score=score, peak_time=round((start + end) / 2, 3),
                      boxes=copy.deepcopy(list(record.get("boxes") or [])))
            t.dirty = True
        label = _label(record) if trigger else None
        if label is not None and label != ev["label"]:
            ev["label"] = label
            t.dirty = True
        if not zones_in.issubset(ev["zones"]):
            ev["zones"] = sorted(zones_in.union(ev["zones"]))
            t.dirty = True

    def _open(self, t: _Track, now: float) -> dict[str, Any]:
        ev = t.event
        if ev["label"] is None:
            ev["label"] = "anomaly"  # every triggering snippet was of the normal class and had no box
        ev["id"] = self._new_id(self.camera, ev["start_time"])
        if not isinstance(ev["id"], str) or not ev["id"]:
            raise UsageError(f"EventEngine: new_id must return a non-empty string, got {ev['id']!r}")
        t.opened, t.dirty, t.last_update_time = True, False, now
        t.labels_seen.add(ev["label"])
        return self._send(t, "new")

    def _maybe_update(self, t: _Track, now: float) -> list[dict[str, Any]]:
        if not t.dirty:
            return []
        new_class = t.event["label"] not in t.labels_seen
        if not new_class and now - t.last_update_time < self.policy.update_interval_s:
            return []
        t.labels_seen.add(t.event["label"])
        t.dirty, t.last_update_time = False, now
        return [self._send(t, "update", count=True)]

    def _end(self, t: _Track, reason: str, end_time: float) -> dict[str, Any]:
        t.event.update(end_time=round(end_time, 3), end_reason=reason)
        message = self._send(t, "end")
        self._track = None
        if self._keep_ended:
            self._ended[t.event["id"]] = t.last_sent
            while len(self._ended) > self._keep_ended:
                self._ended.popitem(last=False)
        return message

    def _send(self, t: _Track, kind: str, *, count: bool = False) -> dict[str, Any]:
        if count:
            t.event["updates"] += 1
        before, t.last_sent = t.last_sent, copy.deepcopy(t.event)
        return _message(kind, before, t.last_sent)

    def _in_zones(self, record: Mapping[str, Any], score: float, level: float, region_level: float, *,
                  unknown: bool) -> tuple[bool, set[str]]:
        """(passes, watched zones entered) at a score level: the score, then the boxes or else the region cells.

        With zones, a snippet's boxes decide; without boxes its region cells >= `region_level` do; with neither
        (the spatial stream did not run, or failed) the answer is `unknown`: True to hold an open event, False
        to open one, since where the anomaly lies cannot be told.
        """
        if score < level:
            return False, set()
        zones = self.policy.zones
        if not zones:
            return True, set()
        norms = [n for n in (_norm(b, record.get("frame_size")) for b in record.get("boxes") or []) if n]
        if norms:
            admitted = [n for n in norms if zones.admits_box(n)]
            return bool(admitted), {name for n in admitted for name in zones.zones_of(n)}
        regions = record.get("region_scores")
        if regions:
            mask, names = self._region_cells(len(regions), record.get("frame_size"))
            hits = [i for i, s in enumerate(regions) if s is not None and s >= region_level and mask[i]]
            return bool(hits), {name for i in hits for name in names[i]}
        return unknown, set()

    def _region_cells(self, n: int, frame_size: Any) -> tuple[np.ndarray, list[list[str]]]:
        """(flat region mask, watched zones at each cell's centre), cached for the last grid and frame size."""
        grid = math.isqrt(n)
        if grid * grid != n:
            raise UsageError(f"snippet record: region_scores has {n} values, not a square grid's R*R")
        wh = tuple(frame_size) if isinstance(frame_size, Sequence) and len(frame_size) == 2 else None
        key = (grid, wh)
        if key != self._cells_key or self._cells is None:
            zones = self.policy.zones or Zones()
            mode, centres = self.policy.region_mode, region_centres(grid, wh, mode=self.policy.region_mode)
            mask = zones.region_mask(grid, wh, mode=mode).reshape(-1)
            self._cells_key, self._cells = key, (mask, [zones.zones_at(x, y) for x, y in centres])
        return self._cells


def _message(kind: str, before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """A message of its own: deep copies, so neither the engine nor a receiver can change the other's."""
    return {"schema": EVENT, "schema_version": SCHEMA_VERSION, "type": kind,
            "before": copy.deepcopy(before), "after": copy.deepcopy(after)}


def _time(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"snippet record {record.get('snippet', '?')}: {key} must be epoch seconds, got {value!r}")
    return float(value)


def _label(record: Mapping[str, Any]) -> str | None:
    """The snippet's abnormal class: its class unless that is the normal one (0), else its first box's class."""
    name, class_id = record.get("class_name"), record.get("class_id")
    if name and class_id != 0:
        return str(name)
    for box in record.get("boxes") or []:
        if box.get("class_name") and box.get("class_id") != 0:
            return str(box["class_name"])
    return None


def _norm(box: Mapping[str, Any], frame_size: Any) -> list[float] | None:
    """A record box's normalised [x1, y1, x2, y2]: its `norm`, else its pixels over the frame size."""
    norm = box.get("norm")
    if isinstance(norm, Sequence) and len(norm) == 4:
        return [float(v) for v in norm]
    if isinstance(frame_size, Sequence) and len(frame_size) == 2 and frame_size[0] and frame_size[1]:
        w, h = float(frame_size[0]), float(frame_size[1])
        try:
            return [box["x1"] / w, box["y1"] / h, box["x2"] / w, box["y2"] / h]
        except (KeyError, TypeError):
            return None
    return None


def _attachable(key: str, value: Any) -> Any:
    if key == "clip_ready":
        if not isinstance(value, bool):
            raise UsageError(f"EventEngine.attach: clip_ready must be true or false, got {value!r}")
        return value
    if value is None:
        return None
    if isinstance(value, PathLike):
        value = str(value.__fspath__())
    if not isinstance(value, str) or not value:
        raise UsageError(f"EventEngine.attach: {key} must be a path (a string) or None, got {value!r}")
    return value
