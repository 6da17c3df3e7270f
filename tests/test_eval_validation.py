"""Ground truth checked against the videos it describes (issue 14, item 8), and malformed annotation files.

A video whose ground truth does not fit it (mask longer or shorter than the video, a range past its end, frames
lost mid-decode) never counts silently: `evaluate_bundle` refuses it with a message naming the video, its file
and expected vs got, or, with `on_mismatch="skip"`, leaves it out of the metrics and lists it in `excluded`.
Clips are generated here (textured moving frames, never constant).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import moving_frames

from stp_edge.cli import main as cli_main
from stp_edge.datasets import (
    AnnotationError,
    GroundTruthMismatch,
    VideoGroundTruth,
    check_ground_truth,
    read_box_csv,
    read_shanghaitech,
    read_synthetic,
    read_temporal_annotation,
    read_ubnormal,
    read_ubnormal_tracks,
)
from stp_edge.eval import VideoPrediction, evaluate_bundle, evaluate_videos


def _frame_dir(root: Path, name: str, n: int, seed: int) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for i, f in enumerate(moving_frames(n, seed=seed)):
        cv2.imwrite(str(d / f"{i:03d}.png"), f)
    return d


def _video(path: Path, n: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for f in moving_frames(n, seed=seed):
        w.write(f)
    w.release()
    return path


def _mask(n: int, start: int, end: int) -> np.ndarray:
    m = np.zeros(n, np.int64)
    m[start:end] = 1
    return m


@pytest.fixture
def shanghaitech(tmp_path):
    """Three 24-frame frame folders; masks: one that fits, one 30 long, one 20 long."""
    frames, masks = tmp_path / "frames", tmp_path / "test_frame_mask"
    masks.mkdir()
    for k, (name, mask) in enumerate([("01_0001", _mask(24, 8, 16)), ("01_0002", _mask(30, 4, 12)),
                                      ("01_0003", _mask(20, 0, 0))]):
        _frame_dir(frames, name, 24, seed=k)
        np.save(masks / f"{name}.npy", mask)
    return frames, masks


# ------------------------------------------------------------------------------ mismatch: refuse or report
def test_mask_longer_than_video_is_refused_naming_video_and_counts(shanghaitech, exported_tiny_bundle):
    frames, masks = shanghaitech
    with pytest.raises(GroundTruthMismatch) as err:
        evaluate_bundle(exported_tiny_bundle, frames, fmt="shanghaitech", annotations=masks, backend="ort-cpu",
                        report=None)
    msg = str(err.value)
    assert "01_0002" in msg and str(frames / "01_0002") in msg
    assert "ground truth has 30 frames" in msg and "video has 24" in msg
    assert "\n" not in msg


def test_mask_shorter_than_video_is_refused(tmp_path, exported_tiny_bundle):
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    masks.mkdir()
    _frame_dir(frames, "02_0001", 24, seed=5)
    np.save(masks / "02_0001.npy", _mask(20, 2, 9))
    with pytest.raises(GroundTruthMismatch, match=r"02_0001.*ground truth has 20 frames.*video has 24"):
        evaluate_bundle(exported_tiny_bundle, frames, fmt="shanghaitech", annotations=masks, backend="ort-cpu",
                        report=None)


def test_skip_leaves_mismatched_videos_out_and_lists_them(shanghaitech, exported_tiny_bundle, tmp_path):
    frames, masks = shanghaitech
    lines: list[str] = []
    res = evaluate_bundle(exported_tiny_bundle, frames, fmt="shanghaitech", annotations=masks, backend="ort-cpu",
                          report=lines.append, on_mismatch="skip")
    assert set(res.excluded) == {"01_0002", "01_0003"}
    assert "ground truth has 30 frames" in res.excluded["01_0002"]
    assert "ground truth has 20 frames" in res.excluded["01_0003"]
    assert res.counts["videos"] == 1 and res.counts["frames"] == 24 and res.counts["anomalous_frames"] == 8
    assert sum("SKIPPED" in line for line in lines) == 2
    assert res.to_dict()["excluded"] == res.excluded
    # The metrics are those of the good video alone, evaluated on its own.
    alone_masks = tmp_path / "alone"
    alone_masks.mkdir()
    np.save(alone_masks / "01_0001.npy", np.load(masks / "01_0001.npy"))
    alone = evaluate_bundle(exported_tiny_bundle, frames, fmt="shanghaitech", annotations=alone_masks,
                            backend="ort-cpu", report=None)
    assert (res.auc, res.ap, res.counts) == (alone.auc, alone.ap, alone.counts)
    assert alone.excluded == {}


def test_skip_with_nothing_left_is_an_error(tmp_path, exported_tiny_bundle):
    frames, masks = tmp_path / "frames", tmp_path / "masks"
    masks.mkdir()
    _frame_dir(frames, "03_0001", 16, seed=2)
    np.save(masks / "03_0001.npy", _mask(18, 2, 9))
    with pytest.raises(GroundTruthMismatch, match=r"no video of 1 matches its ground truth"):
        evaluate_bundle(exported_tiny_bundle, frames, fmt="shanghaitech", annotations=masks, backend="ort-cpu",
                        report=None, on_mismatch="skip")


def test_ucf_crime_range_past_the_end_is_refused(tmp_path, exported_tiny_bundle):
    videos = tmp_path / "videos"
    _video(videos / "Fire001_x264.mp4", 40, seed=1)
    _video(videos / "Normal_Videos_001_x264.mp4", 32, seed=2)
    ann = tmp_path / "ann.txt"
    ann.write_text("Fire001_x264.mp4 Fire 10 60 -1 -1\nNormal_Videos_001_x264.mp4 Normal -1 -1 -1 -1\n")
    with pytest.raises(GroundTruthMismatch) as err:
        evaluate_bundle(exported_tiny_bundle, videos, fmt="ucf-crime", annotations=ann, backend="ort-cpu", report=None)
    msg = str(err.value)
    assert "Fire001_x264.mp4" in msg and str(videos / "Fire001_x264.mp4") in msg
    assert "range [10, 60) ends past the video" in msg and "expected end <= 40, got 60" in msg


def test_ucf_crime_range_inside_the_video_is_accepted(tmp_path, exported_tiny_bundle):
    videos = tmp_path / "videos"
    _video(videos / "Fire001_x264.mp4", 40, seed=1)
    _video(videos / "Normal_Videos_001_x264.mp4", 32, seed=2)
    ann = tmp_path / "ann.txt"
    ann.write_text("Fire001_x264.mp4 Fire 10 40 -1 -1\nNormal_Videos_001_x264.mp4 Normal -1 -1 -1 -1\n")
    res = evaluate_bundle(exported_tiny_bundle, videos, fmt="ucf-crime", annotations=ann, backend="ort-cpu",
                          report=None)
    assert res.counts["frames"] == 72 and res.counts["anomalous_frames"] == 30 and res.excluded == {}


def test_cli_eval_mismatch_is_one_line_exit_2(shanghaitech, exported_tiny_bundle, capsys):
    frames, masks = shanghaitech
    code = cli_main(["eval", str(exported_tiny_bundle), "--data", str(frames), "--format", "shanghaitech",
                     "--annotations", str(masks), "--backend", "ort-cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "01_0002" in err and "ground truth has 30 frames" in err and "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if ": warning: " not in line]) == 1  # warnings apart


# ---------------------------------------------------------------------------------- check_ground_truth
def test_check_ground_truth_names_every_problem():
    g = VideoGroundTruth("v.mp4", "fire", [(5, 12), (30, 44)], 50)
    assert check_ground_truth(VideoGroundTruth("v.mp4", "fire", [(5, 12)], 50), 50) == []
    problems = check_ground_truth(g, 40, dropped=3, expected=48)
    text = "; ".join(problems)
    assert "ground truth has 50 frames, the video has 40" in text
    assert "range [30, 44) ends past the video: expected end <= 40, got 44" in text
    assert "3 frame(s) failed to decode" in text
    assert "the container promises 48 frames, 43 were read" in text
    starts_after = check_ground_truth(VideoGroundTruth("v", "fire", [(45, 50)]), 40)
    assert starts_after == ["range [45, 50) ends past the video: expected end <= 40, got 50"]
    assert check_ground_truth(VideoGroundTruth("v", "normal", []), 0) == [
        "the video has no decodable frame: expected at least 1, got 0"]


def test_evaluate_videos_refuses_ranges_past_the_prediction():
    gts = [VideoGroundTruth("n", "normal", [], None), VideoGroundTruth("a", "fire", [(2, 9)], None)]
    preds = {"n": VideoPrediction(np.array([0.1, 0.2, 0.3])), "a": VideoPrediction(np.linspace(0, 1, 6))}
    with pytest.raises(GroundTruthMismatch, match=r"a: range \[2, 9\) ends past the video: expected end <= 6"):
        evaluate_videos(gts, preds)


def test_ubnormal_track_past_the_end_is_kept_for_the_check(tmp_path):
    scene = tmp_path / "Scene1"
    ann = scene / "abnormal_scene_1_scenario_1_annotations"
    ann.mkdir(parents=True)
    (ann / "abnormal_scene_1_scenario_1_tracks.txt").write_text("1,4,8\n2,15,29\n")
    _video(scene / "abnormal_scene_1_scenario_1.mp4", 20, seed=4)
    (g,) = read_ubnormal(tmp_path)
    assert g.num_frames == 20 and g.ranges == [(4, 9), (15, 30)]  # not clipped to the video
    assert check_ground_truth(g, 20) == ["range [15, 30) ends past the video: expected end <= 20, got 30"]


# ------------------------------------------------------------------------------ malformed annotation files
def test_empty_mask_is_refused_naming_the_file(tmp_path):
    np.save(tmp_path / "01_0001.npy", np.zeros(0, np.int64))
    with pytest.raises(AnnotationError, match=r"01_0001\.npy: the mask is empty \(0 frames\)"):
        read_shanghaitech(tmp_path)


@pytest.mark.parametrize(("content", "match"), [
    (b"0 1 1 0\n", r"bad\.npy: not a NumPy \.npy array"),
    (None, r"bad\.npy: not a NumPy \.npy array"),  # a real .npy cut in half
])
def test_unreadable_mask_file_names_the_file(tmp_path, content, match):
    p = tmp_path / "bad.npy"
    if content is None:
        np.save(p, _mask(64, 3, 9))
        content = p.read_bytes()[:90]
    p.write_bytes(content)
    with pytest.raises(AnnotationError, match=match):
        read_shanghaitech(tmp_path)


def test_mask_bad_value_names_the_frame(tmp_path):
    np.save(tmp_path / "v.npy", np.array([0, 1, 1, 2, 0]))
    with pytest.raises(AnnotationError, match=r"v\.npy: expected a 1-D array of 0/1 per frame, but frame 3 is 2"):
        read_shanghaitech(tmp_path)


def test_temporal_annotation_not_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "ann.txt"
    p.write_bytes(b"Fire001.mp4 Fire 1 5 -1 -1\nAbuse\xff01.mp4 Abuse 1 5 -1 -1\n")
    with pytest.raises(AnnotationError, match=r"ann\.txt:2: not UTF-8 text"):
        read_temporal_annotation(p)


def test_temporal_annotation_missing_file_is_an_annotation_error(tmp_path):
    with pytest.raises(AnnotationError, match=r"nope\.txt: cannot read the annotation file"):
        read_temporal_annotation(tmp_path / "nope.txt")


def test_anomalous_class_without_a_range_is_refused(tmp_path):
    p = tmp_path / "ann.txt"
    p.write_text("Fire001.mp4 Fire -1 -1 -1 -1\n")
    with pytest.raises(AnnotationError, match=r"ann\.txt:1: class 'Fire' is anomalous but has no range"):
        read_temporal_annotation(p)


@pytest.mark.parametrize(("row", "match"), [
    ("1,4,inf", r":2: fields must be integer frame numbers, got \['1', '4', 'inf'\]"),
    ("1,4.5,8", r":2: fields must be integer frame numbers, got \['1', '4.5', '8'\]"),
    ("1,nan,8", r":2: fields must be integer frame numbers"),
])
def test_ubnormal_track_non_integer_frames_name_the_line(tmp_path, row, match):
    p = tmp_path / "v_tracks.txt"
    p.write_text("1,2,3\n" + row + "\n")
    with pytest.raises(AnnotationError, match=match):
        read_ubnormal_tracks(p)


def test_ubnormal_integral_floats_are_frames(tmp_path):
    p = tmp_path / "v_tracks.txt"
    p.write_text("1.0,4.0,8.0\n")
    assert read_ubnormal_tracks(p) == [(1, 4, 9)]


def test_box_csv_non_finite_or_negative_frame_names_the_line(tmp_path):
    p = tmp_path / "boxes.csv"
    p.write_text("video,frame,x1,y1,x2,y2\nv.mp4,3,0,0,inf,9\n")
    with pytest.raises(AnnotationError, match=r"boxes\.csv:2: box .* is not finite"):
        read_box_csv(p)
    p.write_text("video,frame,x1,y1,x2,y2\nv.mp4,-1,0,0,5,9\n")
    with pytest.raises(AnnotationError, match=r"boxes\.csv:2: frame -1 is negative"):
        read_box_csv(p)


def test_synthetic_manifest_missing_keys_is_an_annotation_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"videos": [{"name": "a.mp4"}], "class_names": ["normal"]}')
    with pytest.raises(AnnotationError, match=r"manifest\.json: .*num_frames"):
        read_synthetic(tmp_path)
