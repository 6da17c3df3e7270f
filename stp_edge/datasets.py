"""Ground truth of anomaly data sets: readers of their annotation formats, one `VideoGroundTruth` per video.

UCF-Crime `Temporal_Anomaly_Annotation_for_Testing_Videos.txt`, ShanghaiTech `test_frame_mask/*.npy`,
UBnormal `*_tracks.txt`, and the synthetic benchmark of `stp_edge.synthetic` (manifest + annotation + boxes).
Frame ranges everywhere are 0-based and half-open, [start, end). Read by the evaluation wing and by the archive
jobs of `stp_edge.scale` (training labels).
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.errors import MissingInputError, StpEdgeError, UsageError
from stp_edge.media_files import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS


class AnnotationError(StpEdgeError, ValueError):
    """A ground-truth file is malformed; the message names the file, line and what was expected."""


class GroundTruthMismatch(AnnotationError):
    """A video's ground truth does not fit the video (frame count, ranges past its end, frames lost in decoding).

    The message names the video, its file and each problem as expected vs got.
    """


@dataclass
class VideoGroundTruth:
    """Ground truth of one video.

    Attributes:
        name: video identifier (file name as the annotation spells it).
        label: video-level class name; "normal" for normal videos.
        ranges: anomalous frame ranges [start, end), 0-based.
        num_frames: frame count, or None when the annotation does not say (UCF-Crime).
        boxes: optional {frame: (x1, y1, x2, y2)} of the anomaly, in pixels.
    """

    name: str
    label: str
    ranges: list[tuple[int, int]] = field(default_factory=list)
    num_frames: int | None = None
    boxes: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)

    @property
    def anomalous(self) -> bool:
        """Whether any frame is anomalous."""
        return bool(self.ranges)

    def frame_labels(self, num_frames: int | None = None) -> np.ndarray:
        """Per-frame 0/1 labels [num_frames] (defaults to `self.num_frames`)."""
        n = self.num_frames if num_frames is None else num_frames
        if n is None:
            raise UsageError(f"{self.name}: frame count unknown; pass num_frames")
        y = np.zeros(n, np.int64)
        for s, e in self.ranges:
            y[max(0, s):min(n, e)] = 1
        return y

    def box_array(self, num_frames: int) -> np.ndarray:
        """Ground-truth boxes [num_frames, 4], NaN where none."""
        out = np.full((num_frames, 4), np.nan)
        for f, b in self.boxes.items():
            if 0 <= f < num_frames:
                out[f] = b
        return out


def check_ground_truth(gt: VideoGroundTruth, num_frames: int, *, dropped: int = 0,
                       expected: int | None = None, frame_hw: tuple[int, int] | None = None) -> list[str]:
    """What is wrong with `gt` as the ground truth of a video of `num_frames` decoded frames; [] when it fits.

    Checked: the annotation's own frame count (a mask's length) equals the video's; every range and box lies
    inside the video; no frame was lost mid-decode (`dropped`: later frame numbers would no longer be the
    annotation's); and the decoder read every frame the container promises (`expected`; pass it only when the
    annotation has no frame count of its own, since it otherwise checks the same thing); with `frame_hw`, that every
    box lies inside the frame (boxes drawn on another resolution of the video would score nonsense IoUs).

    Args:
        gt: the video's ground truth.
        num_frames: frames the video delivered (decoded frames, or images of a frame folder).
        dropped: frames that failed to decode between good ones.
        expected: frames the container promises, when known.
        frame_hw: (height, width) of the decoded frames, when known.

    Returns:
        One line per problem, each saying what was expected and what was found.
    """
    if num_frames <= 0:
        return [f"the video has no decodable frame: expected at least 1, got {num_frames}"]
    problems = []
    if gt.num_frames is not None and gt.num_frames != num_frames:
        problems.append(f"ground truth has {gt.num_frames} frames, the video has {num_frames}")
    for s, e in gt.ranges:
        if e > num_frames:
            problems.append(f"range [{s}, {e}) ends past the video: expected end <= {num_frames}, got {e}")
    late = sorted(f for f in gt.boxes if not 0 <= f < num_frames)
    if late:
        problems.append(f"{len(late)} ground-truth box(es) outside the video (first at frame {late[0]}): "
                        f"expected frames 0..{num_frames - 1}")
    outside = [(f, b) for f, b in sorted(gt.boxes.items()) if frame_hw and (b[2] > frame_hw[1] or b[3] > frame_hw[0])]
    if outside:
        f, b = outside[0]
        problems.append(f"{len(outside)} ground-truth box(es) reach past the {frame_hw[1]}x{frame_hw[0]} frame (first "
                        f"at frame {f}: {b}): expected x2 <= {frame_hw[1]}, y2 <= {frame_hw[0]} (boxes drawn on "
                        "another resolution of the video?)")
    if dropped:
        problems.append(f"{dropped} frame(s) failed to decode mid-video, so the frame numbers after the first "
                        "failure no longer match the annotation's")
    if expected is not None and expected > num_frames + dropped:
        problems.append(f"the container promises {expected} frames, {num_frames + dropped} were read "
                        "(truncated file)")
    return problems


def _read_lines(path: Path) -> list[str]:
    """The lines of a text annotation file; unreadable files and non-UTF-8 lines raise `AnnotationError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read the annotation file: {exc.strerror or exc}") from None
    lines = []
    for lineno, raw in enumerate(data.splitlines(), 1):
        try:
            lines.append(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except UnicodeDecodeError as exc:
            raise AnnotationError(f"{path}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                  f"{exc.start + 1})") from None
    return lines


def _range_pairs(path: Path, lineno: int, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Parse `s1 e1 s2 e2 ...` (-1 -1 = absent) into [start, end) ranges."""
    try:
        nums = [int(t) for t in tokens]
    except ValueError:
        msg = f"{path}:{lineno}: frame numbers must be integers, got {list(tokens)}"
        raise AnnotationError(msg) from None
    ranges = []
    for k in range(0, len(nums), 2):
        s, e = nums[k], nums[k + 1]
        if s == -1 and e == -1:
            continue
        if s < 0 or e <= s:
            raise AnnotationError(f"{path}:{lineno}: range {k // 2 + 1} is ({s}, {e}); expected "
                                  "0 <= start < end, or -1 -1 for absent")
        ranges.append((s, e))
    return ranges


def _canonical_class(token: str, class_names: Sequence[str] | None) -> str:
    """Annotation class token -> class name ("Normal..." -> "normal", "abandoned_object" -> "abandoned object").

    With `class_names`, matching ignores case, spaces, underscores and a plural s ("RoadAccidents" matches
    "road accident"); an unmatched token is returned lower-cased with spaces for underscores.
    """
    if token.lower().startswith(("normal", "testing_normal", "training_normal")):
        return "normal"
    key = lambda s: s.replace(" ", "").replace("_", "").lower().rstrip("s")  # noqa: E731
    for c in class_names or ():
        if key(c) == key(token):
            return c
    return token.replace("_", " ").lower()


def read_temporal_annotation(path: str | Path, *, class_names: Sequence[str] | None = None,
                             num_frames: Mapping[str, int] | None = None) -> list[VideoGroundTruth]:
    """Read a UCF-Crime style temporal annotation: one video per line, `name class s1 e1 s2 e2`.

    This is the format of UCF-Crime's `Temporal_Anomaly_Annotation_for_Testing_Videos.txt` and of the
    synthetic benchmark's `Temporal_Anomaly_Annotation.txt`. Fields are whitespace-separated; -1 marks an absent
    range; normal videos have all four -1. Frame numbers are taken as 0-based, end-exclusive (the common
    reading of UCF-Crime's file, e.g. `gt[s1:e1] = 1`). Blank lines and lines starting with `#` are skipped.

    Args:
        path: the annotation file.
        class_names: if given, class tokens are matched to these names ignoring case, `_`/spaces and a
            plural s (UCF-Crime's "RoadAccidents" matches "road accident").
        num_frames: optional {video name: frame count}; UCF-Crime's file itself has none.

    Returns:
        One `VideoGroundTruth` per line.

    Raises:
        AnnotationError: the file is unreadable or not UTF-8, holds no entry, or a line has the wrong number of
            fields, non-integer frames, an invalid range, or a class that contradicts its ranges.
    """
    path = Path(path)
    out, seen = [], set()
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tok = line.split()
        if len(tok) < 6 or (len(tok) - 2) % 2:
            raise AnnotationError(f"{path}:{lineno}: expected 'name class s1 e1 s2 e2' (6 fields, pairs of "
                                  f"frame numbers after the class), got {len(tok)} fields: {line.strip()!r}")
        name = tok[0]
        if name in seen:
            raise AnnotationError(f"{path}:{lineno}: video {name!r} is annotated twice")
        seen.add(name)
        label = _canonical_class(tok[1], class_names)
        ranges = _range_pairs(path, lineno, tok[2:])
        if label == "normal" and ranges:
            raise AnnotationError(f"{path}:{lineno}: class {tok[1]!r} is normal but has anomalous ranges "
                                  f"{ranges}; expected -1 -1 -1 -1")
        if label != "normal" and not ranges:
            raise AnnotationError(f"{path}:{lineno}: class {tok[1]!r} is anomalous but has no range (all -1); "
                                  "expected at least one 'start end' pair, or the class Normal")
        n = (num_frames or {}).get(name)
        out.append(VideoGroundTruth(name, label, ranges, n))
    if not out:
        raise AnnotationError(f"annotation file {path} holds no entries (blank or comment lines only); expected one "
                              "'name class s1 e1 s2 e2' line per video")
    return out


def read_ucf_crime(path: str | Path, *, class_names: Sequence[str] | None = None,
                   num_frames: Mapping[str, int] | None = None) -> list[VideoGroundTruth]:
    """Read UCF-Crime's `Temporal_Anomaly_Annotation_for_Testing_Videos.txt` (`read_temporal_annotation`)."""
    return read_temporal_annotation(path, class_names=class_names, num_frames=num_frames)


def read_shanghaitech(mask_dir: str | Path) -> list[VideoGroundTruth]:
    """Read ShanghaiTech's `test_frame_mask/<video>.npy` files (1-D 0/1 arrays, one entry per frame).

    Videos with any 1 get label "anomaly" (ShanghaiTech has no class names), the others "normal".

    Raises:
        AnnotationError: the directory has no .npy files, or a file is not a .npy array, or a mask is empty,
            not 1-D, or holds a value other than 0/1 (the message names the frame).
    """
    mask_dir = Path(mask_dir)
    files = sorted(mask_dir.glob("*.npy"))
    if not files:
        raise AnnotationError(f"{mask_dir}: no .npy frame masks found (expected test_frame_mask/<video>.npy)")
    out = []
    for f in files:
        m = _load_mask(f)
        ranges = _mask_to_ranges(m.astype(bool))
        out.append(VideoGroundTruth(f.stem, "anomaly" if ranges else "normal", ranges, int(m.size)))
    return out


def _load_mask(f: Path) -> np.ndarray:
    """One ShanghaiTech frame mask, checked: a non-empty 1-D numeric array of 0/1."""
    try:
        m = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AnnotationError(f"{f}: not a NumPy .npy array ({reason})") from None
    if not isinstance(m, np.ndarray) or m.dtype.kind not in "biuf":
        raise AnnotationError(f"{f}: expected a numeric 1-D 0/1 array, got dtype {getattr(m, 'dtype', type(m))}")
    if m.ndim != 1:
        raise AnnotationError(f"{f}: expected a 1-D array of 0/1 per frame, got shape {m.shape}")
    if m.size == 0:
        raise AnnotationError(f"{f}: the mask is empty (0 frames); expected one 0/1 entry per frame of the video")
    bad = ~np.isin(m, (0, 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise AnnotationError(f"{f}: expected a 1-D array of 0/1 per frame, but frame {i} is {m[i].item()} "
                              f"({int(bad.sum())} such frame(s))")
    return m


def _mask_to_ranges(mask: np.ndarray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def read_ubnormal_tracks(path: str | Path) -> list[tuple[int, int, int]]:
    """Read a UBnormal `<video>_tracks.txt`: comma-separated `track_id,start,end` rows, end inclusive.

    Returns (track_id, start, end_exclusive) per row. This is the layout the UBnormal authors' own
    `write_frame_level_ground_truth.py` reads (`gt[start:end + 1] = 1`).
    """
    path = Path(path)
    rows = []
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        tok = [t.strip() for t in line.split(",")]
        if len(tok) != 3:
            raise AnnotationError(f"{path}:{lineno}: expected 'track_id,start_frame,end_frame' (3 fields), "
                                  f"got {len(tok)}: {line.strip()!r}")
        values = [_integral(t) for t in tok]
        if None in values:
            raise AnnotationError(f"{path}:{lineno}: fields must be integer frame numbers, got {tok}")
        tid, s, e = values  # type: ignore[misc]
        if s < 0 or e < s:
            raise AnnotationError(f"{path}:{lineno}: frames ({s}, {e}); "
                                  "expected 0 <= start <= end (end inclusive)")
        rows.append((tid, s, e + 1))
    return rows


def _integral(token: str) -> int | None:
    """`token` as an int when it is one ("12", "12.0"); None for anything else ("4.5", "inf", "nan", "x")."""
    try:
        x = float(token)
    except ValueError:
        return None
    return int(x) if math.isfinite(x) and x == int(x) else None


def _union(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted union of [start, end) ranges (overlapping or touching ranges merge)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def read_ubnormal(root: str | Path, video_names: Sequence[str] | None = None) -> list[VideoGroundTruth]:
    """Read UBnormal ground truth from the data set's own layout.

    Layout: `root/Scene<k>/<video>.mp4`, and for abnormal videos `root/Scene<k>/<video>_annotations/
    <video>_tracks.txt` (a `<video>_new_tracks.txt` next to it is preferred, as the authors' scripts do).
    Frame counts come from the video containers through OpenCV (None when it cannot tell). The union of all
    tracks' frames is anomalous; it is not clipped to the frame count, so a track past the video's end is
    caught by `check_ground_truth` rather than silently shortened.

    Args:
        root: the UBnormal directory holding the Scene folders.
        video_names: restrict to these videos (e.g. the lines of `abnormal_test_video_names.txt` and
            `normal_test_video_names.txt`); default: every video found.

    Raises:
        AnnotationError: a named video is missing, or an abnormal video has no tracks file.
    """
    import cv2

    root = Path(root)
    videos = {p.stem: p for p in sorted(root.glob("Scene*/*.mp4"))}
    names = list(video_names) if video_names is not None else sorted(videos)
    if not names:
        raise AnnotationError(f"{root}: no UBnormal video (expected Scene<k>/<video>.mp4)")
    out = []
    for name in names:
        if name not in videos:
            raise AnnotationError(f"{root}: video {name!r} not found under Scene*/")
        vp = videos[name]
        cap = cv2.VideoCapture(str(vp))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        ranges: list[tuple[int, int]] = []
        if name.startswith("abnormal"):
            ann = vp.parent / f"{name}_annotations"
            tracks = ann / f"{name}_new_tracks.txt"
            tracks = tracks if tracks.exists() else ann / f"{name}_tracks.txt"
            if not tracks.exists():
                raise AnnotationError(f"{tracks}: missing tracks file for abnormal video {name!r}")
            ranges = _union([(s, e) for _, s, e in read_ubnormal_tracks(tracks)])
        out.append(VideoGroundTruth(name, "anomaly" if ranges else "normal", ranges, n if n > 0 else None))
    return out


def read_box_csv(path: str | Path) -> dict[str, dict[int, tuple[float, float, float, float]]]:
    """Read a box file with header `video,frame,x1,y1,x2,y2[,class]` into {video: {frame: box}}."""
    path = Path(path)
    out: dict[str, dict[int, tuple[float, float, float, float]]] = {}
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        want = ["video", "frame", "x1", "y1", "x2", "y2"]
        if header is None or [h.strip() for h in header[:6]] != want:
            raise AnnotationError(f"{path}:1: expected header starting {','.join(want)}, got {header}")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 6:
                raise AnnotationError(f"{path}:{lineno}: expected >= 6 fields ({','.join(want)}), got {row}")
            try:
                f, box = int(row[1]), tuple(float(v) for v in row[2:6])
            except ValueError:
                msg = f"{path}:{lineno}: frame must be an integer and x1..y2 numbers, got {row}"
                raise AnnotationError(msg) from None
            if not all(math.isfinite(v) for v in box):
                raise AnnotationError(f"{path}:{lineno}: box {box} is not finite")
            if f < 0:
                raise AnnotationError(f"{path}:{lineno}: frame {f} is negative; expected a 0-based frame number")
            if not (box[2] > box[0] and box[3] > box[1]):
                raise AnnotationError(f"{path}:{lineno}: box {box} has x2 <= x1 or y2 <= y1")
            out.setdefault(row[0], {})[f] = box  # type: ignore[assignment]
    return out


LIU_MA_FIRST_IMAGE = 1
"""The number of a video's first frame image in Liu & Ma's box files (`image_0001.jpg`, ffmpeg's image2 default).

The files name frames by image file, not by index; frame = image number - LIU_MA_FIRST_IMAGE. Their README does
not say how the images were extracted; 1 is ffmpeg's default start number. Boxes are annotated every 16 frames, so
a one-frame shift moves no box across a 16-frame snippet boundary more than once in 16."""

_LIU_MA_FIELDS = ("image", "x1", "y1", "x2", "y2")


class _PlainUnpickler(pickle.Unpickler):
    """Reads only plain containers, text and numbers: no class is ever looked up, so no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; a box file holds only dicts, lists, "
                                     "texts and numbers")


def read_liu_ma_boxes(path: str | Path) -> dict[str, dict[int, tuple[float, float, float, float]]]:
    """Read Liu & Ma's UCF-Crime boxes (`Test_annotation.pkl`, `Train_annotation.pkl`) as {video: {frame: box}}.

    Format (github.com/xuzero/UCFCrime_BoundingBox_Annotation, for "Exploring Background-bias for Anomaly
    Detection in Surveillance Videos", ACM MM 2019): a Python 2 pickle of a dict from video name
    (`Arrest024_x264`) to a list of `[image_path, x1, y1, x2, y2]`, one per annotated frame, where image_path ends
    in `image_NNNN.jpg` (frame NNNN - `LIU_MA_FIRST_IMAGE`) and the box is in pixels of the 320x240 video. Only
    plain data is unpickled (a file that names any class is refused, so it cannot run code). A pickle has no
    lines: errors name the file, the video, the entry's index and image, and the field.

    Raises:
        AnnotationError: unreadable or not such a pickle, or an entry with the wrong number of fields, an image
            name without a frame number, a non-numeric, negative or non-finite coordinate, x2 <= x1 or y2 <= y1,
            or a frame annotated twice.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = _PlainUnpickler(fh, encoding="latin1").load()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read the box file: {exc.strerror or exc}") from None
    except Exception as exc:  # any unpickling failure means "not this format"; named below
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__
        raise AnnotationError(f"{path}: not a Liu & Ma box annotation pickle ({reason}); expected a dict "
                              "{video: [[image_path, x1, y1, x2, y2], ...]}") from None
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f"{path}: expected a non-empty dict {{video: [[image_path, x1, y1, x2, y2], ...]}}, "
                              f"got {type(data).__name__}{' (empty)' if isinstance(data, dict) else ''}")
    return {_video_key(path, video): _liu_ma_video(path, video, entries) for video, entries in data.items()}


def _video_key(path: Path, video: Any) -> str:
    if not isinstance(video, str) or not video.strip():
        raise AnnotationError(f"{path}: video key {video!r} is not a video name (expected e.g. 'Arrest024_x264')")
    return video


def _liu_ma_video(path: Path, video: str, entries: Any) -> dict[int, tuple[float, float, float, float]]:
    """One video's entries -> {frame: box}, each entry checked field by field."""
    if not isinstance(entries, (list, tuple)):
        raise AnnotationError(f"{path}: video {video!r}: expected a list of [image_path, x1, y1, x2, y2], "
                              f"got {type(entries).__name__}")
    out: dict[int, tuple[float, float, float, float]] = {}
    for k, entry in enumerate(entries):
        where = f"{path}: video {video!r} entry {k}"
        if not isinstance(entry, (list, tuple)) or len(entry) != len(_LIU_MA_FIELDS):
            raise AnnotationError(f"{where}: expected 5 fields {list(_LIU_MA_FIELDS)}, got {entry!r}")
        frame = _liu_ma_frame(where, entry[0])
        where += f" ({str(entry[0]).rsplit('/', 1)[-1]})"
        box = tuple(_coordinate(where, name, v) for name, v in zip(_LIU_MA_FIELDS[1:], entry[1:], strict=True))
        if not (box[2] > box[0] and box[3] > box[1]):
            raise AnnotationError(f"{where}: field x2/y2: box {box} has x2 <= x1 or y2 <= y1")
        if frame in out:
            raise AnnotationError(f"{where}: frame {frame} is annotated twice")
        out[frame] = box  # type: ignore[assignment]
    return out


def _liu_ma_frame(where: str, image: Any) -> int:
    """The 0-based frame of an image path `.../image_NNNN.jpg`."""
    name = image.rsplit("/", 1)[-1] if isinstance(image, str) else ""
    match = re.fullmatch(r"image_(\d+)\.(jpe?g|png)", name)
    if match is None:
        raise AnnotationError(f"{where}: field image: expected a path ending in image_NNNN.jpg, got {image!r}")
    frame = int(match.group(1)) - LIU_MA_FIRST_IMAGE
    if frame < 0:
        raise AnnotationError(f"{where}: field image: image number {match.group(1)} is below the first, "
                              f"{LIU_MA_FIRST_IMAGE}")
    return frame


def _coordinate(where: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise AnnotationError(f"{where}: field {name}: expected a pixel coordinate >= 0, got {value!r}")
    return float(value)


def read_boxes(path: str | Path) -> dict[str, dict[int, tuple[float, float, float, float]]]:
    """Ground-truth boxes by file type: Liu & Ma's UCF-Crime pickle (`.pkl`), or the CSV of `read_box_csv`."""
    path = Path(path)
    if path.suffix.lower() == ".pkl":
        return read_liu_ma_boxes(path)
    if path.suffix.lower() == ".csv":
        return read_box_csv(path)
    raise UsageError(f"{path}: unknown box file type {path.suffix!r}; expected Liu & Ma's .pkl (UCF-Crime) or a "
                     ".csv with header video,frame,x1,y1,x2,y2")


def attach_boxes(gts: Sequence[VideoGroundTruth], boxes: Mapping[str, Mapping[int, tuple[float, float, float, float]]],
                 source: str | Path) -> list[str]:
    """Give each video of `gts` its boxes (matched by name without extension); return the box videos not in `gts`.

    Raises:
        AnnotationError: no video of the box file is in `gts` (the names do not match at all).
    """
    by_stem = {Path(g.name).stem: g for g in gts}
    unmatched = sorted(v for v in boxes if Path(v).stem not in by_stem)
    if boxes and len(unmatched) == len(boxes):
        raise AnnotationError(f"{source}: none of its {len(boxes)} videos ({', '.join(unmatched[:3])}, ...) is in the "
                              f"annotations (e.g. {', '.join(list(by_stem)[:3])}); expected the same video names")
    for video, frames in boxes.items():
        g = by_stem.get(Path(video).stem)
        if g is not None:
            g.boxes = dict(frames)
    return unmatched


def read_synthetic(root: str | Path) -> list[VideoGroundTruth]:
    """Read a split written by `stp_edge.synthetic.write_benchmark` (manifest, annotation and boxes).

    Raises:
        AnnotationError: the manifest and the annotation file disagree on the videos or their events.
    """
    root = Path(root)
    manifest_path = root / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{manifest_path}: cannot read the benchmark manifest: {exc}") from exc
    try:
        frames = {v["name"]: int(v["num_frames"]) for v in manifest["videos"]}
        by_name = {v["name"]: v for v in manifest["videos"]}
        class_names = list(manifest["class_names"])
        annotation = root / manifest.get("annotation", "Temporal_Anomaly_Annotation.txt")
        events = {name: v["event"] for name, v in by_name.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise AnnotationError(f"{manifest_path}: malformed benchmark manifest ({what}); expected videos "
                              "[{name, num_frames, event}], class_names") from None
    gts = read_temporal_annotation(annotation, class_names=class_names, num_frames=frames)
    if {g.name for g in gts} != set(by_name):
        raise AnnotationError(f"{root}: annotation and manifest list different videos")
    boxes_file = root / manifest.get("boxes", "boxes.csv")
    boxes = read_box_csv(boxes_file) if boxes_file.exists() else {}
    for g in gts:
        ev = events[g.name]
        if (list(g.ranges[0]) if g.ranges else None) != ev:
            raise AnnotationError(f"{root}: {g.name}: annotation ranges {g.ranges} but manifest event {ev}")
        g.boxes = boxes.get(g.name, {})
    return gts


FORMATS = ("synthetic", "ucf-crime", "shanghaitech", "ubnormal")


def load_ground_truth(data: str | Path, fmt: str = "synthetic", annotations: str | Path | None = None,
                      class_names: Sequence[str] | None = None) -> list[VideoGroundTruth]:
    """Ground truth of a data set in one of `FORMATS`.

    synthetic: `data` as written by `write_benchmark`; ucf-crime: `annotations` is the temporal annotation
    file; shanghaitech: `annotations` is the `test_frame_mask` directory; ubnormal: `data` is the root with the
    Scene folders.
    """
    if fmt == "synthetic":
        return read_synthetic(data)
    if fmt == "ubnormal":
        return read_ubnormal(data)
    if annotations is None:
        raise UsageError(f"format {fmt!r} needs the annotations path (--annotations)")
    if fmt == "ucf-crime":
        return read_ucf_crime(annotations, class_names=class_names)
    if fmt == "shanghaitech":
        return read_shanghaitech(annotations)
    raise UsageError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def find_video(data: Path, name: str) -> Path:
    """The file or frame directory of video `name` under `data` (searched recursively, extensions optional)."""
    stem = Path(name).stem
    candidates = [data / name, *(data / f"{stem}{ext}" for ext in VIDEO_EXTENSIONS), data / stem]
    candidates += sorted(p for p in data.rglob(f"{stem}*") if p.stem == stem)
    for c in candidates:
        if c.is_file() or (c.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in c.iterdir())):
            return c
    raise MissingInputError(f"video {name!r} of the annotations was not found under {data} (tried a file with "
                            f"extensions {VIDEO_EXTENSIONS} and a directory of frames)")
