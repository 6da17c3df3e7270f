"""Region crops that tile the whole frame (issue 28, item 7): region extent "frame".

The R x R region crops are windows of the whole frame (`stp_edge.geometry.frame_windows`), each resized to SxS with
the golden resize, made by the preprocessors as views after the frame views; maps and boxes are laid on the frame.
The reference resize is written out here with PIL (`Image.resize(..., box=...)`, one axis at a time, the order of
Pillow's Resample.c), not taken from `stp_edge.preprocess`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from stp_edge.bundle.preprocessing import PreprocessSpec, analysed_boxes, describe_coverage, region_roi
from stp_edge.config import STPromptConfig, pretrained_overrides
from stp_edge.errors import UsageError
from stp_edge.geometry import crop_square_pixels, frame_windows, window_offsets
from stp_edge.pipeline.boxes import boxes_from_map, region_cells
from stp_edge.preprocess import CLIP_MEAN, CLIP_STD, CpuPreprocessor, CropResizePlan

ONE_LEVEL = 1.0 / 255 / min(CLIP_STD) + 1e-5  # the twin's float32 taps may round one grey level the other way


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 128 + 90 * np.sin(x[..., None] / 11.0 + rng.uniform(0, 6, 3)) * np.cos(y[..., None] / 23.0)
    return np.clip(img + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def _normalise(a: np.ndarray) -> np.ndarray:
    std = np.asarray(CLIP_STD, np.float32)[:, None, None]
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    bias = -np.asarray(CLIP_MEAN, np.float32)[:, None, None] / std
    return a.transpose(2, 0, 1).astype(np.float32) * scale + bias


def pil_window(rgb: np.ndarray, size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """The window `box` of an RGB image resized to size x size by PIL: horizontal pass, then vertical."""
    from PIL import Image

    x0, y0, x1, y1 = (int(v) for v in box)
    h = rgb.shape[0]
    wide = Image.fromarray(rgb).resize((size, h), Image.BICUBIC, box=(x0, 0, x1, h))
    return _normalise(np.asarray(wide.resize((size, size), Image.BICUBIC, box=(0, y0, size, y1))))


def _check(got: np.ndarray, ref: np.ndarray) -> None:
    assert np.isfinite(got).all()
    diff = np.abs(got - ref)
    assert diff.max() <= ONE_LEVEL, f"max diff {diff.max()}"
    assert (diff > 1e-6).mean() < 0.002, "more than a handful of pixels differ from PIL"


# --- the windows -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("h", "w"), [(1080, 1920), (576, 768), (240, 320), (720, 405), (97, 131), (10, 10)])
@pytest.mark.parametrize("R", [1, 2, 3, 7])
def test_windows_tile_the_whole_frame(h: int, w: int, R: int) -> None:
    boxes = frame_windows((h, w), R)
    assert boxes.shape == (R * R, 4)
    assert boxes[:, 0].min() == 0 and boxes[:, 1].min() == 0 and boxes[:, 2].max() == w and boxes[:, 3].max() == h
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all()
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    assert covered.all(), "a pixel of the frame lies in no region crop"
    assert (boxes[:R, 0] == np.sort(boxes[:R, 0])).all() and boxes[0, 0] == 0  # row-major, left to right


def test_windows_of_1080p_are_the_paper_layout_on_the_frame() -> None:
    # 3x3 crops of side 2L/(R+1) and stride L/(R+1) on each axis: 960x540 windows at x 0/480/960, y 0/270/540.
    assert frame_windows((1080, 1920), 3)[[0, 1, 2, 3, 8]].tolist() == [
        [0, 0, 960, 540], [480, 0, 1440, 540], [960, 0, 1920, 540], [0, 270, 960, 810], [960, 540, 1920, 1080]]
    assert window_offsets(224, 3) == (112, [0, 56, 112])  # the centre crop's own 3x3 layout, on a 224 axis


# --- the preprocessors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("h", "w"), [(90, 160), (96, 128), (128, 72), (61, 203)])
@pytest.mark.parametrize("policy", ["center", "tiles"])
def test_cpu_region_views_match_pil(h: int, w: int, policy: str) -> None:
    size, R = 48, 3
    frames = [_noise(h, w, s) for s in (1, 2)]
    spec = PreprocessSpec(size=size, frame_policy=policy, region_grid=R)
    pre = CpuPreprocessor(size, spec=spec)
    out = pre(frames)
    frame_views = {"center": 1, "tiles": 3}[policy]
    assert pre.views == spec.views == frame_views + R * R and out.shape == (pre.views * 2, 3, size, size)
    plain = CpuPreprocessor(size, spec=dataclasses.replace(spec, region_grid=0))(frames)
    np.testing.assert_array_equal(out[:frame_views * 2], plain)  # the frame views are unchanged, first
    for r, box in enumerate(frame_windows((h, w), R)):
        for b, bgr in enumerate(frames):
            _check(out[(frame_views + r) * 2 + b], pil_window(np.ascontiguousarray(bgr[..., ::-1]), size, box))


def test_1080p_region_views_are_pils_box_resize() -> None:
    """Every axis shrinks: PIL's one-call `resize(box=...)` (what a user would write) is the reference."""
    from PIL import Image

    rgb = _noise(1080, 1920, 7)
    out = CpuPreprocessor(224, spec=PreprocessSpec(region_grid=3))(np.ascontiguousarray(rgb[..., ::-1]))
    for r in (0, 2, 6, 8):  # the four corner crops: the frame's edges
        box = tuple(float(v) for v in frame_windows((1080, 1920), 3)[r])
        _check(out[1 + r], _normalise(np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BICUBIC, box=box))))


