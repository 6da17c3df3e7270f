"""Events as signed HTTP webhooks, following the Standard Webhooks convention (standardwebhooks.com).

Each message is a POST with the JSON body `{"type": "event.new", "timestamp": "<RFC 3339>", "data": <message>}`
and the headers `webhook-id` (the same on every retry of one message, so a receiver can deduplicate),
`webhook-timestamp` (epoch seconds of this attempt) and `webhook-signature` (`v1,` + base64 of
HMAC-SHA256(key, "{id}.{timestamp}.{body}")). `on_event` only hands the message over and returns (microseconds);
a writer thread puts it in a bounded on-disk queue (`stp_edge.apps.spool`, fsync'ed, so a crash loses at most
what was handed over in the last milliseconds) and a delivery thread posts the oldest one. 2xx delivers it;
410 Gone disables the sink (what is queued stays on disk); 408, 429, 5xx and timeouts retry with exponential
backoff and full jitter (Retry-After honoured) up to `max_attempts`; an endpoint that cannot be reached at all
retries without using up attempts, so an outage loses nothing the queue holds; any other answer (3xx, 4xx) gives
the message up at once.
`verify_signature` is the receiver's side of the signature. Standard library only (http.client).
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import http.client
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from stp_edge._version import __version__
from stp_edge.apps.sinks import Sink, SinkReport
from stp_edge.apps.spool import Spool, SpoolItem
from stp_edge.errors import UsageError
from stp_edge.records import rfc3339
from stp_edge.video import display_source

log = logging.getLogger(__name__)

USER_AGENT = f"stp-edge/{__version__}"
SECRET_PREFIX = "whsec_"
EVENT_TYPES = {"new": "event.new", "update": "event.update", "end": "event.end"}
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
EXCERPT_BYTES = 200
MAX_RETRY_AFTER_S = 3600.0  # a Retry-After beyond an hour is taken as an hour


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a webhook secret.

    "whsec_<base64>" (the Standard Webhooks serialisation) is the base64-decoded key; any other string is used
    as its UTF-8 bytes (so a receiver configured with the same plain string verifies it); bytes are used as is.
    """
    if isinstance(secret, bytes):
        key = secret
    elif isinstance(secret, str) and secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise UsageError("webhook secret starts with 'whsec_' but the rest is not valid base64 "
                             "(expected whsec_<base64 key>, or a plain string without the prefix)") from None
    elif isinstance(secret, str):
        key = secret.encode("utf-8")
    else:
        raise UsageError(f"webhook secret must be a string or bytes, got {type(secret).__name__}")
    if not key:
        raise UsageError("webhook secret is empty")
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: "v1," + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}"))."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()


def verify_signature(secret: str | bytes, headers: Mapping[str, str], body: bytes | str,
                     tolerance_s: float = 300, *, now: float | None = None) -> bool:
    """Whether a received webhook is authentic: a `v1` signature matches and its timestamp is recent.

    `headers` may be any mapping (names compared case-insensitively); `body` must be the raw request body, not
    JSON parsed and dumped again. A timestamp more than `tolerance_s` from `now` fails (replay protection).
    """
    lower = {str(k).lower(): v for k, v in headers.items()}
    msg_id, stamp, given = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not msg_id or not stamp or not given:
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    expected = sign(secret, msg_id, timestamp, raw).split(",", 1)[1]
    for candidate in given.split():  # a space-separated list, so a secret can be rotated without downtime
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
            return True
    return False


