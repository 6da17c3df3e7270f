"""Running a detector over video sources: decode ahead, gaps, results streamed to sinks, overlay in the same pass.

`run_video(source, bundle=...)` is the whole job for files, URLs and cameras (one or several: a directory, a
glob or a list file names several; see `stp_edge.sources`). The data flow:

1. one reader thread per source decodes ahead into one bounded queue (OpenCV releases the GIL while it
   decodes, so decoding overlaps the encoder), at most `2 * snippet_len` frames per source; MJPEG files are
   read as compressed frames that the detector decodes only where a snippet samples them (1 frame of 16);
2. the calling thread pushes frames to one `Detector`; frames of several sources that are ready together go
   in one `push_many`, so their snippets share encoder calls;
3. each result goes to `on_result` (and the overlay) as soon as it is final; `keep=False` keeps none of them,
   so memory stays flat on an endless source (events and latency are summarised in bounded windows);
4. a live source that drops and reconnects leaves a `Gap`: the stream's pending snippets are flushed, its
   temporal window is reset (frames on either side of an outage are not one video), `on_gap` is called and
   frame/snippet numbers go on counting across the gap;
5. `stop` (a `threading.Event`, set by a signal handler for example) ends the run at the next frame: every
   result of the frames already read is still flushed and delivered.

Many cameras in one process: the decode threads and ONNX Runtime's pool are sized together
(`plan_threads`: one core per decode thread, the cores left to ONNX Runtime's intra-op pool, at least one)
when `run_video` loads the detector and the caller did not say `threads`. With several sources, a frame that
completes a snippet waits (at most half a snippet of the fastest source) for the other streams' snippets to
complete too, so the snippets of N cameras share one encoder call (`VideoResults.encoder_batches` counts the
snippets per call). A LIVE source (URL, camera) that falls behind real time drops whole snippets instead of
growing queues: at each snippet boundary, when its oldest frame still waiting for the detector has waited two
snippets' duration with several sources (`LATE_SNIPPETS`: one is the scheduler's own hold and shared encoder
call; one snippet with a single source), its reader reads the next `snippet_len` frames and discards them
(never part of a snippet, so snippet boundaries stay aligned). The detector sees the dropped frames like a gap
(the stream's window is flushed and restarted; frame and snippet numbers go on counting over them);
`SourceRun.dropped_snippets` counts them and the JSONL gets a `{"dropped": ...}` line naming the frames not
analysed. Files never drop: they are read as fast as the model goes. At most `2 * snippet_len` frames of a
source wait (`SourceRun.queue_peak`), so memory stays flat when the model is slower than the cameras.

A source that ends, or is lost for good, is flushed at once (`Detector.flush(stream)`): its last results reach
the sinks and `on_end` while the other sources go on.

Two sinks: `JsonlSink` streams one JSON line per result and per gap under the file's final name (readable while
the run goes on; every line written survives a kill, a power loss loses at most the last second), and
`OverlaySink` draws the overlay in the same pass: the frames of a snippet wait (JPEG-compressed, so a window of
c + 1 snippets of 1080p frames stays in tens of MB) until the snippet's final result, then they are annotated
and written to `NAME.partial.EXT`, renamed to `NAME.EXT` when the run ends. Outputs are checked first
(`stp_edge.outputs.check_outputs`): never an input, never inside the bundle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from stp_edge.backends import stop_calls_on
from stp_edge.errors import UsageError
from stp_edge.frames import FrameError, SkippedFrame
from stp_edge.outputs import LineWriter, check_outputs, partial_path, signals_deferred
from stp_edge.records import drop_record, gap_record, snippet_record
from stp_edge.report import EventTracker, LatencyStats
from stp_edge.results import SnippetResult
from stp_edge.video import Gap, VideoSource, VideoStats, display_source, open_source, parse_source

if TYPE_CHECKING:  # pragma: no cover - api imports this module
    from stp_edge.api import Detector
    from stp_edge.bundle import Bundle


@dataclass
class SourceRun:
    """What happened to one source of a run.

    Attributes:
        source: The source as given (path, URL or camera index).
        stream: Its stream id in the detector and in the results.
        stats: Frames read/dropped/expected, gaps, lost (see `stp_edge.video.VideoStats`).
        fps: Frame rate the source reports, or None.
        rejected: Frames the detector refused (`FrameError`: skipped and counted, the stream goes on), and
            frames of a last partial snippet none of whose frames decodes.
        error: A fatal error of this source's reader (re-raised by `run_video` after the others finished).
        dropped_snippets: Whole snippets of a live source dropped because it fell behind real time.
        dropped_frames: Their frames (read from the source, never analysed).
        queue_peak: Most frames of this source that waited for the detector at once.
    """

    source: Any
    stream: int
    stats: VideoStats
    fps: float | None
    rejected: int = 0
    error: BaseException | None = None
    dropped_snippets: int = 0
    dropped_frames: int = 0
    queue_peak: int = 0


class VideoResults(list):
    """The results of a run (empty with `keep=False`) and its summary.

    Attributes:
        sources: One `SourceRun` per source, in order.
        stats: The first source's `VideoStats` (the only one for a single source).
        fps: The first source's frame rate, or None.
        wall_s: Seconds from the first frame read to the last result delivered.
        threshold: The detector's score threshold.
        snippets / anomalous: Final results delivered, and those at or above the threshold.
        events: `EventTracker` of the run (anomalous runs merged per stream).
        latency: `LatencyStats` of the run (per-stage ms per snippet).
        stopped: True when `stop` ended the run before the sources did.
        threads: The `ThreadPlan` the run loaded its detector with, or None (a detector given, or `threads` set).
        encoder_batches: {snippets in one encoder call: calls} over the frame pushes of the run (a source's
            flush at its end or at a gap or drop is not counted).
    """

    def __init__(self, *, threshold: float = 0.5, class_names: Sequence[str] = ()) -> None:
        super().__init__()
        self.sources: list[SourceRun] = []
        self.wall_s = 0.0
        self.threshold = threshold
        self.snippets = 0
        self.anomalous = 0
        self.events = EventTracker(class_names)
        self.latency = LatencyStats()
        self.stopped = False
        self.threads: ThreadPlan | None = None
        self.encoder_batches: Counter[int] = Counter()

    @property
    def stats(self) -> VideoStats:
        return self.sources[0].stats if self.sources else VideoStats()

    @property
    def fps(self) -> float | None:
        return self.sources[0].fps if self.sources else None

    @property
    def lost(self) -> list[SourceRun]:
        """Live sources lost for good (reconnects exhausted)."""
        return [s for s in self.sources if s.stats.lost]

    @property
    def frames_read(self) -> int:
        return sum(s.stats.read for s in self.sources)

    @property
    def dropped_snippets(self) -> int:
        """Whole snippets live sources dropped because they fell behind real time."""
        return sum(s.dropped_snippets for s in self.sources)


@dataclass(frozen=True)
class ThreadPlan:
    """How a run shares the cores: one decode thread per source, ONNX Runtime's intra-op pool on the rest."""

    cores: int
    decode: int
    intra_op: int

    def describe(self, engine: str = "onnxruntime") -> str:
        return f"{self.intra_op} {engine} + {self.decode} decode thread(s) on {self.cores} core(s)"


