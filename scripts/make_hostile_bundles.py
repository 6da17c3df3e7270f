"""Write a corpus of hostile bundles, each derived from one valid bundle, with the outcome loading must give.

    python scripts/make_hostile_bundles.py VALID.stp OUT_DIR [--other OTHER_CONFIG.stp]

Each case is a directory OUT_DIR/<name>.stp and a line of OUT_DIR/cases.json: {"name", "error", "fragment",
"what"}: `Bundle.load` must raise exactly `error` (a stp_edge.bundle error class) with `fragment` in its
one-line message. tests/test_hostile_bundles.py builds the corpus from the hand-made test bundle and checks
every case. Cases marked "resealed" edit the bundle and then recompute the file hashes and the manifest digest,
as an attacker who knows the format would, so they reach the checks behind the checksums.
`--other` is a valid bundle of a different config (a donor of graphs that do not fit); without it the
swapped-graph case is left out.

Besides edited manifests and unsafe paths, the corpus holds preprocessing the runtime does not implement and
hostile graphs (`GRAPH_CASES`, written with `onnx`): external data in every kind of tensor (initializer, sparse
initializer, Constant value and sparse value, other tensor attributes, inside Loop/If/Scan bodies and functions),
control flow (a Loop of 2**62 iterations, Scan, If), custom-domain and unlisted operators, huge constant
allocations (Expand, ConstantOfShape, Range, declared and real initializers, an oversized file), graph attributes,
functions and training graphs. tests/test_hostile_bundles.py also checks that every entry point (run, info, score,
extract, verify, serve, the Triton repository writer, Detector.load) refuses each case with the same error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.bundle import MANIFEST, rewrite_manifest, sha256_file


@dataclass
class Case:
    name: str
    error: str
    fragment: str
    what: str


def _manifest(b: Path) -> dict[str, Any]:
    return json.loads((b / MANIFEST).read_text(encoding="utf-8"))


def _reseal(b: Path, m: dict[str, Any] | None = None) -> None:
    """Recompute every listed file's sha256 that can be computed, then the digest."""
    m = _manifest(b) if m is None else m
    for f in m["files"]:
        p = b / f
        if p.is_file() and (b.resolve() in p.resolve().parents):
            m["files"][f] = sha256_file(p)
    rewrite_manifest(b, m)


def _edit(fn: Callable[[dict[str, Any]], Any], reseal: bool = True) -> Callable[[Path, dict], None]:
    def apply(b: Path, ctx: dict) -> None:
        m = _manifest(b)
        fn(m)
        if reseal:
            rewrite_manifest(b, m)
        else:
            (b / MANIFEST).write_text(json.dumps(m, indent=2), encoding="utf-8")
    return apply


def _raw(text_fn: Callable[[str], str]) -> Callable[[Path, dict], None]:
    def apply(b: Path, ctx: dict) -> None:
        p = b / MANIFEST
        p.write_text(text_fn(p.read_text(encoding="utf-8")), encoding="utf-8")
    return apply


def _file(graph: str, fn: Callable[[bytes], bytes], reseal: bool = True) -> Callable[[Path, dict], None]:
    def apply(b: Path, ctx: dict) -> None:
        p = b / f"{graph}.onnx"
        p.write_bytes(fn(p.read_bytes()))
        if reseal:
            _reseal(b)
    return apply


def _symlink_out(b: Path, ctx: dict) -> None:
    outside = b.parent / f"{b.name}.outside.onnx"
    shutil.copy(b / "spatial.onnx", outside)
    (b / "spatial.onnx").unlink()
    (b / "spatial.onnx").symlink_to(outside)
    _reseal(b)


def _manifest_symlink_out(b: Path, ctx: dict) -> None:
    outside = b.parent / f"{b.name}.outside.json"
    shutil.copy(b / MANIFEST, outside)
    (b / MANIFEST).unlink()
    (b / MANIFEST).symlink_to(outside)


def _fifo(b: Path, ctx: dict) -> None:
    (b / "spatial.onnx").unlink()
    os.mkfifo(b / "spatial.onnx")  # hashing it would block forever


def _unlisted_graph(b: Path, ctx: dict) -> None:
    shutil.copy(b / "spatial.onnx", b / "evil.onnx")
    m = _manifest(b)
    m["graphs"]["spatial"]["file"] = "evil.onnx"
    rewrite_manifest(b, m)


