"""Events, availability and per-camera state to an MQTT broker in Frigate's shapes; nothing lost while it is away.

Topics (`prefix` defaults to "stp-edge"):
  <prefix>/available          "online" / "offline", retained, QoS 1; "offline" is also the MQTT last will
  <prefix>/events             each event message as JSON, QoS 1 (configurable), not retained
  <prefix>/<camera>/state     "ON" while an event of the camera is open, else "OFF"; retained, QoS 1
  <prefix>/<camera>/score     the camera's latest score ("0.9312"), QoS 0, at most once per second per camera
  <prefix>/<camera>/snippets  each snippet record as JSON, QoS 0, only with `snippets=True`

Events go through an on-disk `Spool`: `on_event` hands the message to the delivery thread and returns at once,
the thread writes it to disk (fsync) and publishes the oldest item, one at a time, removing it from disk only
when the broker's PUBACK arrives. While disconnected the thread waits and paho reconnects by itself; the one
message in flight is resent by paho after the reconnect (with the DUP flag), so a subscriber sees a duplicate only
as QoS 1's documented redelivery. What `close` could not deliver stays on disk for the next run with the same
`spool_dir`. Images are never published: an event carries its snapshot's path only.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stp_edge._deps import MissingDependencyError
from stp_edge.apps.sinks import Sink, SinkReport
from stp_edge.apps.spool import Spool
from stp_edge.errors import UsageError

log = logging.getLogger(__name__)

_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_"})


def _paho_client():
    """paho.mqtt.client, or an error that names the extra to install."""
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise MissingDependencyError(f"paho-mqtt is not installed (needed for the MQTT sink): "
                                     f"pip install 'stp-edge[apps]'. Original error: {exc}") from exc
    return mqtt


def default_spool_dir(host: str, port: int, prefix: str) -> Path:
    """Where a sink keeps its queue when no `spool_dir` is given: one directory per broker and prefix."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "stp-edge" / "spool" / f"mqtt-{host}-{port}-{prefix}".translate(_TOPIC_UNSAFE)


@dataclass
class _Inflight:
    item_id: str
    mid: int


