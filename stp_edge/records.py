"""Records for machines: what every JSONL line, MQTT message and webhook carries about one snippet, gap or drop.

A `SnippetResult` says what the model found in frames [frame_start, frame_end) of stream N. A camera app also
needs to know which camera that was, when (as epoch seconds and as an RFC 3339 UTC timestamp with
milliseconds, the shape DeepStream's message converter writes), and where the boxes are in coordinates that
survive a resolution change. `snippet_record` adds exactly that, under a schema name and version a reader can
check (docs/schemas/snippet.schema.json; `SCHEMA_VERSION` changes only when a field changes meaning or goes).

Times: a live source's frames are stamped with the wall clock when they were read (`clock: "wall"`); a file's
with its media time, frame index over the container's frame rate, added to the moment the run started reading
it (`clock: "media"`; `media_time` is the position in the file, in seconds).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from stp_edge.results import Box, SnippetResult, finite_or_none

SCHEMA_VERSION = 1
SNIPPET = "stp-edge.snippet"
GAP = "stp-edge.gap"
DROPPED = "stp-edge.dropped"
CLOCKS = ("wall", "media")


def rfc3339(epoch_s: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (rounded): "2026-12-07T20:40:00.120Z"."""
    ms = round(float(epoch_s) * 1000)
    t = _dt.datetime.fromtimestamp(ms // 1000, tz=_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def box_record(box: Box, frame_shape: tuple[int, int], class_names: Sequence[str]) -> dict[str, Any]:
    """A box in pixels and normalised to the frame (0-1, x2/y2 exclusive), with its class name."""
    h, w = frame_shape
    out = box.to_dict()
    out["class_name"] = class_names[box.class_id] if 0 <= box.class_id < len(class_names) else ""
    out["norm"] = ([round(box.x1 / w, 6), round(box.y1 / h, 6), round(box.x2 / w, 6), round(box.y2 / h, 6)]
                   if w > 0 and h > 0 else None)
    return out


def _head(schema: str, *, camera: str, stream: int, source: str) -> dict[str, Any]:
    return {"schema": schema, "schema_version": SCHEMA_VERSION, "camera": camera, "stream": int(stream),
            "source": source}


def snippet_record(r: SnippetResult, *, camera: str, source: str, start_time: float, end_time: float,
                   clock: str, media_time: float | None, threshold: float | None = None,
                   class_names: Sequence[str] = (), fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """One snippet as a record (docs/schemas/snippet.schema.json).

    Args:
        r: The result (its `to_dict()` fields are kept, boxes gain `class_name` and `norm`).
        camera: The camera's name.
        source: Its source with credentials masked (`stp_edge.video.display_source`).
        start_time: Epoch seconds of the snippet's first frame.
        end_time: Epoch seconds of the end of its last frame.
        clock: "wall" (live: when the frames were read) or "media" (files: position in the file).
        media_time: Seconds from the start of the source to the first frame, or None where unknown.
        threshold: The camera's score threshold: `is_anomaly` is `score >= threshold` (default: the detector's).
        class_names: The model's classes, to name each box's class.
        fields: Extra fields for every record (`{"random_weights": true}`).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    record = _head(SNIPPET, camera=camera, stream=r.stream, source=source)
    start = round(float(start_time), 3)
    media = finite_or_none(media_time)
    record.update(start_time=start, end_time=round(float(end_time), 3), timestamp=rfc3339(start), clock=clock,
                  media_time=None if media is None else round(media, 3))
    body = r.to_dict()
    if threshold is not None and body["score"] is not None:
        body["is_anomaly"] = bool(body["score"] >= threshold)
    body["threshold"] = None if threshold is None else float(threshold)
    body["frame_size"] = [int(r.frame_shape[1]), int(r.frame_shape[0])] if r.frame_shape[0] else None
    body["boxes"] = [box_record(b, r.frame_shape, class_names) for b in r.boxes]
    record.update(body)
    record.update(fields or {})
    return record


def gap_record(*, camera: str, stream: int, source: str, frame: int, lost_s: float, attempts: int,
               time_s: float) -> dict[str, Any]:
    """A live source's outage that ended in a reconnect before `frame` (`time_s`: when the stream came back)."""
    record = _head(GAP, camera=camera, stream=stream, source=source)
    record.update(time=round(float(time_s), 3), timestamp=rfc3339(time_s),
                  gap={"stream": int(stream), "frame": int(frame), "lost_s": round(float(lost_s), 3),
                       "attempts": int(attempts)})
    return record


def drop_record(*, camera: str, stream: int, source: str, frame: int, frames: int, snippets: int,
                time_s: float) -> dict[str, Any]:
    """Whole snippets a live source dropped to keep real time: frames [frame, frame + frames) not analysed."""
    record = _head(DROPPED, camera=camera, stream=stream, source=source)
    record.update(time=round(float(time_s), 3), timestamp=rfc3339(time_s),
                  dropped={"stream": int(stream), "frame": int(frame), "frames": int(frames),
                           "snippets": int(snippets)})
    return record
