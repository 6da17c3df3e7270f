"""Where a PyTorch STPrompt comes from: a checkpoint, the demo model, or seeded random weights.

A bundle's manifest records its `ModelSource` and a fingerprint of the weights, so `verify`, the torch backend
and the benchmarks can rebuild the exact torch reference (or say that they cannot). The demo model's weights are
the separate `stp-edge-demo-model` distribution (demo_model/ in the repository).

torch is imported inside the functions that need it: `demo_checkpoint_dir` and `ModelSource` work without it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stp_edge._deps import MissingDependencyError, require
from stp_edge.config import STPromptConfig
from stp_edge.errors import MissingInputError, UsageError

if TYPE_CHECKING:
    import torch


def demo_checkpoint_dir() -> Path:
    """The demo model's checkpoint directory, from the separate `stp-edge-demo-model` distribution.

    Raises:
        MissingDependencyError: that distribution is not installed (`make venv` installs it).
    """
    try:
        import stp_edge_demo_model
    except ImportError as exc:
        raise MissingDependencyError(
            "the demo model is a separate package, stp-edge-demo-model, and it is not installed: "
            "pip install ./demo_model (from a checkout of stp-edge; `make venv` does it)") from exc
    return stp_edge_demo_model.checkpoint_dir()


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
        """The fields that are set, as the manifest records them."""
        return {k: v for k, v in self.__dict__.items() if v not in (None, {})}

    @classmethod
    def from_manifest(cls, d: dict[str, Any]) -> ModelSource:
        """The source a manifest's `source` entry describes (other keys, such as the fingerprint, ignored)."""
        known = {k: d[k] for k in ("kind", "checkpoint", "clip_weights", "config", "seed", "overrides") if k in d}
        return cls(**known)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every state_dict tensor (name, dtype, shape, bytes), in name order."""
    torch = require("torch", "the PyTorch model")
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


QUERY_FIELDS = ("normal_queries", "abnormal_queries")
"""The config fields a trained model's source may override: the spatial stream is training-free, so its text
queries can be chosen at export (`stp-edge export --queries FILE`)."""


def set_queries(model: Any, overrides: dict[str, Any], checkpoint: Path) -> None:
    """Give a loaded model other spatial text queries (`QUERY_FIELDS` of `overrides`), encoded by its own text tower.

    Raises:
        UsageError: another field is overridden, the model scores regions with its class prompts, or its checkpoint
            was saved without the text tower that would encode the new queries.
    """
    import json

    torch = require("torch", "the PyTorch model")
    from stp_edge.model.tokenizer import default_tokenizer
    from stp_edge.model.weights import CHECKPOINT_CONFIG

    other = sorted(set(overrides) - set(QUERY_FIELDS))
    if other:
        raise UsageError(f"a trained model's config is its checkpoint's: only {list(QUERY_FIELDS)} can be chosen at "
                         f"export, got {other}")
    cfg = STPromptConfig.from_dict({**model.cfg.to_dict(), **{k: overrides[k] for k in QUERY_FIELDS if k in overrides}})
    if cfg.spatial_queries != "text":
        raise UsageError(f"{checkpoint}: this model scores regions with its class prompts (spatial_queries="
                         f"{cfg.spatial_queries!r}), not with text queries; queries cannot be set for it")
    meta = json.loads((checkpoint / CHECKPOINT_CONFIG).read_text())
    if not meta.get("text_tower", True):
        raise UsageError(f"{checkpoint}: saved without its CLIP text tower, so new queries cannot be encoded; use a "
                         "checkpoint saved with the text tower")
    texts = [*cfg.normal_queries, *(q for q, _ in cfg.abnormal_query_texts())]
    tokens = torch.from_numpy(default_tokenizer()(texts, cfg.text.context_length))
    with torch.no_grad():
        features = torch.nn.functional.normalize(model.clip.encode_text(tokens), dim=-1)
    model.cfg = cfg
    model.query_tokens = tokens
    model.query_is_abnormal = torch.arange(len(texts)) >= len(cfg.normal_queries)
    model.query_features = features.to(model.query_features.dtype)


def build_model(source: ModelSource) -> Any:
    """Instantiate the STPrompt described by `source`, eval mode, text features frozen."""
    torch = require("torch", "the PyTorch model")
    from stp_edge.model.stprompt import STPrompt
    from stp_edge.model.weights import load_clip_into, load_stprompt

    if source.kind == "random":
        cfg = STPromptConfig.named(source.config or "tiny", **source.overrides)
        torch.manual_seed(source.seed)
        model = STPrompt(cfg)
    elif source.kind in ("checkpoint", "demo"):
        path = Path(source.checkpoint) if source.kind == "checkpoint" else demo_checkpoint_dir()
        if source.kind == "demo" and not (path / "model.safetensors").is_file():
            raise MissingInputError(
                f"the demo model's weights are missing ({path}); rebuild them with "
                "`python scripts/train_demo.py --out demo_model/stp_edge_demo_model`"
            )
        model = load_stprompt(path)
        if any(k in source.overrides for k in QUERY_FIELDS):
            set_queries(model, source.overrides, path)
    else:
        raise UsageError(f"unknown model source kind {source.kind!r}; expected checkpoint, demo or random")
    if source.clip_weights:
        load_clip_into(model, source.clip_weights)
        model.text_frozen = False  # new CLIP text weights change the class and query features
    model.eval()
    if not model.text_frozen:
        model.freeze_text()
    return model
