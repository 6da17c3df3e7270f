"""The fused CUDA preprocessing kernel on a real GPU: against PIL (exact) and the CPU twin.

Run under the active CUDA binding ($STP_EDGE_CUDA_BINDING: pycuda or cuda-python). Skipped, with the reason,
where no binding or no CUDA device is present. Every run poisons the output buffer
(NaN) first and checks every element, so an unwritten output cannot pass.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from cuda_driver import cuda_driver_or_skip

from stp_edge.bench.reference import pil_reference
from stp_edge.preprocess import CLIP_STD, CpuPreprocessor, nv12_to_rgb

pytestmark = pytest.mark.gpu

ONE_LEVEL = 1.0 / 255 / min(CLIP_STD) + 1e-5  # one grey level in normalised units


@pytest.fixture(scope="module")
def cuda():
    """The binding's driver with device 0's primary context current for the module (the tests' own calls)."""
    drv = cuda_driver_or_skip()
    from stp_edge.cuda.context import PrimaryContext

    ctx = PrimaryContext(0)
    with ctx.current():
        yield drv
    ctx.release()


def smooth_noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ph = rng.uniform(0, 6, size=c).astype(np.float32)
    img = 128 + 90 * np.sin(x[..., None] / 17.0 + ph) * np.cos(y[..., None] / 31.0 - ph)
    img += rng.normal(0, 20, size=(h, w, c))
    return np.clip(img, 0, 255).astype(np.uint8).squeeze()


def poison(cuda, pre) -> None:
    """Fill the whole output buffer with NaN (and the intermediate with junk) before a run."""
    n = pre.max_batch * 3 * pre.image_size**2
    if pre.dtype == np.float32:
        cuda.memset_d32(int(pre._out), 0x7FC00000, n)
    else:
        cuda.memset_d16(int(pre._out), 0x7E00, n)
    if pre._mid is not None:
        cuda.memset_d8(int(pre._mid), 0xA5, pre._mid_bytes)


def run_checked(cuda, pre, fn, *args, **kw) -> np.ndarray:
    poison(cuda, pre)
    out = pre.to_host(fn(*args, **kw))
    assert np.isfinite(out).all(), "kernel left outputs unwritten"
    return out


@pytest.fixture(scope="module")
def pre32(cuda):
    from stp_edge.cuda import CudaPreprocessor

    return CudaPreprocessor(224, max_batch=4)


@pytest.mark.parametrize(
    ("h", "w"), [(48, 64), (64, 48), (101, 333), (480, 640), (1080, 1920), (1920, 1080), (2160, 3840)]
)
def test_kernel_matches_pil_and_cpu_twin(cuda, pre32, h: int, w: int) -> None:
    frames = [smooth_noise(h, w, seed=s) for s in range(3)]
    got = run_checked(cuda, pre32, pre32, frames)
    assert got.shape == (3, 3, 224, 224)
    cpu = CpuPreprocessor(224)(frames)
    for b, f in enumerate(frames):
        np.testing.assert_array_equal(got[b], pil_reference(np.ascontiguousarray(f[..., ::-1]), 224))
    assert np.abs(got - cpu).max() <= ONE_LEVEL


@pytest.mark.parametrize("size", [112, 32])
def test_small_model_sizes(cuda, size: int) -> None:
    from stp_edge.cuda import CudaPreprocessor

    pre = CudaPreprocessor(size, max_batch=2)
    frames = [smooth_noise(360, 500, seed=9), smooth_noise(360, 500, seed=10)]
    got = run_checked(cuda, pre, pre, frames)
    for b, f in enumerate(frames):
        np.testing.assert_array_equal(got[b], pil_reference(np.ascontiguousarray(f[..., ::-1]), size))


def test_fp16_output(cuda) -> None:
    from stp_edge.cuda import CudaPreprocessor

    pre = CudaPreprocessor(224, dtype=np.float16, max_batch=2)
    frames = [smooth_noise(720, 1280, seed=1), smooth_noise(720, 1280, seed=2)]
    got = run_checked(cuda, pre, pre, frames)
    assert got.dtype == np.float16
    for b, f in enumerate(frames):
        np.testing.assert_array_equal(got[b], pil_reference(np.ascontiguousarray(f[..., ::-1]), 224, np.float16))


@pytest.mark.parametrize(("matrix", "full_range"), [("bt601", False), ("bt709", False), ("bt709", True)])
def test_nv12(cuda, pre32, matrix: str, full_range: bool) -> None:
    h, w = 540, 960
    frames = [smooth_noise(h * 3 // 2, w, c=1, seed=s) for s in (3, 4)]
    got = run_checked(cuda, pre32, pre32.from_nv12, frames, matrix=matrix, full_range=full_range)
    cpu = CpuPreprocessor(224).from_nv12(frames, matrix, full_range)
    for b, f in enumerate(frames):
        np.testing.assert_array_equal(got[b], pil_reference(nv12_to_rgb(f, matrix, full_range), 224))
    assert np.abs(got - cpu).max() <= ONE_LEVEL


def test_pitched_device_input(cuda, pre32) -> None:
    h, w, pad = 300, 410, 64
    frames = np.stack([smooth_noise(h, w, seed=s) for s in (5, 6)])
    pitched = np.full((2, h, w * 3 + pad), 0xA5, np.uint8)
    pitched[:, :, : w * 3] = frames.reshape(2, h, w * 3)
    dev = cuda.to_device(pitched)
    got = run_checked(cuda, pre32, pre32.run_device, dev, 2, h, w, pitch=w * 3 + pad, frame_stride=pitched[0].nbytes)
    np.testing.assert_array_equal(got, pre32.to_host(pre32(list(frames))))


def test_fatbin_is_loaded_when_current(cuda, tmp_path) -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH")
    from stp_edge.cuda import CudaPreprocessor
    from stp_edge.cuda.build import build_fatbin

    major, minor = cuda.Context.get_device().compute_capability()
    path = build_fatbin(tmp_path, archs=[f"{major}{minor}"], ptx=None)
    pre = CudaPreprocessor(64, max_batch=1, fatbin=str(path))
    assert pre.kernels.origin.startswith("fatbin")
    frame = smooth_noise(120, 200, seed=8)
    got = run_checked(cuda, pre, pre, [frame])
    np.testing.assert_array_equal(got[0], pil_reference(np.ascontiguousarray(frame[..., ::-1]), 64))


def test_runtime_compile_fallback(cuda, tmp_path) -> None:
    from stp_edge.cuda import CudaPreprocessor

    pre = CudaPreprocessor(64, max_batch=1, fatbin=str(tmp_path / "missing.fatbin"))
    assert pre.kernels.origin.startswith("compiled")
    frame = smooth_noise(100, 180, seed=12)
    got = run_checked(cuda, pre, pre, [frame])
    np.testing.assert_array_equal(got[0], pil_reference(np.ascontiguousarray(frame[..., ::-1]), 64))


def test_bad_batches_are_rejected(cuda, pre32) -> None:
    with pytest.raises(ValueError, match="one size"):
        pre32([smooth_noise(40, 50), smooth_noise(50, 40)])
    with pytest.raises(ValueError, match="max_batch"):
        pre32([smooth_noise(40, 50)] * 5)
    with pytest.raises(ValueError, match="dtype uint8"):
        pre32([np.ones((40, 50, 3), np.float32)])
