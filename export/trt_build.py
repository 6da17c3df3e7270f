"""Bundle ONNX graphs -> TensorRT plans, through the TensorRT Python API (TensorRT >= 10 only).

Three small pieces: pure functions decide the optimisation profiles, the per-graph precision mode
and the build flags the manifest records (tested without TensorRT); `build_engine()` turns one ONNX file into
one plan; `build_bundle_engines()` builds the three plans of a bundle into a hidden staging directory and
installs them as `engines/<gpu-slug>-<precision>/` with an updated manifest, so a failed build changes
nothing. Plans are written exactly as TensorRT serialises them (no prefix: trtexec, Triton and DeepStream load
the same files).

TensorRT 10 is the oldest version supported: explicit batch is its only network mode, so networks are created
with `create_network(0)` (TensorRT 8.x needed `1 << EXPLICIT_BATCH`; that path is not supported). Precision:

* fp32: no precision flag; TF32 is cleared, so an fp32 engine computes in IEEE fp32 and matches the ONNX
  graph within `verify`'s fp32 tolerance (TF32 rounds matmul inputs to 10-bit mantissas, ~1e-3 relative).
* fp16: the engine set's precision applies to the encoder; the temporal and spatial heads keep the precision
  of their ONNX graphs (float32 from our exporter, for the reason given in `bundle_export`). An encoder
  exported in fp16 is built as a strongly typed network (types come from the ONNX graph, the path TensorRT
  10.12+ recommends). An encoder exported in fp32 is built with `BuilderFlag.FP16` (weak typing, deprecated
  in TensorRT 10.12 and removed in 11); on a TensorRT without that flag the build is refused with the fix
  (export the bundle with `--precision fp16`) rather than silently producing an fp32 engine labelled fp16.
* int8: explicit quantization only. The encoder must have been exported with `--precision int8` (Q/DQ nodes
  from `stp_edge.export.quantize`, calibrated on the user's frames; the heads stay fp32): no calibration cache,
  no implicit quantization. TensorRT 10.x builds it with `BuilderFlag.INT8` and `BuilderFlag.FP16` (weak
  typing: the Q/DQ scales decide which layers run in INT8; the unquantised rest may run in fp16, as an fp16
  engine's would, instead of strict fp32); TensorRT 11, which has no INT8
  flag, builds it strongly typed (the graph's Q/DQ types are the precision). An int8 engine from an fp32 or
  fp16 graph is refused with the fix (re-export with --precision int8 --calib DIR).

Every TensorRT attribute used here is listed in `TRT_BUILDER_API`; tests/test_trt_build.py checks the list
against the published type stubs of TensorRT 10.8 (the oldest on PyPI; JetPack 6 ships 10.3) and 10.13, where
only `OPTIONAL_API` names may be absent from the older one, and checks that this file uses nothing outside the
list. Jetson stays on TensorRT 10.x; the TensorRT 11 path is strongly typed only.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from stp_edge.bundle import (
    GRAPH_NAMES,
    MANIFEST,
    Bundle,
    BundleError,
    EngineInfo,
    engine_dir_name,
    read_manifest,
    sha256_file,
)
from stp_edge.bundle.engines import default_profiles, gpu_slug
from stp_edge.bundle.manifest import manifest_text
from stp_edge.config import STPromptConfig
from stp_edge.errors import UsageError

log = logging.getLogger(__name__)

Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]  # (min, opt, max)

PRECISIONS = ("fp32", "fp16", "int8")
# Value of `hardware_compatibility` (as stored in the manifest) -> HardwareCompatibilityLevel member.
HARDWARE_COMPATIBILITY = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
# `log_level` argument -> Logger severity member.
LOG_LEVELS = {"verbose": "VERBOSE", "info": "INFO", "warning": "WARNING", "error": "ERROR",
              "internal_error": "INTERNAL_ERROR"}
DEFAULT_WORKSPACE_MB = 4096

# Every TensorRT attribute this module touches, by owner ("module" = the tensorrt module itself).
TRT_BUILDER_API: dict[str, tuple[str, ...]] = {
    "module": ("__version__", "Logger", "Builder", "OnnxParser", "BuilderFlag", "MemoryPoolType",
               "HardwareCompatibilityLevel", "NetworkDefinitionCreationFlag"),
    "Logger": tuple(LOG_LEVELS.values()),
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"),
    "INetworkDefinition": ("num_inputs", "get_input"),
    "ITensor": ("name", "shape"),
    "OnnxParser": ("parse_from_file", "num_errors", "get_error"),
    "ParserError": ("desc",),
    "IBuilderConfig": ("set_memory_pool_limit", "set_flag", "clear_flag", "builder_optimization_level",
                       "hardware_compatibility_level", "add_optimization_profile", "create_timing_cache",
                       "set_timing_cache", "get_timing_cache"),
    "ITimingCache": ("serialize",),
    "IOptimizationProfile": ("set_shape",),
    "BuilderFlag": ("__members__", "FP16", "INT8", "TF32", "VERSION_COMPATIBLE"),
    "MemoryPoolType": ("WORKSPACE",),
    "HardwareCompatibilityLevel": ("__members__", *HARDWARE_COMPATIBILITY.values()),
    "NetworkDefinitionCreationFlag": ("STRONGLY_TYPED",),
}
# Names used only where present: weak-typing FP16 and INT8 are gone in TensorRT 11, where every network is strongly
# typed (STRONGLY_TYPED is then the default; it is passed only where the enum still has it);
# SAME_COMPUTE_CAPABILITY arrived in TensorRT 10.9 (JetPack 6 ships 10.3), and is refused where absent.
OPTIONAL_API = frozenset({"BuilderFlag.FP16", "BuilderFlag.INT8", "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
                          "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY"})


class EngineBuildError(BundleError):
    """TensorRT could not parse or build a graph, or the request cannot be built on this machine."""


# --- pure functions ---------------------------------------------------------------------------------------
def profile_shapes(config: STPromptConfig, *, max_batch: int = 16, opt_batch: int = 1,
                   max_snippets: int | None = None, regions: str = "encoder") -> dict[str, dict[str, Profile]]:
    """One optimisation profile per graph: `stp_edge.bundle.engines.default_profiles`.

    The same function gives ONNX Runtime's TensorRT provider its profiles, so both build for the same ranges.
    `regions` is the bundle's `region_features`.
    """
    return default_profiles(config, max_batch=max_batch, opt_batch=opt_batch, max_snippets=max_snippets,
                            regions=regions)


def optimization_profiles(shapes: Mapping[str, Profile]) -> list[dict[str, Profile]]:
    """The profiles one plan is built with: TensorRT tunes kernels for each profile's opt shape.

    The first keeps `shapes` (opt: one stream's shape, 1 snippet, the 2c+1 window); a second with opt = max
    tunes the full batch of many streams. Same min and max in both, so either accepts every shape; one
    profile when opt already equals max. The runner picks the profile whose opt is nearest (`pick_profile`).
    """
    first = {n: tuple(tuple(int(d) for d in p) for p in prof) for n, prof in shapes.items()}
    second = {n: (lo, hi, hi) for n, (lo, _, hi) in first.items()}
    return [first] if second == first else [first, second]


def timing_cache_file(location: str | os.PathLike, gpu_name: str, tensorrt_version: str) -> Path:
    """Where the timing cache lives: `location` itself if it is a file name, else one file per GPU model.

    A cache holds tactic timings of one GPU model and TensorRT version (TensorRT ignores a foreign one), so a
    folder keeps `<gpu-slug>-trt<major.minor>.cache` per machine kind instead of one file they overwrite.
    """
    loc = Path(location)
    if loc.suffix and not loc.is_dir():
        return loc
    version = ".".join(str(tensorrt_version).split(".")[:2])
    return loc / f"{gpu_slug(gpu_name)}-trt{version}.cache"


def check_profile(name: str, input_shape: Collection[int], profile: Profile) -> None:
    """Check a profile against the network input's shape (-1 = dynamic): rank, static dims, min <= opt <= max.

    Raises:
        EngineBuildError: Names the input, the dim and both values.
    """
    dims = tuple(int(d) for d in input_shape)
    lo, opt, hi = (tuple(int(d) for d in p) for p in profile)
    if not len(dims) == len(lo) == len(opt) == len(hi):
        raise EngineBuildError(f"input {name!r}: the graph's shape {dims} and the profile {profile} differ in rank")
    for axis, want in enumerate(dims):
        if want >= 0 and not lo[axis] == opt[axis] == hi[axis] == want:
            raise EngineBuildError(f"input {name!r} dim {axis} is static ({want}) in the graph, but the profile "
                                   f"asks for {lo[axis]}..{hi[axis]}")
        if not 1 <= lo[axis] <= opt[axis] <= hi[axis]:
            raise EngineBuildError(f"input {name!r} dim {axis}: need 1 <= min <= opt <= max, got "
                                   f"{lo[axis]}, {opt[axis]}, {hi[axis]}")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def build_flags(precision: str, *, version_compatible: bool = False, hardware_compatibility: str | None = None,
                optimization_level: int = 3, workspace_mb: int = DEFAULT_WORKSPACE_MB) -> dict[str, Any]:
    """The engine set's build options, as recorded in the manifest's `build_flags`.

    `version_compatible` and `hardware_compatibility` carry the names `stp_edge.bundle.engine_mismatches`
    reads. The per-graph precision mode is added by `precision_mode`.

    Args:
        precision: "fp32", "fp16" or "int8" (the encoder of an int8-exported bundle; see `precision_mode`).
        version_compatible: Build plans that later TensorRT versions of the same major can load
            (`BuilderFlag.VERSION_COMPATIBLE`). The plan then embeds the lean runtime, so the full TensorRT
            runtime deserialises it only with `Runtime.engine_host_code_allowed` set.
        hardware_compatibility: None (this GPU's compute capability only), "ampere_plus" (any SM >= 8.0) or
            "same_compute_capability".
        optimization_level: TensorRT's builder optimisation level, 0 (fast build) to 5 (slow build).
        workspace_mb: Upper bound of the builder's scratch memory, MiB.

    Raises:
        ValueError: An unknown or refused value.
    """
    _check_precision(precision)
    if hardware_compatibility is not None and hardware_compatibility not in HARDWARE_COMPATIBILITY:
        raise UsageError(f"hardware_compatibility must be None or one of {sorted(HARDWARE_COMPATIBILITY)}, "
                         f"got {hardware_compatibility!r}")
    if not 0 <= optimization_level <= 5:
        raise UsageError(f"optimization_level must be in 0..5, got {optimization_level}")
    if workspace_mb < 1:
        raise UsageError(f"workspace_mb must be positive, got {workspace_mb}")
    return {"precision": precision, "version_compatible": bool(version_compatible),
            "hardware_compatibility": hardware_compatibility, "optimization_level": int(optimization_level),
            "workspace_mb": int(workspace_mb)}


def precision_mode(wanted: str, onnx_precision: str, builder_flags: Collection[str]) -> dict[str, Any]:
    """How to build one graph at precision `wanted` from an ONNX graph of precision `onnx_precision`.

    Args:
        wanted: Precision of this graph's engine, "fp32", "fp16" or "int8".
        onnx_precision: Precision the graph was exported in (the manifest's `graph_precision`; "int8" is a
            Q/DQ graph).
        builder_flags: Member names of this TensorRT's `BuilderFlag` (FP16 and INT8 are absent from TensorRT 11).

    Returns:
        {"precision", "builder_flags": names to set, "cleared_flags": names to clear, "strongly_typed"}.

    Raises:
        ValueError: int8 from a graph without Q/DQ nodes (or a Q/DQ graph at another precision), an fp32 engine
            from an fp16 graph, or fp16 from an fp32 graph without `FP16`.
    """
    _check_precision(wanted)
    _check_precision(onnx_precision)
    if (wanted == "int8") != (onnx_precision == "int8"):
        if wanted == "int8":
            raise UsageError(f"an int8 engine is built from a Q/DQ graph (explicit quantization), but this graph "
                             f"was exported in {onnx_precision}: re-export the bundle with --precision int8 "
                             "--calib DIR (calibration frames from your videos)")
        raise UsageError(f"the graph was exported in int8 (Q/DQ); build it with --precision int8, not {wanted}")
    if wanted == "int8":
        # TensorRT 10.x: weak typing with INT8 and FP16 on: INT8 alone would run every unquantised layer in
        # strict fp32. TensorRT 11 has no INT8 flag: strongly typed, the Q/DQ nodes carry the precision.
        if "INT8" in builder_flags:
            flags = ["INT8", "FP16"] if "FP16" in builder_flags else ["INT8"]
            return {"precision": wanted, "builder_flags": flags, "cleared_flags": [], "strongly_typed": False}
        return {"precision": wanted, "builder_flags": [], "cleared_flags": [], "strongly_typed": True}
    if onnx_precision == "fp16":
        if wanted == "fp32":
            raise UsageError("the graph was exported in fp16; an fp32 engine cannot be built from it (re-export "
                             "the bundle with --precision fp32)")
        return {"precision": wanted, "builder_flags": [], "cleared_flags": [], "strongly_typed": True}
    if wanted == "fp32":
        return {"precision": wanted, "builder_flags": [], "cleared_flags": ["TF32"], "strongly_typed": False}
    if "FP16" not in builder_flags:
        raise UsageError("this TensorRT has no BuilderFlag.FP16 (weak typing was removed in TensorRT 11), so an "
                         "fp32 graph builds only as fp32: export the bundle with --precision fp16 (its encoder "
                         "is then built strongly typed in fp16), or build --precision fp32")
    return {"precision": wanted, "builder_flags": ["FP16"], "cleared_flags": [], "strongly_typed": False}


def graph_precisions(precision: str, onnx_precisions: Mapping[str, str]) -> dict[str, str]:
    """Engine precision of each graph: the encoder gets `precision`, the heads keep their ONNX precision."""
    return {g: precision if g == "encoder" else onnx_precisions[g] for g in GRAPH_NAMES}


def hardware_compatibility_member(level: str, available: Collection[str], tensorrt_version: str = "") -> str:
    """The `HardwareCompatibilityLevel` member of `level`, or EngineBuildError where this TensorRT lacks it."""
    member = HARDWARE_COMPATIBILITY[level]
    if member not in available:
        raise EngineBuildError(f"hardware_compatibility={level!r} needs TensorRT >= 10.9 "
                               f"(HardwareCompatibilityLevel.{member}); this is TensorRT {tensorrt_version or '?'} "
                               f"(levels {sorted(available)})")
    return member


def check_hardware_compatibility(level: str | None, compute_capability: str, *,
                                 available: Collection[str] | None = None, integrated: bool = False,
                                 tensorrt_version: str = "") -> None:
    """Refuse hardware compatibility this TensorRT or the building GPU cannot produce (TensorRT's documented limits).

    Args:
        level: None, "ampere_plus" or "same_compute_capability".
        compute_capability: The building GPU's, "8.7".
        available: Member names of this TensorRT's `HardwareCompatibilityLevel` (None: not checked);
            SAME_COMPUTE_CAPABILITY exists from TensorRT 10.9 only.
        integrated: The building GPU is integrated (Jetson): TensorRT does not support hardware-compatible
            engines there.
        tensorrt_version: For the message.
    """
    if level is None:
        return
    if integrated:
        raise EngineBuildError(f"hardware_compatibility={level!r}: hardware-compatible engines are not supported on "
                               f"integrated GPUs (Jetson); build without --hardware-compatibility on each device")
    if available is not None:
        hardware_compatibility_member(level, available, tensorrt_version)
    major, _, minor = str(compute_capability).partition(".")
    cc = (int(major), int(minor or 0))
    if level == "ampere_plus" and cc < (8, 0):
        raise EngineBuildError(f"hardware_compatibility='ampere_plus' needs an Ampere or newer GPU to build on "
                               f"(compute capability >= 8.0); this GPU has {compute_capability}")
    if level == "same_compute_capability" and cc < (7, 5):
        raise EngineBuildError(f"hardware_compatibility='same_compute_capability' needs a Turing or newer GPU "
                               f"(compute capability >= 7.5); this GPU has {compute_capability}")


def updated_manifest(manifest: Mapping[str, Any], engine: EngineInfo,
                     plan_hashes: Mapping[str, str]) -> dict[str, Any]:
    """A copy of `manifest` with `engine` added (replacing an entry of the same dir) and its plans' sha256.

    Every other key (source, exporter, graph_precision, ...) is kept as is; checksums of files that were in
    the replaced engine dir are dropped.
    """
    new = copy.deepcopy(dict(manifest))
    prefix = engine.dir.rstrip("/") + "/"
    new["files"] = {f: h for f, h in manifest["files"].items() if not f.startswith(prefix)}
    new["files"].update(plan_hashes)
    new["engines"] = [e for e in manifest["engines"] if e.get("dir") != engine.dir] + [engine.to_dict()]
    return new


class TimingCache:
    """A TensorRT timing cache shared by the builds of one bundle, read from and saved to an optional file.

    TensorRT times candidate kernels ("tactics") for every layer; the cache keeps those timings, so rebuilding
    (another precision, a larger profile, the next bundle of the same model family) skips most of the timing.
    A cache belongs to one GPU model and TensorRT version; TensorRT ignores a foreign one (`build_engine` warns).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.data = self.path.read_bytes() if self.path is not None and self.path.is_file() else b""

    def save(self) -> None:
        """Write the cache to `path` (atomically: a temporary file renamed over it); no-op without a path."""
        if self.path is None or not self.data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.data)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --- building one plan ------------------------------------------------------------------------------------
def load_builder() -> ModuleType:
    """The full `tensorrt` module (the lean runtimes cannot build), version 10 or newer."""
    from stp_edge._deps import require

    trt = require("tensorrt", "building TensorRT engines")
    version = str(getattr(trt, "__version__", "0"))
    if not hasattr(trt, "Builder"):
        raise EngineBuildError(f"the installed tensorrt {version} has no Builder (a runtime-only install?); "
                               f"building engines needs the full TensorRT: pip install 'stp-edge[trt]'")
    if int(version.split(".")[0] or 0) < 10:
        raise EngineBuildError(f"building engines needs TensorRT >= 10, found {version}")
    return trt


def _parse_onnx(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path, strongly_typed: bool) -> tuple:
    """(network, parser) of an ONNX file; the parser must outlive the network's build."""
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}: "
                               + ("; ".join(errors) or "no error reported"))
    return network, parser


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, shapes: Mapping[str, Profile],
                 flags: Mapping[str, Any], *, trt: ModuleType | None = None, log_level: str = "warning",
                 timing_cache: TimingCache | None = None) -> int:
    """Build one ONNX graph into a TensorRT plan file; returns the plan's size in bytes.

    Args:
        onnx_path: The ONNX graph.
        plan_path: Where to write the plan (its bytes exactly as TensorRT serialised them).
        shapes: Input name -> (min, opt, max); every input is listed (built as `optimization_profiles(shapes)`).
        flags: `build_flags(...)` merged with this graph's `precision_mode(...)`.
        trt: The tensorrt module (default: `load_builder()`).
        log_level: TensorRT log severity: verbose, info, warning, error or internal_error.
        timing_cache: Start from its timings and store the updated cache back into it (not saved to disk here).

    Raises:
        EngineBuildError: Parse errors (each of TensorRT's), a profile that does not fit an input, or a
            failed build.
    """
    trt = trt or load_builder()
    if log_level not in LOG_LEVELS:
        raise UsageError(f"log_level must be one of {sorted(LOG_LEVELS)}, got {log_level!r}")
    logger = trt.Logger(getattr(trt.Logger, LOG_LEVELS[log_level]))
    builder = trt.Builder(logger)
    network, _parser = _parse_onnx(trt, builder, logger, Path(onnx_path), bool(flags.get("strongly_typed")))

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(flags["workspace_mb"]) << 20)
    builder_config.builder_optimization_level = int(flags["optimization_level"])
    for name in flags.get("builder_flags", ()):
        builder_config.set_flag(getattr(trt.BuilderFlag, name))
    for name in flags.get("cleared_flags", ()):
        builder_config.clear_flag(getattr(trt.BuilderFlag, name))
    if flags.get("version_compatible"):
        builder_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    level = flags.get("hardware_compatibility")
    if level:
        member = hardware_compatibility_member(level, trt.HardwareCompatibilityLevel.__members__,
                                               str(trt.__version__))
        builder_config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, member)
    if timing_cache is not None:
        cache = builder_config.create_timing_cache(timing_cache.data)
        if not builder_config.set_timing_cache(cache, False):  # built for another GPU or TensorRT version
            log.warning("timing cache %s does not match this GPU/TensorRT; starting an empty one", timing_cache.path)
            builder_config.set_timing_cache(builder_config.create_timing_cache(b""), False)

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = [tensor.name for tensor in inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise EngineBuildError(f"{onnx_path}: profiles for {unknown}, which are not inputs (inputs: {names})")
    for tensor in inputs:
        if tensor.name not in shapes:
            raise EngineBuildError(f"{onnx_path}: no profile for input {tensor.name!r} (profiles: {sorted(shapes)})")
        check_profile(tensor.name, tuple(tensor.shape), shapes[tensor.name])
    for one in optimization_profiles(shapes):
        profile = builder.create_optimization_profile()
        for name, p in one.items():
            profile.set_shape(name, *p)
        builder_config.add_optimization_profile(profile)

    plan = builder.build_serialized_network(network, builder_config)
    if plan is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} could not build {onnx_path} (see its log above; "
                               f"out of memory? try a smaller --max-batch or --max-snippets)")
    with open(plan_path, "wb") as f:
        f.write(plan)
    if timing_cache is not None:
        timing_cache.data = bytes(builder_config.get_timing_cache().serialize())
    return Path(plan_path).stat().st_size


