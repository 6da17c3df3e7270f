"""`stp-edge run` as a user meets it: conventions, outputs that never destroy data, signals, the error taxonomy,
the overlay drawn in the same pass, results streamed with bounded memory, and gaps of live sources."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import moving_frames, write_avi

from stp_edge.cli import build_parser, main


def numbered_frames(n: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Moving frames whose 8x8 patch at the middle of the right edge (clear of the HUD's text and score bar and
    of the map's centre square) encodes the frame index as a grey level (index * 9 % 250)."""
    frames = moving_frames(n, height=height, width=width, seed=2)
    for i, f in enumerate(frames):
        f[height // 2 - 4:height // 2 + 4, -8:] = (i * 9) % 250
    return frames


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_avi(tmp_path / "clip.avi", moving_frames(42, height=60, width=80, seed=4))


# --- conventions ------------------------------------------------------------------------------------------
def test_version_and_help_on_every_option(capsys):
    from stp_edge import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"stp-edge {__version__}"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {opt.option_strings or opt.dest}" for name, p in sub.choices.items() for opt in p._actions
               if not isinstance(opt, argparse._HelpAction) and not opt.help]
    assert missing == []


def test_bundle_is_positional_for_every_single_bundle_command():
    p = build_parser()
    for argv in (["run", "b.stp", "x.mp4"], ["verify", "b.stp"], ["build-engines", "b.stp"], ["info", "b.stp"],
                 ["eval", "b.stp"], ["bench", "b.stp"], ["serve", "b.stp"]):
        assert p.parse_args(argv).bundle == Path("b.stp")


def test_export_refuses_an_onnx_output_path(tmp_path, capsys):
    code = main(["export", "--random", "-o", str(tmp_path / "model.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "not one .onnx file" in err and "model.stp" in err and err.count("\n") == 1
    assert not (tmp_path / "model.onnx").exists()


def test_run_prints_backend_preprocessing_summary_and_latency(handmade_bundle, clip, capsys):
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--spatial", "all"]) == 0
    out = capsys.readouterr().out
    assert "backend ort-cpu, preprocessing cpu, device 0" in out
    assert "11 snippets" in out and "42 frames read, 0 dropped" in out
    assert "events:" in out and "latency per snippet (ms)" in out and "encoder" in out


def test_run_says_where_features_live_and_refuses_a_device_path_it_cannot_run(handmade_bundle, clip, capsys):
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu"]) == 0
    assert "features: host (the encoder's backend returns host outputs)" in capsys.readouterr().out
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--features", "host"]) == 0
    assert "features: host (asked for)" in capsys.readouterr().out
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--features", "device"]) == 2
    assert "features='device' cannot run here: the encoder's backend returns host outputs" in capsys.readouterr().err


def test_threshold_and_quiet(handmade_bundle, clip, tmp_path, capsys):
    lo, hi = tmp_path / "lo.jsonl", tmp_path / "hi.jsonl"
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--threshold", "0",
                 "--jsonl", str(lo), "-q"]) == 0
    out = capsys.readouterr().out
    assert "ANOMALY" not in out and "latency" not in out and "11 snippets, 11 anomalous" in out
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--threshold", "1",
                 "--jsonl", str(hi), "-q"]) == 0
    assert "11 snippets, 0 anomalous" in capsys.readouterr().out
    assert all(json.loads(x)["is_anomaly"] for x in lo.read_text().splitlines())
    assert main(["run", str(handmade_bundle), str(clip), "--threshold", "1.5"]) == 2
    assert "--threshold must be in [0, 1]" in capsys.readouterr().err


# --- outputs never destroy data ---------------------------------------------------------------------------
def test_jsonl_is_not_truncated_when_the_run_cannot_start(handmade_bundle, clip, tmp_path, capsys):
    old = tmp_path / "results.jsonl"
    old.write_text('{"snippet": 0, "kept": true}\n')
    assert main(["run", str(handmade_bundle), str(tmp_path / "typo.avi"), "--jsonl", str(old)]) == 2
    assert main(["run", str(tmp_path / "typo.stp"), str(clip), "--jsonl", str(old)]) == 2
    assert main(["run", str(handmade_bundle), str(clip), "--jsonl", str(old), "--overlay", str(tmp_path / "o.xyz"),
                 "--backend", "ort-cpu"]) == 2
    assert old.read_text() == '{"snippet": 0, "kept": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "results.jsonl"]  # no temporary left


