"""manifest.json: writing it (hashing every file, sealing it with a digest) and reading it back, checked.

Reading checks, in this order, and stops at the first problem with a one-line `BundleError`:
the file (inside the bundle, a regular file, at most 16 MiB, strict JSON: no duplicate keys, NaN or overflowing
numbers), `schema_version`, the published JSON Schema (stp_edge/bundle/schema.py = docs/manifest.schema.json),
`manifest_digest` (so any edit after export is caught), and the manifest's own consistency (every file it names
is listed and hashed; the repeated keys and the graphs' I/O agree with the config). Keys and rules:
docs/bundle-format.md.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stp_edge.bundle.contract import (
    REGION_FEATURES,
    expected_io,
    host_regions_deprecated,
    io_mismatches,
    region_features,
    region_layout_problems,
    warn_host_regions,
)
from stp_edge.bundle.engines import EngineInfo
from stp_edge.bundle.errors import ChecksumError, ManifestError, MissingFileError, UnsafePathError
from stp_edge.bundle.preprocessing import PreprocessSpec
from stp_edge.bundle.schema import SchemaViolation, validate
from stp_edge.config import STPromptConfig
from stp_edge.errors import UsageError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DIGEST_KEY = "manifest_digest"
MAX_MANIFEST_BYTES = 16 << 20
GRAPH_NAMES = ("encoder", "temporal", "spatial")
REQUIRED_KEYS = ("schema_version", "stp_edge_version", "created", "config", "preprocess", "snippet_len",
                 "class_names", "spatial_queries", "thresholds", "precision", "opset", "graphs", "files", "engines",
                 DIGEST_KEY)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- the digest ----------------------------------------------------------------------------------------------
def _jcs_number(x: float) -> str:
    """A float as ECMAScript's Number.prototype.toString writes it (RFC 8785 section 3.2.2.3)."""
    if not math.isfinite(x):
        raise UsageError(f"{x} is not a JSON number")
    if x == 0:
        return "0"
    sign, r = ("-" if x < 0 else ""), repr(abs(x))  # repr: the shortest digits that round-trip
    mantissa, _, exp = r.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    n = len(whole) + int(exp or 0) - (len(whole + frac) - len((whole + frac).lstrip("0")))
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    return sign + digits[0] + ("." + digits[1:] if k > 1 else "") + ("e+" if e > 0 else "e-") + str(abs(e))


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JSON Canonicalization Scheme) bytes of a JSON value: sorted keys, no whitespace, UTF-8."""
    def enc(v: Any) -> str:
        if v is None or isinstance(v, bool):
            return "null" if v is None else ("true" if v else "false")
        if isinstance(v, int):  # RFC 8785 numbers are doubles: exact up to 2**53
            return str(v) if abs(v) <= 1 << 53 else _jcs_number(float(v))
        if isinstance(v, float):
            return _jcs_number(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(enc(i) for i in v) + "]"
        if isinstance(v, dict):
            keys = sorted(v, key=lambda k: k.encode("utf-16-be"))  # RFC 8785 sorts by UTF-16 code units
            return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + enc(v[k]) for k in keys) + "}"
        raise TypeError(f"{type(v).__name__} is not a JSON value")
    return enc(value).encode("utf-8")


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 (hex) of the manifest's canonical JSON without its `manifest_digest` key."""
    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != DIGEST_KEY})).hexdigest()


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """The text of manifest.json for `manifest`, sealed with a fresh `manifest_digest`.

    Every writer of manifest.json goes through this (write_manifest, the engine installer, tools that edit a
    manifest on purpose), so only a deliberate rewrite, never a stray edit, produces a loadable manifest.
    """
    sealed = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    sealed[DIGEST_KEY] = manifest_digest(sealed)
    return json.dumps(sealed, indent=2) + "\n"


