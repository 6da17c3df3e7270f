"""The CUDA binding choice (pycuda or cuda-python), cuda-python's driver subset, and DeviceArray's DLPack export.

On the CPU: the choice as a pure function, every `cuda.bindings.driver` name the cuda-python driver calls checked
against the pinned cuda-bindings (requirements/ci.txt), the no-driver error for real (this machine has no
libcuda), the DLPack capsule read back by NumPy. On a GPU (`gpu`): both bindings' allocations, copies, streams and
events, and DeviceArray round trips through torch and CuPy.
"""

from __future__ import annotations

import ctypes
import gc
import weakref

import numpy as np
import pytest

from stp_edge._deps import MissingDependencyError
from stp_edge.cuda.binding import ARG_TYPES, DRIVER_API, choose_binding, kernel_values
from stp_edge.cuda.memory import (
    KDL_CPU,
    KDL_CUDA,
    KDL_CUDA_HOST,
    DeviceArray,
    consumer_wait,
    dlpack_capsule,
    live_capsules,
)
from stp_edge.errors import UsageError


# --- the choice -------------------------------------------------------------------------------------------------
def test_auto_prefers_pycuda_then_cuda_python():
    assert choose_binding("auto", {"pycuda", "cuda-python"}) == "pycuda"
    assert choose_binding(None, ["cuda-python"]) == "cuda-python"
    assert choose_binding("", ["pycuda"]) == "pycuda"
    assert choose_binding(" CUDA-Python ", ["pycuda", "cuda-python"]) == "cuda-python"
    assert choose_binding("cuda-bindings", ["cuda-python"]) == "cuda-python"
    assert choose_binding("pycuda", ["pycuda", "cuda-python"]) == "pycuda"


def test_a_missing_binding_names_its_extra_and_none_names_both():
    with pytest.raises(MissingDependencyError) as err:
        choose_binding("auto", ())
    assert "stp-edge[cuda]" in str(err.value) and "stp-edge[cuda-python]" in str(err.value)
    with pytest.raises(MissingDependencyError, match=r"pycuda .*STP_EDGE_CUDA_BINDING.*'stp-edge\[cuda\]'"):
        choose_binding("pycuda", ["cuda-python"])
    with pytest.raises(MissingDependencyError, match=r"'stp-edge\[cuda-python\]'"):
        choose_binding("cuda-python", ["pycuda"])
    with pytest.raises(UsageError, match=r"auto, pycuda or cuda-python .*STP_EDGE_CUDA_BINDING.*'cupy'"):
        choose_binding("cupy", ["pycuda", "cuda-python"])


def test_the_environment_variable_chooses(monkeypatch):
    from stp_edge.cuda.binding import available_bindings, binding_name

    have = available_bindings()
    if "cuda-python" not in have:
        pytest.skip("cuda-bindings is not installed here (requirements/ci.txt pins it)")
    monkeypatch.setenv("STP_EDGE_CUDA_BINDING", "cuda-python")
    assert binding_name() == "cuda-python"
    monkeypatch.setenv("STP_EDGE_CUDA_BINDING", "auto")
    assert binding_name() == ("pycuda" if "pycuda" in have else "cuda-python")
    assert binding_name("cuda-python") == "cuda-python"  # the argument wins over the variable


# --- cuda-python against the real module --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bindings_driver():
    return pytest.importorskip("cuda.bindings.driver", reason="cuda-bindings not installed (requirements/ci.txt)")


def test_every_driver_name_the_binding_calls_exists(bindings_driver):
    missing = [n for n in DRIVER_API if not hasattr(bindings_driver, n)]
    assert missing == []
    attrs = bindings_driver.CUdevice_attribute
    for name in ("INTEGRATED", "COMPUTE_CAPABILITY_MAJOR", "COMPUTE_CAPABILITY_MINOR"):
        assert hasattr(attrs, "CU_DEVICE_ATTRIBUTE_" + name)
    assert bindings_driver.CUresult(2).name == "CUDA_ERROR_OUT_OF_MEMORY"


