"""OpenVINO backend: the bundle's ONNX graphs on Intel/AMD CPUs ("CPU") and Intel GPUs ("GPU").

OpenVINO reads the ONNX files directly (no conversion step, no extra artifact), including the Q/DQ INT8
encoder, which it runs with int8 kernels (VNNI, AMX). Two compile options matter for speed:
`INFERENCE_PRECISION_HINT` ("f32" keeps float graphs in fp32; "bf16" computes them in bf16 where the CPU has
AVX512_BF16 or AMX; OpenVINO picks bf16 by itself on such CPUs unless told "f32", so the runner always says
which) and `INFERENCE_NUM_THREADS` (set like ONNX Runtime's intra-op threads: `set_intra_op_threads`).

Run-time bounds (`stp_edge.backends.calls`): a call past its deadline or a stop request is ended with
`InferRequest.cancel()`. OpenVINO has no memory arena to cap: `CallLimits.memory_limit_gib` is not enforced
here (an allocation the system refuses is a `MemoryLimitError`). `openvino` is imported when a runner
activates; missing, the error names the extra (`pip install 'stp-edge[openvino]'`).

OpenVINO is imported without its model-conversion tools (`import_openvino`): `import openvino` also imports
`openvino.tools.ovc`, which sends a usage-telemetry event (Google Analytics, from a forked process) unless the
user opted out, and that fork aborts host processes that hold threads of their own (a GStreamer pipeline running
the stpedge element). The runtime needs only `Core`, which reads the ONNX files itself.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge._deps import require
from stp_edge.backends.base import InputError, Runner, RunnerError, TensorSpec, feed_layout
from stp_edge.backends.calls import CallLimits
from stp_edge.backends.errors import CallError, MemoryLimitError
from stp_edge.errors import UsageError

DEVICES = ("CPU", "GPU")
PRECISION_HINTS = ("f32", "bf16", "f16")


_OVC = "openvino.tools.ovc"
_IMPORT_LOCK = threading.Lock()


class _WithoutOvc(importlib.abc.MetaPathFinder):
    """Refuses `openvino.tools.ovc` while `import_openvino` imports openvino (whose __init__ tolerates that)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == _OVC:
            raise ImportError(f"{_OVC} is not loaded by stp-edge (it sends usage telemetry on import)")
        return None


def import_openvino() -> Any:
    """The `openvino` module, imported without `openvino.tools.ovc` (see the module doc) unless already loaded.

    `convert_model` is then absent from the `openvino` namespace; `from openvino.tools.ovc import convert_model`
    still works for a caller who wants it (and its telemetry).
    """
    with _IMPORT_LOCK:
        if sys.modules.get("openvino") is not None:
            return sys.modules["openvino"]
        finder = _WithoutOvc()
        sys.meta_path.insert(0, finder)
        try:
            return require("openvino", "the openvino backend")
        finally:
            sys.meta_path.remove(finder)
            sys.modules.pop(_OVC, None)


def openvino_devices() -> tuple[str, ...]:
    """Devices the installed OpenVINO sees ("CPU", "GPU", "GPU.0", ...); imports openvino."""
    ov = import_openvino()
    return tuple(ov.Core().available_devices)


def compile_config(device: str, precision: str | None, threads: int | None) -> dict[str, str]:
    """The compile options for `device`: the precision hint and, on the CPU, the thread count.

    Raises:
        UsageError: An unknown device, precision hint or thread count.
    """
    if device.split(".")[0] not in DEVICES:
        raise UsageError(f"OpenVINO device must be one of {DEVICES} (or GPU.N), got {device!r}")
    if precision is not None and precision not in PRECISION_HINTS:
        raise UsageError(f"OpenVINO precision hint must be one of {PRECISION_HINTS}, got {precision!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a whole number >= 1, got {threads!r}")
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    if threads is not None and device == "CPU":  # a GPU has no host thread pool to size
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def _numpy_dtype(element_type: Any) -> np.dtype:
    try:
        return np.dtype(element_type.to_dtype())
    except (TypeError, RuntimeError) as exc:
        raise RunnerError(f"unsupported OpenVINO tensor type {element_type}") from exc


