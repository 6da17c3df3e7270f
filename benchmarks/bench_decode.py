"""Benchmark decoding per input frame: OpenCV vs PyAV full, keyframes-only and nonref, as the detector reads a file.

    python benchmarks/bench_decode.py [--frames 160] [--repeats 5] [--size 1920x1080] [--bframes 2]
        [--b-pyramid normal] [--out benchmarks/results]

Writes a keyframe-aligned H.264 file (libx264 through PyAV: keyframe every 16 frames, no scene-cut keyframes,
2 B-frames (`--bframes`; x264's b-pyramid `--b-pyramid`: "normal" makes some B-frames references, "none" none),
25 fps, camera-like content: smooth texture panning plus a moving block and sensor noise), then
reads it through `stp_edge.video.open_source` the way the runtime does (`frames_with_gaps(lazy=True)`) and
makes BGR pixels of one frame in 16 (the snippet's keyframe, offset 0), as a detector with keyframe-aligned
sampling does:

- opencv: OpenCV's FFmpeg reader, which decodes and converts every frame to BGR (today's path);
- pyav-full: PyAV, every frame decoded, only the sampled frames converted to BGR;
- pyav-keyframes: PyAV with `skip_frame = "NONKEY"`, only keyframes decoded (and converted);
- pyav-nonref: PyAV `decode="nonref"` told center sampling (offset 8 of 16, the frame it converts): the
  non-reference frames (B-frames nothing predicts from) not sampled are never decoded, every other frame is.
Each reader runs `--repeats` times, alternating; the table gives the median wall and CPU ms per input frame and
their ratios to OpenCV. Also recorded: how far PyAV's BGR is from OpenCV's on the same frames. Results go to
<out>/decode_<size>.{json,md}, with the machine (`stp_edge.machine.machine_info`) and PyAV/FFmpeg versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from stp_edge.machine import machine_info
from stp_edge.video import open_source

SNIPPET = 16
MODES = {"opencv": {"decoder": "opencv"}, "pyav-full": {"decoder": "pyav", "decode": "full"},
         "pyav-keyframes": {"decoder": "pyav", "decode": "keyframes"},
         "pyav-nonref": {"decoder": "pyav", "decode": "nonref"}}
CENTER = SNIPPET // 2  # the frame a center-sampling detector converts (nonref mode is told so)


def write_clip(path: Path, width: int, height: int, n: int, seed: int = 0, bframes: int = 2,
               b_pyramid: str = "normal") -> None:
    """A keyframe-aligned H.264 file of camera-like frames (never constant)."""
    rng = np.random.default_rng(seed)
    texture = cv2.resize(rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8),
                         (width + n * 4, height), interpolation=cv2.INTER_CUBIC)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23",
                          "x264-params": f"keyint={SNIPPET}:min-keyint={SNIPPET}:scenecut=0:bframes={bframes}"
                                          f":b-pyramid={b_pyramid}"}
        for i in range(n):
            frame = texture[:, i * 4: i * 4 + width].copy()
            y, x = (height // 3 + 2 * i) % (height - 120), (9 * i) % (width - 120)
            frame[y:y + 120, x:x + 120] = (40, 200, 250)
            frame = cv2.add(frame, rng.integers(0, 8, frame.shape, dtype=np.uint8))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def read_once(path: Path, options: dict) -> tuple[float, float, int, int, int, str]:
    """(wall s, CPU s, frames read, converted to BGR, decoded, decoder description) for one pass."""
    t0, c0 = time.perf_counter(), time.process_time()
    converted = 0
    sampled = 0
    with open_source(path, **options) as src:
        if options.get("decode") == "nonref":  # as `Detector.use_source` tells it (center sampling)
            sampled = CENTER
            tell = getattr(src, "sample_only", None) or src._cap.set_sampling
            tell(SNIPPET, (CENTER,))
        for frame, _gap in src.frames_with_gaps(lazy=True):
            index = src.stats.read - 1
            if index % SNIPPET == sampled:
                pixels = frame if isinstance(frame, np.ndarray) else frame.decode()
                converted += pixels is not None
        decoded = src._cap.decoded if src.decoder == "pyav" else src.stats.read
        return (time.perf_counter() - t0, time.process_time() - c0, src.stats.read, converted, decoded,
                src.describe_decoder())


def bgr_difference(path: Path, n: int = 16) -> dict[str, float]:
    """PyAV's BGR against OpenCV's for the first n frames: max and mean absolute difference, share differing."""
    with open_source(path, decoder="opencv") as cv_src, open_source(path, decoder="pyav") as av_src:
        cv_frames, av_frames = iter(cv_src), (f for f, _ in av_src.frames_with_gaps(lazy=True))
        diffs = [np.abs(next(cv_frames).astype(np.int16) - next(av_frames).decode().astype(np.int16))
                 for _ in range(n)]
    return {"max": float(max(d.max() for d in diffs)), "mean": float(np.mean([d.mean() for d in diffs])),
            "share_differing": float(np.mean([(d > 0).mean() for d in diffs]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--bframes", type=int, default=2)
    parser.add_argument("--b-pyramid", default="normal", choices=("none", "strict", "normal"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        t0 = time.perf_counter()
        write_clip(clip, width, height, args.frames, bframes=args.bframes, b_pyramid=args.b_pyramid)
        print(f"wrote {args.frames} frames {width}x{height} H.264 (keyint {SNIPPET}, {args.bframes} B-frames, "
              f"b-pyramid {args.b_pyramid}) in "
              f"{time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {m: [] for m in MODES}
        cpu: dict[str, list[float]] = {m: [] for m in MODES}
        facts: dict[str, dict] = {}
        for _ in range(args.repeats):
            for mode, options in MODES.items():
                seconds, cpu_s, read, converted, decoded, described = read_once(clip, options)
                times[mode].append(seconds * 1e3 / read)
                cpu[mode].append(cpu_s * 1e3 / read)
                facts[mode] = {"frames": read, "converted": converted, "decoded": decoded, "decoder": described}
        difference = bgr_difference(clip)
    base, cpu_base = statistics.median(times["opencv"]), statistics.median(cpu["opencv"])
    rows = [{"mode": m, "ms_per_frame": statistics.median(t), "ms_per_snippet": statistics.median(t) * SNIPPET,
             "ratio_to_opencv": statistics.median(t) / base, "cpu_ms_per_frame": statistics.median(cpu[m]),
             "cpu_ratio_to_opencv": statistics.median(cpu[m]) / cpu_base, "runs_ms_per_frame": t,
             "runs_cpu_ms_per_frame": cpu[m], **facts[m]}
            for m, t in times.items()]
    machine = {**machine_info(), "pyav": av.__version__,
               "ffmpeg": ".".join(map(str, av.library_versions["libavcodec"]))}
    result = {"size": f"{width}x{height}", "frames": args.frames, "keyint": SNIPPET, "repeats": args.repeats,
              "bframes": args.bframes, "b_pyramid": args.b_pyramid,
              "bgr_pyav_vs_opencv": difference, "rows": rows, "machine": machine}
    lines = [f"# Decode cost per input frame, {width}x{height} H.264, keyframe every {SNIPPET}, {args.bframes} "
             f"B-frames (b-pyramid {args.b_pyramid}) (1 frame in {SNIPPET} converted to BGR)", "",
             f"Machine: {machine['cpu']} ({machine['cores']} cores, {machine['isa']}), load {machine['load_avg_1m']}; "
             f"OpenCV {machine['opencv']}, PyAV {machine['pyav']} (libavcodec {machine['ffmpeg']}). "
             f"{args.frames} frames, median of {args.repeats} runs.", "",
             "Wall: elapsed time of a pass (FFmpeg decodes in threads); CPU: CPU time the process used (all its",
             "threads), the cost that decides how many cameras the cores hold and the steadier figure on a loaded",
             "machine.", "",
             "| reader | wall ms / frame | wall ms / snippet (16) | wall vs OpenCV | CPU ms / frame | CPU vs OpenCV "
             "| frames | decoded | converted to BGR |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['mode']} | {r['ms_per_frame']:.2f} | {r['ms_per_snippet']:.1f} | {r['ratio_to_opencv']:.2f}x | "
              f"{r['cpu_ms_per_frame']:.2f} | {r['cpu_ratio_to_opencv']:.2f}x | {r['frames']} | {r['decoded']} | "
              f"{r['converted']} |" for r in rows]
    lines += ["", f"PyAV BGR vs OpenCV BGR (first 16 frames): max |diff| {difference['max']:.0f}, mean "
              f"{difference['mean']:.3f}, share of values differing {difference['share_differing']:.4f}.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"decode_{width}x{height}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    print(f"saved {stem}.md and .json")


if __name__ == "__main__":
    main()
