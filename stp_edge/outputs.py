"""Output paths checked before anything is written, and writers that keep what they wrote on any end.

One check for every output option of every command (`check_outputs`): before anything is opened for writing
it refuses an output that is one of the inputs (same path or inode), lies inside a protected directory (the
bundle a run loads), is a node of the wrong kind (a character device, a socket, a directory where a file is
expected; a FIFO or standard output where only a stream can go), exists when replacing it was not asked for,
shares its path with another output, or cannot be created. Each refusal is one line naming the option, the path
and what to do.

Streaming outputs (`LineWriter`, used by `stp_edge.run.JsonlSink`) are written under their final name, one
write(2) per line, so every line written survives a kill of the process and can be read (`tail -f`) while the
run goes on; a background thread fsyncs at most `sync_s` (1 s) after a write, so a power loss loses at most
the last second. A FIFO, `/dev/stdout` or `-` is streamed to as it is.

`signals_deferred` holds SIGINT, SIGTERM and SIGHUP while an output is being finished (a frame appended, a file closed
and renamed), so a second Ctrl-C can never leave a file half-counted or delete a finished one.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stp_edge.errors import OutputExistsError, StpEdgeError, UsageError

STDOUT_NAMES = ("-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")
STDERR_NAMES = ("/dev/stderr", "/dev/fd/2", "/proc/self/fd/2")
STREAM_KINDS = ("fifo", "stdout", "stderr")
SYNC_S = 1.0
"""Longest time a written line waits for fsync (what a power loss can lose)."""


class OutputError(StpEdgeError):
    """An output could not be written (a full disk, a closed FIFO, an I/O error); the message names it."""


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the path(s) it names and the reason, never a bare "[Errno 17]"."""
    code = errno_mod.errorcode.get(exc.errno or 0, "")
    reason = (exc.strerror or str(exc) or type(exc).__name__) + (f" ({code})" if code else "")
    if exc.filename is None:
        return reason
    names = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{names}: {reason}"


# --- what a path is ------------------------------------------------------------------------------------------
def output_kind(path: str | os.PathLike) -> str:
    """What writing `path` would write to; symlinks are followed.

    One of "stdout", "stderr" (`-`, `/dev/stdout`, ...), "file" (regular or absent), "directory", "fifo", or
    the kind of another node ("character device", "block device", "socket").
    """
    text = os.fspath(path)
    if text in STDOUT_NAMES:
        return "stdout"
    if text in STDERR_NAMES:
        return "stderr"
    try:
        mode = os.stat(text).st_mode
    except FileNotFoundError:
        return "file"
    except OSError:
        return "file"  # an unreadable parent: the writability check below names it
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


@dataclass(frozen=True)
class Output:
    """A checked output: the option, the path as given and what it is (see `output_kind`)."""

    option: str
    path: Path
    kind: str

    @property
    def is_stream(self) -> bool:
        """True for a FIFO or a standard stream: written to as it is, never replaced or fsynced."""
        return self.kind in STREAM_KINDS


