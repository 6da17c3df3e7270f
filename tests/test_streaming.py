from __future__ import annotations

import numpy as np
import pytest

from stp_edge.api import Detector
from stp_edge.pipeline.snippets import SnippetAssembler, sample_offsets
from stp_edge.pipeline.temporal import FeatureRing, ready_snippets, temporal_window


def test_sample_offsets_hand_checked():
    assert sample_offsets(16, 1) == [8]
    assert sample_offsets(16, 4) == [2, 6, 10, 14]
    assert sample_offsets(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="frames_per_snippet"):
        sample_offsets(4, 5)


def test_assembler_emits_snippets_and_partial_tail():
    asm = SnippetAssembler(snippet_len=4, frames_per_snippet=2, stream=7)  # offsets [1, 3]
    frames = [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(10)]
    out = [s for s in (asm.push(f) for f in frames) if s is not None]
    assert [(s.stream, s.index, s.frame_start, s.frame_end) for s in out] == [(7, 0, 0, 4), (7, 1, 4, 8)]
    assert [[int(f[0, 0, 0]) for f in s.frames] for s in out] == [[1, 3], [5, 7]]
    tail = asm.flush()  # frames 8, 9: offset 1 -> frame 9, offset 3 is past the end -> last frame (9)
    assert (tail.index, tail.frame_start, tail.frame_end) == (2, 8, 10)
    assert [int(f[0, 0, 0]) for f in tail.frames] == [9, 9]
    assert asm.flush() is None


def test_ready_snippets_hand_checked():
    c = 2
    assert list(ready_snippets(2, 0, c)) == []
    assert list(ready_snippets(3, 0, c)) == [0]  # snippet 0 is final once snippet 0 + c = 2 is encoded
    assert list(ready_snippets(5, 1, c)) == [1, 2]
    assert list(ready_snippets(5, 3, c, final=True)) == [3, 4]
    assert list(ready_snippets(1, 0, c, final=True)) == [0]


def test_temporal_window_hand_checked():
    assert temporal_window(0, 10, 3) == (0, 4)
    assert temporal_window(5, 10, 3) == (2, 9)
    assert temporal_window(9, 10, 3) == (6, 10)
    assert temporal_window(2, 3, 3) == (0, 3)
    with pytest.raises(ValueError, match="snippet 10"):
        temporal_window(10, 10, 3)


def test_feature_ring_keeps_last_capacity_snippets():
    ring = FeatureRing(3)
    for i in range(5):
        ring.append(i, np.full(2, i + 1.0), np.full((4, 2), -(i + 1.0)))
    f, r = ring.window(2, 5)
    np.testing.assert_array_equal(f[:, 0], [3, 4, 5])
    np.testing.assert_array_equal(r[:, 0, 0], [-3, -4, -5])
    with pytest.raises(ValueError, match=r"holds snippets \[2, 5\)"):
        ring.window(1, 3)
    with pytest.raises(ValueError, match="expected snippet 5"):
        ring.append(7, np.ones(2), np.ones((4, 2)))
    with pytest.raises(ValueError, match="shapes"):
        ring.append(5, np.ones(3), np.ones((4, 2)))


def _stream_all(det, frames, stream=0):
    """Push frames one by one; return results and, for each, the number of frames pushed when it arrived."""
    results, arrival = [], []
    for i, f in enumerate(frames):
        for r in det.push(f, stream):
            results.append(r)
            arrival.append(i + 1)
    tail = det.flush(stream)
    return results + tail, arrival + [None] * len(tail)


