"""Keyframe-aligned sampling: a snippet samples its first keyframe, so decoding keyframes only suffices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import moving_frames

from stp_edge.api import Detector
from stp_edge.errors import UsageError
from stp_edge.pipeline.snippets import SnippetAssembler, choose_sampling
from stp_edge.run import run_video
from stp_edge.video import VideoSource

av = pytest.importorskip("av")


def write_h264(path, frames, gop: int, fps: float = 25.0):
    """An H.264 file with a keyframe every `gop` frames exactly (no scene-cut keyframes, no B-frames)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "0"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def gop16(tmp_path_factory):
    """40 frames of H.264, keyframes at 0, 16, 32."""
    return write_h264(tmp_path_factory.mktemp("sampling") / "gop16.mp4", moving_frames(40, seed=4), 16)


@pytest.fixture(scope="module")
def gop4(tmp_path_factory):
    """20 frames of H.264, keyframes at 0, 4, ..., 16: one per snippet of the hand-made bundle (4 frames)."""
    return write_h264(tmp_path_factory.mktemp("sampling") / "gop4.mp4", moving_frames(20, seed=6), 4)


def lazy_frames(path, decode: str = "full") -> list:
    src = VideoSource(path, decoder="pyav", decode=decode)
    try:
        return [f for f, _gap in src.frames_with_gaps(lazy=True)]
    finally:
        src.close()


def test_keyframe_sampling_samples_each_snippets_keyframe_and_counts_a_fallback(gop16):
    frames = lazy_frames(gop16)[5:]  # keyframes now at 11 and 27: offset 11 of snippets 0 and 1
    assert [i for i, f in enumerate(frames) if f.key] == [11, 27]
    asm = SnippetAssembler(16, 1, sampling="keyframe")
    out = [s for s in (asm.push(asm.prepare(f)) for f in frames) if s is not None] + [asm.flush()]
    assert [(s.sampled, s.sampling) for s in out] == [((11,), "keyframe"), ((27,), "keyframe"), ((34,), "center")]
    np.testing.assert_array_equal(out[0].frames[0], frames[11].decode())
    np.testing.assert_array_equal(out[1].frames[0], frames[27].decode())
    np.testing.assert_array_equal(out[2].frames[0], frames[34].decode())  # the tail has no keyframe: last frame
    assert asm.fallbacks == 1
    center = SnippetAssembler(16, 1)
    ref = [s for s in (center.push(center.prepare(f)) for f in frames) if s is not None]
    assert [s.sampled for s in ref] == [(8,), (24,)]
    assert not np.array_equal(ref[0].frames[0], out[0].frames[0])  # a different frame: the test can tell


def test_keyframe_at_the_center_gives_center_results(handmade_bundle, gop4):
    frames = lazy_frames(gop4)[2:]  # keyframes at 2, 6, 10, 14: the center offset (2) of snippets 0-3
    runs = {}
    for sampling in ("center", "keyframe"):
        with Detector.load(handmade_bundle, backend="ort-cpu", sampling=sampling) as det:
            runs[sampling] = [r for f in frames for r in det.push(f)] + det.flush()
            assert det.sampling_fallbacks == ({} if sampling == "center" else {0: 1})  # the 0-keyframe tail
    center, key = runs["center"], runs["keyframe"]
    assert [r.sampled for r in key] == [r.sampled for r in center] == [(2,), (6,), (10,), (14,), (17,)]
    assert [r.sampling for r in key] == ["keyframe"] * 4 + ["center"]
    assert [r.score for r in key] == [r.score for r in center]
    np.testing.assert_array_equal(np.stack([r.class_probs for r in key]), np.stack([r.class_probs for r in center]))
    record = json.loads(json.dumps(key[0].to_dict()))
    assert (record["sampled"], record["sampling"]) == ([2], "keyframe")


def test_keyframes_only_decoding_runs_and_equals_full_decoding(handmade_bundle, gop4, tmp_path):
    results = {}
    with Detector.load(handmade_bundle, backend="ort-cpu", sampling="keyframe") as det:
        for decode in ("full", "keyframes"):
            det.reset()
            src = VideoSource(gop4, decoder="pyav", decode=decode)
            results[decode] = run_video(src, detector=det, jsonl=tmp_path / f"{decode}.jsonl")
        assert det.sampling_fallbacks == {}
    full, keyed = results["full"], results["keyframes"]
    assert [r.sampled for r in keyed] == [r.sampled for r in full] == [(0,), (4,), (8,), (12,), (16,)]
    assert [r.score for r in keyed] == [r.score for r in full]
    lines = [json.loads(line) for line in (tmp_path / "keyframes.jsonl").read_text().splitlines()]
    assert [(d["sampled"], d["sampling"]) for d in lines] == [([i], "keyframe") for i in range(0, 20, 4)]


def test_keyframes_only_with_a_snippet_without_keyframe_is_a_clear_error(handmade_bundle, tmp_path):
    path = write_h264(tmp_path / "gop8.mp4", moving_frames(20, seed=5), 8)  # snippet 1 holds no keyframe
    with Detector.load(handmade_bundle, backend="ort-cpu", sampling="keyframe") as det:
        with pytest.raises(UsageError, match="snippet 1 .*holds no keyframe.*decode all frames"):
            run_video(VideoSource(path, decoder="pyav", decode="keyframes"), detector=det)


