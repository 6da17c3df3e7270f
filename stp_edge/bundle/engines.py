"""TensorRT engine sets of a bundle: their manifest entries and whether one fits a machine.

Whether a plan fits is decided by pure functions (`engine_mismatches`, `select_engine`) of the machine as a
`TrtEnvironment` describes it, so they are tested without a GPU; `Bundle.select_engine` is the one choice the
runtime and `verify` make with them, and `stp_edge.backends.trt.trt_environment` finds this machine's values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stp_edge.bundle.errors import ManifestError
from stp_edge.errors import UsageError

Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]  # (min, opt, max)


def gpu_slug(gpu_name: str) -> str:
    """File-system friendly GPU name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"


def engine_dir_name(gpu_name: str, precision: str) -> str:
    """Relative directory of one engine set: `engines/<gpu-slug>-<precision>`."""
    return f"engines/{gpu_slug(gpu_name)}-{precision}"


def default_profiles(config: Any, *, max_batch: int = 16, opt_batch: int = 1, max_snippets: int | None = None,
                     regions: str = "encoder") -> dict[str, dict[str, Profile]]:
    """One optimisation profile per graph: input name -> (min, opt, max) shapes.

    Used by the TensorRT builder (`stp-edge build-engines`) and by ONNX Runtime's TensorRT provider, so both
    build engines for the same ranges. B (snippets, possibly from several streams) ranges over 1..max_batch;
    the temporal graph's T over 1..max_snippets with its optimum at the streaming window 2c+1
    (c = `config.context`), the shape every streamed snippet runs. max_snippets defaults to that window:
    TensorRT sizes activation memory for the largest shape, and on an edge device a long offline T (the
    whole-video `offline_scores` reference) is better run with ONNX Runtime. In crops mode a bundle whose crops
    are cut on the host (`regions="host"`, the deprecated layout) sends the R2 crops of every image through the
    encoder in one call, so its batch goes up to max_batch * R2; an encoder
    that cuts them itself takes max_batch images (and encodes B * (1 + R2) inside). Crops of the whole frame
    (`config.region_extent` "frame", also "host") come as views of each frame: up to max_batch * (1 + R2) images,
    so max_batch frames of the centre policy fit one call (a policy with more views gets fewer frames per call).

    Args:
        config: The bundle's `STPromptConfig`.
        max_batch: Largest batch of snippets.
        opt_batch: Batch TensorRT tunes its kernels for.
        max_snippets: Largest temporal window T (default: the streaming window 2c+1).
        regions: The bundle's `region_features` ("encoder" or "host").

    Raises:
        ValueError: A batch or snippet bound is not positive or the optimum lies outside [1, max].
    """
    window = 2 * config.context + 1
    max_snippets = window if max_snippets is None else max_snippets
    if max_batch < 1 or not 1 <= opt_batch <= max_batch:
        raise UsageError(f"need 1 <= opt_batch <= max_batch, got opt_batch={opt_batch}, max_batch={max_batch}")
    if max_snippets < window:
        raise UsageError(f"max_snippets={max_snippets} is smaller than the streaming window 2c+1={window}; "
                         f"streaming could not run")
    v, r2, e = config.vision, config.num_regions, config.vision.embed_dim
    s = v.image_size
    enc_max = max_batch
    if config.region_mode == "crops" and regions == "host":
        enc_max = max_batch * (1 + r2 if config.region_extent == "frame" else r2)

    def batched(rest: Shape, opt_t: int | None = None) -> Profile:
        if opt_t is None:
            return (1, *rest), (opt_batch, *rest), (max_batch, *rest)
        return (1, 1, *rest), (opt_batch, opt_t, *rest), (max_batch, max_snippets, *rest)

    return {
        "encoder": {"images": ((1, 3, s, s), (opt_batch, 3, s, s), (enc_max, 3, s, s))},
        "temporal": {"frame_emb": batched((e,), window), "region_emb": batched((r2, e), window)},
        "spatial": {"region_emb": batched((r2, e))},
    }


# Runtime major version -> oldest TensorRT version whose version-compatible plans it loads (TensorRT's
# "Version Compatibility" pages: 8.6 plans load on 8.6+, 9.x and 10.x runtimes; 10.x plans on 11.x).
VERSION_COMPATIBLE_FROM = {8: (8, 6), 9: (8, 6), 10: (8, 6), 11: (10, 0)}
PLATFORM_KEYS = ("os", "arch", "integrated")
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def host_platform(integrated: bool | None, *, system: str | None = None, machine: str | None = None
                  ) -> dict[str, Any]:
    """This machine as an engine entry records it: OS, CPU architecture, integrated (Jetson) vs discrete GPU.

    Args:
        integrated: The CUDA device's `INTEGRATED` attribute (None when unknown).
        system: `platform.system()` (default: this machine's).
        machine: `platform.machine()` (default: this machine's).
    """
    import platform as _platform

    system = (system or _platform.system()).lower()
    machine = (machine or _platform.machine()).lower()
    return {"os": system, "arch": _ARCH_ALIASES.get(machine, machine),
            "integrated": None if integrated is None else bool(integrated)}


