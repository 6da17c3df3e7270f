"""The root of the errors a user can act on: the CLI prints these as one line (exit 2), bugs keep a traceback.

Every error class the library raises on purpose (a bad bundle, an unreadable video, an invalid frame, a missing
optional dependency, a bad argument) derives from `StpEdgeError`. A ValueError, OSError or ImportError raised by
anything else (a bug, NumPy on a shape it did not expect) is not one, so it is reported with its traceback.
The kinds every layer shares live here, on the ground floor, so that `stp_edge.errors` names each of them
(`FrameError` too, which `stp_edge.frames` raises), with the one warning a user must see (`RandomWeightsWarning`).
A message that tells the caller to pass a Python argument names the command-line option beside it, as
`pass overwrite=True (CLI: --force)`: the CLI shows the option alone ("pass --force").
"""

from __future__ import annotations


class StpEdgeError(Exception):
    """Base of the errors stp-edge raises on purpose about its inputs, options or environment."""


class UsageError(StpEdgeError, ValueError):
    """A bad argument or option value (a ValueError, so existing `except ValueError` keeps working)."""


class MissingInputError(StpEdgeError, FileNotFoundError):
    """A file or directory the caller named does not exist (or lacks what it must hold)."""


class OutputExistsError(StpEdgeError, FileExistsError):
    """An output exists and replacing it was not asked for."""


class InferenceError(StpEdgeError, RuntimeError):
    """Running a graph went wrong: the run cannot trust, or cannot get, a snippet's result (the CLI exits 1).

    Raised by `Detector` after its streams were brought to a consistent state: the snippets concerned are
    recorded as invalid results, so a caller may catch it and push the next frame. `results` holds the
    results the call produced (the invalid ones included), which would otherwise be lost with the call.
    """

    exit_code = 1

    def __init__(self, message: str, results: list | None = None) -> None:
        super().__init__(message)
        self.results = list(results or [])


class GraphOutputError(InferenceError):
    """A graph returned a value its contract forbids (NaN, inf, out of range, wrong shape; bundle/contract.py)."""


class BackendCallError(InferenceError):
    """A graph call failed (a lost server, a transient ONNX Runtime/TensorRT error), and so did its retry."""


class FrameError(StpEdgeError, ValueError):
    """A frame is not an image the runtime can use; the message names the frame index (`stp_edge.frames`)."""


class RandomWeightsWarning(UserWarning):
    """The bundle's weights are random (manifest `source.kind = "random"`): its scores and classes mean nothing.

    Issued once per bundle by `stp_edge.bundle.Bundle.load`, so every entry point that loads one (the CLI's
    run, info, bench, score, serve; `Detector.load`) says so; the CLI prints it as one plain line.
    """
