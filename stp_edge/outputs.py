"""Output files that never destroy what they replace: checked before a run, written under a temporary name.

`check_outputs` refuses, before anything is opened for writing, an output that is one of the inputs (the same
file by path or by inode) or that two outputs share a path, and a directory that cannot be written.
`AtomicTextFile` writes into `.NAME.partial-XXXX` in the output's directory and renames it over `NAME` only on
`commit()`: a run that fails before its first result, or a typo that points at the wrong file, leaves the old
file as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stp_edge.errors import UsageError


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_outputs(outputs: dict[str, str | os.PathLike | None], inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse outputs that would overwrite an input or each other, or that cannot be created.

    Args:
        outputs: Option name (for the message, e.g. "--jsonl") -> path, or None when not asked for.
        inputs: Paths the run reads (files only; URLs and camera indices are skipped by the caller).

    Raises:
        UsageError: Naming the option and the path.
    """
    given = {name: Path(p) for name, p in outputs.items() if p is not None}
    for name, path in given.items():
        for src in inputs:
            if _same(path, Path(src)):
                raise UsageError(f"{name} {path} is the input {src}: writing it would destroy the input; "
                                 "choose another output path")
        if path.is_dir():
            raise UsageError(f"{name} {path} is a directory; expected a file path")
        parent = path.parent if str(path.parent) else Path(".")
        existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise UsageError(f"{name} {path}: cannot create files in {existing}")
    names = list(given)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _same(given[a], given[b]):
                raise UsageError(f"{a} and {b} name the same file {given[a]}")


class AtomicTextFile:
    """A text file written under a temporary name in its directory and renamed into place by `commit()`.

    `abort()` removes the temporary file; the path it would have replaced is untouched. Used as a context
    manager it commits on a normal exit and aborts on an exception.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent)
        self.tmp = Path(tmp)
        self._f = os.fdopen(fd, "w", encoding="utf-8")
        self.closed = False

    def write(self, text: str) -> None:
        """Append `text` (buffered; `flush()` pushes it to the OS)."""
        self._f.write(text)

    def flush(self) -> None:
        """Push buffered text to the operating system."""
        self._f.flush()

    def commit(self) -> Path:
        """Flush, fsync and rename over the final path; returns it."""
        if not self.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
            self.closed = True
        return self.path

    def abort(self) -> None:
        """Drop what was written; the final path keeps its old content (or stays absent)."""
        if not self.closed:
            self._f.close()
            self.tmp.unlink(missing_ok=True)
            self.closed = True

    def __enter__(self) -> AtomicTextFile:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
