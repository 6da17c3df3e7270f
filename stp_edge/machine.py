"""The machine a result was measured on, recorded beside the numbers (bench, benchmarks, evaluations)."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

import numpy as np

# The matmul instruction sets that decide int8 and fp32 encoder speed on x86 (/proc/cpuinfo flag names).
MATMUL_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def machine_info() -> dict[str, str]:
    """Host, OS, CPU model and cores, its matmul instruction sets, library versions, load average now.

    ONNX Runtime's version is included when it is installed (imported here, never at module import).
    """
    import cv2

    cpu, flags = _cpu_model_and_flags()
    isa = [f for f in MATMUL_ISA if f in flags]
    info = {
        "node": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "isa": " ".join(isa) or "unknown",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "load_avg_1m": f"{os.getloadavg()[0]:.2f}",
    }
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    """The first CPU's model name and feature flags from /proc/cpuinfo (Linux); elsewhere the platform's name."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return cpu, flags
