"""The installed CPU backends side by side on a bundle's encoder: ONNX Runtime and OpenVINO, by form.

What `--precision auto` weighs (`stp_edge.machine.choose_cpu_form`), measured on this machine: every (backend,
form) the encoder graphs allow, at batch 1 and one thread count, called in turn round by round so machine noise
hits all alike; medians, each one's ratio to the first case, and its worst output cosine against that case.
Used by `stp-edge bench` and benchmarks/bench_backends.py.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FormCase:
    """One encoder run to compare: label, backend ("ort-cpu"/"openvino"), graph form, OpenVINO precision hint."""

    label: str
    backend: str
    graph: str
    hint: str | None = None


CASES = (
    FormCase("ORT fp32", "ort-cpu", "fp32"),
    FormCase("ORT fp16", "ort-cpu", "fp16"),
    FormCase("ORT int8 static (Q/DQ)", "ort-cpu", "int8-static"),
    FormCase("ORT int8 dynamic (MatMulInteger)", "ort-cpu", "int8-dynamic"),
    FormCase("OpenVINO fp32", "openvino", "fp32", "f32"),
    FormCase("OpenVINO bf16", "openvino", "fp32", "bf16"),
    FormCase("OpenVINO fp16 graph, f32", "openvino", "fp16", "f32"),
    FormCase("OpenVINO bf16 (fp16 graph)", "openvino", "fp16", "bf16"),
    FormCase("OpenVINO int8 (Q/DQ)", "openvino", "int8-static", "f32"),
)


def installed_cpu_backends() -> set[str]:
    """The CPU backends whose package is installed ("ort-cpu", "openvino"); nothing is imported."""
    return {b for b, mod in (("ort-cpu", "onnxruntime"), ("openvino", "openvino"))
            if importlib.util.find_spec(mod) is not None}


def cases_for(graphs: Mapping[str, Any], installed: set[str]) -> list[FormCase]:
    """The cases that the given encoder graphs ({graph form: path}) and the installed backends can run."""
    return [c for c in CASES if c.graph in graphs and c.backend in installed]


def _runner(case: FormCase, path: Path, threads: int | None) -> Any:
    if case.backend == "ort-cpu":
        from stp_edge.backends.ort import OrtRunner

        return OrtRunner(path, intra_op_num_threads=threads, name=case.label)
    from stp_edge.backends.openvino import OpenVinoRunner

    return OpenVinoRunner(path, precision=case.hint, intra_op_num_threads=threads, name=case.label)


def _worst_cosine(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for k, r in ref.items():
        a, b = r.reshape(-1, r.shape[-1]).astype(np.float64), got[k].reshape(-1, r.shape[-1]).astype(np.float64)
        cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        out[k] = round(float(cos.min()), 6)
    return out


def compare_forms(graphs: Mapping[str, str | Path], images: np.ndarray, *, threads: int | None = None,
                  reps: int = 9, installed: set[str] | None = None) -> list[dict[str, Any]]:
    """Encoder ms per image (batch 1, medians of `reps` alternated rounds) and fidelity of every runnable case.

    Args:
        graphs: {graph form ("fp32", "int8-static", ...): encoder .onnx path}.
        images: Preprocessed images [N, 3, S, S] float32; image 0 is timed, all N are compared.
        threads: Threads per operator for every case (None: each backend's default, every core).
        reps: Rounds; each round calls every case once, in turn.
        installed: The CPU backends to use (default: `installed_cpu_backends()`).

    Returns:
        One row per case: label, backend, graph, hint, executed_in, median_ms, vs_first, worst_cosine (against
        the first case, on all `images`).
    """
    cases = cases_for(graphs, installed_cpu_backends() if installed is None else installed)
    runners = [_runner(c, Path(graphs[c.graph]), threads) for c in cases]
    x = np.ascontiguousarray(images[:1])
    times: list[list[float]] = [[] for _ in cases]
    try:
        for r in runners:
            r.activate()
            r.infer({"images": x})  # warm-up: first-call allocations, OpenVINO's per-shape compilation
        for _ in range(reps):
            for i, r in enumerate(runners):
                t0 = time.perf_counter()
                r.infer({"images": x})
                times[i].append((time.perf_counter() - t0) * 1e3)
        outputs = [r.infer({"images": images}) for r in runners]
    finally:
        for r in runners:
            if r.is_active:
                r.deactivate()
    if not cases:
        return []
    base = statistics.median(times[0])
    return [{"label": c.label, "backend": c.backend, "graph": c.graph, "hint": c.hint,
             "executed_in": getattr(r, "execution_precision", None) or c.graph,
             "median_ms": round(statistics.median(t), 2), "vs_first": round(statistics.median(t) / base, 3),
             "ms": [round(v, 2) for v in t], "worst_cosine": _worst_cosine(outputs[0], out)}
            for c, r, t, out in zip(cases, runners, times, outputs, strict=True)]


def forms_markdown(rows: list[dict[str, Any]], first: str) -> list[str]:
    """The comparison as markdown table lines."""
    if not rows:
        return []
    keys = list(rows[0]["worst_cosine"])
    lines = [f"| backend, form | encoder ms per image (median) | vs {first} | worst cosine vs {first} "
             f"({' / '.join(keys)}) |", "|---|---:|---:|---:|"]
    for r in rows:
        cos = " / ".join(f"{r['worst_cosine'][k]:.5f}" for k in keys)
        lines.append(f"| {r['label']} | {r['median_ms']:.1f} | {r['vs_first']:.2f}x | {cos} |")
    return lines
