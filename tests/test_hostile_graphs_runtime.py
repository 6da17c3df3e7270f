"""Hostile graphs at run time: what the load-time checks cannot see is bounded while the graph runs.

Real ONNX graphs built with onnx.helper run through the real onnxruntime runner: a Loop of 2^62 iterations ends at
the per-call deadline, a graph asking for 256 GiB fails at the memory limit, any other onnxruntime failure is one
line; a stop request ends a call in flight within its grace, and a signal sent to a `stp-edge run` process that is
inside a slow graph call makes it exit within 2 s (measured). The Loop and allocation graphs are run from their
.onnx files directly: `Bundle.load` refuses them before they could run (tests/test_hostile_bundles.py).

Each in-process hostile call runs on a helper thread that the test waits for with a bound, so a runtime without
these limits fails the test (the call would never return) instead of hanging the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import handmade_config, moving_frames, write_handmade_bundle

from stp_edge.backends.calls import CallLimits, stop_calls_on
from stp_edge.backends.errors import CallError, CallInterruptedError, CallTimeoutError, MemoryLimitError
from stp_edge.backends.ort import OrtRunner

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
X = np.array([1.5], dtype=np.float32)


# --- hostile graphs -------------------------------------------------------------------------------------------
def _save(nodes: list, inputs: list, outputs: list, inits: list, path: Path) -> Path:
    model = h.make_model(h.make_graph(nodes, path.stem, inputs, outputs, inits),
                         opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def loop_graph(path: Path, trips: int = 2 ** 62) -> Path:
    """y = x + trips, one Add per iteration of a Loop: 2^62 iterations never end."""
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Add", ["x_in", "one"], ["x_out"])],
        "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
         h.make_tensor_value_info("x_in", T.FLOAT, [1])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("x_out", T.FLOAT, [1])],
        [h.make_tensor("one", T.FLOAT, [], [1.0])])
    return _save([h.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)],
                 [h.make_tensor_value_info("x", T.FLOAT, [1])], [h.make_tensor_value_info("y", T.FLOAT, [1])],
                 [h.make_tensor("trips", T.INT64, [], [trips]), h.make_tensor("cond", T.BOOL, [], [True])], path)


def alloc_graph(path: Path, gib: float) -> Path:
    """y = x + sum(Expand(x, [n])): the input expanded to `gib` GiB of float32 at run time (nothing to fold)."""
    n = int(gib * (1 << 30)) // 4
    return _save([h.make_node("Expand", ["x", "shape"], ["big"]),
                  h.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
                  h.make_node("Add", ["x", "s"], ["y"])],
                 [h.make_tensor_value_info("x", T.FLOAT, [1])], [h.make_tensor_value_info("y", T.FLOAT, [1])],
                 [h.make_tensor("shape", T.INT64, [1], [n])], path)


def reshape_graph(path: Path) -> Path:
    """y = Reshape(x, [3, -1]): fine for 6 values, an onnxruntime failure (Fail) for 4."""
    return _save([h.make_node("Reshape", ["x", "shape"], ["y"])],
                 [h.make_tensor_value_info("x", T.FLOAT, ["N"])], [h.make_tensor_value_info("y", T.FLOAT, [3, None])],
                 [h.make_tensor("shape", T.INT64, [2], [3, -1])], path)


def gather_graph(path: Path) -> Path:
    """y = x[i] with i a graph input: an index past the end is onnxruntime's InvalidArgument."""
    return _save([h.make_node("Gather", ["x", "i"], ["y"], axis=0)],
                 [h.make_tensor_value_info("x", T.FLOAT, [4]), h.make_tensor_value_info("i", T.INT64, [1])],
                 [h.make_tensor_value_info("y", T.FLOAT, [1])], [], path)


