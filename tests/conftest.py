"""Shared test fixtures.

Hand-made contract graphs: small ONNX graphs built with onnx.helper that honour the graph names and shapes of
docs/architecture.md, so the runtime (bundle, runners, streaming, Detector, CLI) is tested without the torch
exporter. They are NOT STPrompt; they are the smallest graphs whose outputs depend on their inputs the way the
contract says: the temporal graph mixes snippets only within the context c (a 1-D convolution of radius c over
time), so streaming equals offline exactly when, and only when, the runtime's windows are right.
"""

from __future__ import annotations

import functools
import json
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


def make_encoder_graph(path: Path, cfg: STPromptConfig, rng: np.random.Generator, regions: str = "encoder") -> None:
    """images [B,3,S,S] -> frame_emb [B,E] = tanh(mean(patch) @ W), and region features of patch = tanh(patchify conv).

    `regions="encoder"` (the current contract): the graph returns region_emb [B,R2,E], the patch tokens pooled
    into RxR regions (tokens mode) or the frame_emb of the R2 crops, cut and resized inside the graph exactly as
    `stp_edge.pipeline.encode.make_crops` does and encoded in one batch with the images (crops mode).
    `regions="host"`: a bundle exported before that change, returning patch_emb [B,N,E].
    """
    from onnx import TensorProto, helper

    from stp_edge.geometry import bilinear_matrix, crop_windows

    v = cfg.vision
    S, P, E, N, R = v.image_size, v.patch_size, v.embed_dim, v.num_patches, cfg.region_grid
    inits = [
        _init("w_patch", rng.normal(0, 0.3, (E, 3, P, P)).astype(np.float32)),
        _init("b_patch", rng.normal(0, 0.1, E).astype(np.float32)),
        _init("shape_ben", np.array([0, E, -1], dtype=np.int64)),
        _init("w_frame", rng.normal(0, 1.0, (E, E)).astype(np.float32)),
    ]

    def encoder(images: str, frame: str, patch: str) -> list:
        return [
            helper.make_node("Conv", [images, "w_patch", "b_patch"], ["conv"], kernel_shape=[P, P], strides=[P, P]),
            helper.make_node("Tanh", ["conv"], ["conv_t"]),
            helper.make_node("Reshape", ["conv_t", "shape_ben"], ["ben"]),
            helper.make_node("Transpose", ["ben"], [patch], perm=[0, 2, 1]),
            helper.make_node("ReduceMean", [patch], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w_frame"], ["frame_lin"]),
            helper.make_node("Tanh", ["frame_lin"], [frame]),
        ]

    if regions == "host":
        nodes, second = encoder("images", "frame_emb", "patch_emb"), ("patch_emb", ["B", N, E])
    elif cfg.region_mode == "tokens":
        k = v.grid // R
        nodes = [
            *encoder("images", "frame_emb", "patches"),
            helper.make_node("Reshape", ["patches", "shape_blocks"], ["blocks"]),
            helper.make_node("ReduceMean", ["blocks"], ["cells"], axes=[2, 4], keepdims=0),
            helper.make_node("Reshape", ["cells", "shape_regions"], ["region_emb"]),
        ]
        inits += [_init("shape_blocks", np.array([0, R, k, R, k, E], dtype=np.int64)),
                  _init("shape_regions", np.array([0, R * R, E], dtype=np.int64))]
        second = ("region_emb", ["B", R * R, E])
    else:
        windows = crop_windows(S, R)
        side = windows[0][2]
        m = bilinear_matrix(side, S).astype(np.float32)
        nodes = []
        for r, (y0, x0, s) in enumerate(windows):
            inits += [_init(f"crop{r}_lo", np.array([y0, x0], dtype=np.int64)),
                      _init(f"crop{r}_hi", np.array([y0 + s, x0 + s], dtype=np.int64))]
            nodes += [
                helper.make_node("Slice", ["images", f"crop{r}_lo", f"crop{r}_hi", "axes_hw"], [f"crop{r}"]),
                helper.make_node("MatMul", ["m_rows", f"crop{r}"], [f"crop{r}_y"]),
                helper.make_node("MatMul", [f"crop{r}_y", "m_cols"], [f"crop{r}_yx"]),
                helper.make_node("Unsqueeze", [f"crop{r}_yx", "axis1"], [f"crop{r}_u"]),
            ]
        nodes += [
            helper.make_node("Concat", [f"crop{r}_u" for r in range(len(windows))], ["crops5"], axis=1),
            helper.make_node("Reshape", ["crops5", "shape_images"], ["crops"]),
            helper.make_node("Concat", ["images", "crops"], ["all_images"], axis=0),
            *encoder("all_images", "frame_all", "patch_all"),
            helper.make_node("Shape", ["images"], ["batch"], start=0, end=1),
            helper.make_node("Slice", ["frame_all", "zero", "batch", "axis0"], ["frame_emb"]),
            helper.make_node("Slice", ["frame_all", "batch", "big", "axis0"], ["crop_frames"]),
            helper.make_node("Reshape", ["crop_frames", "shape_regions"], ["region_emb"]),
        ]
        inits += [_init("m_rows", m), _init("m_cols", np.ascontiguousarray(m.T)),
                  _init("axes_hw", np.array([2, 3], dtype=np.int64)), _init("axis1", np.array([1], dtype=np.int64)),
                  _init("shape_images", np.array([-1, 3, S, S], dtype=np.int64)),
                  _init("zero", np.array([0], dtype=np.int64)), _init("axis0", np.array([0], dtype=np.int64)),
                  _init("big", np.array([2**62], dtype=np.int64)),
                  _init("shape_regions", np.array([-1, R * R, E], dtype=np.int64))]
        second = ("region_emb", ["B", R * R, E])
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, S, S])],
        [helper.make_tensor_value_info("frame_emb", TensorProto.FLOAT, ["B", E]),
         helper.make_tensor_value_info(second[0], TensorProto.FLOAT, second[1])],
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