def _inside(path: Path, directory: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(directory))
        return True
    except ValueError:
        return False


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b) or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_outputs(outputs: Mapping[str, str | os.PathLike | None], inputs: Iterable[str | os.PathLike] = (), *,
                  protected: Mapping[str, str | os.PathLike] | None = None, streams: Collection[str] = (),
                  directories: Collection[str] = (), refuse_existing: Mapping[str, str] | None = None,
                  ) -> dict[str, Output]:
    """Refuse, before anything is written, every output path that could destroy data or cannot work.

    Args:
        outputs: Option name (for the message, e.g. "--jsonl") -> path, or None when not asked for.
        inputs: Paths the command reads (files and directories; URLs and camera indices are left out).
        protected: What the command must never write into, by name ("the bundle" -> its directory): an output
            at or below it is refused.
        streams: Options that may stream to a FIFO, `/dev/stdout` or `-`; any other option needs a regular file.
        directories: Options that name a directory (created if absent) instead of a file.
        refuse_existing: Option -> hint ("pass --force to replace it"): a non-empty existing file is refused.

    Returns:
        Option -> `Output` for every output given.

    Raises:
        UsageError: Naming the option, the path and what to do (`OutputExistsError` for an existing output).
    """
    checked = {}
    for name, raw in outputs.items():
        if raw is None:
            continue
        path = Path(raw)
        kind = output_kind(raw)
        _check_kind(name, path, kind, stream=name in streams, directory=name in directories)
        if kind not in ("stdout", "stderr"):
            _check_place(name, path, inputs, protected or {})
        if kind == "file" and name in (refuse_existing or {}) and path.is_file() and path.stat().st_size > 0:
            raise OutputExistsError(f"{name} {path} exists ({path.stat().st_size} bytes); "
                                    f"{(refuse_existing or {})[name]}")
        if kind in ("file", "directory"):
            _check_writable(name, path)
        checked[name] = Output(name, path, kind)
    names = list(checked)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = checked[a], checked[b]
            if (pa.kind == pb.kind and pa.kind in ("stdout", "stderr")) or _same(pa.path, pb.path):
                raise UsageError(f"{a} and {b} name the same file {pa.path}")
    return checked


def _check_kind(name: str, path: Path, kind: str, *, stream: bool, directory: bool) -> None:
    if directory:
        if kind not in ("file", "directory") or (kind == "file" and path.exists()):
            raise UsageError(f"{name} {path} is a {'regular file' if kind == 'file' else kind}; expected a "
                             "directory (or a path to create one)")
        return
    if kind == "directory":
        raise UsageError(f"{name} {path} is a directory; expected a file path")
    if kind in STREAM_KINDS and not stream:
        what = "standard output" if kind == "stdout" else "standard error" if kind == "stderr" else "a FIFO"
        raise UsageError(f"{name} {path} is {what}; this output is a whole file that is finished and renamed at "
                         "the end: give a regular file path")
    if kind not in STREAM_KINDS and kind != "file":
        also = ", a FIFO, /dev/stdout or -" if stream else ""
        raise UsageError(f"{name} {path} is a {kind}; expected a regular file path{also}")


def _check_place(name: str, path: Path, inputs: Iterable[str | os.PathLike],
                 protected: Mapping[str, str | os.PathLike]) -> None:
    for what, directory in protected.items():
        if _inside(path, Path(directory)):
            raise UsageError(f"{name} {path} is inside {what} {directory}: writing there would change it; choose "
                             "a path outside it")
    for src in inputs:
        if _same(path, Path(src)):
            raise UsageError(f"{name} {path} is the input {src}: writing it would destroy the input; choose "
                             "another output path")


def _check_writable(name: str, path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{name} {path}: cannot create files in {existing}"
                         + ("" if existing.is_dir() else f" ({existing} is not a directory)"))
    if path.exists() and not path.is_dir() and not os.access(path, os.W_OK):
        raise UsageError(f"{name} {path}: the file exists and is not writable")


# --- partials ------------------------------------------------------------------------------------------------
def partial_path(path: str | os.PathLike) -> Path:
    """The visible name a whole-file output has until it is finished: `NAME.partial.EXT` beside `NAME.EXT`.

    Visible and fixed, so that a run that was killed leaves a file a user can find (and, for an AVI, play), and
    the next run with the same output names it instead of losing it.
    """
    p = Path(path)
    return p.with_name(f"{p.stem}.partial{p.suffix}")


