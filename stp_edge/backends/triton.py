"""Triton client backend: a Runner whose graph runs on a Triton Inference Server (`triton://HOST:PORT`).

The server holds one model per graph, named after it ("encoder", "temporal", "spatial"), as
`stp_edge.scale.serve` binds them. Tensors travel in Triton's binary HTTP format, so float32 values arrive
bit for bit; `max_batch()` is the model's `max_batch_size`, so `infer_batched` splits larger batches. The Detector's
streaming is unchanged: it only swaps its runners, and `push_many` still sends the snippets of many cameras as
one batch (the server's dynamic batcher also merges requests of several Detectors).

tritonclient's HTTP client runs on gevent, whose objects belong to the thread that made them: the client is made,
used and closed on the runner's worker thread (`stp_edge.backends.calls`), whichever thread calls the runner.

Faults are one-line errors within stated times: a server that does not answer is reported after
`CallLimits.connect_timeout_s` (5 s; `--connect-timeout`), a call that gets no answer (a frozen server) after the
call deadline (20 s; `--call-timeout`), a lost connection (a killed server) at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from stp_edge._deps import MissingDependencyError
from stp_edge.backends.base import Runner, RunnerError, TensorSpec
from stp_edge.backends.calls import CallLimits, format_seconds
from stp_edge.backends.errors import CallError, CallTimeoutError
from stp_edge.errors import UsageError

SCHEME = "triton://"
TRITON_DTYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64,
                 "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def parse_triton_url(backend: str) -> str:
    """"triton://HOST:PORT" -> "HOST:PORT" (the client's url).

    Raises:
        ValueError: Not a triton:// name, or no host and port.
    """
    if not backend.startswith(SCHEME):
        raise UsageError(f"not a Triton backend name: {backend!r} (expected {SCHEME}HOST:PORT)")
    parts = urlsplit(backend)
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{backend!r}: invalid port ({exc})") from None
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"{backend!r}: expected {SCHEME}HOST:PORT, e.g. {SCHEME}127.0.0.1:8000")
    return parts.netloc


def load_tritonclient() -> Any:
    """`tritonclient.http`, or MissingDependencyError naming the extra."""
    try:
        import tritonclient.http as httpclient
    except ImportError as exc:
        raise MissingDependencyError(f"tritonclient is not installed (needed for the triton:// backend): "
                                     f"pip install 'stp-edge[scale]'. Original error: {exc}") from exc
    return httpclient


class TritonRunner(Runner):
    """Runs one graph on a Triton server.

    Args:
        url: "HOST:PORT" of the server's HTTP endpoint.
        model: The Triton model name.
        name: Runner name used in messages.
        limits: `connect_timeout_s`: how long `activate()` tries to reach the server and its model;
            `call_timeout_s`: the deadline of a call, also the client's network timeout (default 20 s).
    """

    default_call_timeout_s = 20.0  # a server answers a batch in well under a second; silence means it froze

    def __init__(self, url: str, model: str, *, name: str | None = None, limits: CallLimits | None = None) -> None:
        super().__init__(name or f"{model} (triton://{url})", limits=limits)
        self.url = url
        self.model = model
        self.client: Any = None
        self.max_batch_size = 0
        self._http: Any = None
        self._inputs: dict[str, TensorSpec] = {}
        self._outputs: list[str] = []

    def activate_impl(self) -> None:
        http = load_tritonclient()

        self._http = http
        connect_s = self.limits.connect_timeout_s
        call_s = self.limits.timeout_for(self.default_call_timeout_s)
        # Reaching the server and reading the model are bounded by the connect timeout, calls by their deadline.
        self.client = http.InferenceServerClient(self.url, connection_timeout=connect_s, network_timeout=connect_s)
        try:
            self._wait_ready(connect_s)
            meta = self.client.get_model_metadata(self.model)
            self.max_batch_size = int(self.client.get_model_config(self.model).get("max_batch_size", 0))
            self._read_metadata(meta)
        except Exception as exc:
            if isinstance(exc, RunnerError):
                raise
            raise self._failure(exc, "reading the model's metadata", connect_s) from exc
        finally:
            self._close()
        self.client = http.InferenceServerClient(self.url, connection_timeout=connect_s,
                                                 network_timeout=call_s if call_s is not None else 1e9)

    def _wait_ready(self, connect_s: float) -> None:
        """Poll until the model is ready, for `connect_s` seconds; a server that never answers is a RunnerError."""
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + connect_s
        error: Exception | None = None
        while True:
            try:
                if self.client.is_model_ready(self.model):
                    return
                error = None  # the server answers; the model is still loading
            except (InferenceServerException, OSError, HTTPException) as exc:  # not up, refused, or no answer
                error = exc
            if time.monotonic() + 0.2 >= deadline:
                break
            time.sleep(0.2)
        hint = "raise the wait with --connect-timeout SECONDS (Python: CallLimits(connect_timeout_s=...))"
        if error is None:
            raise RunnerError(f"{self.name}: the server at {self.url} answers but model {self.model!r} is not "
                              f"ready after {format_seconds(connect_s)}; {hint}")
        raise RunnerError(f"{self.name}: no Triton server answers at {self.url} after {format_seconds(connect_s)} "
                          f"({type(error).__name__}: {' '.join(str(error).split())}): start one "
                          f"(stp-edge serve BUNDLE --port PORT) or check the address, or {hint}")

    def _read_metadata(self, meta: Mapping[str, Any]) -> None:
        self._inputs = {}
        for t in meta["inputs"]:
            if t["datatype"] not in TRITON_DTYPES:
                raise RunnerError(f"{self.name}: input {t['name']!r} has unsupported type {t['datatype']}")
            self._inputs[t["name"]] = TensorSpec(t["name"], np.dtype(TRITON_DTYPES[t["datatype"]]),
                                                 tuple(int(d) for d in t["shape"]))
        self._outputs = [t["name"] for t in meta["outputs"]]

    def _close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None

    def deactivate_impl(self) -> None:
        self._close()

    def input_specs_impl(self) -> dict[str, TensorSpec]:
        return dict(self._inputs)

    def output_names_impl(self) -> list[str]:
        return list(self._outputs)

    def max_batch(self) -> int | None:
        """The model's `max_batch_size` (None when the server does not batch it)."""
        self._require_active("max_batch")
        return self.max_batch_size or None

    def _failure(self, exc: Exception, doing: str, waited_s: float | None) -> CallError:
        """One line for a failed request: no answer in time, the connection lost, or the server's refusal."""
        from tritonclient.utils import InferenceServerException

        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            return CallTimeoutError(f"{self.name}: the server at {self.url} did not answer within "
                                    f"{format_seconds(waited_s or 0)} while {doing} (frozen or overloaded?); "
                                    f"if it is only slow, raise the deadline: --call-timeout SECONDS "
                                    f"(--connect-timeout while connecting)")
        if isinstance(exc, (OSError, HTTPException)):  # refused, reset, closed mid-answer (geventhttpclient)
            return CallError(f"{self.name}: lost the connection to the Triton server at {self.url} while {doing} "
                             f"({type(exc).__name__}: {text}); is the server still running?")
        if isinstance(exc, InferenceServerException):
            return CallError(f"{self.name}: the server at {self.url} refused or failed the request while "
                             f"{doing}: {text}")
        return CallError(f"{self.name}: the request to {self.url} failed while {doing} "
                         f"({type(exc).__name__}: {text})")

    def infer_impl(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        http = self._http
        inputs = []
        for name, value in feeds.items():
            value = np.ascontiguousarray(value)
            item = http.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            item.set_data_from_numpy(value, binary_data=True)
            inputs.append(item)
        outputs = [http.InferRequestedOutput(name, binary_data=True) for name in self._outputs]
        try:
            result = self.client.infer(self.model, inputs, outputs=outputs)
        except (InferenceServerException, OSError, HTTPException) as exc:
            raise self._failure(exc, "running a batch", self.limits.timeout_for(self.default_call_timeout_s)) from exc
        return {name: result.as_numpy(name) for name in self._outputs}