def plausible_fps(fps: float | None) -> float | None:
    """A source's frame rate where it is believable (1-240 fps), else None.

    Containers and cameras report 0, 1000 or garbage; a rate that paces, times or holds frames must not be one.
    """
    return fps if fps is not None and 1.0 <= fps <= 240.0 else None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS says, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def light_decode(decode: str | None, decoder: str | None = None) -> bool:
    """Whether a source read this way costs the CPU next to nothing (`plan_threads`' light sources).

    Keyframes only: one frame in a keyframe interval is decoded. NVDEC: the GPU decodes, the CPU only demuxes.
    The one rule for sources not yet open (the CLI's options, a deployment's inputs, the capacity benchmark) and
    open ones (`light_sources`).
    """
    return decode == "keyframes" or decoder == "nvdec"


def light_sources(sources: Sequence[Any]) -> int:
    """How many of the open `sources` are light (`light_decode` of their decode mode and decoder)."""
    return sum(light_decode(getattr(src, "decode_mode", "full"), getattr(src, "decoder", None)) for src in sources)


def plan_threads(cores: int, sources: int, light: int = 0) -> ThreadPlan:
    """ONNX Runtime's intra-op thread count for `sources` decode threads on `cores` cores (no oversubscription).

    With several sources, each source's decode thread gets a core while at least one is left; ONNX Runtime's pool
    gets the others (at least one thread). More sources than cores share the cores with a one-thread pool: ORT's
    spinning threads would otherwise compete with every decoder. One source keeps every core for the model: its
    decoder reads ahead while the encoder runs, and halving the pool would double a single camera's latency.
    `light`: how many of the sources decode keyframes only (one frame in a keyframe interval, a few percent of a
    core): they reserve no core, so cameras read that way leave the model every core but those of the others.
    """
    for name, v in (("cores", cores), ("sources", sources), ("light", light)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "cores" else 0):
            raise UsageError(f"{name} must be a whole number >= {1 if name == 'cores' else 0}, got {v!r}")
    if light > sources:
        raise UsageError(f"light sources ({light}) cannot outnumber the sources ({sources})")
    heavy = sources - light
    if heavy <= 1:
        return ThreadPlan(cores=cores, decode=sources, intra_op=cores)
    return ThreadPlan(cores=cores, decode=sources, intra_op=max(1, cores - min(heavy, cores - 1)))


_END = object()
_DROP = object()  # (stream, _DROP, frames dropped, 0.0, wall time): a live source's reader dropped whole snippets
SHARE_HOLD = 0.5  # of a snippet's duration: how long a completed snippet waits for other streams' (0: never)
# A live source is late when its oldest frame waiting for the detector waited this many snippets' duration: one
# for a single source; with several, one more snippet of waiting is the run's own doing (a completed snippet is
# held up to SHARE_HOLD of a snippet for the other cameras', then encoded in one call with theirs).
LATE_SNIPPETS = {"one source": 1.0, "several sources": 2.0}
READER_JOIN_S = 1.0  # what a run waits at its end for readers still inside an OpenCV open or read