def describe_platform(p: Mapping[str, Any] | None) -> str:
    """'linux aarch64, integrated GPU' for messages ('unknown platform' for an entry that records none)."""
    if not p:
        return "unknown platform"
    gpu = {True: ", integrated GPU", False: ", discrete GPU"}.get(p.get("integrated"), "")
    return f"{p.get('os', '?')} {p.get('arch', '?')}{gpu}"


LEAN_MODULES = frozenset({"tensorrt_lean", "tensorrt_lean_bindings"})  # load version-compatible plans only


@dataclass(frozen=True)
class TrtEnvironment:
    """What decides which plans load on a machine: its TensorRT runtime module and version, GPU and platform.

    Attributes:
        module: Name of the TensorRT runtime module ("tensorrt", or a lean runtime in `LEAN_MODULES`).
        tensorrt_version: Its version, e.g. "10.3.0.30".
        gpu_name: The GPU's name.
        compute_capability: The GPU's compute capability, "major.minor".
        platform: `host_platform()` of the machine ({} when unknown: not checked).
    """

    module: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    platform: Mapping[str, Any]

    @property
    def lean(self) -> bool:
        """The runtime is TensorRT's lean runtime (version-compatible plans only)."""
        return self.module in LEAN_MODULES

    def describe(self) -> str:
        """'TensorRT 11.4.0.106 (lean runtime) on NVIDIA H200 (sm 9.0, linux x86_64, discrete GPU)'."""
        lean = " (lean runtime)" if self.lean else ""
        return (f"TensorRT {self.tensorrt_version}{lean} on {self.gpu_name} (sm {self.compute_capability}, "
                f"{describe_platform(self.platform)})")


@dataclass(frozen=True)
class EngineInfo:
    """One set of TensorRT plans (encoder/temporal/spatial) built for one GPU and precision.

    `tensorrt_version` is the builder's full version (major.minor.patch.build: the standard runtime loads a plan
    only from exactly that version); `platform` is `host_platform()` of the build machine ({} when the entry
    records none, e.g. a plan built elsewhere and listed by hand: then it is not checked).
    """

    dir: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    build_flags: Mapping[str, Any] = field(default_factory=dict)
    platform: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineInfo:
        """Build from a manifest `engines` entry; a missing key raises ManifestError naming it."""
        missing = [k for k in ("dir", "precision", "tensorrt_version", "gpu_name", "compute_capability")
                   if k not in d]
        if missing:
            raise ManifestError(f"engine entry {dict(d)} lacks keys {missing}")
        return cls(dir=str(d["dir"]), precision=str(d["precision"]), tensorrt_version=str(d["tensorrt_version"]),
                   gpu_name=str(d["gpu_name"]), compute_capability=str(d["compute_capability"]),
                   build_flags=dict(d.get("build_flags", {})), platform=dict(d.get("platform") or {}))

    def to_dict(self) -> dict[str, Any]:
        """Manifest form."""
        d = {"dir": self.dir, "precision": self.precision, "tensorrt_version": self.tensorrt_version,
             "gpu_name": self.gpu_name, "compute_capability": self.compute_capability,
             "build_flags": dict(self.build_flags)}
        if self.platform:
            d["platform"] = dict(self.platform)
        return d


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v))


def _cc_tuple(cc: str | tuple[int, int] | float) -> tuple[int, int]:
    if isinstance(cc, tuple):
        return int(cc[0]), int(cc[1])
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def _version_mismatch(engine: EngineInfo, runtime: str, lean_runtime: bool) -> str | None:
    built, have = _version_tuple(engine.tensorrt_version), _version_tuple(runtime)
    vc = bool(engine.build_flags.get("version_compatible"))
    if lean_runtime and not vc:
        return (f"TensorRT version: the lean runtime ({runtime}) loads only version-compatible plans; this one "
                f"was built for TensorRT {engine.tensorrt_version} only (rebuild with --version-compatible)")
    if vc:
        oldest = VERSION_COMPATIBLE_FROM.get(have[0], (have[0], 0)) if have else (0, 0)
        if have < built or built[:2] < oldest:
            return (f"TensorRT version: engine built (version-compatible) with {engine.tensorrt_version}; runtime "
                    f"{runtime} loads version-compatible plans from {oldest[0]}.{oldest[1]} up to itself")
        return None
    n = min(len(built), len(have))  # a build number is compared where both sides have one
    if built[:n] != have[:n] or n < 3:
        return f"TensorRT version: engine built with {engine.tensorrt_version}, runtime is {runtime}"
    return None


