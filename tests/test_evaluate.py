import dataclasses
import json
import math

import cv2
import numpy as np
import pytest

from stp_edge.datasets import (
    AnnotationError,
    VideoGroundTruth,
    read_box_csv,
    read_shanghaitech,
    read_temporal_annotation,
    read_ubnormal,
    read_ubnormal_tracks,
)
from stp_edge.eval import (
    VideoPrediction,
    evaluate_bundle,
    evaluate_videos,
    expand_snippets,
    frame_auc_ap,
    prediction_from_results,
    tiou,
)
from stp_edge.metrics import box_iou, rank_auc


# ---------------------------------------------------------------------------------------------- AUC / AP
def test_auc_ap_hand_computed():
    # positives {0.35, 0.8}, negatives {0.1, 0.4}: 3 of 4 pairs ordered -> AUC 0.75.
    # Ranked: 0.8 (+) P=1 at R=.5; 0.4 (-); 0.35 (+) P=2/3 at R=1 -> AP = .5*1 + .5*2/3.
    auc, ap = frame_auc_ap(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert auc == pytest.approx(0.75)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_rank_auc_agrees_with_sklearn_including_ties():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(200), 1)  # rounded: many ties between positives and negatives
    labels = (rng.random(200) < 0.3).astype(int)
    assert rank_auc(labels, scores) == pytest.approx(frame_auc_ap(scores, labels)[0], abs=1e-12)
    assert rank_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert np.isnan(rank_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_auc_undefined_with_one_class_and_rejects_nan():
    assert frame_auc_ap(np.array([0.2, 0.3]), np.array([0, 0])) == (None, None)
    with pytest.raises(ValueError, match="non-finite"):
        frame_auc_ap(np.array([0.2, np.nan]), np.array([0, 1]))


def _gt(name, label, ranges, n, boxes=None):
    return VideoGroundTruth(name, label, ranges, n, boxes or {})


def test_evaluate_pools_frames_and_splits_per_class():
    gts = [_gt("n.mp4", "normal", [], 4), _gt("a.mp4", "fire", [(2, 4)], 4), _gt("b.mp4", "falling", [(0, 2)], 4)]
    preds = {
        "n.mp4": VideoPrediction(np.array([0.1, 0.2, 0.3, 0.6])),
        "a.mp4": VideoPrediction(np.array([0.2, 0.1, 0.9, 0.8])),
        "b.mp4": VideoPrediction(np.array([0.5, 0.25, 0.1, 0.1])),
    }
    res = evaluate_videos(gts, preds)
    # fire vs normal: positives {.9,.8}, negatives {.1,.2,.3,.6,.2,.1} -> AUC 1, AP 1.
    assert res.per_class["fire"]["auc"] == pytest.approx(1.0)
    assert res.per_class["fire"]["ap"] == pytest.approx(1.0)
    # falling vs normal: positives {.5,.25}, negatives {.1,.2,.3,.6,.1,.1}:
    # .5 beats 5 of 6, .25 beats 4 of 6 -> AUC 9/12.
    assert res.per_class["falling"]["auc"] == pytest.approx(9 / 12)
    # Overall: positives {.9,.8,.5,.25}, negatives {.1,.2,.3,.6,.2,.1,.1,.1}.
    wins = sum((p > n) + 0.5 * (p == n) for p in (0.9, 0.8, 0.5, 0.25) for n in (.1, .2, .3, .6, .2, .1, .1, .1))
    assert res.auc == pytest.approx(wins / 32)
    assert res.counts == {"videos": 3, "normal_videos": 1, "anomalous_videos": 2, "frames": 12,
                          "anomalous_frames": 4, "box_frames": 0}
    assert res.tiou is None  # no ground-truth boxes
    d = json.loads(res.to_json())
    assert {"auc", "ap", "tiou", "per_class", "counts"} <= set(d)
    assert d["per_class"]["falling"]["videos"] == 2


def test_evaluate_rejects_length_mismatch_and_missing_video():
    gts = [_gt("a.mp4", "fire", [(1, 2)], 3)]
    with pytest.raises(ValueError, match=r"a\.mp4: prediction has 2 frames, ground truth 3"):
        evaluate_videos(gts, {"a.mp4": VideoPrediction(np.array([0.1, 0.2]))})
    with pytest.raises(ValueError, match="no prediction"):
        evaluate_videos(gts, {})


# ------------------------------------------------------------------------------------------------- TIoU
def test_box_iou_hand_cases():
    g = np.array([[0, 0, 10, 10]] * 4, float)
    p = np.array([[0, 0, 10, 5], [5, 0, 15, 10], [20, 20, 30, 30], [np.nan] * 4])
    assert np.allclose(box_iou(p, g), [0.5, 50 / 150, 0.0, 0.0])


def test_tiou_hand_case_with_threshold_gating():
    gt = np.array([[0, 0, 10, 10]] * 5 + [[np.nan] * 4] + [[np.nan] * 4], float)
    labels = np.array([1, 1, 1, 1, 1, 1, 0])  # frame 5 anomalous without a box: not counted; frame 6 normal
    pred = np.array([[0, 0, 10, 5], [5, 0, 15, 10], [0, 0, 10, 10], [np.nan] * 4, [0, 0, 10, 10],
                     [0, 0, 10, 10], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.6, 0.4, 0.9, 0.5, 0.9, 0.9])
    # Frame 2 is a perfect box but scored below 0.5 -> 0; frame 3 has no box -> 0; frame 4 scores exactly 0.5.
    val, n = tiou(scores, pred, gt, labels, threshold=0.5)
    assert n == 5
    assert val == pytest.approx((0.5 + 1 / 3 + 0 + 0 + 1) / 5)
    val_low, _ = tiou(scores, pred, gt, labels, threshold=0.3)
    assert val_low == pytest.approx((0.5 + 1 / 3 + 1 + 0 + 1) / 5)
    val_high, _ = tiou(scores, pred, gt, labels, threshold=0.95)
    assert val_high == 0.0


def test_evaluate_reports_tiou_from_ground_truth_boxes():
    gts = [_gt("n", "normal", [], 3), _gt("a", "fire", [(1, 3)], 3, {1: (0, 0, 10, 10), 2: (0, 0, 10, 10)})]
    boxes = np.array([[np.nan] * 4, [0, 0, 10, 5], [0, 0, 10, 10]])
    preds = {"n": VideoPrediction(np.array([0.1, 0.1, 0.2])), "a": VideoPrediction(np.array([0.1, 0.7, 0.3]),
                                                                                       boxes)}
    res = evaluate_videos(gts, preds, threshold=0.5)
    assert res.tiou == pytest.approx((0.5 + 0.0) / 2)  # frame 2's perfect box is gated out by its score
    assert res.counts["box_frames"] == 2


# -------------------------------------------------------------------------------------- snippet -> frames
def test_expand_snippets_default_and_tail():
    out = expand_snippets(np.array([0.1, 0.5, 0.9]), 40, snippet_len=16)
    assert np.allclose(out[:16], 0.1) and np.allclose(out[16:32], 0.5) and np.allclose(out[32:], 0.9)
    # A 50-frame video whose last partial snippet was dropped: frames 48.. take the last snippet's value.
    out = expand_snippets(np.array([0.1, 0.5, 0.9]), 50, snippet_len=16)
    assert np.allclose(out[48:], 0.9)


def test_expand_snippets_explicit_ranges_and_boxes():
    boxes = np.array([[0, 0, 4, 4], [10, 10, 20, 20]], float)
    out = expand_snippets(boxes, 10, ranges=[(0, 3), (6, 8)])
    assert out.shape == (10, 4)
    assert np.allclose(out[:3], boxes[0]) and np.allclose(out[6:8], boxes[1])
    assert np.allclose(out[3], boxes[0]) and np.allclose(out[5], boxes[1]) and np.allclose(out[9], boxes[1])
    # Ranges in any order: each snippet owns exactly its own frames.
    out = expand_snippets(np.array([0.7, 0.2]), 6, ranges=[(3, 6), (0, 3)])
    assert np.allclose(out, [0.2, 0.2, 0.2, 0.7, 0.7, 0.7])
    with pytest.raises(ValueError, match="2 snippet values but 1 ranges"):
        expand_snippets(boxes, 10, ranges=[(0, 3)])


def _result(k, start, end, score):
    from stp_edge.results import SnippetResult

    return SnippetResult(stream=0, snippet=k, frame_start=start, frame_end=end, score=score,
                         class_probs=np.array([1 - score, score]), class_id=int(score >= 0.5), class_name="x",
                         is_anomaly=score >= 0.5)


def test_frame_scores_fill_uncovered_frames_as_evaluation_does():
    """One rule for the runtime, the plots and the metrics: an uncovered frame takes its nearest covered frame."""
    from stp_edge.results import frame_scores

    results = [_result(0, 0, 4, 0.2), _result(1, 8, 12, 0.9)]  # frames 4..7 and 12..13 are not covered
    got = frame_scores(results, 14)
    assert got.tolist() == [0.2] * 6 + [0.9] * 8  # 4, 5 are nearer frame 3; 6, 7 nearer frame 8; the tail
    assert np.array_equal(got, prediction_from_results(results, 14).scores)
    assert frame_scores(results).tolist() == [0.2] * 6 + [0.9] * 6  # by default up to the last snippet's end
    provisional = [_result(0, 0, 4, 0.2), dataclasses.replace(_result(1, 4, 8, 0.3), final=False),
                   _result(1, 4, 8, 0.6)]
    assert frame_scores(provisional).tolist() == [0.2] * 4 + [0.6] * 4  # the final result follows, and wins
    assert frame_scores([]).shape == (0,)
    with pytest.raises(ValueError, match="no snippet covers any of the 5 frames"):
        frame_scores([], 5)


def test_snippet_to_frame_expansion_is_defined_once():
    import ast
    from pathlib import Path

    import stp_edge.eval
    import stp_edge.results
    import stp_edge.visualize

    assert stp_edge.visualize.frame_scores is stp_edge.results.frame_scores  # what plot_scores draws
    assert stp_edge.eval.expand_snippets is stp_edge.results.expand_snippets
    package = Path(stp_edge.results.__file__).parent
    defined = sorted(f"{p.relative_to(package)}:{node.name}" for p in sorted(package.rglob("*.py"))
                     for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                     if isinstance(node, ast.FunctionDef) and node.name in ("frame_scores", "expand_snippets"))
    assert defined == ["results.py:expand_snippets", "results.py:frame_scores"]


# ---------------------------------------------------------------------------------------------- readers
UCF = """Arrest001_x264.mp4  Arrest  1185  1485  -1  -1
RoadAccidents002_x264.mp4  RoadAccidents  30  95  130  200
Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1
"""


def test_ucf_crime_annotation(tmp_path):
    p = tmp_path / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    p.write_text(UCF)
    gts = read_temporal_annotation(p, class_names=("normal", "arrest", "road accident"))
    assert [g.label for g in gts] == ["arrest", "road accident", "normal"]
    assert gts[0].ranges == [(1185, 1485)] and gts[0].num_frames is None
    assert gts[1].ranges == [(30, 95), (130, 200)]
    lab = gts[1].frame_labels(250)
    assert lab.sum() == 65 + 70 and lab[30] == 1 and lab[29] == 0 and lab[95] == 0 and lab[199] == 1
    assert not gts[2].anomalous


@pytest.mark.parametrize(("line", "match"), [
    ("Arrest001_x264.mp4  Arrest  1185  1485  -1", r":2: expected 'name class s1 e1 s2 e2'.*got 5 fields"),
    ("Arrest001_x264.mp4  Arrest  11a5  1485  -1  -1", r":2: frame numbers must be integers"),
    ("Arrest001_x264.mp4  Arrest  1485  1185  -1  -1", r":2: range 1 is \(1485, 1185\); expected"),
    ("Normal_1.mp4  Normal  5  9  -1  -1", r":2: class 'Normal' is normal but has anomalous ranges"),
])
def test_ucf_crime_malformed_lines_name_file_and_line(tmp_path, line, match):
    p = tmp_path / "ann.txt"
    p.write_text("Fine_x264.mp4  Abuse  1  5  -1  -1\n" + line + "\n")
    with pytest.raises(AnnotationError, match=match) as info:
        read_temporal_annotation(p)
    assert str(p) in str(info.value)


def test_shanghaitech_masks(tmp_path):
    d = tmp_path / "test_frame_mask"
    d.mkdir()
    np.save(d / "01_0014.npy", np.array([0, 0, 1, 1, 1, 0, 1, 0]))
    np.save(d / "01_0015.npy", np.zeros(5, np.int64))
    gts = read_shanghaitech(d)
    assert [g.name for g in gts] == ["01_0014", "01_0015"]
    assert gts[0].ranges == [(2, 5), (6, 7)] and gts[0].num_frames == 8 and gts[0].label == "anomaly"
    assert gts[1].label == "normal" and gts[1].num_frames == 5
    np.save(d / "01_0016.npy", np.array([0, 2, 1]))
    with pytest.raises(AnnotationError, match=r"01_0016\.npy: expected a 1-D array of 0/1"):
        read_shanghaitech(d)


def test_ubnormal_tracks_and_layout(tmp_path):
    scene = tmp_path / "Scene3"
    ann = scene / "abnormal_scene_3_scenario_1_annotations"
    ann.mkdir(parents=True)
    (ann / "abnormal_scene_3_scenario_1_tracks.txt").write_text("1,4,8\n2,6,11\n")
    assert read_ubnormal_tracks(ann / "abnormal_scene_3_scenario_1_tracks.txt") == [(1, 4, 9), (2, 6, 12)]
    rng = np.random.default_rng(0)
    for name in ("abnormal_scene_3_scenario_1", "normal_scene_3_scenario_2"):
        w = cv2.VideoWriter(str(scene / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 48))
        for _ in range(20):
            w.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        w.release()
    gts = {g.name: g for g in read_ubnormal(tmp_path)}
    ab, no = gts["abnormal_scene_3_scenario_1"], gts["normal_scene_3_scenario_2"]
    assert ab.num_frames == 20 and ab.ranges == [(4, 12)]  # union of inclusive [4,8] and [6,11]
    assert no.num_frames == 20 and no.ranges == [] and no.label == "normal"
    with pytest.raises(AnnotationError, match="not found"):
        read_ubnormal(tmp_path, ["abnormal_scene_9_scenario_9"])


def test_ubnormal_malformed_track_line(tmp_path):
    p = tmp_path / "v_tracks.txt"
    p.write_text("1,4,8\n2,6\n")
    with pytest.raises(AnnotationError, match=r"v_tracks\.txt:2: expected 'track_id,start_frame,end_frame'"):
        read_ubnormal_tracks(p)
    p.write_text("1,9,8\n")
    with pytest.raises(AnnotationError, match=r":1: frames \(9, 8\)"):
        read_ubnormal_tracks(p)


def test_box_csv(tmp_path):
    p = tmp_path / "boxes.csv"
    p.write_text("video,frame,x1,y1,x2,y2,class\nv.mp4,3,1.5,2,10,12.5,fire\nv.mp4,4,1,2,9,12,fire\n")
    assert read_box_csv(p) == {"v.mp4": {3: (1.5, 2.0, 10.0, 12.5), 4: (1.0, 2.0, 9.0, 12.0)}}
    p.write_text("video,frame,x1,y1,x2,y2,class\nv.mp4,3,10,2,1,12.5,fire\n")
    with pytest.raises(AnnotationError, match=r"boxes\.csv:2: box .* x2 <= x1"):
        read_box_csv(p)
    p.write_text("name,frame,x1,y1,x2,y2\n")
    with pytest.raises(AnnotationError, match=r"boxes\.csv:1: expected header"):
        read_box_csv(p)


def test_result_json_is_strict_json():
    gts = [_gt("n", "normal", [], 2)]
    res = evaluate_videos(gts, {"n": VideoPrediction(np.array([0.1, 0.2]))})
    d = json.loads(res.to_json())
    assert d["auc"] is None and d["ap"] is None and d["tiou"] is None  # undefined, not NaN
    assert not any(isinstance(v, float) and math.isnan(v) for v in d.values())


# ------------------------------------------------------------------------------------- running a bundle
def test_prediction_from_results_takes_top_box_per_snippet():
    from types import SimpleNamespace as NS

    box = lambda x1, s: NS(x1=x1, y1=0, x2=x1 + 10, y2=10, score=s)  # noqa: E731
    results = [NS(frame_start=0, frame_end=4, score=0.2, boxes=[]),
               NS(frame_start=4, frame_end=8, score=0.9, boxes=[box(5, 0.3), box(50, 0.8)])]
    pred = prediction_from_results(results, 10)
    assert np.allclose(pred.scores, [0.2] * 4 + [0.9] * 6)  # frames 8, 9 (no snippet) take the last value
    assert np.isnan(pred.boxes[:4]).all()
    assert np.allclose(pred.boxes[4:], [50, 0, 60, 10])


def test_evaluate_bundle_on_a_tiny_synthetic_split(handmade_bundle, tmp_path):
    from stp_edge.synthetic import write_benchmark

    data = tmp_path / "data"
    write_benchmark(data, split="test", num_videos=2, seed=3, width=96, height=72, num_frames=24,
                    anomaly_ratio=0.5, classes=("fire",))
    lines = []
    res = evaluate_bundle(handmade_bundle, data, backend="ort-cpu", out_dir=tmp_path / "out",
                          report=lines.append)
    assert len(lines) == 2
    assert res.counts["videos"] == 2 and res.counts["frames"] == 48
    assert res.counts["anomalous_frames"] > 0 and res.counts["box_frames"] == res.counts["anomalous_frames"]
    assert 0.0 <= res.auc <= 1.0 and set(res.per_class) == {"fire"}
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["counts"] == res.counts
    assert len(list((tmp_path / "out").glob("*_timeline.png"))) == 2