@pytest.mark.parametrize("option", ["--jsonl", "--overlay"])
def test_an_output_equal_to_the_input_is_refused(handmade_bundle, clip, option, capsys):
    before = clip.read_bytes()
    assert main(["run", str(handmade_bundle), str(clip), option, str(clip), "--backend", "ort-cpu"]) == 2
    assert "would destroy the input" in capsys.readouterr().err
    assert clip.read_bytes() == before


def test_missing_plot_dependency_fails_before_the_run(handmade_bundle, clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    jsonl = tmp_path / "r.jsonl"
    assert main(["run", str(handmade_bundle), str(clip), "--plot", str(tmp_path / "p.png"),
                 "--jsonl", str(jsonl)]) == 2
    err = capsys.readouterr().err
    assert "stp-edge[eval]" in err and "Traceback" not in err
    assert not jsonl.exists()


# --- error taxonomy ---------------------------------------------------------------------------------------
def test_a_bug_keeps_its_traceback(handmade_bundle, clip, monkeypatch):
    """A ValueError from a bug (here NumPy, deep in the run) is not a library error: it is not swallowed."""
    import stp_edge.api

    def broken(self, frames, **_kwargs):
        return np.zeros((2, 3)) + np.zeros((4, 5))  # operands could not be broadcast: ValueError

    monkeypatch.setattr(stp_edge.api.Detector, "_push_many", broken)  # the door run_video pushes through
    with pytest.raises(ValueError, match="broadcast"):
        main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu"])


def test_library_errors_derive_from_one_root():
    from stp_edge._deps import MissingDependencyError
    from stp_edge.backends.base import RunnerError
    from stp_edge.bundle import BundleError
    from stp_edge.errors import StpEdgeError
    from stp_edge.frames import FrameError
    from stp_edge.video import VideoError

    for cls in (MissingDependencyError, RunnerError, BundleError, FrameError, VideoError):
        assert issubclass(cls, StpEdgeError), cls


# --- overlay in the same pass -----------------------------------------------------------------------------
def test_overlay_is_drawn_in_the_same_pass_on_the_right_frames(handmade_bundle, tmp_path, monkeypatch):
    """The source is opened once, and overlay frame i shows source frame i (its index patch)."""
    import stp_edge.video

    frames = numbered_frames(37)
    video = write_avi(tmp_path / "clip.avi", frames)
    opened = []
    real_open = stp_edge.video.VideoSource.__init__

    def counting_init(self, source, **kw):
        opened.append(source)
        real_open(self, source, **kw)

    monkeypatch.setattr(stp_edge.video.VideoSource, "__init__", counting_init)
    overlay = tmp_path / "overlay.avi"
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "--overlay", str(overlay)]) == 0
    assert len(opened) == 1
    cap = cv2.VideoCapture(str(overlay))
    got = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        got.append(f)
    cap.release()
    assert len(got) == 37
    levels = [int(np.median(g[22:26, -6:])) for g in got]
    want = [int(np.median(f[22:26, -6:])) for f in frames]
    # Levels are 9 apart: each overlay frame is its own source frame.
    assert max(abs(a - b) for a, b in zip(levels, want, strict=True)) <= 4


def test_overlay_written_under_a_visible_partial_name_until_the_end(handmade_bundle, tmp_path):
    """The overlay is `o.partial.avi` while the run goes (found again after a kill), `o.avi` once finished."""
    from stp_edge.run import run_video

    video = write_avi(tmp_path / "clip.avi", moving_frames(30))
    overlay = tmp_path / "o.avi"
    seen = []
    run_video(video, bundle=handmade_bundle, backend="ort-cpu", overlay=overlay,
              on_result=lambda r: seen.append((overlay.exists(), (tmp_path / "o.partial.avi").exists())))
    assert seen and all(s == (False, True) for s in seen) and overlay.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "o.avi"]


# --- streaming with bounded memory, gaps ----------------------------------------------------------------------
def test_keep_false_streams_results_and_keeps_none(handmade_bundle, tmp_path):
    from stp_edge.run import run_video

    video = write_avi(tmp_path / "clip.avi", moving_frames(42, seed=5))
    got = []
    res = run_video(video, bundle=handmade_bundle, backend="ort-cpu", keep=False, on_result=got.append)
    full = run_video(video, bundle=handmade_bundle, backend="ort-cpu")
    assert len(res) == 0 and res.snippets == len(got) == len(full) == 11
    assert [r.score for r in got] == [r.score for r in full]


