"""TensorRT engine building: pure decisions, API use against TensorRT 10.13's stubs, atomic install, GPU build.

Nothing here fakes TensorRT. The builder cannot be installed on CPU machines, so its use is checked two ways:
the names trt_build.py calls must all be listed in TRT_BUILDER_API (regex over the source), and every listed
name must exist in the published type stubs (parsed with `ast`, never imported). The plan-building test runs
only where TensorRT and a GPU are present.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cuda_driver import cuda_driver_or_skip

from stp_edge._deps import MissingDependencyError
from stp_edge.bundle import (
    MANIFEST,
    Bundle,
    EngineInfo,
    TrtEnvironment,
    engine_mismatches,
    read_manifest,
    rewrite_manifest,
)
from stp_edge.config import STPromptConfig
from stp_edge.export import trt_build
from stp_edge.export.trt_build import (
    HARDWARE_COMPATIBILITY,
    LOG_LEVELS,
    OPTIONAL_API,
    TRT_BUILDER_API,
    EngineBuildError,
    build_bundle_engines,
    build_flags,
    check_hardware_compatibility,
    check_profile,
    graph_precisions,
    install_engines,
    precision_mode,
    profile_shapes,
    updated_manifest,
)

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "export" / "trt_build.py"
ALL_FLAGS = {"FP16", "TF32", "VERSION_COMPATIBLE", "INT8", "BF16"}


# --- profiles ---------------------------------------------------------------------------------------------
def test_profile_shapes_tiny():
    cfg = STPromptConfig.named("tiny")  # S=112, E=64, 7x7 regions, context 9
    assert cfg.context == 9
    p = profile_shapes(cfg)
    assert p["encoder"] == {"images": ((1, 3, 112, 112), (1, 3, 112, 112), (16, 3, 112, 112))}
    # T defaults to the streaming window 2c+1 = 19 (TensorRT sizes memory for the largest shape)
    assert p["temporal"]["frame_emb"] == ((1, 1, 64), (1, 19, 64), (16, 19, 64))
    assert p["temporal"]["region_emb"] == ((1, 1, 49, 64), (1, 19, 49, 64), (16, 19, 49, 64))
    assert p["spatial"] == {"region_emb": ((1, 49, 64), (1, 49, 64), (16, 49, 64))}


def test_profile_shapes_vit_b_16_and_options():
    cfg = STPromptConfig.named("vit-b-16")  # S=224, E=512, context 1 + 2 * 9 = 19
    p = profile_shapes(cfg, max_batch=8, opt_batch=4, max_snippets=256)
    assert p["encoder"]["images"] == ((1, 3, 224, 224), (4, 3, 224, 224), (8, 3, 224, 224))
    assert p["temporal"]["frame_emb"] == ((1, 1, 512), (4, 39, 512), (8, 256, 512))
    assert p["temporal"]["region_emb"][1] == (4, 39, 49, 512)
    assert p["spatial"]["region_emb"] == ((1, 49, 512), (4, 49, 512), (8, 49, 512))


def test_profile_shapes_crops_mode():
    """The encoder cuts the crops itself (B images); a bundle that cuts them on the host sends B * R2 crops."""
    cfg = STPromptConfig.named("tiny", region_mode="crops", region_grid=3)
    p = profile_shapes(cfg, max_batch=4)
    assert p["encoder"]["images"][2] == (4, 3, 112, 112)
    assert p["spatial"]["region_emb"][2] == (4, 9, 64)
    host = profile_shapes(cfg, max_batch=4, regions="host")
    assert host["encoder"]["images"][2] == (4 * 9, 3, 112, 112)
    assert host["spatial"] == p["spatial"] and host["temporal"] == p["temporal"]


def test_profile_shapes_refuses_bad_bounds():
    cfg = STPromptConfig.named("tiny")
    with pytest.raises(ValueError, match="smaller than the streaming window 2c\\+1=19"):
        profile_shapes(cfg, max_snippets=18)
    with pytest.raises(ValueError, match="opt_batch <= max_batch"):
        profile_shapes(cfg, max_batch=2, opt_batch=4)


def test_profiles_fit_the_exported_graphs(exported_tiny_bundle):
    """Names, ranks and static dims of the profiles agree with the real exporter's ONNX inputs."""
    import onnx

    bundle = Bundle.load(exported_tiny_bundle)
    profiles = profile_shapes(bundle.config, max_batch=4, max_snippets=64)
    for graph, shapes in profiles.items():
        model = onnx.load(str(bundle.graph_path(graph)), load_external_data=False)
        inputs = {i.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                  for i in model.graph.input}
        assert set(inputs) == set(shapes), graph
        for name, dims in inputs.items():
            assert -1 in dims, f"{graph}.{name} has no dynamic axis"
            check_profile(name, dims, shapes[name])


