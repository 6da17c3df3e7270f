"""A frame's route from `Detector.push` to its result passes each stage file once, in data-flow order.

The frame check (`stp_edge.frames`) is below the stages, not one of them.
"""

from __future__ import annotations

import sys

from conftest import moving_frames

STAGES = ["snippets", "encode", "temporal", "spatial", "boxes"]


def _stage_route(det, frame) -> list[str]:
    """The pipeline modules the Detector (api.py) calls into during one push, consecutive repeats collapsed."""
    route: list[str] = []

    def profile(frame_, event, _arg):
        if event != "call" or not frame_.f_back or not frame_.f_back.f_code.co_filename.endswith("stp_edge/api.py"):
            return
        path = frame_.f_code.co_filename
        if "/stp_edge/pipeline/" in path:
            stage = path.rsplit("/", 1)[1].removesuffix(".py")
            if not route or route[-1] != stage:
                route.append(stage)

    sys.setprofile(profile)
    try:
        out = det.push(frame)
    finally:
        sys.setprofile(None)
    assert len(out) == 1 and out[0].region_scores is not None  # the push completed a snippet with every stage
    return route


def test_push_passes_each_stage_once_in_order(handmade_bundle):
    from stp_edge.api import Detector

    frames = moving_frames(8, seed=3)
    with Detector.load(handmade_bundle, backend="ort-cpu", spatial_on="all", lookahead=0) as det:
        for f in frames[:3]:
            det.push(f)
        assert _stage_route(det, frames[3]) == STAGES


def test_stage_files_import_only_earlier_stages():
    import ast
    from pathlib import Path

    import stp_edge.pipeline as pipeline

    root = Path(pipeline.__file__).parent
    for i, stage in enumerate(STAGES):
        tree = ast.parse((root / f"{stage}.py").read_text())
        imported = {n.module.rsplit(".", 1)[1] for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("stp_edge.pipeline.")}
        later = imported & set(STAGES[i:])
        assert not later, f"{stage}.py imports a later (or its own) stage: {sorted(later)}"
