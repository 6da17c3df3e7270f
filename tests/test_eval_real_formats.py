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


# --- UCF-Crime boxes in Liu & Ma's published format (github.com/xuzero/UCFCrime_BoundingBox_Annotation) ----------

def liu_ma_pickle(boxes: dict) -> bytes:
    """{video: [(image_path, x1, y1, x2, y2), ...]} as Liu & Ma's Test_annotation.pkl is written: a Python 2
    protocol-0 pickle (str keys and paths as S'...', ints as I..., memo puts in order). Written out the published
    file, this function reproduces it byte for byte."""
    memo = iter(range(1 << 30))
    out = [f"(dp{next(memo)}\n"]
    for video, entries in boxes.items():
        out.append(f"S'{video}'\np{next(memo)}\n(lp{next(memo)}\n")
        for path, *xyxy in entries:
            out.append(f"(lp{next(memo)}\nS'{path}'\np{next(memo)}\na")
            out.extend(f"I{v}\na" for v in xyxy)
            out.append("a")
        out.append("s")
    return ("".join(out) + ".").encode("latin1")


def _image(video: str, frame: int) -> str:
    """The image path Liu & Ma's file names for 0-based `frame` (images are numbered from 1)."""
    return f"/home3/lk/surveillance_images/Anomaly_Test/Fire/{video}/image_{frame + 1:04d}.jpg"


def test_liu_ma_reader_reads_frames_and_pixels(tmp_path):
    from stp_edge.datasets import read_boxes, read_liu_ma_boxes

    f = tmp_path / "Test_annotation.pkl"
    f.write_bytes(liu_ma_pickle({"Arrest024_x264": [(_image("Arrest024_x264", 1067), 77, 92, 320, 165),
                                                     (_image("Arrest024_x264", 1083), 78, 99, 320, 158)],
                                 "Fire001_x264": [(_image("Fire001_x264", 15), 1, 6, 262, 216)]}))
    boxes = read_liu_ma_boxes(f)
    assert boxes == {"Arrest024_x264": {1067: (77, 92, 320, 165), 1083: (78, 99, 320, 158)},
                     "Fire001_x264": {15: (1, 6, 262, 216)}}
    assert read_boxes(f) == boxes  # chosen by the .pkl suffix


@pytest.mark.parametrize(("entry", "match"), [
    ((_image("V_x264", 5), 10, 20, 10, 40), r"video 'V_x264' entry 1 \(image_0006.jpg\): field x2/y2: .* x2 <= x1"),
    ((_image("V_x264", 5), 10, -1, 30, 40), r"video 'V_x264' entry 1 \(image_0006.jpg\): field y1: .* got -1"),
    (("/x/V_x264/frame6.jpg", 10, 20, 30, 40), r"video 'V_x264' entry 1: field image: .*image_NNNN.jpg"),
    ((_image("V_x264", 5), 10, 20, 30), r"video 'V_x264' entry 1: expected 5 fields"),
    ((_image("V_x264", 0), 10, 20, 30, 40), r"video .V_x264. entry 1 \(image_0001.jpg\): frame 0 is annotated twice"),
])
def test_liu_ma_reader_names_file_video_entry_and_field(tmp_path, entry, match):
    from stp_edge.datasets import AnnotationError, read_liu_ma_boxes

    f = tmp_path / "Test_annotation.pkl"
    f.write_bytes(liu_ma_pickle({"V_x264": [(_image("V_x264", 0), 1, 2, 3, 4), entry]}))
    with pytest.raises(AnnotationError, match=rf"^{f}: {match}"):
        read_liu_ma_boxes(f)


def test_liu_ma_reader_runs_no_code_and_refuses_other_files(tmp_path):
    import os
    import pickle

    from stp_edge.datasets import AnnotationError, read_liu_ma_boxes

    class Exploit:
        def __reduce__(self):
            return (os.remove, (str(tmp_path / "victim"),))

    (tmp_path / "victim").write_text("still here")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"V_x264": [Exploit()]}, protocol=0))
    with pytest.raises(AnnotationError, match=r"not a Liu & Ma box annotation pickle .*refers to .*remove"):
        read_liu_ma_boxes(evil)
    assert (tmp_path / "victim").read_text() == "still here"
    text = tmp_path / "boxes.pkl"
    text.write_text("Fire001_x264 16 1 2 3 4\n")
    with pytest.raises(AnnotationError, match=r"boxes.pkl: not a Liu & Ma box annotation pickle"):
        read_liu_ma_boxes(text)


def test_tiou_from_liu_ma_boxes_has_the_known_value(tmp_path):
    from stp_edge.datasets import VideoGroundTruth, attach_boxes, read_liu_ma_boxes
    from stp_edge.eval import VideoPrediction, evaluate_videos

    f = tmp_path / "Test_annotation.pkl"
    f.write_bytes(liu_ma_pickle({"Fire001_x264": [(_image("Fire001_x264", 10), 0, 0, 100, 100),
                                                  (_image("Fire001_x264", 20), 0, 0, 100, 100),
                                                  (_image("Fire001_x264", 40), 0, 0, 100, 100)]}))
    gts = [VideoGroundTruth("Fire001_x264.mp4", "fire", [(8, 32)]), VideoGroundTruth("Normal_Videos_002_x264.mp4",
                                                                                      "normal")]
    assert attach_boxes(gts, read_liu_ma_boxes(f), f) == []
    scores = np.full(48, 0.1)
    scores[8:32] = 0.9
    pred = np.full((48, 4), np.nan)
    pred[10] = (0, 0, 100, 100)  # IoU 1
    pred[20] = (0, 0, 100, 50)   # IoU 0.5
    # frame 40 has a box but lies outside the anomalous range: TIoU does not count it
    res = evaluate_videos(gts, {"Fire001_x264.mp4": VideoPrediction(scores, pred),
                                "Normal_Videos_002_x264.mp4": VideoPrediction(np.full(32, 0.1))})
    assert res.counts["box_frames"] == 2 and res.tiou == pytest.approx(0.75)


