"""The physical floor of the encoder: its FLOPs per snippet over this machine's measured matmul rates."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def encoder_flops(config) -> float:
    """Multiply-adds x 2 of the encoder for one snippet (sampled frames, plus R^2 crops in crops mode).

    ViT: per layer 24 n w^2 (qkv, output projection, 4x MLP) + 4 n^2 w (attention), n = tokens incl. class;
    patch embedding 2 g^2 3 p^2 w; output projection 2 n w E. A convolutional stem is counted as the patch
    convolution it replaces (an underestimate).
    """
    v = config.vision
    n, w = v.num_patches + 1, v.width
    per_image = v.layers * (24 * n * w * w + 4 * n * n * w) + 2 * v.num_patches * 3 * v.patch_size ** 2 * w \
        + 2 * n * w * v.embed_dim
    images = config.frames_per_snippet * (1 + (config.num_regions if config.region_mode == "crops" else 0))
    return float(per_image * images)


def matmul_rate_fp32(config, seconds: float = 0.5) -> float:
    """GFLOP/s of NumPy's fp32 matmul on an encoder-shaped GEMM (tokens x width x 4 width), best of runs."""
    v = config.vision
    m, k, n = v.num_patches + 1, v.width, 4 * v.width
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    return 2 * m * k * n / _best_time(lambda: a @ b, seconds) / 1e9


def matmul_rate_int8(config, seconds: float = 0.5) -> float | None:
    """GOP/s of ONNX Runtime's MatMulInteger (uint8 x int8 -> int32) on the same GEMM; None without onnx/ORT."""
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort
    from onnx import TensorProto, helper

    v = config.vision
    m, k, n = v.num_patches + 1, v.width, 4 * v.width
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (m, k), dtype=np.uint8), "b": rng.integers(-127, 127, (k, n), dtype=np.int8)}
    return 2 * m * k * n / _best_time(lambda: sess.run(None, feeds), seconds) / 1e9


def _best_time(fn: Callable[[], Any], seconds: float) -> float:
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def physical_floor(config) -> dict[str, Any]:
    """Encoder GFLOP per snippet and the ms it needs at this machine's measured matmul rates (a lower bound)."""
    flops = encoder_flops(config)
    fp32 = matmul_rate_fp32(config)
    int8 = matmul_rate_int8(config)
    return {"encoder_gflop_per_snippet": flops / 1e9, "fp32_gflops": fp32, "fp32_floor_ms": flops / fp32 / 1e6,
            "int8_gops": int8, "int8_floor_ms": flops / int8 / 1e6 if int8 else None,
            "method": "config FLOPs / best-of NumPy fp32 matmul (and ORT MatMulInteger) on a tokens x width x "
                      "4*width GEMM"}