# --- building a bundle's plans ----------------------------------------------------------------------------
@contextmanager
def _on_device(device: int) -> Iterator[None]:
    """Make `device`'s primary CUDA context current, so TensorRT builds for that GPU (released after)."""
    from stp_edge.cuda.context import PrimaryContext

    ctx = PrimaryContext(device, purpose="selecting the GPU to build on")
    try:
        with ctx.current():
            yield
    finally:
        ctx.release()


def build_bundle_engines(bundle_path: str | os.PathLike, *, precision: str = "fp16", max_batch: int = 16,
                         max_snippets: int | None = None, device: int = 0, version_compatible: bool = False,
                         hardware_compatibility: str | None = None, progress: bool = True, opt_batch: int = 1,
                         workspace_mb: int = DEFAULT_WORKSPACE_MB,
                         timing_cache: str | os.PathLike | None = None) -> Path:
    """Build the encoder, temporal and spatial plans of a bundle for this GPU; returns the engine dir.

    The plans are built into a hidden directory inside the bundle, then moved to
    `engines/<gpu-slug>-<precision>/` (replacing a previous build of the same GPU and precision) and the
    manifest is rewritten with their sha256 and an `engines` entry (TensorRT version, GPU name, compute
    capability, build flags); its other keys are kept. If anything fails, the bundle is left as it was.

    Args:
        bundle_path: The bundle directory.
        precision: "fp16" (encoder in fp16, heads as exported) or "fp32".
        max_batch: Largest batch of snippets (see `profile_shapes`).
        max_snippets: Largest temporal window T.
        device: CUDA device ordinal to build on.
        version_compatible: See `build_flags`.
        hardware_compatibility: See `build_flags`; refused on integrated GPUs (Jetson), and
            "same_compute_capability" before TensorRT 10.9.
        progress: Show a progress bar.
        opt_batch: Batch TensorRT tunes for (see `profile_shapes`): the number of streams sharing the engine.
        workspace_mb: Upper bound of the builder's scratch memory, MiB (edge devices want less than the default).
        timing_cache: A timing cache file, or a folder that keeps one file per GPU model and TensorRT version
            (`timing_cache_file`), read if it exists and written back after the build; None: the three graphs
            still share one cache in memory.

    Raises:
        ValueError: A refused option (int8 from a graph without Q/DQ nodes, an unknown compatibility level, bad
            profile bounds).
        MissingDependencyError: TensorRT or pycuda is not installed (names `pip install 'stp-edge[trt]'`).
        BundleError: The bundle does not load, or TensorRT cannot build it (EngineBuildError).
    """
    from tqdm.auto import tqdm

    from stp_edge.backends.trt import cuda_device_info, cuda_device_integrated
    from stp_edge.bundle.engines import host_platform

    common = build_flags(precision, version_compatible=version_compatible,
                         hardware_compatibility=hardware_compatibility, workspace_mb=workspace_mb)
    trt = load_builder()
    bundle = Bundle.load(bundle_path)  # every checksum, before spending minutes on a build
    shapes = profile_shapes(bundle.config, max_batch=max_batch, opt_batch=opt_batch, max_snippets=max_snippets,
                            regions=bundle.region_features)
    onnx_precisions = bundle.manifest.get("graph_precision") or {g: bundle.precision for g in GRAPH_NAMES}
    available = set(trt.BuilderFlag.__members__)
    modes = {g: precision_mode(p, onnx_precisions[g], available)
             for g, p in graph_precisions(precision, onnx_precisions).items()}
    gpu_name, cc = cuda_device_info(device)
    platform = host_platform(cuda_device_integrated(device))
    check_hardware_compatibility(hardware_compatibility, cc, available=set(trt.HardwareCompatibilityLevel.__members__),
                                 integrated=bool(platform["integrated"]), tensorrt_version=str(trt.__version__))
    engine = EngineInfo(dir=engine_dir_name(gpu_name, precision), precision=precision,
                        tensorrt_version=str(trt.__version__), gpu_name=gpu_name, compute_capability=cc,
                        platform=platform,
                        build_flags={**common, "graphs": modes,
                                     "profiles": {g: {n: [list(d) for d in p] for n, p in s.items()}
                                                  for g, s in shapes.items()}})
    cache_file = None if timing_cache is None else timing_cache_file(timing_cache, gpu_name, str(trt.__version__))
    cache = TimingCache(cache_file)

    steps = tqdm(GRAPH_NAMES, desc=f"build {precision} engines", unit="graph", disable=not progress)
    staging = Path(tempfile.mkdtemp(prefix=".engines-partial-", dir=bundle.path))
    try:
        with _on_device(device):
            for g in steps:
                steps.set_postfix_str(f"{g}.plan")
                build_engine(bundle.graph_path(g), staging / f"{g}.plan", shapes[g], {**common, **modes[g]},
                             trt=trt, timing_cache=cache)
        cache.save()
        staging.chmod(0o755)  # mkdtemp creates 0700; the installed engine dir should read like the bundle
        install_engines(bundle.path, staging, engine)
    finally:
        steps.close()
        shutil.rmtree(staging, ignore_errors=True)  # gone already when installed
    return bundle.path / engine.dir


