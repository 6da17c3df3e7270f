"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

On a GPU provider the runner uses IO binding: host inputs are bound as CPU buffers (ORT copies them once),
device inputs (`__cuda_array_interface__`) are bound in place, outputs are bound to the device and copied back
to the host once per call.

Run-time bounds (`stp_edge.backends.calls`): each call gets its own `RunOptions`, whose `terminate` flag ends it
at its deadline or on a stop request (onnxruntime checks the flag before every node, Loop iterations included);
the CPU memory arena is capped, and an allocation past the cap, or one the system refuses, becomes a
`MemoryLimitError` naming the graph, the request and the limit; any other onnxruntime failure of a call is a
one-line `CallError`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge._deps import require
from stp_edge.backends.base import InputError, Runner, RunnerError, TensorSpec, feed_layout
from stp_edge.backends.calls import GIB, CallLimits
from stp_edge.backends.errors import CallError, MemoryLimitError
from stp_edge.errors import UsageError

ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
OPT_LEVELS = ("disable", "basic", "extended", "all")
ORT_ERRORS_MODULE = "onnxruntime.capi.onnxruntime_pybind11_state"  # Fail, InvalidArgument, RuntimeException, ...
_ARENA_REFUSED = re.compile(r"Available memory of (\d+) is smaller than requested bytes of (\d+)")
_ALLOC_FAILED = re.compile(r"Failed to allocate memory for requested buffer of size (\d+)")
_ARENA_LOCK = threading.Lock()
_arena_bytes: int | None = None  # the cap of the CPU arena registered with onnxruntime's environment


def cap_cpu_arena(ort: Any, limit_bytes: int) -> None:
    """Register onnxruntime's shared CPU arena capped at `limit_bytes` (again only when the cap changes).

    Sessions created with `session.use_env_allocators=1` take the arena registered at their creation; tensors
    they compute (not their initializers) are allocated from it, so a request past the cap fails at once.
    """
    global _arena_bytes
    with _ARENA_LOCK:
        if _arena_bytes == limit_bytes:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"max_mem": int(limit_bytes)}))
        _arena_bytes = limit_bytes


def set_intra_op_threads(runners: Mapping[str, Any], threads: int | None) -> Mapping[str, Any]:
    """Give the CPU runners among `runners` (ONNX Runtime, OpenVINO) `threads` threads per operator; returns `runners`.

    Read when a runner activates (its session is made then): call it before `activate`. Other runners are left
    as they are. None leaves ONNX Runtime's default (one thread per core of the machine).
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a whole number >= 1, got {threads!r}")
    if threads is None:
        return runners
    for runner in runners.values():
        if runner.takes_cpu_threads:
            runner.intra_op_num_threads = threads
    return runners


def gib(n: float) -> str:
    """Bytes as GiB for messages: 274877906944 -> "256 GiB", 1610612736 -> "1.5 GiB"."""
    return f"{n / GIB:.3g} GiB"


def call_failure(name: str, exc: BaseException, limit_bytes: int | None) -> CallError:
    """One-line error for an onnxruntime failure of a call: the memory cases named, anything else quoted."""
    text = " ".join(str(exc).split())
    refused = _ARENA_REFUSED.search(text)
    if refused and limit_bytes:
        return MemoryLimitError(f"{name} asked for {gib(int(refused.group(2)))} of memory, more than the "
                                f"{gib(limit_bytes)} memory limit allows ({gib(int(refused.group(1)))} left); if the "
                                f"graph is right, raise it: --memory-limit GIB (Python: CallLimits(memory_limit_gib=))")
    failed = _ALLOC_FAILED.search(text)
    if failed or isinstance(exc, MemoryError):
        size = f" {gib(int(failed.group(1)))}" if failed else ""
        return MemoryLimitError(f"{name} asked for{size} memory that this machine could not allocate; lower the "
                                f"batch or the number of streams, or run on a machine with more memory")
    return CallError(f"{name}: onnxruntime failed the call ({type(exc).__name__}): {text}")


def is_ort_error(exc: BaseException) -> bool:
    """True for the exceptions onnxruntime raises for a failed run (not for a bug in the caller)."""
    return type(exc).__module__ == ORT_ERRORS_MODULE or isinstance(exc, MemoryError)


def ort_dtype(type_str: str) -> np.dtype:
    """NumPy dtype of an ORT type string such as 'tensor(float)'."""
    if type_str not in ORT_DTYPES:
        raise RunnerError(f"unsupported ONNX tensor type {type_str}")
    return np.dtype(ORT_DTYPES[type_str])


def resolve_providers(providers: Sequence[str] | str, available: Sequence[str]) -> list[str]:
    """Execution providers to request, in priority order.

    "auto" means CUDA (+ CPU fallback) when ORT has CUDA, else CPU. The TensorRT provider builds engines on
    the first run (minutes), so it is used only when asked for explicitly.

    Raises:
        RunnerError: A requested provider is not in `available`.
    """
    if isinstance(providers, str):
        if providers != "auto":
            providers = [providers]
        elif "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            return ["CPUExecutionProvider"]
    missing = [p for p in providers if p not in available]
    if missing:
        raise RunnerError(f"onnxruntime providers {missing} are not available; this onnxruntime has "
                          f"{list(available)} (install onnxruntime-gpu for CUDA/TensorRT)")
    return list(providers)


def shape_list(shapes: Mapping[str, Sequence[int]]) -> str:
    """ONNX Runtime's TensorRT provider shape syntax: {"a": (1, 3), "b": (2,)} -> "a:1x3,b:2"."""
    for name in shapes:
        if not name or any(c in name for c in ":,"):
            raise UsageError(f"input name {name!r} cannot be written in a TensorRT provider shape list")
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in shape)}" for name, shape in shapes.items())


