"""The webhook sink against a real HTTP receiver on 127.0.0.1 (http.server), scripted answer by answer.

Every request the receiver gets is checked against the Standard Webhooks signature, both with `verify_signature`
and with the formula recomputed here. The receiver answers 500/503/429/410/400, sleeps past the timeout, is not
listening at all, or comes up late; the sink must retry with the same webhook-id, back off, honour Retry-After,
stop on 410, give up on 400 alone, never block its caller, and leave on disk what it could not deliver.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stp_edge import __version__
from stp_edge.apps.sinks import Sink
from stp_edge.apps.webhook import WebhookSink, backoff_delay, retry_after_s, sign, verify_signature
from stp_edge.bench.capacity import free_port
from stp_edge.errors import UsageError

SECRET = "whsec_" + base64.b64encode(b"stp-edge test key: 32 bytes long").decode()
FAST = {"backoff_base_s": 0.02, "backoff_cap_s": 0.1, "timeout_s": 2.0}


@dataclass
class Request:
    """One request the receiver got: when (monotonic), its headers (lower-case names), raw body."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]]

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP endpoint; `script` holds one answer per request (status, headers, body, sleep), then 200s."""

    port: int = field(default_factory=free_port)
    script: list[dict] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cond = threading.Condition()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/stp?token=s3cr3t"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.cond:
                    receiver.requests.append(Request(time.monotonic(), self.path,
                                                     {k.lower(): v for k, v in self.headers.items()}, body,
                                                     list(self.headers.items())))
                    answer = receiver.script.pop(0) if receiver.script else {}
                    receiver.cond.notify_all()
                time.sleep(answer.get("sleep", 0))
                try:
                    self.send_response(answer.get("status", 200))
                    for name, value in answer.get("headers", {}).items():
                        self.send_header(name, value)
                    reply = answer.get("body", b"ok")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:  # the sender timed out and hung up
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Request]:
        """The first `n` requests, waiting up to `timeout` s for them; fails the test when they do not come."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.requests) >= n, timeout), \
                f"expected {n} requests within {timeout} s, got {len(self.requests)}"
            return list(self.requests[:n])


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def event(kind: str = "new", n: int = 1, score: float = 0.91) -> dict:
    """An event message as EventEngine emits it (COMMON shape), distinct per `n`."""
    after = {"id": f"front-17651400{n:05d}-3f9a2c", "camera": "front", "stream": 0,
             "source": "rtsp://user:***@10.0.0.5/sub", "label": "fighting", "score": score, "peak_score": 0.97,
             "peak_time": 1765140001.5, "start_time": 1765140000.12,
             "end_time": 1765140009.8 if kind == "end" else None,
             "timestamp": "2025-12-07T20:40:00.120Z", "frame_start": 0, "frame_end": 16,
             "boxes": [{"x1": 10, "y1": 20, "x2": 60, "y2": 90, "score": 0.8, "class_id": 2,
                        "class_name": "fighting", "norm": [0.05, 0.1, 0.3, 0.45]}],
             "zones": ["driveway"], "snapshot": None, "clip": None, "clip_ready": False,
             "end_reason": "below_threshold" if kind == "end" else None, "updates": n}
    return {"schema": "stp-edge.event", "schema_version": 1, "type": kind,
            "before": None if kind == "new" else dict(after, updates=n - 1), "after": after}


def recomputed_signature(secret: str, req: Request) -> str:
    """The Standard Webhooks formula, written out independently of stp_edge: v1,base64(HMAC(key, id.ts.body))."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    signed = req.headers["webhook-id"].encode() + b"." + req.headers["webhook-timestamp"].encode() + b"." + req.body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def assert_signed(req: Request, secret: str = SECRET) -> None:
    assert req.headers["webhook-signature"] == recomputed_signature(secret, req)
    assert verify_signature(secret, req.headers, req.body)


def make_sink(receiver: Receiver, tmp_path, **options) -> WebhookSink:
    return WebhookSink(receiver.url, options.pop("secret", SECRET), tmp_path / "spool", **{**FAST, **options})


# -- signing alone ----------------------------------------------------------------------------------------------


def test_signature_reproduces_the_standard_webhooks_test_vector():
    """The published reference vector (Standard Webhooks / Svix libraries): a receiver's library accepts ours."""
    body = b'{"test": 2432232314}'
    sig = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "Webhook-Timestamp": "1614265330",
               "Webhook-Signature": "v1,bm9wZQ== " + sig}  # a rotated-out key's signature first
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert verify_signature(secret, headers, body, now=1614265330 + 299)
    assert not verify_signature(secret, headers, body, now=1614265330 + 301)  # too old: a replay
    assert not verify_signature(secret, headers, body + b" ", now=1614265330)  # body changed
    assert not verify_signature("whsec_" + base64.b64encode(b"another key").decode(), headers, body, now=1614265330)
    assert not verify_signature(secret, {**headers, "Webhook-Id": "msg_other"}, body, now=1614265330)
    assert not verify_signature(secret, {k: v for k, v in headers.items() if k != "Webhook-Signature"}, body,
                                now=1614265330)
    with pytest.raises(UsageError, match="not valid base64"):
        sign("whsec_not base64!", "msg_1", 1, b"{}")


