"""Stage 3, temporal: each stream's feature ring, the schedule, and the temporal graph on each ready window.

The schedule (docs/architecture.md, "Streaming"): with context c, the output for snippet t depends only on
snippets [t-c, t+c] clipped to the video. So once snippet t+c is encoded (or the stream is flushed), the
temporal graph runs on the window [max(0, t-c), min(n, t+c+1)) and snippet t is emitted. A `FeatureRing` of
2c+1 snippets holds every feature such a window needs, so each snippet costs the same however long the
stream has run.

In: encoded features (appended to the ring), then `Window`s cut from it (the snippet's features with up to c
neighbours on each side). Out: one `TemporalOutput` per window: the score and class probabilities of its
target snippet, and that snippet's region features for the spatial stage. Windows of equal length, from any
streams, share one graph call (in chunks of the runner's `max_batch()`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stp_edge.backends.base import Runner
from stp_edge.errors import UsageError


class FeatureRing:
    """Per-snippet features of one stream for the last `capacity` snippets (capacity 2c+1).

    Snippet ids must arrive consecutively from 0; `window(lo, hi)` returns the stacked features of snippets
    [lo, hi) and refuses ids that have already been overwritten or not yet written.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise UsageError(f"FeatureRing capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.count = 0  # snippets appended so far == next snippet id
        self._frame: np.ndarray | None = None
        self._region: np.ndarray | None = None

    def append(self, snippet: int, frame_emb: np.ndarray, region_emb: np.ndarray) -> None:
        """Store frame_emb [E] and region_emb [R2, E] of snippet `snippet` (must equal `count`)."""
        if snippet != self.count:
            raise UsageError(f"FeatureRing: snippet {snippet} appended, expected snippet {self.count}")
        if self._frame is None:
            self._frame = np.zeros((self.capacity, *frame_emb.shape), dtype=np.float32)
            self._region = np.zeros((self.capacity, *region_emb.shape), dtype=np.float32)
        assert self._region is not None
        if frame_emb.shape != self._frame.shape[1:] or region_emb.shape != self._region.shape[1:]:
            raise UsageError(f"FeatureRing: snippet {snippet} features have shapes {frame_emb.shape}, "
                             f"{region_emb.shape}, expected {self._frame.shape[1:]}, {self._region.shape[1:]}")
        self._frame[snippet % self.capacity] = frame_emb
        self._region[snippet % self.capacity] = region_emb
        self.count += 1

    def window(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """frame_emb [hi-lo, E] and region_emb [hi-lo, R2, E] of snippets [lo, hi), in order."""
        oldest = max(0, self.count - self.capacity)
        if not (oldest <= lo < hi <= self.count):
            raise UsageError(f"FeatureRing: window [{lo}, {hi}) is not held; the ring holds snippets "
                             f"[{oldest}, {self.count})")
        assert self._frame is not None and self._region is not None
        idx = np.arange(lo, hi) % self.capacity
        return self._frame[idx], self._region[idx]

    def get(self, snippet: int) -> tuple[np.ndarray, np.ndarray]:
        """Features of one snippet."""
        f, r = self.window(snippet, snippet + 1)
        return f[0], r[0]


def ready_snippets(n_encoded: int, n_emitted: int, context: int, *, final: bool = False) -> range:
    """Snippet ids that can be emitted now: those t >= n_emitted with t + context < n_encoded (all at flush)."""
    end = n_encoded if final else max(n_emitted, n_encoded - context)
    return range(n_emitted, end)


def temporal_window(t: int, n: int, context: int) -> tuple[int, int]:
    """Window [lo, hi) the temporal graph runs on for snippet t, with n snippets encoded (the total at flush)."""
    if not 0 <= t < n:
        raise UsageError(f"temporal_window: snippet {t} is not among the {n} encoded snippets")
    return max(0, t - context), min(n, t + context + 1)


@dataclass(frozen=True)
class Window:
    """The temporal input of one snippet: features of snippets [lo, hi) and the snippet's position in them.

    Attributes:
        frame_emb: [T, E].
        region_emb: [T, R2, E].
        position: Index of the target snippet inside the window (t - lo).
    """

    frame_emb: np.ndarray
    region_emb: np.ndarray
    position: int


@dataclass(frozen=True)
class TemporalOutput:
    """The temporal stream's result for one snippet.

    Attributes:
        score: Anomaly score in [0, 1].
        class_probs: [K] class probabilities.
        region_emb: [R2, E] region features of the snippet (what the spatial stage scores).
        ms: Time of the graph call that computed it.
    """

    score: float
    class_probs: np.ndarray
    region_emb: np.ndarray
    ms: float


class TemporalHead:
    """Runs the temporal graph on windows; windows of equal length are batched into one call."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __call__(self, windows: Sequence[Window]) -> list[TemporalOutput]:
        """One output per window, in order."""
        groups: dict[int, list[int]] = defaultdict(list)
        for i, w in enumerate(windows):
            groups[len(w.frame_emb)].append(i)
        out: list[TemporalOutput | None] = [None] * len(windows)
        for members in groups.values():
            t0 = time.perf_counter()
            res = self.runner.infer_batched({"frame_emb": np.stack([windows[i].frame_emb for i in members]),
                                             "region_emb": np.stack([windows[i].region_emb for i in members])})
            ms = (time.perf_counter() - t0) * 1e3
            for g, i in enumerate(members):
                pos = windows[i].position
                out[i] = TemporalOutput(float(res["score"][g, pos]),
                                        np.asarray(res["class_probs"][g, pos], dtype=np.float32),
                                        windows[i].region_emb[pos], ms)
        return out  # type: ignore[return-value]
