"""The device feature path: the mirrored ring's arithmetic, the path choice, and (on a GPU) the ring itself.

On the CPU, `ImageRing` writes and reads a NumPy float32 array through `MirrorLayout`'s offsets exactly as
`stp_edge.cuda.ring.DeviceRing` does on the device: it is the ring's memory image, a test of the layout and of the
`DeviceFeatureRing` bookkeeping against the host `FeatureRing`, NOT a test of a GPU. On the same images, Detectors
on ONNX Runtime run the device path's scheduling (`ImageFeatures`) and `DeviceFeatures.encode` itself over real
encoder outputs addressed by pointer (`PointerRunner`: host memory, not device memory) and must give the host path's
results exactly. The `gpu` tests run the real ring (libcuda through ctypes) on device memory produced by CuPy
kernels, and compare every window with the host ring bit for bit. TensorRT (`keep_on_device`, windows bound in place
to an engine) is not on any machine these tests run on: that part is unverified.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools

import numpy as np
import pytest
from graph_faults import WrappedRunner

from stp_edge.backends.base import Runner
from stp_edge.bundle.preprocessing import PreprocessSpec
from stp_edge.cuda.memory import DeviceArray
from stp_edge.cuda.ring import MirrorLayout, view_row
from stp_edge.errors import UsageError
from stp_edge.pipeline.device import DeviceFeatureRing, DeviceFeatures, FeaturePath, feature_path
from stp_edge.pipeline.temporal import FeatureRing, ready_snippets, temporal_window


# --- the layout arithmetic ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(1, 8))
def test_every_window_is_one_contiguous_run_of_slots_holding_its_snippets_in_order(n):
    lay = MirrorLayout(n, embed=3, regions=2)
    for lo in range(0, 5 * n):
        for length in range(1, n + 1):
            start, stop = lay.window_slots(lo, lo + length)
            assert stop - start == length and 0 <= start < n and stop <= 2 * n
            for k in range(length):  # slot start+k is one of the two slots snippet lo+k is written to
                assert start + k in lay.write_slots(lo + k)


def test_windows_longer_than_the_capacity_or_empty_are_refused():
    lay = MirrorLayout(5, embed=4, regions=4)
    for lo, hi in ((0, 6), (3, 3), (4, 2), (-1, 2)):
        with pytest.raises(UsageError, match="window"):
            lay.window_slots(lo, hi)


@pytest.mark.parametrize(("n", "e", "r2"), [(1, 1, 1), (7, 8, 4), (17, 512, 9), (9, 3, 49)])
def test_planes_do_not_overlap_and_the_region_plane_is_aligned(n, e, r2):
    lay = MirrorLayout(n, embed=e, regions=r2)
    frames = [(lay.frame_offset(s), lay.frame_offset(s) + lay.frame_row) for s in range(2 * n)]
    regions = [(lay.region_offset(s), lay.region_offset(s) + lay.region_row) for s in range(2 * n)]
    spans = sorted(frames + regions)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert frames[-1][1] <= lay.region_base and lay.region_base % 256 == 0
    assert regions[-1][1] == lay.nbytes
    assert lay.frame_offset(2 * n) == 2 * n * lay.frame_row  # a window ending at the last slot


class ImageRing:
    """The memory image of a `DeviceRing` in a NumPy array, written through `MirrorLayout` (not a GPU)."""

    def __init__(self, layout: MirrorLayout) -> None:
        self.layout = layout
        self.mem = np.full(layout.nbytes // 4, np.nan, np.float32)  # the device ring is poisoned the same way

    def _put(self, offset: int, values: np.ndarray) -> None:
        self.mem[offset // 4:offset // 4 + values.size] = values.reshape(-1)

    def write(self, snippet, frame, region, producer) -> None:
        for slot in self.layout.write_slots(snippet):
            self._put(self.layout.frame_offset(slot), frame)
            self._put(self.layout.region_offset(slot), region)

    def wait_checks(self) -> None:
        pass

    def checked(self, snippet):  # the device ring copies slot s % N back
        return self._window(snippet, snippet + 1)[0][0], self._window(snippet, snippet + 1)[1][0]

    def _window(self, lo, hi):
        lay, t = self.layout, hi - lo
        start, _ = lay.window_slots(lo, hi)
        f, r = lay.frame_offset(start) // 4, lay.region_offset(start) // 4
        return (self.mem[f:f + t * lay.embed].reshape(t, lay.embed),
                self.mem[r:r + t * lay.regions * lay.embed].reshape(t, lay.regions, lay.embed))

    def frame_window(self, lo, hi):
        return self._window(lo, hi)[0]

    def region_window(self, lo, hi):
        return self._window(lo, hi)[1]


class _NoContext:
    current = staticmethod(contextlib.nullcontext)


def _features(rng, e, r2):
    return rng.standard_normal(e).astype(np.float32), rng.standard_normal((r2, e)).astype(np.float32)


def _stream(ring_pair, rng, n, context, e, r2, missing=(), nan=(), flush=True):
    """Feed n snippets to a host ring and an image-backed device ring as the Detector schedules them.

    Returns every window both were asked for, as (lo, hi, host, device) (exceptions compared too).
    """
    host, dev = ring_pair
    emitted, seen = 0, []
    for t in range(n):
        f, r = _features(rng, e, r2)
        if t in missing:  # the encoder call failed: both rings take it without features
            host.append_missing(t)
            dev.append_missing(t)
        elif t in nan:  # features the contract forbids: the host path's check makes it a cut before the ring
            f[t % e] = np.nan
            host.append_missing(t)
            dev.append_device(t, f, r, None)
        else:
            host.append(t, f, r)
            dev.append_device(t, f, r, None)
        assert set(dev.settle()) == ({t} if t in nan else set())
        done = ready_snippets(host.count, emitted, context, final=flush and t == n - 1, cut=host.last_missing)
        assert done == ready_snippets(dev.count, emitted, context, final=flush and t == n - 1, cut=dev.last_missing)
        for s in done:
            if s in host._missing:
                continue
            assert host.segment(s) == dev.segment(s)
            lo, hi = temporal_window(s, host.segment(s)[1], context, host.segment(s)[0])
            # read now: a window is a view of the ring, valid until its slots are written again
            seen.append((lo, hi, host.window(lo, hi), tuple(np.array(a) for a in dev.window(lo, hi))))
        emitted = done.stop
    return seen


@pytest.mark.parametrize("seed", range(6))
def test_device_ring_bookkeeping_and_layout_give_the_host_rings_windows_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    context = int(rng.integers(1, 5))
    n_cap, e, r2 = 2 * context + 1, int(rng.integers(1, 9)), int(rng.choice([1, 4, 9]))
    n = int(rng.integers(1, 6 * n_cap))
    missing = set(rng.choice(n, size=min(n, 3), replace=False).tolist()) if seed % 2 else set()
    nan = set(rng.choice(n, size=min(n, 2), replace=False).tolist()) - missing if seed % 3 else set()
    pair = (FeatureRing(n_cap), DeviceFeatureRing(n_cap, ImageRing(MirrorLayout(n_cap, e, r2)), _NoContext()))
    seen = _stream(pair, rng, n, context, e, r2, missing, nan)
    assert len(seen) == n - len(missing | nan)  # every snippet with features got its window, at the ends too
    lengths = {hi - lo for lo, hi, _, _ in seen}
    assert max(lengths) <= n_cap
    for lo, hi, (hf, hr), (df, dr) in seen:
        assert hf.tobytes() == df.tobytes() and hr.tobytes() == dr.tobytes(), (lo, hi)
        assert np.isfinite(df).all() and np.isfinite(dr).all()


def test_short_streams_and_cuts_give_windows_shorter_than_2c_plus_1():
    rng = np.random.default_rng(7)
    pair = (FeatureRing(7), DeviceFeatureRing(7, ImageRing(MirrorLayout(7, 5, 4)), _NoContext()))
    seen = _stream(pair, rng, 11, 3, 5, 4, missing={5})
    # c=3, a cut at 5 and the ends at 0 and 11: every window is shorter than 2c+1 = 7
    assert {(lo, hi) for lo, hi, _, _ in seen} == {(0, 4), (0, 5), (1, 5), (6, 10), (6, 11), (7, 11)}
    for _, _, (hf, hr), (df, dr) in seen:
        assert hf.tobytes() == df.tobytes() and hr.tobytes() == dr.tobytes()


def test_device_ring_refuses_what_the_host_ring_refuses():
    dev = DeviceFeatureRing(3, ImageRing(MirrorLayout(3, 2, 1)), _NoContext())
    rng = np.random.default_rng(1)
    for t in range(5):
        dev.append_device(t, *_features(rng, 2, 1), None)
    with pytest.raises(UsageError, match="not held"):
        dev.window(1, 3)  # overwritten
    with pytest.raises(UsageError, match="expected snippet 5"):
        dev.append_device(7, *_features(rng, 2, 1), None)
    with pytest.raises(UsageError, match="append_device"):
        dev.append(5, *_features(rng, 2, 1))
    with pytest.raises(UsageError, match="cannot hold"):
        DeviceFeatureRing(4, ImageRing(MirrorLayout(3, 2, 1)), _NoContext())


def test_view_row_points_at_the_row_and_keeps_the_stream():
    arr = DeviceArray(0x10000, (5, 9, 8), np.dtype(np.float32), stream=77)
    row = view_row(arr, 3)
    assert (row.ptr, row.shape, row.stream) == (0x10000 + 3 * 9 * 8 * 4, (9, 8), 77)
    with pytest.raises(UsageError):
        view_row(arr, 5)


def _rows(buf: np.ndarray, rows, width: int, height: int) -> np.ndarray:
    """Read `height` rows of `width` bytes at `rows` (a byte offset into `buf`, and a pitch) as float32."""
    raw = buf.view(np.uint8).reshape(-1)
    pitch = rows.pitch or width
    return np.concatenate([raw[rows.ptr + h * pitch:rows.ptr + h * pitch + width] for h in range(height)]).view(
        np.float32)


@pytest.mark.parametrize(("views", "windows", "m"), [(1, 0, 1), (1, 0, 5), (5, 4, 3), (10, 9, 2), (10, 9, 1)])
def test_snippet_rows_find_the_features_the_host_encoder_path_takes(views, windows, m):
    from stp_edge.pipeline.device import snippet_rows

    rng = np.random.default_rng(views * 10 + m)
    e, r2 = 6, windows or 4
    lay = MirrorLayout(3, e, r2)
    fe = rng.standard_normal((views * m, e)).astype(np.float32)  # the encoder's frame_emb, view-major
    re = rng.standard_normal((views * m, r2, e)).astype(np.float32)  # its region_emb (used without windows)
    for j in range(m):
        frame, region = snippet_rows(j, m, views, windows, lay, 0, 0)
        got_f = _rows(fe, frame, lay.frame_row, 1)
        if windows:  # as Encoder._view_features: fe[views - windows:].transpose(1, 0, 2)[j]
            want_r = fe.reshape(views, m, e)[views - windows:].transpose(1, 0, 2)[j]
            got_r = _rows(fe, region, lay.frame_row, r2)
        else:
            want_r, got_r = re[j], _rows(re, region, lay.frame_row, r2)
        assert got_f.tobytes() == fe[j].tobytes()
        assert got_r.tobytes() == want_r.reshape(-1).tobytes()


# --- the Detector's device-path scheduling, on memory images (CPU) -------------------------------------------
class ImageFeatures:
    """`DeviceFeatures`' interface over `ImageRing` memory images, fed by the host encoder (ONNX Runtime on the CPU).

    Not a GPU: it checks the Detector's scheduling on the device path (features appended unchecked, the optimistic
    settle after the temporal graph, the step scheduled again around a cut) against the host path.
    """

    settle, error = DeviceFeatures.settle, DeviceFeatures.error
    stack = staticmethod(np.stack)

    def __init__(self, det) -> None:
        cfg, self.det, self.capacity = det.config, det, 2 * det.context + 1
        self.layout = MirrorLayout(self.capacity, cfg.vision.embed_dim, cfg.num_regions)

    def ring(self):
        return DeviceFeatureRing(self.capacity, ImageRing(self.layout), _NoContext())

    def encode(self, snippets, rings, on_error=None):
        batch = self.det.encoder(snippets, on_error=lambda e: None)  # device outputs: values are not checked here
        invalid = []
        for i, s in enumerate(snippets):
            why = batch.problem(i)
            if why is not None and why.startswith("backend error"):
                rings[s.stream].append_missing(s.index)
            else:
                rings[s.stream].append_device(s.index, batch.frame_emb[i], batch.region_emb[i], None)
                why = None
            invalid.append(why)
        return dict(batch.timings), tuple(invalid)

    def close(self) -> None:
        pass


def _detectors(bundle, **kwargs):
    from graph_faults import detector

    host, _ = detector(bundle, **kwargs)
    dev, _ = detector(bundle, **kwargs)
    dev._device = ImageFeatures(dev)
    reruns = []
    settle = dev._settle_device
    dev._settle_device = lambda *a: reruns.append(settle(*a)) or reruns[-1]
    return host, dev, reruns


def test_device_path_schedules_a_nan_snippet_as_the_host_path_does(handmade_bundle, frames_factory):
    """Snippet 5's features are NaN: found after the temporal graph ran, the step runs again with the cut."""
    from graph_faults import stream, summary

    frames = frames_factory(60, seed=9)
    nan5 = {5: lambda out: {**out, "frame_emb": np.where(np.arange(len(out["frame_emb"]))[:, None] == 0, np.nan,
                                                         out["frame_emb"]).astype(np.float32)}}
    host, dev, reruns = _detectors(handmade_bundle, faulty="encoder", on_invalid="mark", alter=nan5)
    with host, dev:
        want, got = stream(host, frames), stream(dev, frames)
    assert summary(got) == summary(want)
    assert got[5].invalid_reason == want[5].invalid_reason
    assert got[5].invalid_reason.startswith("encoder.onnx (ort-cpu) output 'frame_emb' for stream 0 snippet 5: NaN")
    assert reruns.count(True) == 1  # found once, after the temporal graph had run on windows holding snippet 5


