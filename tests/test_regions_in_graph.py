"""Region features inside the encoder graph (issue 15, item 3), and bundles exported before that change.

New bundles: encoder.onnx returns frame_emb [B,E] and region_emb [B,R2,E] (patch tokens pooled, or crops cut,
resized and encoded, inside the graph); manifest `region_features: "encoder"`. Older bundles (no such key) return
patch_emb and keep running: the runtime derives region_emb on the host, as it always did. Both must give the same
numbers, and a graph that does not declare what its manifest promises is refused at load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stp_edge.api import Detector
from stp_edge.backends import create_runners
from stp_edge.bundle import Bundle, GraphMismatchError, ManifestError, rewrite_manifest, sha256_file
from stp_edge.pipeline.encode import Encoder, pool_regions

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")


def legacy_twin(bundle: Path, out: Path) -> Path:
    """`bundle` as the exporter wrote it before region features moved into the encoder graph (same weights).

    The old encoder graph was `STPrompt.encode`: images -> frame_emb, patch_emb; its manifest had no
    `region_features` key.
    """
    from stp_edge.export.onnx_export import export_onnx
    from stp_edge.model.graphs import GraphSpec
    from stp_edge.model.sources import ModelSource, build_model

    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    model = build_model(ModelSource.from_manifest(manifest["source"])).eval()
    cfg = model.cfg

    class PatchEncoder(torch.nn.Module):
        def forward(self, images):
            return model.encode(images)

    spec = GraphSpec("encoder", ("images",), ("frame_emb", "patch_emb"),
                     {"images": {0: "B"}, "frame_emb": {0: "B"}, "patch_emb": {0: "B"}})
    s, e, n = cfg.vision.image_size, cfg.vision.embed_dim, cfg.vision.num_patches
    export_onnx(PatchEncoder(), {"images": torch.randn(2, 3, s, s)}, spec, out / "encoder.onnx")
    manifest["graphs"]["encoder"]["outputs"] = {"frame_emb": ["B", e], "patch_emb": ["B", n, e]}
    manifest["files"]["encoder.onnx"] = sha256_file(out / "encoder.onnx")
    del manifest["region_features"]
    rewrite_manifest(out, manifest)
    return out


@pytest.fixture(scope="module")
def tiny_crops_bundle(tmp_path_factory) -> Path:
    from stp_edge.export.bundle_export import export_bundle

    return export_bundle(tmp_path_factory.mktemp("crops") / "tiny-crops.stp", random_config="tiny", seed=4,
                         progress=False, config_overrides={"region_mode": "crops", "region_grid": 3})


@pytest.fixture(scope="module")
def tiny_legacy(exported_tiny_bundle, tmp_path_factory) -> Path:
    return legacy_twin(exported_tiny_bundle, tmp_path_factory.mktemp("legacy") / "tiny-legacy.stp")


def _images(cfg, n: int, seed: int) -> np.ndarray:
    """Gaussian images in CLIP's normalised range (never zeros)."""
    s = cfg.vision.image_size
    return np.random.default_rng(seed).standard_normal((n, 3, s, s)).astype(np.float32)


def _encode(bundle: Path, images: np.ndarray) -> tuple[Bundle, dict, tuple[np.ndarray, np.ndarray]]:
    """(bundle, raw encoder outputs, (frame_emb, region_emb) as the runtime's encode stage returns them)."""
    b = Bundle.load(bundle)
    with create_runners(b, "ort-cpu", graphs=("encoder",))["encoder"] as runner:
        raw = runner.infer({"images": images})
        return b, raw, Encoder(runner, None, b.config).encode_images(images)


def test_manifest_records_where_regions_are_computed(exported_tiny_bundle, tiny_legacy):
    new, old = Bundle.load(exported_tiny_bundle), Bundle.load(tiny_legacy)
    assert new.manifest["region_features"] == new.region_features == "encoder"
    assert "region_features" not in old.manifest and old.region_features == "host"
    assert list(new.manifest["graphs"]["encoder"]["outputs"]) == ["frame_emb", "region_emb"]
    assert "computed in the encoder graph" in new.summary() and "on the host" in old.summary()


def test_exporter_writes_the_host_layout_on_request(exported_tiny_bundle, tiny_legacy, tmp_path):
    """export_bundle(region_features="host") writes what older runtimes read: patch_emb out, no key."""
    from stp_edge.export.bundle_export import export_bundle

    host = export_bundle(tmp_path / "host.stp", random_config="tiny", seed=3, progress=False,
                         region_features="host")
    manifest = json.loads((host / "manifest.json").read_text())
    assert "region_features" not in manifest and Bundle.load(host).region_features == "host"
    assert manifest["graphs"] == json.loads((tiny_legacy / "manifest.json").read_text())["graphs"]
    images = _images(Bundle.load(host).config, 2, seed=23)
    raw = _encode(host, images)[1]
    ref = _encode(tiny_legacy, images)[1]
    for k in ("frame_emb", "patch_emb"):
        np.testing.assert_allclose(raw[k], ref[k], atol=1e-6 * np.abs(ref[k]).max(), rtol=0)
    with pytest.raises(ValueError, match="region_features"):
        export_bundle(tmp_path / "x.stp", random_config="tiny", progress=False, region_features="graph")


