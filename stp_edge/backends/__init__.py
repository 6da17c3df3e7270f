"""Backends: one `Runner` interface (base.py), its subclasses (ort.py, trt.py, torch.py), and the factory.

The factory is the one place that turns a backend name into runners, for `Detector.load`, `verify` and the
benchmarks alike:
- `select_backend()` is a pure function of what is available (`Availability`);
- `probe_availability()` finds that out on this machine, importing TensorRT, pycuda and onnxruntime only when
  called; with a bundle it also makes the engine choice (`select_trt_engine`), once;
- `choose_backend()` = probe + select, keeping that engine; `resolve_backend()` is its name alone; on a CPU it
  also picks between ONNX Runtime and OpenVINO and the encoder's form (fp32, bf16, int8) with
  `stp_edge.machine.choose_cpu_form`, a pure function of the CPU's features, what is installed and the bundle;
- `create_runners()` builds one (inactive) runner per graph, TensorRT ones on the chosen engine set, each bounded
  by `CallLimits` (a deadline per call, a memory cap, an end on a stop request: calls.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stp_edge.backends.calls import CallLimits, stop_calls_on
from stp_edge.errors import UsageError

CUDA_REASON = "CUDA binding (pycuda or cuda-python)/GPU"  # how a reason names a missing binding, driver or GPU
BACKENDS = ("trt", "ort-cuda", "ort-trt", "ort-cpu", "openvino", "openvino-gpu")
OPENVINO_DEVICES = {"openvino": "CPU", "openvino-gpu": "GPU"}
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
        trt_engine: That engine set (`select_trt_engine`'s choice), or None.
        openvino: openvino imports.
        openvino_devices: The devices it sees ("CPU", "GPU", ...).
    """

    tensorrt: bool = False
    pycuda: bool = False
    trt_plans: bool = False
    onnxruntime: bool = False
    ort_providers: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    trt_engine: Any = None
    openvino: bool = False
    openvino_devices: tuple[str, ...] = ()


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
        "openvino": available.openvino and "CPU" in available.openvino_devices,
        "openvino-gpu": available.openvino and any(d.startswith("GPU") for d in available.openvino_devices),
    }
    if requested == "ort":
        requested = "ort-cuda" if can["ort-cuda"] else "ort-cpu"
    if requested == "auto":
        for name in ("trt", "ort-cuda", "ort-cpu", "openvino"):  # CPU: refined by choose_cpu_form
            if can[name]:
                return name
        raise UsageError("no backend can run here: " + "; ".join(available.reasons or ("nothing installed",))
                         + ". Install onnxruntime: pip install 'stp-edge[ort]'")
    if requested not in can:
        raise UsageError(f"unknown backend {requested!r}; expected 'auto', 'ort' or one of {BACKENDS}")
    if not can[requested]:
        raise UsageError(f"backend {requested!r} cannot run here: {why_not(requested, available)}")
    return requested


def why_not(backend: str, available: Availability) -> str:
    """Why `backend` cannot run here, naming only what that backend needs (not the other backends' gaps)."""
    if backend == "trt":
        reasons = [r for r in available.reasons if r.startswith(("TensorRT", CUDA_REASON))]
        return "; ".join(reasons) or ("TensorRT, a CUDA binding (pycuda or cuda-python) or a matching engine set "
                                      "is missing")
    if backend in OPENVINO_DEVICES:
        if not available.openvino:
            return "openvino is not installed: pip install 'stp-edge[openvino]'"
        return (f"OpenVINO sees no {OPENVINO_DEVICES[backend]} device here (it sees "
                f"{', '.join(available.openvino_devices) or 'none'}; an Intel GPU needs its compute runtime)")
    if not available.onnxruntime:
        extra = "ort" if backend == "ort-cpu" else "ort-gpu"
        return f"onnxruntime is not installed: pip install 'stp-edge[{extra}]'"
    provider = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}.get(backend)
    return (f"this onnxruntime has no {provider} (its providers: {', '.join(available.ort_providers) or 'none'}); "
            f"install onnxruntime-gpu in place of onnxruntime: pip uninstall onnxruntime && "
            f"pip install 'stp-edge[ort-gpu]'")


