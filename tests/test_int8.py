"""INT8 export: calibration on real (synthetic) videos, the Q/DQ encoder graph, its manifest, ORT CPU and verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stp_edge.errors import UsageError

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")


def _write_clips(root: Path, seeds=(11, 12), num_frames: int = 48) -> Path:
    from stp_edge.synthetic import generate_clip, write_video

    root.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        clip = generate_clip(seed, width=160, height=120, num_frames=num_frames, anomaly="fire")
        write_video(root / f"clip_{seed}.avi", clip.frames, 25.0, (160, 120), "MJPG", num_frames)
    return root


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    return _write_clips(tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, calib_dir) -> Path:
    from stp_edge.export.bundle_export import export_bundle

    return export_bundle(tmp_path_factory.mktemp("int8") / "tiny_int8.stp", random_config="tiny", seed=3,
                         precision="int8", calib=calib_dir, progress=False)


def test_calibration_set_samples_the_runtime_frames_and_fingerprints_them(calib_dir, tmp_path):
    from stp_edge.config import STPromptConfig
    from stp_edge.export.quantize import calibration_set

    cfg = STPromptConfig.named("tiny")
    a = calibration_set(calib_dir, cfg)
    s = cfg.vision.image_size
    # 2 videos x 48 frames = 3 snippets each, one sampled frame per snippet
    assert a.images.shape == (6, 3, s, s) and a.images.dtype == np.float32
    assert np.isfinite(a.images).all() and a.images.std() > 0.1
    assert a.fingerprint["num_frames"] == 6 and a.fingerprint["num_videos"] == 2
    assert calibration_set(calib_dir, cfg).fingerprint == a.fingerprint
    capped = calibration_set(calib_dir, cfg, max_frames=2)
    assert capped.fingerprint["num_frames"] == 2 and capped.fingerprint["sha256"] != a.fingerprint["sha256"]
    other = _write_clips(tmp_path / "other", seeds=(11, 13))
    assert calibration_set(other, cfg).fingerprint["sha256"] != a.fingerprint["sha256"]


def test_calibration_dir_without_videos_is_refused(tmp_path):
    from stp_edge.config import STPromptConfig
    from stp_edge.export.quantize import calibration_set

    (tmp_path / "notes.txt").write_text("no videos here")
    with pytest.raises(FileNotFoundError, match="no video file"):
        calibration_set(tmp_path, STPromptConfig.named("tiny"))


def test_int8_needs_calib_and_calib_needs_int8(tmp_path, calib_dir):
    from stp_edge.export.bundle_export import export_bundle

    with pytest.raises(ValueError, match="calib"):
        export_bundle(tmp_path / "a.stp", random_config="tiny", precision="int8", progress=False)
    with pytest.raises(ValueError, match="calib"):
        export_bundle(tmp_path / "b.stp", random_config="tiny", calib=calib_dir, progress=False)
    assert not list(tmp_path.glob("*.stp"))


def test_int8_manifest_records_precision_and_calibration(int8_bundle, calib_dir):
    from stp_edge.bundle import Bundle
    from stp_edge.config import STPromptConfig
    from stp_edge.export.quantize import calibration_set

    b = Bundle.load(int8_bundle)
    assert b.precision == "int8"
    assert b.manifest["graph_precision"] == {"encoder": "int8", "temporal": "fp32", "spatial": "fp32"}
    q = b.manifest["exporter"]["quantization"]
    assert q["format"] == "QDQ" and q["tensorrt_compatible"] is True
    # the recipe "auto" chose (fast where it holds the tolerance on held-out calibration frames) and its check
    assert q["calibration_method"] == "minmax" and q["weights"] == "int8 symmetric per-channel"
    assert q["recipe"] in ("fast", "faithful") and q["recipe_choice"].startswith("auto: ")
    fast = q["recipe"] == "fast"
    assert (q["smoothing"] is None) == fast and (q["smoothed_matmuls"] > 0) == (not fast)
    assert q["mlp_out_matmuls"] == ("int8" if fast else "float")
    assert set(q["fidelity"]["min_cosine"]) == {"frame_emb", "region_emb"} and q["fidelity"]["threshold"] == 0.99
    assert q["fidelity"]["ok"] == all(c >= 0.99 for c in q["fidelity"]["min_cosine"].values())
    assert q["fidelity"]["on"] == ("held-out calibration frames" if q["calibration"]["num_frames"] >= 8
                                   else "calibration frames")  # a few frames: checked on those it calibrated on
    assert q["calibration"] == calibration_set(calib_dir, STPromptConfig.named("tiny")).fingerprint
    assert not list(int8_bundle.glob("*.fp32.onnx"))  # the intermediate fp32 encoder is not shipped
    assert set(json.loads((int8_bundle / "manifest.json").read_text())["files"]) == {
        "encoder.onnx", "temporal.onnx", "spatial.onnx"}


def test_qdq_graph_is_symmetric_int8_and_keeps_norms_softmax_gelu_residuals_float(int8_bundle):
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(int8_bundle / "encoder.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes: the encoder was not quantized"
    from stp_edge.export.quantize import mlp_out_matmuls

    # the faithful recipe keeps the MLP's second linear (fed by QuickGELU) float: no Q/DQ in front of it
    recipe = json.loads((int8_bundle / "manifest.json").read_text())["exporter"]["quantization"]["recipe"]
    assert (len(mlp_out_matmuls(onnx.load(str(int8_bundle / "encoder.onnx")))) >= 1) == (recipe == "faithful")
    for n in qdq:  # TensorRT explicit quantization: signed int8, zero point 0
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        assert zp is not None and zp.dtype == np.int8 and not zp.any(), n.name
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert any(inits[n.input[1]].size > 1 for n in weight_dq), "weights should be per-channel"
    for n in g.node:
        if n.op_type in ("LayerNormalization", "Softmax", "Sigmoid", "Add"):
            src = [producers.get(i) for i in n.input]
            assert not any(p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in inits
                           for p in src if n.op_type != "Add" or p is not None), (n.op_type, n.name)
    for n in (n for n in g.node if n.op_type == "MatMul"):
        a, b = (producers.get(i) for i in n.input)
        both_activations = all(n.input[k] not in inits and (p is None or p.op_type != "DequantizeLinear"
                                                            or p.input[0] not in inits)
                               for k, p in enumerate((a, b)))
        if both_activations:  # attention products stay float
            assert not any(p is not None and p.op_type == "DequantizeLinear" for p in (a, b)), n.name


def test_int8_bundle_runs_on_ort_cpu_close_to_fp32(int8_bundle, exported_tiny_bundle, frames_factory):
    from stp_edge.api import Detector
    from stp_edge.export.verify import embedding_cosine

    frames = frames_factory(64, height=120, width=160)
    outs = []
    for bundle in (exported_tiny_bundle, int8_bundle):
        with Detector.load(bundle, backend="ort-cpu", preprocess="cpu") as det:
            batch = det.encoder.encode_images(det.preprocess(frames[8::16]))
            scores, _ = det.offline_scores(frames)
        outs.append((batch, scores))
    (fe32, re32), s32 = outs[0]
    (fe8, re8), s8 = outs[1]
    assert np.isfinite(fe8).all() and np.isfinite(s8).all()
    assert embedding_cosine(fe8, fe32) > 0.95 and embedding_cosine(re8, re32) > 0.95
    assert np.abs(s8 - s32).max() < 0.1


def test_verify_reports_int8_cosine_and_score_deltas(int8_bundle):
    from stp_edge.export.verify import TOLERANCES, verify_bundle

    rep = verify_bundle(int8_bundle, seed=5, report=None)
    enc = [r for r in rep.rows if r.graph == "encoder"]
    assert {r.output for r in enc} == {"frame_emb", "region_emb"}
    assert all(r.tolerance == "int8" and r.cosine is not None for r in enc)
    assert all(r.ok == (r.cosine >= TOLERANCES["int8"]) for r in enc)
    heads = [r for r in rep.rows if r.graph in ("temporal", "spatial")]
    assert heads and all(r.tolerance == "fp32" and r.ok for r in heads)
    pipe = {r.output: r for r in rep.rows if r.graph == "pipeline"}
    assert set(pipe) == {"score", "class_probs"} and all(np.isfinite(r.max_abs) for r in pipe.values())
    assert "cos>=0.99" in rep.table()
    low = [r for r in enc if not r.ok]
    assert len([n for n in rep.notes if "INT8 cosine to fp32" in n]) == len(low)


def test_drift_notes_name_the_output_the_cosine_and_the_recipe():
    from stp_edge.export.verify import VerifyRow, int8_drift_notes

    rows = [VerifyRow("encoder", "frame_emb", "ort", "int8", 0.5, 0.1, False, 0.93),
            VerifyRow("encoder", "region_emb", "ort", "int8", 0.1, 0.01, True, 0.995)]
    manifest = {"exporter": {"quantization": {"calibration_method": "minmax", "mlp_out_matmuls": "float"}}}
    (note,) = int8_drift_notes(rows, manifest)
    assert note.startswith("encoder frame_emb on ort: INT8 cosine to fp32 0.9300 < 0.99")
    assert "calibration minmax" in note and "--precision fp16/fp32" in note


@pytest.fixture(scope="module")
def fp32_encoder(tmp_path_factory):
    """The tiny model's fp32 encoder graph and runtime-sampled calibration images of it (12: 3 held out)."""
    from stp_edge.config import STPromptConfig
    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.export.quantize import calibration_set

    b = export_bundle(tmp_path_factory.mktemp("fp32") / "tiny.stp", random_config="tiny", seed=3, progress=False)
    calib = _write_clips(tmp_path_factory.mktemp("calib12"), seeds=(21, 22, 23), num_frames=64)
    return b / "encoder.onnx", calibration_set(calib, STPromptConfig.named("tiny")).images


