"""The capacity benchmark's parts (stp_edge.bench.capacity): the falls-behind rule, the N search, the binding
resource, and live cameras served by ffmpeg on 127.0.0.1 through run_video to a detector that keeps up or does not."""

from __future__ import annotations

import itertools
import shutil
import time

import numpy as np
import pytest

from stp_edge.bench.capacity import (
    CameraServer,
    binding_resource,
    falls_behind,
    find_capacity,
    listening,
    serve_cameras,
)
from stp_edge.errors import UsageError

pytest.importorskip("av")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed: no camera server")


@pytest.mark.parametrize(("frames", "seconds", "fps", "behind"), [
    (250, 10, 25, False),   # every frame
    (243, 10, 25, False),   # 97.2%: held
    (242, 10, 25, True),    # 96.8%: behind
    (0, 10, 25, True),      # a stalled camera
    (300, 10, 25, False),   # catching up a backlog is not falling behind
    (30, 1, 30, False),
    (29, 1, 30, True),      # 96.7%
])
def test_falls_behind_at_97_percent_of_the_source_rate(frames, seconds, fps, behind):
    assert falls_behind(frames, seconds, fps) is behind


def test_falls_behind_forgives_one_burst_at_the_window_edge_not_more():
    # 25 fps x 10 s = 250 expected; a keyframes-only reader delivers 16 frames at a time
    assert falls_behind(240, 10, 25) and not falls_behind(240, 10, 25, burst=16)
    assert falls_behind(224, 10, 25, burst=16)  # a whole burst missing is late
    with pytest.raises(UsageError):
        falls_behind(240, 10, 25, burst=0)


def test_falls_behind_refuses_an_empty_window():
    with pytest.raises(UsageError):
        falls_behind(10, 0, 25)
    with pytest.raises(UsageError):
        falls_behind(10, 5, 0)


@pytest.mark.parametrize("start", [1, 2, 5, 16])
@pytest.mark.parametrize("true_capacity", [0, 1, 2, 3, 7, 8, 9, 15, 16, 40])
def test_find_capacity_finds_the_largest_n_held_in_few_probes(true_capacity, start):
    limit = 16
    calls: list[int] = []

    def holds(n: int) -> bool:
        calls.append(n)
        return n <= true_capacity

    largest, tried = find_capacity(holds, start=start, limit=limit)
    assert largest == min(true_capacity, limit)
    assert [n for n, _ in tried] == calls and len(set(calls)) == len(calls)  # no N measured twice
    assert all(held == (n <= true_capacity) for n, held in tried)
    assert len(calls) <= 2 * limit.bit_length() + 1
    if largest < limit:
        assert (largest + 1, False) in tried or largest + 1 > limit  # the first N that fell behind was measured
    if largest > 0:
        assert (largest, True) in tried


def test_find_capacity_refuses_a_start_outside_the_range():
    with pytest.raises(UsageError):
        find_capacity(lambda n: True, start=0)
    with pytest.raises(UsageError):
        find_capacity(lambda n: True, start=9, limit=8)


def test_binding_resource_names_the_serving_thread_the_cpu_or_headroom():
    assert binding_resource({"decode": 0.1, "preprocess": 0.05, "encoder": 0.8, "rest": 0.1, "process": 1.2},
                            2).startswith("serving thread (95% busy, mostly encoder")
    assert binding_resource({"decode": 1.2, "preprocess": 0.05, "encoder": 0.4, "rest": 0.05, "process": 1.9},
                            2).startswith("CPU (1.90/2 cores, largest share decode")
    assert binding_resource({"decode": 0.2, "preprocess": 0.05, "encoder": 0.3, "rest": 0.05, "process": 0.6},
                            2).startswith("none saturated")
    shared = {"decode": 0.1, "preprocess": 0.05, "encoder": 0.9, "rest": 0.05, "process": 0.4, "machine": 1.98}
    assert binding_resource(shared, 2).startswith("CPU shared with other processes (machine 1.98/2 cores busy")
    assert binding_resource({**shared, "machine": 0.6}, 2).startswith("serving thread")
    mine = {**shared, "process": 1.79, "machine": 1.83}  # the machine is busy, but with this process
    assert binding_resource(mine, 2).startswith("serving thread")


def test_machine_busy_seconds_grow_while_this_process_computes():
    from stp_edge.bench.capacity import machine_busy_s

    a = machine_busy_s()
    if a is None:
        pytest.skip("no /proc/stat on this platform")
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:
        np.linalg.norm(np.arange(10_000.0))
    assert machine_busy_s() - a >= 0.2


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from stp_edge.bench.camera_clip import write_camera_clip

    return write_camera_clip(tmp_path_factory.mktemp("cams") / "cam.mp4", (48, 64), seconds=2, fps=25)


