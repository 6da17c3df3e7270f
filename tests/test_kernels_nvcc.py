"""nvcc checks of kernels/preprocess.cu that need no GPU.

1. Every kernel compiles for every target architecture with no warning and no register spill
   (`-Xptxas -v` report parsed).
2. The kernel bodies (preprocess.cuh, the code every CUDA thread runs) are compiled for the host by nvcc and
   executed over the same grid the launcher uses, then compared with PIL and the CPU twin. This checks the
   index arithmetic, the taps layout and the integer resize on machines without a GPU; only the
   blockIdx/threadIdx binding in preprocess.cu is left to the GPU tests.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from stp_edge.bench.reference import pil_reference
from stp_edge.cuda import build
from stp_edge.cuda.kernels import BLOCK, KERNELS, grid_h, grid_v
from stp_edge.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    CpuPreprocessor,
    CropResizePlan,
    nv12_to_rgb,
    yuv_coefficients,
)

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH (CUDA toolkit absent)")

HARNESS = r"""
#include "preprocess.cuh"

#define STP_GRID_LOOP(...)                                                      \
    for (int bz = 0; bz < g[2]; ++bz)                                           \
        for (int by = 0; by < g[1]; ++by)                                       \
            for (int bx = 0; bx < g[0]; ++bx)                                   \
                for (int ty = 0; ty < b[1]; ++ty)                               \
                    for (int tx = 0; tx < b[0]; ++tx) {                         \
                        stp::Idx t{bx, by, bz, tx, ty, b[0], b[1]};             \
                        __VA_ARGS__;                                            \
                    }

