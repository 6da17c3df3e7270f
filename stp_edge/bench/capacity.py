"""How many live cameras one process serves in real time (`capacity`), and its parts.

A camera is a clip replayed at its own frame rate (`ffmpeg -re -stream_loop -1 ... -c copy`) as MPEG-TS over
HTTP on 127.0.0.1 by `CameraServer`, one ffmpeg per camera (its HTTP listen mode serves one client). `serve_cameras`
serves N of them exactly as `stp-edge run` would: through `stp_edge.run.run_video` (one reader thread per camera,
snippets of several cameras sharing an encoder call, whole snippets of a camera that falls behind dropped), with
a detector loaded for N cameras (ONNX Runtime's pool sized by `plan_threads`). A process that cannot keep up
drops snippets, or reads late (the server, whose socket fills, then sends late): either way the camera's frames
processed per second drop, which is what `falls_behind` looks for.

A camera falls behind when, over the measured window (after a warm-up), the frames processed per second fall
below `RATIO` (0.97) of the source's rate; `find_capacity` raises N (doubling, then bisecting between the last N
held and the first N that fell behind) and returns the largest N held. Utilisation is busy seconds per second of
the window: decode (the reader threads' time in the source, summed over cameras), preprocess and encoder (the
encoder calls' own timings, once per call), rest (the remainder of `push_many`: temporal, spatial, scheduling).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stp_edge.errors import UsageError

RATIO = 0.97  # a camera holds when it is served at >= 97% of its frame rate over the window
# How a camera's stream is read: name -> `open_source` options. "pyav-nonref" skips the non-reference frames no
# snippet samples (B-frames of a camera that sends them); "pyav-keyframes" decodes keyframes only (the detector then
# samples each snippet's keyframe: `Detector(sampling="auto")`).
READ_MODES: dict[str, dict[str, str]] = {
    "opencv-full": {"decoder": "opencv"},
    "pyav-full": {"decoder": "pyav", "decode": "full"},
    "pyav-nonref": {"decoder": "pyav", "decode": "nonref"},
    "pyav-keyframes": {"decoder": "pyav", "decode": "keyframes"},
}


def falls_behind(frames: int, seconds: float, fps: float, ratio: float = RATIO, burst: int = 1) -> bool:
    """Whether a camera that had `frames` processed over `seconds` fell behind a source of `fps` frames/s.

    `burst`: frames the source delivers at once (a keyframes-only reader holds a whole keyframe interval until
    the next keyframe arrives), so a window's edge can cut up to `burst - 1` frames that are not late.
    """
    if seconds <= 0 or fps <= 0 or burst < 1:
        raise UsageError(f"need seconds > 0, fps > 0 and burst >= 1, got {seconds}, {fps}, {burst}")
    return frames + burst - 1 < ratio * fps * seconds


def find_capacity(holds: Callable[[int], bool], start: int = 1, limit: int = 64) -> tuple[int, list[tuple[int, bool]]]:
    """The largest N in [0, limit] for which `holds(N)` is true, assuming holding is monotone in N.

    Tries `start`, doubles while N holds (up to `limit`), then bisects between the last N held and the first
    that did not; below `start`, bisects down from it. Returns (largest N held, [(N, held), ...] in the order
    tried); 0 when not even one camera holds.
    """
    if not 1 <= start <= limit:
        raise UsageError(f"need 1 <= start <= limit, got start={start}, limit={limit}")
    tried: list[tuple[int, bool]] = []

    def probe(n: int) -> bool:
        held = bool(holds(n))
        tried.append((n, held))
        return held

    good, bad = 0, limit + 1
    n = start
    while n <= limit:
        if probe(n):
            good = n
            if n == limit:
                break
            n = min(2 * n, limit)
        else:
            bad = n
            break
    while bad - good > 1:
        mid = (good + bad) // 2
        if probe(mid):
            good = mid
        else:
            bad = mid
    return good, tried


# --- the cameras ----------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CameraServer:
    """One live camera on http://127.0.0.1:port/cam.ts: ffmpeg replaying `clip` at its frame rate, as MPEG-TS.

    The packets are copied (`-c copy`), never re-encoded, so the server costs little CPU and the stream keeps the
    clip's keyframe interval and B-frames. ffmpeg's HTTP listen mode serves one client per process; `stop()`
    ends it. A context manager.
    """

    def __init__(self, clip: str | os.PathLike, port: int | None = None, log: str | os.PathLike | None = None) -> None:
        self.ffmpeg = shutil.which("ffmpeg")
        if self.ffmpeg is None:
            raise UsageError("ffmpeg is not installed (apt-get install ffmpeg): no camera server")
        self.clip, self.port = Path(clip), port or free_port()
        self.log = Path(log) if log is not None else None
        self.url = f"http://127.0.0.1:{self.port}/cam.ts"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> CameraServer:
        """Start ffmpeg and wait until it listens; raises UsageError with its log when it does not."""
        cmd = [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip),
               "-c", "copy", "-f", "mpegts", "-listen", "1", self.url]
        out = open(self.log, "ab") if self.log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        deadline = time.monotonic() + timeout_s
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:  # exited: e.g. the port was taken
                self.stop()
                tail = self.log.read_text(errors="replace")[-1000:] if self.log and self.log.exists() else ""
                raise UsageError(f"ffmpeg did not serve {self.clip} on port {self.port}: {tail}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """End ffmpeg (SIGTERM, then SIGKILL after 5 s) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def __enter__(self) -> CameraServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def listening(port: int) -> bool:
    """Whether 127.0.0.1:port listens or serves a client.

    Read from /proc/net/tcp: a probing connection would take ffmpeg's one client.
    """
    needle = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == needle and fields[3] in ("0A", "01"):  # TCP_LISTEN, TCP_ESTABLISHED
            return True
    return False


