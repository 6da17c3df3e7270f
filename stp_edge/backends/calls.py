"""Bounds on what a graph call may take: a deadline per call, a prompt end on a stop request, a memory cap.

A bundle is code: a graph can loop for ever or ask for hundreds of GiB. The static checks at bundle load refuse
what they can see; what remains is bounded here, at run time, for every backend alike:

- each runner runs its calls (activate, infer, deactivate) on its own worker thread (`CallWorker`); the calling
  thread waits in short slices, so it stays responsive to signals (a handler runs, and an exception it raises,
  such as KeyboardInterrupt, ends the wait) and to a stop event;
- a call still running at its deadline (`CallLimits.call_timeout_s`), or `stop_grace_s` after a call first saw
  the stop event set, is cancelled (one grace for the whole wind-down, shared by every call and runner under
  that event: a call begun after the stop gets no grace of its own, see `stop_deadline`): the runner's
  `cancel_impl()` ends it where the backend can (onnxruntime's `RunOptions.terminate`), and a call that still
  does not return within `CANCEL_WAIT_S` is abandoned on its thread, which leaves the runner unusable (its later
  calls fail at once);
- onnxruntime's CPU memory arena is capped (`CallLimits.memory_limit_gib`), so a graph asking for more fails
  with `MemoryLimitError` instead of being killed by the kernel's OOM killer.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from stp_edge.backends.errors import AbandonedRunnerError, CallInterruptedError, CallTimeoutError, RunnerError
from stp_edge.errors import UsageError

DEFAULT_CALL_TIMEOUT_S = 60.0  # a local graph call: the slowest CPU runs a batch of 16 ViT-B snippets in seconds
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_STOP_GRACE_S = 1.0  # with the polling below, a signal ends the run in well under 2 s
CANCEL_WAIT_S = 1.0  # how long a cancelled call may take to return before its thread is abandoned
POLL_S = 0.05  # the waiting thread looks at the stop event and the deadline this often
GIB = 1 << 30


@dataclass(frozen=True)
class CallLimits:
    """What a runner's calls may take.

    Attributes:
        call_timeout_s: Deadline of one graph call in seconds; None: the backend's default
            (`Runner.default_call_timeout_s`: 60 s for a local graph, 20 s for a Triton server); `math.inf`: none.
        memory_limit_gib: Cap of onnxruntime's CPU memory arena in GiB (one arena, shared by every session of the
            process) and, on CUDA, of each session's GPU arena; None: half the memory of this machine or container
            for the CPU arena, no cap on the GPU.
        connect_timeout_s: How long a Triton runner tries to reach its server and model before it gives up.
        stop_grace_s: How long calls may still run, all together, once the stop event is set (`stop_calls_on`).
    """

    call_timeout_s: float | None = None
    memory_limit_gib: float | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    stop_grace_s: float = DEFAULT_STOP_GRACE_S

    def __post_init__(self) -> None:
        for name, option in (("call_timeout_s", "--call-timeout"), ("memory_limit_gib", "--memory-limit"),
                             ("connect_timeout_s", "--connect-timeout"), ("stop_grace_s", None)):
            value = getattr(self, name)
            if value is None and name in ("call_timeout_s", "memory_limit_gib"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
                where = f"{option} / CallLimits.{name}" if option else f"CallLimits.{name}"
                raise UsageError(f"{where} must be a positive number of "
                                 f"{'GiB' if name == 'memory_limit_gib' else 'seconds'}, got {value!r}")
        if self.memory_limit_gib is not None and math.isinf(self.memory_limit_gib):
            raise UsageError("--memory-limit / CallLimits.memory_limit_gib must be finite")

    def timeout_for(self, default_s: float) -> float | None:
        """This call deadline in seconds for a backend whose default is `default_s`; None when unbounded."""
        t = default_s if self.call_timeout_s is None else self.call_timeout_s
        return None if math.isinf(t) else float(t)

    def memory_limit_bytes(self) -> int | None:
        """The CPU arena cap in bytes: the set limit, else half of this machine's (or container's) memory."""
        if self.memory_limit_gib is not None:
            return int(self.memory_limit_gib * GIB)
        total = machine_memory_bytes()
        return total // 2 if total else None


def machine_memory_bytes() -> int | None:
    """Physical memory, or the container's cgroup memory limit where that is lower; None where unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total if total > 0 else None


# When a call first saw each stop event set (monotonic seconds); the entry goes when the event is seen clear.
_stop_seen: weakref.WeakKeyDictionary[threading.Event, float] = weakref.WeakKeyDictionary()
_stop_seen_lock = threading.Lock()


def stop_deadline(stop: threading.Event | None, grace_s: float) -> float:
    """When every call under `stop` must have ended: `grace_s` after a call first saw it set; inf while it is clear.

    One clock per event, not per call: once the stop is seen, a call that finishes in time and the calls begun
    after it (the rest of a snippet, a flush, another graph) share the same `grace_s`, so a run ends about
    `grace_s` after the stop however its calls fall. A cleared event starts afresh when it is set again.
    """
    if stop is None:
        return math.inf
    with _stop_seen_lock:
        if not stop.is_set():
            _stop_seen.pop(stop, None)
            return math.inf
        return _stop_seen.setdefault(stop, time.monotonic()) + grace_s


