"""The PyTorch STPrompt reference: shapes, ViT-B/16 size, SA2, the banded adapter, both streams."""

import math

import pytest
import torch

from stp_edge.config import STPromptConfig, VisionConfig
from stp_edge.model.clip import CLIP
from stp_edge.model.regions import make_crops, pool_regions
from stp_edge.model.stprompt import STPrompt, banded_adapter_matrix, motion_energy, sa2


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = STPrompt(STPromptConfig.named("tiny")).eval()
    model.freeze_text()
    return model


def test_vit_b16_parameter_count_and_shapes():
    cfg = STPromptConfig()
    torch.manual_seed(0)
    clip = CLIP(cfg.vision, cfg.text).eval()
    n = sum(p.numel() for p in clip.visual.parameters())
    assert 85.5e6 < n < 86.5e6, n  # CLIP ViT-B/16 visual tower: 86.19M
    with torch.no_grad():
        frame, patches = clip.visual(torch.randn(1, 3, 224, 224))
    assert frame.shape == (1, 512)
    assert patches.shape == (1, 196, 512)
    assert torch.isfinite(patches).all() and patches.std() > 0


def test_motion_energy_matches_definition_and_is_one_sided_at_ends():
    torch.manual_seed(1)
    f = torch.randn(2, 5, 3, 8)
    mo = motion_energy(f)
    t = 2
    expect = (2 * f[:, t] - f[:, t - 1] - f[:, t + 1]).norm(dim=-1)
    torch.testing.assert_close(mo[:, t], expect)
    torch.testing.assert_close(mo[:, 0], (f[:, 0] - f[:, 1]).norm(dim=-1))
    torch.testing.assert_close(mo[:, -1], (f[:, -1] - f[:, -2]).norm(dim=-1))
    assert motion_energy(f[:, :1]).abs().max() == 0  # a single snippet has no motion


def test_sa2_uses_only_the_topk_moving_regions():
    torch.manual_seed(2)
    frame = torch.randn(1, 3, 4)
    regions = torch.randn(1, 3, 5, 4) * 0.01
    regions[:, 1, 2] += 5.0  # region 2 moves strongly at snippet 1
    out = sa2(frame, regions, topk=1)
    torch.testing.assert_close(out[0, 1], frame[0, 1] + regions[0, 1, 2])
    # changing a region that is not among the top-k leaves the output unchanged
    regions2 = regions.clone()
    mo = motion_energy(regions)[0, 1]
    quiet = int(mo.argmin())
    regions2[0, 1, quiet] += 1e-4
    torch.testing.assert_close(sa2(frame, regions2, topk=1)[0, 1], out[0, 1])


def test_banded_adapter_matrix():
    a = banded_adapter_matrix(30, sigma=1.0, radius=9)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(30))
    assert a[15, 15 + 10] == 0 and a[15, 15 + 9] > 0
    assert a[15, 16] / a[15, 15] == pytest.approx(math.exp(-1.0), rel=1e-5)
    assert STPromptConfig().adapter_radius == 9  # exp(-9) > 1e-4 > exp(-10)


def test_streaming_window_equals_whole_video(tiny):
    cfg = tiny.cfg
    torch.manual_seed(3)
    t_len, c = 30, cfg.context
    f = torch.randn(1, t_len, cfg.vision.embed_dim)
    r = torch.randn(1, t_len, cfg.num_regions, cfg.vision.embed_dim)
    with torch.no_grad():
        full, probs = tiny.temporal(f, r)
        for t in range(t_len):
            lo, hi = max(0, t - c), min(t_len, t + c + 1)
            s, p = tiny.temporal(f[:, lo:hi], r[:, lo:hi])
            assert abs(float(s[0, t - lo] - full[0, t])) < 1e-5
            torch.testing.assert_close(p[0, t - lo], probs[0, t], atol=1e-5, rtol=1e-5)


