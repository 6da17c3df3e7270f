"""The two box rules ("components", "best_window") on hand-made maps with known answers, and the rule's route from
config to manifest to the runtime's boxes stage (a manifest without the field keeps the component rule)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stp_edge.config import STPromptConfig
from stp_edge.errors import UsageError
from stp_edge.pipeline.boxes import best_window, boxes_from_map


def _xyxy(box):
    return (box.x1, box.y1, box.x2, box.y2)


def _tail_map() -> np.ndarray:
    """A 2x2 block (rows 2-3, cols 2-3) and a weaker cell (5, 5) touching it only through (4, 4)."""
    amap = np.full((7, 7), 0.1, dtype=np.float32)
    amap[2:4, 2:4] = [[0.9, 0.95], [0.85, 0.9]]
    amap[4, 4] = 0.6
    amap[5, 5] = 0.6
    return amap


def test_best_window_is_the_block_where_components_stretch_to_the_tail():
    amap = _tail_map()  # cut = 0.1 + 0.5 * (0.95 - 0.1) = 0.525: the block, (4, 4) and (5, 5) pass it
    comp = boxes_from_map(amap, (224, 224), 224, threshold=0.5, class_id=3, rule="components")
    best = boxes_from_map(amap, (224, 224), 224, threshold=0.5, class_id=3, rule="best_window")
    # 7x7 cells of 32 px: the component runs diagonally from cell (2, 2) to (5, 5); the window is the 2x2 block
    assert len(comp) == 1 and _xyxy(comp[0]) == pytest.approx((64, 64, 192, 192))
    assert len(best) == 1 and _xyxy(best[0]) == pytest.approx((64, 64, 128, 128))
    assert best[0].score == pytest.approx(0.95) and best[0].class_id == 3


def test_best_window_takes_the_stronger_of_two_blobs_and_maps_to_the_frame():
    amap = np.full((7, 7), 0.2, dtype=np.float32)
    amap[0:2, 0:3] = 0.9            # 6 cells 0.9 above the background: excess 6 * (0.9 - 0.55) = 2.1
    amap[5, 5] = 0.95               # the peak alone: excess 0.4
    best = boxes_from_map(amap, (1080, 1920), 224, threshold=0.5, class_id=1, rule="best_window")
    comp = boxes_from_map(amap, (1080, 1920), 224, threshold=0.5, class_id=1, rule="components")
    cell = 1080 / 7  # the centre square starts at x=420
    assert _xyxy(best[0]) == pytest.approx((420, 0, 420 + 3 * cell, 2 * cell))
    assert best[0].score == pytest.approx(0.9)
    # the component rule puts the peak's own component first and the block second
    assert _xyxy(comp[0]) == pytest.approx((420 + 5 * cell, 5 * cell, 420 + 6 * cell, 6 * cell))
    assert _xyxy(comp[1]) == pytest.approx((420, 0, 420 + 3 * cell, 2 * cell))


def test_best_window_of_a_map_below_threshold_is_the_peak_cell():
    amap = np.full((3, 3), 0.1, dtype=np.float32)
    amap[2, 1] = 0.3
    assert best_window(amap, 0.5) == (2, 3, 1, 2)
    box = boxes_from_map(amap, (224, 224), 224, threshold=0.5, class_id=2, rule="best_window")[0]
    assert _xyxy(box) == pytest.approx((224 / 3, 448 / 3, 448 / 3, 224))


def test_best_window_in_crops_mode_is_the_crop_window():
    amap = np.full((3, 3), 0.1, dtype=np.float32)
    amap[1, 2] = 0.9
    box = boxes_from_map(amap, (224, 224), 224, threshold=0.5, class_id=1, mode="crops", rule="best_window")[0]
    assert _xyxy(box) == pytest.approx((112, 56, 224, 168))  # crops of side 112, stride 56


def test_unknown_rule_is_refused_by_the_stage_and_the_config():
    with pytest.raises(UsageError, match="box rule must be one of"):
        boxes_from_map(_tail_map(), (224, 224), 224, threshold=0.5, class_id=1, rule="largest")
    with pytest.raises(UsageError, match="box_rule must be one of"):
        STPromptConfig(box_rule="largest")


def test_the_rule_travels_in_the_manifest_to_the_runtime_boxes(tmp_path):
    from conftest import handmade_config, moving_frames, write_handmade_bundle

    from stp_edge.api import Detector

    # box_threshold 0: the half-maximum cut alone decides, so these weak random maps have multi-cell shapes
    cfg = handmade_config(region_mode="crops", region_grid=3, motion_topk=4, box_rule="best_window",
                          box_threshold=0.0)
    bundle = write_handmade_bundle(tmp_path / "best.stp", cfg, seed=1)
    assert json.loads((bundle / "manifest.json").read_text())["config"]["box_rule"] == "best_window"
    with Detector.load(bundle, backend="ort-cpu", spatial_on="all", lookahead=0) as det:
        results = [r for f in moving_frames(48, seed=5) for r in det.push(f)] + det.flush()
    differs = 0
    for r in results:
        kw = dict(threshold=cfg.box_threshold, class_id=r.boxes[0].class_id, mode="crops")
        want = boxes_from_map(r.anomaly_map, r.frame_shape, cfg.vision.image_size, rule="best_window", **kw)
        other = boxes_from_map(r.anomaly_map, r.frame_shape, cfg.vision.image_size, rule="components", **kw)
        assert [_xyxy(b) for b in r.boxes] == [_xyxy(b) for b in want]
        differs += [_xyxy(b) for b in other] != [_xyxy(b) for b in want]
    assert results and differs  # the maps are ones where the rules disagree, so the route is really tested


def test_a_manifest_without_the_rule_keeps_components(handmade_bundle, tmp_path):
    import shutil

    from stp_edge.bundle import Bundle, rewrite_manifest

    bundle = tmp_path / "old.stp"
    shutil.copytree(handmade_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["box_rule"] == "components"
    del manifest["config"]["box_rule"]  # as in every bundle written before the field existed
    rewrite_manifest(bundle, manifest)
    assert Bundle.load(bundle).config.box_rule == "components"


def _best_window_by_definition(amap: np.ndarray, cut: float) -> tuple[int, int, int, int]:
    """Every rectangle summed directly; the largest sum (to 1e-9), then the smallest, then the first."""
    R, C = amap.shape
    best = None
    for r0 in range(R):
        for r1 in range(r0 + 1, R + 1):
            for c0 in range(C):
                for c1 in range(c0 + 1, C + 1):
                    key = (round(float((amap[r0:r1, c0:c1] - cut).sum()), 9), -(r1 - r0) * (c1 - c0))
                    if best is None or key > best[0]:
                        best = (key, (r0, r1, c0, c1))
    return best[1]


def test_best_window_matches_its_definition_on_random_maps():
    rng = np.random.default_rng(7)
    for _ in range(200):
        R = int(rng.integers(1, 8))
        amap = rng.random((R, R)).astype(np.float32)
        if rng.random() < 0.3:
            amap = np.round(amap, 1)  # many equal sums: the tie rules decide
        cut = float(rng.random())
        assert best_window(amap, cut) == _best_window_by_definition(amap, cut)
