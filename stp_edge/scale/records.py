"""What made an archive output, kept beside it, so a rerun keeps only outputs it can prove are current.

Each output `NAME` of `extract`/`score` (`<stem>.npz`, `<stem>.jsonl`) gets a record `.NAME.record.json`, written
after the output itself (both under a temporary name, then renamed). The record holds the identity of the
producer (the feature fingerprint or the bundle identity), the identity of the video when it was read (size,
modification time, sha256 of its first and last 64 KiB), the output's size and sha256, and the frame counts of
the decode. A rerun keeps an output only when its record parses, names the same producer and the same video
identity, and the output's bytes still hash to the recorded sha256: an empty, cut or altered output, an output
written by another bundle, one whose video was replaced under the same name, or one with no record (a run killed
between the two writes, a file from an older stp-edge) is made again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD_SUFFIX = ".record.json"
RECORD_SCHEMA = 1
_SAMPLE = 64 * 1024  # bytes hashed at each end of a video: a replaced file differs there (headers, index)

# Why an existing output is made again (ArchiveReport.redone), one short phrase each.
NO_RECORD = "no record of a finished write"
BAD_RECORD = "unreadable record"
OTHER_PRODUCER = "made by another {what}"
VIDEO_CHANGED = "video replaced or changed since it was read"
OUTPUT_DAMAGED = "output damaged (empty, cut or altered)"


def record_path(out: str | Path) -> Path:
    """The record file beside output `out`: `.NAME.record.json`."""
    out = Path(out)
    return out.with_name(f".{out.name}{RECORD_SUFFIX}")


def video_identity(path: str | Path) -> str:
    """The identity of a video file as JSON text: size, mtime (ns) and sha256 of its first and last 64 KiB.

    Cheap on any archive (two small reads per video), and a file replaced under the same name differs in at least
    one of them: a new encode changes the size or the container's header and index at the ends.
    """
    path = Path(path)
    st = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(_SAMPLE))
        if st.st_size > 2 * _SAMPLE:
            fh.seek(-_SAMPLE, os.SEEK_END)
        digest.update(fh.read(_SAMPLE))
    doc = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample_sha256": digest.hexdigest()}
    return json.dumps(doc, sort_keys=True)


def truncation_note(read: int, dropped: int, expected: int | None) -> str:
    """`run`'s TRUNCATED wording for a video whose container promised more frames than were read; "" if none."""
    if expected is None or expected - read - dropped <= 0:
        return ""
    return f"the container promised {expected} frames, {read} were read ({dropped} dropped)"


def make_record(data: bytes, row: dict[str, Any], *, read: int, dropped: int, expected: int | None,
                backend: str, extra: dict[str, Any] | None = None) -> bytes:
    """The record of output bytes `data` made from `row` (keys `video`, `producer`, `video_id`), as JSON bytes."""
    doc = {"schema": RECORD_SCHEMA, "producer": row["producer"], "video": str(row["video"]),
           "video_id": json.loads(row["video_id"]), "output": {"size": len(data),
                                                                "sha256": hashlib.sha256(data).hexdigest()},
           "frames": {"read": read, "dropped": dropped, "expected": expected}, "backend": backend,
           **(extra or {})}
    return json.dumps(doc, sort_keys=True).encode()


def updated_record(record: dict[str, Any], data: bytes, **fields: Any) -> bytes:
    """`record` for new output bytes `data` (same producer and video), with `fields` changed (a new label)."""
    doc = {**record, **fields, "output": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    return json.dumps(doc, sort_keys=True).encode()


@dataclass(frozen=True)
class Verdict:
    """Whether an existing output can be kept.

    Attributes:
        state: "missing" (no output), "done" (keep it) or "redo".
        why: For "redo": the reason (one of the phrases above).
        record: For "done": the parsed record.
    """

    state: str
    why: str = ""
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def truncated(self) -> str:
        """The truncation note of a kept output's video (`truncation_note`), "" when it was read whole."""
        frames = self.record.get("frames") or {}
        try:
            return truncation_note(int(frames["read"]), int(frames["dropped"]), frames["expected"])
        except (KeyError, TypeError, ValueError):
            return ""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != RECORD_SCHEMA:
        return None
    out = doc.get("output")
    if not isinstance(out, dict) or not isinstance(out.get("sha256"), str) or not isinstance(out.get("size"), int):
        return None
    return doc


def check_output(out: str | Path, producer: str, video_id: str, what: str = "bundle") -> Verdict:
    """Verify an existing output against its record, the current producer and the video as it is now.

    Args:
        out: The output file.
        producer: The identity that must have made it (feature fingerprint or bundle identity).
        video_id: `video_identity` of its video now.
        what: What the producer is, for the reason ("bundle", "encoder").
    """
    out = Path(out)
    if not out.is_file():
        return Verdict("missing")
    doc = _read_record(record_path(out)) if record_path(out).is_file() else None
    if doc is None:
        return Verdict("redo", NO_RECORD if not record_path(out).exists() else BAD_RECORD)
    if doc.get("producer") != producer:
        return Verdict("redo", OTHER_PRODUCER.format(what=what))
    if doc.get("video_id") != json.loads(video_id):
        return Verdict("redo", VIDEO_CHANGED)
    try:
        intact = out.stat().st_size == doc["output"]["size"] and _sha256_file(out) == doc["output"]["sha256"]
    except OSError:
        intact = False
    return Verdict("done", record=doc) if intact else Verdict("redo", OUTPUT_DAMAGED)