def test_several_sources_run_as_streams_of_one_detector(handmade_bundle, tmp_path):
    from stp_edge.run import run_video

    a = write_avi(tmp_path / "a.avi", moving_frames(40, seed=1))
    b = write_avi(tmp_path / "b.avi", moving_frames(25, seed=2))
    both = run_video(str(tmp_path / "*.avi"), bundle=handmade_bundle, backend="ort-cpu")
    alone = {s: run_video(v, bundle=handmade_bundle, backend="ort-cpu") for s, v in ((0, a), (1, b))}
    for stream, ref in alone.items():
        mine = [r for r in both if r.stream == stream]
        assert [(r.frame_start, r.frame_end) for r in mine] == [(r.frame_start, r.frame_end) for r in ref]
        np.testing.assert_allclose([r.score for r in mine], [r.score for r in ref], rtol=0, atol=1e-6)
    assert [s.stats.read for s in both.sources] == [40, 25]


class GapSource:
    """A real decoded file whose reader reports an outage before frame `at` (what VideoSource does on reconnect)."""

    def __init__(self, path: Path, at: int) -> None:
        from stp_edge.video import open_source

        self.src = open_source(path)
        self.at = at

    def wrap(self):
        from stp_edge.video import Gap

        inner = self.src.frames_with_gaps
        at = self.at

        def frames_with_gaps(**kw):
            for i, (frame, _gap) in enumerate(inner(**kw)):
                yield frame, (Gap(frame=i, lost_s=3.0, attempts=2, start_time=0.0) if i == at else None)

        self.src.frames_with_gaps = frames_with_gaps
        return self.src


def test_a_gap_flushes_resets_the_window_and_numbers_go_on(handmade_bundle, tmp_path):
    """After an outage the results equal a fresh stream over the frames after it, renumbered to follow on."""
    from stp_edge.run import run_video

    frames = moving_frames(44, seed=7)
    whole = write_avi(tmp_path / "whole.avi", frames)
    before, after = write_avi(tmp_path / "before.avi", frames[:20]), write_avi(tmp_path / "after.avi", frames[20:])
    gaps = []
    res = run_video(GapSource(whole, 20).wrap(), bundle=handmade_bundle, backend="ort-cpu",
                    on_gap=lambda s, g: gaps.append((s, g.frame)))
    ref_before = run_video(before, bundle=handmade_bundle, backend="ort-cpu")
    ref_after = run_video(after, bundle=handmade_bundle, backend="ort-cpu")
    assert gaps == [(0, 20)]
    assert [(r.snippet, r.frame_start, r.frame_end) for r in res] == (
        [(r.snippet, r.frame_start, r.frame_end) for r in ref_before]
        + [(r.snippet + len(ref_before), r.frame_start + 20, r.frame_end + 20) for r in ref_after])
    np.testing.assert_allclose([r.score for r in res], [r.score for r in (*ref_before, *ref_after)], atol=1e-6)


# --- one JSONL writer ----------------------------------------------------------------------------------------
def _same_line_but_timings(a: str, b: str) -> None:
    """Two JSON lines written the same way: same keys in the same order, same values; timings and times are
    wall clock (a file's media times are the same, anchored at the moment each run started reading it)."""
    ra, rb = json.loads(a), json.loads(b)
    assert json.dumps(ra) == a and json.dumps(rb) == b  # each line is exactly `json.dumps` of its record
    assert list(ra) == list(rb) and list(ra["timings"]) == list(rb["timings"])
    wall = dict.fromkeys(("timings", "start_time", "end_time", "timestamp"))
    assert {**ra, **wall} == {**rb, **wall}
    assert ra["clock"] == "media" and ra["media_time"] == rb["media_time"]
    assert abs((ra["end_time"] - ra["start_time"]) - (rb["end_time"] - rb["start_time"])) < 0.002