class MqttSink(Sink):
    """Publish events, availability, per-camera state and score (and optionally snippets) to an MQTT broker.

    The broker need not be up at start: the connection is made, and remade, in the background. Counters:
    `delivered` (events the broker acknowledged), `accepted` (events handed to `on_event`), `connections`
    (successful connects, reconnects included), `scores_published`,
    `states_published`, `snippets_published`, `snippets_dropped` (snippets are kept in memory only, 1000 at most,
    and only while connected are they sent).
    """

    def __init__(self, host: str, port: int = 1883, *, prefix: str = "stp-edge", client_id: str | None = None,
                 username: str | None = None, password: str | None = None, keepalive: int = 30,
                 tls: bool | str = False, spool_dir: str | os.PathLike | None = None, spool_max_items: int = 10000,
                 qos: int = 1, snippets: bool = False, score_interval_s: float = 1.0,
                 reconnect_delay_s: tuple[float, float] = (1.0, 30.0)) -> None:
        mqtt = _paho_client()
        if not prefix or any(c in prefix for c in "+#"):
            raise UsageError(f"an MQTT prefix must be non-empty without '+' or '#', got {prefix!r}")
        if qos not in (0, 1, 2):
            raise UsageError(f"MQTT qos must be 0, 1 or 2, got {qos!r}")
        self.name = f"mqtt {host}:{port}"
        self.prefix, self.qos, self.snippets = prefix.rstrip("/"), qos, snippets
        self.score_interval_s = score_interval_s
        self.spool = Spool(spool_dir or default_spool_dir(host, port, self.prefix), max_items=spool_max_items)
        self.delivered = self.accepted = self.connections = 0
        self.scores_published = self.states_published = self.snippets_published = self.snippets_dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._handoff: collections.deque[tuple[bytes, str | None]] = collections.deque()
        self._handoff_max = spool_max_items
        self._handoff_dropped = 0
        self._evicted_but_delivered = 0
        self._snippets: collections.deque[dict[str, Any]] = collections.deque()
        self._open: dict[str, set[str]] = {}       # camera -> ids of its open events
        self._state: dict[str, str] = {}           # camera -> "ON" / "OFF" now (retained on the broker)
        self._state_changes: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)  # to publish
        self._scores: dict[str, float] = {}        # camera -> latest score not yet published
        self._score_sent: dict[str, float] = {}    # camera -> monotonic time of its last score message
        self._connected = False
        self._announce = False                     # "online" and every state to (re)publish after a connect
        self._inflight: _Inflight | None = None
        self._publishing = False
        self._acked: set[int] = set()
        self._closing = False
        self._deadline = float("inf")
        self._report: SinkReport | None = None

        self._mqtt = mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"stp-edge-{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set(ca_certs=tls if isinstance(tls, str) else None)
        self.client.will_set(self._topic("available"), "offline", qos=1, retain=True)
        self.client.max_queued_messages_set(0)  # bounded by this sink: one event in flight, states, scores
        self.client.reconnect_delay_set(*reconnect_delay_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.connect_async(host, port, keepalive=keepalive)
        self.client.loop_start()  # retries a broker that is down, from the first connection on
        self._thread = threading.Thread(target=self._run, name=f"stp-edge {self.name}", daemon=True)
        self._thread.start()

    # --- the producer's side: return at once ---------------------------------------------------------------

    def on_event(self, message: dict[str, Any]) -> None:
        """Queue one event message for delivery (written to the spool by the delivery thread) and update state."""
        if self._closing:
            raise UsageError(f"{self.name}: on_event after close")
        payload = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
        after = message.get("after") or {}
        with self._lock:
            if len(self._handoff) >= self._handoff_max:
                self._handoff.popleft()
                self._handoff_dropped += 1
            self._handoff.append((payload, after.get("id")))
            self.accepted += 1
            camera = after.get("camera")
            if camera is not None:
                self._track(str(camera), message.get("type"), after)
        self._wake.set()

    def _track(self, camera: str, kind: str | None, after: dict[str, Any]) -> None:
        """Open/close the camera's event in the state map (under the lock)."""
        ids = self._open.setdefault(camera, set())
        if kind == "end" or after.get("end_time") is not None:
            ids.discard(after.get("id"))
        elif kind in ("new", "update"):
            ids.add(after.get("id"))
        state = "ON" if ids else "OFF"
        if self._state.get(camera) != state:
            self._state[camera] = state
            self._state_changes.append((camera, state))  # every change, so that a short ON is not missed

    def on_status(self, camera: str, status: dict[str, Any]) -> None:
        """Remember the camera's latest score; the delivery thread publishes it at most once per interval."""
        score = status.get("score")
        with self._lock:
            if camera not in self._state:  # a camera seen for the first time starts "OFF"
                self._state[camera] = "OFF"
                self._state_changes.append((camera, "OFF"))
            if score is not None:
                self._scores[camera] = float(score)

    def on_snippet(self, record: dict[str, Any]) -> None:
        """With `snippets=True`, queue the record for `<prefix>/<camera>/snippets` (QoS 0, in memory only)."""
        if not self.snippets:
            return
        with self._lock:
            if len(self._snippets) >= 1000:
                self._snippets.popleft()
                self.snippets_dropped += 1
            self._snippets.append(record)
        self._wake.set()

    # --- paho's callbacks (its network thread) -------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("%s: the broker refused the connection: %s", self.name, reason_code)
            return
        with self._lock:
            self._connected = self._announce = True
            self.connections += 1
            if self.qos == 0:  # paho resends QoS 1 and 2 messages after a reconnect, not QoS 0: send it again
                self._inflight = None
        log.info("%s: connected", self.name)
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was, self._connected = self._connected, False
        if was and not self._closing:
            log.warning("%s: disconnected (%s); reconnecting in the background", self.name, reason_code)
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            # the PUBACK may come before publish() returned the mid, hence `_publishing`
            if self._publishing or (self._inflight is not None and self._inflight.mid == mid):
                self._acked.add(mid)
        self._wake.set()

    # --- the delivery thread -------------------------------------------------------------------------------

    def _topic(self, *parts: str) -> str:
        return "/".join([self.prefix, *(p.translate(_TOPIC_UNSAFE) for p in parts)])

    def _run(self) -> None:
        while True:
            self._wake.wait(0.25)
            self._wake.clear()
            try:
                self._step()
            except Exception:  # a full disk, a bug: log it, keep the thread alive, try again
                log.exception("%s: delivery failed; retrying in 1 s", self.name)
                time.sleep(1.0)
            with self._lock:
                idle = not self._handoff and self._inflight is None
            if self._closing and ((idle and len(self.spool) == 0) or time.monotonic() >= self._deadline):
                self._to_disk()  # whatever the deadline, nothing handed over is left in memory only
                return

    def _step(self) -> None:
        self._to_disk()
        if self._connected:
            self._announce_all()
            self._publish_scores()
            self._publish_snippets()
        self._settle()
        if self._connected and self._inflight is None and time.monotonic() < self._deadline:
            self._publish_next()

    def _to_disk(self) -> None:
        """Move every handed-over event to the spool, oldest first."""
        while True:
            with self._lock:
                if not self._handoff:
                    return
                payload, key = self._handoff.popleft()
            try:
                self.spool.put(payload, key=key)
            except Exception:
                with self._lock:
                    self._handoff.appendleft((payload, key))
                raise

    def _announce_all(self) -> None:
        with self._lock:
            announce, self._announce = self._announce, False
            if announce:  # after a (re)connect: the broker may have lost retained messages (a killed broker)
                self._state_changes.clear()
                states = list(self._state.items())
            else:
                states = list(self._state_changes)
                self._state_changes.clear()
        if announce:
            self.client.publish(self._topic("available"), "online", qos=1, retain=True)
        for camera, state in states:
            self.client.publish(self._topic(camera, "state"), state, qos=1, retain=True)
            self.states_published += 1

    def _publish_scores(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(c, s) for c, s in self._scores.items()
                   if now - self._score_sent.get(c, -1e9) >= self.score_interval_s]
            for camera, _ in due:
                del self._scores[camera]
                self._score_sent[camera] = now
        for camera, score in due:
            self.client.publish(self._topic(camera, "score"), f"{score:.4f}", qos=0, retain=False)
            self.scores_published += 1

    def _publish_snippets(self) -> None:
        with self._lock:
            records, self._snippets = list(self._snippets), collections.deque()
        for record in records:
            payload = json.dumps(record, allow_nan=False, separators=(",", ":"))
            self.client.publish(self._topic(str(record.get("camera", "camera")), "snippets"), payload, qos=0)
            self.snippets_published += 1

    def _publish_next(self) -> None:
        """Publish the oldest spooled event; it stays on disk until its PUBACK."""
        item = self.spool.peek()
        if item is None:
            return
        with self._lock:
            self._publishing = True
            self._acked.clear()
        try:
            info = self.client.publish(self._topic("events"), item.payload, qos=self.qos, retain=False)
        finally:
            with self._lock:
                self._publishing = False
        if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE or (self.qos == 0 and info.rc != self._mqtt.MQTT_ERR_SUCCESS):
            with self._lock:  # not queued (paho keeps no QoS 0 message while disconnected): try again later
                self._acked.clear()
            return
        # rc NO_CONN: the connection dropped meanwhile; paho keeps the message and sends it after the reconnect
        with self._lock:
            self._inflight = _Inflight(item.id, info.mid)
            self._acked &= {info.mid}
        self._wake.set()

    def _settle(self) -> None:
        """Remove the in-flight event from disk once the broker acknowledged it."""
        with self._lock:
            inflight = self._inflight
            if inflight is None or inflight.mid not in self._acked:
                return
            self._acked.discard(inflight.mid)
            self._inflight = None
        self.delivered += 1
        if not self.spool.ack(inflight.item_id):  # evicted by a full spool while in flight: delivered all the same
            self._evicted_but_delivered += 1

    # --- the end ---------------------------------------------------------------------------------------------

    def close(self, timeout_s: float = 10.0) -> SinkReport:
        """Publish what can be published within `timeout_s`, announce "offline", disconnect and report.

        Events not acknowledged by then stay in `spool_dir` (`queued`); the next sink on that directory sends
        them first. An event whose PUBACK was lost at the deadline is sent again then (at-least-once).
        """
        if self._report is not None:
            return self._report
        start = time.monotonic()
        self._deadline = start + timeout_s
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s + 30)  # +30: the last fsyncs of events handed over before close
        if self._connected:
            info = self.client.publish(self._topic("available"), "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.5, self._deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass  # the connection dropped meanwhile: the broker sends the will instead
            self._settle()
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            lost_in_memory = len(self._handoff)  # only if the spool could not be written (a full disk)
        self._report = SinkReport(
            self.name, delivered=self.delivered, queued=len(self.spool),
            dropped=self.spool.dropped - self._evicted_but_delivered + self._handoff_dropped + lost_in_memory)
        return self._report
