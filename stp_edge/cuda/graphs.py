"""CUDA graphs for the hot static shapes: capture a call's GPU work once, replay it with one launch after.

A TensorRT `execute_async_v3` of a small graph (the temporal stream at 2c+1 snippets, the encoder at the number of
cameras) queues dozens of kernels; on a Jetson the launches alone cost about as much as the math. A CUDA graph
records them (stream capture) and replays them with one `cuGraphLaunch`. A graph is only valid for exactly what
it recorded: the input shapes, every tensor address, the optimisation profile. So each call is named by a key
holding all of these, and `GraphCache` decides per key:

- "eager" the first time a key is seen: TensorRT applies deferred shape updates on the first enqueue after
  `set_input_shape`, which must not be captured (TensorRT's CUDA-graph guidance: enqueue once, then capture);
- "capture" the second time (the shape is hot): record, instantiate, then launch the graph (capture itself
  runs nothing);
- "replay" from then on, until the key is evicted (least recently used, `capacity` graphs) or graphs are off.

A capture the driver or TensorRT refuses (an engine with data-dependent shapes or host callbacks) turns graphs
off for that runner for good and the call runs eagerly: never a wrong result, at worst the eager speed.
The driver calls go through ctypes on libcuda (`stp_edge.cuda.driver`), so graphs work under either binding
(pycuda or cuda-python). Capture mode is thread-local: another thread's unrelated CUDA calls do not invalidate
it. Nothing here has run on a GPU in this repository's CI; `tests/test_cuda_graphs.py` checks the policy on the
CPU and the capture on a GPU (`gpu` mark).
"""

from __future__ import annotations

import ctypes
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from stp_edge.errors import UsageError

log = logging.getLogger(__name__)

CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
ACTIONS = ("eager", "capture", "replay")


class GraphCache:
    """Which of eager / capture / replay a call with `key` takes, and the graphs kept (pure bookkeeping).

    Args:
        capacity: Instantiated graphs kept (least recently used evicted; each holds its own kernel parameters,
            a few KB to a few MB of device memory for TensorRT's).
        warmup: Eager calls of a key before it is captured (>= 1: TensorRT's deferred updates).
    """

    def __init__(self, capacity: int = 8, warmup: int = 1) -> None:
        if capacity < 1 or warmup < 1:
            raise UsageError(f"GraphCache needs capacity >= 1 and warmup >= 1, got {capacity}, {warmup}")
        self.capacity, self.warmup = capacity, warmup
        self.enabled = True
        self.disabled_why: str | None = None
        self._seen: dict[Hashable, int] = {}
        self._graphs: OrderedDict[Hashable, Any] = OrderedDict()
        self.counts = dict.fromkeys(ACTIONS, 0)

    def action(self, key: Hashable) -> str:
        """The action for this call (and count it)."""
        if not self.enabled:
            act = "eager"
        elif key in self._graphs:
            self._graphs.move_to_end(key)
            act = "replay"
        else:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
            act = "capture" if n >= self.warmup else "eager"
        self.counts[act] += 1
        return act

    def add(self, key: Hashable, graph: Any) -> list[Any]:
        """Keep `graph` for `key`; returns the graphs evicted to make room (the caller destroys them)."""
        self._graphs[key] = graph
        self._graphs.move_to_end(key)
        evicted = []
        while len(self._graphs) > self.capacity:
            old_key, old = self._graphs.popitem(last=False)
            self._seen.pop(old_key, None)
            evicted.append(old)
        return evicted

    def get(self, key: Hashable) -> Any:
        """The graph kept for `key` (KeyError when none)."""
        return self._graphs[key]

    def disable(self, why: str) -> list[Any]:
        """Turn graphs off for good (a capture failed); returns every graph kept, for the caller to destroy."""
        self.enabled, self.disabled_why = False, why
        graphs = list(self._graphs.values())
        self._graphs.clear()
        self._seen.clear()
        return graphs

    def __len__(self) -> int:
        return len(self._graphs)


