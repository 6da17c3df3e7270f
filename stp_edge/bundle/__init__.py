"""The exported model bundle: a directory with `manifest.json`, three ONNX graphs and optional TensorRT plans.

Layout and manifest keys follow docs/bundle-format.md. Loading checks the manifest (schema, digest, consistency),
that every listed file stays inside the bundle and has its sha256, and that each ONNX graph declares the inputs
and outputs the config implies; it says exactly what does not match.

    errors.py    BundleError and its kinds
    schema.py    the published JSON Schema of manifest.json and its validator
    manifest.py  write_manifest / read_manifest / verify_checksums, the manifest digest
    contract.py  the graphs' I/O implied by a config; a protobuf-free reader of an ONNX file's I/O
    engines.py   EngineInfo, engine_mismatches, select_engine (pure functions of the environment)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stp_edge.bundle.contract import REGION_FEATURES, check_onnx_file, expected_io, read_onnx_io, region_features
from stp_edge.bundle.engines import EngineInfo, engine_dir_name, engine_mismatches, gpu_slug, select_engine
from stp_edge.bundle.errors import (
    BundleError,
    ChecksumError,
    EngineCompatibilityError,
    GraphMismatchError,
    ManifestError,
    MissingFileError,
    UnsafePathError,
)
from stp_edge.bundle.manifest import (
    GRAPH_NAMES,
    MANIFEST,
    REQUIRED_KEYS,
    SCHEMA_VERSION,
    check_files,
    manifest_digest,
    manifest_text,
    read_manifest,
    rewrite_manifest,
    sha256_file,
    verify_checksums,
    write_manifest,
)
from stp_edge.config import STPromptConfig

__all__ = [
    "GRAPH_NAMES", "MANIFEST", "REGION_FEATURES", "REQUIRED_KEYS", "SCHEMA_VERSION", "Bundle", "BundleError",
    "ChecksumError", "EngineCompatibilityError", "EngineInfo", "GraphMismatchError", "ManifestError",
    "MissingFileError", "UnsafePathError", "check_files", "check_onnx_file", "engine_dir_name", "engine_mismatches",
    "expected_io", "gpu_slug", "manifest_digest", "manifest_text", "read_manifest", "read_onnx_io", "region_features",
    "rewrite_manifest", "select_engine", "sha256_file", "verify_checksums", "write_manifest",
]


@dataclass
class Bundle:
    """A loaded, checked bundle. Use `Bundle.load(path)`."""

    path: Path
    manifest: dict[str, Any]
    config: STPromptConfig
    engines: list[EngineInfo]

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Bundle:
        """Read and check the bundle at `path` (the bundle dir or its manifest.json).

        Checks, stopping at the first problem: the manifest (see `read_manifest`), that every listed file is a
        regular file inside the bundle, its sha256 (skipped with `verify=False`), and that each ONNX graph
        declares the inputs and outputs the config implies (names, float32, shapes).

        Raises:
            BundleError: ManifestError, MissingFileError, UnsafePathError, ChecksumError or GraphMismatchError,
                one line naming the file and the difference.
        """
        path = Path(path)
        if path.name == MANIFEST and path.is_file():
            path = path.parent
        manifest = read_manifest(path)
        (verify_checksums if verify else check_files)(path, manifest["files"])
        config = STPromptConfig.from_dict(manifest["config"])  # checked by read_manifest
        engines = [EngineInfo.from_dict(e) for e in manifest["engines"]]
        bundle = cls(path=path, manifest=manifest, config=config, engines=engines)
        expected = expected_io(config, bundle.region_features)
        for g in GRAPH_NAMES:
            check_onnx_file(g, bundle.graph_path(g), expected[g])
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
    def region_features(self) -> str:
        """"encoder" when the encoder graph returns region_emb; "host" for bundles exported before it did.

        A "host" bundle's encoder returns patch_emb, and the runtime pools it (tokens mode) or cuts and encodes
        the crops itself (crops mode), as it always did: such bundles keep running unchanged.
        """
        return region_features(self.manifest)

    @property
    def host_crops(self) -> bool:
        """True when the runtime cuts the crops itself: crops mode, regions computed on the host."""
        return self.config.region_mode == "crops" and self.region_features == "host"

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
            f"regions       {c.region_mode} {c.region_grid}x{c.region_grid}, computed "
            + ("in the encoder graph" if self.region_features == "encoder" else "on the host (exported before "
               "region features moved into the encoder graph; re-export to move them)"),
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
