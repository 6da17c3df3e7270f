"""TensorRT backend: deserialise a plan and run it with the TensorRT 10/11 name-based I/O API and pycuda memory.

Loading and running are separate small pieces: `load_trt()` finds a TensorRT runtime module,
`deserialize_plan()` turns plan bytes into an engine, `TrtRunner` owns a context, a stream and buffers.
Every decision that needs no TensorRT (dtype mapping, shape resolution against an optimisation profile, output
sizes) is a pure function below, tested without a GPU.

Runtime modules, in order: `tensorrt` (full runtime, loads any plan), `tensorrt_lean` (the lean runtime as
packaged on Jetson / by the `tensorrt-lean` wheel) and `tensorrt_lean_bindings` (the module name of the
`tensorrt-lean-cu13-bindings` PyPI wheel). The lean runtime only loads plans built version-compatible with
the lean runtime excluded. The TensorRT builder is not installable on our development machines (its PyPI
packages fetch from a vendor index), so building engines is the export package's job and is never imported
here; the names this runner calls are listed in `TRT_API` and checked against the real lean bindings
(tests/test_backends.py) and TensorRT 10.13's published stubs.

Inputs may be host NumPy arrays (staged through pinned memory) or device buffers (`__cuda_array_interface__`
or `DeviceArray`), bound in place so the CUDA preprocessor's output never round-trips through the host. A
device buffer that names its producer's stream (the interface's `stream` key) is waited for on the GPU: an
event recorded on that stream, which the runner's stream waits on before the engine runs (no host sync).
Contexts are explicit (`stp_edge.cuda.context.PrimaryContext`): the device's primary context is retained on
activation, pushed around every call from whichever thread makes it, and released on deactivation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from stp_edge._deps import MissingDependencyError, require
from stp_edge.backends.base import (
    InputError,
    PlanLoadError,
    Runner,
    RunnerError,
    TensorSpec,
    feed_layout,
    profile_max_batch,
)
from stp_edge.backends.calls import CallLimits
from stp_edge.bundle.engines import EngineInfo, TrtEnvironment, describe_platform, host_platform

TRT_MODULES = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")  # full runtime first, then the lean ones

# Every TensorRT attribute TrtRunner touches, by owner. Tests assert each exists on the real bindings.
TRT_API: dict[str, tuple[str, ...]] = {
    "module": ("Logger", "Runtime", "TensorIOMode", "DataType", "__version__"),
    "Logger": ("WARNING", "ERROR"),
    "TensorIOMode": ("INPUT", "OUTPUT"),
    "Runtime": ("deserialize_cuda_engine", "engine_host_code_allowed"),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype",
                    "get_tensor_profile_shape", "num_optimization_profiles", "create_execution_context"),
    "IExecutionContext": ("set_input_shape", "set_tensor_address", "execute_async_v3", "get_tensor_shape",
                          "set_optimization_profile_async"),
}

# TensorRT DataType member name -> NumPy dtype (BF16/FP8/INT4/FP4/E8M0 have no NumPy equivalent).
TRT_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


# --- pure functions ---------------------------------------------------------------------------------------
def trt_dtype_to_numpy(dtype: Any) -> np.dtype:
    """NumPy dtype of a TensorRT DataType (the enum or its member name)."""
    name = getattr(dtype, "name", str(dtype).rsplit(".", 1)[-1])
    if name not in TRT_DTYPES:
        raise RunnerError(f"TensorRT data type {name} has no NumPy equivalent; engine I/O must be one of "
                          f"{sorted(TRT_DTYPES)}")
    return np.dtype(TRT_DTYPES[name])


def resolve_input_shape(name: str, engine_shape: Sequence[int], feed_shape: Sequence[int],
                        profile: tuple[Sequence[int], Sequence[int], Sequence[int]] | None) -> tuple[int, ...]:
    """Check a feed's shape against the engine's declared shape (-1 dynamic) and its optimisation profile.

    Args:
        name: Input name, for messages.
        engine_shape: Shape declared by the engine, -1 for dynamic dims.
        feed_shape: Shape of the feed.
        profile: (min, opt, max) shapes of the active profile, or None for a fully static input.

    Returns:
        The shape to pass to `set_input_shape`.

    Raises:
        InputError: Rank, static dims or profile range do not match; names the input, dim and range.
    """
    engine_shape, feed_shape = tuple(int(d) for d in engine_shape), tuple(int(d) for d in feed_shape)
    if len(engine_shape) != len(feed_shape):
        raise InputError(f"input {name!r}: expected rank {len(engine_shape)} {engine_shape}, got shape {feed_shape}")
    for axis, (want, got) in enumerate(zip(engine_shape, feed_shape, strict=False)):
        if want >= 0 and want != got:
            raise InputError(f"input {name!r} dim {axis}: engine expects {want}, got {got}")
        if want < 0 and profile is not None:
            lo, hi = int(profile[0][axis]), int(profile[2][axis])
            if not lo <= got <= hi:
                raise InputError(f"input {name!r} dim {axis}: {got} is outside the engine's optimisation "
                                 f"profile range [{lo}, {hi}] (rebuild the engine with a larger profile)")
    return feed_shape


def output_nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    """Bytes of a resolved output; refuses unresolved (-1) dims, i.e. data-dependent output shapes."""
    if any(int(d) < 0 for d in shape):
        raise RunnerError(f"output shape {tuple(shape)} is not resolved from the input shapes; data-dependent "
                          f"output shapes are not supported")
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize


def trt_version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a TensorRT version string."""
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


