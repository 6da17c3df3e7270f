"""The deployment service end to end: a config file with three cameras, zones and a sub-stream role, run for real.

`stp-edge run --config` over real video files: every JSONL line (records and events) validated against its JSON
Schema in docs/schemas/, snapshots are JPEGs of the peak frame, the clip comes from the `clips` input (the main
stream, twice the detect input's size) and its "clip ready" update is sent only once the file is whole, the
health file names each camera's last frame, and a SIGTERM ends the service cleanly within the 10 s grace, every
output complete and no child process left. MQTT and webhooks through the service run against the real broker
and a real HTTP receiver.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import moving_frames, validate_record, write_avi
from mqtt_broker import MOSQUITTO, Broker, Subscriber

from stp_edge.apps.deploy import config_from_dict, load_config
from stp_edge.apps.service import Deployment, run_deployment
from stp_edge.apps.sinks import Sink
from stp_edge.bench.capacity import free_port

REPO = Path(__file__).resolve().parents[1]
av = pytest.importorskip("av", reason="PyAV is not installed: pip install 'stp-edge[apps]'")

# The handmade bundle scores this clip high in its first three snippets (0.51, 0.25, 0.30), then below 0.08 to
# its last: with these thresholds one event opens at snippet 1 and ends once the score stayed low for 1 s.
CONFIG = """\
bundle: {bundle}
backend: ort-cpu
output_dir: out
jsonl: out/records.jsonl
health_file: out/health.json
defaults:
  threshold: 0.2
  off_threshold: 0.1
  spatial: all
  events: {{min_snippets: 2, cutoff_s: 1}}
  clips: {{enabled: true, pre_s: 1, post_s: 1}}
cameras:
  gate:
    inputs:
      - {{path: sub.avi, roles: [detect]}}
      - {{path: main.mp4, roles: [clips]}}
  yard:
    inputs: [yard.avi]
    zones:
      lawn: {{points: [[0, 0], [1, 0], [1, 1], [0, 1]], mode: watch}}
  dock:
    inputs: [dock.avi]
    zones:
      quay: {{points: [[0, 0], [1, 0], [1, 1], [0, 1]], mode: ignore}}