def test_backoff_is_exponential_with_full_jitter_and_capped():
    rng = random.Random(3)
    draws = {k: [backoff_delay(k, 0.5, 60.0, rng) for _ in range(4000)] for k in range(1, 10)}
    for k in range(1, 8):
        envelope = 0.5 * 2 ** (k - 1)
        assert all(0 <= d <= envelope for d in draws[k])
        mean = sum(draws[k]) / len(draws[k])
        assert envelope * 0.45 < mean < envelope * 0.55  # uniform over [0, envelope]: jitter, not a fixed delay
        assert len(set(draws[k])) > 3900
    assert max(draws[8] + draws[9]) <= 60.0 and max(draws[9]) > 50  # capped at 60 s
    assert retry_after_s("7") == 7.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert 29 <= retry_after_s(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))) <= 30


# -- against the receiver ---------------------------------------------------------------------------------------


def test_happy_path_body_headers_and_signature(receiver, tmp_path):
    sink = make_sink(receiver, tmp_path)
    assert isinstance(sink, Sink)
    sent = [event("new", 1), event("update", 2, 0.95), event("end", 3, 0.4)]
    before = time.time()
    for message in sent:
        sink.on_event(message)
    reqs = receiver.wait_for(3)
    report = sink.close(5)
    assert (report.delivered, report.queued, report.gave_up, report.dropped, report.disabled) == (3, 0, 0, 0, None)
    assert "s3cr3t" not in report.name and "token=***" in report.name  # secret query values masked
    for req, message, kind in zip(reqs, sent, ("event.new", "event.update", "event.end"), strict=True):
        assert req.path == "/hooks/stp?token=s3cr3t"
        body = req.json
        assert set(body) == {"type", "timestamp", "data"}
        assert body["type"] == kind and body["data"] == message
        assert body["timestamp"].endswith("Z") and body["timestamp"][:4] == time.strftime("%Y", time.gmtime())
        assert req.headers["content-type"] == "application/json"
        assert req.headers["user-agent"] == f"stp-edge/{__version__}"
        assert req.headers["webhook-id"].startswith("msg_") and "." not in req.headers["webhook-id"]
        assert before - 1 <= int(req.headers["webhook-timestamp"]) <= time.time() + 1
        assert_signed(req)
    assert len({r.headers["webhook-id"] for r in reqs}) == 3
    example = reqs[0]
    print("\nPOST", example.path, "HTTP/1.1")  # the example request the README shows (pytest -s prints it)
    for name, value in example.raw_headers:
        print(f"{name}: {value}")
    print()
    print(example.body.decode())


def test_plain_string_secret_signs_with_its_utf8_bytes(receiver, tmp_path):
    sink = make_sink(receiver, tmp_path, secret="a plain shared secret")
    sink.on_event(event())
    (req,) = receiver.wait_for(1)
    sink.close(5)
    assert_signed(req, "a plain shared secret")
    assert not verify_signature(SECRET, req.headers, req.body)


def test_500_then_503_then_200_retries_with_the_same_id_and_growing_backoff(receiver, tmp_path):
    receiver.script = [{"status": 500}, {"status": 500}, {"status": 500}, {"status": 503}]
    base = 0.08
    sink = make_sink(receiver, tmp_path, backoff_base_s=base, backoff_cap_s=10.0, rng=random.Random(11))
    sink.on_event(event())
    reqs = receiver.wait_for(5)
    report = sink.close(5)
    assert (report.delivered, report.gave_up, report.queued) == (1, 0, 0)
    assert len({r.headers["webhook-id"] for r in reqs}) == 1  # one id on every try: receivers deduplicate
    assert len({r.body for r in reqs}) == 1
    for req in reqs:
        assert_signed(req)  # a fresh timestamp each try, signed again
    twin = random.Random(11)  # the jitter the sink drew, drawn again
    expected = [twin.uniform(0, base * 2 ** k) for k in range(4)]
    gaps = [b.at - a.at for a, b in itertools.pairwise(reqs)]
    for gap, want in zip(gaps, expected, strict=True):
        assert want - 0.005 <= gap <= want + 0.15, (gaps, expected)
    envelopes = [base * 2 ** k for k in range(4)]
    assert any(abs(w - e) > 0.01 for w, e in zip(expected, envelopes, strict=True))  # jitter: not the bare exponential
    assert sum(gaps[2:]) > sum(gaps[:2])  # the later waits are drawn from wider ranges


