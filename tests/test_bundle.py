from __future__ import annotations

import json
import shutil

import pytest

from stp_edge.bundle import (
    SCHEMA_VERSION,
    Bundle,
    ChecksumError,
    EngineCompatibilityError,
    EngineInfo,
    ManifestError,
    MissingFileError,
    engine_dir_name,
    engine_mismatches,
    select_engine,
    sha256_file,
    write_manifest,
)


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
        f.write(b"\0")
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
    with pytest.raises(ManifestError, match="is not a directory"):
        Bundle.load(tmp_path / "nothing.stp")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(schema_version=99), "schema_version 99 is not supported; this stp-edge reads"),
    (lambda m: m.update(schema_version="1"), "schema_version must be an integer, got '1'"),
    (lambda m: m.pop("files"), r"missing keys \['files'\]"),
    (lambda m: m["graphs"].pop("spatial"), r"graphs \['spatial'\] are not described"),
    (lambda m: m["config"].update(region_grid=5), "invalid config: region_grid=5"),
])
def test_bad_manifest_contents(bundle_copy, edit, message):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message):
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
    assert engine_mismatches(e, tensorrt_version="10.3.0.26", compute_capability="8.7") == []
    why = engine_mismatches(e, tensorrt_version="10.4.0", compute_capability=(8, 7))
    assert why == ["TensorRT version: engine built with 10.3.0.30, runtime is 10.4.0"]
    why = engine_mismatches(e, tensorrt_version="10.3.0", compute_capability="9.0", gpu_name="NVIDIA H100")
    assert why == ["compute capability: engine built for 8.7 (NVIDIA Jetson AGX Orin), GPU has 9.0 (NVIDIA H100)"]
    vc = _engine(build_flags={"version_compatible": True})
    assert engine_mismatches(vc, tensorrt_version="10.8.0", compute_capability="8.7") == []
    assert "same major" in engine_mismatches(vc, tensorrt_version="11.4.0", compute_capability="8.7")[0]
    assert "not older" in engine_mismatches(vc, tensorrt_version="10.1.0", compute_capability="8.7")[0]
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
    env = dict(tensorrt_version="10.3.0", compute_capability="9.0", gpu_name="NVIDIA H100 80GB HBM3")
    assert b2.plan_path(b2.select_engine(**env), "spatial") == bundle_copy / rel / "spatial.plan"
    with pytest.raises(EngineCompatibilityError, match=r"no TensorRT engine for NVIDIA A100.*runtime is 10.5.0"):
        b2.select_engine(tensorrt_version="10.5.0", compute_capability="9.0", gpu_name="NVIDIA A100")
    (bundle_copy / rel / "temporal.plan").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="temporal.plan"):
        Bundle.load(bundle_copy)


def test_write_manifest_refuses_missing_files(bundle_copy):
    b = Bundle.load(bundle_copy)
    with pytest.raises(MissingFileError, match="'extra.bin' does not exist"):
        write_manifest(bundle_copy, config=b.config, files=["encoder.onnx", "extra.bin"], precision="fp32",
                       opset=17, graphs=b.manifest["graphs"], preprocess={})