def test_check_profile_names_the_problem():
    prof = ((1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))
    check_profile("images", (-1, 3, 32, 32), prof)
    with pytest.raises(EngineBuildError, match=r"'images' dim 2 is static \(64\).*32\.\.32"):
        check_profile("images", (-1, 3, 64, 64), prof)
    with pytest.raises(EngineBuildError, match="differ in rank"):
        check_profile("images", (-1, 3, 32), prof)
    with pytest.raises(EngineBuildError, match="min <= opt <= max, got 1, 8, 4"):
        check_profile("images", (-1, 3, 32, 32), ((1, 3, 32, 32), (8, 3, 32, 32), (4, 3, 32, 32)))


# --- flags ------------------------------------------------------------------------------------------------
def test_build_flags_carry_the_names_bundle_checks_read():
    flags = build_flags("fp16", version_compatible=True, hardware_compatibility="ampere_plus")
    assert flags == {"precision": "fp16", "version_compatible": True, "hardware_compatibility": "ampere_plus",
                     "optimization_level": 3, "workspace_mb": trt_build.DEFAULT_WORKSPACE_MB}
    # bundle.engine_mismatches honours them: a newer 10.x runtime on another Ampere+ GPU is accepted ...
    e = EngineInfo(dir="engines/a-fp16", precision="fp16", tensorrt_version="10.3.0", gpu_name="NVIDIA A100",
                   compute_capability="8.0", build_flags=flags)
    assert engine_mismatches(e, tensorrt_version="10.13.0", compute_capability="8.7") == []
    # ... while the same engine built without them is refused on both counts.
    plain = EngineInfo(**{**e.to_dict(), "build_flags": build_flags("fp16")})
    assert len(engine_mismatches(plain, tensorrt_version="10.13.0", compute_capability="8.7")) == 2


def test_build_flags_refuse_unknown_values():
    with pytest.raises(ValueError, match="hardware_compatibility"):
        build_flags("fp16", hardware_compatibility="turing_plus")
    with pytest.raises(ValueError, match="optimization_level"):
        build_flags("fp16", optimization_level=6)
    with pytest.raises(ValueError, match="precision must be one of"):
        build_flags("bf16")


def test_int8_builds_only_from_a_qdq_graph():
    """INT8 is explicit quantization: the Q/DQ encoder of an int8 export; flags on 10.x, strongly typed on 11."""
    assert build_flags("int8")["precision"] == "int8"
    with pytest.raises(ValueError, match="re-export the bundle with --precision int8 --calib"):
        precision_mode("int8", "fp32", ALL_FLAGS)
    with pytest.raises(ValueError, match="re-export the bundle with --precision int8 --calib"):
        precision_mode("int8", "fp16", ALL_FLAGS)
    with pytest.raises(ValueError, match="exported in int8"):
        precision_mode("fp16", "int8", ALL_FLAGS)
    trt10 = precision_mode("int8", "int8", ALL_FLAGS)  # unquantised layers may run fp16, not strict fp32
    assert trt10 == {"precision": "int8", "builder_flags": ["INT8", "FP16"], "cleared_flags": [],
                     "strongly_typed": False}
    assert precision_mode("int8", "int8", ALL_FLAGS - {"FP16"})["builder_flags"] == ["INT8"]
    trt11 = precision_mode("int8", "int8", ALL_FLAGS - {"FP16", "INT8"})
    assert trt11["strongly_typed"] and trt11["builder_flags"] == []
    # The heads of an int8 bundle stay fp32 engines.
    assert graph_precisions("int8", {"encoder": "int8", "temporal": "fp32", "spatial": "fp32"}) == {
        "encoder": "int8", "temporal": "fp32", "spatial": "fp32"}


