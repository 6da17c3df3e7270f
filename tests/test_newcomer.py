"""What a new user sees (issue 29): random weights said plainly, sources named, seconds kept, no false alarms,
nothing written unasked, words that name the user's own paths and options, and the overlay's codec said."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import pytest
from conftest import write_avi

from stp_edge.bench.capacity import free_port
from stp_edge.cli import main
from stp_edge.errors import RandomWeightsWarning

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def random_bundle(handmade_bundle, tmp_path_factory) -> Path:
    """The hand-made bundle with the provenance `export --random` records (source.kind = "random")."""
    from stp_edge.bundle import MANIFEST, rewrite_manifest

    out = tmp_path_factory.mktemp("random") / "random.stp"
    shutil.copytree(handmade_bundle, out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["source"] = {"kind": "random", "config": "tiny", "seed": 0}
    rewrite_manifest(out, manifest)
    return out


# --- 1. random weights say so -------------------------------------------------------------------------------
def test_detector_load_warns_about_random_weights_and_only_about_them(random_bundle, handmade_bundle):
    from stp_edge.api import Detector

    with pytest.warns(RandomWeightsWarning, match=r"random\.stp has random weights .*mean nothing"):
        Detector.load(random_bundle, backend="ort-cpu").close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Detector.load(handmade_bundle, backend="ort-cpu").close()
    assert not [w for w in caught if issubclass(w.category, RandomWeightsWarning)]


@pytest.mark.parametrize("command", ["info", "run", "bench", "score"])
def test_every_command_that_loads_a_random_bundle_says_so_once(command, random_bundle, handmade_bundle, tmp_path,
                                                               frames_factory, capsys, monkeypatch):
    import stp_edge.bench

    real_bench = stp_edge.bench.run_bench  # the stream-length part at its test size (seconds, not minutes)
    monkeypatch.setattr(stp_edge.bench, "run_bench", lambda *a, **k: real_bench(*a, **k, stream_lengths=(8, 24)))
    monkeypatch.chdir(tmp_path)
    video = write_avi(tmp_path / "clip.avi", frames_factory(12), fps=10.0)
    args = {"info": ["info", "{b}"], "run": ["run", "{b}", str(video), "--backend", "ort-cpu", "-q"],
            "bench": ["bench", "{b}", "--backend", "ort-cpu", "--frames", "16", "--no-torch"],
            "score": ["score", str(video), "--bundle", "{b}", "-o", "scores-{n}", "--backend", "ort-cpu"]}[command]
    for bundle, expected in ((random_bundle, 1), (handmade_bundle, 0)):
        assert main([a.format(b=bundle, n=bundle.stem) for a in args]) == 0
        err = capsys.readouterr().err
        assert err.count("has random weights") == expected, err
        if expected:
            assert f"stp-edge {command}: warning: bundle {random_bundle} has random weights" in err
            assert "RandomWeightsWarning" not in err and ".py:" not in err  # a plain line, not Python's format


def test_serve_says_it_before_a_server_starts(random_bundle):
    from stp_edge.scale.serve import server_command

    with pytest.warns(RandomWeightsWarning, match="has random weights"):
        cmd = server_command(random_bundle, port=8000, python=sys.executable)  # what `stp-edge serve` launches
    assert str(random_bundle) in cmd


def test_jsonl_lines_of_a_random_bundle_say_so(random_bundle, handmade_bundle, tmp_path, frames_factory):
    video = write_avi(tmp_path / "clip.avi", frames_factory(12), fps=10.0)
    for bundle, flag in ((random_bundle, True), (handmade_bundle, None)):
        jsonl = tmp_path / f"{bundle.stem}.jsonl"
        assert main(["run", str(bundle), str(video), "--backend", "ort-cpu", "-q", "--jsonl", str(jsonl)]) == 0
        lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
        assert len(lines) == 3 and all(x.get("random_weights") is flag for x in lines)


def test_info_says_random_weights_in_its_summary(random_bundle, capsys):
    assert main(["info", str(random_bundle)]) == 0
    assert "weights       RANDOM" in capsys.readouterr().out


# --- 3. several sources: named, in seconds --------------------------------------------------------------------
def test_run_names_each_stream_and_keeps_seconds_with_several_sources(handmade_bundle, tmp_path, frames_factory,
                                                                      capsys):
    a = write_avi(tmp_path / "a.avi", frames_factory(16, seed=1), fps=10.0)
    b = write_avi(tmp_path / "b.avi", frames_factory(16, seed=2), fps=20.0)
    assert main(["run", str(handmade_bundle), str(a), str(b), "--backend", "ort-cpu", "--threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert f"stream 0: {a}\n" in out and f"stream 1: {b}\n" in out
    events = [line for line in out.splitlines() if line.startswith("  stream ")]
    assert len(events) == 2 and all("s - " in e and "frames " not in e for e in events), events
    assert "stream 1     0.00s -    0.80s" in out  # 16 frames at b's own 20 fps
    anomaly_lines = [line for line in out.splitlines() if line.startswith("ANOMALY")]
    assert anomaly_lines and all(" frames [" in x and "s-" in x for x in anomaly_lines)


def test_a_url_down_at_start_does_not_stop_the_other_sources(handmade_bundle, tmp_path, frames_factory, capsys):
    video = write_avi(tmp_path / "a.avi", frames_factory(16), fps=10.0)
    url = f"http://viewer:hunter2@127.0.0.1:{free_port()}/live.ts"  # nothing listens there
    jsonl = tmp_path / "out.jsonl"
    code = main(["run", str(handmade_bundle), str(video), url, "--backend", "ort-cpu", "--reconnect-s", "1",
                 "--timeout-ms", "1000", "--jsonl", str(jsonl)])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)  # a source lost for good: the job did not fully succeed
    assert "stream 1: http://viewer:***@127.0.0.1" in out and "DOWN at start" in out
    assert "LOST    url http://viewer:***@127.0.0.1" in out and "was down at start and never came up" in out
    assert "hunter2" not in out + err
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [x["snippet"] for x in lines if x.get("stream") == 0] == [0, 1, 2, 3]  # the file was analysed whole


# --- 4. no false alarm about the input --------------------------------------------------------------------------
def test_truncated_is_said_only_of_a_file_that_ended_early(handmade_bundle, tmp_path, frames_factory, capsys):
    video = write_avi(tmp_path / "clip.avi", frames_factory(12) * 4, fps=10.0)
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "--max-frames", "8"]) == 0
    out = capsys.readouterr().out
    assert "TRUNCATED" not in out and "8 frames read" in out
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size * 6 // 10])
    assert main(["run", str(handmade_bundle), str(cut), "--backend", "ort-cpu"]) == 0
    assert f"TRUNCATED {cut}: the container promised 48 frames" in capsys.readouterr().out


# --- 5. nothing written unasked ---------------------------------------------------------------------------------
def test_bench_writes_nothing_unless_asked(handmade_bundle, tmp_path, monkeypatch, capsys):
    import stp_edge.bench

    real_bench = stp_edge.bench.run_bench
    monkeypatch.setattr(stp_edge.bench, "run_bench", lambda *a, **k: real_bench(*a, **k, stream_lengths=(8, 24)))
    monkeypatch.chdir(tmp_path)
    args = ["bench", str(handmade_bundle), "--backend", "ort-cpu", "--frames", "16", "--no-torch"]
    assert main(args) == 0
    assert "| encoder |" in capsys.readouterr().out and list(tmp_path.iterdir()) == []
    assert main([*args, "-o", "res/b.json"]) == 0
    assert "saved res/b.json, res/b.md" in capsys.readouterr().out
    assert json.loads((tmp_path / "res" / "b.json").read_text())["snippets"] == 4


# --- 7. words a user should see ---------------------------------------------------------------------------------
def test_an_unsupported_overlay_names_the_users_file(handmade_bundle, tmp_path, frames_factory, capsys):
    video = write_avi(tmp_path / "clip.avi", frames_factory(8), fps=10.0)
    out_dir = tmp_path / "out"
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu",
                 "--overlay", str(out_dir / "out.mkv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stp-edge run: error: {out_dir / 'out.mkv'}: unsupported extension '.mkv'"), err
    assert ".probe-" not in err and ".partial-" not in err
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_an_existing_export_says_the_option_on_the_command_line(tmp_path, capsys):
    pytest.importorskip("torch")
    (tmp_path / "m.stp").mkdir()
    assert main(["export", "--random", "-o", str(tmp_path / "m.stp"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "pass --force" in err and "overwrite=True" not in err and "CLI:" not in err


def test_library_messages_keep_the_python_argument():
    from stp_edge.cli import _one_line
    from stp_edge.errors import OutputExistsError, UsageError

    api = "m.stp already exists; pass overwrite=True (CLI: --force) to replace it"
    assert _one_line(OutputExistsError(api)) == "m.stp already exists; pass --force to replace it"
    assert _one_line(UsageError("needs calib= (CLI: --calib DIR), a directory")) == "needs --calib DIR, a directory"
    kept = "epochs must be an integer >= 1 (CLI: --epochs), got 0"  # no argument=value before it: left whole
    assert _one_line(UsageError(kept)) == kept


def test_one_snippet_is_one_snippet(handmade_bundle, tmp_path, frames_factory, capsys):
    video = write_avi(tmp_path / "clip.avi", frames_factory(4), fps=10.0)  # the hand-made config: 4-frame snippets
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu"]) == 0
    out = capsys.readouterr().out
    assert "1 snippet, " in out and "1 snippets" not in out and "4 frames read" in out


def test_plural_follows_the_count():
    from stp_edge.report import plural

    assert [plural(n, "snippet") for n in (0, 1, 2)] == ["0 snippets", "1 snippet", "2 snippets"]
    assert plural(1, "outage") == "1 outage" and plural(3, "copy", "copies") == "3 copies"


def test_a_bad_url_is_one_clean_line_without_opencv_or_ffmpeg_logs(handmade_bundle):
    """OpenCV and its FFmpeg write to the process' stderr directly: only a subprocess sees what a user sees."""
    url = f"http://user:hunter2@127.0.0.1:{free_port()}/x.ts"
    proc = subprocess.run([sys.executable, "-m", "stp_edge.cli", "run", str(handmade_bundle), url, "--backend",
                           "ort-cpu", "--timeout-ms", "1000"], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"stp-edge run: error: cannot open stream {url.replace('hunter2', '***')} "
                                        "(unreachable, or no FFmpeg support)"], proc.stderr