def trt_provider_options(device_id: int, *, fp16: bool, cache_dir: str | os.PathLike,
                         profiles: Mapping[str, Sequence[Sequence[int]]] | None = None) -> dict[str, Any]:
    """Options of ONNX Runtime's TensorrtExecutionProvider.

    Engines and the timing cache are kept in `cache_dir`. With `profiles` ({input: (min, opt, max)}, the same
    ranges `stp-edge build-engines` uses) the provider builds one engine for the whole range instead of one per
    new input shape, so a growing temporal window or batch does not trigger rebuilds (minutes each).

    Raises:
        ValueError: A profile is not (min, opt, max) of equal ranks with min <= opt <= max.
    """
    options: dict[str, Any] = {
        "device_id": int(device_id), "trt_fp16_enable": bool(fp16),
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir),
    }
    if profiles:
        for name, p in profiles.items():
            if len(p) != 3 or len({len(s) for s in p}) != 1 or not all(
                    a <= b <= c for a, b, c in zip(*p, strict=True)):
                raise UsageError(f"profile of {name!r} must be (min, opt, max) shapes of one rank with "
                                 f"min <= opt <= max, got {p}")
        for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
            options[key] = shape_list({name: p[i] for name, p in profiles.items()})
    return options


def compute_stream_options(stream: int | None) -> dict[str, str]:
    """CUDA/TensorRT provider options that make ONNX Runtime compute on the producer's CUDA stream.

    A device input written on that stream (the CUDA preprocessor's) is then ordered by the stream itself: no
    host synchronisation between producer and session. Empty for None (ONNX Runtime's own stream).
    """
    if stream is None:
        return {}
    if isinstance(stream, bool) or not isinstance(stream, int) or stream in (0, 1, 2):
        raise UsageError(f"compute stream must be a CUstream handle (not 0/1/2, the default streams), got {stream!r}")
    return {"has_user_compute_stream": "1", "user_compute_stream": str(int(stream))}


