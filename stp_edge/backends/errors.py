"""The errors of the backends: a runner used wrongly, a graph that would not load, a call that failed or was ended.

Every class is a `StpEdgeError`, so the CLI reports it as one line. A failed call names the runner (graph file
and backend), the cause, and the option that changes the outcome where one does.
"""

from __future__ import annotations

from typing import Any

from stp_edge.errors import StpEdgeError


class RunnerError(StpEdgeError, RuntimeError):
    """A runner was used in the wrong state or failed to load/run its graph."""


class PlanLoadError(RunnerError):
    """TensorRT refused to deserialise a plan (another TensorRT version, GPU or platform, or a corrupt file).

    Attributes:
        plan: The plan file (or runner name) that was refused.
    """

    def __init__(self, message: str, plan: Any = None) -> None:
        super().__init__(message)
        self.plan = plan


class InputError(RunnerError, ValueError):
    """Feeds do not match the graph's inputs; the message names the input and expected versus got."""


class CallError(RunnerError):
    """One graph call failed in the backend (an onnxruntime runtime error, a lost or failing Triton server).

    `retryable` says whether the same call may succeed when tried again (a restarted server: yes; a graph that
    loops for ever, asks for too much memory, or a stop request: no), for `stp_edge.pipeline.calls`. The CLI exits
    1 (`exit_code`): the run could not go on, which is not a usage error.
    """

    retryable = True
    exit_code = 1


class CallTimeoutError(CallError):
    """A call ran past its per-call deadline (`CallLimits.call_timeout_s`, `--call-timeout`) and was ended."""

    retryable = False  # a retry would wait as long again


class CallInterruptedError(CallError):
    """A call was still running `CallLimits.stop_grace_s` after a stop request (SIGINT/SIGTERM) and was ended."""

    retryable = False


class MemoryLimitError(CallError):
    """A graph asked for more memory than the limit (`CallLimits.memory_limit_gib`, `--memory-limit`) allows."""

    retryable = False


class AbandonedRunnerError(CallError):
    """An earlier call of this runner was ended but never returned; its thread is abandoned, the runner unusable."""

    retryable = False