class _Reader(threading.Thread):
    """Decodes one source ahead of the detector into the shared queue; closes the source when done.

    With `drop_len` (a live source), the reader keeps real time: at each snippet boundary, when its oldest
    frame still waiting for the detector was read `late_s` ago or more (`LATE_SNIPPETS` snippets' duration: the
    model is behind the camera by more than the run's own hold and batching), it reads the next `drop_len` frames
    and discards them, and tells the
    consumer how many it dropped before its next frame (`_DROP`). `put` and `taken` count the frames put and
    the frames the consumer took (each written by one thread only), so their difference is what waits, and
    `times` holds when each waiting frame was put. At most `cap` frames of one source wait (`slots`: a reader
    waits for a free one), so a fast file never fills the queue that live sources share with it.
    """

    def __init__(self, src: VideoSource, stream: int, out: queue.Queue, halt: threading.Event,
                 max_frames: int | None, lazy: bool, drop_len: int | None = None, cap: int = 32,
                 late_s: float = 0.64) -> None:
        super().__init__(name=f"stp-edge-decode-{stream}", daemon=True)
        self.src, self.stream, self.out, self.halt, self.max_frames = src, stream, out, halt, max_frames
        self.lazy, self.drop_len, self.late_s = lazy, drop_len, late_s
        self.times: deque[float] = deque()  # when each frame still waiting was put (append here, pop there)
        self.slots = threading.Semaphore(cap)  # released by the consumer for each frame it takes
        self.put = 0  # frames put (this thread writes it)
        self.taken = 0  # frames the consumer took (the consumer writes it)
        self.peak = 0

    def took(self) -> None:
        """The consumer took one of this reader's frames."""
        self.taken += 1
        self.times.popleft()
        self.slots.release()

    def run(self) -> None:
        try:
            frames = self.src.frames_with_gaps(lazy=self.lazy)
            n = 0
            pos = 0  # frames delivered since the last gap or drop: a snippet boundary when pos % drop_len == 0
            dropping = 0  # frames still to drop of the snippet being dropped
            dropped = 0  # frames dropped and not yet reported
            while not self.halt.is_set() and (self.max_frames is None or n < self.max_frames):
                t0 = time.perf_counter()
                item = next(frames, None)
                if item is None:
                    break
                n += 1
                if item[1] is not None:  # a gap: a new window starts at this frame, which is always delivered
                    if dropped and not self._put((self.stream, _DROP, dropped, 0.0, time.time())):
                        break
                    pos = dropping = dropped = 0
                elif self.drop_len and not dropping and pos % self.drop_len == 0 and self._late():
                    dropping = self.drop_len  # a snippet behind real time: drop the next one whole
                if dropping:
                    dropping -= 1
                    dropped += 1
                    continue
                if dropped:
                    if not self._put((self.stream, _DROP, dropped, 0.0, time.time())):
                        break
                    pos = dropped = 0
                if not self._slot():
                    break
                self.times.append(time.monotonic())
                if not self._put((self.stream, item[0], item[1], (time.perf_counter() - t0) * 1e3, time.time())):
                    break
                self.put += 1
                self.peak = max(self.peak, self.put - self.taken)
                pos += 1
            if dropped:
                self._put((self.stream, _DROP, dropped, 0.0, time.time()))
        except BaseException as exc:  # handed to the consuming thread, which re-raises it
            self._put((self.stream, _END, exc, 0.0, time.time()))
            return
        finally:
            self.src.close()
        self._put((self.stream, _END, None, 0.0, time.time()))

    def _late(self) -> bool:
        try:
            return time.monotonic() - self.times[0] >= self.late_s
        except IndexError:  # nothing waits
            return False

    def _slot(self) -> bool:
        while not self.slots.acquire(timeout=0.1):
            if self.halt.is_set():
                return False
        return True

    def _put(self, item: tuple) -> bool:
        while True:
            try:
                self.out.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.halt.is_set():
                    return False


