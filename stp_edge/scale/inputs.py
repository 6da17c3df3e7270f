"""What an archive job reads: the video files of a folder, glob or list, their output names and their labels.

Labels come from a CSV (`video,label`) or from a data set's annotations read by `stp_edge.datasets`
(UCF-Crime, ShanghaiTech, UBnormal, the synthetic benchmark). A label is a class index of the bundle's config
(0 = normal): an anomalous video whose annotated class is one of the bundle's classes gets that class's index,
any other anomalous video gets 1 (binary: normal / anomalous).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stp_edge.errors import UsageError

UNLABELLED = -1  # the label stored when no label source is given (the trainer refuses it)


@dataclass(frozen=True)
class VideoLabel:
    """A video's label: class index (0 = normal, -1 = unlabelled) and the class name it came from."""

    index: int
    name: str


def expand_videos(videos: str | Path | Sequence[str | Path]) -> list[Path]:
    """Video files named by a folder, a glob, a `.txt` list or a file (or a sequence of these), in order.

    URLs and cameras are refused: an archive job needs files that end.
    """
    from stp_edge.sources import expand_sources
    from stp_edge.video import parse_source

    specs = [videos] if isinstance(videos, (str, Path)) else list(videos)
    out: list[Path] = []
    for spec in specs:
        for source in expand_sources(spec):
            kind, _ = parse_source(source)
            if kind != "file":
                raise UsageError(f"{source!r} is a {kind}; extract and score read video files only")
            out.append(Path(source))
    if not out:
        raise UsageError(f"no videos in {videos!r}")
    return list(dict.fromkeys(out))


def output_names(videos: Sequence[Path], suffix: str) -> dict[Path, str]:
    """video -> output file name (`<stem><suffix>`); two videos with the same stem are an error, not an overwrite."""
    names: dict[str, Path] = {}
    for v in videos:
        name = f"{v.stem}{suffix}"
        if name in names:
            raise UsageError(f"videos {names[name]} and {v} would both write {name}; give them distinct names")
        names[name] = v
    return {v: n for n, v in names.items()}


def _class_index(value: str, class_names: Sequence[str], where: str) -> VideoLabel:
    """A CSV label: an integer class index, or a class name of the bundle ("normal" = 0)."""
    value = value.strip()
    try:
        index = int(value)
    except ValueError:
        lowered = [c.lower() for c in class_names]
        if value.lower() not in lowered:
            raise UsageError(f"{where}: label {value!r} is neither a class index nor one of the bundle's classes "
                             f"{list(class_names)}") from None
        index = lowered.index(value.lower())
    if not 0 <= index < len(class_names):
        raise UsageError(f"{where}: label {index} is outside the bundle's {len(class_names)} classes")
    return VideoLabel(index, class_names[index])


def read_label_csv(path: str | Path, class_names: Sequence[str]) -> dict[str, VideoLabel]:
    """`video,label` rows (a header row `video,label` is optional) -> {video: label}.

    `video` is a file name, stem or path; `label` an integer class index or a class name of the bundle. The file
    is UTF-8, with or without a byte-order mark (as spreadsheets save it). A video listed twice with different
    labels is an error naming both lines; the same label twice is accepted.
    """
    path = Path(path)
    table: dict[str, VideoLabel] = {}
    lines: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        try:
            rows = list(csv.reader(fh))
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV "
                             "(video,label)") from None
    for lineno, row in enumerate(rows, 1):
        if not row or row[0].strip().startswith("#"):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["video", "label"]:
            continue
        if len(row) < 2:
            raise UsageError(f"{path}:{lineno}: expected 'video,label', got {row}")
        video, label = row[0].strip(), _class_index(row[1], class_names, f"{path}:{lineno}")
        if video in table and table[video] != label:
            raise UsageError(f"{path}:{lineno}: video {video!r} is labelled {label.index} ({label.name}) here but "
                             f"{table[video].index} ({table[video].name}) on line {lines[video]}; give each video "
                             "one label")
        table.setdefault(video, label)
        lines.setdefault(video, lineno)
    if not table:
        raise UsageError(f"{path}: no `video,label` rows")
    return table


def read_annotation_labels(fmt: str, annotations: str | Path | None, data: str | Path | None,
                           class_names: Sequence[str]) -> dict[str, VideoLabel]:
    """{video: label} from a data set's annotations (`stp_edge.datasets.load_ground_truth`).

    A video the annotation marks anomalous gets its class's index in `class_names` when the class is one of
    them, else 1; a normal video gets 0. `data` is the data set root (UBnormal, synthetic), `annotations` the
    annotation file or folder (UCF-Crime, ShanghaiTech).
    """
    from stp_edge.datasets import load_ground_truth

    root = data if data is not None else annotations
    gts = load_ground_truth(root, fmt, annotations, class_names=class_names)  # type: ignore[arg-type]
    table = {}
    for gt in gts:
        if gt.label == "normal":
            table[gt.name] = VideoLabel(0, class_names[0])
        elif gt.label in class_names[1:]:
            table[gt.name] = VideoLabel(list(class_names).index(gt.label), gt.label)
        else:
            table[gt.name] = VideoLabel(1, gt.label)
    return table


def match_labels(videos: Sequence[Path], table: Mapping[str, VideoLabel], source: str) -> dict[Path, VideoLabel]:
    """Each video's label, looked up by the table's path, file name or stem; every video must have one.

    Entries that name the same video in different ways ("a.mp4", "a", "dir/a.mp4") must agree on its label.
    """
    by_key: dict[str, dict[str, VideoLabel]] = {}
    for key, label in table.items():
        for k in (key, Path(key).name, Path(key).stem):
            by_key.setdefault(k, {})[key] = label
    out, missing = {}, []
    for v in videos:
        entries = {key: label for k in (str(v), v.name, v.stem) for key, label in by_key.get(k, {}).items()}
        if len(set(entries.values())) > 1:
            shown = "; ".join(f"{key!r} -> {label.index} ({label.name})" for key, label in entries.items())
            raise UsageError(f"{source} labels video {v} differently: {shown}; give each video one label")
        if not entries:
            missing.append(v.name)
        else:
            out[v] = next(iter(entries.values()))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(f"{len(missing)} video(s) have no label in {source}: {shown}")
    return out


def resolve_labels(videos: Sequence[Path], class_names: Sequence[str], *,
                   labels: str | Path | Mapping[str, int | str] | None = None, fmt: str | None = None,
                   annotations: str | Path | None = None, data: str | Path | None = None) -> dict[Path, VideoLabel]:
    """The label of every video, from `labels` (CSV path or {video: index or class name}) or `fmt` annotations.

    Without either, every video is unlabelled (`UNLABELLED`): its features can be scored but not trained on.
    """
    if labels is not None and fmt is not None:
        raise UsageError("give labels from a CSV or from a data set's annotations (format), not both")
    if labels is None and fmt is None:
        return {v: VideoLabel(UNLABELLED, "") for v in videos}
    if fmt is not None:
        table = read_annotation_labels(fmt, annotations, data, class_names)
        return match_labels(videos, table, f"the {fmt} annotations")
    if isinstance(labels, Mapping):
        table = {k: _class_index(str(v), class_names, f"labels[{k!r}]") for k, v in labels.items()}
        return match_labels(videos, table, "the labels given")
    return match_labels(videos, read_label_csv(labels, class_names), str(labels))  # type: ignore[arg-type]