class _SlowEncoder:
    """The detector's own encoder, made to take `delay_s` longer per call (a model too slow for the cameras)."""

    def __init__(self, real, delay_s: float) -> None:
        self.real, self.delay_s, self.calls = real, delay_s, 0

    def __call__(self, snippets, *, on_error=None):
        self.calls += 1
        time.sleep(self.delay_s)
        return self.real(snippets, on_error=on_error)

    def __getattr__(self, name):
        return getattr(self.real, name)


@needs_ffmpeg
def test_camera_server_starts_serves_and_stops(clip, tmp_path):
    from stp_edge.video import open_source

    srv = CameraServer(clip, log=tmp_path / "ffmpeg.log").start()
    try:
        assert listening(srv.port)
        with open_source(srv.url) as src:
            frames = list(itertools.islice(src, 5))
        assert len(frames) == 5 and frames[0].shape == (48, 64, 3)
    finally:
        srv.stop()
    assert srv.proc.poll() is not None  # reaped
    assert not listening(srv.port)


@needs_ffmpeg
@pytest.mark.parametrize(("delay_s", "held"), [(0.0, True), (1.0, False)])
def test_serve_cameras_serves_through_run_video_and_sees_a_slow_model_fall_behind(clip, handmade_bundle, delay_s,
                                                                                   held):
    from stp_edge.api import Detector

    with Detector.load(handmade_bundle, backend="ort-cpu") as det, CameraServer(clip) as a, CameraServer(clip) as b:
        slow = det.encoder = _SlowEncoder(det.encoder, delay_s)
        r = serve_cameras(det, [a.url, b.url], 25, warmup_s=1.5, window_s=4.0, decode_s_per_frame=0.001)
        assert det.encoder is slow  # given back as it was
    assert r["held"] is held and r["cameras"] == 2 and len(r["fps"]) == 2
    assert slow.calls > 0 and r["encoder_batch"] >= 1.0
    if held:
        assert all(f > 0.97 * 25 for f in r["fps"]) and r["dropped_snippets"] == 0
    else:  # 1 s per encoder call serves < 1 snippet of 16 frames per second: run_video drops whole snippets
        assert r["min_fps"] < 0.97 * 25 and r["dropped_snippets"] > 0
    assert set(r["utilisation"]) >= {"decode", "preprocess", "encoder", "rest", "process"}
    assert r["utilisation"]["decode"] > 0 and r["sampling"] == ["center"]


def test_bench_cameras_calls_the_capacity_search_and_prints_its_summary(handmade_bundle, tmp_path, monkeypatch,
                                                                         capsys):
    import json

    from stp_edge import cli
    from stp_edge.bench import capacity

    seen = {}

    def fake(bundle, cameras, **kw):
        seen.update(bundle=bundle, cameras=cameras, **kw)
        return {"largest_held": 3, "tried": [(2, True), (4, False), (3, True)], "binding_at": 4,
                "binding": "serving thread (97% busy, mostly encoder)", "decode_ms_per_frame": 0.5,
                "at_capacity": {"utilisation": {"decode": 0.1, "encoder": 0.8}}, "read": kw["read"],
                "source": "generated", "machine": {"cpu": "test cpu", "cores": "2"},
                "load_avg_before": (1.0, 2.0, 3.0)}

    monkeypatch.setattr(capacity, "bundle_capacity", fake)
    out = tmp_path / "cap.json"
    assert cli.main(["bench", str(handmade_bundle), "--cameras", "6", "--read", "pyav-keyframes",
                     "-o", str(out)]) == 0
    assert seen["cameras"] == 6 and seen["read"] == "pyav-keyframes" and seen["backend"] == "ort-cpu"
    text = capsys.readouterr().out
    assert "cameras held in real time: 3" in text and "2+ 4- 3+" in text and "binding at 4: serving thread" in text
    assert "load average 1.00 / 2.00 / 3.00" in text
    assert json.loads(out.read_text())["largest_held"] == 3


def test_the_serving_threads_cpu_inside_encoder_calls_is_counted_as_encode_not_rest():
    """ONNX Runtime computes part of each call on the calling thread: that CPU must not be left for "rest"."""
    from types import SimpleNamespace

    from stp_edge.bench.capacity import _Counters, _TimedEncoder

    def busy_encoder(snippets, *, on_error=None):
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.05:  # 50 ms of this thread's CPU, as a call computing in the caller
            sum(range(1000))
        return SimpleNamespace(timings={"preprocess": 1.0, "encoder": 50.0})

    counters = _Counters()
    timed = _TimedEncoder(busy_encoder, counters)
    timed(["s0", "s1"])
    assert counters.encode_thread_cpu_s >= 0.05
    assert counters.batches[2] == 1 and counters.encoder_s == pytest.approx(0.05)
    assert counters.snapshot().encode_thread_cpu_s == counters.encode_thread_cpu_s
