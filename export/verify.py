"""Parity: the same fresh random inputs through torch, ONNX Runtime (and TensorRT when present), per output.

Errors are reported as max abs and relative error, where relative = max|got - ref| / max|ref| (the error
measured against the output's scale, which stays meaningful for outputs near zero), against named tolerances:
`fp32` relative <= 1e-4, `fp16` relative <= 1e-2.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2}


@dataclass
class VerifyRow:
    """One output of one graph on one backend compared with torch."""

    graph: str
    output: str
    backend: str
    tolerance: str
    max_abs: float
    rel: float
    ok: bool


@dataclass
class VerifyReport:
    """All rows of a verify run; `ok` when every row is within its tolerance."""

    bundle: str
    seed: int
    rows: list[VerifyRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def table(self) -> str:
        head = f"{'graph':<9} {'output':<14} {'backend':<10} {'max abs':>11} {'rel':>11} {'tol':>12}  result"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            tol = f"{r.tolerance}<={TOLERANCES[r.tolerance]:.0e}"
            lines.append(f"{r.graph:<9} {r.output:<14} {r.backend:<10} {r.max_abs:11.3e} {r.rel:11.3e} {tol:>12}  "
                         f"{'ok' if r.ok else 'FAIL'}")
        return "\n".join(lines)


def compare(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, relative error against the reference's scale); NaN or shape mismatch is infinite."""
    if got.shape != ref.shape or not np.isfinite(got).all():
        return float("inf"), float("inf")
    err = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    scale = float(np.abs(ref).max())
    return err, err / max(scale, 1e-12)


def verify_bundle(
    bundle: str | Path,
    *,
    checkpoint: str | Path | None = None,
    seed: int | None = None,
    batch: int = 2,
    backends: Sequence[str] = ("ort",),
    report: Callable[[str], None] | None = print,
) -> VerifyReport:
    """Run fresh random inputs through torch and each backend for every graph of `bundle`."""
    from stp_edge.backends.torch import TorchRunner
    from stp_edge.bundle import Bundle
    from stp_edge.export.sources import ModelSource, build_model, weights_fingerprint
    from stp_edge.model.graphs import build_graphs, random_inputs

    b = Bundle.load(bundle)
    seed = secrets.randbelow(2**31) if seed is None else seed
    rep = VerifyReport(str(b.path), seed)
    source_d = dict(b.manifest.get("source") or {})
    if checkpoint:
        source_d = {"kind": "checkpoint", "checkpoint": str(checkpoint)}
    if not source_d:
        raise ValueError(f"bundle {b.path} records no model source; pass checkpoint=")
    model = build_model(ModelSource.from_manifest(source_d))
    want = (b.manifest.get("source") or {}).get("weights_sha256")
    got = weights_fingerprint(model)
    if want and got != want:
        raise ValueError(f"the rebuilt torch model's weights (sha256 {got[:12]}) differ from the exported ones "
                         f"({want[:12]}); pass the checkpoint the bundle was exported from")
    feeds = random_inputs(b.config, seed, batch)
    reference = build_graphs(model)
    for graph, graph_feeds in feeds.items():
        with TorchRunner(reference[graph], graph) as runner:
            ref = runner.infer(graph_feeds)
        for backend in backends:
            outputs, precision = _run_backend(b, graph, backend, graph_feeds, rep)
            tol = "fp16" if precision == "fp16" else "fp32"
            for out_name, out in outputs.items():
                max_abs, rel = compare(out, ref[out_name])
                rep.rows.append(VerifyRow(graph, out_name, backend, tol, max_abs, rel, rel <= TOLERANCES[tol]))
    if report:
        report(f"verify {b.path} (precision {b.precision}, seed {seed}, batch {batch})")
        report(rep.table())
        for n in rep.notes:
            report(f"note: {n}")
        report("PASS" if rep.ok else "FAIL")
    return rep


def _run_backend(b, graph: str, backend: str, feeds: dict, rep: VerifyReport) -> tuple[dict, str]:
    """(outputs, precision they were computed at) of one graph on one backend."""
    if backend == "ort":
        from stp_edge.backends.ort import OrtRunner

        with OrtRunner(b.graph_path(graph)) as runner:
            return runner.infer(feeds), b.precision
    if backend == "trt":
        from stp_edge.backends.trt import TrtRunner, cuda_device_info, load_trt

        if not b.engines:
            rep.notes.append(f"{graph}: bundle has no TensorRT engines; trt skipped")
            return {}, b.precision
        gpu, cc = cuda_device_info(0)
        engine = b.select_engine(tensorrt_version=load_trt().__version__, compute_capability=cc, gpu_name=gpu)
        with TrtRunner(b.plan_path(engine, graph),
                       allow_host_code=bool(engine.build_flags.get("version_compatible"))) as runner:
            return runner.infer(feeds), engine.precision
    raise ValueError(f"unknown backend {backend!r}; expected 'ort' or 'trt'")
