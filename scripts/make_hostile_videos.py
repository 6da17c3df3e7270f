"""Write a corpus of hostile video files, each derived from small generated clips, with the outcome a run must give.

    python scripts/make_hostile_videos.py OUT_DIR [--big] [--run BUNDLE]

Each case is one file OUT_DIR/<name>.<ext> (one FIFO among them) and an entry of OUT_DIR/cases.json:
{"name", "file", "kind", "what", "expect", "frames", "dropped", "rejected"}. `expect` is what
`stp_edge.run.run_video` must end in: "results", "error" (a one-line `VideoError`/`FrameError`), or "either"
(the container decides: a truncated MP4 has lost its index, a truncated AVI still plays up to the cut);
anything else (another exception, a crash, a hang) is a defect. `frames` / `dropped` / `rejected`, when not
null, are the frames the run must read, skip while decoding, and have refused by the detector (MJPEG frames are
decoded only when a snippet samples them, the middle frame of 16: one that does not decode then is refused, not
dropped). tests/test_hostile_videos.py builds the corpus and checks every case. `--run BUNDLE` also runs every
case through `run_video` here and prints what each ended in (OUT_DIR/outcomes.json), by kind.

The base clips are 48 frames of 64x48 (a textured background with a moving square, never constant) written by
OpenCV as MPEG-4 Part 2 in .mp4 and as MJPEG in .avi; hand-built cases use a minimal AVI muxer (`write_avi`)
whose headers can say anything (frame size, frame rate, frame count) and whose frames are JPEG/PNG images of
any size, so sizes OpenCV refuses to write (1x1, changing mid-stream) and lying headers are in the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

FRAMES, WIDTH, HEIGHT, FPS = 48, 64, 48, 25.0


@dataclass
class Case:
    name: str
    file: str
    kind: str
    what: str
    expect: str = "results"
    frames: int | None = None
    dropped: int | None = None
    rejected: int | None = None


def clip(n: int = FRAMES, width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> list[np.ndarray]:
    """n BGR frames: a smooth random background with a bright square moving across it."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 200, (max(height // 8, 1) + 1, max(width // 8, 1) + 1, 3), dtype=np.uint8)
    background = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    background = cv2.add(background, rng.integers(0, 25, (height, width, 3), dtype=np.uint8))
    side = max(min(width, height) // 4, 1)
    frames = []
    for i in range(n):
        f = background.copy()
        x = (3 * i) % max(width - side, 1)
        y = (height // 3 + i // 5) % max(height - side, 1)
        f[y:y + side, x:x + side] = (40 + 7 * i % 200, 220, 255 - 3 * i % 200)
        frames.append(f)
    return frames


def write_cv2(path: Path, frames: Sequence[np.ndarray], fourcc: str, fps: float = FPS) -> Path:
    """Write frames with OpenCV's VideoWriter; fails loudly when OpenCV cannot write them."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} at {w}x{h} to {path}")
    for f in frames:
        writer.write(f)
    writer.release()
    return path


# --- a minimal AVI muxer --------------------------------------------------------------------------------------
def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _list(kind: bytes, body: bytes) -> bytes:
    return b"LIST" + struct.pack("<I", len(body) + 4) + kind + body


def write_avi(path: Path, payloads: Sequence[bytes], *, width: int, height: int, codec: bytes = b"MJPG",
              rate: int = 25, scale: int = 1, usec_per_frame: int | None = None, total_frames: int | None = None,
              index: bool = True) -> Path:
    """An AVI of one video stream whose frames are `payloads` (JPEG or PNG images, any sizes).

    The headers say what the arguments say, true or not: `width`/`height`, frame rate `rate / scale` (and
    `usec_per_frame`), `total_frames` (default the real count); `index=False` leaves out idx1.
    """
    n = len(payloads)
    total = n if total_frames is None else total_frames
    usec = usec_per_frame if usec_per_frame is not None else int(1e6 * scale / rate) if rate else 0
    usec = min(usec, 2**32 - 1)
    biggest = max((len(p) for p in payloads), default=0)
    avih = struct.pack("<14I", usec, 0, 0, 0x10 if index else 0, total, 0, 1, biggest, width, height, 0, 0, 0, 0)
    strh = (b"vids" + codec + struct.pack("<IHHIIIIIIII", 0, 0, 0, 0, scale, rate, 0, total, biggest, 0xFFFFFFFF, 0)
            + struct.pack("<4h", 0, 0, min(width, 32767), min(height, 32767)))
    strf = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, int.from_bytes(codec, "little"),
                       (width * height * 3) & 0xFFFFFFFF, 0, 0, 0, 0)
    hdrl = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))
    movi_body, idx = b"", b""
    for p in payloads:
        idx += b"00dc" + struct.pack("<III", 0x10, 4 + len(movi_body), len(p))
        movi_body += _chunk(b"00dc", p)
    body = b"AVI " + hdrl + _list(b"movi", movi_body) + (_chunk(b"idx1", idx) if index else b"")
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def jpeg(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"cannot JPEG-encode a frame of shape {frame.shape}")
    return buf.tobytes()


def png(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", frame)
    if not ok:
        raise RuntimeError(f"cannot PNG-encode a frame of shape {frame.shape}")
    return buf.tobytes()


def _sof_size(data: bytes, height: int, width: int) -> bytes:
    """A JPEG whose start-of-frame header claims height x width (the scan data is left as it was)."""
    i = data.find(b"\xff\xc0")
    if i < 0:
        raise RuntimeError("no baseline SOF0 marker in the JPEG")
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


# --- byte-level edits -------------------------------------------------------------------------------------------
def flip(data: bytes, at: int, n: int = 16) -> bytes:
    """`data` with the bits of n bytes from `at` inverted."""
    at = max(0, min(at, len(data) - n))
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + n]) + data[at + n:]


def _box(data: bytes, name: bytes) -> int:
    """Offset of the first ISO-BMFF box `name` (its size field), or raise."""
    i = data.find(name)
    if i < 4:
        raise RuntimeError(f"no {name!r} box in the MP4")
    return i - 4


def _top_boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """The top-level ISO-BMFF boxes of an MP4 as (type, whole box) pairs (32-bit sizes only)."""
    boxes, i = [], 0
    while i + 8 <= len(data):
        (size,) = struct.unpack(">I", data[i:i + 4])
        if size < 8:
            raise RuntimeError(f"unsupported MP4 box size {size} at offset {i}")
        boxes.append((data[i + 4:i + 8], data[i:i + size]))
        i += size
    return boxes


def faststart(data: bytes) -> bytes:
    """The MP4 with its index (moov) moved before the frames (mdat), as streaming MP4s and most cameras have it.

    OpenCV writes moov last, so any truncation loses the index; with moov first a truncated file still plays
    up to the cut. The chunk offsets (stco) move by the size of moov.
    """
    boxes = dict(_top_boxes(data))
    order = [k for k, _ in _top_boxes(data)]
    if b"moov" not in boxes or b"mdat" not in boxes or b"co64" in boxes[b"moov"]:
        raise RuntimeError(f"expected an MP4 with moov, mdat and 32-bit chunk offsets, got boxes {order}")
    moov = bytearray(boxes[b"moov"])
    at = 0
    while (at := moov.find(b"stco", at + 1)) > 0:
        (entries,) = struct.unpack(">I", moov[at + 8:at + 12])
        for k in range(entries):
            o = at + 12 + 4 * k
            struct.pack_into(">I", moov, o, struct.unpack(">I", moov[o:o + 4])[0] + len(moov))
    order.remove(b"moov")
    order.insert(order.index(b"mdat"), b"moov")
    return b"".join(bytes(moov) if k == b"moov" else boxes[k] for k in order)


def _mp4_timescale(data: bytes, value: int) -> bytes:
    """The MP4 with the video track's media timescale (mdhd, version 0) set to `value`."""
    i = _box(data, b"mdhd") + 8 + 4 + 8  # size+type, version/flags, creation+modification times
    return data[:i] + struct.pack(">I", value) + data[i + 4:]


def _mp4_sample_delta(data: bytes, value: int) -> bytes:
    """The MP4 with every frame's duration (stts) set to `value` timescale units."""
    i = _box(data, b"stts") + 8 + 4
    (entries,) = struct.unpack(">I", data[i:i + 4])
    out = bytearray(data)
    for k in range(entries):
        struct.pack_into(">I", out, i + 4 + 8 * k + 4, value)
    return bytes(out)


def _mp4_dims(data: bytes, width: int, height: int) -> bytes:
    """The MP4 with the track header (tkhd) and sample entry (mp4v) claiming width x height."""
    out = bytearray(data)
    t = _box(data, b"tkhd") + 8
    tk = t + 4 + (32 if data[t] == 1 else 20) + 52  # version/flags, times/ids/duration, layer..matrix
    struct.pack_into(">II", out, tk, width << 16, height << 16)
    s = _box(data, b"mp4v") + 8 + 6 + 2 + 16  # reserved, data ref index, pre-defined/reserved
    struct.pack_into(">HH", out, s, width & 0xFFFF, height & 0xFFFF)
    return bytes(out)


# --- the corpus --------------------------------------------------------------------------------------------------
def make_cases(out: Path, *, big: bool = False) -> list[Case]:
    """Write every case into `out` and cases.json; return the cases.

    `big` adds a clip of six real 8192x8192 JPEG frames (about 200 MB each decoded: seconds and a GB of
    memory to run), left out of the default corpus that CI runs.
    """
    out.mkdir(parents=True, exist_ok=True)
    base = clip()
    mp4 = write_cv2(out / "valid.mp4", base, "mp4v").read_bytes()
    avi = write_cv2(out / "valid.avi", base, "MJPG").read_bytes()
    fast = faststart(mp4)
    (out / "valid_faststart.mp4").write_bytes(fast)
    cases = [Case("valid_mp4", "valid.mp4", "valid", "the base clip, MPEG-4 Part 2 in MP4", frames=FRAMES),
             Case("valid_avi", "valid.avi", "valid", "the base clip, MJPEG in AVI", frames=FRAMES),
             Case("valid_faststart_mp4", "valid_faststart.mp4", "valid", "the MP4 with its index first",
                  frames=FRAMES)]

    def add(name: str, ext: str, data: bytes | Callable[[Path], object], kind: str, what: str, **kw: object) -> None:
        path = out / f"{name}{ext}"
        if callable(data):
            data(path)
        else:
            path.write_bytes(data)
        cases.append(Case(name, path.name, kind, what, **kw))  # type: ignore[arg-type]

    for label, data, ext in (("mp4", mp4, ".mp4"), ("avi", avi, ".avi"), ("faststart", fast, ".mp4")):
        for at in (1, 8, 64, 512):
            add(f"truncated_{label}_at_{at}b", ext, data[:at], "truncation", f"the {label} cut after {at} bytes",
                expect="error")
        for pct in (10, 25, 50, 75, 90, 99):
            at = len(data) * pct // 100
            add(f"truncated_{label}_at_{pct}pct", ext, data[:at], "truncation",
                f"the {label} cut at {pct}% ({at} of {len(data)} bytes)", expect="either")
        add(f"truncated_{label}_last_byte", ext, data[:-1], "truncation", f"the {label} without its last byte",
            expect="either")
        for pct in (0, 5, 30, 50, 70, 95):
            at = len(data) * pct // 100
            add(f"flipped_{label}_at_{pct}pct", ext, flip(data, at), "flipped bytes",
                f"16 bytes of the {label} inverted at {pct}% (offset {at})", expect="either")

    # Container structure hit on purpose: MP4 boxes, AVI chunks.
    add("flipped_mp4_moov", ".mp4", flip(mp4, _box(mp4, b"moov") + 8, 64), "flipped bytes",
        "the MP4 index (moov) garbled", expect="either")
    add("flipped_mp4_mdat_start", ".mp4", flip(mp4, _box(mp4, b"mdat") + 8, 64), "flipped bytes",
        "the first frame's data (start of mdat) garbled", expect="either")
    add("flipped_avi_idx1", ".avi", flip(avi, avi.find(b"idx1") + 8, 64), "flipped bytes",
        "the AVI index (idx1) garbled", expect="either")

    # Wrong extensions and containers renamed: decoders probe the content, not the name.
    for ext in (".avi", ".mkv", ".mov", ".webm", ".jpg", ""):
        add(f"mp4_named{ext.replace('.', '_') or '_noext'}", ext, mp4, "wrong extension",
            f"the MP4 clip named {ext or 'without extension'}", expect="results", frames=FRAMES)
    add("mp4_named_txt", ".txt", mp4, "wrong extension",
        "the MP4 clip named .txt (a .txt source is read as a list of sources)", expect="either")
    for ext in (".mp4", ".mkv", ".png"):
        add(f"avi_named{ext.replace('.', '_')}", ext, avi, "wrong extension", f"the AVI clip named {ext}",
            expect="results", frames=FRAMES)

    # Not videos at all.
    add("empty", ".mp4", b"", "not a video", "an empty file", expect="error")
    add("text", ".mp4", b"this is not a video\n" * 40, "not a video", "a text file named .mp4", expect="error")
    add("random_bytes", ".mp4", np.random.default_rng(1).integers(0, 256, 20000, np.uint8).tobytes(),
        "not a video", "20 kB of random bytes named .mp4", expect="error")
    add("png_image", ".mp4", png(base[0]), "not a video", "one PNG image named .mp4", expect="either")
    add("no_frames", ".avi", lambda p: write_avi(p, [], width=WIDTH, height=HEIGHT), "not a video",
        "a valid AVI header with no frames", expect="error")
    add("fifo", ".mp4", lambda p: os.mkfifo(p), "not a video", "a FIFO named .mp4 (reading would block)",
        expect="error")

    # Frame sizes.
    add("odd_size_63x47", ".mp4", lambda p: write_cv2(p, clip(24, 63, 47), "mp4v"), "size",
        "63x47 frames (OpenCV decodes 62x46)", frames=24)
    add("size_2x2", ".mp4", lambda p: write_cv2(p, clip(24, 2, 2), "mp4v"), "size", "2x2 frames", frames=24)
    add("size_1x1_mjpeg", ".avi", lambda p: write_avi(p, [jpeg(f) for f in clip(24, 1, 1)], width=1, height=1),
        "size", "1x1 JPEG frames", frames=24)
    add("size_1x1_png", ".avi", lambda p: write_avi(p, [png(f) for f in clip(24, 1, 1)], width=1, height=1,
                                                  codec=b"MPNG"), "size", "1x1 PNG frames", frames=24)
    add("size_1x1024", ".avi", lambda p: write_avi(p, [jpeg(f) for f in clip(20, 1024, 1)], width=1024,
                                                 height=1), "size", "1024x1 frames (aspect 1024:1)", frames=20)
    add("size_4x2048", ".avi", lambda p: write_avi(p, [jpeg(f) for f in clip(20, 4, 2048)], width=4,
                                                 height=2048), "size", "4x2048 frames (aspect 1:512)", frames=20)
    sizes = [(64, 48), (32, 24), (96, 72), (1, 1), (64, 48), (200, 8)]
    changing = [jpeg(clip(1, w, h, seed=i)[0]) for i in range(40) for w, h in [sizes[i % len(sizes)]]]
    add("size_changes_every_frame", ".avi", lambda p: write_avi(p, changing, width=64, height=48), "size",
        "the frame size changes every frame (6 sizes, 1x1 among them)", expect="either")
    add("header_size_65535", ".avi", lambda p: write_avi(p, [jpeg(f) for f in base], width=65535, height=65535),
        "size", "AVI headers claim 65535x65535, the JPEGs are 64x48", expect="either")
    add("jpeg_sof_65500", ".avi",
        lambda p: write_avi(p, [_sof_size(jpeg(f), 65500, 65500) for f in base], width=WIDTH, height=HEIGHT),
        "size", "every JPEG claims 65500x65500 (decoders refuse the size)", expect="error")
    add("jpeg_sof_4000_some", ".avi",
        lambda p: write_avi(p, [_sof_size(jpeg(f), 4000, 4000) if i % 8 == 3 else jpeg(f)
                                for i, f in enumerate(base)], width=WIDTH, height=HEIGHT),
        "size", "6 of 48 JPEGs claim 4000x4000 with 64x48 of data", expect="either")
    add("mp4_header_65535", ".mp4", _mp4_dims(mp4, 65535, 65535), "size",
        "MP4 track and sample entry claim 65535x65535", expect="either")

    # Frame rates and counts the headers lie about.
    for name, kw, what in (("fps_zero", dict(rate=0, scale=1, usec_per_frame=0), "frame rate 0/1"),
                           ("fps_zero_scale", dict(rate=25, scale=0, usec_per_frame=0), "frame rate 25/0"),
                           ("fps_huge", dict(rate=2**31 - 1, scale=1, usec_per_frame=0), "frame rate 2^31-1"),
                           ("fps_tiny", dict(rate=1, scale=2**31 - 1), "frame rate 1/(2^31-1)"),
                           ("count_lies_high", dict(total_frames=2**31 - 1), "header promises 2^31-1 frames"),
                           ("count_lies_zero", dict(total_frames=0), "header promises 0 frames"),
                           ("no_index", dict(index=False), "no idx1 index")):
        add(name, ".avi", lambda p, kw=kw: write_avi(p, [jpeg(f) for f in base], width=WIDTH, height=HEIGHT, **kw),
            "fps/count", f"MJPEG AVI whose header says {what}", frames=FRAMES)
    add("mp4_timescale_zero", ".mp4", _mp4_timescale(mp4, 0), "fps/count", "MP4 media timescale 0",
        expect="either")
    add("mp4_sample_delta_zero", ".mp4", _mp4_sample_delta(mp4, 0), "fps/count",
        "MP4 frame durations 0 (infinite fps)", expect="either")
    add("cv2_fps_65535", ".mp4", lambda p: write_cv2(p, base, "mp4v", fps=65535), "fps/count",
        "written by OpenCV at 65535 fps (the MPEG-4 maximum)", frames=FRAMES)
    add("cv2_fps_1e6", ".avi", lambda p: write_cv2(p, base, "MJPG", fps=1e6), "fps/count",
        "written by OpenCV at 1,000,000 fps", frames=FRAMES)

    # Corrupt frames inside a readable container: skipped and counted.
    def corrupt(indices: set[int]) -> list[bytes]:
        return [b"\0" * 600 if i in indices else jpeg(f) for i, f in enumerate(base)]

    add("corrupt_frames_3", ".avi", lambda p: write_avi(p, corrupt({5, 17, 30}), width=WIDTH, height=HEIGHT),
        "corrupt frames", "frames 5, 17 and 30 are zero bytes instead of JPEGs", frames=FRAMES - 3, dropped=3)
    add("corrupt_frames_run_10", ".avi",
        lambda p: write_avi(p, corrupt(set(range(10, 20))), width=WIDTH, height=HEIGHT),
        "corrupt frames", "frames 10-19 are zero bytes", frames=FRAMES - 10, dropped=10)
    add("corrupt_frames_run_30", ".avi",
        lambda p: write_avi(p, corrupt(set(range(10, 40))), width=WIDTH, height=HEIGHT),
        "corrupt frames", "frames 10-39 are zero bytes, frames 40-47 good again", frames=FRAMES - 30,
        dropped=30)
    add("corrupt_first_frame", ".avi", lambda p: write_avi(p, corrupt({0}), width=WIDTH, height=HEIGHT),
        "corrupt frames", "frame 0 is zero bytes", frames=FRAMES - 1, dropped=1)
    add("corrupt_all_frames", ".avi", lambda p: write_avi(p, corrupt(set(range(FRAMES))), width=WIDTH,
                                                        height=HEIGHT),
        "corrupt frames", "every frame is zero bytes", expect="error")
    huge = [_sof_size(jpeg(f), 65500, 65500) for f in base]
    add("sampled_frame_undecodable", ".avi",
        lambda p: write_avi(p, [huge[i] if i == 8 else jpeg(f) for i, f in enumerate(base)], width=WIDTH,
                            height=HEIGHT),
        "corrupt frames", "frame 8 (the one snippet 0 samples) claims 65500x65500: well-formed, undecodable",
        frames=FRAMES, dropped=0, rejected=1)
    add("all_but_first_undecodable", ".avi",
        lambda p: write_avi(p, [jpeg(base[0]), *huge[1:]], width=WIDTH, height=HEIGHT), "corrupt frames",
        "frames 1-47 claim 65500x65500 (the first decodes)", expect="either")
    add("single_frame", ".avi", lambda p: write_avi(p, [jpeg(base[0])], width=WIDTH, height=HEIGHT), "size",
        "one frame only", frames=1)

    if big:
        huge = [jpeg(cv2.resize(np.roll(base[0], 4 * i, axis=1), (8192, 8192))) for i in range(6)]
        add("size_8192x8192", ".avi", lambda p: write_avi(p, huge, width=8192, height=8192), "size",
            "six real 8192x8192 frames", frames=6)

    (out / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=2) + "\n", encoding="utf-8")
    return cases


def _run_one(path: Path, bundle: Path, box: dict) -> None:
    """Run one file; put what it ended in into box["o"]."""
    from stp_edge.run import run_video

    try:
        res = run_video(path, bundle=bundle, backend="ort-cpu")
        st = res.stats
        box["o"] = {"outcome": "results", "snippets": len(res), "read": st.read, "dropped": st.dropped,
                    "expected": st.expected, "missing": st.missing, "fps": res.fps}
    except Exception as exc:  # reported as it is: the test decides what is allowed
        box["o"] = {"outcome": "error", "error": type(exc).__name__, "message": str(exc)}


def run_cases(out: Path, cases: Sequence[Case], bundle: Path, timeout_s: float = 60.0) -> list[dict]:
    """Run every case through `stp_edge.run.run_video` (each in a thread, bounded by `timeout_s`)."""
    import threading

    outcomes = []
    for case in cases:
        box: dict = {}
        t = threading.Thread(target=_run_one, args=(out / case.file, bundle, box), daemon=True)
        t.start()
        t.join(timeout_s)
        outcomes.append({"name": case.name, "kind": case.kind, "expect": case.expect,
                         **box.get("o", {"outcome": "hang"})})
    return outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="where to write the cases")
    ap.add_argument("--big", action="store_true", help="add a clip of 8192x8192 frames (slow, ~1 GB to run)")
    ap.add_argument("--run", type=Path, metavar="BUNDLE", help="run every case through run_video with BUNDLE")
    args = ap.parse_args(argv)
    cases = make_cases(args.out, big=args.big)
    print(f"{len(cases)} hostile videos in {args.out} (outcomes in {args.out / 'cases.json'})")
    if args.run is not None:
        outcomes = run_cases(args.out, cases, args.run)
        (args.out / "outcomes.json").write_text(json.dumps(outcomes, indent=2) + "\n", encoding="utf-8")
        for o in outcomes:
            detail = (f"{o['read']} read, {o['dropped']} dropped, {o['missing']} missing of {o['expected']}"
                      if o["outcome"] == "results" else f"{o.get('error')}: {o.get('message')}")
            print(f"{o['kind']:16s} {o['name']:32s} {o['outcome']:8s} {detail}")
        kinds: dict[str, dict[str, int]] = {}
        for o in outcomes:
            kinds.setdefault(o["kind"], {}).setdefault(o["outcome"], 0)
            kinds[o["kind"]][o["outcome"]] += 1
        for kind, counts in kinds.items():
            print(f"{kind:16s} " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
