"""Backends: one `Runner` interface (base.py), its subclasses (ort.py, trt.py, torch.py), and the factory.

The factory is the one place that turns a backend name into runners, for `Detector.load`, `verify` and the
benchmarks alike:
- `select_backend()` is a pure function of what is available (`Availability`);
- `probe_availability()` finds that out on this machine, importing TensorRT, pycuda and onnxruntime only when
  called;
- `resolve_backend()` = probe + select; `create_runners()` builds one (inactive) runner per graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BACKENDS = ("trt", "ort-cuda", "ort-trt", "ort-cpu")
BACKEND_CHOICES = ("auto", "ort", *BACKENDS)
TRITON_SCHEME = "triton://"  # backend names "triton://HOST:PORT": graphs served by Triton (backends/triton.py)
ORT_PROVIDERS = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


@dataclass(frozen=True)
class Availability:
    """What this machine offers: TensorRT runtime, pycuda, a matching plan in the bundle, ORT and its providers.

    Attributes:
        tensorrt: A TensorRT runtime module imports (`tensorrt` or the lean runtime).
        pycuda: pycuda imports and sees a GPU.
        trt_plans: The bundle has an engine set built for this GPU and TensorRT version.
        onnxruntime: onnxruntime imports.
        ort_providers: Execution providers of the installed onnxruntime.
        reasons: Why a faster backend is unavailable, one line each (for messages and `stp-edge info`).
    """

    tensorrt: bool = False
    pycuda: bool = False
    trt_plans: bool = False
    onnxruntime: bool = False
    ort_providers: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


def select_backend(requested: str, available: Availability) -> str:
    """The backend to use: for "auto", trt > ort-cuda > ort-cpu; otherwise `requested`, if it can run.

    Raises:
        ValueError: Unknown backend name, or the requested one cannot run here (the message says why).
    """
    trt_ok = available.tensorrt and available.pycuda and available.trt_plans
    can = {
        "trt": trt_ok,
        "ort-cuda": available.onnxruntime and "CUDAExecutionProvider" in available.ort_providers,
        "ort-trt": available.onnxruntime and "TensorrtExecutionProvider" in available.ort_providers,
        "ort-cpu": available.onnxruntime,
    }
    if requested == "ort":
        requested = "ort-cuda" if can["ort-cuda"] else "ort-cpu"
    if requested == "auto":
        for name in ("trt", "ort-cuda", "ort-cpu"):
            if can[name]:
                return name
        raise ValueError("no backend can run here: " + "; ".join(available.reasons or ("nothing installed",))
                         + ". Install onnxruntime: pip install 'stp-edge[ort]'")
    if requested not in can:
        raise ValueError(f"unknown backend {requested!r}; expected 'auto', 'ort' or one of {BACKENDS}")
    if not can[requested]:
        why = "; ".join(available.reasons) or "its dependencies are missing"
        raise ValueError(f"backend {requested!r} cannot run here: {why}")
    return requested


def probe_availability(bundle: Any = None, device: int = 0) -> Availability:
    """Find out what this machine offers (imports the optional dependencies; never at import time).

    Args:
        bundle: A `stp_edge.bundle.Bundle` whose engines are checked against this GPU, or None.
        device: CUDA device ordinal.
    """
    reasons: list[str] = []
    have_trt = have_pycuda = plans = have_ort = False
    providers: tuple[str, ...] = ()
    trt_version = gpu_name = cc = None
    try:
        from stp_edge.backends.trt import load_trt

        trt_version = load_trt().__version__
        have_trt = True
    except ImportError as exc:
        reasons.append(f"TensorRT: {exc}")
    try:
        from stp_edge.backends.trt import cuda_device_info

        gpu_name, cc = cuda_device_info(device)
        have_pycuda = True
    except Exception as exc:  # ImportError, or pycuda's LogicError/RuntimeError without a driver or GPU
        reasons.append(f"pycuda/GPU: {exc}")
    if bundle is not None and have_trt and have_pycuda:
        from stp_edge.bundle import select_engine

        engine, why = select_engine(bundle.engines, tensorrt_version=trt_version, compute_capability=cc,
                                    gpu_name=gpu_name)
        plans = engine is not None
        if not plans:
            reasons.append("TensorRT plans: " + "; ".join(why))
    try:
        from stp_edge._deps import require

        providers = tuple(require("onnxruntime").get_available_providers())
        have_ort = True
    except ImportError as exc:
        reasons.append(f"onnxruntime: {exc}")
    return Availability(tensorrt=have_trt, pycuda=have_pycuda, trt_plans=plans, onnxruntime=have_ort,
                        ort_providers=providers, reasons=tuple(reasons))


def resolve_backend(requested: str, bundle: Any = None, device: int = 0) -> str:
    """The backend that will run: `requested` checked against this machine, or the fastest one for "auto".

    "ort-cpu" needs no probe (onnxruntime's import error, if any, surfaces when its runner activates).
    """
    if requested == "ort-cpu":
        return requested
    if requested.startswith(TRITON_SCHEME):  # a served bundle: nothing to probe here (see `create_runners`)
        from stp_edge.backends.triton import parse_triton_url

        parse_triton_url(requested)
        return requested
    return select_backend(requested, probe_availability(bundle, device))


def create_runners(bundle: Any, backend: str, device: int = 0, *, allow_host_code: bool = False,
                   graphs: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One (inactive) runner per graph of `bundle` ("encoder", "temporal", "spatial") for a resolved backend.

    Args:
        bundle: A loaded `stp_edge.bundle.Bundle`.
        backend: A resolved backend name (see `resolve_backend`).
        device: CUDA device ordinal.
        allow_host_code: Let TensorRT run the host code a version-compatible plan embeds
            (`Runtime.engine_host_code_allowed`). Only the caller can allow it; a bundle's manifest never does,
            since a plan's host code is native code that runs in this process.
        graphs: The graphs to make runners for (default: all three).
    """
    from stp_edge.bundle import GRAPH_NAMES

    names = GRAPH_NAMES if graphs is None else tuple(graphs)

    if backend.startswith(TRITON_SCHEME):
        # "triton://HOST:PORT": each graph runs on a Triton server as the model named after it
        # (stp_edge.scale.serve); tritonclient is imported when a runner activates.
        from stp_edge.backends.triton import TritonRunner, parse_triton_url

        url = parse_triton_url(backend)
        return {g: TritonRunner(url, g) for g in names}

    if backend == "trt":
        from stp_edge.backends.trt import TrtRunner, cuda_device_info, load_trt

        gpu_name, cc = cuda_device_info(device)
        engine = bundle.select_engine(tensorrt_version=load_trt().__version__, compute_capability=cc,
                                      gpu_name=gpu_name)
        profiles = engine.build_flags.get("profiles") or {}
        return {g: TrtRunner(bundle.plan_path(engine, g), device=device, name=f"{g}.plan",
                             allow_host_code=allow_host_code, profiles=profiles.get(g)) for g in names}
    if backend not in ORT_PROVIDERS:
        raise ValueError(f"unknown backend {backend!r}; expected 'trt' or one of {sorted(ORT_PROVIDERS)}")
    from stp_edge.backends.ort import OrtRunner

    return {g: OrtRunner(bundle.graph_path(g), ORT_PROVIDERS[backend], device_id=device,
                         name=f"{g}.onnx ({backend})") for g in names}


__all__ = ["BACKENDS", "BACKEND_CHOICES", "ORT_PROVIDERS", "TRITON_SCHEME", "Availability", "create_runners",
           "probe_availability", "resolve_backend", "select_backend"]
