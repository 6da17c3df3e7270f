"""Shared skip logic of the GPU tests: pycuda's driver module, initialised, with at least one CUDA device."""

import pytest


def cuda_driver_or_skip():
    """`pycuda.driver` after `init()`; skips the test where pycuda, the driver or a device is missing."""
    drv = pytest.importorskip("pycuda.driver", reason="pycuda not installed (pip install 'stp-edge[cuda]')")
    try:
        drv.init()
        if drv.Device.count() == 0:
            pytest.skip("no CUDA device")
    except drv.Error as exc:
        pytest.skip(f"CUDA driver unavailable: {exc}")
    return drv
