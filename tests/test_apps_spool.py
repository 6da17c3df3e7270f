"""The on-disk spool: FIFO order across reopen and a killed process, corrupt files set aside, drop-oldest, threads."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stp_edge.apps.spool import Spool
from stp_edge.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def _payloads(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [f"msg-{i}-".encode() + rng.randbytes(rng.randint(1, 300)) for i in range(n)]


def _drain(spool: Spool) -> list[bytes]:
    out = []
    while (item := spool.peek()) is not None:
        out.append(item.payload)
        assert spool.ack(item.id)
    return out


def test_fifo_order_keys_and_reopen(tmp_path):
    payloads = _payloads(20)
    spool = Spool(tmp_path / "q")
    ids = [spool.put(p, key=f"k{i}") for i, p in enumerate(payloads)]
    assert ids == sorted(ids) and len(set(ids)) == 20
    assert len(spool) == 20 and spool.bytes > sum(map(len, payloads))
    first = spool.peek()
    assert (first.id, first.key, first.payload, first.attempts) == (ids[0], "k0", payloads[0], 0)
    assert spool.peek().id == ids[0], "peek must not consume"
    spool.ack(ids[0])
    spool.ack(ids[5])  # out of order ack (given up) works too

    again = Spool(tmp_path / "q")
    assert len(again) == 18
    rest = _drain(again)
    assert rest == [p for i, p in enumerate(payloads) if i not in (0, 5)]
    assert len(again) == 0 and again.bytes == 0
    assert not list((tmp_path / "q").glob("*.item"))
    # ids keep growing in a later run, so that a receiver can keep them as keys
    assert Spool(tmp_path / "q").put(b"later") > ids[-1]


def test_retry_later_is_persisted_and_keeps_the_place(tmp_path):
    spool = Spool(tmp_path)
    a, b = spool.put(b"alpha"), spool.put(b"beta")
    spool.retry_later(a)
    spool.retry_later(a)
    item = Spool(tmp_path).peek()
    assert (item.id, item.payload, item.attempts) == (a, b"alpha", 2)
    assert Spool(tmp_path).ack(a) and Spool(tmp_path).peek().id == b


def test_full_spool_drops_the_oldest_and_counts(tmp_path):
    payloads = _payloads(8, seed=1)
    spool = Spool(tmp_path, max_items=5)
    ids = [spool.put(p) for p in payloads]
    assert len(spool) == 5 and spool.dropped == 3
    assert not spool.ack(ids[0]), "an evicted item is no longer there"
    assert _drain(spool) == payloads[3:]

    by_bytes = Spool(tmp_path / "b", max_bytes=1000)
    for i in range(10):
        by_bytes.put(bytes([i + 1]) * 300)
    assert by_bytes.bytes <= 1000 and by_bytes.dropped == 10 - len(by_bytes) > 0
    assert by_bytes.peek().payload[0] == 10 - len(by_bytes) + 1
    with pytest.raises(UsageError, match="does not fit in max_bytes=1000"):
        by_bytes.put(b"x" * 2000)
    with pytest.raises(UsageError, match="max_items >= 1"):
        Spool(tmp_path / "c", max_items=0)


def test_corrupt_and_partial_files_are_moved_aside(tmp_path):
    spool = Spool(tmp_path)
    payloads = _payloads(4, seed=2)
    ids = [spool.put(p) for p in payloads]
    # a torn item (truncated), a flipped byte, a leftover temporary file of a crashed put
    torn = tmp_path / f"{ids[1]}.item"
    torn.write_bytes(torn.read_bytes()[:-3])
    flipped = tmp_path / f"{ids[2]}.item"
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF
    flipped.write_bytes(bytes(data))
    (tmp_path / ".0000000000000001-abcdef.tmp").write_bytes(b"half an ite")

    reopened = Spool(tmp_path)
    assert reopened.corrupt == 1 and len(reopened) == 4  # the tmp file at open; the rest when read
    assert _drain(reopened) == [payloads[0], payloads[3]]
    assert reopened.corrupt == 3
    aside = sorted(p.name for p in (tmp_path / "corrupt").iterdir())
    assert aside == sorted([f"{ids[1]}.item", f"{ids[2]}.item", ".0000000000000001-abcdef.tmp"])


_KILLED_WRITER = """
import os, signal, sys
from stp_edge.apps.spool import Spool
spool = Spool(sys.argv[1])
for i in range(int(sys.argv[2])):
    spool.put(f"item-{i:05d}".encode() * 20, key=str(i))
print("written", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_items_survive_a_killed_process(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path), "300"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "written" in proc.stdout, proc.stderr
    spool = Spool(tmp_path)
    assert len(spool) == 300 and spool.corrupt == 0
    assert _drain(spool) == [f"item-{i:05d}".encode() * 20 for i in range(300)]


def test_one_producer_one_consumer_thread(tmp_path):
    spool = Spool(tmp_path, max_items=50)
    total, got, stop = 600, [], threading.Event()

    def consume() -> None:
        while not (stop.is_set() and len(spool) == 0):
            item = spool.peek()
            if item is None:
                time.sleep(0.0005)
                continue
            if spool.ack(item.id):
                got.append(int(item.payload))

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(total):
        spool.put(str(i).encode())
    stop.set()
    consumer.join(30)
    assert not consumer.is_alive()
    assert got == sorted(got) and len(set(got)) == len(got), "delivered out of order or twice"
    assert len(got) + spool.dropped == total and got[-1] == total - 1
    assert len(spool) == 0 and not [p for p in os.listdir(tmp_path) if p.endswith(".item")]
