"""Errors of bundle loading: every problem with a bundle is a `BundleError` with a one-line message."""

from __future__ import annotations

from stp_edge.errors import StpEdgeError


class BundleError(StpEdgeError):
    """Base class of every problem with a bundle."""


class ManifestError(BundleError):
    """manifest.json is missing, unreadable, edited after export, breaks the schema, or contradicts itself."""


class MissingFileError(BundleError):
    """A file listed in the manifest is not in the bundle."""


class ChecksumError(BundleError):
    """A file's sha256 differs from the manifest (the file was edited or corrupted)."""


class EngineCompatibilityError(BundleError):
    """No TensorRT plan of the bundle fits this machine (GPU, compute capability, TensorRT version, platform).

    `reasons` lists why each engine set was refused, one line each (the message says it too).
    """

    def __init__(self, message: str, reasons: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.reasons = list(reasons)


class UnsafePathError(BundleError):
    """A path of the bundle leads outside it (a symlink out) or to something that is not a regular file."""


class GraphMismatchError(BundleError):
    """An ONNX graph does not declare the inputs/outputs the config implies (swapped, edited, truncated, empty)."""


class UnsafeGraphError(BundleError):
    """A graph holds what a bundle graph may not (the rules: stp_edge.bundle.graph_rules).

    Data outside the file, an operator export does not write (control flow, a custom domain), or constants and
    shapes beyond the config's bounds.
    """