def probe_availability(bundle: Any = None, device: int = 0, *, allow_host_code: bool = False,
                       openvino_devices: bool = False) -> Availability:
    """Find out what this machine offers (imports the optional dependencies; never at import time).

    OpenVINO is only looked up (installed or not), not started: its CPU plugin ships with every x86-64/Arm wheel,
    and starting it costs time and can abort a host process (`stp_edge.backends.openvino`). Its devices are
    probed with `openvino_devices=True` (an Intel GPU: "openvino-gpu").

    Args:
        bundle: A `stp_edge.bundle.Bundle` whose engine set for this machine is chosen, or None.
        device: CUDA device ordinal.
        allow_host_code: See `create_runners` (part of the engine choice).
        openvino_devices: Start OpenVINO to list its devices.
    """
    reasons: list[str] = []
    have_trt = have_pycuda = have_ort = False
    engine = None
    providers: tuple[str, ...] = ()
    try:
        from stp_edge.backends.trt import load_trt

        load_trt()
        have_trt = True
    except ImportError as exc:
        reasons.append(f"TensorRT: {exc}")
    try:
        from stp_edge.backends.trt import cuda_device_info

        cuda_device_info(device)
        have_pycuda = True
    except Exception as exc:  # ImportError, or pycuda's LogicError/RuntimeError without a driver or GPU
        reasons.append(f"{CUDA_REASON}: {exc}")
    if bundle is not None and have_trt and have_pycuda:
        from stp_edge.bundle import EngineCompatibilityError

        try:
            engine = select_trt_engine(bundle, device, allow_host_code=allow_host_code)
        except EngineCompatibilityError as exc:
            reasons.append("TensorRT plans: " + "; ".join(exc.reasons))
    try:
        from stp_edge._deps import require

        providers = tuple(require("onnxruntime").get_available_providers())
        have_ort = True
    except ImportError as exc:
        reasons.append(f"onnxruntime: {exc}")
    ov_devices = _openvino_devices(reasons) if openvino_devices else _openvino_cpu(reasons)
    return Availability(tensorrt=have_trt, pycuda=have_pycuda, trt_plans=engine is not None, onnxruntime=have_ort,
                        ort_providers=providers, reasons=tuple(reasons), trt_engine=engine,
                        openvino=ov_devices is not None, openvino_devices=ov_devices or ())