def _platform_mismatch(engine: EngineInfo, platform: Mapping[str, Any] | None) -> str | None:
    if not engine.platform or not platform:
        return None
    differ = [k for k in PLATFORM_KEYS if engine.platform.get(k) is not None and platform.get(k) is not None
              and engine.platform.get(k) != platform.get(k)]
    if differ:
        return (f"platform: engine built on {describe_platform(engine.platform)}, this is "
                f"{describe_platform(platform)} (plans are not portable across {', '.join(differ)})")
    return None


def engine_mismatches(engine: EngineInfo, *, tensorrt_version: str, compute_capability: str | tuple[int, int],
                      gpu_name: str | None = None, platform: Mapping[str, Any] | None = None,
                      lean_runtime: bool = False) -> list[str]:
    """Why `engine` cannot run in the given environment; an empty list means it can.

    - TensorRT version: a plan loads only on exactly the TensorRT version that built it (major, minor, patch
      and build, where both sides give a build number), unless built version-compatible
      (`build_flags["version_compatible"]`): then any runtime not older than the builder that
      `VERSION_COMPATIBLE_FROM` allows (10.x plans on 11.x). The lean runtime loads version-compatible plans
      only.
    - Platform: OS, CPU architecture and integrated vs discrete GPU must match the build machine's
      (`engine.platform`; not checked for entries that record none).
    - Compute capability: must match unless built hardware-compatible ("ampere_plus": any SM >= 8.0), which
      TensorRT does not support on integrated (Jetson) GPUs. A different GPU name with the same compute
      capability runs (TensorRT warns that tactics may be slower), so it is not a mismatch here
      (`select_engine` prefers a plan built on the same GPU model).

    Args:
        engine: The manifest entry.
        tensorrt_version: Version of the TensorRT runtime on this machine, e.g. "10.3.0.30".
        compute_capability: This GPU's compute capability, "8.7" or (8, 7).
        gpu_name: This GPU's name, named in the compute-capability message (not part of the decision).
        platform: `host_platform()` of this machine, or None when unknown (not checked).
        lean_runtime: The TensorRT module is the lean runtime.
    """
    reasons = [r for r in (_version_mismatch(engine, tensorrt_version, lean_runtime),
                           _platform_mismatch(engine, platform)) if r]
    cc_built, cc_have = _cc_tuple(engine.compute_capability), _cc_tuple(compute_capability)
    level = engine.build_flags.get("hardware_compatibility")
    if level and platform and platform.get("integrated"):
        reasons.append(f"hardware compatibility: {level} plans are not supported on integrated GPUs (Jetson); "
                       f"build on this device without --hardware-compatibility")
    elif level == "ampere_plus":
        if cc_have < (8, 0):
            reasons.append(f"compute capability: engine is Ampere+ hardware-compatible, GPU has "
                           f"{cc_have[0]}.{cc_have[1]}")
    elif cc_built != cc_have:
        reasons.append(f"compute capability: engine built for {engine.compute_capability} "
                       f"({engine.gpu_name}), GPU has {cc_have[0]}.{cc_have[1]}"
                       + (f" ({gpu_name})" if gpu_name else ""))
    return reasons


HOST_CODE_REFUSED = ("version-compatible plans embed TensorRT's lean runtime, which runs as host code: allow it "
                     "with --allow-host-code (Detector.load(..., allow_host_code=True)) if you trust this bundle")


def needs_host_code(engine: EngineInfo) -> bool:
    """Whether TensorRT deserialises `engine`'s plans only with `Runtime.engine_host_code_allowed` set.

    A version-compatible plan embeds TensorRT's lean runtime, which is native code that runs in this process;
    `stp-edge build-engines` never leaves it out.
    """
    return bool(engine.build_flags.get("version_compatible"))


def select_engine(engines: Sequence[EngineInfo], *, tensorrt_version: str, compute_capability: str | tuple[int, int],
                  gpu_name: str, precision: str | None = None, platform: Mapping[str, Any] | None = None,
                  lean_runtime: bool = False, allow_host_code: bool = False) -> tuple[EngineInfo | None, list[str]]:
    """Pick the engine set for this environment among those `engine_mismatches` accepts.

    Without `allow_host_code`, plans that need host code (`needs_host_code`) are refused (TensorRT would not
    deserialise them), with a reason that names `--allow-host-code`. Ranking: a plan built on the same GPU model
    before any other compatible one; then manifest order.

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
                                gpu_name=gpu_name, platform=platform, lean_runtime=lean_runtime)
        if not why and needs_host_code(e) and not allow_host_code:
            why = [HOST_CODE_REFUSED]
        if why:
            reasons.append(f"{e.dir}: " + "; ".join(why))
        else:
            ok.append(e)
    if not engines:
        reasons.append("the bundle has no TensorRT engines")
    if not ok:
        return None, reasons
    ok.sort(key=lambda e: gpu_slug(e.gpu_name) != gpu_slug(gpu_name))  # stable sort: manifest order last
    return ok[0], reasons