def test_the_package_lists_and_exports_its_public_names():
    import stp_edge
    import stp_edge.errors
    import stp_edge.frames

    names = dir(stp_edge)
    assert {"Detector", "run_video", "Bundle", "FrameError", "StpEdgeError", "__version__"} <= set(names)
    assert stp_edge.FrameError is stp_edge.errors.FrameError is stp_edge.frames.FrameError
    assert issubclass(stp_edge.FrameError, stp_edge.StpEdgeError) and issubclass(stp_edge.FrameError, ValueError)
    assert stp_edge.RandomWeightsWarning is RandomWeightsWarning


# --- 8. the overlay's codec ------------------------------------------------------------------------------------
def test_run_says_the_overlay_codec(handmade_bundle, tmp_path, frames_factory, capsys):
    from stp_edge.video import h264_available

    video = write_avi(tmp_path / "clip.avi", frames_factory(8), fps=10.0)
    overlay = tmp_path / "overlay.mp4"
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "--overlay", str(overlay)]) == 0
    out = capsys.readouterr().out
    cap = cv2.VideoCapture(str(overlay))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode().lower()
    cap.release()
    if h264_available():
        assert f"wrote {overlay} (H.264)" in out and fourcc in ("avc1", "h264")
    else:
        assert f"wrote {overlay} (MPEG-4 Part 2; pip install 'stp-edge[h264]'" in out and fourcc == "mp4v"