def webhook_body(kind: str, data: Any, *, timestamp: float | None = None) -> bytes:
    """The minified JSON body {"type", "timestamp", "data"}; NaN or infinity in `data` is refused (not JSON)."""
    stamp = rfc3339(time.time() if timestamp is None else timestamp)
    return json.dumps({"type": kind, "timestamp": stamp, "data": data}, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def backoff_delay(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform over [0, min(cap, base * 2**(failures - 1))]."""
    return rng.uniform(0.0, min(cap_s, base_s * 2.0 ** max(0, failures - 1)))


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header as seconds from now (delta-seconds or an HTTP date), or None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when - (time.time() if now is None else now)), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class Answer:
    """What one POST got: an HTTP status, or an error (`reached` False when no connection was made at all)."""

    status: int | None = None
    retry_after: str | None = None
    excerpt: str = ""
    error: str | None = None
    reached: bool = True

    def describe(self) -> str:
        """"HTTP 503 ('busy')", "timed out" or "cannot connect: [Errno 111] Connection refused"."""
        if self.status is not None:
            return f"HTTP {self.status}" + (f" ({self.excerpt!r})" if self.excerpt else "")
        return self.error or "no answer"


@dataclass(frozen=True)
class Endpoint:
    """A parsed webhook URL: where to connect, what path to post to, and its basic-auth header if any."""

    url: str
    https: bool
    host: str
    port: int | None
    target: str
    authorization: str | None

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse an http(s) URL; user:password in it becomes a basic Authorization header."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UsageError(f"webhook URL {display_source(url)} is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"webhook URL must be http:// or https:// with a host, got {display_source(url)}")
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(url, parts.scheme == "https", parts.hostname, port, target, auth)

    def post(self, headers: dict[str, str], body: bytes, timeout_s: float) -> Answer:
        """One POST on a fresh connection; never follows redirects (a 3xx is an answer like any other)."""
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = kind(self.host, self.port, timeout=timeout_s)
        try:
            try:
                conn.connect()
            except OSError as exc:
                return Answer(error=f"cannot connect: {exc or type(exc).__name__}", reached=False)
            if self.authorization:
                headers = {**headers, "Authorization": self.authorization}
            conn.request("POST", self.target, body=body, headers=headers)
            response = conn.getresponse()
            excerpt = response.read(EXCERPT_BYTES).decode("utf-8", "replace").strip()
            return Answer(response.status, response.getheader("Retry-After"), excerpt)
        except TimeoutError:
            return Answer(error=f"no answer within {timeout_s:g} s")
        except (OSError, http.client.HTTPException) as exc:
            return Answer(error=f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


class WebhookSink(Sink):
    """Posts event messages (and, with `snippets=True`, final snippet records) to one webhook URL.

    Args:
        url: The endpoint, http:// or https:// (user:password in it is sent as basic auth; logs mask it).
        secret: "whsec_<base64 key>" (Standard Webhooks), or a plain string whose UTF-8 bytes are the key;
            None sends no `webhook-signature` header.
        spool_dir: The sink's own on-disk queue directory; what is left there is delivered by the next sink
            opened on it.
        snippets: Also post each final snippet record (type "snippet"); off by default (one POST per snippet).
        timeout_s: Per-request socket timeout.
        max_attempts: Answered attempts (timeouts, 408, 429, 5xx) before a message is given up.
        backoff_base_s, backoff_cap_s: The backoff envelope: base doubling per failure, at most cap.
        max_items, max_bytes: Bounds of the queue; beyond them the oldest messages are dropped (and counted).
        rng: The jitter's random source (tests pass a seeded one).
    """

    def __init__(self, url: str, secret: str | bytes | None, spool_dir: str | Path, *, snippets: bool = False,
                 timeout_s: float = 10.0, max_attempts: int = 8, backoff_base_s: float = 0.5,
                 backoff_cap_s: float = 60.0, max_items: int = 10000, max_bytes: int = 64 << 20,
                 rng: random.Random | None = None) -> None:
        if max_attempts < 1 or timeout_s <= 0 or backoff_base_s < 0 or backoff_cap_s < backoff_base_s:
            raise UsageError(f"webhook options: need max_attempts >= 1, timeout_s > 0 and 0 <= backoff_base_s <= "
                             f"backoff_cap_s, got {max_attempts}, {timeout_s}, {backoff_base_s}, {backoff_cap_s}")
        self.endpoint = Endpoint.parse(url)
        self._key = secret_key(secret) if secret is not None else None
        self.shown_url = display_source(url)
        self.name = f"webhook {self.shown_url}"
        self.snippets, self.timeout_s, self.max_attempts = snippets, timeout_s, max_attempts
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self._rng = rng or random.Random()
        self._spool = Spool(spool_dir, max_items=max_items, max_bytes=max_bytes)
        self._wake = threading.Event()  # the delivery thread's: new items, close
        self._handoff: collections.deque[tuple[bytes, str]] = collections.deque()  # deque: thread-safe ends
        self._handoff_max, self._handoff_dropped, self._too_big = max_items, 0, 0
        self._handed = threading.Event()  # the writer's
        self._writer_stop = False
        self.delivered = self.gave_up = self.tries = 0
        self._unsendable = 0  # counted on the caller's thread, apart from gave_up (the delivery thread's)
        self.disabled: str | None = None
        self._streak = 0  # consecutive failed tries, for the backoff exponent
        self._next_try = 0.0  # monotonic time before which the head of the queue waits
        self._failing = False
        self._closing, self._deadline = False, 0.0
        self._writer = threading.Thread(target=self._write_loop, name=f"stp-edge {self.name} writer", daemon=True)
        self._thread = threading.Thread(target=self._run, name=f"stp-edge {self.name}", daemon=True)
        self._writer.start()
        self._thread.start()

    # -- the caller's side: queue and return ------------------------------------------------------------------

    def on_event(self, message: dict[str, Any]) -> None:
        """Queue one event message as an "event.new|update|end" webhook."""
        kind = EVENT_TYPES.get(message.get("type"))
        if kind is None:
            raise UsageError(f"event message type must be one of {sorted(EVENT_TYPES)}, got {message.get('type')!r}")
        self._queue(kind, message)

    def on_snippet(self, record: dict[str, Any]) -> None:
        """Queue one final snippet record as a "snippet" webhook, when `snippets` is on."""
        if self.snippets and record.get("final", True) is not False:
            self._queue("snippet", record)

    def _queue(self, kind: str, data: dict[str, Any]) -> None:
        if self._writer_stop:
            raise UsageError(f"{self.name}: a message after close")
        try:
            body = webhook_body(kind, data)
        except (TypeError, ValueError) as exc:  # a bug upstream; never raise into the inference loop for it
            log.error("%s: a %s message is not JSON (%s); not sent", self.name, kind, exc)
            self._unsendable += 1
            return
        if len(self._handoff) >= self._handoff_max:  # the writer cannot keep up (a stalled disk): oldest go
            self._handoff.popleft()
            self._handoff_dropped += 1
        self._handoff.append((body, f"msg_{uuid.uuid4().hex}"))  # the id of every try of this message
        self._handed.set()

    # -- the writer thread: memory to disk, so that the caller never waits for an fsync -----------------------

    def _write_loop(self) -> None:
        while True:
            self._handed.wait()
            self._handed.clear()
            stopping = self._writer_stop  # read before the last pass: whatever was handed over gets written
            self._to_disk(stopping)
            if stopping:
                return

    def _to_disk(self, stopping: bool = False) -> None:
        while self._handoff:
            body, key = self._handoff.popleft()
            try:
                self._spool.put(body, key=key)
            except UsageError as exc:  # larger than the whole queue may hold
                log.error("%s: %s; not sent", self.name, exc)
                self._too_big += 1
            except OSError:  # a full or failing disk: keep it in memory and try again shortly, unless closing
                self._handoff.appendleft((body, key))
                log.exception("%s: cannot write to %s", self.name, self._spool.directory)
                if stopping:
                    self._handoff_dropped += len(self._handoff)
                    self._handoff.clear()
                    return
                time.sleep(1.0)
            self._wake.set()

    # -- the delivery thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except Exception:  # a bug must not pass silently in a daemon thread
            log.exception("%s: delivery thread failed; messages stay queued on disk", self.name)

    def _step(self) -> bool:
        """Deliver or wait once; False when the thread should end."""
        self._wake.clear()  # before reading the state: a set() after this read wakes the wait below
        now = time.monotonic()
        if self._closing and (self.disabled or now >= self._deadline):
            return False
        if self.disabled:
            self._wake.wait()
            return True
        if now < self._next_try:
            if self._closing and self._next_try >= self._deadline:
                return False
            self._wake.wait(self._next_try - now)
            return True
        item = self._spool.peek()
        if item is None:
            if self._closing:
                return False
            self._wake.wait()
            return True
        timeout = min(self.timeout_s, max(0.05, self._deadline - now)) if self._closing else self.timeout_s
        self._attempt(item, timeout)
        return True

    def _attempt(self, item: SpoolItem, timeout_s: float) -> None:
        """Post the queue's head once and act on the answer."""
        stamp, msg_id = int(time.time()), item.key or f"msg_{item.id}"
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "Content-Type": "application/json",
                   "User-Agent": USER_AGENT}
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, msg_id, stamp, item.payload)
        self.tries += 1
        answer = self.endpoint.post(headers, item.payload, timeout_s)
        status = answer.status
        if status is not None and 200 <= status < 300:
            self._done(item, delivered=True)
            if self._failing:
                log.info("%s: delivering again", self.name)
                self._failing = False
        elif status == 410:
            self.disabled = f"410 Gone from {self.shown_url}"
            log.warning("%s: the endpoint answered 410 Gone; delivery stopped, %d message(s) kept in %s",
                        self.name, len(self._spool), self._spool.directory)
        elif not answer.reached or status is None or status in RETRY_STATUSES:
            self._retry(item, answer)
        else:
            log.warning("%s: gave up on %s after %s", self.name, item.key, answer.describe())
            self._done(item, delivered=False)

    def _retry(self, item: SpoolItem, answer: Answer) -> None:
        """Count the failed try (unless the endpoint was unreachable) and schedule the next one."""
        if answer.reached:
            if item.attempts + 1 >= self.max_attempts:
                log.warning("%s: gave up on %s after %d attempts, the last: %s", self.name, item.key,
                            item.attempts + 1, answer.describe())
                self._done(item, delivered=False)
                return
            self._spool.retry_later(item.id)
        self._streak += 1
        wait = backoff_delay(self._streak, self.backoff_base_s, self.backoff_cap_s, self._rng)
        if answer.status in (429, 503):  # at least what the endpoint asked for
            wait = max(wait, retry_after_s(answer.retry_after) or 0.0)
        self._next_try = time.monotonic() + wait
        if not self._failing:
            log.warning("%s: %s; retrying with backoff (messages wait on disk)", self.name, answer.describe())
            self._failing = True

    def _done(self, item: SpoolItem, *, delivered: bool) -> None:
        self._spool.ack(item.id)
        if delivered:
            self.delivered += 1
        else:
            self.gave_up += 1
        self._streak, self._next_try = 0, 0.0

    # -- closing ----------------------------------------------------------------------------------------------

    def close(self, timeout_s: float = 10.0) -> SinkReport:
        """Deliver what can be delivered within `timeout_s`, stop the thread, report; the rest stays on disk."""
        self._deadline = time.monotonic() + max(0.0, timeout_s)
        self._writer_stop = True  # first everything handed over goes to disk, whatever the timeout
        self._handed.set()
        self._writer.join()
        self._closing = True
        self._wake.set()
        self._thread.join(max(0.0, timeout_s) + 1.0)  # a request in flight ends within its (shortened) timeout
        if self._thread.is_alive():
            log.warning("%s: delivery thread still busy after close(%g s)", self.name, timeout_s)
        return SinkReport(self.name, delivered=self.delivered, queued=len(self._spool),
                          dropped=self._spool.dropped + self._handoff_dropped,
                          gave_up=self.gave_up + self._unsendable + self._too_big, disabled=self.disabled)
