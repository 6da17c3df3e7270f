"""The OpenVINO backend (real OpenVINO, skipped where it is not installed) and the dynamic INT8 bundle form."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from stp_edge.backends import Availability, create_runners, select_backend
from stp_edge.backends.base import Runner
from stp_edge.bundle import Bundle
from stp_edge.errors import UsageError

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'stp-edge[openvino]')")

# OpenVINO f32 vs ONNX Runtime fp32 on the same graph: different kernels and summation orders; measured max abs
# difference ~3e-6 on the tiny bundle's unit-scale outputs.
F32_ATOL = 1e-4
# bf16 keeps 8 mantissa bits: the encoder's embeddings keep their direction (cosine), not their digits.
BF16_MIN_COSINE = 0.995


def _load(path) -> Bundle:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return Bundle.load(path)


def _feeds(bundle: Bundle) -> dict[str, dict[str, np.ndarray]]:
    from stp_edge.model.graphs import random_inputs

    return random_inputs(bundle.config, seed=11, snippets=5)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


@pytest.fixture(scope="module")
def tiny(exported_tiny_bundle) -> Bundle:
    return _load(exported_tiny_bundle)


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory):
    from stp_edge.export.bundle_export import export_bundle

    return export_bundle(tmp_path_factory.mktemp("dyn") / "tiny-dyn.stp", random_config="tiny", seed=3,
                         precision="int8", int8_form="dynamic", progress=False)


def test_runner_is_a_real_subclass_and_matches_ort_on_every_graph(tiny):
    from stp_edge.backends.openvino import OpenVinoRunner

    feeds = _feeds(tiny)
    ort, vino = create_runners(tiny, "ort-cpu"), create_runners(tiny, "openvino")
    assert all(isinstance(r, OpenVinoRunner) and isinstance(r, Runner) for r in vino.values())
    for graph in ("encoder", "temporal", "spatial"):
        with ort[graph] as a, vino[graph] as b:
            assert b.input_specs() == a.input_specs()
            assert b.output_names() == a.output_names()
            feed = {k: feeds[graph][k] for k in a.input_specs()}
            want, got = a.infer(feed), b.infer(feed)
            assert b.execution_precision == "f32"
            for name in want:
                assert got[name].shape == want[name].shape
                assert np.abs(want[name]).max() > 1e-3  # real outputs, not zeros
                np.testing.assert_allclose(got[name], want[name], atol=F32_ATOL, rtol=1e-4, err_msg=graph)


def test_bf16_hint_is_for_the_encoder_only_and_keeps_direction(tiny):
    feeds = _feeds(tiny)["encoder"]
    vino = create_runners(tiny, "openvino", encoder_precision="bf16")
    with create_runners(tiny, "ort-cpu", graphs=("encoder",))["encoder"] as ref, vino["encoder"] as enc, \
            vino["temporal"] as head:
        head_precision = head.execution_precision
        if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            pytest.skip("this CPU has no bf16 (OpenVINO computes the hint in f32)")
        assert enc.execution_precision == "bf16"
        want, got = ref.infer(feeds), enc.infer(feeds)
    assert head_precision == "f32"  # the heads scale cosines by 1/temperature: never bf16
    for name in want:
        assert _cosine(got[name], want[name]) >= BF16_MIN_COSINE
        assert np.abs(got[name] - want[name]).max() > 0  # computed in bf16 indeed, not silently f32


def test_threads_are_set_like_onnxruntime_intra_op_threads(tiny):
    from stp_edge.backends.ort import set_intra_op_threads

    runners = set_intra_op_threads(create_runners(tiny, "openvino", graphs=("spatial",)), 1)
    with runners["spatial"] as r:
        assert int(r.compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_detector_on_openvino_matches_onnxruntime(exported_tiny_bundle, frames_factory):
    from stp_edge.api import Detector

    frames = frames_factory(64, height=96, width=128, seed=2)
    scores = {}
    for backend in ("ort-cpu", "openvino"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Detector.load(exported_tiny_bundle, backend=backend, precision="fp32") as det:
                out = [r for f in frames for r in det.push(f)] + det.flush()
                assert det.backend == backend and det.form.form == "fp32"
        scores[backend] = np.array([r.score for r in out])
    assert len(scores["ort-cpu"]) > 0
    np.testing.assert_allclose(scores["openvino"], scores["ort-cpu"], atol=1e-4)


def test_missing_openvino_names_the_extra(tiny, monkeypatch):
    from stp_edge._deps import MissingDependencyError

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    runner = create_runners(tiny, "openvino", graphs=("spatial",))["spatial"]
    with pytest.raises(MissingDependencyError, match=r"stp-edge\[openvino\]"):
        runner.activate()


def test_intel_gpu_absent_here_is_said_plainly(tiny):
    from stp_edge.backends import probe_availability
    from stp_edge.backends.base import RunnerError

    if any(d.startswith("GPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an Intel GPU")
    available = probe_availability()
    assert available.openvino and "CPU" in available.openvino_devices
    with pytest.raises(UsageError, match="sees no GPU device"):
        select_backend("openvino-gpu", available)
    runner = create_runners(tiny, "openvino-gpu", graphs=("spatial",))["spatial"]
    with pytest.raises(RunnerError, match="'GPU' is not present"):
        runner.activate()


def test_select_backend_knows_openvino():
    only_ov = Availability(openvino=True, openvino_devices=("CPU",))
    assert select_backend("auto", only_ov) == "openvino"
    assert select_backend("openvino", only_ov) == "openvino"
    with pytest.raises(UsageError, match=r"stp-edge\[openvino\]"):
        select_backend("openvino", Availability(onnxruntime=True))


def test_auto_picks_the_form_choose_cpu_form_picks(exported_tiny_bundle):
    from stp_edge.backends import choose_backend
    from stp_edge.machine import choose_cpu_form, cpu_features

    choice = choose_backend("auto", _load(exported_tiny_bundle))
    want = choose_cpu_form(cpu_features(), {"ort-cpu", "openvino"}, "fp32")
    assert (choice.name, choice.form) == (want.backend, want)


def test_dynamic_int8_bundle_runs_and_is_recorded(dynamic_bundle, exported_tiny_bundle):
    import onnx

    from stp_edge.backends import choose_backend

    b = _load(dynamic_bundle)
    assert b.manifest["precision"] == "int8"
    assert b.manifest["exporter"]["quantization"]["form"] == "dynamic"
    ops = {n.op_type for n in onnx.load(str(b.graph_path("encoder"))).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "QuantizeLinear" not in ops
    assert choose_backend("auto", b).form.form == "int8-dynamic"
    feeds = _feeds(b)["encoder"]
    with create_runners(b, "ort-cpu", graphs=("encoder",))["encoder"] as q, \
            create_runners(_load(exported_tiny_bundle), "ort-cpu", graphs=("encoder",))["encoder"] as f:
        got, want = q.infer(feeds), f.infer(feeds)  # same weights (seed 3): int8 vs fp32
    for name in want:
        assert 0.99 <= _cosine(got[name], want[name]) < 1.0


def test_int8_form_options_are_checked():
    from stp_edge.export.quantize import resolve_int8_form

    assert resolve_int8_form("fp32", None, None) is None
    assert resolve_int8_form("int8", None, "calib") == "static"
    assert resolve_int8_form("int8", "auto", "calib") == "static"
    with pytest.raises(UsageError, match="needs no calib"):
        resolve_int8_form("int8", "dynamic", "calib")
    with pytest.raises(UsageError, match="only used with precision='int8'"):
        resolve_int8_form("fp32", "dynamic", None)


def test_compare_forms_puts_the_installed_backends_side_by_side(tiny):
    from stp_edge.bench.forms import compare_forms, forms_markdown

    size = tiny.config.vision.image_size
    images = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    rows = compare_forms({"fp32": tiny.graph_path("encoder")}, images, threads=1, reps=3)
    assert [r["label"] for r in rows] == ["ORT fp32", "OpenVINO fp32", "OpenVINO bf16"]
    assert all(r["median_ms"] > 0 and len(r["ms"]) == 3 for r in rows)
    assert rows[1]["worst_cosine"]["frame_emb"] > 0.99999  # f32 vs f32
    assert 0.99 < rows[2]["worst_cosine"]["frame_emb"] < 1.0  # bf16 really ran
    assert "| OpenVINO bf16 |" in "\n".join(forms_markdown(rows, "ORT fp32"))


def test_run_prints_the_cpu_instructions_and_the_form_that_ran(exported_tiny_bundle, tmp_path, capsys):
    from stp_edge.bench import write_test_video
    from stp_edge.cli import main
    from stp_edge.machine import cpu_features

    video = write_test_video(tmp_path / "v.avi", 48)
    assert main(["run", str(exported_tiny_bundle), str(video), "--backend", "openvino", "--precision", "fp32",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"cpu {cpu_features().describe()}; encoder fp32 on openvino" in out
    assert "threads 1 openvino (--threads)" in out


def test_the_runtime_starts_openvino_only_when_it_runs_and_without_its_telemetry(tiny):
    # Choosing a backend only looks OpenVINO up; running it imports openvino without openvino.tools.ovc, whose
    # import sends a usage-telemetry event from a forked process (and aborts GStreamer hosts: apps/gst).
    code = ("import sys; from stp_edge.bundle import Bundle; from stp_edge.backends import choose_backend, "
            "create_runners; b = Bundle.load(sys.argv[1]); choose_backend('auto', b); "
            "print('openvino' in sys.modules); r = create_runners(b, 'openvino', graphs=('spatial',))['spatial']; "
            "r.activate(); print(sorted(m for m in sys.modules if m.startswith(('openvino.tools.ovc', "
            "'openvino_telemetry'))))")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny.path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["False", "[]"]