extern "C" {
void host_resize_h_bgr8(const int* g, const int* b, const unsigned char* src, long long frame_stride,
                        long long pitch, const int* col_start, const int* col_coef, int ksize, int row0,
                        int mid_rows, int size, unsigned char* mid) {
    STP_GRID_LOOP(stp::resize_h_bgr8(t, src, frame_stride, pitch, col_start, col_coef, ksize, row0, mid_rows,
                                     size, mid))
}

void host_resize_h_nv12(const int* g, const int* b, const unsigned char* src, long long frame_stride,
                        long long pitch, long long uv_offset, int height, const float* yuv, const int* col_start,
                        const int* col_coef, int ksize, int row0, int mid_rows, int size, unsigned char* mid) {
    stp::Yuv c{yuv[0], yuv[1], yuv[2], yuv[3], yuv[4], yuv[5], yuv[6]};
    STP_GRID_LOOP(stp::resize_h_nv12(t, src, frame_stride, pitch, uv_offset, height, c, col_start, col_coef,
                                     ksize, row0, mid_rows, size, mid))
}

void host_resize_v(const int* g, const int* b, int half, const unsigned char* mid, int mid_rows, int size,
                   const int* row_start, const int* row_coef, int ksize, const float* scale, const float* bias,
                   void* out) {
    if (half) {
        STP_GRID_LOOP(stp::resize_v(t, mid, mid_rows, size, row_start, row_coef, ksize, scale, bias,
                                    static_cast<__half*>(out)))
    } else {
        STP_GRID_LOOP(stp::resize_v(t, mid, mid_rows, size, row_start, row_coef, ksize, scale, bias,
                                    static_cast<float*>(out)))
    }
}
}
"""


def _smooth_noise(h: int, w: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ph = rng.uniform(0, 6, size=c).astype(np.float32)
    img = 128 + 90 * np.sin(x[..., None] / 13.0 + ph) * np.cos(y[..., None] / 29.0 - ph)
    img += rng.normal(0, 25, size=(h, w, c))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_nvcc_targets_every_listed_arch() -> None:
    missing = sorted(set(build.DEFAULT_ARCHS) - build.supported_archs(), key=int)
    if missing:  # e.g. CUDA 12 has no sm_110; the arch test below then covers the rest
        pytest.skip(f"this nvcc cannot target sm_{', sm_'.join(missing)}")


def test_every_kernel_every_arch_no_warning_no_spill(tmp_path: Path) -> None:
    archs = build.default_archs()
    cmd = build.nvcc_command(tmp_path / "k.fatbin", archs, extra=["-Xptxas", "-v", "--threads", "2"])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed:\n{log}"
    warnings = [ln for ln in log.splitlines() if "warning" in ln.lower()]
    assert not warnings, "compiler warnings:\n" + "\n".join(warnings)
    # ptxas reports each (function, arch) as "Compiling entry function 'f' for 'sm_X'" followed by
    # "... N bytes spill stores, M bytes spill loads".
    entries = re.findall(r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?(\d+) bytes spill stores, (\d+) "
                         r"bytes spill loads", log, flags=re.S)  # fmt: skip
    seen = {(f, a) for f, a, _, _ in entries}
    expected = {(f, f"sm_{a}") for f in KERNELS for a in archs}
    assert expected <= seen, f"ptxas did not report {sorted(expected - seen)}"
    spills = [(f, a, s, ld) for f, a, s, ld in entries if int(s) or int(ld)]
    assert not spills, f"register spills (function, arch, stores, loads): {spills}"
    print(f"nvcc: {len(KERNELS)} kernels x {len(archs)} archs + PTX in {elapsed:.1f}s")


def test_build_cli_writes_fatbin_and_digest(tmp_path: Path) -> None:
    rc = build.main(["--out", str(tmp_path), "--arch", "87", "--ptx", "none"])
    assert rc == 0
    fatbin = tmp_path / build.FATBIN
    assert fatbin.stat().st_size > 1000
    from stp_edge.cuda.kernels import fatbin_is_current

    assert fatbin_is_current(fatbin)
    meta = fatbin.with_name(fatbin.name + ".json")
    meta.write_text(meta.read_text().replace(build.source_digest(), "0" * 64))
    assert not fatbin_is_current(fatbin), "a fatbin built from other sources must not be used"


def test_runtime_compile_source_is_self_contained(tmp_path: Path) -> None:
    """What pycuda's SourceModule compiles at run time (no include path) builds cleanly."""
    src = tmp_path / "inlined.cu"
    src.write_text(build.inlined_source())
    assert '#include "preprocess' not in src.read_text()
    cmd = [build.find_nvcc(), "-cubin", "-arch=sm_87", *build.NVCC_FLAGS, str(src), "-o", str(tmp_path / "k.cubin")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    d = tmp_path_factory.mktemp("hostk")
    (d / "harness.cu").write_text(HARNESS)
    so = d / "libstp_host.so"
    cmd = [build.find_nvcc(), "-shared", "-std=c++17", "-O2", "-arch=sm_80", "--Werror", "all-warnings",
           "-Xcompiler", "-fPIC,-ffp-contract=off", f"-I{build.kernels_dir()}", str(d / "harness.cu"), "-o",
           str(so)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ctypes.CDLL(str(so))


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def _run_host(lib: ctypes.CDLL, frames: np.ndarray, size: int, fmt: str, half: bool = False,
              pad: int = 0, coef: dict | None = None) -> np.ndarray:  # fmt: skip
    """Run the kernel bodies over the launch grid; frames are stored pitched (pad bytes per row)."""
    batch = frames.shape[0]
    if fmt == "bgr8":
        h, w = frames.shape[1:3]
        rows, row_bytes = h, w * 3
    else:
        rows, w = frames.shape[1:3]
        h, row_bytes = rows * 2 // 3, w
    pitch = row_bytes + pad
    src = np.full((batch, rows, pitch), 0xA5, np.uint8)  # pad bytes hold junk that must not be read
    src[:, :, :row_bytes] = frames.reshape(batch, rows, row_bytes)
    p = CropResizePlan.build(h, w, size)
    col_coef = np.ascontiguousarray(p.cols.coeffs.T, np.int32)
    col_start = np.ascontiguousarray(p.cols.start, np.int32)
    row_start = np.ascontiguousarray(p.rows.start - p.rows.first, np.int32)
    row_coef = np.ascontiguousarray(p.rows.coeffs, np.int32)
    mid = np.full((batch, 3, p.mid_rows, size), 77, np.uint8)
    blk = np.asarray(BLOCK[:2], np.int32)
    gh = np.asarray(grid_h(size, p.mid_rows, batch), np.int32)
    i32, i64 = ctypes.c_int, ctypes.c_longlong
    if fmt == "bgr8":
        lib.host_resize_h_bgr8(_ptr(gh), _ptr(blk), _ptr(src), i64(rows * pitch), i64(pitch), _ptr(col_start),
                               _ptr(col_coef), i32(p.cols.ksize), i32(p.rows.first), i32(p.mid_rows), i32(size),
                               _ptr(mid))  # fmt: skip
    else:
        yuv = np.asarray([coef[k] for k in ("y_off", "y_scale", "c_scale", "rv", "gu", "gv", "bu")], np.float32)
        lib.host_resize_h_nv12(_ptr(gh), _ptr(blk), _ptr(src), i64(rows * pitch), i64(pitch), i64(h * pitch),
                               i32(h), _ptr(yuv), _ptr(col_start), _ptr(col_coef), i32(p.cols.ksize),
                               i32(p.rows.first), i32(p.mid_rows), i32(size), _ptr(mid))  # fmt: skip
    std = np.asarray(CLIP_STD, np.float32)
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    bias = -np.asarray(CLIP_MEAN, np.float32) / std
    out = np.full((batch, 3, size, size), np.nan, np.float16 if half else np.float32)
    gv = np.asarray(grid_v(size, batch), np.int32)
    lib.host_resize_v(_ptr(gv), _ptr(blk), i32(int(half)), _ptr(mid), i32(p.mid_rows), i32(size),
                      _ptr(row_start), _ptr(row_coef), i32(p.rows.ksize), _ptr(scale), _ptr(bias),
                      _ptr(out))  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("h", "w", "size"),
    [(48, 64, 40), (67, 45, 32), (360, 640, 112), (123, 77, 224), (270, 480, 100)],
)
def test_host_build_of_kernel_bodies_matches_pil(host_kernels: ctypes.CDLL, h: int, w: int, size: int) -> None:
    frames = np.stack([_smooth_noise(h, w, 3, seed) for seed in range(2)])
    got = _run_host(host_kernels, frames, size, "bgr8", pad=5)
    assert np.isfinite(got).all(), "some outputs were never written"
    for b in range(2):
        ref = pil_reference(np.ascontiguousarray(frames[b, ..., ::-1]), size)
        np.testing.assert_array_equal(got[b], ref)  # PIL's integer resize reproduced bit for bit
    cpu = CpuPreprocessor(size)(list(frames))
    assert np.abs(got - cpu).max() <= 1.0 / 255 / min(CLIP_STD) + 1e-5  # twin: at most one grey level


def test_host_build_fp16_output(host_kernels: ctypes.CDLL) -> None:
    frames = _smooth_noise(90, 160, 3, 3)[None]
    got = _run_host(host_kernels, frames, 64, "bgr8", half=True)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[0], pil_reference(np.ascontiguousarray(frames[0, ..., ::-1]), 64, np.float16))


@pytest.mark.parametrize(("matrix", "full_range"), [("bt601", False), ("bt709", False), ("bt601", True),
                                                    ("bt709", True)])  # fmt: skip
def test_host_build_nv12_matches_cpu_twin(host_kernels: ctypes.CDLL, matrix: str, full_range: bool) -> None:
    h, w, size = 94, 150, 48
    nv12 = np.stack([_smooth_noise(h * 3 // 2, w, 1, seed)[..., 0] for seed in (5, 6)])
    coef = yuv_coefficients(matrix, full_range)
    got = _run_host(host_kernels, nv12, size, "nv12", coef=coef, pad=3)
    assert np.isfinite(got).all()
    for b in range(2):
        rgb = nv12_to_rgb(nv12[b], matrix, full_range)
        np.testing.assert_array_equal(got[b], pil_reference(rgb, size))
    cpu = CpuPreprocessor(size).from_nv12(list(nv12), matrix, full_range)
    assert np.abs(got - cpu).max() <= 1.0 / 255 / min(CLIP_STD) + 1e-5
