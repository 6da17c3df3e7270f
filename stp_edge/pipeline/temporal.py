"""Stage 4, temporal: the temporal graph (SA2, adapter, C- and A-branch) on each ready snippet's window.

In: `Window`s cut from the feature rings by the scheduler (the snippet's features with up to c neighbours on
each side). Out: one `TemporalOutput` per window, the score and class probabilities of its target snippet.
Windows of equal length, from any streams, share one graph call (in chunks of the runner's `max_batch()`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stp_edge.backends.base import Runner


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
    """The temporal stream's result for one snippet: anomaly score, [K] class probabilities, call time (ms)."""

    score: float
    class_probs: np.ndarray
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
                                        np.asarray(res["class_probs"][g, pos], dtype=np.float32), ms)
        return out  # type: ignore[return-value]