def _push_all(det, frames) -> None:
    for f in frames:
        det.push(f)


def test_device_path_raises_the_host_paths_error_under_on_invalid_error(handmade_bundle, frames_factory):
    from stp_edge.errors import GraphOutputError

    frames = frames_factory(60, seed=9)
    nan5 = {5: lambda out: {**out, "region_emb": out["region_emb"] * np.float32(np.inf)}}
    host, dev, _ = _detectors(handmade_bundle, faulty="encoder", alter=nan5)
    raised = []
    with host, dev:
        for det in (host, dev):
            with pytest.raises(GraphOutputError) as exc:
                _push_all(det, frames)
            raised.append((str(exc.value), [r.snippet for r in exc.value.results]))
    assert raised[0] == raised[1]


def test_device_path_batches_streams_as_the_host_path_does(handmade_bundle, frames_factory):
    host, dev, reruns = _detectors(handmade_bundle)
    a, b = frames_factory(40, seed=1), frames_factory(33, seed=2)
    from graph_faults import summary

    with host, dev:
        out = []
        for det in (host, dev):
            res = []
            for i in range(40):
                res += det.push_many({0: a[i], 1: b[i]} if i < 33 else {0: a[i]})
            out.append(summary(res + det.flush()))
    assert out[0] == out[1] and len(out[0]) == 10 + 9  # 40 and 33 frames of snippets of 4
    assert not any(reruns)


