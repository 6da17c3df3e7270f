"""Shared skip logic of the GPU tests: the CUDA binding's driver API, initialised, with at least one CUDA device.

The binding is $STP_EDGE_CUDA_BINDING (auto: pycuda where installed, else cuda-python), as in the runtime, so
scripts/gpu_check.sh runs the same tests under either (BINDING=pycuda or BINDING=cuda-python).
"""

import pytest


def cuda_driver_or_skip():
    """The active binding's driver after `init()`; skips the test where no binding, driver or device exists."""
    from stp_edge._deps import MissingDependencyError
    from stp_edge.cuda.binding import binding_name, driver
    from stp_edge.cuda.driver import DriverNotFoundError

    try:
        name = binding_name()
        drv = driver(name)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    try:
        drv.init()
        if drv.Device.count() == 0:
            pytest.skip(f"no CUDA device ({name})")
    except (drv.Error, DriverNotFoundError) as exc:
        pytest.skip(f"CUDA driver unavailable ({name}): {exc}")
    return drv


def cupy_or_skip(purpose: str):
    """CuPy with at least one CUDA device (the GPU tests that make device memory with CuPy's kernels), else skip."""
    cupy = pytest.importorskip("cupy", reason=f"{purpose} uses CuPy's kernels")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"no CUDA device: {exc}")
    return cupy
