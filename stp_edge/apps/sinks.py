"""Where records and events go: one `Sink` interface for JSONL, MQTT and webhooks, and what each reports.

A sink takes snippet records (`stp_edge.records`), event messages (`stp_edge.apps.events`) and per-camera status,
and must return at once: delivery that can wait (a broker, an HTTP endpoint) happens on the sink's own thread from
a bounded on-disk queue (`stp_edge.apps.spool`), so a sink that cannot deliver never stalls inference. `close`
delivers what it can within a timeout and says, in a `SinkReport`, what it delivered, left queued on disk,
dropped (queue full) or gave up on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from stp_edge.run import JsonlSink


@dataclass
class SinkReport:
    """What one sink did over a run.

    Attributes:
        name: The sink, as people know it ("mqtt 127.0.0.1:1883", "webhook https://vms/hooks", "jsonl FILE").
        delivered: Messages the other end accepted (an MQTT PUBACK, an HTTP 2xx, a line written).
        queued: Messages still pending at close, kept on disk for the next run with the same queue directory.
        dropped: Messages evicted because the bounded queue was full (the oldest go first).
        gave_up: Messages refused for good (an HTTP 4xx other than 410 and 429, retries exhausted).
        disabled: Why the sink stopped delivering (an endpoint that answered 410 Gone), or None.
    """

    name: str
    delivered: int = 0
    queued: int = 0
    dropped: int = 0
    gave_up: int = 0
    disabled: str | None = None

    @property
    def lost(self) -> int:
        """Messages that will never be delivered: dropped plus given up."""
        return self.dropped + self.gave_up

    def describe(self) -> str:
        """One line: "mqtt 127.0.0.1:1883: 12 delivered, 0 queued, 0 dropped, 0 given up"."""
        line = (f"{self.name}: {self.delivered} delivered, {self.queued} queued, {self.dropped} dropped, "
                f"{self.gave_up} given up")
        return line + (f"; disabled: {self.disabled}" if self.disabled else "")


class Sink:
    """The interface every sink fills in; the defaults ignore what a sink does not publish."""

    name = "sink"

    def on_snippet(self, record: dict[str, Any]) -> None:
        """One snippet record (final or provisional). Must return at once."""

    def on_event(self, message: dict[str, Any]) -> None:
        """One event message ({"type": "new"|"update"|"end", "before", "after"}). Must return at once."""

    def on_status(self, camera: str, status: dict[str, Any]) -> None:
        """A camera's state: {"online", "score", "anomaly", "last_frame_time"}. Must return at once."""

    def close(self, timeout_s: float = 10.0) -> SinkReport:
        """Deliver what can be delivered within `timeout_s`, stop, and report."""
        return SinkReport(self.name)


class JsonlRecordSink(Sink):
    """Snippet records and event messages as JSON lines, through the one JSONL writer (`stp_edge.run.JsonlSink`).

    Each line is one write: a killed process keeps every line written, and the file can be followed as it grows.
    A reader tells records from event messages by `schema` ("stp-edge.snippet", "stp-edge.event").
    """

    def __init__(self, target: str | os.PathLike | TextIO, *, mode: str = "a", events: bool = True,
                 snippets: bool = True) -> None:
        self._out = JsonlSink(target, mode=mode)
        self.name = f"jsonl {Path(target)}" if isinstance(target, (str, os.PathLike)) else "jsonl stream"
        self.events, self.snippets = events, snippets

    def on_snippet(self, record: dict[str, Any]) -> None:
        if self.snippets:
            self._out.write(record)

    def on_event(self, message: dict[str, Any]) -> None:
        if self.events:
            self._out.write(message)

    def close(self, timeout_s: float = 10.0) -> SinkReport:
        self._out.close()
        return SinkReport(self.name, delivered=self._out.written)