class JsonlSink:
    """One JSON line per record (`stp_edge.records`: snippets, gaps, drops; events too); a context manager.

    The one place the JSONL files of stp-edge are written (`stp-edge run --jsonl`, `stp-edge score`, the demo,
    a deployment's record file). A path is written under its final name as the run goes
    (`stp_edge.outputs.LineWriter`): each line is one write(2), so a killed run keeps every line it wrote and the
    file can be followed (`tail -f`) while the run goes on; it is fsynced at most 1 s after a write, so a power
    loss loses at most the last second. `mode` "w" replaces an existing file, "x" refuses a non-empty one
    (`OutputExistsError`), "a" appends to it. A FIFO, `/dev/stdout` or `-` is streamed to. A text stream is
    written to, flushed per line, and left open. Lines are strict JSON (no NaN).
    """

    def __init__(self, target: str | os.PathLike | TextIO, *, mode: str = "w") -> None:
        self._lines: LineWriter | None = None
        self._stream: TextIO | None = None
        self.written = 0
        if isinstance(target, (str, os.PathLike)):
            self._lines = LineWriter(target, mode=mode)
        else:
            self._stream = target

    def write(self, record: dict[str, Any]) -> None:
        """Write one record as one line."""
        line = json.dumps(record, allow_nan=False) + "\n"
        if self._lines is not None:
            self._lines.write_line(line)
        else:
            self._stream.write(line)
            self._stream.flush()
        self.written += 1

    def close(self) -> Path | None:
        """Fsync and close a file (safe to call twice); returns its path, or None for a stream."""
        if self._lines is None:
            return None
        self._lines.close()
        return self._lines.path if self._lines.kind == "file" else None

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class OverlaySink:
    """Draws each snippet's score, map and boxes on its frames once its final result is known; one source.

    Frames wait as JPEG bytes (quality 90) between being read and their snippet's final result, so memory is
    bounded by the detector's lookahead, not the video's length. The writer (`stp_edge.visualize.OverlayWriter`)
    is opened on the first frame and checked on every write. The video is written as `NAME.partial.EXT` beside
    `NAME.EXT` (`stp_edge.outputs.partial_path`) and renamed when the run ends: a killed run leaves that visible
    file (an AVI, or an H.264 MP4 written in 1 s fragments, plays up to where the run stopped), which the next
    `stp-edge run` with the same overlay names. A symlink's target is written; the link stays.
    """

    def __init__(self, path: str | Path, *, fps: float | None, threshold: float, spec: Any = None) -> None:
        self.path = _through_symlink(path)
        self.partial = partial_path(self.path)
        self.spec = spec  # the bundle's PreprocessSpec: which part of the frame the map covers (None: CLIP's)
        # A header's absurd rate (0, 1e-9, 2**31) would fail the writer; the overlay plays at 25 fps then.
        self.fps = plausible_fps(fps) or 25.0
        self.threshold = threshold
        self.writer: Any = None
        self._frames: deque[tuple[int, bytes]] = deque()

    def add_frame(self, index: int, frame: np.ndarray) -> None:
        """Hold frame `index` (the stream's running frame number) until its result arrives."""
        import cv2

        if self.writer is None:
            from stp_edge.bundle.preprocessing import PreprocessSpec, region_roi
            from stp_edge.visualize import OverlayWriter

            h, w = frame.shape[:2]
            roi = region_roi(self.spec or PreprocessSpec(), (h, w))  # the whole frame for crops of the whole frame
            self.writer = OverlayWriter(self.path, self.fps, (w, h), threshold=self.threshold,
                                        map_roi=roi, partial=self.partial)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise FrameError(f"overlay: frame {index} could not be JPEG-encoded for the pending buffer")
        self._frames.append((index, buf.tobytes()))

    def on_result(self, r: SnippetResult) -> None:
        """Write the frames of a final result's snippet, annotated (and any earlier frame, without a result)."""
        if not r.final:
            return
        with signals_deferred():  # a frame is written and counted, or neither (see `signals_deferred`)
            while self._frames and self._frames[0][0] < r.frame_end:
                index, data = self._frames.popleft()
                frame = _decode_jpeg(data)
                if index < r.frame_start:
                    self.writer.write(frame, None)
                else:  # an invalid result without a score (NaN) is drawn as a frame without a result
                    self.writer.write(frame, r.score if np.isfinite(r.score) else None, r.class_name,
                                      r.anomaly_map, [(b.x1, b.y1, b.x2, b.y2) for b in r.boxes])

    def close(self) -> Path | None:
        """Write frames still waiting (no result reached them), finish the file and rename it into place."""
        if self.writer is None:
            return None
        with signals_deferred():  # an interrupt never lands inside finishing (or deleting) the file
            try:
                while self._frames:
                    self.writer.write(_decode_jpeg(self._frames.popleft()[1]), None)
            finally:
                self.writer.close()
        return self.path


def check_overlay_codec(path: str | Path) -> str:
    """Write, read back and delete a tiny video as the overlay at `path` would be written, before a run starts.

    A codec or directory that cannot take the overlay fails now (a `VideoError` naming `path`, never a
    temporary file), not after hours of analysis. Returns the codec's name.
    """
    from stp_edge.video import check_video_output

    return check_video_output(path)


def describe_overlay_leftover(path: str | Path) -> str | None:
    """What a killed run left as the overlay `path` (its `NAME.partial.EXT`), or None when nothing is there."""
    import cv2

    partial = partial_path(_through_symlink(path))
    if not partial.is_file():
        return None
    cap = cv2.VideoCapture(str(partial))
    try:
        plays = cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    what = ("it plays up to where that run stopped" if plays else
            "it does not play: the run was killed before its first fragment or index was written")
    return f"{partial} ({partial.stat().st_size} bytes) is the overlay of a run that was killed; {what}"


