"""stp-edge: STPrompt weakly supervised video anomaly detection on edge GPUs.

`import stp_edge` is cheap: it never imports torch, tensorrt, pycuda or onnxruntime. Public names are
resolved lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stp_edge._version import __version__

_LAZY = {
    "Detector": "stp_edge.api",
    "SnippetResult": "stp_edge.results",
    "Box": "stp_edge.results",
    "run_video": "stp_edge.run",
    "STPromptConfig": "stp_edge.config",
    "VisionConfig": "stp_edge.config",
    "TextConfig": "stp_edge.config",
    "Bundle": "stp_edge.bundle",
    "StpEdgeError": "stp_edge.errors",
    "FrameError": "stp_edge.errors",
    "RandomWeightsWarning": "stp_edge.errors",
}

__all__ = [  # noqa: RUF022
    "__version__", "Box", "Bundle", "Detector", "FrameError", "RandomWeightsWarning", "STPromptConfig",
    "SnippetResult", "StpEdgeError", "TextConfig", "VisionConfig", "run_video",
]

if TYPE_CHECKING:  # pragma: no cover
    from stp_edge.api import Detector
    from stp_edge.bundle import Bundle
    from stp_edge.config import STPromptConfig, TextConfig, VisionConfig
    from stp_edge.errors import FrameError, RandomWeightsWarning, StpEdgeError
    from stp_edge.results import Box, SnippetResult
    from stp_edge.run import run_video


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stp_edge' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazy public ones included (what `dir(stp_edge)` and completion show)."""
    return sorted(set(globals()) | set(__all__))