def remove_stray_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove hidden temporaries of `path` that a killed run left (`.NAME.partial-*`, `.STEM.probe-*`).

    Earlier versions and whole-file writers created these beside the output; no finished run leaves one.
    Returns the files removed.
    """
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return []
    removed = []
    for pattern in (f".{p.name}.partial-*", f".{p.stem}.probe-*"):
        for stray in parent.glob(pattern):
            if stray.is_file() and not stray.is_symlink():
                with contextlib.suppress(OSError):  # gone already, or not ours to remove: left as it is
                    stray.unlink()
                    removed.append(stray)
    return removed


# --- streaming lines -----------------------------------------------------------------------------------------
class LineWriter:
    """Lines appended to a regular file, a FIFO or a standard stream as they come; a context manager.

    Each line is one write(2) of its bytes (no user-space buffer), so a killed process loses no line it wrote.
    A regular file is written under its final name and fsynced by a background thread at most `sync_s` after a
    write (and at `close()`), so a power loss loses at most that. `mode`: "w" replaces the file, "x" refuses a
    non-empty one (`OutputExistsError`), "a" appends (dropping a last line cut short by a kill or power loss).
    A FIFO is opened for writing (waiting for a reader); `-`, `/dev/stdout` and `/dev/stderr` write to the
    process's own standard stream. Write failures raise `OutputError` naming the path and the reason.
    """

    def __init__(self, path: str | os.PathLike, *, mode: str = "w", sync_s: float = SYNC_S) -> None:
        if mode not in ("w", "x", "a"):
            raise UsageError(f"mode must be 'w', 'x' or 'a', got {mode!r}")
        self.path = Path(path)
        self.kind = output_kind(path)
        self.name = {"stdout": f"standard output ({path})", "stderr": f"standard error ({path})"}.get(
            self.kind, str(path))  # what messages call it
        self.lines = 0
        self._dirty = False
        self._error: OSError | None = None
        self._stop = threading.Event()
        self._fd = self._open(mode)
        self._syncer: threading.Thread | None = None
        if self.kind == "file" and sync_s > 0:
            self._syncer = threading.Thread(target=self._sync_loop, args=(sync_s,), daemon=True,
                                            name=f"stp-edge-fsync-{self.path.name}")
            self._syncer.start()

    def _open(self, mode: str) -> int:
        if self.kind in ("stdout", "stderr"):
            return self._os(os.dup, 1 if self.kind == "stdout" else 2)  # closing ours leaves the process's open
        if self.kind == "fifo":
            return self._os(os.open, self.path, os.O_WRONLY | os.O_CLOEXEC)  # waits for a reader, as `>` does
        if self.kind != "file":
            raise UsageError(f"{self.path} is a {self.kind}; expected a regular file, a FIFO, /dev/stdout or -")
        self._os(lambda: self.path.parent.mkdir(parents=True, exist_ok=True))
        access = os.O_RDWR if mode == "a" else os.O_WRONLY  # appending reads the last line back
        flags = access | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (os.O_TRUNC if mode == "w" else 0)
        fd = self._os(os.open, self.path, flags, 0o644)
        try:
            size = os.fstat(fd).st_size
            if mode == "x" and size > 0:
                raise OutputExistsError(f"{self.path} exists ({size} bytes); a new run's lines are never mixed "
                                        "with an old file: replace it or append to it explicitly")
            if mode == "a" and size > 0:
                self._os(_cut_partial_last_line, fd, size)
            self._os(fsync_dir, self.path.parent)  # the new name itself survives a power loss
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _os(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except OSError as exc:
            raise OutputError(f"{self.name}: cannot write: {describe_os_error(exc)}") from exc

    def write_line(self, line: str) -> None:
        """Write one line (`line` ends with a newline) with one write(2); raise `OutputError` if it fails."""
        if self._fd is None:
            raise OutputError(f"{self.name}: written after close()")
        if self._error is not None:
            self._fail(self._error)
        data = memoryview(line.encode("utf-8"))
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            self._fail(exc)
        self.lines += 1
        self._dirty = True

    def _fail(self, exc: OSError) -> None:
        why = ("its reader closed it" if exc.errno == errno_mod.EPIPE else describe_os_error(exc))
        raise OutputError(f"{self.name}: cannot write: {why}; {self.lines} line(s) were written before") from exc

    def _sync_loop(self, period: float) -> None:
        while not self._stop.wait(period):
            self._sync()

    def _sync(self) -> None:
        if self._dirty and self._fd is not None:
            self._dirty = False  # a write after this point sets it again; fsync covers it or the next one does
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._error = exc  # reported by the next write or close, in the writing thread

    def close(self) -> None:
        """Stop the fsync thread, fsync a regular file one last time and close it (safe to call twice)."""
        if self._fd is None:
            return
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        fd, self._fd = self._fd, None
        try:
            if self.kind == "file":
                os.fsync(fd)
            if self._error is not None:
                raise self._error
        except OSError as exc:
            raise OutputError(f"{self.name}: cannot finish: {describe_os_error(exc)}; {self.lines} line(s) "
                              "were written") from exc
        finally:
            os.close(fd)

    def __enter__(self) -> LineWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cut_partial_last_line(fd: int, size: int) -> None:
    """Truncate a file back to its last newline: a line a kill or power loss cut short was never a record."""
    end = size
    while end > 0:
        start = max(0, end - (1 << 16))
        block = os.pread(fd, end - start, start)
        i = block.rfind(b"\n")
        if i >= 0:
            if start + i + 1 < size:
                os.ftruncate(fd, start + i + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def fsync_dir(directory: Path) -> None:
    """Fsync a directory, so that a rename or a new name in it survives a power loss (where the file system can)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory; the data itself is still fsynced
        if exc.errno not in (errno_mod.EINVAL, errno_mod.ENOTSUP, errno_mod.EBADF):
            raise
    finally:
        os.close(fd)


