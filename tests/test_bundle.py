from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest

from stp_edge.bundle import (
    SCHEMA_VERSION,
    Bundle,
    ChecksumError,
    EngineCompatibilityError,
    EngineInfo,
    GraphMismatchError,
    ManifestError,
    MissingFileError,
    TrtEnvironment,
    UnsafePathError,
    engine_dir_name,
    engine_mismatches,
    manifest_digest,
    manifest_text,
    read_onnx_io,
    rewrite_manifest,
    select_engine,
    sha256_file,
    write_manifest,
)
from stp_edge.bundle.manifest import canonical_json


@pytest.fixture
def bundle_copy(handmade_bundle, tmp_path):
    return shutil.copytree(handmade_bundle, tmp_path / "copy.stp")


def test_load_checks_and_exposes_manifest(handmade_bundle):
    b = Bundle.load(handmade_bundle)
    m = b.manifest
    assert m["schema_version"] == SCHEMA_VERSION
    for key in ("stp_edge_version", "created", "config", "preprocess", "snippet_len", "class_names",
                "spatial_queries", "thresholds", "precision", "opset", "graphs", "files", "engines"):
        assert key in m
    assert m["files"]["encoder.onnx"] == sha256_file(handmade_bundle / "encoder.onnx")
    assert b.config.context == 3 and b.config.class_names == ("normal", "fighting", "fire")
    assert b.graph_path("temporal") == handmade_bundle / "temporal.onnx"
    assert Bundle.load(handmade_bundle / "manifest.json").path == handmade_bundle
    assert "classes       normal, fighting, fire" in b.summary()


def test_edited_file_is_named_with_both_hashes(bundle_copy):
    expected = sha256_file(bundle_copy / "temporal.onnx")
    with open(bundle_copy / "temporal.onnx", "ab") as f:
        f.write(b"\x12\x03abc")  # a valid protobuf field (producer_name again): ORT would still load the graph
    got = sha256_file(bundle_copy / "temporal.onnx")
    with pytest.raises(ChecksumError) as err:
        Bundle.load(bundle_copy)
    msg = str(err.value)
    assert f"temporal.onnx (expected sha256 {expected}, got {got})" in msg
    assert "encoder.onnx" not in msg and "spatial.onnx" not in msg
    Bundle.load(bundle_copy, verify=False)  # explicitly unchecked loading still works


def test_missing_listed_file(bundle_copy):
    (bundle_copy / "spatial.onnx").unlink()
    with pytest.raises(MissingFileError, match=r"missing: \['spatial.onnx'\]"):
        Bundle.load(bundle_copy)


def test_missing_manifest_and_not_a_directory(bundle_copy, tmp_path):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="has no manifest.json"):
        Bundle.load(bundle_copy)
    with pytest.raises(ManifestError, match=r"bundle \S+nothing\.stp not found \(a bundle is a directory"):
        Bundle.load(tmp_path / "nothing.stp")
    (tmp_path / "file.stp").write_text("not a bundle")
    with pytest.raises(ManifestError, match="is not a directory"):
        Bundle.load(tmp_path / "file.stp")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(schema_version=99), "schema_version 99 is not supported; this stp-edge reads"),
    (lambda m: m.update(schema_version="1"), 'schema_version must be an integer, got "1"'),
    (lambda m: m.pop("files"), r"manifest: missing keys \['files'\]"),
    (lambda m: m["graphs"].pop("spatial"), r"manifest.graphs: missing keys \['spatial'\]"),
    (lambda m: m["config"].update(region_grid=5), "invalid config: region_grid=5"),
    (lambda m: m["config"]["vision"].update(patch_size=0), "config.vision.patch_size: 0 is below the minimum 1"),
    (lambda m: m["config"]["vision"].update(patch_size="8"), 'config.vision.patch_size: expected integer, got "8"'),
    (lambda m: m.update(config=[1, 2]), "manifest.config: expected object, got an array"),
    (lambda m: m["thresholds"].update(score=10**30), "thresholds.score: 1000000000000000000000000000000 is "
                                                     "above the maximum 1"),
    (lambda m: m.update(class_names=["normal", "fire"]), r'class_names \["normal", "fire"\] differs from the config'),
    (lambda m: m["graphs"]["spatial"].update(file="other.onnx"),
     "graph 'spatial' file 'other.onnx' is not listed in files"),
    (lambda m: m["graphs"]["temporal"]["outputs"].update(class_probs=["B", "T", 7]),
     r"graph 'temporal' output 'class_probs': expected shape \[B,T,3\], the manifest has \[B,T,7\]"),
])
def test_bad_manifest_contents(bundle_copy, edit, message):
    """Each check on its own: the edit is resealed (new digest), so only the check under test can refuse it."""
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    edit(manifest)
    rewrite_manifest(bundle_copy, manifest)
    with pytest.raises(ManifestError, match=message) as err:
        Bundle.load(bundle_copy)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("edit", [
    lambda m: m["thresholds"].update(score=0.01),
    lambda m: m.update(class_names=[*m["class_names"][:2], "arson"]),
    lambda m: m["config"].update(box_threshold=0.0),
])
def test_any_edit_after_export_is_refused_naming_the_manifest(bundle_copy, edit):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(ManifestError, match=r"manifest.json was edited after export: its manifest_digest is "):
        Bundle.load(bundle_copy)