# --- serving N cameras ----------------------------------------------------------------------------------------
def decode_cost(clip: str | os.PathLike, source_options: Mapping[str, Any] | None = None,
                frames: int = 150) -> float:
    """CPU seconds per frame (the whole process, FFmpeg's own threads included) to read `clip` as cameras do.

    Measured apart from the live run, alone in the process, because a live reader's wall time is mostly waiting
    for the camera's next frame and FFmpeg decodes in threads of its own.
    """
    from stp_edge.video import open_source

    with open_source(clip, **dict(source_options or {})) as src:
        it = (f for f, _gap in src.frames_with_gaps(lazy=True))
        next(it, None)  # opening and the first frame are not a camera's steady cost
        t0, n = time.process_time(), 0
        for _ in it:
            n += 1
            if n >= frames:
                break
        return (time.process_time() - t0) / max(1, n)


def machine_busy_s() -> float | None:
    """CPU seconds all cores of this machine have been busy since boot (/proc/stat), None where unreadable."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(v) for v in fields]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class _Counters:
    """Encoder-call seconds and frames read and processed per camera, read at the window's start and end."""

    preprocess_s: float = 0.0
    encoder_s: float = 0.0
    frames: list[int] = field(default_factory=list)
    read: list[int] = field(default_factory=list)
    batches: Counter = field(default_factory=Counter)
    encode_thread_cpu_s: float = 0.0  # the serving thread's own CPU inside encoder calls

    def snapshot(self) -> _Counters:
        return _Counters(self.preprocess_s, self.encoder_s, list(self.frames), list(self.read), Counter(self.batches),
                         self.encode_thread_cpu_s)


