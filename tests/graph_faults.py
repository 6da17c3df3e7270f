"""Real graphs that misbehave, for the output-check and backend-fault tests.

- `corrupt_graph` edits one output of a bundle's real ONNX graph (the nodes appended compute NaN as 0/0, +inf as
  1/+0, constants such as 4.85, halved probabilities, or a doubled last axis) and reseals the manifest, as an
  fp16 overflow or an attacker who knows the format would; the bundle still loads.
- `FaultyRunner` wraps a real runner (ONNX Runtime on CPU) and, on chosen calls only, raises before running it
  (a transient backend fault) or transforms what it returned.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.backends.base import Runner

KINDS = ("nan", "inf", "high", "low", "sum", "shape")


def _const(name: str, value: float) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _nodes(kind: str, raw: str, out: str) -> tuple[list, list]:
    """Nodes (and initializers) computing `out` from the graph's own `raw` output."""
    from onnx import helper

    zero = [helper.make_node("Mul", [raw, "fault_zero"], ["fault_z"]),
            helper.make_node("Abs", ["fault_z"], ["fault_pz"])]  # +0 everywhere, shaped like raw
    if kind == "nan":  # 0/0
        return [*zero, helper.make_node("Div", ["fault_pz", "fault_pz"], [out])], [_const("fault_zero", 0.0)]
    if kind == "inf":  # (0 + 1) / +0
        return ([*zero, helper.make_node("Add", ["fault_pz", "fault_one"], ["fault_1"]),
                 helper.make_node("Div", ["fault_1", "fault_pz"], [out])],
                [_const("fault_zero", 0.0), _const("fault_one", 1.0)])
    if kind in ("high", "low"):  # 4.85 or -2.5 everywhere
        value = 4.85 if kind == "high" else -2.5
        return ([*zero, helper.make_node("Add", ["fault_pz", "fault_value"], [out])],
                [_const("fault_zero", 0.0), _const("fault_value", value)])
    if kind == "sum":  # probabilities halved: each in [0, 1], summing to 0.5
        return [helper.make_node("Mul", [raw, "fault_half"], [out])], [_const("fault_half", 0.5)]
    if kind == "shape":  # the last axis doubled, while the graph still declares the contract's shape
        return [helper.make_node("Concat", [raw, raw], [out], axis=-1)], []
    raise ValueError(f"unknown fault kind {kind!r}")


def corrupt_graph(src: Path, dst: Path, graph: str, output: str, kind: str) -> Path:
    """A copy of bundle `src` at `dst` whose `graph` computes `output` wrongly (`kind`), manifest resealed."""
    import onnx

    from stp_edge.bundle import MANIFEST, rewrite_manifest, sha256_file

    shutil.copytree(src, dst)
    path = dst / f"{graph}.onnx"
    model = onnx.load(str(path))
    raw = f"{output}_raw"
    for node in model.graph.node:
        node.output[:] = [raw if o == output else o for o in node.output]
    nodes, inits = _nodes(kind, raw, output)
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    onnx.save(model, str(path))
    manifest = json.loads((dst / MANIFEST).read_text(encoding="utf-8"))
    for f in manifest["files"]:
        manifest["files"][f] = sha256_file(dst / f)
    rewrite_manifest(dst, manifest)
    return dst


class WrappedRunner(Runner):
    """A runner whose calls go to a real runner `inner` (activated, deactivated and described by it); subclasses
    change what its `infer` does or what it says of its limits."""

    def __init__(self, inner: Runner, name: str | None = None) -> None:
        super().__init__(inner.name if name is None else name)
        self.inner = inner

    def activate_impl(self) -> None:
        self.inner.activate()

    def deactivate_impl(self) -> None:
        self.inner.deactivate()

    def input_specs_impl(self) -> dict[str, Any]:
        return self.inner.input_specs()

    def output_names_impl(self) -> list[str]:
        return self.inner.output_names()


class FaultyRunner(WrappedRunner):
    """A real runner that fails or returns altered outputs on chosen calls (numbered from 0), and only on those.

    Args:
        inner: The real runner (not yet active).
        fail: Calls that raise `error` before the real runner runs (a backend fault).
        alter: Call -> function of the real outputs returning the outputs given back.
        error: The exception raised on a failing call (default: a RuntimeError naming the call).
    """

    def __init__(self, inner: Runner, *, fail: Iterable[int] = (),
                 alter: Mapping[int, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] | None = None,
                 error: Callable[[int], Exception] | None = None) -> None:
        super().__init__(inner)
        self.fail = set(fail)
        self.alter = dict(alter or {})
        self.error = error or (lambda n: RuntimeError(f"injected backend fault on call {n}"))
        self.calls = 0

    def infer_impl(self, feeds):
        n, self.calls = self.calls, self.calls + 1
        if n in self.fail:
            raise self.error(n)
        out = self.inner.infer(feeds)
        return self.alter[n](out) if n in self.alter else out


def detector(bundle: Path, *, faulty: str | None = None, spatial_on: str = "all", **kwargs: Any):
    """A Detector on ONNX Runtime CPU runners; `faulty`: the graph whose runner is a `FaultyRunner(**kwargs)`.

    `on_invalid` and `lookahead` in `kwargs` go to the Detector.

    Returns the Detector and the FaultyRunner (or None).
    """
    from stp_edge.api import Detector
    from stp_edge.backends.ort import OrtRunner
    from stp_edge.bundle import GRAPH_NAMES, Bundle
    from stp_edge.pipeline.encode import make_preprocess

    on_invalid, lookahead = kwargs.pop("on_invalid", "error"), kwargs.pop("lookahead", None)
    b = Bundle.load(bundle)
    runners: dict[str, Runner] = {g: OrtRunner(b.graph_path(g), name=f"{g}.onnx (ort-cpu)") for g in GRAPH_NAMES}
    wrapped = None
    if faulty is not None:
        runners[faulty] = wrapped = FaultyRunner(runners[faulty], **kwargs)
    pre = make_preprocess("cpu", b.config.vision.image_size, backend="ort-cpu")
    return Detector(b, runners, pre, spatial_on=spatial_on, backend="ort-cpu", on_invalid=on_invalid,
                    lookahead=lookahead), wrapped


def stream(det, frames, stream_id: int = 0) -> list:
    """Push `frames` into one stream, then flush it; every result, in order."""
    out = []
    for f in frames:
        out += det.push(f, stream_id)
    return out + det.flush(stream_id)


def summary(results) -> list[tuple]:
    """What two runs must agree on, per result (exact: both runs compute the same floats)."""
    return [(r.stream, r.snippet, r.frame_start, r.frame_end, r.final, None if r.score != r.score else r.score,
             r.class_id,
             None if r.region_scores is None else r.region_scores.tolist(), len(r.boxes), r.invalid_reason)
            for r in results]