# --- loading ----------------------------------------------------------------------------------------------
def load_trt(modules: Sequence[str] = TRT_MODULES) -> ModuleType:
    """Import the first available TensorRT runtime module (full, then lean)."""
    errors = []
    for name in modules:
        try:
            return require(name, "the TensorRT backend")
        except MissingDependencyError as exc:
            errors.append(str(exc))
    raise MissingDependencyError("no TensorRT runtime is installed (tried " + ", ".join(modules)
                                 + "): pip install 'stp-edge[trt]', or use JetPack's python3-libnvinfer")


def deserialize_plan(trt: ModuleType, plan: bytes, *, where: str = "plan",
                     allow_host_code: bool = False) -> tuple[Any, Any]:
    """(runtime, engine) from plan bytes; RunnerError when TensorRT refuses the plan.

    `allow_host_code` is needed for version-compatible plans, which embed TensorRT's lean runtime as host code;
    only set it for plans whose manifest says they were built that way (and whose sha256 was checked).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    if allow_host_code:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise PlanLoadError(f"{where}: TensorRT {trt.__version__} cannot deserialise this plan (built with another "
                            f"TensorRT version or for another GPU? see the bundle's manifest engines)", plan=where)
    return runtime, engine


def pick_profile(batch: int, opt_batches: Sequence[int]) -> int:
    """Index of the optimisation profile whose opt batch is nearest `batch` (the smaller opt on a tie).

    `stp-edge build-engines` builds two (`optimization_profiles`: opt 1 and opt max, same range), so one
    stream runs the kernels tuned for batch 1 and a full batch of streams those tuned for the maximum.
    """
    if not opt_batches:
        return 0
    return min(range(len(opt_batches)), key=lambda i: (abs(opt_batches[i] - batch), opt_batches[i]))


def cuda_device_info(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of a CUDA device, through the CUDA binding."""
    from stp_edge.cuda.binding import driver

    cuda = driver()
    cuda.init()
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return dev.name(), f"{major}.{minor}"


def cuda_device_integrated(device: int = 0) -> bool:
    """True for a GPU that shares memory with the CPU (Jetson), through the CUDA binding's INTEGRATED attribute."""
    from stp_edge.cuda.binding import driver

    cuda = driver()
    cuda.init()
    return bool(cuda.Device(device).get_attribute(cuda.device_attribute.INTEGRATED))


def trt_environment(device: int = 0) -> TrtEnvironment:
    """This machine's `TrtEnvironment` (imports TensorRT and pycuda)."""
    trt = load_trt()
    gpu_name, cc = cuda_device_info(device)
    return TrtEnvironment(trt.__name__, str(trt.__version__), gpu_name, cc,
                          host_platform(cuda_device_integrated(device)))


def describe_engine(engine: EngineInfo) -> str:
    """'TensorRT 10.3.0.30 on NVIDIA A100 (sm 8.0, linux x86_64, discrete GPU)' from a manifest engine entry."""
    flags = engine.build_flags
    vc = ", version-compatible" if flags.get("version_compatible") else ""
    hw = f", hardware-compatible {flags['hardware_compatibility']}" if flags.get("hardware_compatibility") else ""
    return (f"TensorRT {engine.tensorrt_version}{vc}{hw} on {engine.gpu_name} (sm {engine.compute_capability}, "
            f"{describe_platform(engine.platform)})")


