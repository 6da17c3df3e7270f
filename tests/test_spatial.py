from __future__ import annotations

import numpy as np
import pytest

from stp_edge.geometry import crop_square, region_boxes
from stp_edge.pipeline.boxes import box_class, boxes_from_map
from stp_edge.pipeline.spatial import anomaly_map, spatial_gate


def test_anomaly_map_row_major():
    amap = anomaly_map(np.arange(9, dtype=np.float32))
    assert amap[0, 2] == 2 and amap[2, 0] == 6
    with pytest.raises(ValueError, match="not a square grid"):
        anomaly_map(np.ones(8))


def test_crop_square_is_the_centre_square():
    assert crop_square((1080, 1920)) == (420.0, 0.0, 1080.0)
    assert crop_square((640, 480)) == (0.0, 80.0, 480.0)


def test_boxes_map_back_to_original_frame():
    amap = np.array([[0.1, 0.2, 0.1],
                     [0.1, 0.3, 0.9],
                     [0.1, 0.8, 0.2]], dtype=np.float32)
    boxes = boxes_from_map(amap, (1080, 1920), 224, threshold=0.5, class_id=4)
    # the peak (1, 2) and (2, 1) touch diagonally: one 8-connected component covering both cells;
    # the centre square starts at x=420 and has cells of 360 px
    assert len(boxes) == 1
    top = boxes[0]
    assert (top.x1, top.y1, top.x2, top.y2) == pytest.approx((420 + 360, 360, 420 + 1080, 1080))
    assert top.score == pytest.approx(0.9) and top.class_id == 4


def test_half_maximum_keeps_the_box_to_the_anomaly():
    # every region is above the absolute threshold, but only a 2x2 block stands out from the background
    amap = np.full((7, 7), 0.6, dtype=np.float32)
    amap[3:5, 1:3] = [[0.95, 0.9], [0.85, 0.9]]
    amap[0, 6] = 0.8  # a second, weaker bump
    boxes = boxes_from_map(amap, (224, 224), 224, threshold=0.5, class_id=1)
    assert (boxes[0].x1, boxes[0].y1, boxes[0].x2, boxes[0].y2) == pytest.approx((32, 96, 96, 160))
    assert boxes[0].score == pytest.approx(0.95)
    assert len(boxes) == 2 and boxes[1].score == pytest.approx(0.8)


def test_peak_below_threshold_still_gives_its_cell():
    amap = np.full((3, 3), 0.1, dtype=np.float32)
    amap[2, 2] = 0.3
    boxes = boxes_from_map(amap, (224, 224), 224, threshold=0.5, class_id=2)
    assert len(boxes) == 1
    assert (boxes[0].x1, boxes[0].y1) == pytest.approx((448 / 3, 448 / 3))


def test_isolated_top_region_is_not_repeated():
    amap = np.full((3, 3), 0.1, dtype=np.float32)
    amap[0, 0] = 0.9
    assert len(boxes_from_map(amap, (300, 300), 224, threshold=0.5, class_id=1)) == 1


def test_crops_mode_boxes_are_windows():
    boxes = region_boxes(224, 3, "crops")
    assert boxes[4].tolist() == [56, 56, 168, 168]
    assert region_boxes(224, 7, "tokens")[8].tolist() == [32, 32, 64, 64]


def test_box_class_is_the_top_abnormal_class():
    assert box_class([0.7, 0.1, 0.2]) == 2  # normal is most probable, the box still names an anomaly
    assert box_class([0.1, 0.6, 0.3]) == 1


def test_spatial_gate_modes():
    assert spatial_gate(0.6, "flagged", 0.5) and not spatial_gate(0.4, "flagged", 0.5)
    assert spatial_gate(0.0, "all", 0.5) and not spatial_gate(1.0, "off", 0.5)
    with pytest.raises(ValueError, match="spatial_on must be one of"):
        spatial_gate(0.5, "sometimes", 0.5)
