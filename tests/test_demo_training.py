"""Demo-model training (stp_edge.demo.training) on a tiny budget, and the committed demo checkpoint."""

import json

import numpy as np
import pytest
import torch
from research_scripts import research_script

from stp_edge.demo.training import (
    AttentionMIL,
    DemoTrainSettings,
    check_sha256sums,
    demo_config,
    make_demo_videos,
    pseudo_labels,
    region_mil_losses,
    save_demo,
    self_training_losses,
    snippet_frame_indices,
    train_demo,
)
from stp_edge.model.weights import load_stprompt
from stp_edge.pipeline.snippets import SnippetAssembler

DEMO_MAX_BYTES = 10 * 1024 * 1024


@pytest.mark.parametrize(("num_frames", "k"), [(300, 1), (40, 1), (36, 2), (16, 1)])
def test_snippet_frame_indices_match_the_runtime_assembler(num_frames, k):
    asm = SnippetAssembler(16, k)
    frames = [np.full((2, 2, 3), (i % 256, i // 256, 0), np.uint8) for i in range(num_frames)]
    snippets = [s for f in frames if (s := asm.push(f)) is not None]
    tail = asm.flush()
    snippets += [tail] if tail is not None else []
    runtime = [[int(f[0, 0, 0]) + 256 * int(f[0, 0, 1]) for f in s.frames] for s in snippets]
    assert snippet_frame_indices(num_frames, 16, k) == runtime


def test_region_mil_losses_reward_the_right_regions():
    q = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    abnormal = torch.tensor([False, True, True])
    regions = q[0].repeat(4, 9, 1).clone()  # every region looks normal...
    regions[2, 5] = q[2]  # ...except one region of one snippet, which looks like class 2
    bce_anom, ce_anom = region_mil_losses(regions, q, abnormal, label=2, topk=1, temperature=0.07)
    bce_norm, _ = region_mil_losses(regions, q, abnormal, label=0, topk=1, temperature=0.07)
    _, ce_wrong = region_mil_losses(regions, q, abnormal, label=1, topk=1, temperature=0.07)
    assert bce_anom < 0.01 < bce_norm
    assert ce_anom < 0.01 < ce_wrong


def test_dense_normal_region_loss_covers_every_region():
    q = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    abnormal = torch.tensor([False, True, True])
    regions = torch.randn(4, 9, 8, generator=torch.Generator().manual_seed(2))
    dense, _ = region_mil_losses(regions, q, abnormal, label=0, topk=1, temperature=1.0, dense_normal=True)
    logits = torch.nn.functional.normalize(regions, dim=-1) @ q.T / 1.0
    p_abn = logits.softmax(-1)[..., 1:].sum(-1)
    torch.testing.assert_close(dense, -torch.log1p(-p_abn).mean())
    top1, _ = region_mil_losses(regions, q, abnormal, label=0, topk=1, temperature=1.0, dense_normal=False)
    torch.testing.assert_close(top1, -torch.log1p(-p_abn.max()))
    assert dense < top1  # the mean over all regions is below the worst region's loss
    # For an anomalous video the bag stays top-k, with or without dense_normal.
    a, _ = region_mil_losses(regions, q, abnormal, label=2, topk=1, temperature=1.0, dense_normal=True)
    b, _ = region_mil_losses(regions, q, abnormal, label=2, topk=1, temperature=1.0, dense_normal=False)
    torch.testing.assert_close(a, b)


def test_attention_mil_finds_the_one_instance_that_decides_the_bag():
    g = torch.Generator().manual_seed(0)
    dim, n, key = 16, 48, torch.zeros(16)
    key[:4] = 3.0  # far outside the N(0, I) instances

    def bag(positive: bool) -> tuple[torch.Tensor, int]:
        x = torch.randn(2, n // 2, dim, generator=g)  # [T=2 snippets, R2=24 regions, E]
        if positive:
            x[int(torch.randint(0, 2, (), generator=g)), int(torch.randint(0, n // 2, (), generator=g))] += key
        return x, int(positive)

    torch.manual_seed(0)
    head = AttentionMIL(dim, 2, hidden=16)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(800):
        x, y = bag(bool(torch.rand((), generator=g) < 0.5))
        loss = torch.nn.functional.cross_entropy(head(x)[None], torch.tensor([y]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        tests = [bag(k % 2 == 0) for k in range(40)]
        assert all(int(head(x).argmax()) == y for x, y in tests)
        x, _ = bag(True)
        h = x.reshape(-1, dim)
        a = head.attention(h)
        assert float(a[int(((h - key) ** 2).sum(-1).argmin())]) > 0.5  # the key instance dominates the pool


def test_attention_mil_term_trains_but_is_not_saved(tmp_path):
    settings = DemoTrainSettings(seed=5, num_frames=48, epochs=1, batch_size=2, attention_mil_weight=1.0)
    cfg = demo_config()
    train = make_demo_videos("train", 2, seed=5, cfg=cfg, settings=settings, progress=False)
    result = train_demo(settings, train=train, val=[], progress=False, log=None)
    assert result.history[0]["train_attention_ce"] > 0
    out = save_demo(result, tmp_path / "demo")
    assert set(load_stprompt(out).state_dict()) == set(result.model.state_dict())


def test_pseudo_labels_take_the_videos_own_high_and_low_snippets():
    s = np.array([0.05, 0.08, 0.3, 0.55, 0.9, 0.85, 0.1])
    # min-max normalised: 0, .035, .29, .59, 1, .94, .06 -> low end (<= 0.2) is 0, high half with score >= 0.5 is 1
    assert pseudo_labels(s).tolist() == [0, 0, -1, 1, 1, 1, 0]
    assert (pseudo_labels(s * 0.4) == -1).all()  # peak 0.36: the model has not found the event, no labels
    assert (pseudo_labels(np.array([0.9, np.nan, 0.1])) == -1).all()
    assert pseudo_labels(np.array([0.7, 0.2]), low=0.0, high=1.0).tolist() == [1, 0]


def test_self_training_losses_follow_the_pseudo_labels():
    logit = torch.tensor([-3.0, 4.0, 0.0], requires_grad=True)
    cls = torch.zeros(3, 6, requires_grad=True)
    log_abn = torch.log(torch.tensor([[0.01, 0.02], [0.9, 0.1], [0.5, 0.5]]))
    good = self_training_losses(logit, cls, log_abn, 2, np.array([0, 1, -1]))
    bad = self_training_losses(-logit, cls, log_abn, 2, np.array([0, 1, -1]))
    assert good["self_bce"] < 0.05 < bad["self_bce"]
    assert torch.isclose(good["self_ce"], torch.log(torch.tensor(6.0)))  # uniform class logits, one positive
    # self_region: only the regions of the negative snippet count: -log(1 - p) averaged over them.
    assert torch.isclose(good["self_region"], -torch.log(1 - torch.tensor([0.01, 0.02])).mean())
    good["self_ce"].backward()
    assert cls.grad[1].abs().sum() > 0 and cls.grad[0].abs().sum() == 0 and cls.grad[2].abs().sum() == 0
    none = self_training_losses(logit, cls, log_abn, 2, np.array([-1, -1, -1]))
    assert all(t.item() == 0 for t in none.values())
    assert "self_region_pos" not in good  # off by default
    # self_region_pos: the top-k regions of each positive snippet are abnormal: -log(mean of their shares).
    lab = log_abn.clone().requires_grad_(True)
    for k, expected in [(1, 0.9), (2, 0.5)]:
        pos = self_training_losses(logit, cls, lab, 2, np.array([0, 1, -1]), region_topk=k)
        assert torch.isclose(pos["self_region_pos"], -torch.log(torch.tensor(expected)))
    pos["self_region_pos"].backward()
    assert lab.grad[1].abs().sum() > 0 and lab.grad[0].abs().sum() == 0 and lab.grad[2].abs().sum() == 0
    assert self_training_losses(logit, cls, log_abn, 2, np.array([0, 0, -1]), region_topk=2)["self_region_pos"] == 0


def test_self_training_runs_with_the_models_own_labels():
    settings = DemoTrainSettings(seed=6, num_frames=96, epochs=4, batch_size=4, lr=1e-3, warmup_epochs=0.5,
                                 self_train_weight=1.0, self_train_start=0.5)
    train = make_demo_videos("train", 4, seed=6, cfg=demo_config(), settings=settings, progress=False)
    result = train_demo(settings, train=train, val=[], progress=False, log=None)
    assert "train_self_bce" not in result.history[1]  # epochs 0-1 only gather scores
    # From epoch 2 on, anomalous videos whose peak score reached 0.5 carry pseudo-label terms.
    late = result.history[2:]
    assert all("train_self_bce" in row for row in late) and max(row["train_self_bce"] for row in late) > 0


def test_tiny_training_run_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path):
    settings = DemoTrainSettings(seed=3, num_frames=96, epochs=8, batch_size=4, lr=1e-3, warmup_epochs=0.5,
                                 flip=False, photometric=0.0)
    cfg = demo_config()
    train = make_demo_videos("train", 4, seed=3, cfg=cfg, settings=settings, progress=False)
    val = make_demo_videos("val", 2, seed=3, cfg=cfg, settings=settings, progress=False)
    assert {v.label > 0 for v in train} == {False, True}
    assert all(v.images.shape == (6, 3, 112, 112) and v.images.abs().sum() > 0 for v in train)
    result = train_demo(settings, train=train, val=val, progress=False, log=None)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 8
    assert min(losses[-2:]) < 0.9 * losses[0], losses
    assert result.model.text_frozen

    out = save_demo(result, tmp_path / "demo")
    assert check_sha256sums(out) == []
    loaded = load_stprompt(out)
    assert loaded.text_frozen and loaded.cfg.spatial_queries == "class_prompts"
    images = val[0].images.float()
    with torch.no_grad():
        for a, b in zip(result.model(images), loaded(images), strict=True):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(result.model.spatial(result.model.regions(images)), loaded.spatial(
            loaded.regions(images)))
    log = json.loads((out / "training_log.json").read_text())
    assert log["best_epoch"] == result.best_epoch and len(log["history"]) == 8

    with open(out / "model.safetensors", "r+b") as fh:  # a flipped byte must be caught
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    assert check_sha256sums(out) == ["model.safetensors"]


def test_committed_demo_checkpoint_matches_its_sha256sums_and_loads():
    from stp_edge.model.sources import demo_checkpoint_dir

    demo = demo_checkpoint_dir()
    assert (demo / "SHA256SUMS").is_file(), f"{demo} has no SHA256SUMS"
    assert check_sha256sums(demo) == []
    assert (demo / "model.safetensors").stat().st_size <= DEMO_MAX_BYTES
    model = load_stprompt(demo)
    assert model.text_frozen
    assert model.cfg.spatial_queries == "class_prompts" and model.cfg.vision.image_size == 112
    assert model.class_features.abs().sum() > 0 and model.query_features.abs().sum() > 0
    assert "README.md" in {p.name for p in demo.iterdir()}


def test_supervised_reference_loss_plugs_into_train_demo_and_fits_the_boxes():
    """The diagnostic of research/demo_ceiling.py: train_demo(loss_fn=) really trains on frame labels + boxes."""
    supervised_batch_loss = research_script("demo_ceiling").supervised_batch_loss

    settings = DemoTrainSettings(seed=4, num_frames=96, epochs=8, batch_size=4, lr=1e-3, warmup_epochs=0.5,
                                 attention_mil_weight=0.0, self_train_weight=0.0, photometric=0.0)
    train = make_demo_videos("train", 4, seed=4, cfg=demo_config(), settings=settings, progress=False)
    assert any(v.snippet_labels.any() and np.isfinite(v.snippet_boxes).any() for v in train)
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return supervised_batch_loss(*args, **kwargs)

    result = train_demo(settings, train=train, val=[], progress=False, log=None, loss_fn=counted)
    assert len(calls) == 8  # one batch of 4 videos per epoch, all through the given loss
    first, last = result.history[0], result.history[-1]
    assert "train_attention_ce" not in last and "train_region_bce" in last
    assert last["train_region_bce"] < 0.7 * first["train_region_bce"], (first, last)
    assert last["train_ce"] < 0.7 * first["train_ce"], (first, last)
    assert last["train_bce"] < 0.9 * first["train_bce"], (first, last)