def tensor_key(profile: int, bindings: dict[str, tuple[tuple[int, ...], int]]) -> tuple:
    """A call's graph key: the profile and every tensor's (name, shape, device address), in a fixed order."""
    return (int(profile), tuple(sorted((name, tuple(shape), int(ptr)) for name, (shape, ptr) in bindings.items())))


class CaptureError(RuntimeError):
    """The driver refused a stream capture or instantiation (graphs are then turned off for that runner)."""


class StreamGraphs:
    """Runs a call's GPU work on `stream` eagerly, or captured into a CUDA graph and replayed, per `GraphCache`.

    Use it while the stream's context is current. `run(key, enqueue)` where `enqueue()` queues the work on the
    stream and returns True on success (TensorRT's `execute_async_v3` contract).
    """

    def __init__(self, stream: int, cache: GraphCache | None = None, *, name: str = "graph") -> None:
        self.stream = int(stream)
        self.cache = cache or GraphCache()
        self.name = name
        self._lib: Any = None

    def _cu(self) -> Any:
        """The driver's calls (`stp_edge.cuda.driver.Driver`: prototypes of their own), made on first use."""
        if self._lib is None:
            from stp_edge.cuda.driver import Driver

            self._lib = Driver()
        return self._lib

    def run(self, key: Hashable, enqueue: Callable[[], bool]) -> bool:
        """Queue the work for `key` on the stream (no host sync); False when `enqueue` reports failure."""
        act = self.cache.action(key)
        if act == "eager":
            return bool(enqueue())
        if act == "replay":
            self._launch(self.cache.get(key))
            return True
        try:
            graph = self._capture(enqueue)
        except CaptureError as exc:
            log.warning("%s: CUDA graphs off (%s); running eagerly", self.name, exc)
            self._destroy(self.cache.disable(str(exc)))
            return bool(enqueue())
        self._destroy(self.cache.add(key, graph))
        self._launch(graph)
        return True

    def _capture(self, enqueue: Callable[[], bool]) -> int:
        cu, stream = self._cu(), ctypes.c_void_p(self.stream)
        status = cu.cuStreamBeginCapture_v2(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        if status:
            raise CaptureError(f"cuStreamBeginCapture failed with CUresult {status}")
        ok, error = False, None
        try:
            ok = bool(enqueue())
        except Exception as exc:  # the capture must be ended whatever happened inside it
            error = exc
        graph = ctypes.c_void_p()
        status = cu.cuStreamEndCapture(stream, ctypes.byref(graph))
        if error is not None or not ok or status or not graph.value:
            if graph.value:
                cu.cuGraphDestroy(graph)
            why = (f"the captured call raised {error!r}" if error is not None else "the captured call failed"
                   if not ok else f"cuStreamEndCapture failed with CUresult {status}")
            raise CaptureError(why)
        exec_ = ctypes.c_void_p()
        status = cu.cuGraphInstantiateWithFlags(ctypes.byref(exec_), graph, 0)
        cu.cuGraphDestroy(graph)  # the executable graph keeps what it needs
        if status or not exec_.value:
            raise CaptureError(f"cuGraphInstantiateWithFlags failed with CUresult {status}")
        return int(exec_.value)

    def _launch(self, graph_exec: int) -> None:
        status = self._cu().cuGraphLaunch(ctypes.c_void_p(graph_exec), ctypes.c_void_p(self.stream))
        if status:
            raise RuntimeError(f"{self.name}: cuGraphLaunch failed with CUresult {status}")

    def _destroy(self, graphs: list[Any]) -> None:
        if not graphs:
            return
        cu = self._cu()
        # A graph may still be running: wait for the stream before freeing its executable.
        cu.call("cuStreamSynchronize", ctypes.c_void_p(self.stream))
        for g in graphs:
            cu.cuGraphExecDestroy(ctypes.c_void_p(g))

    def close(self) -> None:
        """Destroy every graph kept (idempotent; the stream's context must be current)."""
        if self._lib is not None:
            self._destroy(self.cache.disable("closed"))
