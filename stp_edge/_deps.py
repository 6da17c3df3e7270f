"""Import heavy optional dependencies where they are used, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> the `pip install stp-edge[...]` extra that provides it
EXTRA_FOR = {
    "torch": "export",
    "onnx": "export",
    "onnxsim": "export",
    "safetensors": "export",
    "onnxruntime": "ort",
    "tensorrt": "trt",
    "tensorrt_lean": "trt",
    "pycuda": "cuda",
    "sklearn": "eval",
    "matplotlib": "eval",
}


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, purpose: str = "") -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the stp-edge extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRA_FOR.get(top)
        hint = f"pip install 'stp-edge[{extra}]'" if extra else f"pip install {top}"
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(f"{module} is not installed{why}: {hint}. Original error: {exc}") from exc
