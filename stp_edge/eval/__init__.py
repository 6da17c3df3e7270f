"""The evaluation wing: frame-level metrics, ground-truth readers of the common data sets, and running a bundle.

Not part of the runtime, which never imports it (tests/test_wings.py). Needs no torch; AUC/AP need scikit-learn
(the `eval` extra). `metrics`: AUC, AP, TIoU; `datasets`: UCF-Crime, ShanghaiTech, UBnormal and synthetic ground
truth; `run`: `evaluate_bundle`, `stp-edge eval`; `machine`: the machine a saved result was measured on.
"""

from stp_edge.eval.datasets import (
    FORMATS,
    AnnotationError,
    GroundTruthMismatch,
    VideoGroundTruth,
    check_ground_truth,
    find_video,
    load_ground_truth,
    read_box_csv,
    read_shanghaitech,
    read_synthetic,
    read_temporal_annotation,
    read_ubnormal,
    read_ubnormal_tracks,
    read_ucf_crime,
)
from stp_edge.eval.metrics import (
    EvalResult,
    VideoPrediction,
    box_iou,
    evaluate_videos,
    frame_auc_ap,
    rank_auc,
    tiou,
)
from stp_edge.eval.run import evaluate_bundle, evaluate_cli, prediction_from_results
from stp_edge.results import expand_snippets

__all__ = [
    "FORMATS",
    "AnnotationError",
    "EvalResult",
    "GroundTruthMismatch",
    "VideoGroundTruth",
    "VideoPrediction",
    "box_iou",
    "check_ground_truth",
    "evaluate_bundle",
    "evaluate_cli",
    "evaluate_videos",
    "expand_snippets",
    "find_video",
    "frame_auc_ap",
    "load_ground_truth",
    "prediction_from_results",
    "rank_auc",
    "read_box_csv",
    "read_shanghaitech",
    "read_synthetic",
    "read_temporal_annotation",
    "read_ubnormal",
    "read_ubnormal_tracks",
    "read_ucf_crime",
    "tiou",
]
