"""`stp-edge score`: run a bundle over an archive of videos, one JSONL of `SnippetResult`s per video.

    score_videos("archive/*.mp4", "model.stp", "results/", ray=True)

Each `<video stem>.jsonl` holds the lines `stp-edge run --jsonl` writes (`stp_edge.run.JsonlSink`, final results
of `stp_edge.run.run_video`), written under a temporary name and renamed, with its record beside it
(`.<video stem>.jsonl.record.json`: the bundle identity, the video's identity when it was read, the file's
sha256; `stp_edge.scale.records`). Resumable: a rerun keeps a file only when its record names this bundle and
the video as it is now, and the file is intact; every other file is scored again. So an interrupted rerun with
another bundle never leaves a folder whose files claim one bundle and hold another's results. The folder marker
`.stp-edge-score.json` of earlier versions is no longer read, and is removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stp_edge.scale.jobs import ArchiveReport, JobOutput, existing_output, prepare_outputs, run_archive, video_row

LEGACY_MARKER = ".stp-edge-score.json"  # the folder-wide bundle claim of earlier versions (records replace it)


def bundle_identity(bundle: Any) -> str:
    """sha256 of a bundle's file hashes and config: equal bundles give equal results."""
    doc = {"files": bundle.manifest["files"], "config": bundle.manifest["config"]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _score_job(detector: Any, row: dict[str, Any]) -> JobOutput:
    """Per-video job (`stp_edge.scale.jobs`): the video's JSONL bytes, its snippets and anomalous snippets."""
    from stp_edge.run import run_video

    lines = io.StringIO()
    results = run_video(row["video"], detector=detector, jsonl=lines, keep=False)
    st = results.stats
    return JobOutput(lines.getvalue().encode("utf-8"), results.snippets, results.anomalous, read=st.read,
                     dropped=st.dropped, expected=st.expected)


def score_videos(videos: str | Path | Sequence[str | Path], bundle: str | Path, out_dir: str | Path, *,
                 backend: str = "auto", progress: bool = True, resume: bool = True, ray: bool = False,
                 workers: int | None = None, ray_address: str | None = None) -> ArchiveReport:
    """Score every video with `bundle`; write `<out_dir>/<video stem>.jsonl` of its final `SnippetResult`s.

    Args:
        videos: A folder, glob, `.txt` list or file, or a sequence of them.
        bundle: The bundle to run.
        out_dir: Results folder (created).
        backend: "auto" or a backend name, as `Detector.load`.
        progress: Show a progress bar over videos.
        resume: Keep the results this bundle already wrote for the videos as they are now (each file verified
            against its record); False: score every video again.
        ray: Run as a Ray Data pipeline (`stp_edge.scale.jobs.run_ray`); the results are the same lines.
        workers: Ray actors (default: one per CPU of the cluster).
        ray_address: Ray cluster to join (default: the connected one, `RAY_ADDRESS`, or a new local one).

    Returns:
        An `ArchiveReport` (job "score"); `report.failed` names videos that could not be read, `report.redone`
        existing files that could not be kept and why, `report.truncated` videos read short.
    """
    from stp_edge.bundle import Bundle

    started = time.perf_counter()
    out = Path(out_dir)
    loaded = Bundle.load(bundle)
    targets, partials = prepare_outputs(videos, out, ".jsonl")
    if (out / LEGACY_MARKER).is_file():
        (out / LEGACY_MARKER).unlink()
    identity = bundle_identity(loaded)
    report = ArchiveReport("score", out, loaded.path, identity, partials_removed=partials, anomalous=0)
    rows = []
    for video, target in targets.items():
        row = video_row(video, target, identity)
        verdict = existing_output(row, resume=resume, what="bundle")
        if verdict.state == "done":
            report.keep(target, video, verdict)
        else:
            report.redo(target, verdict)
            rows.append(row)
    return run_archive(report, rows, _score_job, started=started, backend=backend, progress=progress, ray=ray,
                       workers=workers, ray_address=ray_address)