class OpenVinoRunner(Runner):
    """Runs one ONNX graph with OpenVINO.

    Args:
        path: The .onnx file.
        device: "CPU", "GPU" (an Intel GPU) or "GPU.N".
        precision: INFERENCE_PRECISION_HINT: "f32", "bf16" or "f16"; None: OpenVINO's own choice (bf16 on
            CPUs that have it). An int8 Q/DQ graph runs its quantized ops in int8 whatever the hint.
        intra_op_num_threads: INFERENCE_NUM_THREADS on the CPU (None: OpenVINO's default, every core).
        name: Runner name used in messages (default: the file name).
        limits: Call deadline and stop grace (`CallLimits`; no memory cap, see the module).
    """

    takes_cpu_threads = True

    def __init__(self, path: str | os.PathLike, *, device: str = "CPU", precision: str | None = "f32",
                 intra_op_num_threads: int | None = None, name: str | None = None,
                 limits: CallLimits | None = None) -> None:
        self.path = Path(path)
        super().__init__(name or self.path.name, limits=limits)
        compile_config(device, precision, intra_op_num_threads)  # refuse bad options now, not at activate
        self.device = device
        self.precision = precision
        self.intra_op_num_threads = intra_op_num_threads
        self.compiled: Any = None
        self.execution_precision: str | None = None  # what OpenVINO reports it compiled to
        self._request: Any = None
        self._ports: list[Any] = []

    def activate_impl(self) -> None:
        ov = import_openvino()
        if not self.path.is_file():
            raise RunnerError(f"{self.name}: ONNX file {self.path} does not exist")
        core = ov.Core()
        if self.device not in core.available_devices:
            raise RunnerError(f"{self.name}: OpenVINO device {self.device!r} is not present here; this OpenVINO "
                              f"sees {list(core.available_devices)} (an Intel GPU needs its compute runtime)")
        config = compile_config(self.device, self.precision, self.intra_op_num_threads)
        try:
            self.compiled = core.compile_model(core.read_model(str(self.path)), self.device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError/OVError subclasses with multi-line text
            why = " ".join(str(exc).split())[:500]
            raise RunnerError(f"{self.name}: OpenVINO cannot load {self.path} on {self.device}: {why}") from exc
        self.execution_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._request = self.compiled.create_infer_request()
        self._ports = list(self.compiled.outputs)

    def deactivate_impl(self) -> None:
        self._request = None
        self._ports = []
        self.compiled = None

    def input_specs_impl(self) -> dict[str, TensorSpec]:
        specs = {}
        for port in self.compiled.inputs:
            shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
            specs[port.get_any_name()] = TensorSpec(port.get_any_name(), _numpy_dtype(port.get_element_type()),
                                                    shape)
        return specs

    def output_names_impl(self) -> list[str]:
        return [port.get_any_name() for port in self._ports]

    def cancel_impl(self) -> None:
        """`InferRequest.cancel()`: OpenVINO ends the running inference early."""
        request = self._request
        if request is not None:
            request.cancel()

    def infer_impl(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            if feed_layout(value)[2] is not None:
                raise InputError(f"{self.name}: input {name!r} is a device buffer; OpenVINO takes host numpy arrays")
        if self.call_cancelled.is_set():
            raise CallError(f"{self.name}: the call was cancelled before it began")
        try:
            results = self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        except MemoryError as exc:
            raise MemoryLimitError(f"{self.name} asked for memory that this machine could not allocate; lower "
                                   f"the batch or the number of streams") from exc
        except RuntimeError as exc:
            raise CallError(f"{self.name}: OpenVINO failed the call: {' '.join(str(exc).split())[:500]}") from exc
        # The request reuses its output buffers on the next call: copy them out.
        return {port.get_any_name(): np.array(results[port]) for port in self._ports}