def _path(key: str) -> Callable[[Path, dict], None]:
    def apply(b: Path, ctx: dict) -> None:
        m = _manifest(b)
        m["files"][key] = m["files"].pop("spatial.onnx")
        m["graphs"]["spatial"]["file"] = key
        rewrite_manifest(b, m)
    return apply


def _engine_unlisted(b: Path, ctx: dict) -> None:
    d = b / "engines" / "gpu-fp16"
    d.mkdir(parents=True)
    for g in ("encoder", "temporal", "spatial"):
        (d / f"{g}.plan").write_bytes(b"plan " + g.encode())
    m = _manifest(b)
    m["engines"] = [{"dir": "engines/gpu-fp16", "precision": "fp16", "tensorrt_version": "10.3.0",
                     "gpu_name": "NVIDIA Test", "compute_capability": "8.7", "build_flags": {}}]
    m["files"]["engines/gpu-fp16/encoder.plan"] = sha256_file(d / "encoder.plan")
    rewrite_manifest(b, m)


def _swap_graph(b: Path, ctx: dict) -> None:
    shutil.copy(ctx["other"] / "spatial.onnx", b / "spatial.onnx")
    _reseal(b)


def _graph_into_wrong_slot(b: Path, ctx: dict) -> None:
    shutil.copy(b / "temporal.onnx", b / "spatial.onnx")
    _reseal(b)


def _nested(depth: int) -> Callable[[str], str]:
    return lambda t: t.rstrip()[:-1] + ', "source": ' + "[" * depth + "]" * depth + "}"


