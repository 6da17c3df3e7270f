"""Scene primitives of the synthetic benchmark: camera layouts, people, suitcases and fire, drawn with OpenCV.

A camera layout is a procedural scene (tiled plaza, street or park: textured ground in perspective, a back wall /
buildings / trees, static foreground objects such as pillars, benches, bins) rendered once into a background.
People, suitcases and flames are lists of `Prim`s: the same list gives the pixels and the ground-truth box.
Each frame is drawn on the precomputed background, which keeps rendering cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

SCENE_KINDS: tuple[str, ...] = ("plaza", "street", "park")

_MAX_HEIGHT = 0.34  # body height at the bottom row, as a fraction of the frame height


# ------------------------------------------------------------------------------------------ primitives
# A drawable body is a list of primitives; the same list gives the pixels (cv2) and the ground-truth box.
@dataclass
class Prim:
    """One OpenCV drawing primitive of a body, suitcase or flame, with its colour and extent."""

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


def union_box(boxes: Sequence[np.ndarray]) -> np.ndarray:
    """The smallest box (x1, y1, x2, y2) holding every box of `boxes`."""
    b = np.stack(boxes)
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])


def mix(c1: Sequence[float], c2: Sequence[float], t: float) -> tuple[int, int, int]:
    """The colour a fraction `t` of the way from `c1` to `c2`, rounded to integers."""
    return tuple(round(a * (1 - t) + b * t) for a, b in zip(c1, c2, strict=True))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- agents
@dataclass
class Look:
    """The colours of one person (BGR)."""

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
SUITCASE_COLOURS = [(40, 40, 230), (220, 90, 20), (200, 40, 200), (60, 200, 40)]  # red, blue, magenta, green


def random_look(rng: np.random.Generator) -> Look:
    """A person's colours drawn from the muted palettes."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    return Look(pick(_SHIRTS), pick(_TROUSERS), pick(_SKINS), pick(_HAIRS))


@dataclass
class Agent:
    """One person: per-frame foot position, tilt and mode, planned before any frame is drawn."""

    look: Look
    pos: np.ndarray  # [F,2] foot point (x, y) in pixels
    tilt: np.ndarray  # [F] degrees; 0 upright, +-90 lying
    mode: np.ndarray  # [F] int: 0 walk, 1 stand, 2 run, 3 fight, 4 lying
    facing: np.ndarray  # [F] +1 right / -1 left
    phase: float
    arms: np.ndarray | None = None  # [F,2] arm angles (fight), radians in the body frame
    visible: np.ndarray | None = None  # [F] bool; None = always drawn (cv2 clips what is off-frame)
    carry: np.ndarray | None = None  # [F] bool: carrying the suitcase
    carry_colour: tuple[int, int, int] = (0, 0, 0)


WALK, STAND, RUN, FIGHT, LYING = 0, 1, 2, 3, 4  # the values of `Agent.mode`


