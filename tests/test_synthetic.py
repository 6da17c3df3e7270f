import json

import cv2
import numpy as np
import pytest
from research_scripts import research_script

from stp_edge.datasets import read_synthetic
from stp_edge.synthetic import (
    ANOMALY_CLASSES,
    CLASS_NAMES,
    benchmark_plans,
    generate_clip,
    make_layout,
    plan_clip,
    write_benchmark,
)

W, H, F = 192, 144, 64


def test_class_names_are_the_contract():
    from stp_edge.config import DEMO_CLASSES, STPromptConfig

    assert CLASS_NAMES == ("normal", "fighting", "falling", "running", "abandoned object", "fire")
    assert CLASS_NAMES is DEMO_CLASSES and STPromptConfig.named("tiny").class_names is DEMO_CLASSES


def test_the_demo_class_names_are_listed_once():
    """`stp_edge.config.DEMO_CLASSES` is the one list; a second literal copy creeping back fails here."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    files = [p for d in ("stp_edge", "export", "scripts", "benchmarks") for p in sorted((repo / d).rglob("*.py"))]
    offenders = []
    for p in files:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant)} & set(ANOMALY_CLASSES)
                if len(names) >= 2:
                    offenders.append(f"{p.relative_to(repo)}:{node.lineno}")
    assert len(files) > 50 and offenders == ["stp_edge/config.py:" + str(_line_of_demo_classes(repo))]


def _line_of_demo_classes(repo):
    lines = (repo / "stp_edge" / "config.py").read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith("DEMO_CLASSES = "))


def test_same_seed_same_clip_other_seed_other_clip():
    a = generate_clip(11, width=W, height=H, num_frames=32, anomaly="fire")
    b = generate_clip(11, width=W, height=H, num_frames=32, anomaly="fire")
    c = generate_clip(12, width=W, height=H, num_frames=32, anomaly="fire")
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.boxes, b.boxes, equal_nan=True)
    assert np.abs(a.frames.astype(int) - c.frames.astype(int)).mean() > 5
    assert a.frames.std() > 20  # a textured scene, not a flat image


@pytest.mark.parametrize("name", ANOMALY_CLASSES)
def test_normal_twin_keeps_the_people_but_not_the_event(name):
    seed = 40 + CLASS_NAMES.index(name)
    clip = plan_clip(seed, width=W, height=H, num_frames=F, anomaly=name)
    twin = plan_clip(seed, width=W, height=H, num_frames=F, twin_of=name)
    assert twin.class_name == "normal" and twin.event is None and not twin.labels.any()
    assert np.isnan(twin.boxes).all()
    assert twin.metadata()["num_agents"] == clip.metadata()["num_agents"]  # the event's people are there
    s, e = clip.event
    before = [max(0, s - 5), s - 1]
    for f in before:  # identical up to the event
        assert np.array_equal(clip.render(f), twin.render(f)), f"{name}: frame {f} differs before the event"
    mid = (s + e) // 2
    x1, y1, x2, y2 = np.round(clip.boxes[mid]).astype(int)
    diff = np.abs(clip.render(mid).astype(int) - twin.render(mid).astype(int)).mean(-1)
    assert diff[y1:y2, x1:x2].mean() > 10, f"{name}: the twin shows the event too"
    assert twin.render(mid).std() > 20


def test_twin_of_needs_a_normal_clip_and_an_anomaly_class():
    with pytest.raises(ValueError, match="twin_of"):
        plan_clip(1, anomaly="fire", twin_of="fire")
    with pytest.raises(ValueError, match="twin_of"):
        plan_clip(1, twin_of="juggling")


def test_normal_clip_has_no_event():
    clip = generate_clip(3, width=W, height=H, num_frames=F)
    assert clip.class_name == "normal" and clip.event is None and clip.video_label == 0
    assert not clip.labels.any()
    assert np.isnan(clip.boxes).all()
    assert clip.frames.shape == (F, H, W, 3) and clip.frames.dtype == np.uint8


@pytest.mark.parametrize("name", ANOMALY_CLASSES)
def test_each_class_produces_a_local_visible_event(name):
    seed = 20 + CLASS_NAMES.index(name)
    clip = generate_clip(seed, width=W, height=H, num_frames=F, anomaly=name)
    twin = generate_clip(seed, width=W, height=H, num_frames=F)  # same scene, agents and noise; no event
    cls = CLASS_NAMES.index(name)
    s, e = clip.event
    assert 0 < s < e <= F and e - s < F
    if name in ("falling", "abandoned object"):
        assert e == F  # the person stays down / the object stays
    expected = np.zeros(F, int)
    expected[s:e] = cls
    assert np.array_equal(clip.labels, expected)
    inside = np.isfinite(clip.boxes[:, 0])
    assert np.array_equal(inside, clip.labels > 0)
    b = clip.boxes[inside]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # The box is where the picture differs from the event-free twin, and it is not tiny.
    ratios, in_diffs = [], []
    for f in range(s, e):
        x1, y1, x2, y2 = np.round(clip.boxes[f]).astype(int)
        diff = np.abs(clip.frames[f].astype(np.int16) - twin.frames[f].astype(np.int16)).mean(-1)
        mask = np.zeros((H, W), bool)
        mask[y1:y2, x1:x2] = True
        in_diffs.append(diff[mask].mean())
        ratios.append(diff[mask].mean() / (diff[~mask].mean() + 1.0))
    assert np.median(in_diffs) > 12, f"{name}: box region barely changes ({np.median(in_diffs):.1f})"
    assert np.median(ratios) > 5, f"{name}: change is not concentrated in the box ({np.median(ratios):.1f})"
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    assert np.median(area) > 0.005 * W * H
    # Before the event nothing anomalous is labelled, and the event sits in the centre square.
    cx = (b[:, 0] + b[:, 2]) / 2
    assert ((cx > (W - H) / 2) & (cx < (W + H) / 2)).mean() > 0.9


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="explosion"):
        generate_clip(0, anomaly="explosion")
    with pytest.raises(ValueError, match="frames"):
        generate_clip(0, num_frames=4)


def test_plan_frames_match_generate_clip():
    plan = plan_clip(5, width=W, height=H, num_frames=20, anomaly="running")
    clip = generate_clip(5, width=W, height=H, num_frames=20, anomaly="running")
    assert np.array_equal(np.stack(list(plan.frames())), clip.frames)
    assert np.array_equal(plan.labels, clip.labels)


def _read_all(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return np.stack(frames)


@pytest.mark.parametrize("codec", ["mp4v", "MJPG"])
def test_benchmark_written_and_read_back_frame_exact(tmp_path, codec):
    n = 40
    manifest_path = write_benchmark(tmp_path, split="test", num_videos=3, seed=4, width=W, height=H,
                                    num_frames=n, anomaly_ratio=2 / 3, classes=("fire", "falling"),
                                    codec=codec)
    manifest = json.loads(manifest_path.read_text())
    labels = sorted(v["label"] for v in manifest["videos"])
    assert labels == ["falling", "fire", "normal"]
    gts = {g.name: g for g in read_synthetic(tmp_path)}
    for v in manifest["videos"]:
        frames = _read_all(tmp_path / v["name"])
        assert frames.shape == (n, H, W, 3)
        plan = plan_clip(v["seed"], width=W, height=H, num_frames=n, anomaly=v["label"],
                         layout_seed=v["layout_seed"])
        ref = np.stack(list(plan.frames())).astype(np.int16)
        # Lossy, but frame-exact: decoded frame k is closest to rendered frame k, not to its neighbours.
        dec = frames.astype(np.int16)
        for k in (1, n // 2, n - 2):
            err = [np.abs(dec[k] - ref[j]).mean() for j in (k - 1, k, k + 1)]
            assert err[1] < 6
            assert err[1] < min(err[0], err[2])
        g = gts[v["name"]]
        assert g.num_frames == n and g.label == v["label"]
        assert np.array_equal(g.frame_labels(), (plan.labels > 0).astype(int))
        assert sorted(g.boxes) == np.flatnonzero(np.isfinite(plan.boxes[:, 0])).tolist()
        for f, box in g.boxes.items():
            assert np.allclose(box, plan.boxes[f], atol=0.06)


def test_splits_use_different_layouts(tmp_path):
    a = json.loads(write_benchmark(tmp_path / "train", split="train", num_videos=1, seed=0, width=W, height=H,
                                   num_frames=16, anomaly_ratio=0).read_text())
    b = json.loads(write_benchmark(tmp_path / "test", split="test", num_videos=1, seed=0, width=W, height=H,
                                   num_frames=16, anomaly_ratio=0).read_text())
    la, lb = a["videos"][0]["layout_seed"], b["videos"][0]["layout_seed"]
    assert la != lb
    bg_a, bg_b = make_layout(la, W, H).background, make_layout(lb, W, H).background
    assert np.abs(bg_a.astype(int) - bg_b.astype(int)).mean() > 10


def test_benchmark_plans_are_the_written_clips(tmp_path):
    manifest = json.loads(write_benchmark(tmp_path, split="test", num_videos=4, seed=2, width=W, height=H,
                                          num_frames=20).read_text())
    plans = list(benchmark_plans(split="test", num_videos=4, seed=2, width=W, height=H, num_frames=20))
    assert len(plans) == len(manifest["videos"])
    for (label, scene, plan), v in zip(plans, manifest["videos"], strict=True):
        assert (label, scene, plan.seed, plan.layout_seed) == (v["label"], v["scene"], v["seed"], v["layout_seed"])
        assert (list(plan.event) if plan.event else None) == v["event"]


def test_box_ceiling_of_cell_aligned_and_thin_boxes():
    from stp_edge.metrics import box_iou

    cell_rectangles = research_script("demo_ceiling").cell_rectangles
    rects = cell_rectangles(112, 7, (240, 320))  # centre square x 40..280, cells of 240/7 px
    assert len(rects) == (7 * 8 // 2) ** 2
    cell = 240 / 7
    aligned = np.array([40 + cell, 2 * cell, 40 + 3 * cell, 3 * cell])  # two cells wide, one high
    assert box_iou(rects, aligned).max() == pytest.approx(1.0)
    thin = np.array([40 + cell, 2 * cell, 40 + 3 * cell, 2.25 * cell])  # a quarter of a cell high
    assert box_iou(rects, thin).max() == pytest.approx(0.25)


def test_region_targets_are_cell_coverage_and_flip_with_the_image():
    region_targets = research_script("demo_ceiling").region_targets
    cell = 240 / 7  # frame 240x320: centre square x 40..280, 7x7 cells of 240/7 px
    # snippet 0: a box covering cell (2, 1) fully and the right half of cell (2, 0)... in x: 0.5 of col 0
    box = np.array([40 + 0.5 * cell, 2 * cell, 40 + 2 * cell, 3 * cell])
    boxes = np.stack([box, box, np.full(4, np.nan)])
    labels = np.array([1, 0, 1])  # snippet 1 is normal (targets 0 whatever its box), snippet 2 has no box
    t = region_targets(boxes, labels, (240, 320), 112, 7)
    assert t.shape == (3, 49)
    grid = t[0].reshape(7, 7)
    assert grid[2, 0] == pytest.approx(0.5) and grid[2, 1] == pytest.approx(1.0)
    assert grid.sum() == pytest.approx(1.5)  # nothing else covered
    assert not t[1].any() and not t[2].any()
    flipped = region_targets(boxes, labels, (240, 320), 112, 7, flip=True)[0].reshape(7, 7)
    np.testing.assert_allclose(flipped, grid[:, ::-1])
    assert flipped[2, 6] == pytest.approx(0.5) and flipped[2, 5] == pytest.approx(1.0)


def test_one_box_per_snippet_ceiling_is_below_the_per_frame_one_and_lowest_for_running():
    b = research_script("demo_ceiling").box_ceiling(7, 112, num_videos=10, seed=0)  # 5 anomalous clips, one per class
    assert set(b["per_class"]) == set(ANOMALY_CLASSES)
    for v in b["per_class"].values():
        assert 0 < v["snippet_tiou_ceiling"] <= v["tiou_ceiling"] + 1e-12
    # a runner crosses cells within 16 frames; a left object does not move
    run, bag = b["per_class"]["running"], b["per_class"]["abandoned object"]
    assert run["snippet_tiou_ceiling"] < run["tiou_ceiling"] - 0.05
    assert bag["snippet_tiou_ceiling"] == pytest.approx(bag["tiou_ceiling"], abs=1e-9)


def test_demo_clip_is_written_whole_and_a_bad_path_is_a_clear_video_error(tmp_path):
    import cv2

    from stp_edge.demo import write_clip
    from stp_edge.synthetic import write_video
    from stp_edge.video import VideoError

    gt = write_clip(tmp_path / "clip.mp4", seed=3, anomaly="fire", seconds=2.0)
    cap = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(gt["labels"]) == 50
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (240, 320, 3) and frame.std() > 5  # a rendered scene, not a blank frame
    frames = np.random.default_rng(0).integers(0, 255, (3, 24, 32, 3), dtype=np.uint8)
    (tmp_path / "a_file").write_text("not a directory")
    with pytest.raises(VideoError, match=r"a_file/x\.mp4: cannot create"):
        write_video(tmp_path / "a_file" / "x.mp4", frames, 25.0, (32, 24), "mp4v", 3)
    with pytest.raises(VideoError, match=r"short\.mp4: 2 frames to write, expected 3"):
        write_video(tmp_path / "short.mp4", frames[:2], 25.0, (32, 24), "mp4v", 3)
    with pytest.raises(VideoError, match=r"odd\.mp4: size 33x24"):
        write_video(tmp_path / "odd.mp4", frames, 25.0, (33, 24), "mp4v", 3)
    assert not (tmp_path / "short.mp4").exists() and not list(tmp_path.glob(".*partial*"))


def test_box_rule_variants_reproduce_the_runtime_rule_at_its_setting():
    from stp_edge.geometry import region_boxes, to_frame_coords
    from stp_edge.pipeline.boxes import boxes_from_map

    component_box = research_script("box_rules").component_box
    rng = np.random.default_rng(0)
    cells = to_frame_coords(region_boxes(112, 7), 112, (240, 320))
    for _ in range(20):
        amap = rng.uniform(0, 0.4, (7, 7))
        i, j = rng.integers(0, 6, 2)
        amap[i:i + 2, j:j + 2] += rng.uniform(0.3, 0.6, (2, 2))  # a blob, sometimes split by the level
        want = boxes_from_map(amap, (240, 320), 112, threshold=0.5, class_id=1)[0]
        got = component_box(amap, (240, 320), 112, "tokens", 0.5, 0.5)
        np.testing.assert_allclose(got, [want.x1, want.y1, want.x2, want.y2])
    flat = np.zeros((7, 7))
    flat[3, 3], flat[3, 4] = 1.0, 0.4  # a lower level takes the weaker neighbour in
    assert component_box(flat, (240, 320), 112, "tokens", 0.5, 0.0)[2] == pytest.approx(cells[24, 2])
    assert component_box(flat, (240, 320), 112, "tokens", 0.3, 0.0)[2] == pytest.approx(cells[25, 2])
