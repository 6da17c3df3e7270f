"""Memory stays bounded when every frame has a new size (crops of varying size, a stream that renegotiates).

The CPU preprocessor caches a resize plan with its scratch buffers per input size (about 9 MB at 1080p for
S=224); before the cache was bounded, 1,200 distinct sizes took 10 GB. Measured with tracemalloc (NumPy reports
its buffers to it), so the bound is on what the runtime keeps, not on the allocator's retention.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from stp_edge.api import Detector
from stp_edge.preprocess import CpuPreprocessor


def _sizes(n: int) -> list[tuple[int, int]]:
    return [(600 + (7 * i) % 300, 1000 + (13 * i) % 500) for i in range(n)]


def _base() -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.repeat(np.repeat(rng.integers(20, 230, (90, 150, 3), dtype=np.uint8), 10, 0), 10, 1)


def test_preprocessor_keeps_a_bounded_number_of_plans():
    pre = CpuPreprocessor(32, max_plans=4)
    base = _base()
    for h, w in _sizes(10):
        out = pre([base[:h, :w]])
        np.testing.assert_allclose(out, CpuPreprocessor(32)([base[:h, :w]]), atol=0, rtol=0)
    assert len(pre._plans) == 4
    assert list(pre._plans) == _sizes(10)[-4:]  # the sizes used last are the ones kept


def test_detector_memory_is_bounded_when_frame_sizes_never_repeat(handmade_bundle):
    base = _base()
    sizes = _sizes(400)
    assert len(set(sizes)) == 400
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        for h, w in sizes[:8]:  # warm-up: runners, first plans
            det.push(base[:h, :w])
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            results = []
            for h, w in sizes[8:]:
                results += det.push(base[:h, :w])
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        results += det.flush()
    assert len(results) == 100  # snippets of 4 frames: every 4th frame completes one
    # A plan for these sizes at S=32 holds 4-6 MB (the crop window transposed, one block of float rows): the
    # default 16 plans stay under 100 MB, where one plan per new size (98 sampled frames) is about 500 MB.
    assert grown < 128 * 2**20, f"runtime memory grew {grown / 2**20:.0f} MiB over 392 frames of new sizes"


def test_size_cache_evicts_least_recently_used_through_its_hook():
    from stp_edge.preprocess import SizeCache

    evicted = []
    cache = SizeCache(2, on_evict=evicted.append)
    assert cache.get("a", lambda: 1) == 1 and cache.get("b", lambda: 2) == 2
    assert cache.get("a", lambda: 99) == 1  # a hit refreshes "a": "b" is now the oldest
    assert cache.get("c", lambda: 3) == 3
    assert evicted == [2] and len(cache) == 2 and sorted(cache.values()) == [1, 3]
