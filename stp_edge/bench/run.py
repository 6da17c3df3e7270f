"""`run_bench`: what one process of the runtime costs on this machine, measured in one run.

`run_bench(bundle)` measures, with the bundle's own runners and the runtime's own code paths:
- per-stage median and p99 ms (decode, preprocess, encoder, temporal, spatial, post) over the final results of a
  video (the `source`, or a generated 768x576 video: a random texture with moving blocks, MJPG) decoded by
  `stp_edge.video.open_source` once per stream and pushed frame by frame (`streams` streams, `batch` of them per
  `push_many`, so an encoder call serves up to `batch` snippets: its preprocess/encoder ms are per call);
- end-to-end ms per snippet (wall time from the first decode to the last result over all snippets of all
  streams), frames/s, and how many 25 fps cameras one process keeps up with;
- alert delay: a result is final (c + 1) snippets after its snippet starts, provisional after (N + 1) with
  `lookahead=N`; in frames and in seconds at 25 fps (compute time comes on top);
- peak RSS of the process after the runtime run (`resource.getrusage`: the process' peak since it started);
- cost per new snippet at stream length 64 vs 4,096: the fast path pushes 8x8 frames through `Detector.push`
  with the encoder stage replaced by random features, so the ring buffer, scheduling, temporal and spatial
  graphs run for every snippet as in a long stream, without spending minutes in the encoder;
- the physical floor: encoder FLOPs from the config over this machine's measured matmul rate (NumPy fp32; int8
  through ONNX Runtime's MatMulInteger when onnx is installed);
- with torch installed and the weights rebuildable from the bundle's recorded source, the plain PyTorch pipeline
  a researcher would write on the same weights and frames (cv2 decode of every frame, PIL bicubic + NumPy
  preprocessing of the sampled frame, eager `STPrompt.encode`, temporal stream on the last 2c+1 snippets,
  spatial stream), alternated snippet by snippet with the runtime so machine noise hits both alike.
torch is imported only for that baseline; the rest needs only the runtime.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stp_edge.bench.baseline import load_torch_pipeline
from stp_edge.bench.floor import physical_floor
from stp_edge.bench.report import BenchReport, StageStats
from stp_edge.bench.source import CAMERA_FPS, DEFAULT_SIZE, write_test_video
from stp_edge.bench.stream_cost import cost_by_stream_length
from stp_edge.bench.streams import run_streams
from stp_edge.errors import UsageError
from stp_edge.machine import describe_form, encoder_form, machine_info
from stp_edge.report import STAGES


def run_bench(bundle: str | os.PathLike, *, backend: str = "auto", precision: str | None = None, batch: int = 1,
              streams: int = 1, source: str | os.PathLike | None = None, frames: int | None = None,
              json_out: str | os.PathLike | None = None, torch_baseline: bool = True, progress: bool = True,
              lookahead: int | None = None, stream_lengths: Sequence[int] = (64, 4096),
              checkpoint: str | os.PathLike | None = None, compare_backends: bool = True) -> BenchReport:
    """Benchmark a bundle on this machine (see the module docstring); saves JSON/markdown/plot to `json_out`.

    Args:
        bundle: The bundle directory.
        backend: As `Detector.load` ("auto", "ort-cpu", "trt", ...).
        precision: Expected encoder precision (default: the bundle's); ONNX Runtime runs the bundle's graphs as
            exported, so another value is refused rather than silently measured at the wrong precision.
        batch: Streams per `push_many`, i.e. snippets per encoder call (<= streams).
        streams: Concurrent streams, each decoding its own copy of the source.
        source: A video file (default: a generated 768x576 MJPG video).
        frames: Frames per stream (default: enough for 2c+1+8 snippets).
        json_out: Where to save the JSON (+ .md, .png beside it); None: save nothing.
        torch_baseline: Run the plain PyTorch pipeline too, when torch and the weights are available.
        progress: Show progress bars.
        lookahead: Run the detector with provisional results N snippets late, and report that delay.
        stream_lengths: Stream lengths (snippets) at which the cost per new snippet is compared.
        checkpoint: The checkpoint a checkpoint-exported bundle came from (for the PyTorch baseline only; paths
            named inside a bundle are never opened).
        compare_backends: On a CPU backend, also time the encoder on every installed CPU backend and form the
            bundle allows (`stp_edge.bench.forms.compare_forms`), side by side.

    `precision` None runs the detector as `run` does by default (`Detector.load(precision="exported")`: the bundle's
    own precision); "auto" and "bf16" run what they do there: the form `stp_edge.machine.choose_cpu_form` picks as
    fastest on this CPU, or OpenVINO's bf16.
    """
    from stp_edge.api import Detector
    from stp_edge.bundle import Bundle

    if batch < 1 or streams < 1 or batch > streams:
        raise UsageError(f"need 1 <= batch <= streams, got batch={batch}, streams={streams}")
    want_plot = json_out is not None and importlib.util.find_spec("matplotlib") is not None
    notes: list[str] = []
    if json_out is not None and not want_plot:
        notes.append("matplotlib is not installed (pip install 'stp-edge[eval]'): no plot saved")
    b = Bundle.load(bundle)
    cfg = b.config
    have = b.graph_precision("encoder")
    cpu_precision = precision if precision in ("auto", "bf16") else "exported"
    precision = have if precision in (None, "auto", "bf16") else precision
    if precision != have and not any(e.precision == precision for e in b.engines):
        raise UsageError(f"bundle {b.path} has a {have} encoder and no {precision} engines; export it with "
                         f"--precision {precision} (or build engines) to benchmark {precision}")
    frames = frames or cfg.snippet_len * (2 * cfg.context + 1 + 8)
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="stp-bench-") as tmp:
        video = Path(source) if source is not None else write_test_video(Path(tmp) / "bench.avi", frames)
        source_desc = str(source) if source is not None else (
            f"generated {DEFAULT_SIZE[1]}x{DEFAULT_SIZE[0]} MJPG video (random texture, moving blocks)")
        t0 = time.perf_counter()
        det = Detector.load(b, backend=backend, lookahead=lookahead, precision=cpu_precision)
        load_s = time.perf_counter() - t0
        with det:
            # Measured before torch is imported: the runtime's own peak.
            peak_rss_mb = _peak_rss_mb() if not torch_baseline else None
            plain = (load_torch_pipeline(b, video, notes=notes, checkpoint=checkpoint) if torch_baseline
                     else None)
            run = run_streams(det, video, frames, streams, batch, progress, between=plain)
            if peak_rss_mb is None:
                peak_rss_mb = _peak_rss_mb()
                notes.append("peak RSS includes the plain PyTorch pipeline run in the same process (interleaved); "
                             "run with torch_baseline=False (--no-torch) for the runtime's own peak")
            stream_cost = cost_by_stream_length(det, stream_lengths, progress) if stream_lengths else None
        baseline = plain.summary() if plain is not None else None
    final = [r for r in run["results"] if r.final]
    stages = {k: StageStats.of([run["decode"].get((r.stream, r.snippet), 0.0) if k == "decode" else r.timings[k]
                                for r in final]) for k in STAGES}
    total_frames = run["frames_per_stream"] * streams
    report = BenchReport(
        bundle=str(b.path), backend=det.backend, precision=det.form.form if det.form else precision, batch=batch,
        streams=streams,
        source=source_desc, frames_per_stream=run["frames_per_stream"], snippets=len(final), load_s=load_s,
        stages=stages, end_to_end_ms_per_snippet=run["wall_s"] * 1e3 / max(1, len(final)),
        frames_per_s=total_frames / run["wall_s"], cameras_at_25fps=total_frames / run["wall_s"] / CAMERA_FPS,
        alert_delay=alert_delays(cfg.context, cfg.snippet_len, lookahead), peak_rss_mb=peak_rss_mb,
        stream_cost=stream_cost, floor=physical_floor(cfg), torch_baseline=baseline, machine=machine, notes=notes,
        form=describe_form(det.form) if det.form else None,
        backends=_compare_backends(b, progress) if compare_backends and det.form else [])
    notes.append("preprocess/encoder ms are per encoder call (one call serves up to `batch` snippets); temporal "
                 "ms per temporal call; decode ms per snippet of one stream (its 16 frames)")
    if not baseline:
        notes.append("peak RSS: the process' peak (getrusage) after the runtime run, before the stream-length "
                     "run; it includes whatever the calling process held before")
    notes.append("floor: NumPy's BLAS rate on one GEMM shape, not the CPU's peak; a tuned kernel (ONNX Runtime's) "
                 "can beat it, so a measured encoder below the fp32 floor is possible")
    if baseline:
        notes.append("plain PyTorch and stp-edge alternate snippet by snippet (each side's 16 frames, then the "
                     "other's), so machine noise hits both alike; each side's wall time excludes the other's")
    if json_out is not None:
        report.save(json_out, plot=want_plot)
    return report


def _compare_backends(bundle: Any, progress: bool) -> list[dict[str, Any]]:
    """`compare_forms` on the bundle's encoder: its graph form on each installed CPU backend (and bf16).

    Only the bundle's own graph is timed (the runtime never imports the exporter); what the dynamic INT8 form would
    buy on this CPU: export it (`export --precision int8 --int8-form dynamic`) and bench that bundle, or
    benchmarks/bench_backends.py, which times every form side by side.
    """
    import numpy as np

    from stp_edge.bench.forms import compare_forms

    size = bundle.config.vision.image_size
    images = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
    if progress:
        print("comparing the installed CPU backends on the encoder ...", flush=True)
    form = encoder_form(bundle.manifest)
    return compare_forms({form: bundle.graph_path("encoder")}, images)


def alert_delays(context: int, snippet_len: int, lookahead: int | None) -> dict[str, dict[str, float]]:
    """Frames and seconds (at 25 fps) from a snippet's first frame until its result can be emitted."""
    def delay(n: int) -> dict[str, float]:
        return {"snippets": n + 1, "frames": (n + 1) * snippet_len, "seconds": (n + 1) * snippet_len / CAMERA_FPS}

    out = {"final": delay(context)}
    if lookahead is not None and lookahead < context:
        out[f"provisional (lookahead {lookahead})"] = delay(lookahead)
    out["provisional (lookahead 0, the minimum)"] = delay(0)
    return out


def _peak_rss_mb() -> float:
    """This process' peak resident memory so far, MB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if platform.system() == "Darwin" else rss / 1024  # bytes on macOS, KiB on Linux

