"""Writing the synthetic benchmark: a split of videos plus ground truth in the usual annotation formats."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from stp_edge.errors import UsageError
from stp_edge.synthetic.plans import ANOMALY_CLASSES, CLASS_NAMES, ClipPlan, plan_clip
from stp_edge.video import CODECS, VideoError, VideoWriter


def class_token(name: str) -> str:
    """The whitespace-free spelling of a class name used in annotation files ("abandoned object" -> ...)."""
    return name.replace(" ", "_")


def _sub_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def benchmark_plans(*, split: str, num_videos: int, seed: int, width: int = 320, height: int = 240,
                    num_frames: int = 300, fps: float = 25.0, anomaly_ratio: float = 0.5,
                    classes: Sequence[str] = ANOMALY_CLASSES,
                    num_scenes: int | None = None) -> Iterator[tuple[str, int, ClipPlan]]:
    """The clips of a `write_benchmark` split, in order, without rendering them: (label, scene, plan)."""
    split_code = zlib.crc32(split.encode())
    n_scenes = num_scenes or max(1, math.ceil(num_videos / 4))
    n_anom = round(num_videos * anomaly_ratio)
    order = np.random.default_rng(_sub_seed(seed, split_code, 3)).permutation(num_videos)
    labels = ["normal"] * num_videos
    for k, v in enumerate(order[:n_anom]):
        labels[int(v)] = classes[k % len(classes)]
    for i, label in enumerate(labels):
        scene = i % n_scenes
        yield label, scene, plan_clip(_sub_seed(seed, split_code, 2, i), width=width, height=height,
                                      num_frames=num_frames, anomaly=label, fps=fps,
                                      layout_seed=_sub_seed(seed, split_code, 1, scene))


def write_benchmark(out_dir: str | Path, *, split: str, num_videos: int, seed: int, width: int = 320,
                    height: int = 240, num_frames: int = 300, fps: float = 25.0, anomaly_ratio: float = 0.5,
                    classes: Sequence[str] = ANOMALY_CLASSES, num_scenes: int | None = None,
                    codec: str = "mp4v", progress: bool = False) -> Path:
    """Write a split of the synthetic benchmark: videos plus ground truth in the usual formats.

    Files under `out_dir`:
        `<name>.mp4` (or `.avi` for MJPG): the videos;
        `Temporal_Anomaly_Annotation.txt`: UCF-Crime style, `name  class  s1 e1  s2 e2` with -1 for absent,
            frames 0-based, start inclusive, end exclusive;
        `boxes.csv`: `video,frame,x1,y1,x2,y2,class`, one row per anomalous frame;
        `manifest.json`: sizes, class names and, per video, its label, event, seeds and scene.

    Scene layouts come from (split, seed, scene index), clip content from (split, seed, video index), so two
    splits never share a camera layout even with the same seed.

    Args:
        out_dir: output directory (created).
        split: split name, e.g. "train" or "test".
        num_videos: number of videos.
        seed: base seed.
        width: frame width.
        height: frame height.
        num_frames: frames per video.
        fps: frame rate.
        anomaly_ratio: fraction of videos that hold an anomaly; anomalous videos cycle through `classes`.
        classes: anomaly classes to use.
        num_scenes: number of distinct camera layouts in the split (default: about one per 4 videos).
        codec: "mp4v" (.mp4) or "MJPG" (.avi).
        progress: print one line per video.

    Returns:
        Path of the written manifest.json.
    """
    if codec not in CODECS:
        raise UsageError(f"codec={codec!r} not supported; expected one of {sorted(CODECS)}")
    bad = [c for c in classes if c not in ANOMALY_CLASSES]
    if bad or not classes:
        raise UsageError(f"classes={list(classes)!r}: expected a non-empty subset of {ANOMALY_CLASSES}")
    if num_videos < 1 or not 0 <= anomaly_ratio <= 1:
        raise UsageError(f"num_videos={num_videos}, anomaly_ratio={anomaly_ratio}: "
                         "expected num_videos >= 1 and anomaly_ratio in [0, 1]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = CODECS[codec]
    videos, ann_lines, box_lines = [], [], ["video,frame,x1,y1,x2,y2,class"]
    plans = benchmark_plans(split=split, num_videos=num_videos, seed=seed, width=width, height=height,
                            num_frames=num_frames, fps=fps, anomaly_ratio=anomaly_ratio, classes=classes,
                            num_scenes=num_scenes)
    for i, (label, scene, plan) in enumerate(plans):
        name = f"{split}_{i:04d}_{class_token(label)}{ext}"
        write_video(out / name, plan.frames(), fps, (width, height), codec, num_frames)
        s, e = plan.event if plan.event else (-1, -1)
        ann_lines.append(f"{name}  {class_token(label)}  {s}  {e}  -1  -1")
        for f in np.flatnonzero(~np.isnan(plan.boxes[:, 0])):
            x1, y1, x2, y2 = plan.boxes[f]
            box_lines.append(f"{name},{f},{x1:.1f},{y1:.1f},{x2:.1f},{y2:.1f},{class_token(label)}")
        videos.append({"name": name, "label": label, "label_index": CLASS_NAMES.index(label),
                       "anomalous": label != "normal", "event": list(plan.event) if plan.event else None,
                       "num_frames": num_frames, "scene": scene, "scene_kind": plan.layout.kind,
                       "seed": plan.seed, "layout_seed": plan.layout_seed})
        if progress:
            print(f"[{i + 1}/{num_videos}] {name}  {label}  event={plan.event}", flush=True)
    (out / "Temporal_Anomaly_Annotation.txt").write_text("\n".join(ann_lines) + "\n")
    (out / "boxes.csv").write_text("\n".join(box_lines) + "\n")
    manifest = {"schema": "stp-edge-synthetic/1", "split": split, "seed": seed,
                "class_names": list(CLASS_NAMES),
                "width": width, "height": height, "fps": fps, "num_frames": num_frames, "codec": codec,
                "annotation": "Temporal_Anomaly_Annotation.txt", "boxes": "boxes.csv",
                "frame_ranges": "0-based, [start, end)", "videos": videos}
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float, size: tuple[int, int], codec: str,
                expected: int) -> None:
    """Write BGR frames of `size` (w, h) through `stp_edge.video.VideoWriter`: all `expected` of them or no file.

    Raises:
        VideoError: The writer cannot open, a frame does not fit, `frames` does not yield `expected` frames, or
            the finished file does not hold them all; nothing is left under `path`.
    """
    with VideoWriter(path, fps, size, codec) as writer:
        for f in frames:
            writer.write(f)
        if writer.frames_written != expected:
            raise VideoError(f"{path}: {writer.frames_written} frames to write, expected {expected}")
