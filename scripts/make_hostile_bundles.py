"""Write a corpus of hostile bundles, each derived from one valid bundle, with the outcome loading must give.

    python scripts/make_hostile_bundles.py VALID.stp OUT_DIR [--other OTHER_CONFIG.stp]

Each case is a directory OUT_DIR/<name>.stp and a line of OUT_DIR/cases.json: {"name", "error", "fragment",
"what"}: `Bundle.load` must raise exactly `error` (a stp_edge.bundle error class) with `fragment` in its
one-line message. tests/test_hostile_bundles.py builds the corpus from the hand-made test bundle and checks
every case. Cases marked "resealed" edit the bundle and then recompute the file hashes and the manifest digest,
as an attacker who knows the format would, so they reach the checks behind the checksums.
`--other` is a valid bundle of a different config (a donor of graphs that do not fit); without it the
swapped-graph case is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