def test_a_mark_at_the_left_edge_is_seen_by_the_left_crops_only() -> None:
    """A bright bar in the 22% of a 16:9 frame the centre crop drops is in region crops 0, 3, 6 and nowhere else."""
    frame = np.full((180, 320, 3), 60, np.uint8)
    frame[:, :30] = 250  # the left 30 px; the centre crop starts at x = 70
    out = CpuPreprocessor(48, spec=PreprocessSpec(size=48, region_grid=3))(frame)
    grey = _normalise(np.full((1, 1, 3), 60, np.uint8))[:, 0, 0]
    bright = [r for r in range(9) if np.abs(out[1 + r] - grey[:, None, None]).max() > 0.5]
    assert bright == [0, 3, 6]
    assert np.abs(out[0] - grey[:, None, None]).max() < 1e-5, "the centre crop must not see the bar"


def test_region_window_plans_read_the_frame_edges() -> None:
    plans = CropResizePlan.views(1080, 1920, PreprocessSpec(region_grid=3))
    assert len(plans) == 10 and plans[1].cols.first == 0 and plans[3].cols.last == 1920
    assert plans[9].rows.last == 1080 and plans[1].rows.first == 0
    assert plans[0].cols.first > 0, "the centre crop does not read the sides"


def test_windows_outside_the_frame_are_refused() -> None:
    with pytest.raises(UsageError, match="not inside the 160x90 image"):
        CropResizePlan.window(90, 160, 48, (100, 0, 161, 45))
    with pytest.raises(UsageError, match="not inside the 160x90 image"):
        CropResizePlan.window(90, 160, 48, (10, 20, 10, 45))
    from stp_edge.preprocess import filter_weights

    with pytest.raises(UsageError, match="not a non-empty span"):
        filter_weights(90, 48, (20, 20))


def test_spec_round_trip_and_limits() -> None:
    spec = PreprocessSpec(region_grid=3)
    assert spec.to_dict()["region_grid"] == 3 and PreprocessSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in PreprocessSpec().to_dict().items() if k != "region_grid"}
    assert PreprocessSpec.from_dict(old).region_grid == 0 and PreprocessSpec.from_dict(old).region_extent == "center"
    assert spec.region_extent == "frame" and spec.frame_views == 1
    assert any("region_grid" in p for p in PreprocessSpec(region_grid=40).unsupported())


# --- maps and boxes on the frame ----------------------------------------------------------------------------------
def _left_edge_map() -> np.ndarray:
    amap = np.full((3, 3), 0.1, np.float32)
    amap[1, 0] = 0.9  # the middle-left region
    return amap


@pytest.mark.parametrize("rule", ["components", "best_window"])
def test_a_left_cell_gives_a_box_at_the_frames_left_edge(rule: str) -> None:
    spec = PreprocessSpec(region_grid=3)
    box = boxes_from_map(_left_edge_map(), (1080, 1920), 224, threshold=0.5, class_id=1, mode="crops",
                         rule=rule, spec=spec)[0]
    assert (box.x1, box.y1, box.x2, box.y2) == (0.0, 270.0, 960.0, 810.0)
    centre = boxes_from_map(_left_edge_map(), (1080, 1920), 224, threshold=0.5, class_id=1, mode="crops", rule=rule,
                            spec=PreprocessSpec())[0]
    assert centre.x1 == 420.0, "region extent center: the left cell lies at the centre square's left edge"