def write_handmade_bundle(out: Path, cfg: STPromptConfig, seed: int = 0, regions: str = "encoder") -> Path:
    """A complete bundle directory (three hand-made graphs + manifest) for `cfg`.

    `regions="host"` writes a bundle as exported before region features moved into the encoder graph (same
    weights for the same seed): its encoder returns patch_emb and its manifest has no `region_features` key.
    """
    from stp_edge.bundle import write_manifest
    from stp_edge.preprocess import PreprocessSpec

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    make_encoder_graph(out / "encoder.onnx", cfg, rng, regions)
    make_temporal_graph(out / "temporal.onnx", cfg, rng)
    make_spatial_graph(out / "spatial.onnx", cfg, rng)
    S, E, N, R2, K = (cfg.vision.image_size, cfg.vision.embed_dim, cfg.vision.num_patches,
                      cfg.num_regions, cfg.num_classes)
    graphs = {
        "encoder": {"file": "encoder.onnx", "inputs": {"images": ["B", 3, S, S]},
                    "outputs": {"frame_emb": ["B", E],
                                **({"patch_emb": ["B", N, E]} if regions == "host" else {"region_emb": ["B", R2, E]})}},
        "temporal": {"file": "temporal.onnx",
                     "inputs": {"frame_emb": ["B", "T", E], "region_emb": ["B", "T", R2, E]},
                     "outputs": {"score": ["B", "T"], "class_probs": ["B", "T", K]}},
        "spatial": {"file": "spatial.onnx", "inputs": {"region_emb": ["B", R2, E]},
                    "outputs": {"region_scores": ["B", R2]}},
    }
    write_manifest(out, config=cfg, files=["encoder.onnx", "temporal.onnx", "spatial.onnx"], precision="fp32",
                   opset=17, graphs=graphs, preprocess=PreprocessSpec(size=S).to_dict(),
                   regions=None if regions == "host" else regions)  # "host" bundles predate the key
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


@pytest.fixture(scope="session")
def handmade_legacy_bundle(tmp_path_factory) -> Path:
    """The tokens bundle's weights as exported before region features moved into the encoder (patch_emb out)."""
    return write_handmade_bundle(tmp_path_factory.mktemp("handmade") / "tokens-legacy.stp", handmade_config(),
                                 regions="host")


@pytest.fixture(scope="session")
def handmade_legacy_crops_bundle(tmp_path_factory) -> Path:
    """The crops bundle's weights as exported before crops moved into the encoder (the runtime cuts them)."""
    cfg = handmade_config(region_mode="crops", region_grid=3, motion_topk=4)
    return write_handmade_bundle(tmp_path_factory.mktemp("handmade") / "crops-legacy.stp", cfg, seed=1,
                                 regions="host")


# --- synthetic frames -------------------------------------------------------------------------------------


REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO_ROOT / "docs" / "schemas"


def requirement_pins(name: str) -> dict[str, str]:
    """requirements/NAME as {canonical distribution name: pinned version}; every line must be an exact pin."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO_ROOT / "requirements" / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements/{name} holds exact pins only: {line}"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


@functools.cache
def record_schema(name: str) -> dict:
    """docs/schemas/NAME.schema.json ("snippet", "gap", "dropped", "event"), parsed."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def validate_record(obj: dict) -> None:
    """Check a record or event message against the JSON Schema in docs/schemas/ that its `schema` field names."""
    import jsonschema

    jsonschema.validate(obj, record_schema(obj["schema"].removeprefix("stp-edge.")),
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


WALL_CLOCK_FIELDS = ("timings", "start_time", "end_time", "timestamp")


def comparable(record: dict) -> dict:
    """A JSONL record as it compares across runs: its wall-clock fields (timings, times) set to None."""
    return {**record, **dict.fromkeys(k for k in WALL_CLOCK_FIELDS if k in record)}


def write_avi(path: Path, frames: list[np.ndarray], fps: float = 15.0) -> Path:
    """Write `frames` (BGR, one size) as an MJPEG AVI: a real video file the runtime reads like a camera's."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


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
