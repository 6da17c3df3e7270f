"""Training the demo model: the `tiny` STPrompt, end to end from scratch, on the synthetic benchmark.

No pretrained CLIP and no real data can be downloaded, so the demo model learns everything, encoder included,
from synthetic clips (`stp_edge.synthetic`) with VIDEO-LEVEL LABELS ONLY (weak supervision):

- temporal stream: the top-k MIL losses of `stp_edge.model.train.mil_losses` (BCE on the top-k snippet scores
  against anomalous/normal, cross-entropy on the per-class top-k A-branch logits against the video class);
- spatial stream: a region-level MIL term, still video-level: over all (snippet, region) pairs of a video, the
  mean of the top-k region anomaly scores (`STPrompt.spatial` against the not yet frozen class prompt features)
  is pushed to 1 for anomalous videos and to 0 for normal ones (BCE), and the class logits of those top-k
  regions are pushed to the video class (cross-entropy). Normal videos thus teach what normal regions look
  like, anomalous videos only say that *some* regions somewhere hold their class;
- dense normal bags (`dense_normal`, default on): a normal video has no anomalous snippet and no anomalous
  region, which the video label alone says, so its BCE terms cover every snippet and every region instead of
  the top-k;
- an auxiliary attention-MIL video classifier (`AttentionMIL`, weight `attention_mil_weight`, training only,
  not saved): gated attention over all (snippet, region) features of a video pools one feature, classified
  against the video class. Its gradient reaches every region in proportion to its attention, not only the
  current top-k, which gets the encoder past the MIL cold start sooner (demo README, "What was tried");
- self-training (`self_train_weight`, default 1, from 35% of the epochs on): each anomalous video's snippets
  get pseudo-labels from the model's own running-average scores (`pseudo_labels`), which add per-snippet terms
  (`self_training_losses`), in the spirit of MIST (Feng et al., CVPR 2021). Still video labels only: the
  targets come from the model.

Each anomalous training clip comes with its normal twin (`plan_clip(..., twin_of=class)`): same scene, people,
lighting and noise, the event's people present but behaving normally (walking on instead of falling or
running, standing together instead of fighting, keeping the suitcase). A batch holds both, so what separates
the two bags is the anomalous behaviour, not an extra person.

Per-frame labels and boxes of the synthetic clips are never used for training or checkpoint selection: the
kept model is the end of the schedule (`select="last"`; `select="val_loss"` keeps the epoch with the lowest
video-level validation loss instead). They only feed diagnostics printed during training (snippet AUC,
top-region IoU on the validation split).

The encoder's forward pass runs under bfloat16 autocast (`bf16`, default on; heads, losses and validation in
float32): about 1.5x the images per second on a CPU with bf16 kernels (AVX512-BF16).

The encoder sees what the runtime sees: the sampled frame of each 16-frame snippet (the runtime's
`SnippetAssembler` offsets), JPEG-compressed at a random quality to mimic the video codec of the benchmark
files, then CLIP-preprocessed by `CpuPreprocessor`. Preprocessed snippets are cached in memory (float16).
"""

from __future__ import annotations

import copy
import json
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stp_edge.bundle import sha256_file
from stp_edge.config import STPromptConfig
from stp_edge.errors import UsageError
from stp_edge.metrics import box_iou, rank_auc
from stp_edge.model.train import mil_losses
from stp_edge.preprocess import CLIP_MEAN, CLIP_STD

# Demo-model config overrides of the `tiny` preset (the spatial stream scores regions against the class prompts).
DEMO_OVERRIDES: dict[str, Any] = {
    "spatial_queries": "class_prompts",
    # The tiny ViT with a convolutional stem: a from-scratch patch-embedding ViT barely learns these frames.
    # stem_centred: the plain conv stem centres each token's receptive field half a cell up-left of the cell it
    # is scored and boxed as. patch_attention=1: patch tokens attend to their 3x3 neighbourhood (the class token
    # to all). The runs behind each choice: demo_model/stp_edge_demo_model/README.md ("What was tried").
    "vision": replace(STPromptConfig.named("tiny").vision, stem="conv", stem_centred=True, patch_attention=1),
}