def test_precision_modes():
    assert precision_mode("fp32", "fp32", ALL_FLAGS) == {
        "precision": "fp32", "builder_flags": [], "cleared_flags": ["TF32"], "strongly_typed": False}
    assert precision_mode("fp16", "fp32", ALL_FLAGS)["builder_flags"] == ["FP16"]
    fp16_graph = precision_mode("fp16", "fp16", ALL_FLAGS)
    assert fp16_graph["strongly_typed"] and fp16_graph["builder_flags"] == []
    # TensorRT 11 has no weak typing: an fp16 graph still builds, an fp32 graph cannot become fp16.
    assert precision_mode("fp16", "fp16", ALL_FLAGS - {"FP16"})["strongly_typed"]
    with pytest.raises(ValueError, match="no BuilderFlag.FP16"):
        precision_mode("fp16", "fp32", ALL_FLAGS - {"FP16"})
    with pytest.raises(ValueError, match="exported in fp16"):
        precision_mode("fp32", "fp16", ALL_FLAGS)


def test_fp16_engine_keeps_the_heads_at_their_onnx_precision():
    exported = {"encoder": "fp32", "temporal": "fp32", "spatial": "fp32"}
    assert graph_precisions("fp16", exported) == {"encoder": "fp16", "temporal": "fp32", "spatial": "fp32"}
    assert graph_precisions("fp32", exported) == exported


def test_hardware_compatibility_needs_a_recent_build_gpu():
    check_hardware_compatibility("ampere_plus", "8.7")
    check_hardware_compatibility(None, "6.1")
    with pytest.raises(EngineBuildError, match="Ampere or newer.*7.5"):
        check_hardware_compatibility("ampere_plus", "7.5")
    with pytest.raises(EngineBuildError, match="Turing or newer"):
        check_hardware_compatibility("same_compute_capability", "7.2")


# --- the TensorRT API surface -----------------------------------------------------------------------------
# The oldest tensorrt-stubs on PyPI (10.8; JetPack 6 ships TensorRT 10.3, never published as stubs) and 10.13.
STUB_DIRS = {"10.8": "tensorrt-stubs-10.8", "10.13": "tensorrt-stubs"}


def _stubs_path(version: str = "10.13") -> Path | None:
    env = os.environ.get("STP_EDGE_TRT_STUBS") if version == "10.13" else None
    if env:
        p = Path(env)
        return p / "tensorrt_bindings" / "tensorrt.pyi" if p.is_dir() else p
    p = REPO / ".venv" / "share" / STUB_DIRS[version] / "tensorrt_bindings" / "tensorrt.pyi"
    return p if p.is_file() else None