"""


def write_h264(path: Path, frames: list[np.ndarray], size: tuple[int, int], fps: int = 25) -> Path:
    """An H.264 MP4 of `frames` resized to `size`, a keyframe every `fps` frames (a camera's main stream)."""
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt, st.options = size[0], size[1], "yuv420p", {"g": str(fps)}
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(cv2.resize(f, size), format="bgr24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory, handmade_bundle):
    """A deployment directory: three cameras' clips, the main stream of one, and the config file."""
    d = tmp_path_factory.mktemp("site")
    frames = moving_frames(400, seed=5)
    for name in ("sub", "yard", "dock"):
        write_avi(d / f"{name}.avi", frames, fps=25.0)
    write_h264(d / "main.mp4", frames, (128, 96))
    (d / "cameras.yaml").write_text(CONFIG.format(bundle=handmade_bundle))
    return d


class Recorder(Sink):
    """A sink that keeps what it gets and, for a "clip ready" update, whether the clip was whole at that moment."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.snippets: list[dict] = []
        self.clip_frames_at_ready: dict[str, int] = {}

    def on_snippet(self, record: dict) -> None:
        self.snippets.append(record)

    def on_event(self, message: dict) -> None:
        self.events.append(message)
        after = message["after"]
        if after["clip_ready"] and after["id"] not in self.clip_frames_at_ready:
            with av.open(after["clip"]) as c:  # readable to its end the moment "ready" is said
                self.clip_frames_at_ready[after["id"]] = sum(1 for _ in c.decode(video=0))


def test_three_cameras_records_events_snapshots_clips_and_health(site, capsys):
    config = load_config(site / "cameras.yaml")
    rec = Recorder()
    report = Deployment(config, sinks=[rec]).run()
    log = capsys.readouterr().out

    assert {c.name: c.events for c in report.cameras.values()} == {"gate": 1, "yard": 1, "dock": 0}
    assert all(c.frames == 400 and c.snippets == 100 and c.ended == "ended" for c in report.cameras.values())
    for m in rec.events:
        validate_record(m)
    for r in rec.snippets:
        validate_record(r)
    assert {r["camera"] for r in rec.snippets} == {"gate", "yard", "dock"}
    # The dock's only zone ignores the whole frame: its scores are as high as the others', yet no event.
    assert max(r["score"] for r in rec.snippets if r["camera"] == "dock") > 0.2
    by_cam = {cam: [m for m in rec.events if m["after"]["camera"] == cam] for cam in ("gate", "yard")}
    for cam, messages in by_cam.items():
        kinds = [m["type"] for m in messages]
        assert kinds[0] == "new" and kinds.count("new") == 1 and kinds.count("end") == 1
        end = next(m for m in messages if m["type"] == "end")["after"]
        assert end["end_reason"] == "below_threshold" and end["peak_score"] == pytest.approx(0.509, abs=0.01)
        assert end["start_time"] < end["end_time"] and end["frame_start"] == 0
        assert not end["clip_ready"] and end["clip"]  # the clip's path is known at "end", its file comes after
        ready = messages[-1]["after"]
        assert messages[-1]["type"] == "update" and ready["clip_ready"] and ready["end_time"] == end["end_time"]
        assert f"event new    {cam} " in log and f"id {ready['id']} clip ready" in log
        # Snapshot: a JPEG of the peak snippet's frame, linked from the first message on, never inlined.
        snap = Path(messages[0]["after"]["snapshot"])
        assert snap.parent == site / "out" / "snapshots" / cam and snap.read_bytes()[:2] == b"\xff\xd8"
        assert cv2.imread(str(snap)).shape[:2] == (48, 64)
        assert all(len(json.dumps(m)) < 4000 for m in messages)
    assert by_cam["yard"][0]["after"]["zones"] == ["lawn"] and by_cam["gate"][0]["after"]["zones"] == []

    # Clips: the gate's from its main stream (128x96 H.264), the yard's from its one input; whole when "ready".
    for cam, size in (("gate", (128, 96)), ("yard", (64, 48))):
        ready = by_cam[cam][-1]["after"]
        path = Path(ready["clip"])
        assert path.parent == site / "out" / "clips" / cam and path.suffix == ".mp4"
        with av.open(str(path)) as c:
            st = c.streams.video[0]
            frames = sum(1 for _ in c.decode(video=0))
            assert (st.codec_context.width, st.codec_context.height) == size
        # event [0 s, end] + 1 s post-roll at 25 fps (pre-roll cut at the file's start), within a keyframe interval
        want = (ready["end_time"] - ready["start_time"] + 1.0) * 25
        assert abs(frames - want) <= 25, (frames, want)
        assert rec.clip_frames_at_ready[ready["id"]] == frames
        assert not list(path.parent.glob("*.partial*"))

    health = json.loads((site / "out" / "health.json").read_text())
    assert health["schema"] == "stp-edge.health" and not health["running"]
    assert set(health["cameras"]) == {"gate", "yard", "dock"}
    for cam in health["cameras"].values():
        assert cam["frames"] == 400 and cam["last_frame_time"] > time.time() - 120


def test_records_file_holds_every_snippet_and_event_valid(site, tmp_path):
    cfg = load_config(site / "cameras.yaml")
    import dataclasses

    out = tmp_path / "out"
    cfg = dataclasses.replace(cfg, output_dir=out, jsonl=out / "records.jsonl", health_file=None)
    report = run_deployment(cfg, out=io.StringIO())
    lines = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    for line in lines:
        validate_record(line)
    snippets = [x for x in lines if x["schema"] == "stp-edge.snippet"]
    events = [x for x in lines if x["schema"] == "stp-edge.event"]
    assert len(snippets) == 300 and len(events) == report.sinks[0].delivered - 300 > 0


def test_python_api_takes_the_same_structure(site, handmade_bundle, tmp_path):
    data = {"bundle": str(handmade_bundle), "backend": "ort-cpu", "output_dir": str(tmp_path / "o"),
            "defaults": {"threshold": 0.2, "off_threshold": 0.1, "events": {"min_snippets": 2, "cutoff_s": 1}},
            "cameras": {"gate": {"inputs": [str(site / "sub.avi")]}}}
    rec = Recorder()
    report = Deployment(config_from_dict(data), sinks=[rec], out=io.StringIO()).run()
    assert report.cameras["gate"].events == 1 and [m["type"] for m in rec.events][:1] == ["new"]


def test_inputs_are_read_with_their_decoder_and_decode_mode(tmp_path, handmade_bundle):
    frames = moving_frames(48, seed=9)
    plain = write_h264(tmp_path / "g25.mp4", frames, (128, 96))
    aligned = tmp_path / "g4.mp4"  # a keyframe every 4 frames: the handmade bundle's snippet length
    with av.open(str(aligned), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt, st.options = 128, 96, "yuv420p", {"g": "4", "keyint_min": "4", "bf": "2"}
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(cv2.resize(f, (128, 96)), format="bgr24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    scores = {}
    for name, inp in {"full": {"path": str(plain)}, "nonref": {"path": str(plain), "decoder": "pyav",
                                                                "decode": "nonref"},
                      "keyframes": {"path": str(aligned), "decoder": "pyav", "decode": "keyframes"}}.items():
        data = {"bundle": str(handmade_bundle), "backend": "ort-cpu", "output_dir": str(tmp_path / name),
                "cameras": {"gate": {"inputs": [inp]}}}
        rec = Recorder()
        Deployment(config_from_dict(data), sinks=[rec], out=io.StringIO()).run()
        final = [r for r in rec.snippets if r["final"]]
        assert len(final) == 48 // 4
        scores[name] = [(r["frame_start"], r["score"]) for r in final]
        if name == "keyframes":  # each snippet read its keyframe, the only frame decoded
            assert {r["sampling"] for r in final} == {"keyframe"}
    assert scores["nonref"] == scores["full"]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_sigterm_ends_cleanly_within_the_grace_with_outputs_complete(site, tmp_path, handmade_bundle):
    """Two live cameras (ffmpeg on loopback: they never end by themselves), a SIGTERM mid-run."""
    from test_live_sources import FFMPEG, StreamServer

    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (make system-deps): no live camera to serve")
    loop = write_avi(tmp_path / "loop.avi", moving_frames(100, seed=5), fps=25.0)
    cams = [StreamServer(loop, free_port(), tmp_path / f"{n}.log") for n in "ab"]
    for cam in cams:
        cam.start()
    (tmp_path / "c.yaml").write_text(
        f"bundle: {handmade_bundle}\nbackend: ort-cpu\noutput_dir: out\njsonl: out/r.jsonl\n"
        f"health_file: out/health.json\ndefaults: {{threshold: 0.0, off_threshold: 0.0}}\n"
        f"cameras:\n  a: {{inputs: ['{cams[0].url}']}}\n  b: {{inputs: ['{cams[1].url}']}}\n")
    try:
        _sigterm_the_service(tmp_path)
    finally:
        for cam in cams:
            cam.kill()


def _sigterm_the_service(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "stp_edge.cli", "run", "--config", str(tmp_path / "c.yaml")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    health = tmp_path / "out" / "health.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (health.exists() and json.loads(health.read_text())
                                               ["cameras"]["a"]["frames"] > 40):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    children = _children(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 143 and took < 10.0, (proc.returncode, took, err[-2000:])
    assert "stopped by SIGTERM" in err
    assert all(not Path(f"/proc/{c}").exists() for c in children)
    lines = (tmp_path / "out" / "r.jsonl").read_text().splitlines()
    assert lines and all(json.loads(x) for x in lines)  # every line whole
    events = [json.loads(x) for x in lines if '"stp-edge.event"' in x]
    opened = {e["after"]["id"] for e in events if e["type"] == "new"}
    ended = {e["after"]["id"] for e in events if e["type"] == "end"}
    assert opened == ended  # a stop ends every open event ("stream_end")
    assert opened  # threshold 0: each camera's event opened, and the stop ended it
    final = json.loads(health.read_text())
    assert not final["running"] and final["cameras"]["a"]["frames"] > 40


class _Receiver:
    """A real HTTP endpoint on 127.0.0.1 that keeps the webhook requests it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (make system-deps): no broker")
def test_events_reach_mqtt_and_a_webhook_through_the_config(site, tmp_path, monkeypatch):
    from stp_edge.apps.webhook import verify_signature

    broker = Broker(tmp_path / "broker").start()
    receiver = _Receiver()
    sub = Subscriber(broker.port, topics=("stp-edge/#",))
    sub.wait_connected()
    monkeypatch.setenv("HOOK_SECRET", "whsec_c3RwLWVkZ2UgdGVzdCBrZXk6IDMyIGJ5dGVzIGxvbmc=")
    text = (site / "cameras.yaml").read_text().replace("output_dir: out", f"output_dir: {tmp_path / 'o'}")
    text += (f"mqtt: {{host: 127.0.0.1, port: {broker.port}, prefix: stp-edge}}\n"
             f"webhooks:\n  - {{url: '{receiver.url}', secret: '{{env:HOOK_SECRET}}'}}\n")
    (site / "with-sinks.yaml").write_text(text)
    try:
        report = run_deployment(site / "with-sinks.yaml", out=io.StringIO())
        sub.wait_for(lambda s: len(s.payloads("stp-edge/events")) >= 8, what="the 8 event messages")
    finally:
        receiver.close()
        broker.kill()
    mqtt_events = [json.loads(p) for p in sub.payloads("stp-edge/events")]
    sub.close()
    sinks = {s.name.split()[0]: s for s in report.sinks}
    assert sinks["mqtt"].delivered == sinks["webhook"].delivered == len(mqtt_events) == 8
    assert sinks["mqtt"].lost == sinks["webhook"].lost == 0
    for m in mqtt_events:
        validate_record(m)
    hooks = [json.loads(body) for _, body in receiver.requests]
    assert [h["data"] for h in hooks] == mqtt_events  # the same messages, in the same order
    assert [h["type"] for h in hooks] == [f"event.{m['type']}" for m in mqtt_events]
    for headers, body in receiver.requests:
        assert verify_signature(os.environ["HOOK_SECRET"], {k.lower(): v for k, v in headers.items()}, body)


def test_a_live_camera_gets_wall_clock_records_and_its_clip_from_the_stream(tmp_path, handmade_bundle):
    """A live camera (ffmpeg serving MPEG-TS on loopback; its sub-stream detects, its main stream gives the clips):
    wall-clock records, an event, and its clip remuxed from the main stream by the clip recorder; a stop ends the
    event and the clip is still written, whole, and announced. (ffmpeg's listen mode serves one client per
    process: each stream is its own server, as a camera's two streams are two URLs.)"""
    from test_live_sources import FFMPEG, StreamServer

    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (make system-deps): no live stream")
    clip = write_avi(tmp_path / "loop.avi", moving_frames(100, seed=5), fps=25.0)
    sub, main = (StreamServer(clip, free_port(), tmp_path / f"{n}.log") for n in ("sub", "main"))
    sub.start()
    main.start()
    data = {"bundle": str(handmade_bundle), "backend": "ort-cpu", "output_dir": str(tmp_path / "o"),
            "defaults": {"threshold": 0.0, "off_threshold": 0.0, "clips": {"enabled": True, "pre_s": 1, "post_s": 1}},
            "cameras": {"street": {"inputs": [{"path": sub.url, "roles": ["detect"]},
                                              {"path": main.url, "roles": ["clips"]}]}}}
    rec, stop = Recorder(), threading.Event()
    dep = Deployment(config_from_dict(data), sinks=[rec], out=io.StringIO())
    timer = threading.Timer(6.0, stop.set)
    timer.start()
    try:
        report = dep.run(stop)
    finally:
        timer.cancel()
        sub.kill()
        main.kill()
    assert report.stopped and report.cameras["street"].events == 1
    finals = [r for r in rec.snippets if r["final"]]
    assert finals and all(r["clock"] == "wall" for r in finals)
    kinds = [m["type"] for m in rec.events]
    assert kinds[0] == "new" and kinds.count("end") == 1 and rec.events[-1]["after"]["clip_ready"]
    end = next(m for m in rec.events if m["type"] == "end")["after"]
    assert end["end_reason"] == "stream_end"
    ready = rec.events[-1]["after"]
    assert rec.clip_frames_at_ready[ready["id"]] >= 25  # at least a second of the stream, decodable when announced
    with av.open(ready["clip"]) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"  # remuxed as the camera sent it, not re-encoded