def test_run_video_jsonl_is_what_run_jsonl_writes(handmade_bundle, tmp_path):
    from stp_edge.run import run_video

    video = write_avi(tmp_path / "clip.avi", moving_frames(42, seed=6))
    by_cli, by_lib = tmp_path / "cli.jsonl", tmp_path / "lib.jsonl"
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "--spatial", "all",
                 "--jsonl", str(by_cli), "-q"]) == 0
    res = run_video(video, bundle=handmade_bundle, backend="ort-cpu", spatial_on="all", jsonl=by_lib, keep=False)
    cli, lib = by_cli.read_text().splitlines(), by_lib.read_text().splitlines()
    assert len(cli) == len(lib) == res.snippets == 11
    assert any(json.loads(line)["anomaly_map"] is not None for line in lib)  # maps and boxes are in the lines
    for a, b in zip(cli, lib, strict=True):
        _same_line_but_timings(a, b)
    assert not list(tmp_path.glob(".*partial*"))


def test_jsonl_gap_line_and_its_place(handmade_bundle, tmp_path):
    """A reconnect gap is one line, between the results before and after it (the shape `stp-edge run` writes)."""
    from stp_edge.run import run_video

    whole = write_avi(tmp_path / "whole.avi", moving_frames(44, seed=7))
    path = tmp_path / "gap.jsonl"
    res = run_video(GapSource(whole, 20).wrap(), bundle=handmade_bundle, backend="ort-cpu", jsonl=path)
    lines = path.read_text().splitlines()
    before = sum(r.frame_start < 20 for r in res)
    gap = json.loads(lines[before])
    assert gap["schema"] == "stp-edge.gap" and gap["camera"] == "whole"
    assert gap["gap"] == {"stream": 0, "frame": 20, "lost_s": 3.0, "attempts": 2}
    del lines[before]
    assert [json.loads(x)["snippet"] for x in lines] == [r.snippet for r in res]


def test_jsonl_keeps_what_was_delivered_when_the_run_fails(handmade_bundle, tmp_path):
    import io

    from stp_edge.run import JsonlSink, run_video

    video = write_avi(tmp_path / "clip.avi", moving_frames(42, seed=6))
    path = tmp_path / "r.jsonl"
    seen = []

    def fail_on_the_third(r):
        seen.append(r)
        if len(seen) == 3:
            raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        run_video(video, bundle=handmade_bundle, backend="ort-cpu", jsonl=path, on_result=fail_on_the_third)
    assert [json.loads(x)["snippet"] for x in path.read_text().splitlines()] == [0, 1, 2]
    assert not list(tmp_path.glob(".*partial*"))
    stream = io.StringIO()
    first = json.loads(path.read_text().splitlines()[0])
    with JsonlSink(stream) as sink:  # a text stream is written to and left open
        sink.write(first)
    assert not stream.closed and stream.getvalue() == path.read_text().splitlines(keepends=True)[0]


# --- signals (a real child process) ------------------------------------------------------------------------------
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_signal_flushes_outputs_and_exits_128_plus_signum(handmade_bundle, tmp_path, sig, code):
    video = write_avi(tmp_path / "long.avi", moving_frames(3000, seed=3))
    jsonl, overlay = tmp_path / "out.jsonl", tmp_path / "overlay.avi"
    cmd = [sys.executable, "-m", "stp_edge.cli", "run", str(handmade_bundle), str(video), "--backend", "ort-cpu",
           "--jsonl", str(jsonl), "--overlay", str(overlay), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and jsonl.stat().st_size > 0:  # streamed under its own name
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and signal.Signals(sig).name in err
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert 0 < len(lines) < 750 and [r["snippet"] for r in lines] == list(range(len(lines)))
    cap = cv2.VideoCapture(str(overlay))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, _ = cap.read()
    cap.release()
    assert ok and n == lines[-1]["frame_end"]
    assert "snippets" in out and not list(tmp_path.glob("*partial*"))
    assert os.path.getsize(video) > 0


def test_overlay_frames_no_result_reached_are_written_marked(tmp_path):
    """Frames whose snippet never got a result (a run that failed part-way) are still written, marked."""
    from stp_edge.run import OverlaySink

    sink = OverlaySink(tmp_path / "o.avi", fps=10.0, threshold=0.5)
    frames = moving_frames(6)
    for i, f in enumerate(frames):
        sink.add_frame(i, f)
    assert sink.close() == tmp_path / "o.avi"
    cap = cv2.VideoCapture(str(tmp_path / "o.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    ok, first = cap.read()
    cap.release()
    # the frame itself (the HUD covers the top rows and the bottom bar), not a blank
    assert ok and np.corrcoef(first[20:-8].ravel(), frames[0][20:-8].ravel())[0, 1] > 0.8