S, E = "spatial.onnx", "encoder.onnx"
CASES: list[tuple[str, Callable[[Path, dict], None], str, str, str]] = [
    # (name, mutation, error class, message fragment, what it is)
    ("edited_thresholds", _edit(lambda m: m["thresholds"].update(score=0.01), reseal=False), "ManifestError",
     "manifest.json was edited after export", "thresholds edited, digest not updated"),
    ("edited_class_names", _edit(lambda m: m["config"].update(class_names=["normal", "a", "b"]), reseal=False),
     "ManifestError", "manifest.json was edited after export", "class names edited, digest not updated"),
    ("digest_removed", _edit(lambda m: m.pop("manifest_digest"), reseal=False), "ManifestError",
     "missing keys ['manifest_digest']", "the digest key deleted"),
    ("digest_not_hex", _edit(lambda m: m.update(manifest_digest="x" * 64), reseal=False), "ManifestError",
     "manifest.manifest_digest:", "the digest is not a sha256"),
    ("resealed_class_names_disagree", _edit(lambda m: m.update(class_names=["normal", "x", "y"])), "ManifestError",
     'class_names ["normal", "x", "y"] differs from the config', "top-level class names contradict the config"),
    ("resealed_class_count", _edit(lambda m: (m["config"].update(class_names=["normal", "a", "b", "c"]),
                                              m.update(class_names=["normal", "a", "b", "c"]))), "ManifestError",
     "graph 'temporal' output 'class_probs': expected shape [B,T,4], the manifest has [B,T,3]",
     "a class added to the config only"),
    ("resealed_graph_io_renamed", _edit(lambda m: m["graphs"]["spatial"].update(outputs={"scores": ["B", 4]})),
     "ManifestError", "graph 'spatial' outputs: expected ['region_scores'], the manifest has ['scores']",
     "graph output renamed in the manifest"),
    ("missing_file", lambda b, ctx: (b / S).unlink(), "MissingFileError", "listed files are missing: ['spatial.onnx']",
     "a listed graph deleted"),
    ("edited_graph", _file("encoder", lambda d: d[:-1] + bytes([d[-1] ^ 1]), reseal=False), "ChecksumError",
     "encoder.onnx (expected sha256", "one bit of a graph flipped"),
    ("unlisted_graph", _unlisted_graph, "ManifestError",
     "graph 'spatial' file 'evil.onnx' is not listed in files", "a graph the manifest names but does not hash"),
    ("path_traversal", _path("../spatial.onnx"), "ManifestError", "does not match", "'../' in a path"),
    ("path_absolute", _path("/etc/passwd"), "ManifestError", "does not match", "an absolute path"),
    ("path_backslash", _path("..\\spatial.onnx"), "ManifestError", "does not match", "a Windows path"),
    ("path_drive_letter", _path("C:/spatial.onnx"), "ManifestError", "does not match", "a drive letter"),
    ("path_dot_segment", _path("./spatial.onnx"), "ManifestError", "does not match", "a '.' segment"),
    ("manifest_listed_in_files", _edit(lambda m: m["files"].update({MANIFEST: "0" * 64})), "ManifestError",
     "files lists manifest.json itself", "the manifest hashing itself"),
    ("symlink_out", _symlink_out, "UnsafePathError", "spatial.onnx leads outside the bundle",
     "a graph that is a symlink to a file outside the bundle"),
    ("manifest_symlink_out", _manifest_symlink_out, "UnsafePathError", "manifest.json leads outside the bundle",
     "manifest.json is a symlink out"),
    ("fifo_graph", _fifo, "UnsafePathError", "spatial.onnx is not a regular file", "a FIFO instead of a graph"),
    ("engine_plans_unlisted", _engine_unlisted, "ManifestError",
     "engine plans ['engines/gpu-fp16/temporal.plan', 'engines/gpu-fp16/spatial.plan'] are not listed",
     "an engine set whose plans are not all hashed"),
    ("engine_dir_traversal", _edit(lambda m: m.update(engines=[{
        "dir": "../engines", "precision": "fp16", "tensorrt_version": "10.3.0", "gpu_name": "G",
        "compute_capability": "8.7"}])), "ManifestError", "manifest.engines[0].dir:", "an engine dir outside"),
    ("engine_bad_compute_capability", _edit(lambda m: m.update(engines=[{
        "dir": "engines/x", "precision": "fp16", "tensorrt_version": "10.3.0", "gpu_name": "G",
        "compute_capability": "sm87"}])), "ManifestError", "manifest.engines[0].compute_capability:",
     "a compute capability that is not N.M"),
    ("wrong_type_patch_size", _edit(lambda m: m["config"]["vision"].update(patch_size="8")), "ManifestError",
     'config.vision.patch_size: expected integer, got "8"', "a string where a number is expected"),
    ("float_patch_size", _edit(lambda m: m["config"]["vision"].update(patch_size=8.0)), "ManifestError",
     "config.vision.patch_size: expected integer, got 8.0", "8.0 where an integer is expected"),
    ("zero_patch_size", _edit(lambda m: m["config"]["vision"].update(patch_size=0)), "ManifestError",
     "config.vision.patch_size: 0 is below the minimum 1", "zero patch size"),
    ("negative_region_grid", _edit(lambda m: m["config"].update(region_grid=-2)), "ManifestError",
     "config.region_grid: -2 is below the minimum 1", "negative region grid"),
    ("huge_image_size", _edit(lambda m: m["config"]["vision"].update(image_size=10**30)), "ManifestError",
     "config.vision.image_size: 1000000000000000000000000000000 is above the maximum", "a huge number"),
    ("bool_as_number", _edit(lambda m: m["config"].update(snippet_len=True)), "ManifestError",
     "config.snippet_len: expected integer, got true", "true where a number is expected"),
    ("config_not_object", _edit(lambda m: m.update(config="tiny")), "ManifestError",
     'manifest.config: expected object, got "tiny"', "config is a string"),
    ("config_inconsistent", _edit(lambda m: m["config"].update(region_grid=3)), "ManifestError",
     "invalid config: region_grid=3 must divide the patch grid 4", "a config its own validation refuses"),
    ("missing_key", _edit(lambda m: m.pop("graphs")), "ManifestError", "missing keys ['graphs']", "no graphs"),
    ("unknown_key", _edit(lambda m: m.update(engine_host_code_allowed=True)), "ManifestError",
     "unknown key \"engine_host_code_allowed\"", "a key the schema does not define"),
    ("schema_version_999", _edit(lambda m: m.update(schema_version=999)), "ManifestError",
     "schema_version 999 is not supported", "a future schema"),
    ("duplicate_key", _raw(lambda t: t.replace('"precision": "fp32"', '"precision": "fp32", "precision": "fp16"', 1)),
     "ManifestError", "duplicate key 'precision'", "a key written twice (parsers disagree which wins)"),
    ("nan_threshold", _raw(lambda t: t.replace('"box": 0.5', '"box": NaN', 1)), "ManifestError",
     "NaN is not a JSON number", "NaN"),
    ("overflowing_float", _raw(lambda t: t.replace('"box": 0.5', '"box": 1e999', 1)), "ManifestError",
     "number 1e999 overflows a double", "a float that overflows to infinity"),
    ("thousands_of_digits", _raw(lambda t: t.replace('"box": 0.5', '"box": ' + "9" * 5000, 1)), "ManifestError",
     "is not valid JSON", "an integer of 5000 digits"),
    ("deep_nesting", _raw(_nested(100_000)), "ManifestError", "is not valid JSON", "100,000 nested arrays"),
    ("not_json", _raw(lambda t: t[: len(t) // 2]), "ManifestError", "is not valid JSON", "a truncated manifest"),
    ("not_utf8", lambda b, ctx: (b / MANIFEST).write_bytes(b'{"a": "\xff"}'), "ManifestError", "is not valid JSON",
     "bytes that are not UTF-8"),
    ("json_array", _raw(lambda t: "[" + t + "]"), "ManifestError", "expected a JSON object, got list",
     "an array instead of an object"),
    ("empty_manifest", _raw(lambda t: ""), "ManifestError", "is not valid JSON", "an empty manifest"),
    ("truncated_onnx", _file("spatial", lambda d: d[: len(d) // 2]), "GraphMismatchError",
     "spatial.onnx is not a valid ONNX model", "a graph cut in half, hashes updated"),
    ("empty_onnx", _file("encoder", lambda d: b""), "GraphMismatchError", "encoder.onnx is empty",
     "an empty graph file, hashes updated"),
    ("garbage_onnx", _file("spatial", lambda d: bytes(range(256)) * 4), "GraphMismatchError",
     "spatial.onnx is not a valid ONNX model", "random bytes named .onnx"),
    ("graph_in_wrong_slot", _graph_into_wrong_slot, "GraphMismatchError",
     "graph 'spatial' inputs: expected ['region_emb'], spatial.onnx has ['frame_emb', 'region_emb']",
     "temporal.onnx copied over spatial.onnx, hashes updated"),
]

# --- preprocessing the runtime does not implement (refused, not run with CLIP's) -------------------------------
def _preprocess(**changes: Any) -> Callable[[Path, dict], None]:
    return _edit(lambda m: m["preprocess"].update(changes))


CASES += [
    ("preprocess_bilinear", _preprocess(interpolation="bilinear"), "ManifestError",
     "preprocess.interpolation 'bilinear' is not implemented (this runtime implements 'bicubic-antialias-pil')",
     "another interpolation"),
    ("preprocess_no_crop", _preprocess(crop="none"), "ManifestError",
     "preprocess.crop 'none' is not implemented (this runtime implements 'center')", "a squashed instead of cropped"),
    ("preprocess_rgb_input", _preprocess(input="rgb8"), "ManifestError",
     "preprocess.input 'rgb8' is not implemented (this runtime implements 'bgr8')", "another channel order"),
    ("preprocess_nhwc", _preprocess(layout="NHWC"), "ManifestError",
     "preprocess.layout 'NHWC' is not implemented (this runtime implements 'NCHW')", "another layout"),
    ("preprocess_tiny_std", _preprocess(std=[1e-45, 1e-45, 1e-45]), "ManifestError",
     "preprocess.std [1e-45, 1e-45, 1e-45] with mean", "a std whose 1/(255 std) overflows float32"),
]


# --- hostile graphs: data outside the sha256 set, control flow, custom operators, huge allocations -----------
# Each edits one graph with `onnx` (what an attacker who knows the format would do), keeps its inputs and outputs
# (so the contract check passes) and reseals the bundle, so only the graph content check stands in the way.
GRAPH_CASES: list[tuple[str, Callable[[Path, dict], None], str, str, str]] = []


def _graph_edit(graph: str, fn: Callable[[Any, Path], None]) -> Callable[[Path, dict], None]:
    def apply(b: Path, ctx: dict) -> None:
        import onnx

        p = b / f"{graph}.onnx"
        model = onnx.load(str(p), load_external_data=False)
        fn(model, b)
        p.write_bytes(model.SerializeToString())
        _reseal(b)
    return apply


def _external(name: str = "", location: str = "weights.bin", dims: tuple[int, ...] = (4,)) -> Any:
    """A float tensor whose data is in an external file (offset 0, 4 bytes per element)."""
    import onnx

    t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=list(dims),
                         data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * math.prod(dims)))):
        t.external_data.add(key=key, value=value)
    return t


def _external_without_location(model: Any, b: Path) -> None:
    t = _external("evil_w")
    t.ClearField("external_data")  # still data_location EXTERNAL
    model.graph.initializer.append(t)


def _weights_file(b: Path) -> None:
    """The external file itself, inside the bundle but not listed: onnxruntime would read it."""
    (b / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())


def _ints(name: str, values: list[int]) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _sparse(name: str, values: Any) -> Any:
    import onnx

    values.name = name
    return onnx.SparseTensorProto(values=values, indices=_ints(f"{name}_idx", [0, 1, 2, 3]), dims=[4])


def _body(*, nodes=(), initializers=(), sparse=(), inputs=(), outputs=None) -> Any:
    """A small subgraph (a Loop/Scan body or an If branch) that passes its input through."""
    from onnx import TensorProto, helper

    outs = outputs if outputs is not None else [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]
    nodes = list(nodes) or [helper.make_node("Identity", ["x_in"], ["y"], name="pass")]
    g = helper.make_graph(nodes, "body", list(inputs) or [helper.make_tensor_value_info("x_in", TensorProto.FLOAT,
                                                                                           [1])], outs)
    g.initializer.extend(initializers)
    g.sparse_initializer.extend(sparse)
    return g


def _add_nodes(*make: Callable[[], list]) -> Callable[[Any, Path], None]:
    def fn(model: Any, b: Path) -> None:
        for m in make:
            model.graph.node.extend(m())
        _weights_file(b)
    return fn


def _node(op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs: Any) -> Any:
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs)


def _loop_with(body: Callable[[], Any], trip: int = 4) -> Callable[[Any, Path], None]:
    def fn(model: Any, b: Path) -> None:
        model.graph.initializer.extend([_ints("evil_trip", [trip])])
        model.graph.node.append(_node("Loop", ["evil_trip", ""], ["evil_loop_out"], "evil_loop", body=body()))
        _weights_file(b)
    return fn


def _loop_body_state() -> Any:
    """A Loop body: (iteration, cond) -> cond, carrying nothing (it only spins)."""
    from onnx import TensorProto, helper

    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")], "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])])


