"""Stage 4, spatial: which snippets get the spatial stream, the spatial graph, and the anomaly map.

The spatial stream is training-free, as in the paper: region features are compared with normal and abnormal text
queries inside `spatial.onnx`, which returns one score per region. It runs on the snippets `spatial_gate`
selects: those whose score passes the threshold ("flagged", the default), every snippet ("all"), or none.
The map's cells are the regions in row-major order; where each lies in the frame (the centre crop, or a window of
the whole frame with region extent "frame") is the boxes stage's `region_cells`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stp_edge.backends.base import Runner
from stp_edge.bundle.contract import Shape
from stp_edge.errors import UsageError
from stp_edge.pipeline.calls import Item, OnError, run_graph

SPATIAL_MODES = ("flagged", "all", "off")


def spatial_gate(score: float, mode: str, threshold: float) -> bool:
    """Whether a snippet with temporal `score` gets the spatial stream under `mode` (one of SPATIAL_MODES)."""
    if mode not in SPATIAL_MODES:
        raise UsageError(f"spatial_on must be one of {SPATIAL_MODES}, got {mode!r}")
    return mode == "all" or (mode == "flagged" and score >= threshold)


def anomaly_map(region_scores: np.ndarray) -> np.ndarray:
    """[R2] region scores (row-major) -> [R, R] map."""
    r2 = int(region_scores.shape[-1])
    R = round(np.sqrt(r2))
    if R * R != r2:
        raise UsageError(f"anomaly_map: {r2} region scores is not a square grid")
    return np.asarray(region_scores, dtype=np.float32).reshape(R, R)


@dataclass(frozen=True)
class SpatialOutput:
    """The spatial stream's result for one snippet: [R2] region scores, the [R, R] map, call time (ms).

    `invalid`: why the graph gave no usable output for this snippet (then the scores and map are None), or None.
    """

    region_scores: np.ndarray | None
    anomaly_map: np.ndarray | None
    ms: float
    invalid: str | None = None


class SpatialHead:
    """Runs the spatial graph on the region features of the gated snippets, in one call.

    Or in chunks of the runner's `max_batch()`: a flush emits up to c+1 snippets per stream at once. The outputs
    are checked against `outputs` (`expected_io(config)["spatial"]["outputs"]`) and their ranges.
    """

    def __init__(self, runner: Runner, outputs: dict[str, Shape], *,
                 stack: Callable[[list[Any]], Any] = np.stack) -> None:
        self.runner = runner
        self.outputs = outputs
        self.stack = stack  # region features -> one batch feed (the device path: in place, or gathered on the GPU)

    def __call__(self, region_emb: Sequence[np.ndarray], labels: Sequence[str] | None = None, *,
                 on_error: OnError | None = None) -> list[SpatialOutput]:
        """One output per [R2, E] region feature array, in order (none for an empty sequence).

        `labels` name the snippets in messages; without `on_error` a failed or invalid call raises.
        """
        if not region_emb:
            return []
        labels = list(labels) if labels is not None else [f"snippet {i}" for i in range(len(region_emb))]
        t0 = time.perf_counter()
        res, problems = run_graph(self.runner, "spatial", {"region_emb": self.stack(list(region_emb))},
                                  expected=self.outputs, dims={"B": len(region_emb)},
                                  items=[Item(label, (i,)) for i, label in enumerate(labels)], on_error=on_error)
        ms = (time.perf_counter() - t0) * 1e3
        if res is None or all(p is not None for p in problems):  # failed, or unusable as a whole (shape)
            return [SpatialOutput(None, None, ms, p) for p in problems]
        return [SpatialOutput(None, None, ms, p) if p is not None
                else SpatialOutput(np.asarray(s, dtype=np.float32), anomaly_map(s), ms)
                for s, p in zip(res["region_scores"], problems, strict=True)]
