"""Live sources against a real stream: ffmpeg serves a generated clip as MPEG-TS over HTTP on 127.0.0.1.

The server is killed (or frozen) mid-run and restarted, or never restarted; the reading side must record one
gap and keep reading, or end with `stats.lost` after its bounded backoff. Each test takes a few seconds.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stp_edge.bench.capacity import free_port, listening
from stp_edge.video import Backoff, Gap, open_source

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (run `make system-deps`, or "
                                                       "apt-get install ffmpeg): no server for live streams")
FPS = 25
DEADLINE_S = 30  # no test loop may run longer than this, whatever the stream does


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 2-second 64x48 MJPG clip: gradients with a moving square, never all zero."""
    path = tmp_path_factory.mktemp("live") / "clip.avi"
    yy, xx = np.mgrid[0:48, 0:64]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48))
    assert writer.isOpened()
    for i in range(2 * FPS):
        f = np.stack([xx * 3, yy * 4, (xx + yy + 10 * i) % 256], axis=-1).astype(np.uint8)
        f[10:26, (2 * i) % 48:(2 * i) % 48 + 16] = 255
        writer.write(f)
    writer.release()
    return path


class StreamServer:
    """A camera on http://127.0.0.1:port: ffmpeg looping `clip` at its frame rate as MPEG-TS.

    ffmpeg's HTTP listen mode serves one client per process, so a supervisor thread starts a new one when the
    previous exits (its client went away, e.g. an attempt that timed out on a loaded machine), as a camera
    accepts a new connection; `kill()` stops the supervisor and the process.
    """

    def __init__(self, clip: Path, port: int, log: Path) -> None:
        self.clip, self.port, self.log = clip, port, log
        self.url = f"http://127.0.0.1:{port}/live.ts"
        self.proc: subprocess.Popen | None = None
        self._running = False
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def _spawn(self) -> None:
        cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip),
               "-c:v", "mpeg4", "-g", "5", "-f", "mpegts", "-listen", "1", self.url]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def _supervise(self) -> None:
        while True:
            assert self.proc is not None
            self.proc.wait()
            time.sleep(0.05)  # no busy loop if ffmpeg cannot start at all
            with self._lock:
                if not self._running:
                    return
                self._spawn()

    def start(self) -> None:
        with self._lock:
            self._running = True
            self._spawn()
        deadline = time.monotonic() + 10
        while not listening(self.port):
            assert time.monotonic() < deadline, f"ffmpeg did not listen within 10 s: {self.log.read_text()[-2000:]}"
            time.sleep(0.02)
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def kill(self) -> None:
        """SIGKILL: the connection drops as when a camera loses power (no clean end of stream)."""
        with self._lock:
            self._running = False
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            assert not self._supervisor.is_alive()

    def freeze(self) -> None:
        """SIGSTOP: the connection stays open and no data comes, as on a stalled network."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)


@pytest.fixture
def server(clip, tmp_path):
    srv = StreamServer(clip, free_port(), tmp_path / "ffmpeg.log")
    srv.start()
    yield srv
    srv.kill()


class _Restart(threading.Thread):
    """After `delay_s`, kill `srv` and start it again `down_s` later, off the reading thread; `check()` re-raises
    its failure."""

    def __init__(self, srv: StreamServer, delay_s: float, down_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.srv, self.delay_s, self.down_s, self.error = srv, delay_s, down_s, None
        self.start()

    def run(self) -> None:
        try:
            time.sleep(self.delay_s)
            self.srv.kill()
            time.sleep(self.down_s)
            self.srv.start()
        except BaseException as e:  # reported by check() in the test's thread
            self.error = e

    def check(self) -> None:
        self.join(timeout=15)
        assert not self.is_alive() and self.error is None, self.error


def _assert_live_frames(frames: list[np.ndarray]) -> None:
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 and f.mean() > 20 for f in frames)
    moving = [np.abs(a.astype(int) - b).mean() for a, b in itertools.pairwise(frames)]
    assert np.median(moving) > 1, "consecutive frames should differ: the square moves"


def _read_through_outage(src, outage, after: int = 15):
    """Read 10 frames, call `outage()`, then read until `after` frames past the first gap, or to the end.

    Returns the frames, the (index, gap) pairs seen and the seconds from the outage to the end of reading.
    """
    frames, gaps = [], []
    start, t_out = time.monotonic(), None
    for frame, gap in src.frames_with_gaps():
        if gap is not None:
            gaps.append((len(frames), gap))
        frames.append(frame)
        if len(frames) == 10:
            t_out = time.monotonic()
            outage()
        if gaps and len(frames) >= gaps[0][0] + after:
            break
        assert time.monotonic() - start < DEADLINE_S
    return frames, gaps, time.monotonic() - (t_out or start)


def test_killed_and_restarted_stream_reconnects_with_one_gap(server):
    policy = Backoff(initial_s=0.1, factor=2.0, max_delay_s=0.4, max_total_s=15)
    with open_source(server.url, reconnect=policy, timeout_ms=2000) as src:
        restart: list[_Restart] = []
        # Down for 1.5 s: longer than the frames buffered before the kill take to drain on a loaded machine, so
        # the first attempt (0.1 s after the drop is seen) finds no server whatever the load.
        frames, gaps, _ = _read_through_outage(src, lambda: restart.append(_Restart(server, 0.6, down_s=1.5)))
    restart[0].check()
    assert len(gaps) == 1, src.stats
    index, gap = gaps[0]
    assert isinstance(gap, Gap) and src.stats.gaps == [gap] and not src.stats.lost
    assert gap.frame == index >= 10  # frames buffered before the kill still arrive, then the gap
    assert gap.attempts >= 2  # the first attempt, 0.1 s after the drop, finds no server (down for 1.5 s)
    # from the last buffered frame before the gap (the kill was earlier) to the first frame after it
    assert policy.initial_s < gap.lost_s < 10 and abs(gap.start_time - time.time()) < 60
    assert len(frames) == index + 15 == src.stats.read
    _assert_live_frames(frames[index:])


@pytest.mark.parametrize("policy", [Backoff(initial_s=0.05, factor=2.0, max_delay_s=0.2, max_attempts=4),
                                    Backoff(initial_s=0.05, factor=2.0, max_delay_s=0.1, max_total_s=1.0)],
                         ids=["max_attempts", "max_total_s"])
def test_stream_that_never_returns_is_lost_after_bounded_backoff(server, policy):
    with open_source(server.url, reconnect=policy, timeout_ms=2000) as src:
        frames, gaps, after_kill_s = _read_through_outage(src, server.kill)
    assert gaps == [] and src.stats.gaps == []
    assert src.stats.lost and src.stats.read == len(frames) >= 10
    assert server.url in src.stats.lost_reason and "reconnect attempt(s)" in src.stats.lost_reason
    if policy.max_attempts is not None:
        assert "4 reconnect attempt(s)" in src.stats.lost_reason
    assert after_kill_s < 5, f"a bounded backoff (<= 1 s of waits) took {after_kill_s:.1f} s"


def test_reconnect_none_loses_the_stream_at_the_first_drop(server):
    with open_source(server.url, reconnect=None, timeout_ms=2000) as src:
        _frames, gaps, after_kill_s = _read_through_outage(src, server.kill)
    assert gaps == [] and src.stats.lost and "0 reconnect attempt(s)" in src.stats.lost_reason
    assert after_kill_s < 3


def test_stalled_stream_times_out_and_reconnects(server):
    """A frozen server never closes the connection: the read timeout turns the stall into a gap."""
    policy = Backoff(initial_s=0.1, factor=2.0, max_delay_s=0.3, max_total_s=15)
    with open_source(server.url, reconnect=policy, timeout_ms=1000) as src:
        restart: list[_Restart] = []

        def stall():
            server.freeze()
            restart.append(_Restart(server, 2.5))  # attempts time out against the frozen server first

        frames, gaps, elapsed = _read_through_outage(src, stall)
    restart[0].check()
    assert len(gaps) == 1 and src.stats.gaps == [gaps[0][1]] and not src.stats.lost
    assert gaps[0][1].lost_s > 1.0  # at least the read timeout
    assert elapsed < 15
    _assert_live_frames(frames[gaps[0][0]:])


# --- the CLI on a live stream ------------------------------------------------------------------------------------
def _start_run(handmade_bundle, url: str, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    import sys

    jsonl = tmp_path / "live.jsonl"
    cmd = [sys.executable, "-m", "stp_edge.cli", "run", str(handmade_bundle), url, "--backend", "ort-cpu",
           "--jsonl", str(jsonl), "--timeout-ms", "2000", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), jsonl


def _partial_lines(tmp_path: Path) -> list[dict]:
    """The complete lines of live.jsonl so far (it is written under its own name as the run goes)."""
    import json

    p = tmp_path / "live.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.endswith("}")] if p.exists() else []


def _wait_for(cond, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        assert proc.poll() is None, f"stp-edge run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S} s"
        time.sleep(0.05)


def test_cli_exits_1_when_the_live_source_is_lost_for_good(server, handmade_bundle, tmp_path):
    proc, jsonl = _start_run(handmade_bundle, server.url, tmp_path, "--reconnect-s", "1")
    _wait_for(lambda: len(_partial_lines(tmp_path)) >= 2, proc, "two results")
    server.kill()
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 1, (out, err)
    assert "LOST" in out and server.url in out and "Traceback" not in err
    assert len(jsonl.read_text().splitlines()) >= 2  # what was analysed before the loss is kept


def test_cli_reports_a_gap_and_keeps_running_across_a_restart(server, handmade_bundle, tmp_path):
    proc, jsonl = _start_run(handmade_bundle, server.url, tmp_path, "--reconnect-s", "20")
    _wait_for(lambda: len(_partial_lines(tmp_path)) >= 2, proc, "two results")
    restart = _Restart(server, 0.5)
    _wait_for(lambda: any("gap" in x for x in _partial_lines(tmp_path)), proc, "a gap line")
    restart.check()
    n_gap = next(i for i, x in enumerate(_partial_lines(tmp_path)) if "gap" in x)
    _wait_for(lambda: len(_partial_lines(tmp_path)) >= n_gap + 3, proc, "results after the gap")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 143, (out, err)
    lines = [__import__("json").loads(x) for x in jsonl.read_text().splitlines()]
    gap_at = next(i for i, x in enumerate(lines) if "gap" in x)
    before, after = lines[:gap_at], [x for x in lines[gap_at + 1:] if "gap" not in x]
    assert before and after and "GAPS" in out
    # numbering goes on across the gap; the window restarts (the first snippet after it starts a new stream)
    assert after[0]["snippet"] == before[-1]["snippet"] + 1
    assert after[0]["frame_start"] == lines[gap_at]["gap"]["frame"] == before[-1]["frame_end"]


class _Lines(threading.Thread):
    """Collects a process' stdout lines as they come (the run prints each snippet with -v, flushed)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)