def _spin_with_external() -> Any:
    g = _loop_body_state()
    g.initializer.append(_external("body_w"))
    return g


def _if(then: Any, other: Any) -> Callable[[Any, Path], None]:
    def fn(model: Any, b: Path) -> None:
        from onnx import numpy_helper

        model.graph.initializer.append(numpy_helper.from_array(np.array(True), "evil_cond"))
        model.graph.node.append(_node("If", ["evil_cond"], ["y"], "evil_if", then_branch=then(), else_branch=other()))
        _weights_file(b)
    return fn


def _nested_ifs(depth: int) -> Any:
    g = _body()
    for _ in range(depth):
        g = _body(nodes=[_node("If", ["c"], ["y"], "deeper", then_branch=g, else_branch=_body())])
    return g


def _function(model: Any, b: Path) -> None:
    from onnx import helper

    fn = helper.make_function("com.evil", "f", ["x"], ["y"], [
        helper.make_node("Constant", [], ["k"], name="k", value=_external()),
        helper.make_node("Add", ["x", "k"], ["y"], name="add")], [helper.make_opsetid("", 17)])
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    model.graph.node.append(_node("f", ["region_emb"], ["evil_f_out"], "evil_call", domain="com.evil"))
    _weights_file(b)


def _function_inline(model: Any, b: Path) -> None:
    from onnx import helper

    fn = helper.make_function("com.evil", "g", ["x"], ["y"], [helper.make_node("Neg", ["x"], ["y"], name="n")],
                              [helper.make_opsetid("", 17)])
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    model.graph.node.append(_node("g", ["region_emb"], ["evil_g_out"], "evil_call", domain="com.evil"))