def rebuild_command(bundle_path: Any, engine: EngineInfo, env: TrtEnvironment | None = None) -> str:
    """The `stp-edge build-engines` line that rebuilds `engine`'s precision for this machine."""
    vc = " --version-compatible" if env is not None and env.lean else ""
    return f"stp-edge build-engines {bundle_path} --precision {engine.precision}{vc}"


def plan_load_message(plan: Any, engine: EngineInfo, env: TrtEnvironment, bundle_path: Any) -> str:
    """One line naming both sides of a plan TensorRT refused, and the command that rebuilds it."""
    return (f"{plan}: TensorRT could not deserialise the plan: built with {describe_engine(engine)}; this machine "
            f"runs {env.describe()}. Rebuild it here: {rebuild_command(bundle_path, engine, env)}")


# --- the runner -------------------------------------------------------------------------------------------
class TrtRunner(Runner):
    """Runs one TensorRT plan with `execute_async_v3` on its own CUDA stream.

    Args:
        plan_path: A plain TensorRT plan file (no prefix: trtexec, Triton and DeepStream load the same file).
        device: CUDA device ordinal; the device's primary context is retained, so buffers are shared with
            other CUDA users (CuPy, ORT, the CUDA preprocessor) on that device.
        name: Runner name used in messages (default: the file name).
        allow_host_code: Let TensorRT run the lean runtime embedded in a version-compatible plan.
        profiles: The plan's optimisation profile as the manifest records it ({input: [min, opt, max]}), so
            `max_batch()` is known before the plan is loaded; None: read from the plan once active.
        engine_info: The bundle's engine set the plan belongs to (`Bundle.select_engine`'s choice), kept as
            `engine_info` so callers can report what ran; None for a plan file outside a bundle.
        limits: Call deadline (`CallLimits`); a TensorRT call cannot be cancelled, so one past its deadline is
            abandoned and the runner cannot run again.
        cuda_graphs: Replay `execute_async_v3` as a CUDA graph once a call's shapes and tensor addresses repeat
            (`stp_edge.cuda.graphs`: the first call of a key runs eagerly, the second is captured; a capture the
            driver refuses turns graphs off for this runner). None: $STP_EDGE_CUDA_GRAPHS == "1". Off by default
            until a GPU run has checked it (never executed here: no GPU, no TensorRT).
    """

    accepts_device_feeds = True
    waits_on_feed_streams = True
    keeps_outputs_on_device = True

    def __init__(self, plan_path: str | os.PathLike, *, device: int = 0, name: str | None = None,
                 allow_host_code: bool = False, profiles: Mapping[str, Any] | None = None,
                 engine_info: EngineInfo | None = None, limits: CallLimits | None = None,
                 cuda_graphs: bool | None = None) -> None:
        self.plan_path = Path(plan_path)
        super().__init__(name or self.plan_path.name, limits=limits)
        self.device = device
        self.cuda_graphs = os.environ.get("STP_EDGE_CUDA_GRAPHS") == "1" if cuda_graphs is None else cuda_graphs
        self.allow_host_code = allow_host_code
        self.profiles = dict(profiles) if profiles else None
        self.engine_info = engine_info
        self.trt: ModuleType | None = None
        self._reset_handles()

    def _reset_handles(self) -> None:
        self.engine: Any = None
        self.context: Any = None
        self._runtime: Any = None
        self._cuda: Any = None
        self._cuda_ctx: Any = None
        self._waiter: Any = None
        self.graphs: Any = None  # stp_edge.cuda.graphs.StreamGraphs when cuda_graphs
        self.stream: Any = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._opt_batches: list[int] = []  # opt batch of each optimisation profile (dynamic inputs only)
        self._active_profile = 0
        self._dtypes: dict[str, np.dtype] = {}
        self._device_bufs: dict[str, tuple[Any, int]] = {}  # name -> (allocation, nbytes)
        self._host_bufs: dict[str, np.ndarray] = {}

    def activate_impl(self) -> None:
        if not self.plan_path.is_file():
            raise RunnerError(f"{self.name}: TensorRT plan {self.plan_path} does not exist")
        from stp_edge.cuda.context import PrimaryContext

        self.trt = load_trt()
        self._cuda_ctx = PrimaryContext(self.device, purpose="the TensorRT backend's memory")
        self._cuda = self._cuda_ctx.driver
        try:
            with self._current():
                self._load()
        except BaseException:
            with self._current():
                self._free()
            self._cuda_ctx.release()
            self._reset_handles()
            raise

    def _current(self) -> contextlib.AbstractContextManager:
        """Make the device's primary context current for the duration (any thread may call the runner)."""
        return self._cuda_ctx.current()

    def _load(self) -> None:
        self._runtime, self.engine = deserialize_plan(self.trt, self.plan_path.read_bytes(), where=str(self.plan_path),
                                                    allow_host_code=self.allow_host_code)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RunnerError(f"{self.name}: TensorRT could not create an execution context (GPU out of memory?)")
        from stp_edge.cuda.streams import new_stream

        self.stream = new_stream(self._cuda)
        if self.cuda_graphs:
            from stp_edge.cuda.graphs import GraphCache, StreamGraphs

            # Windows bound in place start at one of 2c+1 ring slots per stream: room for all of them.
            self.graphs = StreamGraphs(int(self.stream.handle), GraphCache(capacity=64), name=self.name)
        input_mode = self.trt.TensorIOMode.INPUT
        for i in range(self.engine.num_io_tensors):
            tname = self.engine.get_tensor_name(i)
            self._dtypes[tname] = trt_dtype_to_numpy(self.engine.get_tensor_dtype(tname))
            (self._inputs if self.engine.get_tensor_mode(tname) == input_mode else self._outputs).append(tname)
        first = self._inputs[0] if self._inputs else None
        if first is not None and any(int(d) < 0 for d in self.engine.get_tensor_shape(first)):
            self._opt_batches = [int(self.engine.get_tensor_profile_shape(first, i)[1][0])
                                 for i in range(self.engine.num_optimization_profiles)]

    def deactivate_impl(self) -> None:
        try:
            with self._current():
                self._free()
        finally:
            self._cuda_ctx.release()
            self._reset_handles()

    def _free(self) -> None:
        """Free buffers, event, stream and TensorRT objects (with the context current), before the release."""
        if self.stream is not None:
            self.stream.synchronize()
        if self.graphs is not None:
            self.graphs.close()
            self.graphs = None
        for alloc, _ in self._device_bufs.values():
            alloc.free()
        self._device_bufs.clear()
        self._host_bufs.clear()
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        self.stream = None
        self.context = None  # TensorRT objects die before the context that owns their memory
        self.engine = None
        self._runtime = None

    def input_specs_impl(self) -> dict[str, TensorSpec]:
        return {n: TensorSpec(n, self._dtypes[n], tuple(int(d) for d in self.engine.get_tensor_shape(n)))
                for n in self._inputs}

    def output_names_impl(self) -> list[str]:
        return list(self._outputs)

    def max_batch(self) -> int | None:
        """Largest batch of the plan's optimisation profile (recorded in the manifest, or read from the plan)."""
        if self.profiles is not None:
            return profile_max_batch(self.profiles)
        if not self.is_active:
            return None
        profiles = {n: p for n in self._inputs if (p := self._profile(n)) is not None}
        return profile_max_batch(profiles)

    def max_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Each input's profile max (recorded in the manifest, or read from the plan once active)."""
        if self.profiles is not None:
            return {n: tuple(int(d) for d in p[2]) for n, p in self.profiles.items()}
        if not self.is_active:
            return None
        return {n: tuple(p[2]) for n in self._inputs if (p := self._profile(n)) is not None} or None

    def _profile(self, name: str) -> tuple[Sequence[int], Sequence[int], Sequence[int]] | None:
        if any(int(d) < 0 for d in self.engine.get_tensor_shape(name)) and self.engine.num_optimization_profiles:
            lo, opt, hi = self.engine.get_tensor_profile_shape(name, 0)
            return tuple(lo), tuple(opt), tuple(hi)
        return None

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """Device allocation for tensor `name` of at least `nbytes`, grown (never shrunk) as shapes change."""
        alloc, size = self._device_bufs.get(name, (None, 0))
        if alloc is None or size < nbytes:
            if alloc is not None:
                self.stream.synchronize()  # work queued earlier (a call that raised midway) may still use it
                alloc.free()
            alloc, size = self._cuda.mem_alloc(max(nbytes, 1)), nbytes
            self._device_bufs[name] = (alloc, size)
        return int(alloc)

    def _host_buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Pinned host buffer viewed as `shape`, grown as needed."""
        dtype = self._dtypes[name]
        n = int(np.prod(shape, dtype=np.int64))
        buf = self._host_bufs.get(name)
        if buf is None or buf.size < n:
            if buf is not None:
                self.stream.synchronize()  # an async copy queued earlier may still read or write the old one
            buf = self._cuda.pagelocked_empty(max(n, 1), dtype)
            self._host_bufs[name] = buf
        return buf[:n].reshape(shape)

    def infer_impl(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        with self._current():
            return self._infer(feeds)

    def _wait_for_producers(self, feeds: Mapping[str, Any]) -> None:
        """Make the runner's stream wait (an event, no host sync) for the stream each device feed names."""
        from stp_edge.cuda.streams import StreamWaiter, producer_stream

        for value in feeds.values():
            producer = producer_stream(value, int(self.stream.handle))
            if producer is not None:
                self._waiter = self._waiter or StreamWaiter()
                self._waiter.wait(int(self.stream.handle), producer)

    def _use_profile(self, batch: int) -> None:
        """Switch the context to the profile tuned nearest `batch` (queued on the stream, no host sync)."""
        index = pick_profile(batch, self._opt_batches)
        if index != self._active_profile:
            if not self.context.set_optimization_profile_async(index, self.stream.handle):
                raise RunnerError(f"{self.name}: TensorRT refused optimisation profile {index}")
            self._active_profile = index

    def infer_device_impl(self, feeds: Mapping[str, Any], keep: tuple[str, ...]) -> dict[str, Any]:
        """Outputs in `keep` stay in this runner's device buffers (`Runner.infer`: valid until its next call)."""
        with self._current():
            return self._infer(feeds, keep)

    def _infer(self, feeds: Mapping[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
        cuda, ctx, stream = self._cuda, self.context, self.stream
        specs = self.input_specs()
        staged = False  # a host feed was staged through a pinned buffer, which the next call refills
        bound: dict[str, tuple[tuple[int, ...], int]] = {}  # what a CUDA graph of this call would fix
        self._wait_for_producers(feeds)
        self._use_profile(feed_layout(feeds[self._inputs[0]])[0][0] if self._inputs else 1)
        for name in self._inputs:
            value = feeds[name]
            shape, _, ptr = feed_layout(value)
            shape = resolve_input_shape(name, specs[name].shape, shape, self._profile(name))
            if not ctx.set_input_shape(name, shape):
                raise InputError(f"{self.name}: TensorRT refused shape {shape} for input {name!r}")
            if ptr is None:
                staged = True
                host = self._host_buffer(name, shape)
                np.copyto(host, value)
                ptr = self._device_buffer(name, host.nbytes)
                cuda.memcpy_htod_async(ptr, host, stream)
            ctx.set_tensor_address(name, ptr)
            bound[name] = (tuple(shape), int(ptr))
        out_shapes = {}
        for name in self._outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            out_ptr = self._device_buffer(name, output_nbytes(shape, self._dtypes[name]))
            ctx.set_tensor_address(name, out_ptr)
            out_shapes[name], bound[name] = shape, (shape, int(out_ptr))
        if not self._execute(bound):
            raise RunnerError(f"{self.name}: execute_async_v3 failed (see the TensorRT log above)")
        hosts, kept = {}, {}
        for name, shape in out_shapes.items():
            if name in keep:  # a view of the output buffer, ordered by this stream: no copy, no host sync
                from stp_edge.cuda.memory import DeviceArray

                kept[name] = DeviceArray(int(self._device_bufs[name][0]), shape, self._dtypes[name],
                                         stream=int(stream.handle), device=self.device)
                continue
            hosts[name] = self._host_buffer(name, shape)
            cuda.memcpy_dtoh_async(hosts[name], self._device_bufs[name][0], stream)
        if hosts or staged:  # host outputs are read now; a staged pinned input is refilled by the next call
            stream.synchronize()
        return {**kept, **{name: np.array(h, copy=True) for name, h in hosts.items()}}  # pinned buffers are reused

    def _execute(self, bound: Mapping[str, tuple[tuple[int, ...], int]]) -> bool:
        """Queue the engine: `execute_async_v3`, or its CUDA graph for this profile, shapes and addresses."""
        handle = self.stream.handle
        if self.graphs is None:
            return bool(self.context.execute_async_v3(handle))
        from stp_edge.cuda.graphs import tensor_key

        return self.graphs.run(tensor_key(self._active_profile, dict(bound)),
                               lambda: self.context.execute_async_v3(handle))

