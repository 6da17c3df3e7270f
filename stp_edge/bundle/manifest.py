"""manifest.json: writing it (hashing every file) and reading it (schema checks), and the checksums.

Keys follow docs/bundle-format.md.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stp_edge.bundle.engines import EngineInfo
from stp_edge.bundle.errors import ChecksumError, ManifestError, MissingFileError
from stp_edge.config import STPromptConfig

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPH_NAMES = ("encoder", "temporal", "spatial")
REQUIRED_KEYS = ("schema_version", "stp_edge_version", "config", "preprocess", "graphs", "files", "precision",
                 "opset", "engines")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | Path, *, config: STPromptConfig, files: Iterable[str], precision: str,
                   opset: int, graphs: Mapping[str, Mapping[str, Any]], preprocess: Mapping[str, Any],
                   engines: Iterable[EngineInfo | Mapping[str, Any]] = (),
                   extra: Mapping[str, Any] | None = None) -> Path:
    """Write `manifest.json` into a bundle directory, hashing every listed file.

    Args:
        directory: The bundle directory; `files` are relative to it.
        config: The model configuration (stored as `config`, and its snippet, class, query and threshold
            fields are repeated at the top level for readers of the manifest).
        files: Relative paths to hash (graphs, engine plans, any extra file). The plans of every engine dir
            are added if missing, so an engine cannot be listed without its checksum.
        precision: "fp32" / "fp16" / "int8" of the ONNX graphs.
        opset: ONNX opset of the graphs.
        graphs: name -> {"file", "inputs", "outputs"} for encoder, temporal and spatial.
        preprocess: The preprocessing spec (image size, mean, std, resize/crop semantics).
        engines: EngineInfo or manifest dicts, one per engine set.
        extra: Further top-level keys (e.g. the exporter's provenance); they may not replace a standard key.

    Returns:
        Path of the written manifest.

    Raises:
        MissingFileError: A listed file does not exist.
        ManifestError: A required graph is not described.
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
        "spatial_queries": {"normal": list(config.normal_queries),
                            "abnormal": [[q, c] for q, c in config.abnormal_query_texts()]},
        "thresholds": {"score": config.score_threshold, "box": config.box_threshold},
        "precision": precision,
        "opset": int(opset),
        "graphs": {k: dict(v) for k, v in graphs.items()},
        "files": hashes,
        "engines": [e.to_dict() for e in engine_infos],
    }
    clash = sorted(set(extra or {}) & set(manifest))
    if clash:
        raise ManifestError(f"write_manifest: extra keys {clash} would replace standard manifest keys")
    manifest.update(extra or {})
    out = directory / MANIFEST
    out.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and schema-check `manifest.json` (no checksums)."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise ManifestError(f"bundle {directory} is not a directory (expected NAME.stp/ with {MANIFEST})")
    if not path.is_file():
        raise ManifestError(f"bundle {directory} has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError(f"{path}: schema_version must be an integer, got {version!r}")
    if version != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema_version {version} is not supported; this stp-edge reads "
                            f"schema_version {SCHEMA_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing keys {missing}")
    missing_graphs = [g for g in GRAPH_NAMES if g not in manifest["graphs"]]
    if missing_graphs:
        raise ManifestError(f"{path}: graphs {missing_graphs} are not described")
    return manifest


def verify_checksums(directory: str | Path, files: Mapping[str, str]) -> None:
    """Check every listed file exists and has the recorded sha256.

    Raises:
        MissingFileError: Names every missing file.
        ChecksumError: Names every differing file with its expected and actual hash.
    """
    directory = Path(directory)
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise MissingFileError(f"bundle {directory}: listed files are missing: {missing}")
    bad = []
    for f, expected in files.items():
        got = sha256_file(directory / f)
        if got != expected:
            bad.append(f"{f} (expected sha256 {expected}, got {got})")
    if bad:
        raise ChecksumError(f"bundle {directory}: files differ from the manifest (edited or corrupted): "
                            + "; ".join(bad))