def test_sigterm_during_a_reconnect_backoff_exits_within_two_seconds(server, handmade_bundle, tmp_path):
    """Issue 26 item 12: the backoff after a drop waits 0.5, 1, 2, 4 s ...; a SIGTERM inside a wait ends the run
    at once (Docker's grace is 10 s, then SIGKILL), with its outputs flushed."""
    import sys

    jsonl = tmp_path / "run.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "stp_edge.cli", "run", str(handmade_bundle), server.url,
                             "--backend", "ort-cpu", "--jsonl", str(jsonl), "--timeout-ms", "2000", "-v"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = _Lines(proc)
    _wait_for(lambda: sum("stream 0 snippet" in x for x in lines.lines) >= 2, proc, "two results")
    server.kill()
    time.sleep(5.0)  # the drop, then attempts at about 0.5, 1.5, 3.5 s: the run now waits until about 7.5 s
    assert proc.poll() is None, "the run should still be reconnecting"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=DEADLINE_S)
    finally:
        took = time.monotonic() - start
        proc.kill()
    lines.join(timeout=5)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 143, (lines.lines, err)
    assert took < 2.0, f"SIGTERM during the backoff took {took:.1f} s to exit"
    assert len(jsonl.read_text().splitlines()) >= 2  # what was analysed before the drop is kept
