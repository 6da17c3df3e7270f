"""Snippet features of one video through the runtime's own encode stage, and the `.npz` file that holds them.

The features are computed by `stp_edge.pipeline.encode.Encoder` (the Detector's encode stage) on the snippets of
`stp_edge.pipeline.snippets.SnippetAssembler`, so training reads the numbers deployment computes. A file is
written under a temporary name and renamed, so a killed run leaves whole files or none; each file records the
fingerprint of what decided its features, and its record beside it (`stp_edge.scale.records`) the fingerprint,
the video's identity and the file's sha256, so a later run knows whether it can keep it.

`.npz` keys: frame_emb [T,E] float32, region_emb [T,R2,E] float32, label (class index, 0 = normal, -1 =
unlabelled), class_name, frame_ranges [T,2] int64 ([start, end) of each snippet), fingerprint, video, backend,
num_frames, dropped_frames, expected_frames (what the container promised; -1 when it does not say), fps (NaN when
unknown).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stp_edge.bundle import Bundle
from stp_edge.config import STPromptConfig
from stp_edge.errors import UsageError
from stp_edge.pipeline.encode import EncodedBatch
from stp_edge.pipeline.snippets import Snippet, SnippetAssembler
from stp_edge.scale.inputs import VideoLabel

PARTIAL = ".partial-"  # temporary files are `.<name>.partial-<random>`: hidden, and not `*.npz` for the trainer


def feature_fingerprint(bundle: Bundle) -> str:
    """sha256 of everything that decides the features: the encoder graph's bytes, preprocessing, snippets, regions.

    The heads are left out: a bundle re-exported after training keeps its encoder, and so its fingerprint.
    """
    cfg, m = bundle.config, bundle.manifest
    encoder_file = m["graphs"]["encoder"]["file"]
    doc = {"encoder_sha256": m["files"][encoder_file], "preprocess": m["preprocess"],
           "vision": dataclasses.asdict(cfg.vision), "snippet_len": cfg.snippet_len,
           "frames_per_snippet": cfg.frames_per_snippet, "region_mode": cfg.region_mode,
           "region_grid": cfg.region_grid}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class VideoFeatures:
    """Features of one video: one row per snippet, in order."""

    video: str
    frame_emb: np.ndarray  # [T, E]
    region_emb: np.ndarray  # [T, R2, E]
    frame_ranges: np.ndarray  # [T, 2]: [start, end) of each snippet
    num_frames: int
    dropped_frames: int
    fps: float | None
    expected_frames: int | None = None  # what the container promised (more than read + dropped: truncated)


def encode_video(encode: Callable[[Sequence[Snippet]], EncodedBatch], config: STPromptConfig, path: str | Path, *,
                 batch: int = 16) -> VideoFeatures:
    """Decode a video, cut it into snippets as the runtime does, and encode `batch` snippets per call.

    Args:
        encode: The encode stage (`Detector.encoder`).
        config: The bundle's config (snippet length, sampled frames).
        path: The video file.
        batch: Snippets per encoder call.

    Raises:
        VideoError: The file cannot be opened or has no decodable frame.
    """
    from stp_edge.video import open_source

    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    asm = SnippetAssembler(config.snippet_len, config.frames_per_snippet)
    pending: list[Snippet] = []
    parts: list[EncodedBatch] = []
    with open_source(path) as src:
        for frame, _gap in src.frames_with_gaps(lazy=True):  # MJPEG: only sampled frames are decoded
            snippet = asm.push(frame)
            if snippet is not None:
                pending.append(snippet)
            if len(pending) == batch:
                parts.append(encode(pending))
                pending = []
        tail = asm.flush()
        pending += [tail] if tail is not None else []
        if pending:
            parts.append(encode(pending))
        stats, fps = src.stats, src.fps
    ranges = [(s.frame_start, s.frame_end) for p in parts for s in p.snippets]
    return VideoFeatures(str(path), np.concatenate([p.frame_emb for p in parts]),
                         np.concatenate([p.region_emb for p in parts]), np.asarray(ranges, dtype=np.int64),
                         stats.read, stats.dropped, fps, stats.expected)


def features_npz(feats: VideoFeatures, label: VideoLabel, fingerprint: str, backend: str) -> bytes:
    """The `.npz` file of a video's features (module docstring), as bytes."""
    buf = io.BytesIO()
    np.savez(buf, frame_emb=feats.frame_emb.astype(np.float32, copy=False),
             region_emb=feats.region_emb.astype(np.float32, copy=False), label=np.int64(label.index),
             class_name=np.str_(label.name), frame_ranges=feats.frame_ranges, fingerprint=np.str_(fingerprint),
             video=np.str_(feats.video), backend=np.str_(backend), num_frames=np.int64(feats.num_frames),
             dropped_frames=np.int64(feats.dropped_frames),
             expected_frames=np.int64(-1 if feats.expected_frames is None else feats.expected_frames),
             fps=np.float64(feats.fps if feats.fps is not None else np.nan))
    return buf.getvalue()


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary name beside `path`, flush it to disk, rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{PARTIAL}{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_partials(out_dir: str | Path) -> int:
    """Delete the temporary files a killed run left in `out_dir`; returns how many."""
    stale = [p for p in Path(out_dir).glob(f".*{PARTIAL}*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def relabelled_npz(path: Path, label: VideoLabel) -> bytes:
    """An existing feature file with a new label, as bytes (the features are kept, not recomputed)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(label=np.int64(label.index), class_name=np.str_(label.name))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