def test_the_binding_calls_only_listed_names():
    """Every `call("cu...")` in binding.py is in DRIVER_API (so the test above covers them all)."""
    import re
    from pathlib import Path

    import stp_edge.cuda.binding as b

    text = Path(b.__file__).read_text(encoding="utf-8")
    called = set(re.findall(r'(?:call|_quiet|_release_when_collected)\((?:self, )?"(cu\w+)"', text))
    assert called and called <= set(DRIVER_API), called - set(DRIVER_API)


def _have_libcuda() -> bool:
    from stp_edge.cuda.driver import DriverNotFoundError, find_libcuda

    try:
        find_libcuda()
    except DriverNotFoundError:
        return False
    return True


def test_no_driver_is_our_clear_error(bindings_driver):
    """For real on a machine without libcuda: cuda.bindings' DynamicLibNotFoundError becomes DriverNotFoundError."""
    from stp_edge.cuda.binding import CudaPythonDriver, call
    from stp_edge.cuda.driver import DriverNotFoundError

    if _have_libcuda():
        pytest.skip("this machine has a CUDA driver")
    with pytest.raises(DriverNotFoundError, match="no libcuda.so.1 found"):
        CudaPythonDriver.init()  # our own search first
    with pytest.raises(DriverNotFoundError, match=r"no CUDA driver found \(cuda-python could not load libcuda") as err:
        call("cuInit", 0)  # cuda.bindings' own lookup
    assert type(err.value.__cause__).__name__ == "DynamicLibNotFoundError"
    from stp_edge.cuda.context import PrimaryContext

    with pytest.raises(DriverNotFoundError):
        PrimaryContext(0, binding="cuda-python")


def test_kernel_arguments_follow_the_prepare_formats():
    from stp_edge.cuda.binding import Function
    from stp_edge.cuda.kernels import KERNELS

    assert all(set(fmt) <= set(ARG_TYPES) for fmt in KERNELS.values())
    types = tuple(ARG_TYPES[c] for c in "PqifP")
    got = kernel_values("k", types, (np.uintp(0x7F00_0000_1000), np.int64(-3), np.int32(7), np.float32(0.25), 42))
    assert got == (0x7F00_0000_1000, -3, 7, 0.25, 42)
    assert [type(v) for v in got] == [int, int, int, float, int]
    with pytest.raises(UsageError, match="kernel k takes 5 arguments, got 4"):
        kernel_values("k", types, (1, 2, 3, 4.0))
    with pytest.raises(UsageError, match=r"kernel f: argument format 'Pqd' has letters \['d'\]"):
        Function(None, "f", None).prepare("Pqd")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="call prepare"):
        Function(None, "f", None).prepared_async_call((1, 1, 1), (1, 1, 1), None)  # type: ignore[arg-type]