@pytest.mark.parametrize(("tolerance", "kept"), [(0.5, "fast"), (1.0 + 1e-9, "faithful")])
def test_auto_recipe_keeps_the_fast_one_only_where_it_holds_the_tolerance(fp32_encoder, tmp_path, tolerance,
                                                                          kept):
    import warnings

    from stp_edge.export.quantize import Int8FidelityWarning, quantize_encoder

    fp32, images = fp32_encoder
    assert len(images) >= 8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_encoder(fp32, tmp_path / "enc.onnx", images, tolerance=tolerance)
    said = "auto: fast kept" if kept == "fast" else "auto: fast fell"
    assert q["recipe"] == kept and q["recipe_choice"].startswith(said)
    assert q["fidelity"]["frames"] == int((np.arange(len(images)) % 4 == 3).sum())  # held out, not calibrated on
    drift = [w for w in caught if issubclass(w.category, Int8FidelityWarning)]
    assert bool(drift) == (kept == "faithful")  # only the graph that is kept is warned about (none can pass 1.0+)
    assert (q["mlp_out_matmuls"], q["smoothing"] is None) == (("int8", True) if kept == "fast" else ("float", False))


def test_unknown_recipe_is_refused(fp32_encoder, tmp_path):
    from stp_edge.export.quantize import quantize_encoder

    with pytest.raises(UsageError, match="int8 recipe must be one of"):
        quantize_encoder(fp32_encoder[0], tmp_path / "x.onnx", fp32_encoder[1], recipe="smallest")