class _TimedEncoder:
    """Wraps the Detector's encoder: adds each call's preprocess and encoder ms to the counters, once per call."""

    def __init__(self, real: Any, counters: _Counters) -> None:
        self._real, self._counters = real, counters

    def __call__(self, snippets, *, on_error=None):
        cpu0 = time.thread_time()  # the serving thread calls: its CPU here is encode work, not "rest"
        batch = self._real(snippets, on_error=on_error)
        self._counters.encode_thread_cpu_s += time.thread_time() - cpu0
        self._counters.preprocess_s += batch.timings.get("preprocess", 0.0) / 1e3
        self._counters.encoder_s += batch.timings.get("encoder", 0.0) / 1e3
        self._counters.batches[len(snippets)] += 1
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _thread_cpu_s(ident: int) -> float | None:
    """CPU seconds the thread `ident` (a `threading.get_ident()`) has used, None where the OS cannot say."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (AttributeError, OSError):
        return None


def serve_cameras(det, urls: list[str], fps: float, *, warmup_s: float = 5.0, window_s: float = 15.0,
                  source_options: Mapping[str, Any] | None = None, decode_s_per_frame: float | None = None,
                  keyframe_interval: int | None = None) -> dict[str, Any]:
    """Serve the live cameras at `urls` with `det` as `stp-edge run` does, for warmup + window seconds.

    The cameras go through `stp_edge.run.run_video` (its reader threads and bounded queue, the scheduler that
    lets snippets of several cameras share an encoder call, the backpressure that drops whole snippets of a camera
    that falls behind), so what is measured is the product's serving path, not a loop of the benchmark's own.
    Frames processed are those the detector took (`on_frame`): a dropped snippet's frames are read, not processed.

    Returns {"cameras", "held", "fps" (frames processed per second per camera, over the window), "min_fps",
    "utilisation", "window_s", "sampling" (`Detector.use_source` per camera), "encoder_batch" (mean snippets per
    encoder call), "dropped_snippets"}.
    Utilisation, per second of the window: "decode" cores (`decode_s_per_frame` x frames read; omitted when
    None), "preprocess" and "encoder" (the encoder calls' own timings), "rest" (the serving thread's CPU time
    outside the encoder calls: temporal, spatial, scheduling, records), "process" (CPU cores the whole process
    used: decoders, ONNX Runtime's pool, the serving thread), "machine" (CPU cores busy on the whole machine,
    other processes and the ffmpeg servers included; Linux only).
    `source_options` go to `open_source` (e.g. a decoder choice). `keyframe_interval`: the cameras' GOP where
    known (a live source cannot tell it), given to PyAV sources as a camera's configured GOP would be.
    """
    from stp_edge.run import run_video
    from stp_edge.video import open_source

    n = len(urls)
    counters = _Counters(frames=[0] * n, read=[0] * n)
    sources = [open_source(u, **dict(source_options or {})) for u in urls]
    for src in sources:
        if keyframe_interval is not None and getattr(src, "decoder", "opencv") == "pyav":
            src.keyframe_interval = keyframe_interval
    sampling = sorted({det.sampling_for(src)[0] for src in sources})  # what run_video's `use_source` fixes
    stop = threading.Event()
    serving = threading.get_ident()  # run_video's consumer runs in this thread
    marks: list[tuple] = []

    def on_frame(stream: int, read: int) -> None:
        counters.frames[stream] += 1
        counters.read[stream] = read

    def mark() -> tuple:
        return (time.perf_counter(), counters.snapshot(), time.process_time(), machine_busy_s(),
                _thread_cpu_s(serving))

    def watch() -> None:  # the window's two marks, then the end of the run
        for wait in (warmup_s, window_s):
            if stop.wait(wait):
                return
            marks.append(mark())
        stop.set()

    real_encoder = det.encoder
    det.encoder = _TimedEncoder(real_encoder, counters)
    watcher = threading.Thread(target=watch, name="stp-capacity-window", daemon=True)
    watcher.start()
    try:
        run = run_video(sources, detector=det, keep=False, on_frame=on_frame, stop=stop)
    finally:
        stop.set()
        watcher.join()
        det.encoder = real_encoder
        det.reset()
    if len(marks) < 2:
        raise RuntimeError(f"the cameras ended before the {warmup_s + window_s:.0f} s run was over "
                           f"(a camera server stopped?): {run.sources}")
    (t0, a, cpu0, busy0, th0), (t1, b, cpu1, busy1, th1) = marks
    span = t1 - t0
    counts = [b.frames[k] - a.frames[k] for k in range(n)]
    pre, enc = (b.preprocess_s - a.preprocess_s) / span, (b.encoder_s - a.encoder_s) / span
    util = {}
    if decode_s_per_frame is not None:
        util["decode"] = decode_s_per_frame * (sum(b.read) - sum(a.read)) / span
    util.update({"preprocess": pre, "encoder": enc})
    if th0 is not None and th1 is not None:
        # Not the thread's CPU minus the encoder calls' wall time: ONNX Runtime runs part of each call on the
        # calling thread, so that difference was ~0 whatever the rest cost.
        util["rest"] = max(0.0, (th1 - th0) - (b.encode_thread_cpu_s - a.encode_thread_cpu_s)) / span
    util["process"] = (cpu1 - cpu0) / span
    if busy0 is not None and busy1 is not None:
        util["machine"] = (busy1 - busy0) / span
    # A keyframes-only reader delivers a keyframe interval at a time (`falls_behind`'s burst).
    bursts = [(src.keyframe_interval or 1) if getattr(src, "decode_mode", "full") == "keyframes" else 1
              for src in sources]
    calls = b.batches - a.batches
    per_cam = [c / span for c in counts]
    held = not any(falls_behind(c, span, fps, burst=k) for c, k in zip(counts, bursts, strict=True))
    return {"cameras": n, "held": held, "fps": per_cam, "min_fps": min(per_cam), "utilisation": util,
            "window_s": span, "sampling": sampling,
            "encoder_batch": sum(k * v for k, v in calls.items()) / max(1, sum(calls.values())),
            "dropped_snippets": run.dropped_snippets}


def binding_resource(utilisation: Mapping[str, float], cores: int) -> str:
    """What limits the cameras, in words.

    The CPU shared with other work when the machine's cores are >= 90% busy and other processes hold a quarter
    of them or more; else the serving thread (one core: preprocess + encoder + rest) when it is busy >= 90% of the time;
    else the CPU cores when the process uses >= 90% of them; else nothing saturated yet (headroom).
    """
    thread = sum(utilisation.get(k, 0.0) for k in ("preprocess", "encoder", "rest"))
    stage = max(("preprocess", "encoder", "rest"), key=lambda k: utilisation.get(k, 0.0))
    cpu, machine = utilisation.get("process", 0.0), utilisation.get("machine")
    if machine is not None and machine >= 0.9 * cores and machine - cpu >= 0.25 * cores:
        return (f"CPU shared with other processes (machine {machine:.2f}/{cores} cores busy, this process "
                f"{cpu:.2f}; serving thread {thread:.0%} busy, mostly {stage})")
    if thread >= 0.9:
        return f"serving thread ({thread:.0%} busy, mostly {stage})"
    if cpu >= 0.9 * cores:
        top = max((k for k in utilisation if k not in ("process", "machine")), key=utilisation.__getitem__)
        return f"CPU ({cpu:.2f}/{cores} cores, largest share {top})"
    return f"none saturated (serving thread {thread:.0%}, CPU {cpu:.2f}/{cores} cores)"


def capacity(bundle, clip: str | os.PathLike, fps: float, *, read: str = "opencv-full", backend: str = "ort-cpu",
             start: int = 1, limit: int = 32, warmup_s: float = 5.0, window_s: float = 15.0,
             log_dir: str | os.PathLike | None = None, progress: Callable[[str], None] | None = None
             ) -> dict[str, Any]:
    """The largest number of live cameras replaying `clip` that `bundle` serves in real time (see the module doc).

    Each N tried loads the detector as `stp-edge run` would for N cameras read as `read` (a name of `READ_MODES`):
    sampling "auto", ONNX Runtime's pool sized by `stp_edge.run.plan_threads` beside the N decode threads.
    Returns {"largest_held", "tried", "decode_ms_per_frame" (`decode_cost`), "probes" (`serve_cameras` per N
    tried, with the "threads" plan), "at_capacity" (the probe at the largest N held, or None), "binding"
    (`binding_resource` at "binding_at": the first N that fell behind, else the largest N tried)}.
    """
    from stp_edge.api import Detector
    from stp_edge.run import available_cores, light_decode, plan_threads

    if read not in READ_MODES:
        raise UsageError(f"read must be one of {list(READ_MODES)}, got {read!r}")
    options = READ_MODES[read]
    probes: dict[int, dict[str, Any]] = {}
    decode_s = decode_cost(clip, options)
    gop = _keyframe_interval(clip)

    def holds(n: int) -> bool:
        log = Path(log_dir) / f"ffmpeg-{n}.log" if log_dir is not None else None
        ports: set[int] = set()
        while len(ports) < n:  # distinct: a port handed out twice would be "listening" for the wrong ffmpeg
            ports.add(free_port())
        servers = [CameraServer(clip, port=p, log=log) for p in sorted(ports)]
        plan = plan_threads(available_cores(), n, light=n if light_decode(options.get("decode"), options.get("decoder"))
                            else 0)
        try:
            for s in servers:
                s.start()
            with Detector.load(bundle, backend=backend, sampling="auto", threads=plan.intra_op) as det:
                probes[n] = serve_cameras(det, [s.url for s in servers], fps, warmup_s=warmup_s, window_s=window_s,
                                          source_options=options, decode_s_per_frame=decode_s,
                                          keyframe_interval=gop)
        finally:
            for s in servers:
                s.stop()
        probes[n]["threads"] = plan.describe()
        if progress is not None:
            p = probes[n]
            progress(f"  N={n}: {'held' if p['held'] else 'fell behind'} (slowest camera {p['min_fps']:.2f} fps; "
                     + ", ".join(f"{k} {v:.2f}" for k, v in p["utilisation"].items())
                     + f" cores; {p['encoder_batch']:.2f} snippets per encoder call; {plan.describe()})")
        return probes[n]["held"]

    largest, tried = find_capacity(holds, start=start, limit=limit)
    # What binds shows where the cameras stop fitting: at the first N that fell behind (else the largest tried).
    over = probes.get(largest + 1) or probes[max(probes)]
    return {"largest_held": largest, "tried": tried, "decode_ms_per_frame": decode_s * 1e3, "keyframe_interval": gop,
            "probes": [probes[n] for n, _ in tried], "at_capacity": probes.get(largest),
            "binding_at": over["cameras"], "binding": binding_resource(over["utilisation"], os.cpu_count() or 1)}


def _keyframe_interval(clip: str | os.PathLike) -> int | None:
    """The clip's regular keyframe interval (PyAV, from its packets), None where PyAV is absent or it varies."""
    try:
        from stp_edge.av_source import keyframe_interval
    except ImportError:
        return None
    try:
        return keyframe_interval(str(clip))
    except Exception:  # PyAV missing or the file unreadable by it: the cameras' GOP stays unknown
        return None


