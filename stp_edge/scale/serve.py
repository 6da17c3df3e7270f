"""`stp-edge serve BUNDLE --port P`: a bundle's three graphs served by Triton Inference Server.

The server is PyTriton's (PyPI `nvidia-pytriton`): a real `tritonserver` binary whose only backend is the
Python one, so each graph is bound as a Python model that runs the bundle's ONNX graph with onnxruntime
(Triton's own onnxruntime/tensorrt backends ship in NVIDIA's containers only; for those, serve the repository
of `stp_edge.scale.triton_repo`). Models are named after the graphs ("encoder", "temporal", "spatial"), batch
along the snippet axis with Triton's dynamic batcher, and are what `Detector.load(bundle,
backend="triton://HOST:PORT")` calls.

PyTriton's Python-backend stub links the system's libpython, so the server must run in a venv made from the
system interpreter (`make .venv-triton/.installed`). This file therefore runs as a script there, importing only
the standard library, numpy, onnxruntime and pytriton: `serve()` and `start_server()` launch it under that
interpreter from any other one.

The bundle is checked on the launching side, by `Bundle.load` as every other entry point does (manifest, paths,
checksums, graph contract and content), before any server starts: a bundle `run` refuses, `serve` refuses with the
same error. The server is handed each checked graph's path and sha256, reads the bytes once, checks their sha256
again and builds its sessions from those bytes, so what it serves is exactly what was checked.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

GRAPHS = ("encoder", "temporal", "spatial")
PYTHON_ENV = "STP_EDGE_TRITON_PYTHON"  # the interpreter with pytriton (default: .venv-triton of a checkout)


# --- launching (any interpreter) ------------------------------------------------------------------------------

def triton_python() -> str:
    """The interpreter that runs the server.

    $STP_EDGE_TRITON_PYTHON, else this one if it has pytriton, else the `.venv-triton` of a checkout.

    Raises:
        FileNotFoundError: None of them exists (the message says how to make one).
    """
    import importlib.util

    if os.environ.get(PYTHON_ENV):
        return os.environ[PYTHON_ENV]
    if importlib.util.find_spec("pytriton") is not None:
        return sys.executable
    candidate = Path(__file__).resolve().parents[2] / ".venv-triton" / "bin" / "python"
    if candidate.is_file():
        return str(candidate)
    from stp_edge.errors import MissingInputError  # the launching side only: the server side imports no stp_edge

    raise MissingInputError(
        f"no Python with nvidia-pytriton: set {PYTHON_ENV}, or make a venv from the system interpreter "
        "(`/usr/bin/python3 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton onnxruntime`, "
        "or `make .venv-triton/.installed` in a checkout)")


def checked_graphs(bundle: str | os.PathLike | Any) -> dict[str, dict[str, str]]:
    """graph -> {"file": absolute path, "sha256": hash} of `bundle`, after every check `Bundle.load` runs.

    Raises:
        BundleError: The bundle is refused, with the error `stp-edge run` and `info` give.
    """
    from stp_edge.bundle import GRAPH_NAMES, Bundle  # the launching side only: the server side imports no stp_edge

    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    files = b.manifest["files"]
    return {g: {"file": str(b.graph_path(g).resolve()), "sha256": files[b.manifest["graphs"][g]["file"]]}
            for g in GRAPH_NAMES}


def server_command(bundle: str | os.PathLike | Any, *, port: int, host: str = "127.0.0.1", max_batch: int = 16,
                   instances: int = 1, threads: int = 0, queue_delay_us: int = 500,
                   python: str | None = None) -> list[str]:
    """The command line that serves `bundle` (this file as a script under `python`), once the bundle is checked.

    Raises:
        BundleError: `Bundle.load` refuses the bundle (nothing is started).
    """
    graphs = checked_graphs(bundle)
    where = getattr(bundle, "path", bundle)
    return [python or triton_python(), str(Path(__file__).resolve()), str(where), "--graphs", json.dumps(graphs),
            "--port", str(port), "--host", host, "--max-batch", str(max_batch), "--instances", str(instances),
            "--threads", str(threads), "--queue-delay-us", str(queue_delay_us)]


def server_ready(url: str, models: Sequence[str] = GRAPHS, timeout_s: float = 1.0) -> bool:
    """True when Triton at `url` (host:port) says each of `models` is ready (HTTP 200 on /v2/models/M/ready).

    PyTriton's server reports itself ready before its models have loaded, hence per model.
    """
    for model in models:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/models/{model}/ready", timeout=timeout_s) as resp:
                if resp.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
    return True


@contextlib.contextmanager
def start_server(bundle: str | os.PathLike, *, port: int, host: str = "127.0.0.1", timeout_s: float = 120.0,
                 log: str | os.PathLike | None = None, **kwargs) -> Iterator[str]:
    """Serve `bundle` in a child process for the `with` block; yields its URL "host:port" once ready.

    Keyword arguments are those of `server_command`. The server is stopped (SIGINT, then SIGKILL after 30 s)
    when the block ends.

    Raises:
        BundleError: `Bundle.load` refuses the bundle (before any server starts).
        RunnerError: The server exited or was not ready within `timeout_s`; the message ends with its log.
    """
    cmd = server_command(bundle, port=port, host=host, **kwargs)
    log_path = Path(log) if log else Path(os.devnull)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"{host}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not server_ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:] if log else "(no log; pass log=)"
                why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not ready in {timeout_s}s"
                from stp_edge.backends.base import RunnerError  # launching side only

                raise RunnerError(f"Triton server for {bundle} {why}: {' '.join(cmd)}\n{tail}")
            time.sleep(0.25)
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the server and tritonserver, nothing else
            proc.wait(timeout=10)


def serve(bundle: str | os.PathLike, *, port: int = 8000, python: str | None = None, **kwargs) -> int:
    """Serve `bundle` on `port` until interrupted (`stp-edge serve`); returns the server's exit status.

    Keyword arguments are those of `server_command` (host, max_batch, instances, threads, queue_delay_us).

    Raises:
        BundleError: `Bundle.load` refuses the bundle (before any server starts).
    """
    proc = subprocess.Popen(server_command(bundle, port=port, python=python, **kwargs))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        return 130


# --- the server (the interpreter with pytriton) ----------------------------------------------------------------

def _checked_bytes(bundle: Path, graph: str, entry: dict) -> bytes:
    """The bytes of a graph the launching side checked, read once; SystemExit if they changed since."""
    data = Path(entry["file"]).read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != entry["sha256"]:
        raise SystemExit(f"bundle {bundle}: graph {graph!r} ({entry['file']}) changed after it was checked "
                         f"(expected sha256 {entry['sha256']}, got {got}); serve the bundle again")
    return data


def _bind_graph(triton, name: str, model: bytes, *, max_batch: int, instances: int, threads: int,
                queue_delay_us: int) -> None:
    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    def session():
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])

    def infer_fn(sess):
        out_names = [o.name for o in sess.get_outputs()]

        @batch
        def infer(**feeds):
            return dict(zip(out_names, sess.run(out_names, feeds), strict=True))
        return infer

    sessions = [session() for _ in range(instances)]

    def tensors(values) -> list:
        # The first axis is the batch axis Triton batches along; other symbolic axes (T) are dynamic.
        return [Tensor(name=v.name, dtype=np.float32, shape=tuple(d if isinstance(d, int) else -1
                                                                  for d in v.shape[1:])) for v in values]

    triton.bind(model_name=name, infer_func=[infer_fn(s) for s in sessions],
                inputs=tensors(sessions[0].get_inputs()), outputs=tensors(sessions[0].get_outputs()),
                config=ModelConfig(max_batch_size=max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us)),
                strict=True)


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """The server's options, shared by this script and `stp-edge serve` (which launches it)."""
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--max-batch", type=int, default=16, help="largest batch of snippets Triton forms")
    p.add_argument("--instances", type=int, default=1, help="onnxruntime sessions per graph")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--queue-delay-us", type=int, default=500, help="dynamic batcher's wait for more requests")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server in this interpreter (needs pytriton, onnxruntime, numpy); blocks until SIGINT/SIGTERM.

    Serves only graphs checked by the launching side (`--graphs`, written by `server_command`): run it through
    `stp-edge serve`, `serve()` or `start_server()`.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--graphs", type=json.loads, required=True,
                   help="graph -> {file, sha256} as checked by Bundle.load (`server_command` writes it)")
    add_server_arguments(p)
    args = p.parse_args(argv)
    from pytriton.triton import Triton, TritonConfig

    models = {g: _checked_bytes(args.bundle, g, args.graphs[g]) for g in GRAPHS}
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the server as SIGINT does
    config = TritonConfig(http_address=args.host, http_port=args.port, allow_grpc=False, allow_metrics=False,
                          exit_on_error=True, log_verbose=0)
    with Triton(config=config) as triton:
        for g in GRAPHS:
            _bind_graph(triton, g, models.pop(g), max_batch=args.max_batch, instances=args.instances,
                        threads=args.threads, queue_delay_us=args.queue_delay_us)
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass  # leaving the `with` stops tritonserver and removes PyTriton's workspace
    return 0


if __name__ == "__main__":
    sys.exit(main())
