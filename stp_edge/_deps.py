"""Import heavy optional dependencies where they are used, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from stp_edge.errors import StpEdgeError

# module -> the `pip install stp-edge[...]` extra that provides it
EXTRA_FOR = {
    "torch": "export",
    "onnx": "export",
    "onnxsim": "export",
    "onnxscript": "export",
    "safetensors": "export",
    "regex": "export",
    "onnxruntime": "ort",
    "openvino": "openvino",
    "tensorrt": "trt",
    "tensorrt_lean": "trt",
    "pycuda": "cuda",
    "cuda": "cuda-python",  # cuda.bindings
    "sklearn": "eval",
    "matplotlib": "eval",
    "ray": "scale",
    "tritonclient": "scale",
    "av": "h264",
    "yaml": "apps",
    "paho": "apps",
}


class MissingDependencyError(StpEdgeError, ImportError):
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


def explain(exc: BaseException) -> str:
    """`exc` as one line; a missing module that an extra provides gets that extra's install hint.

    For the CLI's one-line errors: `import torch` inside the export code raises a bare ModuleNotFoundError ("No
    module named 'torch'"), which this turns into `pip install 'stp-edge[export]'`.
    """
    top = (exc.name or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
    extra = EXTRA_FOR.get(top)
    return f"{top} is not installed: pip install 'stp-edge[{extra}]'. Original error: {exc}" if extra else str(exc)