def _through_symlink(path: str | Path) -> Path:
    """The file a whole-file output replaces: a symlink's target (the link stays a link), else `path` itself."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def _decode_jpeg(data: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def open_sources(source: Any, options: Sequence[dict[str, Any]] | None = None,
                 **source_kwargs: Any) -> list[VideoSource]:
    """Open every source `source` names, all before any is read: one missing or undecodable source fails the call.

    `source` is a path, URL, camera index, directory, glob, list file, a list of those, or `VideoSource`s. With
    several sources, a live one that is down at start does not stop the others: it is reconnected in the
    background like a source that drops later (`VideoSource.down_at_start` says why; `retry_at_start=False`
    in `source_kwargs` fails instead). `options`: one mapping per item of `source`, added to `source_kwargs` for
    what that item opens (a deployment's per-camera decoder and decode mode).
    """
    from stp_edge.sources import expand_sources

    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if options is not None and len(options) != len(items):
        raise UsageError(f"options: one mapping per source, got {len(options)} for {len(items)} sources")
    specs: list[tuple[Any, dict[str, Any]]] = []
    for k, item in enumerate(items):
        extra = dict(options[k]) if options is not None else {}
        if isinstance(item, VideoSource) or isinstance(item, int):
            specs.append((item, extra))
        else:
            specs.extend((spec, extra) for spec in expand_sources(item))
    source_kwargs = {"retry_at_start": len(specs) > 1, **source_kwargs}
    opened: list[VideoSource] = []
    try:
        for spec, extra in specs:
            opened.append(spec if isinstance(spec, VideoSource) else open_source(spec, **source_kwargs, **extra))
    except BaseException:
        for src in opened:
            src.close()
        raise
    return opened


def run_video(source: Any, *, bundle: str | Path | Bundle | None = None, detector: Detector | None = None,
              on_result: Callable[[SnippetResult], None] | None = None,
              on_gap: Callable[[int, Gap], None] | None = None, on_frame: Callable[[int, int], None] | None = None,
              max_frames: int | None = None, stream: int = 0, keep: bool = True,
              overlay: str | Path | None = None, jsonl: str | Path | TextIO | None = None,
              stop: threading.Event | None = None, source_kwargs: dict[str, Any] | None = None,
              jsonl_mode: str = "w", on_end: Callable[[SourceRun], None] | None = None,
              drop_late: bool = True, cameras: Sequence[str] | None = None,
              thresholds: Sequence[float | None] | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              on_image: Callable[[int, int, Any], None] | None = None, **load_kwargs: Any) -> VideoResults:
    """Run a detector over one or several video sources (see the module docstring); returns the results.

    Args:
        source: File path, URL, camera index, directory, glob, list file, a list of those, or opened
            `VideoSource`s (then owned and closed here). Every source is opened before the first frame is read.
        bundle: Bundle to load a detector from (when `detector` is None; closed at the end).
        detector: An existing detector (kept open); its streams are flushed at the end.
        on_result: Called with each result as soon as it is available (provisional ones too with a lookahead).
        on_gap: Called with (stream, gap) when a live source reconnected after an outage.
        on_frame: Called with (stream, frames read so far) for every frame (progress bars).
        max_frames: Stop each source after this many frames.
        stream: Stream id of the first source; source i gets `stream + i`.
        keep: Keep every result in the returned list; False for endless sources (counts and summaries only).
        overlay: Write the (single) source with scores, maps and boxes drawn to this video file.
        jsonl: Write one record per result, gap and drop (`stp_edge.records`: camera, masked source, times) to this
            file, FIFO, `/dev/stdout` or `-` (`JsonlSink`: under its final name, line by line, fsynced within
            1 s) or text stream.
        stop: When set, the run ends at the next frame (the frames read so far are still finished).
        source_kwargs: Passed to `stp_edge.video.open_source` (reconnect, timeout_ms, ...).
        jsonl_mode: "w" replaces an existing `jsonl` file, "x" refuses a non-empty one, "a" appends to it.
        on_end: Called with a source's `SourceRun` as soon as it ends (its last results already delivered and
            written), or is lost for good; not for sources a `stop` ended.
        drop_late: A live source that falls behind real time drops whole snippets (see the module docstring);
            False: its reader waits for the detector instead (the queue stays bounded; the source lags).
        cameras: A name per source for its records (default `camera_names`: file stem, URL host, camera<N>).
        thresholds: A score threshold per source for its records' `is_anomaly` (None: the detector's).
        on_record: Called with each result's record (`stp_edge.records.snippet_record`), gap and drop records.
        on_image: Called with (stream, snippet number, frame) once per snippet, at its last frame: the frame
            nearest its middle that has pixels, as read (a BGR array or a `stp_edge.frames.LazyFrame`: `.decode()`);
            for event snapshots. Do not modify it.
        **load_kwargs: Passed to `Detector.load` with `bundle` (backend, preprocess, spatial_on, device,
            threads, ...). Without `threads`, ONNX Runtime's pool is sized by `plan_threads` for the sources.

    Raises:
        VideoError: A source cannot be opened (before any frame is read) or its reader failed mid-run (after
            the other sources finished and every output was closed).
        UsageError: An output is an input, lies inside the bundle, or is a node it cannot be (see
            `stp_edge.outputs.check_outputs`); checked before anything is written.
        OutputError: An output could not be written (a full disk, a FIFO whose reader left).
    """
    from stp_edge.api import Detector

    if detector is None and bundle is None:
        raise UsageError("run_video needs a bundle or a detector")
    sources = open_sources(source, **(source_kwargs or {}))
    det = detector
    try:
        if overlay is not None and len(sources) != 1:
            raise UsageError(f"an overlay is drawn for one source; {len(sources)} sources were given")
        plan = None
        if det is None:
            if load_kwargs.get("threads") is None:
                plan = plan_threads(available_cores(), len(sources), light=light_sources(sources))
                load_kwargs["threads"] = plan.intra_op
            det = Detector.load(bundle, **load_kwargs)
        _check_run_outputs(det, sources, overlay=overlay, jsonl=jsonl)
        labels = _labels(sources, cameras, thresholds)
        run = _Run(det, sources, stream, keep=keep, on_result=on_result, on_gap=on_gap, on_frame=on_frame,
                   on_end=on_end, overlay=overlay, jsonl=jsonl, jsonl_mode=jsonl_mode, stop=stop,
                   drop_late=drop_late, labels=labels, on_record=on_record, on_image=on_image)  # opens outputs
        run.results.threads = plan
    except BaseException:
        for src in sources:  # once the run starts, each source's reader closes it
            src.close()
        if detector is None and det is not None:
            det.close()
        raise
    try:
        with stop_calls_on(det.runners.values(), stop):  # a stop also ends a graph call in flight (1 s grace)
            return run.run(max_frames)
    finally:
        if detector is None:
            det.close()


def _labels(sources: list[VideoSource], cameras: Sequence[str] | None,
            thresholds: Sequence[float | None] | None) -> list[StreamLabel]:
    """Each source's `StreamLabel`: its camera name, masked source, clock and threshold."""
    names = list(cameras) if cameras is not None else camera_names(sources)
    limits = list(thresholds) if thresholds is not None else [None] * len(sources)
    if len(names) != len(sources) or len(limits) != len(sources):
        raise UsageError(f"{len(sources)} sources but {len(names)} camera names and {len(limits)} thresholds")
    out = []
    for src, name, limit in zip(sources, names, limits, strict=True):
        fps = plausible_fps(src.fps)
        clock = "media" if src.kind == "file" and fps else "wall"
        out.append(StreamLabel(name, display_source(src.source), clock, fps if clock == "media" else src.fps, limit))
    return out