def rewrite_manifest(directory: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write `manifest` (edited on purpose) into `directory`/manifest.json with a fresh digest; no checks."""
    out = Path(directory) / MANIFEST
    out.write_text(manifest_text(manifest), encoding="utf-8")
    return out


# --- writing -------------------------------------------------------------------------------------------------
def write_manifest(directory: str | Path, *, config: STPromptConfig, files: Iterable[str], precision: str,
                   opset: int, graphs: Mapping[str, Mapping[str, Any]], preprocess: Mapping[str, Any],
                   engines: Iterable[EngineInfo | Mapping[str, Any]] = (),
                   extra: Mapping[str, Any] | None = None, regions: str | None = "encoder") -> Path:
    """Write `manifest.json` into a bundle directory, hashing every listed file and sealing it with its digest.

    Args:
        directory: The bundle directory; `files` are relative to it.
        config: The model configuration (stored as `config`, and its snippet, class, query and threshold
            fields are repeated at the top level for readers of the manifest).
        files: Relative paths to hash (graphs, engine plans, any extra file). The plans of every engine dir
            are added if missing, so an engine cannot be listed without its checksum.
        precision: "fp32" / "fp16" / "int8" of the ONNX graphs.
        opset: ONNX opset of the graphs.
        graphs: name -> {"file", "inputs": {name: shape}, "outputs": {name: shape}} for encoder, temporal and
            spatial; a shape lists sizes and symbolic names ("B", "T") of dynamic axes.
        preprocess: The preprocessing spec (image size, mean, std, resize/crop semantics).
        engines: EngineInfo or manifest dicts, one per engine set.
        extra: Further top-level keys the schema defines (source, graph_precision, exporter).
        regions: `region_features`: "encoder" (the encoder graph outputs region_emb) or "host" (it outputs
            patch_emb); None leaves the key out, which means "host". "host" and None are deprecated (a
            FutureWarning): `HOST_REGIONS_REMOVED_IN` stops reading them (docs/bundle-format.md).

    Returns:
        Path of the written manifest.

    Raises:
        MissingFileError: A listed file does not exist.
        ManifestError: The manifest would break the schema or contradict itself (a graph is not described, ...).
    """
    from stp_edge._version import __version__

    directory = Path(directory)
    engine_infos = [e if isinstance(e, EngineInfo) else EngineInfo.from_dict(e) for e in engines]
    rel = list(dict.fromkeys(str(Path(f).as_posix()) for f in files))
    for e in engine_infos:
        for plan in sorted((directory / e.dir).glob("*.plan")):
            p = plan.relative_to(directory).as_posix()
            if p not in rel:
                rel.append(p)
    if regions is not None and regions not in REGION_FEATURES:
        raise ManifestError(f"write_manifest: regions must be one of {REGION_FEATURES}, got {regions!r}")
    if host_regions_deprecated(config, regions):
        warn_host_regions(directory)
    missing_graphs = [g for g in GRAPH_NAMES if g not in graphs]
    if missing_graphs:
        raise ManifestError(f"write_manifest: graphs {missing_graphs} are not described (need {GRAPH_NAMES})")
    hashes = {}
    for f in rel:
        p = directory / f
        if not p.is_file():
            raise MissingFileError(f"write_manifest: listed file {f!r} does not exist in {directory}")
        hashes[f] = sha256_file(p)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "stp_edge_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "preprocess": dict(preprocess),
        "snippet_len": config.snippet_len,
        "class_names": list(config.class_names),
        "spatial_queries": _spatial_queries(config),
        "thresholds": {"score": config.score_threshold, "box": config.box_threshold},
        "precision": precision,
        "opset": int(opset),
        "graphs": {k: json.loads(json.dumps(v)) for k, v in graphs.items()},
        "files": hashes,
        "engines": [e.to_dict() for e in engine_infos],
        **({} if regions is None else {"region_features": regions}),
    }
    clash = sorted(set(extra or {}) & set(manifest))
    if clash:
        raise ManifestError(f"write_manifest: extra keys {clash} would replace standard manifest keys")
    manifest.update(extra or {})
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    check_manifest(manifest, f"write_manifest ({directory})")
    return rewrite_manifest(directory, manifest)


def _spatial_queries(config: STPromptConfig) -> dict[str, Any]:
    return {"normal": list(config.normal_queries), "abnormal": [[q, c] for q, c in config.abnormal_query_texts()]}


# --- reading -------------------------------------------------------------------------------------------------
def _inside(root: Path, path: Path) -> Path:
    """`path` with every symlink resolved, or UnsafePathError when that leaves `root` (already resolved)."""
    real = path.resolve()
    if real != root and root not in real.parents:
        raise UnsafePathError(f"{path} leads outside the bundle (to {real})")
    return real


def _strict_json(text: str) -> Any:
    """json.loads that refuses duplicate keys, NaN/Infinity and numbers that overflow a double."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise UsageError(f"duplicate key {k!r}")
            out[k] = v
        return out

    def constant(name: str) -> None:
        raise UsageError(f"{name} is not a JSON number")

    def number(s: str) -> float:
        x = float(s)
        if not math.isfinite(x):
            raise UsageError(f"number {s[:40]} overflows a double")
        return x

    return json.loads(text, object_pairs_hook=pairs, parse_constant=constant, parse_float=number)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read `manifest.json` and check it: strict JSON, schema version, JSON Schema, digest, consistency.

    Raises:
        ManifestError: One line naming the manifest and the first problem.
        UnsafePathError: manifest.json is a symlink out of the bundle or not a regular file.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise ManifestError(f"bundle {directory} not found (a bundle is a directory NAME.stp/ with {MANIFEST}, "
                            "written by `stp-edge export`)")
    if not directory.is_dir():
        raise ManifestError(f"bundle {directory} is not a directory (expected NAME.stp/ with {MANIFEST})")
    if not path.exists():
        raise ManifestError(f"bundle {directory} has no {MANIFEST}")
    real = _inside(directory.resolve(), path)
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path} is not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path} is {st.st_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
    try:
        manifest = _strict_json(real.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ManifestError(f"{path} is not valid JSON: {_one_line(exc)}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError(f"{path}: schema_version must be an integer, got {_short(version)}")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema_version {_short(version)} is not supported; this stp-edge reads "
                            f"schema_version {SCHEMA_VERSION}")
    check_manifest(manifest, str(path))
    return manifest


def check_manifest(manifest: Mapping[str, Any], where: str) -> STPromptConfig:
    """Schema, digest and consistency checks of a parsed manifest; returns its config.

    Raises:
        ManifestError: One line, prefixed by `where`.
    """
    try:
        validate(manifest)
    except SchemaViolation as exc:
        raise ManifestError(f"{where}: {exc} (schema: docs/manifest.schema.json)") from None
    try:
        actual = manifest_digest(manifest)
    except (UnicodeEncodeError, TypeError, ValueError, OverflowError) as exc:
        raise ManifestError(f"{where}: cannot be canonicalised for its digest: {_one_line(exc)}") from None
    if manifest[DIGEST_KEY] != actual:
        raise ManifestError(f"{where} was edited after export: its {DIGEST_KEY} is {manifest[DIGEST_KEY]}, its "
                            f"content hashes to {actual}; re-export the bundle (or reseal a deliberate edit "
                            f"with stp_edge.bundle.rewrite_manifest)")
    try:
        config = STPromptConfig.from_dict(manifest["config"])
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ManifestError(f"{where}: invalid config: {_one_line(exc)}") from None
    problems = consistency_problems(manifest, config)
    if problems:
        raise ManifestError(f"{where}: " + "; ".join(problems))
    return config


def consistency_problems(manifest: Mapping[str, Any], config: STPromptConfig) -> list[str]:
    """Contradictions inside a schema-valid manifest, one line each (empty: none)."""
    files = manifest["files"]
    out = []
    if MANIFEST in files:
        out.append(f"files lists {MANIFEST} itself (the manifest is covered by {DIGEST_KEY}, not by files)")
    for g, entry in manifest["graphs"].items():
        if entry["file"] not in files:
            out.append(f"graph {g!r} file {entry['file']!r} is not listed in files (so not hashed)")
    dirs = [e["dir"] for e in manifest["engines"]]
    if len(set(dirs)) != len(dirs):
        out.append(f"engines lists a dir twice: {dirs}")
    for d in dict.fromkeys(dirs):
        unlisted = [f"{d}/{g}.plan" for g in GRAPH_NAMES if f"{d}/{g}.plan" not in files]
        if unlisted:
            out.append(f"engine plans {unlisted} are not listed in files (so not hashed)")
    repeats = {"snippet_len": config.snippet_len, "class_names": list(config.class_names),
               "thresholds": {"score": config.score_threshold, "box": config.box_threshold},
               "spatial_queries": _spatial_queries(config)}
    out += [f"{k} {_short(manifest[k])} differs from the config's {_short(v)}"
            for k, v in repeats.items() if manifest[k] != v]
    if manifest["preprocess"]["size"] != config.vision.image_size:
        out.append(f"preprocess.size {manifest['preprocess']['size']} differs from config.vision.image_size "
                   f"{config.vision.image_size}")
    out += [f"{p}; re-export the model for this runtime's preprocessing"
            for p in PreprocessSpec.from_dict(manifest["preprocess"]).unsupported()]
    out += region_layout_problems(config, region_features(manifest), int(manifest["preprocess"].get("region_grid", 0)))
    graph_precision = manifest.get("graph_precision", {})
    if graph_precision.get("encoder", manifest["precision"]) != manifest["precision"]:
        out.append(f"graph_precision.encoder {graph_precision['encoder']!r} differs from precision "
                   f"{manifest['precision']!r}")
    expected = expected_io(config, region_features(manifest))
    for g in GRAPH_NAMES:
        out += io_mismatches(g, expected[g], manifest["graphs"][g], "the manifest")
    return out


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value)
    except ValueError:
        text = "a huge number"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --- the files -----------------------------------------------------------------------------------------------
def check_files(directory: str | Path, files: Iterable[str]) -> None:
    """Every listed file exists, is a regular file and resolves (symlinks included) inside the bundle.

    Raises:
        MissingFileError: Names every missing file.
        UnsafePathError: A path leads outside the bundle or to something other than a regular file.
    """
    directory = Path(directory)
    root = directory.resolve()
    files = list(files)
    missing = [f for f in files if not (directory / f).exists()]
    if missing:
        raise MissingFileError(f"bundle {directory}: listed files are missing: {missing}")
    for f in files:
        if Path(f).is_absolute() or ".." in Path(f).parts or "\\" in f:
            raise UnsafePathError(f"bundle {directory}: listed path {f!r} is not a plain relative path")
        real = _inside(root, directory / f)
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise UnsafePathError(f"bundle {directory}: {f} is not a regular file")


def verify_checksums(directory: str | Path, files: Mapping[str, str]) -> None:
    """Check every listed file (see `check_files`) and that it has the recorded sha256.

    Raises:
        MissingFileError: Names every missing file.
        UnsafePathError: A path leads outside the bundle or is not a regular file.
        ChecksumError: Names every differing file with its expected and actual hash.
    """
    directory = Path(directory)
    check_files(directory, files)
    bad = []
    for f, expected in files.items():
        got = sha256_file(directory / f)
        if got != expected:
            bad.append(f"{f} (expected sha256 {expected}, got {got})")
    if bad:
        raise ChecksumError(f"bundle {directory}: files differ from the manifest (edited or corrupted): "
                            + "; ".join(bad))