def test_429_retry_after_is_honoured(receiver, tmp_path):
    receiver.script = [{"status": 429, "headers": {"Retry-After": "1"}}]
    sink = make_sink(receiver, tmp_path)  # its own backoff would retry within 0.02 s
    sink.on_event(event())
    first, second = receiver.wait_for(2)
    sink.close(5)
    assert second.at - first.at >= 0.95
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_receiver_down_at_start_then_up_delivers_without_using_up_attempts(tmp_path):
    receiver = Receiver()  # nothing listening on its port yet
    sink = make_sink(receiver, tmp_path, max_attempts=2)
    sink.on_event(event("new", 1))
    sink.on_event(event("update", 2))
    time.sleep(0.8)
    assert sink.tries > 4  # refused connections retried, many more times than max_attempts
    receiver.start()
    try:
        reqs = receiver.wait_for(2)
        report = sink.close(5)
    finally:
        receiver.stop()
    assert (report.delivered, report.gave_up, report.queued) == (2, 0, 0)
    assert [r.json["type"] for r in reqs] == ["event.new", "event.update"]  # in order
    for req in reqs:
        assert_signed(req)


def test_slow_receiver_times_out_and_retries_while_on_event_returns_at_once(receiver, tmp_path):
    receiver.script = [{"sleep": 1.5}]
    sink = make_sink(receiver, tmp_path, timeout_s=0.3)
    sink.on_event(event("new", 1))
    receiver.wait_for(1)
    durations = []
    for n in range(2, 42):  # while the first request hangs
        start = time.perf_counter()
        sink.on_event(event("update", n))
        durations.append(time.perf_counter() - start)
    reqs = receiver.wait_for(42, timeout=10)
    report = sink.close(5)
    durations.sort()
    assert max(durations) < 0.02 and durations[20] < 0.0003, durations  # a hand-over: no network, no fsync
    assert reqs[1].at - reqs[0].at < 1.0  # gave up waiting at the timeout, not after the receiver's 1.5 s
    assert reqs[0].headers["webhook-id"] == reqs[1].headers["webhook-id"]  # the timed-out one, sent again
    assert (report.delivered, report.gave_up, report.queued) == (41, 0, 0)
    assert [r.json["data"]["after"]["updates"] for r in reqs[1:]] == list(range(1, 42))


def test_close_returns_within_its_timeout_while_the_receiver_hangs(receiver, tmp_path):
    receiver.script = [{"sleep": 4}] * 5
    sink = make_sink(receiver, tmp_path, timeout_s=30)
    sink.on_event(event())
    receiver.wait_for(1)
    start = time.monotonic()
    report = sink.close(0.5)
    assert time.monotonic() - start < 2.0  # a service stop is not held up by the endpoint
    assert (report.delivered, report.queued) == (0, 1)


def test_410_disables_the_sink_and_keeps_the_messages(receiver, tmp_path, caplog):
    receiver.script = [{"status": 410}]
    sink = make_sink(receiver, tmp_path)
    with caplog.at_level(logging.WARNING, logger="stp_edge.apps.webhook"):
        sink.on_event(event("new", 1))
        receiver.wait_for(1)
        for n in range(2, 5):
            sink.on_event(event("update", n))
        time.sleep(0.5)
        report = sink.close(1)
    assert len(receiver.requests) == 1  # nothing after the 410
    assert report.disabled == f"410 Gone from http://127.0.0.1:{receiver.port}/hooks/stp?token=***"
    assert (report.delivered, report.queued, report.gave_up) == (0, 4, 0)
    assert "disabled: 410 Gone" in report.describe()
    gone = [r for r in caplog.records if "410" in r.getMessage()]
    assert len(gone) == 1 and "s3cr3t" not in gone[0].getMessage()
    assert len(list((tmp_path / "spool").glob("*.item"))) == 4