def test_digest_is_rfc8785_canonical_json():
    """The digest covers RFC 8785 (JCS) bytes, so a C++ port can use any JCS library to check it."""
    value = {"b": [1.5e22, 1e-7, 0.001, 5.0, 123.456, -0.0, 2, True, None], "a": "\u00e9\n", "\u00e9": {}, "A": 1}
    assert canonical_json(value) == '{"A":1,"a":"\u00e9\\n","b":[1.5e+22,1e-7,0.001,5,123.456,0,2,true,null],' \
                                    '"\u00e9":{}}'.encode()
    m = {"x": 1, "manifest_digest": "0" * 64}
    assert manifest_digest(m) == hashlib.sha256(b'{"x":1}').hexdigest()
    assert json.loads(manifest_text(m))["manifest_digest"] == manifest_digest(m)


def test_schema_file_is_the_enforced_schema_and_covers_every_field():
    """docs/manifest.schema.json is MANIFEST_SCHEMA, and the schema names every config/preprocess field."""
    import dataclasses
    from pathlib import Path

    from stp_edge.bundle.schema import MANIFEST_SCHEMA, schema_json
    from stp_edge.config import STPromptConfig, TextConfig, VisionConfig
    from stp_edge.preprocess import PreprocessSpec

    doc = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"
    assert doc.read_text() == schema_json(), "regenerate: python -m stp_edge.bundle.schema > docs/manifest.schema.json"
    defs = MANIFEST_SCHEMA["$defs"]
    for name, cls in (("config", STPromptConfig), ("vision", VisionConfig), ("text", TextConfig),
                      ("preprocess", PreprocessSpec)):
        assert set(defs[name]["properties"]) == {f.name for f in dataclasses.fields(cls)}, name