# --- DeviceFeatures.encode over real ONNX Runtime outputs addressed by pointer (CPU) ---------------------------
class PointerRunner(WrappedRunner):
    """A real ONNX Runtime runner whose kept outputs come back as `DeviceArray`s over its own host buffers.

    Not a GPU: the pointers address host memory (held until the next call, as a TensorRT runner's output buffers
    are), so `DeviceFeatures.encode`'s chunking and row arithmetic run on real encoder outputs on the CPU.
    """

    keeps_outputs_on_device = True

    def __init__(self, inner: Runner, max_batch: int) -> None:
        super().__init__(inner)
        self._max, self._kept = max_batch, {}

    def max_batch(self) -> int:
        return self._max

    def infer_impl(self, feeds):
        return self.inner.infer(feeds)

    def infer_device_impl(self, feeds, keep):
        out = self.inner.infer(feeds)
        self._kept = {k: np.ascontiguousarray(v) for k, v in out.items() if k in keep}
        return {k: DeviceArray(a.ctypes.data, a.shape, a.dtype) for k, a in self._kept.items()}


class PointerImageRing(ImageRing):
    """`ImageRing` whose writes read their `Rows` from process memory (what the device ring's copies read)."""

    def write(self, snippet, frame, region, producer) -> None:
        def rows(src, height):
            pitch, width = src.pitch or self.layout.frame_row, self.layout.frame_row
            raw = b"".join(ctypes.string_at(src.ptr + h * pitch, width) for h in range(height))
            return np.frombuffer(raw, np.float32)

        super().write(snippet, rows(frame, 1), rows(region, self.layout.regions), producer)