def _defined_names(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _parse_stub(text: str) -> ast.Module:
    """Parse a generated .pyi; a `def` line that is not valid Python keeps its name, loses its arguments.

    pybind11-stubgen writes a few signatures Python cannot parse (TensorRT 10.13: five, e.g. a parameter
    named `in`, or a default before a non-default in `add_scale_nd`); only the member names matter here.
    """
    lines = text.splitlines()
    for _ in range(50):
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as exc:
            line = lines[(exc.lineno or 1) - 1]
            m = re.match(r"^(\s*def \w+)\(.*\)(\s*->.*)?:\s*$", line)
            if m is None:
                raise
            lines[exc.lineno - 1] = f"{m.group(1)}(*args, **kwargs):"
    raise AssertionError("more than 50 unparsable signatures: is this a TensorRT stub file?")


class StubIndex:
    """Classes (members, base names) and module-level names of a TensorRT .pyi, read with ast."""

    def __init__(self, pyi: Path) -> None:
        tree = _parse_stub(pyi.read_text(encoding="utf-8"))
        self.module = _defined_names(tree.body)
        package_init = pyi.parent.parent / "tensorrt" / "__init__.pyi"  # __version__ lives in `tensorrt`
        if package_init.is_file():
            self.module |= _defined_names(_parse_stub(package_init.read_text(encoding="utf-8")).body)
        self.classes = {n.name: (_defined_names(n.body), [ast.unparse(b).split(".")[-1] for b in n.bases])
                        for n in tree.body if isinstance(n, ast.ClassDef)}

    def members(self, cls: str) -> set[str]:
        own, bases = self.classes[cls]
        return own.union(*(self.members(b) for b in bases if b in self.classes))


@pytest.fixture(scope="module", params=sorted(STUB_DIRS))
def stubs(request) -> StubIndex:
    path = _stubs_path(request.param)
    if path is None:
        pytest.skip(f"TensorRT {request.param} stubs not found: run `make venv` (unpacks tensorrt-stubs into "
                    f".venv/share/{STUB_DIRS[request.param]}) or set STP_EDGE_TRT_STUBS")
    assert path.is_file(), f"STP_EDGE_TRT_STUBS points to {path}, which does not exist"
    index = StubIndex(path)
    index.version = request.param
    return index


def test_stub_index_is_discriminating(stubs):
    """The check can fail: names TensorRT 10 removed are reported missing, inherited ones are found."""
    assert "build_serialized_network" in stubs.members("Builder")
    assert "build_engine" not in stubs.members("Builder")  # removed in TensorRT 10
    assert "max_workspace_size" not in stubs.members("IBuilderConfig")  # removed in TensorRT 10
    assert "STRICT_TYPES" not in stubs.members("BuilderFlag")  # removed in TensorRT 10
    assert "log" in stubs.members("Logger") and "__version__" in stubs.module


def _missing_builder_api(stubs: StubIndex) -> list[str]:
    missing = []
    for owner, names in TRT_BUILDER_API.items():
        if owner == "module":
            missing += [n for n in names if n not in stubs.module]
        elif owner not in stubs.classes:
            missing.append(owner)
        else:
            missing += [f"{owner}.{n}" for n in names if n not in stubs.members(owner)]
    return missing


def test_builder_api_exists_in_tensorrt_10_8_and_10_13_stubs(stubs):
    """Everything exists in 10.13; in 10.8 only OPTIONAL_API names may be absent (and are, where expected)."""
    missing = _missing_builder_api(stubs)
    if stubs.version == "10.13":
        assert missing == []
    else:
        assert missing == ["HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY"]
        assert set(missing) <= OPTIONAL_API


def test_hardware_compatibility_against_each_stub_version(stubs):
    """SAME_COMPUTE_CAPABILITY (TensorRT >= 10.9) is refused by name on 10.8; AMPERE_PLUS builds on both."""
    from stp_edge.export.trt_build import hardware_compatibility_member

    levels = _enum_members(stubs, "HardwareCompatibilityLevel")
    assert hardware_compatibility_member("ampere_plus", levels) == "AMPERE_PLUS"
    if stubs.version == "10.13":
        assert hardware_compatibility_member("same_compute_capability", levels) == "SAME_COMPUTE_CAPABILITY"
    else:
        with pytest.raises(EngineBuildError, match=r"needs TensorRT >= 10.9 .*this is TensorRT 10.8"):
            hardware_compatibility_member("same_compute_capability", levels, "10.8.0.43")
        with pytest.raises(EngineBuildError, match="needs TensorRT >= 10.9"):
            check_hardware_compatibility("same_compute_capability", "9.0", available=levels)
    flags = _enum_members(stubs, "BuilderFlag")  # both still have weak-typing FP16 (TensorRT 11 does not)
    assert precision_mode("fp16", "fp32", flags)["builder_flags"] == ["FP16"]


def _enum_members(stubs: StubIndex, cls: str) -> set[str]:
    """Members of a stub enum: its ClassVar annotations other than __members__."""
    return {n for n in stubs.classes[cls][0] if n.isupper() and not n.startswith("_")}


def test_hardware_compatible_engines_are_not_built_on_jetson():
    with pytest.raises(EngineBuildError, match="not supported on integrated GPUs"):
        check_hardware_compatibility("ampere_plus", "8.7", integrated=True)
    check_hardware_compatibility(None, "8.7", integrated=True)


def test_timing_cache_file_round_trip(tmp_path):
    from stp_edge.export.trt_build import TimingCache

    assert TimingCache(None).data == b"" and TimingCache(tmp_path / "none.cache").data == b""
    cache = TimingCache(tmp_path / "sub" / "h200.cache")
    cache.save()  # nothing built yet: no empty file
    assert not cache.path.exists()
    cache.data = bytes(range(256)) * 3
    cache.save()
    assert TimingCache(cache.path).data == cache.data
    assert [p.name for p in cache.path.parent.iterdir()] == ["h200.cache"]  # no partial file left


def test_two_optimisation_profiles_opt_one_and_opt_max():
    from stp_edge.export.trt_build import optimization_profiles

    shapes = {"frame_emb": ((1, 1, 8), (1, 7, 8), (16, 7, 8)), "region_emb": ((1, 1, 4, 8), (1, 7, 4, 8),
                                                                          (16, 7, 4, 8))}
    first, second = optimization_profiles(shapes)
    assert first == shapes
    assert second == {"frame_emb": ((1, 1, 8), (16, 7, 8), (16, 7, 8)),
                      "region_emb": ((1, 1, 4, 8), (16, 7, 4, 8), (16, 7, 4, 8))}
    at_max = {"x": ((1, 3), (4, 3), (4, 3))}
    assert optimization_profiles(at_max) == [at_max]  # opt is max already: one profile


def test_timing_cache_is_kept_per_gpu_model_and_tensorrt_version(tmp_path):
    from stp_edge.export.trt_build import timing_cache_file

    h100 = timing_cache_file(tmp_path, "NVIDIA H100 80GB HBM3", "10.13.0.35")
    orin = timing_cache_file(tmp_path, "Orin (nvgpu)", "10.3.0.30")
    assert h100.parent == orin.parent == tmp_path and h100 != orin
    assert h100.name.endswith("-trt10.13.cache") and "h100" in h100.name
    assert timing_cache_file(tmp_path, "NVIDIA H100 80GB HBM3", "10.13.1.2") == h100  # same minor version
    assert timing_cache_file(tmp_path / "mine.cache", "NVIDIA H100 80GB HBM3", "10.13.0.35") == tmp_path / "mine.cache"


def test_builder_api_constant_covers_what_trt_build_uses():
    """Every TensorRT attribute trt_build.py touches is listed, so the stub check cannot drift."""
    src = SRC.read_text(encoding="utf-8")
    owners = {"trt": "module", "builder": "Builder", "builder_config": "IBuilderConfig", "parser": "OnnxParser",
              "profile": "IOptimizationProfile", "network": "INetworkDefinition", "tensor": "ITensor"}
    used = {owner: set(re.findall(rf"\b{var}\.(\w+)", src)) for var, owner in owners.items()}
    used["ParserError"] = set(re.findall(r"\.get_error\([^)]*\)\.(\w+)", src))
    for owner, member in re.findall(r"\btrt\.(\w+)\.(\w+)", src):
        used.setdefault(owner, set()).add(member)
    assert {"build_serialized_network", "create_builder_config"} <= used["Builder"]  # the regexes do match
    assert "set_shape" in used["IOptimizationProfile"] and "desc" in used["ParserError"]
    unlisted = {o: sorted(n - set(TRT_BUILDER_API.get(o, ()))) for o, n in used.items()}
    assert {o: n for o, n in unlisted.items() if n} == {}


def test_dynamically_chosen_names_are_listed():
    """Enum members looked up by name (getattr) are listed too."""
    flags = set()
    for wanted in ("fp32", "fp16"):
        for onnx_precision in ("fp32", "fp16"):
            try:
                mode = precision_mode(wanted, onnx_precision, ALL_FLAGS)
            except ValueError:
                continue
            flags |= set(mode["builder_flags"]) | set(mode["cleared_flags"])
    assert flags <= set(TRT_BUILDER_API["BuilderFlag"])
    assert set(LOG_LEVELS.values()) <= set(TRT_BUILDER_API["Logger"])
    assert set(HARDWARE_COMPATIBILITY.values()) <= set(TRT_BUILDER_API["HardwareCompatibilityLevel"])
    assert all(TRT_BUILDER_API.get(n.split(".")[0]) and n.split(".")[1] in TRT_BUILDER_API[n.split(".")[0]]
               for n in OPTIONAL_API)


# --- manifest and atomic install (file handling; no TensorRT involved) -------------------------------------
def _engine(dir_="engines/nvidia-test-gpu-fp16") -> EngineInfo:
    return EngineInfo(dir=dir_, precision="fp16", tensorrt_version="10.13.0.35", gpu_name="NVIDIA Test GPU",
                      compute_capability="8.9", build_flags=build_flags("fp16"),
                      platform={"os": "linux", "arch": "x86_64", "integrated": False})  # schema-checked on load


def test_updated_manifest_keeps_other_keys_and_replaces_the_same_dir():
    old = _engine().to_dict()
    manifest = {"files": {"encoder.onnx": "a", f"{old['dir']}/encoder.plan": "stale"}, "engines": [old],
                "source": {"kind": "demo"}, "exporter": {"torch_version": "x"}, "graph_precision": {"encoder": "fp32"}}
    new = updated_manifest(manifest, _engine(), {f"{old['dir']}/spatial.plan": "h"})
    assert new["source"] == {"kind": "demo"} and new["exporter"] and new["graph_precision"]
    assert new["files"] == {"encoder.onnx": "a", f"{old['dir']}/spatial.plan": "h"}
    assert new["engines"] == [old]
    assert manifest["files"][f"{old['dir']}/encoder.plan"] == "stale"  # the input is not modified


def _bundle_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["source"] = {"kind": "random", "seed": 0}  # an extra key, as the exporter writes
    rewrite_manifest(dst, manifest)  # resealed (manifest_digest), as a deliberate edit must be
    return dst


def _stage(bundle: Path, tag: bytes) -> Path:
    """Stand-in plan files (installation moves and hashes bytes; it never reads them as plans)."""
    staging = bundle / f".engines-partial-{tag.decode()}"
    staging.mkdir()
    for g in ("encoder", "temporal", "spatial"):
        (staging / f"{g}.plan").write_bytes(tag + g.encode())
    return staging


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_engines_writes_a_loadable_bundle_and_replaces_a_rebuild(handmade_bundle, tmp_path):
    bundle = _bundle_copy(handmade_bundle, tmp_path / "b.stp")
    engine = _engine()
    install_engines(bundle, _stage(bundle, b"one"), engine)
    loaded = Bundle.load(bundle)  # every checksum, plans included
    assert loaded.engines == [engine] and loaded.manifest["source"] == {"kind": "random", "seed": 0}
    assert loaded.plan_path(engine, "temporal").read_bytes() == b"onetemporal"
    install_engines(bundle, _stage(bundle, b"two"), engine)
    loaded = Bundle.load(bundle)
    assert loaded.engines == [engine] and loaded.plan_path(engine, "encoder").read_bytes() == b"twoencoder"
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == []
    assert sorted(f for f in loaded.manifest["files"] if f.endswith(".plan")) == [
        f"{engine.dir}/{g}.plan" for g in ("encoder", "spatial", "temporal")]


def test_install_engines_failure_changes_nothing(handmade_bundle, tmp_path, monkeypatch):
    bundle = _bundle_copy(handmade_bundle, tmp_path / "b.stp")
    install_engines(bundle, _stage(bundle, b"one"), _engine())
    before = _snapshot(bundle)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == MANIFEST:
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(trt_build.os, "replace", failing_replace)
    staging = _stage(bundle, b"two")
    with pytest.raises(OSError, match="simulated"):
        install_engines(bundle, staging, _engine())
    monkeypatch.setattr(trt_build.os, "replace", real_replace)
    shutil.rmtree(staging)  # build_bundle_engines' cleanup of the staging dir
    assert _snapshot(bundle) == before
    Bundle.load(bundle)
    # A first engine set whose install fails leaves no engines/ dir behind.
    fresh = _bundle_copy(handmade_bundle, tmp_path / "c.stp")
    before = _snapshot(fresh)
    monkeypatch.setattr(trt_build.os, "replace", failing_replace)
    staging = _stage(fresh, b"x")
    with pytest.raises(OSError, match="simulated"):
        install_engines(fresh, staging, _engine())
    shutil.rmtree(staging)
    assert _snapshot(fresh) == before and not (fresh / "engines").exists()


def test_install_engines_refuses_an_incomplete_set(handmade_bundle, tmp_path):
    bundle = _bundle_copy(handmade_bundle, tmp_path / "b.stp")
    staging = _stage(bundle, b"one")
    (staging / "spatial.plan").unlink()
    with pytest.raises(EngineBuildError, match=r"plans \['spatial'\] were not built"):
        install_engines(bundle, staging, _engine())
    assert read_manifest(bundle)["engines"] == []


# --- without TensorRT -------------------------------------------------------------------------------------
def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_build_without_tensorrt_names_the_extra_and_changes_nothing(handmade_bundle):
    before = _snapshot(handmade_bundle)
    with pytest.raises(MissingDependencyError, match=r"pip install 'stp-edge\[trt\]'"):
        build_bundle_engines(handmade_bundle, progress=False)
    assert _snapshot(handmade_bundle) == before
    assert [p.name for p in handmade_bundle.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed here")
def test_cli_build_engines_without_tensorrt(handmade_bundle, capsys):
    from stp_edge.cli import main

    assert main(["build-engines", str(handmade_bundle), "--precision", "fp32", "--max-batch", "4"]) == 2
    assert "stp-edge[trt]" in capsys.readouterr().err


def test_cli_build_engines_options():
    from stp_edge.cli import build_parser, cmd_build_engines

    args = build_parser().parse_args(["build-engines", "b.stp"])
    assert (args.func, args.precision, args.max_batch, args.max_snippets, args.device) == (
        cmd_build_engines, "fp16", 16, None, 0)
    assert not args.version_compatible and args.hardware_compatibility is None
    args = build_parser().parse_args(["build-engines", "b.stp", "--precision", "fp32", "--version-compatible",
                                      "--hardware-compatibility", "ampere_plus", "--device", "1",
                                      "--max-snippets", "64"])
    assert (args.precision, args.version_compatible, args.hardware_compatibility, args.device,
            args.max_snippets) == ("fp32", True, "ampere_plus", 1, 64)
    assert build_parser().parse_args(["build-engines", "b.stp", "--precision", "int8"]).precision == "int8"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build-engines", "b.stp", "--precision", "bf16"])


# --- on a GPU with TensorRT -------------------------------------------------------------------------------
def _gpu_builder():
    """(tensorrt, pycuda.driver) where both import and a CUDA device exists, else skip."""
    if not _has_tensorrt():
        pytest.skip("TensorRT (the builder) is not installed")
    trt = trt_build.load_builder()
    return trt, cuda_driver_or_skip()


def _random_feeds(cfg: STPromptConfig, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    e, r2, s, t = cfg.vision.embed_dim, cfg.num_regions, cfg.vision.image_size, 2 * cfg.context + 3
    return {
        "encoder": {"images": rng.normal(0, 1, (3, 3, s, s)).astype(np.float32)},
        "temporal": {"frame_emb": rng.normal(0, 0.5, (2, t, e)).astype(np.float32),
                     "region_emb": rng.normal(0, 0.5, (2, t, r2, e)).astype(np.float32)},
        "spatial": {"region_emb": rng.normal(0, 0.5, (3, r2, e)).astype(np.float32)},
    }


@pytest.mark.gpu
@pytest.mark.slow
def test_built_engines_match_onnxruntime(exported_tiny_bundle, tmp_path):
    """Build fp32 (and fp16 where TensorRT can) plans for the exported tiny bundle; TrtRunner vs ORT CPU."""
    from stp_edge.backends.ort import OrtRunner
    from stp_edge.backends.trt import TrtRunner, cuda_device_info
    from stp_edge.export.verify import compare

    trt, _ = _gpu_builder()
    bundle_dir = shutil.copytree(exported_tiny_bundle, tmp_path / "tiny.stp")  # the fixture is shared
    original = read_manifest(bundle_dir)
    built = {"fp32": build_bundle_engines(bundle_dir, precision="fp32", max_batch=4, max_snippets=64,
                                          progress=False)}
    if "FP16" in trt.BuilderFlag.__members__:  # the tiny bundle's graphs are fp32: fp16 needs weak typing
        built["fp16"] = build_bundle_engines(bundle_dir, precision="fp16", max_batch=4, max_snippets=64,
                                             progress=False)
    bundle = Bundle.load(bundle_dir)  # checks the sha256 of every plan
    for key in ("source", "exporter", "graph_precision", "created"):
        assert bundle.manifest[key] == original[key]
    gpu, cc = cuda_device_info(0)
    feeds = _random_feeds(bundle.config, np.random.default_rng())
    tolerance = {"fp32": 1e-4, "fp16": 1e-2}  # relative to the output's scale, as `verify`; TF32 is off in fp32
    for precision, engine_dir in built.items():
        engine = bundle.select_engine(TrtEnvironment(trt.__name__, trt.__version__, gpu, cc, {}), precision=precision)
        assert bundle.path / engine.dir == engine_dir and engine.build_flags["precision"] == precision
        for graph, feed in feeds.items():
            with OrtRunner(bundle.graph_path(graph)) as ort, TrtRunner(bundle.plan_path(engine, graph)) as rt:
                ref, got = ort.infer(feed), rt.infer(feed)
            for name, value in ref.items():
                _, rel = compare(got[name], value)
                assert rel <= tolerance[precision], f"{precision} {graph}.{name}: relative error {rel:.2e}"
