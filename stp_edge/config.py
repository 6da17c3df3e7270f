"""STPrompt model configuration: one dataclass tree, JSON round-trippable, no torch.

Defaults are CLIP ViT-B/16 and STPrompt's numbers: the paper's where it states them, a stated choice where it
does not (region grid, motion top-k, adapter depth and bandwidth). Each is a field here, not a constant in
code. The runtime reads this config back from a bundle's manifest.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from stp_edge.errors import UsageError

DEFAULT_CLASSES = ("normal", "abuse", "arrest", "arson", "assault", "burglary", "explosion", "fighting",
                   "road accident", "robbery", "shooting", "shoplifting", "stealing", "vandalism")

DEMO_CLASSES = ("normal", "fighting", "falling", "running", "abandoned object", "fire")
"""The classes of the synthetic benchmark, the demo model and the 'tiny' preset (index 0 is normal)."""

DEFAULT_NORMAL_QUERIES = ("a photo of the road", "a photo of the sky", "a photo of a building",
                          "a photo of the grass", "a photo of a wall", "a photo of the floor",
                          "a photo of a tree")


@dataclass
class VisionConfig:
    """CLIP image encoder (OpenAI layout). Defaults: ViT-B/16."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    embed_dim: int = 512
    # "patch": CLIP's single patch-embedding convolution (what pretrained checkpoints have). "conv": a
    # convolutional stem (log2(patch_size) stride-2 3x3 conv + BatchNorm + ReLU layers, channels stem_width,
    # 2*stem_width, ..., then a 1x1 conv to `width`; Xiao et al. 2021, "Early convolutions help transformers
    # see better"): same token grid, but a from-scratch encoder learns far faster (the demo model uses it).
    stem: str = "patch"
    stem_width: int = 24
    # conv stem only. False: every stride-2 conv pads 1 on all sides, which centres token (i, j)'s receptive field
    # on the top-left corner of its grid cell (pixel (16i, 16j) for patch 16), half a cell up and left of the
    # cell that region maps and boxes assign to it. True: the last stride-2 conv pads only right and bottom, so
    # the receptive field is centred on the cell (to half a pixel), as CLIP's patch convolution is.
    stem_centred: bool = False
    # How far patch tokens attend. -1: everywhere, class token included (CLIP). r >= 0: a patch token attends
    # only to the patch tokens within Chebyshev distance r on the grid (not to the class token); the class token
    # still attends to every token. Patch features then describe their own neighbourhood, not the whole frame,
    # which is what region scoring needs from a from-scratch encoder (the demo model uses r=1; see
    # demo_model/stp_edge_demo_model/README.md). Pretrained CLIP checkpoints keep -1.
    patch_attention: int = -1

    @property
    def grid(self) -> int:
        """Patch tokens per side (14 for ViT-B/16)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


@dataclass
class TextConfig:
    """CLIP text encoder (OpenAI layout). Defaults: the ViT-B/16 text tower."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8


