"""A bounded on-disk FIFO that survives a crash: what a sink has not delivered yet waits here, one file per item.

A sink's producer (the thread that runs inference) `put`s messages; its delivery thread `peek`s the oldest, sends
it, and `ack`s it once the other end confirmed (or `retry_later`s it). Each item is one file, written to a
temporary name, fsync'ed and renamed, so a killed process leaves either the whole item or none of it; reopening
the directory resumes the pending items in order. A file that cannot be read back (a torn write from another
tool, a disk error) is moved to `corrupt/` and counted, never a crash. When the spool is full, the oldest items go
first (counted in `dropped`): the newest news matters most to a camera app.

One process per directory; inside it, one producer thread and one delivery thread may share a Spool.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from stp_edge.errors import UsageError
from stp_edge.outputs import fsync_dir

_MAGIC = b"stp-edge.spool 1\n"
_SUFFIX = ".item"
_CORRUPT_DIR = "corrupt"


@dataclass(frozen=True)
class SpoolItem:
    """One pending item: its id (sortable, unique across runs), key, payload, delivery attempts and creation time."""

    id: str
    key: str | None
    payload: bytes
    attempts: int
    created: float


class CorruptItemError(ValueError):
    """An item file that does not hold a whole item (bad magic, header, size or checksum)."""


def _encode(key: str | None, payload: bytes, attempts: int, created: float) -> bytes:
    header = {"key": key, "attempts": attempts, "created": created, "size": len(payload),
              "crc32": zlib.crc32(payload)}
    return _MAGIC + json.dumps(header).encode() + b"\n" + payload


def _decode(item_id: str, data: bytes) -> SpoolItem:
    if not data.startswith(_MAGIC):
        raise CorruptItemError(f"expected the header {_MAGIC!r}, got {data[:len(_MAGIC)]!r}")
    end = data.find(b"\n", len(_MAGIC))
    if end < 0:
        raise CorruptItemError("the header line has no end")
    try:
        header = json.loads(data[len(_MAGIC):end])
        key, attempts, created = header["key"], int(header["attempts"]), float(header["created"])
        size, crc = int(header["size"]), int(header["crc32"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptItemError(f"unreadable header: {exc}") from exc
    payload = data[end + 1:]
    if len(payload) != size:
        raise CorruptItemError(f"expected a payload of {size} bytes, got {len(payload)}")
    if zlib.crc32(payload) != crc:
        raise CorruptItemError("the payload does not match its checksum")
    return SpoolItem(item_id, key, payload, attempts, created)


class Spool:
    """A bounded on-disk FIFO in `directory` (created if missing); reopening it resumes the pending items in order.

    Attributes:
        dropped: Items evicted by this Spool because it was full (oldest first).
        corrupt: Item files found unreadable and moved to `directory/corrupt/` (leftover partial writes included).
    """

    def __init__(self, directory: str | os.PathLike, *, max_items: int = 10000, max_bytes: int = 64 << 20) -> None:
        if max_items < 1 or max_bytes < 1:
            raise UsageError(f"a spool needs max_items >= 1 and max_bytes >= 1, got {max_items} and {max_bytes}")
        self.directory = Path(directory)
        self.max_items, self.max_bytes = max_items, max_bytes
        self.dropped = 0
        self.corrupt = 0
        self._lock = threading.Lock()
        self._items: OrderedDict[str, int] = OrderedDict()  # id -> file size, oldest first
        self._bytes = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        """Index the item files already there (oldest first), and move aside the partial writes of a crash."""
        last = 0
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                self._move_aside(path)
            elif path.suffix == _SUFFIX and path.is_file():
                self._items[path.stem] = path.stat().st_size
                self._bytes += self._items[path.stem]
                last = max(last, int(path.stem.split("-")[0]) if path.stem.split("-")[0].isdigit() else 0)
        # Ids start at the clock in microseconds, so that they grow across runs too (a receiver may keep them).
        self._seq = max(last, int(time.time() * 1e6))

    def _path(self, item_id: str) -> Path:
        return self.directory / f"{item_id}{_SUFFIX}"

    def _move_aside(self, path: Path) -> None:
        target = self.directory / _CORRUPT_DIR
        target.mkdir(exist_ok=True)
        try:
            os.replace(path, target / path.name)
        except FileNotFoundError:
            return
        self.corrupt += 1

    def _write(self, item_id: str, data: bytes) -> None:
        tmp = self.directory / f".{item_id}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(item_id))
        fsync_dir(self.directory)

    def put(self, payload: bytes, *, key: str | None = None) -> str:
        """Store `payload` durably and return its id; when full, the oldest items are dropped (counted)."""
        data = _encode(key, bytes(payload), 0, time.time())
        if len(data) > self.max_bytes:
            raise UsageError(f"a spool item of {len(data)} bytes does not fit in max_bytes={self.max_bytes}")
        with self._lock:
            self._seq += 1
            item_id = f"{self._seq:016d}-{secrets.token_hex(3)}"
            victims = []
            while self._items and (len(self._items) >= self.max_items or self._bytes + len(data) > self.max_bytes):
                victim, size = self._items.popitem(last=False)
                self._bytes -= size
                victims.append(victim)
            self.dropped += len(victims)
        for victim in victims:
            self._path(victim).unlink(missing_ok=True)
        self._write(item_id, data)
        with self._lock:
            self._items[item_id] = len(data)
            self._bytes += len(data)
        return item_id

    def peek(self) -> SpoolItem | None:
        """The oldest pending item, or None when the spool is empty; unreadable files are moved aside on the way."""
        while True:
            with self._lock:
                if not self._items:
                    return None
                item_id = next(iter(self._items))
            try:
                return _decode(item_id, self._path(item_id).read_bytes())
            except FileNotFoundError:  # dropped by a put meanwhile
                self._forget(item_id)
            except (CorruptItemError, OSError):
                self._forget(item_id)
                self._move_aside(self._path(item_id))

    def _forget(self, item_id: str) -> bool:
        with self._lock:
            size = self._items.pop(item_id, None)
            if size is None:
                return False
            self._bytes -= size
            return True

    def ack(self, item_id: str) -> bool:
        """Remove a delivered (or given up) item; False when it was no longer there (dropped meanwhile)."""
        known = self._forget(item_id)
        self._path(item_id).unlink(missing_ok=True)
        return known

    def retry_later(self, item_id: str) -> None:
        """Count one more delivery attempt of `item_id` (persisted); the item stays where it is in the queue."""
        with self._lock:
            if item_id not in self._items:
                return
        path = self._path(item_id)
        try:
            item = _decode(item_id, path.read_bytes())
        except FileNotFoundError:
            self._forget(item_id)
            return
        except (CorruptItemError, OSError):
            self._forget(item_id)
            self._move_aside(path)
            return
        data = _encode(item.key, item.payload, item.attempts + 1, item.created)
        self._write(item_id, data)
        with self._lock:
            still = item_id in self._items
            if still:
                self._bytes += len(data) - self._items[item_id]
                self._items[item_id] = len(data)
        if not still:  # dropped while it was rewritten: do not bring it back
            path.unlink(missing_ok=True)

    def __contains__(self, item_id: object) -> bool:
        with self._lock:
            return item_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes(self) -> int:
        """Bytes on disk taken by the pending items."""
        with self._lock:
            return self._bytes
