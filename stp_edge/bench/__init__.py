"""`stp-edge bench`: what one process of the runtime costs on this machine (`run_bench`), and its parts.

`run`: the driver; `streams`: the runtime run; `stream_cost`: cost per snippet as a stream grows; `floor`: the
encoder's physical floor; `baseline`: the plain PyTorch pipeline; `reference`: CLIP preprocessing with PIL;
`source`: the generated camera clip; `report`: the saved JSON, markdown and plot; `capacity`: how many live
cameras one process serves in real time (`stp-edge bench --cameras N`, benchmarks/bench_capacity.py);
`camera_clip`: the H.264/H.265 clips those cameras replay.
"""

from stp_edge.bench.baseline import TorchPipeline, load_torch_pipeline
from stp_edge.bench.floor import encoder_flops, matmul_rate_fp32, matmul_rate_int8, physical_floor
from stp_edge.bench.reference import pil_pipeline, pil_reference
from stp_edge.bench.report import BenchReport, StageStats
from stp_edge.bench.run import alert_delays, run_bench
from stp_edge.bench.source import CAMERA_FPS, DEFAULT_SIZE, write_test_video
from stp_edge.bench.stream_cost import cost_by_stream_length
from stp_edge.bench.streams import run_streams
from stp_edge.report import STAGES

__all__ = [
    "CAMERA_FPS",
    "DEFAULT_SIZE",
    "STAGES",
    "BenchReport",
    "StageStats",
    "TorchPipeline",
    "alert_delays",
    "cost_by_stream_length",
    "encoder_flops",
    "load_torch_pipeline",
    "matmul_rate_fp32",
    "matmul_rate_int8",
    "physical_floor",
    "pil_pipeline",
    "pil_reference",
    "run_bench",
    "run_streams",
    "write_test_video",
]
