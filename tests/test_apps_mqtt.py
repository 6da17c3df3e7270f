"""The MQTT sink against a real mosquitto: Frigate-style topics, the last will, and no event lost when the broker
is killed, down at start, or when the sink's own process dies; duplicates only as QoS 1 redelivery (exact copies).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import mqtt_broker
import pytest
from mqtt_broker import Broker, Subscriber

from stp_edge.apps.mqtt import MqttSink
from stp_edge.bench.capacity import free_port

REPO = Path(__file__).resolve().parents[1]
broker = mqtt_broker.broker  # the fixture: a running mosquitto on a free port
FAST = {"reconnect_delay_s": (0.1, 0.5), "keepalive": 5}


def _event(i: int, kind: str = "new", camera: str = "front", end: bool = False) -> dict:
    """An event message in the shape EventEngine emits (COMMON.md), distinct for each `i`."""
    start = 1765140000.12 + i
    stamp = datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    after = {"id": f"{camera}-{int(start * 1000)}-{i:05d}", "camera": camera, "stream": 0,
             "source": "rtsp://user:***@10.0.0.5/sub", "label": "fighting", "score": round(0.6 + (i % 37) / 100, 4),
             "peak_score": 0.97, "peak_time": start + 0.4, "start_time": start,
             "end_time": start + 3.5 if end else None, "timestamp": stamp,
             "frame_start": 16 * i, "frame_end": 16 * i + 16,
             "boxes": [{"x1": 10, "y1": 20, "x2": 110, "y2": 140, "score": 0.91, "class_id": 1,
                        "class_name": "fighting", "norm": [0.03125, 0.0833, 0.3438, 0.5833]}],
             "zones": ["driveway"], "snapshot": f"/var/lib/stp-edge/snapshots/{camera}-{i:05d}.jpg", "clip": None,
             "clip_ready": False, "end_reason": "below_threshold" if end else None, "updates": i}
    return {"schema": "stp-edge.event", "schema_version": 1, "type": kind,
            "before": None if kind == "new" else dict(after, end_time=None), "after": after}


def _event_keys(sub: Subscriber, topic: str = "stp-edge/events") -> list[tuple[str, str]]:
    return [(m["after"]["id"], m["type"]) for m in map(json.loads, sub.payloads(topic))]


def _first_occurrences(payloads: list[bytes]) -> tuple[list[bytes], int]:
    """Payloads in first-arrival order, and the number of duplicates (each checked to be an exact copy)."""
    seen: dict[str, bytes] = {}
    duplicates = 0
    for p in payloads:
        key = json.loads(p)["after"]["id"]
        if key in seen:
            assert p == seen[key], f"a duplicate of {key} is not an exact copy"
            duplicates += 1
        else:
            seen[key] = p
    return list(seen.values()), duplicates


def test_topics_payloads_state_score_and_availability(broker, tmp_path):
    sub = Subscriber(broker.port, ["stp-edge/#"])
    sub.wait_connected()
    sink = MqttSink("127.0.0.1", broker.port, spool_dir=tmp_path / "spool", snippets=True, **FAST)
    sub.wait_for(lambda s: s.payloads("stp-edge/available") == [b"online"], what="online")

    sink.on_status("front", {"online": True, "score": 0.1234, "anomaly": False, "last_frame_time": 1765140000.0})
    sink.on_status("yard", {"online": True, "score": None, "anomaly": False, "last_frame_time": None})
    sub.wait_for(lambda s: s.payloads("stp-edge/front/state") == [b"OFF"], what="front OFF")
    messages = [_event(7), _event(7, "update"), _event(7, "end", end=True)]
    for m in messages:
        sink.on_event(m)
    record = {"schema": "stp-edge.snippet", "schema_version": 1, "camera": "front", "stream": 0, "snippet": 3,
              "score": 0.93, "is_anomaly": True, "final": True}
    sink.on_snippet(record)
    sub.wait_for(lambda s: len(s.payloads("stp-edge/events")) == 3, what="3 events")
    sub.wait_for(lambda s: s.payloads("stp-edge/front/state") == [b"OFF", b"ON", b"OFF"], what="state ON, OFF")
    got = [json.loads(p) for p in sub.payloads("stp-edge/events")]
    assert got == messages, "the event messages must arrive whole and in order"
    assert json.loads(sub.payloads("stp-edge/front/snippets")[0]) == record
    assert sub.payloads("stp-edge/front/score")[0] == b"0.1234"
    assert sub.payloads("stp-edge/yard/state") == [b"OFF"] and not sub.payloads("stp-edge/yard/score")
    # events carry the snapshot's path, never image bytes; they are not retained, state and availability are
    assert all(b"\xff\xd8" not in p and len(p) < 4096 for _, p, _, _ in sub.messages)
    assert got[0]["after"]["snapshot"] == "/var/lib/stp-edge/snapshots/front-00007.jpg"

    # score: at most one message per second per camera, the latest value wins
    t0 = time.monotonic()
    for i in range(40):
        sink.on_status("front", {"online": True, "score": 0.5 + i / 100, "anomaly": True, "last_frame_time": None})
        time.sleep(0.025)
    sub.wait_for(lambda s: s.payloads("stp-edge/front/score")[-1:] == [b"0.8900"], 5, "the latest score")
    elapsed = time.monotonic() - t0
    scores = sub.payloads("stp-edge/front/score")
    assert 2 <= len(scores) <= 2 + elapsed, f"{len(scores)} score messages in {elapsed:.1f} s"
    times = [a for (t, _, _, _), a in zip(sub.messages, sub.arrivals, strict=True) if t == "stp-edge/front/score"]
    assert min(b - a for a, b in itertools.pairwise(times)) > 0.8, "more than one score a second"

    late = Subscriber(broker.port, ["stp-edge/available", "stp-edge/+/state"])
    late.wait_for(lambda s: len(s.messages) == 3, what="the retained messages")
    assert sorted((t, p, r) for t, p, r, _ in late.messages) == [
        ("stp-edge/available", b"online", True), ("stp-edge/front/state", b"OFF", True),
        ("stp-edge/yard/state", b"OFF", True)]
    report = sink.close(5)
    assert (report.delivered, report.queued, report.dropped, report.gave_up) == (3, 0, 0, 0), report.describe()
    sub.wait_for(lambda s: s.payloads("stp-edge/available")[-1:] == [b"offline"], what="offline at close")
    retained = [(t, r) for t, p, r, _ in sub.messages if t == "stp-edge/events" and r]
    assert not retained
    assert not list((tmp_path / "spool").glob("*.item"))
    for topic, payload, retain, _ in sub.messages:  # the README copies these
        print(f"{topic} {'(retained) ' if retain else ''}{payload.decode()}")
    late.close()
    sub.close()


_SINK_PROCESS = """
import json, os, signal, sys, time
sys.path.insert(0, {tests!r})
from test_apps_mqtt import _event
from stp_edge.apps.mqtt import MqttSink
port, spool_dir, n, kill_at = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
sink = MqttSink("127.0.0.1", port, spool_dir=spool_dir, reconnect_delay_s=(0.1, 0.5), keepalive=5)
for i in range(n):
    sink.on_event(_event(i))
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    if kill_at == "connected" and sink._connected and sink.delivered == n:
        break
    if kill_at == "on-disk" and len(sink.spool) == n:
        break
    time.sleep(0.02)
