"""The exported model bundle: a directory with `manifest.json`, three ONNX graphs and optional TensorRT plans.

Layout and manifest keys follow docs/bundle-format.md. Loading checks the manifest (schema, digest, consistency,
a preprocessing the runtime implements), that every listed file stays inside the bundle and has its sha256, that
each ONNX graph declares the inputs and outputs the config implies, and what each graph holds (no data outside it,
only the operators export writes, constants and shapes within the config's bounds); it says exactly what does not
match. `Bundle.load` is the one loader: every entry point (run, info, verify, score, extract, serve, the Triton
repository writer, `Detector.load`) reads a bundle through it.

    errors.py         BundleError and its kinds
    schema.py         the published JSON Schema of manifest.json and its validator
    manifest.py       write_manifest / read_manifest / verify_checksums, the manifest digest
    preprocessing.py  PreprocessSpec: the manifest's `preprocess`, and what of it the runtime implements
    contract.py       the graphs' I/O implied by a config; a protobuf-free reader of an ONNX file's I/O
    wire.py           the protobuf wire format, read without onnx
    graph_walk.py     every node and tensor of an ONNX file, subgraphs and functions included
    graph_rules.py    what a bundle graph may contain (check_graph_content)
    engines.py        EngineInfo, TrtEnvironment, engine_mismatches, select_engine (pure functions of the machine)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stp_edge.bundle.contract import (
    HOST_REGIONS_REMOVED_IN,
    REGION_FEATURES,
    check_onnx_file,
    expected_io,
    host_regions_deprecated,
    read_onnx_io,
    region_features,
    warn_host_regions,
)
from stp_edge.bundle.engines import (
    HOST_CODE_REFUSED,
    EngineInfo,
    TrtEnvironment,
    describe_platform,
    engine_dir_name,
    engine_mismatches,
    gpu_slug,
    select_engine,
)
from stp_edge.bundle.errors import (
    BundleError,
    ChecksumError,
    EngineCompatibilityError,
    GraphMismatchError,
    ManifestError,
    MissingFileError,
    UnsafeGraphError,
    UnsafePathError,
)
from stp_edge.bundle.graph_rules import ALLOWED_OPERATORS, check_graph_content
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
from stp_edge.bundle.preprocessing import PreprocessSpec, describe_coverage, preprocess_text
from stp_edge.config import STPromptConfig
from stp_edge.errors import RandomWeightsWarning

__all__ = [
    "ALLOWED_OPERATORS", "GRAPH_NAMES", "MANIFEST", "REGION_FEATURES", "REQUIRED_KEYS", "SCHEMA_VERSION", "Bundle",
    "BundleError", "ChecksumError", "EngineCompatibilityError", "EngineInfo", "GraphMismatchError", "ManifestError",
    "MissingFileError", "TrtEnvironment", "UnsafeGraphError", "UnsafePathError", "check_files",
    "check_graph_content", "check_onnx_file", "engine_dir_name", "engine_mismatches", "expected_io", "gpu_slug",
    "manifest_digest", "manifest_text", "read_manifest", "read_onnx_io", "region_features", "rewrite_manifest",
    "select_engine", "sha256_file", "verify_checksums", "write_manifest",
]


def adapter_text(c: STPromptConfig) -> str:
    """The temporal adapter's form and streaming window, as `stp-edge info` prints it."""
    if c.adapter_form == "exp":
        return (f"exp: softmax(exp(-|i-j|/{c.adapter_sigma})) on a window of radius {c.adapter_window} "
                "(not banded: defined on the window, so streaming equals offline; docs/model.md)")
    return (f"distance: softmax(-|i-j|/{c.adapter_sigma}), banded at radius {c.adapter_radius} "
            f"(streaming equals offline to {c.adapter_tol:g})")


