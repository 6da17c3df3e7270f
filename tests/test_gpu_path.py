"""The GPU path's decisions, checked on the CPU: engine batch limits, engine selection across platforms and
TensorRT versions, stream hand-off, CUDA contexts, ONNX Runtime's TensorRT provider options, the GPU check.

No TensorRT or CUDA module is faked here: the pure functions get real inputs, the batch limits are enforced by a
Runner that wraps ONNX Runtime with a bundle's recorded profiles, and what needs a GPU is marked `gpu`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from stp_edge.backends.base import InputError, Runner, TensorSpec, feed_layout, profile_max_batch
from stp_edge.backends.ort import OrtRunner
from stp_edge.bundle import Bundle


# --- 1. batch limits ---------------------------------------------------------------------------------------
class ProfileRunner(Runner):
    """ONNX Runtime behind a TensorRT plan's optimisation profile: refuses any shape outside [min, max]."""

    def __init__(self, inner: Runner, profiles: Mapping[str, Any]) -> None:
        super().__init__(f"{inner.name} (profile)")
        self.inner, self.profiles = inner, profiles
        self.batches: list[int] = []

    def max_batch(self) -> int | None:
        return profile_max_batch(self.profiles)

    def activate_impl(self) -> None:
        self.inner.activate()

    def deactivate_impl(self) -> None:
        self.inner.deactivate()

    def input_specs_impl(self) -> dict[str, TensorSpec]:
        return self.inner.input_specs()

    def output_names_impl(self) -> list[str]:
        return self.inner.output_names()

    def infer_impl(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            shape = feed_layout(value)[0]
            lo, _, hi = self.profiles[name]
            if not all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
                raise InputError(f"{self.name}: {name} shape {shape} outside the profile [{lo}, {hi}]")
        self.batches.append(feed_layout(next(iter(feeds.values())))[0][0])
        return self.inner.infer(feeds)


def _detector(bundle: Bundle, max_batch: int | None):
    from stp_edge.api import Detector
    from stp_edge.bundle.engines import default_profiles
    from stp_edge.preprocess import CpuPreprocessor

    runners: dict[str, Runner] = {g: OrtRunner(bundle.graph_path(g)) for g in ("encoder", "temporal", "spatial")}
    if max_batch is not None:
        profiles = default_profiles(bundle.config, max_batch=max_batch)
        runners = {g: ProfileRunner(r, profiles[g]) for g, r in runners.items()}
    return Detector(bundle, runners, CpuPreprocessor(bundle.config.vision.image_size), spatial_on="all")


@pytest.mark.parametrize("fixture", ["handmade_bundle", "handmade_crops_bundle"])
def test_every_call_respects_the_engine_profile(fixture, request, frames_factory):
    """Three streams, spatial on every snippet, then flush: batches of 3..3(c+1) go through a max-2 profile."""
    bundle = Bundle.load(request.getfixturevalue(fixture))
    streams = {k: frames_factory(9 * bundle.config.snippet_len + 1, seed=k) for k in range(3)}
    out = {}
    for max_batch in (None, 2):
        with _detector(bundle, max_batch) as det:
            results = []
            for i in range(len(streams[0])):
                results += det.push_many({k: f[i] for k, f in streams.items()})
            results += det.flush()
            out[max_batch] = sorted(results, key=lambda r: (r.stream, r.snippet))
            if max_batch is not None:
                batches = {g: (r.batches, r.max_batch()) for g, r in det.runners.items()}
    assert len(out[2]) == 3 * 10 and all(r.anomaly_map is not None for r in out[2])
    limit = {"encoder": 2 * bundle.config.num_regions if bundle.config.region_mode == "crops" else 2,
             "temporal": 2, "spatial": 2}
    for g, (seen, most) in batches.items():
        assert most == limit[g] and seen and max(seen) <= most, (g, seen)
        assert max(seen) == most  # the limit was reached, so chunking happened
    for a, b in zip(out[None], out[2], strict=True):
        assert (a.stream, a.snippet) == (b.stream, b.snippet)
        np.testing.assert_allclose(a.score, b.score, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.region_scores, b.region_scores, rtol=1e-5, atol=1e-6)


def test_profile_max_batch_and_device_rows():
    from stp_edge.backends.base import batch_rows
    from stp_edge.cuda.memory import DeviceArray

    assert profile_max_batch(None) is None
    assert profile_max_batch({"a": [[1, 4], [2, 4], [8, 4]], "b": [[1], [1], [6]]}) == 6
    dev = DeviceArray(ptr=0x1000, shape=(5, 3, 2), dtype=np.dtype(np.float16), stream=7)
    part = batch_rows(dev, 2, 4)
    assert (part.ptr, part.shape, part.stream) == (0x1000 + 2 * 3 * 2 * 2, (2, 3, 2), 7)
    host = np.arange(10).reshape(5, 2)
    assert np.shares_memory(batch_rows(host, 1, 3), host)
