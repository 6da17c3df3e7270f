"""Synthetic surveillance-video anomaly benchmark, generated from a seed.

A clip is a fixed camera looking at a procedural scene (tiled plaza, street or park: textured ground in
perspective, a back wall / buildings / trees, static foreground objects such as pillars, benches, bins) with
people-like agents walking on the ground plane (smaller further up the frame), slow lighting drift and sensor
noise. An anomalous clip holds exactly one anomaly event, local in space and time, of one of the classes of
`CLASS_NAMES`:

- fighting: two agents meet and stay in contact, leaning in, flailing their arms, jittering;
- falling: an agent tips over to horizontal within a few frames and stays down until the end;
- running: an agent runs at several times walking speed (leaning forward, long stride, motion-blur trail);
- abandoned object: an agent carries a vividly coloured suitcase, sets it down and walks on; it stays;
- fire: a large flickering orange/yellow flame with a warm glow on the ground around it.

Events happen inside the centre square of the frame (the part CLIP's center crop keeps), away from the static
occluders, so they are visible in the frames a model sees. Ground truth: per-frame class labels, per-frame
boxes (x1, y1, x2, y2 in pixels, NaN when the frame is normal) and the event's [start, end) frame range.
Falling and abandoned object events last until the end of the clip (the person stays down, the object stays).

Everything is drawn with OpenCV primitives on a precomputed background, so a 320x240, 300-frame clip renders
in well under a second; the same seed gives the same clip, bit for bit.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stp_edge.config import DEMO_CLASSES
from stp_edge.errors import UsageError
from stp_edge.video import CODECS, VideoError, VideoWriter

CLASS_NAMES: tuple[str, ...] = DEMO_CLASSES
ANOMALY_CLASSES: tuple[str, ...] = CLASS_NAMES[1:]
SCENE_KINDS: tuple[str, ...] = ("plaza", "street", "park")

_WALK_SPEED = 0.03  # body heights per frame at 25 fps (about 1.3 m/s for a 1.7 m person)
_MAX_HEIGHT = 0.34  # body height at the bottom row, as a fraction of the frame height


def class_token(name: str) -> str:
    """The whitespace-free spelling of a class name used in annotation files ("abandoned object" -> ...)."""
    return name.replace(" ", "_")


# ------------------------------------------------------------------------------------------ primitives
# A drawable body is a list of primitives; the same list gives the pixels (cv2) and the ground-truth box.
@dataclass
class _Prim:
    kind: str  # "line", "ellipse", "circle", "rect", "poly"
    colour: tuple[int, int, int]
    pts: np.ndarray  # line: 2 points; circle/ellipse: centre; rect: 2 corners; poly: N points
    size: tuple[float, ...] = ()  # line: (thickness,); circle: (radius,); ellipse: (a, b, angle_deg)

    def bbox(self) -> np.ndarray:
        """Axis-aligned extent (x1, y1, x2, y2) of the primitive in pixels."""
        if self.kind == "line":
            r = self.size[0] / 2
            lo, hi = self.pts.min(0) - r, self.pts.max(0) + r
        elif self.kind == "circle":
            lo, hi = self.pts[0] - self.size[0], self.pts[0] + self.size[0]
        elif self.kind == "ellipse":
            a, b, ang = self.size
            c, s = math.cos(math.radians(ang)), math.sin(math.radians(ang))
            ext = np.array([math.hypot(a * c, b * s), math.hypot(a * s, b * c)])
            lo, hi = self.pts[0] - ext, self.pts[0] + ext
        else:
            lo, hi = self.pts.min(0), self.pts.max(0)
        return np.concatenate([lo, hi])

    def draw(self, img: np.ndarray) -> None:
        """Rasterise onto `img` (uint8 BGR) in place."""
        col = tuple(int(c) for c in self.colour)
        if self.kind == "line":
            p = np.round(self.pts).astype(int)
            cv2.line(img, tuple(p[0]), tuple(p[1]), col, max(1, round(self.size[0])), cv2.LINE_AA)
        elif self.kind == "circle":
            c = np.round(self.pts[0]).astype(int)
            cv2.circle(img, tuple(c), max(1, round(self.size[0])), col, -1, cv2.LINE_AA)
        elif self.kind == "ellipse":
            c = np.round(self.pts[0]).astype(int)
            axes = (max(1, round(self.size[0])), max(1, round(self.size[1])))
            cv2.ellipse(img, tuple(c), axes, self.size[2], 0, 360, col, -1, cv2.LINE_AA)
        elif self.kind == "rect":
            p = np.round(self.pts).astype(int)
            cv2.rectangle(img, tuple(p[0]), tuple(p[1]), col, -1)
        else:
            cv2.fillPoly(img, [np.round(self.pts).astype(np.int32)], col, cv2.LINE_AA)


def _union(boxes: Sequence[np.ndarray]) -> np.ndarray:
    b = np.stack(boxes)
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])


def _mix(c1: Sequence[float], c2: Sequence[float], t: float) -> tuple[int, int, int]:
    return tuple(round(a * (1 - t) + b * t) for a, b in zip(c1, c2, strict=True))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- agents
@dataclass
class _Look:
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]


# Muted clothing colours (BGR). Saturated orange/yellow (fire) and the suitcase colours are kept out.
_SHIRTS = [(60, 60, 60), (200, 200, 200), (120, 70, 40), (50, 40, 110), (70, 110, 60), (140, 120, 100),
           (90, 90, 140), (40, 40, 40), (160, 150, 120), (100, 60, 90)]
_TROUSERS = [(40, 35, 30), (90, 60, 30), (60, 60, 60), (110, 100, 90), (30, 30, 50)]
_SKINS = [(150, 180, 220), (110, 140, 190), (80, 105, 150), (60, 80, 110)]
_HAIRS = [(20, 20, 20), (30, 50, 80), (120, 140, 160), (40, 40, 60)]
_SUITCASES = [(40, 40, 230), (220, 90, 20), (200, 40, 200), (60, 200, 40)]  # red, blue, magenta, green


def _random_look(rng: np.random.Generator) -> _Look:
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    return _Look(pick(_SHIRTS), pick(_TROUSERS), pick(_SKINS), pick(_HAIRS))


@dataclass
class _Agent:
    """One person: per-frame foot position, tilt and mode, planned before any frame is drawn."""

    look: _Look
    pos: np.ndarray  # [F,2] foot point (x, y) in pixels
    tilt: np.ndarray  # [F] degrees; 0 upright, +-90 lying
    mode: np.ndarray  # [F] int: 0 walk, 1 stand, 2 run, 3 fight, 4 lying
    facing: np.ndarray  # [F] +1 right / -1 left
    phase: float
    arms: np.ndarray | None = None  # [F,2] arm angles (fight), radians in the body frame
    visible: np.ndarray | None = None  # [F] bool; None = always drawn (cv2 clips what is off-frame)
    carry: np.ndarray | None = None  # [F] bool: carrying the suitcase
    carry_colour: tuple[int, int, int] = (0, 0, 0)


_WALK, _STAND, _RUN, _FIGHT, _LYING = 0, 1, 2, 3, 4


def _body_prims(a: _Agent, i: int, h: float) -> list[_Prim]:
    """Primitives of agent `a` at frame `i` with body height `h` (pixels)."""
    foot = a.pos[i]
    th = math.radians(a.tilt[i])
    up = np.array([math.sin(th), -math.cos(th)])
    right = np.array([math.cos(th), math.sin(th)])
    P = lambda x, y: foot + (x * right + y * up) * h  # noqa: E731  local (x right, y up) in body heights
    mode, f = int(a.mode[i]), float(a.facing[i])
    t = i + a.phase
    if mode == _RUN:
        swing, sw_arm = 0.32 * math.sin(t * 0.9), 0.28 * math.sin(t * 0.9)
    elif mode == _WALK:
        swing, sw_arm = 0.12 * math.sin(t * 0.35), 0.07 * math.sin(t * 0.35)
    elif mode == _FIGHT:
        swing, sw_arm = 0.18, 0.0
    else:
        swing, sw_arm = 0.03, 0.0
    look, prims = a.look, []
    legw, armw = 0.09 * h, 0.065 * h
    hip = P(0, 0.47)
    prims.append(_Prim("line", look.trousers, np.stack([hip, P(swing, 0)]), (legw,)))
    prims.append(_Prim("line", _mix(look.trousers, (0, 0, 0), 0.2), np.stack([hip, P(-swing, 0)]), (legw,)))
    ang = math.degrees(th)
    prims.append(_Prim("ellipse", look.shirt, P(0, 0.66)[None], (0.12 * h, 0.2 * h, ang)))
    arm_col = _mix(look.shirt, (0, 0, 0), 0.25)
    for side in (-1, 1):
        sh = P(0.07 * side, 0.8)
        if mode == _FIGHT and a.arms is not None:
            al = a.arms[i, (side + 1) // 2]
            hand = sh + (math.cos(al) * right * f + math.sin(al) * up) * 0.42 * h
            prims.append(_Prim("line", arm_col, np.stack([sh, hand]), (armw,)))
            prims.append(_Prim("circle", look.skin, hand[None], (0.05 * h,)))
        else:
            hand = P(0.07 * side + side * sw_arm * f, 0.48)
            prims.append(_Prim("line", arm_col, np.stack([sh, hand]), (armw,)))
    head = P(0.02 * f if mode == _RUN else 0, 0.9)
    prims.append(_Prim("circle", look.skin, head[None], (0.085 * h,)))
    prims.append(_Prim("ellipse", look.hair, (head + up * 0.04 * h)[None], (0.08 * h, 0.05 * h, ang)))
    if a.carry is not None and a.carry[i]:
        prims.extend(_suitcase_prims(a.carry_colour, P(0.17 * f, 0.1), h))
    return prims


def _suitcase_prims(colour: tuple[int, int, int], base: np.ndarray, h: float) -> list[_Prim]:
    """A standing suitcase whose bottom centre is `base`: body, white band, handle, wheels."""
    w, ht = 0.55 * h, 0.45 * h
    x0, x1, y1 = base[0] - w / 2, base[0] + w / 2, base[1]
    y0 = y1 - ht
    dark = _mix(colour, (0, 0, 0), 0.45)
    return [
        _Prim("rect", dark, np.array([[x0 + w * 0.3, y0 - ht * 0.22], [x1 - w * 0.3, y0 + 1]])),
        _Prim("rect", colour, np.array([[x0 + w * 0.4, y0 - ht * 0.12], [x1 - w * 0.4, y0 + 1]])),
        _Prim("rect", dark, np.array([[x0, y0], [x1, y1]])),
        _Prim("rect", colour, np.array([[x0 + 1.5, y0 + 1.5], [x1 - 1.5, y1 - 1.5]])),
        _Prim("rect", (235, 235, 235), np.array([[x0 + 1.5, y0 + ht * 0.42], [x1 - 1.5, y0 + ht * 0.58]])),
    ]


# ---------------------------------------------------------------------------------------------- layout
@dataclass
class _Occluder:
    x0: int
    y0: int
    patch: np.ndarray  # [h,w,3] uint8
    mask: np.ndarray  # [h,w] bool
    base_y: float  # foot line: agents with feet above it (further away) are hidden behind it

    @property
    def box(self) -> np.ndarray:
        hh, ww = self.mask.shape
        return np.array([self.x0, self.y0, self.x0 + ww, self.y0 + hh], float)

    def draw(self, img: np.ndarray) -> None:
        H, W = img.shape[:2]
        hh, ww = self.mask.shape
        ys, xs = max(0, self.y0), max(0, self.x0)
        ye, xe = min(H, self.y0 + hh), min(W, self.x0 + ww)
        if ye <= ys or xe <= xs:
            return
        sub = (slice(ys - self.y0, ye - self.y0), slice(xs - self.x0, xe - self.x0))
        np.copyto(img[ys:ye, xs:xe], self.patch[sub], where=self.mask[sub][..., None])


@dataclass
class _Layout:
    kind: str
    width: int
    height: int
    horizon: float
    background: np.ndarray  # [H,W,3] uint8
    occluders: list[_Occluder]

    def body_height(self, y: float | np.ndarray) -> Any:
        """Perspective: body height in pixels of a person whose feet are on row `y`."""
        return _MAX_HEIGHT * self.height * np.clip((y - self.horizon) / (self.height - self.horizon), 0.05, 2)

    @property
    def walk_y(self) -> tuple[float, float]:
        """Rows on which agents' feet may be (near enough to be drawn at a useful size)."""
        return self.horizon + 0.38 * (self.height - self.horizon), self.height - 3.0

    @property
    def crop_x(self) -> tuple[float, float]:
        """Columns kept by a square center crop (what a CLIP-style model sees)."""
        side = min(self.width, self.height)
        return (self.width - side) / 2, (self.width + side) / 2


