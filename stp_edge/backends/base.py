"""The one Runner interface every backend subclasses (Polygraphy style).

`infer()` checks the runner's state and the feeds against `input_specs()` (name, dtype, rank, static dims),
then calls the backend's `infer_impl()`. Runners are context managers: `with OrtRunner(p) as r: r.infer(...)`.
Every backend call (activate, infer, deactivate) runs on the runner's own worker thread, bounded by its
`CallLimits` (a deadline per call, an end on a stop request; see `stp_edge.backends.calls`).
Feeds are NumPy arrays, or device buffers (an object with `__cuda_array_interface__`, or a `DeviceArray`) for
backends that accept them (`accepts_device_feeds`).
"""

from __future__ import annotations

import abc
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stp_edge.backends.calls import DEFAULT_CALL_TIMEOUT_S, CallLimits, CallWorker
from stp_edge.backends.errors import InputError, RunnerError
from stp_edge.backends.errors import PlanLoadError as PlanLoadError  # re-exported: its home before errors.py


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a graph input; -1 marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    def __str__(self) -> str:
        dims = ", ".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name}[{dims}]"


def is_device_array(value: Any) -> bool:
    """True when `value` is a CUDA buffer rather than host memory.

    Accepted: objects with `__cuda_array_interface__` (CuPy, Numba, torch, and `stp_edge.cuda.DeviceArray`, the
    CUDA preprocessor's output).
    """
    if isinstance(value, np.ndarray):
        return False
    return hasattr(value, "__cuda_array_interface__")


def feed_layout(value: Any) -> tuple[tuple[int, ...], np.dtype, int | None]:
    """(shape, dtype, device pointer or None) of a feed, host or device."""
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype, None
    if hasattr(value, "__cuda_array_interface__"):
        cai = value.__cuda_array_interface__
        if cai.get("strides") not in (None, ()):
            expect = np.cumprod((1, *cai["shape"][:0:-1]))[::-1] * np.dtype(cai["typestr"]).itemsize
            if tuple(cai["strides"]) != tuple(int(s) for s in expect):
                raise InputError(f"device feed with strides {cai['strides']} is not C-contiguous")
        return tuple(int(d) for d in cai["shape"]), np.dtype(cai["typestr"]), int(cai["data"][0])
    raise InputError(f"feed must be a numpy array or a CUDA device array, got {type(value).__name__}")


def profile_max_batch(profiles: Mapping[str, Any] | None) -> int | None:
    """Largest dim 0 every input of one optimisation profile accepts ({input: (min, opt, max)}), or None."""
    if not profiles:
        return None
    return min(int(shapes[2][0]) for shapes in profiles.values())


def batch_rows(value: Any, start: int, stop: int) -> Any:
    """Rows [start, stop) of a feed along dim 0, without copying.

    A NumPy view, or for a device buffer a `DeviceArray` at the offset pointer (same dtype, same producer stream).
    """
    if isinstance(value, np.ndarray):
        return value[start:stop]
    from stp_edge.cuda.memory import DeviceArray

    shape, dtype, ptr = feed_layout(value)
    row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    stream = value.__cuda_array_interface__.get("stream")
    return DeviceArray(ptr + start * row, (stop - start, *shape[1:]), dtype, stream=stream,
                       device=value.device if isinstance(value, DeviceArray) else 0, owner=value)


def check_feeds(feeds: Mapping[str, Any], specs: Mapping[str, TensorSpec], *, where: str = "",
                allow_device: bool = False) -> None:
    """Raise InputError unless `feeds` has exactly the inputs of `specs` with matching dtype, rank and static dims."""
    prefix = f"{where}: " if where else ""
    missing = [n for n in specs if n not in feeds]
    extra = [n for n in feeds if n not in specs]
    if missing or extra:
        raise InputError(f"{prefix}feeds {sorted(feeds)} do not match the inputs {list(specs)}"
                         + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))
    for name, spec in specs.items():
        shape, dtype, ptr = feed_layout(feeds[name])
        if ptr is not None and not allow_device:
            raise InputError(f"{prefix}input {name!r}: this runner needs a host numpy array, got a device buffer")
        if dtype != spec.dtype:
            raise InputError(f"{prefix}input {name!r}: expected dtype {np.dtype(spec.dtype).name}, got {dtype.name}")
        if len(shape) != len(spec.shape):
            raise InputError(f"{prefix}input {name!r}: expected rank {len(spec.shape)} {spec}, got shape {shape}")
        for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=False)):
            if want >= 0 and want != got:
                raise InputError(f"{prefix}input {name!r} dim {axis}: expected {want}, got {got} "
                                 f"(shape {shape}, expected {spec})")
            if got == 0:
                raise InputError(f"{prefix}input {name!r} dim {axis} is 0 (shape {shape}): empty batches "
                                 f"are not run")


