"""VadCLIP's released CLIP features: the files, the list CSVs and their labels (NumPy only, no torch).

Facts from VadCLIP (github nwpu-zxr/VadCLIP, list/ and src/utils/): one `.npy` per video and crop view,
`NAME__0.npy` ... `NAME__9.npy`, each [T, 512] float32 (one CLIP ViT-B/16 frame embedding per 16-frame snippet;
views: 0 the centre crop, 1-4 the corners, 5-9 the same five crops mirrored; the test lists use view 5, the
mirrored centre). Lists are CSVs with the header `path,label`, one row per file: UCF-Crime labels are class folder
names (`Normal`, `Abuse`, ..., `RoadAccidents`), files under `CLASS/NAME__k.npy`; XD-Violence labels are the codes
in the file name after `_label_` (`A` normal, `B1` fighting, `B2` shooting, `B4` riot, `B5` abuse, `B6` car
accident, `G` explosion; up to three joined by `-`, `0` for none), files flat in one folder. The files hold frame
embeddings only: no patch or region features.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stp_edge.config import DEFAULT_CLASSES
from stp_edge.errors import MissingInputError, UsageError

VIEWS = 10
TEST_VIEW = 5  # the mirrored centre crop: the view VadCLIP's test lists (ucf/xd_CLIP_rgbtest.csv) name
MAX_SEQ_LEN = 256  # VadCLIP's --visual-length: longer training videos are averaged down to it
LAYOUTS = ("ucf-crime", "xd-violence")

UCF_LABELS = {"Normal": "normal", "Abuse": "abuse", "Arrest": "arrest", "Arson": "arson", "Assault": "assault",
              "Burglary": "burglary", "Explosion": "explosion", "Fighting": "fighting",
              "RoadAccidents": "road accident", "Robbery": "robbery", "Shooting": "shooting",
              "Shoplifting": "shoplifting", "Stealing": "stealing", "Vandalism": "vandalism"}
XD_CODES = {"A": "normal", "B1": "fighting", "B2": "shooting", "B4": "riot", "B5": "abuse", "B6": "car accident",
            "G": "explosion"}
CLASSES = {"ucf-crime": DEFAULT_CLASSES, "xd-violence": tuple(XD_CODES.values())}
"""Each layout's classes, normal first (the class names of a model trained on it)."""

_FILE = re.compile(r"^(?P<name>.+)__(?P<view>[0-9])\.npy$")


@dataclass(frozen=True)
class VadclipVideo:
    """One video of a VadCLIP feature set: its crop views (view index -> file) and its classes.

    Attributes:
        name: The file name before `__k.npy`.
        views: (view, path) pairs, by view.
        classes: Class names, normal alone or the anomaly classes (XD-Violence videos may have up to three).
        layout: "ucf-crime" or "xd-violence".
    """

    name: str
    views: tuple[tuple[int, Path], ...]
    classes: tuple[str, ...]
    layout: str

    def test_view(self) -> Path:
        """The file of the view VadCLIP tests on (the mirrored centre), else the lowest view present."""
        return dict(self.views).get(TEST_VIEW, self.views[0][1])


def parse_label(text: str, where: str) -> tuple[str, tuple[str, ...]]:
    """(layout, class names) of one VadCLIP label: a UCF-Crime folder name or XD-Violence codes (`B2-G-0`).

    Raises:
        UsageError: the label is neither, naming `where` (file and row).
    """
    text = text.strip()
    if text in UCF_LABELS:
        return "ucf-crime", (UCF_LABELS[text],)
    parts = [p for p in text.split("-") if p != "0"]
    if parts and all(p in XD_CODES for p in parts):
        classes = tuple(dict.fromkeys(XD_CODES[p] for p in parts))
        if "normal" in classes and len(classes) > 1:
            raise UsageError(f"{where}: label {text!r} is both normal (A) and anomalous")
        return "xd-violence", classes
    raise UsageError(f"{where}: label {text!r} is neither a UCF-Crime class folder ({', '.join(UCF_LABELS)}) nor "
                     f"XD-Violence codes ({', '.join(XD_CODES)}, joined by '-')")


def _split_name(path: Path, where: str) -> tuple[str, int]:
    m = _FILE.match(path.name)
    if not m:
        raise UsageError(f"{where}: {path.name!r} is not a VadCLIP feature file name (NAME__k.npy, k = 0..9)")
    return m["name"], int(m["view"])


def _resolve(listed: str, root: Path) -> Path | None:
    """The file a list row names: as written, or (the lists hold their authors' absolute paths) under `root`."""
    p = Path(listed)
    for candidate in (p, root / p.parent.name / p.name, root / p.name):
        if candidate.is_file():
            return candidate
    return None


