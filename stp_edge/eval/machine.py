"""The machine a saved result was measured on, recorded beside the numbers (benchmarks, evaluations)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import cv2
import numpy as np


def machine_info() -> dict[str, str]:
    """Host name, OS, CPU model and core count, Python, NumPy and OpenCV versions, load average at the call."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "node": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "load_avg_1m_at_start": f"{os.getloadavg()[0]:.2f}",
    }
