from __future__ import annotations

import numpy as np
import pytest

from stp_edge.geometry import bilinear_matrix, crop_windows
from stp_edge.pipeline.encode import make_crops, pool_regions


def test_pool_regions_matches_a_loop():
    rng = np.random.default_rng(0)
    grid, R, E = 14, 7, 5
    x = rng.normal(size=(2, grid * grid, E)).astype(np.float32)
    out = pool_regions(x, grid, R)
    assert out.shape == (2, R * R, E)
    tokens = x.reshape(2, grid, grid, E)
    k = grid // R
    for i in range(R):
        for j in range(R):
            ref = tokens[:, i * k:(i + 1) * k, j * k:(j + 1) * k].mean(axis=(1, 2))
            np.testing.assert_allclose(out[:, i * R + j], ref, rtol=1e-6)
    with pytest.raises(ValueError, match="R=4 must divide the patch grid 14"):
        pool_regions(x, grid, 4)
    with pytest.raises(ValueError, match="expected grid\\*grid=144"):
        pool_regions(x, 12, 3)


def test_crop_windows_hand_checked():
    assert crop_windows(224, 3) == [(y, x, 112) for y in (0, 56, 112) for x in (0, 56, 112)]
    w = crop_windows(224, 2)  # side round(149.33) = 149, stride round(74.67) = 75
    assert w == [(0, 0, 149), (0, 75, 149), (75, 0, 149), (75, 75, 149)]
    for S, R in [(224, 3), (224, 4), (112, 7), (32, 3), (30, 4)]:
        ws = crop_windows(S, R)
        assert len(ws) == R * R and all(y + s <= S and x + s <= S for y, x, s in ws)


def test_bilinear_matrix_against_torch():
    torch = pytest.importorskip("torch")
    for n_in, n_out in [(112, 224), (16, 32), (149, 224), (7, 5)]:
        m = bilinear_matrix(n_in, n_out)
        np.testing.assert_allclose(m.sum(axis=1), 1.0)
        x = np.random.default_rng(n_in).normal(size=(n_in, n_in))
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=(n_out, n_out),
                                              mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(m @ x @ m.T, ref, atol=1e-12)


def test_make_crops_against_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    crops = make_crops(images, 3)
    assert crops.shape == (18, 3, 32, 32) and crops.dtype == np.float32
    windows = crop_windows(32, 3)
    for b in range(2):
        for r, (y, x, s) in enumerate(windows):
            window = torch.from_numpy(images[b:b + 1, :, y:y + s, x:x + s])
            ref = torch.nn.functional.interpolate(window, size=(32, 32), mode="bilinear", align_corners=False)
            np.testing.assert_allclose(crops[b * 9 + r], ref[0].numpy(), atol=1e-5)


def test_crops_are_the_default_around_pretrained_vit_b_16_weights():
    """ViT-B/16 + pretrained CLIP weights -> crops 3x3 of the whole frame, recorded in the model source; tokens and
    centre crops stay options."""
    from stp_edge.config import PRETRAINED_REGIONS, STPromptConfig, pretrained_overrides
    from stp_edge.export.bundle_export import _source

    assert STPromptConfig.named("vit-b-16").region_mode == "tokens"  # no weights: the preset as it is
    assert pretrained_overrides("vit-b-16", None) == PRETRAINED_REGIONS == {"region_mode": "crops", "region_grid": 3,
                                                                            "region_extent": "frame"}
    assert pretrained_overrides("vit-b-16", {"region_mode": "tokens"}) == {"region_mode": "tokens"}
    tiny_clip = {"vision": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "heads": 2, "embed_dim": 32}}
    assert pretrained_overrides("vit-b-16", tiny_clip) == tiny_clip  # another encoder keeps tokens
    assert pretrained_overrides("tiny", None) == {}
    src = _source(None, "ViT-B-16.pt", False, "vit-b-16", 0, None)
    assert src.overrides == {"region_mode": "crops", "region_grid": 3, "region_extent": "frame"}
    assert STPromptConfig.named(src.config, **src.overrides).num_regions == 9
    assert _source(None, None, False, "vit-b-16", 0, None).overrides == {}  # random weights: unchanged
