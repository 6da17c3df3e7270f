"""`stp-edge score`: run a bundle over an archive of videos, one JSONL of `SnippetResult`s per video.

    score_videos("archive/*.mp4", "model.stp", "results/", ray=True)

Each `<video stem>.jsonl` holds the lines `stp-edge run --jsonl` writes (`stp_edge.run.JsonlSink`, final results
of `stp_edge.run.run_video`), written under a temporary name and renamed. Resumable: the folder records which
bundle scored it (`SCORE_MARKER`); a rerun with the same bundle skips the videos already done.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stp_edge.scale.features import write_atomic
from stp_edge.scale.jobs import ArchiveReport, JobOutput, prepare_outputs, run_archive

SCORE_MARKER = ".stp-edge-score.json"


def bundle_identity(bundle: Any) -> str:
    """sha256 of a bundle's file hashes and config: equal bundles give equal results."""
    doc = {"files": bundle.manifest["files"], "config": bundle.manifest["config"]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _score_job(detector: Any, row: dict[str, Any]) -> JobOutput:
    """Per-video job (`stp_edge.scale.jobs`): the video's JSONL bytes, its snippets and anomalous snippets."""
    from stp_edge.run import run_video

    lines = io.StringIO()
    results = run_video(row["video"], detector=detector, jsonl=lines, keep=False)
    return JobOutput(lines.getvalue().encode("utf-8"), results.snippets, results.anomalous)


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
        resume: Skip videos whose results this bundle already wrote; False: score every video again.
        ray: Run as a Ray Data pipeline (`stp_edge.scale.jobs.run_ray`); the results are the same lines.
        workers: Ray actors (default: one per CPU of the cluster).
        ray_address: Ray cluster to join (default: the connected one, `RAY_ADDRESS`, or a new local one).

    Returns:
        An `ArchiveReport` (job "score"); `report.failed` names videos that could not be read.
    """
    from stp_edge.bundle import Bundle

    started = time.perf_counter()
    out = Path(out_dir)
    targets, partials = prepare_outputs(videos, out, ".jsonl")
    loaded = Bundle.load(bundle)
    identity = bundle_identity(loaded)
    marker = out / SCORE_MARKER
    same_bundle = resume and marker.is_file() and json.loads(marker.read_text()).get("bundle") == identity
    write_atomic(marker, json.dumps({"bundle": identity, "path": str(loaded.path)}).encode())
    report = ArchiveReport("score", out, loaded.path, identity, partials_removed=partials, anomalous=0)
    rows = []
    for video, target in targets.items():
        if same_bundle and target.is_file():
            report.skipped.append(target)
        else:
            rows.append({"video": str(video), "out": str(target)})
    return run_archive(report, rows, _score_job, started=started, backend=backend, progress=progress, ray=ray,
                       workers=workers, ray_address=ray_address)
