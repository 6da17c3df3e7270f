"""Weak supervision: top-k MIL losses and a training loop that overfits a tiny synthetic feature set."""

import numpy as np
import pytest
import torch

from stp_edge.config import STPromptConfig
from stp_edge.metrics import rank_auc
from stp_edge.model.stprompt import STPrompt
from stp_edge.model.train import (
    FeatureVideo,
    load_feature_dir,
    mil_losses,
    snippet_scores,
    topk_count,
    train_on_features,
)


def _synthetic_videos(cfg, n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    e, r2 = cfg.vision.embed_dim, cfg.num_regions
    normal = torch.randn(e, generator=g)
    anomaly = torch.randn(cfg.num_classes, e, generator=g)
    videos, snippet_labels = [], []
    for i in range(n):
        t = int(torch.randint(12, 30, (1,), generator=g))
        label = i % cfg.num_classes
        fe = normal + 0.5 * torch.randn(t, e, generator=g)
        re = normal + 0.5 * torch.randn(t, r2, e, generator=g)
        y = np.zeros(t, dtype=int)
        if label:
            s = int(torch.randint(0, t - 5, (1,), generator=g))
            fe[s : s + 5] += 2.0 * anomaly[label]
            re[s : s + 5, :4] += 2.0 * anomaly[label]
            y[s : s + 5] = 1
        videos.append(FeatureVideo(fe, re, label))
        snippet_labels.append(y)
    return videos, snippet_labels


def test_topk_and_losses():
    assert topk_count(15) == 1 and topk_count(16) == 2 and topk_count(40) == 3
    score = torch.tensor([-5.0, 4.0, -5.0, -5.0])
    logits = torch.tensor([[1.0, 0.0], [0.0, 6.0], [1.0, 0.0], [1.0, 0.0]])
    bce_right, ce_right = mil_losses(score, logits, label=1)
    bce_wrong, ce_wrong = mil_losses(score, logits, label=0)
    assert bce_right < 0.05 < bce_wrong
    assert ce_right < 0.01 < ce_wrong


def test_training_overfits_tiny_feature_set():
    torch.manual_seed(0)
    cfg = STPromptConfig.named("tiny")
    model = STPrompt(cfg)
    videos, labels = _synthetic_videos(cfg, n=12)
    before = rank_auc(np.concatenate(labels), np.concatenate(snippet_scores(model, videos)))
    history = train_on_features(model, videos, epochs=80, lr=3e-3, progress=False)
    assert history[-1] < 0.5 * history[0]
    after = rank_auc(np.concatenate(labels), np.concatenate(snippet_scores(model, videos)))
    assert after == 1.0, (before, after)
    assert model.text_frozen  # training ends with the text features baked for export


def test_feature_dir_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", frame_emb=rng.normal(size=(5, 8)), region_emb=rng.normal(size=(5, 4, 8)), label=2)
    videos = load_feature_dir(tmp_path)
    assert len(videos) == 1 and videos[0].label == 2 and videos[0].region_emb.shape == (5, 4, 8)
    np.savez(tmp_path / "b.npz", frame_emb=rng.normal(size=(5, 8)), label=0)
    with pytest.raises(ValueError, match=r"b\.npz: missing arrays \['region_emb'\]"):
        load_feature_dir(tmp_path)