@pytest.mark.parametrize("bundle_fixture", ["handmade_bundle", "handmade_crops_bundle"])
def test_streaming_equals_offline(request, bundle_fixture, frames_factory):
    bundle = request.getfixturevalue(bundle_fixture)
    frames = frames_factory(70, seed=3)  # 17 full snippets of 4 frames + a partial one of 2
    with Detector.load(bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
        c, L = det.context, det.config.snippet_len
        results, arrival = _stream_all(det, frames)
        score, probs = det.offline_scores(frames)
    assert [r.snippet for r in results] == list(range(18))
    assert [(r.frame_start, r.frame_end) for r in results][-2:] == [(64, 68), (68, 70)]
    assert score.std() > 1e-3  # the scores really vary over the video
    np.testing.assert_allclose([r.score for r in results], score, atol=1e-4)
    np.testing.assert_allclose(np.stack([r.class_probs for r in results]), probs, atol=1e-4)
    # snippet t is emitted by the push that completes snippet t + c, not earlier and not later
    for r, n_pushed in zip(results, arrival, strict=True):
        if r.snippet + c < 17:
            assert n_pushed == (r.snippet + c + 1) * L
        else:
            assert n_pushed is None
    assert all(r.region_scores.shape == (det.config.num_regions,) for r in results)


def test_temporal_graph_really_needs_the_full_context(handmade_bundle, frames_factory):
    """Negative control: dropping snippet t + c from the window changes snippet t's score."""
    from stp_edge.pipeline.snippets import SnippetAssembler

    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        c = det.context
        asm = SnippetAssembler(4)
        snippets = [s for s in (asm.push(f) for f in frames_factory(40)) if s is not None]
        batch = det.encode_features(snippets)
        fe, re = batch.frame_emb, batch.region_emb
        t = 3
        run = det.runners["temporal"].infer
        full = run({"frame_emb": fe[None, t - c:t + c + 1], "region_emb": re[None, t - c:t + c + 1]})
        short = run({"frame_emb": fe[None, t - c:t + c], "region_emb": re[None, t - c:t + c]})
    assert abs(full["score"][0, c] - short["score"][0, c]) > 1e-4


def test_several_streams_share_encoder_calls(handmade_bundle, frames_factory):
    videos = {k: frames_factory(30, seed=10 + k, height=40 + 8 * k) for k in range(3)}
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        expected = {k: det.offline_scores(v)[0] for k, v in videos.items()}
        batches = []
        encoder = det.runners["encoder"]
        real_infer = encoder.infer

        def counting_infer(feeds, **kw):
            batches.append(feeds["images"].shape[0])
            return real_infer(feeds, **kw)

        encoder.infer = counting_infer
        results = []
        for i in range(30):
            results += det.push_many({k: v[i] for k, v in videos.items()})
        results += det.flush()
    assert batches == [3] * 8  # 7 full snippets per stream + the partial one at flush, 3 streams per call
    for k in videos:
        got = sorted((r for r in results if r.stream == k), key=lambda r: r.snippet)
        assert [r.snippet for r in got] == list(range(8))
        np.testing.assert_allclose([r.score for r in got], expected[k], atol=1e-4)


def test_flush_one_stream_keeps_the_others(handmade_bundle, frames_factory):
    frames = frames_factory(12)
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu", spatial_on="off") as det:
        for f in frames:
            det.push_many({0: f, 1: f})
        tail0 = det.flush(0)
        assert {r.stream for r in tail0} == {0}
        assert [r.snippet for r in tail0] == [0, 1, 2]
        assert all(r.region_scores is None and r.boxes == () for r in tail0)
        tail1 = det.flush()
        assert [r.snippet for r in tail1] == [0, 1, 2]
        np.testing.assert_allclose([r.score for r in tail0], [r.score for r in tail1], atol=1e-6)


def test_spatial_runs_only_on_flagged_snippets(handmade_bundle, frames_factory):
    frames = frames_factory(60, seed=5)
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu", spatial_on="flagged") as det:
        scores, _ = det.offline_scores(frames)
        det.score_threshold = float(np.median(scores))
        results, _ = _stream_all(det, frames)
    flagged = [r for r in results if r.is_anomaly]
    assert 0 < len(flagged) < len(results)
    for r in results:
        assert (r.anomaly_map is not None) == (r.score >= det.score_threshold)
        assert (r.timings["spatial"] > 0) == r.is_anomaly
    assert all(r.boxes and r.anomaly_map.shape == (2, 2) for r in flagged)


def test_push_refuses_bad_frames_with_index(handmade_bundle, frames_factory):
    from stp_edge.frames import FrameError

    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        for f in frames_factory(5):
            det.push(f)
        with pytest.raises(FrameError, match="frame 5: expected dtype uint8, got float32"):
            det.push(np.ones((8, 8, 3), np.float32))


class _Chunked:
    """The real CPU preprocessor, advertising a small max_batch like the CUDA one does."""

    def __init__(self, size, max_batch):
        from stp_edge.preprocess import CpuPreprocessor

        self.pre, self.max_batch, self.calls = CpuPreprocessor(size), max_batch, []

    def __call__(self, frames):
        self.calls.append(len(frames))
        return self.pre(frames)


def test_encoder_chunks_follow_preprocessor_max_batch(handmade_bundle, frames_factory):
    frames = frames_factory(24, seed=8)
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        whole = det.offline_scores(frames, batch=6)[0]
    pre = _Chunked(32, max_batch=4)
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess=pre) as det:
        chunked = det.offline_scores(frames, batch=6)[0]
    assert pre.calls == [4, 2]
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_low_latency_mode_emits_provisional_then_final(handmade_bundle, frames_factory):
    """lookahead=N: a provisional result for t as soon as t + N is encoded; finals equal the default stream."""
    frames = frames_factory(64, seed=9)  # snippet_len 4: 16 snippets
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        c = det.context
        assert c >= 2
        default, _ = _stream_all(det, frames)
    for n in range(c):
        with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu", lookahead=n) as det:
            seen, encoded, when = [], 0, {}
            for i, f in enumerate(frames):
                out = det.push(f)
                if (i + 1) % 4 == 0:
                    encoded += 1
                for r in out:
                    when[(r.snippet, r.final)] = encoded
                seen += out
            seen += det.flush()
        finals = [r for r in seen if r.final]
        early = [r for r in seen if not r.final]
        assert [(r.snippet, r.score) for r in finals] == [(r.snippet, r.score) for r in default]
        # all 16 snippets are encoded by pushes: snippet t gets its provisional when t + N is encoded
        assert sorted(r.snippet for r in early) == list(range(16 - n))
        for r in early:
            assert when[(r.snippet, False)] == r.snippet + n + 1
            assert when.get((r.snippet, True), 10**9) > when[(r.snippet, False)]
        # the provisional score differs from the final one only through the missing future context
        assert any(abs(a.score - b.score) > 1e-6 for a in early for b in finals if a.snippet == b.snippet)
    with pytest.raises(ValueError, match="lookahead must be in"):
        Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu", lookahead=c + 1)


