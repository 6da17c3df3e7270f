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
from graph_faults import WrappedRunner

from stp_edge.backends.base import InputError, Runner, feed_layout, profile_max_batch
from stp_edge.backends.ort import OrtRunner
from stp_edge.bundle import Bundle


# --- 1. batch limits ---------------------------------------------------------------------------------------
class ProfileRunner(WrappedRunner):
    """ONNX Runtime behind a TensorRT plan's optimisation profile: refuses any shape outside [min, max]."""

    def __init__(self, inner: Runner, profiles: Mapping[str, Any]) -> None:
        super().__init__(inner, f"{inner.name} (profile)")
        self.profiles = profiles
        self.batches: list[int] = []

    def max_batch(self) -> int | None:
        return profile_max_batch(self.profiles)

    def max_shapes(self) -> dict[str, tuple[int, ...]] | None:
        return {n: tuple(p[2]) for n, p in self.profiles.items()} or None

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


def test_temporal_chunks_tile_the_video_and_hold_each_kept_snippets_window():
    from stp_edge.pipeline.temporal import temporal_chunks, temporal_window

    for n, max_len, c in [(1, 7, 3), (7, 7, 3), (8, 7, 3), (40, 7, 3), (40, 12, 3), (41, 64, 3), (30, 5, 2)]:
        chunks = temporal_chunks(n, max_len, c)
        kept = [t for _, _, a, b in chunks for t in range(a, b)]
        assert kept == list(range(n)), (n, max_len, c)
        for lo, hi, a, b in chunks:
            assert 0 < hi - lo <= max_len
            for t in range(a, b):
                w = temporal_window(t, n, c)
                assert lo <= w[0] and w[1] <= hi
    assert len(temporal_chunks(40, 7, 3)) == 34 and len(temporal_chunks(40, 40, 3)) == 1  # ends keep 4 and 4
    with pytest.raises(ValueError, match="2c[+]1=7"):
        temporal_chunks(10, 6, 3)


def test_offline_scores_on_an_engine_whose_profile_bounds_t(handmade_bundle, frames_factory):
    """A plan's profile takes T <= 2c+1: a longer video is cut into windows; the scores equal the unbounded run."""
    bundle = Bundle.load(handmade_bundle)
    frames = frames_factory(11 * bundle.config.snippet_len, seed=5)
    with _detector(bundle, None) as det:
        want = det.offline_scores(frames)
    with _detector(bundle, 2) as det:
        t_max = det.runners["temporal"].max_shapes()["frame_emb"][1]
        assert t_max == 2 * bundle.config.context + 1 < 11
        got = det.offline_scores(frames)
    assert got[0].shape == (11,) and np.ptp(got[0]) > 0
    np.testing.assert_allclose(got[0], want[0], atol=2e-4)  # the banded adapter drops weights < 1e-4
    np.testing.assert_allclose(got[1], want[1], atol=2e-4)


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
    chosen, reasons = select_engine([plain, vc], **env, lean_runtime=True, allow_host_code=True)
    assert chosen is vc and "loads only version-compatible plans" in reasons[0]
    chosen, reasons = select_engine([plain, vc], **env, lean_runtime=True)
    assert chosen is None and "--allow-host-code" in reasons[1]


def test_plans_that_need_host_code_are_refused_unless_it_is_allowed():
    from stp_edge.bundle.engines import HOST_CODE_REFUSED, TrtEnvironment, needs_host_code, select_engine
    from stp_edge.bundle.errors import EngineCompatibilityError

    vc = _engine(dir="engines/vc", build_flags={"version_compatible": True})
    plain = _engine(dir="engines/plain", tensorrt_version="10.13.0.35")
    env = dict(tensorrt_version="10.13.0.35", compute_capability="8.0", gpu_name="NVIDIA A100", platform=X86_A100)
    assert needs_host_code(vc) and not needs_host_code(plain)
    assert select_engine([vc, plain], **env)[0] is plain
    assert select_engine([vc, plain], **env, allow_host_code=True)[0] is vc  # manifest order
    chosen, reasons = select_engine([vc], **env)  # never chosen without the permission, even if nothing else fits
    assert chosen is None and reasons == [f"engines/vc: {HOST_CODE_REFUSED}"] and "--allow-host-code" in reasons[0]
    assert select_engine([vc], **env, allow_host_code=True)[0] is vc
    b = Bundle(path=None, manifest={}, config=None, engines=[vc, plain])  # the choice needs only the engines
    machine = TrtEnvironment("tensorrt", "10.13.0.35", "NVIDIA A100", "8.0", X86_A100)
    assert b.select_engine(machine) is plain and b.select_engine(machine, allow_host_code=True) is vc
    only_vc = Bundle(path="b.stp", manifest={}, config=None, engines=[vc])
    with pytest.raises(EngineCompatibilityError, match="Allow the host code [(]--allow-host-code[)]"):
        only_vc.select_engine(machine)


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
            from stp_edge.cuda.driver import current_context

            out["current"] = current_context()  # driver level: pycuda's bookkeeping misses stale entries
        except Exception as exc:  # reported in the main thread
            out["error"] = exc

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert "error" not in out, out.get("error")
    assert out["current"] == 0  # the worker's context stack is left empty
    np.testing.assert_allclose(out["got"], want, atol=2e-2)
    with pre.current():
        assert cuda.Context.get_device().pci_bus_id() == cuda.Device(device).pci_bus_id()
    pre.close()