def test_region_cells_follow_the_centre_view() -> None:
    """Centre extent: the view's geometry (VadCLIP's fixed resize, its mirror) places the cells."""
    clip = region_cells(3, 224, (576, 768), "crops", PreprocessSpec())
    np.testing.assert_allclose(clip[0], [96, 0, 96 + 288, 288])  # crop window 0 of the 576-px centre square
    vad = PreprocessSpec.preset("vadclip")
    area = analysed_boxes(vad, (240, 320))["regions"][0]
    cells = region_cells(7, 224, (240, 320), "tokens", vad)
    assert cells[:, 0].min() == pytest.approx(area[0]) and cells[:, 2].max() == pytest.approx(area[2])
    mirrored = region_cells(7, 224, (240, 320), "tokens", dataclasses.replace(vad, mirror=True))
    assert mirrored[0, 2] == pytest.approx(area[2]), "a mirrored view's first column is the frame's right side"
    with pytest.raises(UsageError, match="3x3 region crops"):
        region_cells(7, 224, (240, 320), "crops", PreprocessSpec(region_grid=3))


def test_coverage_says_the_whole_frame_and_the_overlay_marks_it() -> None:
    spec = PreprocessSpec(region_grid=3)
    text = describe_coverage(spec, (1080, 1920))
    assert "regions, maps and boxes: the whole 1920x1080 frame (100%" in text and "centre crop (56%" in text
    assert "the whole frame (100%" in describe_coverage(spec)
    assert region_roi(spec, (576, 768)) == (0, 0, 768, 576)
    assert region_roi(PreprocessSpec(), (576, 768)) == crop_square_pixels((576, 768))


# --- config and defaults -----------------------------------------------------------------------------------------
def test_config_region_extent() -> None:
    assert STPromptConfig().region_extent == "center"  # configs and manifests without the field
    with pytest.raises(UsageError, match="needs region_mode 'crops'"):
        STPromptConfig(region_extent="frame")
    with pytest.raises(UsageError, match="region_extent must be one of"):
        STPromptConfig(region_mode="crops", region_extent="left")
    over = pretrained_overrides("vit-b-16", None)
    assert over["region_mode"] == "crops" and over["region_extent"] == "frame"
    assert pretrained_overrides("vit-b-16", {"region_extent": "center"})["region_extent"] == "center"
    assert "region_extent" not in pretrained_overrides("tiny", None)


# --- bundles -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from stp_edge.export.bundle_export import export_bundle

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the whole-frame host layout is not deprecated
        return export_bundle(tmp_path_factory.mktemp("frame") / "tiny-frame.stp", random_config="tiny", seed=4,
                             progress=False, region_extent="frame",
                             config_overrides={"region_mode": "crops", "region_grid": 3})


