"""`stp-edge` command line: a thin layer over library functions, one per subcommand.

    stp-edge export (--checkpoint P | --demo | --random) -o OUT.stp   stp_edge.export.bundle_export
    stp-edge verify BUNDLE                                          stp_edge.export.verify
    stp-edge build-engines BUNDLE [--precision fp16|fp32|int8]      stp_edge.export.trt_build
    stp-edge run BUNDLE SOURCE... [--jsonl OUT] [--overlay MP4]     stp_edge.run.run_video
    stp-edge info BUNDLE                                            stp_edge.bundle.Bundle
    stp-edge bench BUNDLE                                           stp_edge.bench.run_bench
    stp-edge extract VIDEOS -o FEATS / score VIDEOS --bundle B      stp_edge.scale
    stp-edge serve BUNDLE                                           stp_edge.scale.serve (Triton)
    stp-edge train / eval / demo                                    stp_edge.model.train / eval / demo

Exit codes: 0 done; 1 the job ran but did not succeed (verify failed, a video failed, a live source was lost
for good, a graph call failed with its retry or broke its output contract: `InferenceError`); 2 a library error
(bad bundle, unreadable video, missing dependency, bad option: one line, no traceback); 130 / 143 stopped by
SIGINT / SIGTERM after flushing every output. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from stp_edge._version import __version__
from stp_edge.bundle.preprocessing import FRAME_POLICIES
from stp_edge.config import BOX_RULES, DEMO_CLASSES, PRETRAINED_REGIONS, REGION_EXTENTS, load_queries
from stp_edge.errors import StpEdgeError, UsageError

EXIT_FAILED = 1
EXIT_USAGE = 2
BACKENDS_HELP = ("auto (TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU), trt, ort, ort-cuda, ort-trt, ort-cpu, "
                 "or triton://HOST:PORT (a server started by `stp-edge serve`)")


_API_WITH_OPTION = re.compile(r"\S+=\S* \(CLI: ([^)]+)\)")  # "overwrite=True (CLI: --force)" -> "--force"


def _one_line(exc: BaseException) -> str | None:
    """The one-line message of an error the user can act on; None for a bug (keep its traceback).

    Library messages name a Python argument with its option beside it, `overwrite=True (CLI: --force)`
    (`stp_edge.errors`); on the command line only the option is shown ("pass --force").
    """
    from stp_edge._deps import explain

    if isinstance(exc, StpEdgeError):
        return _API_WITH_OPTION.sub(r"\1", str(exc))
    if isinstance(exc, ModuleNotFoundError):
        line = explain(exc)
        return line if line != str(exc) else None  # a module an extra provides, else a packaging bug
    if isinstance(exc, OSError) and exc.errno is not None:  # the OS refused: a path, a full disk, permissions
        from stp_edge.outputs import describe_os_error

        return describe_os_error(exc)  # "out/x: File exists (EEXIST)", never a bare "[Errno 17]"
    return None


def _check_paths(outputs: dict[str, Any], inputs: Sequence[Any] = (), *, bundle: Path | None = None,
                 directories: Sequence[str] = ()) -> None:
    """The one output check (`stp_edge.outputs.check_outputs`) for a command's output options, before any work.

    Never an input, never inside the bundle the command reads, never a device, FIFO or standard stream where
    a file or directory is written; one line naming the option and the path.
    """
    from stp_edge.outputs import check_outputs

    protected = None
    if bundle is not None:
        bundle = Path(bundle)
        protected = {"the bundle": bundle.parent if bundle.name == "manifest.json" else bundle}
    check_outputs(outputs, [p for p in inputs if p is not None], protected=protected, directories=directories)


# --- export / verify / engines / info -----------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint, the demo model or a random model to a bundle (a directory NAME.stp).

    With --precision int8 the encoder is quantized (Q/DQ, calibrated on frames of the videos in --calib);
    with --triton REPO a Triton model repository of the new bundle is written as well.
    """
    from stp_edge.export.quantize import check_int8_form_request, model_snippet_len

    if args.out.suffix.lower() in (".onnx", ".plan", ".engine", ".trt"):
        raise UsageError(f"-o {args.out}: a bundle is a directory of graphs and a manifest, not one "
                         f"{args.out.suffix} file; name it e.g. {args.out.with_suffix('.stp')}")
    _check_paths({"-o": args.out, "--triton": args.triton},
                 [args.checkpoint, args.clip_weights, args.calib, args.queries], directories=("-o", "--triton"))
    # The INT8 inputs are checked before torch is imported (seconds) and the graphs exported (minutes).
    int8_form = check_int8_form_request(args.precision, args.int8_form, args.calib, args.calib_frames,
                                        model_snippet_len(checkpoint=args.checkpoint, demo=args.demo,
                                                          random_config=args.config if args.random else None))
    overrides = {**(load_queries(args.queries) if args.queries is not None else {}), **_region_overrides(args)}
    from stp_edge.export.bundle_export import export_bundle

    out = export_bundle(args.out, checkpoint=args.checkpoint, clip_weights=args.clip_weights, demo=args.demo,
                        random_config=args.config if args.random else None, seed=args.seed,
                        precision=args.precision, opset=args.opset, simplify=not args.no_simplify,
                        overwrite=args.force, progress=not args.quiet, calib=args.calib,
                        calib_frames=args.calib_frames, int8_form=int8_form, box_rule=args.box_rule,
                        config_overrides=overrides or None,
                        frame_policy=args.frame_policy, region_extent=args.region_extent)
    print(f"wrote {out}")
    if args.triton is not None:
        from stp_edge.scale.triton_repo import write_triton_repository

        repo = write_triton_repository(out, args.triton, backends=tuple(args.triton_backend or ("onnxruntime",)),
                                       max_batch=args.triton_max_batch, instances=args.triton_instances,
                                       onnx_device=args.triton_device)
        print(f"wrote Triton model repository {repo}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a bundle's graphs against the torch reference on fresh random inputs (exit 1 when one fails)."""
    from stp_edge.export.verify import verify_bundle

    report = verify_bundle(args.bundle, checkpoint=args.checkpoint, seed=args.seed, batch=args.batch,
                           backends=tuple(args.backend or ("ort",)))
    print("verify: OK" if report.ok else "verify: FAILED")
    return 0 if report.ok else EXIT_FAILED


def cmd_build_engines(args: argparse.Namespace) -> int:
    """Build TensorRT engines for a bundle on this GPU (engines/<gpu>-<precision>/ and the manifest)."""
    from stp_edge.export.trt_build import build_bundle_engines

    out = build_bundle_engines(args.bundle, precision=args.precision, max_batch=args.max_batch,
                               opt_batch=args.opt_batch, max_snippets=args.max_snippets, device=args.device,
                               version_compatible=args.version_compatible,
                               hardware_compatibility=args.hardware_compatibility, workspace_mb=args.workspace_mb,
                               timing_cache=args.timing_cache, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a bundle's manifest (every file checked by sha256 unless --no-check)."""
    from stp_edge.bundle import Bundle

    bundle = Bundle.load(args.bundle, verify=not args.no_check)
    print(json.dumps(bundle.manifest, indent=2) if args.json else bundle.summary())
    return 0


# --- run --------------------------------------------------------------------------------------------------
class _Score(NamedTuple):
    """What `--plot` keeps of a final result (`stp_edge.results.frame_scores` reads these three fields)."""

    frame_start: int
    frame_end: int
    score: float


def _event_line(r: Any, fps: float | None = None) -> str:
    """One result as a line: stream, snippet, frames (and seconds where the stream's rate is known), score, box."""
    seconds = f" {r.frame_start / fps:.2f}s-{r.frame_end / fps:.2f}s" if fps else ""
    line = (f"stream {r.stream} snippet {r.snippet:5d} frames [{r.frame_start}, {r.frame_end}){seconds} "
            f"score {r.score:.3f} {r.class_name}")
    if r.boxes:
        b = r.boxes[0]
        line += f" box ({b.x1:.0f},{b.y1:.0f})-({b.x2:.0f},{b.y2:.0f})"
    return line + ("" if r.final else " (provisional)")


def _check_run_options(args: argparse.Namespace, sources: list[Any], bundle_dir: Path) -> None:
    """Everything that can be checked before any output is opened: options, output paths, dependencies, codecs.

    Outputs (`stp_edge.outputs.check_outputs`): never an input, never inside the bundle, --jsonl a regular
    file, FIFO, /dev/stdout or -, the others regular files; an existing one is refused unless --force (or
    --append for --jsonl), and so is the `NAME.partial.EXT` a killed run left for --overlay.
    """
    from stp_edge._deps import require
    from stp_edge.errors import OutputExistsError
    from stp_edge.outputs import check_outputs

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.append and not args.jsonl:
        raise UsageError("--append adds this run's lines to the --jsonl file; give --jsonl FILE")
    if (args.overlay or args.plot) and len(sources) != 1:
        raise UsageError(f"--overlay and --plot draw one source; {len(sources)} sources were given")
    files = [s.target for s in sources if s.kind == "file"]
    hint = "pass --force to replace it"
    refuse = {} if args.force else {"--overlay": hint, "--plot": hint}
    if not (args.force or args.append):
        refuse["--jsonl"] = "pass --append to add this run's lines to it, or --force to replace it"
    check_outputs({"--jsonl": args.jsonl, "--overlay": args.overlay, "--plot": args.plot}, files,
                  protected={"the bundle": bundle_dir}, streams=("--jsonl",), refuse_existing=refuse)
    if args.overlay and not args.force:
        from stp_edge.run import describe_overlay_leftover

        leftover = describe_overlay_leftover(args.overlay)
        if leftover:
            raise OutputExistsError(f"--overlay {args.overlay}: {leftover}; rename it to keep it, or pass --force "
                                    "to replace it")
    if args.plot:
        require("matplotlib", "--plot")
    if args.overlay:
        from stp_edge.run import check_overlay_codec

        check_overlay_codec(args.overlay)


def _run_config(args: argparse.Namespace, out: TextIO) -> int:
    """`stp-edge run --config FILE`: the deployment of a config file (`stp_edge.apps.service`), until a signal."""
    from stp_edge.apps.deploy import load_config
    from stp_edge.apps.service import run_deployment
    from stp_edge.backends import CallLimits

    given = [f for f, v in (("BUNDLE", args.bundle), ("SOURCE", args.source), ("--jsonl", args.jsonl),
                            ("--overlay", args.overlay), ("--plot", args.plot), ("--camera", args.camera),
                            ("--threshold", args.threshold), ("--spatial", args.spatial),
                            ("--lookahead", args.lookahead)) if v]
    if given:
        raise UsageError(f"--config {args.config} names the bundle, the cameras and their outputs; "
                         f"{', '.join(given)} cannot be given with it (set them in the file: docs/config.md)")
    config = load_config(args.config)
    if args.backend != "auto":
        import dataclasses

        config = dataclasses.replace(config, backend=args.backend)
    if not args.quiet:
        print(config.describe(), file=out, flush=True)
    limits = CallLimits(call_timeout_s=args.call_timeout, memory_limit_gib=args.memory_limit,
                        connect_timeout_s=args.connect_timeout)
    stopper = _StopOnSignal()
    with stopper:
        report = run_deployment(config, stop=stopper.event, max_frames=args.max_frames, out=out,
                                threads=args.threads, limits=limits, on_invalid=args.on_invalid)
    if not args.quiet:
        print(report.describe(), file=out, flush=True)
    if stopper.signum is not None:
        print(f"stopped by {signal.Signals(stopper.signum).name}; events ended, clips and sinks closed",
              file=sys.stderr)
        return 128 + stopper.signum
    lost = [c for c in report.cameras.values() if c.ended and c.ended.startswith("lost")]
    return 1 if lost else 0


class _StopOnSignal:
    """SIGINT/SIGTERM/SIGHUP handling of a run: the first sets `event`, a second interrupts at once.

    With `event` set the run finishes the frames it read and flushes every output. A second signal raises
    KeyboardInterrupt: the results not yet final are dropped, and the outputs are still closed whole (an
    overlay frame or file is never cut by it: `stp_edge.outputs.signals_deferred`). `signum` is the last signal.
    Handlers are installed (from the main thread only) while the context is entered, and the previous ones
    restored on exit; SIGHUP only where it would have ended the process (not under nohup).
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        again = self.event.is_set()
        self.signum = signum
        self.event.set()
        if again:
            raise KeyboardInterrupt

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            sigs = [signal.SIGINT, signal.SIGTERM]
            if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
                sigs.append(signal.SIGHUP)
            self._previous = {sig: signal.signal(sig, self._handler) for sig in sigs}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)


def cmd_run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run a bundle over videos, URLs or cameras; print anomalies, events and latency; write JSON lines/overlay.

    SOURCE may be a file, an rtsp:// or http:// URL, a camera index, a directory, a glob or a .txt list of
    those; several sources run together, one stream each. --jsonl is written line by line under its name (a
    FIFO, /dev/stdout or - streams; with - this text goes to stderr); --overlay as NAME.partial.EXT, renamed
    at the end; an existing output is refused unless --force (or --append). Ctrl-C / SIGTERM / SIGHUP end the
    run cleanly (exit 130 / 143 / 129); a second one stops at once, outputs still closed whole.
    """
    from stp_edge.api import Detector
    from stp_edge.backends import CallLimits
    from stp_edge.bundle.preprocessing import describe_coverage
    from stp_edge.machine import describe_form
    from stp_edge.outputs import output_kind
    from stp_edge.run import available_cores, light_decode, open_sources, plan_threads
    from stp_edge.video import Backoff

    out = out or sys.stdout
    if args.config is not None:
        return _run_config(args, out)
    if args.bundle is None:
        raise UsageError("no BUNDLE given: stp-edge run BUNDLE SOURCE... (or stp-edge run --config cameras.yaml)")
    if args.jsonl is not None and output_kind(args.jsonl) == "stdout" and out is sys.stdout:
        out = sys.stderr  # standard output carries the JSON lines alone
    bundle, specs = args.bundle, list(args.source)
    if not specs:
        raise UsageError("no SOURCE given: stp-edge run BUNDLE SOURCE...")
    reconnect = None if args.reconnect_s == 0 else Backoff(max_total_s=args.reconnect_s)
    # Validate everything (bundle, sources, options, output paths, codecs) before any output is opened.
    limits = CallLimits(call_timeout_s=args.call_timeout, memory_limit_gib=args.memory_limit,
                        connect_timeout_s=args.connect_timeout)
    count = _count_sources(specs)
    plan = None if args.threads is not None else plan_threads(available_cores(), count,
                                                               light=count if light_decode(args.decode, args.decoder)
                                                               else 0)
    with Detector.load(bundle, backend=args.backend, preprocess=args.preprocess, device=args.device,
                       spatial_on=args.spatial, lookahead=args.lookahead,
                       allow_host_code=args.allow_host_code, limits=limits, on_invalid=args.on_invalid,
                       threads=args.threads if plan is None else plan.intra_op,
                       sampling=getattr(args, "sampling", "center"),
                       precision=getattr(args, "precision", "exported"),
                       ort_trt_fp16=getattr(args, "ort_trt_fp16", False),
                       features=getattr(args, "features", "auto")) as det:
        if args.threshold is not None:
            det.score_threshold = float(args.threshold)
        # NVDEC under --decoder auto: for one source whose detector preprocesses on CUDA (a batch mixes no
        # device frames with host ones); --decoder nvdec asks for it on every source.
        if args.decoder == "nvdec" and det.preprocess_name != "cuda":
            raise UsageError(f"--decoder nvdec keeps frames on the GPU, which only the CUDA preprocessing reads: this "
                             f"detector preprocesses with {det.preprocess_name} (use --preprocess cuda)")
        if args.decoder == "nvdec" and args.overlay:
            raise UsageError("--overlay draws on host frames; --decoder nvdec keeps them on the GPU: use --decoder "
                             "pyav")
        gpu = (args.device if det.preprocess_name == "cuda" and not args.overlay
               and (count == 1 or args.decoder == "nvdec") else None)
        sources = open_sources([int(s) if str(s).isdigit() else s for s in specs],
                               reconnect=reconnect, timeout_ms=args.timeout_ms, decoder=args.decoder,
                               decode=args.decode, cuda_device=gpu)
        try:
            _check_run_options(args, sources, det.bundle.path)
            sampling = [det.sampling_for(src) for src in sources]  # refused here, before any output is opened
        except BaseException:
            for src in sources:
                src.close()
            raise
        _remove_strays(args, out)
        if not args.quiet:
            engine = "onnxruntime" if det.backend.startswith("ort") else "openvino"
            threads = ("" if not det.backend.startswith(("ort", "openvino")) else f", threads {args.threads} "
                       f"{engine} (--threads)" if plan is None else f", threads {plan.describe(engine)}")
            print(f"bundle {bundle}: backend {det.backend}, preprocessing {det.preprocess_name}, device "
                  f"{args.device}, threshold {det.score_threshold:.2f}, {len(sources)} source(s){threads}",
                  file=out, flush=True)
            print(f"features: {det.features}", file=out, flush=True)
            print(describe_coverage(det.bundle.preprocess_spec), file=out, flush=True)
            if det.form is not None:  # which CPU backend and encoder form ran, and what it buys on this CPU
                print(describe_form(det.form), file=out, flush=True)
        for i, src in enumerate(sources):  # which stream is which (URL credentials masked); a down one said always
            down = f": DOWN at start ({src.down_at_start}); retrying in the background" if src.down_at_start else ""
            if down or not args.quiet:
                how = f", sampling {sampling[i][0]} ({sampling[i][1]})" if det.sampling != "center" else ""
                print(f"stream {i}: {src.name}{how}{down}", file=out, flush=True)
            if not args.quiet:  # which decoder and mode read it, and why
                print(f"stream {i}: {src.describe_decoder()}", file=out, flush=True)
        return _run_sources(det, sources, args, out)


def _count_sources(specs: list[Any]) -> int:
    """How many sources `specs` name, for sizing threads.

    A spec that does not expand counts as one: opening the sources says what is wrong with it.
    """
    from stp_edge.sources import expand_sources

    n = 0
    for spec in specs:
        try:
            n += 1 if str(spec).isdigit() else len(expand_sources(spec))
        except Exception:
            n += 1
    return n


def _remove_strays(args: argparse.Namespace, out: TextIO) -> None:
    """Remove the hidden temporaries of this run's outputs that a killed run left, and say so."""
    from stp_edge.outputs import output_kind, remove_stray_temporaries

    removed = [p for o in (args.jsonl, args.overlay, args.plot) if o and output_kind(o) == "file"
               for p in remove_stray_temporaries(o)]
    if removed:
        print(f"removed {len(removed)} temporary file(s) an interrupted run left: "
              + ", ".join(str(p) for p in removed), file=out, flush=True)
    if args.jsonl and output_kind(args.jsonl) == "fifo" and not args.quiet:
        print(f"--jsonl {args.jsonl} is a FIFO: the run starts when a reader opens it", file=out, flush=True)


def _run_sources(det: Any, sources: list[Any], args: argparse.Namespace, out: TextIO) -> int:
    from tqdm.auto import tqdm

    from stp_edge.backends.errors import CallInterruptedError
    from stp_edge.bundle.preprocessing import describe_coverage
    from stp_edge.outputs import output_kind
    from stp_edge.run import run_video

    totals = [s.frame_count for s in sources]
    known = all(n is not None for n in totals) and not args.quiet
    limit = args.max_frames
    bar = (tqdm(total=sum(min(n, limit) if limit else n for n in totals), unit="frame", file=sys.stderr,
                desc="run") if known else None)
    scores: list[_Score] = []  # --plot: three numbers per snippet, not whole results (maps, probabilities)
    stopper = _StopOnSignal()
    write = ((lambda line: bar.write(line, file=out)) if bar is not None  # above the bar, on `out`
             else (lambda line: print(line, file=out, flush=True)))

    covered: set[int] = set()  # streams whose analysed part was said, at their first result (its frame size)

    def on_result(r: Any) -> None:
        if r.stream not in covered and tuple(r.frame_shape) != (0, 0) and not args.quiet:
            covered.add(r.stream)
            write(f"stream {r.stream}: {describe_coverage(det.bundle.preprocess_spec, tuple(r.frame_shape))}")
        if args.plot and r.final:
            scores.append(_Score(r.frame_start, r.frame_end, r.score))
        if not r.valid:  # what failed, always: a graph call, or an output its contract forbids
            write(f"INVALID stream {r.stream} snippet {r.snippet} frames [{r.frame_start}, {r.frame_end}): "
                  f"{r.invalid_reason}")
        elif (r.is_anomaly and not args.quiet) or args.verbose:  # stream i is sources[i]: its times in seconds
            write(("ANOMALY " if r.is_anomaly else "        ") + _event_line(r, sources[r.stream].fps))

    def on_gap(stream: int, gap: Any) -> None:
        if gap.frame == 0:  # a source down at start came up
            write(f"UP      stream {stream}: connected {gap.lost_s:.1f}s after the start, after "
                  f"{gap.attempts} attempt(s)")
            return
        write(f"GAP     stream {stream}: {gap.lost_s:.1f}s lost before frame {gap.frame}, reconnected after "
              f"{gap.attempts} attempt(s); temporal window reset")

    def on_end(run: Any) -> None:  # with several sources, each says when it is done: its lines are written
        if len(sources) < 2:
            return
        if run.stats.lost:
            write(f"LOST    stream {run.stream}: {run.stats.lost_reason}; its results are written")
        elif run.error is not None:
            write(f"FAILED  stream {run.stream}: {_one_line(run.error) or type(run.error).__name__}; its results "
                  "are written")
        else:
            write(f"ENDED   stream {run.stream}: {run.stats.read} frames read; its results are written")

    mode = "a" if args.append else "w" if args.force else "x"
    try:
        with stopper:  # the JSONL file keeps what was analysed, even when the run fails part-way
            results = run_video(sources, detector=det, on_result=on_result, on_gap=on_gap, on_end=on_end,
                                on_frame=(lambda s, n: bar.update(1)) if bar is not None else None,
                                max_frames=limit, keep=False, overlay=args.overlay, jsonl=args.jsonl,
                                jsonl_mode=mode, stop=stopper.event, drop_late=not args.no_drop,
                                cameras=args.camera)
    except KeyboardInterrupt:  # a second signal: stopped at once, every output closed whole by run_video
        if stopper.signum is None:
            raise
        if bar is not None:
            bar.close()  # the message on a line of its own, not after the bar
        print(f"stopped at once by a second {signal.Signals(stopper.signum).name}: results not yet final were "
              "dropped; outputs closed", file=sys.stderr)
        return 128 + stopper.signum
    except CallInterruptedError:  # the stop ended a graph call in flight: a stop, not a failure
        if stopper.signum is None:
            raise
        if bar is not None:
            bar.close()
        print(f"stopped by {signal.Signals(stopper.signum).name} during a graph call; outputs flushed",
              file=sys.stderr)
        return 128 + stopper.signum
    finally:
        if bar is not None:
            bar.close()
    written = [str(p) for p in (args.jsonl,) if p and output_kind(p) == "file"]  # not a FIFO or stdout
    if args.overlay:
        from stp_edge.video import describe_codec

        written.append(f"{args.overlay} ({describe_codec(args.overlay)})")
    if args.plot:
        from stp_edge.visualize import plot_scores

        written.append(str(plot_scores(scores, args.plot, fps=results.fps, threshold=results.threshold)))
    _print_summary(results, out, quiet=args.quiet, fps={i: s.fps for i, s in enumerate(sources)})
    for stream, n in sorted(det.sampling_fallbacks.items()):  # keyframe sampling: snippets without a keyframe
        print(f"SAMPLING stream {stream}: {n} snippet(s) held no keyframe and were sampled at the center", file=out)
    for path in written:
        print(f"wrote {path}", file=out)
    if stopper.signum is not None:
        print(f"stopped by {signal.Signals(stopper.signum).name}; outputs flushed", file=sys.stderr)
        return 128 + stopper.signum
    return EXIT_FAILED if results.lost else 0


def _print_summary(results: Any, out: TextIO, *, quiet: bool, fps: dict[int, float | None] | None = None) -> None:
    from stp_edge.report import format_latency, plural
    from stp_edge.video import display_source

    rate = results.frames_read / results.wall_s if results.wall_s else 0.0
    dropped = sum(s.stats.dropped for s in results.sources)
    print(f"{plural(results.snippets, 'snippet')}, {results.anomalous} anomalous; "
          f"{plural(results.frames_read, 'frame')} read, {dropped} dropped; {rate:.1f} frames/s", file=out)
    for s in results.sources:
        st, name = s.stats, display_source(s.source)
        if st.missing:  # only a file that ended on its own: a frame limit or a stop is not a short file
            print(f"TRUNCATED {name}: the container promised {plural(st.expected, 'frame')}, {st.read} were read "
                  f"({st.dropped} dropped)", file=out)
        if s.rejected:
            print(f"REJECTED {name}: {s.rejected} frame(s) refused by the detector (skipped)", file=out)
        if st.gaps:
            print(f"GAPS    {name}: {plural(len(st.gaps), 'outage')}, {st.gap_s:.1f}s lost", file=out)
        if getattr(s, "dropped_snippets", 0):
            print(f"BEHIND  {name}: {plural(s.dropped_snippets, 'snippet')} ({s.dropped_frames} frames) dropped whole "
                  "to keep real time (the model is slower than this camera; see the JSONL's dropped lines)", file=out)
        if st.lost:
            print(f"LOST    {st.lost_reason}", file=out)
    if quiet:
        return
    events = results.events.finish()
    print(f"events: {results.events.count}" + ("" if events else " (none above the threshold)"), file=out)
    fps = fps or {s.stream: s.fps for s in results.sources}  # seconds for every stream whose rate is known
    for ev in events:
        print("  " + ev.describe(fps), file=out)
    batches = getattr(results, "encoder_batches", None)
    if batches and len(results.sources) > 1:
        calls = sum(batches.values())
        print(f"encoder calls: {calls}, snippets per call: {sum(k * v for k, v in batches.items()) / calls:.2f} "
              f"mean, {max(batches)} max", file=out)
    table = results.latency.table()
    if table:
        for line in format_latency(table):
            print(line, file=out)


# --- offline / scale-out / benchmarks ------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    """Train the STPrompt heads on extracted snippet features with video-level labels (top-k MIL)."""
    from stp_edge.model.train import train_from_features

    _check_paths({"-o": args.out}, [args.features, args.init, args.clip_weights, args.list, args.queries],
                 directories=("-o",))
    classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else None
    report = train_from_features(args.features, args.out, init=args.init, config=args.config, classes=classes,
                                 clip_weights=args.clip_weights, epochs=args.epochs, lr=args.lr,
                                 batch_size=args.batch_size, seed=args.seed, overwrite=args.force,
                                 format=args.format, recipe=args.recipe, list_file=args.list,
                                 queries=load_queries(args.queries) if args.queries is not None else None)
    frame_only = "" if report.training.get("region_term", True) else " (frame-only model: region term off)"
    print(f"trained on {report.videos} videos ({args.format} format, {args.recipe} recipe){frame_only}: "
          f"loss {report.losses[0]:.4f} -> {report.losses[-1]:.4f}; wrote {report.checkpoint}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a bundle on a labelled benchmark: frame AUC, localisation (ground truth checked per video)."""
    from stp_edge.eval.metrics import require_eval_dependencies
    from stp_edge.eval.run import evaluate_bundle

    _check_paths({"--out": args.out}, [args.data, args.annotations, args.boxes], bundle=args.bundle,
                 directories=("--out",))
    require_eval_dependencies(plots=args.out is not None)  # before a benchmark is generated or a video scored
    data = args.data
    if data is None:  # no data set given: evaluate on a synthetic split generated here
        from stp_edge.synthetic import write_benchmark

        data = (args.out if args.out is not None else Path("out/eval")) / f"synthetic_{args.split}"
        write_benchmark(data, split=args.split, num_videos=args.num_videos, seed=args.seed)
    result = evaluate_bundle(args.bundle, data, backend=args.backend, out_dir=args.out, fmt=args.format,
                             annotations=args.annotations, on_mismatch=args.on_mismatch, boxes=args.boxes)
    print(result.to_json())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Export the embedded demo model and run the runtime on a generated clip."""
    from stp_edge.demo import run_demo

    _check_paths({"--out": args.out}, directories=("--out",))
    run_demo(args.out, anomaly=args.anomaly, seed=args.seed, seconds=args.seconds)
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Snippet features (frame_emb, region_emb, label) of videos, with the encoder a bundle deploys; resumable."""
    from stp_edge.scale.extract import extract_features

    _check_paths({"-o": args.out}, [args.labels, args.annotations], bundle=args.bundle, directories=("-o",))
    report = extract_features(args.videos, args.out, bundle=args.bundle, clip_weights=args.clip_weights,
                              labels=args.labels, fmt=args.format, annotations=args.annotations,
                              backend=args.backend, batch=args.batch, resume=not args.no_resume, ray=args.ray,
                              workers=args.workers, ray_address=args.ray_address,
                              classes=[c.strip() for c in args.classes.split(",")] if args.classes else None)
    print(report.summary())
    return 0 if report.ok else EXIT_FAILED


def cmd_score(args: argparse.Namespace) -> int:
    """Score videos with a bundle: one JSON-lines file of results per video; resumable, optionally on Ray."""
    from stp_edge.scale.score import score_videos

    _check_paths({"-o": args.out}, bundle=args.bundle, directories=("-o",))
    report = score_videos(args.videos, args.bundle, args.out, backend=args.backend, resume=not args.no_resume,
                          ray=args.ray, workers=args.workers, ray_address=args.ray_address)
    print(report.summary())
    return 0 if report.ok else EXIT_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a bundle's graphs with Triton Inference Server (PyTriton) until interrupted."""
    from stp_edge.scale.serve import serve

    return serve(args.bundle, port=args.port, host=args.host, max_batch=args.max_batch, instances=args.instances,
                 threads=args.threads, queue_delay_us=args.queue_delay_us, python=args.python)


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure a bundle on this machine: per-stage latency, frames/s, cameras at 25 fps, RSS, floors, torch."""
    from stp_edge.bench import run_bench

    # Nothing is written unless asked: the table goes to stdout, files only where --json/-o says.
    _check_paths({"-o/--json": args.json}, [args.source], bundle=args.bundle)
    if args.cameras is not None:
        return _bench_cameras(args)
    report = run_bench(args.bundle, backend=args.backend, precision=args.precision, batch=args.batch,
                       streams=args.streams, source=args.source, frames=args.frames, json_out=args.json,
                       torch_baseline=not args.no_torch, lookahead=args.lookahead, progress=True,
                       compare_backends=not args.no_compare)
    print(report.markdown())
    if args.json is not None:
        print(f"saved {', '.join(str(p) for p in report.saved)}")
    return 0


def _bench_cameras(args: argparse.Namespace) -> int:
    """`stp-edge bench --cameras N`: the largest number of live cameras (<= N) served in real time."""
    import json

    from stp_edge.bench.capacity import bundle_capacity, capacity_summary

    out = bundle_capacity(args.bundle, args.cameras, source=args.source, read=args.read,
                          backend="ort-cpu" if args.backend == "auto" else args.backend, progress=print)
    print(capacity_summary(out))
    if args.json is not None:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"saved {args.json}")
    return 0


# --- parser -----------------------------------------------------------------------------------------------
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown in an option's help unless it names its default itself; descriptions keep line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _sub(sub: Any, name: str, func: Any, help: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=func.__doc__, formatter_class=_Formatter)
    p.set_defaults(func=func)
    return p


def cmd_health(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Check a running deployment's health file (`health_file` in its config); exit 0 when healthy.

    Healthy: the file was written within --max-age seconds and every camera delivered a frame within that time
    and is online; else each problem is printed and the exit status is 1. For watchdogs: Docker's HEALTHCHECK,
    a systemd timer, a monitoring agent.
    """
    from stp_edge.apps.service import check_health

    out = out or sys.stdout
    problems = check_health(args.file, args.max_age)
    for line in problems:
        print(line, file=out)
    if not problems and not args.quiet:
        print(f"{args.file}: healthy", file=out)
    return 1 if problems else 0


def _add_health(sub: Any) -> None:
    h = _sub(sub, "health", cmd_health, "check a deployment's health file (for watchdogs)")
    h.add_argument("file", type=Path, help="the health file a `stp-edge run --config` writes (health_file)")
    h.add_argument("--max-age", type=float, default=30.0, metavar="S",
                   help="unhealthy when the file, or a camera's last frame, is older than this (seconds)")
    h.add_argument("-q", "--quiet", action="store_true", help="print problems only")


def _bundle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle directory (NAME.stp, from `stp-edge export`)")


def _region_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The model config's region settings from export --region-mode/--region-grid (a random model's only)."""
    if args.region_mode is None and args.region_grid is None:
        return {}
    if not args.random:
        raise UsageError("--region-mode and --region-grid apply to --random: a trained model keeps the region "
                         "features it was trained on")
    out: dict[str, Any] = {}
    if args.region_mode is not None:
        out["region_mode"] = args.region_mode
    if args.region_grid is not None:
        out["region_grid"] = args.region_grid
    elif args.region_mode == "crops":
        out["region_grid"] = PRETRAINED_REGIONS["region_grid"]  # R*R extra encoder images: 3x3, as the paper
    return out


def _add_export(sub: Any) -> None:
    e = _sub(sub, "export", cmd_export, "export a model to a bundle (ONNX graphs + manifest)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="trained STPrompt checkpoint directory (`stp-edge train -o`)")
    src.add_argument("--demo", action="store_true", help="the embedded demo model (package stp-edge-demo-model)")
    src.add_argument("--random", action="store_true", help="random weights (for tests and benchmarks)")
    e.add_argument("-o", "--out", type=Path, required=True, help="output bundle directory (NAME.stp)")
    e.add_argument("--config", choices=("tiny", "vit-b-16"), default="tiny", help="model config of --random")
    e.add_argument("--seed", type=int, default=0, help="seed of --random")
    e.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="graph precision; int8 quantizes the encoder (needs --calib), heads stay fp32")
    e.add_argument("--calib", type=Path, help="directory of videos whose frames calibrate --precision int8 (the "
                   "video files directly in it, as 'run DIR' picks them; subfolders are not searched)")
    e.add_argument("--calib-frames", type=int, help="most calibration frames (default: the quantizer's)")
    e.add_argument("--int8-form", choices=("static", "dynamic", "auto"), help="with --precision int8: static (Q/DQ, "
                   "calibrated on --calib; fast with VNNI/AMX, TensorRT-compatible; the default), dynamic "
                   "(MatMulInteger, no --calib; the fast form on AVX2-only CPUs, ONNX Runtime only) or auto (the "
                   "one fast on this CPU)")
    e.add_argument("--clip-weights", type=Path, help="OpenAI CLIP weights (.pt archive or state_dict) to load")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset")
    e.add_argument("--queries", type=Path, metavar="JSON", help="spatial text queries, any model with text "
                   "queries: {\"normal\": [...], \"abnormal\": {\"class\": [descriptions]}} (docs/model.md)")
    e.add_argument("--box-rule", choices=BOX_RULES, help="how boxes come from anomaly maps: connected regions "
                   "above half-maximum, or the retrieved best window (default: the model config's, 'components')")
    e.add_argument("--frame-policy", choices=FRAME_POLICIES, default="center", help="what the frame embedding "
                   "sees: CLIP's centre crop, the whole frame letterboxed (pad), or centre and side tiles averaged "
                   "(README, 'What the model sees')")
    e.add_argument("--region-extent", choices=REGION_EXTENTS, help="crops mode: region crops tiling the whole "
                   "frame, or CLIP's centre square (default: the model config's; 'frame' for vit-b-16 with "
                   "--clip-weights)")
    e.add_argument("--region-mode", choices=("tokens", "crops"), help="with --random: region features from pooled "
                   "patch tokens or from CLIP-encoded crops (default: the config's; crops with --clip-weights); a "
                   "trained model keeps the mode it was trained with")
    e.add_argument("--region-grid", type=int, metavar="R", help="with --random: R x R regions (default: 3 for "
                   "crops, the config's for tokens)")
    e.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    e.add_argument("--force", action="store_true", help="replace OUT if it exists")
    e.add_argument("--triton", type=Path, metavar="REPO", help="also write a Triton model repository here")
    e.add_argument("--triton-backend", action="append", choices=("onnxruntime", "tensorrt"),
                   help="Triton backends of the repository (repeatable; default: onnxruntime)")
    e.add_argument("--triton-max-batch", type=int, default=16, help="largest batch Triton's dynamic batcher forms")
    e.add_argument("--triton-instances", type=int, default=1, help="model instances per device")
    e.add_argument("--triton-device", choices=("cpu", "gpu"), default="cpu",
                   help="where the onnxruntime models run (TensorRT plans always on the GPU)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_run(sub: Any) -> None:
    r = _sub(sub, "run", cmd_run, "run a bundle on video files, URLs or cameras")
    r.add_argument("bundle", type=Path, nargs="?", help="bundle directory (NAME.stp); not with --config")
    r.add_argument("source", nargs="*", help="video file, rtsp:// or http:// URL, camera index, directory (the "
                   "video files directly in it; subfolders are not searched), glob ('DIR/**/*.mp4' recurses) "
                   "or .txt list file (several: one stream each)")
    r.add_argument("--config", type=Path, metavar="YAML", help="run the cameras of a deployment config file "
                   "(docs/config.md: cameras with inputs and roles, thresholds, zones, sinks: JSONL, MQTT, webhooks; "
                   "snapshots, clips, a health file); the file replaces BUNDLE and SOURCE; --backend, --threads, "
                   "--max-frames, --call-timeout, --memory-limit and --on-invalid still apply")
    r.add_argument("--camera", action="append", metavar="NAME", help="the camera name each SOURCE's records "
                   "carry, once per source in order (default: the file's stem, the URL's host, camera<N>)")
    r.add_argument("--backend", default="auto", metavar="NAME", help=BACKENDS_HELP)
    r.add_argument("--preprocess", default="auto", choices=("auto", "cpu", "cuda"),
                   help="preprocessing (auto: the CUDA kernel with TensorRT in tokens mode, else CPU)")
    r.add_argument("--device", type=int, default=0, help="CUDA device ordinal")
    r.add_argument("--threshold", type=float, help="anomaly score threshold (default: the bundle's)")
    r.add_argument("--spatial", choices=("flagged", "all", "off"),
                   help="when the spatial stream runs (default: the bundle's; flagged = score >= threshold)")
    r.add_argument("--spatial-all", dest="spatial", action="store_const", const="all",
                   help="same as --spatial all")
    r.add_argument("--lookahead", type=int, help="also emit provisional results N snippets after their snippet "
                   "(0 <= N <= context; lower = earlier alarms)")
    r.add_argument("--sampling", choices=("center", "keyframe", "auto"), default="center",
                   help="the frame each snippet's encoder reads: center (the middle frame, what the model was trained "
                   "on), keyframe (the snippet's first keyframe: decoding keyframes only then suffices; a snippet "
                   "without one reads its center) or auto (keyframe where the source's keyframe interval divides "
                   "the snippet length); each JSON line records the frame sampled")
    r.add_argument("--decoder", choices=("auto", "opencv", "pyav", "nvdec"), default="auto",
                   help="who decodes: opencv, pyav (FFmpeg packet by packet: only the frames the model samples are "
                   "converted to BGR), nvdec (PyAV demuxes, the GPU's NVDEC decodes, frames stay on the GPU; needs "
                   "PyNvVideoCodec and --preprocess cuda; docs/gpu-decode.md), or auto (NVDEC for one H.264/H.265/"
                   "VP9/AV1 file where PyNvVideoCodec, a GPU and CUDA preprocessing are there, else PyAV for "
                   "H.264/H.265/VP8/VP9/AV1 files where installed, else OpenCV); each stream's line says which ran "
                   "and why")
    r.add_argument("--decode", choices=("full", "nonref", "keyframes"), default="full",
                   help="with PyAV: full (every frame decoded), nonref (non-reference frames the model does not "
                   "sample are not decoded; results identical to full), keyframes (keyframes only: needs "
                   "--sampling keyframe or auto on streams whose keyframe interval divides the snippet length)")
    r.add_argument("--on-invalid", choices=("error", "mark"), default="error",
                   help="a graph call that fails twice, or a graph output its contract forbids (NaN, out of range): "
                   "end the run with exit 1 (error, the default) or print and record the snippet as invalid and "
                   "go on (mark; the JSONL line says \"invalid\")")
    r.add_argument("--jsonl", type=Path, help="write one JSON line per result (and per reconnect gap) as the run "
                   "goes: a file (fsynced within 1 s), a FIFO, /dev/stdout or - (then the rest goes to stderr)")
    r.add_argument("--overlay", type=Path, help="write the video with scores, maps and boxes (.mp4 or .avi); "
                   "written as NAME.partial.EXT until the run ends")
    r.add_argument("--plot", type=Path, help="write a plot of the scores (.png; needs matplotlib)")
    r.add_argument("--force", action="store_true", help="replace existing outputs (and an overlay's "
                   "NAME.partial.EXT a killed run left); without it they are refused")
    r.add_argument("--append", action="store_true", help="add this run's lines to an existing --jsonl file (a "
                   "last line cut short by a kill is dropped first)")
    r.add_argument("--max-frames", type=int, help="stop each source after this many frames")
    r.add_argument("--reconnect-s", type=float, default=300.0,
                   help="seconds a dropped live source keeps reconnecting (exponential backoff); 0: never")
    r.add_argument("--timeout-ms", type=int, default=10_000, help="open/read timeout of URL sources")
    r.add_argument("--allow-host-code", action="store_true",
                   help="let TensorRT run the host code of version-compatible plans (only for bundles you trust)")
    r.add_argument("--ort-trt-fp16", action="store_true",
                   help="--backend ort-trt: let ONNX Runtime's TensorRT provider build fp16 kernels")
    r.add_argument("--call-timeout", type=float, metavar="S", help="deadline of one graph call, seconds (default: 60, "
                   "20 with triton://); a call past it is ended and the run fails with one line")
    r.add_argument("--memory-limit", type=float, metavar="GIB", help="cap on the memory onnxruntime gives the graphs' "
                   "tensors, GiB (default: half of this machine's memory); a graph asking for more fails")
    r.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                   help="how long triton:// tries to reach its server and models, seconds")
    r.add_argument("--precision", default="exported", choices=("exported", "auto", "fp32", "bf16", "int8"),
                   help="on a CPU: the encoder's form; exported (default) keeps the bundle's precision; auto picks "
                   "the fastest for this CPU's int8/bf16 instructions and the installed backends (an fp32 bundle "
                   "may then run in bf16 on OpenVINO); bf16: OpenVINO; int8: an int8 bundle")
    r.add_argument("--threads", type=int, metavar="N", help="CPU threads per operator, ONNX Runtime or OpenVINO "
                   "(default: the cores "
                   "left after one decode thread per source, at least 1)")
    r.add_argument("--features", choices=("auto", "host", "device"), default="auto", help="where the encoder's "
                   "features live between the stages: auto (on the GPU where the backends allow it: TensorRT, one "
                   "frame and one frame view per snippet), host, or device (refused where it cannot run); `run` "
                   "prints which ran and why")
    r.add_argument("--no-drop", action="store_true", help="a live source that falls behind the model waits instead "
                   "of dropping whole snippets (default: drop, counted per camera and written to --jsonl)")
    verbosity = r.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="print every snippet, not only anomalies")
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="no progress bar, no per-anomaly lines, no event/latency table")


def _add_model_commands(sub: Any) -> None:
    v = _sub(sub, "verify", cmd_verify, "check a bundle against the torch reference")
    _bundle_arg(v)
    v.add_argument("--seed", type=int, help="seed of the random inputs (default: fresh, printed)")
    v.add_argument("--batch", type=int, default=2, help="batch size of the inputs")
    v.add_argument("--checkpoint", type=Path, help="the checkpoint the bundle came from (verify never opens a "
                   "path named inside the bundle)")
    v.add_argument("--backend", action="append", choices=("ort", "trt"),
                   help="backends to compare with torch (repeatable; default: ort)")

    b = _sub(sub, "build-engines", cmd_build_engines, "build TensorRT engines for a bundle on this GPU")
    _bundle_arg(b)
    b.add_argument("--precision", choices=("fp16", "fp32", "int8"), default="fp16",
                   help="encoder engine precision (heads as exported); int8 needs an int8-exported bundle")
    b.add_argument("--max-batch", type=int, default=16, help="largest batch of snippets")
    b.add_argument("--opt-batch", type=int, default=1, help="batch TensorRT tunes for (streams sharing the engine)")
    b.add_argument("--max-snippets", type=int, help="largest temporal window T (default: the streaming window)")
    b.add_argument("--workspace-mb", type=int, default=4096, help="builder scratch memory limit, MiB")
    b.add_argument("--timing-cache", type=Path, help="timing cache file, or a folder keeping one per GPU model and "
                   "TensorRT version; read if present and updated")
    b.add_argument("--version-compatible", action="store_true",
                   help="plans that later TensorRT versions of the same major can load")
    b.add_argument("--hardware-compatibility", choices=("ampere_plus", "same_compute_capability"),
                   help="plans for any Ampere+ GPU, or any GPU of this compute capability (not for Jetson)")
    b.add_argument("--device", type=int, default=0, help="CUDA device to build on")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    i = _sub(sub, "info", cmd_info, "print a bundle's manifest")
    _bundle_arg(i)
    i.add_argument("--json", action="store_true", help="print the raw manifest JSON")
    i.add_argument("--no-check", action="store_true", help="skip the sha256 checks")

    t = _sub(sub, "train", cmd_train, "train STPrompt heads on extracted features (video labels only)")
    t.add_argument("features", type=Path, help="directory of .npz files from `stp-edge extract`, or of VadCLIP's "
                   "NAME__k.npy files (--format vadclip)")
    t.add_argument("--format", choices=("features", "vadclip"), default="features",
                   help="features: ours (.npz with frame and region features); vadclip: VadCLIP's released CLIP "
                   "features (frame embeddings only: trains a frame-only model, region term off, VadCLIP's "
                   "preprocessing)")
    t.add_argument("--list", type=Path, help="--format vadclip: a VadCLIP list CSV (path,label; e.g. "
                   "ucf_CLIP_rgb.csv, xd_CLIP_rgb.csv); default: every NAME__k.npy under FEATURES, labelled from "
                   "the names")
    t.add_argument("--recipe", choices=("stp-edge", "vadclip"), default="stp-edge",
                   help="stp-edge: whole videos, lr 1e-3, 30 epochs, 8 videos per step; vadclip: sequences of at "
                   "most 256 (longer averaged down), 64 normal + 64 anomalous videos per step, lr 2e-5, 10 epochs, "
                   "text-separation loss")
    init = t.add_mutually_exclusive_group()
    init.add_argument("--init", type=Path, help="STPrompt checkpoint to start from (keeps its CLIP weights)")
    init.add_argument("--config", choices=("tiny", "vit-b-16"), default="vit-b-16", help="config of a new model")
    t.add_argument("--clip-weights", type=Path, help="OpenAI CLIP weights for a new model's frozen encoders")
    t.add_argument("--classes", help="comma-separated class names, normal first (default: the config's)")
    t.add_argument("--queries", type=Path, metavar="JSON", help="a new model's spatial text queries: {\"normal\": "
                   "[...], \"abnormal\": {\"class\": [descriptions]}} (docs/model.md; default: the config's)")
    t.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    t.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    t.add_argument("--batch-size", type=int, help="videos per batch (default: the recipe's; vadclip: per half)")
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("-o", "--out", type=Path, required=True, help="output checkpoint directory")
    t.add_argument("--force", action="store_true", help="replace OUT if it exists")

    ev = _sub(sub, "eval", cmd_eval, "evaluate a bundle on a labelled benchmark")
    _bundle_arg(ev)
    ev.add_argument("--data", type=Path, help="videos (and, for synthetic, ground truth); default: generate a "
                    "synthetic split")
    ev.add_argument("--format", default="synthetic", choices=("synthetic", "ucf-crime", "shanghaitech", "ubnormal"),
                    help="annotation format of --data")
    ev.add_argument("--annotations", type=Path, help="UCF-Crime temporal annotation file, or ShanghaiTech's "
                    "test_frame_mask directory")
    ev.add_argument("--boxes", type=Path, metavar="FILE", help="UCF-Crime ground-truth boxes for TIoU: Liu & Ma's "
                    "Test_annotation.pkl (github.com/xuzero/UCFCrime_BoundingBox_Annotation) or a "
                    "video,frame,x1,y1,x2,y2 CSV")
    ev.add_argument("--on-mismatch", choices=("error", "skip"), default="error",
                    help="a video whose ground truth does not fit it stops the run, or is reported and left out")
    ev.add_argument("--split", default="test", help="split of a synthetic benchmark")
    ev.add_argument("--num-videos", type=int, default=8, help="videos to generate when --data is absent")
    ev.add_argument("--seed", type=int, default=0, help="seed of the generated videos")
    ev.add_argument("--backend", default="auto", metavar="NAME", help=BACKENDS_HELP)
    ev.add_argument("--out", type=Path, help="directory for the report and plots")

    d = _sub(sub, "demo", cmd_demo, "export the demo model and run it on a generated clip")
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="output directory")
    d.add_argument("--anomaly", default="fire",
                   choices=DEMO_CLASSES[1:],
                   help="anomaly in the generated clip (fire: the class the demo model detects best)")
    d.add_argument("--seed", type=int, default=2026, help="seed of the generated clip")
    d.add_argument("--seconds", type=float, default=24.0, help="length of the generated clip")


def _add_scale_commands(sub: Any) -> None:
    from stp_edge.scale.serve import add_server_arguments  # stdlib only at import: the options, not the server

    x = _sub(sub, "extract", cmd_extract, "extract snippet features of videos for training")
    x.add_argument("videos", help="a video, directory, glob or .txt list of videos")
    x.add_argument("-o", "--out", type=Path, required=True, help="output directory of .npz files")
    enc = x.add_mutually_exclusive_group(required=True)
    enc.add_argument("--bundle", type=Path, help="bundle whose encoder extracts (the deployed numbers)")
    enc.add_argument("--clip-weights", type=Path, help="OpenAI CLIP weights (a bundle is exported from them)")
    x.add_argument("--labels", type=Path, help="labels.csv (video,label) of the videos")
    x.add_argument("--format", choices=("ucf-crime", "shanghaitech", "ubnormal"),
                   help="read labels from this data set's layout")
    x.add_argument("--annotations", type=Path, help="the data set's annotation file or directory")
    x.add_argument("--classes", help="comma-separated class names, normal first")
    x.add_argument("--backend", default="auto", metavar="NAME", help=BACKENDS_HELP)
    x.add_argument("--batch", type=int, default=16, help="snippets per encoder call")
    x.add_argument("--no-resume", action="store_true", help="redo videos already extracted")
    x.add_argument("--ray", action="store_true", help="run as a Ray Data pipeline")
    x.add_argument("--workers", type=int, help="Ray actors (default: one per CPU)")
    x.add_argument("--ray-address", help="Ray cluster address (default: start a local one)")

    s = _sub(sub, "score", cmd_score, "score videos with a bundle (one results file per video)")
    s.add_argument("videos", help="a video, directory, glob or .txt list of videos")
    s.add_argument("--bundle", type=Path, required=True, help="bundle directory (NAME.stp)")
    s.add_argument("-o", "--out", type=Path, required=True, help="output directory of .jsonl files")
    s.add_argument("--backend", default="auto", metavar="NAME", help=BACKENDS_HELP)
    s.add_argument("--no-resume", action="store_true", help="redo videos already scored")
    s.add_argument("--ray", action="store_true", help="run as a Ray Data pipeline")
    s.add_argument("--workers", type=int, help="Ray actors (default: one per CPU)")
    s.add_argument("--ray-address", help="Ray cluster address (default: start a local one)")

    v = _sub(sub, "serve", cmd_serve, "serve a bundle with Triton Inference Server (PyTriton)")
    _bundle_arg(v)
    add_server_arguments(v)
    v.add_argument("--python", help="interpreter with nvidia-pytriton (default: STP_EDGE_TRITON_PYTHON, "
                   "then .venv-triton)")

    b = _sub(sub, "bench", cmd_bench, "benchmark a bundle on this machine")
    _bundle_arg(b)
    b.add_argument("--backend", default="auto", metavar="NAME", help=BACKENDS_HELP)
    b.add_argument("--precision", help="expected encoder precision (default: the bundle's, as run uses it); on a "
                   "CPU, auto picks the form fastest on this CPU and bf16 runs OpenVINO's bf16")
    b.add_argument("--no-compare", action="store_true", help="skip timing the encoder on every installed CPU "
                   "backend and form side by side (ONNX Runtime, OpenVINO fp32/bf16/int8)")
    b.add_argument("--batch", type=int, default=1, help="encoder batch (snippets per call)")
    b.add_argument("--streams", type=int, default=1, help="camera streams pushed together")
    b.add_argument("--source", type=Path, help="video to decode (default: a generated 768x576 clip)")
    b.add_argument("--frames", type=int, help="frames to run (default: the benchmark's)")
    b.add_argument("--lookahead", type=int, help="low-latency mode lookahead (alert delay reported for it)")
    b.add_argument("--no-torch", action="store_true", help="skip the plain PyTorch baseline (runtime-only RSS)")
    b.add_argument("--cameras", type=int, metavar="N", help="instead: serve up to N live cameras (the --source "
                   "file, or a generated 640x360 H.264 clip, replayed at 25 fps over HTTP by ffmpeg) and report the "
                   "largest number held in real time, utilisation and the binding resource (docs/capacity.md)")
    b.add_argument("--read", default="opencv-full",
                   choices=("opencv-full", "pyav-full", "pyav-nonref", "pyav-keyframes"),
                   help="with --cameras: how each camera's stream is read (decoder and --decode mode of run)")
    b.add_argument("-o", "--json", type=Path, metavar="FILE.json",
                   help="save the report as JSON, with .md and (with matplotlib) .png beside it; default: print "
                   "the table only, write nothing")


def build_parser() -> argparse.ArgumentParser:
    """The `stp-edge` argument parser (every subcommand and option has help)."""
    p = argparse.ArgumentParser(prog="stp-edge", description="STPrompt video anomaly detection on edge GPUs.",
                                epilog="Exit codes: 0 done, 1 the job failed (verify, a video, a lost source), "
                                       "2 library error, 130/143 SIGINT/SIGTERM.")
    p.add_argument("--version", action="version", version=f"stp-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_export(sub)
    _add_run(sub)
    _add_health(sub)
    _add_model_commands(sub)
    _add_scale_commands(sub)
    return p


@contextlib.contextmanager
def _plain_warnings(command: str) -> Iterator[None]:
    """Warnings a user must see (`RandomWeightsWarning`) printed as one plain line each, once per command.

    Python's own format names a source file and line; a bundle loaded twice in one command (score loads it in
    its driver and its detector) would say it twice.
    """
    from stp_edge.errors import RandomWeightsWarning

    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", RandomWeightsWarning)
        default = warnings.showwarning

        def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
            if not issubclass(category, RandomWeightsWarning):
                default(message, category, filename, lineno, file, line)
            elif str(message) not in seen:
                seen.add(str(message))
                print(f"stp-edge {command}: warning: {message}", file=sys.stderr, flush=True)

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _plain_log(command: str) -> Iterator[None]:
    """The library's logged warnings (a graph call retried, a TensorRT plan refused) as plain lines on stderr.

    Without a handler Python would print them only through its last-resort handler, and not at all once a
    caller configures logging for the root logger only.
    """
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"stp-edge {command}: warning: %(message)s"))
    log = logging.getLogger("stp_edge")
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `stp-edge`; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    with _plain_warnings(args.command), _plain_log(args.command):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"stp-edge {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as exc:
        line = _one_line(exc)
        if line is None:
            raise
        print(f"stp-edge {args.command}: error: {line}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_USAGE))  # 1 where a run could not go on (InferenceError)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