@pytest.mark.gpu
def test_no_context_stack_leak_per_create_and_close():
    import threading

    from stp_edge.cuda import CudaPreprocessor
    from stp_edge.cuda.context import PrimaryContext
    from stp_edge.cuda.driver import current_context

    _gpu()
    seen: list[Any] = []

    def cycles() -> None:
        # Read at driver level (cuCtxGetCurrent): pycuda's own bookkeeping does not see a stale driver entry.
        seen.append(current_context())
        for _ in range(8):
            with CudaPreprocessor(64, max_batch=1) as pre:
                pre(_frames(1, 48, 64))
            seen.append(current_context())
        ctx = PrimaryContext(0)
        with ctx.current():
            seen.append(current_context() != 0)
        ctx.release()
        seen.append(current_context())

    t = threading.Thread(target=cycles)
    t.start()
    t.join()
    assert seen == [0] * 9 + [True, 0]


@pytest.mark.gpu
def test_a_context_released_from_another_thread_drops_its_retain():
    """Released off its creating thread (where pycuda's detach does nothing), the retain is still dropped."""
    import ctypes
    import threading

    from stp_edge.cuda.context import PrimaryContext
    from stp_edge.cuda.driver import load_libcuda

    _gpu()
    lib = load_libcuda()

    def active() -> int:
        flags, state = ctypes.c_uint(), ctypes.c_int()
        assert lib.cuDevicePrimaryCtxGetState(0, ctypes.byref(flags), ctypes.byref(state)) == 0
        return state.value

    if active():
        pytest.skip("device 0's primary context is retained by someone else in this process")
    ctx = PrimaryContext(0)
    assert active() == 1
    t = threading.Thread(target=ctx.release)
    t.start()
    t.join()
    assert active() == 0


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




# --- libcuda discovery (real files in temporary folder layouts: a path search, not CUDA) ---------------------
def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF")
    return path


def _no_lookup(_name):
    return None


def test_libcuda_on_a_driver_mount_outside_the_ldconfig_cache_is_found_before_the_stub(tmp_path):
    from stp_edge.cuda.driver import find_libcuda

    drv = _touch(tmp_path / "usr/local/nvidia/lib64/libcuda.so.1")
    _touch(tmp_path / "cuda/lib64/stubs/libcuda.so")
    found = find_libcuda({"CUDA_HOME": str(tmp_path / "cuda")}, "", _no_lookup, root=tmp_path)
    assert (found.path, found.how, found.stub) == (str(drv), "driver folder", False)


def test_libcuda_search_order_loader_then_ldconfig_then_ld_library_path_then_folders(tmp_path):
    from stp_edge.cuda.driver import find_libcuda

    _touch(tmp_path / "usr/lib/x86_64-linux-gnu/libcuda.so.1")
    mine = _touch(tmp_path / "opt/driver/libcuda.so.1")
    env = {"LD_LIBRARY_PATH": f"{tmp_path}/empty:{tmp_path}/opt/driver"}
    assert find_libcuda(env, "", _no_lookup, root=tmp_path).path == str(mine)
    cached = _touch(tmp_path / "cache/libcuda.so.1")
    text = f"\tlibcudart.so.13 (libc6,x86-64) => /x/libcudart.so.13\n\tlibcuda.so.1 (libc6,x86-64) => {cached}\n"
    assert find_libcuda(env, text, _no_lookup, root=tmp_path).how == "ldconfig -p"
    named = find_libcuda(env, text, lambda name: f"lib{name}.so.1", root=tmp_path)
    assert (named.path, named.how) == ("libcuda.so.1", "ctypes.util.find_library")
    # a cache entry whose file is gone (a stale cache) is skipped
    stale = "\tlibcuda.so.1 (libc6,x86-64) => /nonexistent/libcuda.so.1\n"
    assert find_libcuda(env, stale, _no_lookup, root=tmp_path).path == str(mine)