class PointerFeatures(DeviceFeatures):
    """`DeviceFeatures` (its encode, settle and errors as they are) over `PointerImageRing`s."""

    stack = staticmethod(np.stack)

    def __init__(self, encoder, capacity) -> None:  # no RingContext: nothing here touches a GPU
        cfg = encoder.config
        self.encoder, self.capacity, self._event = encoder, capacity, None
        self.layout = MirrorLayout(capacity, cfg.vision.embed_dim, cfg.num_regions)

    def ring(self):
        return DeviceFeatureRing(self.capacity, PointerImageRing(self.layout), _NoContext())

    def close(self) -> None:
        pass


def _pointer_detectors(bundle_path, frames_per_call: int):
    from stp_edge.api import Detector
    from stp_edge.backends.ort import OrtRunner
    from stp_edge.bundle import GRAPH_NAMES, Bundle
    from stp_edge.pipeline.encode import make_preprocess

    b = Bundle.load(bundle_path)
    dets = []
    for _ in range(2):
        runners = {g: OrtRunner(b.graph_path(g), name=f"{g}.onnx (ort-cpu)") for g in GRAPH_NAMES}
        pre = make_preprocess("cpu", b.config.vision.image_size, backend="ort-cpu", spec=b.preprocess_spec)
        runners["encoder"] = PointerRunner(runners["encoder"], frames_per_call * b.preprocess_spec.views)
        dets.append(Detector(b, runners, pre, spatial_on="all", backend="ort-cpu"))
    dets[1]._device = PointerFeatures(dets[1].encoder, 2 * dets[1].context + 1)
    return dets