@dataclass
class DemoTrainSettings:
    """Everything that defines a demo training run (recorded next to the weights)."""

    seed: int = 0
    train_videos: int = 600
    val_videos: int = 40
    num_frames: int = 300
    width: int = 320
    height: int = 240
    videos_per_scene: int = 1
    twins: bool = True  # each anomalous clip comes with its normal twin (same seed, scene, people; event defused)
    epochs: int = 44
    minutes: float = 27.0  # hard wall-clock cap on the optimisation loop; stops early (and says so) if hit
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    grad_clip: float = 1.0
    spatial_weight: float = 1.0  # region-level BCE (top-k regions' anomaly score vs the video label)
    region_ce_weight: float = 0.5  # region-level CE (top-k regions' class logits vs the video class)
    region_topk: int = 4
    dense_normal: bool = True  # a normal video has no anomalous snippet or region: BCE on all of them, not top-k
    # Weight of an auxiliary attention-MIL video classifier on the encoder's region features (training only, not
    # part of the saved model): gated attention over every (snippet, region) pair pools one video feature,
    # a linear layer classifies it against the video class. 0 disables it.
    attention_mil_weight: float = 1.0
    # Self-training (0 disables it): from epoch `self_train_start` * epochs on, each anomalous training video's
    # snippets get pseudo-labels from the model's own running-average scores (`pseudo_labels`: high and clearly
    # above the video's low end -> 1, near the video's low end -> 0, else unlabelled). Labelled snippets add a
    # per-snippet BCE, the positive ones a per-snippet class CE, and every region of a pseudo-negative snippet
    # a "normal" BCE (the same video before or after its event). Still video labels only: the targets come from
    # the model, not from the ground truth.
    self_train_weight: float = 1.0
    self_train_start: float = 0.35
    # Self-training, spatial extent (0 disables it): in each pseudo-positive snippet, the mean abnormal share of
    # its `self_region_topk` highest-scoring regions is pushed towards 1 (a person-sized event covers 2-4 cells
    # of the 7x7 grid while region MIL over the whole video lifts only its few best pairs). Off by default: it
    # spreads the maps onto the wrong cells (demo README, "What was tried").
    self_region_topk: int = 0
    # Which epoch to keep: "last" (end of the schedule) or "val_loss" (lowest video-level validation loss). Once
    # self-training sharpens the scores the validation loss rises (over-confident class logits) while the
    # validation snippet AUC still rises, so "val_loss" keeps an early, weaker epoch.
    select: str = "last"
    jpeg_quality: tuple[int, int] = (70, 95)
    flip: bool = True
    photometric: float = 0.15  # brightness/contrast jitter amplitude (0 disables)
    translate: int = 0  # random shift of up to this many pixels (model input), same for a whole video
    config_overrides: dict[str, Any] = field(default_factory=dict)
    threads: int = 2
    # bfloat16 autocast of the encoder's forward pass while training (heads, losses and validation stay fp32):
    # about 1.5x the images per second on a CPU with AVX512-BF16, so more epochs fit the time budget.
    bf16: bool = True


@dataclass
class DemoVideo:
    """One clip as the encoder sees it, plus ground truth used only for diagnostics.

    Attributes:
        images: preprocessed sampled frames, one per snippet [T,3,S,S] (float16 to halve the cache).
        label: video class index (0 = normal); the only label training uses.
        name: identifier.
        snippet_labels: 0/1 per snippet (label of its sampled frame); diagnostics only.
        snippet_boxes: ground-truth box of the sampled frame in frame pixels [T,4], NaN if none; diagnostics only.
        frame_hw: (H, W) of the clip.
    """

    images: torch.Tensor
    label: int
    name: str
    snippet_labels: np.ndarray
    snippet_boxes: np.ndarray
    frame_hw: tuple[int, int]
    twin: int = -1


