"""CPU twin of the CLIP preprocessing (stp_edge.preprocess) against PIL, the golden definition (CLIP's own)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from stp_edge.bench.reference import pil_reference as pil_clip_preprocess
from stp_edge.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    CpuPreprocessor,
    CropResizePlan,
    PreprocessSpec,
    center_offset,
    filter_weights,
    fixed_point,
    normalisation,
    nv12_to_rgb,
    resized_size,
    yuv_coefficients,
)

# One grey level in normalised units is 1/(255*std) ~ 0.0146; the twin may differ from PIL by one level on
# pixels whose fixed-point sum sits on a rounding boundary (float32 accumulation, see the module docstring).
MAX_ERR, MEAN_ERR = 0.03, 0.005


def smooth_noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random pattern + noise: non-constant at every scale, so a wrong tap or offset shows."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    f = rng.uniform(2, 9, size=(2, c)).astype(np.float32)
    ph = rng.uniform(0, 6, size=c).astype(np.float32)
    img = 128 + 80 * np.sin(f[0] * 6.28 * x + ph) * np.cos(f[1] * 6.28 * y - ph) + 30 * (x - y)
    img = img + rng.normal(0, 20, size=(h, w, c)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def assert_close_to_pil(got: np.ndarray, ref: np.ndarray) -> None:
    err = np.abs(got.astype(np.float32) - ref)
    assert err.max() <= MAX_ERR, f"max abs error {err.max():.4f} > {MAX_ERR}"
    assert err.mean() <= MEAN_ERR, f"mean abs error {err.mean():.5f} > {MEAN_ERR}"


@pytest.mark.parametrize(
    ("h", "w", "size"),
    [
        (1, 1, 32),  # degenerate: one pixel
        (3, 500, 32),  # extreme aspect ratio
        (48, 64, 224),  # upscaling, smaller than S
        (64, 48, 224),
        (100, 101, 224),  # odd crop offset: banker's rounding in CenterCrop
        (224, 224, 224),  # identity resize
        (225, 399, 224),
        (480, 640, 112),  # tiny-model size
        (360, 480, 224),
        (720, 1280, 224),
        (1920, 1080, 224),  # portrait 1080p
        (2160, 3840, 224),  # 4K
    ],
)
def test_cpu_twin_matches_pil(h: int, w: int, size: int) -> None:
    bgr = smooth_noise(h, w, seed=h * 7 + w)
    got = CpuPreprocessor(size)([bgr])
    assert got.shape == (1, 3, size, size) and got.dtype == np.float32
    assert_close_to_pil(got[0], pil_clip_preprocess(np.ascontiguousarray(bgr[..., ::-1]), size))


def test_batch_of_mixed_sizes_and_cache_reuse() -> None:
    pre = CpuPreprocessor(64)
    frames = [smooth_noise(90, 160, seed=1), smooth_noise(120, 80, seed=2), smooth_noise(90, 160, seed=3)]
    first = pre(frames)
    again = pre(frames)  # cached plans and buffers must not leak state between frames or calls
    np.testing.assert_array_equal(first, again)
    assert len(pre._plans) == 2
    for b, f in enumerate(frames):
        assert_close_to_pil(first[b], pil_clip_preprocess(np.ascontiguousarray(f[..., ::-1]), 64))
        np.testing.assert_array_equal(first[b], pre([f])[0])


def test_fp16_output_and_4d_array_input() -> None:
    frames = np.stack([smooth_noise(96, 128, seed=s) for s in range(3)])
    got = CpuPreprocessor(32, dtype=np.float16)(frames)
    assert got.dtype == np.float16 and got.shape == (3, 3, 32, 32)
    ref = CpuPreprocessor(32)(frames)
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=2e-3 * np.abs(ref).max())


def test_output_is_rgb_order() -> None:
    bgr = smooth_noise(50, 70, seed=4)
    bgr[..., 0] = 255  # blue channel saturated, red channel dark
    bgr[..., 2] = np.minimum(bgr[..., 2], 20)
    out = CpuPreprocessor(32)([bgr])[0]
    assert out[2].mean() > 1.5 and out[0].mean() < -1.0  # channel 0 is red, channel 2 blue


def test_filter_weights_follow_pil_rules() -> None:
    start, w = filter_weights(1920, 398)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert w.shape[1] == 2 * int(np.ceil(2 * 1920 / 398)) + 1  # support scaled by the downscale factor
    assert start[0] == 0 and (np.diff(start) >= 0).all()
    s_id, w_id = filter_weights(50, 50)  # identity: one tap of weight 1 at the same index
    q = fixed_point(w_id)
    assert (q.max(axis=1) == 1 << 22).all()
    assert (s_id + np.argmax(q, axis=1) == np.arange(50)).all()
    with pytest.raises(ValueError, match="positive sizes"):
        filter_weights(0, 10)


def test_crop_geometry_matches_torchvision_rules() -> None:
    assert resized_size(1080, 1920, 224) == (224, 398)
    assert resized_size(1920, 1080, 224) == (398, 224)
    assert resized_size(481, 640, 224) == (224, int(224 * 640 / 481))
    assert center_offset(399, 224) == 88 and center_offset(397, 224) == 86  # round half to even
    p = CropResizePlan.build(1080, 1920, 224)
    assert (p.crop_top, p.crop_left) == (0, 87)
    assert p.rows.first == 0 and p.rows.last == 1080  # landscape: every row feeds the crop
    assert 0 < p.cols.first and p.cols.last < 1920  # only the columns around the crop are read


def test_nv12_matches_opencv_bt601_limited() -> None:
    rng = np.random.default_rng(7)
    h, w = 120, 176
    y = rng.integers(16, 236, (h, w), dtype=np.uint8)  # in-range video levels (OpenCV clamps Y<16)
    # Chroma constant down each column: OpenCV replicates chroma rows, FFmpeg (ours) interpolates them, and the
    # two agree exactly where neighbouring rows are equal; this checks the colour matrix.
    uv = np.repeat(rng.integers(16, 241, (1, w), dtype=np.uint8), h // 2, axis=0)
    nv12 = np.concatenate([y, uv])
    ours = nv12_to_rgb(nv12, "bt601", full_range=False).astype(np.int16)
    ocv = cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12).astype(np.int16)
    assert np.abs(ours - ocv).max() <= 1  # OpenCV's fixed-point coefficients vs exact float


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("full_range", [False, True])
def test_nv12_round_trips_the_standard_forward_transform(matrix: str, full_range: bool) -> None:
    """Encode RGB with the standard's forward equations (Kr, Kb), decode with ours: within quantisation."""
    kr, kb = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}[matrix]
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (1, 48, 3)).astype(np.float64)
    rgb = rgb.repeat(64, axis=0).repeat(2, axis=1)  # 2-wide columns: 4:2:0 subsampling loses nothing
    r, g, b = (rgb[..., i] / 255.0 for i in range(3))
    yl = kr * r + (1 - kr - kb) * g + kb * b
    cb, cr = (b - yl) / (2 * (1 - kb)), (r - yl) / (2 * (1 - kr))
    if full_range:
        y8, cb8, cr8 = 255 * yl, 128 + 255 * cb, 128 + 255 * cr
    else:
        y8, cb8, cr8 = 16 + 219 * yl, 128 + 224 * cb, 128 + 224 * cr
    y8, cb8, cr8 = (np.clip(np.floor(v + 0.5), 0, 255).astype(np.uint8) for v in (y8, cb8, cr8))
    uv = np.stack([cb8[::2, ::2], cr8[::2, ::2]], axis=-1).reshape(y8.shape[0] // 2, -1)
    dec = nv12_to_rgb(np.concatenate([y8, uv]), matrix, full_range).astype(np.float64)
    inside = (rgb > 3) & (rgb < 252)  # away from clipping
    assert np.abs(dec - rgb)[inside].max() <= 2.5  # 8-bit YUV quantisation (limited range: 255/219 steps)
    assert np.abs(dec - rgb).mean() <= 0.8


@pytest.mark.parametrize(("h", "w"), [(8, 16), (90, 160), (480, 640), (1080, 1920)])
def test_nv12_conversion_matches_ffmpeg(h: int, w: int) -> None:
    """FFmpeg's own NV12->BGR (PyAV's reformat, swscale's defaults: what the CPU decode path runs) on random planes.

    Stated tolerance: 3 grey levels per channel, mean under 1 (swscale's fixed-point arithmetic against our float
    formula); the chroma siting is exact: replicating chroma (the old model) is off by up to ~200 levels here.
    """
    av = pytest.importorskip("av")
    rng = np.random.default_rng(h)
    y = rng.integers(0, 256, (h, w), dtype=np.uint8)
    uv = rng.integers(0, 256, (h // 2, w), dtype=np.uint8)
    nv12 = np.concatenate([y, uv])
    ffmpeg = av.VideoFrame.from_ndarray(nv12, format="nv12").reformat(format="bgr24").to_ndarray()
    ours = nv12_to_rgb(nv12, "bt601", full_range=False)[..., ::-1]  # swscale's default: BT.601, limited range
    diff = np.abs(ours.astype(np.int16) - ffmpeg.astype(np.int16))
    assert diff.max() <= 3 and diff.mean() < 1.0


def test_nv12_chroma_rows_follow_ffmpeg_siting() -> None:
    from stp_edge.preprocess import nv12_chroma_rows

    upper, lower, weight = nv12_chroma_rows(np.arange(10), 10)
    assert upper.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert lower.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert weight.tolist() == [1, 1, 0.5, 1, 0.5, 1, 0.5, 1, 0.75, 1]


def test_nv12_key_levels() -> None:
    c = yuv_coefficients("bt709", full_range=False)
    assert c["y_off"] == 16 and abs(c["y_scale"] * 219 - 255) < 1e-9

    def grey(yv: int, full: bool) -> np.ndarray:
        nv = np.concatenate([np.full((4, 4), yv, np.uint8), np.full((2, 4), 128, np.uint8)])
        return nv12_to_rgb(nv, "bt709", full)[0, 0]

    assert (grey(16, False) == 0).all() and (grey(235, False) == 255).all()
    assert (grey(0, True) == 0).all() and (grey(255, True) == 255).all() and (grey(128, True) == 128).all()


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_cpu_twin_nv12_equals_rgb_path(matrix: str) -> None:
    rng = np.random.default_rng(3)
    h, w = 270, 480
    y = cv2.GaussianBlur(rng.integers(16, 236, (h, w), dtype=np.uint8), (0, 0), 3)
    y = np.clip(y.astype(np.int16) + rng.integers(-15, 16, (h, w)), 16, 235).astype(np.uint8)
    uv = cv2.GaussianBlur(rng.integers(40, 216, (h // 2, w), dtype=np.uint8), (0, 0), 2)
    nv12 = np.concatenate([y, uv])
    pre = CpuPreprocessor(112)
    got = pre.from_nv12([nv12, nv12[::1]], matrix=matrix)
    rgb = nv12_to_rgb(nv12, matrix)
    np.testing.assert_array_equal(got[0], pre([np.ascontiguousarray(rgb[..., ::-1])])[0])
    assert_close_to_pil(got[1], pil_clip_preprocess(rgb, 112))


def test_preprocess_spec_for_manifest() -> None:
    d = CpuPreprocessor(112).spec.to_dict()
    assert d["size"] == 112 and d["interpolation"] == "bicubic-antialias-pil" and d["crop"] == "center"
    assert d["mean"] == list(CLIP_MEAN) and d["std"] == list(CLIP_STD) and d["input"] == "bgr8"
    assert PreprocessSpec().size == 224


# A normalisation other than CLIP's (a bundle may declare one): both preprocessors must run it, not CLIP's.
OTHER_MEAN, OTHER_STD = (0.5, 0.25, 0.75), (0.125, 0.5, 0.3)


def test_cpu_twin_runs_the_spec_mean_and_std() -> None:
    frames = [smooth_noise(120, 160, seed=s)[..., ::-1].copy() for s in range(2)]
    spec = PreprocessSpec(size=112, mean=OTHER_MEAN, std=OTHER_STD)
    pre = CpuPreprocessor(112, spec=spec)
    assert pre.spec == spec
    got, clip = pre(frames), CpuPreprocessor(112)(frames)
    # The same resized pixels, normalised with the spec's numbers in the runtime's float32 operation order.
    scale, bias = normalisation(spec)
    clip_scale, clip_bias = normalisation(PreprocessSpec(size=112))
    pixels = np.rint((clip - clip_bias[:, None, None]) / clip_scale[:, None, None]).astype(np.float32)
    assert pixels.min() >= 0 and pixels.max() <= 255 and pixels.std() > 20
    np.testing.assert_array_equal(got, pixels * scale[:, None, None] + bias[:, None, None])
    assert (np.abs(got - clip) > 1e-3).mean() > 0.95  # CLIP's numbers are not used
    for b, f in enumerate(frames):
        ref = pil_clip_preprocess(np.ascontiguousarray(f[..., ::-1]), 112, mean=OTHER_MEAN, std=OTHER_STD)
        err = np.abs(got[b] - ref)
        assert err.max() <= 1.0 / 255 / min(OTHER_STD) + 1e-5 and err.mean() <= MEAN_ERR * 2


@pytest.mark.gpu
def test_cuda_kernel_runs_the_spec_mean_and_std() -> None:
    """The kernel takes the spec's mean/std as its per-channel scale and bias: equal to PIL with them, bit for bit."""
    from cuda_driver import cuda_driver_or_skip

    cuda_driver_or_skip()
    from stp_edge.cuda import CudaPreprocessor

    frames = [np.ascontiguousarray(smooth_noise(360, 480, seed=s)[..., ::-1]) for s in range(2)]
    spec = PreprocessSpec(size=224, mean=OTHER_MEAN, std=OTHER_STD)
    with CudaPreprocessor(224, max_batch=2, spec=spec) as pre:
        got = pre.to_host(pre(frames))
    assert np.isfinite(got).all()
    for b, f in enumerate(frames):
        ref = pil_clip_preprocess(np.ascontiguousarray(f[..., ::-1]), 224, mean=OTHER_MEAN, std=OTHER_STD)
        np.testing.assert_array_equal(got[b], ref)
    # the CPU twin runs the same spec: equal up to one grey level on rounding-boundary pixels (module docstring)
    assert np.abs(got - CpuPreprocessor(224, spec=spec)(frames)).max() <= 1.0 / 255 / min(OTHER_STD) + 1e-5


@pytest.mark.parametrize(("change", "field"), [
    ({"interpolation": "bilinear"}, "preprocess.interpolation 'bilinear' is not implemented (this runtime "
                                    "implements 'bicubic-antialias-pil')"),
    ({"crop": "none"}, "preprocess.crop 'none' is not implemented (this runtime implements 'center')"),
    ({"input": "rgb8"}, "preprocess.input 'rgb8' is not implemented (this runtime implements 'bgr8')"),
    ({"layout": "NHWC"}, "preprocess.layout 'NHWC' is not implemented (this runtime implements 'NCHW')"),
    ({"std": (1e-45, 1.0, 1.0)}, "overflows float32"),
])
def test_spec_the_preprocessors_do_not_implement_is_refused(change: dict, field: str) -> None:
    spec = dataclasses.replace(PreprocessSpec(size=32), **change)
    assert any(field in line for line in spec.unsupported())
    with pytest.raises(ValueError, match=re.escape(field)):
        CpuPreprocessor(32, spec=spec)
    with pytest.raises(ValueError, match="preprocess spec size 32 differs from image_size 64"):
        CpuPreprocessor(64, spec=PreprocessSpec(size=32))
    assert PreprocessSpec(size=32, mean=OTHER_MEAN, std=OTHER_STD).unsupported() == []


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (np.zeros((10, 10, 3), np.float32), "dtype uint8"),
        (np.zeros((10, 10, 2), np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((2, 10, 10, 3, 1), np.uint8), r"shape \(H, W, 3\)"),
        (np.zeros((0, 10, 3), np.uint8), "empty image"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_bgr_frames_are_rejected(frame: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CpuPreprocessor(32)([frame])


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        CpuPreprocessor(32)([])
    with pytest.raises(ValueError, match="image_size"):
        CpuPreprocessor(0)
    with pytest.raises(ValueError, match="float32 or float16"):
        CpuPreprocessor(32, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"frame 0: NV12 frame of shape \(10, 8\)"):
        CpuPreprocessor(32).from_nv12([np.zeros((10, 8), np.uint8)])
    with pytest.raises(ValueError, match="unknown YUV matrix"):
        CpuPreprocessor(32).from_nv12([np.zeros((12, 8), np.uint8)], matrix="bt2020")


def test_module_does_not_import_torch() -> None:
    code = "import sys, stp_edge.preprocess; assert 'torch' not in sys.modules and 'pycuda' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_preprocessor_without_pycuda_names_the_extra(monkeypatch) -> None:
    import importlib.util

    if importlib.util.find_spec("pycuda") is not None:
        pytest.skip("pycuda is installed here")
    from stp_edge._deps import MissingDependencyError
    from stp_edge.cuda import CudaPreprocessor  # importable without pycuda; fails only when used

    monkeypatch.setenv("STP_EDGE_CUDA_BINDING", "pycuda")  # auto would take cuda-python where it is installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'stp-edge\[cuda\]'"):
        CudaPreprocessor(32)
