"""The evaluation wing: frame-level metrics of a detector on an annotated data set, and running a bundle over one.

Not part of the runtime, which never imports it (tests/test_wings.py). Needs no torch; AUC/AP need scikit-learn
(the `eval` extra). `metrics`: AUC, AP, TIoU pooled over videos; `run`: `evaluate_bundle` (`stp-edge eval`).
The ground truth it scores against comes from the data-set readers of `stp_edge.datasets`, the synthetic
benchmark from `stp_edge.synthetic`.
"""

from stp_edge.eval.metrics import EvalResult, VideoPrediction, evaluate_videos, frame_auc_ap, tiou
from stp_edge.eval.run import evaluate_bundle, prediction_from_results
from stp_edge.results import expand_snippets

__all__ = [
    "EvalResult",
    "VideoPrediction",
    "evaluate_bundle",
    "evaluate_videos",
    "expand_snippets",
    "frame_auc_ap",
    "prediction_from_results",
    "tiou",
]
