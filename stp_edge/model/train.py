"""Weakly supervised training of the STPrompt heads on pre-extracted snippet features (video labels only).

Losses: BCE on the mean of the top-k snippet scores (k = floor(T/16) + 1) against the binary video
label (top-k MIL), plus cross-entropy on the per-class top-k mean of the A-branch logits against the video class.
Features per video: `frame_emb` [T,E] and `region_emb` [T,R2,E] from the frozen encoder, one row per snippet.
A feature directory holds one `.npz` per video with keys `frame_emb`, `region_emb`, `label` (class index,
0 = normal).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stp_edge.errors import MissingInputError, UsageError


@dataclass
class FeatureVideo:
    """One training video: snippet features and its video-level class (0 = normal)."""

    frame_emb: torch.Tensor  # [T,E]
    region_emb: torch.Tensor  # [T,R2,E]
    label: int
    name: str = ""


def topk_count(t: int) -> int:
    """k of the top-k MIL pooling for a video of t snippets."""
    return t // 16 + 1


def mil_losses(score_logit: torch.Tensor, class_logit: torch.Tensor, label: int,
               dense_normal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, CE) for one video: score_logit [T], class_logit [T,K], label = video class index.

    The BCE is on the mean of the top-k snippet scores; with `dense_normal`, a normal video's BCE covers every
    snippet instead (none of them is anomalous).
    """
    k = min(topk_count(score_logit.shape[0]), score_logit.shape[0])
    if dense_normal and label == 0:
        bce = F.binary_cross_entropy_with_logits(score_logit, torch.zeros_like(score_logit))
    else:
        p = torch.sigmoid(score_logit).topk(k).values.mean().clamp(1e-6, 1 - 1e-6)
        bce = F.binary_cross_entropy(p, torch.tensor(float(label > 0), dtype=p.dtype))
    per_class = class_logit.topk(k, dim=0).values.mean(dim=0)  # [K]
    ce = F.cross_entropy(per_class.unsqueeze(0), torch.tensor([label]))
    return bce, ce


def trainable_head_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters trained on features: adapter, C-branch and the learned prompt context."""
    return [*model.adapter.parameters(), *model.c_branch.parameters(), model.prompts.ctx]


def train_on_features(
    model,
    videos: Sequence[FeatureVideo],
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 8,
    ce_weight: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train the heads with top-k MIL on video-level labels; returns the mean loss of each epoch."""
    from tqdm.auto import tqdm

    if not videos:
        raise UsageError("no training videos")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.text_frozen = False
    for p in model.parameters():
        p.requires_grad_(False)
    params = trainable_head_parameters(model)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history = []
    model.train()
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress)
    for _ in bar:
        order = rng.permutation(len(videos))
        total = 0.0
        for start in range(0, len(order), batch_size):
            opt.zero_grad()
            loss = _batch_loss(model, [videos[i] for i in order[start : start + batch_size]], ce_weight)
            loss.backward()
            opt.step()
            total += loss.item() * min(batch_size, len(order) - start)
        history.append(total / len(videos))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    model.freeze_text()
    return history


def _batch_loss(model, batch: Iterable[FeatureVideo], ce_weight: float) -> torch.Tensor:
    batch = list(batch)
    losses = []
    for v in batch:
        score_logit, class_logit = model.temporal_logits(v.frame_emb[None], v.region_emb[None])
        bce, ce = mil_losses(score_logit[0], class_logit[0], v.label)
        losses.append(bce + ce_weight * ce)
    return torch.stack(losses).mean()


@torch.no_grad()
def snippet_scores(model, videos: Sequence[FeatureVideo]) -> list[np.ndarray]:
    """Per-snippet anomaly scores of each video (offline, whole video at once)."""
    model.eval()
    return [model.temporal(v.frame_emb[None], v.region_emb[None])[0][0].numpy() for v in videos]


def load_feature_dir(path: str | Path) -> list[FeatureVideo]:
    """Read every `*.npz` (frame_emb [T,E], region_emb [T,R2,E], label) under `path`."""
    files = sorted(Path(path).glob("*.npz"))
    if not files:
        raise MissingInputError(f"no .npz feature files in {path}")
    videos = []
    for f in files:
        with np.load(f) as z:
            missing = {"frame_emb", "region_emb", "label"} - set(z.files)
            if missing:
                raise UsageError(f"{f}: missing arrays {sorted(missing)}")
            fe, re_ = z["frame_emb"], z["region_emb"]
            if fe.ndim != 2 or re_.ndim != 3 or re_.shape[0] != fe.shape[0] or re_.shape[2] != fe.shape[1]:
                raise UsageError(f"{f}: frame_emb {fe.shape} and region_emb {re_.shape} are not [T,E] and [T,R2,E]")
            videos.append(FeatureVideo(torch.from_numpy(fe).float(), torch.from_numpy(re_).float(),
                                       int(z["label"]), f.stem))
    return videos


@dataclass(frozen=True)
class TrainReport:
    """What `train_from_features` did: the checkpoint it wrote, the videos it trained on, the loss per epoch."""

    checkpoint: Path
    videos: int
    losses: list[float]


def train_from_features(
    features: str | Path,
    out: str | Path,
    *,
    init: str | Path | None = None,
    config: str = "vit-b-16",
    classes: Sequence[str] | None = None,
    clip_weights: str | Path | None = None,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> TrainReport:
    """Train an STPrompt's heads on a feature directory (`load_feature_dir`) and save the checkpoint (`stp-edge train`).

    Args:
        features: directory of `.npz` snippet features, one per video (`stp-edge extract`).
        out: output checkpoint directory.
        init: a checkpoint to start from (keeps its CLIP weights); `config`, `classes` and `clip_weights` are
            then not used.
        config: named config of a new model ("vit-b-16" or "tiny").
        classes: class names of a new model, normal first (default: the config's).
        clip_weights: OpenAI CLIP weights for a new model's frozen encoders (default: random).
        epochs: training epochs.
        lr: learning rate.
        batch_size: videos per batch.
        seed: seed of the batch order and of torch during training.
        progress: show a progress bar.

    Returns:
        A `TrainReport`.

    Raises:
        MissingInputError: `features` holds no `.npz` file.
        UsageError: the features do not fit the model (embedding width, regions) or a label is outside its classes.
    """
    from stp_edge.config import STPromptConfig
    from stp_edge.model.stprompt import STPrompt
    from stp_edge.model.weights import load_clip_into, load_stprompt, save_stprompt

    videos = load_feature_dir(features)
    if init:
        model = load_stprompt(init)
    else:
        overrides = {"class_names": tuple(classes)} if classes else {}
        model = STPrompt(STPromptConfig.named(config, **overrides))
        if clip_weights:
            load_clip_into(model, clip_weights)
    e, r2 = model.cfg.vision.embed_dim, model.cfg.num_regions
    v = videos[0]
    if v.frame_emb.shape[1] != e or v.region_emb.shape[1] != r2:
        raise UsageError(f"{features}: features are E={v.frame_emb.shape[1]}, R2={v.region_emb.shape[1]}; "
                         f"the model expects E={e}, R2={r2}")
    bad = sorted({x.label for x in videos if not 0 <= x.label < model.cfg.num_classes})
    if bad:
        raise UsageError(f"labels {bad} are outside the model's {model.cfg.num_classes} classes")
    history = train_on_features(model, videos, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                progress=progress)
    return TrainReport(save_stprompt(model, out), len(videos), history)