def _lowfreq(rng: np.random.Generator, H: int, W: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((H // cell + 2, W // cell + 2)).astype(np.float32)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)


def _ground(kind: str, rng: np.random.Generator, H: int, W: int, horizon: float) -> np.ndarray:
    """Perspective textured ground for rows below the horizon, as float32 BGR."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    d = np.clip((y - horizon) / (H - horizon), 1e-3, None)
    Z, X = 1.0 / d, (x - W / 2) / W / d  # world depth and lateral position
    fine = rng.normal(0, 1, (H, W)).astype(np.float32)
    blot = _lowfreq(rng, H, W, 12)
    fade = np.clip(d * 3, 0, 1)[..., None]  # texture contrast fades with distance (and hides aliasing)
    if kind == "plaza":
        c1, c2 = rng.uniform(120, 200, 3), rng.uniform(90, 170, 3)
        n = rng.uniform(5, 9)
        cx, cz = np.floor(X * n), np.floor(Z * n * 0.8)
        checker = ((cx + cz) % 2)[..., None]
        base = c1 * (1 - checker) + c2 * checker
        fx, fz = (X * n) % 1, (Z * n * 0.8) % 1
        grout = ((fx < 0.06) | (fz < 0.06 * Z ** 0.3))[..., None]
        base = base * (1 - 0.35 * grout * fade)
        base = base * (1 + 0.05 * blot[..., None]) + 5 * fine[..., None]
    elif kind == "street":
        asphalt = rng.uniform(60, 95) * np.ones(3)
        walk = rng.uniform(140, 190, 3)
        z_near, z_far = rng.uniform(1.3, 1.8), rng.uniform(3.0, 4.5)
        road = ((Z > z_near) & (Z < z_far))[..., None]
        paving = (((X * 6) % 1) < 0.05) | (((Z * 5) % 1) < 0.06)  # slab joints of the sidewalks
        base = np.where(road, asphalt, walk * (1 - 0.25 * fade * paving[..., None]))
        dash = road[..., 0] & (np.abs(X) % 0.8 < 0.4) & (np.abs(Z - (z_near + z_far) / 2) < 0.05)
        base[dash] = (215, 215, 215)
        kerb = (np.abs(Z - z_near) < 0.03) | (np.abs(Z - z_far) < 0.05)
        base[kerb] = (200, 200, 200)
        base = base * (1 + 0.06 * blot[..., None]) + 7 * fine[..., None]
    else:  # park
        grass = np.array([rng.uniform(30, 60), rng.uniform(110, 150), rng.uniform(60, 90)])
        grain = np.array([rng.uniform(120, 150), rng.uniform(150, 175), rng.uniform(170, 200)])
        px = rng.uniform(-0.4, 0.4)
        path = (np.abs(X - px - 0.1 * (Z - 1)) < 0.22)[..., None]
        base = np.where(path, grain, grass) * (1 + 0.12 * blot[..., None]) + 12 * fine[..., None] * fade
    return base.astype(np.float32)


def _backdrop(kind: str, rng: np.random.Generator, H: int, W: int, horizon: int) -> np.ndarray:
    """The part above the horizon: a facade with windows, street buildings, or sky and trees."""
    top = np.zeros((horizon, W, 3), np.float32)
    hz = horizon
    if kind == "plaza":
        wall = rng.uniform(100, 200, 3)
        top[:] = wall
        ww, gap = int(rng.integers(14, 22)), int(rng.integers(8, 14))
        for x0 in range(int(rng.integers(0, gap)), W, ww + gap):
            for y0 in range(4, hz - 14, int(ww * 1.3) + gap):
                top[y0:y0 + int(ww * 1.3), x0:x0 + ww] = wall * 0.35
        top[hz - 4:] = wall * 0.6
    else:
        top[:] = np.linspace(np.array([235, 200, 160]), np.array([215, 215, 210]), hz)[:, None, :]
        if kind == "street":
            x = 0
            while x < W:
                bw, bh = int(rng.integers(30, 70)), int(rng.integers(hz // 3, hz))
                col = rng.uniform(70, 180, 3)
                top[hz - bh:, x:x + bw] = col
                for wy in range(hz - bh + 4, hz - 6, 10):
                    for wx in range(x + 4, x + bw - 6, 9):
                        top[wy:wy + 5, wx:wx + 5] = col * 0.5
                x += bw + int(rng.integers(0, 10))
        else:
            img = np.ascontiguousarray(top)
            for _ in range(int(rng.integers(6, 12))):
                cx, r = int(rng.integers(0, W)), int(rng.integers(12, 26))
                g = rng.uniform(0.6, 1.0)
                cv2.rectangle(img, (cx - 2, hz - r), (cx + 2, hz), (30, 50, 70), -1)
                cv2.circle(img, (cx, hz - r - r // 2), r, (40 * g, 100 * g, 50 * g), -1, cv2.LINE_AA)
            top = img
    top += 4 * _lowfreq(rng, hz, W, 10)[..., None]
    return top


def _make_occluder(kind: str, rng: np.random.Generator, layout_h: Callable[[float], float], x: float,
                   base_y: float) -> _Occluder:
    h = float(layout_h(base_y))
    if kind == "pillar":
        w, ht = int(0.32 * h) + 2, int(1.6 * h)
        col = rng.uniform(110, 210, 3)
        shade = np.linspace(1.15, 0.7, w)[None, :, None]  # cylinder shading
        patch = np.ones((ht, w, 3)) * col * shade
        mask = np.ones((ht, w), bool)
    elif kind == "bench":
        w, ht = int(1.3 * h), int(0.45 * h)
        col = rng.uniform(40, 110, 3) * np.array([0.6, 0.8, 1.2])
        patch = np.ones((ht, w, 3)) * col
        mask = np.zeros((ht, w), bool)
        mask[: int(ht * 0.3)] = True  # backrest
        mask[int(ht * 0.45): int(ht * 0.6)] = True  # seat
        lw = max(2, w // 12)
        for lx in (lw, w - 2 * lw):
            mask[int(ht * 0.45):, lx:lx + lw] = True
        patch[int(ht * 0.45): int(ht * 0.6)] *= 0.8
    else:  # bin / planter
        w, ht = int(0.4 * h) + 2, int(0.55 * h) + 2
        col = rng.uniform(50, 130, 3)
        patch = np.ones((ht, w, 3)) * col * np.linspace(1.1, 0.75, w)[None, :, None]
        patch[: max(2, ht // 8)] *= 0.6
        mask = np.ones((ht, w), bool)
    patch = np.clip(patch + rng.normal(0, 4, patch.shape), 0, 255).astype(np.uint8)
    return _Occluder(int(x - w / 2), int(base_y - mask.shape[0]), patch, mask, base_y)


def make_layout(layout_seed: int, width: int = 320, height: int = 240) -> _Layout:
    """Build the static scene (background and occluders) of one camera from `layout_seed`."""
    rng = np.random.default_rng(layout_seed)
    kind = SCENE_KINDS[int(rng.integers(len(SCENE_KINDS)))]
    horizon = float(rng.uniform(0.3, 0.42) * height)
    hz = int(horizon)
    bg = _ground(kind, rng, height, width, horizon)
    bg[:hz] = _backdrop(kind, rng, height, width, hz)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    vign = 1 - 0.25 * (((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2)
    bg = np.clip(bg * vign[..., None], 0, 255).astype(np.uint8)
    layout = _Layout(kind, width, height, horizon, bg, [])
    y0, y1 = layout.walk_y
    for _ in range(int(rng.integers(2, 5))):
        okind = ("pillar", "bench", "bin")[int(rng.integers(3))]
        by = float(rng.uniform(y0 + 0.1 * (y1 - y0), y1 - 6))
        ox = float(rng.uniform(0.05, 0.95) * width)
        occ = _make_occluder(okind, rng, layout.body_height, ox, by)
        if all(_iou_any(occ.box, o.box) == 0 for o in layout.occluders):
            layout.occluders.append(occ)
    return layout


def _iou_any(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area of two boxes (0 when disjoint)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


# ----------------------------------------------------------------------------------------------------- motion
def _walk_path(rng: np.random.Generator, layout: _Layout, F: int, start: np.ndarray, direction: float,
               speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Integrate a wandering walk from `start`; returns positions [F,2] and facing [F]."""
    y0, y1 = layout.walk_y
    pos = np.empty((F, 2))
    p, ang = start.astype(float).copy(), direction
    W = layout.width
    for t in range(F):
        pos[t] = p
        if rng.random() < 0.02:
            ang += rng.normal(0, 0.5)
        step = speed * _WALK_SPEED * float(layout.body_height(p[1]))
        v = np.array([math.cos(ang), 0.45 * math.sin(ang)]) * step  # depth motion is foreshortened
        p = p + v
        if not (y0 <= p[1] <= y1):
            ang = -ang
            p[1] = min(max(p[1], y0), y1)
        if p[0] < -0.15 * W or p[0] > 1.15 * W:  # left the view: turn back (reads as someone new entering)
            ang = math.pi - ang
    facing = np.sign(np.diff(pos[:, 0], append=pos[-1, 0] + 1e-6))
    facing[facing == 0] = 1
    return pos, facing


def _approach(P: np.ndarray, t0: int, direction: float, layout: _Layout, F: int, speed: float = 1.0,
              leave: float | None = None, t1: int | None = None) -> np.ndarray:
    """Positions [F,2]: walk in a straight line to reach `P` at frame `t0`, stay, and leave after `t1`."""
    h = float(layout.body_height(P[1]))
    v = np.array([math.cos(direction), 0.3 * math.sin(direction)]) * speed * _WALK_SPEED * h
    t = np.arange(F, dtype=float)
    pos = P + (np.minimum(t - t0, 0))[:, None] * v
    if t1 is not None and leave is not None:
        w = np.array([math.cos(leave), 0.3 * math.sin(leave)]) * _WALK_SPEED * h
        pos = pos + np.maximum(t - t1, 0)[:, None] * w
    return pos


# ------------------------------------------------------------------------------------------------------- fire
@dataclass
class _Fire:
    base: np.ndarray  # (x, y) centre of the flame's base
    width: float
    t0: int
    t1: int
    rng_seed: int
    glow: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        r = int(self.width * 1.6)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
        g = np.exp(-(xx ** 2 + (yy * 1.8) ** 2) / (2 * (0.5 * r) ** 2))
        self.glow = g[..., None] * np.array([0.15, 0.55, 1.0], np.float32)  # warm light, BGR

    def strength(self, i: int) -> float:
        if i < self.t0 or i >= self.t1:
            return 0.0
        return min(1.0, (i - self.t0 + 1) / 8, (self.t1 - i) / 6 + 0.2)

    def prims(self, i: int) -> list[_Prim]:
        s = self.strength(i)
        if s <= 0:
            return []
        rng = np.random.default_rng([self.rng_seed, i])
        w, (bx, by) = self.width * (0.6 + 0.4 * s), self.base
        layers = [((20, 40, 200), 1.0), ((10, 120, 255), 0.78), ((40, 200, 255), 0.55),
                  ((190, 245, 255), 0.3)]
        n = 7
        xs = bx + ((np.arange(n) - (n - 1) / 2) / n + rng.normal(0, 0.03, n)) * w
        centre = 1.0 - 1.2 * (np.abs(np.arange(n) - (n - 1) / 2) / n) ** 2  # taller in the middle
        hts = w * s * rng.uniform(0.45, 1.0, n) * centre
        sway = rng.normal(0, 0.1 * w, n)
        prims = []
        for col, k in layers:
            for j in range(n):
                half = w / n * 1.1 * k
                tip = (xs[j] + sway[j] * k, by - hts[j] * k)
                pts = np.array([(xs[j] - half, by), tip, (xs[j] + half, by)])
                prims.append(_Prim("poly", col, pts))
            ember = np.array([[bx, by - 0.12 * w * k]])
            prims.append(_Prim("ellipse", col, ember, (0.5 * w * k, 0.16 * w * k, 0)))
        return prims

    def add_glow(self, img: np.ndarray, i: int) -> None:
        s = self.strength(i)
        if s <= 0:
            return
        flick = 0.75 + 0.25 * np.random.default_rng([self.rng_seed, i, 1]).random()
        r = self.glow.shape[0] // 2
        H, W = img.shape[:2]
        cx, cy = int(self.base[0]), int(self.base[1] - 0.3 * self.width)
        ys, ye, xs, xe = max(0, cy - r), min(H, cy + r + 1), max(0, cx - r), min(W, cx + r + 1)
        g = self.glow[ys - cy + r: ye - cy + r, xs - cx + r: xe - cx + r]
        roi = img[ys:ye, xs:xe].astype(np.float32) + g * (110 * s * flick)
        img[ys:ye, xs:xe] = np.clip(roi, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------- plan
@dataclass
class Clip:
    """A rendered synthetic clip and its ground truth.

    Attributes:
        frames: uint8 BGR frames [F, H, W, 3].
        labels: per-frame class index into `CLASS_NAMES` [F] (0 = normal).
        boxes: per-frame anomaly box (x1, y1, x2, y2) in pixels [F, 4], NaN where the frame is normal.
        class_name: the video-level label ("normal" or the anomaly class).
        event: the anomaly's frame range [start, end), or None for a normal clip.
        fps: frames per second.
        metadata: seeds, scene kind, sizes (JSON-serialisable).
    """

    frames: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    class_name: str
    event: tuple[int, int] | None
    fps: float
    metadata: dict[str, Any]

    @property
    def video_label(self) -> int:
        """Index of `class_name` in `CLASS_NAMES`."""
        return CLASS_NAMES.index(self.class_name)


class ClipPlan:
    """Everything about a clip except its pixels; `render(i)` draws frame i, `frames()` streams them all."""

    def __init__(self, seed: int, *, width: int, height: int, num_frames: int, anomaly: str | None,
                 fps: float, layout_seed: int | None, twin_of: str | None = None) -> None:
        if anomaly is not None and anomaly not in CLASS_NAMES:
            raise UsageError(f"anomaly={anomaly!r} is not a class; expected None or one of {CLASS_NAMES}")
        if twin_of is not None and (twin_of not in ANOMALY_CLASSES or anomaly not in (None, "normal")):
            raise UsageError(f"twin_of={twin_of!r} needs a normal clip (anomaly=None) and one of {ANOMALY_CLASSES}")
        if num_frames < 16 or width < 64 or height < 64:
            raise UsageError(f"clip too small: got {num_frames} frames of {width}x{height}, "
                             "expected >= 16 frames of >= 64x64")
        self.seed, self.num_frames, self.fps = int(seed), int(num_frames), float(fps)
        self.class_name = anomaly or "normal"
        self.layout_seed = int(seed if layout_seed is None else layout_seed)
        self.layout = make_layout(self.layout_seed, width, height)
        rng = np.random.default_rng([self.seed, 7])
        self.agents: list[_Agent] = []
        self.event_agents: list[_Agent] = []
        # (ground point, colour, drop frame)
        self.suitcase: tuple[np.ndarray, tuple[int, int, int], int] | None = None
        self.fire: _Fire | None = None
        self.event: tuple[int, int] | None = None
        self._plan_background_agents(rng)
        if self.class_name != "normal":
            self._plan_event(rng, self.class_name)
        elif twin_of is not None:
            self._plan_event(rng, twin_of)
            self._defuse_event()
        # Own stream, so a clip and its normal twin (same seed, no anomaly) share lighting and noise.
        self._plan_photometry(np.random.default_rng([self.seed, 9]))
        self.labels, self.boxes = self._ground_truth()

    # --- planning -------------------------------------------------------------------------------------------
    def _plan_background_agents(self, rng: np.random.Generator) -> None:
        L, F = self.layout, self.num_frames
        y0, y1 = L.walk_y
        for _ in range(int(rng.integers(3, 7))):
            start = np.array([rng.uniform(-0.1, 1.1) * L.width, rng.uniform(y0, y1)])
            look = _random_look(rng)
            if rng.random() < 0.2:  # someone standing around, shifting a little
                pos = start + np.cumsum(rng.normal(0, 0.15, (F, 2)), 0) * [1, 0.3]
                pos[:, 1] = np.clip(pos[:, 1], y0, y1)
                self.agents.append(_Agent(look, pos, np.zeros(F), np.full(F, _STAND), np.ones(F), 0.0))
                continue
            pos, facing = _walk_path(rng, L, F, start, rng.choice([0.0, math.pi]) + rng.normal(0, 0.4),
                                     speed=rng.uniform(0.8, 1.2))
            self.agents.append(_Agent(look, pos, np.zeros(F), np.full(F, _WALK), facing,
                                      float(rng.uniform(0, 20))))

    def _event_place(self, rng: np.random.Generator, half_w: float, half_h: float) -> np.ndarray:
        """A ground point for the event inside the center crop and clear of every occluder."""
        L = self.layout
        cx0, cx1 = L.crop_x
        y0, y1 = L.walk_y
        for _ in range(200):
            y = rng.uniform(y0 + 0.4 * (y1 - y0), y1 - 0.08 * (y1 - y0))
            h = float(L.body_height(y))
            if y + 0.2 * h > L.height:  # keep lying bodies and suitcases off the bottom edge
                continue
            x = rng.uniform(cx0 + half_w * h + 4, cx1 - half_w * h - 4)
            box = np.array([x - half_w * h, y - half_h * h, x + half_w * h, y + 0.15 * h])
            if all(_iou_any(box, o.box) == 0 for o in L.occluders):
                return np.array([x, y])
        # Crowded layout: put the event mid-ground in the centre and drop the occluders in its way.
        y = y0 + 0.6 * (y1 - y0)
        h, x = float(L.body_height(y)), (cx0 + cx1) / 2
        box = np.array([x - half_w * h, y - half_h * h, x + half_w * h, y + 0.2 * h])
        L.occluders = [o for o in L.occluders if _iou_any(box, o.box) == 0]
        return np.array([x, y])

    def _event_times(self, rng: np.random.Generator, to_end: bool) -> tuple[int, int]:
        F = self.num_frames
        if to_end:
            t0 = int(rng.uniform(0.3, 0.6) * F)
            return t0, F
        t0 = int(rng.uniform(0.2, 0.5) * F)
        return t0, min(F, t0 + max(8, int(rng.uniform(0.25, 0.4) * F)))

    def _plan_event(self, rng: np.random.Generator, name: str) -> None:
        L, F = self.layout, self.num_frames
        t = np.arange(F)
        side = float(rng.choice([-1.0, 1.0]))
        d_in = 0.0 if side > 0 else math.pi
        if name == "falling":
            t0, t1 = self._event_times(rng, to_end=True)
            P = self._event_place(rng, 1.1, 0.5)
            P[0] -= side * 0.5 * float(L.body_height(P[1]))  # the body falls towards `side`
            pos = _approach(P, t0, d_in, L, F)
            tilt = side * 90 * np.clip((t - t0 + 1) / 7, 0, 1) ** 2  # accelerating topple over ~7 frames
            mode = np.where(t < t0, _WALK, _LYING)
            a = _Agent(_random_look(rng), pos, tilt, mode, np.full(F, side), float(rng.uniform(0, 20)))
        elif name == "fighting":
            t0, t1 = self._event_times(rng, to_end=False)
            P = self._event_place(rng, 0.75, 1.2)
            h = float(L.body_height(P[1]))
            for s in (-1.0, 1.0):
                Q = P + np.array([s * 0.17 * h, 0])
                d_from, d_to = (0.0, math.pi) if s < 0 else (math.pi, 0.0)
                pos = _approach(Q, t0, d_from, L, F, leave=d_to, t1=t1)
                fight = (t >= t0) & (t < t1)
                pos[fight] += rng.normal(0, 0.05 * h, (int(fight.sum()), 2)) * [1, 0.4]
                tilt = np.where(fight, -s * (14 + rng.normal(0, 7, F)), 0.0)
                facing = np.where(t < t0, -s, np.where(fight, -s, s))
                arms = rng.uniform(-0.6, 1.6, (F, 2))  # flailing: a new arm pose every frame
                a = _Agent(_random_look(rng), pos, tilt, np.where(fight, _FIGHT, _WALK), facing,
                           float(rng.uniform(0, 20)), arms=arms)
                self.event_agents.append(a)
            self.event = (t0, t1)
            return
        elif name == "running":
            t0, t1 = self._event_times(rng, to_end=False)
            P = self._event_place(rng, 0.6, 1.1)
            pos = _approach(P, t0, d_in, L, F)
            pos[t0:] = self._run_path(rng, P, t1 - t0, F - t0, side)
            mode = np.where((t >= t0) & (t < t1), _RUN, _WALK)
            facing = np.sign(np.diff(pos[:, 0], append=pos[-1, 0] + side * 1e-6))
            facing[facing == 0] = side
            tilt = np.where(mode == _RUN, facing * 18.0, 0.0)
            a = _Agent(_random_look(rng), pos, tilt, mode, facing, float(rng.uniform(0, 20)))
        elif name == "abandoned object":
            t0, t1 = self._event_times(rng, to_end=True)
            P = self._event_place(rng, 0.6, 0.7)
            h = float(L.body_height(P[1]))
            feet = P - np.array([side * 0.17 * h, 0])  # suitcase is carried on the walking side
            pos = _approach(feet, t0, d_in, L, F, leave=d_in, t1=t0 + 3)
            colour = _SUITCASES[int(rng.integers(len(_SUITCASES)))]
            a = _Agent(_random_look(rng), pos, np.zeros(F), np.where((t >= t0) & (t < t0 + 3), _STAND, _WALK),
                       np.full(F, side), float(rng.uniform(0, 20)), carry=t < t0, carry_colour=colour)
            self.suitcase = (P.copy(), colour, t0)
        else:  # fire
            t0, t1 = self._event_times(rng, to_end=False)
            P = self._event_place(rng, 0.65, 1.1)
            self.fire = _Fire(P, 1.15 * float(L.body_height(P[1])), t0, t1, int(rng.integers(2**31)))
            self.event = (t0, t1)
            return
        self.event_agents.append(a)
        self.event = (t0, t1)

    def _defuse_event(self) -> None:
        """Turn the planned event into normal behaviour: the clip becomes the event clip's normal twin.

        Same people on the same paths up to the event; then the faller and the runner walk on at their
        approach pace, the fighters stand together, the suitcase is never set down, and there is no fire.
        """
        F = self.num_frames
        for a in self.event_agents:
            odd = np.isin(a.mode, (_RUN, _LYING))
            if odd.any():
                k = int(np.flatnonzero(odd)[0])
                v = a.pos[k] - a.pos[k - 1] if k > 0 else np.zeros(2)
                a.pos[k:] = a.pos[k] + np.arange(F - k)[:, None] * v
                a.facing[k:] = a.facing[k - 1] if k > 0 else a.facing[k]
                a.mode[odd] = _WALK
            fight = a.mode == _FIGHT
            if fight.any():
                k = int(np.flatnonzero(fight)[0])
                a.pos[fight] = a.pos[max(0, k - 1)]
                a.mode[fight] = _STAND
            a.tilt[:] = 0.0
            a.arms = None
            if a.carry is not None:
                a.carry[:] = True
        self.suitcase, self.fire, self.event = None, None, None

    def _run_path(self, rng: np.random.Generator, P: np.ndarray, n_run: int, n: int,
                  side: float) -> np.ndarray:
        """Run from `P` for `n_run` frames bouncing inside the center crop, then walk on; [n,2]."""
        L = self.layout
        cx0, cx1 = L.crop_x
        y0, y1 = L.walk_y
        y0 = y0 + 0.25 * (y1 - y0)
        speed = rng.uniform(3.5, 5.0)
        ang = (0.0 if side > 0 else math.pi) + rng.normal(0, 0.35)
        out, p = np.empty((n, 2)), P.astype(float).copy()
        for k in range(n):
            out[k] = p
            h = float(L.body_height(p[1]))
            v = np.array([math.cos(ang), 0.5 * math.sin(ang)]) * _WALK_SPEED * h * (speed if k < n_run else 1)
            p = p + v
            if k < n_run and not (cx0 + 0.5 * h < p[0] < cx1 - 0.5 * h):
                ang = math.pi - ang
                p[0] = min(max(p[0], cx0 + 0.5 * h), cx1 - 0.5 * h)
            if not (y0 < p[1] < y1):
                ang = -ang
                p[1] = min(max(p[1], y0), y1)
        return out

    def _plan_photometry(self, rng: np.random.Generator) -> None:
        F, t = self.num_frames, np.arange(self.num_frames)
        amp, period = rng.uniform(0.04, 0.12), rng.uniform(1.0, 3.0) * max(F, 100)
        gain = 1 + amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        tint = 1 + rng.uniform(0.01, 0.04, 3)[None] * np.sin(2 * np.pi * t[:, None] / period * 0.7
                                                               + rng.uniform(0, 2 * np.pi, 3)[None])
        self.gains = (gain[:, None] * tint).astype(np.float32)  # [F,3] per-channel BGR gain
        sigma = rng.uniform(2.0, 5.0)
        H, W = self.layout.height, self.layout.width
        self.noise = (rng.standard_normal((8, H, W, 3)) * sigma).astype(np.float32)  # reused bank
        self.noise_index = rng.integers(0, 8, F)

    # --- ground truth ---------------------------------------------------------------------------------------
    def _event_box(self, i: int) -> np.ndarray | None:
        boxes = []
        for a in self.event_agents:
            if a.mode[i] in (_RUN, _FIGHT, _LYING):
                h = float(self.layout.body_height(a.pos[i, 1]))
                boxes += [p.bbox() for p in self._agent_prims(a, i, h)]
        if self.suitcase is not None and i >= self.suitcase[2]:
            P, col, _ = self.suitcase
            boxes += [p.bbox() for p in _suitcase_prims(col, P, float(self.layout.body_height(P[1])))]
        if self.fire is not None:
            boxes += [p.bbox() for p in self.fire.prims(i)]
        if not boxes:
            return None
        b = _union(boxes)
        W, H = self.layout.width, self.layout.height
        b = np.clip(b, [0, 0, 0, 0], [W, H, W, H])
        return b if b[2] > b[0] and b[3] > b[1] else None

    def _ground_truth(self) -> tuple[np.ndarray, np.ndarray]:
        F = self.num_frames
        labels = np.zeros(F, np.int64)
        boxes = np.full((F, 4), np.nan, np.float32)
        if self.event is None:
            return labels, boxes
        t0, t1 = self.event
        cls = CLASS_NAMES.index(self.class_name)
        for i in range(t0, t1):
            b = self._event_box(i)
            if b is not None:
                labels[i], boxes[i] = cls, b
        labels[t0:t1] = cls  # the event is on even in a frame where its box would be empty
        return labels, boxes

    def _agent_prims(self, a: _Agent, i: int, h: float) -> list[_Prim]:
        prims = _body_prims(a, i, h)
        if a.mode[i] == _RUN and i >= 2:  # motion-blur trail: fading copies at earlier positions
            trail = []
            ground = self.layout.background
            for k, fade in ((3, 0.75), (2, 0.6), (1, 0.45)):
                j = max(0, i - k)
                off = (a.pos[j] - a.pos[i]) * 0.8
                x, y = np.clip(np.round(a.pos[i] + off).astype(int), 0,
                               [self.layout.width - 1, self.layout.height - 1])
                bgc = ground[max(0, int(y - 0.5 * h)), x]
                for p in prims:
                    q = _Prim(p.kind, _mix(p.colour, bgc, fade), p.pts + off, p.size)
                    trail.append(q)
            prims = trail + prims
        return prims

    # --- pixels ---------------------------------------------------------------------------------------------
    def render(self, i: int) -> np.ndarray:
        """Draw frame `i` (uint8 BGR [H,W,3])."""
        L = self.layout
        img = L.background.copy()
        draws: list[tuple[float, Callable[[np.ndarray], None]]] = []
        for a in self.agents + self.event_agents:
            if a.visible is not None and not a.visible[i]:
                continue
            h = float(L.body_height(a.pos[i, 1]))
            prims = self._agent_prims(a, i, h)
            draws.append((float(a.pos[i, 1]), lambda im, pr=prims: [p.draw(im) for p in pr]))
        for o in L.occluders:
            draws.append((o.base_y, o.draw))
        if self.suitcase is not None and i >= self.suitcase[2]:
            P, col, _ = self.suitcase
            prims = _suitcase_prims(col, P, float(L.body_height(P[1])))
            draws.append((float(P[1]), lambda im, pr=prims: [p.draw(im) for p in pr]))
        if self.fire is not None and self.fire.strength(i) > 0:
            fire = self.fire
            fire.add_glow(img, i)
            draws.append((float(fire.base[1]), lambda im: [p.draw(im) for p in fire.prims(i)]))
        for _, fn in sorted(draws, key=lambda d: d[0]):
            fn(img)
        out = img.astype(np.float32) * self.gains[i] + self.noise[self.noise_index[i]]
        return np.clip(out, 0, 255).astype(np.uint8)

    def frames(self) -> Iterator[np.ndarray]:
        """Render every frame in order."""
        for i in range(self.num_frames):
            yield self.render(i)

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description of the clip."""
        return {"seed": self.seed, "layout_seed": self.layout_seed, "scene": self.layout.kind,
                "width": self.layout.width, "height": self.layout.height, "num_frames": self.num_frames,
                "fps": self.fps, "class_name": self.class_name,
                "event": list(self.event) if self.event else None,
                "num_agents": len(self.agents) + len(self.event_agents),
                "crop_x": list(self.layout.crop_x)}


def plan_clip(seed: int, *, width: int = 320, height: int = 240, num_frames: int = 300,
              anomaly: str | None = None, fps: float = 25.0, layout_seed: int | None = None,
              twin_of: str | None = None) -> ClipPlan:
    """Plan a clip (layout, motion, ground truth) without rendering it; see `generate_clip`.

    `twin_of` (with a normal clip): the normal twin of the `twin_of` clip with the same seed: the same scene,
    people and lighting, and the event's people present but behaving normally (see `ClipPlan._defuse_event`).
    """
    return ClipPlan(seed, width=width, height=height, num_frames=num_frames, anomaly=anomaly, fps=fps,
                    layout_seed=layout_seed, twin_of=twin_of)


def generate_clip(seed: int, *, width: int = 320, height: int = 240, num_frames: int = 300,
                  anomaly: str | None = None, fps: float = 25.0, layout_seed: int | None = None) -> Clip:
    """Generate one synthetic clip.

    Args:
        seed: drives agents, the event and noise; the same arguments give the same clip bit for bit.
        width: frame width in pixels.
        height: frame height in pixels.
        num_frames: clip length (>= 16).
        anomaly: None or "normal" for a normal clip, else one of `ANOMALY_CLASSES`.
        fps: frame rate recorded in the clip (motion is defined per frame).
        layout_seed: seed of the static scene (camera); defaults to `seed`. Clips sharing it share a scene.

    Returns:
        The rendered `Clip` with per-frame labels and boxes.
    """
    plan = plan_clip(seed, width=width, height=height, num_frames=num_frames, anomaly=anomaly, fps=fps,
                     layout_seed=layout_seed)
    frames = np.stack(list(plan.frames()))
    return Clip(frames, plan.labels, plan.boxes, plan.class_name, plan.event, plan.fps, plan.metadata())


# -------------------------------------------------------------------------------------------------- benchmark
def _sub_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def benchmark_plans(*, split: str, num_videos: int, seed: int, width: int = 320, height: int = 240,
                    num_frames: int = 300, fps: float = 25.0, anomaly_ratio: float = 0.5,
                    classes: Sequence[str] = ANOMALY_CLASSES,
                    num_scenes: int | None = None) -> Iterator[tuple[str, int, ClipPlan]]:
    """The clips of a `write_benchmark` split, in order, without rendering them: (label, scene, plan)."""
    split_code = zlib.crc32(split.encode())
    n_scenes = num_scenes or max(1, math.ceil(num_videos / 4))
    n_anom = round(num_videos * anomaly_ratio)
    order = np.random.default_rng(_sub_seed(seed, split_code, 3)).permutation(num_videos)
    labels = ["normal"] * num_videos
    for k, v in enumerate(order[:n_anom]):
        labels[int(v)] = classes[k % len(classes)]
    for i, label in enumerate(labels):
        scene = i % n_scenes
        yield label, scene, plan_clip(_sub_seed(seed, split_code, 2, i), width=width, height=height,
                                      num_frames=num_frames, anomaly=label, fps=fps,
                                      layout_seed=_sub_seed(seed, split_code, 1, scene))


def write_benchmark(out_dir: str | Path, *, split: str, num_videos: int, seed: int, width: int = 320,
                    height: int = 240, num_frames: int = 300, fps: float = 25.0, anomaly_ratio: float = 0.5,
                    classes: Sequence[str] = ANOMALY_CLASSES, num_scenes: int | None = None,
                    codec: str = "mp4v", progress: bool = False) -> Path:
    """Write a split of the synthetic benchmark: videos plus ground truth in the usual formats.

    Files under `out_dir`:
        `<name>.mp4` (or `.avi` for MJPG): the videos;
        `Temporal_Anomaly_Annotation.txt`: UCF-Crime style, `name  class  s1 e1  s2 e2` with -1 for absent,
            frames 0-based, start inclusive, end exclusive;
        `boxes.csv`: `video,frame,x1,y1,x2,y2,class`, one row per anomalous frame;
        `manifest.json`: sizes, class names and, per video, its label, event, seeds and scene.

    Scene layouts come from (split, seed, scene index), clip content from (split, seed, video index), so two
    splits never share a camera layout even with the same seed.

    Args:
        out_dir: output directory (created).
        split: split name, e.g. "train" or "test".
        num_videos: number of videos.
        seed: base seed.
        width: frame width.
        height: frame height.
        num_frames: frames per video.
        fps: frame rate.
        anomaly_ratio: fraction of videos that hold an anomaly; anomalous videos cycle through `classes`.
        classes: anomaly classes to use.
        num_scenes: number of distinct camera layouts in the split (default: about one per 4 videos).
        codec: "mp4v" (.mp4) or "MJPG" (.avi).
        progress: print one line per video.

    Returns:
        Path of the written manifest.json.
    """
    if codec not in CODECS:
        raise UsageError(f"codec={codec!r} not supported; expected one of {sorted(CODECS)}")
    bad = [c for c in classes if c not in ANOMALY_CLASSES]
    if bad or not classes:
        raise UsageError(f"classes={list(classes)!r}: expected a non-empty subset of {ANOMALY_CLASSES}")
    if num_videos < 1 or not 0 <= anomaly_ratio <= 1:
        raise UsageError(f"num_videos={num_videos}, anomaly_ratio={anomaly_ratio}: "
                         "expected num_videos >= 1 and anomaly_ratio in [0, 1]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = CODECS[codec]
    videos, ann_lines, box_lines = [], [], ["video,frame,x1,y1,x2,y2,class"]
    plans = benchmark_plans(split=split, num_videos=num_videos, seed=seed, width=width, height=height,
                            num_frames=num_frames, fps=fps, anomaly_ratio=anomaly_ratio, classes=classes,
                            num_scenes=num_scenes)
    for i, (label, scene, plan) in enumerate(plans):
        name = f"{split}_{i:04d}_{class_token(label)}{ext}"
        write_video(out / name, plan.frames(), fps, (width, height), codec, num_frames)
        s, e = plan.event if plan.event else (-1, -1)
        ann_lines.append(f"{name}  {class_token(label)}  {s}  {e}  -1  -1")
        for f in np.flatnonzero(~np.isnan(plan.boxes[:, 0])):
            x1, y1, x2, y2 = plan.boxes[f]
            box_lines.append(f"{name},{f},{x1:.1f},{y1:.1f},{x2:.1f},{y2:.1f},{class_token(label)}")
        videos.append({"name": name, "label": label, "label_index": CLASS_NAMES.index(label),
                       "anomalous": label != "normal", "event": list(plan.event) if plan.event else None,
                       "num_frames": num_frames, "scene": scene, "scene_kind": plan.layout.kind,
                       "seed": plan.seed, "layout_seed": plan.layout_seed})
        if progress:
            print(f"[{i + 1}/{num_videos}] {name}  {label}  event={plan.event}", flush=True)
    (out / "Temporal_Anomaly_Annotation.txt").write_text("\n".join(ann_lines) + "\n")
    (out / "boxes.csv").write_text("\n".join(box_lines) + "\n")
    manifest = {"schema": "stp-edge-synthetic/1", "split": split, "seed": seed,
                "class_names": list(CLASS_NAMES),
                "width": width, "height": height, "fps": fps, "num_frames": num_frames, "codec": codec,
                "annotation": "Temporal_Anomaly_Annotation.txt", "boxes": "boxes.csv",
                "frame_ranges": "0-based, [start, end)", "videos": videos}
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float, size: tuple[int, int], codec: str,
                expected: int) -> None:
    """Write BGR frames of `size` (w, h) through `stp_edge.video.VideoWriter`: all `expected` of them or no file.

    Raises:
        VideoError: The writer cannot open, a frame does not fit, `frames` does not yield `expected` frames, or
            the finished file does not hold them all; nothing is left under `path`.
    """
    with VideoWriter(path, fps, size, codec) as writer:
        for f in frames:
            writer.write(f)
        if writer.frames_written != expected:
            raise VideoError(f"{path}: {writer.frames_written} frames to write, expected {expected}")