def _ucf_crime_with_boxes(tmp_path):
    """UCF-Crime layout at UCF-Crime's 320x240: videos, the temporal annotation, and Liu & Ma boxes every 16 frames."""
    videos = tmp_path / "videos" / "Fire"
    videos.mkdir(parents=True)
    lines, boxes = [], {}
    for name, clip in [("Fire001_x264", generate_clip(31, num_frames=96, anomaly="fire")),
                       ("Normal_Videos_002_x264", generate_clip(32, num_frames=80))]:
        w = cv2.VideoWriter(str(videos / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 240))
        for f in clip.frames:
            w.write(f)
        w.release()
        s, e = clip.event or (-1, -1)
        lines.append(f"{name}.mp4  {'Fire' if clip.event else 'Normal'}  {s}  {e}  -1  -1")
        if clip.event:
            frames = [f for f in range(s, e, 16) if np.isfinite(clip.boxes[f]).all()]
            boxes[name] = [(_image(name, f), *(round(v) for v in clip.boxes[f])) for f in frames]
    ann = tmp_path / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    ann.write_text("\n".join(lines) + "\n")
    pkl = tmp_path / "Test_annotation.pkl"
    pkl.write_bytes(liu_ma_pickle(boxes))
    return tmp_path / "videos", ann, pkl, len(boxes["Fire001_x264"])


def test_eval_ucf_crime_with_liu_ma_boxes_reports_tiou(tmp_path, exported_tiny_bundle, capsys):
    import json

    from stp_edge.cli import main

    videos, ann, pkl, n_boxes = _ucf_crime_with_boxes(tmp_path)
    assert n_boxes >= 2
    assert main(["eval", str(exported_tiny_bundle), "--data", str(videos), "--format", "ucf-crime",
                 "--annotations", str(ann), "--boxes", str(pkl), "--backend", "ort-cpu"]) == 0
    out = capsys.readouterr().out
    assert f"boxes: {n_boxes} frames of 1 videos from {pkl}; 0 outside the anomalous ranges" in out
    res = json.loads(out[out.index("{"):])
    assert res["counts"]["box_frames"] == n_boxes and res["counts"]["frames"] == 96 + 80
    assert res["tiou"] is not None and 0.0 <= res["tiou"] <= 1.0
    assert res["per_class"]["fire"]["box_frames"] == n_boxes and res["auc"] is not None


def test_eval_checks_boxes_against_each_video(tmp_path, exported_tiny_bundle):
    from stp_edge.datasets import GroundTruthMismatch

    videos, ann, _, _ = _ucf_crime_with_boxes(tmp_path)
    csv = tmp_path / "boxes.csv"  # drawn on a 640x480 copy of the video: past the 320x240 frame
    csv.write_text("video,frame,x1,y1,x2,y2\nFire001_x264,40,300,200,600,460\n")
    with pytest.raises(GroundTruthMismatch, match=r"Fire001_x264.mp4 .*1 ground-truth box\(es\) reach past the "
                       r"320x240 frame \(first at frame 40"):
        evaluate_bundle(exported_tiny_bundle, videos, fmt="ucf-crime", annotations=ann, boxes=csv,
                        backend="ort-cpu", report=None)
    csv.write_text("video,frame,x1,y1,x2,y2\nFire001_x264,500,10,10,60,60\n")  # the video has 96 frames
    with pytest.raises(GroundTruthMismatch, match=r"box\(es\) outside the video \(first at frame 500\)"):
        evaluate_bundle(exported_tiny_bundle, videos, fmt="ucf-crime", annotations=ann, boxes=csv,
                        backend="ort-cpu", report=None)


def test_box_file_misuse_is_named_before_the_model_loads(tmp_path):
    from stp_edge.datasets import AnnotationError
    from stp_edge.errors import UsageError

    ann = tmp_path / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    ann.write_text("Fire001_x264.mp4  Fire  10  40  -1  -1\n")
    pkl = tmp_path / "Test_annotation.pkl"
    pkl.write_bytes(liu_ma_pickle({"Fire001_x264": [(_image("Fire001_x264", 16), 1, 2, 30, 40)]}))
    missing = tmp_path / "no.stp"  # never opened: each of these fails first
    with pytest.raises(UsageError, match="goes with --format ucf-crime, got format 'shanghaitech'"):
        evaluate_bundle(missing, tmp_path, fmt="shanghaitech", annotations=tmp_path, boxes=pkl, report=None)
    with pytest.raises(UsageError, match=r"unknown box file type '.txt'"):
        evaluate_bundle(missing, tmp_path, fmt="ucf-crime", annotations=ann, boxes=ann, report=None)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(liu_ma_pickle({"Fire001_x264": [(_image("Fire001_x264", 16), 1, 2, 0, 40)]}))
    with pytest.raises(AnnotationError, match=r"bad.pkl: video 'Fire001_x264' entry 0 \(image_0017.jpg\): field"):
        evaluate_bundle(missing, tmp_path, fmt="ucf-crime", annotations=ann, boxes=bad, report=None)