@dataclass
class STPromptConfig:
    """Everything that defines an STPrompt model and its streaming behaviour."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    # Snippets: 16 frames each; the encoder sees `frames_per_snippet` evenly sampled frames (mean-pooled).
    snippet_len: int = 16
    frames_per_snippet: int = 1
    # Regions: "tokens" pools the patch grid into region_grid x region_grid; "crops" encodes sliding crops.
    region_mode: str = "tokens"
    region_grid: int = 7
    # SA2: motion prior keeps the top-k regions.
    motion_topk: int = 4
    # Temporal adapter: A = rowwise softmax(-|i-j|/sigma), banded at radius where exp(-d/sigma) < tol.
    adapter_layers: int = 2
    adapter_sigma: float = 1.0
    adapter_tol: float = 1e-4
    ffn_mult: int = 4
    # Class prompts (index 0 is the normal class) and CoOp context length.
    class_names: tuple[str, ...] = DEFAULT_CLASSES
    prompt_ctx: int = 8
    temperature: float = 0.07
    # Spatial stream queries: normal scene descriptions and per-class abnormal descriptions.
    normal_queries: tuple[str, ...] = DEFAULT_NORMAL_QUERIES
    abnormal_queries: tuple[str, ...] = ()
    # "text": the queries above through the CLIP text encoder (training-free, needs pretrained CLIP);
    # "class_prompts": the learned class prompt features (normal vs each anomaly class), for models whose text
    # tower is not pretrained, such as the demo model.
    spatial_queries: str = "text"
    # Decisions.
    score_threshold: float = 0.5
    spatial_on: str = "flagged"  # "flagged" (score >= threshold) or "all"
    box_threshold: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)
        for name in ("class_names", "normal_queries", "abnormal_queries"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when the configuration is inconsistent."""
        v = self.vision
        if v.stem not in ("patch", "conv"):
            raise UsageError(f"vision.stem={v.stem!r}; expected 'patch' or 'conv'")
        if v.stem == "conv" and (v.patch_size < 2 or v.patch_size & (v.patch_size - 1)):
            raise UsageError(f"vision.stem='conv' needs a power-of-two patch_size, got {v.patch_size}")
        if v.stem_centred and v.stem != "conv":
            raise UsageError(f"vision.stem_centred applies to stem='conv' only, got stem={v.stem!r}")
        if v.patch_attention < -1:
            raise UsageError(f"vision.patch_attention={v.patch_attention}; expected -1 (global) or a radius >= 0")
        if v.image_size % v.patch_size:
            raise UsageError(f"vision.image_size={v.image_size} is not a multiple of patch_size={v.patch_size}")
        if v.width % v.heads:
            raise UsageError(f"vision.width={v.width} is not divisible by heads={v.heads}")
        if self.text.width % self.text.heads:
            raise UsageError(f"text.width={self.text.width} is not divisible by heads={self.text.heads}")
        if self.region_mode not in ("tokens", "crops"):
            raise UsageError(f"region_mode must be 'tokens' or 'crops', got {self.region_mode!r}")
        if self.region_mode == "tokens" and v.grid % self.region_grid:
            raise UsageError(f"region_grid={self.region_grid} must divide the patch grid {v.grid} in tokens mode")
        if not 1 <= self.motion_topk <= self.region_grid**2:
            raise UsageError(f"motion_topk={self.motion_topk} must be in [1, {self.region_grid**2}]")
        if len(self.class_names) < 2:
            raise UsageError("class_names needs the normal class plus at least one anomaly class")
        if self.spatial_queries not in ("text", "class_prompts"):
            raise UsageError(f"spatial_queries must be 'text' or 'class_prompts', got {self.spatial_queries!r}")
        if self.spatial_on not in ("flagged", "all"):
            raise UsageError(f"spatial_on must be 'flagged' or 'all', got {self.spatial_on!r}")
        if self.frames_per_snippet < 1 or self.frames_per_snippet > self.snippet_len:
            raise UsageError(f"frames_per_snippet={self.frames_per_snippet} must be in [1, {self.snippet_len}]")

    # --- derived quantities -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """1 + C: the normal class plus the anomaly classes."""
        return len(self.class_names)

    @property
    def num_regions(self) -> int:
        return self.region_grid * self.region_grid

    @property
    def adapter_radius(self) -> int:
        """Band radius r_max: offsets d with exp(-d/sigma) < tol are dropped from the adapter matrix."""
        return max(1, math.floor(self.adapter_sigma * math.log(1.0 / self.adapter_tol)))

    @property
    def context(self) -> int:
        """Snippets on each side that influence one output: the motion prior (1) plus L adapter bands."""
        return 1 + self.adapter_layers * self.adapter_radius

    def abnormal_query_texts(self) -> tuple[tuple[str, int], ...]:
        """(text, class index) pairs for the spatial stream's abnormal queries (default: one per class)."""
        if self.abnormal_queries:
            return tuple((q, 1 + (i % (self.num_classes - 1))) for i, q in enumerate(self.abnormal_queries))
        return tuple((f"a photo of {name}", i) for i, name in enumerate(self.class_names) if i > 0)

    # --- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("class_names", "normal_queries", "abnormal_queries"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> STPromptConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown STPromptConfig fields: {unknown}")
        return cls(**d)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> STPromptConfig:
        """A named preset: 'vit-b-16' (the paper's backbone) or 'tiny' (tests, demo)."""
        if name in ("vit-b-16", "ViT-B/16", "vitb16"):
            return cls(**overrides)
        if name == "tiny":
            base: dict[str, Any] = dict(
                vision=VisionConfig(image_size=112, patch_size=16, width=128, layers=3, heads=2, embed_dim=64),
                text=TextConfig(context_length=32, vocab_size=49408, width=64, layers=2, heads=1),
                region_grid=7,
                motion_topk=4,
                adapter_sigma=0.5,
                prompt_ctx=4,
                class_names=DEMO_CLASSES,
            )
            base.update(overrides)
            return cls(**base)
        raise UsageError(f"unknown config name {name!r}; expected 'vit-b-16' or 'tiny'")
