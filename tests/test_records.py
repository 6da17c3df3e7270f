"""Records for machines: every JSONL line carries schema, camera, masked source, times and normalised boxes.

Each line a run writes is validated against its JSON Schema in docs/schemas/ (the file a consumer would use).
Times: a file's records follow its media time (frame index over the container's rate); a live stream's follow the
wall clock when its frames were read.
"""

from __future__ import annotations

import json
import time

import jsonschema
import pytest
from conftest import SCHEMA_DIR, moving_frames, validate_record, write_avi

from stp_edge.records import rfc3339
from stp_edge.run import camera_names, run_video

CLASSES = ("normal", "fighting", "fire")  # the handmade bundle's (tests/conftest.py)
validate = validate_record


def test_schemas_are_valid_json_schemas():
    paths = sorted(SCHEMA_DIR.glob("*.schema.json"))
    assert {p.name.split(".")[0] for p in paths} >= {"snippet", "gap", "dropped", "event"}
    for path in paths:
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_rfc3339_is_utc_with_milliseconds():
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1765140000.1209) == "2025-12-07T20:40:00.121Z"  # rounded, as the records' epoch seconds are
    assert rfc3339(1765140000.624) == "2025-12-07T20:40:00.624Z"  # not 00.623 (float 0.62399...)


def test_file_records_follow_media_time_and_validate(handmade_bundle, tmp_path):
    video = write_avi(tmp_path / "lobby cam.avi", moving_frames(70, seed=3), fps=20.0)
    path = tmp_path / "r.jsonl"
    before = time.time()
    res = run_video(video, bundle=handmade_bundle, backend="ort-cpu", spatial_on="all", jsonl=path)
    after = time.time()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == len(res) == res.snippets > 3
    for rec in lines:
        validate(rec)
        assert rec["camera"] == "lobby_cam" and rec["source"] == str(video) and rec["clock"] == "media"
        assert rec["media_time"] == pytest.approx(rec["frame_start"] / 20.0, abs=1e-3)
        assert rec["end_time"] - rec["start_time"] == pytest.approx((rec["frame_end"] - rec["frame_start"]) / 20.0,
                                                                    abs=2e-3)
        assert before - 1 <= rec["start_time"] <= after + 70 / 20.0
        assert rec["frame_size"] == [64, 48]
    starts = [r["start_time"] - r["media_time"] for r in lines]  # one anchor: the moment reading began
    assert max(starts) - min(starts) < 2e-3
    boxed = [r for r in lines if r["boxes"]]
    assert boxed, "spatial_on='all' gives boxes on this clip"
    for rec in boxed:
        for b in rec["boxes"]:
            assert b["norm"] == pytest.approx([b["x1"] / 64, b["y1"] / 48, b["x2"] / 64, b["y2"] / 48], abs=1e-5)
            assert b["class_name"] == CLASSES[b["class_id"]]


def test_per_camera_names_and_thresholds_set_is_anomaly(handmade_bundle, tmp_path):
    a = write_avi(tmp_path / "a.avi", moving_frames(40, seed=1))
    b = write_avi(tmp_path / "b.avi", moving_frames(40, seed=2))
    records = []
    run_video([a, b], bundle=handmade_bundle, backend="ort-cpu", cameras=["gate", "yard"], thresholds=[0.0, 1.0],
              on_record=records.append, keep=False)
    assert {r["camera"] for r in records if r["stream"] == 0} == {"gate"}
    assert {r["camera"] for r in records if r["stream"] == 1} == {"yard"}
    for r in records:
        validate(r)
        assert r["is_anomaly"] is (r["camera"] == "gate")  # score >= 0 always; score >= 1 never here
        assert 0.0 < r["score"] < 1.0


def test_default_camera_names_are_unique_and_topic_safe():
    assert camera_names(["/v/front door.mp4", "/w/front door.mp4", "rtsp://u:p@10.0.0.5:554/sub", 3]) == \
        ["front_door-1", "front_door-2", "10_0_0_5", "camera3"]


def test_gap_records_validate_and_name_the_camera(handmade_bundle, tmp_path):
    from test_cli_run import GapSource

    whole = write_avi(tmp_path / "whole.avi", moving_frames(44, seed=7))
    records = []
    run_video(GapSource(whole, 20).wrap(), bundle=handmade_bundle, backend="ort-cpu", on_record=records.append)
    gaps = [r for r in records if r["schema"] == "stp-edge.gap"]
    assert len(gaps) == 1 and gaps[0]["gap"]["frame"] == 20 and gaps[0]["camera"] == "whole"
    for r in records:
        validate(r)


def test_live_records_follow_the_wall_clock_and_mask_credentials(handmade_bundle, tmp_path):
    from test_live_sources import FFMPEG, StreamServer

    from stp_edge.bench.capacity import free_port

    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (run `make system-deps`): no live stream to read")
    clip = write_avi(tmp_path / "clip.avi", moving_frames(50, seed=4), fps=25.0)
    srv = StreamServer(clip, free_port(), tmp_path / "ffmpeg.log")
    srv.start()
    try:
        url = srv.url.replace("http://", "http://viewer:hunter2@")
        records = []
        before = time.time()
        run_video(url, bundle=handmade_bundle, backend="ort-cpu", on_record=records.append, max_frames=64)
        after = time.time()
    finally:
        srv.kill()
    snippets = [r for r in records if r["schema"] == "stp-edge.snippet" and r["final"]]
    assert len(snippets) >= 3
    for r in records:
        validate(r)
        assert "hunter2" not in json.dumps(r) and "viewer:***@127.0.0.1" in r["source"]
    for r in snippets:
        assert r["clock"] == "wall" and r["media_time"] is None
        assert before <= r["start_time"] <= r["end_time"] <= after + 0.1
    starts = [r["start_time"] for r in snippets]
    assert starts == sorted(starts) and starts[-1] - starts[0] >= 0.3  # 25 fps in real time: 16 frames = 0.64 s


def test_on_image_offers_each_snippet_a_frame_with_pixels_even_when_only_keyframes_decode(handmade_bundle, tmp_path):
    """Snapshots need pixels: with keyframes-only decoding the frame offered is the snippet's keyframe."""
    av = pytest.importorskip("av", reason="PyAV is not installed: pip install 'stp-edge[h264]'")
    import numpy as np

    path = tmp_path / "gop4.mp4"
    frames = moving_frames(40, seed=8)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        st.options = {"g": "4", "keyint_min": "4", "sc_threshold": "0", "bf": "0"}
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    offered = []
    run_video(path, bundle=handmade_bundle, backend="ort-cpu", sampling="keyframe", keep=False,
              source_kwargs={"decoder": "pyav", "decode": "keyframes"},
              on_image=lambda s, i, f: offered.append((i, f.index, f.decode())))
    assert [i for i, _, _ in offered] == list(range(10))  # snippet_len 4: one per snippet, in order
    for i, index, image in offered:
        assert index == 4 * i  # the keyframe: the only frame of the snippet with pixels
        errors = [np.abs(image.astype(int) - f).mean() for f in frames]
        assert image.shape == (48, 64, 3) and int(np.argmin(errors)) == index  # its own frame, decoded (lossy)