def test_a_toolkit_stub_is_not_a_driver(tmp_path):
    import pytest

    from stp_edge.cuda.driver import DriverNotFoundError, find_libcuda, link_dir

    stub = _touch(tmp_path / "cuda/targets/x86_64-linux/lib/stubs/libcuda.so")
    env = {"CUDA_PATH": str(tmp_path / "cuda")}
    with pytest.raises(DriverNotFoundError, match="stub .* is not a driver"):
        find_libcuda(env, "", _no_lookup, root=tmp_path)
    found = find_libcuda(env, "", _no_lookup, root=tmp_path, allow_stub=True)
    assert (found.path, found.stub) == (str(stub), True)
    link = link_dir(tmp_path / "link", found) / "libcuda.so"
    assert link.is_symlink() and link.resolve() == stub.resolve()
    with pytest.raises(DriverNotFoundError, match="/usr/local/nvidia/lib64"):
        find_libcuda({}, "", _no_lookup, root=tmp_path / "nothing")


def test_the_runner_picks_the_profile_tuned_nearest_the_batch():
    from stp_edge.backends.trt import pick_profile

    assert [pick_profile(b, [1, 16]) for b in (1, 2, 8, 9, 16)] == [0, 0, 0, 1, 1]
    assert pick_profile(5, []) == 0 and pick_profile(5, [4]) == 0
    assert pick_profile(3, [1, 5]) == 0  # a tie goes to the smaller opt


# --- 7. what is uploaded: the window the resize reads, staging sized to the batch used -------------------------
@pytest.mark.parametrize(("h", "w", "size"), [(1080, 1920, 224), (720, 1280, 224), (480, 640, 112), (1920, 1080, 64)])
def test_the_upload_window_is_all_the_preprocessing_reads(h, w, size):
    """Pixels outside `upload_window` are never read: replacing them changes nothing in the CPU twin's output."""
    from stp_edge.cuda.preprocess import upload_window
    from stp_edge.preprocess import CpuPreprocessor

    pre = CpuPreprocessor(size)
    r0, r1, c0, c1 = upload_window(h, w, pre.spec)
    rng = np.random.default_rng(h + w)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    other = 255 - frame  # every pixel differs
    other[r0:r1, c0:c1] = frame[r0:r1, c0:c1]
    np.testing.assert_array_equal(pre(other), pre(frame))
    assert (r1 - r0) * (c1 - c0) < h * w  # and it is a proper part of the frame
    if (h, w) == (1080, 1920):
        share = (r1 - r0) * (c1 - c0) / (h * w)
        assert (r0, r1) == (0, 1080) and 0.56 < share < 0.58  # ~57% of a 16:9 frame


def test_staging_is_sized_to_the_batch_used_not_the_max():
    from stp_edge.cuda.preprocess import staging_frames, upload_window
    from stp_edge.preprocess import PreprocessSpec

    assert [staging_frames(b, 16) for b in (1, 2, 3, 5, 9, 16)] == [1, 2, 4, 8, 16, 16]
    assert staging_frames(11, 12) == 12
    with pytest.raises(ValueError, match="1..max_batch=16"):
        staging_frames(17, 16)
    r0, r1, c0, c1 = upload_window(1080, 1920, PreprocessSpec())
    one_camera = staging_frames(1, 16) * (r1 - r0) * (c1 - c0) * 3
    before = 16 * 1080 * 1920 * 3  # the old allocation: max_batch whole frames, pinned + device each
    assert before > 99e6 and one_camera < 3.6e6


