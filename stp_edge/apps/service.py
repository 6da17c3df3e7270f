"""A deployment: the cameras of one config file, their events, sinks, snapshots, clips and health, as one service.

`run_deployment(config)` is what `stp-edge run --config cameras.yaml` runs and what a systemd unit or a container
keeps alive. Data flow, per camera:

1. its `detect` input runs through a detector (`stp_edge.run.run_video`): cameras that share a spatial mode,
   lookahead and threshold share one detector, so their snippets share encoder calls;
2. each snippet record (`stp_edge.records`) goes to every sink and to the camera's `EventEngine`, which turns
   scores into events (hysteresis, zones) with Frigate's new/update/end messages;
3. an event gets a snapshot (a small JPEG of its peak snippet's frame, written to disk and linked, never pushed)
   and, with clips enabled, a clip of its frames with a pre-roll and post-roll, cut from the camera's `clips`
   input: remuxed from the live stream's recent packets, or from the file. The event's last message says the
   clip is ready only once the file is complete;
4. messages go to every sink (JSONL, MQTT, webhooks); a sink that cannot deliver queues on disk and never stalls
   inference; one line per event goes to the log (stdout);
5. a health file (JSON, rewritten atomically every `HEALTH_INTERVAL_S`) says when each camera last delivered a
   frame, for a watchdog.

A stop (`stop` set, e.g. by SIGTERM) finishes the frames already read, ends open events ("stream_end"), writes
the clips of what was recorded, closes every sink within its grace and writes the health file a last time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from stp_edge.apps.clips import ClipRecorder, clip_from_file
from stp_edge.apps.deploy import CameraConfig, DeploymentConfig
from stp_edge.apps.events import EventEngine, EventPolicy
from stp_edge.apps.sinks import JsonlRecordSink, Sink, SinkReport
from stp_edge.apps.snapshots import SnapshotKeeper, write_snapshot
from stp_edge.frames import FrameError
from stp_edge.outputs import AtomicTextFile
from stp_edge.records import SCHEMA_VERSION, rfc3339
from stp_edge.run import SourceRun, available_cores, light_decode, open_sources, plan_threads, run_video
from stp_edge.video import parse_source

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 2.0
SINK_GRACE_S = 5.0  # of a stop's 10 s: what the sinks get to deliver what they queued
LIVE_STALE_S = 10.0  # a live camera whose last frame is older than this is reported offline


@dataclass
class CameraReport:
    """What one camera did: frames, snippets, events, clips, and how its source ended."""

    name: str
    frames: int = 0
    snippets: int = 0
    events: int = 0
    snapshots: int = 0
    clips: int = 0
    clip_failures: list[str] = field(default_factory=list)
    last_frame_time: float | None = None
    ended: str | None = None  # "ended", "lost: <why>", or None while it runs / when a stop ended it

    def describe(self) -> str:
        """One line for the summary at the end."""
        tail = f"; {self.ended}" if self.ended else ""
        fails = f", {len(self.clip_failures)} clip(s) failed" if self.clip_failures else ""
        return (f"camera {self.name}: {self.frames} frames, {self.snippets} snippets, {self.events} events, "
                f"{self.snapshots} snapshots, {self.clips} clips{fails}{tail}")


@dataclass
class DeploymentReport:
    """The outcome of `run_deployment`: per camera and per sink."""

    cameras: dict[str, CameraReport]
    sinks: list[SinkReport]
    stopped: bool = False
    wall_s: float = 0.0

    @property
    def lost(self) -> int:
        """Messages some sink will never deliver (dropped from a full queue, or given up)."""
        return sum(s.lost for s in self.sinks)

    def describe(self) -> str:
        """The summary: one line per camera and per sink."""
        return "\n".join([c.describe() for c in self.cameras.values()] + [s.describe() for s in self.sinks])


class _Camera:
    """One camera's event logic: engine, snapshots, clips; its `lock` serialises the detector's and clips' threads."""

    def __init__(self, cfg: CameraConfig, stream: int, policy: EventPolicy, context: int, out_dir: Path,
                 publish: Callable[[dict[str, Any]], None]) -> None:
        self.cfg, self.stream, self.publish = cfg, stream, publish
        self.engine = EventEngine(cfg.name, policy)
        self.report = CameraReport(cfg.name)
        self.lock = threading.Lock()
        # Results lag the frames read by the detector's context: keep the peak's frame that long.
        self.keeper = SnapshotKeeper(keep=context + cfg.events.min_snippets + 4) if cfg.snapshots else None
        self.recent: deque[tuple[int, float, float]] = deque(maxlen=context + 64)  # (snippet, start, end)
        self.snapshot_dir = out_dir / "snapshots" / cfg.name
        self.clip_dir = out_dir / "clips" / cfg.name
        self.anchor: float | None = None  # files: epoch seconds of media time 0 (record start - media time)
        self.score: float | None = None
        self.live = parse_source(cfg.detect.path)[0] != "file"
        self.recorder: ClipRecorder | None = None
        self.file_clips: ThreadPoolExecutor | None = None
        if cfg.clips_enabled:
            clip_kind, clip_src = parse_source(cfg.clip_input.path)
            if clip_kind == "url":
                self.recorder = ClipRecorder(clip_src, pre_s=cfg.pre_s, post_s=cfg.post_s,
                                             on_ready=self._clip_ready, on_failed=self._clip_failed,
                                             max_event_s=cfg.events.max_duration_s).start()
            elif clip_kind == "camera":
                log.warning("camera %s: clips from a local camera device are not supported; no clips", cfg.name)
            else:
                self.file_clips = ThreadPoolExecutor(1, thread_name_prefix=f"stp-edge-clips-{cfg.name}")

    # --- the detector's thread ---------------------------------------------------------------------------------
    def on_image(self, snippet: int, frame: Any) -> None:
        if self.keeper is None:
            return
        try:
            self.keeper.add(snippet, frame.decode() if hasattr(frame, "decode") else frame)
        except FrameError:  # a frame that does not decode: this snippet has no snapshot frame
            pass

    def on_record(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """A final snippet record: its event messages, snapshots and clip requests done, ready to publish."""
        self.report.snippets += 1
        self.score = record["score"]
        self.recent.append((record["snippet"], record["start_time"], record["end_time"]))
        if record.get("media_time") is not None and self.anchor is None:
            self.anchor = record["start_time"] - record["media_time"]
        with self.lock:
            messages = self.engine.add(record)
            for m in messages:
                self._prepare(m)
        return messages

    def finish(self) -> list[dict[str, Any]]:
        with self.lock:
            messages = self.engine.finish("stream_end")
            for m in messages:
                self._prepare(m)
        return messages

    def _prepare(self, message: dict[str, Any]) -> None:
        """Snapshot on a new peak, clip path on "new", the clip's cut on "end" (under `lock`)."""
        after, before = message["after"], message["before"]
        if message["type"] == "new":
            self.report.events += 1
            if self.cfg.clips_enabled and (self.recorder is not None or self.file_clips is not None):
                path = self.clip_dir / f"{after['id']}.mp4"
                if self.recorder is not None:
                    self.recorder.request(after["id"], after["start_time"], out_path=path)
                self._annotate(message, clip=str(path))
        if self.keeper is not None and (before is None or before.get("peak_time") != after["peak_time"]):
            self._snapshot(message)
        if message["type"] == "end" and after.get("clip") and not after.get("clip_ready"):
            if self.recorder is not None:
                self.recorder.finish(after["id"], after["end_time"])
            elif self.file_clips is not None and self.anchor is not None:
                self.file_clips.submit(self._file_clip, after["id"], Path(after["clip"]),
                                       after["start_time"] - self.anchor, after["end_time"] - self.anchor)

    def _annotate(self, message: dict[str, Any], **fields: Any) -> None:
        """Set fields on the event (engine state) and on the message about to go out, without a message more."""
        self.engine.annotate(message["after"]["id"], **fields)
        message["after"].update(fields)

    def _snapshot(self, message: dict[str, Any]) -> None:
        after = message["after"]
        peak = next((s for s, start, end in reversed(self.recent) if start <= after["peak_time"] <= end), None)
        frame = self.keeper.get(peak) if peak is not None else None
        if frame is None:
            return
        path = self.snapshot_dir / f"{after['id']}.jpg"
        try:
            write_snapshot(frame, path, boxes=after["boxes"], frame_size=self.keeper.frame_size(peak))
        except OSError as exc:
            log.warning("camera %s: snapshot %s not written: %s", self.cfg.name, path, exc)
            return
        self.report.snapshots += after.get("snapshot") is None
        self._annotate(message, snapshot=str(path))

    # --- clip threads --------------------------------------------------------------------------------------------
    def _file_clip(self, event_id: str, path: Path, start_s: float, end_s: float) -> None:
        try:
            clip_from_file(self.cfg.clip_input.path, max(0.0, start_s), max(start_s, end_s), path,
                           pre_s=self.cfg.pre_s, post_s=self.cfg.post_s)
        except Exception as exc:
            self._clip_failed(event_id, str(exc))
            return
        self._clip_ready(event_id, path)

    def _clip_ready(self, event_id: str, path: Path) -> None:
        with self.lock:
            message = self.engine.attach(event_id, clip=str(path), clip_ready=True)
            self.report.clips += 1
        if message is not None:
            self.publish(message)

    def _clip_failed(self, event_id: str, reason: str) -> None:
        with self.lock:
            self.report.clip_failures.append(f"{event_id}: {reason}")
        log.warning("camera %s: the clip of event %s failed: %s", self.cfg.name, event_id, reason)

    def close(self, timeout_s: float) -> None:
        if self.recorder is not None:
            self.recorder.close(timeout_s)
        if self.file_clips is not None:
            self.file_clips.shutdown(wait=True)

    def status(self, now: float) -> dict[str, Any]:
        last = self.report.last_frame_time
        online = self.report.ended is None and last is not None and (not self.live or now - last < LIVE_STALE_S)
        event = self.engine.open_event
        return {"online": online, "score": self.score, "anomaly": event is not None,
                "event": None if event is None else event["id"], "last_frame_time": last,
                "last_frame": None if last is None else rfc3339(last), "frames": self.report.frames,
                "snippets": self.report.snippets, "events": self.report.events}


class Deployment:
    """The running service of one `DeploymentConfig`; `run()` blocks until the sources end or `stop` is set."""

    def __init__(self, config: DeploymentConfig, *, sinks: Sequence[Sink] | None = None, out: TextIO | None = None,
                 **load_kwargs: Any) -> None:
        self.config = config
        self.out = out if out is not None else sys.stdout
        self.load_kwargs = load_kwargs
        self._given_sinks = list(sinks) if sinks is not None else None
        self.sinks: list[Sink] = []
        self.cameras: dict[str, _Camera] = {}
        self._sink_lock = threading.Lock()
        self._halt = threading.Event()

    def _make_sinks(self) -> list[Sink]:
        if self._given_sinks is not None:
            return self._given_sinks
        cfg, sinks = self.config, []
        if cfg.jsonl is not None:
            sinks.append(JsonlRecordSink(cfg.jsonl, mode="a"))
        if cfg.mqtt is not None:
            from stp_edge.apps.mqtt import MqttSink

            m = cfg.mqtt
            sinks.append(MqttSink(m.host, m.port, prefix=m.prefix, client_id=m.client_id, username=m.username,
                                  password=m.password, tls=m.tls, spool_dir=m.spool_dir, snippets=m.snippets))
        for w in cfg.webhooks:
            from stp_edge.apps.webhook import WebhookSink

            sinks.append(WebhookSink(w.url, w.secret, w.spool_dir, snippets=w.snippets, timeout_s=w.timeout_s,
                                     max_attempts=w.max_attempts))
        return sinks

    def publish(self, message: dict[str, Any]) -> None:
        """One event message to every sink, and its line to the log."""
        after = message["after"]
        if self.config.log_events:
            zones = ",".join(after["zones"]) or "-"
            extra = " clip ready" if message["type"] == "update" and after.get("clip_ready") else ""
            print(f"{rfc3339(time.time())} event {message['type']:<6} {after['camera']} {after['label']} "
                  f"score {after['score']:.2f} peak {after['peak_score']:.2f} zones {zones} id {after['id']}{extra}",
                  file=self.out, flush=True)
        with self._sink_lock:
            for sink in self.sinks:
                sink.on_event(message)

    def _status(self, camera: _Camera) -> None:
        status = camera.status(time.time())
        with self._sink_lock:
            for sink in self.sinks:
                sink.on_status(camera.cfg.name, status)

    def run(self, stop: threading.Event | None = None, *, max_frames: int | None = None) -> DeploymentReport:
        """Run every camera until its source ends (files) or `stop` is set; returns the report."""
        stop = stop or threading.Event()
        start = time.monotonic()
        groups = self._groups()
        self.sinks = self._make_sinks()
        errors: list[BaseException] = []
        health = threading.Thread(target=self._health_loop, name="stp-edge-health", daemon=True)
        try:
            self._open_cameras(groups)
            health.start()
            threads = [threading.Thread(target=self._run_group, args=(names, stop, max_frames, errors),
                                        name=f"stp-edge-group-{i}", daemon=True)
                       for i, names in enumerate(groups.values())]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        finally:
            self._halt.set()
            reports = self._close()
            if health.is_alive():
                health.join(HEALTH_INTERVAL_S + 1)
            self._write_health(reports)
        if errors:
            raise errors[0]
        return DeploymentReport({n: c.report for n, c in self.cameras.items()}, reports, stopped=stop.is_set(),
                                wall_s=time.monotonic() - start)

    def _groups(self) -> dict[tuple, list[str]]:
        """Cameras that can share one detector: same spatial mode, lookahead and threshold."""
        groups: dict[tuple, list[str]] = {}
        for name, cam in self.config.cameras.items():
            groups.setdefault((cam.spatial, cam.lookahead, cam.threshold), []).append(name)
        return groups

    def _open_cameras(self, groups: dict[tuple, list[str]]) -> None:
        from stp_edge.bundle import Bundle

        bundle = Bundle.load(self.config.bundle)
        self.bundle = bundle
        context = bundle.config.context
        stream = 0
        for names in groups.values():
            for name in names:
                cfg = self.config.cameras[name]
                # The camera's threshold, else the bundle's; region cells as the bundle's region mode lays them out.
                policy = dataclasses.replace(cfg.event_policy(bundle.config.score_threshold),
                                             region_mode=bundle.config.region_mode)
                self.cameras[name] = _Camera(cfg, stream, policy, context, self.config.output_dir, self.publish)
                stream += 1

    def _run_group(self, names: list[str], stop: threading.Event, max_frames: int | None,
                   errors: list[BaseException]) -> None:
        from stp_edge.api import Detector

        cams = [self.cameras[n] for n in names]
        first = cams[0].cfg
        by_stream = {c.stream: c for c in cams}
        kwargs = {"backend": self.config.backend, **self.load_kwargs}
        keyframes = sum(c.cfg.detect.decode == "keyframes" for c in cams)
        if kwargs.get("threads") is None:
            light = sum(light_decode(c.cfg.detect.decode, c.cfg.detect.decoder) for c in cams)
            kwargs["threads"] = plan_threads(available_cores(), len(cams), light=light).intra_op
        if keyframes:  # keyframes-only inputs sample each snippet's keyframe where their stream allows it
            kwargs.setdefault("sampling", "auto")
        try:
            with Detector.load(self.bundle, spatial_on=first.spatial, lookahead=first.lookahead, **kwargs) as det:
                if first.threshold is not None:
                    det.score_threshold = float(first.threshold)

                def on_record(record: dict[str, Any]) -> None:
                    cam = by_stream[record["stream"]]
                    with self._sink_lock:
                        for sink in self.sinks:
                            sink.on_snippet(record)
                    if record.get("schema") == "stp-edge.snippet" and record["final"]:
                        for message in cam.on_record(record):
                            self.publish(message)
                        self._status(cam)

                def on_frame(stream: int, read: int) -> None:
                    rep = by_stream[stream].report
                    rep.frames, rep.last_frame_time = read, time.time()

                def on_end(run: SourceRun) -> None:
                    cam = by_stream[run.stream]
                    cam.report.ended = f"lost: {run.stats.lost_reason}" if run.stats.lost else "ended"
                    for message in cam.finish():
                        self.publish(message)
                    self._status(cam)

                inputs = [c.cfg.detect for c in cams]
                sources = open_sources([i.path for i in inputs],
                                       options=[{"decoder": i.decoder, "decode": i.decode} for i in inputs])
                run_video(sources, detector=det, stream=cams[0].stream, keep=False,
                          cameras=names, thresholds=[det.score_threshold] * len(cams), on_record=on_record,
                          on_image=lambda s, i, f: by_stream[s].on_image(i, f), on_frame=on_frame, on_end=on_end,
                          stop=stop, max_frames=max_frames)
        except BaseException as exc:  # re-raised by run() once every output is closed
            errors.append(exc)
            stop.set()

    def _close(self) -> list[SinkReport]:
        for cam in self.cameras.values():  # events a stop left open end now, with what was recorded
            for message in cam.finish():
                self.publish(message)
        for cam in self.cameras.values():
            cam.close(SINK_GRACE_S)
        reports = []
        for sink in self.sinks:
            try:
                reports.append(sink.close(SINK_GRACE_S))
            except Exception as exc:
                log.error("%s did not close cleanly: %s", sink.name, exc)
                reports.append(SinkReport(sink.name, disabled=f"close failed: {exc}"))
        return reports

    def _health_loop(self) -> None:
        while not self._halt.wait(HEALTH_INTERVAL_S):
            self._write_health(None)

    def _write_health(self, sinks: list[SinkReport] | None) -> None:
        """The health file: per camera, whether it is online and when its last frame came."""
        path = self.config.health_file
        if path is None:
            return
        now = time.time()
        doc = {"schema": "stp-edge.health", "schema_version": SCHEMA_VERSION, "time": round(now, 3),
               "timestamp": rfc3339(now), "pid": os.getpid(), "running": not self._halt.is_set(),
               "cameras": {name: cam.status(now) for name, cam in self.cameras.items()}}
        if self._halt.is_set():  # stopped: no camera is watched any more
            for status in doc["cameras"].values():
                status["online"] = False
        if sinks is not None:
            doc["sinks"] = [vars(s) for s in sinks]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with AtomicTextFile(path) as f:
                f.write(json.dumps(doc, indent=1) + "\n")
        except OSError as exc:
            log.warning("health file %s not written: %s", path, exc)


def check_health(path: str | os.PathLike, max_age_s: float = 30.0, *, now: float | None = None) -> list[str]:
    """What a watchdog should act on in a health file: [] when healthy, else one line per problem.

    Problems: the file is missing or unreadable, the service stopped, the file was last written more than
    `max_age_s` ago (the service hangs or is gone), or a camera has been offline or without a frame for more than
    `max_age_s`.
    """
    now = time.time() if now is None else now
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        written, cameras = float(doc["time"]), doc["cameras"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{path}: not a readable health file ({exc})"]
    problems = []
    if doc.get("running") is False:
        problems.append(f"{path}: the service stopped at {doc.get('timestamp', written)}")
    if now - written > max_age_s:
        problems.append(f"{path}: last written {now - written:.0f} s ago (more than {max_age_s:g} s): the service "
                        "is stuck or stopped")
    for name, cam in cameras.items():
        last = cam.get("last_frame_time")
        if last is None or now - float(last) > max_age_s:
            ago = "no frame yet" if last is None else f"last frame {now - float(last):.0f} s ago"
            problems.append(f"camera {name}: {ago}")
        elif not cam.get("online", False):
            problems.append(f"camera {name}: offline")
    return problems


def run_deployment(config: DeploymentConfig | str | os.PathLike, *, stop: threading.Event | None = None,
                   max_frames: int | None = None, out: TextIO | None = None, **load_kwargs: Any) -> DeploymentReport:
    """Run a deployment (a `DeploymentConfig`, or the path of its YAML file) until its sources end or `stop`.

    Args:
        config: The deployment, or its config file (`stp_edge.apps.deploy.load_config`).
        stop: Set it (a signal handler does) to end the run cleanly: open events end, clips and sinks finish.
        max_frames: Stop each camera after this many frames (tests, trials).
        out: Where the one line per event goes (default stdout).
        **load_kwargs: Passed to `Detector.load` (threads, limits, on_invalid, ...).
    """
    if not isinstance(config, DeploymentConfig):
        from stp_edge.apps.deploy import load_config

        config = load_config(config)
    return Deployment(config, out=out, **load_kwargs).run(stop, max_frames=max_frames)