def bundle_capacity(bundle: str | os.PathLike, cameras: int, *, source: str | os.PathLike | None = None,
                    size: tuple[int, int] = (360, 640), read: str = "opencv-full", fps: float = 25.0,
                    backend: str = "ort-cpu", warmup_s: float = 5.0, window_s: float = 12.0,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`capacity` of a bundle for up to `cameras` live cameras, loaded for it (`stp-edge bench --cameras N`).

    The cameras replay `source` (default: a generated H.264 clip of `size`, keyframe every 16 frames, no
    B-frames), read as `read` (a name of `READ_MODES`).
    """
    import tempfile

    from stp_edge.bench.camera_clip import write_camera_clip
    from stp_edge.bundle import Bundle
    from stp_edge.machine import machine_info

    if read not in READ_MODES:
        raise UsageError(f"read must be one of {list(READ_MODES)}, got {read!r}")
    if cameras < 1:
        raise UsageError(f"need cameras >= 1, got {cameras}")
    load_before = os.getloadavg()
    loaded = Bundle.load(bundle)
    with tempfile.TemporaryDirectory(prefix="stp-capacity-") as tmp:
        clip = Path(source) if source is not None else write_camera_clip(Path(tmp) / "cam.mp4", size, fps=int(fps))
        out = capacity(loaded, clip, fps, read=read, backend=backend, start=min(2, cameras), limit=cameras,
                       warmup_s=warmup_s, window_s=window_s, log_dir=tmp, progress=progress)
    return {**out, "read": read, "source": str(source) if source is not None else f"generated {size[1]}x{size[0]} "
            "H.264, keyframe every 16 frames, no B-frames", "machine": machine_info(),
            "load_avg_before": load_before, "load_avg_after": os.getloadavg()}


def capacity_summary(out: dict[str, Any]) -> str:
    """A few lines for people: the largest N held, the N tried, the binding resource, the machine and its load."""
    m = out.get("machine", {})
    at = out.get("at_capacity") or {}
    util = ", ".join(f"{k} {v:.2f}" for k, v in at.get("utilisation", {}).items())
    tried = " ".join(f"{n}{'+' if h else '-'}" for n, h in out["tried"])
    load = out.get("load_avg_before")
    return "\n".join([
        f"cameras held in real time: {out['largest_held']} ({out.get('read', '')}; {out.get('source', '')})",
        f"N tried (+ held, - fell behind): {tried}",
        f"utilisation at {out['largest_held']} (cores): {util or '-'}",
        f"binding at {out['binding_at']}: {out['binding']}; decode {out['decode_ms_per_frame']:.2f} ms CPU per frame",
        f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores"
        + (f"; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at start" if load else ""),
    ])
