"""Results never depend on how the caller holds its frames, on another stream's bad frame, or on threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stp_edge.api import Detector


def _summary(results):
    return [(r.stream, r.snippet, r.frame_start, r.frame_end, round(r.score, 6)) for r in results]


def _run(det, frames, stream=0):
    out = []
    for f in frames:
        out += det.push(f, stream)
    return out + det.flush(stream)


def test_reusing_one_frame_buffer_gives_the_same_results(handmade_bundle, frames_factory):
    """OpenCV's `cap.read(img)` idiom: the caller overwrites one array for every frame."""
    frames = frames_factory(70, seed=11)
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
        fresh = _run(det, [f.copy() for f in frames])
        buf = np.empty_like(frames[0])
        reused = []
        for f in frames:
            np.copyto(buf, f)
            reused += det.push(buf)
        np.copyto(buf, 0)  # clobber the buffer before the partial snippet is encoded at flush
        reused += det.flush()
    assert len(fresh) == len(reused) == 18  # snippet_len 4: 17 full snippets and a 2-frame tail
    assert _summary(fresh) == _summary(reused)
    for a, b in zip(fresh, reused, strict=True):
        np.testing.assert_array_equal(a.region_scores, b.region_scores)


def test_a_bad_frame_in_push_many_touches_no_stream(handmade_bundle, frames_factory):
    """A refused frame raises, changes nothing, and both streams go on to the same results as a clean run."""
    from stp_edge.frames import FrameError

    a, b = frames_factory(40, seed=1), frames_factory(40, seed=2)
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        clean = []
        for fa, fb in zip(a, b, strict=True):
            clean += det.push_many({0: fa, 1: fb})
        clean += det.flush()
        got = []
        for i, (fa, fb) in enumerate(zip(a, b, strict=True)):
            if i == 15:  # frame 15 completes snippet 0 of both streams
                with pytest.raises(FrameError, match="stream 1 frame 15: expected dtype uint8"):
                    det.push_many({0: fa, 1: fb.astype(np.float32)})
            got += det.push_many({0: fa, 1: fb})
        got += det.flush()
    assert sorted(_summary(got)) == sorted(_summary(clean))


def test_one_detector_shared_by_threads_equals_sequential(handmade_bundle, frames_factory):
    """Two threads pushing their own streams into one Detector get what each would get alone."""
    streams = {k: frames_factory(96, seed=20 + k, height=120, width=160) for k in range(2)}
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
        alone = {k: _summary(_run(det, fr, k)) for k, fr in streams.items()}
        got: dict[int, list] = {}
        start = threading.Barrier(2)

        def worker(k):
            start.wait()
            got[k] = _summary(_run(det, streams[k], k))

        threads = [threading.Thread(target=worker, args=(k,)) for k in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got == alone


class _FailingPreprocess:
    """The CPU preprocessing, raising `error` on chosen calls (numbered from 0): a stage that raises."""

    def __init__(self, size: int, fail: set[int], error: type[BaseException]) -> None:
        from stp_edge.preprocess import CpuPreprocessor

        self.inner, self.fail, self.error, self.calls = CpuPreprocessor(size), fail, error, 0

    def __call__(self, frames):
        n, self.calls = self.calls, self.calls + 1
        if n in self.fail:
            raise self.error(f"preprocessing failed on call {n}")
        return self.inner(frames)


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_stage_that_raises_leaves_every_stream_consistent(handmade_bundle, frames_factory, error):
    """Whatever a stage raises (here the preprocessing, for the snippet 5 of two streams sharing one call), the push
    raises it once, the snippets concerned become invalid results, and both streams go on: no later push fails
    with "snippet 6 appended, expected snippet 5", and every other result is a clean run's (streams cut at 5)."""
    a, b = frames_factory(60, seed=1), frames_factory(60, seed=2)
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        clean = []
        for fa, fb in zip(a, b, strict=True):
            clean += det.push_many({0: fa, 1: fb})
        clean += det.flush()
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess=_FailingPreprocess(32, {5}, error)) as det:
        got, raised = [], []
        for fa, fb in zip(a, b, strict=True):
            try:
                got += det.push_many({0: fa, 1: fb})
            except error as exc:
                raised.append(exc)
                got += exc.results
        got += det.flush()
    assert len(raised) == 1 and "preprocessing failed on call 5" in str(raised[0])
    for k in (0, 1):
        mine = [r for r in got if r.stream == k]
        ref = [r for r in clean if r.stream == k]
        assert [r.snippet for r in mine] == list(range(15))
        assert mine[5].invalid_reason == f"error: {error.__name__}: preprocessing failed on call 5"
        assert _summary(mine[:2]) == _summary(ref[:2]) and _summary(mine[9:]) == _summary(ref[9:])