def test_encoder_graph_pools_tokens_like_the_host(exported_tiny_bundle, tiny_legacy):
    """The graph's region_emb equals the old NumPy pooling of the old graph's patch_emb (fp32 tolerance)."""
    images = _images(Bundle.load(exported_tiny_bundle).config, 3, seed=21)
    b, raw_new, (fe_new, re_new) = _encode(exported_tiny_bundle, images)
    _, raw_old, (fe_old, re_old) = _encode(tiny_legacy, images)
    cfg = b.config
    assert set(raw_new) == {"frame_emb", "region_emb"} and set(raw_old) == {"frame_emb", "patch_emb"}
    assert re_new.shape == (3, cfg.num_regions, cfg.vision.embed_dim)
    assert re_new.std() > 0.1 and np.abs(re_new[0] - re_new[1]).max() > 1e-2  # real, input-dependent features
    host = pool_regions(raw_old["patch_emb"], cfg.vision.grid, cfg.region_grid)
    scale = np.abs(host).max()
    np.testing.assert_allclose(raw_new["region_emb"], host, atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(re_old, host, atol=0, rtol=0)  # the legacy bundle really pools on the host
    np.testing.assert_allclose(fe_new, fe_old, atol=1e-5 * np.abs(fe_old).max(), rtol=0)


def test_encoder_graph_cuts_crops_like_the_host(tiny_crops_bundle, tmp_path):
    """Crops mode: crops cut, resized and encoded inside the graph equal the host's make_crops + second call."""
    legacy = legacy_twin(tiny_crops_bundle, tmp_path / "crops-legacy.stp")
    images = _images(Bundle.load(tiny_crops_bundle).config, 2, seed=22)
    b, raw_new, (fe_new, re_new) = _encode(tiny_crops_bundle, images)
    _, raw_old, (fe_old, re_old) = _encode(legacy, images)
    assert set(raw_old) == {"frame_emb", "patch_emb"}
    assert set(raw_new) == {"frame_emb", "region_emb"} and re_new.shape == (2, 9, b.config.vision.embed_dim)
    assert np.abs(re_new[:, 0] - re_new[:, 4]).max() > 1e-2  # different crops, different features
    np.testing.assert_allclose(re_new, re_old, atol=1e-5 * np.abs(re_old).max(), rtol=0)
    np.testing.assert_allclose(fe_new, fe_old, atol=1e-5 * np.abs(fe_old).max(), rtol=0)


def _run(bundle: Path, frames: list[np.ndarray]):
    with Detector.load(bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
        results = [r for f in frames for r in det.push(f)] + det.flush()
    return results


def _assert_same_results(new, old, tol: float) -> None:
    assert [(r.snippet, r.frame_start, r.frame_end, r.final) for r in new] == \
        [(r.snippet, r.frame_start, r.frame_end, r.final) for r in old]
    np.testing.assert_allclose([r.score for r in new], [r.score for r in old], atol=tol, rtol=0)
    np.testing.assert_allclose(np.stack([r.class_probs for r in new]), np.stack([r.class_probs for r in old]),
                               atol=tol, rtol=0)
    np.testing.assert_allclose(np.stack([r.region_scores for r in new]), np.stack([r.region_scores for r in old]),
                               atol=tol, rtol=0)


def test_detector_results_unchanged_against_the_host_pooling_bundle(exported_tiny_bundle, tiny_legacy,
                                                                    frames_factory):
    frames = frames_factory(16 * 6 + 5, height=96, width=128, seed=5)
    new, old = _run(exported_tiny_bundle, frames), _run(tiny_legacy, frames)
    assert len(new) == 7 and np.ptp([r.score for r in new]) > 0  # scores vary over the clip
    _assert_same_results(new, old, tol=1e-5)
    assert [[(bx.x1, bx.y1, bx.x2, bx.y2) for bx in r.boxes] for r in new] == \
        [[(bx.x1, bx.y1, bx.x2, bx.y2) for bx in r.boxes] for r in old]


@pytest.mark.parametrize(("new_fixture", "old_fixture"), [("handmade_bundle", "handmade_legacy_bundle"),
                                                          ("handmade_crops_bundle", "handmade_legacy_crops_bundle")])
def test_legacy_handmade_bundles_still_run(new_fixture, old_fixture, request, frames_factory):
    """A bundle from before the change loads and gives the results its in-graph twin gives."""
    new_b, old_b = request.getfixturevalue(new_fixture), request.getfixturevalue(old_fixture)
    assert Bundle.load(old_b).region_features == "host"
    frames = frames_factory(4 * 9 + 2, seed=6)
    new, old = _run(new_b, frames), _run(old_b, frames)
    assert np.ptp([r.score for r in new]) > 0
    _assert_same_results(new, old, tol=1e-5)


def _with_encoder_of(bundle: Path, other: Path, out: Path) -> Path:
    """A copy of `bundle` whose encoder.onnx is `other`'s, resealed (checksums pass, the contract must not)."""
    shutil.copytree(bundle, out)
    shutil.copy(other / "encoder.onnx", out / "encoder.onnx")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["encoder.onnx"] = sha256_file(out / "encoder.onnx")
    rewrite_manifest(out, manifest)
    return out


def test_contract_refuses_an_encoder_without_region_emb(handmade_bundle, handmade_legacy_bundle, tmp_path):
    swapped = _with_encoder_of(handmade_bundle, handmade_legacy_bundle, tmp_path / "swapped.stp")
    with pytest.raises(GraphMismatchError, match=r"encoder.*expected \['frame_emb', 'region_emb'\].*'patch_emb'"):
        Bundle.load(swapped)
    # and the other way round: a legacy manifest promising patch_emb over an encoder returning region_emb
    back = _with_encoder_of(handmade_legacy_bundle, handmade_bundle, tmp_path / "back.stp")
    with pytest.raises(GraphMismatchError, match=r"expected \['frame_emb', 'patch_emb'\]"):
        Bundle.load(back)


def test_contract_refuses_an_encoder_with_frame_emb_only(handmade_bundle, tmp_path):
    import onnx

    out = shutil.copytree(handmade_bundle, tmp_path / "one-output.stp")
    model = onnx.load(str(out / "encoder.onnx"))
    keep = [o for o in model.graph.output if o.name == "frame_emb"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(out / "encoder.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["encoder.onnx"] = sha256_file(out / "encoder.onnx")
    rewrite_manifest(out, manifest)
    with pytest.raises(GraphMismatchError, match=r"outputs: expected \['frame_emb', 'region_emb'\], encoder.onnx "
                                                 r"has \['frame_emb'\]"):
        Bundle.load(out)


def test_manifest_must_agree_with_its_region_features(handmade_bundle, tmp_path):
    out = shutil.copytree(handmade_bundle, tmp_path / "b.stp")
    manifest = json.loads((out / "manifest.json").read_text())
    rewrite_manifest(out, {**manifest, "region_features": "host"})
    with pytest.raises(ManifestError, match="graph 'encoder' outputs: expected \\['frame_emb', 'patch_emb'\\]"):
        Bundle.load(out)
    rewrite_manifest(out, {**manifest, "region_features": "elsewhere"})
    with pytest.raises(ManifestError, match="region_features"):
        Bundle.load(out)


def test_verify_compares_region_emb_of_both_layouts(exported_tiny_bundle, tiny_legacy):
    from stp_edge.export.verify import verify_bundle

    for bundle, note in ((exported_tiny_bundle, False), (tiny_legacy, True)):
        rep = verify_bundle(bundle, seed=13, report=None)
        assert rep.ok, rep.table()
        assert {r.output for r in rep.rows if r.graph == "encoder"} == {"frame_emb", "region_emb"}
        assert any("on the host" in n for n in rep.notes) == note


def test_int8_leaves_the_crop_resize_in_float(tiny_crops_bundle, exported_tiny_bundle):
    """The crops-mode resize matmuls (constant bilinear matrices on the images) are not quantized."""
    import onnx
    from onnx import numpy_helper

    from stp_edge.export.quantize import attention_matmuls, crop_matmuls

    model = onnx.load(str(tiny_crops_bundle / "encoder.onnx"))
    s = Bundle.load(tiny_crops_bundle).config.vision.image_size
    consts = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    crops = crop_matmuls(model)
    assert crops and not set(crops) & set(attention_matmuls(model))
    for node in (n for n in model.graph.node if n.name in crops):  # each multiplies by M [S, side] or M.T
        shapes = [consts[i] for i in node.input if i in consts]
        assert len(shapes) == 1 and len(shapes[0]) == 2 and s in shapes[0] and shapes[0] != (s, s), shapes
    assert len([n for n in model.graph.node if n.op_type == "MatMul"]) > len(crops)  # the encoder's stay
    assert crop_matmuls(onnx.load(str(exported_tiny_bundle / "encoder.onnx"))) == []  # tokens mode: none
