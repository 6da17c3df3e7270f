"""Clip plans of the synthetic benchmark: people's motion, the anomaly event and per-frame ground truth.

A clip is a fixed camera (`scenes.make_layout`) with people-like agents walking on the ground plane (smaller
further up the frame), slow lighting drift and sensor noise. An anomalous clip holds exactly one anomaly event,
local in space and time, of one of the classes of `CLASS_NAMES`:

- fighting: two agents meet and stay in contact, leaning in, flailing their arms, jittering;
- falling: an agent tips over to horizontal within a few frames and stays down until the end;
- running: an agent runs at several times walking speed (leaning forward, long stride, motion-blur trail);
- abandoned object: an agent carries a vividly coloured suitcase, sets it down and walks on; it stays;
- fire: a large flickering orange/yellow flame with a warm glow on the ground around it.

Events happen inside the centre square of the frame (the part CLIP's center crop keeps), away from the static
occluders, so they are visible in the frames a model sees. Ground truth: per-frame class labels, per-frame
boxes (x1, y1, x2, y2 in pixels, NaN when the frame is normal) and the event's [start, end) frame range.
Falling and abandoned object events last until the end of the clip (the person stays down, the object stays).

A `ClipPlan` holds everything but the pixels; a 320x240, 300-frame clip renders in well under a second, and the
same seed gives the same clip, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from stp_edge.config import DEMO_CLASSES
from stp_edge.errors import UsageError
from stp_edge.synthetic.scenes import (
    FIGHT,
    LYING,
    RUN,
    STAND,
    SUITCASE_COLOURS,
    WALK,
    Agent,
    Fire,
    Layout,
    Prim,
    body_prims,
    make_layout,
    mix,
    overlap_area,
    random_look,
    suitcase_prims,
    union_box,
)

CLASS_NAMES: tuple[str, ...] = DEMO_CLASSES
ANOMALY_CLASSES: tuple[str, ...] = CLASS_NAMES[1:]

_WALK_SPEED = 0.03  # body heights per frame at 25 fps (about 1.3 m/s for a 1.7 m person)


# ----------------------------------------------------------------------------------------------------- motion
def _walk_path(rng: np.random.Generator, layout: Layout, F: int, start: np.ndarray, direction: float,
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


def _approach(P: np.ndarray, t0: int, direction: float, layout: Layout, F: int, speed: float = 1.0,
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
        self.agents: list[Agent] = []
        self.event_agents: list[Agent] = []
        # (ground point, colour, drop frame)
        self.suitcase: tuple[np.ndarray, tuple[int, int, int], int] | None = None
        self.fire: Fire | None = None
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
            look = random_look(rng)
            if rng.random() < 0.2:  # someone standing around, shifting a little
                pos = start + np.cumsum(rng.normal(0, 0.15, (F, 2)), 0) * [1, 0.3]
                pos[:, 1] = np.clip(pos[:, 1], y0, y1)
                self.agents.append(Agent(look, pos, np.zeros(F), np.full(F, STAND), np.ones(F), 0.0))
                continue
            pos, facing = _walk_path(rng, L, F, start, rng.choice([0.0, math.pi]) + rng.normal(0, 0.4),
                                     speed=rng.uniform(0.8, 1.2))
            self.agents.append(Agent(look, pos, np.zeros(F), np.full(F, WALK), facing,
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
            if all(overlap_area(box, o.box) == 0 for o in L.occluders):
                return np.array([x, y])
        # Crowded layout: put the event mid-ground in the centre and drop the occluders in its way.
        y = y0 + 0.6 * (y1 - y0)
        h, x = float(L.body_height(y)), (cx0 + cx1) / 2
        box = np.array([x - half_w * h, y - half_h * h, x + half_w * h, y + 0.2 * h])
        L.occluders = [o for o in L.occluders if overlap_area(box, o.box) == 0]
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
            mode = np.where(t < t0, WALK, LYING)
            a = Agent(random_look(rng), pos, tilt, mode, np.full(F, side), float(rng.uniform(0, 20)))
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
                a = Agent(random_look(rng), pos, tilt, np.where(fight, FIGHT, WALK), facing,
                           float(rng.uniform(0, 20)), arms=arms)
                self.event_agents.append(a)
            self.event = (t0, t1)
            return
        elif name == "running":
            t0, t1 = self._event_times(rng, to_end=False)
            P = self._event_place(rng, 0.6, 1.1)
            pos = _approach(P, t0, d_in, L, F)
            pos[t0:] = self._run_path(rng, P, t1 - t0, F - t0, side)
            mode = np.where((t >= t0) & (t < t1), RUN, WALK)
            facing = np.sign(np.diff(pos[:, 0], append=pos[-1, 0] + side * 1e-6))
            facing[facing == 0] = side
            tilt = np.where(mode == RUN, facing * 18.0, 0.0)
            a = Agent(random_look(rng), pos, tilt, mode, facing, float(rng.uniform(0, 20)))
        elif name == "abandoned object":
            t0, t1 = self._event_times(rng, to_end=True)
            P = self._event_place(rng, 0.6, 0.7)
            h = float(L.body_height(P[1]))
            feet = P - np.array([side * 0.17 * h, 0])  # suitcase is carried on the walking side
            pos = _approach(feet, t0, d_in, L, F, leave=d_in, t1=t0 + 3)
            colour = SUITCASE_COLOURS[int(rng.integers(len(SUITCASE_COLOURS)))]
            a = Agent(random_look(rng), pos, np.zeros(F), np.where((t >= t0) & (t < t0 + 3), STAND, WALK),
                       np.full(F, side), float(rng.uniform(0, 20)), carry=t < t0, carry_colour=colour)
            self.suitcase = (P.copy(), colour, t0)
        else:  # fire
            t0, t1 = self._event_times(rng, to_end=False)
            P = self._event_place(rng, 0.65, 1.1)
            self.fire = Fire(P, 1.15 * float(L.body_height(P[1])), t0, t1, int(rng.integers(2**31)))
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
            odd = np.isin(a.mode, (RUN, LYING))
            if odd.any():
                k = int(np.flatnonzero(odd)[0])
                v = a.pos[k] - a.pos[k - 1] if k > 0 else np.zeros(2)
                a.pos[k:] = a.pos[k] + np.arange(F - k)[:, None] * v
                a.facing[k:] = a.facing[k - 1] if k > 0 else a.facing[k]
                a.mode[odd] = WALK
            fight = a.mode == FIGHT
            if fight.any():
                k = int(np.flatnonzero(fight)[0])
                a.pos[fight] = a.pos[max(0, k - 1)]
                a.mode[fight] = STAND
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
            if a.mode[i] in (RUN, FIGHT, LYING):
                h = float(self.layout.body_height(a.pos[i, 1]))
                boxes += [p.bbox() for p in self._agent_prims(a, i, h)]
        if self.suitcase is not None and i >= self.suitcase[2]:
            P, col, _ = self.suitcase
            boxes += [p.bbox() for p in suitcase_prims(col, P, float(self.layout.body_height(P[1])))]
        if self.fire is not None:
            boxes += [p.bbox() for p in self.fire.prims(i)]
        if not boxes:
            return None
        b = union_box(boxes)
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

    def _agent_prims(self, a: Agent, i: int, h: float) -> list[Prim]:
        prims = body_prims(a, i, h)
        if a.mode[i] == RUN and i >= 2:  # motion-blur trail: fading copies at earlier positions
            trail = []
            ground = self.layout.background
            for k, fade in ((3, 0.75), (2, 0.6), (1, 0.45)):
                j = max(0, i - k)
                off = (a.pos[j] - a.pos[i]) * 0.8
                x, y = np.clip(np.round(a.pos[i] + off).astype(int), 0,
                               [self.layout.width - 1, self.layout.height - 1])
                bgc = ground[max(0, int(y - 0.5 * h)), x]
                for p in prims:
                    q = Prim(p.kind, mix(p.colour, bgc, fade), p.pts + off, p.size)
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
            prims = suitcase_prims(col, P, float(L.body_height(P[1])))
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
