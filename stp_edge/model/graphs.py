"""The three exported graphs as torch modules; export, `verify` and the torch backend all run these.

Names and shapes are the bundle's API (docs/architecture.md): SnippetResult fields reuse the output names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stp_edge.errors import UsageError
from stp_edge.model.stprompt import STPrompt


@dataclass(frozen=True)
class GraphSpec:
    """Input/output names of one graph and which axes are dynamic (axis index -> symbolic name)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]


GRAPH_SPECS = {
    "encoder": GraphSpec("encoder", ("images",), ("frame_emb", "region_emb"),
                         {"images": {0: "B"}, "frame_emb": {0: "B"}, "region_emb": {0: "B"}}),
    "temporal": GraphSpec("temporal", ("frame_emb", "region_emb"), ("score", "class_probs"),
                          {"frame_emb": {0: "B", 1: "T"}, "region_emb": {0: "B", 1: "T"},
                           "score": {0: "B", 1: "T"}, "class_probs": {0: "B", 1: "T"}}),
    "spatial": GraphSpec("spatial", ("region_emb",), ("region_scores",),
                         {"region_emb": {0: "B"}, "region_scores": {0: "B"}}),
}


# The encoder of bundles with `region_features` "host": images -> frame_emb, patch_emb. With region crops of the
# whole frame (`config.region_extent` "frame", what export writes for them) the preprocessors cut the crops as views
# and their frame_emb are the regions; otherwise (deprecated; docs/bundle-format.md, "Compatibility") the runtime
# derives region_emb from the centre images, exported only on request (`export_bundle(..., region_features="host")`).
HOST_REGIONS_ENCODER = GraphSpec("encoder", ("images",), ("frame_emb", "patch_emb"),
                                 {"images": {0: "B"}, "frame_emb": {0: "B"}, "patch_emb": {0: "B"}})


def graph_specs(regions: str = "encoder") -> dict[str, GraphSpec]:
    """The three graphs' specs for a bundle's `region_features` ("encoder" or "host")."""
    if regions not in ("encoder", "host"):
        raise UsageError(f"region_features must be 'encoder' or 'host', got {regions!r}")
    return {**GRAPH_SPECS, "encoder": HOST_REGIONS_ENCODER} if regions == "host" else dict(GRAPH_SPECS)


class _Graph(nn.Module):
    """Runs one stage of an STPrompt in `dtype`, with float32 inputs and outputs at the boundary."""

    def __init__(self, model: STPrompt, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not model.text_frozen:
            raise UsageError("freeze the text side (model.freeze_text()) before building export graphs")
        self.model = model
        self.dtype = dtype

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)

    @staticmethod
    def _out(*xs: torch.Tensor):
        outs = tuple(x.float() for x in xs)
        return outs if len(outs) > 1 else outs[0]


class EncoderGraph(_Graph):
    """images -> frame_emb, region_emb (regions pooled from patch tokens, or encoded crops, inside the graph)."""

    def forward(self, images: torch.Tensor):
        return self._out(*self.model.features(self._in(images)))


class PatchEncoderGraph(_Graph):
    """images -> frame_emb, patch_emb: the encoder of "host" bundles (the runtime derives the regions)."""

    def forward(self, images: torch.Tensor):
        return self._out(*self.model.encode(self._in(images)))


class TemporalGraph(_Graph):
    """frame_emb, region_emb (a window of snippets) -> score, class_probs."""

    def forward(self, frame_emb: torch.Tensor, region_emb: torch.Tensor):
        return self._out(*self.model.temporal(self._in(frame_emb), self._in(region_emb)))


class SpatialGraph(_Graph):
    """region_emb -> region_scores."""

    def forward(self, region_emb: torch.Tensor):
        return self._out(self.model.spatial(self._in(region_emb)))


GRAPH_MODULES = {"encoder": EncoderGraph, "temporal": TemporalGraph, "spatial": SpatialGraph}


def to_precision(model: STPrompt, dtype: torch.dtype) -> STPrompt:
    """Cast weights to `dtype` except LayerNorms, which stay float32 (as OpenAI's fp16 CLIP does)."""
    from stp_edge.model.clip import LayerNorm

    model = model.to(dtype)
    for module in model.modules():
        if isinstance(module, LayerNorm):
            module.float()
    return model


def build_graphs(model: STPrompt, dtype: torch.dtype = torch.float32, regions: str = "encoder"
                 ) -> dict[str, nn.Module]:
    """The three graph modules over one (frozen-text) model, in eval mode (`regions`: see `graph_specs`)."""
    graph_specs(regions)  # checks the name
    model.eval()
    modules = {**GRAPH_MODULES, "encoder": PatchEncoderGraph} if regions == "host" else GRAPH_MODULES
    return {name: cls(model, dtype).eval() for name, cls in modules.items()}


def random_inputs(cfg, seed: int, batch: int = 2, snippets: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Fresh float32 inputs for every graph (never zeros), used to trace the export and by `verify`.

    Normal images in CLIP's normalised range and unit-scale features; `snippets` defaults to one full streaming
    window (2c+1).
    """
    rng = np.random.default_rng(seed)
    s, e, r2 = cfg.vision.image_size, cfg.vision.embed_dim, cfg.num_regions
    t = snippets or 2 * cfg.context + 1
    f32 = np.float32
    return {
        "encoder": {"images": rng.standard_normal((batch, 3, s, s)).astype(f32)},
        "temporal": {"frame_emb": rng.standard_normal((batch, t, e)).astype(f32),
                     "region_emb": rng.standard_normal((batch, t, r2, e)).astype(f32)},
        "spatial": {"region_emb": rng.standard_normal((batch, r2, e)).astype(f32)},
    }