def _check_run_outputs(det: Detector, sources: list[VideoSource], *, overlay: Any, jsonl: Any) -> None:
    """The output check of `stp_edge.outputs` for a run: never an input, never inside the bundle it runs."""
    paths = {"jsonl": jsonl if isinstance(jsonl, (str, os.PathLike)) else None, "overlay": overlay}
    check_outputs(paths, [src.target for src in sources if src.kind == "file"],
                  protected={"the bundle": det.bundle.path}, streams=("jsonl",))


@dataclass
class _StreamState:
    frame_base: int = 0  # running frame number of the detector's frame 0 (frames before earlier gaps)
    snippet_base: int = 0
    emitted: int = 0  # snippet numbers used so far: final results delivered and snippets dropped
    frames: int = 0  # frames pushed since the last gap
    decode_ms: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    wall: deque = field(default_factory=deque)  # when each frame taken and not yet pushed was read
    stamps: deque = field(default_factory=deque)  # (frame number, wall time read) of the frames still needed
    image: tuple[int, Any] | None = None  # on_image: the snippet's frame nearest its middle so far (position, frame)


@dataclass(frozen=True)
class StreamLabel:
    """How one stream is named and timed in its records (`stp_edge.records`).

    Attributes:
        camera: The camera's name (`camera_names` by default).
        source: Its source with credentials masked.
        clock: "wall" for a live source (frames stamped when read), "media" for a file with a frame rate.
        fps: The frame rate media times are counted in (files), or None.
        threshold: The score threshold its records' `is_anomaly` uses, or None (the detector's).
    """

    camera: str
    source: str
    clock: str
    fps: float | None
    threshold: float | None = None


def camera_names(sources: Sequence[Any]) -> list[str]:
    """A default camera name per source, unique in the run: a file's stem, a URL's host, "camera<N>" for index N."""
    from urllib.parse import urlsplit

    names = []
    for src in sources:
        kind, target = (src.kind, src.target) if isinstance(src, VideoSource) else parse_source(src)
        if kind == "camera":
            name = f"camera{int(target)}"
        elif kind == "url":
            name = (urlsplit(str(target)).hostname or "camera").replace(".", "_")
        else:
            name = Path(str(target)).stem or "camera"
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
        names.append(name)
    seen: Counter = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if names.count(name) == 1 else f"{name}-{seen[name]}")
    return out


