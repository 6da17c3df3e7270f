"""CUDA side of the runtime: kernel build and loading, the fused preprocessing kernel (sources in kernels/).

Importing this package is cheap: the CUDA binding (pycuda or cuda-python, `stp_edge.cuda.binding`) is imported
only inside the functions and classes that use it, and a missing one raises an error naming the extra to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CudaPreprocessor", "DeviceArray", "build_fatbin", "load_kernels"]

_LAZY = {
    "CudaPreprocessor": "stp_edge.cuda.preprocess",
    "DeviceArray": "stp_edge.cuda.memory",
    "build_fatbin": "stp_edge.cuda.build",
    "load_kernels": "stp_edge.cuda.kernels",
}

if TYPE_CHECKING:  # pragma: no cover
    from stp_edge.cuda.build import build_fatbin
    from stp_edge.cuda.kernels import load_kernels
    from stp_edge.cuda.memory import DeviceArray
    from stp_edge.cuda.preprocess import CudaPreprocessor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stp_edge.cuda' has no attribute {name!r}")
