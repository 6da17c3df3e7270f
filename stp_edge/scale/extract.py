"""`stp-edge extract`: snippet features of many videos for `stp-edge train`, with the runtime's own encoder.

    extract_features("videos/", "feats/", bundle="model.stp", labels="labels.csv")
    extract_features("videos/", "feats/", clip_weights="ViT-B-16.pt", fmt="ucf-crime",
                     annotations="Temporal_Anomaly_Annotation_for_Testing_Videos.txt", ray=True)

One `<video stem>.npz` per video (keys: `stp_edge.scale.features`), written under a temporary name and
renamed, with its record beside it (`.<video stem>.npz.record.json`, `stp_edge.scale.records`). Resumable: a
rerun keeps every file whose record names the same feature fingerprint and the video as it is now and whose
bytes are intact (and relabels, without re-encoding, one whose label changed), deletes the temporary files a
killed run left, and encodes the rest (missing, damaged, made by another encoder, or of a replaced video).

With `clip_weights` instead of a bundle, a bundle is first exported from those weights into `<out_dir>/encoder.stp`
(random heads: extraction runs only the encoder; needs `pip install stp-edge[export]`); train with the same
weights (`stp-edge train FEATS --clip-weights ...`) and the trained model's encoder is the one the features came
from. The labels are read and checked before that export.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stp_edge.errors import UsageError
from stp_edge.scale.features import encode_video, feature_fingerprint, features_npz, relabelled_npz
from stp_edge.scale.inputs import VideoLabel, resolve_labels
from stp_edge.scale.jobs import (
    ArchiveReport,
    JobOutput,
    existing_output,
    prepare_outputs,
    run_archive,
    video_row,
    write_output,
)
from stp_edge.scale.records import Verdict, updated_record

ENCODER_BUNDLE = "encoder.stp"  # where --clip-weights puts the bundle it exports, inside the output folder


def clip_weights_bundle(clip_weights: str | Path, out: str | Path, *, config: str = "auto",
                        progress: bool = True) -> Path:
    """Export a bundle (random heads) around OpenAI CLIP weights, for feature extraction; reused if already there.

    `config="auto"` takes the ViT-B/16 defaults with the image and text towers' shapes read from the weights
    (so ViT-B/32 or a tiny test CLIP work too); "vit-b-16" or "tiny" force a preset.
    """
    from stp_edge.bundle import Bundle, BundleError

    out, weights = Path(out), str(Path(clip_weights).resolve())
    if out.exists():
        try:
            source = Bundle.load(out).manifest.get("source", {})
            if source.get("clip_weights") == weights and source.get("kind") == "random":
                return out
        except BundleError:
            pass
    from stp_edge.export.bundle_export import export_bundle

    overrides: dict[str, Any] = {}
    if config == "auto":
        from stp_edge.model.weights import infer_clip_config, read_clip_state_dict

        vision, text = infer_clip_config(read_clip_state_dict(weights))
        overrides = {"vision": dataclasses.asdict(vision), "text": dataclasses.asdict(text)}
        config = "vit-b-16"
    return export_bundle(out, random_config=config, clip_weights=weights, config_overrides=overrides, seed=0,
                         overwrite=True, progress=progress)


def _extract_job(detector: Any, row: dict[str, Any]) -> JobOutput:
    """Per-video job (`stp_edge.scale.jobs`): the video's `.npz` bytes and its snippet count."""
    feats = encode_video(detector.encoder, detector.config, row["video"], batch=int(row["batch"]))
    label = VideoLabel(int(row["label"]), str(row["class_name"]))
    return JobOutput(features_npz(feats, label, str(row["producer"]), detector.backend), len(feats.frame_ranges),
                     read=feats.num_frames, dropped=feats.dropped_frames, expected=feats.expected_frames,
                     extra={"label": label.index, "class_name": label.name})


def _keep_or_relabel(report: ArchiveReport, video: Path, target: Path, verdict: Verdict, label: VideoLabel) -> None:
    """A verified feature file: kept as it is, or rewritten with its new label (features not recomputed)."""
    if (verdict.record.get("label"), verdict.record.get("class_name")) == (label.index, label.name):
        report.keep(target, video, verdict)
        return
    data = relabelled_npz(target, label)
    write_output(target, data, updated_record(verdict.record, data, label=label.index, class_name=label.name))
    report.relabelled.append(target)
    if verdict.truncated:
        report.truncated[str(video)] = verdict.truncated


