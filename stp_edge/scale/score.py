"""`stp-edge score`: run a bundle over an archive of videos, one JSONL of `SnippetResult`s per video.

    score_videos("archive/*.mp4", "model.stp", "results/", ray=True)

Each `<video stem>.jsonl` holds the lines `stp-edge run --jsonl` writes (`SnippetResult.to_dict()`, final
results of `stp_edge.api.run_video`), written under a temporary name and renamed. Resumable: the folder records
which bundle scored it (`SCORE_MARKER`); a rerun with the same bundle skips the videos already done.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stp_edge.scale.features import remove_partials, write_atomic
from stp_edge.scale.inputs import expand_videos, output_names

SCORE_MARKER = ".stp-edge-score.json"


@dataclass
class ScoreReport:
    """What a scoring run did: files written and skipped, failures, snippets, time (as `ExtractReport`)."""

    out_dir: Path
    bundle: Path
    backends: list[str] = field(default_factory=list)
    workers: int = 1
    processes: int = 0
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    snippets: int = 0
    anomalous: int = 0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every video has its results file."""
        return not self.failed

    def summary(self) -> str:
        """One paragraph for the CLI."""
        rate = self.snippets / self.wall_s if self.wall_s else 0.0
        lines = [f"score: {len(self.written)} written, {len(self.skipped)} already done, {len(self.failed)} failed; "
                 f"{self.snippets} snippets ({self.anomalous} anomalous) in {self.wall_s:.1f} s ({rate:.1f} "
                 f"snippets/s, {self.workers} worker(s), {', '.join(self.backends) or 'no model run'}) "
                 f"-> {self.out_dir}"]
        lines += [f"FAILED {video}: {why}" for video, why in sorted(self.failed.items())]
        return "\n".join(lines)


def bundle_identity(bundle: Any) -> str:
    """sha256 of a bundle's file hashes and config: equal bundles give equal results."""
    doc = {"files": bundle.manifest["files"], "config": bundle.manifest["config"]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _score_job(detector: Any, row: dict[str, Any]) -> tuple[bytes, int]:
    """Per-video job (`stp_edge.scale.jobs`): the video's JSONL bytes and its snippet count."""
    from stp_edge.api import run_video

    results = run_video(row["video"], detector=detector)
    lines = "".join(json.dumps(r.to_dict()) + "\n" for r in results)
    return lines.encode("utf-8"), len(results)


def score_videos(videos: str | Path | Sequence[str | Path], bundle: str | Path, out_dir: str | Path, *,
                 backend: str = "auto", progress: bool = True, resume: bool = True, ray: bool = False,
                 workers: int | None = None, ray_address: str | None = None) -> ScoreReport:
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
        A `ScoreReport`; `report.failed` names videos that could not be read.
    """
    from stp_edge.bundle import Bundle

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = expand_videos(videos)
    names = output_names(files, ".jsonl")
    loaded = Bundle.load(bundle)
    identity = bundle_identity(loaded)
    marker = out / SCORE_MARKER
    same_bundle = resume and marker.is_file() and json.loads(marker.read_text()).get("bundle") == identity
    remove_partials(out)
    write_atomic(marker, json.dumps({"bundle": identity, "path": str(loaded.path)}).encode())
    report = ScoreReport(out, loaded.path)
    rows = []
    for video in files:
        target = out / names[video]
        if same_bundle and target.is_file():
            report.skipped.append(target)
        else:
            rows.append({"video": str(video), "out": str(target)})
    _run(rows, report, loaded.path, backend=backend, progress=progress, ray=ray, workers=workers,
         ray_address=ray_address)
    report.wall_s = time.perf_counter() - start
    return report


def _run(rows: list[dict[str, Any]], report: ScoreReport, bundle: Path, *, backend: str, progress: bool, ray: bool,
         workers: int | None, ray_address: str | None) -> None:
    from tqdm.auto import tqdm

    from stp_edge.scale.jobs import load_detector, ray_cluster, run_local, run_ray

    if not rows:
        return
    bar = tqdm(total=len(rows), desc="score", unit="video", disable=not progress)
    backends: set[str] = set()
    pids: set[int] = set()

    def record(status: dict[str, Any]) -> None:
        backends.add(str(status["backend"]))
        pids.add(int(status["pid"]))
        if status["error"]:
            report.failed[str(status["video"])] = str(status["error"])
        else:
            path = Path(str(status["out"]))
            report.written.append(path)
            report.snippets += int(status["snippets"])
            report.anomalous += sum(json.loads(line)["is_anomaly"] for line in path.read_text().splitlines())
        bar.update()
        bar.set_postfix(snippets=report.snippets, anomalous=report.anomalous)

    try:
        if ray:
            with ray_cluster(ray_address) as cluster:
                report.workers = min(workers or max(1, int(cluster.cluster_resources().get("CPU", 1))), len(rows))
                for status in run_ray(rows, _score_job, bundle, backend=backend, workers=report.workers):
                    record(status)
        else:
            with load_detector(bundle, backend) as det:
                for status in run_local(rows, _score_job, det):
                    record(status)
    finally:
        bar.close()
        report.backends = sorted(backends)
        report.processes = len(pids)
        report.written.sort()


def score_cli(args: Any) -> int:
    """`stp-edge score`: the CLI's arguments -> `score_videos`; prints the report; 1 if a video failed."""
    report = score_videos(args.videos, args.bundle, args.out, backend=args.backend, resume=not args.no_resume,
                          ray=args.ray, workers=args.workers, ray_address=args.ray_address)
    print(report.summary())
    return 0 if report.ok else 1