def _within(seconds: float, fn: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    """(value, exception, elapsed) of `fn()` run on a helper thread; fails if it is still running after `seconds`."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    start = time.monotonic()
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: the call is not bounded"
    return box.get("value"), box.get("error"), time.monotonic() - start


def _one_line(exc: BaseException | None) -> str:
    from stp_edge.errors import StpEdgeError

    assert isinstance(exc, StpEdgeError), repr(exc)  # the CLI prints these as one line, never a traceback
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


# --- the per-call deadline ------------------------------------------------------------------------------------
def test_an_endless_loop_ends_at_the_deadline_and_the_runner_goes_on(tmp_path):
    runner = OrtRunner(loop_graph(tmp_path / "encoder.onnx"), limits=CallLimits(call_timeout_s=1.0)).activate()
    try:
        _, err, took = _within(10, lambda: runner.infer({"x": X}))
        assert isinstance(err, CallTimeoutError) and not err.retryable
        text = _one_line(err)
        assert text.startswith("encoder.onnx: the call ran past its 1 s deadline") and "--call-timeout" in text
        assert 0.9 <= took < 2.5
        # onnxruntime's terminate flag ended the run: the worker is free, and the next call runs (and ends) again
        assert not runner._worker.stuck
        _, err, took = _within(10, lambda: runner.infer({"x": X}))
        assert isinstance(err, CallTimeoutError) and took < 2.5
    finally:
        runner.deactivate()


def test_a_bounded_loop_runs_to_its_result(tmp_path):
    """The deadline does not touch a call that ends in time: same value as onnxruntime alone."""
    with OrtRunner(loop_graph(tmp_path / "short.onnx", trips=1000), limits=CallLimits(call_timeout_s=30)) as r:
        assert r.infer({"x": X})["y"].tolist() == [1001.5]


def test_call_limits_are_checked():
    for bad in ({"call_timeout_s": 0}, {"call_timeout_s": -1}, {"call_timeout_s": float("nan")},
                {"memory_limit_gib": 0}, {"memory_limit_gib": float("inf")}, {"connect_timeout_s": 0},
                {"stop_grace_s": True}):
        with pytest.raises(ValueError, match="CallLimits"):
            CallLimits(**bad)
    assert CallLimits().timeout_for(60.0) == 60.0 and CallLimits(call_timeout_s=float("inf")).timeout_for(60) is None
    assert CallLimits(memory_limit_gib=1.5).memory_limit_bytes() == 3 << 29
    assert CallLimits().memory_limit_bytes() > 0  # half of this machine's memory


# --- the memory limit -----------------------------------------------------------------------------------------
def test_a_256_gib_request_fails_at_the_memory_limit(tmp_path):
    with OrtRunner(alloc_graph(tmp_path / "encoder.onnx", 256), limits=CallLimits(memory_limit_gib=1)) as r:
        _, err, _ = _within(30, lambda: r.infer({"x": X}))
    assert isinstance(err, MemoryLimitError) and not err.retryable
    text = _one_line(err)
    assert text.startswith("encoder.onnx asked for 256 GiB of memory, more than the 1 GiB memory limit allows")
    assert "--memory-limit" in text


def test_the_limit_holds_below_what_the_machine_would_give(tmp_path):
    """2 GiB is refused under a 1 GiB limit (without the cap onnxruntime allocates it), and runs under 3 GiB."""
    path = alloc_graph(tmp_path / "temporal.onnx", 2)
    with OrtRunner(path, limits=CallLimits(memory_limit_gib=1)) as r:
        _, err, _ = _within(30, lambda: r.infer({"x": X}))
    assert isinstance(err, MemoryLimitError) and "asked for 2 GiB" in _one_line(err)
    with OrtRunner(path, limits=CallLimits(memory_limit_gib=3)) as r:
        value, err, _ = _within(60, lambda: r.infer({"x": X}))
    assert err is None and value["y"].shape == (1,) and value["y"][0] > 1e8  # float32 sums of 2^29 values


def test_by_default_the_limit_is_half_the_machine(tmp_path):
    from stp_edge.backends.calls import machine_memory_bytes
    from stp_edge.backends.ort import gib

    with OrtRunner(alloc_graph(tmp_path / "spatial.onnx", 256)) as r:
        _, err, _ = _within(30, lambda: r.infer({"x": X}))
    assert isinstance(err, MemoryLimitError)
    assert f"more than the {gib(machine_memory_bytes() // 2)} memory limit" in _one_line(err)


# --- any other onnxruntime failure ----------------------------------------------------------------------------
@pytest.mark.parametrize(("make", "feeds", "kind"), [
    (reshape_graph, {"x": np.arange(4, dtype=np.float32)}, "Fail"),
    (gather_graph, {"x": np.arange(4, dtype=np.float32), "i": np.array([7], np.int64)}, "InvalidArgument"),
])
def test_an_onnxruntime_failure_is_one_line_naming_the_graph(tmp_path, make, feeds, kind):
    with OrtRunner(make(tmp_path / "spatial.onnx"), name="spatial.onnx (ort-cpu)") as r:
        with pytest.raises(CallError) as info:
            r.infer(feeds)
    text = _one_line(info.value)
    assert text.startswith(f"spatial.onnx (ort-cpu): onnxruntime failed the call ({kind}): ")
    assert type(info.value.__cause__).__module__.startswith("onnxruntime")


def test_a_good_call_after_a_failed_one_still_runs(tmp_path):
    with OrtRunner(reshape_graph(tmp_path / "g.onnx")) as r:
        with pytest.raises(CallError):
            r.infer({"x": np.arange(4, dtype=np.float32)})
        assert r.infer({"x": np.arange(6, dtype=np.float32)})["y"].shape == (3, 2)


# --- a stop request -------------------------------------------------------------------------------------------
def test_a_stop_ends_the_call_in_flight_within_its_grace(tmp_path):
    """No deadline at all: the stop event alone ends the endless call, 1 s after it is set; while the stop stays
    set the runner refuses further calls at once (a flush after a stop cannot hang), and afterwards it runs."""
    stop = threading.Event()
    runner = OrtRunner(loop_graph(tmp_path / "encoder.onnx"), limits=CallLimits(call_timeout_s=float("inf")))
    with runner:
        with stop_calls_on([runner], stop):
            assert runner.stop_event is stop
            timer = threading.Timer(0.3, stop.set)
            timer.start()
            _, err, took = _within(10, lambda: runner.infer({"x": X}))
            assert isinstance(err, CallInterruptedError) and not err.retryable
            assert "still running 1 s after the stop request" in _one_line(err)
            assert 1.2 <= took < 2.0
            _, err, took = _within(5, lambda: runner.infer({"x": X}))
            assert isinstance(err, CallInterruptedError) and took < 0.2
        assert runner.stop_event is None
        runner.limits = CallLimits(call_timeout_s=0.5)
        _, err, _ = _within(10, lambda: runner.infer({"x": X}))
        assert isinstance(err, CallTimeoutError)


def test_the_stop_grace_is_one_budget_not_renewed_for_each_call():
    """The stop is seen at 0.2 s inside a call that returns at 0.8 s; the next call (one that waits until it is
    cancelled) ends at the same deadline, 1 s after the stop was seen, not 1 s after it began (1.8 s): a run whose
    call ends inside the grace must not get a second grace for the next one (`stp-edge run` took 2.2 s so)."""
    from stp_edge.backends.calls import CallWorker

    stop = threading.Event()
    worker = CallWorker("encoder")
    timer = threading.Timer(0.2, stop.set)
    start = time.monotonic()
    timer.start()
    assert worker.call(lambda: time.sleep(0.8) or "done", stop=stop, grace_s=1.0) == "done"  # within the grace
    released = threading.Event()

    def until_cancelled() -> None:  # like onnxruntime's terminate: the cancelled call ends with an error
        released.wait(30)
        raise RuntimeError("terminated")

    with pytest.raises(CallInterruptedError, match="still running 1 s after the stop request"):
        worker.call(until_cancelled, stop=stop, grace_s=1.0, cancel=released.set)
    took = time.monotonic() - start
    assert released.is_set() and 1.2 <= took < 1.5, f"{took:.2f} s"
    with pytest.raises(CallInterruptedError, match="not run: a stop was requested and its 1 s grace is over"):
        worker.call(time.sleep, 0, stop=stop, grace_s=1.0)  # after the grace: refused before it starts
    stop.clear()  # a cleared stop starts afresh: calls run, and a new stop gets a whole grace again
    assert worker.call(lambda: "again", stop=stop, grace_s=1.0) == "again"
    stop.set()
    assert worker.call(lambda: time.sleep(0.3) or "within", stop=stop, grace_s=1.0) == "within"
    worker.close()


def test_a_stop_ends_every_graph_of_a_detector_within_one_grace(tmp_path):
    """Two runners under one stop (as a Detector's encoder and temporal graphs are): the encoder call is ended
    1 s after the stop, and the temporal call that the run's flush would make next is not run at all."""
    stop = threading.Event()
    limits = CallLimits(call_timeout_s=float("inf"))
    encoder = OrtRunner(loop_graph(tmp_path / "encoder.onnx"), limits=limits)
    temporal = OrtRunner(loop_graph(tmp_path / "temporal.onnx"), limits=limits)
    with encoder, temporal, stop_calls_on([encoder, temporal], stop):
        threading.Timer(0.3, stop.set).start()
        start = time.monotonic()
        _, err, _ = _within(10, lambda: encoder.infer({"x": X}))
        assert isinstance(err, CallInterruptedError) and "still running 1 s" in _one_line(err)
        _, err, took = _within(10, lambda: temporal.infer({"x": X}))
        assert isinstance(err, CallInterruptedError) and "grace is over" in _one_line(err) and took < 0.2
        assert time.monotonic() - start < 2.0


def test_a_call_that_cannot_be_cancelled_is_abandoned(tmp_path):
    """A backend that cannot end its call (no cancel_impl): its thread is left behind, the caller is not, and the
    runner says it cannot run again."""
    from stp_edge.backends.errors import AbandonedRunnerError

    class Uncancellable(OrtRunner):
        def cancel_impl(self) -> None:  # like a TensorRT call: nothing can end it
            pass

    runner = Uncancellable(loop_graph(tmp_path / "encoder.onnx"), limits=CallLimits(call_timeout_s=0.5)).activate()
    _, err, took = _within(10, lambda: runner.infer({"x": X}))
    assert isinstance(err, CallTimeoutError) and 1.4 <= took < 2.5  # 0.5 s deadline + 1 s waiting for the end
    assert runner._worker.stuck
    _, err, took = _within(5, lambda: runner.infer({"x": X}))
    assert isinstance(err, AbandonedRunnerError) and took < 0.2 and "cannot run again" in _one_line(err)
    runner.deactivate()  # does not wait for the stranded call
    assert not runner.is_active
    OrtRunner.cancel_impl(runner)  # end the stranded loop, so it does not spin for the rest of the session


def test_ctrl_c_reaches_a_python_caller_inside_a_call(tmp_path):
    """A plain Python program (default SIGINT handling) in an endless call: Ctrl-C raises KeyboardInterrupt
    there within 2 s, and the process exits. Before the worker thread, the main thread sat inside onnxruntime
    and Python never ran the handler."""
    graph = loop_graph(tmp_path / "encoder.onnx")
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from stp_edge.backends.ort import OrtRunner
        r = OrtRunner({str(graph)!r}).activate()
        print("calling", flush=True)
        try:
            r.infer({{"x": np.ones(1, np.float32)}})
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "calling", proc.stderr.read()
        time.sleep(0.5)  # inside the call
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in out, err
    assert took < 2.0, f"exited {took:.2f} s after SIGINT"
    print(f"SIGINT to exit: {took:.2f} s")


# --- signals to `stp-edge run` inside a slow graph call -------------------------------------------------------
def _slow_encoder(path: Path, rows: int = 8192, width: int = 256, steps: int = 600) -> None:
    """Append to the bundle's encoder a chain of `steps` MatMuls of [rows, width] by an orthogonal [width, width]
    (about 1 GFLOP each, minutes on a 2-core CPU), whose sum times 0 is added to frame_emb: the graph's results
    stay exactly those of the original, it only takes long. Every operator and constant passes the load checks."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    produced = next(n for n in g.node if "frame_emb" in n.output)
    produced.output[list(produced.output).index("frame_emb")] = "frame_emb_fast"
    w, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(width, width)))
    g.initializer.extend([numpy_helper.from_array(w.astype(np.float32), "slow_w"),
                          numpy_helper.from_array(np.array([rows, width], np.int64), "slow_shape"),
                          numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero")])
    nodes = [h.make_node("ReduceMean", ["images"], ["slow_s"], keepdims=0),
             h.make_node("Expand", ["slow_s", "slow_shape"], ["slow_0"])]
    nodes += [h.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_{i + 1}"]) for i in range(steps)]
    nodes += [h.make_node("ReduceMean", [f"slow_{steps}"], ["slow_m"], keepdims=0),
              h.make_node("Mul", ["slow_m", "slow_zero"], ["slow_nothing"]),
              h.make_node("Add", ["frame_emb_fast", "slow_nothing"], ["frame_emb"])]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory) -> Path:
    """A hand-made bundle whose encoder call takes minutes (resealed: its files' sha256 and digest are right)."""
    from stp_edge.bundle import MANIFEST, Bundle, rewrite_manifest, sha256_file

    out = write_handmade_bundle(tmp_path_factory.mktemp("slow") / "slow.stp", handmade_config(), seed=4)
    _slow_encoder(out / "encoder.onnx")
    import json

    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"]["encoder.onnx"] = sha256_file(out / "encoder.onnx")
    rewrite_manifest(out, manifest)
    Bundle.load(out)  # passes every load check: the graph is only slow
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_call_ends_stp_edge_run_within_2_s(slow_bundle, tmp_path, sig):
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for f in moving_frames(64, seed=1):
        writer.write(f)
    writer.release()
    cmd = [sys.executable, "-m", "stp_edge.cli", "run", str(slow_bundle), str(video), "--backend", "ort-cpu",
           "--jsonl", str(tmp_path / "out.jsonl")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()  # "bundle ...: backend ort-cpu, ..." once loaded, before the run starts
        assert line.startswith("bundle"), line + proc.stderr.read()
        time.sleep(1.5)  # the first snippet (4 frames) is read at once and the encoder call begins
        cpu = _cpu_seconds(proc.pid)
        time.sleep(0.5)
        assert proc.poll() is None and _cpu_seconds(proc.pid) - cpu > 0.1, "not inside the slow encoder call"
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"{signal.Signals(sig).name} to exit: {took:.2f} s, exit {proc.returncode}")
    assert took < 2.0, f"exited {took:.2f} s after {signal.Signals(sig).name}: {err}"
    assert proc.returncode == 128 + sig, err  # a stop, not a failure
    assert "Traceback" not in err
    problem = [x for x in err.splitlines() if x.strip() and not x.startswith(("run:", "\r"))]
    assert len(problem) == 1 and "stop" in problem[0], err


# --- the limits through the Detector and the CLI --------------------------------------------------------------
def test_detector_load_hands_its_limits_to_every_runner_and_a_slow_call_ends_at_the_deadline(slow_bundle):
    """Through the whole pipeline: the deadline error is not retried (a retry would wait as long again)."""
    from stp_edge import Detector

    limits = CallLimits(call_timeout_s=1.0, memory_limit_gib=2)
    with Detector.load(slow_bundle, backend="ort-cpu", preprocess="cpu", limits=limits) as det:
        assert {g: r.limits for g, r in det.runners.items()} == {g: limits for g in ("encoder", "temporal", "spatial")}
        frames = moving_frames(4, seed=2)  # one snippet: the encoder runs
        start = time.monotonic()
        with pytest.raises(CallTimeoutError, match="encoder.onnx .*1 s deadline"):
            [det.push(f) for f in frames]
        assert time.monotonic() - start < 2.5


def test_stp_edge_run_refuses_a_bad_limit_in_one_line(handmade_bundle, tmp_path, capsys):
    from stp_edge.cli import main

    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for f in moving_frames(8, seed=1):
        writer.write(f)
    writer.release()
    for option, value in (("--call-timeout", "0"), ("--memory-limit", "-1"), ("--connect-timeout", "nan")):
        assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu", option, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{option} / CallLimits." in err and "must be a positive number" in err
