"""Triton client backend: a Runner whose graph runs on a Triton Inference Server (`triton://HOST:PORT`).

The server holds one model per graph, named after it ("encoder", "temporal", "spatial"), as
`stp_edge.scale.serve` binds them. Tensors travel in Triton's binary HTTP format, so float32 values arrive
bit for bit; `max_batch()` is the model's `max_batch_size`, so `infer_batched` splits larger batches. The Detector's
streaming is unchanged: it only swaps its runners, and `push_many` still sends the snippets of many cameras as
one batch (the server's dynamic batcher also merges requests of several Detectors).

tritonclient's HTTP client runs on gevent; use one runner (one Detector) per thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from stp_edge._deps import MissingDependencyError
from stp_edge.backends.base import Runner, RunnerError, TensorSpec
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
        timeout_s: How long `activate()` waits for the model to be ready; also the network timeout of a call.
        name: Runner name used in messages.
    """

    def __init__(self, url: str, model: str, *, timeout_s: float = 60.0, name: str | None = None) -> None:
        super().__init__(name or f"{model} (triton://{url})")
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        self.client: Any = None
        self.max_batch_size = 0
        self._http: Any = None
        self._inputs: dict[str, TensorSpec] = {}
        self._outputs: list[str] = []

    def activate_impl(self) -> None:
        http = load_tritonclient()
        from tritonclient.utils import InferenceServerException

        self._http = http
        self.client = http.InferenceServerClient(self.url, connection_timeout=self.timeout_s,
                                                 network_timeout=self.timeout_s)
        deadline = time.monotonic() + self.timeout_s
        error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.client.is_model_ready(self.model):
                    break
            except (InferenceServerException, OSError) as exc:  # not up yet, or refused
                error = exc
            time.sleep(0.2)
        else:
            self._close()
            raise RunnerError(f"{self.name}: model {self.model!r} is not ready on {self.url} after "
                              f"{self.timeout_s}s" + (f": {error}" if error else ""))
        meta = self.client.get_model_metadata(self.model)
        self.max_batch_size = int(self.client.get_model_config(self.model).get("max_batch_size", 0))
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
        except InferenceServerException as exc:
            raise RunnerError(f"{self.name}: the server refused or failed the request: {exc}") from exc
        return {name: result.as_numpy(name) for name in self._outputs}
