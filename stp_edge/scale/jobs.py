"""The archive job driver of `extract` and `score`: one output file per video, in this process or on Ray.

A job is a module-level function `job(detector, row) -> JobOutput`: it runs one video through the detector and
returns the bytes of its output file with its counts. `video_row` and `existing_output` decide, per video,
whether its existing output can be kept (`stp_edge.scale.records.check_output`: its record names this producer and
the video as it is now, and its bytes are intact) or must be made; `run_archive` runs the jobs of the videos
still to do, shows one progress bar over videos and records every outcome in one `ArchiveReport`. Both runners
write each output and then its record (`write_output`) and yield one small status dict per video
(`STATUS_KEYS`): `video`, `out`, `snippets`, `anomalous`, `backend`, `pid` (the process that ran it),
`truncated` (`run`'s note for a video whose container promised more frames than were read, else ""), `error`
("" when it succeeded). A video that cannot be decoded is reported, not raised, so one bad file does not stop
an archive.

The Ray pipeline: read rows (one per video, one block each) -> `map_batches` on an actor pool, each actor
holding one Detector for all its videos (decode + preprocess + encode) -> `map_batches` tasks that write.
Ray is imported only here, when a Ray run is asked for.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from stp_edge.report import plural
from stp_edge.scale.features import remove_partials, write_atomic
from stp_edge.scale.inputs import expand_videos, output_names
from stp_edge.scale.records import Verdict, check_output, make_record, record_path, truncation_note, video_identity

STATUS_KEYS = ("video", "out", "snippets", "anomalous", "backend", "pid", "truncated", "error")


class JobOutput(NamedTuple):
    """What a job made of one video.

    Attributes:
        data: The output file's bytes.
        snippets: Snippets run.
        anomalous: Final results at or above the threshold (score only).
        read / dropped / expected: The decoder's frame counts (`stp_edge.video.VideoStats`); `expected` is what
            the container promised (None when it does not say).
        extra: Fields the job adds to the output's record (extract: the label).
    """

    data: bytes
    snippets: int
    anomalous: int = 0
    read: int = 0
    dropped: int = 0
    expected: int | None = None
    extra: dict[str, Any] | None = None


Job = Callable[[Any, dict[str, Any]], JobOutput]


@dataclass
class ArchiveReport:
    """What an archive run (`extract_features`, `score_videos`) did.

    Attributes:
        job: "extract" or "score".
        out_dir: The output folder.
        bundle: The bundle that ran.
        fingerprint: What decided the outputs: the feature fingerprint recorded in every `.npz` (extract), the
            bundle identity recorded in the folder (score).
        backends: Backends that ran ("ort-cpu", "trt", ...; one per node type under Ray).
        workers: Ray actors asked for (1 without Ray).
        processes: Distinct processes that ran videos in this run.
        written: Files made and written by this run.
        skipped: Files already done (kept as they are: record, producer, video and bytes verified).
        relabelled: Feature files kept but given a new label (extract only).
        redone: Existing files that could not be kept -> why (`stp_edge.scale.records`); they are made again.
        failed: video -> why it could not be read.
        truncated: video -> `run`'s note for a video whose container promised more frames than were read (its
            output holds what was read; the run still succeeds, as `stp-edge run` does).
        partials_removed: Temporary files of a killed run that were deleted.
        snippets: Snippets run by this run.
        anomalous: Final results at or above the threshold (score); None where nothing is scored (extract).
        wall_s: Seconds the run took.
    """

    job: str
    out_dir: Path
    bundle: Path
    fingerprint: str = ""
    backends: list[str] = field(default_factory=list)
    workers: int = 1
    processes: int = 0
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    relabelled: list[Path] = field(default_factory=list)
    redone: dict[Path, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    truncated: dict[str, str] = field(default_factory=dict)
    partials_removed: int = 0
    snippets: int = 0
    anomalous: int | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every video has its output file."""
        return not self.failed

    def keep(self, out: Path, video: Path, verdict: Verdict) -> None:
        """Record an output kept as it is (and its video's truncation, read when it was made)."""
        self.skipped.append(out)
        if verdict.truncated:
            self.truncated[str(video)] = verdict.truncated

    def redo(self, out: Path, verdict: Verdict) -> None:
        """Record why an existing output is made again (nothing for one that does not exist)."""
        if verdict.state == "redo":
            self.redone[out] = verdict.why

    def summary(self) -> str:
        """One paragraph for the CLI."""
        rate = self.snippets / self.wall_s if self.wall_s else 0.0
        extract = self.job == "extract"
        counts = [f"{len(self.written)} written", f"{len(self.skipped)} already done",
                  *([f"{len(self.relabelled)} relabelled"] if extract else []), f"{len(self.failed)} failed"]
        snippets = plural(self.snippets, "snippet")
        snippets += "" if self.anomalous is None else f" ({self.anomalous} anomalous)"
        ran = ", ".join(self.backends) or ("no encoder run" if extract else "no model run")
        lines = [f"{self.job}: {', '.join(counts)}; {snippets} in {self.wall_s:.1f} s ({rate:.1f} snippets/s, "
                 f"{self.workers} worker(s), {ran}) -> {self.out_dir}"]
        if self.partials_removed:
            lines.append(f"removed {self.partials_removed} temporary file(s) of an interrupted run")
        if self.redone:
            whys = [self.redone[p] for p in sorted(self.redone)]
            counts = ", ".join(f"{whys.count(why)} {why}" for why in dict.fromkeys(whys))
            lines.append(f"redid {len(self.redone)} existing file(s) that could not be kept: {counts}")
        lines += [f"TRUNCATED {video}: {note}" for video, note in sorted(self.truncated.items())]
        lines += [f"FAILED {video}: {why}" for video, why in sorted(self.failed.items())]
        return "\n".join(lines)