def _three_streams(det, frames):
    from graph_faults import summary

    out = []
    for i in range(len(frames[0])):
        out += det.push_many({k: f[i] for k, f in enumerate(frames) if i < len(f)})
    return summary(out + det.flush())


@pytest.mark.parametrize("frames_per_call", [1, 2, 3])
def test_device_encode_writes_what_the_host_encoder_gives(handmade_bundle, frames_factory, frames_per_call):
    frames = [frames_factory(n, seed=s) for n, s in ((36, 1), (30, 2), (25, 3))]
    host, dev = _pointer_detectors(handmade_bundle, frames_per_call)
    with host, dev:
        want, got = _three_streams(host, frames), _three_streams(dev, frames)
    assert got == want and len(got) == 9 + 8 + 7


@pytest.fixture(scope="module")
def frame_bundle(tmp_path_factory):
    """A whole-frame region bundle: 1 frame view + 3x3 region windows per frame (views 10, the "host" layout)."""
    pytest.importorskip("torch")
    from stp_edge.export.bundle_export import export_bundle

    return export_bundle(tmp_path_factory.mktemp("frame") / "tiny-frame.stp", random_config="tiny", seed=4,
                         progress=False, region_extent="frame",
                         config_overrides={"region_mode": "crops", "region_grid": 3})