def region_term_text(c: STPromptConfig) -> str:
    """Whether SA2's region term is in the temporal score, and what a frame-only model keeps of the regions."""
    if c.region_term:
        return f"on (SA2: frame + the top-{c.motion_topk} moving regions)"
    return ("OFF: frame-only model (trained on features without regions, e.g. VadCLIP's); the score ignores the "
            "regions; the spatial map still scores the encoder's regions against the text queries (training-free)")


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
        regular file inside the bundle, its sha256 (skipped with `verify=False`), that each ONNX graph declares
        the inputs and outputs the config implies (names, float32, shapes), and what each graph holds
        (`stp_edge.bundle.graph_rules`; run with `verify=False` too). A bundle in the deprecated "host" region
        layout loads with a FutureWarning naming the release that stops reading it.

        Raises:
            BundleError: ManifestError, MissingFileError, UnsafePathError, ChecksumError, GraphMismatchError or
                UnsafeGraphError, one line naming the file and the difference.
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
            check_graph_content(g, bundle.graph_path(g), config)
        if host_regions_deprecated(config, bundle.region_features):
            warn_host_regions(path)
        if bundle.random_weights is not None:  # every entry point loads here: each one says it
            warnings.warn(bundle.random_weights, RandomWeightsWarning, stacklevel=2)
        return bundle

    @property
    def random_weights(self) -> str | None:
        """What a user must know when the manifest says the weights are random (`source.kind`); else None."""
        source = self.manifest.get("source")
        if not isinstance(source, dict) or source.get("kind") != "random":
            return None
        if source.get("clip_weights"):
            return (f"bundle {self.path}: CLIP weights with random STPrompt heads (exported with --random "
                    "--clip-weights): its encoder features are real, its scores, classes and boxes mean nothing")
        return (f"bundle {self.path} has random weights (exported with --random): its scores, classes and boxes "
                "mean nothing; export a trained model (--checkpoint DIR, or --demo) to detect anomalies")

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
        """"encoder" when the encoder graph returns region_emb; "host" (deprecated) when it returns patch_emb.

        The runtime pools a "host" bundle's patch_emb (tokens mode) or cuts and encodes the crops itself (crops
        mode), with the same results as the "encoder" layout, in every release before `HOST_REGIONS_REMOVED_IN`
        (docs/bundle-format.md, "Compatibility").
        """
        return region_features(self.manifest)

    @property
    def host_crops(self) -> bool:
        """True when the runtime cuts the crops from the preprocessed centre images, which must be on the host.

        Crops mode in the deprecated "host" layout; crops of the whole frame (region extent "frame") are views the
        preprocessors make, on either device.
        """
        return (self.config.region_mode == "crops" and self.region_features == "host"
                and self.config.region_extent != "frame")

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        """The preprocessing the encoder expects (manifest `preprocess`; checked at load to be one the runtime runs).

        Both preprocessors honour its size, mean and std (`stp_edge.pipeline.encode.make_preprocess`).
        """
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def precision(self) -> str:
        """Precision of the bundle (its encoder's ONNX graph)."""
        return str(self.manifest["precision"])

    def graph_precision(self, name: str) -> str:
        """Precision ONNX graph `name` was exported in (fp16 bundles keep the heads fp32: `graph_precision`)."""
        recorded = self.manifest.get("graph_precision") or {}
        return str(recorded.get(name, self.precision))

    def select_engine(self, env: TrtEnvironment, *, allow_host_code: bool = False,
                      precision: str | None = None) -> EngineInfo:
        """The engine set that runs on the machine `env` describes: the one engine choice, made once per load.

        Considers everything the runtime does: TensorRT version and lean runtime, compute capability, GPU name
        and platform (`engine_mismatches`), and whether plans that need host code may load (`select_engine`).

        Args:
            env: The machine (`stp_edge.backends.trt.trt_environment()` finds this one's).
            allow_host_code: The caller lets TensorRT run host code embedded in version-compatible plans.
            precision: Only engine sets of this precision (default: any).

        Raises:
            EngineCompatibilityError: None fits; names the machine, every refused set and why (also in its
                `reasons`), and the command that builds one.
        """
        engine, reasons = select_engine(self.engines, tensorrt_version=env.tensorrt_version,
                                        compute_capability=env.compute_capability, gpu_name=env.gpu_name,
                                        precision=precision, platform=env.platform, lean_runtime=env.lean,
                                        allow_host_code=allow_host_code)
        if engine is None:
            vc = " --version-compatible" if env.lean else ""
            host_code = any(r.endswith(HOST_CODE_REFUSED) for r in reasons)
            advice = ("Allow the host code (--allow-host-code) if you trust this bundle, or build"
                      if host_code else "Build")
            raise EngineCompatibilityError(
                f"bundle {self.path}: no TensorRT engine for {env.gpu_name} (sm {env.compute_capability}, "
                f"TensorRT {env.tensorrt_version}{' lean runtime' if env.lean else ''}, "
                f"{describe_platform(env.platform)}): " + "; ".join(reasons)
                + f". {advice} one on this machine (stp-edge build-engines {self.path}{vc}) or use --backend ort",
                reasons)
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
            f"adapter       {adapter_text(c)}",
            f"region term   {region_term_text(c)}",
            f"regions       {c.region_mode} {c.region_grid}x{c.region_grid}, computed "
            + ("in the encoder graph" if self.region_features == "encoder" else
               "from crops of the whole frame (region extent frame), cut by the preprocessing and encoded by the "
               "encoder graph" if c.region_extent == "frame" else "on the host (a deprecated "
               f"layout that stp-edge {HOST_REGIONS_REMOVED_IN} refuses; re-export to move them into the graph)"),
            f"classes       {', '.join(c.class_names)}",
            f"thresholds    score {c.score_threshold}  box {c.box_threshold} (box rule {c.box_rule})",
            f"preprocess    {preprocess_text(self.preprocess_spec)}",
            f"coverage      {describe_coverage(self.preprocess_spec)}",
        ]
        if self.random_weights is not None:
            lines.insert(1, "weights       RANDOM (exported with --random): scores, classes and boxes mean nothing")
        for name, g in m["graphs"].items():
            lines.append(f"graph         {name}: {g.get('file')}  in {g.get('inputs')}  out {g.get('outputs')}")
        for e in self.engines:
            lines.append(f"engine        {e.dir}: {e.precision} TensorRT {e.tensorrt_version} on {e.gpu_name} "
                         f"(sm {e.compute_capability})")
        lines.append(f"files         {len(m['files'])} checked by sha256")
        return "\n".join(lines)
