"""Many cameras in one process: threads sized for the cores, encoder calls shared across streams, and live
sources that fall behind the model dropping whole snippets (counted per camera, written to the JSONL) instead
of growing queues. The detector is real (the hand-made bundle on ONNX Runtime); only its encoder runner is
slowed down, by a sleep after each real call."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import moving_frames

from stp_edge.api import Detector
from stp_edge.errors import UsageError
from stp_edge.results import SnippetResult
from stp_edge.run import available_cores, plan_threads, run_video
from stp_edge.video import VideoSource, VideoStats

SNIPPET = 4  # the hand-made bundle's snippet length


# --- threads ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cores", "sources", "intra_op"), [
    (2, 4, 1),    # more cameras than cores: one ORT thread, no spinning pool fighting the decoders
    (2, 1, 2),    # one camera: the model keeps every core (its decoder reads ahead while the encoder runs)
    (2, 2, 1),    # two decoders on two cores: one ORT thread
    (1, 1, 1),    # one core: still one ORT thread
    (1, 0, 1),
    (16, 4, 12),  # one core per decoder, the rest to ORT
    (16, 0, 16),
    (8, 8, 1),
    (8, 7, 1),
    (8, 6, 2),
])
def test_plan_threads_leaves_a_core_per_decoder_and_at_least_one_to_the_model(cores, sources, intra_op):
    plan = plan_threads(cores, sources)
    assert (plan.cores, plan.decode, plan.intra_op) == (cores, sources, intra_op)
    assert str(intra_op) in plan.describe() and f"{cores} core" in plan.describe()


@pytest.mark.parametrize(("cores", "sources", "light", "intra_op"), [
    (2, 8, 8, 2),    # eight keyframes-only cameras decode 1 frame in 16: the model keeps both cores
    (2, 8, 7, 2),    # one full decoder among them reads ahead as a single camera's would
    (2, 8, 6, 1),    # two full decoders: one core for them, one for the model
    (16, 10, 4, 10),  # six full decoders get a core each
    (4, 3, 0, 1),    # light=0 is the plan without light sources
])
def test_plan_threads_reserves_no_core_for_keyframes_only_decoders(cores, sources, light, intra_op):
    plan = plan_threads(cores, sources, light=light)
    assert (plan.decode, plan.intra_op) == (sources, intra_op)
    assert plan_threads(cores, sources, light=0).intra_op <= intra_op


def test_one_rule_says_which_sources_are_light_before_and_after_they_open():
    """Keyframes-only decoding and NVDEC (the CPU only demuxes) are light; the CLI, the service and the capacity
    benchmark ask `light_decode` of their options, `light_sources` asks it of open sources."""
    from types import SimpleNamespace

    from stp_edge.run import light_decode, light_sources

    assert light_decode("keyframes") and light_decode("full", "nvdec") and light_decode("keyframes", "pyav")
    assert not light_decode("full") and not light_decode("nonref", "pyav") and not light_decode(None, "auto")
    opened = [SimpleNamespace(decode_mode="keyframes", decoder="pyav"), SimpleNamespace(decode_mode="full",
              decoder="nvdec"), SimpleNamespace(decode_mode="full", decoder="opencv"), object()]
    assert light_sources(opened) == 2


@pytest.mark.parametrize(("cores", "sources", "light"), [(0, 1, 0), (-1, 1, 0), (2, -1, 0), (2.5, 1, 0),
                                                         (True, 1, 0), (2, None, 0), (2, 2, 3), (2, 2, -1)])
def test_plan_threads_refuses_nonsense(cores, sources, light):
    with pytest.raises(UsageError):
        plan_threads(cores, sources, light=light)


def test_run_video_sizes_the_ort_pool_for_its_sources(handmade_bundle, tmp_path):
    clips = [_ListSource(moving_frames(8, seed=i), live=False, name=f"file{i}") for i in range(2)]
    res = run_video(clips, bundle=handmade_bundle, backend="ort-cpu", keep=False)
    expected = plan_threads(available_cores(), 2)
    assert res.threads == expected and res.snippets == 4
    seen = {}
    original = Detector.load.__func__

    def spy(cls, *args, **kwargs):
        det = original(cls, *args, **kwargs)
        seen.update({name: r.intra_op_num_threads for name, r in det.runners.items()})
        return det

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(Detector, "load", classmethod(spy))
        res = run_video([_ListSource(moving_frames(8), live=False)], bundle=handmade_bundle, backend="ort-cpu")
        planned = plan_threads(available_cores(), 1).intra_op
        assert res.threads.intra_op == seen["encoder"] == seen["temporal"] == planned
        seen.clear()
        res = run_video([_ListSource(moving_frames(8), live=False)], bundle=handmade_bundle, backend="ort-cpu",
                        threads=3)  # the caller's choice is kept, and no plan is reported
        assert res.threads is None and seen["encoder"] == 3
    finally:
        mp.undo()


# --- stand-in sources ---------------------------------------------------------------------------------------
class _ListSource(VideoSource):
    """A source over a list of frames: a file (read as fast as it is taken) or a live camera (paced at `fps`,
    never waiting for its reader: a frame not taken in time is late, as on a real camera)."""

    def __init__(self, frames: list[np.ndarray], *, live: bool, fps: float = 200.0, name: str = "cam",
                 offset_s: float = 0.0) -> None:
        self.frames, self.pace, self.offset_s = frames, 1.0 / fps, offset_s
        self.source = self.target = self.name = name
        self.kind = "url" if live else "file"
        self.stats = VideoStats(expected=None if live else len(frames))
        self._fps = fps
        self.down_at_start = None
        self.delivered: list[int] = []

    def frames_with_gaps(self, lazy: bool = False):
        start = time.perf_counter() + self.offset_s
        for i, f in enumerate(self.frames):
            if self.live:  # the camera's clock: frame i exists at start + i * pace
                delay = start + i * self.pace - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            self.stats.read += 1
            self.delivered.append(i)
            yield f, None
        self.stats.ended = True

    @property
    def fps(self) -> float:
        return self._fps

    def close(self) -> None:
        pass

    def interrupt(self) -> None:
        pass


def _slow(det: Detector, seconds: float) -> list[int]:
    """Make the encoder's real ONNX Runtime call `seconds` slower; returns the list of batch sizes it saw."""
    runner = det.runners["encoder"]
    real = runner.infer_impl
    sizes: list[int] = []

    def infer_impl(feeds):
        sizes.append(next(iter(feeds.values())).shape[0])
        out = real(feeds)
        time.sleep(seconds)
        return out

    runner.infer_impl = infer_impl
    return sizes


