"""Frame policies (center / pad / tiles) and VadCLIP's preprocessing: CPU twin and kernel bodies against PIL.

The reference geometry is written out here with PIL (resize, crop, paste on a black canvas, mirror), not taken
from `stp_edge.preprocess`, so that it checks that module rather than repeats it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import shutil
import subprocess

import numpy as np
import pytest

from stp_edge.bundle.preprocessing import PreprocessSpec
from stp_edge.errors import UsageError
from stp_edge.preprocess import CLIP_MEAN, CLIP_STD, CpuPreprocessor, CropResizePlan, nv12_to_rgb, view_roles

ONE_LEVEL = 1.0 / 255 / min(CLIP_STD) + 1e-5  # the twin's float32 taps may round one grey level the other way


def _noise(h: int, w: int, seed: int, c: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 128 + 90 * np.sin(x[..., None] / 11.0 + rng.uniform(0, 6, c)) * np.cos(y[..., None] / 23.0)
    return np.clip(img + rng.normal(0, 25, (h, w, c)), 0, 255).astype(np.uint8)


def _normalise(a: np.ndarray) -> np.ndarray:
    std = np.asarray(CLIP_STD, np.float32)[:, None, None]
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    bias = -np.asarray(CLIP_MEAN, np.float32)[:, None, None] / std
    return a.transpose(2, 0, 1).astype(np.float32) * scale + bias


def pil_view(rgb: np.ndarray, size: int, place: str = "center", resize: tuple[int, int] | None = None,
             mirror: bool = False) -> np.ndarray:
    """One view through PIL: resize (short side, fixed (w, h), or long side for "pad"), crop or letterbox."""
    from PIL import Image

    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb)
    if place == "pad":
        nw, nh = (size, int(size * h / w)) if w >= h else (int(size * w / h), size)
        canvas = Image.new("RGB", (size, size), (0, 0, 0))  # black bars, as OpenCLIP's CenterCropOrPad(fill=0)
        canvas.paste(img.resize((nw, nh), Image.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
        a = np.asarray(canvas)
    else:
        nw, nh = resize if resize else ((int(size * w / h), size) if h <= w else (size, int(size * h / w)))
        if resize:  # one axis at a time: Resample.c's order (Pillow 13 may run the vertical pass first here)
            img = img.resize((nw, h), Image.BICUBIC)
        a = np.asarray(img.resize((nw, nh), Image.BICUBIC))
        off = {"center": lambda n: round((n - size) / 2.0), "start": lambda n: 0, "end": lambda n: n - size}[place]
        a = a[off(nh): off(nh) + size, off(nw): off(nw) + size]
    if mirror:
        a = a[:, ::-1]
    return _normalise(np.ascontiguousarray(a))


def _check(got: np.ndarray, ref: np.ndarray) -> None:
    assert np.isfinite(got).all()
    diff = np.abs(got - ref)
    assert diff.max() <= ONE_LEVEL, f"max diff {diff.max()}"
    assert (diff > 1e-6).mean() < 0.002, "more than a handful of pixels differ from PIL"


@pytest.mark.parametrize(("h", "w"), [(96, 128), (90, 160), (128, 72), (64, 64)])
@pytest.mark.parametrize("policy", ["center", "pad", "tiles"])
def test_cpu_views_match_pil(h: int, w: int, policy: str) -> None:
    size = 48
    frames = [_noise(h, w, s) for s in (1, 2)]
    pre = CpuPreprocessor(size, spec=PreprocessSpec(size=size, frame_policy=policy))
    out = pre(frames)
    places = {"center": ["center"], "pad": ["pad", "center"], "tiles": ["start", "center", "end"]}[policy]
    assert out.shape == (len(places) * 2, 3, size, size) and pre.views == len(places)
    for v, place in enumerate(places):
        for b, bgr in enumerate(frames):
            _check(out[v * 2 + b], pil_view(np.ascontiguousarray(bgr[..., ::-1]), size, place))


def test_pad_bars_are_black_and_the_content_is_the_whole_frame() -> None:
    size = 64
    rgb = _noise(90, 160, 3)
    pre = CpuPreprocessor(size, spec=PreprocessSpec(size=size, frame_policy="pad"))
    img = pre(rgb[..., ::-1])[0]
    black = _normalise(np.zeros((1, 1, 3), np.uint8))[:, 0, 0]
    p = pre.view_plans(90, 160)[0]
    bar = (size - p.resized[0]) // 2  # 160x90 -> 64x36, bars of 14 rows above and below
    assert p.resized == (36, 64) and bar == 14
    np.testing.assert_array_equal(img[:, :bar], np.broadcast_to(black[:, None, None], (3, bar, size)))
    np.testing.assert_array_equal(img[:, bar + 36:], np.broadcast_to(black[:, None, None], (3, size - bar - 36, size)))
    assert np.abs(img[:, bar:bar + 36] - black[:, None, None]).mean() > 0.5  # the frame itself, not bars
    assert p.cols.first == 0 and p.cols.last == 160 and p.rows.first == 0 and p.rows.last == 90  # every pixel read


def test_tiles_cover_the_frame_and_the_middle_one_is_clip() -> None:
    plans = CropResizePlan.views(576, 768, PreprocessSpec(size=224, frame_policy="tiles"))
    assert [p.crop_left for p in plans] == [0, 37, 74]  # 768x576 -> 298x224: tiles at 0, centre, 298 - 224
    assert plans[0].cols.first == 0 and plans[2].cols.last == 768
    clip = CropResizePlan.build(576, 768, 224)
    np.testing.assert_array_equal(plans[1].cols.coeffs, clip.cols.coeffs)
    assert view_roles(PreprocessSpec(frame_policy="tiles")) == ((0, 1, 2), 1)
    assert view_roles(PreprocessSpec(frame_policy="pad")) == ((0,), 1)


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize(("h", "w"), [(240, 320), (120, 160), (360, 640)])
def test_vadclip_resize_340x256_centre_crop(h: int, w: int, mirror: bool) -> None:
    spec = dataclasses.replace(PreprocessSpec.preset("vadclip"), mirror=mirror)
    assert spec.resize == (340, 256) and spec.to_dict()["resize"] == [340, 256]
    frames = [_noise(h, w, s) for s in (4, 5)]
    out = CpuPreprocessor(224, spec=spec)(frames)
    for b, bgr in enumerate(frames):
        _check(out[b], pil_view(np.ascontiguousarray(bgr[..., ::-1]), 224, resize=(340, 256), mirror=mirror))
    clip = CpuPreprocessor(224)(frames)
    assert np.abs(out - clip).mean() > 0.1, "vadclip must not be CLIP's resize"


def test_mirror_is_the_flip_of_the_plain_view() -> None:
    rgb = _noise(100, 150, 6)
    plain = CpuPreprocessor(64, spec=PreprocessSpec(size=64, resize=(80, 70)))(rgb)
    mirrored = CpuPreprocessor(64, spec=PreprocessSpec(size=64, resize=(80, 70), mirror=True))(rgb)
    np.testing.assert_array_equal(mirrored, plain[..., ::-1])


def test_nv12_views_match_the_bgr_path_on_the_converted_frame() -> None:
    nv12 = _noise(72 * 3 // 2, 128, 7, c=1)[..., 0]
    spec = PreprocessSpec(size=40, frame_policy="tiles")
    pre = CpuPreprocessor(40, spec=spec)
    got = pre.from_nv12(nv12)
    ref = pre(nv12_to_rgb(nv12)[..., ::-1])
    assert got.shape == (3, 3, 40, 40)
    np.testing.assert_array_equal(got, ref)


def test_spec_round_trip_defaults_and_refusals() -> None:
    spec = PreprocessSpec(size=224, resize=(340, 256), mirror=True, frame_policy="tiles")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in PreprocessSpec().to_dict().items() if k not in ("resize", "mirror", "frame_policy")}
    assert PreprocessSpec.from_dict(old) == PreprocessSpec()  # bundles without the fields: CLIP's centre crop
    assert PreprocessSpec(frame_policy="stretch").unsupported() == [
        "preprocess.frame_policy 'stretch' is not implemented (this runtime implements ['center', 'pad', 'tiles'])"]
    assert "smaller than the crop size 224" in PreprocessSpec(resize=(300, 200)).unsupported()[0]
    assert "takes no resize" in PreprocessSpec(resize=(340, 256), frame_policy="pad").unsupported()[0]
    with pytest.raises(UsageError, match="frame_policy 'stretch'"):
        CpuPreprocessor(224, spec=PreprocessSpec(frame_policy="stretch"))
    with pytest.raises(UsageError, match="unknown preprocessing 'i3d'"):
        PreprocessSpec.preset("i3d")


# --- the kernel bodies (kernels/preprocess.cuh) compiled for the host by nvcc, run on the same view plans ----------

HARNESS = r"""
#include "preprocess.cuh"
extern "C" {
void views_h(int gx, int gy, int gz, const unsigned char* src, long long frame_stride, long long pitch,
             const int* col_start, const int* col_coef, int ksize, int row0, int mid_rows, int size,
             unsigned char* mid) {
    for (int bz = 0; bz < gz; ++bz) for (int by = 0; by < gy; ++by) for (int bx = 0; bx < gx; ++bx)
        for (int ty = 0; ty < 8; ++ty) for (int tx = 0; tx < 32; ++tx)
            stp::resize_h_bgr8(stp::Idx{bx, by, bz, tx, ty, 32, 8}, src, frame_stride, pitch, col_start, col_coef,
                               ksize, row0, mid_rows, size, mid);
}
void views_v(int gx, int gy, int gz, const unsigned char* mid, int mid_rows, int size, const int* row_start,
             const int* row_coef, int ksize, const float* scale, const float* bias, float* out) {
    for (int bz = 0; bz < gz; ++bz) for (int by = 0; by < gy; ++by) for (int bx = 0; bx < gx; ++bx)
        for (int ty = 0; ty < 8; ++ty) for (int tx = 0; tx < 32; ++tx)
            stp::resize_v(stp::Idx{bx, by, bz, tx, ty, 32, 8}, mid, mid_rows, size, row_start, row_coef, ksize,
                          scale, bias, out);
}
}
"""


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH (CUDA toolkit absent)")
    from stp_edge.cuda import build

    d = tmp_path_factory.mktemp("views")
    (d / "h.cu").write_text(HARNESS)
    so = d / "libviews.so"
    cmd = [build.find_nvcc(), "-shared", "-std=c++17", "-O1", "-arch=sm_80", "-Xcompiler", "-fPIC,-ffp-contract=off",
           f"-I{build.kernels_dir()}", str(d / "h.cu"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ctypes.CDLL(str(so))


def _host_view(lib: ctypes.CDLL, frames: np.ndarray, p: CropResizePlan) -> np.ndarray:
    """Run one view's two launches exactly as `CudaPreprocessor.run_device` feeds them (same taps layout)."""
    ptr = lambda a: ctypes.c_void_p(a.ctypes.data)  # noqa: E731
    i32, i64 = ctypes.c_int, ctypes.c_longlong
    batch, h, w = frames.shape[:3]
    size = p.size
    col_start = np.ascontiguousarray(p.cols.start, np.int32)
    col_coef = np.ascontiguousarray(p.cols.coeffs.T, np.int32)
    row_start = np.ascontiguousarray(p.rows.start - p.rows.first, np.int32)
    row_coef = np.ascontiguousarray(p.rows.coeffs, np.int32)
    mid = np.full((batch, 3, p.mid_rows, size), 77, np.uint8)
    src = np.ascontiguousarray(frames)
    lib.views_h(-(-size // 32), -(-p.mid_rows // 8), batch, ptr(src), i64(h * w * 3), i64(w * 3), ptr(col_start),
                ptr(col_coef), i32(p.cols.ksize), i32(p.rows.first), i32(p.mid_rows), i32(size), ptr(mid))
    std = np.asarray(CLIP_STD, np.float32)
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    bias = -np.asarray(CLIP_MEAN, np.float32) / std
    out = np.full((batch, 3, size, size), np.nan, np.float32)
    lib.views_v(-(-size // 32), -(-size // 8), batch, ptr(mid), i32(p.mid_rows), i32(size), ptr(row_start),
                ptr(row_coef), i32(p.rows.ksize), ptr(scale), ptr(bias), ptr(out))
    return out


@pytest.mark.parametrize(("policy", "resize", "mirror"), [("pad", None, False), ("tiles", None, False),
                                                          ("center", (70, 52), True), ("tiles", (70, 52), False)])
@pytest.mark.parametrize(("h", "w"), [(60, 100), (100, 60)])
def test_kernel_bodies_run_every_view_like_pil(host_kernels: ctypes.CDLL, policy: str, resize, mirror: bool,
                                               h: int, w: int) -> None:
    """The unchanged kernels, fed each view's taps, give PIL's view exactly (integer resize, bit for bit)."""
    size = 48
    spec = PreprocessSpec(size=size, frame_policy=policy, resize=resize, mirror=mirror)
    frames = np.stack([_noise(h, w, s) for s in (8, 9)])
    places = {"center": ["center"], "pad": ["pad", "center"], "tiles": ["start", "center", "end"]}[policy]
    twin = CpuPreprocessor(size, spec=spec)(list(frames))
    for v, p in enumerate(CropResizePlan.views(h, w, spec)):
        got = _host_view(host_kernels, frames, p)
        for b in range(2):
            ref = pil_view(np.ascontiguousarray(frames[b, ..., ::-1]), size, places[v], resize, mirror)
            np.testing.assert_array_equal(got[b], ref)
        assert np.abs(got - twin[v * 2:(v + 1) * 2]).max() <= ONE_LEVEL


@pytest.mark.parametrize(("h", "w"), [(60, 100), (100, 60), (45, 160)])
def test_kernel_bodies_cut_the_region_windows_like_pil(host_kernels: ctypes.CDLL, h: int, w: int) -> None:
    """Region crops of the whole frame (region extent "frame"): the unchanged kernels, fed each window's taps, give
    PIL's `resize(box=...)` of that window exactly."""
    from test_region_extent import pil_window

    from stp_edge.geometry import frame_windows

    size = 48
    spec = PreprocessSpec(size=size, frame_policy="pad", region_grid=3)
    frames = np.stack([_noise(h, w, s) for s in (12, 13)])
    plans = CropResizePlan.views(h, w, spec)
    twin = CpuPreprocessor(size, spec=spec)(list(frames))
    assert len(plans) == 2 + 9
    for r, box in enumerate(frame_windows((h, w), 3)):
        got = _host_view(host_kernels, frames, plans[2 + r])
        for b in range(2):
            np.testing.assert_array_equal(got[b], pil_window(np.ascontiguousarray(frames[b, ..., ::-1]), size, box))
        assert np.abs(got - twin[(2 + r) * 2:(3 + r) * 2]).max() <= ONE_LEVEL


@pytest.mark.gpu
@pytest.mark.parametrize("spec", [PreprocessSpec(frame_policy="pad"), PreprocessSpec(frame_policy="tiles"),
                                  dataclasses.replace(PreprocessSpec.preset("vadclip"), mirror=True),
                                  PreprocessSpec(region_grid=3)],
                         ids=["pad", "tiles", "vadclip-mirrored", "region-crops-of-the-frame"])
def test_cuda_preprocessor_views_match_the_twin(spec: PreprocessSpec) -> None:
    """On a GPU: CudaPreprocessor's view-major output equals the CPU twin (at most one grey level)."""
    from cuda_driver import cuda_driver_or_skip

    cuda_driver_or_skip()
    from stp_edge.cuda import CudaPreprocessor

    frames = [_noise(576, 768, s) for s in (10, 11)]
    with CudaPreprocessor(224, max_batch=4, spec=spec) as pre:
        got = pre.to_host(pre(frames))
    twin = CpuPreprocessor(224, spec=spec)(frames)
    assert got.shape == twin.shape == (2 * spec.views, 3, 224, 224)
    assert np.abs(got - twin).max() <= ONE_LEVEL


# --- the encode stage: views through a real (handmade ONNX) encoder ------------------------------------------------

@pytest.mark.parametrize("bundle_fixture", ["handmade_bundle", "handmade_crops_bundle"])
@pytest.mark.parametrize("policy", ["pad", "tiles"])
def test_encoder_pools_the_frame_views_and_keeps_the_centre_regions(bundle_fixture: str, policy: str,
                                                                    frames_factory, request) -> None:
    """tiles: frame_emb = mean of the 3 views' embeddings; pad: the letterbox's; regions: the centre crop's."""
    from stp_edge.backends.ort import OrtRunner
    from stp_edge.bundle import Bundle
    from stp_edge.pipeline.encode import Encoder
    from stp_edge.pipeline.snippets import SnippetAssembler

    bundle = Bundle.load(request.getfixturevalue(bundle_fixture))
    cfg = bundle.config
    s = cfg.vision.image_size
    spec = dataclasses.replace(bundle.preprocess_spec, frame_policy=policy)
    asm = SnippetAssembler(cfg.snippet_len, cfg.frames_per_snippet, 0)
    snippets = [sn for f in frames_factory(3 * cfg.snippet_len, height=48, width=96) if (sn := asm.push(f))]
    with OrtRunner(bundle.graph_path("encoder")) as runner:
        pre = CpuPreprocessor(s, spec=spec)
        enc = Encoder(runner, pre, cfg)(snippets)
        frames = [sn.frames[0] for sn in snippets]
        views = pre(frames).reshape(spec.views, len(frames), 3, s, s)
        per_view = [Encoder(runner, CpuPreprocessor(s), cfg).encode_images(views[v]) for v in range(spec.views)]
        centre_only = Encoder(runner, CpuPreprocessor(s), cfg).encode_images(CpuPreprocessor(s)(frames))
    frame_views, region_view = view_roles(spec)
    expected = np.mean([per_view[v][0] for v in frame_views], axis=0)
    np.testing.assert_allclose(enc.frame_emb, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.region_emb, per_view[region_view][1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.region_emb, centre_only[1], rtol=1e-5, atol=1e-6)
    assert np.abs(enc.frame_emb - centre_only[0]).max() > 1e-3, "the policy must change the frame embedding"


# --- what part of the frame is analysed: text and overlay --------------------------------------------------------

def test_coverage_text_names_the_analysed_part() -> None:
    from stp_edge.bundle.preprocessing import analysed_boxes, covered_fraction, describe_coverage

    assert describe_coverage(PreprocessSpec(), (576, 768)) == "frame analysed: centre 576x576 of 768x576 (75%)"
    assert "centre 1080x1080 of 1920x1080 (56%)" in describe_coverage(PreprocessSpec())
    tiles = describe_coverage(PreprocessSpec(frame_policy="tiles"), (576, 768))
    assert tiles.startswith("frame analysed: 100% of 768x576 by the frame embedding (3 tiles")
    assert "regions and boxes from the centre 576x576 of 768x576 (75%)" in tiles
    assert "letterboxed" in describe_coverage(PreprocessSpec(frame_policy="pad"), (576, 768))
    boxes = analysed_boxes(PreprocessSpec(frame_policy="tiles"), (400, 1600))  # 4:1: three squares leave gaps
    assert covered_fraction(boxes["frame"], (400, 1600)) == pytest.approx(0.75)
    vad = analysed_boxes(PreprocessSpec.preset("vadclip"), (240, 320))["regions"][0]
    assert vad == pytest.approx((54.59, 15.0, 265.41, 225.0), abs=0.01)  # 224/340 of the width, 224/256 of the height


def test_overlay_marks_what_the_model_does_not_see(tmp_path) -> None:
    from stp_edge.geometry import crop_square_pixels
    from stp_edge.visualize import OverlayWriter, dim_outside, outline_roi

    H, W = 120, 160
    frame = np.full((H, W, 3), 200, np.uint8)
    roi = crop_square_pixels((H, W))  # (20, 0, 140, 120)
    out = dim_outside(frame, roi)
    assert (out[:, :19] == 90).all() and (out[:, 141:] == 90).all()  # 200 * 0.45
    assert (out[5:115, 25:135] == 200).all()
    np.testing.assert_array_equal(dim_outside(frame, (0, 0, W, H)), frame)
    import cv2

    outlined = outline_roi(frame, roi)
    arm = 120 // 8  # corner brackets an eighth of the roi's side long
    for x in (20, 139):
        assert (outlined[:arm, x] != 200).any(axis=1).all() and (outlined[-arm:, x] != 200).any(axis=1).all()
        assert (outlined[arm + 2:-arm - 2, x] == 200).all()  # the middle of the edge keeps its pixels
    assert (outlined[:, :20] == 200).all() and (outlined[:, 140:] == 200).all()  # the sides keep their pixels
    for dim, side in ((False, 200), (True, 90)):
        path = tmp_path / f"o{dim}.avi"
        with OverlayWriter(path, fps=5, size=(W, H), map_roi=roi, dim=dim) as w:
            w.write(frame, 0.2, None, np.full((3, 3), 0.0), None)
        ok, got = cv2.VideoCapture(str(path)).read()
        assert ok and abs(got[40:80, 2:15].mean() - side) < 8 and got[40:80, 60:100].mean() > 190
        assert np.abs(got[3, 18:24].astype(int) - 200).max() > 40  # the amber corner survives the codec


def test_info_and_run_say_which_part_of_the_frame_is_analysed(handmade_bundle, tmp_path, capsys) -> None:
    from conftest import moving_frames, write_avi

    from stp_edge.cli import main

    assert main(["info", str(handmade_bundle)]) == 0
    out = capsys.readouterr().out
    assert "preprocess    CLIP (short side -> 32, centre crop 32), frame policy center (1 image per frame)" in out
    assert "coverage      frame analysed: centre 576x576 of 768x576 (75%); centre 1080x1080 of 1920x1080 (56%)" in out
    video = write_avi(tmp_path / "v.avi", moving_frames(20, height=48, width=64))
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu"]) == 0
    out = capsys.readouterr().out
    assert "frame analysed: centre 576x576 of 768x576 (75%)" in out  # at the start: example sizes
    assert "stream 0: frame analysed: centre 48x48 of 64x48 (75%)" in out  # at its first result: its own size


def test_export_records_the_frame_policy_and_the_runtime_runs_it(tmp_path, frames_factory) -> None:
    """export_bundle(frame_policy="tiles") -> manifest preprocess.frame_policy; the Detector encodes 3 views."""
    import warnings

    from stp_edge.api import Detector
    from stp_edge.export.bundle_export import export_bundle

    with pytest.raises(UsageError, match="frame_policy must be one of"):
        export_bundle(tmp_path / "x.stp", random_config="tiny", frame_policy="stretch", progress=False)
    assert not (tmp_path / "x.stp").exists()
    path = export_bundle(tmp_path / "t.stp", random_config="tiny", seed=3, progress=False, frame_policy="tiles")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        with Detector.load(path, backend="ort-cpu", preprocess="cpu") as det:
            assert det.bundle.manifest["preprocess"]["frame_policy"] == "tiles"
            assert det.encoder.views == 3
            results = [r for f in frames_factory(40, height=60, width=120) for r in det.push(f)] + det.flush()
    assert len(results) == 3 and all(np.isfinite(r.score) for r in results)