def format_seconds(s: float) -> str:
    """3 -> "3 s", 0.5 -> "0.5 s"."""
    return f"{s:g} s"


class _Job:
    """One call handed to a worker: the function, and its value or exception once done.

    Completion is a lock the worker releases (a plain lock wakes the waiting thread faster than an Event).
    """

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn, self.args = fn, args
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = threading.Lock()
        self._done.acquire()

    def run(self) -> None:
        try:
            self.value = self.fn(*self.args)
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            self.error = exc
        finally:
            self.fn = self.args = None  # type: ignore[assignment]  # drop the runner and the feeds
            self.finished = True
            self._done.release()

    def wait(self, timeout_s: float) -> bool:
        """True once the job has finished; False after `timeout_s` (interruptible by signal handlers)."""
        if self.finished:
            return True
        if self._done.acquire(timeout=timeout_s):
            self._done.release()
            return True
        return False

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class CallWorker:
    """One daemon thread that runs one runner's calls, one at a time, for a caller that waits interruptibly.

    Args:
        name: The runner's name (thread name and messages).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.stuck = False  # a cancelled call did not return: the thread is abandoned
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=_serve, args=(self._jobs,), name=f"stp-edge {name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Let the thread end once its queued calls are done (an abandoned one ends when its call returns)."""
        self._jobs.put(None)

    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None,
             stop: threading.Event | None = None, grace_s: float = DEFAULT_STOP_GRACE_S,
             cancel: Callable[[], None] = lambda: None) -> Any:
        """`fn(*args)` on the worker thread; its value, or its exception re-raised here.

        Args:
            fn: The call.
            *args: Its arguments.
            timeout_s: Deadline in seconds (None: none).
            stop: Once a call saw it set, calls under it may run `grace_s` more seconds in all (`stop_deadline`).
            grace_s: See `stop`.
            cancel: Ends the running call where the backend can (called from this thread).

        Raises:
            CallTimeoutError: The deadline passed.
            CallInterruptedError: The stop's grace ended while the call ran, or before it began (then it is not run).
            AbandonedRunnerError: An earlier cancelled call never returned, so this runner cannot run again.
        """
        if self.stuck:
            raise AbandonedRunnerError(f"{self.name}: an earlier call was ended at its deadline or a stop and never "
                                       f"returned; this runner cannot run again (load the bundle again)")
        if time.monotonic() >= stop_deadline(stop, grace_s):
            raise CallInterruptedError(f"{self.name}: not run: a stop was requested and its "
                                       f"{format_seconds(grace_s)} grace is over")
        job = _Job(fn, args)
        start = time.monotonic()
        self._jobs.put(job)
        try:
            why = self._wait(job, start, timeout_s, stop, grace_s)
        except BaseException:  # KeyboardInterrupt (or another exception) raised by a signal handler mid-wait
            self._cancel(job, cancel)
            raise
        if why is None:
            return job.result()
        self._cancel(job, cancel)
        if job.finished and job.error is None:
            return job.value  # it finished as it was being cancelled
        raise why from job.error

    def _wait(self, job: _Job, start: float, timeout_s: float | None, stop: threading.Event | None,
              grace_s: float) -> RunnerError | None:
        """None once `job` is done; else the error to raise when its deadline or the stop grace passes first."""
        deadline = math.inf if timeout_s is None else start + timeout_s
        while not job.wait(POLL_S):
            now = time.monotonic()
            if now >= stop_deadline(stop, grace_s):
                return CallInterruptedError(
                    f"{self.name}: the call was still running {format_seconds(grace_s)} after the stop request "
                    f"(SIGINT/SIGTERM) and was ended")
            if now >= deadline:
                return CallTimeoutError(
                    f"{self.name}: the call ran past its {format_seconds(timeout_s or 0)} deadline and was ended "
                    f"(a graph that does not finish, or a server that does not answer); if this graph is just slow "
                    f"here, raise the deadline: --call-timeout SECONDS (Python: CallLimits(call_timeout_s=...))")
        return None

    def _cancel(self, job: _Job, cancel: Callable[[], None]) -> None:
        """End `job` where the backend can; a job that does not return within CANCEL_WAIT_S strands the thread."""
        if job.finished:
            return
        try:
            cancel()
        finally:
            if not job.wait(CANCEL_WAIT_S):
                self.stuck = True


def _serve(jobs: queue.SimpleQueue) -> None:
    """The worker thread's loop (a function of the queue only, so an idle worker keeps no runner alive)."""
    while True:
        job = jobs.get()
        if job is None:
            return
        job.run()


@contextlib.contextmanager
def stop_calls_on(runners: Iterable[Any], stop: threading.Event | None) -> Iterator[None]:
    """While the block runs, `stop` ends the calls of `runners` (`Runner.stop_event`); restored afterwards.

    Once a call sees `stop` set, the calls of all `runners` may run `CallLimits.stop_grace_s` more in all
    (`stop_deadline`), then end with CallInterruptedError, and a call that would begin later is not run; so a run
    that flushes after a stop request ends within about one grace period however its calls fall, even when
    every call of a graph would hang.
    """
    if stop is None:
        yield
        return
    runners = list(runners)
    previous = [r.stop_event for r in runners]
    for r in runners:
        r.stop_event = stop
    try:
        yield
    finally:
        for r, old in zip(runners, previous, strict=True):
            r.stop_event = old