# --- DLPack ------------------------------------------------------------------------------------------------------
class HostProducer:
    """A host NumPy buffer exported through `dlpack_capsule` (device kDLCPU), as DeviceArray does for the GPU."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        a = self.array
        return dlpack_capsule(a.ctypes.data, a.shape, a.dtype, (KDL_CPU, 0), self,
                              strides=[s // a.itemsize for s in a.strides])

    def __dlpack_device__(self):
        return (KDL_CPU, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.uint8, np.int64, np.bool_])
def test_numpy_reads_the_capsule_exactly(dtype):
    rng = np.random.default_rng(3)
    base = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    view = base.transpose(2, 0, 1)[::2]  # strided, not contiguous: strides travel in elements
    before = live_capsules()
    producer = HostProducer(view)
    got = np.from_dlpack(producer)
    assert got.dtype == view.dtype and got.shape == view.shape and got.strides == view.strides
    np.testing.assert_array_equal(got, view)
    assert np.shares_memory(got, base)  # no copy
    assert live_capsules() == before + 1
    ref = weakref.ref(producer)
    del producer
    gc.collect()
    assert ref() is not None  # the capsule's tensor keeps the producer alive while NumPy uses it
    del got
    gc.collect()
    assert ref() is None and live_capsules() == before  # NumPy called the deleter


def test_torch_reads_the_capsule_on_the_cpu():
    """A second real consumer of the same capsule layout (torch's CPU build in CI)."""
    torch = pytest.importorskip("torch")
    base = np.random.default_rng(4).normal(size=(6, 5)).astype(np.float32)
    view = base.T[1:]
    before = live_capsules()
    t = torch.from_dlpack(HostProducer(view))
    assert tuple(t.shape) == view.shape and t.stride() == tuple(s // 4 for s in view.strides)
    assert t.data_ptr() == view.ctypes.data
    np.testing.assert_array_equal(t.numpy(), view)
    del t
    gc.collect()
    assert live_capsules() == before


def test_an_unconsumed_capsule_runs_its_deleter():
    a = np.arange(12, dtype=np.float32).reshape(3, 4) + 0.5
    before = live_capsules()
    capsule = dlpack_capsule(a.ctypes.data, a.shape, a.dtype, (KDL_CPU, 0), a)
    assert type(capsule).__name__ == "PyCapsule" and live_capsules() == before + 1
    del capsule
    gc.collect()
    assert live_capsules() == before


def test_dlpack_device_and_refusals_need_no_gpu():
    dev = DeviceArray(0x7000_0000, (2, 3), np.dtype(np.float16), stream=None, device=1)
    assert dev.__dlpack_device__() == (KDL_CUDA, 1)
    assert DeviceArray(0x1000, (4,), np.dtype(np.uint8), pinned=True).__dlpack_device__() == (KDL_CUDA_HOST, 0)
    with pytest.raises(BufferError, match="copy=True"):
        dev.__dlpack__(copy=True)
    with pytest.raises(BufferError, match=r"cannot export to \(1, 0\)"):
        dev.__dlpack__(dl_device=(KDL_CPU, 0))
    with pytest.raises(BufferError, match="stream=0"):
        DeviceArray(0x7000_0000, (2,), np.dtype(np.float32), stream=5).__dlpack__(stream=0)
    before = live_capsules()
    capsule = dev.__dlpack__(stream=None)  # no pending work: no wait, no driver call
    assert live_capsules() == before + 1
    del capsule
    gc.collect()
    assert live_capsules() == before


def test_consumer_stream_semantics():
    assert consumer_wait(None, 7) is None  # producer synchronised
    assert consumer_wait(7, None) == 1  # None: the legacy default stream
    assert consumer_wait(7, 2) == 2 and consumer_wait(7, 9) == 9
    assert consumer_wait(7, 7) is None  # same stream: order suffices
    assert consumer_wait(7, -1) is None  # the consumer asks for no synchronisation
    with pytest.raises(BufferError, match="ambiguous"):
        consumer_wait(7, 0)


def test_from_cai_takes_any_interface_without_a_copy():
    src = DeviceArray(0x7000_0000, (2, 3, 4), np.dtype(np.float16), stream=9, device=0)
    got = DeviceArray.from_cai(src)
    assert (got.ptr, got.shape, got.dtype, got.stream) == (src.ptr, src.shape, src.dtype, 9) and got.owner is src
    assert got.__cuda_array_interface__ == src.__cuda_array_interface__

    class Strided:
        @property
        def __cuda_array_interface__(self):
            return {"shape": (2, 3), "typestr": "<f4", "data": (0x7000_0000, False), "strides": (4, 8), "version": 3}

    with pytest.raises(UsageError, match=r"strides \(4, 8\), not C-contiguous \(12, 4\)"):
        DeviceArray.from_cai(Strided())
    with pytest.raises(UsageError, match="no __cuda_array_interface__"):
        DeviceArray.from_cai(np.zeros(3))


# --- on a GPU ----------------------------------------------------------------------------------------------------
def _bindings_here() -> list[str]:
    from stp_edge.cuda.binding import available_bindings

    return list(available_bindings()) or ["pycuda"]


@pytest.fixture
def context(request):
    """Device 0's primary context, current, under the binding of the test's parameter (skips without a GPU)."""
    from cuda_driver import cuda_driver_or_skip

    from stp_edge.cuda.context import PrimaryContext
    from stp_edge.cuda.driver import current_context

    cuda_driver_or_skip()
    ctx = PrimaryContext(0, binding=request.param)
    with ctx.current():
        yield ctx
    ctx.release()
    assert current_context() == 0  # driver level: nothing left on this thread's stack


@pytest.mark.gpu
@pytest.mark.parametrize("context", _bindings_here(), indirect=True)
def test_driver_subset_copies_streams_and_events(context):
    cuda = context.driver
    rng = np.random.default_rng(11)
    host = rng.integers(0, 1 << 30, size=(257, 3), dtype=np.int32)
    pinned = cuda.pagelocked_empty(host.shape, host.dtype)
    pinned[...] = host
    dev = cuda.mem_alloc(host.nbytes)
    stream = cuda.Stream(1)
    done = cuda.Event()
    cuda.memcpy_htod_async(dev, pinned, stream)
    back = cuda.pagelocked_empty(host.shape, host.dtype)
    back.fill(-1)
    cuda.memcpy_dtoh_async(back, dev, stream)
    done.record(stream)
    done.synchronize()
    np.testing.assert_array_equal(back, host)
    cuda.memset_d32(int(dev), 0x3F800000, host.size)  # 1.0f
    out = np.empty(host.shape, np.float32)
    cuda.memcpy_dtoh(out, dev)
    assert (out == 1.0).all()
    name, cc = cuda.Device(0).name(), cuda.Device(0).compute_capability()
    assert name and cc[0] >= 5 and isinstance(stream.handle, int) and stream.handle != 0
    dev.free()


@pytest.mark.gpu
@pytest.mark.parametrize("context", _bindings_here(), indirect=True)
def test_dlpack_round_trips_through_torch_and_cupy(context):
    torch = pytest.importorskip("torch")
    cupy = pytest.importorskip("cupy")
    cuda = context.driver
    host = (np.random.default_rng(5).normal(size=(4, 3, 8, 8)) * 100).astype(np.float32)
    pinned = cuda.pagelocked_empty(host.shape, host.dtype)
    pinned[...] = host
    dev = cuda.mem_alloc(host.nbytes)
    stream = cuda.Stream(1)
    cuda.memcpy_htod_async(dev, pinned, stream)  # not synchronised: the consumer's stream must wait for it
    arr = DeviceArray(int(dev), host.shape, np.dtype(np.float32), stream=int(stream.handle), device=0)
    t = torch.from_dlpack(arr)
    assert t.is_cuda and t.data_ptr() == int(dev) and tuple(t.shape) == host.shape
    np.testing.assert_array_equal(t.cpu().numpy(), host)
    c = cupy.from_dlpack(arr)
    assert int(c.data.ptr) == int(dev)
    np.testing.assert_array_equal(cupy.asnumpy(c), host)
    back = DeviceArray.from_cai(t)
    assert (back.ptr, back.shape, back.dtype) == (int(dev), host.shape, np.dtype(np.float32))
    del t, c
    torch.cuda.synchronize()
    stream.synchronize()
    gc.collect()
    dev.free()


@pytest.mark.gpu
@pytest.mark.parametrize("context", _bindings_here(), indirect=True)
def test_preprocessor_output_reaches_torch_unsynchronised(context):
    """The kernel launched through the binding (cuLaunchKernel under cuda-python), its output handed to torch by
    DLPack before the preprocessor's stream finished: torch's stream waits on an event, the values match the CPU."""
    torch = pytest.importorskip("torch")
    from stp_edge.cuda import CudaPreprocessor
    from stp_edge.preprocess import CLIP_STD, CpuPreprocessor

    rng = np.random.default_rng(21)
    frames = [rng.integers(0, 256, (360, 500, 3), dtype=np.uint8) for _ in range(2)]
    with CudaPreprocessor(64, max_batch=2, binding=context.binding) as pre:
        out = pre(frames, sync=False)
        assert out.stream == pre.stream_handle
        got = torch.from_dlpack(out).cpu().numpy()
    want = CpuPreprocessor(64)(frames)
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.abs(got - want).max() <= 1.0 / 255 / min(CLIP_STD) + 1e-5  # one grey level


def test_ctypes_layout_matches_dlpack_h():
    """Offsets of dlpack.h's structs on a 64-bit ABI (a wrong layout would misread every field)."""
    from stp_edge.cuda.memory import DLManagedTensor, DLTensor

    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("64-bit layout")
    assert [DLTensor.data.offset, DLTensor.device.offset, DLTensor.ndim.offset, DLTensor.dtype.offset,
            DLTensor.shape.offset, DLTensor.strides.offset, DLTensor.byte_offset.offset] == [0, 8, 16, 20, 24, 32, 40]
    assert ctypes.sizeof(DLTensor) == 48 and DLManagedTensor.deleter.offset == 56
