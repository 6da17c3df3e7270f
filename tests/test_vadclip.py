"""Training from VadCLIP's released CLIP features (issue 28 item 5): its files, lists, recipe and frame-only model.

The data are generated here in VadCLIP's real layout (github nwpu-zxr/VadCLIP, list/*.csv): `path,label` CSVs
whose paths are the authors' absolute ones, `CLASS/NAME__k.npy` for UCF-Crime and `NAME_label_CODES__k.npy` for
XD-Violence, ten crop views per video, [T, E] float32 each (E = the tiny config's 64 instead of ViT-B/16's 512).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from stp_edge.errors import MissingInputError, UsageError
from stp_edge.model.vadclip import TEST_VIEW, average_to_length, parse_label, read_list, scan_dir

torch = pytest.importorskip("torch", reason="training needs torch ([export] extra)")

E = 64  # the tiny config's embed_dim
AUTHORS = "/home/xbgydx/Desktop/UCFClipFeatures"


def _write_ucf(root: Path, videos: dict[str, str], length: int = 20, seed: int = 0, views: int = 10) -> Path:
    """VadCLIP's UCF-Crime feature folders and train list for {name: class folder}; returns the list CSV.

    Anomalous videos carry a burst (a shifted mean) in their middle snippets, so training has something to learn.
    """
    rng = np.random.default_rng(seed)
    rows = [["path", "label"]]
    for name, folder in videos.items():
        label = "Normal" if "Normal" in folder else folder
        base = rng.standard_normal((length, E)).astype(np.float32)
        if label != "Normal":
            base[length // 3: 2 * length // 3] += 1.5
        (root / folder).mkdir(parents=True, exist_ok=True)
        for k in range(views):
            noise = 0.05 * rng.standard_normal(base.shape).astype(np.float32)
            np.save(root / folder / f"{name}__{k}.npy", base + noise)
            rows.append([f"{AUTHORS}/{folder}/{name}__{k}.npy", label])
    listed = root / "ucf_CLIP_rgb.csv"
    with open(listed, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return listed


UCF_VIDEOS = {"Abuse001_x264": "Abuse", "Arrest002_x264": "Arrest", "RoadAccidents003_x264": "RoadAccidents",
              "Normal_Videos001_x264": "Training_Normal_Videos_Anomaly",
              "Normal_Videos002_x264": "Training_Normal_Videos_Anomaly",
              "Normal_Videos003_x264": "Training_Normal_Videos_Anomaly"}


def test_ucf_list_resolves_the_authors_paths_and_groups_views(tmp_path):
    listed = _write_ucf(tmp_path, UCF_VIDEOS, views=10)
    videos = read_list(listed, tmp_path)
    assert [v.name for v in videos] == sorted(UCF_VIDEOS)
    road = next(v for v in videos if v.name.startswith("RoadAccidents"))
    assert road.layout == "ucf-crime" and road.classes == ("road accident",)
    assert [k for k, _ in road.views] == list(range(10))
    assert road.test_view() == tmp_path / "RoadAccidents" / f"RoadAccidents003_x264__{TEST_VIEW}.npy"
    assert next(v for v in videos if v.name.startswith("Normal")).classes == ("normal",)
    # without a list, the labels come from the folders, as VadCLIP's make_list_ucf.py takes them
    assert [(v.name, v.classes) for v in scan_dir(tmp_path)] == [(v.name, v.classes) for v in videos]


def test_xd_labels_are_codes_with_several_classes(tmp_path):
    assert parse_label("A", "x") == ("xd-violence", ("normal",))
    assert parse_label("B2-G-0", "x") == ("xd-violence", ("shooting", "explosion"))
    assert parse_label("B6-B2-0", "x") == ("xd-violence", ("car accident", "shooting"))
    for k in range(2):
        np.save(tmp_path / f"Bad.Boys.1995__#00-26-51_00-27-53_label_B2-G-0__{k}.npy", np.ones((5, E), np.float32))
        np.save(tmp_path / f"Some.Film__#00-01-00_00-02-00_label_A__{k}.npy", np.ones((5, E), np.float32))
    videos = scan_dir(tmp_path)
    assert [(v.layout, v.classes, len(v.views)) for v in videos] == [
        ("xd-violence", ("shooting", "explosion"), 2), ("xd-violence", ("normal",), 2)]


def test_list_problems_are_one_line_naming_the_file(tmp_path):
    listed = _write_ucf(tmp_path, {"Abuse001_x264": "Abuse"}, views=2)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx,Abuse\n")
    with pytest.raises(UsageError, match=r"bad.csv: the first row must be the header 'path,label'"):
        read_list(bad, tmp_path)
    bad.write_text(f"path,label\n{AUTHORS}/Abuse/Abuse001_x264__0.npy,Kidnapping\n")
    with pytest.raises(UsageError, match=r"bad.csv row 2: label 'Kidnapping' is neither"):
        read_list(bad, tmp_path)
    with pytest.raises(MissingInputError, match=r"2 listed file\(s\) found neither as listed nor under"):
        read_list(listed, tmp_path / "elsewhere")


def test_average_to_length_is_vadclips_binned_mean():
    feat = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    out = average_to_length(feat, 4)  # bins [0,2) [2,5) [5,7) [7,10)
    np.testing.assert_allclose(out[:, 0], [0.5, 3.0, 5.5, 8.0])
    assert average_to_length(feat, 10) is feat


def test_balanced_batches_hold_normal_and_anomalous_videos():
    from stp_edge.model.train import RECIPES, FeatureVideo, _batches

    videos = [FeatureVideo(torch.ones(3, 2), None, label) for label in (0, 0, 0, 0, 1, 2, 3, 1, 0)]
    batches = _batches(videos, RECIPES["vadclip"], 2, np.random.default_rng(0))
    assert len(batches) == 2  # min(5 normal, 4 anomalous) // 2, the rest dropped as VadCLIP's drop_last
    for b in batches:
        assert sorted(videos[i].label == 0 for i in b) == [False, False, True, True]
    plain = _batches(videos, RECIPES["stp-edge"], 4, np.random.default_rng(0))
    assert sorted(i for b in plain for i in b) == list(range(9))


def test_separation_loss_is_the_mean_abs_cosine_to_normal():
    from stp_edge.model.train import separation_loss

    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    assert separation_loss(e).item() == pytest.approx((0 + 1 + 2**-0.5) / 3)


def test_frame_only_model_never_reads_regions():
    from stp_edge.config import STPromptConfig
    from stp_edge.model.stprompt import STPrompt

    torch.manual_seed(0)
    model = STPrompt(STPromptConfig.named("tiny", region_term=False)).eval()
    model.freeze_text()
    fe = torch.randn(1, 12, E)
    s0, _ = model.temporal(fe, None)
    s1, _ = model.temporal(fe, torch.randn(1, 12, 49, E))
    torch.testing.assert_close(s0, s1)
    full = STPrompt(STPromptConfig.named("tiny")).eval()
    with pytest.raises(ValueError, match="needs region_emb"):
        full.temporal(fe, None)


def test_train_vadclip_export_run_is_a_frame_only_vadclip_bundle(tmp_path, capsys, frames_factory):
    """train --format vadclip (tiny, a few steps) -> export -> run: the manifest says frame-only + VadCLIP's
    preprocessing and recipe, and the runtime's scores do not depend on the regions."""
    from stp_edge.api import Detector
    from stp_edge.bundle import Bundle
    from stp_edge.cli import main
    from stp_edge.export.bundle_export import export_bundle

    feats = tmp_path / "UCFClipFeatures"
    listed = _write_ucf(feats, UCF_VIDEOS, views=3)
    ckpt = tmp_path / "ckpt"
    assert main(["train", str(feats), "--format", "vadclip", "--list", str(listed), "--recipe", "vadclip",
                 "--config", "tiny", "--epochs", "2", "--batch-size", "2", "-o", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "trained on 6 videos (vadclip format, vadclip recipe) (frame-only model: region term off)" in out
    training = json.loads((ckpt / "training.json").read_text())
    assert training["format"] == "vadclip" and training["layout"] == "ucf-crime" and training["items"] == 18
    assert training["recipe"]["name"] == "vadclip" and training["recipe"]["max_len"] == 256
    assert training["lr"] == 2e-5 and training["region_term"] is False

    bundle = export_bundle(tmp_path / "m.stp", checkpoint=ckpt, progress=False)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["config"]["region_term"] is False and m["config"]["preprocess"] == "vadclip"
    assert m["preprocess"]["resize"] == [340, 256] and m["preprocess"]["mirror"] is True
    assert m["preprocess"]["crop"] == "center" and m["preprocess"]["size"] == 112
    assert m["source"]["training"]["recipe"]["name"] == "vadclip"
    assert "OFF: frame-only model" in Bundle.load(bundle).summary()  # what `stp-edge info` prints

    frames = frames_factory(16 * 6, seed=4, height=96, width=128)
    with Detector.load(bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
        results = [r for f in frames for r in det.push(f)] + det.flush()
        score, _ = det.offline_scores(frames)
        temporal = det.runners["temporal"].infer
        fe = np.random.default_rng(1).standard_normal((1, 6, E)).astype(np.float32)
        re = np.random.default_rng(2).standard_normal((1, 6, 49, E)).astype(np.float32)
        a = temporal({"frame_emb": fe, "region_emb": re})["score"]
        b = temporal({"frame_emb": fe, "region_emb": 3 * re + 1})["score"]
    assert [r.snippet for r in results] == list(range(6))
    np.testing.assert_allclose([r.score for r in results], score, atol=1e-5)
    np.testing.assert_array_equal(a, b)  # the region term is off in the deployed graph
    assert all(r.region_scores is not None for r in results)  # the spatial stream scores the encoder's regions


def test_vadclip_format_refuses_a_full_model_and_unknown_classes(tmp_path, capsys):
    from stp_edge.cli import main
    from stp_edge.config import STPromptConfig
    from stp_edge.model.stprompt import STPrompt
    from stp_edge.model.weights import save_stprompt

    feats = tmp_path / "f"
    listed = _write_ucf(feats, UCF_VIDEOS, views=1)
    full = tmp_path / "full"
    save_stprompt(STPrompt(STPromptConfig.named("tiny")), full)
    assert main(["train", str(feats), "--format", "vadclip", "--init", str(full), "-o", str(tmp_path / "o")]) == 2
    assert "region_term=True" in capsys.readouterr().err
    assert main(["train", str(feats), "--format", "vadclip", "--list", str(listed), "--config", "tiny",
                 "--classes", "normal,fighting", "-o", str(tmp_path / "o")]) == 2
    assert "classes ['abuse', 'arrest', 'road accident'] (ucf-crime) are not among" in capsys.readouterr().err


def test_a_multi_label_video_spreads_its_class_target():
    """XD-Violence's `B2-G-0`: the CE target is half shooting, half explosion (VadCLIP's normalised multi-hot)."""
    from stp_edge.model.train import mil_losses

    score = torch.tensor([0.1, 2.0, -1.0])
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0]] * 3)
    _, ce = mil_losses(score, logits, label=1, classes=(1, 2))
    logp = torch.log_softmax(logits[0], dim=0)
    assert ce.item() == pytest.approx(-(logp[1] + logp[2]).item() / 2)
    _, single = mil_losses(score, logits, label=1)
    assert single.item() == pytest.approx(-logp[1].item())
