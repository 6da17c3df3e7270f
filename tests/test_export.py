"""Export to a bundle, parity with torch (our verify and polygraphy as an independent tool), atomic writes."""

import json
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stp_edge.bundle import Bundle, ChecksumError
from stp_edge.bundle.manifest import rewrite_manifest
from stp_edge.export import bundle_export
from stp_edge.export.bundle_export import export_bundle
from stp_edge.export.verify import verify_bundle
from stp_edge.model.graphs import build_graphs, random_inputs
from stp_edge.model.sources import ModelSource, build_model


@pytest.fixture(scope="module")
def tiny_fp32(exported_tiny_bundle):
    return exported_tiny_bundle


@pytest.fixture(scope="module")
def tiny_fp16(tmp_path_factory):
    return export_bundle(tmp_path_factory.mktemp("b") / "tiny16.stp", random_config="tiny", seed=3,
                         precision="fp16", progress=False)


def test_bundle_layout_and_manifest(tiny_fp32):
    names = sorted(p.name for p in tiny_fp32.iterdir())
    assert names == ["encoder.onnx", "manifest.json", "spatial.onnx", "temporal.onnx"]
    m = json.loads((tiny_fp32 / "manifest.json").read_text())
    assert m["source"]["kind"] == "random" and m["source"]["seed"] == 3
    assert set(m["files"]) == {"encoder.onnx", "temporal.onnx", "spatial.onnx"}
    assert list(m["graphs"]["temporal"]["outputs"]) == ["score", "class_probs"]
    assert m["preprocess"]["size"] == 112
    import onnx

    enc = onnx.load(str(tiny_fp32 / "encoder.onnx"))
    dims = [d.dim_param or d.dim_value for d in enc.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["B", 3, 112, 112]


@pytest.mark.parametrize("which", ["tiny_fp32", "tiny_fp16"])
def test_verify_tiny_passes(which, request):
    bundle = request.getfixturevalue(which)
    lines = []
    report = verify_bundle(bundle, seed=11, report=lines.append)
    assert report.ok, "\n".join(lines)
    assert {(r.graph, r.output) for r in report.rows} == {
        ("encoder", "frame_emb"), ("encoder", "region_emb"), ("temporal", "score"),
        ("temporal", "class_probs"), ("spatial", "region_scores")}
    worst = max(r.rel for r in report.rows)
    assert worst < (1e-4 if which == "tiny_fp32" else 1e-2)
    if which == "tiny_fp16":
        assert worst > 1e-6  # the fp16 graphs really compute in half precision
    # Each graph is held to the tolerance of its recorded precision: fp16 bundles keep fp32 heads.
    want = {"encoder": "fp16" if which == "tiny_fp16" else "fp32", "temporal": "fp32", "spatial": "fp32"}
    assert {r.graph: r.tolerance for r in report.rows} == want


def test_verify_never_opens_a_path_named_by_the_bundle(tiny_fp32, tmp_path):
    """A bundle naming a checkpoint path must not make verify load it; the caller names checkpoints."""
    bundle = tmp_path / "b.stp"
    shutil.copytree(tiny_fp32, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    for source in ({"kind": "checkpoint", "checkpoint": str(tmp_path / "planted")},
                   {**m["source"], "clip_weights": str(tmp_path / "planted.pt")}):
        rewrite_manifest(bundle, {**m, "source": source})
        with pytest.raises(ValueError, match="does not open paths named inside a bundle"):
            verify_bundle(bundle, report=None)


def test_demo_model_with_conv_stem_exports_and_verifies(tmp_path):
    """The committed demo checkpoint (tiny ViT with a BatchNorm conv stem) through the real exporter."""
    bundle = export_bundle(tmp_path / "demo.stp", demo=True, progress=False)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["source"]["kind"] == "demo"
    assert m["config"]["vision"]["stem"] == "conv"
    lines = []
    report = verify_bundle(bundle, seed=5, report=lines.append)
    assert report.ok, "\n".join(lines)
    assert max(r.rel for r in report.rows) < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_local_patch_attention_exports_and_verifies(tmp_path, precision):
    """vision.patch_attention=0 (an additive -inf mask in every attention layer) through the real exporter."""
    from stp_edge.config import STPromptConfig

    vision = asdict(replace(STPromptConfig.named("tiny").vision, patch_attention=0))  # JSON-able: in the manifest
    bundle = export_bundle(tmp_path / "local.stp", random_config="tiny", seed=2, precision=precision,
                           config_overrides={"vision": vision}, progress=False)
    assert json.loads((bundle / "manifest.json").read_text())["config"]["vision"]["patch_attention"] == 0
    lines = []
    report = verify_bundle(bundle, seed=1, report=lines.append)
    assert report.ok, "\n".join(lines)
    assert max(r.rel for r in report.rows) < (1e-4 if precision == "fp32" else 1e-2)


def test_verify_fails_on_a_different_model(tiny_fp32, tmp_path):
    other = export_bundle(tmp_path / "other.stp", random_config="tiny", seed=4, progress=False)
    manifest = json.loads((tiny_fp32 / "manifest.json").read_text())
    # Point the seed-4 bundle at the seed-3 weights' provenance: verify must refuse the mismatch.
    m_other = json.loads((other / "manifest.json").read_text())
    m_other["source"]["weights_sha256"] = manifest["source"]["weights_sha256"]
    rewrite_manifest(other, m_other)
    with pytest.raises(ValueError, match="differ from the exported ones"):
        verify_bundle(other, report=None)
    # With the provenance check bypassed (a checkpoint of other weights), the numbers themselves fail.
    shutil.copy(tiny_fp32 / "temporal.onnx", other / "temporal.onnx")
    m_other["files"]["temporal.onnx"] = json.loads((tiny_fp32 / "manifest.json").read_text())["files"]["temporal.onnx"]
    m_other["source"] = json.loads((other / "manifest.json").read_text())["source"]
    m_other["source"]["weights_sha256"] = None
    m_other["source"]["seed"] = 4
    rewrite_manifest(other, m_other)
    report = verify_bundle(other, seed=0, report=None)
    assert not report.ok
    assert {r.graph for r in report.rows if not r.ok} == {"temporal"}


def test_polygraphy_onnxrt_matches_saved_torch_outputs(tiny_fp32, tmp_path):
    """Independent check: polygraphy's ONNX Runtime runner against torch outputs saved to disk."""
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json

    bundle = Bundle.load(tiny_fp32)
    model = build_model(ModelSource.from_manifest(bundle.manifest["source"]))
    graph = build_graphs(model)["temporal"]
    feeds = random_inputs(bundle.config, seed=21)["temporal"]
    with torch.no_grad():
        score, probs = graph(*(torch.from_numpy(feeds[k]) for k in ("frame_emb", "region_emb")))
    save_json([feeds], tmp_path / "inputs.json")

    def run_polygraphy(outputs):
        results = RunResults()
        results.append(("torch", [IterationResult(outputs=outputs, runner_name="torch")]))
        results.save(str(tmp_path / "torch.json"))
        exe = Path(sys.executable).with_name("polygraphy")
        cmd = [str(exe), "run", str(bundle.graph_path("temporal")), "--onnxrt", "--load-inputs",
               str(tmp_path / "inputs.json"), "--load-outputs", str(tmp_path / "torch.json"),
               "--atol", "1e-5", "--rtol", "1e-4"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    ok = run_polygraphy({"score": score.numpy(), "class_probs": probs.numpy()})
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    assert "PASSED" in ok.stdout
    perturbed = score.numpy().copy()
    perturbed[0, 3] += 1e-2
    bad = run_polygraphy({"score": perturbed, "class_probs": probs.numpy()})
    assert bad.returncode != 0  # the same check rejects a 1e-2 error


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = bundle_export.export_onnx

    def failing(module, inputs, spec, path, **kw):
        calls.append(spec.name)
        if spec.name == "temporal":
            raise RuntimeError("simulated failure while exporting temporal")
        return real(module, inputs, spec, path, **kw)

    monkeypatch.setattr(bundle_export, "export_onnx", failing)
    with pytest.raises(RuntimeError, match="simulated failure"):
        export_bundle(tmp_path / "x.stp", random_config="tiny", progress=False)
    assert calls == ["encoder", "temporal"]
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a partial directory


def test_export_refuses_to_overwrite_and_replaces_atomically(tiny_fp32, tmp_path):
    out = tmp_path / "b.stp"
    shutil.copytree(tiny_fp32, out)
    with pytest.raises(FileExistsError, match="--force"):
        export_bundle(out, random_config="tiny", progress=False)
    export_bundle(out, random_config="tiny", seed=9, overwrite=True, progress=False)
    assert json.loads((out / "manifest.json").read_text())["source"]["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.stp"]


def test_edited_onnx_file_is_named(tiny_fp32, tmp_path):
    out = tmp_path / "b.stp"
    shutil.copytree(tiny_fp32, out)
    data = bytearray((out / "spatial.onnx").read_bytes())
    data[-5] ^= 0xFF
    (out / "spatial.onnx").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"spatial\.onnx \(expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}\)"):
        Bundle.load(out)


def test_exactly_one_model_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one model"):
        export_bundle(tmp_path / "x.stp", progress=False)
    with pytest.raises(ValueError, match="precision"):
        export_bundle(tmp_path / "x.stp", random_config="tiny", precision="int4", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_vit_b16_random_bundle_passes_verify(precision, tmp_path):
    bundle = export_bundle(tmp_path / f"vitb16-{precision}.stp", random_config="vit-b-16", seed=0,
                           precision=precision, progress=False)
    lines = []
    report = verify_bundle(bundle, seed=5, batch=1, report=lines.append)
    print("\n".join(lines))
    assert report.ok, "\n".join(lines)
    assert np.isfinite([r.rel for r in report.rows]).all()
