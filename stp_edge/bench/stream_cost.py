"""Cost per new snippet as a stream grows: the runtime's own work, with the encoder replaced by random features."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np


class _RandomFeatures:
    """Stands in for the encode stage: random features of the right shapes, no encoder call."""

    def __init__(self, config, seed: int = 0) -> None:
        self.config, self.rng = config, np.random.default_rng(seed)

    def __call__(self, snippets, *, on_error=None):
        """Features of `snippets` (the `Encoder` call's signature; random features never fail: `on_error` unused)."""
        from stp_edge.pipeline.encode import EncodedBatch

        c, n = self.config, len(snippets)
        e = c.vision.embed_dim
        return EncodedBatch(tuple(snippets), self.rng.standard_normal((n, e), dtype=np.float32),
                            self.rng.standard_normal((n, c.num_regions, e), dtype=np.float32),
                            {"preprocess": 0.0, "encoder": 0.0})


def cost_by_stream_length(det, lengths: Sequence[int], progress: bool, window: int = 32) -> dict[str, Any]:
    """Median ms of one new snippet (its pushes) on streams that have run `n` snippets, for each n in `lengths`.

    Each stream is first advanced to n - window snippets, untimed; then the streams take one snippet each in
    turn, timed, for `window` rounds, so every length is measured side by side under the same machine load.
    """
    from tqdm.auto import tqdm

    window = max(1, min(window, min(lengths) // 2))  # the timed snippets lie inside each length
    real, det.encoder = det.encoder, _RandomFeatures(det.config)
    L = det.config.snippet_len
    frame = np.full((8, 8, 3), 77, np.uint8)
    ids = {n: 10_000 + i for i, n in enumerate(lengths)}  # stream ids the main run did not use
    times: dict[int, list[float]] = {n: [] for n in lengths}
    try:
        bar = tqdm(total=sum(lengths), desc="stream length", unit="snippet", disable=not progress)
        for n, k in ids.items():
            for _ in range(max(0, n - window) * L):
                det.push(frame, k)
            bar.update(max(0, n - window))
        for _ in range(window):
            for n, k in ids.items():
                t0 = time.perf_counter()
                for _ in range(L):
                    det.push(frame, k)
                times[n].append((time.perf_counter() - t0) * 1e3)
            bar.update(len(ids))
        bar.close()
    finally:
        for k in ids.values():
            det.reset(k)
        det.encoder = real
    med = {str(n): float(np.median(v)) for n, v in times.items()}
    first, last = med[str(min(lengths))], med[str(max(lengths))]
    return {"median_ms": med, "ratio": last / first, "window": window,
            "method": f"{L} pushes of 8x8 frames per snippet through Detector.push, encoder replaced by random "
                      "features (ring buffer, scheduling, temporal and spatial graphs as in a live stream); "
                      f"the last {window} snippets before each length, the lengths alternated snippet by snippet"}

