"""Run a per-video job over many videos: in this process, or as a Ray Data pipeline on a Ray cluster.

A job is a module-level function `job(detector, row) -> (data, snippets)`: it decodes, preprocesses and encodes
one video with the detector and returns the bytes of its output file. Both runners write those bytes with
`write_atomic` and yield one small status dict per video: `video`, `out`, `snippets`, `backend`, `pid` (the
process that ran it), `error` ("" when it succeeded). A video that cannot be decoded is reported, not raised,
so one bad file does not stop an archive.

The Ray pipeline: read rows (one per video, one block each) -> `map_batches` on an actor pool, each actor
holding one Detector for all its videos (decode + preprocess + encode) -> `map_batches` tasks that write.
Ray is imported only here, when a Ray run is asked for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stp_edge.scale.features import write_atomic

Job = Callable[[Any, dict[str, Any]], tuple[bytes, int]]
STATUS_KEYS = ("video", "out", "snippets", "backend", "pid", "error")


def _per_video_errors() -> tuple[type[BaseException], ...]:
    from stp_edge.pipeline.frames import FrameError
    from stp_edge.video import VideoError

    return VideoError, FrameError, OSError


def load_detector(bundle: str | Path, backend: str = "auto", threads: int | None = None) -> Any:
    """A Detector on `bundle`; with `threads`, its ONNX Runtime sessions use that many threads per operator.

    A Ray actor that owns one CPU should not start an ONNX Runtime pool sized for the whole machine.
    """
    from stp_edge.api import Detector
    from stp_edge.backends import create_runners, resolve_backend
    from stp_edge.bundle import Bundle
    from stp_edge.pipeline.encode import make_preprocess

    if threads is None:
        return Detector.load(bundle, backend=backend)
    b = Bundle.load(bundle)
    name = resolve_backend(backend, b)
    runners = create_runners(b, name)
    for runner in runners.values():
        if hasattr(runner, "intra_op_num_threads"):  # OrtRunner, read when it activates
            runner.intra_op_num_threads = threads
    pre = make_preprocess("auto", b.config.vision.image_size, backend=name, host_crops=b.host_crops)
    return Detector(b, runners, pre, spatial_on=b.config.spatial_on, backend=name)


def run_one(job: Job, detector: Any, row: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Run `job` on one row: (output bytes, status); a video that cannot be read gives b"" and its error."""
    status = {"video": row["video"], "out": row["out"], "snippets": 0, "backend": detector.backend,
              "pid": os.getpid(), "error": ""}
    try:
        data, status["snippets"] = job(detector, row)
    except _per_video_errors() as exc:
        status["error"] = f"{type(exc).__name__}: {exc}"
        return b"", status
    return data, status


def run_local(rows: Sequence[dict[str, Any]], job: Job, detector: Any) -> Iterator[dict[str, Any]]:
    """Run `job` over `rows` one video after the other in this process, writing each output."""
    for row in rows:
        data, status = run_one(job, detector, row)
        if not status["error"]:
            write_atomic(row["out"], data)
        yield status


def require_ray() -> Any:
    """The `ray` module with Ray Data, or an ImportError naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        from stp_edge._deps import MissingDependencyError

        raise MissingDependencyError(f"ray is not installed (needed for --ray): pip install 'stp-edge[scale]'. "
                                     f"Original error: {exc}") from exc
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
        out: dict[str, list[Any]] = {k: [] for k in (*STATUS_KEYS, "data")}
        for row in rows:
            data, status = run_one(self.job, self.detector, {k: _plain(v) for k, v in row.items()})
            for k in STATUS_KEYS:
                out[k].append(status[k])
            out["data"].append(data)
        return out


def _plain(value: Any) -> Any:
    """A NumPy scalar of a Ray batch as the Python value the job expects."""
    return value.item() if hasattr(value, "item") else value


def write_outputs(batch: dict[str, Any]) -> dict[str, list[Any]]:
    """Ray Data write stage: write each successful row's bytes atomically; pass the status on."""
    n = len(batch["video"])
    for i in range(n):
        if not batch["error"][i]:
            write_atomic(str(batch["out"][i]), bytes(batch["data"][i]))
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
