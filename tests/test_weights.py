"""Checkpoint formats: OpenAI CLIP (TorchScript archive as released, plain state_dict) and STPrompt safetensors."""

import pytest
import torch

from stp_edge.config import STPromptConfig
from stp_edge.model.clip import CLIP
from stp_edge.model.stprompt import STPrompt
from stp_edge.model.weights import (
    CheckpointError,
    infer_clip_config,
    load_state_dict_strict,
    load_stprompt,
    read_clip_state_dict,
    save_stprompt,
)


def _write_openai_archive(clip: CLIP, path):
    """A random-weight checkpoint in OpenAI's released layout: a TorchScript archive of the whole model."""
    cfg = clip.vision_cfg
    images = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    tokens = torch.randint(1, 1000, (1, clip.text_cfg.context_length))
    tokens[0, 5] = 49407
    traced = torch.jit.trace(clip, (images, tokens), check_trace=False)
    traced.save(str(path))
    return images, tokens


def _check_reload(clip, path, images, tokens):
    sd = read_clip_state_dict(path)
    vision, text = infer_clip_config(sd)
    assert vision == clip.vision_cfg and text == clip.text_cfg
    clip2 = CLIP(vision, text).eval()
    load_state_dict_strict(clip2, sd, str(path))
    with torch.no_grad():
        for a, b in zip(clip(images, tokens), clip2(images, tokens), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _tiny_clip():
    cfg = STPromptConfig.named("tiny")
    torch.manual_seed(0)
    return CLIP(cfg.vision, cfg.text).eval()


def test_openai_torchscript_archive_round_trip_tiny(tmp_path):
    clip = _tiny_clip()
    images, tokens = _write_openai_archive(clip, tmp_path / "tiny.pt")
    _check_reload(clip, tmp_path / "tiny.pt", images, tokens)


@pytest.mark.slow
def test_openai_torchscript_archive_round_trip_vit_b16(tmp_path):
    cfg = STPromptConfig()
    torch.manual_seed(0)
    clip = CLIP(cfg.vision, cfg.text).eval()
    images, tokens = _write_openai_archive(clip, tmp_path / "ViT-B-16.pt")
    _check_reload(clip, tmp_path / "ViT-B-16.pt", images, tokens)


def test_plain_state_dict_round_trip(tmp_path):
    clip = _tiny_clip()
    torch.save(clip.state_dict(), tmp_path / "sd.pt")
    images = torch.randn(2, 3, 112, 112)
    tokens = torch.randint(1, 1000, (2, 32))
    tokens[:, 7] = 49407
    _check_reload(clip, tmp_path / "sd.pt", images, tokens)


def test_pickled_python_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"visual.conv1.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        read_clip_state_dict(tmp_path / "evil.pt")


def test_key_errors_name_key_and_shapes(tmp_path):
    clip = _tiny_clip()
    sd = clip.state_dict()
    bad = dict(sd)
    bad["visual.proj"] = torch.randn(128, 32)
    expect = r"'visual.proj': checkpoint shape \(128, 32\) != model shape \(128, 64\)"
    with pytest.raises(CheckpointError, match=expect):
        load_state_dict_strict(clip, bad, "ckpt")
    missing = {k: v for k, v in sd.items() if k != "ln_final.bias"}
    with pytest.raises(CheckpointError, match=r"missing key 'ln_final.bias' \(model expects shape \(64,\)\)"):
        load_state_dict_strict(clip, missing, "ckpt")
    extra = {**sd, "visual.extra": torch.ones(3)}
    with pytest.raises(CheckpointError, match=r"unexpected key 'visual.extra' \(checkpoint shape \(3,\)\)"):
        load_state_dict_strict(clip, extra, "ckpt")
    with pytest.raises(CheckpointError, match="no key 'visual.conv1.weight'"):
        infer_clip_config({"foo": torch.ones(1)})


def test_stprompt_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = STPrompt(STPromptConfig.named("tiny")).eval()
    model.freeze_text()
    out = save_stprompt(model, tmp_path / "ckpt")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    loaded = load_stprompt(out)
    assert loaded.text_frozen and loaded.cfg == model.cfg
    f = torch.randn(1, 6, 64)
    r = torch.randn(1, 6, 49, 64)
    with torch.no_grad():
        for a, b in zip(model.temporal(f, r), loaded.temporal(f, r), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_stprompt_checkpoint_without_text_tower(tmp_path):
    torch.manual_seed(0)
    model = STPrompt(STPromptConfig.named("tiny", spatial_queries="class_prompts")).eval()
    with pytest.raises(ValueError, match="frozen text features"):
        save_stprompt(model, tmp_path / "x", text_tower=False)
    model.freeze_text()
    full = save_stprompt(model, tmp_path / "full")
    small = save_stprompt(model, tmp_path / "small", text_tower=False)
    assert (small / "model.safetensors").stat().st_size < 0.5 * (full / "model.safetensors").stat().st_size
    loaded = load_stprompt(small)
    r = torch.randn(2, 49, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.spatial(r), loaded.spatial(r), rtol=0, atol=0)
    torch.testing.assert_close(loaded.query_features, loaded.class_features)
