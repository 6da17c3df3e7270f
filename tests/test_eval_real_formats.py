"""`evaluate_bundle` on the real data sets' layouts: UCF-Crime (video files + temporal annotation file) and
ShanghaiTech (frame folders + test_frame_mask/*.npy), with clips generated in the test."""

import cv2
import numpy as np
import pytest

from stp_edge.datasets import find_video
from stp_edge.eval import evaluate_bundle
from stp_edge.synthetic import generate_clip


def _clips():
    return [("Fire001_x264", generate_clip(31, width=160, height=120, num_frames=96, anomaly="fire")),
            ("Normal_Videos_002_x264", generate_clip(32, width=160, height=120, num_frames=80))]


def test_ucf_crime_layout(tmp_path, exported_tiny_bundle):
    videos = tmp_path / "videos" / "Fire"
    videos.mkdir(parents=True)
    lines = []
    for name, clip in _clips():
        w = cv2.VideoWriter(str(videos / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (160, 120))
        for f in clip.frames:
            w.write(f)
        w.release()
        s, e = clip.event or (-1, -1)
        lines.append(f"{name}.mp4  {'Fire' if clip.event else 'Normal'}  {s}  {e}  -1  -1")
    ann = tmp_path / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    ann.write_text("\n".join(lines) + "\n")
    res = evaluate_bundle(exported_tiny_bundle, tmp_path / "videos", fmt="ucf-crime", annotations=ann,
                          backend="ort-cpu", report=None)
    assert res.counts["videos"] == 2
    assert res.counts["frames"] == 96 + 80  # frame counts taken from the decoded videos
    assert 0.0 <= res.auc <= 1.0
    assert set(res.per_class) == {"fire"}


def test_shanghaitech_layout(tmp_path, exported_tiny_bundle):
    masks = tmp_path / "test_frame_mask"
    masks.mkdir()
    for name, clip in _clips():
        frames_dir = tmp_path / "frames" / name
        frames_dir.mkdir(parents=True)
        for i, f in enumerate(clip.frames):
            cv2.imwrite(str(frames_dir / f"{i:03d}.jpg"), f)
        np.save(masks / f"{name}.npy", (clip.labels > 0).astype(np.int64))
    res = evaluate_bundle(exported_tiny_bundle, tmp_path / "frames", fmt="shanghaitech", annotations=masks,
                          backend="ort-cpu", report=None)
    assert res.counts["videos"] == 2 and res.counts["frames"] == 176
    with pytest.raises(FileNotFoundError, match="'Missing01' of the annotations was not found"):
        find_video(tmp_path / "frames", "Missing01")
    with pytest.raises(ValueError, match="needs the annotations path"):
        evaluate_bundle(exported_tiny_bundle, tmp_path / "frames", fmt="shanghaitech", backend="ort-cpu",
                        report=None)
