"""The GPU path's decisions, checked on the CPU: engine batch limits, engine selection across platforms and
TensorRT versions, stream hand-off, CUDA contexts, ONNX Runtime's TensorRT provider options, the GPU check.

No TensorRT or CUDA module is faked here: the pure functions get real inputs, the batch limits are enforced by a
Runner that wraps ONNX Runtime with a bundle's recorded profiles, and what needs a GPU is marked `gpu`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from stp_edge.backends.base import InputError, Runner, TensorSpec, feed_layout, profile_max_batch
from stp_edge.backends.ort import OrtRunner
from stp_edge.bundle import Bundle


# --- 1. batch limits ---------------------------------------------------------------------------------------
class ProfileRunner(Runner):
    """ONNX Runtime behind a TensorRT plan's optimisation profile: refuses any shape outside [min, max]."""

    def __init__(self, inner: Runner, profiles: Mapping[str, Any]) -> None:
        super().__init__(f"{inner.name} (profile)")
        self.inner, self.profiles = inner, profiles
        self.batches: list[int] = []

    def max_batch(self) -> int | None:
        return profile_max_batch(self.profiles)

    def activate_impl(self) -> None:
        self.inner.activate()

    def deactivate_impl(self) -> None:
        self.inner.deactivate()

    def input_specs_impl(self) -> dict[str, TensorSpec]:
        return self.inner.input_specs()

    def output_names_impl(self) -> list[str]:
        return self.inner.output_names()

    def infer_impl(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            shape = feed_layout(value)[0]
            lo, _, hi = self.profiles[name]
            if not all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
                raise InputError(f"{self.name}: {name} shape {shape} outside the profile [{lo}, {hi}]")
        self.batches.append(feed_layout(next(iter(feeds.values())))[0][0])
        return self.inner.infer(feeds)


def _detector(bundle: Bundle, max_batch: int | None):
    from stp_edge.api import Detector
    from stp_edge.bundle.engines import default_profiles
    from stp_edge.preprocess import CpuPreprocessor

    runners: dict[str, Runner] = {g: OrtRunner(bundle.graph_path(g)) for g in ("encoder", "temporal", "spatial")}
    if max_batch is not None:
        profiles = default_profiles(bundle.config, max_batch=max_batch)
        runners = {g: ProfileRunner(r, profiles[g]) for g, r in runners.items()}
    return Detector(bundle, runners, CpuPreprocessor(bundle.config.vision.image_size), spatial_on="all")


@pytest.mark.parametrize("fixture", ["handmade_bundle", "handmade_crops_bundle"])
def test_every_call_respects_the_engine_profile(fixture, request, frames_factory):
    """Three streams, spatial on every snippet, then flush: batches of 3..3(c+1) go through a max-2 profile."""
    bundle = Bundle.load(request.getfixturevalue(fixture))
    streams = {k: frames_factory(9 * bundle.config.snippet_len + 1, seed=k) for k in range(3)}
    out = {}
    for max_batch in (None, 2):
        with _detector(bundle, max_batch) as det:
            results = []
            for i in range(len(streams[0])):
                results += det.push_many({k: f[i] for k, f in streams.items()})
            results += det.flush()
            out[max_batch] = sorted(results, key=lambda r: (r.stream, r.snippet))
            if max_batch is not None:
                batches = {g: (r.batches, r.max_batch()) for g, r in det.runners.items()}
    assert len(out[2]) == 3 * 10 and all(r.anomaly_map is not None for r in out[2])
    # Host-computed crops (bundles exported before region features moved into the graph) batch B*R2 crops;
    # in-graph regions count B images in every mode.
    host_crops = bundle.config.region_mode == "crops" and bundle.manifest.get("region_features", "host") == "host"
    limit = {"encoder": 2 * bundle.config.num_regions if host_crops else 2, "temporal": 2, "spatial": 2}
    for g, (seen, most) in batches.items():
        assert most == limit[g] and seen and max(seen) <= most, (g, seen)
        assert max(seen) == most  # the limit was reached, so chunking happened
    for a, b in zip(out[None], out[2], strict=True):
        assert (a.stream, a.snippet) == (b.stream, b.snippet)
        np.testing.assert_allclose(a.score, b.score, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.region_scores, b.region_scores, rtol=1e-5, atol=1e-6)


def test_profile_max_batch_and_device_rows():
    from stp_edge.backends.base import batch_rows
    from stp_edge.cuda.memory import DeviceArray

    assert profile_max_batch(None) is None
    assert profile_max_batch({"a": [[1, 4], [2, 4], [8, 4]], "b": [[1], [1], [6]]}) == 6
    dev = DeviceArray(ptr=0x1000, shape=(5, 3, 2), dtype=np.dtype(np.float16), stream=7)
    part = batch_rows(dev, 2, 4)
    assert (part.ptr, part.shape, part.stream) == (0x1000 + 2 * 3 * 2 * 2, (2, 3, 2), 7)
    host = np.arange(10).reshape(5, 2)
    assert np.shares_memory(batch_rows(host, 1, 3), host)


# --- 3. engine selection across platforms and TensorRT versions ---------------------------------------------
X86_A100 = {"os": "linux", "arch": "x86_64", "integrated": False}
ORIN = {"os": "linux", "arch": "aarch64", "integrated": True}


def _engine(**kw):
    from stp_edge.bundle.engines import EngineInfo

    base = dict(dir="engines/nvidia-a100-fp16", precision="fp16", tensorrt_version="10.3.0.26",
                gpu_name="NVIDIA A100", compute_capability="8.0", platform=X86_A100)
    base.update(kw)
    return EngineInfo(**base)


def test_host_platform_normalises_names():
    from stp_edge.bundle.engines import host_platform

    assert host_platform(True, system="Linux", machine="arm64") == ORIN
    assert host_platform(False, system="Linux", machine="AMD64") == X86_A100
    assert host_platform(None, system="Linux", machine="x86_64")["integrated"] is None


def test_an_x86_a100_plan_is_never_selected_on_an_orin():
    from stp_edge.bundle.engines import engine_mismatches, select_engine

    orin = dict(tensorrt_version="10.3.0.26", compute_capability="8.7", gpu_name="Orin", platform=ORIN)
    for flags in ({}, {"hardware_compatibility": "ampere_plus"}, {"version_compatible": True,
                                                                  "hardware_compatibility": "ampere_plus"}):
        why = engine_mismatches(_engine(build_flags=flags), **orin)
        assert any(w.startswith("platform: engine built on linux x86_64, discrete GPU, this is linux aarch64, "
                                "integrated GPU") for w in why), why
    # Even an entry without a recorded platform: hardware compatibility is not for integrated GPUs.
    hw = _engine(platform={}, build_flags={"hardware_compatibility": "ampere_plus"})
    assert "not supported on integrated GPUs" in " ".join(engine_mismatches(hw, **orin))
    same = _engine(platform=ORIN, gpu_name="Orin", compute_capability="8.7")
    assert select_engine([_engine(), same], **orin)[0] is same


def test_full_version_and_version_compatible_plans_follow_the_support_matrix():
    from stp_edge.bundle.engines import engine_mismatches

    env = dict(compute_capability="8.0", platform=X86_A100)
    assert engine_mismatches(_engine(), tensorrt_version="10.3.0.26", **env) == []
    assert "runtime is 10.3.0.30" in engine_mismatches(_engine(), tensorrt_version="10.3.0.30", **env)[0]
    vc = _engine(build_flags={"version_compatible": True})
    assert engine_mismatches(vc, tensorrt_version="10.13.0.35", **env) == []
    assert engine_mismatches(vc, tensorrt_version="11.4.0.106", **env) == []  # 10.x plans on TensorRT 11
    assert engine_mismatches(vc, tensorrt_version="10.2.0.1", **env)  # never on an older runtime
    old = _engine(tensorrt_version="8.6.1.6", build_flags={"version_compatible": True})
    assert engine_mismatches(old, tensorrt_version="10.13.0.35", **env) == []
    assert "from 10.0" in engine_mismatches(old, tensorrt_version="11.4.0.106", **env)[0]


def test_the_lean_runtime_only_considers_version_compatible_plans():
    from stp_edge.bundle.engines import select_engine

    plain = _engine(tensorrt_version="11.4.0.106")
    vc = _engine(dir="engines/vc", build_flags={"version_compatible": True})
    env = dict(tensorrt_version="11.4.0.106", compute_capability="8.0", gpu_name="NVIDIA A100", platform=X86_A100)
    assert select_engine([plain, vc], **env)[0] is plain
    chosen, reasons = select_engine([plain, vc], **env, lean_runtime=True)
    assert chosen is vc and "loads only version-compatible plans" in reasons[0]


def test_plans_that_need_host_code_come_last_unless_it_is_allowed():
    from stp_edge.bundle.engines import TrtEnvironment, needs_host_code, select_engine

    vc = _engine(dir="engines/vc", build_flags={"version_compatible": True})
    plain = _engine(dir="engines/plain", tensorrt_version="10.13.0.35")
    env = dict(tensorrt_version="10.13.0.35", compute_capability="8.0", gpu_name="NVIDIA A100", platform=X86_A100)
    assert needs_host_code(vc) and not needs_host_code(plain)
    assert select_engine([vc, plain], **env)[0] is plain
    assert select_engine([vc, plain], **env, allow_host_code=True)[0] is vc  # manifest order
    assert select_engine([vc], **env)[0] is vc  # still chosen when nothing else fits: its load error says why
    b = Bundle(path=None, manifest={}, config=None, engines=[vc, plain])  # the choice needs only the engines
    machine = TrtEnvironment("tensorrt", "10.13.0.35", "NVIDIA A100", "8.0", X86_A100)
    assert b.select_engine(machine) is plain and b.select_engine(machine, allow_host_code=True) is vc


def test_engine_entry_round_trips_its_platform():
    from stp_edge.bundle.engines import EngineInfo

    e = _engine()
    assert EngineInfo.from_dict(e.to_dict()) == e and e.to_dict()["platform"] == X86_A100
    legacy = {k: v for k, v in e.to_dict().items() if k != "platform"}
    assert EngineInfo.from_dict(legacy).platform == {} and "platform" not in EngineInfo.from_dict(legacy).to_dict()


class RefusedPlanRunner(ProfileRunner):
    """A TensorRT runner stand-in whose plan TensorRT refused (what `deserialize_plan` raises)."""

    def __init__(self, plan_path, inner: Runner) -> None:
        super().__init__(inner, {})
        self.plan_path = plan_path

    def activate_impl(self) -> None:
        from stp_edge.backends.base import PlanLoadError

        raise PlanLoadError(f"{self.plan_path}: TensorRT cannot deserialise this plan", plan=self.plan_path)


def test_a_plan_that_fails_to_load_falls_back_to_ort_under_auto_only(handmade_bundle):
    from stp_edge.backends import activate_runners, create_runners
    from stp_edge.backends.base import RunnerError

    bundle = Bundle.load(handmade_bundle)
    made = []

    def make(b, backend, device, **kw):
        if backend != "trt":
            return create_runners(b, backend, device, **kw)
        runners = {g: (OrtRunner(b.graph_path(g)) if g == "encoder" else
                       RefusedPlanRunner(b.path / "engines/x/temporal.plan", OrtRunner(b.graph_path(g))))
                   for g in ("encoder", "temporal", "spatial")}
        made.append(runners)
        return runners

    warnings: list[str] = []
    backend, runners = activate_runners(bundle, "trt", requested="auto", warn=warnings.append, make_runners=make)
    assert backend == "ort-cpu" and all(r.is_active for r in runners.values())
    assert len(warnings) == 1 and "\n" not in warnings[0] and "falling back to onnxruntime (ort-cpu)" in warnings[0]
    assert "stp-edge build-engines" in warnings[0]
    assert not any(r.is_active for r in made[0].values())  # the encoder that did load was released
    for r in runners.values():
        r.deactivate()
    with pytest.raises(RunnerError, match="cannot deserialise.*stp-edge build-engines") as err:
        activate_runners(bundle, "trt", requested="trt", warn=warnings.append, make_runners=make)
    assert len(warnings) == 1 and "\n" not in str(err.value)


def test_plan_load_message_names_both_sides_and_the_rebuild():
    from stp_edge.backends.trt import plan_load_message
    from stp_edge.bundle.engines import TrtEnvironment

    env = TrtEnvironment("tensorrt_lean", "11.4.0.106", "NVIDIA Jetson AGX Orin", "8.7", ORIN)
    msg = plan_load_message("b.stp/engines/a/encoder.plan", _engine(), env, "b.stp")
    assert msg == ("b.stp/engines/a/encoder.plan: TensorRT could not deserialise the plan: built with TensorRT "
                   "10.3.0.26 on NVIDIA A100 (sm 8.0, linux x86_64, discrete GPU); this machine runs TensorRT "
                   "11.4.0.106 (lean runtime) on NVIDIA Jetson AGX Orin (sm 8.7, linux aarch64, integrated GPU). "
                   "Rebuild it here: stp-edge build-engines b.stp --precision fp16 --version-compatible")


# --- 6. ONNX Runtime's TensorRT provider ------------------------------------------------------------------
def test_ort_tensorrt_provider_options_carry_profiles_timing_cache_and_fp16(handmade_bundle, tmp_path):
    from stp_edge.backends.ort import trt_provider_options
    from stp_edge.bundle.engines import default_profiles

    cfg = Bundle.load(handmade_bundle).config
    profiles = default_profiles(cfg, max_batch=4)["temporal"]
    opts = trt_provider_options(1, fp16=True, cache_dir=tmp_path, profiles=profiles)
    e, r2, window = cfg.vision.embed_dim, cfg.num_regions, 2 * cfg.context + 1
    assert opts["trt_profile_min_shapes"] == f"frame_emb:1x1x{e},region_emb:1x1x{r2}x{e}"
    assert opts["trt_profile_opt_shapes"] == f"frame_emb:1x{window}x{e},region_emb:1x{window}x{r2}x{e}"
    assert opts["trt_profile_max_shapes"] == f"frame_emb:4x{window}x{e},region_emb:4x{window}x{r2}x{e}"
    assert opts["trt_fp16_enable"] is True and opts["device_id"] == 1
    assert opts["trt_timing_cache_enable"] is True and opts["trt_timing_cache_path"] == str(tmp_path)
    assert opts["trt_engine_cache_enable"] is True
    assert "trt_profile_min_shapes" not in trt_provider_options(0, fp16=False, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        trt_provider_options(0, fp16=False, cache_dir=tmp_path, profiles={"x": ((2,), (1,), (4,))})


def test_ort_trt_runners_get_the_bundle_profiles(handmade_bundle):
    from stp_edge.backends import create_runners

    bundle = Bundle.load(handmade_bundle)
    runners = create_runners(bundle, "ort-trt", ort_trt_fp16=True)
    opts = runners["spatial"]._provider_options("TensorrtExecutionProvider")
    assert opts["trt_fp16_enable"] and opts["trt_profile_max_shapes"].startswith("region_emb:16x")


# --- 4. stream hand-off ------------------------------------------------------------------------------------
def test_producer_stream_follows_cuda_array_interface_v3():
    from stp_edge.cuda.memory import DeviceArray
    from stp_edge.cuda.streams import CU_STREAM_LEGACY, CU_STREAM_PER_THREAD, producer_stream

    f32 = np.dtype(np.float32)
    assert producer_stream(np.ones(3, np.float32), 0x99) is None  # host memory
    assert producer_stream(DeviceArray(0x1000, (1, 3), f32), 0x99) is None  # ready (synchronised)
    assert producer_stream(DeviceArray(0x1000, (1, 3), f32, stream=0x99), 0x99) is None  # same stream: ordered
    assert producer_stream(DeviceArray(0x1000, (1, 3), f32, stream=0x55), 0x99) == 0x55
    assert producer_stream(DeviceArray(0x1000, (1, 3), f32, stream=CU_STREAM_LEGACY), 0x99) == 1
    assert producer_stream(DeviceArray(0x1000, (1, 3), f32, stream=CU_STREAM_PER_THREAD), 0x99) == 2
    with pytest.raises(ValueError, match="stream 0 is not allowed"):
        producer_stream(DeviceArray(0x1000, (1, 3), f32, stream=0), 0x99)


def test_trt_runner_waits_on_feed_streams_and_the_encoder_hands_over_without_sync(handmade_bundle, frames_factory):
    """A CUDA preprocessor is called with sync=False only for a runner that waits on the producer's stream."""
    from stp_edge.backends.trt import TrtRunner
    from stp_edge.bundle.engines import default_profiles
    from stp_edge.pipeline.encode import Encoder
    from stp_edge.pipeline.snippets import SnippetAssembler
    from stp_edge.preprocess import CpuPreprocessor

    assert TrtRunner.waits_on_feed_streams and not OrtRunner.waits_on_feed_streams
    bundle = Bundle.load(handmade_bundle)
    cfg = bundle.config

    class StreamPreprocess:  # the CudaPreprocessor call signature, computed on the CPU
        stream_handle, max_batch = 0x55, 16

        def __init__(self) -> None:
            self.cpu, self.syncs = CpuPreprocessor(cfg.vision.image_size), []

        def __call__(self, frames, sync: bool = True):
            self.syncs.append(sync)
            return self.cpu(frames)

    class WaitingRunner(ProfileRunner):
        waits_on_feed_streams = True

    asm = SnippetAssembler(cfg.snippet_len, cfg.frames_per_snippet, 0)
    snippet = next(s for f in frames_factory(cfg.snippet_len) if (s := asm.push(f)))
    for runner_cls, expected in ((ProfileRunner, [True]), (WaitingRunner, [False])):
        pre = StreamPreprocess()
        with runner_cls(OrtRunner(bundle.graph_path("encoder")), default_profiles(cfg)["encoder"]) as runner:
            Encoder(runner, pre, cfg)([snippet])
        assert pre.syncs == expected


# --- 5. contexts -------------------------------------------------------------------------------------------
def test_check_device_names_what_exists():
    from stp_edge.cuda.context import check_device

    assert check_device(1, 2) == 1
    with pytest.raises(ValueError, match=r"device 2 does not exist; this machine has 2 \(0..1\)"):
        check_device(2, 2)
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        check_device(0, 0)
    with pytest.raises(ValueError, match="integer ordinal"):
        check_device(True, 2)


def test_runtime_never_binds_a_context_implicitly():
    """No runtime module imports pycuda.autoprimaryctx/autoinit (device 0, importing thread only)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "stp_edge"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            offenders += [f"{path.relative_to(root)}: {n}" for n in names
                          if n in ("pycuda.autoprimaryctx", "pycuda.autoinit")]
    assert offenders == []


# --- on a GPU (pycuda and a CUDA device; scripts/gpu_check.sh runs these) -----------------------------------
def _gpu():
    from cuda_driver import cuda_driver_or_skip

    return cuda_driver_or_skip()


def _frames(n: int, h: int = 1080, w: int = 1920) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.gpu
def test_preprocessor_runs_from_another_thread_on_the_device_it_is_given():
    import threading

    from stp_edge.cuda import CudaPreprocessor
    from stp_edge.preprocess import CpuPreprocessor

    cuda = _gpu()
    frames = _frames(2, 240, 320)
    want = CpuPreprocessor(224)(frames)
    device = cuda.Device.count() - 1
    pre = CudaPreprocessor(224, max_batch=2, device=device)
    out: dict[str, Any] = {}

    def worker() -> None:
        try:
            out["got"] = pre.to_host(pre(frames))
            out["current"] = cuda.Context.get_current()
        except Exception as exc:  # reported in the main thread
            out["error"] = exc

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert "error" not in out, out.get("error")
    assert out["current"] is None  # the worker's context stack is left empty
    np.testing.assert_allclose(out["got"], want, atol=2e-2)
    with pre.current():
        assert cuda.Context.get_device().pci_bus_id() == cuda.Device(device).pci_bus_id()
    pre.close()


@pytest.mark.gpu
def test_no_context_stack_leak_per_create_and_close():
    import threading

    from stp_edge.cuda import CudaPreprocessor

    cuda = _gpu()
    seen: list[Any] = []

    def cycles() -> None:
        for _ in range(8):
            with CudaPreprocessor(64, max_batch=1) as pre:
                pre(_frames(1, 48, 64))
            seen.append(cuda.Context.get_current())

    t = threading.Thread(target=cycles)
    t.start()
    t.join()
    assert seen == [None] * 8


@pytest.mark.gpu
def test_consumer_stream_waits_on_the_producer_event_without_host_sync():
    """The preprocessor's unsynchronised output, read on another stream after StreamWaiter.wait, is complete."""
    from stp_edge.cuda import CudaPreprocessor
    from stp_edge.cuda.streams import StreamWaiter, producer_stream

    cuda = _gpu()
    frames = _frames(8, 2160, 3840)  # enough work that an unordered read would see the poison
    with CudaPreprocessor(224, max_batch=8) as pre:
        want = pre.to_host(pre(frames))
        with pre.current():
            consumer = cuda.Stream()
            waiter = StreamWaiter()
            cuda.memset_d32(int(pre._out), 0x7FC00000, want.size)  # NaN: an unordered read would see it
            images = pre(frames, sync=False)
            producer = producer_stream(images, int(consumer.handle))
            assert producer == pre.stream_handle
            waiter.wait(int(consumer.handle), producer)
            got = cuda.pagelocked_empty(want.shape, want.dtype)
            cuda.memcpy_dtoh_async(got, images.ptr, consumer)
            consumer.synchronize()
            waiter.close()
    np.testing.assert_array_equal(got, want)


# --- 7. the prepared GPU check ----------------------------------------------------------------------------
def test_gpu_check_dry_run_prints_every_phase_and_its_command(tmp_path):
    """`scripts/gpu_check.sh --dry-run all` runs nothing and lists each phase with its exact command."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RESULTS": str(tmp_path / "results"), "PYTHON": "python3"}
    res = subprocess.run(["bash", str(repo / "scripts/gpu_check.sh"), "--dry-run", "all"], capture_output=True,
                         text=True, env=env, timeout=60, check=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("== phase ")]
    phases = [ln.split()[2] for ln in lines if ln.split()[2] != "summary:"]
    assert phases == ["fetch-pycuda", "fetch-pytest", "fatbin", "install", "env", "kernels", "kernels-summary",
                      "sanitizer", "thread", "encoder", "timings"]
    text = res.stdout
    assert "-m stp_edge.cuda.build --out build/kernels" in text  # the fatbin is prebuilt here, then carried
    assert "scripts/gpu_install.sh" in text and "venv" not in text.replace(".venv/bin/python", "")
    assert "-m gpu tests/test_cuda_gpu.py tests/test_gpu_path.py" in text
    assert "compute-sanitizer --tool memcheck" in text and "gpu_phases.py sanitize" in text
    for name in ("thread", "encoder", "timings"):
        assert f"gpu_phases.py {name}" in text and f"{tmp_path}/results/{name}.json" in text
    limits = [int(ln.split("(timeout ")[1].split("s)")[0]) for ln in lines if "(timeout " in ln]
    assert sum(limits[3:]) <= 600 and all(limits)  # run phases are bounded; the script's deadline is 290 s
    assert not (tmp_path / "results").exists()


def test_junit_summary_counts_a_skip_as_a_failure(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_phases", Path(__file__).resolve().parents[1]
                                                  / "scripts/gpu_phases.py")
    gpu_phases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_phases)
    xml = tmp_path / "k.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a"/>'
                   '<testcase classname="t" name="b"><skipped message="no CUDA"/></testcase>'
                   '</testsuite></testsuites>')
    result = gpu_phases.phase_junit(xml)
    assert result["ok"] is False and result["skipped"] == ["t::b"] and result["tests"] == 2
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a"/></testsuite></testsuites>')
    assert gpu_phases.phase_junit(xml)["ok"] is True