def install_engines(bundle_path: str | os.PathLike, staging: Path, engine: EngineInfo) -> None:
    """Move built plans from `staging` to `engine.dir` and rewrite the manifest, all or nothing.

    An existing dir of the same name is set aside and deleted only once the new manifest is in place; on any
    error the old dir is put back, the new plans go back to `staging` and the manifest is untouched.
    """
    bundle_path = Path(bundle_path)
    manifest_path = bundle_path / MANIFEST
    plans = sorted(p.name for p in staging.glob("*.plan"))
    missing = [g for g in GRAPH_NAMES if f"{g}.plan" not in plans]
    if missing:
        raise EngineBuildError(f"{staging}: plans {missing} were not built")
    hashes = {f"{engine.dir}/{p}": sha256_file(staging / p) for p in plans}
    text = manifest_text(updated_manifest(read_manifest(bundle_path), engine, hashes))  # sealed: new digest

    target = bundle_path / engine.dir
    made_parent = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
    fd, tmp_manifest = tempfile.mkstemp(prefix=f".{MANIFEST}.partial-", dir=bundle_path)
    moved = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp_manifest, 0o644)
        if old is not None:
            os.replace(target, old)
        os.replace(staging, target)
        moved = True
        os.replace(tmp_manifest, manifest_path)
    except BaseException:
        if moved:
            os.replace(target, staging)
        if old is not None and old.exists():
            os.replace(old, target)
        if made_parent:
            shutil.rmtree(target.parent, ignore_errors=True)
        Path(tmp_manifest).unlink(missing_ok=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