def test_temporal_outputs_are_probabilities(tiny):
    cfg = tiny.cfg
    torch.manual_seed(4)
    f = torch.randn(2, 7, cfg.vision.embed_dim)
    r = torch.randn(2, 7, cfg.num_regions, cfg.vision.embed_dim)
    with torch.no_grad():
        score, probs = tiny.temporal(f, r)
    assert score.shape == (2, 7) and probs.shape == (2, 7, cfg.num_classes)
    assert ((score > 0) & (score < 1)).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 7))


def test_spatial_stream_scores_regions_near_abnormal_queries_higher(tiny):
    q = tiny.query_features
    abnormal = q[tiny.query_is_abnormal][0]
    normal = q[~tiny.query_is_abnormal][0]
    regions = torch.stack([abnormal, normal, 0.5 * (abnormal + normal)])[None]
    with torch.no_grad():
        s = tiny.spatial(regions)[0]
    assert s.shape == (3,)
    assert s[0] > s[2] > s[1]
    assert ((s >= 0) & (s <= 1)).all()


def test_regions_tokens_and_crops_modes():
    torch.manual_seed(5)
    patches = torch.randn(2, 49, 6)
    pooled = pool_regions(patches, grid=7, r=7)
    torch.testing.assert_close(pooled, patches)
    p2 = pool_regions(torch.randn(1, 16, 3), grid=4, r=2)
    assert p2.shape == (1, 4, 3)
    images = torch.rand(2, 3, 112, 112)
    crops = make_crops(images, 3)
    assert crops.shape == (18, 3, 112, 112)
    # the first crop of image 0 is its top-left 56x56 window scaled x2: block means are preserved
    torch.testing.assert_close(crops[0].mean(), images[0, :, :56, :56].mean(), atol=1e-3, rtol=1e-3)
    cfg = STPromptConfig.named("tiny", region_mode="crops", region_grid=3)
    model = STPrompt(cfg).eval()
    with torch.no_grad():
        assert model.regions(images).shape == (2, 9, cfg.vision.embed_dim)


def test_conv_stem_keeps_the_token_grid_and_validates():
    from stp_edge.model.clip import VisionTransformer

    cfg = VisionConfig(image_size=112, patch_size=16, width=32, layers=1, heads=2, embed_dim=16, stem="conv")
    vit = VisionTransformer(cfg).eval()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    frame, patch = vit(x)
    assert frame.shape == (2, 16) and patch.shape == (2, 49, 16)
    strides = [m.stride[0] for m in vit.stem if isinstance(m, torch.nn.Conv2d)]
    assert strides == [2, 2, 2, 2, 1]  # log2(16) stride-2 convs, then the 1x1 projection
    assert not hasattr(vit, "conv1")
    with pytest.raises(ValueError, match="stem"):
        STPromptConfig.named("tiny", vision=VisionConfig(image_size=96, patch_size=12, stem="conv"))
    with pytest.raises(ValueError, match="stem"):
        STPromptConfig.named("tiny", vision=VisionConfig(image_size=112, patch_size=16, stem="cnn"))


