"""The exported model bundle: a directory with `manifest.json`, three ONNX graphs and optional TensorRT plans.

Layout and manifest keys follow docs/architecture.md ("Bundle"). Loading checks the schema version and the
sha256 of every listed file and says exactly what does not match. Whether a TensorRT plan fits the machine is
decided by pure functions (`engine_mismatches`, `select_engine`) that take the current environment as
arguments, so they are tested without a GPU.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stp_edge.config import STPromptConfig

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
GRAPH_NAMES = ("encoder", "temporal", "spatial")
REQUIRED_KEYS = ("schema_version", "stp_edge_version", "config", "preprocess", "graphs", "files", "precision",
                 "opset", "engines")


class BundleError(Exception):
    """Base class of every problem with a bundle."""


class ManifestError(BundleError):
    """manifest.json is missing, unreadable, of an unknown schema, or lacks a key."""


class MissingFileError(BundleError):
    """A file listed in the manifest is not in the bundle."""


class ChecksumError(BundleError):
    """A file's sha256 differs from the manifest (the file was edited or corrupted)."""


class EngineCompatibilityError(BundleError):
    """No TensorRT plan of the bundle fits this machine (GPU, compute capability or TensorRT version)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gpu_slug(gpu_name: str) -> str:
    """File-system friendly GPU name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"


def engine_dir_name(gpu_name: str, precision: str) -> str:
    """Relative directory of one engine set: `engines/<gpu-slug>-<precision>`."""
    return f"engines/{gpu_slug(gpu_name)}-{precision}"


@dataclass(frozen=True)
class EngineInfo:
    """One set of TensorRT plans (encoder/temporal/spatial) built for one GPU and precision."""

    dir: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    build_flags: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineInfo:
        """Build from a manifest `engines` entry; a missing key raises ManifestError naming it."""
        missing = [k for k in ("dir", "precision", "tensorrt_version", "gpu_name", "compute_capability")
                   if k not in d]
        if missing:
            raise ManifestError(f"engine entry {dict(d)} lacks keys {missing}")
        return cls(dir=str(d["dir"]), precision=str(d["precision"]), tensorrt_version=str(d["tensorrt_version"]),
                   gpu_name=str(d["gpu_name"]), compute_capability=str(d["compute_capability"]),
                   build_flags=dict(d.get("build_flags", {})))

    def to_dict(self) -> dict[str, Any]:
        """Manifest form."""
        return {"dir": self.dir, "precision": self.precision, "tensorrt_version": self.tensorrt_version,
                "gpu_name": self.gpu_name, "compute_capability": self.compute_capability,
                "build_flags": dict(self.build_flags)}


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v))


def _cc_tuple(cc: str | tuple[int, int] | float) -> tuple[int, int]:
    if isinstance(cc, tuple):
        return int(cc[0]), int(cc[1])
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def engine_mismatches(engine: EngineInfo, *, tensorrt_version: str, compute_capability: str | tuple[int, int],
                      gpu_name: str | None = None) -> list[str]:
    """Why `engine` cannot run in the given environment; an empty list means it can.

    TensorRT plans are tied to the exact TensorRT version (major.minor.patch) unless built version-compatible
    (`build_flags["version_compatible"]`: same major, runtime not older), and to the compute capability unless
    built hardware-compatible (`build_flags["hardware_compatibility"] == "ampere_plus"`: any SM >= 8.0). A
    different GPU name with the same compute capability runs (TensorRT warns that tactics may be slower), so
    it is not a mismatch here (`select_engine` prefers a plan built on the same GPU model).

    Args:
        engine: The manifest entry.
        tensorrt_version: Version of the TensorRT runtime on this machine, e.g. "10.3.0".
        compute_capability: This GPU's compute capability, "8.7" or (8, 7).
        gpu_name: This GPU's name, named in the compute-capability message (not part of the decision).
    """
    reasons = []
    built, have = _version_tuple(engine.tensorrt_version), _version_tuple(tensorrt_version)
    if engine.build_flags.get("version_compatible"):
        if built[:1] != have[:1] or have < built:
            reasons.append(f"TensorRT version: engine built (version-compatible) with {engine.tensorrt_version}, "
                           f"runtime is {tensorrt_version} (needs the same major version, not older)")
    elif built[:3] != have[:3]:
        reasons.append(f"TensorRT version: engine built with {engine.tensorrt_version}, runtime is "
                       f"{tensorrt_version}")
    cc_built, cc_have = _cc_tuple(engine.compute_capability), _cc_tuple(compute_capability)
    if engine.build_flags.get("hardware_compatibility") == "ampere_plus":
        if cc_have < (8, 0):
            reasons.append(f"compute capability: engine is Ampere+ hardware-compatible, GPU has "
                           f"{cc_have[0]}.{cc_have[1]}")
    elif cc_built != cc_have:
        reasons.append(f"compute capability: engine built for {engine.compute_capability} "
                       f"({engine.gpu_name}), GPU has {cc_have[0]}.{cc_have[1]}"
                       + (f" ({gpu_name})" if gpu_name else ""))
    return reasons


