"""The synthetic surveillance-video anomaly benchmark, generated from a seed (clips with per-frame labels and boxes).

Below the wings that use it (evaluation, the demo, training, export checks, benchmarks): `scenes` draws camera
layouts, people, suitcases and fire; `plans` plans a clip's motion, anomaly event and ground truth; `writer`
writes a split of videos with its annotation files. Needs OpenCV and NumPy, no torch.
"""

from stp_edge.synthetic.plans import ANOMALY_CLASSES, CLASS_NAMES, Clip, ClipPlan, generate_clip, plan_clip
from stp_edge.synthetic.scenes import SCENE_KINDS, make_layout
from stp_edge.synthetic.writer import benchmark_plans, class_token, write_benchmark, write_video

__all__ = [
    "ANOMALY_CLASSES",
    "CLASS_NAMES",
    "SCENE_KINDS",
    "Clip",
    "ClipPlan",
    "benchmark_plans",
    "class_token",
    "generate_clip",
    "make_layout",
    "plan_clip",
    "write_benchmark",
    "write_video",
]