ADAPTER_VARIANTS = {  # issue 28 item 6: each adapter form (and the frame-only model) keeps streaming == offline
    "distance": {"adapter_sigma": 0.3},  # banded at radius floor(0.3 ln 1e4) = 2: context 5
    "exp": {"adapter_form": "exp", "adapter_window": 2},  # softmax(exp(-|i-j|/sigma)) on a window of radius 2
    "frame-only": {"region_term": False, "adapter_sigma": 0.3},
}


@pytest.fixture(scope="module", params=sorted(ADAPTER_VARIANTS))
def adapter_bundle(request, tmp_path_factory):
    """A tiny STPrompt exported by the real exporter, snippets of 4 frames, with one adapter variant."""
    from stp_edge.export.bundle_export import export_bundle

    overrides = {"snippet_len": 4, **ADAPTER_VARIANTS[request.param]}
    out = tmp_path_factory.mktemp("adapter") / f"{request.param}.stp"
    return request.param, export_bundle(out, random_config="tiny", seed=5, config_overrides=overrides,
                                        progress=False)


@pytest.mark.filterwarnings("ignore::stp_edge.errors.RandomWeightsWarning")
def test_each_adapter_form_streams_equal_to_offline(adapter_bundle, frames_factory):
    from stp_edge.bundle import Bundle

    name, bundle = adapter_bundle
    form = {"exp": "exp: softmax(exp(-|i-j|/0.5)) on a window of radius 2"}.get(name, "distance: softmax(-|i-j|/0.3)")
    assert form in Bundle.load(bundle).summary()  # `stp-edge info` names the form
    frames = frames_factory(72, seed=3)  # 18 snippets: longer than the window 2c + 1 = 11
    with Detector.load(bundle, backend="ort-cpu", preprocess="cpu", spatial_on="off") as det:
        assert det.context == 5
        results, _ = _stream_all(det, frames)
        score, probs = det.offline_scores(frames)
    assert [r.snippet for r in results] == list(range(18))
    assert score.std() > 1e-4
    # "distance": exact up to its band tolerance 1e-4; "exp": defined on its window, so exact to rounding
    np.testing.assert_allclose([r.score for r in results], score, atol=1e-4 if name != "exp" else 1e-5)
    np.testing.assert_allclose(np.stack([r.class_probs for r in results]), probs, atol=1e-4)