@pytest.mark.parametrize("frames_per_call", [1, 2])
def test_device_encode_gathers_region_windows_as_the_host_encoder_does(frame_bundle, frames_factory, frames_per_call):
    frames = [frames_factory(n, seed=s, height=72, width=128) for n, s in ((64, 4), (48, 5), (40, 6))]
    host, dev = _pointer_detectors(frame_bundle, frames_per_call)
    assert host.preprocess.spec.views == 10 and str(dev.features).startswith("host")  # set by hand below
    with host, dev:
        want, got = _three_streams(host, frames), _three_streams(dev, frames)
    assert got == want and len(got) == 4 + 3 + 3


# --- the path choice ------------------------------------------------------------------------------------
def _spec(policy="center", grid=0):
    return PreprocessSpec(frame_policy=policy, region_grid=grid)


GOOD = dict(keeps_outputs=True, takes_device_feeds=True, frames_per_snippet=1, layout="encoder", spec=_spec())


@pytest.mark.parametrize(("change", "why"), [
    ({"keeps_outputs": False}, "encoder's backend returns host outputs"),
    ({"takes_device_feeds": False}, "temporal or spatial backend takes host inputs"),
    ({"frames_per_snippet": 2}, "frames_per_snippet=2"),
    ({"layout": "host"}, "patch_emb"),
    ({"spec": _spec("tiles")}, "'tiles' averages 3 views"),
    ({"spec": _spec("pad")}, "'pad' averages 2 views"),
])
def test_every_reason_for_the_host_path_is_named(change, why):
    path = feature_path("auto", **{**GOOD, **change})
    assert path.kind == "host" and why in str(path)
    with pytest.raises(UsageError, match="features='device' cannot run here"):
        feature_path("device", **{**GOOD, **change})


@pytest.mark.parametrize(("spec", "layout"), [(_spec(), "encoder"), (_spec("center", 3), "host"), (None, "encoder")])
def test_the_device_path_runs_for_one_frame_view_with_or_without_region_windows(spec, layout):
    # region windows (extent "frame") are the "host" layout, but their regions are rows of the encoder's output
    assert str(feature_path("auto", **{**GOOD, "spec": spec, "layout": layout})) == "device"
    assert feature_path("device", **{**GOOD, "spec": spec, "layout": layout}) == FeaturePath("device")


def test_host_can_be_asked_for_and_unknown_choices_are_refused():
    assert str(feature_path("host", **GOOD)) == "host (asked for)"
    with pytest.raises(UsageError, match="features must be one of"):
        feature_path("gpu", **GOOD)


def test_detector_on_onnx_runtime_says_it_runs_the_host_path(handmade_bundle):
    from stp_edge import Detector

    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu") as det:
        assert str(det.features) == "host (the encoder's backend returns host outputs)"
        with pytest.raises(Exception, match="keep_on_device"):
            det.runners["encoder"].infer({"images": np.ones((1, 3, 32, 32), np.float32)},
                                         keep_on_device=("frame_emb",))