def test_frame_bundle_manifest(frame_bundle: Path) -> None:
    from stp_edge.bundle import Bundle

    m = json.loads((frame_bundle / "manifest.json").read_text())
    assert m["region_features"] == "host" and m["config"]["region_extent"] == "frame"
    assert m["preprocess"]["region_grid"] == 3 and list(m["graphs"]["encoder"]["outputs"]) == ["frame_emb", "patch_emb"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        b = Bundle.load(frame_bundle)
    assert not b.host_crops and b.preprocess_spec.views == 10
    assert "whole frame" in b.summary() and "region extent frame" in b.summary()


def test_manifest_contradictions_are_refused(frame_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from stp_edge.bundle import Bundle, ManifestError, rewrite_manifest

    for key, value, message in (("preprocess", 0, "preprocess.region_grid 0 differs from the config's 3"),
                                ("region_features", "encoder", "needs region_features 'host'")):
        out = tmp_path / f"{key}.stp"
        shutil.copytree(frame_bundle, out)
        m = json.loads((out / "manifest.json").read_text())
        if key == "preprocess":
            m["preprocess"]["region_grid"] = value
        else:
            m[key] = value
        rewrite_manifest(out, m)
        with pytest.raises(ManifestError, match=message):
            Bundle.load(out)


def test_detector_regions_are_the_whole_frame_crops(frame_bundle: Path) -> None:
    """The runtime's region features are the encoder's embeddings of PIL-made crops of the whole frame."""
    from stp_edge.api import Detector
    from stp_edge.backends import create_runners
    from stp_edge.bundle import Bundle

    b = Bundle.load(frame_bundle)
    frames = [_noise(90, 160, s) for s in (11, 12)]
    with Detector.load(b, backend="ort-cpu", preprocess="cpu") as det:
        batch = det.encoder([_snippet(f, i) for i, f in enumerate(frames)])
    s = b.config.vision.image_size
    crops = np.stack([pil_window(np.ascontiguousarray(f[..., ::-1]), s, box)
                      for f in frames for box in frame_windows((90, 160), 3)])
    centre = CpuPreprocessor(s)(frames)
    with create_runners(b, "ort-cpu", graphs=("encoder",))["encoder"] as runner:
        ref_regions = runner.infer({"images": crops})["frame_emb"].reshape(2, 9, -1)
        ref_frame = runner.infer({"images": centre})["frame_emb"]
    np.testing.assert_allclose(batch.region_emb, ref_regions, atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(batch.frame_emb, ref_frame, atol=1e-4, rtol=1e-4)
    assert np.abs(batch.region_emb[:, 0] - batch.region_emb[:, 2]).max() > 1e-3, "left and right crops differ"


def _snippet(frame: np.ndarray, index: int):
    from stp_edge.pipeline.snippets import Snippet

    return Snippet(stream=0, index=index, frame_start=16 * index, frame_end=16 * index + 16, frames=(frame,),
                   frame_shape=frame.shape[:2])


def test_run_boxes_reach_the_frame_edge(frame_bundle: Path) -> None:
    """Whole pipeline on a wide frame: every box lies in the frame, and the map's cells are the frame's windows."""
    from stp_edge.api import Detector

    frames = [_noise(90, 160, s) for s in range(48)]
    with Detector.load(frame_bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
        results = [r for f in frames for r in det.push(f)] + list(det.flush())
    assert results and all(r.anomaly_map is not None and r.anomaly_map.shape == (3, 3) for r in results)
    xs = [(bx.x1, bx.x2) for r in results for bx in r.boxes]
    assert xs and all(0.0 <= a < b <= 160.0 for a, b in xs)
    assert any(a == 0.0 or b == 160.0 for a, b in xs), "boxes come from the whole frame's crops, edges included"


def test_custom_callable_without_spec_is_refused(frame_bundle: Path) -> None:
    from stp_edge.bundle import Bundle
    from stp_edge.pipeline.encode import make_preprocess

    spec = Bundle.load(frame_bundle).preprocess_spec
    with pytest.raises(UsageError, match="crops of the whole frame"):
        make_preprocess(lambda frames: frames, spec.size, backend="ort-cpu", spec=spec)


def test_export_refuses_what_cannot_hold(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from stp_edge.export.bundle_export import export_region_extent, region_layout

    with pytest.raises(UsageError, match="needs region_features 'host'"):
        region_layout("frame", "encoder")
    assert region_layout("frame", None) == "host" and region_layout("center", None) == "encoder"
    with pytest.raises(UsageError, match="region_mode is 'tokens'"):
        export_region_extent(STPromptConfig(), "frame", trained=False)
    trained = STPromptConfig(region_mode="crops", region_grid=3)
    with pytest.raises(UsageError, match="region term read region features"):
        export_region_extent(trained, "frame", trained=True)
    frame_only = dataclasses.replace(trained, region_term=False)
    assert export_region_extent(frame_only, "frame", trained=True) == "frame"


# --- training applies export's defaults -----------------------------------------------------------------------------
def test_train_applies_the_pretrained_default_and_queries(monkeypatch) -> None:
    """`train --config vit-b-16 --clip-weights` builds what export builds (crops of the whole frame), and `--queries`
    sets a new model's spatial queries (the model class is replaced by a recorder: no ViT-B/16 is built)."""
    pytest.importorskip("torch")
    import stp_edge.model.stprompt as stprompt
    import stp_edge.model.weights as weights
    from stp_edge.model import train

    class Recorder:
        def __init__(self, cfg):
            self.cfg = cfg

    monkeypatch.setattr(stprompt, "STPrompt", Recorder)
    monkeypatch.setattr(weights, "load_clip_into", lambda model, path: None)
    queries = {"normal_queries": ("a picture of a shop",)}
    cfg = train._model(None, "vit-b-16", None, "ViT-B-16.pt", queries).cfg
    assert (cfg.region_mode, cfg.region_grid, cfg.region_extent) == ("crops", 3, "frame")
    assert cfg.normal_queries == ("a picture of a shop",)
    assert train._model(None, "vit-b-16", None, None).cfg.region_mode == "tokens"  # random weights: the preset
    with pytest.raises(UsageError, match="keeps its spatial queries"):
        train.train_from_features("feats", "out", init="ckpt", queries=queries)


def test_cli_options() -> None:
    from stp_edge.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["export", "--random", "-o", "x.stp", "--frame-policy", "tiles", "--region-extent",
                              "frame"])
    assert (args.frame_policy, args.region_extent) == ("tiles", "frame")
    assert parser.parse_args(["train", "feats", "-o", "ckpt", "--queries", "q.json"]).queries == Path("q.json")


def test_verify_checks_the_whole_frame_bundle(frame_bundle: Path) -> None:
    """`verify` compares the per-image encoder (frame_emb, and regions of crops cut as the torch graph cuts them)."""
    from stp_edge.export.verify import verify_bundle

    report = verify_bundle(frame_bundle, seed=3, report=None)
    assert report.ok and {(r.graph, r.output) for r in report.rows} >= {("encoder", "frame_emb"),
                                                                        ("encoder", "region_emb")}


def test_tensorrt_profile_holds_a_batch_of_whole_frame_crops() -> None:
    from stp_edge.bundle.engines import default_profiles

    frame = STPromptConfig(region_mode="crops", region_grid=3, region_extent="frame")
    assert default_profiles(frame, max_batch=4, regions="host")["encoder"]["images"][2][0] == 4 * (1 + 9)
    centre = STPromptConfig(region_mode="crops", region_grid=3)
    assert default_profiles(centre, max_batch=4, regions="host")["encoder"]["images"][2][0] == 4 * 9


@pytest.mark.parametrize(("spec", "roi"), [(PreprocessSpec(region_grid=3), (0, 0, 320, 180)),
                                           (PreprocessSpec(), (70, 0, 250, 180))])
def test_overlay_marks_the_part_the_regions_come_from(tmp_path: Path, spec: PreprocessSpec, roi) -> None:
    from stp_edge.run import OverlaySink

    sink = OverlaySink(tmp_path / "o.avi", fps=25.0, threshold=0.5, spec=spec)
    sink.add_frame(0, _noise(180, 320, 1))
    try:
        assert sink.writer.map_roi == roi
    finally:
        sink.writer.abort()


def test_info_and_run_say_the_regions_cover_the_whole_frame(frame_bundle: Path, tmp_path: Path, capsys) -> None:
    from conftest import moving_frames, write_avi

    from stp_edge.cli import main

    assert main(["info", str(frame_bundle)]) == 0
    out = capsys.readouterr().out
    assert "coverage      frame analysed: regions, maps and boxes: the whole frame (100%, 3x3 overlapping crops)" in out
    video = write_avi(tmp_path / "v.avi", moving_frames(20, height=48, width=64))
    overlay = tmp_path / "o.avi"
    assert main(["run", str(frame_bundle), str(video), "--backend", "ort-cpu", "--overlay", str(overlay)]) == 0
    out = capsys.readouterr().out
    assert "stream 0: frame analysed: regions, maps and boxes: the whole 64x48 frame (100%" in out
    assert overlay.is_file()


def test_triton_repository_sizes_the_encoder_for_every_view(frame_bundle: Path, tmp_path: Path) -> None:
    from stp_edge.bundle import Bundle
    from stp_edge.scale.triton_repo import encoder_images_per_snippet, parse_config, write_triton_repository

    bundle = Bundle.load(frame_bundle)
    assert encoder_images_per_snippet(bundle) == 10  # the centre view and the 3x3 windows of the whole frame
    repo = write_triton_repository(bundle, tmp_path / "repo", max_batch=4)
    sizes = {g: parse_config((repo / g / "config.pbtxt").read_text())["max_batch_size"]
             for g in ("encoder", "temporal", "spatial")}
    assert sizes == {"encoder": 40, "temporal": 4, "spatial": 4}


def test_torch_runner_rebuilds_the_bundles_own_encoder_layout(frame_bundle: Path) -> None:
    """The torch reference of a whole-frame bundle returns patch_emb like its ONNX encoder, and the same numbers."""
    import onnxruntime as ort

    from stp_edge.backends.torch import TorchRunner
    from stp_edge.bundle import Bundle

    bundle = Bundle.load(frame_bundle)
    runner = TorchRunner.from_bundle(bundle, "encoder")
    s = bundle.config.vision.image_size
    images = np.random.default_rng(0).standard_normal((3, 3, s, s)).astype(np.float32)
    with runner:
        assert runner.output_names() == ["frame_emb", "patch_emb"]
        got = runner.infer({"images": images})
    sess = ort.InferenceSession(str(bundle.graph_path("encoder")), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": images}), strict=True))
    for name in ("frame_emb", "patch_emb"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-4)