def prepare_outputs(videos: str | Path | Sequence[str | Path], out_dir: Path,
                    suffix: str) -> tuple[dict[Path, Path], int]:
    """The output folder of a run: created, cleared of the temporary files a killed run left.

    Returns:
        video -> its output file `<out_dir>/<stem><suffix>` for every video named (`expand_videos`), and how
        many temporary files were deleted.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = expand_videos(videos)
    names = output_names(files, suffix)
    return {video: out_dir / names[video] for video in files}, remove_partials(out_dir)


def video_row(video: Path, out: Path, producer: str, **job_keys: Any) -> dict[str, Any]:
    """The row of one video: `video`, `out`, `producer` (what must have made its output) and `video_id`.

    `video_id` is the video's `video_identity` now, taken before it is read (JSON null when it cannot be read:
    the job then reports why).
    """
    try:
        vid = video_identity(video)
    except OSError:
        vid = "null"
    return {"video": str(video), "out": str(out), "producer": producer, "video_id": vid, **job_keys}


def existing_output(row: dict[str, Any], *, resume: bool, what: str) -> Verdict:
    """Whether the row's existing output can be kept (`check_output`).

    With `resume=False`, or a video that cannot be read now (its job reports why), the output is made again
    without a verdict on the old one ("missing").
    """
    if not resume or row["video_id"] == "null":
        return Verdict("missing")
    return check_output(row["out"], row["producer"], row["video_id"], what)


def run_archive(report: ArchiveReport, rows: Sequence[dict[str, Any]], job: Job, *, started: float,
                backend: str = "auto", progress: bool = True, ray: bool = False, workers: int | None = None,
                ray_address: str | None = None) -> ArchiveReport:
    """Run `job` on every row (one video still to do each), recording each outcome in `report`.

    Args:
        report: The run's report, with the videos already done recorded.
        rows: One dict per video (`video`, `out` and the job's own keys; plain scalars).
        job: The per-video job (a module-level function, so Ray can ship it).
        started: `time.perf_counter()` when the command started (the report's `wall_s` counts from it).
        backend: "auto" or a backend name, as `Detector.load`.
        progress: Show a progress bar over videos.
        ray: Run as a Ray Data pipeline (`run_ray`); the outputs are the same files.
        workers: Ray actors (default: one per CPU of the cluster, at most one per video).
        ray_address: Ray cluster to join (default: the connected one, `RAY_ADDRESS`, or a new local one).

    Returns:
        `report`, completed.
    """
    from tqdm.auto import tqdm

    backends: set[str] = set()
    pids: set[int] = set()
    bar = tqdm(total=len(rows), desc=report.job, unit="video", disable=not progress or not rows)

    def record(status: dict[str, Any]) -> None:
        backends.add(str(status["backend"]))
        pids.add(int(status["pid"]))
        if status["error"]:
            report.failed[str(status["video"])] = str(status["error"])
        else:
            if status["truncated"]:
                report.truncated[str(status["video"])] = str(status["truncated"])
            report.written.append(Path(str(status["out"])))
            report.snippets += int(status["snippets"])
            if report.anomalous is not None:
                report.anomalous += int(status["anomalous"])
        bar.update()
        counts = {"snippets": report.snippets, "failed": len(report.failed)}
        bar.set_postfix(counts if report.anomalous is None else {**counts, "anomalous": report.anomalous})

    try:
        if rows and ray:
            with ray_cluster(ray_address) as cluster:
                report.workers = min(workers or max(1, int(cluster.cluster_resources().get("CPU", 1))), len(rows))
                for status in run_ray(rows, job, report.bundle, backend=backend, workers=report.workers):
                    record(status)
        elif rows:
            with load_detector(report.bundle, backend) as det:
                for status in run_local(rows, job, det):
                    record(status)
    finally:
        bar.close()
        report.backends = sorted(backends)
        report.processes = len(pids)
        report.written.sort()
        report.wall_s = time.perf_counter() - started
    return report


def _per_video_errors() -> tuple[type[BaseException], ...]:
    """What fails one video and not the archive: its file, a frame, or a graph output or call on its frames."""
    from stp_edge.errors import FrameError, InferenceError
    from stp_edge.video import VideoError

    return VideoError, FrameError, InferenceError, OSError


def load_detector(bundle: str | Path, backend: str = "auto", threads: int | None = None) -> Any:
    """A Detector on `bundle`; with `threads`, its ONNX Runtime sessions use that many threads per operator.

    A Ray actor that owns one CPU should not start an ONNX Runtime pool sized for the whole machine.
    """
    from stp_edge.api import Detector
    from stp_edge.backends import choose_backend, create_runners
    from stp_edge.bundle import Bundle
    from stp_edge.pipeline.encode import make_preprocess

    if threads is None:
        return Detector.load(bundle, backend=backend)
    b = Bundle.load(bundle)
    choice = choose_backend(backend, b)
    name = choice.name
    runners = create_runners(b, name, engine=choice.engine,
                             encoder_precision=choice.form.hint if choice.form else None)  # OpenVINO's bf16
    for runner in runners.values():
        if hasattr(runner, "intra_op_num_threads"):  # OrtRunner, read when it activates
            runner.intra_op_num_threads = threads
    pre = make_preprocess("auto", b.config.vision.image_size, backend=name, host_crops=b.host_crops,
                          spec=b.preprocess_spec)
    return Detector(b, runners, pre, spatial_on=b.config.spatial_on, backend=name)


def run_one(job: Job, detector: Any, row: dict[str, Any]) -> tuple[bytes, bytes, dict[str, Any]]:
    """Run `job` on one row: (output bytes, its record, status).

    A video that cannot be read gives b"", b"" and its error in the status.
    """
    status = {"video": row["video"], "out": row["out"], "snippets": 0, "anomalous": 0, "backend": detector.backend,
              "pid": os.getpid(), "truncated": "", "error": ""}
    try:
        out = job(detector, row)
    except _per_video_errors() as exc:
        status["error"] = f"{type(exc).__name__}: {exc}"
        return b"", b"", status
    status["snippets"], status["anomalous"] = out.snippets, out.anomalous
    status["truncated"] = truncation_note(out.read, out.dropped, out.expected)
    record = make_record(out.data, row, read=out.read, dropped=out.dropped, expected=out.expected,
                         backend=detector.backend, extra=out.extra)
    return out.data, record, status


def write_output(out: str | Path, data: bytes, record: bytes) -> None:
    """Write an output, then its record (`stp_edge.scale.records`), each atomically.

    The old record goes first, so no moment has a record vouching for bytes it did not describe; a run killed
    between the writes leaves an output without a record, which the next run makes again.
    """
    record_path(out).unlink(missing_ok=True)
    write_atomic(out, data)
    write_atomic(record_path(out), record)


def run_local(rows: Sequence[dict[str, Any]], job: Job, detector: Any) -> Iterator[dict[str, Any]]:
    """Run `job` over `rows` one video after the other in this process, writing each output and its record."""
    for row in rows:
        data, record, status = run_one(job, detector, row)
        if not status["error"]:
            write_output(row["out"], data, record)
        yield status


def require_ray() -> Any:
    """The `ray` module with Ray Data, or an ImportError naming the extra that installs it."""
    from stp_edge._deps import require

    ray = require("ray", "--ray")
    require("ray.data", "--ray")
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """The Ray cluster to run on: the one this process is connected to, `address`, or a new local one.

    A cluster started here (no `address` and not yet connected; `RAY_ADDRESS` is honoured by Ray itself) is
    shut down on exit; one that was already connected is left as it was.
    """
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False} if address is None else {}
        ray.init(address=address, num_cpus=num_cpus if address is None else None, **kwargs)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


class VideoActor:
    """A Ray Data actor: one Detector for its lifetime, one video per call (decode, preprocess, encode)."""

    def __init__(self, job: Job, bundle: str, backend: str, threads: int | None) -> None:
        import cv2

        cv2.setNumThreads(threads or 0)
        self.job = job
        self.detector = load_detector(bundle, backend, threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        out: dict[str, list[Any]] = {k: [] for k in (*STATUS_KEYS, "data", "record")}
        for row in rows:
            data, record, status = run_one(self.job, self.detector, {k: _plain(v) for k, v in row.items()})
            for k in STATUS_KEYS:
                out[k].append(status[k])
            out["data"].append(data)
            out["record"].append(record)
        return out


def _plain(value: Any) -> Any:
    """A NumPy scalar of a Ray batch as the Python value the job expects."""
    return value.item() if hasattr(value, "item") else value


def write_outputs(batch: dict[str, Any]) -> dict[str, list[Any]]:
    """Ray Data write stage: write each successful row's output and record (`write_output`); pass the status on."""
    n = len(batch["video"])
    for i in range(n):
        if not batch["error"][i]:
            write_output(str(batch["out"][i]), bytes(batch["data"][i]), bytes(batch["record"][i]))
    return {k: [_plain(v) for v in batch[k]] for k in STATUS_KEYS}


def run_ray(rows: Sequence[dict[str, Any]], job: Job, bundle: str | Path, *, backend: str = "auto",
            workers: int | None = None, cpus_per_worker: float = 1.0) -> Iterator[dict[str, Any]]:
    """Run `job` over `rows` as a Ray Data pipeline on the connected cluster (see `ray_cluster`).

    Args:
        rows: One dict per video (`video`, `out` and the job's own keys; plain scalars).
        job: The per-video job (a module-level function, so Ray can ship it).
        bundle: Bundle directory, readable at the same path on every node.
        backend: Backend each actor resolves on its own node ("auto": the fastest there).
        workers: Actors (each holds one Detector); default: the cluster's CPUs / `cpus_per_worker`, at most
            one per video.
        cpus_per_worker: CPUs reserved per actor; also its ONNX Runtime and OpenCV thread count.

    Yields:
        One status dict per video (`STATUS_KEYS`), as videos finish.
    """
    ray = require_ray()
    if not rows:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller shows one bar over videos
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_worker))
    workers = max(1, min(workers, len(rows)))
    threads = max(1, int(cpus_per_worker))
    ds = ray.data.from_items(list(rows), override_num_blocks=len(rows))
    ds = ds.map_batches(VideoActor, batch_size=1, num_cpus=cpus_per_worker,
                        fn_constructor_kwargs={"job": job, "bundle": str(bundle), "backend": backend,
                                               "threads": threads},
                        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1))
    # Writing is I/O: with a CPU share it would wait for the actors to free one, and stall the pipeline.
    ds = ds.map_batches(write_outputs, batch_size=1, num_cpus=0)
    yield from ds.iter_rows()