class Runner(abc.ABC):
    """Base class of all backends: state checks, input checks and timing around `infer_impl()`.

    Subclasses implement `activate_impl`, `deactivate_impl`, `input_specs_impl`, `output_names_impl` and
    `infer_impl`; `infer_impl` receives checked feeds and returns host NumPy outputs by name. The three that
    touch the backend (activate, deactivate, infer) run on the runner's worker thread, so a backend whose
    objects belong to one thread (tritonclient's gevent client) always sees the same one; `cancel_impl` may
    end a running `infer_impl` from another thread.

    Args:
        name: Runner name used in messages.
        limits: Deadline per call, memory cap, connect timeout, stop grace (default `CallLimits()`).

    Attributes:
        stop_event: Set by `stp_edge.backends.calls.stop_calls_on`: once it is set, the calls under it get
            `limits.stop_grace_s` more in all to finish (`stp_edge.backends.calls.stop_deadline`).
        call_cancelled: Set while the current call is being cancelled (fresh for every call); `infer_impl`
            may look at it.
    """

    accepts_device_feeds = False
    # True where infer() makes its own CUDA stream wait on the `stream` of a device feed's
    # __cuda_array_interface__ (an event, no host sync), so a producer may hand over unsynchronised work.
    waits_on_feed_streams = False
    # True where infer(..., keep_on_device=names) can leave those outputs in device memory (`infer` documents the
    # ownership): the device feature path keeps the encoder's outputs on the GPU this way.
    keeps_outputs_on_device = False
    # True where the runner computes on this machine's CPU threads and reads `intra_op_num_threads` when it
    # activates (ONNX Runtime, OpenVINO): `stp_edge.backends.ort.set_intra_op_threads` sizes those alone.
    takes_cpu_threads = False
    default_call_timeout_s = DEFAULT_CALL_TIMEOUT_S

    def __init__(self, name: str, *, limits: CallLimits | None = None) -> None:
        self.name = name
        self.limits = limits or CallLimits()
        self.is_active = False
        self.last_inference_ms: float | None = None
        self.stop_event: threading.Event | None = None
        self.call_cancelled = threading.Event()
        self._specs: dict[str, TensorSpec] | None = None
        self._worker: CallWorker | None = None
        self._finalizer: weakref.finalize | None = None
        self._call_lock = threading.Lock()  # one call at a time: its deadline, cancel flag and worker are its own

    # --- state -------------------------------------------------------------------------------------------
    def activate(self) -> Runner:
        """Load the graph and allocate what running it needs. Errors if already active."""
        if self.is_active:
            raise RunnerError(f"{self.name}: activate() called on a runner that is already active")
        worker = CallWorker(self.name)
        try:
            worker.call(self.activate_impl)  # no deadline (a TensorRT provider builds engines for minutes)
        except BaseException:
            worker.close()
            raise
        self._worker = worker
        self._finalizer = weakref.finalize(self, worker.close)  # a runner dropped while active leaves no thread
        self.is_active = True
        self._specs = None
        return self

    def deactivate(self) -> None:
        """Release everything `activate()` acquired. Errors if not active.

        A runner whose worker is stranded in a call that never returned is only marked inactive: its backend
        objects stay with that thread until the call returns or the process ends.
        """
        if not self.is_active:
            raise RunnerError(f"{self.name}: deactivate() called on a runner that is not active")
        worker, self._worker = self._worker, None
        if self._finalizer is not None:
            self._finalizer.detach()
        try:
            if worker is not None and not worker.stuck:
                worker.call(self.deactivate_impl)
        finally:
            if worker is not None:
                worker.close()
            self.is_active = False
            self._specs = None

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def _require_active(self, what: str) -> None:
        if not self.is_active:
            raise RunnerError(f"{self.name}: {what}() needs an active runner; call activate() or use `with`")

    # --- metadata ----------------------------------------------------------------------------------------
    def input_specs(self) -> dict[str, TensorSpec]:
        """Inputs of the graph by name, in graph order."""
        self._require_active("input_specs")
        if self._specs is None:
            self._specs = self.input_specs_impl()
        return self._specs

    def output_names(self) -> list[str]:
        """Output names of the graph, in graph order."""
        self._require_active("output_names")
        return self.output_names_impl()

    # --- running -----------------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, Any], *, check_inputs: bool = True,
              keep_on_device: Sequence[str] = ()) -> dict[str, Any]:
        """Run the graph on `feeds` (name -> array) and return the outputs by name.

        `keep_on_device`: outputs to leave in device memory (runners with `keeps_outputs_on_device`): each comes
        back as a `stp_edge.cuda.DeviceArray` viewing the runner's own output buffer, tagged with the runner's
        stream (a consumer on another stream waits on it with an event; the host is not synchronised for them).
        The runner owns that buffer: it is valid until the runner's next call (which overwrites it, or frees it to
        grow) or deactivation, so a consumer copies what it keeps (on that stream, or after an event) before then.
        The other outputs come back to the host as usual.

        Raises:
            RunnerError: The runner is not active, or cannot keep outputs on the device.
            InputError: A feed is missing, unexpected, or has the wrong dtype, rank or static dim.
        """
        self._require_active("infer")
        if check_inputs:
            check_feeds(feeds, self.input_specs(), where=self.name, allow_device=self.accepts_device_feeds)
        keep = tuple(keep_on_device)
        if keep and not self.keeps_outputs_on_device:
            raise RunnerError(f"{self.name}: this backend returns host outputs only; keep_on_device={keep} needs "
                              f"one that keeps outputs on the GPU (TensorRT)")
        unknown = [n for n in keep if n not in self.output_names()]
        if unknown:
            raise RunnerError(f"{self.name}: keep_on_device names {unknown}, not outputs of the graph "
                              f"{self.output_names()}")
        start = time.perf_counter()
        out = self._call(self.infer_device_impl, feeds, keep) if keep else self._call(self.infer_impl, feeds)
        self.last_inference_ms = (time.perf_counter() - start) * 1e3
        return out

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the worker thread, within the call deadline and the stop grace; callers take turns.

        Raises:
            CallTimeoutError: The call ran past `limits.call_timeout_s`.
            CallInterruptedError: The stop's grace (`limits.stop_grace_s` from when a call first saw the stop
                event set) ended while the call ran, or before it began.
        """
        stop = self.stop_event
        with self._call_lock:
            worker = self._worker
            if worker is None:  # deactivated by another thread meanwhile
                raise RunnerError(f"{self.name}: the runner was deactivated while this call waited for its turn")
            self.call_cancelled = threading.Event()
            return worker.call(fn, *args, timeout_s=self.limits.timeout_for(self.default_call_timeout_s),
                               stop=stop, grace_s=self.limits.stop_grace_s, cancel=self._cancel)

    def _cancel(self) -> None:
        self.call_cancelled.set()
        self.cancel_impl()

    def cancel_impl(self) -> None:
        """End the running `infer_impl` early where the backend can (called from another thread).

        The default does nothing: the call is left to finish, or abandoned on its thread.
        """
        return None

    def max_batch(self) -> int | None:
        """Largest batch (dim 0 of every input) one `infer()` call accepts; None when unlimited.

        TensorRT plans accept only their optimisation profile's range; ONNX Runtime and torch take any batch.
        """
        return None

    def max_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Largest shape of each input one call accepts (a TensorRT optimisation profile's max); None: any.

        The temporal graph's T (dim 1) is bounded too: `Detector.offline_scores` cuts longer videos into windows.
        """
        return None

    def infer_batched(self, feeds: Mapping[str, Any], *, check_inputs: bool = True) -> dict[str, np.ndarray]:
        """`infer()` in chunks of at most `max_batch()` rows along dim 0 of every feed; outputs concatenated.

        Every graph of a bundle is batched along dim 0 of all its inputs and outputs (docs/architecture.md), so
        chunking changes nothing but the number of calls.
        """
        limit = self.max_batch()
        shapes = [feed_layout(v)[0] for v in feeds.values()]
        n = shapes[0][0] if shapes and all(s and s[0] == shapes[0][0] for s in shapes) else None
        if limit is None or n is None or n <= limit:
            return self.infer(feeds, check_inputs=check_inputs)  # mismatched batches: infer() names them
        parts = [self.infer({k: batch_rows(v, i, min(i + limit, n)) for k, v in feeds.items()},
                           check_inputs=check_inputs) for i in range(0, n, limit)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    @abc.abstractmethod
    def activate_impl(self) -> None:
        """Load the graph."""

    @abc.abstractmethod
    def deactivate_impl(self) -> None:
        """Free the graph and buffers."""

    @abc.abstractmethod
    def input_specs_impl(self) -> dict[str, TensorSpec]:
        """Input specs read from the loaded graph."""

    @abc.abstractmethod
    def output_names_impl(self) -> list[str]:
        """Output names read from the loaded graph."""

    @abc.abstractmethod
    def infer_impl(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on checked feeds; return host arrays by output name."""

    def infer_device_impl(self, feeds: Mapping[str, Any], keep: tuple[str, ...]) -> dict[str, Any]:
        """Run on checked feeds; outputs in `keep` as device arrays (see `infer`), the others as host arrays."""
        raise RunnerError(f"{self.name}: keep_on_device is not implemented by {type(self).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, active={self.is_active})"