def test_calibration_sees_every_view_the_runtime_encoder_gets(calib_dir):
    """A whole-frame bundle's encoder also encodes the R x R windows of the frame: it is calibrated on them too."""
    from stp_edge.config import STPromptConfig
    from stp_edge.export.bundle_export import preprocess_for
    from stp_edge.export.quantize import calibration_set
    from stp_edge.preprocess import CpuPreprocessor

    cfg = STPromptConfig.named("tiny", region_mode="crops", region_grid=3, region_extent="frame")
    spec = preprocess_for(cfg)
    centre = calibration_set(calib_dir, cfg)
    views = calibration_set(calib_dir, cfg, spec=spec)
    assert spec.views == 10 and views.images.shape == (60, *centre.images.shape[1:])
    assert views.fingerprint["num_frames"] == 6 and "10 views each (60 images)" in views.fingerprint["sampling"]
    assert views.fingerprint["sha256"] != centre.fingerprint["sha256"]
    # one sampled frame per call: its 10 images in view order (view 0 the centre crop, 1..9 the windows)
    np.testing.assert_array_equal(views.images[::10], centre.images)
    frame0 = views.images[:10]
    np.testing.assert_array_equal(frame0, CpuPreprocessor(cfg.vision.image_size, spec=spec)._from_valid(
        [_first_sampled_frame(calib_dir, cfg)]))
    assert not np.allclose(frame0[1], frame0[0])


def _first_sampled_frame(calib_dir, cfg):
    from stp_edge.export.quantize import calibration_videos
    from stp_edge.pipeline.snippets import SnippetAssembler
    from stp_edge.video import open_source

    with open_source(calibration_videos(calib_dir)[0]) as src:
        assembler = SnippetAssembler(cfg.snippet_len, cfg.frames_per_snippet)
        for frame in src:
            snippet = assembler.push(frame)
            if snippet is not None:
                return snippet.frames[0]
    raise AssertionError("no snippet")