def test_staging_is_two_slots_and_an_integrated_gpu_copies_nothing():
    """Double buffering costs a second slot; on Jetson (mapped pinned memory, read in place) no device buffer."""
    from stp_edge.cuda.staging import SLOTS, staging_bytes

    frame = 1080 * 1096 * 3  # the upload window of one 1080p frame
    assert SLOTS == 2
    assert staging_bytes(frame, 1, mapped=False) == (2 * frame, 2 * frame)
    assert staging_bytes(frame, 4, mapped=True) == (8 * frame, 0)


@pytest.mark.gpu
def test_the_preprocessor_stages_the_window_for_the_batch_used_in_two_slots():
    """After one 1080p frame and then a batch of 3, the staging holds each batch's window rounded up to a power
    of 2 (1 and 4 frames), two slots each, and no device copy on an integrated GPU; nothing after close."""
    from stp_edge.cuda import CudaPreprocessor
    from stp_edge.cuda.preprocess import upload_window
    from stp_edge.cuda.staging import staging_bytes

    _gpu()
    with CudaPreprocessor(224, max_batch=16) as pre:
        r0, r1, c0, c1 = upload_window(1080, 1920, pre.spec)
        window = (r1 - r0) * (c1 - c0) * 3
        assert pre.staging_nbytes() == (0, 0)
        pre(_frames(1, 1080, 1920))
        pre(_frames(3, 1080, 1920))
        one, four = (staging_bytes(window, n, mapped=pre.integrated) for n in (1, 4))
        assert pre.staging_nbytes() == (one[0] + four[0], one[1] + four[1])
        assert pre.staging_nbytes()[0] < 16 * 1080 * 1920 * 3  # was max_batch whole frames, pinned and on device


def test_ort_trt_fp16_is_reachable_from_the_cli_and_detector_load(handmade_bundle):
    """`stp-edge run --ort-trt-fp16` -> Detector.load(ort_trt_fp16=True) -> the runners' TensorRT provider option."""
    import inspect

    from stp_edge.api import Detector
    from stp_edge.backends import activate_runners, create_runners
    from stp_edge.cli import build_parser

    args = build_parser().parse_args(["run", "b.stp", "v.mp4", "--backend", "ort-trt", "--ort-trt-fp16"])
    assert args.ort_trt_fp16 is True
    assert "ort_trt_fp16" in inspect.signature(Detector.load).parameters
    bundle = Bundle.load(handmade_bundle)
    made: list[dict[str, Any]] = []

    def make(b, backend, device, **kw):
        runners = create_runners(b, backend, device, **kw)
        made.append(runners)
        raise RuntimeError("stop before activation (no TensorRT provider here)")

    with pytest.raises(RuntimeError, match="stop before activation"):
        activate_runners(bundle, "ort-trt", ort_trt_fp16=True, make_runners=make)
    assert all(r.trt_fp16 for r in made[0].values())


