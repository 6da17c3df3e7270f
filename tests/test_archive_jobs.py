"""`extract` and `score` run through one archive driver (`stp_edge.scale.jobs.run_archive`) and one report.

Runs on the hand-made contract bundle (no torch): two small clips, in this process; the Ray path is
tests/test_ray.py.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from conftest import comparable, moving_frames, write_avi

import stp_edge.scale.jobs as jobs
from stp_edge.cli import cmd_score
from stp_edge.scale.extract import extract_features
from stp_edge.scale.jobs import ArchiveReport
from stp_edge.scale.score import score_videos


@pytest.fixture
def videos(tmp_path) -> Path:
    root = tmp_path / "videos"
    root.mkdir()
    write_avi(root / "a.avi", moving_frames(18, seed=1))  # 4 full snippets of 4 frames + a partial one
    write_avi(root / "b.avi", moving_frames(12, seed=2))
    return root


@pytest.fixture
def jobs_run(monkeypatch) -> list[str]:
    """The names of the per-video jobs the driver's in-process runner was handed."""
    seen: list[str] = []
    real = jobs.run_local

    def recording(rows, job, detector):
        seen.append(job.__name__)
        return real(rows, job, detector)

    monkeypatch.setattr(jobs, "run_local", recording)
    return seen


def test_extract_and_score_share_the_driver_and_the_report(handmade_bundle, videos, tmp_path, jobs_run):
    ext = extract_features(videos, tmp_path / "feats", bundle=handmade_bundle, backend="ort-cpu", progress=False)
    sc = score_videos(videos, handmade_bundle, tmp_path / "scores", backend="ort-cpu", progress=False)
    assert jobs_run == ["_extract_job", "_score_job"]
    assert type(ext) is type(sc) is ArchiveReport and (ext.job, sc.job) == ("extract", "score")
    assert ext.ok and sc.ok and ext.snippets == sc.snippets == 5 + 3
    assert [p.name for p in ext.written] == ["a.npz", "b.npz"] and [p.name for p in sc.written] == ["a.jsonl",
                                                                                                    "b.jsonl"]
    assert ext.anomalous is None and sc.anomalous == sum(
        json.loads(line)["is_anomaly"] for p in sc.written for line in p.read_text().splitlines())
    assert ext.backends == sc.backends == ["ort-cpu"] and ext.processes == sc.processes == 1
    assert re.fullmatch(r"extract: 2 written, 0 already done, 0 relabelled, 0 failed; 8 snippets in [\d.]+ s "
                        r"\([\d.]+ snippets/s, 1 worker\(s\), ort-cpu\) -> .*feats", ext.summary())
    assert re.fullmatch(r"score: 2 written, 0 already done, 0 failed; 8 snippets \(\d+ anomalous\) in [\d.]+ s "
                        r"\([\d.]+ snippets/s, 1 worker\(s\), ort-cpu\) -> .*scores", sc.summary())

    # resumed: both skip what is done through the same report fields, and the driver runs nothing
    again = [extract_features(videos, tmp_path / "feats", bundle=handmade_bundle, backend="ort-cpu", progress=False),
             score_videos(videos, handmade_bundle, tmp_path / "scores", backend="ort-cpu", progress=False)]
    assert jobs_run == ["_extract_job", "_score_job"]
    for report, ran in zip(again, ("no encoder run", "no model run"), strict=True):
        assert len(report.skipped) == 2 and not report.written and report.processes == 0 and ran in report.summary()


def test_score_files_hold_the_lines_run_video_writes(handmade_bundle, videos, tmp_path):
    from stp_edge.run import run_video

    report = score_videos(videos, handmade_bundle, tmp_path / "scores", backend="ort-cpu", progress=False)
    for path in report.written:
        ref = tmp_path / f"{path.stem}.ref.jsonl"
        run_video(videos / f"{path.stem}.avi", bundle=handmade_bundle, backend="ort-cpu", jsonl=ref)
        got, want = path.read_text().splitlines(), ref.read_text().splitlines()
        assert len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            ra, rb = json.loads(a), json.loads(b)
            assert list(ra) == list(rb) and comparable(ra) == comparable(rb)


def test_a_failed_video_is_reported_by_the_same_report(handmade_bundle, videos, tmp_path, capsys):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"not a video")
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{videos / 'a.avi'}\n{bad}\n")
    ns = argparse.Namespace(videos=str(listing), bundle=handmade_bundle, out=tmp_path / "scores", backend="ort-cpu",
                            no_resume=False, ray=False, workers=None, ray_address=None)
    assert cmd_score(ns) == 1
    out = capsys.readouterr().out
    assert out.startswith("score: 1 written, 0 already done, 1 failed;") and f"FAILED {bad}: VideoError" in out
    assert sorted(p.name for p in (tmp_path / "scores").glob("*.jsonl")) == ["a.jsonl"]