class _Run:
    """One run of `run_video`: the consuming loop over the readers' queue."""

    def __init__(self, det: Detector, sources: list[VideoSource], first_stream: int, *, keep: bool,
                 on_result: Callable | None, on_gap: Callable | None, on_frame: Callable | None,
                 on_end: Callable | None, overlay: str | Path | None, jsonl: str | Path | TextIO | None,
                 jsonl_mode: str, stop: threading.Event | None, drop_late: bool = True,
                 labels: list[StreamLabel] | None = None, on_record: Callable | None = None,
                 on_image: Callable | None = None) -> None:
        self.det = det
        self.on_record, self.on_image = on_record, on_image
        self.drop_late = drop_late
        self.keep, self.on_result, self.on_gap, self.on_frame = keep, on_result, on_gap, on_frame
        self.on_end = on_end
        self.ended: set[int] = set()  # streams whose source ended and whose results were all delivered
        self.stop = stop or threading.Event()
        self.results = VideoResults(threshold=det.score_threshold, class_names=det.config.class_names)
        self.runs = {first_stream + i: SourceRun(src.source, first_stream + i, src.stats, src.fps)
                     for i, src in enumerate(sources)}
        self.results.sources = list(self.runs.values())
        self.sources = sources
        for s, src in zip(self.runs, sources, strict=True):  # each stream samples as its source allows
            det.use_source(s, src)
        self.state = {s: _StreamState() for s in self.runs}
        self.labels = dict(zip(self.runs, labels or _labels(sources, None, None), strict=True))
        self.anchor: dict[int, float] = {}  # files: the wall time media time 0 stands for (the first frame read)
        self.overlay = (OverlaySink(overlay, fps=sources[0].fps, threshold=det.score_threshold,
                                    spec=det.bundle.preprocess_spec) if overlay is not None else None)
        self.snippet_len = det.config.snippet_len
        # A random-weights bundle says so in every line: a reader of any line knows its scores mean nothing.
        self.fields = {"random_weights": True} if det.bundle.random_weights is not None else None
        self.jsonl = JsonlSink(jsonl, mode=jsonl_mode) if jsonl is not None else None  # last: it opens its file

    def run(self, max_frames: int | None) -> VideoResults:
        halt = threading.Event()
        # Each reader holds at most 2 snippets of frames in it (its `slots`), each preceded by at most one drop
        # marker, and one end marker: a put never waits for another source's frames.
        cap = 2 * self.snippet_len
        q: queue.Queue = queue.Queue(maxsize=(2 * cap + 1) * len(self.sources))
        # Compressed frames (MJPEG files) go to the detector undecoded unless the overlay needs every frame.
        lazy = self.overlay is None
        readers = [_Reader(src, s, q, halt, max_frames, lazy,
                           drop_len=self.snippet_len if self.drop_late and src.live else None, cap=cap,
                           late_s=LATE_SNIPPETS["several sources" if len(self.sources) > 1 else "one source"]
                           * self.snippet_len / (plausible_fps(src.fps) or 25.0))
                   for s, src in zip(self.runs, self.sources, strict=True)]
        self.readers = {r.stream: r for r in readers}
        start = time.perf_counter()
        try:
            for r in readers:
                r.start()
            self._consume(q, len(readers))
            for s in self.runs:
                if s not in self.ended:
                    self._flush(s)
        finally:
            # Bounded cleanup: a second signal waits for it (then interrupts), so the outputs are always closed.
            with signals_deferred():
                try:
                    halt.set()
                    for src in self.sources:  # wakes a reader waiting to reconnect: a stop takes effect at once
                        src.interrupt()
                    deadline = time.monotonic() + READER_JOIN_S
                    for r in readers:  # one stuck in an open or read (bounded by its timeout) is left to end
                        r.join(timeout=max(0.0, deadline - time.monotonic()))
                        self.runs[r.stream].queue_peak = r.peak
                finally:
                    self._close_sinks()
                    self.results.wall_s = time.perf_counter() - start
                    self.results.events.finish()
        errors = [run.error for run in self.runs.values() if run.error is not None]
        if errors:
            raise errors[0]
        return self.results

    def _close_sinks(self) -> None:
        """Finish the overlay, then the JSONL file (kept even when the overlay cannot be finished)."""
        with signals_deferred():
            try:
                if self.overlay is not None:
                    self.overlay.close()
            finally:
                if self.jsonl is not None:
                    self.jsonl.close()

    def _consume(self, q: queue.Queue, n_readers: int) -> None:
        """Push frames as they come; frames of different streams that are ready together share a push_many.

        With several sources, a frame that completes a snippet is held (`pending`; that stream's later items
        wait behind it in `backlog`) until every other running stream holds one too, or `hold_s` passed: the
        held frames then go in one push_many, so the snippets of N cameras share one encoder call even when
        their snippet boundaries fall at different times. A stream's own frames keep their order.
        """
        self._active = n_readers
        self._align = len(self.sources) > 1
        fps = [f for f in (plausible_fps(src.fps) for src in self.sources) if f]
        self._hold_s = SHARE_HOLD * self.snippet_len / max(fps, default=25.0)  # of the fastest source
        self._since = 0.0
        batch: dict[int, np.ndarray] = {}
        pending: dict[int, np.ndarray] = {}
        backlog: dict[int, deque] = defaultdict(deque)
        while self._active:
            if self.stop.is_set():
                self.results.stopped = True
                break
            try:
                if batch:
                    item = q.get_nowait()
                elif pending:
                    item = q.get(timeout=min(0.05, max(0.0, self._since + self._hold_s - time.monotonic())))
                else:
                    item = q.get(timeout=0.05)
            except queue.Empty:
                self._push(batch)
            else:
                self._take(item, batch, pending, backlog)
            if pending and (len(pending) >= len(self.runs) - len(self.ended)
                            or time.monotonic() - self._since >= self._hold_s):
                self._release(batch, pending, backlog)
        self._align = False  # what was taken is finished, in order
        self._release(batch, pending, backlog)

    def _take(self, item: tuple, batch: dict, pending: dict, backlog: dict) -> None:
        stream, frame, extra, decode_ms, wall = item
        if stream in pending:
            backlog[stream].append(item)
            return
        if frame is _DROP:
            self._push(batch)
            self._drop(stream, extra)
            return
        if frame is _END:
            self._push(batch)
            self.runs[stream].error = extra
            self._end(stream)
            self._active -= 1
            return
        self.readers[stream].took()
        if stream in batch or extra is not None:  # one frame per stream per call; a gap flushes first
            self._push(batch)
        if extra is not None:
            self._gap(stream, extra)
        st = self.state[stream]
        st.decode_ms[st.frames // self.snippet_len] += decode_ms
        st.wall.append(wall)  # frame st.frame_base + st.frames + len(batched) is stamped when it was read
        if self._align and (st.frames + 1) % self.snippet_len == 0:  # completes a snippet: held
            if not pending:
                self._since = time.monotonic()
            pending[stream] = frame
        else:
            batch[stream] = frame

    def _release(self, batch: dict, pending: dict, backlog: dict) -> None:
        """Push the held frames together, then take the items that waited behind them (round robin)."""
        self._push(batch)
        self._push(pending)  # clears it
        waiting = [backlog.pop(s) for s in list(backlog)]
        while any(waiting):
            for items in waiting:
                if items:
                    self._take(items.popleft(), batch, pending, backlog)
        if not self._align:
            self._push(batch)

    def _push(self, batch: dict[int, np.ndarray]) -> None:
        if not batch:
            return
        # The sources checked their frames: the detector's internal door does not check them again.
        try:
            out = self.det._push_many(batch, checked=True)
            accepted = list(batch)
        except FrameError:
            # A refused frame changes nothing (push_many admits every frame first): push the others one by one.
            out, accepted = [], []
            for stream, frame in batch.items():
                try:
                    out += self.det._push_many({stream: frame}, checked=True)
                    accepted.append(stream)
                except FrameError:
                    self.runs[stream].rejected += 1
        except BaseException as exc:  # e.g. GraphOutputError: the call's results (`exc.results`) go out, then it ends
            self._deliver(getattr(exc, "results", []))
            raise
        completed = sum((self.state[s].frames + 1) % self.snippet_len == 0 for s in accepted)
        if completed:
            self.results.encoder_batches[completed] += 1
        for stream in batch:
            st = self.state[stream]
            wall = st.wall.popleft()
            if stream in accepted:
                st.stamps.append((st.frame_base + st.frames, wall))
                self.anchor.setdefault(stream, wall)
        for stream in accepted:
            st = self.state[stream]
            if self.overlay is not None:  # before the results: a snippet this frame completes draws it
                self.overlay.add_frame(st.frame_base + st.frames, batch[stream])
            if self.on_image is not None:
                self._image(stream, st, batch[stream])
            st.frames += 1
            if self.on_frame is not None:
                self.on_frame(stream, self.runs[stream].stats.read)
        batch.clear()
        self._deliver(out)

    def _image(self, stream: int, st: _StreamState, frame: Any) -> None:
        """`on_image` once per snippet, at its last frame: the frame with pixels nearest its middle.

        A keyframes-only or non-reference-skipping reader yields frames without pixels (`SkippedFrame`); the one
        offered is then the nearest that has them (the snippet's keyframe). Holds one frame per stream.
        """
        pos, mid = st.frames % self.snippet_len, self.snippet_len // 2
        if not isinstance(frame, SkippedFrame) and (st.image is None or abs(pos - mid) < abs(st.image[0] - mid)):
            st.image = (pos, frame)
        if pos == self.snippet_len - 1 and st.image is not None:
            self.on_image(stream, st.snippet_base + st.frames // self.snippet_len, st.image[1])
            st.image = None

    def _end(self, stream: int) -> None:
        """A source ended (or was lost for good): deliver its last results now, not when every source ends."""
        self._flush(stream)
        self.ended.add(stream)
        if self.on_end is not None:
            self.on_end(self.runs[stream])

    def _gap(self, stream: int, gap: Gap) -> None:
        """An outage of a live source: finish the frames before it, then start a new temporal window."""
        self._flush(stream)  # Detector.flush also drops the stream's state: its next frame starts a new window
        st = self.state[stream]
        st.frame_base += st.frames
        st.snippet_base = st.emitted
        st.frames = 0
        st.image = None
        label = self.labels[stream]
        self._record(gap_record(camera=label.camera, stream=stream, source=label.source, frame=gap.frame,
                                lost_s=gap.lost_s, attempts=gap.attempts, time_s=time.time()))
        if self.on_gap is not None:
            self.on_gap(stream, gap)

    def _drop(self, stream: int, frames: int) -> None:
        """A live source dropped `frames` (whole snippets): finish the frames before them, restart the window."""
        self._flush(stream)
        st = self.state[stream]
        first = st.frame_base + st.frames
        snippets = -(-frames // self.snippet_len)
        st.frame_base = first + frames
        st.snippet_base = st.emitted + snippets
        st.emitted = st.snippet_base  # the dropped snippets' numbers are used up
        st.frames = 0
        st.image = None
        run = self.runs[stream]
        run.dropped_snippets += snippets
        run.dropped_frames += frames
        label = self.labels[stream]
        self._record(drop_record(camera=label.camera, stream=stream, source=label.source, frame=first,
                                 frames=frames, snippets=snippets, time_s=time.time()))

    def _flush(self, stream: int) -> None:
        try:
            out = self.det.flush(stream)
        except BaseException as exc:  # as in _push: deliver what the call produced, then end the run
            self._deliver(getattr(exc, "results", []))
            raise
        self._deliver(out)
        self.runs[stream].rejected += self.det.dropped_tail_frames.pop(stream, 0)
        self.state[stream].decode_ms.clear()

    def _deliver(self, results: list[SnippetResult]) -> None:
        for r in results:
            st = self.state[r.stream]
            decode = st.decode_ms.pop(r.snippet, 0.0) if r.final else st.decode_ms.get(r.snippet, 0.0)
            if st.frame_base or st.snippet_base:
                r = dataclasses.replace(r, snippet=r.snippet + st.snippet_base,
                                        frame_start=r.frame_start + st.frame_base,
                                        frame_end=r.frame_end + st.frame_base)
            r = dataclasses.replace(r, timings={"decode": decode, **r.timings})
            if r.final:
                st.emitted += 1
                self.results.snippets += 1
                self.results.anomalous += bool(r.is_anomaly)
                self.results.events.add(r)
                self.results.latency.add(r)
                if self.overlay is not None:
                    self.overlay.on_result(r)
            if self.keep:
                self.results.append(r)
            if self.jsonl is not None or self.on_record is not None:
                self._record(self._snippet_record(r))
            if r.final:
                while st.stamps and st.stamps[0][0] < r.frame_end:  # later results start after this one ends
                    st.stamps.popleft()
            if self.on_result is not None:
                self.on_result(r)

    def _record(self, record: dict[str, Any]) -> None:
        if self.jsonl is not None:
            self.jsonl.write(record)
        if self.on_record is not None:
            self.on_record(record)

    def _snippet_record(self, r: SnippetResult) -> dict[str, Any]:
        """The result's record: camera, masked source, and times by the stream's clock."""
        label, st = self.labels[r.stream], self.state[r.stream]
        media = None
        if label.clock == "media":
            media = r.frame_start / label.fps
            start = self.anchor.get(r.stream, time.time()) + media
            end = start + (r.frame_end - r.frame_start) / label.fps
        else:
            stamps = dict(st.stamps)  # a few snippets of frames
            start = stamps.get(r.frame_start, time.time())
            last = stamps.get(r.frame_end - 1, start)
            end = last + (1.0 / label.fps if label.fps else 0.0)
        return snippet_record(r, camera=label.camera, source=label.source, start_time=start, end_time=end,
                              clock=label.clock, media_time=media, threshold=label.threshold,
                              class_names=self.det.config.class_names, fields=self.fields)