def _training_info(model: Any, b: Path) -> None:
    model.training_info.add().initialization.CopyFrom(_body())


def _initializer(name: str, dims: list[int], data: bytes) -> Callable[[Any, Path], None]:
    def fn(model: Any, b: Path) -> None:
        import onnx

        model.graph.initializer.append(onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=dims,
                                                        raw_data=data))
    return fn


def _shape_op(op: str, shape: list[int], constant_node: bool = False) -> Callable[[Any, Path], None]:
    def fn(model: Any, b: Path) -> None:
        from onnx import helper, numpy_helper

        if constant_node:
            model.graph.node.append(_node("Constant", [], ["evil_shape"], "evil_shape_const", value_ints=shape))
        else:
            model.graph.initializer.append(_ints("evil_shape", shape))
        model.graph.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), "evil_one"))
        inputs = ["evil_shape"] if op == "ConstantOfShape" else ["evil_one", "evil_shape"]
        model.graph.node.append(_node(op, inputs, ["evil_big"], f"evil_{op.lower()}",
                                      **({"value": helper.make_tensor("v", 1, [1], [1.0])}
                                         if op == "ConstantOfShape" else {})))
    return fn


def _range(start, limit, delta) -> Callable[[Any, Path], None]:
    def fn(model: Any, b: Path) -> None:
        from onnx import numpy_helper

        dtype = np.float32 if any(isinstance(v, float) for v in (start, limit, delta)) else np.int64
        for n, v in (("evil_start", start), ("evil_limit", limit), ("evil_delta", delta)):
            model.graph.initializer.append(numpy_helper.from_array(np.array(v, dtype), n))
        model.graph.node.append(_node("Range", ["evil_start", "evil_limit", "evil_delta"], ["evil_r"], "evil_range"))
    return fn


