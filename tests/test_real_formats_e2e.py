"""Issue 28's chain end to end on data written in each real format: VadCLIP's released-feature layout -> train ->
export -> `eval --format ucf-crime --boxes` on UCF-Crime's video and temporal-annotation layout with Liu & Ma's box
pickle -> AUC, AP and TIoU. Small generated data; no accuracy is claimed (random features, a tiny model)."""

from __future__ import annotations

import json

import pytest
from test_eval_real_formats import _ucf_crime_with_boxes
from test_vadclip import UCF_VIDEOS, _write_ucf

pytest.importorskip("torch", reason="training needs torch ([export] extra)")


def test_vadclip_features_train_export_and_eval_with_tiou(tmp_path, capsys):
    from stp_edge.cli import main

    feats = tmp_path / "UCFClipFeatures"
    listed = _write_ucf(feats, UCF_VIDEOS, views=2)
    ckpt, bundle = tmp_path / "ckpt", tmp_path / "m.stp"
    assert main(["train", str(feats), "--format", "vadclip", "--list", str(listed), "--recipe", "vadclip",
                 "--config", "tiny", "--epochs", "1", "--batch-size", "2", "-o", str(ckpt)]) == 0
    assert main(["export", "--checkpoint", str(ckpt), "-o", str(bundle), "-q"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["region_term"] is False and manifest["preprocess"]["resize"] == [340, 256]
    capsys.readouterr()

    videos, ann, pkl, n_boxes = _ucf_crime_with_boxes(tmp_path / "ucf")
    assert main(["eval", str(bundle), "--data", str(videos), "--format", "ucf-crime", "--annotations", str(ann),
                 "--boxes", str(pkl), "--backend", "ort-cpu"]) == 0
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{"):])
    assert res["counts"]["box_frames"] == n_boxes >= 2 and res["counts"]["frames"] == 96 + 80
    assert res["auc"] is not None and res["ap"] is not None
    assert res["tiou"] is not None and 0.0 <= res["tiou"] <= 1.0  # computed from the deployed model's boxes