@dataclass
class DemoTrainResult:
    """What `train_demo` returns: the trained model (text frozen) and the run's record."""

    model: Any
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    stopped_early: bool
    settings: DemoTrainSettings


def demo_config(**overrides: Any) -> STPromptConfig:
    """The demo model's config: `tiny` with class-prompt spatial queries, plus `overrides`."""
    return STPromptConfig.named("tiny", **{**DEMO_OVERRIDES, **overrides})


def snippet_frame_indices(num_frames: int, snippet_len: int, frames_per_snippet: int = 1) -> list[list[int]]:
    """Frame indices the runtime samples for each snippet (same rule as `stp_edge.pipeline.snippets.SnippetAssembler`).

    A partial last snippet uses the same offsets; an offset past its end takes its last frame.
    """
    from stp_edge.pipeline.snippets import sample_offsets

    offsets = sample_offsets(snippet_len, frames_per_snippet)
    out = []
    for start in range(0, num_frames, snippet_len):
        length = min(snippet_len, num_frames - start)
        out.append([start + (o if o < length else length - 1) for o in offsets])
    return out


def _split_seed(seed: int, split: str, *parts: int) -> int:
    """Seeds of the demo splits, disjoint from `write_benchmark`'s by construction (own namespace tag)."""
    tag = zlib.crc32(f"stp-edge-demo/{split}".encode())
    return int(np.random.SeedSequence([seed, tag, *parts]).generate_state(1)[0])