# --- signals -------------------------------------------------------------------------------------------------
_deferring = threading.local()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while an output is being changed; deliver them when the block ends.

    A signal handler that raises (Python's default KeyboardInterrupt, a second Ctrl-C of `stp-edge run`) could
    otherwise land between a frame written and its count, or inside the rename that finishes a file. Only the
    main thread receives signals, so elsewhere this does nothing. Blocks inside blocks are one block.
    """
    if threading.current_thread() is not threading.main_thread() or getattr(_deferring, "on", False):
        yield
        return
    held: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        old = signal.getsignal(sig)
        if callable(old) or old == signal.SIG_DFL:  # not one installed from C (None), nor ignored
            previous[sig] = signal.signal(sig, lambda signum, _frame: held.append(signum))
    _deferring.on = True
    try:
        yield
    finally:
        _deferring.on = False
        for sig, old in previous.items():
            signal.signal(sig, old)
        for sig in held:
            signal.raise_signal(sig)


# --- whole text files ----------------------------------------------------------------------------------------
def write_atomic(path: str | os.PathLike, data: bytes, *, what: str = "file") -> Path:
    """Write `data` as the whole of `path`: a hidden temporary sibling, fsynced, renamed over it.

    A reader (or a user following a link to it) sees the old file or the new one, never part of one; a failure
    removes the temporary file. Missing directories are created. For whole binary outputs (a snapshot);
    `AtomicTextFile` writes text as it goes.

    Raises:
        OutputError: naming `what` and the path, and why (a full disk, no permission).
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.partial-", suffix=dest.suffix, dir=dest.parent)
    except OSError as exc:
        raise OutputError(f"{what} {dest}: cannot create the file ({describe_os_error(exc)})") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        with signals_deferred():
            os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{what} {dest}: cannot write the file ({describe_os_error(exc)})") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


class AtomicTextFile:
    """A text file written under a temporary name in its directory and renamed into place by `commit()`.

    For whole-file text outputs (a report); streaming outputs use `LineWriter`. `abort()` removes the temporary
    file; the path it would have replaced is untouched. Used as a context manager it commits on a normal exit
    and aborts on an exception.
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
            with signals_deferred():
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


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished directory (a bundle, a checkpoint) into place; an existing one is swapped out, then deleted.

    `tmp` must be on the same filesystem as `out` (a sibling), so each step is one atomic rename.
    """
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
