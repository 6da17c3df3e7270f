"""A failed backend call never poisons a stream (issue 26.7).

A real ONNX Runtime runner is wrapped so that chosen calls raise (tests/graph_faults.py `FaultyRunner`): a
transient fault is retried once and changes nothing; a call that fails with its retry marks its snippets invalid
("backend error: ...") and the stream goes on, with exactly the results a clean run gives for every other
snippet (a snippet without features cuts the stream as its ends do); "error" mode raises, with the streams
consistent, so a caller can go on; an outage that lasts ends the run.
"""

from __future__ import annotations

import json
import logging

import cv2
import pytest
from graph_faults import detector, stream, summary

from stp_edge.backends.base import InputError
from stp_edge.errors import BackendCallError

GRAPHS = ["encoder", "temporal", "spatial"]
N_FRAMES = 60  # 15 snippets of 4 frames; context 3


@pytest.fixture(scope="module")
def frames():
    from conftest import moving_frames

    return moving_frames(N_FRAMES, seed=9)


@pytest.fixture(scope="module")
def clean(handmade_bundle, frames):
    det, _ = detector(handmade_bundle)
    with det:
        return stream(det, frames)


def _shifted(results, snippets: int, frames: int):
    """Results of a run that started `snippets` snippets (`frames` frames) into the stream, renumbered."""
    import dataclasses

    return [dataclasses.replace(r, snippet=r.snippet + snippets, frame_start=r.frame_start + frames,
                                frame_end=r.frame_end + frames) for r in results]


def _push_until_error(det, frames):
    """Push frames until one push raises; (results so far, with those riding on the error; the error; frames used)."""
    got = []
    for i, f in enumerate(frames):
        try:
            got += det.push(f)
        except Exception as exc:
            return got + exc.results, exc, i + 1
    return got, None, len(frames)


def _clean_run(bundle, frames):
    det, _ = detector(bundle)
    with det:
        return stream(det, frames)


@pytest.mark.parametrize("graph", GRAPHS)
def test_one_failed_call_is_retried_and_changes_nothing(handmade_bundle, frames, clean, caplog, graph):
    """A runner that raises on exactly one call: every result is the clean run's, and the fault is reported."""
    det, faulty = detector(handmade_bundle, faulty=graph, fail={5})
    with det, caplog.at_level(logging.WARNING, logger="stp_edge"):
        got = stream(det, frames)
    assert summary(got) == summary(clean)
    assert faulty.calls == len(clean) + 1 if graph != "spatial" else faulty.calls > 5
    warnings = [r.getMessage() for r in caplog.records if r.name == "stp_edge"]
    assert warnings == [f"{graph}.onnx (ort-cpu) failed for stream 0 snippet 5 (RuntimeError: injected backend "
                        f"fault on call 5); retrying once"]


@pytest.mark.parametrize("graph", ["temporal", "spatial"])
def test_a_call_that_fails_twice_marks_its_snippet_and_the_stream_goes_on(handmade_bundle, frames, clean, graph):
    """The call and its retry fail: that snippet is an invalid result, every other result is the clean run's."""
    det, _ = detector(handmade_bundle, faulty=graph, fail={5, 6}, on_invalid="mark")
    with det:
        got = stream(det, frames)
    assert [r.snippet for r in got] == list(range(15))
    assert summary(got[:5] + got[6:]) == summary(clean[:5] + clean[6:])
    reason = got[5].invalid_reason
    assert reason.startswith(f"backend error: {graph}.onnx (ort-cpu) failed for stream 0 snippet 5, and so did its "
                             f"retry: RuntimeError: injected backend fault on call 6")
    record = json.loads(json.dumps(got[5].to_dict(), allow_nan=False))
    assert record["invalid"] == reason
    if graph == "temporal":
        assert record["score"] is None and record["is_anomaly"] is None
    else:  # the score stands, the localisation is missing
        assert record["score"] == clean[5].to_dict()["score"] and record["region_scores"] is None