def make_demo_videos(split: str, num_videos: int, *, seed: int, cfg: STPromptConfig,
                     settings: DemoTrainSettings | None = None, progress: bool = True) -> list[DemoVideo]:
    """Render a split of synthetic clips (half anomalous, classes cycling) and preprocess their sampled frames.

    Only the sampled frame of each snippet is rendered, so a 300-frame clip costs about 0.3 s.
    """
    import cv2
    from tqdm.auto import tqdm

    from stp_edge.preprocess import CpuPreprocessor
    from stp_edge.synthetic import ANOMALY_CLASSES, CLASS_NAMES, plan_clip

    s = settings or DemoTrainSettings()
    if cfg.frames_per_snippet != 1:
        raise UsageError("demo training samples one frame per snippet; set frames_per_snippet=1")
    if tuple(cfg.class_names) != CLASS_NAMES:
        raise UsageError(f"demo config classes {cfg.class_names} differ from the synthetic ones {CLASS_NAMES}")
    pre = CpuPreprocessor(cfg.vision.image_size)
    rng = np.random.default_rng(_split_seed(seed, split, 0))
    n_anom = num_videos // 2
    anomalies = [ANOMALY_CLASSES[k % len(ANOMALY_CLASSES)] for k in range(n_anom)]
    if s.twins:
        # (clip index, label, twin_of): anomalous clip j and its normal twin share clip seed j, so they differ
        # only by the event's behaviour.
        jobs = [(j, lab, twin) for j, a in enumerate(anomalies) for lab, twin in ((a, None), ("normal", a))]
        jobs += [(n_anom + j, "normal", None) for j in range(num_videos - 2 * n_anom)]
    else:
        labels = ["normal"] * (num_videos - n_anom) + anomalies
        jobs = [(i, labels[k], None) for i, k in enumerate(rng.permutation(num_videos))]
    videos = []
    for i, (clip, label, twin_of) in enumerate(tqdm(jobs, desc=f"render {split}", unit="clip",
                                                    disable=not progress)):
        plan = plan_clip(_split_seed(seed, split, 2, clip), width=s.width, height=s.height,
                         num_frames=s.num_frames, anomaly=label, twin_of=twin_of,
                         layout_seed=_split_seed(seed, split, 1, clip // max(1, s.videos_per_scene)))
        idx = snippet_frame_indices(s.num_frames, cfg.snippet_len, cfg.frames_per_snippet)
        frames = []
        for group in idx:
            for f in group:
                q = int(rng.integers(s.jpeg_quality[0], s.jpeg_quality[1] + 1))
                ok, buf = cv2.imencode(".jpg", plan.render(f), [cv2.IMWRITE_JPEG_QUALITY, q])
                frames.append(cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else plan.render(f))
        mid = [g[0] for g in idx]
        videos.append(DemoVideo(torch.from_numpy(pre(frames)).half(), CLASS_NAMES.index(label),
                                f"{split}_{i:04d}_{label}", (plan.labels[mid] > 0).astype(np.int64),
                                plan.boxes[mid].astype(np.float64), (s.height, s.width),
                                clip if s.twins and clip < n_anom else -1))
    return videos


# ------------------------------------------------------------------------------------------------ losses
def _augment(images: torch.Tensor, gen: torch.Generator, settings: DemoTrainSettings,
             flipped: list[bool] | None = None) -> torch.Tensor:
    """Same random flip and brightness/contrast change on every snippet of one video (normalised space).

    `flipped`: whether the video was flipped horizontally is appended to it (for targets that must flip too).
    """
    x = images.float()
    flip = settings.flip and bool(torch.rand((), generator=gen) < 0.5)
    if flip:
        x = x.flip(-1)
    if flipped is not None:
        flipped.append(flip)
    if settings.translate > 0:
        dy, dx = (torch.randint(-settings.translate, settings.translate + 1, (2,), generator=gen)).tolist()
        x = torch.roll(x, (dy, dx), dims=(-2, -1))
    if settings.photometric > 0:
        a = 1 + settings.photometric * (2 * torch.rand((), generator=gen) - 1)
        b = 0.5 * settings.photometric * (2 * torch.rand(3, generator=gen) - 1)
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        x = ((a * (x * std + mean) + b.view(3, 1, 1)) - mean) / std
    return x


def region_logits(region_emb: torch.Tensor, query_features: torch.Tensor, is_abnormal: torch.Tensor,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Region class logits [...,R2,Q] against the spatial queries, and log of each region's abnormal share [...,R2].

    The abnormal share is exactly `STPrompt.spatial`'s score, here in log space for a stable BCE.
    """
    logits = F.normalize(region_emb, dim=-1) @ query_features.T / temperature
    return logits, logits[..., is_abnormal].logsumexp(-1) - logits.logsumexp(-1)


def region_mil_losses(region_emb: torch.Tensor, query_features: torch.Tensor, is_abnormal: torch.Tensor,
                      label: int, topk: int, temperature: float,
                      dense_normal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Video-level MIL terms of the spatial stream for one video.

    Args:
        region_emb: region features of every snippet [T,R2,E].
        query_features: L2-normalised spatial query features [Q,E] (the class prompts, normal first).
        is_abnormal: [Q] bool, which queries are abnormal.
        label: video class index (0 = normal).
        topk: how many (snippet, region) pairs form the video's bag score.
        temperature: cosine temperature, as in `STPrompt.spatial`.
        dense_normal: for a normal video, the BCE covers every (snippet, region) pair (all are normal).

    Returns:
        (BCE of the mean top-k region anomaly score against the video label, or of every pair of a normal
        video with `dense_normal`, cross-entropy of the top-k regions' class logits against the video class).
    """
    logits, log_abn = region_logits(region_emb, query_features, is_abnormal, temperature)
    flat, log_abn = logits.reshape(-1, logits.shape[-1]), log_abn.reshape(-1)
    k = min(topk, flat.shape[0])
    top = log_abn.topk(k).indices
    if dense_normal and label == 0:
        bce = -torch.log1p(-log_abn.exp().clamp(max=1 - 1e-6)).mean()
    else:
        p = log_abn[top].exp().mean().clamp(1e-6, 1 - 1e-6)
        bce = F.binary_cross_entropy(p, torch.tensor(float(label > 0), dtype=p.dtype))
    ce = F.cross_entropy(flat[top], torch.full((k,), label, dtype=torch.long))
    return bce, ce


def pseudo_labels(scores: np.ndarray, low: float = 0.2, high: float = 0.5, min_peak: float = 0.5) -> np.ndarray:
    """Snippet pseudo-labels of an ANOMALOUS video from the model's own scores [T]: 1, 0 or -1 (unlabelled).

    With n = the scores min-max normalised within the video: 1 where n >= `high` and the score itself is
    >= `min_peak`; 0 where n <= `low`; -1 elsewhere. A video whose highest score is below `min_peak` (the model
    has not found its event yet), or that has unscored (NaN) snippets, gets no labels.
    """
    s = np.asarray(scores, dtype=np.float64)
    out = np.full(s.shape, -1, dtype=np.int64)
    if s.size == 0 or not np.isfinite(s).all() or s.max() < min_peak:
        return out
    n = (s - s.min()) / max(float(s.max() - s.min()), 1e-6)
    out[n <= low] = 0
    out[(n >= high) & (s >= min_peak)] = 1
    return out


def self_training_losses(score_logit: torch.Tensor, class_logit: torch.Tensor, region_log_abn: torch.Tensor,
                         label: int, pseudo: np.ndarray, region_topk: int = 0) -> dict[str, torch.Tensor]:
    """Per-snippet terms of an anomalous video from its pseudo-labels [T] (1, 0, -1 = unlabelled).

    score_logit [T], class_logit [T,K], region_log_abn [T,R2] (log of each region's abnormal share). Returns
    self_bce (snippet scores vs labels), self_ce (class logits of positive snippets vs the video class) and
    self_region (every region of a negative snippet is normal); zeros where no snippet has that label. With
    `region_topk` > 0 also self_region_pos: in each positive snippet the mean share of its `region_topk` best
    regions is abnormal (BCE against 1, averaged over the positive snippets).
    """
    y = torch.as_tensor(pseudo)
    lab, pos, neg = y >= 0, y == 1, y == 0
    zero = score_logit.sum() * 0
    bce = (F.binary_cross_entropy_with_logits(score_logit[lab], y[lab].to(score_logit.dtype))
           if lab.any() else zero)
    ce = (F.cross_entropy(class_logit[pos], torch.full((int(pos.sum()),), label, dtype=torch.long))
          if pos.any() else zero)
    region = (-torch.log1p(-region_log_abn[neg].exp().clamp(max=1 - 1e-6)).mean() if neg.any() else zero)
    out = {"self_bce": bce, "self_ce": ce, "self_region": region}
    if region_topk > 0:
        k = min(region_topk, region_log_abn.shape[-1])
        top = region_log_abn[pos].exp().topk(k, dim=-1).values.mean(-1).clamp(min=1e-6)  # [P]
        out["self_region_pos"] = -top.log().mean() if pos.any() else zero
    return out


def video_losses(model, frame_emb: torch.Tensor, region_emb: torch.Tensor, label: int,
                 settings: DemoTrainSettings, query_features: torch.Tensor | None = None,
                 pseudo: np.ndarray | None = None, scores_out: list | None = None) -> dict[str, torch.Tensor]:
    """All loss terms of one video from its encoder outputs: frame_emb [T,E], region_emb [T,R2,E].

    `pseudo` (anomalous videos, self-training): snippet pseudo-labels, adding `self_training_losses` with weight
    `settings.self_train_weight`. `scores_out`: the video's snippet scores (sigmoid, detached) are appended to it.
    """
    score_logit, class_logit = model.temporal_logits(frame_emb[None], region_emb[None])
    bce, ce = mil_losses(score_logit[0], class_logit[0], label, settings.dense_normal)
    q = model.spatial_query_features() if query_features is None else query_features
    r_bce, r_ce = region_mil_losses(region_emb, q, model.query_is_abnormal, label, settings.region_topk,
                                    model.cfg.temperature, settings.dense_normal)
    total = bce + ce + settings.spatial_weight * r_bce + settings.region_ce_weight * r_ce
    terms = {"loss": total, "bce": bce, "ce": ce, "region_bce": r_bce, "region_ce": r_ce}
    if scores_out is not None:
        scores_out.append(torch.sigmoid(score_logit[0].detach()).numpy())
    if pseudo is not None:
        _, log_abn = region_logits(region_emb, q, model.query_is_abnormal, model.cfg.temperature)
        extra = self_training_losses(score_logit[0], class_logit[0], log_abn, label, pseudo,
                                     settings.self_region_topk)
        terms.update(extra)
        terms["loss"] = total + settings.self_train_weight * sum(extra.values())
    return terms


def _encode_batch(model, images: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One encoder call for all snippets of several videos; split back into (frame_emb, region_emb) per video."""
    x = torch.cat(list(images))
    frame, patch = model.encode(x)
    region = model.regions(x, patch)
    out, start = [], 0
    for im in images:
        n = im.shape[0]
        out.append((frame[start:start + n], region[start:start + n]))
        start += n
    return out


class AttentionMIL(torch.nn.Module):
    """Gated attention-MIL video classifier (Ilse et al. 2018) over a video's region features (training aid)."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.value = torch.nn.Linear(dim, hidden)
        self.gate = torch.nn.Linear(dim, hidden)
        self.score = torch.nn.Linear(hidden, 1)
        self.classify = torch.nn.Linear(dim, num_classes)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """h [N,E] instance features -> [N] attention weights (softmax over the instances)."""
        return torch.softmax(self.score(torch.tanh(self.value(h)) * torch.sigmoid(self.gate(h))).squeeze(-1), dim=0)

    def forward(self, region_emb: torch.Tensor) -> torch.Tensor:
        """region_emb [T,R2,E] -> class logits [K] of the attention-pooled video feature."""
        h = region_emb.reshape(-1, region_emb.shape[-1])
        return self.classify(self.attention(h) @ h)


def batch_loss(model, videos: Sequence[DemoVideo], settings: DemoTrainSettings,
               gen: torch.Generator | None = None, aux: AttentionMIL | None = None,
               pseudo: Sequence[np.ndarray | None] | None = None,
               scores_out: list | None = None) -> dict[str, torch.Tensor]:
    """Mean loss terms over a batch of videos (augmented when `gen` is given).

    `pseudo`: per video, snippet pseudo-labels or None (see `video_losses`); `scores_out` collects each video's
    detached snippet scores, in order.
    """
    images = [_augment(v.images, gen, settings) if gen is not None else v.images.float() for v in videos]
    q = model.spatial_query_features()  # text tower once per batch, not once per video
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
        encoded = _encode_batch(model, images)
    terms: dict[str, list[torch.Tensor]] = {}
    pseudo = pseudo if pseudo is not None else [None] * len(videos)
    for v, (fe, re), pl in zip(videos, encoded, pseudo, strict=True):
        fe, re = fe.float(), re.float()
        video_terms = video_losses(model, fe, re, v.label, settings, q, pseudo=pl, scores_out=scores_out)
        if aux is not None:
            video_terms["attention_ce"] = F.cross_entropy(aux(re)[None], torch.tensor([v.label]))
            video_terms["loss"] = video_terms["loss"] + settings.attention_mil_weight * video_terms["attention_ce"]
        for k, t in video_terms.items():
            terms.setdefault(k, []).append(t)
    return {k: torch.stack(t).mean() for k, t in terms.items()}


# ------------------------------------------------------------------------------------------------ validation
@torch.no_grad()
def validate(model, videos: Sequence[DemoVideo], settings: DemoTrainSettings, chunk: int = 8) -> dict[str, float]:
    """Video-level validation loss (selects the checkpoint) and diagnostics from the held-back ground truth.

    Returns keys: loss (video labels only) and its terms (bce, ce, region_bce, region_ce), and diagnostics
    snippet_auc (snippet scores vs snippet labels) and
    top_region_iou (IoU of the highest region's cell with the ground-truth box, over anomalous snippets, 0 where
    the score is below the threshold) — the latter two are printed, never used to choose anything.
    """
    from stp_edge.geometry import region_boxes, to_frame_coords

    model.eval()
    q = model.spatial_query_features()
    losses: dict[str, list[float]] = {}
    scores, labels, ious = [], [], []
    cfg = model.cfg
    for i in range(0, len(videos), chunk):
        part = videos[i:i + chunk]
        for v, (fe, re) in zip(part, _encode_batch(model, [v.images.float() for v in part]), strict=True):
            for k, t in video_losses(model, fe, re, v.label, settings, q, scores_out=scores).items():
                losses.setdefault(k, []).append(t.item())
            s = scores[-1]
            labels.append(v.snippet_labels)
            cells = to_frame_coords(region_boxes(cfg.vision.image_size, cfg.region_grid, cfg.region_mode),
                                    cfg.vision.image_size, v.frame_hw)
            top = model.spatial(re).argmax(-1).numpy()
            for t in np.flatnonzero(v.snippet_labels & np.isfinite(v.snippet_boxes[:, 0])):
                iou = float(box_iou(cells[top[t]], v.snippet_boxes[t])[0]) if s[t] >= cfg.score_threshold else 0.0
                ious.append(iou)
    y, sc = np.concatenate(labels), np.concatenate(scores)
    terms = {k: float(np.mean(v)) for k, v in losses.items()}
    return {"loss": terms.pop("loss"), **terms, "snippet_auc": rank_auc(y, sc),
            "top_region_iou": float(np.mean(ious)) if ious else float("nan")}


# ------------------------------------------------------------------------------------------------ training
def _epoch_order(videos: Sequence[DemoVideo], rng: np.random.Generator) -> np.ndarray:
    """Shuffled video indices; twins (same `twin` id) stay next to each other so a batch holds both."""
    groups: dict[int, list[int]] = {}
    for i, v in enumerate(videos):
        groups.setdefault(v.twin if v.twin >= 0 else -1 - i, []).append(i)
    keys = list(groups)
    return np.array([i for k in rng.permutation(len(keys)) for i in groups[keys[int(k)]]], dtype=np.int64)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the base rate."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_demo(settings: DemoTrainSettings, *, train: Sequence[DemoVideo] | None = None,
               val: Sequence[DemoVideo] | None = None, progress: bool = True,
               log: Callable[[str], None] | None = print,
               loss_fn: Callable[..., dict[str, torch.Tensor]] | None = None) -> DemoTrainResult:
    """Train the demo STPrompt end to end (encoder, text tower, prompts, adapter, C-branch) on video labels.

    Args:
        settings: the run's settings.
        train: pre-rendered training videos (default: rendered here from `settings`).
        val: pre-rendered validation videos (default: rendered here; pass [] to skip validation and keep
            the last epoch).
        progress: show progress bars.
        log: called with one line per epoch (None for silence).
        loss_fn: replaces `batch_loss` (same signature). Only for diagnostics that change the supervision,
            e.g. the frame-and-box supervised reference of `research/demo_ceiling.py`; the demo model never
            sets it.

    Returns:
        A `DemoTrainResult`; its model is in eval mode with the text side frozen, ready for `save_stprompt`.
    """
    from tqdm.auto import tqdm

    from stp_edge.model.stprompt import STPrompt

    torch.set_num_threads(settings.threads)
    cfg = demo_config(**settings.config_overrides)
    if train is None:
        train = make_demo_videos("train", settings.train_videos, seed=settings.seed, cfg=cfg, settings=settings,
                                 progress=progress)
    if val is None:
        val = make_demo_videos("val", settings.val_videos, seed=settings.seed, cfg=cfg, settings=settings,
                               progress=progress)
    if not train:
        raise UsageError("no training videos")
    if settings.select not in ("last", "val_loss"):
        raise UsageError(f"select={settings.select!r}; expected 'last' or 'val_loss'")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = STPrompt(cfg)
    model.text_frozen = False
    model.train()
    aux = AttentionMIL(cfg.vision.embed_dim, len(cfg.class_names)) if settings.attention_mil_weight > 0 else None
    named = [*model.named_parameters(), *(aux.named_parameters(prefix="aux") if aux is not None else [])]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    warmup = max(1, round(settings.warmup_epochs * steps_per_epoch))
    self_training = settings.self_train_weight > 0
    self_train_from = math.ceil(settings.self_train_start * settings.epochs)
    running: dict[int, np.ndarray] = {}
    history: list[dict[str, float]] = []
    best = (math.inf, -1, None)
    start, step, stopped = time.monotonic(), 0, False
    bar = tqdm(total=total, desc="train demo", unit="step", disable=not progress)
    for epoch in range(settings.epochs):
        model.train()
        order = _epoch_order(train, rng)
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            for g in opt.param_groups:
                g["lr"] = settings.lr * _lr_factor(step, total, warmup)
            ids = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            batch = [train[i] for i in ids]
            pseudo = None
            if self_training and epoch >= self_train_from:
                pseudo = [pseudo_labels(running[i]) if train[i].label > 0 and i in running else None for i in ids]
            scores: list[np.ndarray] = []
            terms = (loss_fn or batch_loss)(model, batch, settings, gen, aux, pseudo=pseudo, scores_out=scores)
            if self_training:  # running average of each anomalous video's snippet scores (training passes)
                for i, sc in zip(ids, scores, strict=True):
                    if train[i].label > 0:
                        running[i] = sc if i not in running else 0.5 * running[i] + 0.5 * sc
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            step += 1
            for k, t in terms.items():
                sums[k] = sums.get(k, 0.0) + t.item() * len(batch)
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{terms['loss'].item():.3f}")
            if time.monotonic() - start > 60 * settings.minutes:
                stopped = True
                break
        row = {"epoch": epoch, **{f"train_{k}": v / len(train) for k, v in sums.items()},
               "seconds": time.monotonic() - start}
        if val:
            row.update({f"val_{k}": v for k, v in validate(model, val, settings).items()})
            if settings.select == "val_loss" and row["val_loss"] < best[0]:
                best = (row["val_loss"], epoch, copy.deepcopy(model.state_dict()))
        history.append(row)
        if log is not None:
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if stopped:
            if log is not None:
                log(f"stopped after {settings.minutes} min (epoch {epoch}, step {step}/{total})")
            break
    bar.close()
    best_epoch = history[-1]["epoch"]
    if best[2] is not None:
        model.load_state_dict(best[2])
        best_epoch = best[1]
    model.eval()
    model.freeze_text()
    return DemoTrainResult(model, history, int(best_epoch), time.monotonic() - start, stopped, settings)


# ------------------------------------------------------------------------------------------------ saving
SUMMED_FILES = ("model.safetensors", "config.json")


def write_sha256sums(directory: str | Path, files: Sequence[str] = SUMMED_FILES) -> Path:
    """Write `SHA256SUMS` (sha256sum's format: `<hex>  <name>`) for `files` of `directory`."""
    d = Path(directory)
    path = d / "SHA256SUMS"
    path.write_text("".join(f"{sha256_file(d / f)}  {f}\n" for f in files))
    return path


def check_sha256sums(directory: str | Path) -> list[str]:
    """Files of `directory` whose sha256 differs from its `SHA256SUMS` (empty when everything matches)."""
    d = Path(directory)
    bad = []
    for line in (d / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            f = d / name.strip().lstrip("*")
            if not f.is_file() or sha256_file(f) != digest:
                bad.append(name.strip())
    return bad


def save_demo(result: DemoTrainResult, out_dir: str | Path, *, command: str | None = None) -> Path:
    """Save the trained demo model (no text tower), its training record and `SHA256SUMS` to `out_dir`."""
    from stp_edge.model.weights import save_stprompt

    out = save_stprompt(result.model, out_dir, text_tower=False)
    record = {"settings": asdict(result.settings), "best_epoch": result.best_epoch,
              "train_seconds": round(result.seconds, 1), "stopped_early": result.stopped_early,
              "torch_version": torch.__version__, "command": command, "history": result.history}
    (out / "training_log.json").write_text(json.dumps(record, indent=2) + "\n")
    write_sha256sums(out)
    return out
