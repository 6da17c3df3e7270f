"""What a bundle graph may contain (stp_edge.bundle.graph_rules): every graph our exporter writes passes, and the
walker that checks them sees every node and tensor `onnx` sees, subgraphs and functions included.

The hostile side (external data in every kind of tensor, control flow, custom domains, huge allocations) is the
corpus of scripts/make_hostile_bundles.py, checked in tests/test_hostile_bundles.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import handmade_config
from research_scripts import repo_script

from stp_edge.bundle import Bundle, GraphMismatchError, UnsafeGraphError, check_graph_content
from stp_edge.bundle.graph_rules import ALLOWED_OPERATORS, EXPORT_OPERATORS, MAX_STATIC_DIM, constant_budget
from stp_edge.bundle.graph_walk import walk_onnx
from stp_edge.config import STPromptConfig

onnx = pytest.importorskip("onnx")

GRAPHS = ("encoder", "temporal", "spatial")
CONV_STEM = {"vision": {"image_size": 112, "patch_size": 16, "width": 128, "layers": 2, "heads": 2,
                        "embed_dim": 64, "stem": "conv", "stem_centred": True, "patch_attention": 1}}
# Every kind of graph `stp-edge export` writes: precisions, region layouts, stems, opsets, simplified or not.
EXPORTS = {
    "tiny-fp16": dict(random_config="tiny", precision="fp16"),
    "tiny-int8": dict(random_config="tiny", precision="int8"),
    "tiny-crops-int8": dict(random_config="tiny", precision="int8",
                            config_overrides={"region_mode": "crops", "region_grid": 3}),
    "tiny-conv-int8": dict(random_config="tiny", precision="int8", config_overrides=CONV_STEM),
    "tiny-int8-dynamic": dict(random_config="tiny", precision="int8", int8_form="dynamic"),
    "tiny-host-crops": dict(random_config="tiny", region_features="host",
                            config_overrides={"region_mode": "crops", "region_grid": 3}),
    "tiny-unsimplified": dict(random_config="tiny", simplify=False),
    "tiny-opset20": dict(random_config="tiny", opset=20),
    # ViT-B/16 fp32 and fp16 pass the same checks in tests/test_export.py (verify loads them through Bundle.load).
    "vit-b-16-int8": dict(random_config="vit-b-16", precision="int8"),
}


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    from stp_edge.synthetic import generate_clip, write_video

    root = tmp_path_factory.mktemp("calib")
    for seed in (11, 12):
        clip = generate_clip(seed, width=160, height=120, num_frames=48, anomaly="fire")
        write_video(root / f"clip_{seed}.avi", clip.frames, 25.0, (160, 120), "MJPG", 48)
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory, request, exported_tiny_bundle):
    """name -> bundle, exported on first use (once per module)."""
    made: dict[str, Path] = {"tiny-fp32": exported_tiny_bundle}

    def get(name: str) -> Path:
        if name not in made:
            pytest.importorskip("torch")
            from stp_edge.export.bundle_export import export_bundle

            kwargs = dict(EXPORTS[name])
            if kwargs.get("precision") == "int8" and kwargs.get("int8_form") != "dynamic":
                kwargs["calib"] = request.getfixturevalue("calib")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # the deprecated "host" layout says so
                made[name] = export_bundle(tmp_path_factory.mktemp(name) / f"{name}.stp", seed=3, progress=False,
                                           **kwargs)
        return made[name]
    return get


def _operators(bundle: Path) -> set[str]:
    return {n.op_type for g in GRAPHS for n in walk_onnx(bundle / f"{g}.onnx").nodes}


def _loads_within_the_rules(bundle: Path) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = Bundle.load(bundle)  # runs check_graph_content on every graph
    ops = _operators(bundle)
    assert ops <= EXPORT_OPERATORS, f"export writes operators not in EXPORT_OPERATORS: {sorted(ops - EXPORT_OPERATORS)}"
    for g in GRAPHS:
        held = sum(t.nbytes for t in walk_onnx(b.graph_path(g)).tensors)
        assert held <= constant_budget(g, b.config)
    return ops


def test_exported_tiny_bundle_passes_the_graph_checks(exported):
    _loads_within_the_rules(exported("tiny-fp32"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPORTS))
def test_every_exported_bundle_passes_the_graph_checks(exported, name):
    _loads_within_the_rules(exported(name))


@pytest.mark.slow
def test_export_operators_are_what_export_writes(exported):
    """EXPORT_OPERATORS is derived from the exporter: no operator listed that none of its graphs contains."""
    seen = set().union(*(_operators(exported(n)) for n in ("tiny-fp32", "tiny-conv-int8", "tiny-int8-dynamic",
                                                          "tiny-unsimplified", "tiny-opset20")))
    assert seen == EXPORT_OPERATORS


# --- the walker sees what onnx sees ----------------------------------------------------------------------------
def _onnx_inventory(model) -> tuple[list[tuple[str, str, str]], list[tuple[str, tuple[int, ...]]]]:
    """(nodes, tensors) of a ModelProto by onnx itself: every graph, subgraph and function, depth first."""
    nodes, tensors = [], []

    def graph(g):
        tensors.extend((t.name, tuple(t.dims)) for t in g.initializer)
        for s in g.sparse_initializer:
            tensors.extend([(s.values.name, tuple(s.dims)), (s.indices.name, tuple(s.indices.dims))])
        for n in g.node:
            node(n)

    def node(n):
        nodes.append((n.name, n.op_type, n.domain))
        for a in n.attribute:
            for t in ([a.t] if a.HasField("t") else []) + list(a.tensors):
                tensors.append((t.name or n.output[0], tuple(t.dims)))
            for s in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                tensors.extend([(s.values.name, tuple(s.dims)), (s.indices.name, tuple(s.indices.dims))])
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                graph(sub)

    for f in model.functions:
        for n in f.node:
            node(n)
    for t in model.training_info:
        graph(t.initialization)
        graph(t.algorithm)
    graph(model.graph)
    return nodes, tensors


def _walker_inventory(path: Path):
    walk = walk_onnx(path)
    return ([(n.name, n.op_type, n.domain) for n in walk.nodes],
            [(t.name, t.dims) for t in walk.tensors if "attribute 'value_int" not in t.holder])


@pytest.fixture(scope="module")
def corpus(handmade_bundle, tmp_path_factory):
    hostile = repo_script("make_hostile_bundles")
    out = tmp_path_factory.mktemp("graph-corpus")
    return out, [c.name for c in hostile.make_cases(handmade_bundle, out) if c.name in
                 {g[0] for g in hostile.GRAPH_CASES}]


def test_walker_sees_every_node_and_tensor_onnx_sees(exported, corpus):
    out, names = corpus
    paths = [exported("tiny-fp32") / f"{g}.onnx" for g in GRAPHS]
    paths += [out / f"{n}.stp" / f"{g}.onnx" for n in names for g in GRAPHS]
    assert len(names) >= 30
    for path in paths:
        if path.stat().st_size > 20 << 20 or "nested_too_deep" in str(path):
            continue  # refused before it is walked (too large), or while walking it (too deep)
        nodes, tensors = _onnx_inventory(onnx.load(str(path), load_external_data=False))
        got_nodes, got_tensors = _walker_inventory(path)
        assert sorted(got_nodes) == sorted(nodes), path
        assert sorted(got_tensors) == sorted(tensors), path


def test_walker_decodes_small_constants_as_onnx_does(exported):
    from onnx import numpy_helper

    path = exported("tiny-fp32") / "temporal.onnx"
    model = onnx.load(str(path))
    want = {t.name: numpy_helper.to_array(t).ravel().tolist() for t in model.graph.initializer
            if t.data_type in (1, 6, 7, 11) and np.prod(t.dims) <= 64}
    got = {t.name: list(t.values) for t in walk_onnx(path).tensors if t.values is not None}
    assert want and got.keys() == want.keys()
    for name, values in want.items():
        np.testing.assert_allclose(got[name], values, rtol=0, atol=0)


# --- rules a bundle cannot reach through the contract check ----------------------------------------------------
def _graph(tmp_path: Path, dims: list, *nodes, initializers=()) -> Path:
    from onnx import TensorProto, helper

    g = helper.make_graph(list(nodes) or [helper.make_node("Identity", ["x"], ["y"], name="id")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], list(initializers))
    path = tmp_path / "g.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_input_with_huge_fixed_dimensions_is_refused(tmp_path):
    cfg = handmade_config()
    check_graph_content("spatial", _graph(tmp_path, ["B", 4, 8]), cfg)
    with pytest.raises(UnsafeGraphError, match=rf"input 'x' has fixed dimensions \[B,{MAX_STATIC_DIM + 1},8\]"):
        check_graph_content("spatial", _graph(tmp_path, ["B", MAX_STATIC_DIM + 1, 8]), cfg)
    with pytest.raises(UnsafeGraphError, match=r"input 'x' has fixed dimensions \[1,65536,65536\]"):
        check_graph_content("spatial", _graph(tmp_path, [1, 1 << 16, 1 << 16]), cfg)


def test_constant_shapes_within_the_bound_pass(tmp_path):
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([4, 8], np.int64), "s")
    ok = _graph(tmp_path, [4, 8], helper.make_node("Expand", ["x", "s"], ["y"], name="e"), initializers=[shape])
    check_graph_content("spatial", ok, handmade_config())
    big = numpy_helper.from_array(np.array([1 << 14, 1 << 13], np.int64), "s")
    path = _graph(tmp_path, [4, 8], helper.make_node("Expand", ["x", "s"], ["y"], name="e"), initializers=[big])
    with pytest.raises(UnsafeGraphError, match="node 'e' \\(Expand\\) asks for a tensor of 134217728 elements"):
        check_graph_content("spatial", path, handmade_config())


def test_truncated_graph_is_a_mismatch_not_a_crash(tmp_path):
    path = _graph(tmp_path, [4, 8])
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(GraphMismatchError, match="g.onnx is not a valid ONNX model"):
        check_graph_content("spatial", path, handmade_config())


def test_budget_follows_the_config():
    tiny, vitb = STPromptConfig.named("tiny"), STPromptConfig.named("vit-b-16")
    assert constant_budget("encoder", vitb) > 2 * 4 * 86_000_000  # ViT-B/16's 86M parameters, twice, in float32
    assert constant_budget("encoder", tiny) < constant_budget("encoder", vitb) / 50
    assert constant_budget("spatial", vitb) < (2 << 20)
    assert "Loop" not in ALLOWED_OPERATORS and "If" not in ALLOWED_OPERATORS and "Scan" not in ALLOWED_OPERATORS
