"""Ray Data pipelines (`extract --ray`, `score --ray`) on a real local Ray cluster equal the single-process path.

The test starts a Ray head on this machine (2 CPUs, loopback, no dashboard): two actors, each holding its own
Detector, decode, preprocess and encode the generated clips; the files they write must be the single-process
files, number for number.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import comparable

from stp_edge.scale.extract import extract_features
from stp_edge.scale.score import score_videos
from stp_edge.synthetic import write_benchmark

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'stp-edge[scale]'")

NUM_VIDEOS = 6


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs for this module (skipped, with Ray's reason, where it cannot start)."""
    if ray.is_initialized():
        ray.shutdown()
    try:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    except Exception as exc:  # Ray raises RuntimeError, ConnectionError, ... depending on what failed
        pytest.skip(f"a local Ray cluster cannot start here: {type(exc).__name__}: {exc}")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray_videos") / "clips"
    write_benchmark(root, split="test", num_videos=NUM_VIDEOS, seed=1, width=96, height=72, num_frames=40)
    return root


@pytest.mark.slow
def test_extract_on_ray_equals_single_process(cluster, videos, exported_tiny_bundle, tmp_path):
    local = extract_features(videos, tmp_path / "local", bundle=exported_tiny_bundle, fmt="synthetic",
                             progress=False)
    on_ray = extract_features(videos, tmp_path / "ray", bundle=exported_tiny_bundle, fmt="synthetic",
                              progress=False, ray=True, workers=2)
    assert local.ok and on_ray.ok and on_ray.workers == 2
    assert on_ray.processes >= 2, "the actor pool should spread the videos over both actors"
    assert [p.name for p in on_ray.written] == [p.name for p in local.written] and len(local.written) == NUM_VIDEOS
    assert on_ray.snippets == local.snippets == NUM_VIDEOS * 3
    for a_path, b_path in zip(local.written, on_ray.written, strict=True):
        with np.load(a_path) as a, np.load(b_path) as b:
            assert a.files == b.files
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{a_path.name}: {k}")

    # resumable on Ray as well: everything is done, nothing is sent to the cluster
    again = extract_features(videos, tmp_path / "ray", bundle=exported_tiny_bundle, fmt="synthetic",
                             progress=False, ray=True, workers=2)
    assert len(again.skipped) == NUM_VIDEOS and not again.written and again.processes == 0


def _without_timings(path: Path) -> list[dict]:
    return [comparable(json.loads(line)) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_score_on_ray_equals_single_process(cluster, videos, exported_tiny_bundle, tmp_path):
    local = score_videos(videos, exported_tiny_bundle, tmp_path / "local", progress=False)
    on_ray = score_videos(videos, exported_tiny_bundle, tmp_path / "ray", progress=False, ray=True, workers=2)
    assert local.ok and on_ray.ok and on_ray.processes >= 2
    assert [p.name for p in on_ray.written] == [p.name for p in local.written] and len(local.written) == NUM_VIDEOS
    for a, b in zip(local.written, on_ray.written, strict=True):
        rows = _without_timings(a)
        assert [(r["frame_start"], r["frame_end"]) for r in rows] == [(0, 16), (16, 32), (32, 40)]
        assert rows == _without_timings(b), a.name  # timings are wall clock; every other field is equal
