"""Weakly supervised training of the STPrompt heads on pre-extracted snippet features (video labels only).

Losses: BCE on the mean of the top-k snippet scores (k = floor(T/16) + 1) against the binary video
label (top-k MIL), plus cross-entropy on the per-class top-k mean of the A-branch logits against the video class.
Features per video: `frame_emb` [T,E] and `region_emb` [T,R2,E] from the frozen encoder, one row per snippet.
A feature directory holds one `.npz` per video with keys `frame_emb`, `region_emb`, `label` (class index,
0 = normal).

`train_from_features` checks everything it can before the first epoch: the options, the output path, and every
feature file (a readable archive, the arrays, their shapes against the first file's and the model's, finite
values, an integer label in the model's classes); each problem is one line naming the file or option. The
checkpoint is written into a temporary directory beside `out` and renamed into place, so a full disk leaves no
half-written checkpoint.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stp_edge.errors import MissingInputError, OutputExistsError, StpEdgeError, UsageError
from stp_edge.outputs import replace_dir


class CheckpointWriteError(StpEdgeError, OSError):
    """The trained checkpoint could not be written (a full disk, no permission); nothing half-written is left."""


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

    check_train_options(epochs=epochs, lr=lr, batch_size=batch_size)
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
            if loss is None or not torch.isfinite(loss):
                raise UsageError(f"training diverged in epoch {len(history) + 1}: the model's outputs or loss "
                                 f"became NaN/inf; lower the learning rate (lr={lr}, CLI: --lr)")
            loss.backward()
            opt.step()
            total += loss.item() * min(batch_size, len(order) - start)
        history.append(total / len(videos))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    model.freeze_text()
    return history


def _batch_loss(model, batch: Iterable[FeatureVideo], ce_weight: float) -> torch.Tensor | None:
    """Mean loss over a batch; None when the model's outputs are no longer finite (training diverged)."""
    batch = list(batch)
    losses = []
    for v in batch:
        score_logit, class_logit = model.temporal_logits(v.frame_emb[None], v.region_emb[None])
        if not (torch.isfinite(score_logit).all() and torch.isfinite(class_logit).all()):
            return None
        bce, ce = mil_losses(score_logit[0], class_logit[0], v.label)
        losses.append(bce + ce_weight * ce)
    return torch.stack(losses).mean()


@torch.no_grad()
def snippet_scores(model, videos: Sequence[FeatureVideo]) -> list[np.ndarray]:
    """Per-snippet anomaly scores of each video (offline, whole video at once)."""
    model.eval()
    return [model.temporal(v.frame_emb[None], v.region_emb[None])[0][0].numpy() for v in videos]


FEATURE_ARRAYS = ("frame_emb", "region_emb", "label")