def read_list(list_csv: str | Path, root: str | Path) -> list[VadclipVideo]:
    """The videos of a VadCLIP list CSV (`path,label`), their files found as listed or under `root`.

    Raises:
        MissingInputError: the list does not exist, or names files found neither as listed nor under `root`.
        UsageError: the header is not `path,label`, a row is malformed, a label is unknown, the list mixes the
            two layouts, or one video is listed with two different labels.
    """
    list_csv, root = Path(list_csv), Path(root)
    if not list_csv.is_file():
        raise MissingInputError(f"VadCLIP list {list_csv} not found")
    with open(list_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["path", "label"]:
        raise UsageError(f"{list_csv}: the first row must be the header 'path,label' (VadCLIP's lists), got "
                         f"{','.join(rows[0]) if rows else 'an empty file'!r}")
    entries, missing = [], []
    for i, row in enumerate(rows[1:], start=2):
        where = f"{list_csv} row {i}"
        if len(row) != 2:
            raise UsageError(f"{where}: expected 2 columns (path,label), got {len(row)}")
        path = _resolve(row[0].strip(), root)
        if path is None:
            missing.append(row[0].strip())
            continue
        entries.append((path, row[1], where))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingInputError(f"{list_csv}: {len(missing)} listed file(s) found neither as listed nor under "
                                f"{root} (as {root}/CLASS/NAME__k.npy or {root}/NAME__k.npy): {shown}")
    return _group(entries, str(list_csv))


def scan_dir(root: str | Path) -> list[VadclipVideo]:
    """The videos of a VadCLIP feature folder without a list, labelled from the names.

    As VadCLIP's list scripts take them: XD-Violence from the `_label_` part of the file name; UCF-Crime from the
    class folder (`Normal` for a folder whose name contains `Normal`).

    Raises:
        MissingInputError: no `NAME__k.npy` file under `root`.
        UsageError: a label cannot be told (see `parse_label`), or the folder mixes the two layouts.
    """
    root = Path(root)
    files = sorted(p for p in root.rglob("*.npy") if _FILE.match(p.name))
    if not files:
        raise MissingInputError(f"no VadCLIP feature files (NAME__k.npy) under {root}")
    entries = []
    for p in files:
        name = _FILE.match(p.name)["name"]  # type: ignore[index]
        if "_label_" in name:
            label = name.split("_label_")[-1]
        else:
            label = "Normal" if "Normal" in p.parent.name else p.parent.name
        entries.append((p, label, str(p)))
    return _group(entries, str(root))


def _group(entries: Iterable[tuple[Path, str, str]], source: str) -> list[VadclipVideo]:
    """Rows (file, label, where) -> one VadclipVideo per name, views in order; one layout, one label per video."""
    videos: dict[str, dict] = {}
    layouts = set()
    for path, label, where in entries:
        name, view = _split_name(path, where)
        layout, classes = parse_label(label, where)
        layouts.add(layout)
        v = videos.setdefault(name, {"views": {}, "classes": classes, "where": where})
        if v["classes"] != classes:
            raise UsageError(f"{where}: {name} is labelled {classes} here and {v['classes']} at {v['where']}")
        v["views"][view] = path
    if len(layouts) > 1:
        raise UsageError(f"{source}: mixes UCF-Crime and XD-Violence labels; train on one data set at a time")
    if not videos:
        raise MissingInputError(f"{source}: lists no feature file")
    layout = layouts.pop()
    return [VadclipVideo(name, tuple(sorted(v["views"].items())), v["classes"], layout)
            for name, v in sorted(videos.items())]


def check_view(path: Path, embed_dim: int) -> int:
    """The snippet count T of one feature file, its header checked ([T, embed_dim] floating point, T >= 1).

    Reads only the header (memory-mapped), so a whole data set is checked before training in seconds.
    """
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{path}: not a readable .npy file ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 2 or arr.shape[1] != embed_dim or arr.shape[0] < 1 or arr.dtype.kind != "f":
        raise UsageError(f"{path}: features are {arr.dtype} {list(arr.shape)}; expected [T, {embed_dim}] floating "
                         f"point with T >= 1 (one CLIP frame embedding per snippet, the model's embed_dim)")
    return int(arr.shape[0])


def load_view(path: Path, embed_dim: int) -> np.ndarray:
    """One view's features, float32 [T, embed_dim], checked finite (the file named otherwise)."""
    check_view(path, embed_dim)
    arr = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
    bad = int(arr.size - np.isfinite(arr).sum())
    if bad:
        raise UsageError(f"{path}: {bad} non-finite value(s) (NaN/inf) in the features")
    return arr


def average_to_length(feat: np.ndarray, length: int) -> np.ndarray:
    """`feat` [T, ...] unchanged when T <= length, else averaged down to `length` rows.

    VadCLIP's training sequences: row i is the mean of snippets [floor(i T / L), floor((i+1) T / L)).
    """
    t = feat.shape[0]
    if t <= length:
        return feat
    edges = np.linspace(0, t, length + 1).astype(np.int64)
    return np.stack([feat[a:b].mean(axis=0) for a, b in itertools.pairwise(edges)]).astype(feat.dtype)
