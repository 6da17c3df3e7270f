"""Which files are videos and frame images: the one definition, for every command that reads a folder.

`stp-edge run DIR`, `stp-edge export --calib DIR`, archive jobs and data-set readers all take the videos of a folder
from `video_files`: the files directly inside it whose extension (any case) is a video extension, in natural order
(cam2 before cam10). Subfolders are not searched; where a source may be a glob, `DIR/**/*.mp4` recurses.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# In order of preference where a video is looked up by name without its extension.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                    ".wmv", ".flv", ".mjpg", ".mjpeg", ".3gp", ".ogv", ".h264", ".h265")
# Frames stored as one image file each (a data set's folder of frames).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif")


def natural_key(path: str | os.PathLike) -> list[int | str]:
    """Sort key that orders digit runs by value, case aside: cam2 before cam10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def video_files(directory: str | os.PathLike) -> list[Path]:
    """The video files directly inside `directory`, in natural order; subfolders are not searched.

    An empty list when there is none: each caller says in its own words what it needed them for.
    """
    files = (p for p in Path(directory).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    return sorted(files, key=natural_key)