def extract_features(videos: str | Path | Sequence[str | Path], out_dir: str | Path, *,
                     bundle: str | Path | None = None, clip_weights: str | Path | None = None,
                     labels: str | Path | Mapping[str, int | str] | None = None, fmt: str | None = None,
                     annotations: str | Path | None = None, backend: str = "auto", batch: int = 16,
                     progress: bool = True, resume: bool = True, ray: bool = False, workers: int | None = None,
                     ray_address: str | None = None, config: str = "auto",
                     classes: Sequence[str] | None = None) -> ArchiveReport:
    """Snippet features (`frame_emb`, `region_emb`, label, frame ranges, fingerprint) of every video, one `.npz` each.

    Args:
        videos: A folder, glob, `.txt` list or file, or a sequence of them (`stp_edge.scale.inputs.expand_videos`).
        out_dir: Feature folder (created); `stp-edge train` reads it.
        bundle: The bundle whose encoder to run (the one the trained model will be exported with).
        clip_weights: OpenAI CLIP weights instead of a bundle: a bundle is exported to `out_dir/encoder.stp`.
        labels: A `video,label` CSV, or {video: class index or name}; label = class index, 0 = normal.
        fmt: Read labels from a data set's annotations instead: "ucf-crime", "shanghaitech", "ubnormal" or
            "synthetic" (`stp_edge.datasets`); anomalous videos get their class's index, or 1.
        annotations: UCF-Crime's temporal annotation file or ShanghaiTech's test_frame_mask folder (with `fmt`).
        backend: "auto" (trt > ort-cuda > ort-cpu) or a backend name, as `Detector.load`.
        batch: Snippets per encoder call.
        progress: Show a progress bar over videos.
        resume: Keep finished files of the same fingerprint and unchanged videos (each verified against its
            record); False: encode every video again.
        ray: Run as a Ray Data pipeline (`stp_edge.scale.jobs.run_ray`); the results are the same files.
        workers: Ray actors (default: one per CPU of the cluster).
        ray_address: Ray cluster to join (default: the connected one, `RAY_ADDRESS`, or a new local one).
        config: With `clip_weights`: "auto" (shapes from the weights), "vit-b-16" or "tiny".
        classes: Class names, normal first, that label indices refer to: those of the model you will train
            (`stp-edge train --classes`); default: the bundle's.

    Returns:
        An `ArchiveReport` (job "extract"); `report.failed` names videos that could not be read (the others are
        done).
    """
    from stp_edge.bundle import Bundle

    started = time.perf_counter()
    if (bundle is None) == (clip_weights is None):
        raise UsageError("give exactly one of bundle or clip_weights")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"batch must be an integer >= 1 (CLI: --batch), got {batch!r}")
    out = Path(out_dir)
    targets, partials = prepare_outputs(videos, out, ".npz")
    data_root = videos if isinstance(videos, (str, Path)) and Path(videos).is_dir() else None

    def labels_for(class_names: Sequence[str]) -> dict[Path, VideoLabel]:
        return resolve_labels(list(targets), tuple(classes) if classes else class_names, labels=labels, fmt=fmt,
                              annotations=annotations, data=data_root)

    if clip_weights is not None:
        from stp_edge.config import STPromptConfig

        # Checked before the export: the bundle gets the preset's classes (only the towers follow the weights).
        assumed = STPromptConfig.named("tiny" if config == "tiny" else "vit-b-16").class_names
        video_labels = labels_for(assumed)
        bundle = clip_weights_bundle(clip_weights, out / ENCODER_BUNDLE, config=config, progress=progress)
    loaded = Bundle.load(bundle)  # type: ignore[arg-type]
    if clip_weights is None or loaded.config.class_names != assumed:
        video_labels = labels_for(loaded.config.class_names)
    fingerprint = feature_fingerprint(loaded)
    report = ArchiveReport("extract", out, loaded.path, fingerprint, partials_removed=partials)
    rows = []
    for video, target in targets.items():
        label = video_labels[video]
        row = video_row(video, target, fingerprint, label=label.index, class_name=label.name, batch=batch)
        verdict = existing_output(row, resume=resume, what="encoder")
        if verdict.state == "done":
            _keep_or_relabel(report, video, target, verdict, label)
        else:
            report.redo(target, verdict)
            rows.append(row)
    return run_archive(report, rows, _extract_job, started=started, backend=backend, progress=progress, ray=ray,
                       workers=workers, ray_address=ray_address)