def test_a_failed_encoder_call_cuts_the_stream_like_its_ends(handmade_bundle, frames):
    """Snippet 5 has no features: 0-4 are what a stream ending at 4 gives, 6-14 what one starting at 6 gives."""
    det, _ = detector(handmade_bundle, faulty="encoder", fail={5, 6}, on_invalid="mark")
    with det:
        got = stream(det, frames)
    assert [r.snippet for r in got] == list(range(15))
    assert got[5].invalid_reason.startswith("backend error: encoder.onnx (ort-cpu) failed for stream 0 snippet 5")
    assert (got[5].frame_start, got[5].frame_end) == (20, 24)
    before = _clean_run(handmade_bundle, frames[:20])
    after = _shifted(_clean_run(handmade_bundle, frames[24:]), 6, 24)
    assert summary(got[:5]) == summary(before)
    assert summary(got[6:]) == summary(after)


def test_a_cut_with_provisional_results(handmade_bundle, frames):
    """Low-latency mode: each snippet still gets one final result, the same as without provisional ones; the
    snippet without features gets no provisional one."""
    det, _ = detector(handmade_bundle, faulty="encoder", fail={5, 6}, on_invalid="mark")
    with det:
        plain = stream(det, frames)
    det, _ = detector(handmade_bundle, faulty="encoder", fail={5, 6}, on_invalid="mark", lookahead=1)
    with det:
        got = stream(det, frames)
    finals = [r for r in got if r.final]
    assert summary(finals) == summary(plain)
    assert 5 not in [r.snippet for r in got if not r.final] and all(r.valid for r in got if not r.final)


@pytest.mark.parametrize("graph", GRAPHS)
def test_error_mode_raises_and_leaves_the_stream_consistent(handmade_bundle, frames, graph):
    """The default raises `BackendCallError` (exit 1 in the CLI); a caller that catches it loses nothing and goes
    on: what it gets equals the marking run, never "snippet 6 appended, expected snippet 5"."""
    marked_det, _ = detector(handmade_bundle, faulty=graph, fail={5, 6}, on_invalid="mark")
    with marked_det:
        marked = stream(marked_det, frames)
    det, _ = detector(handmade_bundle, faulty=graph, fail={5, 6})
    got, raised = [], []
    with det:
        for f in frames:
            try:
                got += det.push(f)
            except BackendCallError as exc:
                raised.append(str(exc))
                got += exc.results
        got += det.flush()
    assert len(raised) == 1 and "failed for stream 0 snippet 5, and so did its retry" in raised[0]
    assert "\n" not in raised[0] and BackendCallError.exit_code == 1
    assert summary(got) == summary(marked)


def test_an_outage_ends_the_run_and_a_restart_does_not(handmade_bundle, frames):
    """Calls failing for `max_outage_s` end the run; a backend that comes back before resumes the stream."""
    det, faulty = detector(handmade_bundle, faulty="encoder", fail=set(range(10, 16)), on_invalid="mark")
    with det:  # snippets 10, 11, 12 fail (each call and its retry), then the backend is back
        got = stream(det, frames)
    assert [r.valid for r in got] == [True] * 10 + [False] * 3 + [True] * 2
    det, faulty = detector(handmade_bundle, faulty="encoder", fail=set(range(10, 100)), on_invalid="mark")
    det.max_outage_s = 0.0
    with det:
        got, err, used = _push_until_error(det, frames)
        assert isinstance(err, BackendCallError) and used == 48  # snippet 11: the second failure in a row
        assert "encoder graph calls have failed for 0 s (2 stage calls in a row" in str(err)
        faulty.fail.clear()  # the server is back: the same stream goes on
        got += stream(det, frames[used:])
    assert [r.snippet for r in got] == list(range(15))


def test_errors_no_retry_can_help_are_raised_at_once(handmade_bundle, frames):
    """Feeds that do not fit (InputError) and errors saying `retryable = False` are not retried, not marked
    away, but raised, in either mode; the stream stays consistent."""
    class Stopped(RuntimeError):
        retryable = False

    for error in (lambda n: InputError("input 'images' dim 1: expected 3, got 4"), lambda n: Stopped("stop")):
        det, faulty = detector(handmade_bundle, faulty="encoder", fail={5}, error=error, on_invalid="mark")
        with det:
            got, err, used = _push_until_error(det, frames)  # the call's results ride on whatever it raised
            assert isinstance(err, (InputError, Stopped)) and used == 24
            assert faulty.calls == 6  # no retry
            got += stream(det, frames[used:])
        assert [r.snippet for r in got] == list(range(15))
        assert not got[5].valid and got[5].invalid_reason.startswith("error: ")