def body_prims(a: Agent, i: int, h: float) -> list[Prim]:
    """Primitives of agent `a` at frame `i` with body height `h` (pixels)."""
    foot = a.pos[i]
    th = math.radians(a.tilt[i])
    up = np.array([math.sin(th), -math.cos(th)])
    right = np.array([math.cos(th), math.sin(th)])
    P = lambda x, y: foot + (x * right + y * up) * h  # noqa: E731  local (x right, y up) in body heights
    mode, f = int(a.mode[i]), float(a.facing[i])
    t = i + a.phase
    if mode == RUN:
        swing, sw_arm = 0.32 * math.sin(t * 0.9), 0.28 * math.sin(t * 0.9)
    elif mode == WALK:
        swing, sw_arm = 0.12 * math.sin(t * 0.35), 0.07 * math.sin(t * 0.35)
    elif mode == FIGHT:
        swing, sw_arm = 0.18, 0.0
    else:
        swing, sw_arm = 0.03, 0.0
    look, prims = a.look, []
    legw, armw = 0.09 * h, 0.065 * h
    hip = P(0, 0.47)
    prims.append(Prim("line", look.trousers, np.stack([hip, P(swing, 0)]), (legw,)))
    prims.append(Prim("line", mix(look.trousers, (0, 0, 0), 0.2), np.stack([hip, P(-swing, 0)]), (legw,)))
    ang = math.degrees(th)
    prims.append(Prim("ellipse", look.shirt, P(0, 0.66)[None], (0.12 * h, 0.2 * h, ang)))
    arm_col = mix(look.shirt, (0, 0, 0), 0.25)
    for side in (-1, 1):
        sh = P(0.07 * side, 0.8)
        if mode == FIGHT and a.arms is not None:
            al = a.arms[i, (side + 1) // 2]
            hand = sh + (math.cos(al) * right * f + math.sin(al) * up) * 0.42 * h
            prims.append(Prim("line", arm_col, np.stack([sh, hand]), (armw,)))
            prims.append(Prim("circle", look.skin, hand[None], (0.05 * h,)))
        else:
            hand = P(0.07 * side + side * sw_arm * f, 0.48)
            prims.append(Prim("line", arm_col, np.stack([sh, hand]), (armw,)))
    head = P(0.02 * f if mode == RUN else 0, 0.9)
    prims.append(Prim("circle", look.skin, head[None], (0.085 * h,)))
    prims.append(Prim("ellipse", look.hair, (head + up * 0.04 * h)[None], (0.08 * h, 0.05 * h, ang)))
    if a.carry is not None and a.carry[i]:
        prims.extend(suitcase_prims(a.carry_colour, P(0.17 * f, 0.1), h))
    return prims


def suitcase_prims(colour: tuple[int, int, int], base: np.ndarray, h: float) -> list[Prim]:
    """A standing suitcase whose bottom centre is `base`: body, white band, handle, wheels."""
    w, ht = 0.55 * h, 0.45 * h
    x0, x1, y1 = base[0] - w / 2, base[0] + w / 2, base[1]
    y0 = y1 - ht
    dark = mix(colour, (0, 0, 0), 0.45)
    return [
        Prim("rect", dark, np.array([[x0 + w * 0.3, y0 - ht * 0.22], [x1 - w * 0.3, y0 + 1]])),
        Prim("rect", colour, np.array([[x0 + w * 0.4, y0 - ht * 0.12], [x1 - w * 0.4, y0 + 1]])),
        Prim("rect", dark, np.array([[x0, y0], [x1, y1]])),
        Prim("rect", colour, np.array([[x0 + 1.5, y0 + 1.5], [x1 - 1.5, y1 - 1.5]])),
        Prim("rect", (235, 235, 235), np.array([[x0 + 1.5, y0 + ht * 0.42], [x1 - 1.5, y0 + ht * 0.58]])),
    ]


# ---------------------------------------------------------------------------------------------- layout
@dataclass
class Occluder:
    """A static foreground object (pillar, bench, bin): a masked patch that hides people standing behind it."""

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
class Layout:
    """The static scene of one camera: background picture, horizon, occluders, and its perspective."""

    kind: str
    width: int
    height: int
    horizon: float
    background: np.ndarray  # [H,W,3] uint8
    occluders: list[Occluder]

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
                   base_y: float) -> Occluder:
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
    return Occluder(int(x - w / 2), int(base_y - mask.shape[0]), patch, mask, base_y)


def make_layout(layout_seed: int, width: int = 320, height: int = 240) -> Layout:
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
    layout = Layout(kind, width, height, horizon, bg, [])
    y0, y1 = layout.walk_y
    for _ in range(int(rng.integers(2, 5))):
        okind = ("pillar", "bench", "bin")[int(rng.integers(3))]
        by = float(rng.uniform(y0 + 0.1 * (y1 - y0), y1 - 6))
        ox = float(rng.uniform(0.05, 0.95) * width)
        occ = _make_occluder(okind, rng, layout.body_height, ox, by)
        if all(overlap_area(occ.box, o.box) == 0 for o in layout.occluders):
            layout.occluders.append(occ)
    return layout


def overlap_area(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area of two boxes (0 when disjoint)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


# ------------------------------------------------------------------------------------------------------- fire
@dataclass
class Fire:
    """A flickering flame that grows in, burns from `t0` to `t1` and lights the ground around it."""

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

    def prims(self, i: int) -> list[Prim]:
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
                prims.append(Prim("poly", col, pts))
            ember = np.array([[bx, by - 0.12 * w * k]])
            prims.append(Prim("ellipse", col, ember, (0.5 * w * k, 0.16 * w * k, 0)))
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
