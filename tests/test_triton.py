"""Triton: the model repository (`stp-edge export --triton`), and a Detector served by a real Triton server.

The server tests start PyTriton's `tritonserver` on loopback from `.venv-triton` (`make .venv-triton/.installed`,
or $STP_EDGE_TRITON_PYTHON) and skip, saying why, only where it cannot start. PyTriton's server has the Python
backend only, so it serves the graphs run by onnxruntime inside (stp_edge/scale/serve.py); the repository's
onnxruntime configs are checked by Triton's own parser (the protobuf ModelConfig, and tritonserver reading the
repository up to loading the backend library it lacks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import handmade_config, moving_frames, write_handmade_bundle

from stp_edge import Detector
from stp_edge.backends import create_runners, resolve_backend
from stp_edge.bench.capacity import free_port
from stp_edge.bundle import Bundle, EngineInfo, rewrite_manifest
from stp_edge.scale import triton_repo
from stp_edge.scale.triton_repo import contract_shapes, parse_config, triton_models, write_triton_repository

PARITY = 1e-5
REPO = Path(__file__).resolve().parents[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _avi(path: Path, n: int) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for f in moving_frames(n, seed=2):
        writer.write(f)
    writer.release()
    return path


# --- the repository (no server) -------------------------------------------------------------------------------

def _expected(bundle: Bundle, graph: str) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs as config.pbtxt should say them: manifest order, batch axis dropped, -1 dynamic."""
    shapes = contract_shapes(bundle)[graph]
    meta = bundle.manifest["graphs"][graph]

    def t(name):
        return {"name": name, "data_type": "TYPE_FP32",
                "dims": [d if isinstance(d, int) else -1 for d in shapes[name][1:]]}
    return [t(n) for n in meta["inputs"]], [t(n) for n in meta["outputs"]]


@pytest.mark.parametrize("fixture", ["handmade_bundle", "handmade_crops_bundle", "handmade_legacy_bundle",
                                     "handmade_legacy_crops_bundle", "exported_tiny_bundle"])
def test_repository_configs_follow_the_manifest(fixture, request, tmp_path):
    bundle = Bundle.load(request.getfixturevalue(fixture))
    repo = write_triton_repository(bundle, tmp_path / "repo", max_batch=8, instances=2)
    assert sorted(p.name for p in repo.iterdir()) == ["encoder", "spatial", "temporal"]
    r2 = bundle.config.num_regions
    for g in ("encoder", "temporal", "spatial"):
        cfg = parse_config((repo / g / "config.pbtxt").read_text())
        inputs, outputs = _expected(bundle, g)
        assert cfg["name"] == g and cfg["backend"] == "onnxruntime" and cfg["platform"] == "onnxruntime_onnx"
        assert cfg["input"] == inputs and cfg["output"] == outputs
        # crops cut on the host (bundles exported before crops moved into the encoder) go through it in one call
        host_crops = g == "encoder" and bundle.config.region_mode == "crops" and bundle.region_features == "host"
        assert cfg["max_batch_size"] == (8 * r2 if host_crops else 8)
        assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
        assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 500
        assert _sha(repo / g / "1" / "model.onnx") == bundle.manifest["files"][f"{g}.onnx"]
    # the graph files' own declarations agree with the manifest-derived dims
    ort = pytest.importorskip("onnxruntime")
    for g in ("encoder", "temporal", "spatial"):
        cfg = parse_config((repo / g / "config.pbtxt").read_text())
        sess = ort.InferenceSession(str(repo / g / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        declared = {v.name: [d if isinstance(d, int) else -1 for d in v.shape[1:]]
                    for v in (*sess.get_inputs(), *sess.get_outputs())}
        assert {t["name"]: t["dims"] for t in cfg["input"] + cfg["output"]} == declared


def _with_engines(bundle_dir: Path, tmp_path: Path) -> Bundle:
    """A copy of the bundle with one (fake-bytes) engine set recorded, profiles capping B at 4."""
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "b.stp"))
    bundle = Bundle.load(copy)
    engine = EngineInfo(dir="engines/nvidia-h100-80gb-hbm3-fp16", precision="fp16", tensorrt_version="10.3.0",
                        gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                        build_flags={"profiles": {"encoder": {"images": [[1, 3, 32, 32], [1, 3, 32, 32],
                                                                         [4, 3, 32, 32]]}}})
    (copy / engine.dir).mkdir(parents=True)
    manifest = dict(bundle.manifest, engines=[engine.to_dict()], files=dict(bundle.manifest["files"]))
    for g in ("encoder", "temporal", "spatial"):
        (copy / engine.dir / f"{g}.plan").write_bytes(f"plan of {g}".encode())
        manifest["files"][f"{engine.dir}/{g}.plan"] = _sha(copy / engine.dir / f"{g}.plan")
    rewrite_manifest(copy, manifest)  # listed and hashed, as build-engines records them
    return Bundle.load(copy)