def _openvino_cpu(reasons: list[str]) -> tuple[str, ...] | None:
    """("CPU",) where openvino is installed (looked up, not imported), else None and a reason."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        reasons.append("openvino: not installed")
        return None
    return ("CPU",)


def _openvino_devices(reasons: list[str]) -> tuple[str, ...] | None:
    """The devices OpenVINO sees, or None (and a reason) where it is not installed or cannot start."""
    try:
        from stp_edge.backends.openvino import openvino_devices

        return openvino_devices()
    except ImportError as exc:
        reasons.append(f"openvino: {exc}")
    except RuntimeError as exc:  # installed but its plugins fail to load
        reasons.append(f"openvino: {' '.join(str(exc).split())}")
    return None


@dataclass(frozen=True)
class BackendChoice:
    """The backend that will run a bundle here and, for "trt", the engine set its runners load.

    Attributes:
        name: A resolved backend name ("trt", "ort-cuda", "ort-trt", "ort-cpu", "openvino", "openvino-gpu" or
            "triton://HOST:PORT").
        engine: The bundle's `EngineInfo` chosen for this machine when `name` is "trt", else None.
        form: On "ort-cpu"/"openvino" with a bundle: the `stp_edge.machine.FormChoice` (the encoder's form, the
            OpenVINO precision hint, what it buys on this CPU); else None.
    """

    name: str
    engine: Any = None
    form: Any = None


def choose_backend(requested: str, bundle: Any = None, device: int = 0, *,
                   allow_host_code: bool = False, precision: str = "exported") -> BackendChoice:
    """The backend that will run: `requested` checked against this machine, or the fastest one for "auto".

    The engine set is chosen here, once; pass `engine=choice.engine` to `create_runners`/`activate_runners`.
    "ort-cpu" needs no probe (onnxruntime's import error, if any, surfaces when its runner activates).
    On a CPU backend `precision` ("exported", "auto", "fp32", "bf16", "int8") and `choose_cpu_form` pick the form;
    "exported" (the default) keeps the bundle's precision (an fp32 bundle stays fp32); "auto" may run it in bf16
    on OpenVINO, and may move the run from ONNX Runtime to OpenVINO (or back) where it is installed and faster.
    """
    if requested == "ort-cpu":
        return _cpu_choice(BackendChoice(requested), requested, bundle, precision, None)
    if requested.startswith(TRITON_SCHEME):  # a served bundle: nothing to probe here (see `create_runners`)
        from stp_edge.backends.triton import parse_triton_url

        parse_triton_url(requested)
        return BackendChoice(requested)
    available = probe_availability(bundle, device, allow_host_code=allow_host_code,
                                   openvino_devices=requested == "openvino-gpu")
    name = select_backend(requested, available)
    return _cpu_choice(BackendChoice(name, available.trt_engine if name == "trt" else None), requested, bundle,
                       precision, available)


def _cpu_choice(choice: BackendChoice, requested: str, bundle: Any, precision: str,
                available: Availability | None) -> BackendChoice:
    """`choice` with its CPU form (`choose_cpu_form`); under "auto" the backend that form runs on."""
    from stp_edge.machine import choose_cpu_form, cpu_features, encoder_form

    if choice.name not in ("ort-cpu", "openvino"):
        if precision not in ("exported", "auto", None):
            raise UsageError(f"precision {precision!r} is chosen on CPU backends (ort-cpu, openvino); backend "
                             f"{choice.name!r} runs the bundle's graphs as built")
        return choice
    if bundle is None:
        return choice
    installed = {choice.name}
    if requested == "auto" and available is not None:
        installed = {n for n, ok in (("ort-cpu", available.onnxruntime), ("openvino", available.openvino)) if ok}
    form = choose_cpu_form(cpu_features(), installed, encoder_form(bundle.manifest), precision or "exported")
    return BackendChoice(form.backend, None, form)


def resolve_backend(requested: str, bundle: Any = None, device: int = 0) -> str:
    """The name of `choose_backend`'s choice, for callers that need no TensorRT engine set."""
    return choose_backend(requested, bundle, device).name


def create_runners(bundle: Any, backend: str, device: int = 0, *, allow_host_code: bool = False,
                   graphs: tuple[str, ...] | None = None, ort_trt_fp16: bool = False,
                   engine: Any = None, limits: CallLimits | None = None,
                   encoder_precision: str | None = None, ort_compute_stream: int | None = None) -> dict[str, Any]:
    """One (inactive) runner per graph of `bundle` ("encoder", "temporal", "spatial") for a resolved backend.

    Args:
        bundle: A loaded `stp_edge.bundle.Bundle`.
        backend: A resolved backend name (see `resolve_backend`).
        device: CUDA device ordinal.
        allow_host_code: Let TensorRT run the host code a version-compatible plan embeds
            (`Runtime.engine_host_code_allowed`). Only the caller can allow it; a bundle's manifest never does,
            since a plan's host code is native code that runs in this process.
        graphs: The graphs to make runners for (default: all three).
        ort_trt_fp16: "ort-trt" only: let ONNX Runtime's TensorRT provider use fp16 kernels.
        engine: "trt" only: the engine set to load (`choose_backend`'s `engine`); None chooses it here.
        limits: `stp_edge.backends.calls.CallLimits` of every runner (call deadline, memory cap, connect
            timeout); None: the defaults.
        encoder_precision: "openvino*" only: the encoder's INFERENCE_PRECISION_HINT ("f32", "bf16"; None:
            "f32"). The heads always run in f32: they scale cosines by 1/temperature (~14x), which turns bf16's
            8-bit mantissa into visible errors in class probabilities, for microseconds of work.
        ort_compute_stream: "ort-cuda"/"ort-trt" only: the CUstream the encoder's session computes on (the
            producer's, e.g. `CudaPreprocessor.stream_handle`; see `OrtRunner`); None: ONNX Runtime's own.
    """
    from stp_edge.bundle import GRAPH_NAMES

    names = GRAPH_NAMES if graphs is None else tuple(graphs)

    if backend.startswith(TRITON_SCHEME):
        # "triton://HOST:PORT": each graph runs on a Triton server as the model named after it
        # (stp_edge.scale.serve); tritonclient is imported when a runner activates.
        from stp_edge.backends.triton import TritonRunner, parse_triton_url

        url = parse_triton_url(backend)
        return {g: TritonRunner(url, g, limits=limits) for g in names}

    if backend == "trt":
        from stp_edge.backends.trt import TrtRunner

        if engine is None:
            engine = select_trt_engine(bundle, device, allow_host_code=allow_host_code)
        profiles = engine.build_flags.get("profiles") or {}
        return {g: TrtRunner(bundle.plan_path(engine, g), device=device, name=f"{g}.plan",
                             allow_host_code=allow_host_code, profiles=profiles.get(g), engine_info=engine,
                             limits=limits)
                for g in names}
    if backend in OPENVINO_DEVICES:
        from stp_edge.backends.openvino import OpenVinoRunner

        return {g: OpenVinoRunner(bundle.graph_path(g), device=OPENVINO_DEVICES[backend],
                                  precision=(encoder_precision or "f32") if g == "encoder" else "f32",
                                  name=f"{g}.onnx ({backend})", limits=limits)
                for g in names}
    if backend not in ORT_PROVIDERS:
        raise UsageError(f"unknown backend {backend!r}; expected 'trt', one of {sorted(ORT_PROVIDERS)} or "
                         f"{sorted(OPENVINO_DEVICES)}")
    from stp_edge.backends.ort import OrtRunner

    profiles = None
    if backend == "ort-trt":  # the provider builds engines for the same profiles as `stp-edge build-engines`
        from stp_edge.bundle.engines import default_profiles

        profiles = default_profiles(bundle.config, regions=bundle.region_features)
    return {g: OrtRunner(bundle.graph_path(g), ORT_PROVIDERS[backend], device_id=device, name=f"{g}.onnx ({backend})",
                         trt_fp16=ort_trt_fp16, trt_profiles=profiles[g] if profiles else None, limits=limits,
                         compute_stream=ort_compute_stream if g == "encoder" and backend != "ort-cpu" else None)
            for g in names}


def select_trt_engine(bundle: Any, device: int = 0, *, allow_host_code: bool = False) -> Any:
    """`Bundle.select_engine` for this machine's TensorRT runtime, GPU and platform (imports TensorRT, pycuda).

    Raises:
        EngineCompatibilityError: None fits; names this machine, every refused set and why, and the rebuild.
    """
    from stp_edge.backends.trt import trt_environment

    return bundle.select_engine(trt_environment(device), allow_host_code=allow_host_code)


def activate_all(runners: dict[str, Any]) -> dict[str, Any]:
    """Activate every runner (in order); if one fails, deactivate those already active and re-raise."""
    done = []
    try:
        for runner in runners.values():
            if not runner.is_active:
                runner.activate()
                done.append(runner)
    except BaseException:
        for runner in reversed(done):
            runner.deactivate()
        raise
    return runners


def ort_fallback_backend() -> str:
    """The ONNX Runtime backend "auto" falls back to: ort-cuda where ORT has CUDA, else ort-cpu."""
    from stp_edge._deps import require

    return "ort-cuda" if "CUDAExecutionProvider" in require("onnxruntime").get_available_providers() else "ort-cpu"


def activate_runners(bundle: Any, backend: str, device: int = 0, *, requested: str | None = None,
                     allow_host_code: bool = False, engine: Any = None, warn: Callable[[str], None] | None = None,
                     make_runners: Callable[..., dict[str, Any]] | None = None,
                     limits: CallLimits | None = None,
                     encoder_precision: str | None = None, ort_trt_fp16: bool = False,
                     ort_compute_stream: int | None = None) -> tuple[str, dict[str, Any]]:
    """Create and activate the runners of a resolved `backend`; returns (backend that runs, runners).

    A TensorRT plan that TensorRT refuses to deserialise (`PlanLoadError`: the manifest's engine entry looked
    right, the plan did not load) falls back to ONNX Runtime with a one-line warning when `requested` is
    "auto"; otherwise it raises a `RunnerError` naming the plan's build side, this machine and the rebuild
    command.

    Args:
        bundle: A loaded `stp_edge.bundle.Bundle`.
        backend: The resolved backend (`resolve_backend`).
        device: CUDA device ordinal.
        requested: What the caller asked for ("auto" allows the fallback); default `backend`.
        allow_host_code: See `create_runners`.
        engine: "trt" only: the engine set to load (`choose_backend`'s `engine`); None chooses it.
        warn: Receives the one-line fallback warning (default: the "stp_edge" logger's warning).
        make_runners: `create_runners` (replaceable for tests).
        limits: `CallLimits` of every runner (see `create_runners`).
        encoder_precision: OpenVINO's encoder precision hint (see `create_runners`).
        ort_trt_fp16: "ort-trt" only: ONNX Runtime's TensorRT provider may use fp16 kernels (`create_runners`).
        ort_compute_stream: ONNX Runtime GPU backends: the encoder session's CUDA stream (`create_runners`).
    """
    from stp_edge.backends.base import PlanLoadError, RunnerError

    make = make_runners or create_runners
    extra: dict[str, Any] = {"encoder_precision": encoder_precision} if encoder_precision is not None else {}
    if ort_trt_fp16:
        extra["ort_trt_fp16"] = True
    if ort_compute_stream is not None:
        extra["ort_compute_stream"] = ort_compute_stream
    runners = make(bundle, backend, device, allow_host_code=allow_host_code, engine=engine, limits=limits, **extra)
    try:
        return backend, activate_all(runners)
    except PlanLoadError as exc:
        if backend != "trt":
            raise
        message = _plan_failure(bundle, device, runners, exc)
        if (requested or backend) != "auto":
            raise RunnerError(message) from exc
    fallback = ort_fallback_backend()
    (warn or logging.getLogger("stp_edge").warning)(f"{message}; falling back to onnxruntime ({fallback})")
    return fallback, activate_all(make(bundle, fallback, device, allow_host_code=allow_host_code, limits=limits))


def _plan_failure(bundle: Any, device: int, runners: dict[str, Any], exc: Exception) -> str:
    """One line naming the refused plan's build side (the runners' engine set), this machine and the rebuild."""
    short = f"{exc} (rebuild: stp-edge build-engines {bundle.path})"
    engine = next((r.engine_info for r in runners.values() if getattr(r, "engine_info", None) is not None), None)
    if engine is None:
        return short
    try:
        from stp_edge.backends.trt import plan_load_message, trt_environment

        return plan_load_message(getattr(exc, "plan", None) or bundle.path / engine.dir, engine,
                                 trt_environment(device), bundle.path)
    except Exception:  # the environment itself is broken: still say what failed, in one line
        return short


__all__ = ["BACKENDS", "BACKEND_CHOICES", "OPENVINO_DEVICES", "ORT_PROVIDERS", "TRITON_SCHEME", "Availability",
           "BackendChoice",
           "CallLimits", "activate_all", "activate_runners", "choose_backend", "create_runners", "ort_fallback_backend",
           "probe_availability", "resolve_backend", "select_backend", "select_trt_engine", "stop_calls_on", "why_not"]
