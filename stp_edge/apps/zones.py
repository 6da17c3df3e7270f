"""Zones: polygons in relative 0-1 frame coordinates that decide where an anomaly may raise an event.

A camera's zones are "watch" zones (only what overlaps one of them counts) or "ignore" zones (what lies entirely
inside one never counts), as Frigate's zones and masks are. Everything here is plain-Python geometry, exact on
the polygons a user writes (simple polygons, convex or not):

- a box overlaps a zone when the area of their intersection is positive: the polygon is clipped by the box
  (Sutherland–Hodgman, correct for any simple polygon clipped by a convex window) and the clipped area measured
  with the shoelace formula;
- a box lies entirely inside a zone when that intersection covers the box's whole area;
- a point lies in a zone by even–odd ray casting (region cells are judged by their centres).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from stp_edge.errors import UsageError
from stp_edge.geometry import region_boxes, to_frame_coords

MODES = ("watch", "ignore")
Point = tuple[float, float]
# A box overlaps a zone when the shared area exceeds this fraction of the box's area (float noise from clipping
# a box that only touches an edge is far below it), and lies inside one when the shared area misses the box's
# area by less than it.
_REL_EPS = 1e-9


def polygon_area(points: Sequence[Point]) -> float:
    """Area of a simple polygon (shoelace formula), >= 0 whichever way it winds."""
    n = len(points)
    twice = 0.0
    for i in range(n):
        x1, y1 = points[i]
        x2, y2 = points[(i + 1) % n]
        twice += x1 * y2 - x2 * y1
    return abs(twice) / 2.0


def clip_to_box(points: Sequence[Point], box: Sequence[float]) -> list[Point]:
    """The part of a polygon inside the axis-aligned box (x1, y1, x2, y2), by Sutherland–Hodgman clipping.

    A concave polygon may come back with zero-width bridges along the box's edges; they add no area.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    # Each edge of the box as (inside test, intersection of segment p-q with the edge's line).
    edges = (
        (lambda p: p[0] >= x1, lambda p, q: _at_x(p, q, x1)),
        (lambda p: p[0] <= x2, lambda p, q: _at_x(p, q, x2)),
        (lambda p: p[1] >= y1, lambda p, q: _at_y(p, q, y1)),
        (lambda p: p[1] <= y2, lambda p, q: _at_y(p, q, y2)),
    )
    out = [(float(x), float(y)) for x, y in points]
    for inside, cross in edges:
        if not out:
            break
        src, out = out, []
        prev = src[-1]
        for cur in src:
            if inside(cur):
                if not inside(prev):
                    out.append(cross(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cross(prev, cur))
            prev = cur
    return out


def _at_x(p: Point, q: Point, x: float) -> Point:
    t = (x - p[0]) / (q[0] - p[0])
    return x, p[1] + t * (q[1] - p[1])


def _at_y(p: Point, q: Point, y: float) -> Point:
    t = (y - p[1]) / (q[1] - p[1])
    return p[0] + t * (q[0] - p[0]), y


def intersection_area(points: Sequence[Point], box: Sequence[float]) -> float:
    """Area shared by a simple polygon and the axis-aligned box (x1, y1, x2, y2)."""
    clipped = clip_to_box(points, box)
    return polygon_area(clipped) if len(clipped) >= 3 else 0.0


def point_in_polygon(x: float, y: float, points: Sequence[Point]) -> bool:
    """Whether (x, y) lies inside the polygon, by even–odd ray casting (a ray towards +x counts the crossings)."""
    inside = False
    n = len(points)
    for i in range(n):
        xi, yi = points[i]
        xj, yj = points[i - 1]
        if (yi > y) != (yj > y) and x < xi + (y - yi) * (xj - xi) / (yj - yi):
            inside = not inside
    return inside


def _orient(a: Point, b: Point, c: Point) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_segment(a: Point, b: Point, p: Point) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def _segments_meet(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Whether segments a-b and c-d share a point (crossing, touching or overlapping)."""
    d1, d2, d3, d4 = _orient(c, d, a), _orient(c, d, b), _orient(a, b, c), _orient(a, b, d)
    if ((d1 > 0) != (d2 > 0)) and d1 != 0 and d2 != 0 and ((d3 > 0) != (d4 > 0)) and d3 != 0 and d4 != 0:
        return True
    return ((d1 == 0 and _on_segment(c, d, a)) or (d2 == 0 and _on_segment(c, d, b))
            or (d3 == 0 and _on_segment(a, b, c)) or (d4 == 0 and _on_segment(a, b, d)))


def _self_crossing(points: Sequence[Point]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges (i, j) that meet, or None for a simple polygon."""
    n = len(points)
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # the closing edge is adjacent to the first one
            if _segments_meet(points[i], points[(i + 1) % n], points[j], points[(j + 1) % n]):
                return i, j
    return None


@dataclass(frozen=True)
class Zone:
    """A named polygon in relative 0-1 frame coordinates; "watch" zones admit anomalies, "ignore" zones mask them.

    Validated on construction: at least 3 distinct points, each coordinate in [0, 1], a positive area and no
    crossing edges. A closing point equal to the first one (GeoJSON style) is dropped.
    """

    name: str
    points: tuple[tuple[float, float], ...]
    mode: str = "watch"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise UsageError(f"zone name must be a non-empty string, got {self.name!r}")
        if self.mode not in MODES:
            raise UsageError(f"zone {self.name!r}: mode must be 'watch' or 'ignore', got {self.mode!r}")
        object.__setattr__(self, "points", self._checked_points())

    def _checked_points(self) -> tuple[tuple[float, float], ...]:
        where = f"zone {self.name!r}"
        if isinstance(self.points, (str, bytes)) or not isinstance(self.points, Iterable):
            raise UsageError(f"{where}: points must be a list of [x, y] pairs, got {self.points!r}")
        pts: list[tuple[float, float]] = []
        for i, pt in enumerate(self.points):
            if isinstance(pt, (str, bytes)) or not isinstance(pt, Sequence) or len(pt) != 2:
                raise UsageError(f"{where}: point {i} must be an [x, y] pair, got {pt!r}")
            xy = []
            for v in pt:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
                    raise UsageError(f"{where}: point {i} {list(pt)!r}: coordinates must be numbers in [0, 1] "
                                     f"(relative to the frame's width and height), got {v!r}")
                xy.append(float(v))
            pts.append((xy[0], xy[1]))
        if len(pts) > 3 and pts[-1] == pts[0]:
            pts.pop()
        if len(pts) < 3:
            raise UsageError(f"{where}: a polygon needs at least 3 points, got {len(pts)}")
        for i in range(len(pts)):
            if pts[i] == pts[i - 1]:
                raise UsageError(f"{where}: point {i} {list(pts[i])!r} repeats the point before it")
        crossing = _self_crossing(pts)
        if crossing is not None:
            i, j = crossing
            raise UsageError(f"{where}: edges {i}-{(i + 1) % len(pts)} and {j}-{(j + 1) % len(pts)} cross; "
                             "a zone must be a simple polygon (list its points in order around it)")
        if polygon_area(pts) <= 0:
            raise UsageError(f"{where}: the polygon has no area (its points lie on one line)")
        return tuple(pts)

    @property
    def area(self) -> float:
        """Area as a fraction of the frame."""
        return polygon_area(self.points)

    def overlap_area(self, norm_box: Sequence[float]) -> float:
        """Area shared with a normalised box (x1, y1, x2, y2), as a fraction of the frame."""
        return intersection_area(self.points, _box(norm_box))

    def contains(self, x: float, y: float) -> bool:
        """Whether the relative point (x, y) lies inside the zone (even–odd rule)."""
        return point_in_polygon(x, y, self.points)


def _box(norm_box: Sequence[float]) -> tuple[float, float, float, float]:
    """A normalised box as (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2."""
    if isinstance(norm_box, (str, bytes)) or len(norm_box) != 4:
        raise UsageError(f"a normalised box is [x1, y1, x2, y2], got {norm_box!r}")
    x1, y1, x2, y2 = (float(v) for v in norm_box)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


class Zones(tuple):
    """A camera's zones (a tuple of `Zone`, names unique): which boxes and region cells may raise an event.

    With no watch zone, the whole frame is watched; ignore zones mask parts of it either way.
    """

    def __new__(cls, zones: Iterable[Zone] = ()) -> Zones:
        items = tuple(zones)
        seen: set[str] = set()
        for i, z in enumerate(items):
            if not isinstance(z, Zone):
                raise UsageError(f"zones[{i}] must be a Zone, got {type(z).__name__}")
            if z.name in seen:
                raise UsageError(f"zone {z.name!r} is defined twice; zone names must be unique")
            seen.add(z.name)
        return super().__new__(cls, items)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Zones:
        """Zones from plain data: {name: {"points": [[x, y], ...], "mode": "watch"}} or [{"name": ..., ...}]."""
        if isinstance(spec, Mapping):
            entries = [(name, body) for name, body in spec.items()]
        else:
            entries = [(body.get("name") if isinstance(body, Mapping) else None, body) for body in spec]
        zones = []
        for name, body in entries:
            if not isinstance(body, Mapping):
                raise UsageError(f"zone {name!r}: expected a mapping with 'points' (and 'mode'), got {body!r}")
            unknown = sorted(set(body) - {"name", "points", "mode"})
            if unknown:
                raise UsageError(f"zone {name!r}: unknown key(s) {unknown}; expected 'points' and 'mode'")
            if "points" not in body:
                raise UsageError(f"zone {name!r}: missing key 'points'")
            zones.append(Zone(name, body["points"], body.get("mode", "watch")))
        return cls(zones)

    @property
    def watched(self) -> tuple[Zone, ...]:
        """The watch zones."""
        return tuple(z for z in self if z.mode == "watch")

    @property
    def ignored(self) -> tuple[Zone, ...]:
        """The ignore zones."""
        return tuple(z for z in self if z.mode == "ignore")

    def admits_box(self, norm_box: Sequence[float]) -> bool:
        """Whether a box counts: it overlaps a watch zone (or none exists) and is not entirely inside an ignore zone.

        A box with no area (a line or a point) is judged by its centre, as a region cell is.
        """
        box = _box(norm_box)
        area = (box[2] - box[0]) * (box[3] - box[1])
        if area <= 0:
            return self.admits_point((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        watched = self.watched
        if watched and not any(z.overlap_area(box) > area * _REL_EPS for z in watched):
            return False
        return not any(z.overlap_area(box) >= area * (1 - _REL_EPS) for z in self.ignored)

    def admits_point(self, x: float, y: float) -> bool:
        """Whether a relative point counts: inside a watch zone (or none exists) and inside no ignore zone."""
        watched = self.watched
        if watched and not any(z.contains(x, y) for z in watched):
            return False
        return not any(z.contains(x, y) for z in self.ignored)

    def zones_of(self, norm_box: Sequence[float]) -> list[str]:
        """Names of the watch zones a normalised box overlaps (positive shared area), in zone order."""
        box = _box(norm_box)
        area = (box[2] - box[0]) * (box[3] - box[1])
        if area <= 0:
            return self.zones_at((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        return [z.name for z in self.watched if z.overlap_area(box) > area * _REL_EPS]

    def zones_at(self, x: float, y: float) -> list[str]:
        """Names of the watch zones that contain a relative point, in zone order."""
        return [z.name for z in self.watched if z.contains(x, y)]

    def region_mask(self, grid: int, frame_size: Sequence[int] | None = None, *, mode: str = "tokens",
                    image_size: int = 224) -> np.ndarray:
        """[grid, grid] bool: which cells of the region grid count (their centre passes `admits_point`).

        Cells lie on the centre square the model sees (`stp_edge.geometry.crop_square`) of a frame of
        `frame_size` (W, H); without a frame size (or with (0, 0)) the grid spans the whole frame.
        """
        centres = region_centres(grid, frame_size, mode=mode, image_size=image_size)
        return np.array([self.admits_point(x, y) for x, y in centres], dtype=bool).reshape(grid, grid)


def region_centres(grid: int, frame_size: Sequence[int] | None = None, *, mode: str = "tokens",
                   image_size: int = 224) -> list[tuple[float, float]]:
    """Relative (x, y) centre of each region of an R x R grid, row-major (the order of `region_scores`)."""
    return list(_region_centres(int(grid), _frame_wh(frame_size), mode, int(image_size)))


@lru_cache(maxsize=32)
def _region_centres(grid: int, wh: tuple[int, int] | None, mode: str,
                    image_size: int) -> tuple[tuple[float, float], ...]:
    if grid < 1:
        raise UsageError(f"region grid must be >= 1, got {grid}")
    boxes = region_boxes(image_size, grid, mode)
    if wh is None:
        rel = boxes / float(image_size)
    else:
        w, h = wh
        rel = to_frame_coords(boxes, image_size, (h, w)) / np.array([w, h, w, h], dtype=np.float64)
    return tuple(((float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2)) for b in rel)


def _frame_wh(frame_size: Sequence[int] | None) -> tuple[int, int] | None:
    if frame_size is None:
        return None
    w, h = (int(v) for v in frame_size)
    return (w, h) if w > 0 and h > 0 else None
