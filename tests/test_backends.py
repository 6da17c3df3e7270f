from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from stp_edge.backends import Availability, select_backend
from stp_edge.backends.base import InputError, Runner, RunnerError, TensorSpec, check_feeds
from stp_edge.backends.ort import OrtRunner, resolve_providers
from stp_edge.backends.trt import (
    TRT_API,
    TRT_MODULES,
    TrtRunner,
    output_nbytes,
    resolve_input_shape,
    trt_dtype_to_numpy,
)
from stp_edge.cuda.memory import DeviceArray

REPO = Path(__file__).resolve().parents[1]


def test_runners_really_subclass_runner():
    assert issubclass(OrtRunner, Runner) and issubclass(TrtRunner, Runner)


def test_ort_runner_state_checks(handmade_bundle):
    runner = OrtRunner(handmade_bundle / "encoder.onnx")
    with pytest.raises(RunnerError, match="needs an active runner"):
        runner.infer({"images": np.ones((1, 3, 32, 32), np.float32)})
    with pytest.raises(RunnerError, match="not active"):
        runner.deactivate()
    with runner:
        assert runner.is_active
        with pytest.raises(RunnerError, match="already active"):
            runner.activate()
    assert not runner.is_active


def test_ort_runner_specs_and_output(handmade_bundle):
    import onnx
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(handmade_bundle / "spatial.onnx")).graph.initializer}
    x = np.random.default_rng(0).normal(size=(3, 4, 8)).astype(np.float32)
    with OrtRunner(handmade_bundle / "spatial.onnx", intra_op_num_threads=1) as runner:
        assert runner.input_specs() == {"region_emb": TensorSpec("region_emb", np.dtype(np.float32), (-1, 4, 8))}
        assert runner.output_names() == ["region_scores"]
        out = runner.infer({"region_emb": x})
        assert runner.last_inference_ms is not None and runner.last_inference_ms > 0
    expected = 1 / (1 + np.exp(-(x @ w["w_region"])[..., 0]))
    np.testing.assert_allclose(out["region_scores"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("feeds", "message"), [
    ({"images": np.ones((1, 3, 32, 32), np.float64)}, "input 'images': expected dtype float32, got float64"),
    ({"images": np.ones((3, 32, 32), np.float32)}, "input 'images': expected rank 4"),
    ({"images": np.ones((1, 3, 16, 32), np.float32)}, "input 'images' dim 2: expected 32, got 16"),
    ({"imgs": np.ones((1, 3, 32, 32), np.float32)}, r"missing \['images'\]; unexpected \['imgs'\]"),
    ({"images": np.ones((0, 3, 32, 32), np.float32)}, "dim 0 is 0"),
    ({"images": [[1.0]]}, "numpy array or a CUDA device array, got list"),
])
def test_ort_runner_input_errors_name_the_input(handmade_bundle, feeds, message):
    with OrtRunner(handmade_bundle / "encoder.onnx") as runner, pytest.raises(InputError, match=message):
        runner.infer(feeds)


def test_device_feeds_refused_on_cpu(handmade_bundle):
    dev = DeviceArray(ptr=0x1000, shape=(1, 3, 32, 32), dtype=np.dtype(np.float32))
    with OrtRunner(handmade_bundle / "encoder.onnx") as runner, pytest.raises(InputError, match="device buffer"):
        runner.infer({"images": dev})
    specs = {"images": TensorSpec("images", np.dtype(np.float32), (-1, 3, 32, 32))}
    with pytest.raises(InputError, match="needs a host numpy array"):
        check_feeds({"images": dev}, specs)
    check_feeds({"images": dev}, specs, allow_device=True)  # shape and dtype read from the interface


def test_ort_missing_file_and_unknown_level(tmp_path):
    with pytest.raises(RunnerError, match="does not exist"):
        OrtRunner(tmp_path / "nope.onnx").activate()
    with pytest.raises(ValueError, match="graph_optimization_level"):
        OrtRunner(tmp_path / "x.onnx", graph_optimization_level="max")


def test_resolve_providers():
    cpu = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("auto", cpu) == cpu
    assert resolve_providers("auto", gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"], gpu)[0].startswith("Tensorrt")
    with pytest.raises(RunnerError, match=r"\['CUDAExecutionProvider'\] are not available"):
        resolve_providers(["CUDAExecutionProvider"], cpu)


def test_select_backend_is_a_pure_priority():
    full = Availability(tensorrt=True, pycuda=True, trt_plans=True, onnxruntime=True,
                        ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert select_backend("auto", full) == "trt"
    no_plans = Availability(tensorrt=True, pycuda=True, trt_plans=False, onnxruntime=True,
                            ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
                            reasons=("TensorRT plans: the bundle has no TensorRT engines",))
    assert select_backend("auto", no_plans) == "ort-cuda"
    assert select_backend("ort", no_plans) == "ort-cuda"
    cpu = Availability(onnxruntime=True, ort_providers=("CPUExecutionProvider",))
    assert select_backend("auto", cpu) == "ort-cpu"
    assert select_backend("ort", cpu) == "ort-cpu"
    with pytest.raises(ValueError, match="no TensorRT engines"):
        select_backend("trt", no_plans)
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        select_backend("tensorflow", cpu)
    with pytest.raises(ValueError, match="no backend can run here"):
        select_backend("auto", Availability())


def test_a_backend_that_cannot_run_names_only_what_it_lacks():
    """`--backend ort-cuda` without CUDAExecutionProvider names that provider and onnxruntime-gpu, not the TensorRT
    or pycuda that only `trt` needs (and `trt` names those, not onnxruntime)."""
    lacking = Availability(onnxruntime=True, ort_providers=("AzureExecutionProvider", "CPUExecutionProvider"),
                           reasons=("TensorRT: No module named 'tensorrt'",
                                    "CUDA binding (pycuda or cuda-python)/GPU: No module named 'pycuda'"))
    for backend, provider in (("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider")):
        with pytest.raises(ValueError, match="cannot run here") as err:
            select_backend(backend, lacking)
        text = str(err.value)
        assert f"backend {backend!r} cannot run here: this onnxruntime has no {provider}" in text
        assert "onnxruntime-gpu" in text and "stp-edge[ort-gpu]" in text
        assert "TensorRT:" not in text and "pycuda" not in text
    with pytest.raises(ValueError, match="cannot run here") as err:
        select_backend("ort-cuda", Availability(reasons=(*lacking.reasons, "onnxruntime: No module named x")))
    assert "onnxruntime is not installed: pip install 'stp-edge[ort-gpu]'" in str(err.value)
    assert "pycuda" not in str(err.value)
    with pytest.raises(ValueError, match="cannot run here") as err:
        select_backend("trt", lacking)
    assert "tensorrt" in str(err.value) and "pycuda" in str(err.value) and "onnxruntime" not in str(err.value)


def test_ort_cuda_on_this_machine_names_the_missing_provider():
    """The real probe: where onnxruntime has no CUDA provider, the message names it alone."""
    from stp_edge.backends import probe_availability, resolve_backend

    available = probe_availability()
    if not available.onnxruntime or "CUDAExecutionProvider" in available.ort_providers:
        pytest.skip("this machine has no onnxruntime, or one with CUDA")
    with pytest.raises(ValueError, match="cannot run here") as err:
        resolve_backend("ort-cuda")
    assert "no CUDAExecutionProvider" in str(err.value) and "onnxruntime-gpu" in str(err.value)
    assert "TensorRT" not in str(err.value) and "pycuda" not in str(err.value)


def test_trt_dtype_mapping():
    assert trt_dtype_to_numpy("FLOAT") == np.float32
    assert trt_dtype_to_numpy("DataType.HALF") == np.float16
    assert trt_dtype_to_numpy("INT64") == np.int64
    with pytest.raises(RunnerError, match="BF16 has no NumPy equivalent"):
        trt_dtype_to_numpy("BF16")


def test_trt_shape_resolution_against_profile():
    profile = ((1, 3, 224, 224), (4, 3, 224, 224), (8, 3, 224, 224))
    assert resolve_input_shape("images", (-1, 3, 224, 224), (5, 3, 224, 224), profile) == (5, 3, 224, 224)
    with pytest.raises(InputError, match=r"dim 0: 9 is outside the engine's optimisation profile range \[1, 8\]"):
        resolve_input_shape("images", (-1, 3, 224, 224), (9, 3, 224, 224), profile)
    with pytest.raises(InputError, match="input 'images' dim 3: engine expects 224, got 112"):
        resolve_input_shape("images", (-1, 3, 224, 224), (1, 3, 224, 112), profile)
    with pytest.raises(InputError, match="expected rank 4"):
        resolve_input_shape("images", (-1, 3, 224, 224), (3, 224, 224), profile)
    assert output_nbytes((2, 7, 512), np.dtype(np.float16)) == 2 * 7 * 512 * 2
    with pytest.raises(RunnerError, match="not resolved"):
        output_nbytes((-1, 512), np.dtype(np.float32))


def test_trt_runner_missing_plan_fails_clearly(tmp_path):
    with pytest.raises(RunnerError, match="does not exist"):
        TrtRunner(tmp_path / "encoder.plan").activate()


def _trt_module():
    import importlib

    for name in TRT_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


MISSING_API = """
def missing_api(trt, api):
    missing = []
    for owner, names in api.items():
        obj = trt if owner == "module" else getattr(trt, owner, None)
        if obj is None:
            missing.append(owner)
            continue
        missing += [f"{owner}.{n}" for n in names if not hasattr(obj, n)]
    return missing
"""


def missing_api(trt) -> list[str]:
    """Names in TRT_API that the given TensorRT module lacks ("Owner.name"); empty when all exist."""
    scope: dict = {}
    exec(MISSING_API, scope)
    return scope["missing_api"](trt, TRT_API)


def test_trt_api_names_exist_in_installed_tensorrt():
    trt = _trt_module()
    if trt is None:
        pytest.skip(f"no TensorRT runtime module ({', '.join(TRT_MODULES)}) is importable here")
    assert missing_api(trt) == []


@pytest.mark.skipif(not os.environ.get("STP_EDGE_TRT_PYTHON"),
                    reason="set STP_EDGE_TRT_PYTHON to a python with tensorrt-lean-cu13-bindings installed")
def test_trt_api_names_exist_in_lean_bindings_of_other_python():
    """Run the same check in another interpreter (the project venv stays free of TensorRT)."""
    code = (MISSING_API + "\nfrom stp_edge.backends.trt import TRT_API, load_trt\nt = load_trt()\n"
            "print(t.__name__, t.__version__, missing_api(t, TRT_API))")
    out = subprocess.run([os.environ["STP_EDGE_TRT_PYTHON"], "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=True).stdout
    name, version, missing = out.strip().split(" ", 2)
    assert missing == "[]", f"{name} {version} lacks {missing}"


def test_trt_api_constant_covers_what_trt_py_calls():
    """Every engine/context method called in trt.py is listed in TRT_API, so the check cannot drift."""
    import re

    src = (REPO / "stp_edge/backends/trt.py").read_text()
    called = set(re.findall(r"self\.engine\.(\w+)", src)) | set(re.findall(r"\bctx\.(\w+)", src))
    listed = set(TRT_API["ICudaEngine"]) | set(TRT_API["IExecutionContext"])
    assert called <= listed, f"not in TRT_API: {sorted(called - listed)}"


def test_cuda_preprocessor_output_is_a_device_feed():
    """The one device buffer type (the CUDA preprocessor's output) is read through __cuda_array_interface__."""
    from stp_edge.backends.base import feed_layout, is_device_array

    t = DeviceArray(ptr=0x7F00, shape=(2, 3, 224, 224), dtype=np.dtype(np.float32), stream=0x55)
    assert is_device_array(t) and not is_device_array(np.ones(3))
    assert feed_layout(t) == ((2, 3, 224, 224), np.dtype(np.float32), 0x7F00)
    assert t.__cuda_array_interface__["stream"] == 0x55 and t.nbytes == 2 * 3 * 224 * 224 * 4
    d = DeviceArray(ptr=0x8000, shape=(1, 2), dtype=np.dtype(np.float16))
    assert feed_layout(d) == ((1, 2), np.dtype(np.float16), 0x8000)
    assert "stream" not in d.__cuda_array_interface__


# --- one TensorRT engine choice per load ---------------------------------------------------------------------
class PlanOnOrt(OrtRunner):
    """A TrtRunner stand-in: takes TrtRunner's arguments, keeps `plan_path` and `engine_info`, runs the ONNX twin."""

    def __init__(self, plan_path, *, device=0, name=None, allow_host_code=False, profiles=None, engine_info=None,
                 limits=None):
        plan_path = Path(plan_path)  # BUNDLE/engines/SET/GRAPH.plan -> BUNDLE/GRAPH.onnx
        super().__init__(plan_path.parents[2] / f"{plan_path.stem}.onnx", name=name, limits=limits)
        self.plan_path, self.engine_info = plan_path, engine_info


def _with_engines(src: Path, out: Path, gpus: tuple[str, ...]):
    """A copy of bundle `src` with one fp32 engine set (placeholder plans) per GPU name, all sm 8.0."""
    import shutil

    from stp_edge.bundle import Bundle, EngineInfo, engine_dir_name, write_manifest
    from stp_edge.bundle.engines import host_platform

    b = Bundle.load(shutil.copytree(src, out))
    engines = [EngineInfo(engine_dir_name(gpu, "fp32"), "fp32", "10.3.0.30", gpu, "8.0", {"precision": "fp32"},
                          host_platform(False)) for gpu in gpus]
    for e in engines:
        (out / e.dir).mkdir(parents=True)
        for g in ("encoder", "temporal", "spatial"):
            (out / e.dir / f"{g}.plan").write_bytes(f"{e.dir} {g}".encode())
    extra = {k: b.manifest[k] for k in ("source", "graph_precision", "exporter") if k in b.manifest}
    write_manifest(out, config=b.config, files=list(b.manifest["files"]), precision=b.precision,
                   opset=b.manifest["opset"], graphs=b.manifest["graphs"], preprocess=b.manifest["preprocess"],
                   engines=engines, extra=extra, regions=b.manifest.get("region_features"))
    return Bundle.load(out)


@pytest.fixture
def a100_machine(monkeypatch):
    """This process as an A100 with TensorRT 10.3.0.30 (plans run by `PlanOnOrt`); yields the engine choices made."""
    from types import SimpleNamespace

    import stp_edge.backends.trt as trt_backend
    from stp_edge.bundle import Bundle

    monkeypatch.setattr(trt_backend, "load_trt", lambda *a: SimpleNamespace(__name__="tensorrt",
                                                                            __version__="10.3.0.30"))
    monkeypatch.setattr(trt_backend, "cuda_device_info", lambda device=0: ("NVIDIA A100", "8.0"))
    monkeypatch.setattr(trt_backend, "cuda_device_integrated", lambda device=0: False)
    monkeypatch.setattr(trt_backend, "TrtRunner", PlanOnOrt)
    choices = []
    select = Bundle.select_engine

    def counted(self, env, **kw):
        choices.append(select(self, env, **kw))
        return choices[-1]

    monkeypatch.setattr(Bundle, "select_engine", counted)
    return choices


@pytest.mark.parametrize("backend", ["auto", "trt"])
def test_detector_load_chooses_the_engine_once_and_its_runners_report_it(backend, handmade_bundle, tmp_path,
                                                                          a100_machine, frames_factory):
    from stp_edge.api import Detector

    bundle = _with_engines(handmade_bundle, tmp_path / "b.stp", ("NVIDIA A30", "NVIDIA A100"))
    with Detector.load(bundle, backend=backend, preprocess="cpu") as det:
        assert len(a100_machine) == 1  # probe and runners share one choice
        engine = a100_machine[0]
        assert det.backend == "trt" and engine.gpu_name == "NVIDIA A100"  # the same GPU model, though listed second
        for g, runner in det.runners.items():
            assert runner.engine_info is engine and runner.plan_path == bundle.plan_path(engine, g)
        results = [r for f in frames_factory(3 * bundle.config.snippet_len) for r in det.push(f)] + det.flush()
    assert len(results) == 3


@pytest.mark.slow
def test_verify_reports_the_plans_its_runners_loaded(exported_tiny_bundle, tmp_path, a100_machine):
    from stp_edge.export.verify import verify_bundle

    bundle = _with_engines(exported_tiny_bundle, tmp_path / "tiny.stp", ("NVIDIA A100",))
    lines: list[str] = []
    rep = verify_bundle(bundle.path, seed=2, backends=("trt",), report=lines.append)
    engine = bundle.engines[0]
    assert len(a100_machine) == 1 and a100_machine[0] == engine
    assert set(rep.trt_plans) == {"encoder", "temporal", "spatial"}
    for g, ran in rep.trt_plans.items():
        assert ran.startswith(f"{engine.dir}/{g}.plan (fp32, built with TensorRT 10.3.0.30 on NVIDIA A100")
        assert f"trt {g}: {ran}" in lines
    assert rep.ok and {r.backend for r in rep.rows} == {"trt"}
