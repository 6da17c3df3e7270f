"""The runtime run of `stp-edge bench`: one decoded copy of the video per stream, pushed frame by frame."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stp_edge.errors import UsageError


def run_streams(det, video: Path, frames: int, streams: int, batch: int, progress: bool,
                between: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Decode `video` once per stream and push frame by frame; results, per-snippet decode ms, wall time.

    `between` (the PyTorch baseline's step) is called after every snippet's frames; its time is not counted.
    """
    from tqdm.auto import tqdm

    from stp_edge.video import open_source

    L = det.config.snippet_len
    decode_ms: dict[tuple[int, int], float] = defaultdict(float)
    results, n, other_s = [], 0, 0.0
    sources = [open_source(video) for _ in range(streams)]
    try:
        iters = [(f for f, _gap in s.frames_with_gaps(lazy=True)) for s in sources]  # as `stp-edge run` reads
        start = time.perf_counter()
        for n in tqdm(range(frames), desc="bench", unit="frame", disable=not progress):
            batch_frames = {}
            for k, it in enumerate(iters):
                t0 = time.perf_counter()
                frame = next(it, None)
                decode_ms[(k, n // L)] += (time.perf_counter() - t0) * 1e3
                if frame is None:
                    break
                batch_frames[k] = frame
            if len(batch_frames) < streams:
                break
            for g in range(0, streams, batch):
                results += det.push_many({k: batch_frames[k] for k in range(g, min(g + batch, streams))})
            if between is not None and n % L == L - 1:
                t0 = time.perf_counter()
                between()
                other_s += time.perf_counter() - t0
        else:
            n = frames
        results += det.flush()
        wall_s = time.perf_counter() - start - other_s
    finally:
        for s in sources:
            s.close()
    if n == 0:
        raise UsageError(f"{video}: no frame decoded")
    return {"results": results, "decode": decode_ms, "wall_s": wall_s, "frames_per_stream": n}
