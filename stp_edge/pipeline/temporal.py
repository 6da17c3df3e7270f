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

A frame-only model (`config.region_term` false, e.g. trained on VadCLIP's features) ignores `region_emb` inside its
temporal graph, whose I/O stays the same; the ring still holds the region features, for the spatial stage.

A snippet whose features are missing (its encoder call failed, or returned values its contract forbids) is a cut
in the stream, like the ends of a video: the windows of its neighbours stop short of it, so they are computed as
near a video's end or start, and every snippet before it can be emitted at once.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stp_edge.backends.base import Runner
from stp_edge.bundle.contract import Shape
from stp_edge.errors import UsageError
from stp_edge.pipeline.calls import Item, OnError, run_graph


class FeatureRing:
    """Per-snippet features of one stream for the last `capacity` snippets (capacity 2c+1).

    Snippet ids must arrive consecutively from 0; `window(lo, hi)` returns the stacked features of snippets
    [lo, hi) and refuses ids that have already been overwritten, not yet written, or are missing (a snippet
    appended by `append_missing`, whose features could not be computed).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise UsageError(f"FeatureRing capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.count = 0  # snippets appended so far == next snippet id
        self._frame: np.ndarray | None = None
        self._region: np.ndarray | None = None
        self._missing: set[int] = set()  # held snippet ids without features

    def append(self, snippet: int, frame_emb: np.ndarray, region_emb: np.ndarray) -> None:
        """Store frame_emb [E] and region_emb [R2, E] of snippet `snippet` (must equal `count`)."""
        self._check_next(snippet)
        if self._frame is None:
            self._frame = np.zeros((self.capacity, *frame_emb.shape), dtype=np.float32)
            self._region = np.zeros((self.capacity, *region_emb.shape), dtype=np.float32)
        assert self._region is not None
        if frame_emb.shape != self._frame.shape[1:] or region_emb.shape != self._region.shape[1:]:
            raise UsageError(f"FeatureRing: snippet {snippet} features have shapes {frame_emb.shape}, "
                             f"{region_emb.shape}, expected {self._frame.shape[1:]}, {self._region.shape[1:]}")
        self._frame[snippet % self.capacity] = frame_emb
        self._region[snippet % self.capacity] = region_emb
        self._advance()

    def append_missing(self, snippet: int) -> None:
        """Take snippet `snippet` (must equal `count`) without features: no window may include it."""
        self._check_next(snippet)
        if self._frame is not None and self._region is not None:
            self._frame[snippet % self.capacity] = np.nan  # never read: a bug that did would show
            self._region[snippet % self.capacity] = np.nan
        self._missing.add(snippet)
        self._advance()

    def _check_next(self, snippet: int) -> None:
        if snippet != self.count:
            raise UsageError(f"FeatureRing: snippet {snippet} appended, expected snippet {self.count}")

    def _advance(self) -> None:
        self.count += 1
        oldest = self.count - self.capacity
        self._missing = {m for m in self._missing if m >= oldest}

    @property
    def last_missing(self) -> int:
        """The latest held snippet without features, or -1."""
        return max(self._missing, default=-1)

    def segment(self, snippet: int) -> tuple[int, int]:
        """[start, stop): the run of snippets with features around `snippet`, cut by missing ones (or the ends)."""
        start = max((m + 1 for m in self._missing if m < snippet), default=0)
        stop = min((m for m in self._missing if m > snippet), default=self.count)
        return start, stop

    def window(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """frame_emb [hi-lo, E] and region_emb [hi-lo, R2, E] of snippets [lo, hi), in order."""
        self._check_window(lo, hi)
        assert self._frame is not None and self._region is not None
        idx = np.arange(lo, hi) % self.capacity
        return self._frame[idx], self._region[idx]

    def _check_window(self, lo: int, hi: int) -> None:
        """Refuse a window with snippets not held (overwritten, not yet written) or without features."""
        oldest = max(0, self.count - self.capacity)
        if not (oldest <= lo < hi <= self.count):
            raise UsageError(f"FeatureRing: window [{lo}, {hi}) is not held; the ring holds snippets "
                             f"[{oldest}, {self.count})")
        missing = sorted(m for m in self._missing if lo <= m < hi)
        if missing:
            raise UsageError(f"FeatureRing: window [{lo}, {hi}) includes snippet(s) {missing} without features")

    def get(self, snippet: int) -> tuple[np.ndarray, np.ndarray]:
        """Features of one snippet."""
        f, r = self.window(snippet, snippet + 1)
        return f[0], r[0]


def ready_snippets(n_encoded: int, n_emitted: int, context: int, *, final: bool = False, cut: int = -1) -> range:
    """Snippet ids that can be emitted now: those t >= n_emitted with t + context < n_encoded (all at flush).

    `cut`: the latest snippet without features (-1: none): every snippet up to it is ready too, since no window
    of an earlier snippet reaches past it.
    """
    end = n_encoded if final else max(n_emitted, n_encoded - context, min(cut + 1, n_encoded))
    return range(n_emitted, end)


def temporal_window(t: int, n: int, context: int, start: int = 0) -> tuple[int, int]:
    """Window [lo, hi) the temporal graph runs on for snippet t, within snippets [start, n) (n: the total at flush).

    `start` and `n` are the ends of the stream, or the cuts of `FeatureRing.segment`.
    """
    if not start <= t < n:
        raise UsageError(f"temporal_window: snippet {t} is not among the encoded snippets [{start}, {n})")
    return max(start, t - context), min(n, t + context + 1)


def temporal_chunks(n: int, max_len: int, context: int) -> list[tuple[int, int, int, int]]:
    """Cut snippets [0, n) into graph calls of at most `max_len` snippets: (lo, hi, keep_lo, keep_hi) each.

    A call on [lo, hi) keeps the outputs of [keep_lo, keep_hi): the snippets whose whole streaming window
    (`temporal_window`) lies inside it, so each kept output equals the streamed one. The kept ranges tile
    [0, n). For an engine whose optimisation profile bounds T (TensorRT plans: 2c+1 by default).
    """
    window = 2 * context + 1
    if max_len < window:
        raise UsageError(f"temporal_chunks: max_len={max_len} is below the streaming window 2c+1={window}")
    chunks, keep_lo = [], 0
    while keep_lo < n:
        lo = max(0, keep_lo - context)
        hi = min(n, lo + max_len)
        keep_hi = hi if hi == n else hi - context
        chunks.append((lo, hi, keep_lo, keep_hi))
        keep_lo = keep_hi
    return chunks


@dataclass(frozen=True)
class Window:
    """The temporal input of one snippet: features of snippets [lo, hi) and the snippet's position in them.

    Attributes:
        frame_emb: [T, E].
        region_emb: [T, R2, E].
        position: Index of the target snippet inside the window (t - lo).
        label: How messages name the target snippet ("stream 0 snippet 12").
    """

    frame_emb: np.ndarray
    region_emb: np.ndarray
    position: int
    label: str = "snippet"


@dataclass(frozen=True)
class TemporalOutput:
    """The temporal stream's result for one snippet.

    Attributes:
        score: Anomaly score in [0, 1] (NaN when `invalid`).
        class_probs: [K] class probabilities (NaN when `invalid`).
        region_emb: [R2, E] region features of the snippet (what the spatial stage scores).
        ms: Time of the graph call that computed it.
        invalid: Why the graph gave no usable output for this snippet (call failed, or values its contract
            forbids), or None.
    """

    score: float
    class_probs: np.ndarray
    region_emb: np.ndarray
    ms: float
    invalid: str | None = None


class TemporalHead:
    """Runs the temporal graph on windows; windows of equal length are batched into one call.

    Args:
        runner: The temporal graph.
        outputs: Output name -> contract shape (`expected_io(config)["temporal"]["outputs"]`), which the outputs
            are checked against, with their ranges (`stp_edge.pipeline.calls.run_graph`).
        stack: Windows' arrays -> one batch feed (np.stack; the device feature path binds one window in place
            and gathers several on the device: `stp_edge.pipeline.device`).
        row: (array, i) -> its row i (the target snippet's region features).
    """

    def __init__(self, runner: Runner, outputs: dict[str, Shape], *, stack: Callable[[list[Any]], Any] = np.stack,
                 row: Callable[[Any, int], Any] = lambda a, i: a[i]) -> None:
        self.runner = runner
        self.outputs = outputs
        self.stack, self.row = stack, row

    def __call__(self, windows: Sequence[Window], *, on_error: OnError | None = None) -> list[TemporalOutput]:
        """One output per window, in order; without `on_error` a failed or invalid call raises.

        Only the target snippet's values of each window are checked and used.
        """
        groups: dict[int, list[int]] = defaultdict(list)
        for i, w in enumerate(windows):
            groups[int(w.frame_emb.shape[0])].append(i)
        out: list[TemporalOutput | None] = [None] * len(windows)
        for length, members in groups.items():
            t0 = time.perf_counter()
            items = [Item(windows[i].label, (g, windows[i].position)) for g, i in enumerate(members)]
            res, problems = run_graph(
                self.runner, "temporal",
                {"frame_emb": self.stack([windows[i].frame_emb for i in members]),
                 "region_emb": self.stack([windows[i].region_emb for i in members])},
                expected=self.outputs, dims={"B": len(members), "T": length}, items=items, on_error=on_error)
            ms = (time.perf_counter() - t0) * 1e3
            for g, i in enumerate(members):
                w = windows[i]
                if problems[g] is not None or res is None:
                    k = self.outputs["class_probs"][-1]
                    out[i] = TemporalOutput(float("nan"), np.full(k if isinstance(k, int) else 0, np.nan, np.float32),
                                            self.row(w.region_emb, w.position), ms, problems[g] or "no output")
                else:
                    out[i] = TemporalOutput(float(res["score"][g, w.position]),
                                            np.asarray(res["class_probs"][g, w.position], dtype=np.float32),
                                            self.row(w.region_emb, w.position), ms)
        return out  # type: ignore[return-value]
