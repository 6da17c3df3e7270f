"""STPrompt model configuration: one dataclass tree, JSON round-trippable, no torch.

Defaults are CLIP ViT-B/16 and STPrompt's numbers: the paper's where it states them, a stated choice where it
does not (region grid, motion top-k, adapter depth and bandwidth). Each is a field here, not a constant in
code. The runtime reads this config back from a bundle's manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stp_edge.errors import UsageError

DEFAULT_CLASSES = ("normal", "abuse", "arrest", "arson", "assault", "burglary", "explosion", "fighting",
                   "road accident", "robbery", "shooting", "shoplifting", "stealing", "vandalism")

DEMO_CLASSES = ("normal", "fighting", "falling", "running", "abandoned object", "fire")
"""The classes of the synthetic benchmark, the demo model and the 'tiny' preset (index 0 is normal)."""

DEFAULT_NORMAL_QUERIES = ("a photo of the road", "a photo of the sky", "a photo of a building",
                          "a photo of the grass", "a photo of a wall", "a photo of the floor",
                          "a photo of a tree")
"""Generic outdoor background queries: the dataclass default, kept by the 'tiny' preset, the demo model and tests."""

PAPER_NORMAL_QUERIES = ("a picture of the road", "a picture of the sky", "a picture of a building",
                        "a picture of the grass", "a picture of a tree", "a picture of a wall",
                        "a picture of the floor", "a picture of a desk", "a picture of a cabinet",
                        "a picture of a chair", "a picture of a door", "a blank picture")
"""The 'vit-b-16' preset's normal queries, in the paper's style: about a dozen indoor and outdoor backgrounds
("a picture of X", with desk, cabinet, chair, door and blank named by the paper's summaries). The paper's exact
list is not public; the wording and the outdoor items are ours (docs/model.md)."""

PAPER_ABNORMAL_QUERIES = (
    "abuse: a picture of a person beating a child", "abuse: a picture of a person kicking an animal",
    "abuse: a picture of a person hitting a helpless person",
    "arrest: a picture of police handcuffing a person", "arrest: a picture of police pinning a person down",
    "arrest: a picture of a police officer holding a suspect",
    "arson: a picture of a person setting a fire", "arson: a picture of flames and smoke from a building",
    "arson: a picture of a burning car",
    "assault: a picture of a person attacking another person", "assault: a picture of a person punching a victim",
    "assault: a picture of a person knocked to the ground",
    "burglary: a picture of a person breaking into a house", "burglary: a picture of a person forcing a door open",
    "burglary: a picture of a person climbing through a window",
    "explosion: a picture of an explosion", "explosion: a picture of a fireball and debris",
    "explosion: a picture of a blast of smoke",
    "fighting: a picture of people fighting", "fighting: a picture of people punching each other",
    "fighting: a picture of a brawl in a crowd",
    "road accident: a picture of a car crash", "road accident: a picture of a vehicle hitting a pedestrian",
    "road accident: a picture of an overturned car",
    "robbery: a picture of a person robbing a store at gunpoint", "robbery: a picture of a person grabbing a bag",
    "robbery: a picture of a masked person threatening a cashier",
    "shooting: a picture of a person shooting a gun", "shooting: a picture of a person aiming a gun",
    "shooting: a picture of people running from gunfire",
    "shoplifting: a picture of a person hiding goods in a bag",
    "shoplifting: a picture of a person putting merchandise under clothes",
    "shoplifting: a picture of a person taking goods from a shelf without paying",
    "stealing: a picture of a person stealing a bicycle", "stealing: a picture of a person breaking into a car",
    "stealing: a picture of a person carrying away stolen things",
    "vandalism: a picture of a person smashing a window", "vandalism: a picture of a person spraying graffiti",
    "vandalism: a picture of a person damaging a car",
)
"""The 'vit-b-16' preset's abnormal queries: three descriptions per UCF-Crime class, as 'class: description'.
The paper uses finer per-class descriptions whose exact text is not public; these are ours (docs/model.md)."""

BOX_RULES = ("components", "best_window")
"""How boxes come from an anomaly map (stp_edge.pipeline.boxes): connected regions above the half-maximum cut
(ours, the default) or the retrieved best window."""


def grouped_queries(mapping: Mapping[str, Any]) -> tuple[str, ...]:
    """{class: description or [descriptions]} -> ("class: description", ...), the form `abnormal_queries` stores."""
    out = []
    for cls, texts in mapping.items():
        for text in [texts] if isinstance(texts, str) else list(texts):
            if not isinstance(text, str):
                raise UsageError(f"abnormal_queries[{cls!r}]: descriptions must be texts, got {text!r}")
            out.append(f"{cls}: {text}")
    return tuple(out)


def load_queries(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """A query file -> config overrides {"normal_queries", "abnormal_queries"} (each only when the file sets it).

    The file is JSON: {"normal": ["a picture of the road", ...], "abnormal": {"fighting": ["a picture of people
    fighting", ...], ...}}; "abnormal" may also be a list of "class: description" texts. The classes are checked
    against the model's when the config is built (`parse_abnormal_queries`).

    Raises:
        UsageError: unreadable or not JSON, an unknown key, or a value of the wrong type; the message names the file.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the query file: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"normal", "abnormal"} or not data:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UsageError(f"{path}: expected a JSON object with keys 'normal' and/or 'abnormal', got {got}")
    out: dict[str, tuple[str, ...]] = {}
    if "normal" in data:
        normal = data["normal"]
        if not isinstance(normal, list) or not normal or not all(isinstance(q, str) and q.strip() for q in normal):
            raise UsageError(f"{path}: 'normal' must be a list of one or more non-empty texts, got {normal!r}")
        out["normal_queries"] = tuple(normal)
    if "abnormal" in data:
        abnormal = data["abnormal"]
        if isinstance(abnormal, dict):
            out["abnormal_queries"] = grouped_queries(abnormal)
        elif isinstance(abnormal, list) and all(isinstance(q, str) for q in abnormal):
            out["abnormal_queries"] = tuple(abnormal)
        else:
            raise UsageError(f"{path}: 'abnormal' must map class -> [descriptions] or list 'class: description' "
                             f"texts, got {abnormal!r}")
    return out


def parse_abnormal_queries(entries: Sequence[str], class_names: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """Abnormal query entries -> (description, class index) pairs, checked.

    Each entry is "class: description", the class one of `class_names[1:]` (matched ignoring case and the spaces
    around it); a class may have several. The one older form still read is one plain description per anomaly class,
    in class order (what `abnormal_queries` meant before descriptions were grouped by class).

    Raises:
        UsageError: naming the entry (index and text) whose class is unknown, normal or missing, or whose
            description is empty.
    """
    if not entries:
        return ()
    index = {c.strip().lower(): i for i, c in enumerate(class_names)}
    anomalies = len(class_names) - 1
    heads = [e.split(":", 1)[0].strip().lower() if isinstance(e, str) and ":" in e else None for e in entries]
    if all(h not in index for h in heads) and len(entries) == anomalies and all(isinstance(e, str) for e in entries):
        return tuple((e, i + 1) for i, e in enumerate(entries))
    out = []
    for k, (entry, head) in enumerate(zip(entries, heads, strict=True)):
        where = f"abnormal_queries[{k}] {entry!r}"
        if head is None or head not in index:
            raise UsageError(f"{where}: expected 'class: description' with class one of {list(class_names[1:])}, "
                             f"got {'no class' if head is None else repr(head)} (or exactly {anomalies} plain "
                             "descriptions, one per anomaly class in order)")
        if index[head] == 0:
            raise UsageError(f"{where}: {class_names[0]!r} is the normal class; put its scenes in normal_queries")
        text = entry.split(":", 1)[1].strip()
        if not text:
            raise UsageError(f"{where}: the description after the class is empty")
        out.append((text, index[head]))
    return tuple(out)


ADAPTER_FORMS = ("distance", "exp")
"""Temporal adapter forms: softmax(-|i-j|/sigma) (banded, ours) and softmax(exp(-|i-j|/sigma)) (windowed)."""

FEATURE_PREPROCESSING = ("clip", "vadclip")
"""The preprocessing a model's training features were made with (STPromptConfig.preprocess)."""

REGION_EXTENTS = ("center", "frame")
"""Where crops-mode regions lie (STPromptConfig.region_extent): CLIP's centre square, or the whole frame."""

PRETRAINED_REGIONS = {"region_mode": "crops", "region_grid": 3, "region_extent": "frame"}
"""Region defaults of the ViT-B/16 config wherever pretrained CLIP weights are loaded: the paper's sliding-window
crops, each encoded by CLIP, because pretrained CLIP's last-layer patch tokens match text poorly (ClearCLIP, SCLIP
report noisy maps), tiling the whole frame (a centre crop would leave the sides of every wide frame unwatched).
"tokens" (pooled patch tokens) stays an option: set region_mode explicitly; region_extent "center" keeps the crops
inside the centre square."""


def pretrained_overrides(config: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`overrides` plus `PRETRAINED_REGIONS` when they make the ViT-B/16 model (explicit region settings win).

    Applied where a model is built around pretrained CLIP weights (export with --clip-weights, which extraction
    uses), and recorded in the bundle's model source, so rebuilding the model (verify, the torch backend) gives the
    same configuration. Other encoders (a tiny test CLIP, ViT-B/32) keep the preset's tokens.
    """
    out = dict(overrides or {})
    if "region_mode" in out or "region_grid" in out or config == "tiny":
        return out
    vision = out.get("vision", VisionConfig())
    if (VisionConfig(**vision) if isinstance(vision, dict) else vision) == VisionConfig():
        out = {**PRETRAINED_REGIONS, **out}  # an explicit region_extent wins
    return out


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
    # Crops mode only: where the crops lie. "center" (manifests without the field): inside CLIP's centre square,
    # cut by the encoder graph; "frame": R x R windows tiling the whole frame, cut by the preprocessors as views
    # (bundle region_features "host"), so maps and boxes reach the frame's edges. Set to what the region features
    # a model was trained on were made with; export writes the matching manifest `preprocess.region_grid`.
    region_extent: str = "center"
    # SA2: motion prior keeps the top-k regions.
    motion_topk: int = 4
    # SA2's region term: x_t = frame_t + sum_r w_r f_t(r). False: a frame-only model (x_t = frame_t), for models
    # trained on features without regions (VadCLIP's released CLIP features); the temporal graph then ignores
    # region_emb (the spatial stream still scores the encoder's regions: it is training-free).
    region_term: bool = True
    # Temporal adapter. "distance" (ours, default): A = rowwise softmax(-|i-j|/sigma), banded at the radius where
    # exp(-d/sigma) < tol, so streaming equals offline to tol. "exp": A = rowwise softmax(exp(-|i-j|/sigma)),
    # near-uniform and not banded: it is defined on a window of radius adapter_window (offline and streaming
    # alike), and differs from the unwindowed form by what benchmarks/bench_adapter_forms.py measures.
    adapter_form: str = "distance"
    adapter_window: int = 8
    adapter_layers: int = 2
    adapter_sigma: float = 1.0
    adapter_tol: float = 1e-4
    ffn_mult: int = 4
    # Class prompts (index 0 is the normal class) and CoOp context length.
    class_names: tuple[str, ...] = DEFAULT_CLASSES
    prompt_ctx: int = 8
    temperature: float = 0.07
    # Spatial stream queries: normal scene descriptions and per-class abnormal descriptions. Abnormal entries are
    # "class: description" (several per class allowed; a {class: [descriptions]} mapping is accepted and stored in
    # that form); () means one "a photo of <class>" per class. The 'vit-b-16' preset sets the paper-style sets.
    normal_queries: tuple[str, ...] = DEFAULT_NORMAL_QUERIES
    abnormal_queries: tuple[str, ...] = ()
    # "text": the queries above through the CLIP text encoder (training-free, needs pretrained CLIP);
    # "class_prompts": the learned class prompt features (normal vs each anomaly class), for models whose text
    # tower is not pretrained, such as the demo model.
    spatial_queries: str = "text"
    # The image preprocessing the model's features were made with: "clip" (CLIP's own, ours) or "vadclip"
    # (VadCLIP's released features: resize 340x256, centre crop 224); export writes the matching manifest spec.
    preprocess: str = "clip"
    # Decisions.
    score_threshold: float = 0.5
    spatial_on: str = "flagged"  # "flagged" (score >= threshold) or "all"
    box_threshold: float = 0.5
    # How boxes come from the anomaly map (one of BOX_RULES); runtime-only, so a manifest without it means
    # "components", the rule of every bundle written before it existed.
    box_rule: str = "components"

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)
        if isinstance(self.abnormal_queries, dict):
            self.abnormal_queries = grouped_queries(self.abnormal_queries)
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
        if self.region_extent not in REGION_EXTENTS:
            raise UsageError(f"region_extent must be one of {REGION_EXTENTS}, got {self.region_extent!r}")
        if self.region_extent == "frame" and self.region_mode != "crops":
            raise UsageError("region_extent 'frame' needs region_mode 'crops' (tokens come from one image's patch "
                             f"grid), got region_mode {self.region_mode!r}")
        if self.region_mode == "tokens" and v.grid % self.region_grid:
            raise UsageError(f"region_grid={self.region_grid} must divide the patch grid {v.grid} in tokens mode")
        if not 1 <= self.motion_topk <= self.region_grid**2:
            raise UsageError(f"motion_topk={self.motion_topk} must be in [1, {self.region_grid**2}]")
        if len(self.class_names) < 2:
            raise UsageError("class_names needs the normal class plus at least one anomaly class")
        if self.adapter_form not in ADAPTER_FORMS:
            raise UsageError(f"adapter_form must be one of {ADAPTER_FORMS}, got {self.adapter_form!r}")
        if isinstance(self.adapter_window, bool) or not isinstance(self.adapter_window, int) \
                or not 1 <= self.adapter_window <= 4096:
            raise UsageError(f"adapter_window must be an integer in [1, 4096], got {self.adapter_window!r}")
        if self.preprocess not in FEATURE_PREPROCESSING:
            raise UsageError(f"preprocess must be one of {FEATURE_PREPROCESSING}, got {self.preprocess!r}")
        if not isinstance(self.region_term, bool):
            raise UsageError(f"region_term must be true or false, got {self.region_term!r}")
        if self.spatial_queries not in ("text", "class_prompts"):
            raise UsageError(f"spatial_queries must be 'text' or 'class_prompts', got {self.spatial_queries!r}")
        if self.spatial_on not in ("flagged", "all"):
            raise UsageError(f"spatial_on must be 'flagged' or 'all', got {self.spatial_on!r}")
        if self.box_rule not in BOX_RULES:
            raise UsageError(f"box_rule must be one of {BOX_RULES}, got {self.box_rule!r}")
        if not all(isinstance(q, str) and q.strip() for q in self.normal_queries) or (
                self.spatial_queries == "text" and not self.normal_queries):
            raise UsageError(f"normal_queries must be one or more non-empty texts, got {list(self.normal_queries)!r}")
        parse_abnormal_queries(self.abnormal_queries, self.class_names)  # raises naming the bad entry
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
        """Band radius r_max: offsets d with exp(-d/sigma) < tol are dropped ("distance"); the window ("exp")."""
        if self.adapter_form == "exp":
            return self.adapter_window
        return max(1, math.floor(self.adapter_sigma * math.log(1.0 / self.adapter_tol)))

    @property
    def context(self) -> int:
        """Snippets on each side that influence one output: the motion prior (1) plus L adapter bands."""
        return 1 + self.adapter_layers * self.adapter_radius

    def abnormal_query_texts(self) -> tuple[tuple[str, int], ...]:
        """(text, class index) pairs for the spatial stream's abnormal queries (default: one per class).

        Entries are "class: description" (`parse_abnormal_queries`); without any, one "a photo of <class>" per class.
        """
        if self.abnormal_queries:
            return parse_abnormal_queries(self.abnormal_queries, self.class_names)
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
        """A named preset: 'vit-b-16' (the paper's backbone) or 'tiny' (tests, demo).

        'vit-b-16' also sets the paper-style spatial queries (`_paper_queries`); 'tiny' keeps the generic ones.
        """
        if name in ("vit-b-16", "ViT-B/16", "vitb16"):
            return cls(**{**_paper_queries(overrides), **overrides})
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


def _paper_queries(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The 'vit-b-16' preset's query sets: the paper-style normal scenes, and the UCF-Crime descriptions.

    Other classes than UCF-Crime's get one "a photo of <class>" each, as no descriptions exist for them.
    """
    classes = tuple(overrides.get("class_names", DEFAULT_CLASSES))
    return {"normal_queries": PAPER_NORMAL_QUERIES,
            "abnormal_queries": PAPER_ABNORMAL_QUERIES if classes == DEFAULT_CLASSES else ()}