print("ready", sink.delivered, len(sink.spool), flush=True)
time.sleep(0.5)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _sink_process(port: int, spool_dir: Path, n: int, kill_at: str) -> subprocess.CompletedProcess:
    code = _SINK_PROCESS.format(tests=str(REPO / "tests"))
    return subprocess.run([sys.executable, "-c", code, str(port), str(spool_dir), str(n), kill_at], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_last_will_fires_when_the_sink_process_is_killed(broker, tmp_path):
    sub = Subscriber(broker.port, ["stp-edge/#"])
    sub.wait_connected()
    proc = _sink_process(broker.port, tmp_path / "spool", 3, "connected")
    assert proc.returncode == -signal.SIGKILL and proc.stdout.startswith("ready 3 0"), proc.stdout + proc.stderr
    sub.wait_for(lambda s: s.payloads("stp-edge/available") == [b"online", b"offline"], 10, "the last will")
    assert len(sub.payloads("stp-edge/events")) == 3
    late = Subscriber(broker.port, ["stp-edge/available"])
    late.wait_for(lambda s: len(s.messages) == 1, what="retained availability")
    assert late.messages[0][1:3] == (b"offline", True)
    late.close()
    sub.close()


def test_broker_killed_and_restarted_mid_run_loses_nothing(broker, tmp_path):
    sub = Subscriber(broker.port, ["stp-edge/events"], client_id="sub-kill-test")
    sub.wait_connected()
    broker.wait_saved()  # the subscriber's session survives a SIGKILL only once the broker saved it
    sink = MqttSink("127.0.0.1", broker.port, spool_dir=tmp_path / "spool", **FAST)
    sent, kills, slowest, stop = [], [], 0.0, threading.Event()

    def want_ids(payloads: list[bytes]) -> list[str]:
        return [json.loads(p)["after"]["id"] for p in payloads]

    def produce() -> None:
        nonlocal slowest
        i = 0
        while not stop.is_set():
            m = _event(i, "update")
            t = time.perf_counter()
            sink.on_event(m)
            slowest = max(slowest, time.perf_counter() - t)
            sent.append(json.dumps(m, separators=(",", ":")).encode())
            i += 1
            time.sleep(0.005)

    def kill_twice() -> None:
        # mosquitto acknowledges a message before it saves it (every autosave_interval): a SIGKILL may lose what it
        # acknowledged and had not yet handed to the subscriber, whoever published it. So the broker is frozen first
        # (no more acknowledgements; the sink keeps one event in flight and spools the rest), and killed once the
        # subscriber holds every event the broker acknowledged: a loss after that is the sink's.
        for kill in (1, 2):  # each once both clients came back from the previous one, while events keep coming
            while len(sent) < 60 * kill or sink.connections < kill or sub.connects < kill:
                time.sleep(0.005)
            broker.pause()
            acked = set(want_ids(sent[:sink.delivered]))
            sub.wait_for(lambda s, acked=acked: acked <= set(want_ids(s.payloads("stp-edge/events"))), 5,
                         "the events the broker acknowledged before it froze")
            broker.kill()
            kills.append(len(sent))
            time.sleep(0.4)
            broker.restart()
        at_restart = len(sent)
        while len(sent) < at_restart + 60:
            time.sleep(0.005)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        kill_twice()
    finally:
        stop.set()
        producer.join()
    n = len(sent)
    want = want_ids(sent)
    try:
        sub.wait_for(lambda s: len({json.loads(p)["after"]["id"] for p in s.payloads("stp-edge/events")}) == n, 20)
    except AssertionError:
        got = {json.loads(p)["after"]["id"] for p in sub.payloads("stp-edge/events")}
        missing = [i for i, k in enumerate(want) if k not in got]
        raise AssertionError(f"{len(missing)} of {n} events never arrived: {missing[:20]}; sink delivered "
                             f"{sink.delivered}, {len(sink.spool)} on disk; kills after {kills}") from None
    report = sink.close(5)
    firsts, duplicates = _first_occurrences(sub.payloads("stp-edge/events"))
    assert firsts == sent, "every event arrives, first arrivals in the order sent"
    # redelivery bound per kill: the sink's one event in flight, and what the broker had in flight to the
    # subscriber at its last save (mosquitto's max_inflight_messages, 20)
    assert duplicates <= 2 * (1 + 20), f"{duplicates} duplicates"
    assert (report.delivered, report.queued, report.dropped) == (n, 0, 0), report.describe()
    assert sink.connections == 3, "the sink reconnected after each broker kill"
    assert slowest < 0.05, f"on_event took {slowest * 1000:.1f} ms"
    print(f"{duplicates} QoS 1 redeliveries over 2 broker kills, {n} events")
    sub.close()


def test_broker_down_at_start_then_up(tmp_path):
    b = Broker(tmp_path / "broker").start()
    sub = Subscriber(b.port, ["stp-edge/events"], client_id="sub-down-at-start")
    sub.wait_connected()
    sub.close()
    b.stop()  # saves the subscriber's session: what the sink sends before it reconnects is kept for it
    sink = MqttSink("127.0.0.1", b.port, spool_dir=tmp_path / "spool", **FAST)
    try:
        messages = [_event(i) for i in range(50)]
        for m in messages:
            sink.on_event(m)
        deadline = time.monotonic() + 10
        while len(sink.spool) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(sink.spool) == 50 and sink.delivered == 0 and not sink._connected
        b.restart()
        sub = Subscriber(b.port, ["stp-edge/events"], client_id="sub-down-at-start")
        sub.wait_for(lambda s: len(s.payloads("stp-edge/events")) >= 50, 15, "50 events")
        assert [json.loads(p) for p in sub.payloads("stp-edge/events")] == messages
        report = sink.close(5)
        assert (report.delivered, report.queued, report.dropped) == (50, 0, 0), report.describe()
        sub.close()
    finally:
        sink.close(0)
        b.kill()


def test_killed_sink_process_leaves_its_events_to_the_next_run(broker, tmp_path):
    sub = Subscriber(broker.port, ["stp-edge/events"])
    sub.wait_connected()
    down = free_port()  # nothing listens there: the first process cannot deliver
    proc = _sink_process(down, tmp_path / "spool", 20, "on-disk")
    assert proc.returncode == -signal.SIGKILL and proc.stdout.startswith("ready 0 20"), proc.stdout + proc.stderr
    assert len(list((tmp_path / "spool").glob("*.item"))) == 20
    assert not sub.payloads("stp-edge/events")

    sink = MqttSink("127.0.0.1", broker.port, spool_dir=tmp_path / "spool", **FAST)
    sub.wait_for(lambda s: len(s.payloads("stp-edge/events")) == 20, 10, "the 20 events of the killed run")
    assert _event_keys(sub) == [(_event(i)["after"]["id"], "new") for i in range(20)]
    report = sink.close(5)
    assert (report.delivered, report.queued, report.dropped) == (20, 0, 0), report.describe()
    sub.close()


def test_on_event_never_blocks_while_the_broker_is_down(tmp_path):
    sink = MqttSink("127.0.0.1", free_port(), spool_dir=tmp_path / "spool", **FAST)
    messages = [_event(i) for i in range(1000)]
    t = time.perf_counter()
    for m in messages:
        sink.on_event(m)
    took = time.perf_counter() - t
    assert took < 0.3, f"1000 on_event calls took {took:.3f} s with the broker down"
    report = sink.close(0)  # nothing can be delivered; everything handed over is kept on disk
    assert (report.delivered, report.queued, report.dropped) == (0, 1000, 0), report.describe()
    assert len(list((tmp_path / "spool").glob("*.item"))) == 1000
    print(f"1000 on_event calls with the broker down: {took * 1000:.1f} ms")


def test_full_spool_drops_the_oldest_and_reports_it(broker, tmp_path):
    down = MqttSink("127.0.0.1", free_port(), spool_dir=tmp_path / "spool", spool_max_items=10, **FAST)
    for i in range(25):
        down.on_event(_event(i))
    report = down.close(0)
    assert (report.delivered, report.queued, report.dropped) == (0, 10, 15), report.describe()
    assert "10 queued, 15 dropped" in report.describe()

    sub = Subscriber(broker.port, ["stp-edge/events"])
    sub.wait_connected()
    sink = MqttSink("127.0.0.1", broker.port, spool_dir=tmp_path / "spool", spool_max_items=10, **FAST)
    sub.wait_for(lambda s: len(s.payloads("stp-edge/events")) == 10, 10, "the 10 newest events")
    assert _event_keys(sub) == [(_event(i)["after"]["id"], "new") for i in range(15, 25)]
    assert sink.close(5).delivered == 10
    sub.close()


def test_missing_paho_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['paho'] = None; from stp_edge.apps.mqtt import MqttSink\n"
            "try:\n    MqttSink('127.0.0.1')\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path)))
    assert "pip install 'stp-edge[apps]'" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(("bad", "match"), [({"prefix": "a/#"}, "prefix"), ({"qos": 3}, "qos must be")])
def test_bad_options_are_named(tmp_path, bad, match):
    from stp_edge.errors import UsageError

    with pytest.raises(UsageError, match=match):
        MqttSink("127.0.0.1", free_port(), spool_dir=tmp_path, **bad)
