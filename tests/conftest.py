"""Shared test fixtures.

Hand-made contract graphs: small ONNX graphs built with onnx.helper that honour the graph names and shapes of
docs/architecture.md, so the runtime (bundle, runners, streaming, Detector, CLI) is tested without the torch
exporter. They are NOT STPrompt; they are the smallest graphs whose outputs depend on their inputs the way the
contract says: the temporal graph mixes snippets only within the context c (a 1-D convolution of radius c over
time), so streaming equals offline exactly when, and only when, the runtime's windows are right.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stp_edge.config import STPromptConfig, TextConfig, VisionConfig

# --- hand-made contract graphs ----------------------------------------------------------------------------


def handmade_config(**overrides) -> STPromptConfig:
    """A tiny config: S=32, patch 8 (grid 4), E=8, 2x2 regions, snippets of 4 frames, context c=3."""
    base = dict(
        vision=VisionConfig(image_size=32, patch_size=8, width=16, layers=1, heads=2, embed_dim=8),
        text=TextConfig(context_length=8, vocab_size=100, width=16, layers=1, heads=2),
        snippet_len=4, region_grid=2, motion_topk=2, adapter_layers=1, adapter_sigma=0.25,
        class_names=("normal", "fighting", "fire"), score_threshold=0.5, box_threshold=0.5,
    )
    base.update(overrides)
    return STPromptConfig(**base)


def _save(graph, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="stp-edge-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _init(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array), name)


def make_encoder_graph(path: Path, cfg: STPromptConfig, rng: np.random.Generator) -> None:
    """images [B,3,S,S] -> patch_emb [B,N,E] = tanh(patchify conv), frame_emb [B,E] = tanh(mean(patch) @ W)."""
    from onnx import TensorProto, helper

    v = cfg.vision
    S, P, E, N = v.image_size, v.patch_size, v.embed_dim, v.num_patches
    nodes = [
        helper.make_node("Conv", ["images", "w_patch", "b_patch"], ["conv"], kernel_shape=[P, P], strides=[P, P]),
        helper.make_node("Tanh", ["conv"], ["conv_t"]),
        helper.make_node("Reshape", ["conv_t", "shape_ben"], ["ben"]),
        helper.make_node("Transpose", ["ben"], ["patch_emb"], perm=[0, 2, 1]),
        helper.make_node("ReduceMean", ["patch_emb"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_frame"], ["frame_lin"]),
        helper.make_node("Tanh", ["frame_lin"], ["frame_emb"]),
    ]
    inits = [
        _init("w_patch", rng.normal(0, 0.3, (E, 3, P, P)).astype(np.float32)),
        _init("b_patch", rng.normal(0, 0.1, E).astype(np.float32)),
        _init("shape_ben", np.array([0, E, -1], dtype=np.int64)),
        _init("w_frame", rng.normal(0, 1.0, (E, E)).astype(np.float32)),
    ]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, S, S])],
        [helper.make_tensor_value_info("frame_emb", TensorProto.FLOAT, ["B", E]),
         helper.make_tensor_value_info("patch_emb", TensorProto.FLOAT, ["B", N, E])],
        inits)
    _save(graph, path)


def make_temporal_graph(path: Path, cfg: STPromptConfig, rng: np.random.Generator, hidden: int = 16) -> None:
    """x = frame_emb + mean_r region_emb; h = tanh(conv1d over T, radius c); score = sigmoid, probs = softmax."""
    from onnx import TensorProto, helper

    E, R2, K, c = cfg.vision.embed_dim, cfg.num_regions, cfg.num_classes, cfg.context
    nodes = [
        helper.make_node("ReduceMean", ["region_emb"], ["rmean"], axes=[2], keepdims=0),
        helper.make_node("Add", ["frame_emb", "rmean"], ["x"]),
        helper.make_node("Transpose", ["x"], ["x_bet"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["x_bet", "w_time", "b_time"], ["h"], kernel_shape=[2 * c + 1], pads=[c, c]),
        helper.make_node("Tanh", ["h"], ["h_t"]),
        helper.make_node("Transpose", ["h_t"], ["h_bth"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h_bth", "w_score"], ["s1"]),
        helper.make_node("Squeeze", ["s1", "axis2"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["score"]),
        helper.make_node("MatMul", ["h_bth", "w_class"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["class_probs"], axis=-1),
    ]
    inits = [
        _init("w_time", rng.normal(0, 0.5, (hidden, E, 2 * c + 1)).astype(np.float32)),
        _init("b_time", rng.normal(0, 0.1, hidden).astype(np.float32)),
        _init("w_score", rng.normal(0, 0.8, (hidden, 1)).astype(np.float32)),
        _init("axis2", np.array([2], dtype=np.int64)),
        _init("w_class", rng.normal(0, 1.0, (hidden, K)).astype(np.float32)),
    ]
    graph = helper.make_graph(
        nodes, "temporal",
        [helper.make_tensor_value_info("frame_emb", TensorProto.FLOAT, ["B", "T", E]),
         helper.make_tensor_value_info("region_emb", TensorProto.FLOAT, ["B", "T", R2, E])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B", "T"]),
         helper.make_tensor_value_info("class_probs", TensorProto.FLOAT, ["B", "T", K])],
        inits)
    _save(graph, path)


def make_spatial_graph(path: Path, cfg: STPromptConfig, rng: np.random.Generator) -> None:
    """region_scores [B,R2] = sigmoid(region_emb @ w)."""
    from onnx import TensorProto, helper

    E, R2 = cfg.vision.embed_dim, cfg.num_regions
    nodes = [
        helper.make_node("MatMul", ["region_emb", "w_region"], ["r1"]),
        helper.make_node("Squeeze", ["r1", "axis2"], ["r"]),
        helper.make_node("Sigmoid", ["r"], ["region_scores"]),
    ]
    inits = [_init("w_region", rng.normal(0, 2.0, (E, 1)).astype(np.float32)),
             _init("axis2", np.array([2], dtype=np.int64))]
    graph = helper.make_graph(
        nodes, "spatial",
        [helper.make_tensor_value_info("region_emb", TensorProto.FLOAT, ["B", R2, E])],
        [helper.make_tensor_value_info("region_scores", TensorProto.FLOAT, ["B", R2])],
        inits)
    _save(graph, path)


def write_handmade_bundle(out: Path, cfg: STPromptConfig, seed: int = 0) -> Path:
    """A complete bundle directory (three hand-made graphs + manifest) for `cfg`."""
    from stp_edge.bundle import write_manifest
    from stp_edge.preprocess import PreprocessSpec

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    make_encoder_graph(out / "encoder.onnx", cfg, rng)
    make_temporal_graph(out / "temporal.onnx", cfg, rng)
    make_spatial_graph(out / "spatial.onnx", cfg, rng)
    S, E, N, R2, K = (cfg.vision.image_size, cfg.vision.embed_dim, cfg.vision.num_patches,
                      cfg.num_regions, cfg.num_classes)
    graphs = {
        "encoder": {"file": "encoder.onnx", "inputs": {"images": ["B", 3, S, S]},
                    "outputs": {"frame_emb": ["B", E], "patch_emb": ["B", N, E]}},
        "temporal": {"file": "temporal.onnx",
                     "inputs": {"frame_emb": ["B", "T", E], "region_emb": ["B", "T", R2, E]},
                     "outputs": {"score": ["B", "T"], "class_probs": ["B", "T", K]}},
        "spatial": {"file": "spatial.onnx", "inputs": {"region_emb": ["B", R2, E]},
                    "outputs": {"region_scores": ["B", R2]}},
    }
    write_manifest(out, config=cfg, files=["encoder.onnx", "temporal.onnx", "spatial.onnx"], precision="fp32",
                   opset=17, graphs=graphs, preprocess=PreprocessSpec(size=S).to_dict())
    return out


@pytest.fixture(scope="session")
def handmade_bundle(tmp_path_factory) -> Path:
    """Hand-made contract bundle, tokens mode (2x2 regions pooled from the 4x4 patch grid), context 3."""
    return write_handmade_bundle(tmp_path_factory.mktemp("handmade") / "tokens.stp", handmade_config())


@pytest.fixture(scope="session")
def handmade_crops_bundle(tmp_path_factory) -> Path:
    """Hand-made contract bundle, crops mode (3x3 overlapping crops through the encoder)."""
    cfg = handmade_config(region_mode="crops", region_grid=3, motion_topk=4)
    return write_handmade_bundle(tmp_path_factory.mktemp("handmade") / "crops.stp", cfg, seed=1)


# --- synthetic frames -------------------------------------------------------------------------------------


def moving_frames(n: int, *, height: int = 48, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    """n BGR frames: a textured background with a bright square moving across it (never constant)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(20, 120, (height, width, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        f = background.copy()
        x = (3 * i) % (width - 12)
        y = (height // 3 + (i // 5)) % (height - 12)
        f[y:y + 12, x:x + 12] = (40 + 7 * i % 200, 220, 255 - 3 * i % 200)
        frames.append(f)
    return frames


@pytest.fixture
def frames_factory() -> Callable[..., list[np.ndarray]]:
    """`moving_frames(n, height=, width=, seed=)`."""
    return moving_frames


@pytest.fixture(scope="session")
def exported_tiny_bundle(tmp_path_factory) -> Path:
    """A bundle written by the real exporter (random `tiny` weights, seed 3), shared by the session."""
    from stp_edge.export.bundle_export import export_bundle

    return export_bundle(tmp_path_factory.mktemp("exported") / "tiny.stp", random_config="tiny", seed=3,
                         progress=False)
