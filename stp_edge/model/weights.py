"""Weights: OpenAI CLIP checkpoints (released TorchScript archives or plain state_dicts) and STPrompt checkpoints.

Nothing here unpickles arbitrary Python: plain checkpoints go through `torch.load(weights_only=True)`; OpenAI's
released `.pt` files are TorchScript archives, read by `torch.jit.load`, whose C++ unpickler only rebuilds
TorchScript types and tensors. STPrompt checkpoints are safetensors plus a JSON config.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from stp_edge.config import STPromptConfig, TextConfig, VisionConfig
from stp_edge.errors import MissingInputError, StpEdgeError, UsageError

# Metadata tensors in OpenAI's archives that are not parameters.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_CONFIG = "config.json"


class CheckpointError(StpEdgeError, ValueError):
    """A checkpoint does not match the model: names the key(s) and the shapes."""


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or n.endswith("/code/") or "/code/" in n for n in zf.namelist())


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an OpenAI CLIP checkpoint (TorchScript archive as released, or a state_dict file) to a state_dict."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"CLIP checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    elif _is_torchscript_archive(path):
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(sd, Mapping) and "state_dict" in sd:
            sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict mapping, got {type(sd).__name__}")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    # attn_mask is the text tower's causal mask, stored as a tensor in traced archives; we rebuild it.
    keep = {k: v for k, v in sd.items() if k not in _OPENAI_EXTRA_KEYS and not k.endswith("attn_mask")}
    return {k: v.float() if v.is_floating_point() else v for k, v in keep.items()}


def _count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.attn\.in_proj_weight$")
    ids = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(ids) + 1 if ids else 0


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"CLIP state_dict has no key {key!r}; is this an OpenAI-layout CLIP checkpoint?")
    return sd[key]


def infer_clip_config(sd: Mapping[str, torch.Tensor]) -> tuple[VisionConfig, TextConfig]:
    """ViT and text-tower configs from tensor shapes (heads = width / 64, OpenAI's convention)."""
    conv = _need(sd, "visual.conv1.weight")
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((_need(sd, "visual.positional_embedding").shape[0] - 1) ** 0.5)
    vision = VisionConfig(image_size=patch * grid, patch_size=patch, width=width,
                          layers=_count_blocks(sd, "visual.transformer.resblocks."),
                          heads=max(1, width // 64), embed_dim=_need(sd, "visual.proj").shape[1])
    t_width = _need(sd, "ln_final.weight").shape[0]
    text = TextConfig(context_length=_need(sd, "positional_embedding").shape[0],
                      vocab_size=_need(sd, "token_embedding.weight").shape[0], width=t_width,
                      layers=_count_blocks(sd, "transformer.resblocks."), heads=max(1, t_width // 64))
    return vision, text


def load_state_dict_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `sd` into `module`; any missing, unexpected or mis-shaped key raises CheckpointError naming it."""
    own = module.state_dict()
    problems = []
    for k in sorted(set(own) - set(sd)):
        problems.append(f"missing key {k!r} (model expects shape {tuple(own[k].shape)})")
    for k in sorted(set(sd) - set(own)):
        problems.append(f"unexpected key {k!r} (checkpoint shape {tuple(sd[k].shape)})")
    for k in sorted(set(own) & set(sd)):
        if own[k].shape != sd[k].shape:
            problems.append(
                f"key {k!r}: checkpoint shape {tuple(sd[k].shape)} != model shape {tuple(own[k].shape)}"
            )
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{source} does not match the model:\n  {shown}")
    module.load_state_dict(dict(sd), strict=True)


def load_clip_into(model, path: str | Path) -> None:
    """Load OpenAI CLIP weights into an STPrompt's `clip` submodule (configs must agree)."""
    sd = read_clip_state_dict(path)
    load_state_dict_strict(model.clip, sd, f"CLIP checkpoint {path}")


def _is_text_tower_key(key: str) -> bool:
    return key.startswith("clip.") and not key.startswith("clip.visual.")


def save_stprompt(model, out_dir: str | Path, *, text_tower: bool = True) -> Path:
    """Write `model.safetensors` + `config.json` (config and whether text features are frozen).

    With `text_tower=False` (only for frozen text features) the CLIP text tower is left out: inference and
    export use the baked class/query features alone, and the file shrinks by the token embedding table.
    """
    from safetensors.torch import save_file

    if not text_tower and not model.text_frozen:
        raise UsageError("text_tower=False needs frozen text features (call model.freeze_text() first)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
               if text_tower or not _is_text_tower_key(k)}
    save_file(tensors, str(out / CHECKPOINT_WEIGHTS))
    meta = {"format": "stp-edge/stprompt", "version": 1, "text_frozen": model.text_frozen,
            "text_tower": text_tower, "config": model.cfg.to_dict()}
    (out / CHECKPOINT_CONFIG).write_text(json.dumps(meta, indent=2))
    return out


def load_stprompt(path: str | Path, tokenizer=None):
    """Load an STPrompt checkpoint directory written by `save_stprompt`."""
    from safetensors.torch import load_file

    from stp_edge.model.stprompt import STPrompt

    path = Path(path)
    cfg_file, w_file = path / CHECKPOINT_CONFIG, path / CHECKPOINT_WEIGHTS
    for f in (cfg_file, w_file):
        if not f.is_file():
            raise MissingInputError(f"STPrompt checkpoint {path} has no {f.name}")
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != "stp-edge/stprompt":
        raise CheckpointError(f"{cfg_file}: field 'format' is {meta.get('format')!r}, expected 'stp-edge/stprompt'")
    model = STPrompt(STPromptConfig.from_dict(meta["config"]), tokenizer=tokenizer)
    sd = load_file(str(w_file))
    if not meta.get("text_tower", True):
        # The text tower was left out on purpose (its features are baked in). Its unused weights are zeros, not
        # the fresh random init, so loading the same checkpoint twice gives the same weights fingerprint.
        own = model.state_dict()
        sd = {**{k: torch.zeros_like(v) for k, v in own.items() if _is_text_tower_key(k)}, **sd}
    load_state_dict_strict(model, sd, f"STPrompt checkpoint {w_file}")
    model.text_frozen = bool(meta.get("text_frozen", False))
    return model.eval()