def _swap_in(bundle, graph: str, donor) -> None:
    """Copy `graph` from `donor` into `bundle` and reseal the manifest so every checksum passes."""
    shutil.copy(donor / f"{graph}.onnx", bundle / f"{graph}.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][f"{graph}.onnx"] = sha256_file(bundle / f"{graph}.onnx")
    rewrite_manifest(bundle, manifest)


def test_graph_of_another_config_fails_at_detector_load(bundle_copy, tmp_path):
    from conftest import handmade_config, write_handmade_bundle

    from stp_edge.api import Detector

    other = write_handmade_bundle(tmp_path / "other.stp", handmade_config(region_grid=4, motion_topk=2))
    _swap_in(bundle_copy, "spatial", other)
    with pytest.raises(GraphMismatchError, match=r"spatial.onnx does not fit this bundle's config: graph 'spatial' "
                                                 r"input 'region_emb': expected shape \[B,4,8\], spatial.onnx has "
                                                 r"\[B,16,8\]"):
        Detector.load(bundle_copy, backend="ort-cpu")


def test_graph_in_the_wrong_slot_is_named(bundle_copy, tmp_path):
    (tmp_path / "donor").mkdir()
    shutil.copy(bundle_copy / "temporal.onnx", tmp_path / "donor" / "spatial.onnx")
    _swap_in(bundle_copy, "spatial", tmp_path / "donor")
    with pytest.raises(GraphMismatchError, match=r"graph 'spatial' inputs: expected \['region_emb'\], spatial.onnx "
                                                 r"has \['frame_emb', 'region_emb'\]"):
        Bundle.load(bundle_copy)


def test_onnx_reader_matches_onnx(handmade_bundle):
    import onnx

    for g in ("encoder", "temporal", "spatial"):
        model = onnx.load(str(handmade_bundle / f"{g}.onnx"))
        io = read_onnx_io(handmade_bundle / f"{g}.onnx")
        for kind, values in (("inputs", model.graph.input), ("outputs", model.graph.output)):
            want = {v.name: (v.type.tensor_type.elem_type,
                             [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values}
            assert io[kind] == want


def test_paths_stay_inside_the_bundle(bundle_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copy(bundle_copy / "spatial.onnx", outside)
    (bundle_copy / "spatial.onnx").unlink()
    (bundle_copy / "spatial.onnx").symlink_to(outside)
    with pytest.raises(UnsafePathError, match=r"spatial.onnx leads outside the bundle"):
        Bundle.load(bundle_copy)
    with pytest.raises(UnsafePathError, match=r"spatial.onnx leads outside the bundle"):
        Bundle.load(bundle_copy, verify=False)
    for bad in ("../spatial.onnx", "/etc/passwd", "C:/x.onnx", "a\\..\\b.onnx", "./spatial.onnx", "a//b"):
        manifest = json.loads((bundle_copy / "manifest.json").read_text())
        manifest["files"][bad] = "0" * 64
        rewrite_manifest(bundle_copy, manifest)
        with pytest.raises(ManifestError, match="does not match"):
            Bundle.load(bundle_copy)


def test_manifest_not_json(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        Bundle.load(bundle_copy)


def _engine(**kw):
    base = dict(dir="engines/nvidia-jetson-agx-orin-fp16", precision="fp16", tensorrt_version="10.3.0.30",
                gpu_name="NVIDIA Jetson AGX Orin", compute_capability="8.7")
    base.update(kw)
    return EngineInfo(**base)


def test_engine_compatibility_pure_functions():
    e = _engine()
    assert engine_mismatches(e, tensorrt_version="10.3.0.30", compute_capability="8.7") == []
    assert engine_mismatches(e, tensorrt_version="10.3.0", compute_capability="8.7") == []  # no build number
    assert engine_mismatches(e, tensorrt_version="10.3.0.26", compute_capability="8.7")  # another build
    why = engine_mismatches(e, tensorrt_version="10.4.0", compute_capability=(8, 7))
    assert why == ["TensorRT version: engine built with 10.3.0.30, runtime is 10.4.0"]
    why = engine_mismatches(e, tensorrt_version="10.3.0", compute_capability="9.0", gpu_name="NVIDIA H100")
    assert why == ["compute capability: engine built for 8.7 (NVIDIA Jetson AGX Orin), GPU has 9.0 (NVIDIA H100)"]
    vc = _engine(build_flags={"version_compatible": True})
    assert engine_mismatches(vc, tensorrt_version="10.8.0", compute_capability="8.7") == []
    assert engine_mismatches(vc, tensorrt_version="11.4.0", compute_capability="8.7") == []  # 10.x plans on 11
    assert "up to itself" in engine_mismatches(vc, tensorrt_version="10.1.0", compute_capability="8.7")[0]
    hw = _engine(build_flags={"hardware_compatibility": "ampere_plus"})
    assert engine_mismatches(hw, tensorrt_version="10.3.0", compute_capability="9.0") == []
    assert "Ampere+" in engine_mismatches(hw, tensorrt_version="10.3.0", compute_capability="7.5")[0]


def test_select_engine_prefers_same_gpu_and_explains_rejections():
    a100 = _engine(dir="engines/a100-fp16", gpu_name="NVIDIA A100-SXM4-40GB", compute_capability="8.0")
    a30 = _engine(dir="engines/a30-fp16", gpu_name="NVIDIA A30", compute_capability="8.0")
    orin = _engine()
    env = dict(tensorrt_version="10.3.0", compute_capability="8.0", gpu_name="NVIDIA A30")
    chosen, reasons = select_engine([orin, a100, a30], **env)
    assert chosen is a30
    assert reasons == ["engines/nvidia-jetson-agx-orin-fp16: compute capability: engine built for 8.7 "
                       "(NVIDIA Jetson AGX Orin), GPU has 8.0 (NVIDIA A30)"]
    chosen, reasons = select_engine([orin, a100], **env, precision="fp32")
    assert chosen is None and len(reasons) == 2
    chosen, reasons = select_engine([], **env)
    assert chosen is None and reasons == ["the bundle has no TensorRT engines"]


def test_write_manifest_with_engines(bundle_copy):
    b = Bundle.load(bundle_copy)
    rel = engine_dir_name("NVIDIA H100 80GB HBM3", "fp16")
    assert rel == "engines/nvidia-h100-80gb-hbm3-fp16"
    (bundle_copy / rel).mkdir(parents=True)
    for g in ("encoder", "temporal", "spatial"):
        (bundle_copy / rel / f"{g}.plan").write_bytes(f"plan of {g}".encode())
    engine = dict(dir=rel, precision="fp16", tensorrt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3",
                  compute_capability="9.0", build_flags={"fp16": True})
    write_manifest(bundle_copy, config=b.config, files=["encoder.onnx", "temporal.onnx", "spatial.onnx"],
                   precision="fp32", opset=17, graphs=b.manifest["graphs"], preprocess=b.manifest["preprocess"],
                   engines=[engine])
    b2 = Bundle.load(bundle_copy)
    assert f"{rel}/encoder.plan" in b2.manifest["files"]  # plans are hashed even when not listed
    env = TrtEnvironment("tensorrt", "10.3.0", "NVIDIA H100 80GB HBM3", "9.0", {})
    assert b2.plan_path(b2.select_engine(env), "spatial") == bundle_copy / rel / "spatial.plan"
    with pytest.raises(EngineCompatibilityError, match=r"no TensorRT engine for NVIDIA A100.*runtime is 10.5.0"):
        b2.select_engine(TrtEnvironment("tensorrt", "10.5.0", "NVIDIA A100", "9.0", {}))
    (bundle_copy / rel / "temporal.plan").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="temporal.plan"):
        Bundle.load(bundle_copy)


def test_write_manifest_refuses_missing_files(bundle_copy):
    b = Bundle.load(bundle_copy)
    with pytest.raises(MissingFileError, match="'extra.bin' does not exist"):
        write_manifest(bundle_copy, config=b.config, files=["encoder.onnx", "extra.bin"], precision="fp32",
                       opset=17, graphs=b.manifest["graphs"], preprocess={})


def test_host_region_layout_is_deprecated_with_its_end_release(handmade_bundle, handmade_legacy_bundle, tmp_path):
    """The "host" layout still loads and writes, each time with a FutureWarning naming the release that ends it."""
    import warnings

    from stp_edge.bundle.contract import HOST_REGIONS_REMOVED_IN

    with pytest.warns(FutureWarning, match=f"deprecated and stp-edge {HOST_REGIONS_REMOVED_IN} will refuse it"):
        old = Bundle.load(handmade_legacy_bundle)
    assert old.region_features == "host" and f"stp-edge {HOST_REGIONS_REMOVED_IN}" in old.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        Bundle.load(handmade_bundle)  # the current layout: no warning
    copy = shutil.copytree(handmade_legacy_bundle, tmp_path / "legacy.stp")
    m = old.manifest
    with pytest.warns(FutureWarning, match="re-export the model"):
        write_manifest(copy, config=old.config, files=list(m["files"]), precision=m["precision"], opset=m["opset"],
                       graphs=m["graphs"], preprocess=m["preprocess"], regions=None)


# --- the manifest's preprocess spec: honoured (mean, std) or refused (the rest) --------------------------------
OTHER_MEAN, OTHER_STD = [0.5, 0.25, 0.75], [0.125, 0.5, 0.3]


def test_declared_normalisation_is_the_one_the_detector_runs(handmade_bundle, bundle_copy, frames_factory):
    from stp_edge.api import Detector
    from stp_edge.preprocess import CpuPreprocessor, PreprocessSpec

    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["preprocess"].update(mean=OTHER_MEAN, std=OTHER_STD)
    rewrite_manifest(bundle_copy, m)
    spec = Bundle.load(bundle_copy).preprocess_spec
    assert spec == PreprocessSpec(size=32, mean=tuple(OTHER_MEAN), std=tuple(OTHER_STD))
    frames = frames_factory(12, height=40, width=56, seed=2)
    results = {}
    for name, path in (("clip", handmade_bundle), ("other", bundle_copy)):
        with Detector.load(path, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
            assert det._preprocess.spec == Bundle.load(path).preprocess_spec
            results[name] = [r.score for f in frames for r in det.push(f)] + [r.score for r in det.flush()]
    with Detector.load(bundle_copy, backend="ort-cpu", preprocess="cpu") as det:
        np.testing.assert_array_equal(det._preprocess(frames[:2]), CpuPreprocessor(32, spec=spec)(frames[:2]))
    assert len(results["clip"]) == len(results["other"]) == 3 and results["clip"] != results["other"]
    with pytest.raises(ValueError, match="the preprocessor given runs .* the bundle expects"):
        Detector.load(bundle_copy, backend="ort-cpu", preprocess=CpuPreprocessor(32))  # CLIP's numbers


@pytest.mark.parametrize(("field", "value", "message"), [
    ("interpolation", "bilinear", "preprocess.interpolation 'bilinear' is not implemented (this runtime "
                                  "implements 'bicubic-antialias-pil')"),
    ("crop", "none", "preprocess.crop 'none' is not implemented (this runtime implements 'center')"),
    ("size", 64, "preprocess.size 64 differs from config.vision.image_size 32"),
])
def test_preprocessing_the_runtime_does_not_run_is_refused_at_load(bundle_copy, field, value, message):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["preprocess"][field] = value
    rewrite_manifest(bundle_copy, m)
    with pytest.raises(ManifestError, match=re.escape(message)):
        Bundle.load(bundle_copy)
    with pytest.raises(ManifestError, match=re.escape(message)):  # and export cannot write one
        write_manifest(bundle_copy, config=_config(m), files=list(m["files"]),
                       precision="fp32", opset=17, graphs=m["graphs"], preprocess=m["preprocess"])


def _config(manifest):
    from stp_edge.config import STPromptConfig

    return STPromptConfig.from_dict(manifest["config"])