def _read_npz(f: Path) -> dict[str, np.ndarray]:
    """The training arrays of one feature file, read whole (so a damaged archive fails its CRC here)."""
    try:
        with np.load(f, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise UsageError(f"{f}: a single NumPy array, not an .npz archive of {list(FEATURE_ARRAYS)}")
            missing = set(FEATURE_ARRAYS) - set(z.files)
            if missing:
                raise UsageError(f"{f}: missing arrays {sorted(missing)}")
            return {k: z[k] for k in FEATURE_ARRAYS}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        if isinstance(exc, StpEdgeError):
            raise
        raise UsageError(f"{f}: not a readable .npz feature file ({type(exc).__name__}: {exc}); extract it again "
                         "(stp-edge extract)") from None


def _label(f: Path, value: np.ndarray) -> int:
    """A file's video label: one integer (an integral float such as 1.0 is that integer; 0.7 is refused)."""
    if value.shape != () or value.dtype.kind not in "iuf" or not np.isfinite(value) or value != np.round(value):
        raise UsageError(f"{f}: label is {value.tolist()!r} ({value.dtype}); expected one integer class index "
                         "(0 = normal)")
    return int(value)


def _feature_video(f: Path, first: tuple[Path, int, int] | None) -> FeatureVideo:
    """One checked feature file: shapes [T,E] / [T,R2,E] with T >= 1, E and R2 as the first file's, finite."""
    z = _read_npz(f)
    fe, re_ = z["frame_emb"], z["region_emb"]
    if fe.ndim != 2 or re_.ndim != 3 or re_.shape[0] != fe.shape[0] or re_.shape[2] != fe.shape[1]:
        raise UsageError(f"{f}: frame_emb {fe.shape} and region_emb {re_.shape} are not [T,E] and [T,R2,E]")
    if fe.shape[0] == 0:
        raise UsageError(f"{f}: no snippet (T=0); a video must have at least one snippet of features")
    if fe.dtype.kind != "f" or re_.dtype.kind != "f":
        raise UsageError(f"{f}: features are {fe.dtype}/{re_.dtype}; expected floating point")
    if first is not None and (fe.shape[1], re_.shape[1]) != first[1:]:
        raise UsageError(f"{f}: features are E={fe.shape[1]}, R2={re_.shape[1]} but {first[0].name} has "
                         f"E={first[1]}, R2={first[2]}; every file must come from the same encoder and regions")
    for name, arr in (("frame_emb", fe), ("region_emb", re_)):
        bad = int(arr.size - np.isfinite(arr).sum())
        if bad:
            raise UsageError(f"{f}: {name} holds {bad} non-finite value(s) (NaN/inf); extract this video again")
    label = _label(f, z["label"])
    return FeatureVideo(torch.from_numpy(np.ascontiguousarray(fe)).float(),
                        torch.from_numpy(np.ascontiguousarray(re_)).float(), label, f.stem)


def load_feature_dir(path: str | Path) -> list[FeatureVideo]:
    """Read and check every `*.npz` (frame_emb [T,E], region_emb [T,R2,E], label) under `path`.

    Raises:
        MissingInputError: `path` holds no `.npz` file.
        UsageError: a file is not a readable archive, lacks an array, has shapes other than the first file's,
            non-finite features or a label that is not one integer (naming the file).
    """
    files = sorted(Path(path).glob("*.npz"))
    if not files:
        raise MissingInputError(f"no .npz feature files in {path}")
    videos: list[FeatureVideo] = []
    first: tuple[Path, int, int] | None = None
    for f in files:
        v = _feature_video(f, first)
        first = first or (f, v.frame_emb.shape[1], v.region_emb.shape[1])
        videos.append(v)
    return videos


def check_train_options(*, epochs: int, lr: float, batch_size: int) -> None:
    """Refuse option values training cannot use (before any file is read), naming the CLI option."""
    for name, flag, value in (("epochs", "--epochs", epochs), ("batch_size", "--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1 (CLI: {flag}), got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise UsageError(f"lr must be a finite number > 0 (CLI: --lr), got {lr!r}")


def check_checkpoint_out(out: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse, before training, a checkpoint directory that cannot be written or would replace something.

    Raises:
        OutputExistsError: `out` exists and `overwrite` is False.
        UsageError: `out` is a file, or its nearest existing parent is not a writable directory.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file; a checkpoint is a directory (model.safetensors + config.json), "
                         "name a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"-o {out} already exists; pass overwrite=True (CLI: --force) to replace it")
    parent = out.absolute().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"-o {out}: cannot create it in {existing} (not a writable directory)")
    return out


def save_checkpoint(model, out: str | Path) -> Path:
    """`save_stprompt` into a temporary directory beside `out`, renamed into place (an old `out` is replaced).

    Raises:
        CheckpointWriteError: the disk is full or refuses the write; the temporary directory is removed.
    """
    from stp_edge.model.weights import save_stprompt

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise CheckpointWriteError(f"-o {out}: cannot create the checkpoint directory: {exc.strerror or exc}") from exc
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700; a checkpoint should be readable like any directory
        save_stprompt(model, tmp)
        replace_dir(tmp, out)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, OSError) and type(exc).__name__ != "SafetensorError":
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckpointWriteError(f"-o {out}: cannot write the checkpoint ({reason}); free disk space or "
                                   "choose another directory") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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
    overwrite: bool = False,
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
        overwrite: replace an existing, non-empty `out` (CLI: --force).

    Returns:
        A `TrainReport`.

    Raises:
        MissingInputError: `features` holds no `.npz` file.
        OutputExistsError: `out` exists and `overwrite` is False (checked before training).
        UsageError: an option is out of range, `out` cannot be written, a feature file is malformed, the
            features do not fit the model (embedding width, regions) or a label is outside its classes; all
            checked before the first epoch. Also when the loss becomes non-finite (lower `lr`).
        CheckpointWriteError: the checkpoint could not be written (full disk); nothing half-written is left.
    """
    from stp_edge.config import STPromptConfig
    from stp_edge.model.stprompt import STPrompt
    from stp_edge.model.weights import load_clip_into, load_stprompt

    check_train_options(epochs=epochs, lr=lr, batch_size=batch_size)
    check_checkpoint_out(out, overwrite=overwrite)
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
    _check_labels(videos, model.cfg.class_names)
    history = train_on_features(model, videos, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                progress=progress)
    return TrainReport(save_checkpoint(model, out), len(videos), history)


def _check_labels(videos: Sequence[FeatureVideo], class_names: Sequence[str]) -> None:
    """Every label is one of the model's classes; unlabelled features (-1) say how to label them."""
    bad = [v for v in videos if not 0 <= v.label < len(class_names)]
    if not bad:
        return
    shown = ", ".join(f"{v.name}: {v.label}" for v in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    hint = (" (-1 = extracted without labels: rerun `stp-edge extract` with --labels or --format)"
            if any(v.label == -1 for v in bad) else "")
    raise UsageError(f"labels outside the model's {len(class_names)} classes {list(class_names)}: {shown}{hint}")
