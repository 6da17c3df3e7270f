"""CUDA graphs (stp_edge.cuda.graphs): the eager/capture/replay policy on the CPU, the capture on a real GPU.

The GPU test captures CuPy kernels queued on a non-blocking stream with our driver calls (libcuda through ctypes),
replays the graph on new input values and checks every element; it is skipped, with the reason, without CuPy or
a CUDA device (scripts/gpu_check.sh runs it).
"""

from __future__ import annotations

import numpy as np
import pytest

from stp_edge.cuda.graphs import GraphCache, StreamGraphs, tensor_key
from stp_edge.errors import UsageError


def test_a_key_runs_eagerly_first_then_is_captured_then_replayed():
    cache = GraphCache(capacity=4, warmup=1)
    assert [cache.action("a") for _ in range(2)] == ["eager", "capture"]
    cache.add("a", 101)
    assert [cache.action("a") for _ in range(3)] == ["replay"] * 3
    assert cache.counts == {"eager": 1, "capture": 1, "replay": 3}


def test_warmup_counts_eager_calls_per_key_and_keys_do_not_share_them():
    cache = GraphCache(warmup=2)
    assert [cache.action("a"), cache.action("b"), cache.action("a"), cache.action("b"), cache.action("a")] == [
        "eager", "eager", "eager", "eager", "capture"]


def test_the_least_recently_used_graph_is_evicted_and_handed_back_for_destruction():
    cache = GraphCache(capacity=2)
    for key, graph in (("a", 1), ("b", 2)):
        cache.action(key), cache.action(key)
        assert cache.add(key, graph) == []
    cache.action("a")  # a is used again: b is now the oldest
    cache.action("c"), cache.action("c")
    assert cache.add("c", 3) == [2]
    assert cache.action("a") == "replay"
    assert cache.action("b") == "eager"  # evicted keys start over: its shapes are no longer known hot
    assert len(cache) == 2


def test_disabling_returns_every_graph_and_every_later_call_is_eager():
    cache = GraphCache()
    cache.action("a"), cache.action("a")
    cache.add("a", 7)
    assert cache.disable("capture refused") == [7]
    assert cache.disabled_why == "capture refused"
    assert {cache.action("a") for _ in range(3)} == {"eager"}
    assert len(cache) == 0


def test_bad_cache_settings_are_refused():
    with pytest.raises(UsageError, match="warmup >= 1"):
        GraphCache(warmup=0)
    with pytest.raises(UsageError, match="capacity >= 1"):
        GraphCache(capacity=0)


def test_the_key_changes_with_every_shape_address_and_profile_and_not_with_order():
    base = {"frame_emb": ((1, 9, 512), 0x7000), "region_emb": ((1, 9, 9, 512), 0x9000)}
    key = tensor_key(0, base)
    assert key == tensor_key(0, dict(reversed(list(base.items()))))
    assert key != tensor_key(1, base)
    assert key != tensor_key(0, {**base, "frame_emb": ((1, 8, 512), 0x7000)})
    assert key != tensor_key(0, {**base, "region_emb": ((1, 9, 9, 512), 0x9200)})


@pytest.mark.gpu
def test_capture_and_replay_of_real_kernels_give_the_eager_result():
    from cuda_driver import cupy_or_skip

    cupy = cupy_or_skip("the GPU check of CUDA graphs")
    stream = cupy.cuda.Stream(non_blocking=True)
    rng = np.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal(1 << 18).astype(np.float32))
    y = cupy.full_like(x, np.nan)

    def enqueue() -> bool:
        with stream:
            cupy.multiply(x, 3.0, out=y)
            cupy.add(y, 1.0, out=y)
        return True

    graphs = StreamGraphs(stream.ptr, name="cupy")
    for _ in range(4):  # eager, capture + launch, replay, replay
        host = rng.standard_normal(x.size).astype(np.float32)
        with stream:
            x.set(host)
            y.fill(np.nan)
        stream.synchronize()
        assert graphs.run("k", enqueue)
        stream.synchronize()
        np.testing.assert_allclose(y.get(), host * 3.0 + 1.0, rtol=1e-6)
    assert graphs.cache.counts == {"eager": 1, "capture": 1, "replay": 2}
    graphs.close()


def test_the_tensorrt_runner_takes_graphs_when_asked_and_by_environment(monkeypatch, tmp_path):
    from stp_edge.backends.trt import TrtRunner

    monkeypatch.delenv("STP_EDGE_CUDA_GRAPHS", raising=False)
    assert TrtRunner(tmp_path / "e.plan").cuda_graphs is False  # off until a GPU run has checked it
    assert TrtRunner(tmp_path / "e.plan", cuda_graphs=True).cuda_graphs is True
    monkeypatch.setenv("STP_EDGE_CUDA_GRAPHS", "1")
    assert TrtRunner(tmp_path / "e.plan").cuda_graphs is True
    assert TrtRunner(tmp_path / "e.plan", cuda_graphs=False).cuda_graphs is False