def test_device_outputs_are_checked_for_shape_and_left_alone_for_values():
    from stp_edge.pipeline.calls import Item, check_outputs

    good = DeviceArray(0x1000, (2, 8), np.dtype(np.float32), stream=5)  # never dereferenced: metadata only
    bad = DeviceArray(0x1000, (2, 7), np.dtype(np.float32), stream=5)
    items = [Item("snippet 0", (0,)), Item("snippet 1", (1,))]
    exp = {"frame_emb": ["B", 8]}
    assert check_outputs("encoder", "enc", {"frame_emb": good}, exp, {"B": 2}, items) == [None, None]
    problems = check_outputs("encoder", "enc", {"frame_emb": bad}, exp, {"B": 2}, items)
    assert all("shape [2, 7]" in p for p in problems)


# --- on a GPU: the real ring on device memory written by CuPy kernels ------------------------------------
def _cupy():
    from cuda_driver import cupy_or_skip

    return cupy_or_skip("the GPU check of the device ring")


def _read(cupy, arr: DeviceArray, reader, drv, event) -> np.ndarray:
    """Copy a device view on another stream after an event wait on its writer (as an engine reads it)."""
    mem = cupy.cuda.UnownedMemory(arr.ptr, arr.nbytes, owner=None)
    view = cupy.ndarray(arr.shape, dtype=cupy.float32, memptr=cupy.cuda.MemoryPointer(mem, 0))
    drv.wait(reader.ptr, int(arr.stream), event)
    with reader:
        out = view.copy()
    reader.synchronize()
    return out.get()


def _gpu_run(cupy, strided: bool):
    from stp_edge.cuda.ring import DeviceRing, Gather, RingContext, Rows

    context, e, r2, m = 3, 64, 9, 2  # two streams' snippets per encoder batch
    n_cap = 2 * context + 1
    lay = MirrorLayout(n_cap, e, r2)
    ctx = RingContext(0)
    rng = np.random.default_rng(3)
    with ctx.current():
        drv = ctx.driver
        producer, reader = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
        event = drv.new_event()
        rings = [DeviceRing(lay, drv) for _ in range(m)]
        hosts = [FeatureRing(n_cap) for _ in range(m)]
        big = cupy.asarray(rng.standard_normal((1024, 1024)).astype(np.float32))
        windows, gather, copied = [], Gather(drv), Gather(drv, in_place=False)
        for t in range(4 * n_cap):
            fh = rng.standard_normal((m, e)).astype(np.float32)
            rh = rng.standard_normal((m, r2, e)).astype(np.float32)
            with producer:
                for _ in range(3):  # keep the producer busy, so unordered reads would see old slots
                    big = big @ big * 1e-3
                if strided:  # view-major batch: frame views, then the R2 region windows (Encoder's layout)
                    out = cupy.asarray(np.concatenate([fh, rh.transpose(1, 0, 2).reshape(r2 * m, e)]))
                    out = out * 1.0
                else:
                    fe, re = cupy.asarray(fh) * 1.0, cupy.asarray(rh) * 1.0
            for j in range(m):
                if strided:
                    frame = Rows(out.data.ptr + j * e * 4)
                    region = Rows(out.data.ptr + (m + j) * e * 4, pitch=m * e * 4)
                else:
                    frame, region = Rows(fe.data.ptr + j * e * 4), Rows(re.data.ptr + j * r2 * e * 4)
                rings[j].write(t, frame, region, producer.ptr)
                hosts[j].append(t, fh[j], rh[j])
            lo = max(0, t - 2 * context)
            for j in range(m):
                got_f = _read(cupy, rings[j].frame_window(lo, t + 1), reader, drv, event)
                got_r = _read(cupy, rings[j].region_window(lo, t + 1), reader, drv, event)
                want_f, want_r = hosts[j].window(lo, t + 1)
                assert got_f.tobytes() == want_f.tobytes(), (j, lo, t)
                assert got_r.tobytes() == want_r.tobytes(), (j, lo, t)
            batch = gather([rings[j].region_window(lo, t + 1) for j in range(m)])
            windows.append((_read(cupy, batch, reader, drv, event),
                            np.stack([hosts[j].window(lo, t + 1)[1] for j in range(m)])))
            fixed = copied([rings[1].frame_window(lo, t + 1)])  # one window, copied to a fixed address
            assert fixed.ptr != rings[1].frame_window(lo, t + 1).ptr
            windows.append((_read(cupy, fixed, reader, drv, event), hosts[1].window(lo, t + 1)[0][None]))
            rings[0].wait_checks()
            cf, cr = rings[0].checked(t)
            assert cf.tobytes() == fh[0].tobytes() and cr.tobytes() == rh[0].tobytes()
        for got, want in windows:
            assert got.tobytes() == want.tobytes()
        gather.close()
        copied.close()
        for ring in rings:
            ring.close()
        drv.call("cuEventDestroy_v2", event)
    ctx.close()