def test_arrays_have_no_keyframe_flag_and_fall_back_to_center(handmade_bundle):
    frames = moving_frames(18, seed=7)
    runs = {}
    for sampling in ("center", "keyframe"):
        with Detector.load(handmade_bundle, backend="ort-cpu", sampling=sampling) as det:
            runs[sampling] = [r for f in frames for r in det.push(f)] + det.flush()
            fallbacks = det.sampling_fallbacks
    assert fallbacks == {0: 5}
    assert [r.score for r in runs["keyframe"]] == [r.score for r in runs["center"]]
    assert [r.sampled for r in runs["keyframe"]] == [(2,), (6,), (10,), (14,), (17,)]
    assert {r.sampling for r in runs["keyframe"]} == {"center"}


def test_auto_samples_keyframes_only_where_their_interval_divides_the_snippet():
    assert choose_sampling("auto", keyframe_interval=16)[0] == "keyframe"
    assert choose_sampling("auto", keyframe_interval=8)[0] == "keyframe"
    assert choose_sampling("auto", keyframe_interval=12) == ("center", "auto: keyframe interval 12 does not divide "
                                                            "snippet_len 16")
    assert choose_sampling("auto", keyframe_interval=32)[0] == "center"
    assert choose_sampling("auto", keyframe_interval=None)[0] == "center"
    assert choose_sampling("auto", keyframes_only=True)[0] == "keyframe"
    assert choose_sampling("auto", keyframe_interval=16, frames_per_snippet=2)[0] == "center"
    assert choose_sampling("center", keyframe_interval=16)[0] == "center"


def test_auto_follows_the_source(handmade_bundle, gop4):
    with Detector.load(handmade_bundle, backend="ort-cpu", sampling="auto") as det:
        sampled = {}
        for interval in (None, 4, 3):
            det.reset()
            src = VideoSource(gop4, decoder="pyav")
            src.keyframe_interval = interval
            sampled[interval] = [r.sampled for r in run_video(src, detector=det)]
        keyed = VideoSource(gop4, decoder="pyav", decode="keyframes")
        assert det.use_source(0, keyed)[0] == "keyframe"
        keyed.close()
    center = [(2,), (6,), (10,), (14,), (18,)]
    assert sampled == {None: center, 4: [(0,), (4,), (8,), (12,), (16,)], 3: center}


def test_invalid_sampling_options_name_the_option(handmade_bundle, gop16):
    with pytest.raises(UsageError, match=r"sampling must be one of \('center', 'keyframe', 'auto'\), got 'middle'"):
        Detector.load(handmade_bundle, backend="ort-cpu", sampling="middle")
    with pytest.raises(UsageError, match="sampling='keyframe'.*frames_per_snippet=2"):
        SnippetAssembler(16, 2, sampling="keyframe")
    with pytest.raises(UsageError, match="'center' or 'keyframe', got 'auto'"):
        SnippetAssembler(16, 1, sampling="auto")
    with Detector.load(handmade_bundle, backend="ort-cpu", sampling="center") as det:
        src = VideoSource(gop16, decoder="pyav", decode="keyframes")
        with pytest.raises(UsageError, match="sampling='center' needs the snippets' center frames.*keyframes only"):
            run_video(src, detector=det)


def test_cli_run_sampling_says_what_it_chose_and_records_it(handmade_bundle, tmp_path, capsys):
    from stp_edge.cli import main

    path = write_h264(tmp_path / "gop8.mp4", moving_frames(20, seed=8), 8)  # keyframes in snippets 0, 2, 4
    jsonl = tmp_path / "out.jsonl"
    assert main(["run", str(handmade_bundle), str(path), "--backend", "ort-cpu", "--sampling", "keyframe",
                 "--jsonl", str(jsonl)]) == 0
    text = capsys.readouterr().out
    assert "sampling keyframe (chosen)" in text
    assert "SAMPLING stream 0: 2 snippet(s) held no keyframe and were sampled at the center" in text
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(d["sampled"], d["sampling"]) for d in lines] == [([0], "keyframe"), ([6], "center"),
                                                              ([8], "keyframe"), ([14], "center"),
                                                              ([16], "keyframe")]
    assert main(["run", str(handmade_bundle), str(path), "--backend", "ort-cpu", "--sampling", "auto"]) == 0
    assert "sampling center (auto: " in capsys.readouterr().out  # interval 8 (or unknown): not every snippet
    with pytest.raises(SystemExit):
        main(["run", str(handmade_bundle), str(path), "--sampling", "middle"])
    assert "--sampling: invalid choice: 'middle'" in capsys.readouterr().err


def test_a_snippet_with_two_keyframes_samples_the_first(tmp_path):
    frames = lazy_frames(write_h264(tmp_path / "gop8.mp4", moving_frames(32, seed=9), 8))
    asm = SnippetAssembler(16, 1, sampling="keyframe")
    out = [s for s in (asm.push(asm.prepare(f)) for f in frames[3:]) if s is not None] + [asm.flush()]
    assert [s.sampled for s in out] == [(5,), (21,)]  # keyframes at 5, 13 | 21, (29 is past the end)
    assert asm.fallbacks == 0
