"""Event snapshots: a small JPEG of the peak frame with its boxes, written to disk and linked from the event.

A snapshot is never pushed anywhere (MQTT and webhook payloads carry its path, not its bytes). The frame of the
peak snippet is no longer in hand when the event logic learns it is the peak, so `SnapshotKeeper` keeps, per
stream, the sampled frame of each of the last few snippets, already downscaled, for the service to write.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stp_edge.errors import UsageError
from stp_edge.outputs import OutputError, write_atomic

BOX_COLOUR = (0, 0, 255)  # BGR red, as stp_edge.visualize draws boxes


def downscale(frame_bgr: np.ndarray, max_width: int) -> np.ndarray:
    """A copy of `frame_bgr` no wider than `max_width` (aspect ratio kept; INTER_AREA, which does not alias)."""
    frame = _check_frame(frame_bgr)
    h, w = frame.shape[:2]
    if max_width < 16:
        raise UsageError(f"snapshot max_width must be >= 16 pixels, got {max_width}")
    if w <= max_width:
        return frame.copy()
    new_h = max(1, round(h * max_width / w))
    return cv2.resize(frame, (max_width, new_h), interpolation=cv2.INTER_AREA)


def _check_frame(frame_bgr: Any) -> np.ndarray:
    shape, dtype = getattr(frame_bgr, "shape", None), getattr(frame_bgr, "dtype", None)
    if dtype != np.uint8 or shape is None or len(shape) != 3 or shape[2] != 3 or shape[0] < 1 or shape[1] < 1:
        raise UsageError(f"snapshot frame must be a uint8 (H, W, 3) BGR image, got {dtype} {shape}")
    return frame_bgr


def _box_corners(box: Mapping[str, Any] | Sequence[float], scale: tuple[float, float],
                 size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel corners on the snapshot: a record box's `norm` (0-1) when it has one, else pixels times `scale`."""
    w, h = size
    if isinstance(box, Mapping):
        if box.get("norm") is not None:
            nx1, ny1, nx2, ny2 = (float(v) for v in box["norm"])
            return round(nx1 * w), round(ny1 * h), round(nx2 * w) - 1, round(ny2 * h) - 1
        coords = [box[k] for k in ("x1", "y1", "x2", "y2")]
    else:
        coords = list(box)[:4]
    x1, y1, x2, y2 = (float(v) for v in coords)
    sx, sy = scale
    return round(x1 * sx), round(y1 * sy), round(x2 * sx) - 1, round(y2 * sy) - 1


def draw_boxes(frame_bgr: np.ndarray, boxes: Iterable[Mapping[str, Any] | Sequence[float]],
               frame_size: tuple[int, int] | None = None) -> np.ndarray:
    """Boxes (record dicts or (x1, y1, x2, y2)) with "class score" labels drawn on a copy of `frame_bgr`.

    Args:
        frame_bgr: The image to draw on (often a downscaled frame).
        boxes: Record boxes (`norm` used when present, x2/y2 exclusive) or pixel tuples.
        frame_size: (width, height) the boxes' pixel coordinates refer to; default the image's own size.
    """
    out = _check_frame(frame_bgr).copy()
    h, w = out.shape[:2]
    fw, fh = frame_size or (w, h)
    thick = max(2, w // 240)
    for box in boxes:
        x1, y1, x2, y2 = _box_corners(box, (w / fw, h / fh), (w, h))
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thick)
        label = _label(box)
        if label:
            scale = max(0.35, h / 900)
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + 2
            cv2.rectangle(out, (x1, ty - th - 1), (x1 + tw + 2, ty + base - 1), BOX_COLOUR, -1)
            cv2.putText(out, label, (x1 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                        cv2.LINE_AA)
    return out


def _label(box: Mapping[str, Any] | Sequence[float]) -> str:
    if not isinstance(box, Mapping):
        return ""
    name, score = box.get("class_name"), box.get("score")
    parts = [str(name)] if name else []
    if isinstance(score, (int, float)):
        parts.append(f"{float(score):.2f}")
    return " ".join(parts)


def write_snapshot(frame_bgr: np.ndarray, path: str | os.PathLike, *,
                   boxes: Iterable[Mapping[str, Any] | Sequence[float]] = (), max_width: int = 640,
                   quality: int = 85, frame_size: tuple[int, int] | None = None) -> Path:
    """Write a small JPEG of `frame_bgr` (downscaled to `max_width`, `boxes` drawn) atomically; returns its path.

    The JPEG goes to a hidden temporary file beside `path`, is fsynced and renamed over it, so a reader (or a
    user following the event's link) never sees half a picture.

    Args:
        frame_bgr: uint8 (H, W, 3) BGR frame.
        path: Destination (.jpg); missing directories are created.
        boxes: Record boxes or (x1, y1, x2, y2) pixel tuples in `frame_size` coordinates.
        max_width: The snapshot's largest width in pixels.
        quality: JPEG quality 1-100.
        frame_size: (width, height) the boxes' pixels refer to, when `frame_bgr` is already downscaled (as
            `SnapshotKeeper` keeps frames); default the frame's own size.
    """
    if not 1 <= int(quality) <= 100:
        raise UsageError(f"snapshot quality must be 1-100, got {quality}")
    frame = _check_frame(frame_bgr)
    size = frame_size or (frame.shape[1], frame.shape[0])
    small = draw_boxes(downscale(frame, max_width), boxes, size)
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    dest = Path(path)
    if not ok:
        raise OutputError(f"snapshot {dest}: OpenCV could not encode a {small.shape[1]}x{small.shape[0]} JPEG")
    return write_atomic(dest, data.tobytes(), what="snapshot")


class SnapshotKeeper:
    """The sampled frame of each of the last `keep` snippets of one stream, downscaled; thread-safe.

    The detector thread adds a frame per snippet; the event logic, which learns later which snippet was the
    peak, gets it back by snippet index to write the snapshot. Memory: at most `keep` frames of `max_width`.
    Frames are stored at their downscaled size: pass `frame_size=keeper.frame_size(i)` (the original size) to
    `write_snapshot` so that pixel boxes land where they belong.
    """

    def __init__(self, keep: int = 8, max_width: int = 640) -> None:
        if keep < 1:
            raise UsageError(f"SnapshotKeeper keep must be >= 1, got {keep}")
        self.keep, self.max_width = int(keep), int(max_width)
        self._frames: OrderedDict[int, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, snippet_index: int, frame: np.ndarray) -> None:
        """Keep `frame` (copied, downscaled) for snippet `snippet_index`; the oldest snippet beyond `keep` goes."""
        frame = _check_frame(frame)
        small = downscale(frame, self.max_width)
        with self._lock:
            self._frames.pop(snippet_index, None)
            self._frames[snippet_index] = (small, (frame.shape[1], frame.shape[0]))
            while len(self._frames) > self.keep:
                self._frames.popitem(last=False)

    def get(self, snippet_index: int) -> np.ndarray | None:
        """The kept (downscaled) frame of snippet `snippet_index`, None when it was never added or has gone."""
        with self._lock:
            item = self._frames.get(snippet_index)
        return None if item is None else item[0]

    def frame_size(self, snippet_index: int) -> tuple[int, int] | None:
        """(width, height) of the frame as it was added, before downscaling; None when not kept."""
        with self._lock:
            item = self._frames.get(snippet_index)
        return None if item is None else item[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
