"""Expand a source specification into the video sources it names: a directory, a glob or a list file.

`expand_sources()` turns one argument into a list of sources that `stp_edge.video.open_source` opens:

- a camera index or a URL: itself;
- a directory: its video files (`stp_edge.media_files.video_files`: the files directly inside it with a video
  extension, natural order: cam2 before cam10; subfolders are not searched);
- a glob pattern (`cams/*.mp4`, `**` recurses: `cams/**/*.mp4`): the matching files, natural order;
- a list file (`.txt`): one path, URL or camera index per line; blank lines and lines starting with `#` are
  skipped; relative paths are relative to the list file's directory;
- any other path: the file itself.

An empty directory or glob, or list entries that do not exist, raise one `VideoError` that names them all (with
line numbers for a list file).
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

from stp_edge.media_files import VIDEO_EXTENSIONS, natural_key, video_files
from stp_edge.video import VideoError, parse_source

LIST_EXTENSIONS = frozenset({".txt"})
_GLOB_CHARS = re.compile(r"[*?[]")


def expand_sources(spec: str | int | Path) -> list[str]:
    """The sources a specification names, in order; see the module docstring.

    Raises:
        VideoError: A missing path, a directory without video files, a glob matching no file, an empty list
            file or list entries that do not exist.
    """
    kind, target = parse_source(spec)
    if kind != "file":
        return [str(target)]
    path = Path(str(target))
    if path.is_dir():
        return _from_directory(path)
    if path.is_file():
        return _from_list(path) if path.suffix.lower() in LIST_EXTENSIONS else [str(path)]
    if _GLOB_CHARS.search(str(target)):
        return _from_glob(str(target))
    raise VideoError(f"video source not found: {target}")


def _from_directory(path: Path) -> list[str]:
    files = [str(p) for p in video_files(path)]
    if not files:
        raise VideoError(f"directory {path} holds no video files (looked for {', '.join(sorted(VIDEO_EXTENSIONS))}; "
                         f"subfolders are not searched: a glob such as {path / '**' / '*.mp4'} is)")
    return files


def _from_glob(pattern: str) -> list[str]:
    files = [p for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    if not files:
        raise VideoError(f"glob {pattern!r} matched no files")
    return sorted(files, key=natural_key)


def _from_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VideoError(f"cannot read source list {path}: {e}") from None
    sources, missing = [], []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if parse_source(entry)[0] == "file":
            entry_path = Path(entry) if Path(entry).is_absolute() else path.parent / entry
            if not entry_path.is_file():
                problem = "is not a file" if entry_path.exists() else "not found"
                missing.append(f"line {number}: {entry} {problem}")
                continue
            entry = str(entry_path)
        sources.append(entry)
    if missing:
        raise VideoError(f"source list {path}: {len(missing)} missing source(s): " + "; ".join(missing))
    if not sources:
        raise VideoError(f"source list {path} names no sources")
    return sources