def test_repository_adds_tensorrt_models_per_engine_set(handmade_bundle, tmp_path):
    bundle = _with_engines(handmade_bundle, tmp_path)
    repo = write_triton_repository(bundle, tmp_path / "repo", backends=("onnxruntime", "tensorrt"), max_batch=16)
    names = sorted(p.name for p in repo.iterdir())
    assert names == ["encoder", "encoder_nvidia-h100-80gb-hbm3-fp16", "spatial", "spatial_nvidia-h100-80gb-hbm3-fp16",
                     "temporal", "temporal_nvidia-h100-80gb-hbm3-fp16"]
    enc = parse_config((repo / "encoder_nvidia-h100-80gb-hbm3-fp16" / "config.pbtxt").read_text())
    assert enc["platform"] == "tensorrt_plan" and enc["backend"] == "tensorrt"
    assert enc["max_batch_size"] == 4  # capped by the engine's optimisation profile
    assert enc["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert enc["input"] == _expected(bundle, "encoder")[0]
    assert (repo / "encoder_nvidia-h100-80gb-hbm3-fp16" / "1" / "model.plan").read_bytes() == b"plan of encoder"
    tmp = parse_config((repo / "temporal_nvidia-h100-80gb-hbm3-fp16" / "config.pbtxt").read_text())
    assert tmp["max_batch_size"] == 16  # no profile recorded for it: the requested maximum


def test_repository_refuses_what_it_cannot_write(handmade_bundle, tmp_path):
    bundle = Bundle.load(handmade_bundle)
    with pytest.raises(ValueError, match="no TensorRT engines"):
        triton_models(bundle, backends=("tensorrt",))
    with pytest.raises(ValueError, match="backends"):
        triton_models(bundle, backends=("pytorch",))
    with pytest.raises(ValueError, match="onnx_device"):
        triton_models(bundle, onnx_device="tpu")
    with pytest.raises(ValueError, match="max_batch"):
        triton_models(bundle, max_batch=0)


def test_repository_is_replaced_atomically(handmade_bundle, tmp_path, monkeypatch):
    repo = write_triton_repository(handmade_bundle, tmp_path / "repo", max_batch=8)
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    calls = []

    def failing_place(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        shutil.copy2(src, dst)

    monkeypatch.setattr(triton_repo, "_place", failing_place)
    with pytest.raises(OSError, match="disk full"):
        write_triton_repository(handmade_bundle, tmp_path / "repo", max_batch=4)
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before  # the old repository, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no partial directory left behind
    monkeypatch.undo()
    write_triton_repository(handmade_bundle, tmp_path / "repo", max_batch=4)
    assert parse_config((repo / "spatial" / "config.pbtxt").read_text())["max_batch_size"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


# --- the triton:// backend name (no server) -------------------------------------------------------------------

def test_triton_backend_names(handmade_bundle):
    from stp_edge.backends.triton import TritonRunner, parse_triton_url

    assert parse_triton_url("triton://127.0.0.1:8000") == "127.0.0.1:8000"
    assert parse_triton_url("triton://server.local:9000/") == "server.local:9000"
    for bad in ("triton://127.0.0.1", "triton://:8000", "triton://h:8000/encoder", "triton://h:port", "ort-cpu"):
        with pytest.raises(ValueError, match="(?i)triton|port"):
            parse_triton_url(bad)
    assert resolve_backend("triton://127.0.0.1:8000") == "triton://127.0.0.1:8000"  # nothing probed
    with pytest.raises(ValueError, match="HOST:PORT"):
        resolve_backend("triton://127.0.0.1")
    runners = create_runners(Bundle.load(handmade_bundle), "triton://127.0.0.1:8000")
    assert {g: (type(r), r.url, r.model, r.is_active) for g, r in runners.items()} == {
        g: (TritonRunner, "127.0.0.1:8000", g, False) for g in ("encoder", "temporal", "spatial")}


def test_missing_tritonclient_names_the_extra(monkeypatch):
    from stp_edge._deps import MissingDependencyError
    from stp_edge.backends.triton import TritonRunner

    monkeypatch.setitem(sys.modules, "tritonclient.http", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'stp-edge\[scale\]'"):
        TritonRunner("127.0.0.1:1", "encoder").activate()


def test_a_missing_server_is_reported_within_the_connect_timeout():
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install 'stp-edge[scale]')")
    from stp_edge.backends.base import RunnerError
    from stp_edge.backends.calls import CallLimits
    from stp_edge.backends.triton import TritonRunner

    port = free_port()
    runner = TritonRunner(f"127.0.0.1:{port}", "encoder", limits=CallLimits(connect_timeout_s=1.0))
    start = time.monotonic()
    with pytest.raises(RunnerError) as err:
        runner.activate()
    took = time.monotonic() - start
    assert str(err.value).startswith(f"encoder (triton://127.0.0.1:{port}): no Triton server answers at "
                                     f"127.0.0.1:{port} after 1 s (ConnectionRefusedError")
    assert "--connect-timeout" in str(err.value) and "\n" not in str(err.value)
    assert 0.8 <= took < 2.0 and not runner.is_active


def test_stp_edge_run_reports_a_missing_server_in_one_line_within_seconds(handmade_bundle, tmp_path):
    """The default connect timeout (5 s): one line naming the address and the option, exit 2, no traceback."""
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install 'stp-edge[scale]')")
    video = _avi(tmp_path / "v.avi", 8)
    port = free_port()
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "stp_edge.cli", "run", str(handmade_bundle), str(video),
                          "--backend", f"triton://127.0.0.1:{port}", "-q"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    took = time.monotonic() - start
    print(f"missing server reported after {took:.1f} s (process start included)")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no Triton server answers at 127.0.0.1:{port} after 5 s" in lines[0], run.stderr
    assert "--connect-timeout" in lines[0]
    assert took < 15


# --- a real Triton server -------------------------------------------------------------------------------------

def _triton_python() -> str:
    from stp_edge.scale.serve import triton_python

    try:
        python = triton_python()
    except FileNotFoundError as exc:
        pytest.skip(f"no Triton server here: {exc}")
    check = subprocess.run([python, "-c", "import pytriton, onnxruntime"], capture_output=True, text=True,
                           timeout=120)
    if check.returncode != 0:
        pytest.skip(f"{python} cannot import pytriton and onnxruntime: {check.stderr.strip()[-300:]}")
    return python


def test_tritonserver_reads_the_repository(handmade_bundle, tmp_path):
    """Triton's ModelConfig protobuf parses every config.pbtxt, and tritonserver takes each model as far as its
    backend library (PyTriton's server has the Python backend only, so 'onnxruntime' is where it stops)."""
    python = _triton_python()
    repo = write_triton_repository(_with_engines(handmade_bundle, tmp_path), tmp_path / "repo",
                                   backends=("onnxruntime", "tensorrt"))
    parse = ("import sys, pathlib; from google.protobuf import text_format; "
             "from tritonclient.grpc import model_config_pb2 as pb; "
             "[print(p.parent.name, text_format.Parse(p.read_text(), pb.ModelConfig()).max_batch_size) "
             "for p in sorted(pathlib.Path(sys.argv[1]).glob('*/config.pbtxt'))]")
    out = subprocess.run([python, "-c", parse, str(repo)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split("\n")) - 1 == 6
    root = subprocess.run([python, "-c", "import pytriton, os; print(os.path.dirname(pytriton.__file__))"],
                          capture_output=True, text=True, timeout=120).stdout.strip()
    server = Path(root) / "tritonserver"
    run = subprocess.run([str(server / "bin" / "tritonserver"), f"--model-repository={repo}",
                          f"--backend-directory={server / 'backends'}", f"--http-port={free_port()}",
                          "--http-address=127.0.0.1", "--allow-grpc=false", "--allow-metrics=false",
                          "--exit-on-error=true"], capture_output=True, text=True, timeout=120)
    log = run.stdout + run.stderr
    for name in ("encoder", "temporal", "spatial"):
        assert f"failed to load '{name}' version 1: Invalid argument: unable to find backend library for " \
               f"backend 'onnxruntime'" in log, log[-3000:]
    assert "failed to read text proto" not in log and "Poll failed" not in log, log[-3000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A handmade bundle and a Triton server for it on loopback (max batch 4, so 6 streams need two requests)."""
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install 'stp-edge[scale]')")
    _triton_python()
    from stp_edge.scale.serve import start_server

    tmp = tmp_path_factory.mktemp("triton")
    bundle = write_handmade_bundle(tmp / "b.stp", handmade_config(), seed=5)
    log = tmp / "server.log"
    try:
        with start_server(bundle, port=free_port(), max_batch=4, log=log, timeout_s=180) as url:
            yield bundle, url
    except RuntimeError as exc:
        if "not ready" in str(exc) or "exited" in str(exc):
            pytest.skip(f"the Triton server cannot start here: {exc}")
        raise


def _stream_all(det: Detector, frames: dict[int, list[np.ndarray]]) -> list:
    out = []
    for i in range(max(len(f) for f in frames.values())):
        out += det.push_many({k: f[i] for k, f in frames.items() if i < len(f)})
    return out + det.flush()


def _assert_same(local: list, served: list) -> None:
    key = lambda r: (r.stream, r.snippet, r.final)  # noqa: E731
    local, served = sorted(local, key=key), sorted(served, key=key)
    assert [key(r) for r in local] == [key(r) for r in served]
    for a, b in zip(local, served, strict=True):
        assert (a.frame_start, a.frame_end, a.class_id, a.is_anomaly) == (b.frame_start, b.frame_end, b.class_id,
                                                                          b.is_anomaly)
        assert abs(a.score - b.score) <= PARITY
        np.testing.assert_allclose(b.class_probs, a.class_probs, atol=PARITY, rtol=0)
        assert (a.region_scores is None) == (b.region_scores is None)
        if a.region_scores is not None:
            np.testing.assert_allclose(b.region_scores, a.region_scores, atol=PARITY, rtol=0)
            np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, atol=PARITY, rtol=0)
        assert [dataclasses.astuple(x) for x in a.boxes] == [dataclasses.astuple(x) for x in b.boxes]


def test_served_detector_equals_local_runtime(served):
    """Six cameras (different sizes and lengths), batched by push_many, chunked to the server's max batch 4,
    provisional results (lookahead 1) included: the same results as the local ort-cpu runtime."""
    bundle, url = served
    frames = {k: moving_frames(30 + 3 * k, height=40 + 8 * k, width=56 + 4 * k, seed=k) for k in range(6)}
    with Detector.load(bundle, backend="ort-cpu", spatial_on="all", lookahead=1) as det:
        local = _stream_all(det, frames)
    with Detector.load(bundle, backend=f"triton://{url}", spatial_on="all", lookahead=1) as det:
        assert det.backend == f"triton://{url}"
        assert {g: r.max_batch() for g, r in det.runners.items()} == {"encoder": 4, "temporal": 4, "spatial": 4}
        remote = _stream_all(det, frames)
    assert len(local) > 40 and any(not r.final for r in local)
    _assert_same(local, remote)
    scores = np.array([r.score for r in local])
    assert scores.std() > 1e-3  # moving frames give varying scores, never a constant


def test_served_detectors_in_threads(served):
    """Three Detectors in three threads share the server (its dynamic batcher merges their requests)."""
    bundle, url = served
    frames = {k: moving_frames(24, seed=10 + k) for k in range(3)}
    with Detector.load(bundle, backend="ort-cpu") as det:
        local = {k: _stream_all(det, {k: f}) for k, f in frames.items()}
    remote: dict[int, list] = {}

    def worker(k: int) -> None:
        with Detector.load(bundle, backend=f"triton://{url}") as det:
            remote[k] = _stream_all(det, {k: frames[k]})

    threads = [threading.Thread(target=worker, args=(k,)) for k in frames]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(remote) == sorted(frames)
    for k in frames:
        _assert_same(local[k], remote[k])


def test_served_model_metadata_matches_the_repository(served, tmp_path):
    """What the server reads from the ONNX graphs (PyTriton's model config) is what the repository writes."""
    import tritonclient.http as http

    bundle, url = served
    repo = write_triton_repository(bundle, tmp_path / "repo", max_batch=4)
    client = http.InferenceServerClient(url)
    try:
        for g in ("encoder", "temporal", "spatial"):
            ours = parse_config((repo / g / "config.pbtxt").read_text())
            theirs = client.get_model_config(g)
            assert theirs["max_batch_size"] == ours["max_batch_size"]
            for key in ("input", "output"):
                assert [(t["name"], t["data_type"], list(t["dims"])) for t in theirs[key]] == \
                       [(t["name"], t["data_type"], t["dims"]) for t in ours[key]]
    finally:
        client.close()


# --- a real server that dies or freezes mid-run ---------------------------------------------------------------

@pytest.fixture
def private_server(tmp_path):
    """A Triton server of its own for one test (which kills or freezes it): yields (bundle, url, process group)."""
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install 'stp-edge[scale]')")
    _triton_python()
    from stp_edge.scale.serve import server_command, server_ready

    bundle = write_handmade_bundle(tmp_path / "b.stp", handmade_config(), seed=6)
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # closed below, after the server
    proc = subprocess.Popen(server_command(bundle, port=port, max_batch=4), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the server and tritonserver
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not server_ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"the Triton server cannot start here: "
                            f"{(tmp_path / 'server.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.25)
        yield bundle, url, proc.pid
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        log.close()


def _run_until_results(bundle: Path, url: str, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """`stp-edge run` on a long video against the server, once its first results are written."""
    video = _avi(tmp_path / "long.avi", 6000)
    jsonl = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "stp_edge.cli", "run", str(bundle), str(video), "--backend",
                             f"triton://{url}", "--jsonl", str(jsonl), "-q", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while not (jsonl.exists() and jsonl.stat().st_size > 0):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, jsonl


def _ends_in_one_line(proc: subprocess.Popen, since: float, limit_s: float, what: str) -> str:
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - since
    print(f"{what}: `stp-edge run` exited {proc.returncode} after {took:.2f} s: {err.strip()}")
    assert proc.returncode == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    # one error line; before it only the pipeline's one-line notices that a failed call is tried once more
    assert "error:" in lines[-1] and all("retrying once" in x for x in lines[:-1]), err
    assert took < limit_s, f"{what}: {took:.2f} s"
    return lines[-1]


@pytest.mark.slow
def test_a_server_killed_mid_run_ends_the_run_in_one_line(private_server, tmp_path):
    bundle, url, group = private_server
    proc, jsonl = _run_until_results(bundle, url, tmp_path)
    killed = time.monotonic()
    os.killpg(group, signal.SIGKILL)
    line = _ends_in_one_line(proc, killed, 5.0, "server killed")
    assert f"triton://{url}" in line and "still running?" in line  # "lost the connection ... is the server ..."
    assert jsonl.stat().st_size > 0  # what was analysed before is kept


@pytest.mark.slow
def test_a_server_frozen_mid_run_ends_the_run_at_the_call_deadline(private_server, tmp_path):
    bundle, url, group = private_server
    proc, _ = _run_until_results(bundle, url, tmp_path, "--call-timeout", "2")
    frozen = time.monotonic()
    os.killpg(group, signal.SIGSTOP)
    line = _ends_in_one_line(proc, frozen, 2 + 3.0, "server frozen")  # the deadline, then at most 1 s to end it
    assert "did not answer within 2 s" in line or "ran past its 2 s deadline" in line, line
    assert "--call-timeout" in line
