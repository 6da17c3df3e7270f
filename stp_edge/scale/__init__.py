"""Scale-out beyond one process: Ray Data for archives, Triton Inference Server for many cameras.

Archives (one process, or a Ray Data pipeline with `ray=True`):
    extract.py      extract_features / `stp-edge extract`: snippet features (.npz per video) for `stp-edge train`
    score.py        score_videos / `stp-edge score`: one JSONL of SnippetResults per video
    jobs.py         the driver both share: per-video jobs in this process or on a Ray cluster (ray is imported
                    only there), progress, and one ArchiveReport
    features.py     the encode job of one video, its .npz file, the feature fingerprint, atomic writes
    records.py      the record beside each output (producer, video identity, sha256): what a rerun may keep
    inputs.py       videos of a folder/glob/list, output names, labels (CSV or data set annotations)
Many cameras: triton_repo.py (model repository from a bundle) and the served Detector (see their docstrings).

`import stp_edge` imports nothing from here; Ray and tritonclient are imported only when used
(`pip install stp-edge[scale]`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = {
    "ArchiveReport": "stp_edge.scale.jobs",
    "extract_features": "stp_edge.scale.extract",
    "score_videos": "stp_edge.scale.score",
    "feature_fingerprint": "stp_edge.scale.features",
}

__all__ = ["ArchiveReport", "extract_features", "feature_fingerprint", "score_videos"]

if TYPE_CHECKING:  # pragma: no cover
    from stp_edge.scale.extract import extract_features
    from stp_edge.scale.features import feature_fingerprint
    from stp_edge.scale.jobs import ArchiveReport
    from stp_edge.scale.score import score_videos


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stp_edge.scale' has no attribute {name!r}")