def select_engine(engines: Sequence[EngineInfo], *, tensorrt_version: str, compute_capability: str | tuple[int, int],
                  gpu_name: str, precision: str | None = None) -> tuple[EngineInfo | None, list[str]]:
    """Pick the engine set for this environment: exact GPU name first, then any compatible one.

    Returns:
        (engine or None, reasons): the reasons list explains every rejected engine, one line each, so a caller
        that finds none can say exactly why.
    """
    ok, reasons = [], []
    for e in engines:
        if precision is not None and e.precision != precision:
            reasons.append(f"{e.dir}: precision {e.precision}, wanted {precision}")
            continue
        why = engine_mismatches(e, tensorrt_version=tensorrt_version, compute_capability=compute_capability,
                                gpu_name=gpu_name)
        if why:
            reasons.append(f"{e.dir}: " + "; ".join(why))
        else:
            ok.append(e)
    if not engines:
        reasons.append("the bundle has no TensorRT engines")
    if not ok:
        return None, reasons
    ok.sort(key=lambda e: gpu_slug(e.gpu_name) != gpu_slug(gpu_name))  # same GPU model first (stable sort)
    return ok[0], reasons


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


@dataclass
class Bundle:
    """A loaded, checked bundle. Use `Bundle.load(path)`."""

    path: Path
    manifest: dict[str, Any]
    config: STPromptConfig
    engines: list[EngineInfo]

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        """Read the manifest of `path` (the bundle dir or its manifest.json) and check every file's sha256.

        Raises:
            ManifestError, MissingFileError, ChecksumError: With a message naming the file and the difference.
        """
        path = Path(path)
        if path.name == MANIFEST and path.is_file():
            path = path.parent
        manifest = read_manifest(path)
        if verify:
            verify_checksums(path, manifest["files"])
        try:
            config = STPromptConfig.from_dict(manifest["config"])
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{path / MANIFEST}: invalid config: {exc}") from exc
        engines = [EngineInfo.from_dict(e) for e in manifest["engines"]]
        bundle = cls(path=path, manifest=manifest, config=config, engines=engines)
        for g in GRAPH_NAMES:
            if not bundle.graph_path(g).is_file():
                raise MissingFileError(f"bundle {path}: graph {g!r} file {bundle.graph_path(g).name} is missing")
        return bundle

    def graph_path(self, name: str) -> Path:
        """Path of the ONNX graph `name` ('encoder', 'temporal' or 'spatial')."""
        if name not in self.manifest["graphs"]:
            raise KeyError(f"bundle {self.path} has no graph {name!r}; it has {sorted(self.manifest['graphs'])}")
        return self.path / self.manifest["graphs"][name]["file"]

    def plan_path(self, engine: EngineInfo, name: str) -> Path:
        """Path of the TensorRT plan of graph `name` in engine set `engine`."""
        return self.path / engine.dir / f"{name}.plan"

    @property
    def precision(self) -> str:
        """Precision of the bundle (its encoder's ONNX graph)."""
        return str(self.manifest["precision"])

    def graph_precision(self, name: str) -> str:
        """Precision ONNX graph `name` was exported in (fp16 bundles keep the heads fp32: `graph_precision`)."""
        recorded = self.manifest.get("graph_precision") or {}
        return str(recorded.get(name, self.precision))

    def select_engine(self, *, tensorrt_version: str, compute_capability: str | tuple[int, int], gpu_name: str,
                      precision: str | None = None) -> EngineInfo:
        """The engine set for this environment, or EngineCompatibilityError listing why each one was refused."""
        engine, reasons = select_engine(self.engines, tensorrt_version=tensorrt_version,
                                        compute_capability=compute_capability, gpu_name=gpu_name,
                                        precision=precision)
        if engine is None:
            raise EngineCompatibilityError(
                f"bundle {self.path}: no TensorRT engine for {gpu_name} (compute capability "
                f"{compute_capability}, TensorRT {tensorrt_version}): " + "; ".join(reasons)
                + ". Build one with `stp-edge build-engines` on this machine or use --backend ort")
        return engine

    def summary(self) -> str:
        """Human-readable description for `stp-edge info`."""
        m, c = self.manifest, self.config
        lines = [
            f"bundle        {self.path}",
            f"schema        {m['schema_version']} (stp-edge {m['stp_edge_version']}, created {m.get('created')})",
            f"precision     {m['precision']}  opset {m['opset']}",
            f"image size    {c.vision.image_size}  embed {c.vision.embed_dim}  layers {c.vision.layers}",
            f"snippets      {c.snippet_len} frames, {c.frames_per_snippet} sampled; context {c.context}",
            f"regions       {c.region_mode} {c.region_grid}x{c.region_grid}",
            f"classes       {', '.join(c.class_names)}",
            f"thresholds    score {c.score_threshold}  box {c.box_threshold}",
        ]
        for name, g in m["graphs"].items():
            lines.append(f"graph         {name}: {g.get('file')}  in {g.get('inputs')}  out {g.get('outputs')}")
        for e in self.engines:
            lines.append(f"engine        {e.dir}: {e.precision} TensorRT {e.tensorrt_version} on {e.gpu_name} "
                         f"(sm {e.compute_capability})")
        lines.append(f"files         {len(m['files'])} checked by sha256")
        return "\n".join(lines)
