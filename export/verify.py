"""Parity: the same fresh random inputs through torch, ONNX Runtime (and TensorRT when present), per output.

Errors are reported as max abs and relative error, where relative = max|got - ref| / max|ref| (the error
measured against the output's scale, which stays meaningful for outputs near zero), against named tolerances:
`fp32` relative <= 1e-4, `fp16` relative <= 1e-2, and for an INT8 (Q/DQ) encoder `int8`: embedding cosine >= 0.99
(worst row), since quantization noise is judged by direction, which the temporal and spatial heads read
(cosines to text features), not by elementwise error. An INT8 encoder is fed preprocessed synthetic frames (fresh
seed) instead of Gaussian noise: noise far outside the calibrated ranges measures clipping, not the model; and
its report adds `pipeline` rows, the score and class-probability deltas of encoder -> temporal against torch
(reported, no tolerance). Each graph is held to the tolerance of the precision it was
recorded at: an fp16 bundle's encoder to fp16, its fp32 heads to fp32 (the manifest's `graph_precision`, and for
TensorRT plans the engine set's per-graph `build_flags`).

Backends come from the one factory (`stp_edge.backends.choose_backend` + `create_runners`), the same runners
`Detector.load` uses; for TensorRT the report names the plans the runners loaded (`TrtRunner.engine_info`).
The torch reference is rebuilt from the bundle's recorded source, but a checkpoint *path* named inside a bundle
is never opened unless the caller names it (`checkpoint=`): a bundle is data, not a file reference to follow.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stp_edge.errors import UsageError

TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.99}  # int8: minimum embedding cosine


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
    cosine: float | None = None  # worst-row cosine to torch (int8 rows)


@dataclass
class VerifyReport:
    """All rows of a verify run; `ok` when every row is within its tolerance."""

    bundle: str
    seed: int
    rows: list[VerifyRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trt_plans: dict[str, str] = field(default_factory=dict)  # graph -> the plan its TensorRT runner loaded, and how

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def table(self) -> str:
        head = (f"{'graph':<9} {'output':<14} {'backend':<10} {'max abs':>11} {'rel':>11} {'cosine':>9} "
                f"{'tol':>14}  result")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            tol = (f"{r.tolerance}<={TOLERANCES[r.tolerance]:.0e}" if r.tolerance in ("fp32", "fp16")
                   else f"cos>={TOLERANCES[r.tolerance]}" if r.tolerance == "int8" else r.tolerance)
            cos = f"{r.cosine:9.5f}" if r.cosine is not None else f"{'':>9}"
            lines.append(f"{r.graph:<9} {r.output:<14} {r.backend:<10} {r.max_abs:11.3e} {r.rel:11.3e} {cos} "
                         f"{tol:>14}  {'ok' if r.ok else 'FAIL'}")
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
    from stp_edge.model.graphs import build_graphs, random_inputs
    from stp_edge.model.sources import ModelSource, build_model, weights_fingerprint

    b = Bundle.load(bundle)
    seed = secrets.randbelow(2**31) if seed is None else seed
    rep = VerifyReport(str(b.path), seed)
    source_d = dict(b.manifest.get("source") or {})
    if checkpoint:  # the manifest's overrides (spatial queries chosen at export) still apply to it
        source_d = {"kind": "checkpoint", "checkpoint": str(checkpoint), "overrides": source_d.get("overrides", {})}
    elif source_d.get("kind") == "checkpoint" or source_d.get("clip_weights"):
        named = source_d.get("checkpoint") or source_d.get("clip_weights")
        raise UsageError(f"bundle {b.path} was exported from files ({named}); verify does not open paths named "
                         "inside a bundle: pass the checkpoint (--checkpoint) yourself")
    if not source_d:
        raise UsageError(f"bundle {b.path} records no model source; pass checkpoint=")
    model = build_model(ModelSource.from_manifest(source_d))
    want = (b.manifest.get("source") or {}).get("weights_sha256")
    got = weights_fingerprint(model)
    if want and got != want:
        raise UsageError(f"the rebuilt torch model's weights (sha256 {got[:12]}) differ from the exported ones "
                         f"({want[:12]}); pass the checkpoint the bundle was exported from")
    feeds = random_inputs(b.config, seed, batch)
    int8 = b.graph_precision("encoder") == "int8"
    if int8:
        feeds["encoder"]["images"] = synthetic_images(b.config, seed, batch)
    reference = build_graphs(model)
    choices = {backend: _choose(b, backend) for backend in backends}
    for graph, graph_feeds in feeds.items():
        with TorchRunner(reference[graph], graph) as runner:
            ref = runner.infer(graph_feeds)
        for backend in backends:
            outputs, precision = _run_backend(b, graph, choices[backend], graph_feeds, rep)
            tol = tolerance_name(precision)
            for out_name, out in outputs.items():
                max_abs, rel = compare(out, ref[out_name])
                if tol == "int8":
                    cos = embedding_cosine(out, ref[out_name])
                    rep.rows.append(VerifyRow(graph, out_name, backend, tol, max_abs, rel, cos >= TOLERANCES[tol],
                                              cos))
                else:
                    rep.rows.append(VerifyRow(graph, out_name, backend, tol, max_abs, rel, rel <= TOLERANCES[tol]))
    if int8:
        for backend in backends:
            rep.rows += _pipeline_rows(b, reference, feeds["encoder"]["images"], backend, choices[backend])
        rep.notes += int8_drift_notes(rep.rows, b.manifest)
    if report:
        report(f"verify {b.path} (precision {b.precision}, seed {seed}, batch {batch})")
        for graph, plan in rep.trt_plans.items():
            report(f"trt {graph}: {plan}")
        report(rep.table())
        for n in rep.notes:
            report(f"note: {n}")
        report("PASS" if rep.ok else "FAIL")
    return rep


def int8_drift_notes(rows: Sequence[VerifyRow], manifest: dict) -> list[str]:
    """One plain line per INT8 output below the cosine tolerance: what drifted, by how much, what to do."""
    q = (manifest.get("exporter") or {}).get("quantization") or {}
    recipe = (f"calibration {q.get('calibration_method', '?')}, smoothing {q.get('smoothing') or 'off'}, "
              f"MLP-out matmuls {q.get('mlp_out_matmuls', 'int8')}")
    return [f"{r.graph} {r.output} on {r.backend}: INT8 cosine to fp32 {r.cosine:.4f} < {TOLERANCES['int8']}: "
            f"this INT8 graph ({recipe}) drifts from the model; re-export with --precision fp16/fp32, or "
            f"calibrate on videos like the deployment's" for r in rows
            if r.tolerance == "int8" and r.cosine is not None and not r.ok]


def tolerance_name(precision: str) -> str:
    """The named tolerance of a graph computed at `precision` ("fp16", "int8", else "fp32")."""
    return precision if precision in ("fp16", "int8") else "fp32"


def embedding_cosine(got: np.ndarray, ref: np.ndarray) -> float:
    """Worst-row cosine similarity of [..., E] embeddings; 0 for NaN or a shape mismatch."""
    if got.shape != ref.shape or not np.isfinite(got).all():
        return 0.0
    g = got.reshape(-1, got.shape[-1]).astype(np.float64)
    r = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    den = np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
    return float(((g * r).sum(1) / den).min())


def synthetic_images(cfg, seed: int, n: int) -> np.ndarray:
    """n preprocessed frames [n, 3, S, S] of a fresh synthetic clip (in-distribution inputs for INT8)."""
    from stp_edge.preprocess import CpuPreprocessor
    from stp_edge.synthetic import generate_clip

    clip = generate_clip(seed, width=320, height=240, num_frames=max(16, 16 * n))
    return CpuPreprocessor(cfg.vision.image_size)(list(clip.frames[8::16][:n]))


def _choose(b, backend: str):
    """The `BackendChoice` verify runs `backend` ("ort" or "trt") with, or None for "trt" without engines."""
    from stp_edge.backends import choose_backend

    if backend not in ("ort", "trt"):
        raise UsageError(f"unknown backend {backend!r}; expected 'ort' or 'trt'")
    if backend == "trt" and not b.engines:
        return None
    return choose_backend(backend, b)


def _pipeline_rows(b, reference: dict, images: np.ndarray, backend: str, choice) -> list[VerifyRow]:
    """Score and class-prob deltas of encoder -> temporal on `backend` vs torch, the images as one window."""
    from stp_edge.backends import create_runners
    from stp_edge.backends.torch import TorchRunner
    from stp_edge.pipeline.encode import Encoder

    if choice is None:
        return []
    outs = []
    for runners in ({g: TorchRunner(reference[g], g) for g in ("encoder", "temporal")},
                    create_runners(b, choice.name, graphs=("encoder", "temporal"), engine=choice.engine)):
        with runners["encoder"] as enc, runners["temporal"] as temporal:
            frame_emb, region_emb = Encoder(enc, None, b.config).encode_images(images)
            outs.append(temporal.infer({"frame_emb": frame_emb[None], "region_emb": region_emb[None]}))
    ref, got = outs
    return [VerifyRow("pipeline", k, backend, "reported", *compare(got[k], ref[k]), True) for k in ref]


def _run_backend(b, graph: str, choice, feeds: dict, rep: VerifyReport) -> tuple[dict, str]:
    """(outputs, precision they were computed at) of one graph on the chosen backend; None: trt skipped."""
    from stp_edge.backends import create_runners

    if choice is None:
        rep.notes.append(f"{graph}: bundle has no TensorRT engines; trt skipped")
        return {}, b.graph_precision(graph)
    runner = create_runners(b, choice.name, graphs=(graph,), engine=choice.engine)[graph]
    with runner:
        outputs = runner.infer(feeds)
        if graph == "encoder" and "region_emb" not in outputs:
            outputs = _host_regions(b, runner, feeds["images"], rep)
    if choice.name == "trt":
        return outputs, _ran_trt(b, graph, runner, rep)
    return outputs, b.graph_precision(graph)


def _host_regions(b, runner, images: np.ndarray, rep: VerifyReport) -> dict[str, np.ndarray]:
    """frame_emb and region_emb of an encoder that returns patch_emb, with the regions computed as the runtime does.

    Bundles in the deprecated "host" region layout return patch_emb; the runtime derives region_emb on the host
    (`Encoder.host_regions`), and that is what is compared with torch's region_emb.
    """
    from stp_edge.pipeline.encode import Encoder

    note = ("encoder: this bundle computes region features on the host (a deprecated layout); region_emb is "
            "compared as the runtime derives it from the graph's patch_emb")
    if note not in rep.notes:
        rep.notes.append(note)
    frame_emb, region_emb = Encoder(runner, None, b.config).encode_images(images)
    return {"frame_emb": frame_emb, "region_emb": region_emb}


def _ran_trt(b, graph: str, runner, rep: VerifyReport) -> str:
    """Record the plan `runner` loaded in the report; the precision TensorRT built `graph` at (its build flags)."""
    from stp_edge.backends.trt import describe_engine

    engine = runner.engine_info
    plan = Path(runner.plan_path).relative_to(b.path).as_posix()
    rep.trt_plans[graph] = f"{plan} ({engine.precision}, built with {describe_engine(engine)})"
    return str(((engine.build_flags.get("graphs") or {}).get(graph) or {}).get("precision", engine.precision))