class OrtRunner(Runner):
    """Runs one ONNX graph with ONNX Runtime.

    Args:
        path: The .onnx file.
        providers: Execution provider names in priority order, or "auto" (see `resolve_providers`).
        device_id: CUDA device for the GPU providers.
        graph_optimization_level: One of "disable", "basic", "extended", "all".
        intra_op_num_threads: CPU threads per operator (None: ORT's default).
        trt_fp16: Let the TensorRT provider use FP16 kernels.
        trt_cache_dir: Where the TensorRT provider caches its engines and timing cache (None: next to the graph).
        trt_profiles: The TensorRT provider's optimisation profile, {input: (min, opt, max)} (see
            `trt_provider_options`); None: the provider builds for each new shape.
        name: Runner name used in messages (default: the file name).
        limits: Call deadline and memory cap (`CallLimits`; the CPU arena is capped at half this machine's
            memory unless `memory_limit_gib` says otherwise).
        compute_stream: GPU providers: the CUstream (int) ONNX Runtime computes on, normally the producer's
            (`CudaPreprocessor.stream_handle`), so device feeds written there need no host sync; a device feed
            from another stream is waited for on the host first. None: ONNX Runtime's own stream.
    """

    accepts_device_feeds = True  # only honoured on a GPU provider, checked in infer_impl
    takes_cpu_threads = True

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | str = ("CPUExecutionProvider",), *,
                 device_id: int = 0, graph_optimization_level: str = "all", intra_op_num_threads: int | None = None,
                 trt_fp16: bool = False, trt_cache_dir: str | os.PathLike | None = None,
                 trt_profiles: Mapping[str, Sequence[Sequence[int]]] | None = None,
                 name: str | None = None, limits: CallLimits | None = None,
                 compute_stream: int | None = None) -> None:
        self.path = Path(path)
        self._stream_options = compute_stream_options(compute_stream)
        self.compute_stream = compute_stream
        self.waits_on_feed_streams = compute_stream is not None  # by stream order, or a host wait (_await_feeds)
        super().__init__(name or self.path.name, limits=limits)
        if graph_optimization_level not in OPT_LEVELS:
            raise UsageError(f"graph_optimization_level must be one of {OPT_LEVELS}, got "
                             f"{graph_optimization_level!r}")
        self.requested_providers = providers
        self.device_id = device_id
        self.graph_optimization_level = graph_optimization_level
        self.intra_op_num_threads = intra_op_num_threads
        self.trt_fp16 = trt_fp16
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else self.path.parent / ".ort-trt-cache"
        self.trt_profiles = dict(trt_profiles) if trt_profiles else None
        self.session: Any = None
        self.providers: list[str] = []
        self.memory_limit_bytes: int | None = None
        self._ort: Any = None
        self._run_options: Any = None  # the running call's RunOptions, for cancel_impl

    def max_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """With the TensorRT provider and explicit profiles: each input's profile max (beyond it the call fails)."""
        if not self.trt_profiles or (self.providers and self.providers[0] != "TensorrtExecutionProvider"):
            return None
        return {n: tuple(int(d) for d in p[2]) for n, p in self.trt_profiles.items()}

    @property
    def on_gpu(self) -> bool:
        """True when the session's first provider is a GPU provider."""
        return bool(self.providers) and self.providers[0] in GPU_PROVIDERS

    def _provider_options(self, provider: str) -> dict[str, Any]:
        if provider == "CUDAExecutionProvider":
            options: dict[str, Any] = {"device_id": self.device_id, **self._stream_options}
            if self.limits.memory_limit_gib is not None:  # the GPU arena is capped only when asked
                options.update(gpu_mem_limit=int(self.limits.memory_limit_gib * GIB),
                               arena_extend_strategy="kSameAsRequested")
            return options
        if provider == "TensorrtExecutionProvider":
            return {**trt_provider_options(self.device_id, fp16=self.trt_fp16, cache_dir=self.trt_cache_dir,
                                           profiles=self.trt_profiles), **self._stream_options}
        return {}

    def activate_impl(self) -> None:
        ort = require("onnxruntime", "the onnxruntime backend")
        if not self.path.is_file():
            raise RunnerError(f"{self.name}: ONNX file {self.path} does not exist")
        providers = resolve_providers(self.requested_providers, ort.get_available_providers())
        opts = ort.SessionOptions()
        level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                 "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                 "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                 "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self.graph_optimization_level]
        opts.graph_optimization_level = level
        if self.intra_op_num_threads is not None:
            opts.intra_op_num_threads = self.intra_op_num_threads
        opts.log_severity_level = 3  # errors only; ORT warns about every unused initializer otherwise
        self.memory_limit_bytes = self.limits.memory_limit_bytes()
        if self.memory_limit_bytes:
            cap_cpu_arena(ort, self.memory_limit_bytes)
            opts.add_session_config_entry("session.use_env_allocators", "1")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers,
                                                provider_options=[self._provider_options(p) for p in providers])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            why = " ".join(str(exc).split())  # one line
            raise RunnerError(f"{self.name}: onnxruntime cannot load {self.path}: {why}") from exc
        self.providers = list(self.session.get_providers())
        self._ort = ort

    def deactivate_impl(self) -> None:
        self.session = None
        self.providers = []
        self._run_options = None

    def input_specs_impl(self) -> dict[str, TensorSpec]:
        return {i.name: TensorSpec(i.name, ort_dtype(i.type),
                                   tuple(d if isinstance(d, int) else -1 for d in i.shape))
                for i in self.session.get_inputs()}

    def output_names_impl(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def cancel_impl(self) -> None:
        """Set the running call's `RunOptions.terminate`: onnxruntime ends the run before its next node."""
        options = self._run_options
        if options is not None:
            options.terminate = True

    def infer_impl(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        options = self._ort.RunOptions()
        options.log_severity_level = 4  # the failure is raised as one line below, not logged as well
        self._run_options = options
        if self.call_cancelled.is_set():  # cancelled before this call began (see Runner.call_cancelled)
            options.terminate = True
        try:
            return self._run(feeds, options)
        except Exception as exc:
            if not is_ort_error(exc):
                raise
            raise call_failure(self.name, exc, self.memory_limit_bytes) from exc
        finally:
            self._run_options = None

    def _await_feeds(self, feeds: Mapping[str, Any]) -> None:
        """Wait on the host for device feeds produced on a stream other than the session's compute stream."""
        if self.compute_stream is None:
            return
        from stp_edge.cuda.driver import shared_driver
        from stp_edge.cuda.streams import producer_stream

        for value in feeds.values():
            stream = producer_stream(value, self.compute_stream)
            if stream is not None:
                shared_driver().call("cuStreamSynchronize", stream)

    def _run(self, feeds: Mapping[str, Any], options: Any) -> dict[str, np.ndarray]:
        names = self.output_names_impl()
        if not self.on_gpu:
            for name, value in feeds.items():
                if feed_layout(value)[2] is not None:
                    raise InputError(f"{self.name}: input {name!r} is a device buffer but the session runs on "
                                     f"{self.providers}; pass a host numpy array")
            return dict(zip(names, self.session.run(names, dict(feeds), options), strict=False))
        self._await_feeds(feeds)
        io = self.session.io_binding()
        for name, value in feeds.items():
            shape, dtype, ptr = feed_layout(value)
            if ptr is None:
                io.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                io.bind_input(name, "cuda", self.device_id, dtype, list(shape), ptr)
        for name in names:
            io.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(io, options)
        return dict(zip(names, io.copy_outputs_to_cpu(), strict=False))