def test_onnx_runtime_gpu_providers_compute_on_the_producer_stream(handmade_bundle):
    from stp_edge.backends import create_runners
    from stp_edge.backends.ort import compute_stream_options

    assert compute_stream_options(None) == {}
    assert compute_stream_options(0x5555) == {"has_user_compute_stream": "1", "user_compute_stream": "21845"}
    for default in (0, 1, 2):
        with pytest.raises(ValueError, match="CUstream handle"):
            compute_stream_options(default)
    bundle = Bundle.load(handmade_bundle)
    runners = create_runners(bundle, "ort-cuda", ort_compute_stream=0x5555)
    enc = runners["encoder"]
    assert enc.waits_on_feed_streams and not runners["temporal"].waits_on_feed_streams
    assert enc._provider_options("CUDAExecutionProvider")["user_compute_stream"] == "21845"
    trt = create_runners(bundle, "ort-trt", ort_compute_stream=0x5555)["encoder"]
    assert trt._provider_options("TensorrtExecutionProvider")["has_user_compute_stream"] == "1"
    assert not create_runners(bundle, "ort-cuda")["encoder"].waits_on_feed_streams


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="nvcc not on PATH (CUDA toolkit absent)")
def test_kernel_bodies_given_the_window_origin_read_only_the_uploaded_window(tmp_path):
    """The CUDA upload's address trick, on the kernel bodies compiled for the host: a buffer holding only
    `upload_window`, addressed through origin = window - r0 * pitch - c0 * 3, gives the whole-frame result."""
    import ctypes

    from test_kernels_nvcc import HARNESS, _ptr, _run_host, _smooth_noise

    from stp_edge.cuda import build
    from stp_edge.cuda.kernels import BLOCK, grid_h, grid_v
    from stp_edge.cuda.preprocess import upload_window
    from stp_edge.preprocess import CLIP_MEAN, CLIP_STD, CropResizePlan, PreprocessSpec

    (tmp_path / "harness.cu").write_text(HARNESS)
    so = tmp_path / "libstp_host.so"
    import subprocess

    cmd = [build.find_nvcc(), "-shared", "-std=c++17", "-O2", "-arch=sm_80", "-Xcompiler", "-fPIC,-ffp-contract=off",
           f"-I{build.kernels_dir()}", str(tmp_path / "harness.cu"), "-o", str(so)]
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    lib = ctypes.CDLL(str(so))
    h, w, size = 270, 480, 64
    frames = np.stack([_smooth_noise(h, w, 3, seed) for seed in (1, 2)])
    want = _run_host(lib, frames, size, "bgr8")
    r0, r1, c0, c1 = upload_window(h, w, PreprocessSpec(size=size))
    window = np.ascontiguousarray(frames[:, r0:r1, c0:c1])  # exactly what the CUDA path uploads
    pitch = (c1 - c0) * 3
    origin = ctypes.c_void_p(window.ctypes.data - r0 * pitch - c0 * 3)
    p = CropResizePlan.build(h, w, size)
    i32, i64 = ctypes.c_int, ctypes.c_longlong
    mid = np.full((2, 3, p.mid_rows, size), 77, np.uint8)
    blk = np.asarray(BLOCK[:2], np.int32)
    taps = [np.ascontiguousarray(a, np.int32) for a in (p.cols.start, p.cols.coeffs.T, p.rows.start - p.rows.first,
                                                        p.rows.coeffs)]
    lib.host_resize_h_bgr8(_ptr(np.asarray(grid_h(size, p.mid_rows, 2), np.int32)), _ptr(blk), origin,
                           i64((r1 - r0) * pitch), i64(pitch), _ptr(taps[0]), _ptr(taps[1]), i32(p.cols.ksize),
                           i32(p.rows.first), i32(p.mid_rows), i32(size), _ptr(mid))
    std = np.asarray(CLIP_STD, np.float32)
    scale, bias = np.float32(1.0) / (np.float32(255.0) * std), -np.asarray(CLIP_MEAN, np.float32) / std
    got = np.full((2, 3, size, size), np.nan, np.float32)
    lib.host_resize_v(_ptr(np.asarray(grid_v(size, 2), np.int32)), _ptr(blk), i32(0), _ptr(mid), i32(p.mid_rows),
                      i32(size), _ptr(taps[2]), _ptr(taps[3]), i32(p.rows.ksize), _ptr(scale), _ptr(bias), _ptr(got))
    assert (c1 - c0) < w and np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)


def test_detector_load_hands_the_cuda_preprocessor_stream_to_onnx_runtime(handmade_bundle):
    """activate_runners carries the stream to the encoder session (checked here); Detector.load's use is GPU-only."""
    from stp_edge.backends import activate_runners, create_runners

    bundle = Bundle.load(handmade_bundle)
    made: list[dict[str, Any]] = []

    def make(b, backend, device, **kw):
        made.append(create_runners(b, backend, device, **kw))
        raise RuntimeError("stop before activation (no CUDA provider here)")

    with pytest.raises(RuntimeError, match="stop before activation"):
        activate_runners(bundle, "ort-cuda", ort_compute_stream=0x5555, make_runners=make)
    assert made[0]["encoder"].compute_stream == 0x5555 and made[0]["temporal"].compute_stream is None


@pytest.mark.gpu
def test_ort_cuda_encoder_computes_on_the_cuda_preprocessor_stream(handmade_bundle, frames_factory):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (onnxruntime-gpu not installed)")
    _gpu()
    from stp_edge.api import Detector

    frames = frames_factory(6 * 16, seed=2)
    with Detector.load(handmade_bundle, backend="ort-cpu") as det:
        want = det.offline_scores(frames)
    with Detector.load(handmade_bundle, backend="ort-cuda", preprocess="cuda") as det:
        assert det.runners["encoder"].compute_stream == det.preprocess.stream_handle
        got = det.offline_scores(frames)
    np.testing.assert_allclose(got[0], want[0], atol=2e-2)
