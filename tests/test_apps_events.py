"""Events from snippet records (stp_edge.apps.events) and the zones that gate them (stp_edge.apps.zones).

Records are real snippet-record dicts (the shape `stp_edge.records.snippet_record` writes and
docs/schemas/snippet.schema.json describes) at 25 fps with 16-frame snippets (0.64 s each); every message the
engine emits is checked against docs/schemas/event.schema.json.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from stp_edge.apps.events import EventEngine, EventPolicy
from stp_edge.apps.zones import (
    Zone,
    Zones,
    clip_to_box,
    intersection_area,
    point_in_polygon,
    polygon_area,
    region_centres,
)
from stp_edge.errors import UsageError
from stp_edge.records import rfc3339

REPO = Path(__file__).resolve().parents[1]
EVENT_SCHEMA = json.loads((REPO / "docs/schemas/event.schema.json").read_text())
FPS, SNIP, T0 = 25.0, 16, 1765140000.12
DT = SNIP / FPS  # 0.64 s per snippet
W, H = 640, 480
CLASSES = ["normal", "fighting", "robbery"]

try:
    import jsonschema

    VALIDATOR = jsonschema.Draft202012Validator(EVENT_SCHEMA)
except ImportError:  # pragma: no cover - jsonschema is a test dependency
    VALIDATOR = None


def box(nx1, ny1, nx2, ny2, score=0.8, class_id=1):
    """A record box at normalised coordinates, in pixels of a W x H frame too."""
    return {"x1": nx1 * W, "y1": ny1 * H, "x2": nx2 * W, "y2": ny2 * H, "score": score, "class_id": class_id,
            "class_name": CLASSES[class_id], "norm": [nx1, ny1, nx2, ny2]}


def rec(i, score, *, class_id=1, boxes=None, regions=None, final=True, camera="front"):
    """Snippet record i (frames [16i, 16i+16) at 25 fps) with a varying, realistic body.

    Above 0.5 a default box sits in the frame's centre; `regions` (9 values) replaces the boxes when given.
    """
    start, end = T0 + i * DT, T0 + (i + 1) * DT
    if score is None:
        probs = None
    else:
        rest = (1 - score) / 2
        probs = [round(1 - score, 6)] + [round(score if k == class_id else rest * 0.1, 6) for k in (1, 2)]
    if boxes is None:
        boxes = [box(0.4, 0.4, 0.6, 0.6, score or 0.0, class_id)] if score is not None and score >= 0.5 else []
    if regions is not None:
        boxes = []
    record = {
        "schema": "stp-edge.snippet", "schema_version": 1, "camera": camera, "stream": 0,
        "source": "rtsp://user:***@10.0.0.5/sub", "start_time": round(start, 3), "end_time": round(end, 3),
        "timestamp": rfc3339(start), "clock": "wall", "media_time": None, "snippet": i,
        "frame_start": SNIP * i, "frame_end": SNIP * (i + 1), "frame_size": [W, H],
        "score": score, "is_anomaly": None if score is None else score >= 0.5, "threshold": 0.5,
        "class_id": None if score is None else (class_id if score >= 0.5 else 0),
        "class_name": None if score is None else (CLASSES[class_id] if score >= 0.5 else "normal"),
        "class_probs": probs, "region_scores": regions,
        "anomaly_map": None if regions is None else [regions[0:3], regions[3:6], regions[6:9]],
        "boxes": boxes, "timings": {"encode": 4.1 + 0.01 * i, "temporal": 0.7}, "final": final,
        "sampled": [SNIP * i + 8], "sampling": "center",
    }
    if score is None:
        record["invalid"] = f"temporal graph returned NaN for snippet {i}"
    return record


def feed(engine, records):
    """Add records one by one; returns [(record index, message)] with every message schema-checked."""
    out = []
    for r in records:
        for m in engine.add(r):
            check(m)
            out.append((r["snippet"], m))
    return out


def check(message):
    if VALIDATOR is not None:
        errors = sorted(VALIDATOR.iter_errors(message), key=str)
        assert not errors, f"{message['type']} message breaks event.schema.json: {errors[0]}"
    return message


def kinds(msgs):
    return [(i, m["type"]) for i, m in msgs]


def engine(**policy):
    return EventEngine("front", EventPolicy(**policy))


# -- opening: min_snippets, the new message ----------------------------------------------------------------------

def test_a_single_spike_opens_nothing_and_two_consecutive_snippets_open_one_event():
    scores = [0.12, 0.2, 0.83, 0.18, 0.22, 0.71, 0.9, 0.77, 0.15]
    msgs = feed(engine(), [rec(i, s) for i, s in enumerate(scores)])
    assert kinds(msgs) == [(6, "new")]
    after = msgs[0][1]["after"]
    assert msgs[0][1]["before"] is None
    assert after["start_time"] == pytest.approx(T0 + 5 * DT, abs=1e-3)  # the run's first snippet
    assert after["timestamp"] == rfc3339(T0 + 5 * DT)
    assert after["frame_start"] == 80 and after["frame_end"] == 112
    assert after["peak_score"] == 0.9 and after["score"] == 0.9 and after["label"] == "fighting"
    assert after["end_time"] is None and after["end_reason"] is None and after["updates"] == 0
    assert after["boxes"] and after["boxes"][0]["score"] == 0.9
    m = re.fullmatch(r"front-(\d+)-([0-9a-f]{6})", after["id"])
    assert m and int(m.group(1)) == round(after["start_time"] * 1000)


def test_min_snippets_three_needs_three_in_a_row():
    scores = [0.3, 0.7, 0.75, 0.2, 0.8, 0.6, 0.65, 0.7]
    msgs = feed(engine(min_snippets=3), [rec(i, s) for i, s in enumerate(scores)])
    assert kinds(msgs) == [(6, "new")]


# -- hysteresis ---------------------------------------------------------------------------------------------------

def test_hysteresis_a_dip_between_thresholds_or_short_drop_does_not_end_a_long_one_ends_once():
    eng = engine(threshold=0.5, off_threshold=0.4, cutoff_s=2.0)
    scores = [0.7, 0.8]                         # 0-1: opens at 1
    scores += [0.45, 0.42, 0.47] * 4            # 2-13: above off for 7.7 s: holds
    scores += [0.3, 0.12, 0.25]                 # 14-16: below off 1.92 s < cutoff: holds
    scores += [0.44]                            # 17: back above off
    scores += [0.2, 0.1, 0.33, 0.15]            # 18-21: below off 2.56 s >= cutoff: ends at 21
    scores += [0.1, 0.2, 0.3, 0.1]              # 22-25: nothing more
    msgs = feed(eng, [rec(i, s) for i, s in enumerate(scores)])
    assert kinds(msgs) == [(1, "new"), (21, "end")]
    end = msgs[-1][1]
    assert end["after"]["end_reason"] == "below_threshold"
    assert end["after"]["end_time"] == pytest.approx(T0 + 18 * DT, abs=1e-3)  # end of snippet 17, the last held
    assert end["after"]["frame_end"] == 18 * SNIP
    assert end["after"]["score"] == 0.15  # the latest snippet's score
    assert end["before"] == msgs[0][1]["after"]
    assert eng.finish() == []  # ended once: nothing left to end


def test_default_off_threshold_is_threshold_minus_a_tenth_clipped_at_zero():
    assert EventPolicy(threshold=0.6).off_level == pytest.approx(0.5)
    assert EventPolicy(threshold=0.05).off_level == 0.0
    assert EventPolicy(threshold=0.6, region_threshold=0.3).region_level == 0.3
    assert EventPolicy(threshold=0.6).region_level == 0.6
    eng = engine(threshold=0.6, cutoff_s=0.0)
    msgs = feed(eng, [rec(i, s, class_id=1) for i, s in enumerate([0.7, 0.9, 0.55, 0.52, 0.48])])
    assert kinds(msgs) == [(1, "new"), (4, "end")]  # 0.55 and 0.52 hold (>= 0.5), 0.48 ends at once


# -- updates ------------------------------------------------------------------------------------------------------

def test_new_peaks_update_at_most_once_per_interval_and_the_end_carries_the_last_peak():
    scores = [0.6, 0.61] + [round(0.62 + 0.015 * k, 3) for k in range(20)]  # a new peak every snippet
    msgs = feed(engine(update_interval_s=5.0), [rec(i, s) for i, s in enumerate(scores)])
    # new at snippet 1 (event time T0 + 1.28 s); updates need >= 5 s more: snippet 9 (6.40 s), 17 (11.52 s)
    assert kinds(msgs) == [(1, "new"), (9, "update"), (17, "update")]
    (_, new), (_, up1), (_, up2) = msgs
    assert up1["before"] == new["after"] and up2["before"] == up1["after"]
    assert up1["after"]["peak_score"] == scores[9] > up1["before"]["peak_score"]
    assert up2["after"]["peak_score"] == scores[17] and up2["after"]["peak_time"] == pytest.approx(
        T0 + 17.5 * DT, abs=1e-3)
    assert [up1["after"]["updates"], up2["after"]["updates"]] == [1, 2]
    end = check(EventEngine.finish(_engine_after(scores))[0])
    assert end["after"]["peak_score"] == scores[-1] and end["after"]["end_reason"] == "stream_end"
    assert end["after"]["end_time"] == pytest.approx(T0 + len(scores) * DT, abs=1e-3)


def _engine_after(scores):
    eng = engine(update_interval_s=5.0)
    for i, s in enumerate(scores):
        eng.add(rec(i, s))
    return eng


def test_a_new_class_updates_at_once_a_class_seen_before_waits_for_the_interval():
    eng = engine(update_interval_s=5.0)
    plan = [(0.8, 1), (0.85, 1),                # new "fighting" at 1
            (0.7, 2),                           # 2: robbery is new to the event: update at once
            (0.72, 1),                          # 3: back to fighting (seen): waits
            (0.7, 2), (0.71, 1)] + [(0.7, 1)] * 8   # 4-13: flip-flop, then steady
    msgs = feed(eng, [rec(i, s, class_id=c) for i, (s, c) in enumerate(plan)])
    assert kinds(msgs) == [(1, "new"), (2, "update"), (10, "update")]
    assert msgs[1][1]["before"]["label"] == "fighting" and msgs[1][1]["after"]["label"] == "robbery"
    assert msgs[1][1]["after"]["peak_score"] == 0.85  # a class change is no new peak
    # snippet 10 ends 7.04 s after the start: >= 5 s after the update at 1.92 s
    assert msgs[2][1]["after"]["label"] == "fighting"


def test_normal_class_snippets_take_their_boxes_class_or_keep_the_label():
    eng = engine()
    r0, r1 = rec(0, 0.8, class_id=2), rec(1, 0.9, class_id=2)
    r1["class_id"], r1["class_name"] = 0, "normal"  # the normal class is the most probable, the box says robbery
    msgs = feed(eng, [r0, r1])
    assert msgs[0][1]["after"]["label"] == "robbery"


# -- max duration -------------------------------------------------------------------------------------------------

def test_max_duration_ends_the_event_and_a_new_one_opens_while_the_scene_stays_anomalous():
    scores = [0.7 + 0.2 * abs(np.sin(i / 3)) for i in range(36)]
    msgs = feed(engine(max_duration_s=10.0, update_interval_s=1000.0), [rec(i, round(s, 4))
                                                                        for i, s in enumerate(scores)])
    # event 1: snippets 0..15 (10.24 s >= 10); event 2 opens at 17 (starts at 16), ends at 31; event 3 at 33
    assert [k for k in kinds(msgs) if k[1] != "update"] == [(1, "new"), (15, "end"), (17, "new"), (31, "end"),
                                                            (33, "new")]
    ends = [m for _, m in msgs if m["type"] == "end"]
    news = [m for _, m in msgs if m["type"] == "new"]
    assert all(m["after"]["end_reason"] == "max_duration" for m in ends)
    assert ends[0]["after"]["end_time"] == pytest.approx(T0 + 16 * DT, abs=1e-3)
    assert news[1]["after"]["start_time"] == pytest.approx(T0 + 16 * DT, abs=1e-3)
    assert len({m["after"]["id"] for m in news}) == 3
    for m in ends:
        assert 10.0 <= m["after"]["end_time"] - m["after"]["start_time"] < 10.0 + DT


# -- records the engine does not use -------------------------------------------------------------------------------

def test_a_record_of_another_camera_is_refused():
    with pytest.raises(UsageError, match="camera 'front' got a record of camera 'back'"):
        engine().add(rec(0, 0.8, camera="back"))


def test_provisional_records_are_ignored():
    eng = engine()
    assert feed(eng, [rec(i, 0.9, final=False) for i in range(6)]) == []
    msgs = feed(eng, [rec(10, 0.8), rec(11, 0.85)])
    assert kinds(msgs) == [(11, "new")]
    # provisional lows neither end it nor count toward the cut-off
    assert feed(eng, [rec(12 + i, 0.1, final=False) for i in range(10)]) == []
    assert eng.open_event is not None


def test_invalid_records_neither_open_extend_nor_end():
    eng = engine()
    assert feed(eng, [rec(i, None) for i in range(5)]) == []  # nothing opens on invalid records
    # an invalid record between two triggering snippets does not break the run
    msgs = feed(eng, [rec(5, 0.8), rec(6, None), rec(7, 0.75)])
    assert kinds(msgs) == [(7, "new")]
    # 10 invalid snippets (6.4 s, past the 2 s cut-off) do not end it, nor move its end
    assert feed(eng, [rec(8 + i, None) for i in range(10)]) == []
    assert eng.open_event["frame_end"] == 8 * SNIP
    end = check(eng.finish()[0])
    assert end["after"]["end_time"] == pytest.approx(T0 + 8 * DT, abs=1e-3)  # the last scored record's end
    assert end["after"]["end_reason"] == "stream_end"


# -- zones --------------------------------------------------------------------------------------------------------

DRIVEWAY = Zone("driveway", ((0.05, 0.55), (0.45, 0.55), (0.45, 0.98), (0.05, 0.98)), "watch")
PORCH = Zone("porch", ((0.6, 0.6), (0.95, 0.6), (0.95, 0.95), (0.6, 0.95)), "watch")
TREE = Zone("tree", ((0.7, 0.05), (0.95, 0.05), (0.95, 0.35), (0.7, 0.35)), "ignore")


def test_a_box_only_inside_an_ignore_zone_raises_nothing():
    eng = engine(zones=Zones([TREE]))
    inside = [rec(i, 0.9, boxes=[box(0.75, 0.1, 0.9, 0.3, 0.9)]) for i in range(6)]
    assert feed(eng, inside) == []
    partly = [rec(6 + i, 0.9, boxes=[box(0.6, 0.1, 0.8, 0.3, 0.9)]) for i in range(2)]  # pokes out of the tree
    assert kinds(feed(eng, partly)) == [(7, "new")]


def test_a_box_outside_the_watched_zone_raises_nothing_entering_it_opens_and_names_it():
    eng = engine(zones=Zones([DRIVEWAY, PORCH, TREE]), update_interval_s=1.0)
    outside = [rec(i, 0.95, boxes=[box(0.1, 0.05, 0.3, 0.4, 0.95)]) for i in range(5)]  # top-left: no zone
    assert feed(eng, outside) == []
    walk = [box(0.1, 0.3, 0.3, 0.56), box(0.15, 0.4, 0.35, 0.7), box(0.5, 0.5, 0.7, 0.8), box(0.5, 0.5, 0.7, 0.8)]
    msgs = feed(eng, [rec(5 + k, 0.8 + 0.02 * k, boxes=[b]) for k, b in enumerate(walk)])
    assert kinds(msgs) == [(6, "new"), (8, "update")]
    new, upd = msgs[0][1], msgs[1][1]
    assert new["after"]["zones"] == ["driveway"]
    assert new["after"]["start_time"] == pytest.approx(T0 + 5 * DT, abs=1e-3)  # the first box touching it
    assert upd["after"]["zones"] == ["driveway", "porch"]
    # a high score with its box outside every watched zone no longer holds the event: it ends after the cut-off
    msgs = feed(eng, [rec(9 + k, 0.9, boxes=[box(0.1, 0.05, 0.3, 0.4, 0.9)]) for k in range(4)])
    assert kinds(msgs) == [(12, "end")] and msgs[0][1]["after"]["zones"] == ["driveway", "porch"]


def test_region_scores_decide_when_a_snippet_has_no_boxes():
    zones = Zones([DRIVEWAY])
    # 3x3 token cells on the centre 480x480 square of a 640x480 frame: cell (2, 0) centres at (0.25, 0.833),
    # inside the driveway; cell (0, 2) at (0.75, 0.167), outside it
    assert zones.region_mask(3, (W, H)).tolist() == [[False] * 3, [False] * 3, [True, False, False]]
    hot_out = [0.1, 0.15, 0.92, 0.2, 0.12, 0.3, 0.1, 0.11, 0.2]
    hot_in = [0.1, 0.15, 0.2, 0.2, 0.12, 0.3, 0.88, 0.11, 0.2]
    eng = engine(zones=zones)
    assert feed(eng, [rec(i, 0.9, regions=hot_out) for i in range(4)]) == []
    msgs = feed(eng, [rec(4 + i, 0.9, regions=hot_in) for i in range(2)])
    assert kinds(msgs) == [(5, "new")] and msgs[0][1]["after"]["zones"] == ["driveway"]
    # a region threshold above the hot cell's score keeps it from counting
    eng = engine(zones=zones, region_threshold=0.95)
    assert feed(eng, [rec(i, 0.9, regions=hot_in) for i in range(4)]) == []


def test_without_spatial_results_a_zoned_camera_cannot_open_but_can_hold():
    eng = engine(zones=Zones([DRIVEWAY]))
    assert feed(eng, [rec(i, 0.9, boxes=[]) for i in range(4)]) == []  # no box, no regions: where is unknown
    msgs = feed(eng, [rec(4 + i, 0.9, boxes=[box(0.1, 0.6, 0.3, 0.9)]) for i in range(2)])
    assert kinds(msgs) == [(5, "new")]
    assert feed(eng, [rec(6 + i, 0.85, boxes=[]) for i in range(8)]) == []  # holds through 5 s
    assert eng.open_event["frame_end"] == 14 * SNIP


# -- geometry -----------------------------------------------------------------------------------------------------

U_SHAPE = ((0, 0), (1, 0), (1, 1), (0.7, 1), (0.7, 0.3), (0.3, 0.3), (0.3, 1), (0, 1))


def test_polygon_areas_and_clipping_by_hand():
    assert polygon_area([(0, 0), (1, 0), (1, 1), (0, 1)]) == 1.0
    assert polygon_area([(0, 0), (0, 1), (1, 0)]) == 0.5  # clockwise: same area
    assert polygon_area(U_SHAPE) == pytest.approx(1 - 0.4 * 0.7)
    tri = [(0, 0), (1, 0), (0, 1)]
    assert intersection_area(tri, (0, 0, 0.5, 0.5)) == pytest.approx(0.25)   # the box lies inside
    assert intersection_area(tri, (0.5, 0, 1, 0.5)) == pytest.approx(0.125)  # a right triangle of legs 0.5
    assert intersection_area(tri, (0.6, 0.6, 0.9, 0.9)) == 0.0
    # the concave U clipped by a box across its notch: two strips 0.1 x 0.4
    assert intersection_area(U_SHAPE, (0.2, 0.5, 0.8, 0.9)) == pytest.approx(0.08)
    assert polygon_area(clip_to_box(U_SHAPE, (0.2, 0.5, 0.8, 0.9))) == pytest.approx(0.08)
    assert point_in_polygon(0.5, 0.2, U_SHAPE) and point_in_polygon(0.15, 0.9, U_SHAPE)
    assert not point_in_polygon(0.5, 0.6, U_SHAPE) and not point_in_polygon(1.2, 0.5, U_SHAPE)


def test_admits_box_and_zones_of_by_hand():
    u = Zone("yard", U_SHAPE, "watch")
    zones = Zones([u, Zone("bin", ((0.05, 0.5), (0.25, 0.5), (0.25, 0.95), (0.05, 0.95)), "ignore")])
    assert not zones.admits_box((0.4, 0.5, 0.6, 0.9))  # in the notch: no shared area
    assert zones.zones_of((0.4, 0.5, 0.6, 0.9)) == []
    assert zones.admits_box((0.2, 0.5, 0.8, 0.9)) and zones.zones_of((0.2, 0.5, 0.8, 0.9)) == ["yard"]
    assert not zones.admits_box((0.1, 0.6, 0.2, 0.9))  # inside the yard but entirely inside the bin
    assert zones.admits_box((0.1, 0.6, 0.28, 0.9))     # sticks out of the bin
    tri = Zones([Zone("t", ((0, 0), (0.5, 0), (0, 0.5)), "watch")])
    assert not tri.admits_box((0.25, 0.25, 0.5, 0.5))   # touches the hypotenuse at one point only
    assert tri.admits_box((0.2, 0.2, 0.5, 0.5))
    assert Zones().admits_box((0.1, 0.1, 0.2, 0.2)) and Zones().zones_of((0.1, 0.1, 0.2, 0.2)) == []
    ignore_only = Zones([TREE])
    assert ignore_only.admits_box((0.1, 0.1, 0.2, 0.2)) and not ignore_only.admits_box((0.75, 0.1, 0.8, 0.2))


def test_region_mask_cell_centres_by_hand():
    # without a frame size the grid spans the frame: 3x3 centres at 1/6, 1/2, 5/6
    assert region_centres(3)[0] == pytest.approx((1 / 6, 1 / 6)) and region_centres(3)[5] == pytest.approx(
        (5 / 6, 0.5))
    zones = Zones([DRIVEWAY, Zone("rail", ((0.1, 0.7), (0.4, 0.7), (0.4, 0.9), (0.1, 0.9)), "ignore")])
    assert not zones.region_mask(3, (W, H))[2, 0]  # the driveway's cell centre lies under the ignore zone
    assert Zones([TREE]).region_mask(3).tolist() == [[True, True, False], [True] * 3, [True] * 3]
    # on a 640x480 frame the cells lie on the centre 480x480 square: x from 0.125 to 0.875
    assert region_centres(3, (W, H))[6] == pytest.approx((0.25, 5 / 6))
    gate = Zones([Zone("gate", ((0.05, 0.55), (0.2, 0.55), (0.2, 0.98), (0.05, 0.98)), "watch")])
    assert gate.region_mask(3)[2, 0] and not gate.region_mask(3, (W, H)).any()
    # crops mode: 3 windows of side 112 at offsets 0, 56, 112 of 224: centres at 0.25, 0.5, 0.75
    assert region_centres(3, mode="crops")[8] == pytest.approx((0.75, 0.75))


@pytest.mark.parametrize(("args", "words"), [
    (("yard", ((0, 0), (1, 0))), ["'yard'", "at least 3"]),
    (("yard", ((0, 0), (1.2, 0), (1, 1))), ["'yard'", "point 1", "[0, 1]"]),
    (("yard", ((0, 0), (1, 1), (1, 0), (0, 1))), ["'yard'", "cross"]),
    (("yard", ((0, 0), (0.5, 0.5), (1, 1))), ["'yard'", "no area"]),
    (("yard", ((0, 0), (1, 0), (1, 1)), "block"), ["'yard'", "mode"]),
    (("yard", ((0, 0), "ab", (1, 1))), ["'yard'", "point 1"]),
    (("", ((0, 0), (1, 0), (1, 1))), ["name"]),
])
def test_bad_zones_name_the_zone_and_point(args, words):
    with pytest.raises(UsageError) as err:
        Zone(*args)
    for w in words:
        assert w in str(err.value)


def test_zones_from_spec_and_duplicates():
    zones = Zones.from_spec({"driveway": {"points": [[0.1, 0.5], [0.5, 0.5], [0.5, 1], [0.1, 1], [0.1, 0.5]]},
                             "tree": {"points": [[0.7, 0.1], [0.9, 0.1], [0.9, 0.3]], "mode": "ignore"}})
    assert [z.name for z in zones.watched] == ["driveway"] and len(zones[0].points) == 4  # closing point dropped
    with pytest.raises(UsageError, match="'driveway' is defined twice"):
        Zones([DRIVEWAY, DRIVEWAY])
    with pytest.raises(UsageError, match="unknown key"):
        Zones.from_spec([{"name": "a", "points": [[0, 0], [1, 0], [1, 1]], "colour": "red"}])


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"threshold": 0.5, "off_threshold": 0.6}, "off_threshold (0.6) must be <= threshold (0.5)"),
    ({"min_snippets": 0}, "min_snippets"),
    ({"threshold": 1.5}, "threshold must be in [0.0, 1.0]"),
    ({"cutoff_s": -1}, "cutoff_s"),
    ({"max_duration_s": 0}, "max_duration_s"),
    ({"update_interval_s": "5"}, "update_interval_s must be a number"),
    ({"zones": "driveway"}, "zones"),
    ({"region_mode": "grid"}, "region_mode"),
])
def test_bad_policies_say_what_is_wrong(kwargs, words):
    with pytest.raises(UsageError) as err:
        EventPolicy(**kwargs)
    assert words in str(err.value)


# -- messages: schema, immutability, attach ------------------------------------------------------------------------

def test_records_of_the_helper_and_messages_match_their_schemas():
    jsonschema = pytest.importorskip("jsonschema")
    snippet = jsonschema.Draft202012Validator(json.loads((REPO / "docs/schemas/snippet.schema.json").read_text()))
    records = [rec(0, 0.3), rec(1, 0.8), rec(2, None), rec(3, 0.9, regions=[0.2] * 8 + [0.9])]
    for r in records:
        snippet.validate(r)
    bad = {"schema": "stp-edge.event", "schema_version": 1, "type": "new", "before": None,
           "after": {"id": "x"}}
    assert list(jsonschema.Draft202012Validator(EVENT_SCHEMA).iter_errors(bad))  # the schema does reject


def test_emitted_messages_never_change_afterwards():
    eng = engine(update_interval_s=0.0)
    r0, r1 = rec(0, 0.7), rec(1, 0.8)
    new = feed(eng, [r0, r1])[0][1]
    frozen = json.dumps(new, sort_keys=True)
    r1["boxes"][0]["score"] = 0.01  # the caller reuses its record
    new["after"]["boxes"].append({"junk": 1})  # a receiver scribbles on its message
    new["after"]["zones"].append("junk")
    msgs = feed(eng, [rec(2, 0.75, class_id=2), rec(3, 0.9), rec(4, 0.95, class_id=2)])
    eng.attach(new["after"]["id"], snapshot="/var/lib/stp-edge/front/snap.jpg")
    end = eng.finish()[0]
    assert json.loads(frozen)["after"]["boxes"][0]["score"] == 0.8
    assert msgs[0][1]["after"]["boxes"][0]["score"] == 0.8  # the peak's boxes, as they were when added
    assert [m["before"]["boxes"][0]["score"] for _, m in msgs] == [0.8, 0.8, 0.9]  # engine kept its own copies
    assert msgs[0][1]["before"]["zones"] == []
    before_end = copy.deepcopy(end)
    eng.add(rec(5, 0.99))
    eng.add(rec(6, 0.99))
    assert end == before_end


def test_attach_snapshot_and_clip_ready_after_the_end():
    eng = EventEngine("front", EventPolicy(), keep_ended=2)
    msgs = feed(eng, [rec(i, s) for i, s in enumerate([0.8, 0.9, 0.2, 0.1, 0.2, 0.1])])
    assert kinds(msgs) == [(1, "new"), (5, "end")]
    assert msgs[1][1]["after"]["end_time"] == pytest.approx(T0 + 2 * DT, abs=1e-3)  # snippet 1 held it last
    eid = msgs[0][1]["after"]["id"]
    up = check(eng.attach(eid, clip="/var/lib/stp-edge/clips/" + eid + ".mp4"))
    assert up["type"] == "update" and up["after"]["clip"].endswith(".mp4") and not up["after"]["clip_ready"]
    assert up["after"]["end_time"] == msgs[1][1]["after"]["end_time"] and up["after"]["updates"] == 1
    ready = check(eng.attach(eid, clip_ready=True))
    assert ready["before"]["clip_ready"] is False and ready["after"]["clip_ready"] is True
    assert ready["before"] == up["after"] and ready["after"]["updates"] == 2
    assert eng.attach(eid, clip_ready=True) is None  # nothing changed
    assert eng.attach("front-1-abcdef", clip_ready=True) is None
    with pytest.raises(UsageError, match="unknown field"):
        eng.attach(eid, clip_path="x")
    # the engine remembers the last keep_ended ended events only
    for k in range(2):
        base = 10 + 10 * k
        feed(eng, [rec(base + i, s) for i, s in enumerate([0.8, 0.9, 0.2, 0.1, 0.2, 0.1])])
    assert eng.attach(eid, snapshot="/tmp/s.jpg") is None


def test_attach_on_an_open_event_is_carried_by_the_end():
    eng = engine()
    new = feed(eng, [rec(0, 0.8), rec(1, 0.9)])[0][1]
    up = check(eng.attach(new["after"]["id"], snapshot="/data/front/peak.jpg"))
    assert up["after"]["snapshot"] == "/data/front/peak.jpg" and up["after"]["end_time"] is None
    end = check(eng.finish()[0])
    assert end["before"] == up["after"] and end["after"]["snapshot"] == "/data/front/peak.jpg"


def test_an_endless_stream_keeps_bounded_state():
    eng = EventEngine("front", EventPolicy(update_interval_s=1.0))
    ends = 0
    for i in range(6000):
        phase = i % 40  # 12 high snippets, then 28 low ones: an event every 25.6 s
        score = 0.7 + 0.25 * np.sin(i) ** 2 if phase < 12 else 0.05 + 0.1 * np.cos(i) ** 2
        for m in eng.add(rec(i, round(float(score), 4), class_id=1 + i % 2)):
            ends += m["type"] == "end"
    assert ends == 150
    assert len(eng._ended) == 64  # the ended events attach can still reach, no more
    assert eng._track is None
