"""The runtime's one device-buffer type: `DeviceArray`, a raw CUDA pointer with shape, dtype and stream.

Pure Python (no pycuda): the backends read it through the standard `__cuda_array_interface__` (version 3),
like any CuPy, Numba or torch array, and the CUDA preprocessor returns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DeviceArray:
    """A dense (C-contiguous) array in device memory.

    Attributes:
        ptr: The CUdeviceptr as int (bind it to TensorRT as is).
        shape: Array shape.
        dtype: Element type.
        stream: The CUstream (as int) the producer wrote it on, or None when it is ready (already synchronised).
            A consumer on another stream must wait on it (`__cuda_array_interface__["stream"]`).
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    stream: int | None = None

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        cai: dict[str, Any] = {"shape": tuple(self.shape), "typestr": np.dtype(self.dtype).str,
                               "data": (int(self.ptr), False), "strides": None, "version": 3}
        if self.stream is not None:
            cai["stream"] = int(self.stream)
        return cai