@pytest.mark.parametrize(("centred", "expected_offset"), [(False, -7.5), (True, 0.5)])
def test_conv_stem_receptive_field_centre(centred, expected_offset):
    """Token (i, j)'s receptive field, measured by the input gradient of an all-ones stem, is centred on the
    corner of its cell with the plain conv stem and on the cell's centre with stem_centred."""
    from stp_edge.model.clip import conv_stem

    stem = conv_stem(16, 4, 8, centred=centred).eval()
    for m in stem.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.ones_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(0)) + 0.5  # every ReLU stays open
    x.requires_grad_(True)
    out = stem(x)
    assert out.shape == (1, 8, 7, 7)
    pix = torch.arange(112, dtype=torch.float64)
    # Cells away from the border: there the gradient is symmetric about the receptive field's centre (at the
    # border zero padding cuts it). The cell's centre is pixel index 16k + 7.5.
    for i, j in [(3, 3), (5, 2)]:
        (g,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
        w = g[0].abs().sum(0).double()  # [H, W]
        cy = float((w.sum(1) * pix).sum() / w.sum())
        cx = float((w.sum(0) * pix).sum() / w.sum())
        assert cy == pytest.approx(16 * i + 7.5 + expected_offset, abs=1e-6)
        assert cx == pytest.approx(16 * j + 7.5 + expected_offset, abs=1e-6)
    with pytest.raises(ValueError, match="stem_centred"):
        STPromptConfig.named("tiny", vision=VisionConfig(stem="patch", stem_centred=True))


@pytest.mark.parametrize("radius", [0, 1])
def test_local_patch_attention_keeps_patch_features_local(radius):
    """patch_attention=r: a pixel change moves only the patch features near it; the class token still sees it."""
    from stp_edge.model.clip import VisionTransformer

    def features(cfg, x):
        torch.manual_seed(0)
        vit = VisionTransformer(cfg).eval()
        with torch.no_grad():
            return vit(x)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 112, 112, generator=g)
    y = x.clone()
    y[:, :, :16, :16] += torch.randn(1, 3, 16, 16, generator=g)  # change patch (0, 0) only
    # Which tokens may move: the conv stem's receptive field (31 px) reaches the neighbouring patches, then
    # `radius` more grid steps per layer.
    layers = 2
    reach = 1 + radius * layers
    ij = torch.stack(torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij"), -1).reshape(-1, 2)
    far = ij.amax(-1) > reach
    base = dict(image_size=112, patch_size=16, width=32, layers=layers, heads=2, embed_dim=16, stem="conv")
    (fx, px), (fy, py) = (features(VisionConfig(**base, patch_attention=radius), v) for v in (x, y))
    moved = (px - py).abs().amax(-1)[0]
    assert far.sum() > 0 and moved[far].max() == 0  # exactly unchanged, not merely small
    assert moved[~far].max() > 1e-3 and (fx - fy).abs().max() > 1e-3
    (_, qx), (_, qy) = (features(VisionConfig(**base), v) for v in (x, y))  # CLIP's global attention
    assert (qx - qy).abs().amax(-1)[0][far].min() > 1e-4
    with pytest.raises(ValueError, match="patch_attention"):
        STPromptConfig.named("tiny", vision=VisionConfig(**{**base, "patch_attention": -2}))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="region_grid"):
        STPromptConfig(region_grid=5)
    with pytest.raises(ValueError, match="region_mode"):
        STPromptConfig(region_mode="pixels")
    cfg = STPromptConfig.named("tiny")
    assert STPromptConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown STPromptConfig fields"):
        STPromptConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_exp_adapter_matrix_is_near_uniform_on_its_window():
    """softmax(exp(-|i-j|/sigma)): rows sum to 1, zero beyond the window, weights in [1, e] before normalising."""
    a = banded_adapter_matrix(30, sigma=1.0, radius=8, form="exp")
    torch.testing.assert_close(a.sum(dim=1), torch.ones(30))
    assert a[15, 15 + 9] == 0 and a[15, 15 + 8] > 0
    assert a[15, 15] / a[15, 15 + 8] == pytest.approx(math.exp(1 - math.exp(-8.0)), rel=1e-5)
    assert a[15, 16] / a[15, 15] == pytest.approx(math.exp(math.exp(-1.0) - 1), rel=1e-5)
    cfg = STPromptConfig(adapter_form="exp", adapter_window=8)
    assert cfg.adapter_radius == 8 and cfg.context == 1 + 2 * 8
    with pytest.raises(ValueError, match="adapter_form must be one of"):
        STPromptConfig(adapter_form="gauss")


@pytest.mark.parametrize(("form", "banded"), [("distance", True), ("exp", False)])
def test_only_the_distance_form_is_banded(form, banded):
    """Dropping weights beyond the radius changes the distance form's output by < tol-scale, the exp form's not."""
    from stp_edge.model.stprompt import adapter_matrix

    cfg = STPromptConfig.named("tiny", adapter_form=form, adapter_window=4)
    t = 40
    windowed = adapter_matrix(t, cfg)
    whole = banded_adapter_matrix(t, cfg.adapter_sigma, t, form=form)  # radius t: nothing dropped
    x = torch.randn(t, 8, generator=torch.Generator().manual_seed(0))
    err = float((windowed @ x - whole @ x).abs().max())
    assert (err < 1e-3) == banded, err
