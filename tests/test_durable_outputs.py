"""Outputs that survive any end and never destroy what they should not (issue 26 items 4, 5, 6, 13).

Each test holds one promise of the reliability section: JSON lines under their final name as the run goes (a
SIGKILL keeps every line written, fsync within a second), FIFOs and standard output streamed to, one output
check for every node kind and for the bundle, existing outputs never mixed or replaced unasked, a source that
ends flushed at once, and a second signal that never cuts or deletes a finished output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from conftest import comparable, moving_frames, write_avi

from stp_edge.cli import main


def without_timings(line: str) -> dict:
    """A JSON line as a record to compare across runs (timings and times are wall clock)."""
    return comparable(json.loads(line))


def reference_lines(bundle: Path, video: Path, tmp_path: Path, **kw) -> list[str]:
    """The lines a clean run writes (`run_video(jsonl=...)`, the one JSONL writer)."""
    from stp_edge.run import run_video

    ref = tmp_path / f"ref-{video.stem}.jsonl"
    run_video(video, bundle=bundle, backend="ort-cpu", jsonl=ref, keep=False, **kw)
    lines = ref.read_text().splitlines(keepends=True)
    ref.unlink()
    return lines


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stp_edge.cli", *args]


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_avi(tmp_path / "clip.avi", moving_frames(42, height=60, width=80, seed=4))


@pytest.fixture
def bundle_copy(handmade_bundle, tmp_path) -> Path:
    """A bundle of this test's own (a failure must not destroy the session's shared one)."""
    return Path(shutil.copytree(handmade_bundle, tmp_path / "own.stp"))


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


# --- item 4: JSON lines under their final name, durable ------------------------------------------------------
def test_sigkill_keeps_every_line_older_than_one_second_under_the_final_name(handmade_bundle, tmp_path):
    """A reader follows out.jsonl while the run goes; after SIGKILL the file holds every line written more than
    1 s before the kill (in fact every line written), each whole and equal to a clean run's line."""
    video = write_avi(tmp_path / "long.avi", moving_frames(12000, seed=3))
    jsonl = tmp_path / "out.jsonl"
    proc = subprocess.Popen(cli("run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "--jsonl",
                                str(jsonl), "-q"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[tuple[float, int]] = []  # (when, whole lines a reader saw)
    first = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        now, n = time.monotonic(), complete_lines(jsonl)
        seen.append((now, n))
        first = first if first is not None or n < 5 else now
        if first is not None and now - first > 1.5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    t_kill = time.monotonic()
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    data = jsonl.read_text()
    lines = data.splitlines(keepends=True)
    older = max(n for t, n in seen if t <= t_kill - 1.0)
    assert 5 <= older <= len(lines) < 3000 and data.endswith("\n")
    ref = reference_lines(handmade_bundle, video, tmp_path, max_frames=4 * (len(lines) + 8))
    assert [without_timings(x) for x in lines] == [without_timings(x) for x in ref[:len(lines)]]
    assert not list(tmp_path.glob(".*partial*"))


def test_a_written_line_is_fsynced_within_a_second_and_not_per_line(tmp_path, monkeypatch):
    """Power loss loses at most the last second: a line is fsynced within ~1 s even when none follows it, while
    a burst of lines costs a bounded number of fsyncs (not one per line)."""
    import stp_edge.outputs as outputs

    synced: list[tuple[float, int]] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append((time.monotonic(), fd))
        return real_fsync(fd)

    monkeypatch.setattr(outputs.os, "fsync", fsync)
    writer = outputs.LineWriter(tmp_path / "r.jsonl", sync_s=1.0)
    fd = writer._fd
    synced.clear()  # the directory fsync at creation
    t0 = time.monotonic()
    writer.write_line('{"snippet": 0}\n')
    time.sleep(1.8)
    after = [t - t0 for t, f in synced if f == fd]
    assert after and after[0] <= 1.5  # the period (1 s) plus slack for a loaded 2-core machine
    synced.clear()
    for i in range(500):
        writer.write_line(json.dumps({"snippet": i}) + "\n")
    assert len([f for _, f in synced if f == fd]) <= 2
    writer.close()
    assert (tmp_path / "r.jsonl").read_text().count("\n") == 501


def test_existing_jsonl_is_refused_replaced_with_force_or_appended_to(handmade_bundle, clip, tmp_path, capsys):
    """A new run never mixes its lines into an old file unasked: refused, --force replaces, --append adds (a
    last line a kill cut short is dropped first)."""
    ref = reference_lines(handmade_bundle, clip, tmp_path)
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"old": 1}\n')
    run = ["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--jsonl", str(jsonl), "-q"]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--append" in err and "--force" in err
    assert jsonl.read_text() == '{"old": 1}\n'
    assert main([*run, "--force"]) == 0
    assert [without_timings(x) for x in jsonl.read_text().splitlines()] == [without_timings(x) for x in ref]
    jsonl.write_text('{"old": 1}\n{"cut by a ki')
    assert main([*run, "--append"]) == 0
    lines = jsonl.read_text().splitlines()
    assert lines[0] == '{"old": 1}' and [without_timings(x) for x in lines[1:]] == [without_timings(x) for x in ref]
    capsys.readouterr()
    assert main(["run", str(handmade_bundle), str(clip), "--append"]) == 2
    assert "give --jsonl" in capsys.readouterr().err


def test_library_jsonl_modes(handmade_bundle, clip, tmp_path):
    from stp_edge.errors import OutputExistsError
    from stp_edge.run import run_video

    path = tmp_path / "r.jsonl"
    path.write_text("old\n")
    with pytest.raises(OutputExistsError, match="exists"):
        run_video(clip, bundle=handmade_bundle, backend="ort-cpu", jsonl=path, jsonl_mode="x")
    assert path.read_text() == "old\n"
    res = run_video(clip, bundle=handmade_bundle, backend="ort-cpu", jsonl=path)  # the default replaces
    assert len(path.read_text().splitlines()) == res.snippets == 11


def test_stray_temporaries_of_killed_runs_are_removed_and_named(handmade_bundle, clip, tmp_path, capsys):
    strays = [tmp_path / ".r.jsonl.partial-k3x9", tmp_path / ".o.avi.partial-abc.avi", tmp_path / ".o.probe-1.avi"]
    for p in strays:
        p.write_bytes(b"left by a kill")
    keep = tmp_path / ".other.jsonl.partial-zz"
    keep.write_text("not ours")
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--jsonl", str(tmp_path / "r.jsonl"),
                 "--overlay", str(tmp_path / "o.avi"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "removed 3 temporary file(s)" in out and all(p.name in out for p in strays)
    assert not any(p.exists() for p in strays) and keep.exists()


# --- item 4: the overlay, recoverable ------------------------------------------------------------------------
def test_an_overlay_a_killed_run_left_is_named_by_the_next_run(handmade_bundle, clip, tmp_path, capsys):
    """A kill leaves `o.partial.avi` (it plays); the next run names it and refuses, --force replaces it; an
    existing overlay is refused the same way."""
    overlay, partial = tmp_path / "o.avi", tmp_path / "o.partial.avi"
    write_avi(partial, moving_frames(8, seed=9))
    run = ["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--overlay", str(overlay), "-q"]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "o.partial.avi" in err and "killed" in err and "plays" in err
    assert "--force" in err and partial.exists() and not overlay.exists()
    assert main([*run, "--force"]) == 0
    assert overlay.is_file() and not partial.exists()
    capsys.readouterr()
    assert main(run) == 2
    assert "o.avi exists" in capsys.readouterr().err


def test_sigkill_leaves_a_playable_partial_overlay(handmade_bundle, tmp_path):
    """An AVI overlay killed mid-run stays as `o.partial.avi` and plays (OpenCV writes it in 4 MiB chunks:
    640x480 textured frames, about 150 kB each, fill one in about 28 frames)."""
    video = write_avi(tmp_path / "long.avi", moving_frames(160, height=480, width=640, seed=3))
    overlay, partial = tmp_path / "o.avi", tmp_path / "o.partial.avi"
    proc = subprocess.Popen(cli("run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "--overlay",
                                str(overlay), "-q"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_size > (9 << 19):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.kill()
    proc.wait(timeout=30)
    assert not overlay.exists()
    cap = cv2.VideoCapture(str(partial))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n >= 10


# --- item 5: one output check, streams ------------------------------------------------------------------------
def test_a_fifo_reader_receives_the_stream(handmade_bundle, clip, tmp_path, capsys):
    ref = reference_lines(handmade_bundle, clip, tmp_path)
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    got: list[str] = []

    def read() -> None:
        with open(fifo) as f:
            got.extend(f.readlines())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--jsonl", str(fifo), "-q"]) == 0
    reader.join(timeout=30)
    assert [without_timings(x) for x in got] == [without_timings(x) for x in ref]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and "wrote" not in capsys.readouterr().out


@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_standard_output_receives_the_stream_alone(handmade_bundle, clip, tmp_path, target):
    ref = reference_lines(handmade_bundle, clip, tmp_path)
    proc = subprocess.run(cli("run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--jsonl", target),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [without_timings(x) for x in proc.stdout.splitlines()] == [without_timings(x) for x in ref]
    assert "11 snippets" in proc.stderr and "wrote" not in proc.stderr + proc.stdout


def test_dev_stdout_redirected_to_a_file_gets_the_lines(handmade_bundle, clip, tmp_path):
    ref = reference_lines(handmade_bundle, clip, tmp_path)
    log = tmp_path / "log.jsonl"
    with open(log, "w") as f:
        proc = subprocess.run(cli("run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--jsonl",
                                  "/dev/stdout", "-q"), stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [without_timings(x) for x in log.read_text().splitlines()] == [without_timings(x) for x in ref]


def test_dev_full_and_other_devices_are_refused_in_one_line(handmade_bundle, clip, tmp_path, capsys):
    for target, kind in (("/dev/full", "character device"), ("/dev/null", "character device")):
        assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--jsonl", target]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--jsonl {target} is a {kind}" in err and "Traceback" not in err
    for option in ("--overlay", "--plot"):
        assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", option, "-"]) == 2
        assert "standard output" in capsys.readouterr().err


def test_a_write_error_is_one_line_and_exits_nonzero_never_wrote(handmade_bundle, clip):
    """Standard output on /dev/full: writing fails with ENOSPC; one line names it, exit 2, no 'wrote'."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(cli("run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--jsonl", "-",
                                  "-q"), stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "No space left on device (ENOSPC)" in proc.stderr and "wrote" not in proc.stderr


@pytest.mark.parametrize(("option", "name"), [("--jsonl", "encoder.onnx"), ("--jsonl", "manifest.json"),
                                              ("--jsonl", "new.jsonl"), ("--overlay", "o.avi"),
                                              ("--plot", "p.png")])
def test_run_never_writes_into_its_bundle(bundle_copy, clip, option, name, capsys):
    before = digest(bundle_copy)
    for extra in ([], ["--force"]):
        assert main(["run", str(bundle_copy), str(clip), "--backend", "ort-cpu", option,
                     str(bundle_copy / name), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "inside the bundle" in err
    assert digest(bundle_copy) == before and not (bundle_copy / "new.jsonl").exists()


def test_run_video_never_writes_into_its_bundle(bundle_copy, clip):
    from stp_edge.errors import UsageError
    from stp_edge.run import run_video

    before = digest(bundle_copy)
    for kw in ({"jsonl": bundle_copy / "encoder.onnx"}, {"overlay": bundle_copy / "temporal.onnx"}):
        with pytest.raises(UsageError, match="inside the bundle"):
            run_video(clip, bundle=bundle_copy, backend="ort-cpu", **kw)
    assert digest(bundle_copy) == before


def test_symlinked_outputs_write_their_target_and_keep_the_link(handmade_bundle, clip, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for name in ("r.jsonl", "o.avi"):
        (tmp_path / name).symlink_to(real / name)
    assert main(["run", str(handmade_bundle), str(clip), "--backend", "ort-cpu", "--jsonl",
                 str(tmp_path / "r.jsonl"), "--overlay", str(tmp_path / "o.avi"), "-q"]) == 0
    assert (tmp_path / "r.jsonl").is_symlink() and (tmp_path / "o.avi").is_symlink()
    assert len((real / "r.jsonl").read_text().splitlines()) == 11
    cap = cv2.VideoCapture(str(real / "o.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 42
    cap.release()


def test_check_outputs_names_every_kind_and_place(tmp_path):
    from stp_edge.errors import UsageError
    from stp_edge.outputs import check_outputs

    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    bad = {
        "is a directory": ({"-o": tmp_path}, {}),
        "is a FIFO": ({"-o": tmp_path / "fifo"}, {}),
        "expected a directory": ({"-o": tmp_path / "file"}, {"directories": ("-o",)}),
        "file is not a directory": ({"-o": tmp_path / "file" / "x.json"}, {}),
        "is the input": ({"-o": tmp_path / "file"}, {}),
        "inside the bundle": ({"-o": tmp_path / "b.stp" / "x"}, {"protected": {"the bundle": tmp_path / "b.stp"}}),
    }
    for message, (outputs, kw) in bad.items():
        with pytest.raises(UsageError, match=message):
            check_outputs(outputs, [tmp_path / "file"] if message == "is the input" else [], **kw)
    ok = check_outputs({"--jsonl": tmp_path / "fifo", "-o": tmp_path / "new"}, streams=("--jsonl",),
                       directories=("-o",))
    assert ok["--jsonl"].is_stream and ok["-o"].kind == "file"


# --- item 6: a source that ends is flushed and reported at once -------------------------------------------------
def test_a_source_that_ends_is_written_before_the_others_end(handmade_bundle, tmp_path, capsys):
    from stp_edge.run import run_video

    short = write_avi(tmp_path / "a_short.avi", moving_frames(22, seed=1))
    long = write_avi(tmp_path / "b_long.avi", moving_frames(600, seed=2))
    ref_short = reference_lines(handmade_bundle, short, tmp_path)
    path = tmp_path / "both.jsonl"
    at_end: dict[int, tuple[list[dict], int]] = {}

    def on_end(run):  # what a reader of the file sees when a source ends
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        at_end[run.stream] = ([x for x in lines if x["stream"] == 0], sum(x["stream"] == 1 for x in lines))

    res = run_video([short, long], bundle=handmade_bundle, backend="ort-cpu", jsonl=path, on_end=on_end, keep=False)
    assert list(at_end) == [0, 1]
    mine, long_so_far = at_end[0]
    assert [without_timings(json.dumps(x)) for x in mine] == [without_timings(x) for x in ref_short]
    assert long_so_far < res.snippets - len(ref_short)  # the long source was still running
    assert main(["run", str(handmade_bundle), str(short), str(long), "--backend", "ort-cpu"]) == 0
    out = capsys.readouterr().out
    assert out.index("ENDED   stream 0") < out.index("ENDED   stream 1") < out.index("snippets, ")


# --- item 13: a second signal, OS errors -------------------------------------------------------------------------
def test_a_second_signal_never_cuts_or_deletes_the_overlay(handmade_bundle, clip, tmp_path, monkeypatch):
    """Two SIGINTs land right after a frame is encoded, before it is counted: the run stops at once, and the
    overlay is still finished whole (every frame written counted and read back), never deleted as a full disk."""
    import stp_edge.video as video
    from stp_edge.cli import _StopOnSignal
    from stp_edge.run import run_video

    encoded = []
    real_write = video._CvEncoder.write

    def write_then_signal(self, frame):
        real_write(self, frame)
        encoded.append(1)
        if len(encoded) == 9:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(video._CvEncoder, "write", write_then_signal)
    overlay, jsonl = tmp_path / "o.avi", tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt), _StopOnSignal() as stopper:
        run_video(clip, bundle=handmade_bundle, backend="ort-cpu", overlay=overlay, jsonl=jsonl,
                  stop=stopper.event)
    cap = cv2.VideoCapture(str(overlay))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert n == len(encoded) >= 9 and not (tmp_path / "o.partial.avi").exists()
    assert all(json.loads(x)["frame_end"] <= n for x in jsonl.read_text().splitlines())


def test_two_sigints_exit_130_with_every_output_whole(handmade_bundle, tmp_path):
    video = write_avi(tmp_path / "long.avi", moving_frames(6000, seed=3))
    jsonl, overlay = tmp_path / "out.jsonl", tmp_path / "o.avi"
    proc = subprocess.Popen(cli("run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "--jsonl",
                                str(jsonl), "--overlay", str(overlay), "-q"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and complete_lines(jsonl) < 20:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "full disk" not in err and "error" not in err
    assert [json.loads(x)["snippet"] for x in jsonl.read_text().splitlines()][:3] == [0, 1, 2]
    cap = cv2.VideoCapture(str(overlay))
    ok = cap.read()[0]
    cap.release()
    assert ok and not list(tmp_path.glob("*partial*"))


def test_os_errors_are_one_line_with_path_and_reason(handmade_bundle, clip, tmp_path, capsys):
    from stp_edge.cli import _one_line

    assert _one_line(FileExistsError(17, "File exists", "out/x")) == "out/x: File exists (EEXIST)"
    assert _one_line(OSError(28, "No space left on device")) == "No space left on device (ENOSPC)"
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(handmade_bundle), str(clip), "--jsonl", str(tmp_path / "afile" / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile is not a directory" in err and "Errno" not in err


def test_sigkill_leaves_a_playable_partial_h264_overlay(handmade_bundle, tmp_path):
    """An H.264 overlay is written in 1 s fragments while it is partial: killed mid-run, it plays up to its last
    fragment (a +faststart MP4 keeps its index for the end and holds nothing playable)."""
    from stp_edge.video import h264_available

    if not h264_available():
        pytest.skip("PyAV with libx264 is not installed (stp-edge[h264]): .mp4 overlays are mp4v")
    video = write_avi(tmp_path / "long.avi", moving_frames(3000, seed=3))
    overlay, partial = tmp_path / "o.mp4", tmp_path / "o.partial.mp4"
    proc = subprocess.Popen(cli("run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "--overlay",
                                str(overlay), "-q"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_size > 40_000:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.kill()
    proc.wait(timeout=30)
    cap = cv2.VideoCapture(str(partial))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n >= 15 and not overlay.exists()


def test_every_command_checks_its_outputs_first(bundle_copy, tmp_path, capsys):
    """One output check for every output option of every command: inside the bundle, a device or a regular file
    where a directory goes is refused in one line before any work, and the bundle is left as it was."""
    b = str(bundle_copy)
    (tmp_path / "afile").write_text("x")
    cases = [
        (["bench", b, "-o", f"{b}/bench.json", "--no-torch"], "-o/--json"),
        (["score", str(tmp_path), "--bundle", b, "-o", f"{b}/scores"], "-o"),
        (["extract", str(tmp_path), "--bundle", b, "-o", f"{b}/features"], "-o"),
        (["eval", b, "--out", f"{b}/eval"], "--out"),
    ]
    for argv, option in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{option} {b}/" in err and "inside the bundle" in err, (argv, err)
    devices = [
        (["export", "--random", "-o", "/dev/null"], "-o /dev/null is a character device; expected a directory"),
        (["train", str(tmp_path), "-o", "/dev/full"], "-o /dev/full is a character device"),
        (["demo", "--out", "/dev/null"], "--out /dev/null is a character device"),
        (["score", str(tmp_path), "--bundle", b, "-o", str(tmp_path / "afile")], "is a regular file; expected a "
                                                                                   "directory"),
        (["bench", b, "-o", "/dev/full", "--no-torch"], "-o/--json /dev/full is a character device"),
    ]
    for argv, message in devices:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    assert sorted(p.name for p in bundle_copy.iterdir()) == ["encoder.onnx", "manifest.json", "spatial.onnx",
                                                             "temporal.onnx"]