def _content(line: dict) -> dict:
    """What a result line says of its snippet, as `SnippetResult.to_dict()` says it: without where it sits in its
    stream (numbers, frames), its timings, or what its record adds (camera, times, box names)."""
    keys = set(SnippetResult.__dataclass_fields__) | {"invalid"}
    out = {k: v for k, v in line.items() if k in keys and k not in ("stream", "snippet", "frame_start", "frame_end",
                                                                        "timings", "frame_shape")}
    out["boxes"] = [{k: v for k, v in b.items() if k not in ("class_name", "norm")} for b in out.get("boxes", [])]
    return out


def _clean(bundle: Path, frames: list[np.ndarray]) -> list:
    with Detector.load(bundle, backend="ort-cpu") as det:
        out = []
        for f in frames:
            out += det.push(f, stream=0)
        return out + det.flush(0)


# --- backpressure -------------------------------------------------------------------------------------------
def test_live_cameras_behind_a_slow_model_drop_whole_snippets_and_files_never_do(handmade_bundle, tmp_path):
    n = 96
    videos = [moving_frames(n, seed=10 + i) for i in range(3)]
    sources = [_ListSource(videos[0], live=True, name="cam0"), _ListSource(videos[1], live=True, name="cam1"),
               _ListSource(videos[2], live=False, name="file2")]
    jsonl = tmp_path / "run.jsonl"
    with Detector.load(handmade_bundle, backend="ort-cpu") as det:
        _slow(det, 0.08)  # ~0.1 s per encoder call: a 4-frame snippet of a 200 fps camera lasts 20 ms
        res = run_video(sources, detector=det, jsonl=jsonl)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    drops = [d["dropped"] for d in lines if "dropped" in d]
    results = [d for d in lines if "score" in d]
    for run, src in zip(res.sources, sources, strict=True):
        mine = [d for d in drops if d["stream"] == run.stream]
        assert run.dropped_frames == sum(d["frames"] for d in mine) == SNIPPET * run.dropped_snippets
        assert sum(d["snippets"] for d in mine) == run.dropped_snippets
        assert all(d["frame"] % SNIPPET == 0 and d["frames"] % SNIPPET == 0 for d in mine)  # whole, aligned
        assert run.stats.read == n and src.delivered == list(range(n))  # the camera was read at its pace
        assert run.queue_peak <= 2 * SNIPPET  # bounded: never more than two snippets wait
        got = sorted((r["frame_start"], r["frame_end"]) for r in results if r["stream"] == run.stream)
        dropped = [(d["frame"], d["frame"] + d["frames"]) for d in mine]
        # Every frame is either analysed (in exactly one snippet) or named in a drop line; none in both.
        covered = sorted(got + dropped)
        assert covered[0][0] == 0 and covered[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
        # Snippet numbers go on counting over the dropped ones: snippet k covers frames [4k, 4k + 4).
        assert all(r["frame_start"] == SNIPPET * r["snippet"] for r in results if r["stream"] == run.stream)
    cams, file_run = res.sources[:2], res.sources[2]
    assert all(c.dropped_snippets >= 1 for c in cams), [c.dropped_snippets for c in cams]
    assert file_run.dropped_snippets == 0 and file_run.queue_peak <= 2 * SNIPPET
    assert res.dropped_snippets == sum(c.dropped_snippets for c in cams)
    # What was analysed is what a clean run of those frames gives: each run of frames between drops is a
    # video of its own (the temporal window restarts after a drop, as after a reconnect gap).
    for run, video in zip(res.sources, videos, strict=True):
        mine = sorted((d["frame"], d["frame"] + d["frames"]) for d in drops if d["stream"] == run.stream)
        bounds = [0] + [x for d in mine for x in d] + [n]
        for a, b in zip(bounds[::2], bounds[1::2], strict=True):
            if a == b:
                continue
            clean = _clean(handmade_bundle, video[a:b])
            seen = sorted((r for r in results if r["stream"] == run.stream and a <= r["frame_start"] < b),
                          key=lambda r: r["frame_start"])
            assert [(r["frame_start"] - a, r["frame_end"] - a) for r in seen] == \
                [(c.frame_start, c.frame_end) for c in clean]
            assert [_content(r) for r in seen] == [_content(json.loads(json.dumps(c.to_dict()))) for c in clean]


def test_without_drop_late_a_slow_model_analyses_every_frame_of_a_live_source(handmade_bundle):
    with Detector.load(handmade_bundle, backend="ort-cpu") as det:
        _slow(det, 0.03)
        res = run_video([_ListSource(moving_frames(32), live=True)], detector=det, drop_late=False, keep=True)
    assert res.sources[0].dropped_snippets == 0 and res.snippets == 8
    assert res.sources[0].queue_peak <= 2 * SNIPPET  # the reader waited: its queue stayed bounded


def test_a_fast_model_drops_nothing(handmade_bundle):
    """Dropping is for a camera that is behind, not a rule: a model faster than the camera keeps every frame."""
    with Detector.load(handmade_bundle, backend="ort-cpu") as det:
        res = run_video([_ListSource(moving_frames(40, seed=3), live=True, fps=20.0)], detector=det)
    assert res.sources[0].dropped_snippets == 0 and res.snippets == 10
    assert [r.frame_start for r in res] == list(range(0, 40, SNIPPET))


def test_snippets_of_several_streams_completed_together_share_an_encoder_call(handmade_bundle):
    """Files fed in step: their snippets complete in the same push, and the encoder sees one batch of them."""
    srcs = [_ListSource(moving_frames(16, seed=i), live=False, name=f"f{i}") for i in range(3)]
    gate = threading.Barrier(3)

    class _Stepped(_ListSource):  # the three readers hand frame i over together
        def frames_with_gaps(self, lazy=False):
            for item in super().frames_with_gaps(lazy):
                gate.wait(timeout=5)
                yield item

    stepped = [_Stepped(s.frames, live=False, name=s.name) for s in srcs]
    with Detector.load(handmade_bundle, backend="ort-cpu") as det:
        sizes = _slow(det, 0.0)
        res = run_video(stepped, detector=det)
    assert res.snippets == 12 and sum(k * v for k, v in res.encoder_batches.items()) <= 12
    assert max(res.encoder_batches) >= 2  # some calls carried snippets of several streams
    assert max(sizes) >= 2  # the encoder itself was called with frames of several snippets at once


def test_live_cameras_out_of_phase_share_encoder_calls(handmade_bundle):
    """Three cameras whose snippet boundaries fall 8 ms apart: their snippets still go through one encoder call
    (a completed snippet waits at most half a snippet for the others), and their results are a clean run's."""
    videos = [moving_frames(40, seed=20 + i) for i in range(3)]
    cams = [_ListSource(v, live=True, fps=50.0, name=f"cam{i}", offset_s=0.008 * i) for i, v in enumerate(videos)]
    with Detector.load(handmade_bundle, backend="ort-cpu") as det:
        sizes = _slow(det, 0.0)
        res = run_video(cams, detector=det, drop_late=False)  # sharing alone: a loaded machine drops nothing
    calls = sum(res.encoder_batches.values())
    assert res.snippets == 30 and res.dropped_snippets == 0
    assert sum(k * v for k, v in res.encoder_batches.items()) == 30
    assert 30 / calls >= 1.5, dict(res.encoder_batches)  # one call per snippet without the alignment
    assert max(sizes) == 3
    for i, v in enumerate(videos):
        mine = [r for r in res if r.stream == i]
        clean = _clean(handmade_bundle, v)
        assert [_content(json.loads(json.dumps(r.to_dict()))) for r in mine] == \
            [_content(json.loads(json.dumps(c.to_dict()))) for c in clean]


# --- the command line -------------------------------------------------------------------------------------
def test_run_header_names_the_thread_plan_and_threads_overrides_it(handmade_bundle, tmp_path, capsys):
    from conftest import write_avi

    from stp_edge.cli import main

    clips = [write_avi(tmp_path / f"c{i}.avi", moving_frames(8, seed=i)) for i in range(3)]
    assert main(["run", str(handmade_bundle), *map(str, clips), "--backend", "ort-cpu"]) == 0
    out = capsys.readouterr().out
    assert f"3 source(s), threads {plan_threads(available_cores(), 3).describe()}" in out
    assert "encoder calls:" in out and "BEHIND" not in out  # files never drop
    assert main(["run", str(handmade_bundle), str(clips[0]), "--backend", "ort-cpu", "--threads", "2"]) == 0
    assert "1 source(s), threads 2 onnxruntime (--threads)" in capsys.readouterr().out


def _slow_encoder(seconds: float):
    """An `OrtRunner.infer_impl` whose encoder calls take `seconds` longer (a model slower than real)."""
    from stp_edge.backends.ort import OrtRunner

    real = OrtRunner.infer_impl

    def slow(self, feeds):
        out = real(self, feeds)
        if "encoder" in self.name:
            time.sleep(seconds)
        return out
    return slow


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed: no server for live streams")
def test_run_on_a_live_stream_behind_a_slow_model_reports_dropped_snippets(handmade_bundle, tmp_path, capsys):
    """A real camera stand-in (ffmpeg serving MPEG-TS at 25 fps on 127.0.0.1) and a model 0.3 s per call."""
    from conftest import write_avi
    from test_live_sources import StreamServer

    from stp_edge.backends.ort import OrtRunner
    from stp_edge.bench.capacity import free_port
    from stp_edge.cli import main

    slow = _slow_encoder(0.3)

    clip = write_avi(tmp_path / "clip.avi", moving_frames(50, seed=7), fps=25.0)
    srv = StreamServer(clip, free_port(), tmp_path / "ffmpeg.log")
    srv.start()
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(OrtRunner, "infer_impl", slow)
        jsonl = tmp_path / "live.jsonl"
        code = main(["run", str(handmade_bundle), srv.url, "--backend", "ort-cpu", "--max-frames", "40",
                     "--jsonl", str(jsonl), "-q"])
    finally:
        mp.undo()
        srv.kill()
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    drops = [d["dropped"] for d in lines if "dropped" in d]
    assert drops and all(d["frames"] % SNIPPET == 0 and d["frame"] % SNIPPET == 0 for d in drops)
    n = sum(d["snippets"] for d in drops)
    assert re.search(rf"BEHIND  .*: {n} snippets? \({SNIPPET * n} frames\) dropped whole", out), out
    analysed = sum(1 for d in lines if "score" in d)
    assert analysed + n == 10  # 40 frames: every snippet is analysed or dropped whole


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed: no server for live streams")
def test_cameras_sharing_encoder_calls_are_not_dropped_for_the_runs_own_hold(tmp_path):
    """Two live cameras, 16-frame snippets (0.64 s), a model that keeps up (one shared 0.5 s call per snippet):
    a completed snippet held for the other camera's (up to 0.32 s) and then encoded waits longer than one snippet,
    which is the run's own doing, not the model falling behind: nothing is dropped."""
    from conftest import handmade_config, write_avi, write_handmade_bundle
    from test_live_sources import StreamServer

    from stp_edge.backends.ort import OrtRunner
    from stp_edge.bench.capacity import free_port
    from stp_edge.video import open_source

    bundle = write_handmade_bundle(tmp_path / "b16.stp", handmade_config(snippet_len=16))
    slow = _slow_encoder(0.5)

    clip = write_avi(tmp_path / "clip.avi", moving_frames(50, seed=3), fps=25.0)
    servers = [StreamServer(clip, free_port(), tmp_path / f"ffmpeg{i}.log") for i in range(2)]
    for s in servers:  # out of phase: one camera's snippet completes about a third of a snippet after the other's
        s.start()
        time.sleep(0.2)
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(OrtRunner, "infer_impl", slow)
        res = run_video([open_source(s.url) for s in servers], bundle=bundle, backend="ort-cpu", keep=False,
                        max_frames=16 * 8)
    finally:
        mp.undo()
        for s in servers:
            s.kill()
    assert res.dropped_snippets == 0 and res.snippets == 2 * 8
    assert res.encoder_batches[2] >= 6  # the two cameras' snippets shared the calls
