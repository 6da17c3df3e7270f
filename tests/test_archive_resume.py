"""Resume keeps only what it can verify (issue 26, item 2): every `extract`/`score` output carries a record.

An output is kept only when its record names the producer of this run (bundle identity / feature fingerprint)
and the video as it is now, and the output's bytes are intact. Everything else (another bundle's results of an
interrupted rerun, a replaced video, an empty, cut or altered file, no record, a corrupt record or legacy state
file) is made again; truncated videos are reported as `stp-edge run` reports them. Hand-made contract bundles,
no torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import comparable, handmade_config, moving_frames, write_avi, write_handmade_bundle

import stp_edge.scale.score as score_mod
from stp_edge.cli import main
from stp_edge.scale.extract import extract_features
from stp_edge.scale.records import (
    BAD_RECORD,
    NO_RECORD,
    OUTPUT_DAMAGED,
    VIDEO_CHANGED,
    record_path,
)
from stp_edge.scale.score import LEGACY_MARKER, score_videos


@pytest.fixture
def videos(tmp_path) -> Path:
    root = tmp_path / "videos"
    root.mkdir()
    write_avi(root / "a.avi", moving_frames(18, seed=1))
    write_avi(root / "b.avi", moving_frames(12, seed=2))
    return root


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory) -> Path:
    """Same contract as `handmade_bundle`, other weights: another bundle identity and other scores."""
    return write_handmade_bundle(tmp_path_factory.mktemp("other") / "other.stp", handmade_config(), seed=7)


def _score(videos, bundle, out, **kw):
    return score_videos(videos, bundle, out, backend="ort-cpu", progress=False, **kw)


def _extract(videos, bundle, out, **kw):
    return extract_features(videos, out, bundle=bundle, backend="ort-cpu", progress=False, **kw)


def _scores(path: Path) -> list[float]:
    return [json.loads(line)["score"] for line in path.read_text().splitlines()]


# --- another bundle, interrupted ------------------------------------------------------------------------------


def test_interrupted_rerun_with_another_bundle_never_keeps_the_first_bundles_results(
        handmade_bundle, other_bundle, videos, tmp_path, monkeypatch):
    out = tmp_path / "scores"
    _score(videos, handmade_bundle, out)
    first_b = _scores(out / "b.jsonl")
    ref = _score(videos, other_bundle, tmp_path / "ref")
    want_b = _scores(tmp_path / "ref" / "b.jsonl")
    assert ref.ok and want_b != first_b  # the two bundles really disagree on b

    real_job = score_mod._score_job

    def interrupted(detector, row):  # Ctrl-C while the second video is being scored
        if row["video"].endswith("b.avi"):
            raise KeyboardInterrupt
        return real_job(detector, row)

    monkeypatch.setattr(score_mod, "_score_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _score(videos, other_bundle, out)
    monkeypatch.setattr(score_mod, "_score_job", real_job)

    again = _score(videos, other_bundle, out)
    assert [p.name for p in again.skipped] == ["a.jsonl"] and [p.name for p in again.written] == ["b.jsonl"]
    assert again.redone == {out / "b.jsonl": "made by another bundle"}
    assert "redid 1 existing file(s) that could not be kept: 1 made by another bundle" in again.summary()
    assert _scores(out / "b.jsonl") == want_b
    assert json.loads(record_path(out / "b.jsonl").read_text())["producer"] == again.fingerprint


def test_features_of_another_encoder_are_extracted_again(handmade_bundle, other_bundle, videos, tmp_path):
    feats = tmp_path / "feats"
    first = _extract(videos, handmade_bundle, feats)
    again = _extract(videos, other_bundle, feats)
    assert first.fingerprint != again.fingerprint and not again.skipped
    assert again.redone == {feats / "a.npz": "made by another encoder", feats / "b.npz": "made by another encoder"}
    with np.load(feats / "a.npz") as z:
        assert str(z["fingerprint"]) == again.fingerprint


# --- the input changed ------------------------------------------------------------------------------------------


def test_a_video_replaced_under_the_same_name_is_scored_and_extracted_again(handmade_bundle, videos, tmp_path):
    scores, feats = tmp_path / "scores", tmp_path / "feats"
    _score(videos, handmade_bundle, scores)
    _extract(videos, handmade_bundle, feats)
    old_scores = _scores(scores / "b.jsonl")
    with np.load(feats / "b.npz") as z:
        old_emb = z["frame_emb"].copy()
    st = (videos / "b.avi").stat()
    write_avi(videos / "b.avi", moving_frames(12, seed=9))  # new content, same name
    os.utime(videos / "b.avi", ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old modification time

    s2, e2 = _score(videos, handmade_bundle, scores), _extract(videos, handmade_bundle, feats)
    for report, name in ((s2, "b.jsonl"), (e2, "b.npz")):
        assert [p.name for p in report.written] == [name] and len(report.skipped) == 1
        assert report.redone == {report.out_dir / name: VIDEO_CHANGED}
    fresh = _score(videos / "b.avi", handmade_bundle, tmp_path / "fresh")
    assert _scores(scores / "b.jsonl") == _scores(fresh.written[0]) != old_scores
    with np.load(feats / "b.npz") as z:
        assert not np.array_equal(z["frame_emb"], old_emb)


# --- damaged outputs ------------------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "cut":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":  # one byte in the middle of the data: same size, a CRC error in a zip member
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:])
    else:
        record_path(path).unlink()


@pytest.mark.parametrize(("how", "why"), [("empty", OUTPUT_DAMAGED), ("cut", OUTPUT_DAMAGED),
                                          ("flipped", OUTPUT_DAMAGED), ("no record", NO_RECORD)])
def test_damaged_outputs_are_made_again(handmade_bundle, videos, tmp_path, how, why):
    scores, feats = tmp_path / "scores", tmp_path / "feats"
    first = {"score": _score(videos, handmade_bundle, scores), "extract": _extract(videos, handmade_bundle, feats)}
    good = {name: (scores if name.endswith("jsonl") else feats) / name for name in ("a.jsonl", "a.npz")}
    originals = {name: p.read_bytes() for name, p in good.items()}
    for p in good.values():
        _damage(p, how)

    again = {"score": _score(videos, handmade_bundle, scores), "extract": _extract(videos, handmade_bundle, feats)}
    for job, name in (("score", "a.jsonl"), ("extract", "a.npz")):
        report = again[job]
        assert [p.name for p in report.written] == [name]
        assert [p.name for p in report.skipped] == [name.replace("a.", "b.")]
        assert report.redone == {good[name]: why}
        assert first[job].ok and report.ok
    assert good["a.npz"].read_bytes() == originals["a.npz"]  # made again, byte for byte
    lines = [json.loads(line) for line in good["a.jsonl"].read_text().splitlines()]
    want = [json.loads(line) for line in originals["a.jsonl"].decode().splitlines()]
    assert [comparable(x) for x in lines] == [comparable(x) for x in want]


def test_a_relabel_keeps_the_record_true(handmade_bundle, videos, tmp_path):
    feats = tmp_path / "feats"
    _extract(videos, handmade_bundle, feats, labels={"a": 0, "b": 1})
    relabelled = _extract(videos, handmade_bundle, feats, labels={"a": 2, "b": 1})
    assert [p.name for p in relabelled.relabelled] == ["a.npz"] and [p.name for p in relabelled.skipped] == ["b.npz"]
    kept = _extract(videos, handmade_bundle, feats, labels={"a": 2, "b": 1})
    assert len(kept.skipped) == 2 and not kept.written and not kept.redone  # the new record vouches for the file
    with np.load(feats / "a.npz") as z:
        assert int(z["label"]) == 2 and str(z["class_name"]) == "fire"


# --- corrupt state files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"{not json", b"\x00\xff" * 10, b"[]", b'{"schema": 1}'])
def test_corrupt_state_files_are_one_verdict_never_a_traceback(handmade_bundle, videos, tmp_path, capsys, garbage):
    out = tmp_path / "scores"
    _score(videos, handmade_bundle, out)
    (out / LEGACY_MARKER).write_bytes(garbage)  # the folder marker earlier versions wrote and read
    record_path(out / "a.jsonl").write_bytes(garbage)
    argv = ["score", str(videos), "--bundle", str(handmade_bundle), "-o", str(out), "--backend", "ort-cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("score: 1 written, 1 already done, 0 failed;")
    assert f"1 {BAD_RECORD}" in text and not (out / LEGACY_MARKER).exists()
    assert json.loads(record_path(out / "a.jsonl").read_text())["producer"]


# --- truncated videos -------------------------------------------------------------------------------------------


def test_truncated_videos_are_reported_as_run_reports_them(handmade_bundle, tmp_path, capsys):
    root = tmp_path / "videos"
    root.mkdir()
    whole = write_avi(tmp_path / "whole.avi", moving_frames(36, seed=3))
    cut = root / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.5)])
    write_avi(root / "fine.avi", moving_frames(12, seed=4))

    assert main(["run", str(handmade_bundle), str(cut), "--backend", "ort-cpu", "-q"]) == 0
    run_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("TRUNCATED"))
    assert "the container promised 36 frames" in run_line
    for argv in (["score", str(root), "--bundle", str(handmade_bundle), "-o", str(tmp_path / "s")],
                 ["extract", str(root), "--bundle", str(handmade_bundle), "-o", str(tmp_path / "f")]):
        for _ in range(2):  # when made, and again when kept by a rerun
            assert main([*argv, "--backend", "ort-cpu"]) == 0
            lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("TRUNCATED")]
            assert lines == [run_line], argv