def test_run_video_reports_the_fault_and_goes_on(handmade_bundle, frames, tmp_path, caplog):
    from stp_edge.run import run_video

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for f in frames:
        writer.write(f)
    writer.release()
    det, _ = detector(handmade_bundle, faulty="temporal", fail={2, 3, 8}, on_invalid="mark")
    with det, caplog.at_level(logging.WARNING, logger="stp_edge"):
        results = run_video(video, detector=det, jsonl=tmp_path / "out.jsonl", overlay=tmp_path / "overlay.avi")
    lines = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in a JSON line"))
             for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    records = [rec for rec in lines if "snippet" in rec]
    assert [rec["snippet"] for rec in records] == list(range(15)) and len(results) == 15
    invalid = [rec for rec in records if "invalid" in rec]
    assert [rec["snippet"] for rec in invalid] == [2] and invalid[0]["invalid"].startswith("backend error: temporal")
    assert sum("retrying once" in r.getMessage() for r in caplog.records) == 2  # calls 2 and 8 failed first
    assert (tmp_path / "overlay.avi").stat().st_size > 0  # the invalid snippet's frames are drawn without a score


def test_feature_ring_cut_by_a_snippet_without_features():
    """The bookkeeping of a cut: windows never include the snippet, segments end at it, everything before it is
    ready at once, and it is forgotten with the ring's oldest snippets."""
    import numpy as np

    from stp_edge.pipeline.temporal import FeatureRing, ready_snippets, temporal_window

    ring = FeatureRing(7)
    for t in range(7):
        if t == 3:
            ring.append_missing(3)
        else:
            ring.append(t, np.full(2, t + 1.0), np.full((4, 2), -(t + 1.0)))
    assert ring.last_missing == 3 and ring.segment(1) == (0, 3) and ring.segment(5) == (4, 7)
    with pytest.raises(ValueError, match=r"window \[2, 5\) includes snippet\(s\) \[3\] without features"):
        ring.window(2, 5)
    with pytest.raises(ValueError, match="expected snippet 7"):
        ring.append_missing(8)
    assert list(ready_snippets(7, 0, 3, cut=3)) == [0, 1, 2, 3] and list(ready_snippets(7, 4, 3, cut=3)) == []
    assert temporal_window(2, 3, 3, 0) == (0, 3) and temporal_window(4, 7, 3, 4) == (4, 7)
    for t in range(7, 11):
        ring.append(t, np.ones(2), np.ones((4, 2)))
    assert ring.last_missing == -1 and ring.segment(8) == (0, 11)  # snippet 3 left the ring


@pytest.mark.parametrize(("fail", "code"), [({5}, 0), ({5, 6}, 1)])
def test_cli_says_what_failed_and_exits_1_only_when_it_cannot_go_on(handmade_bundle, frames, tmp_path, monkeypatch,
                                                                    capsys, fail, code):
    """`stp-edge run`: a temporal call that fails once is retried and reported, the run goes on (exit 0); one that
    fails with its retry ends the run in one line (exit 1), or with `--on-invalid mark` is printed and skipped."""
    from stp_edge.backends.ort import OrtRunner
    from stp_edge.cli import main

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for f in frames:
        writer.write(f)
    writer.release()
    real = OrtRunner.infer_impl

    def flaky(self, feeds):  # the real temporal runner, failing on chosen calls of each run
        if self.name.startswith("temporal"):
            n = self.__dict__.setdefault("test_calls", 0)
            self.test_calls = n + 1
            if n in fail:
                raise RuntimeError(f"connection reset on call {n}")
        return real(self, feeds)

    monkeypatch.setattr(OrtRunner, "infer_impl", flaky)
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "-q"]) == code
    err = capsys.readouterr().err
    assert "temporal.onnx (ort-cpu) failed for stream 0 snippet 5 (RuntimeError: connection reset on call 5); " \
           "retrying once" in err
    if code:
        assert err.strip().splitlines()[-1].startswith(
            "stp-edge run: error: temporal.onnx (ort-cpu) failed for stream 0 snippet 5, and so did its retry")
        assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "-q",
                     "--on-invalid", "mark"]) == 0
        printed = capsys.readouterr()
        invalid = [line for line in (printed.out + printed.err).splitlines() if line.startswith("INVALID")]
        assert len(invalid) == 1 and invalid[0].startswith("INVALID stream 0 snippet 5 frames [20, 24): backend error")
