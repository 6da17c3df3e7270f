"""Where an exported model comes from: a checkpoint, the demo model, or seeded random weights.

The demo model's weights are the separate `stp-edge-demo-model` distribution (demo_model/ in the repository).

The manifest records the source and a fingerprint of the weights so `verify` can rebuild the exact torch
reference (or say that it cannot).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stp_edge.config import STPromptConfig
from stp_edge.demo import demo_checkpoint_dir


@dataclass
class ModelSource:
    """How to (re)build the torch model of a bundle."""

    kind: str  # "checkpoint" | "demo" | "random"
    checkpoint: str | None = None
    clip_weights: str | None = None
    config: str | None = None
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {})}

    @classmethod
    def from_manifest(cls, d: dict[str, Any]) -> ModelSource:
        known = {k: d[k] for k in ("kind", "checkpoint", "clip_weights", "config", "seed", "overrides") if k in d}
        return cls(**known)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every state_dict tensor (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_model(source: ModelSource):
    """Instantiate the STPrompt described by `source`, eval mode, text features frozen."""
    from stp_edge.model.stprompt import STPrompt
    from stp_edge.model.weights import load_clip_into, load_stprompt

    if source.kind == "random":
        cfg = STPromptConfig.named(source.config or "tiny", **source.overrides)
        torch.manual_seed(source.seed)
        model = STPrompt(cfg)
    elif source.kind in ("checkpoint", "demo"):
        path = Path(source.checkpoint) if source.kind == "checkpoint" else demo_checkpoint_dir()
        if source.kind == "demo" and not (path / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"the demo model's weights are missing ({path}); rebuild them with "
                "`python scripts/train_demo.py --out demo_model/stp_edge_demo_model`"
            )
        model = load_stprompt(path)
    else:
        raise ValueError(f"unknown model source kind {source.kind!r}; expected checkpoint, demo or random")
    if source.clip_weights:
        load_clip_into(model, source.clip_weights)
        model.text_frozen = False  # new CLIP text weights change the class and query features
    model.eval()
    if not model.text_frozen:
        model.freeze_text()
    return model
