"""The preprocessing twin on real photos and real video frames (not only generated ones), against PIL.

PIL's resize is the golden definition (DESIGN.md §3). Real images have what the generated ones lack: sensor noise,
hard edges, saturated highlights, compressed-video blocking and chroma. Assets: scripts/fetch_real_assets.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from real_assets import fetcher, real_assets
from test_preprocess import assert_close_to_pil

from stp_edge.bench.reference import pil_reference
from stp_edge.preprocess import CpuPreprocessor, PreprocessSpec, nv12_to_rgb

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@pytest.fixture(scope="module")
def real_frames() -> dict[str, np.ndarray]:
    """uint8 BGR: scikit-image's photos and frames of three real clips, by name."""
    paths, fa = real_assets(), fetcher()
    frames = {f"photo {n}": img for n, img in fa.photos(paths).items()}
    for clip in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"):
        for i, f in enumerate(fa.video_frames(paths[clip], 2, stride=37)):
            frames[f"{clip} frame {37 * i}"] = f
    return frames


@pytest.mark.parametrize("size", [224, 112])
def test_cpu_twin_matches_pil_on_real_photos_and_frames(real_frames, size: int) -> None:
    names = list(real_frames)
    got = CpuPreprocessor(size)([real_frames[n] for n in names])
    exact = []
    for b, name in enumerate(names):
        ref = pil_reference(np.ascontiguousarray(real_frames[name][..., ::-1]), size)
        assert np.isfinite(got[b]).all() and ref.std() > 0.1, name
        assert_close_to_pil(got[b], ref)
        exact.append(float((got[b] == ref).mean()))
    # PIL's integer arithmetic reproduced: all but rounding-boundary values are bit for bit (module docstring)
    assert min(exact) > 0.999, dict(zip(names, exact, strict=True))


def test_cpu_twin_runs_imagenet_mean_std_on_real_photos(real_frames) -> None:
    photos = [f for n, f in real_frames.items() if n.startswith("photo")]
    got = CpuPreprocessor(224, spec=PreprocessSpec(size=224, **IMAGENET))(photos)
    for b, f in enumerate(photos):
        ref = pil_reference(np.ascontiguousarray(f[..., ::-1]), 224, **IMAGENET)
        assert (np.abs(got[b] - ref) > 1e-5).mean() < 1e-3 and np.abs(got[b] - ref).max() <= 1 / 255 / 0.224 + 1e-5


def test_nv12_path_matches_pil_on_real_decoded_nv12(real_frames) -> None:
    """A real H.264 clip decoded to NV12 (what hardware decoders hand over) through the NV12 path."""
    av = pytest.importorskip("av")
    path = real_assets()["bikes.mp4"]
    with av.open(str(path)) as container:
        nv12 = [f.to_ndarray(format="nv12") for _, f in zip(range(3), container.decode(video=0), strict=False)]
    assert len(nv12) == 3 and nv12[0].shape[0] % 3 == 0
    got = CpuPreprocessor(224).from_nv12(nv12)
    for b, frame in enumerate(nv12):
        assert_close_to_pil(got[b], pil_reference(nv12_to_rgb(frame), 224))


@pytest.mark.gpu
def test_cuda_kernel_equals_pil_bit_for_bit_on_real_images(real_frames) -> None:
    from cuda_driver import cuda_driver_or_skip

    cuda_driver_or_skip()
    from stp_edge.cuda import CudaPreprocessor

    names = list(real_frames)
    with CudaPreprocessor(224, max_batch=len(names)) as pre:
        got = pre.to_host(pre([real_frames[n] for n in names]))
    for b, name in enumerate(names):
        ref = pil_reference(np.ascontiguousarray(real_frames[name][..., ::-1]), 224)
        np.testing.assert_array_equal(got[b], ref, err_msg=name)


def test_fetcher_reads_the_clips_it_pins() -> None:
    fa = fetcher()
    frames = fa.video_frames(real_assets()["carphone_pristine.mp4"], 2, start=5, stride=3)
    assert len(frames) == 2 and frames[0].dtype == np.uint8 and frames[0].ndim == 3
    assert not np.array_equal(frames[0], frames[1])