def test_400_gives_up_that_message_and_delivers_the_next(receiver, tmp_path, caplog):
    receiver.script = [{"status": 400, "body": b"schema mismatch: field 'data' unexpected"}]
    sink = make_sink(receiver, tmp_path)
    with caplog.at_level(logging.WARNING, logger="stp_edge.apps.webhook"):
        sink.on_event(event("new", 1))
        sink.on_event(event("update", 2))
        first, second = receiver.wait_for(2)
        report = sink.close(5)
    assert first.json["type"] == "event.new" and second.json["type"] == "event.update"
    assert first.headers["webhook-id"] != second.headers["webhook-id"]
    assert (report.delivered, report.gave_up, report.queued) == (1, 1, 0)
    assert len(receiver.requests) == 2  # the 400 was not retried
    (line,) = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert "HTTP 400" in line and "schema mismatch" in line and first.headers["webhook-id"] in line


def test_retries_exhausted_gives_up_after_max_attempts(receiver, tmp_path):
    receiver.script = [{"status": 502}] * 3
    sink = make_sink(receiver, tmp_path, max_attempts=3)
    sink.on_event(event("new", 1))
    sink.on_event(event("update", 2))
    reqs = receiver.wait_for(4)
    report = sink.close(5)
    assert [r.json["type"] for r in reqs] == ["event.new"] * 3 + ["event.update"]
    assert (report.delivered, report.gave_up, report.queued) == (1, 1, 0)


def test_restart_delivers_what_a_closed_sink_left_in_its_spool(tmp_path):
    receiver = Receiver(script=[{"status": 503}] * 1000).start()  # up but refusing: ids get seen
    try:
        first = make_sink(receiver, tmp_path, backoff_base_s=0.05, max_attempts=100)
        for n, kind in enumerate(("new", "update", "end"), 1):
            first.on_event(event(kind, n))
        receiver.wait_for(2)
        report = first.close(0.2)
    finally:
        receiver.stop()
    assert (report.delivered, report.queued, report.gave_up) == (0, 3, 0)
    tried_ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(tried_ids) == 1
    assert len(list((tmp_path / "spool").glob("*.item"))) == 3

    down = make_sink(Receiver(), tmp_path)  # a run with nothing listening: still kept
    assert down.close(0.3).queued == 3

    again = Receiver(port=receiver.port).start()
    try:
        second = make_sink(again, tmp_path)
        reqs = again.wait_for(3)
        report = second.close(5)
    finally:
        again.stop()
    assert (report.delivered, report.queued) == (3, 0)
    assert [r.json["type"] for r in reqs] == ["event.new", "event.update", "event.end"]
    assert reqs[0].headers["webhook-id"] in tried_ids  # the same id as before the restart: deduplicable
    for req in reqs:
        assert_signed(req)
    assert not list((tmp_path / "spool").glob("*.item"))


def test_snippets_only_when_asked_and_only_final(receiver, tmp_path):
    record = {"schema": "stp-edge.snippet", "schema_version": 1, "camera": "front", "score": 0.7, "final": True}
    sink = make_sink(receiver, tmp_path, snippets=True)
    sink.on_snippet(dict(record, final=False))
    sink.on_snippet(record)
    sink.on_event(event())
    reqs = receiver.wait_for(2)
    sink.close(5)
    assert [r.json["type"] for r in reqs] == ["snippet", "event.new"]
    assert reqs[0].json["data"] == record
    quiet = make_sink(receiver, tmp_path / "quiet")
    quiet.on_snippet(record)
    quiet.on_event(event())
    receiver.wait_for(3)
    quiet.close(5)
    assert [r.json["type"] for r in receiver.requests[2:]] == ["event.new"]


def test_bad_urls_and_secrets_are_named():
    with pytest.raises(UsageError, match="http:// or https://") as err:
        WebhookSink("ftp://user:pa55@host/x", SECRET, "/nonexistent/never-created")
    assert "pa55" not in str(err.value)
    with pytest.raises(UsageError, match="empty"):
        WebhookSink("http://127.0.0.1:9/x", "", "/nonexistent/never-created")


def test_a_message_that_is_not_json_is_counted_not_raised(receiver, tmp_path, caplog):
    sink = make_sink(receiver, tmp_path)
    with caplog.at_level(logging.ERROR, logger="stp_edge.apps.webhook"):
        sink.on_event(event("new", 1, score=float("nan")))  # NaN is not JSON: a receiver could not parse it
    sink.on_event(event("update", 2))
    (req,) = receiver.wait_for(1)
    report = sink.close(5)
    assert req.json["type"] == "event.update"
    assert (report.delivered, report.gave_up) == (1, 1)
    assert any("not JSON" in r.getMessage() for r in caplog.records)