def _graph_attribute(model: Any, b: Path) -> None:
    model.graph.node.append(_node("Add", ["region_emb", "region_emb"], ["evil_sum"], "evil_add", g=_body()))


EXT = "keeps its data in the external file 'weights.bin'"
GRAPH_CASES += [
    # 9. external data, in every kind of tensor, wherever it sits
    ("ext_initializer", _graph_edit("encoder", lambda m, b: (m.graph.initializer.append(_external("evil_w")),
                                                             _weights_file(b))),
     "UnsafeGraphError", f"graph 'encoder' (encoder.onnx): tensor 'evil_w' (initializer) {EXT}",
     "an initializer in an unhashed file beside the graph"),
    ("ext_initializer_outside", _graph_edit("spatial", lambda m, b: m.graph.initializer.append(
        _external("evil_w", location="../../outside.bin"))),
     "UnsafeGraphError", "tensor 'evil_w' (initializer) keeps its data in the external file '../../outside.bin'",
     "an initializer in a file outside the bundle"),
    ("ext_no_location", _graph_edit("spatial", _external_without_location),
     "UnsafeGraphError", "tensor 'evil_w' (initializer) keeps its data in the external file ''",
     "marked external without naming a file"),
    ("ext_sparse_initializer", _graph_edit("spatial", lambda m, b: (m.graph.sparse_initializer.append(
        _sparse("evil_sparse", _external())), _weights_file(b))),
     "UnsafeGraphError", f"tensor 'evil_sparse' (sparse initializer (values)) {EXT}",
     "the values of a sparse initializer"),
    ("ext_constant_value", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "Constant", [], ["evil_c"], "evil_const", value=_external())])),
     "UnsafeGraphError", f"tensor 'evil_c' (node 'evil_const' (Constant) attribute 'value') {EXT}",
     "a Constant node's value"),
    ("ext_constant_sparse_value", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "Constant", [], ["evil_c"], "evil_const", sparse_value=_sparse("evil_sv", _external()))])),
     "UnsafeGraphError", f"tensor 'evil_sv' (node 'evil_const' (Constant) attribute 'sparse_value' (values)) {EXT}",
     "a Constant node's sparse value"),
    ("ext_attribute_tensor", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "ConstantOfShape", ["evil_s"], ["evil_f"], "evil_fill", value=_external("v", dims=(1,)))])),
     "UnsafeGraphError", "tensor 'v' (node 'evil_fill' (ConstantOfShape) attribute 'value') keeps its data in the "
     "external file 'weights.bin'", "a tensor attribute of another operator"),
    ("ext_tensors_attribute", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "Pwn", ["region_emb"], ["evil_p"], "evil_op", domain="com.evil", weights=[_external("w0"),
                                                                                _external("w1")])])),
     "UnsafeGraphError", f"tensor 'w0' (node 'evil_op' (com.evil.Pwn) attribute 'weights') {EXT}",
     "a TENSORS attribute"),
    ("ext_loop_body", _graph_edit("spatial", _loop_with(_spin_with_external)),
     "UnsafeGraphError", f"tensor 'body_w' (node 'evil_loop' (Loop) attribute 'body' > initializer) {EXT}",
     "an initializer inside a Loop body"),
    ("ext_if_branch", _graph_edit("spatial", _if(lambda: _body(nodes=[
        _node("Constant", [], ["y"], "k", value=_external())]), _body)),
     "UnsafeGraphError", "tensor 'y' (node 'evil_if' (If) attribute 'then_branch' > node 'k' (Constant) attribute "
     f"'value') {EXT}", "a Constant inside an If branch"),
    ("ext_scan_body", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "Scan", ["region_emb"], ["evil_s"], "evil_scan", num_scan_inputs=1,
        body=_body(sparse=[_sparse("scan_sw", _external())]))])),
     "UnsafeGraphError", f"tensor 'scan_sw' (node 'evil_scan' (Scan) attribute 'body' > sparse initializer "
     f"(values)) {EXT}", "a sparse initializer inside a Scan body"),
    ("ext_nested_subgraph", _graph_edit("spatial", _if(lambda: _body(nodes=[_node(
        "If", ["c"], ["y"], "inner", then_branch=_body(initializers=[_external("deep_w")]),
        else_branch=_body())]), _body)),
     "UnsafeGraphError", "tensor 'deep_w' (node 'evil_if' (If) attribute 'then_branch' > node 'inner' (If) "
     f"attribute 'then_branch' > initializer) {EXT}", "an initializer two subgraphs deep"),
    ("ext_function", _graph_edit("spatial", _function),
     "UnsafeGraphError", f"tensor 'k' (function 'f' > node 'k' (Constant) attribute 'value') {EXT}",
     "a Constant inside a model-local function"),
    # 10. what a graph may contain
    ("loop_unbounded", _graph_edit("spatial", _loop_with(_loop_body_state, trip=1 << 62)),
     "UnsafeGraphError", "node 'evil_loop' (Loop) is control flow, which can run without bound",
     "a Loop of 2**62 iterations"),
    ("scan_node", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "Scan", ["region_emb"], ["evil_s"], "evil_scan", num_scan_inputs=1, body=_body())])),
     "UnsafeGraphError", "node 'evil_scan' (Scan) is control flow", "a Scan"),
    ("if_node", _graph_edit("spatial", _if(_body, _body)),
     "UnsafeGraphError", "node 'evil_if' (If) is control flow", "an If"),
    ("nested_too_deep", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "If", ["c"], ["y"], "evil_if", then_branch=_nested_ifs(20), else_branch=_body())])),
     "GraphMismatchError", "spatial.onnx is not a valid ONNX model (truncated or corrupted): subgraphs nested "
     "deeper than 16", "subgraphs nested 21 deep"),
    ("custom_domain_op", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "Pwn", ["region_emb"], ["evil_p"], "evil_op", domain="com.evil")])),
     "UnsafeGraphError", "node 'evil_op' (com.evil.Pwn) is in the custom domain 'com.evil'",
     "an operator of a custom domain (native code from a shared library)"),
    ("microsoft_domain_op", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "FusedMatMul", ["region_emb", "region_emb"], ["evil_p"], "evil_op", domain="com.microsoft")])),
     "UnsafeGraphError", "node 'evil_op' (com.microsoft.FusedMatMul) is in the custom domain 'com.microsoft'",
     "an onnxruntime contrib operator"),
    ("unlisted_operator", _graph_edit("spatial", _add_nodes(lambda: [_node(
        "RandomNormal", [], ["evil_r"], "evil_random", shape=[1 << 20, 1 << 20])])),
     "UnsafeGraphError", "node 'evil_random' (RandomNormal): operator 'RandomNormal' is not one stp-edge export "
     "writes", "a standard operator export never writes (allocating 2**40 floats)"),
    ("huge_constant_of_shape", _graph_edit("spatial", _shape_op("ConstantOfShape", [1 << 20, 1 << 20])),
     "UnsafeGraphError", "operator 'ConstantOfShape' is not one stp-edge export writes",
     "ConstantOfShape of 2**40 elements"),
    ("huge_expand", _graph_edit("spatial", _shape_op("Expand", [1 << 16, 1 << 16, 64])),
     "UnsafeGraphError", "node 'evil_expand' (Expand) asks for a tensor of 274877906944 elements from constant "
     "shape operands", "Expand to 2**38 elements (1 TiB)"),
    ("huge_expand_constant_node", _graph_edit("spatial", _shape_op("Expand", [1 << 31, 1 << 31], True)),
     "UnsafeGraphError", "node 'evil_expand' (Expand) asks for a tensor of 4611686018427387904 elements",
     "Expand to a shape from a Constant node"),
    ("huge_range", _graph_edit("spatial", _range(0, 1 << 40, 1)),
     "UnsafeGraphError", "node 'evil_range' (Range) asks for a tensor of 1099511627776 elements",
     "Range over 2**40 integers"),
    ("huge_float_range", _graph_edit("spatial", _range(0.0, 1e30, 1.0)),
     "UnsafeGraphError", "node 'evil_range' (Range) asks for a tensor of", "Range over 1e30 floats"),
    ("endless_range", _graph_edit("spatial", _range(0, 10, 0)),
     "UnsafeGraphError", "node 'evil_range' (Range) has step 0 or an infinite bound (constant operands): it never "
     "ends", "Range of step 0"),
    ("huge_declared_initializer", _graph_edit("spatial", _initializer("evil_big", [1 << 40], b"\0" * 4)),
     "UnsafeGraphError", "of constants (largest: tensor 'evil_big' (initializer), [1099511627776]",
     "an initializer that declares 2**40 floats"),
    ("big_initializer", _graph_edit("spatial", _initializer("evil_blob", [1 << 20], b"\1" * (4 << 20))),
     "UnsafeGraphError", "holds 4.0 MiB of constants (largest: tensor 'evil_blob' (initializer), [1048576], "
     "4.0 MiB); a graph of this config holds at most", "4 MiB of weights no part of the config explains"),
    ("oversized_graph_file", _graph_edit("spatial", _initializer("evil_blob", [6 << 20], b"\1" * (24 << 20))),
     "UnsafeGraphError", "graph 'spatial' (spatial.onnx) is 24.0 MiB; a spatial graph of this config is at most",
     "a graph file far larger than its config explains (refused before it is parsed)"),
    ("graph_attribute", _graph_edit("spatial", _graph_attribute),
     "UnsafeGraphError", "node 'evil_add' (Add) holds subgraphs in attributes ['g']",
     "a subgraph hidden in an attribute of an allowed operator"),
    ("function_defined", _graph_edit("spatial", _function_inline),
     "UnsafeGraphError", "the model defines functions ['com.evil.g']", "a model-local function"),
    ("training_info", _graph_edit("spatial", _training_info),
     "UnsafeGraphError", "the model carries training graphs", "a training graph"),
]
CASES += GRAPH_CASES

SWAP = ("swapped_graph_other_config", _swap_graph, "GraphMismatchError",
        "graph 'spatial' input 'region_emb': expected shape [B,4,8], spatial.onnx has [B,16,8]",
        "spatial.onnx from a bundle of another config, hashes updated")


def make_cases(valid: Path, out: Path, other: Path | None = None) -> list[Case]:
    """Write every case into `out` (one bundle directory each) and cases.json; return the cases."""
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, mutate, error, fragment, what in CASES + ([SWAP] if other is not None else []):
        b = out / f"{name}.stp"
        if b.exists():
            shutil.rmtree(b)
        shutil.copytree(valid, b, symlinks=True)
        mutate(b, {"other": other})
        cases.append(Case(name, error, fragment, what))
    (out / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=2) + "\n", encoding="utf-8")
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("valid", type=Path, help="a valid bundle directory")
    ap.add_argument("out", type=Path, help="where to write the cases")
    ap.add_argument("--other", type=Path, help="a valid bundle of a different config (graph donor)")
    args = ap.parse_args(argv)
    cases = make_cases(args.valid, args.out, args.other)
    print(f"{len(cases)} hostile bundles in {args.out} (outcomes in {args.out / 'cases.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