@pytest.mark.gpu
def test_device_ring_windows_equal_the_host_ring_bit_for_bit():
    _gpu_run(_cupy(), strided=False)


@pytest.mark.gpu
def test_device_ring_gathers_strided_region_windows_bit_for_bit():
    _gpu_run(_cupy(), strided=True)


@pytest.mark.gpu
def test_snippets_with_nan_features_become_cuts_on_the_device_ring():
    cupy = _cupy()
    from stp_edge.cuda.ring import DeviceRing, RingContext, Rows

    ctx = RingContext(0)
    lay = MirrorLayout(5, 16, 4)
    rng = np.random.default_rng(11)
    with ctx.current():
        producer = cupy.cuda.Stream(non_blocking=True)
        ring = DeviceFeatureRing(5, DeviceRing(lay, ctx.driver), ctx)
    for t in range(6):
        fh, rh = _features(rng, 16, 4)
        if t == 4:
            rh[2, 3] = np.nan
        with producer:
            fe, re = cupy.asarray(fh) * 1.0, cupy.asarray(rh) * 1.0
        ring.append_device(t, Rows(fe.data.ptr), Rows(re.data.ptr), producer.ptr)
        bad = ring.settle()
        assert bad == ({4: ("region_emb", "NaN (1 of 64 values)")} if t == 4 else {}), t
    assert ring.segment(3) == (0, 4) and ring.segment(5) == (5, 6)
    with ctx.current():
        ring.device.close()
    ctx.close()


# --- the driver calls against the CUDA toolkit's own header ------------------------------------------------
def _cuda_header():
    import os
    from pathlib import Path

    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_ROOT"), "/usr/local/cuda"):
        if root and (Path(root) / "include/cuda.h").is_file():
            return (Path(root) / "include/cuda.h").read_text(errors="replace")
    pytest.skip("no CUDA toolkit header (cuda.h) on this machine")


def test_every_driver_call_the_ring_makes_is_a_symbol_of_cuda_h_with_that_many_parameters():
    import re

    from stp_edge.cuda.driver import _SIGNATURES

    text = _cuda_header()
    public, defines = {}, {}  # exported symbol -> the name cuda.h declares it under, and back
    for name, target in re.findall(r"#define\s+(cu\w+)\s+(?:__CUDA_API_PTSZ\()?(cu\w+)\)?", text):
        public.setdefault(target, name)
        defines.setdefault(name, target)
    for symbol, args in _SIGNATURES.items():
        # a versioned name (cuMemAlloc -> cuMemAlloc_v2) must be called by its current symbol, never the legacy one
        assert defines.get(symbol, symbol) == symbol, f"{symbol} is the legacy ABI; call {defines[symbol]}"
        declared = public.get(symbol, symbol)
        m = re.search(rf"CUresult CUDAAPI {declared}\(([^)]*)\)", text)
        assert m is not None, f"{symbol}: no declaration of {declared} in cuda.h"
        params = [p for p in m.group(1).split(",") if p.strip() and p.strip() != "void"]
        assert len(params) == len(args), f"{symbol}: cuda.h declares {len(params)} parameters, the ring {len(args)}"
