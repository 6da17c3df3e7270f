"""Weakly supervised training of the STPrompt heads on pre-extracted snippet features (video labels only).

Losses: BCE on the mean of the top-k snippet scores (k = floor(T/16) + 1) against the binary video
label (top-k MIL), plus cross-entropy on the per-class top-k mean of the A-branch logits against the video class
(or classes: a multi-label video's target is spread evenly over them).
Features per video: `frame_emb` [T,E] and `region_emb` [T,R2,E] from the frozen encoder, one row per snippet.
Two feature formats: ours (`features`: one `.npz` per video with keys `frame_emb`, `region_emb`, `label`, class
index, 0 = normal; `stp-edge extract`) and VadCLIP's released CLIP features (`vadclip`: frame embeddings only,
ten crop views per video, `stp_edge.model.vadclip`), which train a frame-only model (`region_term` false).
Two recipes (`RECIPES`): ours (whole videos, shuffled, lr 1e-3) and VadCLIP's (sequences of at most 256
positions, longer videos averaged down; each step one batch of normal and one of anomalous videos; lr 2e-5; plus
its text-separation loss, the mean |cos| between the normal class prompt and each anomaly one, weight 0.1).

`train_from_features` checks everything it can before the first epoch: the options, the output path, and every
feature file (a readable archive, the arrays, their shapes against the first file's and the model's, finite
values, an integer label in the model's classes); each problem is one line naming the file or option. The
checkpoint is written into a temporary directory beside `out` and renamed into place, so a full disk leaves no
half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stp_edge.errors import MissingInputError, OutputExistsError, StpEdgeError, UsageError
from stp_edge.outputs import replace_dir


class CheckpointWriteError(StpEdgeError, OSError):
    """The trained checkpoint could not be written (a full disk, no permission); nothing half-written is left."""


@dataclass
class FeatureVideo:
    """One training video: snippet features and its video-level class (0 = normal).

    `region_emb` is None for frame-only features (VadCLIP's); `classes` lists every class of a multi-label video
    (XD-Violence), `label` being the first (empty: `label` alone).
    """

    frame_emb: torch.Tensor  # [T,E]
    region_emb: torch.Tensor | None  # [T,R2,E]
    label: int
    name: str = ""
    classes: tuple[int, ...] = ()

    def load(self) -> FeatureVideo:
        """This video (already in memory); lazily loaded items (VadCLIP views) return a new FeatureVideo."""
        return self


@dataclass(frozen=True)
class VadclipItem:
    """One VadCLIP (video, crop view) training item, read from its file when a batch needs it."""

    path: Path
    embed_dim: int
    label: int
    name: str
    classes: tuple[int, ...] = ()

    def load(self) -> FeatureVideo:
        from stp_edge.model.vadclip import load_view

        fe = torch.from_numpy(load_view(self.path, self.embed_dim))
        return FeatureVideo(fe, None, self.label, self.name, self.classes)


@dataclass(frozen=True)
class Recipe:
    """How heads are trained: defaults of the options, sequence length, batching and the extra loss.

    Attributes:
        name: "stp-edge" or "vadclip".
        lr, epochs, batch_size: Defaults of the options (batch_size: videos per step; "vadclip": per half).
        max_len: Longer videos are averaged down to this many positions (None: whole videos).
        balanced: Each step takes `batch_size` normal and `batch_size` anomalous videos.
        separation: Weight of the text-separation loss (0: none).
    """

    name: str
    lr: float
    epochs: int
    batch_size: int
    max_len: int | None
    balanced: bool
    separation: float

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES = {
    "stp-edge": Recipe("stp-edge", lr=1e-3, epochs=30, batch_size=8, max_len=None, balanced=False, separation=0.0),
    # VadCLIP (src/ucf_option.py, ucf_train.py): visual length 256, 64 normal + 64 anomalous videos per step,
    # AdamW lr 2e-5, 10 epochs, loss3 = sum_j |cos(t_normal, t_j)| / 13 * 0.1 (the mean over anomaly classes).
    "vadclip": Recipe("vadclip", lr=2e-5, epochs=10, batch_size=64, max_len=256, balanced=True, separation=0.1),
}


def get_recipe(name: str) -> Recipe:
    """The named recipe, or UsageError naming the choices."""
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r} (CLI: --recipe); expected one of {list(RECIPES)}")
    return RECIPES[name]


def resolve_options(recipe: Recipe, epochs: int | None, lr: float | None, batch_size: int | None
                    ) -> tuple[int, float, int]:
    """(epochs, lr, batch_size): each given value, or the recipe's default where None."""
    return (recipe.epochs if epochs is None else epochs, recipe.lr if lr is None else lr,
            recipe.batch_size if batch_size is None else batch_size)


def topk_count(t: int) -> int:
    """k of the top-k MIL pooling for a video of t snippets."""
    return t // 16 + 1


def mil_losses(score_logit: torch.Tensor, class_logit: torch.Tensor, label: int,
               dense_normal: bool = False, classes: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, CE) for one video: score_logit [T], class_logit [T,K], label = video class index.

    The BCE is on the mean of the top-k snippet scores; with `dense_normal`, a normal video's BCE covers every
    snippet instead (none of them is anomalous). `classes`: every class of a multi-label video; the CE target is
    then spread evenly over them.
    """
    k = min(topk_count(score_logit.shape[0]), score_logit.shape[0])
    if dense_normal and label == 0:
        bce = F.binary_cross_entropy_with_logits(score_logit, torch.zeros_like(score_logit))
    else:
        p = torch.sigmoid(score_logit).topk(k).values.mean().clamp(1e-6, 1 - 1e-6)
        bce = F.binary_cross_entropy(p, torch.tensor(float(label > 0), dtype=p.dtype))
    per_class = class_logit.topk(k, dim=0).values.mean(dim=0)  # [K]
    if len(classes) > 1:
        target = torch.zeros_like(per_class)
        target[list(classes)] = 1.0 / len(set(classes))
        ce = F.cross_entropy(per_class.unsqueeze(0), target.unsqueeze(0))
    else:
        ce = F.cross_entropy(per_class.unsqueeze(0), torch.tensor([label]))
    return bce, ce


def separation_loss(text_features: torch.Tensor) -> torch.Tensor:
    """VadCLIP's text-separation loss: mean over anomaly classes j of |cos(E_normal, E_j)| (E: [K,E])."""
    e = F.normalize(text_features, dim=-1)
    return (e[1:] @ e[0]).abs().mean()


def trainable_head_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters trained on features: adapter, C-branch and the learned prompt context."""
    return [*model.adapter.parameters(), *model.c_branch.parameters(), model.prompts.ctx]


def _batches(items: Sequence, recipe: Recipe, batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """One epoch's batches of item indices: shuffled slices, or (balanced) normal + anomalous halves per step."""
    order = rng.permutation(len(items))
    if not recipe.balanced:
        return [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    normal = [int(i) for i in order if items[i].label == 0]
    anomalous = [int(i) for i in order if items[i].label != 0]
    steps = max(1, min(len(normal), len(anomalous)) // batch_size)  # drop_last, as VadCLIP; at least one step
    return [normal[s * batch_size:(s + 1) * batch_size] + anomalous[s * batch_size:(s + 1) * batch_size]
            for s in range(steps)]


def _fit(v: FeatureVideo, max_len: int | None) -> FeatureVideo:
    """`v` with at most `max_len` positions (longer videos averaged down, `vadclip.average_to_length`)."""
    from stp_edge.model.vadclip import average_to_length

    if max_len is None or v.frame_emb.shape[0] <= max_len:
        return v
    region = None if v.region_emb is None else torch.from_numpy(average_to_length(v.region_emb.numpy(), max_len))
    return FeatureVideo(torch.from_numpy(average_to_length(v.frame_emb.numpy(), max_len)), region, v.label, v.name,
                        v.classes)


def train_on_features(
    model,
    videos: Sequence[FeatureVideo | VadclipItem],
    *,
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    ce_weight: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    recipe: str = "stp-edge",
) -> list[float]:
    """Train the heads with top-k MIL on video-level labels; returns the mean loss of each epoch.

    `recipe` ("stp-edge" or "vadclip", `RECIPES`) sets the batching, sequence length and extra loss, and the
    defaults of `epochs`, `lr` and `batch_size` (None: the recipe's).
    """
    from tqdm.auto import tqdm

    rec = get_recipe(recipe)
    epochs, lr, batch_size = resolve_options(rec, epochs, lr, batch_size)
    check_train_options(epochs=epochs, lr=lr, batch_size=batch_size)
    if not videos:
        raise UsageError("no training videos")
    if rec.balanced and len({v.label == 0 for v in videos}) < 2:
        raise UsageError(f"recipe {rec.name!r} takes normal and anomalous videos in every step, but the training "
                         f"set has only {'normal' if videos[0].label == 0 else 'anomalous'} ones")
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
        total, seen = 0.0, 0
        for batch in _batches(videos, rec, batch_size, rng):
            opt.zero_grad()
            loaded = [_fit(videos[i].load(), rec.max_len) for i in batch]
            loss = _batch_loss(model, loaded, ce_weight, rec.separation)
            if loss is None or not torch.isfinite(loss):
                raise UsageError(f"training diverged in epoch {len(history) + 1}: the model's outputs or loss "
                                 f"became NaN/inf; lower the learning rate (lr={lr}, CLI: --lr)")
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(batch), seen + len(batch)
        history.append(total / seen)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    model.freeze_text()
    return history


def _batch_loss(model, batch: Iterable[FeatureVideo], ce_weight: float,
                separation: float = 0.0) -> torch.Tensor | None:
    """Mean loss over a batch (+ the separation loss); None when the model's outputs are no longer finite."""
    batch = list(batch)
    losses = []
    for v in batch:
        region = None if v.region_emb is None else v.region_emb[None]
        score_logit, class_logit = model.temporal_logits(v.frame_emb[None], region)
        if not (torch.isfinite(score_logit).all() and torch.isfinite(class_logit).all()):
            return None
        bce, ce = mil_losses(score_logit[0], class_logit[0], v.label, classes=v.classes)
        losses.append(bce + ce_weight * ce)
    loss = torch.stack(losses).mean()
    if separation:
        loss = loss + separation * separation_loss(model.text_features())
    return loss


@torch.no_grad()
def snippet_scores(model, videos: Sequence[FeatureVideo]) -> list[np.ndarray]:
    """Per-snippet anomaly scores of each video (offline, whole video at once)."""
    model.eval()
    return [model.temporal(v.frame_emb[None], None if v.region_emb is None else v.region_emb[None])[0][0].numpy()
            for v in videos]


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


def save_checkpoint(model, out: str | Path, training: dict[str, Any] | None = None) -> Path:
    """`save_stprompt` into a temporary directory beside `out`, renamed into place (an old `out` is replaced).

    `training`: how the model was trained, written as training.json (export copies it into the manifest).

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
        if training is not None:
            (tmp / TRAINING_RECORD).write_text(json.dumps(training, indent=2) + "\n", encoding="utf-8")
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
    """What `train_from_features` did: the checkpoint it wrote, the videos it trained on, the loss per epoch.

    `training` is what the checkpoint's training.json records (format, recipe, options), which export copies
    into the bundle manifest (`source.training`).
    """

    checkpoint: Path
    videos: int
    losses: list[float]
    training: dict[str, Any] = dataclasses.field(default_factory=dict)


TRAINING_RECORD = "training.json"
FORMATS = ("features", "vadclip")


def train_from_features(
    features: str | Path,
    out: str | Path,
    *,
    init: str | Path | None = None,
    config: str = "vit-b-16",
    classes: Sequence[str] | None = None,
    clip_weights: str | Path | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    format: str = "features",
    recipe: str = "stp-edge",
    list_file: str | Path | None = None,
    queries: Mapping[str, Any] | None = None,
) -> TrainReport:
    """Train an STPrompt's heads on a feature directory and save the checkpoint (`stp-edge train`).

    Args:
        features: directory of `.npz` snippet features, one per video (`stp-edge extract`), or (format
            "vadclip") of VadCLIP's released `NAME__k.npy` files.
        out: output checkpoint directory.
        init: a checkpoint to start from (keeps its CLIP weights); `config`, `classes` and `clip_weights` are
            then not used.
        config: named config of a new model ("vit-b-16" or "tiny").
        classes: class names of a new model, normal first (default: the config's; "vadclip": the data set's).
        clip_weights: OpenAI CLIP weights for a new model's frozen encoders (default: random).
        epochs: training epochs (None: the recipe's).
        lr: learning rate (None: the recipe's).
        batch_size: videos per batch (None: the recipe's; "vadclip" recipe: per half of a balanced batch).
        seed: seed of the batch order and of torch during training.
        progress: show a progress bar.
        overwrite: replace an existing, non-empty `out` (CLI: --force).
        format: "features" (ours) or "vadclip" (VadCLIP's CLIP features: a frame-only model, region_term false,
            preprocess "vadclip"; every listed crop view is a training item).
        recipe: "stp-edge" or "vadclip" (`RECIPES`).
        list_file: format "vadclip": a VadCLIP list CSV (`path,label`) choosing the files and labels (default:
            every `NAME__k.npy` under `features`, labelled from the names).
        queries: a new model's spatial queries, config overrides {"normal_queries", "abnormal_queries"}
            (`stp_edge.config.load_queries`; CLI: --queries); a checkpoint given as `init` keeps its own
            (`stp-edge export --queries` changes them).

    Returns:
        A `TrainReport`.

    Raises:
        MissingInputError: `features` holds no feature file (or the list names missing files).
        OutputExistsError: `out` exists and `overwrite` is False (checked before training).
        UsageError: an option is out of range, `out` cannot be written, a feature file is malformed, the
            features do not fit the model (embedding width, regions) or a label is outside its classes; all
            checked before the first epoch. Also when the loss becomes non-finite (lower `lr`).
        CheckpointWriteError: the checkpoint could not be written (full disk); nothing half-written is left.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown feature format {format!r} (CLI: --format); expected one of {list(FORMATS)}")
    rec = get_recipe(recipe)
    epochs, lr, batch_size = resolve_options(rec, epochs, lr, batch_size)
    check_train_options(epochs=epochs, lr=lr, batch_size=batch_size)
    if list_file is not None and format != "vadclip":
        raise UsageError("a list file (CLI: --list) is read with --format vadclip only")
    check_checkpoint_out(out, overwrite=overwrite)
    if init and queries:
        raise UsageError(f"--init {init}: a checkpoint keeps its spatial queries; change them at export "
                         "(stp-edge export --queries)")
    if format == "vadclip":
        model, items, record = _vadclip_items(features, list_file, init, config, classes, clip_weights, queries)
    else:
        model, items, record = _feature_items(features, init, config, classes, clip_weights, queries)
    history = train_on_features(model, items, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                progress=progress, recipe=recipe)
    training = {**record, "recipe": rec.describe(), "epochs": epochs, "lr": lr, "batch_size": batch_size,
                "seed": seed, "region_term": model.cfg.region_term}
    return TrainReport(save_checkpoint(model, out, training), record["videos"], history, training)


def _model(init, config: str, classes: Sequence[str] | None, clip_weights, queries=None, **overrides: Any):
    """The model to train: the checkpoint `init`, or a new one of `config` with `classes`, `queries`, `overrides`.

    Around pretrained CLIP weights with export's defaults (`pretrained_overrides`: crops of the whole frame for
    ViT-B/16), so the model trains on what the bundle will compute.
    """
    from stp_edge.config import STPromptConfig, pretrained_overrides
    from stp_edge.model.stprompt import STPrompt
    from stp_edge.model.weights import load_clip_into, load_stprompt

    if init:
        return load_stprompt(init)
    if classes:
        overrides["class_names"] = tuple(classes)
    overrides.update(queries or {})
    if clip_weights:
        overrides = pretrained_overrides(config, overrides)
    model = STPrompt(STPromptConfig.named(config, **overrides))
    if clip_weights:
        load_clip_into(model, clip_weights)
    return model


def _feature_items(features, init, config, classes, clip_weights, queries=None):
    """(model, videos, record) for our `.npz` features, every file checked against the model."""
    videos = load_feature_dir(features)
    model = _model(init, config, classes, clip_weights, queries)
    e, r2 = model.cfg.vision.embed_dim, model.cfg.num_regions
    v = videos[0]
    if v.frame_emb.shape[1] != e or v.region_emb.shape[1] != r2:
        raise UsageError(f"{features}: features are E={v.frame_emb.shape[1]}, R2={v.region_emb.shape[1]}; "
                         f"the model expects E={e}, R2={r2}")
    _check_labels(videos, model.cfg.class_names)
    return model, videos, {"format": "features", "videos": len(videos)}


def _vadclip_items(features, list_file, init, config, classes, clip_weights, queries=None):
    """(model, items, record) for VadCLIP's features: one item per listed (video, view), headers checked.

    The model is frame-only (region_term false) with VadCLIP's preprocessing: the files hold no region features,
    and they are never filled with copies of the frame feature.
    """
    from stp_edge.model.vadclip import CLASSES, check_view, read_list, scan_dir

    videos = read_list(list_file, features) if list_file is not None else scan_dir(features)
    layout = videos[0].layout
    model = _model(init, config, classes or CLASSES[layout], clip_weights, queries, region_term=False,
                   preprocess="vadclip")
    cfg = model.cfg
    if cfg.region_term or cfg.preprocess != "vadclip":
        raise UsageError(f"--init {init}: its config has region_term={cfg.region_term}, preprocess="
                         f"{cfg.preprocess!r}; VadCLIP's features train a frame-only model (region_term false, "
                         f"preprocess 'vadclip'): start a new model or initialise from one trained on them")
    index = {name: i for i, name in enumerate(cfg.class_names)}
    unknown = sorted({c for v in videos for c in v.classes if c not in index})
    if unknown:
        raise UsageError(f"{list_file or features}: classes {unknown} ({layout}) are not among the model's "
                         f"{list(cfg.class_names)}; pass --classes or train a new model")
    items = []
    for v in videos:
        ids = tuple(index[c] for c in v.classes)
        for view, path in v.views:
            check_view(path, cfg.vision.embed_dim)
            items.append(VadclipItem(path, cfg.vision.embed_dim, ids[0], f"{v.name}__{view}", ids))
    record = {"format": "vadclip", "layout": layout, "videos": len(videos), "items": len(items),
              "views": sorted({view for v in videos for view, _ in v.views}),
              "list": str(list_file) if list_file is not None else None}
    return model, items, record


def _check_labels(videos: Sequence[FeatureVideo], class_names: Sequence[str]) -> None:
    """Every label is one of the model's classes; unlabelled features (-1) say how to label them."""
    bad = [v for v in videos if not 0 <= v.label < len(class_names)]
    if not bad:
        return
    shown = ", ".join(f"{v.name}: {v.label}" for v in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    hint = (" (-1 = extracted without labels: rerun `stp-edge extract` with --labels or --format)"
            if any(v.label == -1 for v in bad) else "")
    raise UsageError(f"labels outside the model's {len(class_names)} classes {list(class_names)}: {shown}{hint}")
