"""A real mosquitto broker for tests (loopback, a free port, persistence on) and a subscriber that records messages.

`Broker` runs `/usr/sbin/mosquitto -c <conf>` and can be SIGKILLed and restarted on the same port; persistence with
`autosave_interval 1` keeps sessions and retained messages across a kill that comes more than a second after them.
`Subscriber` is a paho client with a fixed client id and `clean_session=False`, subscribed with QoS 1, so it gets
what was published while the broker was down and it was away. The `broker` fixture skips when mosquitto is absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from stp_edge.bench.capacity import free_port

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class Broker:
    """One mosquitto process on 127.0.0.1:`port`, its config, log and persistence under `workdir`."""

    def __init__(self, workdir: str | os.PathLike, port: int | None = None) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = "127.0.0.1", port or free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {self.workdir}/", "autosave_interval 1", "max_queued_messages 100000",
                 f"log_dest file {self.log}", "log_type all"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to its own user and cannot write the persistence file
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> Broker:
        """Start mosquitto and wait until it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "the broker is already running"
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')} {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout_s} s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no will is sent for the broker, nothing is saved beyond the last autosave."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the broker stops reading and acknowledging; what it already wrote still reaches its clients."""
        assert self.proc is not None and self.proc.poll() is None, "the broker is not running"
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        self._end(signal.SIGTERM)

    def restart(self, timeout_s: float = 10.0) -> Broker:
        """Start again on the same port, with the persistence it saved."""
        return self.start(timeout_s)

    def _end(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def wait_saved(self, timeout_s: float = 5.0) -> None:
        """Wait for the next autosave to begin, so that the sessions and retained messages as they are now
        survive a `kill()` (mosquitto 2.0 saves every 2 s or so with `autosave_interval 1`)."""
        before = self._saves()
        deadline = time.monotonic() + timeout_s
        while self._saves() <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not save within {timeout_s} s: {self.log_tail()}")
            time.sleep(0.05)

    def _saves(self) -> int:
        return self.log.read_text(errors="replace").count("Saving in-memory database") if self.log.exists() else 0

    def log_tail(self, n: int = 2000) -> str:
        """The end of mosquitto's log, for failure messages."""
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else "(no log)"

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Subscriber:
    """A persistent-session paho subscriber (QoS 1) that records every message, with its retain and dup flags."""

    def __init__(self, port: int, topics: Iterable[str] = ("#",), client_id: str | None = None,
                 host: str = "127.0.0.1") -> None:
        import paho.mqtt.client as mqtt

        self.topics = list(topics)
        self.messages: list[tuple[str, bytes, bool, bool]] = []  # (topic, payload, retain, dup) as received
        self.arrivals: list[float] = []  # time.monotonic() of each message, beside `messages`
        self.connects = 0  # SUBACKs received: one per (re)connection
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{uuid.uuid4().hex}",
                                  clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self.connects += 1
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain), bool(msg.dup)))
            self.arrivals.append(time.monotonic())
            self._cond.notify_all()

    def payloads(self, topic: str) -> list[bytes]:
        """Every payload received on `topic`, in arrival order."""
        with self._cond:
            return [p for t, p, _, _ in self.messages if t == topic]

    def wait_for(self, predicate: Callable[[Subscriber], bool], timeout_s: float = 10.0, what: str = "") -> None:
        """Wait until `predicate(self)` holds; fail the test with what was received otherwise."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(t, p[:80]) for t, p, _, _ in self.messages[-10:]]
                    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}; "
                                         f"{len(self.messages)} messages, the last: {seen}")
                self._cond.wait(min(left, 0.1))

    def wait_connected(self, n: int = 1, timeout_s: float = 10.0) -> None:
        """Wait until the subscriber has connected and its subscription was acknowledged `n` times in all."""
        self.wait_for(lambda s: s.connects >= n, timeout_s, f"{n} subscription(s)")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    """A running mosquitto on a free loopback port (killed after the test); skipped without mosquitto."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto): the MQTT tests need a real broker")
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()
