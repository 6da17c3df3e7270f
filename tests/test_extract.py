"""`stp-edge extract`: CLIP weights -> extract -> train -> export -> run on generated clips, resumability, labels.

The end-to-end path is the one stp_edge/scale/extract.py documents, with a tiny CLIP (the `tiny` config's
towers, saved as a plain OpenAI-layout state_dict) standing in for ViT-B-16.pt.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest

from stp_edge.cli import cmd_extract
from stp_edge.config import DEMO_CLASSES
from stp_edge.scale.extract import ENCODER_BUNDLE, extract_features
from stp_edge.scale.features import PARTIAL, feature_fingerprint
from stp_edge.scale.inputs import UNLABELLED, VideoLabel, resolve_labels
from stp_edge.scale.records import OUTPUT_DAMAGED, record_path
from stp_edge.synthetic import write_benchmark

torch = pytest.importorskip("torch", reason="the end-to-end path trains and exports with torch ([export] extra)")

NUM_FRAMES = 40  # 2 full snippets of 16 + a partial one of 8
SNIPPETS = 3


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Four 96x72 clips of 40 frames (2 normal, 2 anomalous) with the benchmark's annotations."""
    root = tmp_path_factory.mktemp("videos") / "train"
    write_benchmark(root, split="train", num_videos=4, seed=0, width=96, height=72, num_frames=NUM_FRAMES)
    return root


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory) -> Path:
    """A tiny CLIP in OpenAI's state_dict layout (what `torch.save(clip.state_dict())` writes)."""
    from stp_edge.config import STPromptConfig
    from stp_edge.model.stprompt import STPrompt

    torch.manual_seed(0)
    model = STPrompt(STPromptConfig.named("tiny"))
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    torch.save(model.clip.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def extracted(videos, clip_weights, tmp_path_factory):
    """Features of the clips from the CLIP weights (exports feats/encoder.stp first), labels from the annotations."""
    out = tmp_path_factory.mktemp("feats")
    report = extract_features(videos, out, clip_weights=clip_weights, fmt="synthetic", classes=DEMO_CLASSES,
                              progress=False, batch=2)
    return out, report


def _manifest_labels(videos: Path) -> dict[str, int]:
    import json

    manifest = json.loads((videos / "manifest.json").read_text())
    return {Path(v["name"]).stem: v["label_index"] for v in manifest["videos"]}


class RecordingEncoder:
    """Wraps a Detector's encode stage and keeps what it computed while the runtime streams."""

    def __init__(self, encoder) -> None:
        self.encoder, self.frame_emb, self.region_emb, self.ranges = encoder, [], [], []

    def __call__(self, snippets, **kwargs):
        out = self.encoder(snippets, **kwargs)
        self.frame_emb += list(out.frame_emb)
        self.region_emb += list(out.region_emb)
        self.ranges += [(s.frame_start, s.frame_end) for s in snippets]
        return out


@pytest.mark.slow
def test_clip_weights_extract_train_export_run(extracted, videos, clip_weights, tmp_path):
    from stp_edge.api import Detector
    from stp_edge.bundle import Bundle
    from stp_edge.cli import main as cli_main
    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.run import run_video

    feats, report = extracted
    assert report.ok and len(report.written) == 4 and report.snippets == 4 * SNIPPETS
    assert (feats / ENCODER_BUNDLE / "manifest.json").is_file() and report.bundle == feats / ENCODER_BUNDLE
    labels = _manifest_labels(videos)
    assert sorted(labels.values())[:2] == [0, 0] and min(sorted(labels.values())[2:]) > 0
    for f in report.written:
        with np.load(f) as z:
            assert z["frame_emb"].shape == (SNIPPETS, 64) and z["region_emb"].shape == (SNIPPETS, 49, 64)
            assert z["frame_emb"].dtype == np.float32 and np.abs(z["frame_emb"]).max() > 0
            assert z["frame_ranges"].tolist() == [[0, 16], [16, 32], [32, NUM_FRAMES]]
            assert int(z["label"]) == labels[f.stem] and str(z["fingerprint"]) == report.fingerprint

    # train the heads (the CLIP towers are the extraction's), export the checkpoint, run the runtime
    ckpt, model = tmp_path / "ckpt", tmp_path / "model.stp"
    argv = ["train", str(feats), "--config", "tiny", "--clip-weights", str(clip_weights), "--epochs", "3",
            "--lr", "1e-3", "--batch-size", "2", "--seed", "0", "-o", str(ckpt)]
    assert cli_main(argv) == 0
    export_bundle(model, checkpoint=ckpt, progress=False)
    assert feature_fingerprint(Bundle.load(model)) == report.fingerprint  # same encoder graph, byte for byte

    clip = sorted(videos.glob("*.mp4"))[2]
    with Detector.load(model, backend="ort-cpu") as det:
        det.encoder = recorder = RecordingEncoder(det.encoder)
        results = run_video(clip, detector=det)
    assert [(r.frame_start, r.frame_end) for r in results] == [(0, 16), (16, 32), (32, NUM_FRAMES)]
    assert all(0.0 <= r.score <= 1.0 and r.class_probs.shape == (6,) for r in results)
    with np.load(feats / f"{clip.stem}.npz") as z:
        assert recorder.ranges == [tuple(r) for r in z["frame_ranges"].tolist()]
        np.testing.assert_allclose(np.stack(recorder.frame_emb), z["frame_emb"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.stack(recorder.region_emb), z["region_emb"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_resume_after_a_killed_run(extracted, videos, tmp_path):
    """A killed run leaves whole files and temporary ones; the rerun keeps the good, redoes the rest."""
    _, first = extracted
    out = tmp_path / "feats"
    out.mkdir()
    done, stale_fp, corrupt, missing = sorted(first.written)
    for f in (done, stale_fp, corrupt):  # each output with its record
        (out / f.name).write_bytes(f.read_bytes())
        record_path(out / f.name).write_bytes(record_path(f).read_bytes())
    # another encoder's file, a truncated file (not what write_atomic leaves, but a copy gone wrong), a temp file
    with np.load(out / stale_fp.name) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(out / stale_fp.name, **{**arrays, "fingerprint": np.str_("0" * 64)})
    (out / corrupt.name).write_bytes(corrupt.read_bytes()[:100])
    (out / f".{missing.name}{PARTIAL}deadbeef0000").write_bytes(b"half a file")
    os.utime(out / done.name, (1_000_000_000, 1_000_000_000))

    report = extract_features(videos, out, bundle=first.bundle, fmt="synthetic", classes=DEMO_CLASSES, progress=False)
    assert report.partials_removed == 1 and not list(out.glob(f".*{PARTIAL}*"))
    assert [p.name for p in report.skipped] == [done.name]
    assert sorted(p.name for p in report.written) == sorted(p.name for p in (stale_fp, corrupt, missing))
    assert report.redone == {out / stale_fp.name: OUTPUT_DAMAGED, out / corrupt.name: OUTPUT_DAMAGED}
    assert (out / done.name).stat().st_mtime == 1_000_000_000  # not rewritten
    for f in first.written:
        with np.load(f) as a, np.load(out / f.name) as b:
            for k in ("frame_emb", "region_emb", "label", "frame_ranges", "fingerprint"):
                np.testing.assert_array_equal(a[k], b[k])

    # a new label is applied without re-encoding; resume=False encodes everything again
    csv = tmp_path / "labels.csv"
    csv.write_text("video,label\n" + "".join(f"{f.name},fire\n" for f in sorted(videos.glob("*.mp4"))))
    again = extract_features(videos, out, bundle=first.bundle, labels=csv, classes=DEMO_CLASSES, progress=False)
    assert len(again.relabelled) == 4 and not again.written
    with np.load(out / done.name) as z:
        assert int(z["label"]) == 5 and str(z["class_name"]) == "fire"
        np.testing.assert_array_equal(z["frame_emb"], np.load(done)["frame_emb"])
    fresh = extract_features(videos, out, bundle=first.bundle, labels=csv, classes=DEMO_CLASSES, progress=False,
                             resume=False)
    assert len(fresh.written) == 4 and not fresh.skipped


@pytest.mark.slow
def test_batch_size_does_not_change_features(extracted, videos, tmp_path):
    feats, first = extracted
    one = extract_features(sorted(videos.glob("*.mp4"))[:1], tmp_path, bundle=first.bundle, batch=1, progress=False)
    with np.load(one.written[0]) as a, np.load(feats / one.written[0].name) as b:  # extracted with batch=2
        np.testing.assert_allclose(a["frame_emb"], b["frame_emb"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(a["region_emb"], b["region_emb"], rtol=0, atol=1e-6)
        assert int(a["label"]) == UNLABELLED  # no label source given


@pytest.mark.slow
def test_unreadable_video_is_reported_and_the_rest_written(extracted, videos, tmp_path):
    _, first = extracted
    listing = tmp_path / "videos.txt"
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    good = sorted(videos.glob("*.mp4"))[0]
    listing.write_text(f"{good}\n{bad}\n")
    ns = argparse.Namespace(videos=str(listing), out=tmp_path / "feats", bundle=first.bundle, clip_weights=None,
                            labels=None, format=None, annotations=None, classes=None, backend="auto", batch=16,
                            no_resume=False, ray=False, workers=None, ray_address=None)
    assert cmd_extract(ns) == 1
    assert [p.name for p in (tmp_path / "feats").glob("*.npz")] == [f"{good.stem}.npz"]


def test_bundle_or_clip_weights_exactly_one(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        extract_features(tmp_path, tmp_path / "out")


# --- labels (no encoding) -----------------------------------------------------------------------------------


def test_labels_from_csv_names_indices_and_missing(tmp_path):
    vids = [tmp_path / "a.mp4", tmp_path / "sub" / "b.avi", tmp_path / "c.mp4"]
    csv = tmp_path / "labels.csv"
    csv.write_text("video,label\na.mp4,0\nb,Fire\n")
    with pytest.raises(ValueError, match="1 video\\(s\\) have no label .*c.mp4"):
        resolve_labels(vids, DEMO_CLASSES, labels=csv)
    csv.write_text("a.mp4,0\nb,Fire\n/anywhere/c.mp4,2\n")
    got = resolve_labels(vids, DEMO_CLASSES, labels=csv)
    assert got == {vids[0]: VideoLabel(0, "normal"), vids[1]: VideoLabel(5, "fire"), vids[2]: VideoLabel(2, "falling")}
    csv.write_text("a.mp4,explosion\n")
    with pytest.raises(ValueError, match="neither a class index nor"):
        resolve_labels(vids[:1], DEMO_CLASSES, labels=csv)
    assert resolve_labels(vids[:1], DEMO_CLASSES) == {vids[0]: VideoLabel(UNLABELLED, "")}


def test_labels_from_ucf_crime_and_shanghaitech_layouts(tmp_path):
    ann = tmp_path / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    ann.write_text("Fighting003_x264.mp4  Fighting  10 20 -1 -1\nArson011_x264.mp4  Arson  5 9 -1 -1\n"
                   "Normal_Videos_003_x264.mp4  Normal  -1 -1 -1 -1\n")
    vids = [tmp_path / n for n in ("Fighting003_x264.mp4", "Arson011_x264.mp4", "Normal_Videos_003_x264.mp4")]
    got = resolve_labels(vids, DEMO_CLASSES, fmt="ucf-crime", annotations=ann)
    # a class of the bundle keeps its index; an anomaly the bundle has no class for is 1 (anomalous)
    assert [got[v].index for v in vids] == [1, 1, 0] and got[vids[1]].name == "arson"

    masks = tmp_path / "test_frame_mask"
    masks.mkdir()
    np.save(masks / "01_0014.npy", np.array([0, 0, 1, 1, 0]))
    np.save(masks / "01_0015.npy", np.zeros(5, dtype=np.int64))
    vids = [tmp_path / "01_0014.avi", tmp_path / "01_0015.avi"]
    got = resolve_labels(vids, DEMO_CLASSES, fmt="shanghaitech", annotations=masks)
    assert [got[v] for v in vids] == [VideoLabel(1, "anomaly"), VideoLabel(0, "normal")]
    with pytest.raises(ValueError, match="not both"):
        resolve_labels(vids, DEMO_CLASSES, labels={"x": 1}, fmt="shanghaitech", annotations=masks)
