"""Explicit CUDA contexts: a device's primary context, retained once and made current around each use.

pycuda's `autoprimaryctx`/`autoinit` make a context current on the importing thread only, and always on
device 0; a runtime called from a worker thread, or given another device, then runs with no context or the
wrong one. `PrimaryContext` instead retains the primary context of the device it is given (the one CuPy,
torch, ONNX Runtime and TensorRT share) and pushes it around each call, popping it after, so any thread may
call and the thread's context stack is left as it was found. The binding (pycuda or cuda-python, see
stp_edge.cuda.binding) is imported on construction only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from stp_edge._deps import require
from stp_edge.errors import UsageError


def check_device(device: int, count: int) -> int:
    """`device` as an ordinal of one of `count` CUDA devices, or a ValueError that names what exists."""
    if isinstance(device, bool) or not isinstance(device, int):
        raise UsageError(f"CUDA device must be an integer ordinal, got {device!r}")
    if count <= 0:
        raise UsageError("no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)")
    if not 0 <= device < count:
        raise UsageError(f"CUDA device {device} does not exist; this machine has {count} (0..{count - 1})")
    return device


class PrimaryContext:
    """The primary context of one device, retained until `release()`; `current()` makes it current.

    Example:
        >>> ctx = PrimaryContext(1)
        >>> with ctx.current():
        ...     buf = pycuda.driver.mem_alloc(1 << 20)
        >>> ctx.release()
    """

    def __init__(self, device: int = 0, *, purpose: str = "CUDA preprocessing", binding: str | None = None) -> None:
        from stp_edge.cuda.binding import binding_name, driver

        self.binding = binding_name(binding)  # $STP_EDGE_CUDA_BINDING when None (stp_edge.cuda.binding)
        self._cuda = require("pycuda.driver", purpose) if self.binding == "pycuda" else driver(self.binding)
        self._cuda.init()
        self.device = check_device(device, self._cuda.Device.count())
        self._ctx: Any = self._cuda.Device(self.device).retain_primary_context()
        self._thread = threading.get_ident()

    @property
    def driver(self) -> Any:
        """The binding's driver API: the `pycuda.driver` module, or `stp_edge.cuda.binding.CudaPythonDriver`."""
        return self._cuda

    @contextlib.contextmanager
    def current(self) -> Iterator[Any]:
        """Push the context for the duration and pop it after (balanced on every exit path)."""
        if self._ctx is None:
            raise RuntimeError(f"the CUDA context of device {self.device} was released")
        self._ctx.push()
        try:
            yield self._ctx
        finally:
            self._cuda.Context.pop()

    def release(self) -> None:
        """Drop the retain (idempotent) and leave this thread's driver context stack as it was found.

        Free this context's allocations first, inside `current()`. pycuda's `detach()` pushes the context,
        calls cuDevicePrimaryCtxRelease and does not pop (its "pop is implicit" holds for cuCtxDetach only),
        which would leave a stale entry on the driver's stack; from a thread other than the creating one it
        releases nothing. So: on the creating thread detach, then pop exactly the entry it pushed; on another
        thread detach (pycuda's bookkeeping only) and release the retain at driver level.
        """
        if self._ctx is None:
            return
        from stp_edge.cuda import driver

        ctx, self._ctx = self._ctx, None
        current = self._cuda.Context.get_current()
        if current is not None and current.handle == ctx.handle:
            self._ctx = ctx
            raise UsageError("PrimaryContext.release() called inside current(): leave the `with` block first")
        if self.binding != "pycuda":  # cuda-python's detach is cuDevicePrimaryCtxRelease alone, from any thread
            ctx.detach()
            return
        ctx.detach()
        if threading.get_ident() == self._thread:
            popped = driver.pop_context()
            if popped != int(ctx.handle):
                raise RuntimeError(f"releasing device {self.device}'s context popped {popped:#x}, "
                                   f"expected the context pycuda pushed ({int(ctx.handle):#x})")
        else:
            driver.release_primary(self.device)
