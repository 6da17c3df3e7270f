"""Cameras per machine: how many live cameras one process serves in real time, by stream and decoder.

Each camera is a generated clip (street-like texture, moving blocks, sensor noise; keyframe every 16 frames, no
B-frames) replayed at 25 fps by its own `ffmpeg -re ... -c copy -f mpegts -listen 1` on 127.0.0.1 (see
`stp_edge.bench.capacity`). For each resolution, codec and decoder mode, N is raised (doubling, then bisecting)
until a camera falls behind (frames processed < 0.97 x 25 fps over the measured window); the largest N held,
the utilisation and the binding resource are printed and saved to benchmarks/results/capacity_<name>.{md,json}
with the machine and its load average (the machine may be shared: the load is part of the result).

    .venv/bin/python -m stp_edge.cli export --random --config vit-b-16 --precision int8 --calib DIR -o B.stp
    .venv/bin/python benchmarks/bench_capacity.py --bundle B.stp
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from stp_edge.bench.capacity import READ_MODES as MODES

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"360p": (360, 640), "1080p": (1080, 1920)}
FPS = 25


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="bundle to serve the cameras with")
    p.add_argument("--sizes", default="360p,1080p", help=f"comma-separated, of {list(SIZES)}")
    p.add_argument("--codecs", default="h264", help="comma-separated: h264, h265")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {list(MODES)}")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before each measured window")
    p.add_argument("--window", type=float, default=12.0, help="measured seconds per N")
    p.add_argument("--start", type=int, default=2, help="first N tried")
    p.add_argument("--limit", type=int, default=16, help="largest N tried")
    p.add_argument("--bframes", type=int, default=0, help="B-frames between reference frames in the generated "
                   "clips (a camera that sends them: pyav-nonref skips those no snippet samples)")
    p.add_argument("--settings", action="store_true", help="instead: decode CPU per frame for camera settings "
                   "(keyframe interval, B-frames, resolution) by read mode, saved to capacity_settings.{md,json}")
    p.add_argument("--table-from", type=Path, metavar="JSON", help="instead: rewrite a saved result's .md (the "
                   "binding resource recomputed from its saved utilisation by the current rule)")
    p.add_argument("--name", default=None, help="results name (default: the bundle directory's name)")
    args = p.parse_args(argv)

    if args.settings:
        return settings()
    if args.table_from is not None:
        return remake(args.table_from)

    from stp_edge.bench.camera_clip import write_camera_clip
    from stp_edge.bench.capacity import capacity
    from stp_edge.bundle import Bundle
    from stp_edge.machine import machine_info

    warnings.filterwarnings("ignore", message=".*random weights.*")
    bundle = Bundle.load(args.bundle)
    name = args.name or args.bundle.name.split(".")[0]
    machine, load_before = machine_info(), os.getloadavg()
    rows = []
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="stp-capacity-") as tmp:
        for codec in args.codecs.split(","):
            for size_name in args.sizes.split(","):
                clip = write_camera_clip(Path(tmp) / f"{codec}_{size_name}.mp4", SIZES[size_name], codec=codec,
                                         bframes=args.bframes)
                for mode in args.modes.split(","):
                    print(f"{codec} {size_name} {mode}:", flush=True)
                    row = {"codec": codec, "size": size_name, "mode": mode, "load_avg_1m_start": os.getloadavg()[0]}
                    try:
                        row.update(capacity(bundle, clip, FPS, read=mode, backend="ort-cpu", start=args.start,
                                            limit=args.limit, warmup_s=args.warmup, window_s=args.window,
                                            log_dir=tmp, progress=print))
                    except Exception as e:  # a mode this build cannot run is reported, not fatal
                        row["error"] = f"{type(e).__name__}: {e}"
                        print(f"  not measured: {row['error']}")
                    row["load_avg_1m_end"] = os.getloadavg()[0]
                    rows.append(row)
    out = {"bundle": str(args.bundle), "precision": bundle.precision, "backend": "ort-cpu", "fps": FPS,
           "gop": 16, "bframes": args.bframes,
           "criterion": "a camera falls behind when frames processed < 0.97 x 25 fps over "
           f"the {args.window:.0f} s window after {args.warmup:.0f} s warm-up",
           "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "minutes": (time.time() - t_start) / 60,
           "machine": machine, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"capacity_{name}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    md = markdown(out)
    path.with_suffix(".md").write_text(md)
    print(md)
    print(f"saved {path} and {path.with_suffix('.md')}")
    return 0


# (name, size, keyframe interval, B-frames) of the stream settings compared by --settings.
SETTINGS = [("1080p, keyframe every 16, no B-frames", (1080, 1920), 16, 0),
            ("1080p, keyframe every 16, 2 B-frames", (1080, 1920), 16, 2),
            ("1080p, keyframe every 50, no B-frames", (1080, 1920), 50, 0),
            ("640x360, keyframe every 16, no B-frames", (360, 640), 16, 0),
            ("640x360, keyframe every 50, 2 B-frames", (360, 640), 50, 2)]


def settings(codec: str = "h264") -> int:
    """Decode CPU ms per frame (the whole process, `decode_cost`) for each camera setting and read mode."""
    from stp_edge.bench.camera_clip import write_camera_clip
    from stp_edge.bench.capacity import decode_cost
    from stp_edge.machine import machine_info

    load_before, rows = os.getloadavg(), []
    with tempfile.TemporaryDirectory(prefix="stp-settings-") as tmp:
        for name, size, gop, bf in SETTINGS:
            clip = write_camera_clip(Path(tmp) / f"{gop}_{bf}_{size[0]}.mp4", size, codec=codec, gop=gop, bframes=bf)
            row = {"setting": name, "codec": codec, "gop": gop, "bframes": bf}
            for mode, options in MODES.items():
                # keyframes only pays where each snippet of 16 holds a keyframe at its sampled place
                usable = mode != "pyav-keyframes" or 16 % gop == 0
                row[mode] = decode_cost(clip, options, frames=200) * 1e3 if usable else None
            print(row, flush=True)
            rows.append(row)
    out = {"machine": machine_info(), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
           "rows": rows}
    path = RESULTS / f"capacity_settings_{codec}.json"
    path.write_text(json.dumps(out, indent=1))
    m = out["machine"]
    lines = [f"# Decode CPU per frame by camera setting ({codec.upper()}, 25 fps)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; load average {load_before[0]:.2f} before, "
             f"{out['load_avg_after'][0]:.2f} after. CPU seconds of the whole process (FFmpeg's threads included) "
             "per frame over 200 frames of a generated clip, read as the capacity benchmark's cameras are.", "",
             "| setting | " + " | ".join(MODES) + " |", "|---|" + "---:|" * len(MODES)]
    for r in rows:
        cells = [f"{r[k]:.2f} ms" if r[k] is not None else "n/a (keyframes do not fall on the sampled frames)"
                 for k in MODES]
        lines.append(f"| {r['setting']} | " + " | ".join(cells) + " |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def remake(path: Path) -> int:
    """Rewrite `path`'s markdown table, the binding resource recomputed from the saved utilisation."""
    from stp_edge.bench.capacity import binding_resource

    out = json.loads(path.read_text())
    for r in out["rows"]:
        if "error" not in r:
            over = next(p for p in r["probes"] if p["cameras"] == r["binding_at"])
            r["binding"] = binding_resource(over["utilisation"], int(out["machine"]["cores"]))
    path.write_text(json.dumps(out, indent=1, default=str))
    path.with_suffix(".md").write_text(markdown(out))
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    """The saved table: one row per stream and decoder mode."""
    m = out["machine"]
    lines = [f"# Live cameras held in real time: {Path(out['bundle']).name} ({out['precision']}, {out['backend']})",
             "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['isa']}), node {m['node']}; load average (1/5/15 min) "
             f"{' / '.join(f'{v:.2f}' for v in out['load_avg_before'])} before, "
             f"{' / '.join(f'{v:.2f}' for v in out['load_avg_after'])} after ({out['minutes']:.1f} min run).",
             f"Cameras: generated clips replayed at {out['fps']} fps over HTTP (MPEG-TS) by ffmpeg -re -c copy, "
             f"keyframe every {out['gop']} frames, {out['bframes']} B-frames. {out['criterion']}.",
             "",
             "| stream | decoder | decode CPU ms/frame | cameras held | sampling | slowest camera fps at N | "
             "utilisation at N (cores) | snippets per encoder call at N | threads at N | binding (at N+1) | N tried |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        head = f"| {r['codec']} {r['size']} | {r['mode']} |"
        if "error" in r:
            lines.append(f"{head} - | not measured | - | - | - | - | - | {r['error'][:120]} | - |")
            continue
        at = r["at_capacity"] or {}
        util = ", ".join(f"{k} {v:.2f}" for k, v in at.get("utilisation", {}).items()) or "-"
        tried = " ".join(f"{n}{'+' if h else '-'}" for n, h in r["tried"])
        lines.append(f"{head} {r['decode_ms_per_frame']:.2f} | **{r['largest_held']}** | "
                     f"{', '.join(at.get('sampling', [])) or '-'} | {at.get('min_fps', 0):.1f} | {util} | "
                     f"{at.get('encoder_batch', float('nan')):.2f} | {at.get('threads', '-')} | {r['binding']} | "
                     f"{tried} |")
    lines += ["", "N tried: `+` held, `-` fell behind. Utilisation: decode = decode CPU per frame (measured alone) x "
              "frames read per second; preprocess/encoder = the encoder calls' wall time per second; rest = the "
              "serving thread's other CPU time (temporal, spatial, scheduling, records: `stp_edge.run.run_video`); "
              "process = CPU cores the whole process used. The ffmpeg servers (packet copy) run in their own "
              "processes."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
