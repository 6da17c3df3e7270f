"""The temporal adapter's two forms (issue 28 item 6): how far streaming is from offline, and what streaming costs.

    python benchmarks/bench_adapter_forms.py [--reps 200] [--lengths 64 256 1024] [--windows 2 4 8 16 32 64]

Forms: "distance" (ours, the default): A = rowwise softmax(-|i-j|/sigma), banded at the radius r where
exp(-r/sigma) < tol; "exp": A = rowwise softmax(exp(-|i-j|/sigma)), near-uniform (weights between 1 and e before
normalising), which no finite band represents. stp-edge defines the exp form on a window of radius W (training,
offline and streaming alike), so its streaming equals its offline exactly; what this script measures is how far
that windowed model is from the unwindowed exp form run on the whole video (what a paper implementation working
offline on whole videos would compute), and what each window costs when streaming.

1. Row mass beyond the radius: for a snippet in the middle of a video of T snippets, the share of its unwindowed
   adapter row that the band / window drops (distance: about tol; exp: about 1 - (2W+1)/T).
2. Output error: the adapter (L=2 layers, E=512, the ViT-B/16 head widths) and C-branch with random weights
   (seeded; not a trained model) on synthetic CLIP-like features (a slow random walk on the unit sphere with an
   anomalous stretch), windowed vs whole-video: max |score difference| over all snippets, for each T and W.
3. Streaming cost: context c = 1 + L r (the lookahead in snippets), the alert delay c * 16 / 30 s at 30 fps, the
   feature ring (2c+1 snippets of 512 + 9x512 floats), and the temporal graph's time per emitted snippet
   (ONNX Runtime CPU, the real exported temporal graph of a ViT-B/16-width model, B=1, T=2c+1; median and
   quartiles of --reps calls, the forms alternated call by call).
Saves benchmarks/results/adapter_forms.{md,json}. The machine is shared: timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SNIPPET_FRAMES, FPS = 16, 30.0


def row_mass_beyond(form: str, t: int, radius: int, sigma: float = 1.0) -> float:
    """Share of the middle row of the unwindowed adapter matrix (t snippets) at offsets beyond `radius`."""
    d = np.abs(np.arange(t) - t // 2).astype(np.float64)
    logits = np.exp(-d / sigma) if form == "exp" else -d / sigma
    w = np.exp(logits - logits.max())
    return float(w[d > radius].sum() / w.sum())


def _features(t: int, e: int, seed: int) -> np.ndarray:
    """A CLIP-like feature sequence: a slow random walk on the unit sphere, an anomalous stretch in the middle."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(0.15 * rng.standard_normal((t, e)), axis=0) + 3.0 * rng.standard_normal(e)
    x[t // 2: t // 2 + max(2, t // 16)] += 2.0 * rng.standard_normal(e)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def output_errors(lengths, windows, sigma: float, tol: float) -> list[dict]:
    """Max |score(windowed model) - score(unwindowed form, whole video)| per form, T and radius."""
    import torch

    from stp_edge.config import STPromptConfig
    from stp_edge.model.stprompt import STPrompt, banded_adapter_matrix

    torch.manual_seed(0)
    cfg = STPromptConfig.named("vit-b-16", adapter_sigma=sigma, adapter_tol=tol)
    cfg.vision.layers = cfg.text.layers = 1  # only the heads run here; their widths are ViT-B/16's
    model = STPrompt(cfg).eval()
    rows = []

    def scores(x, a):
        for layer in model.adapter:
            x = layer(x, a)
        return torch.sigmoid(model.c_branch(x)).squeeze(-1)

    cases = [("distance", cfg.adapter_radius)] + [("exp", w) for w in windows]
    with torch.no_grad():
        for t in lengths:
            x = torch.from_numpy(_features(t, cfg.vision.embed_dim, seed=t))[None]
            for form, radius in cases:
                a_whole = banded_adapter_matrix(t, sigma, t, form=form)
                a_windowed = banded_adapter_matrix(t, sigma, radius, form=form)
                mix_whole, mix_windowed = a_whole @ x[0], a_windowed @ x[0]  # the first mix: no weights involved
                mix_err = ((mix_windowed - mix_whole).norm(dim=-1) / mix_whole.norm(dim=-1)).max()
                err = (scores(x, a_whole) - scores(x, a_windowed)).abs()
                rows.append({"form": form, "T": t, "radius": radius, "max_rel_mix_error": float(mix_err),
                             "max_abs_score_error": float(err.max()),
                             "mean_abs_score_error": float(err.mean()),
                             "row_mass_beyond": row_mass_beyond(form, t, radius, sigma)})
    return rows


def _temporal_session(form: str, radius: int, sigma: float, tol: float, work: Path):
    """An ONNX Runtime session of the real exported temporal graph (ViT-B/16 widths) for one adapter form."""
    import onnxruntime as ort
    import torch

    from stp_edge.config import STPromptConfig
    from stp_edge.export.onnx_export import export_onnx
    from stp_edge.model.graphs import GRAPH_SPECS, build_graphs, random_inputs
    from stp_edge.model.stprompt import STPrompt

    torch.manual_seed(0)
    over = {"adapter_form": form, "adapter_sigma": sigma, "adapter_tol": tol}
    if form == "exp":
        over["adapter_window"] = radius
    cfg = STPromptConfig.named("vit-b-16", **over)
    cfg.vision.layers = cfg.text.layers = 1  # the temporal graph does not contain them
    model = STPrompt(cfg).eval()
    model.freeze_text()
    feeds = {k: torch.from_numpy(v) for k, v in random_inputs(cfg, seed=0, snippets=5)["temporal"].items()}
    path = work / f"temporal_{form}_{radius}.onnx"
    export_onnx(build_graphs(model)["temporal"], feeds, GRAPH_SPECS["temporal"], path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return cfg, ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def streaming_costs(windows, sigma: float, tol: float, reps: int) -> list[dict]:
    """Context, alert delay, ring bytes and the temporal graph's ms per emitted snippet, forms interleaved."""
    from stp_edge.config import STPromptConfig

    dist_radius = STPromptConfig(adapter_sigma=sigma, adapter_tol=tol).adapter_radius
    cases = [("distance", dist_radius)] + [("exp", w) for w in windows]
    with tempfile.TemporaryDirectory() as work:
        sessions = [(form, r, *_temporal_session(form, r, sigma, tol, Path(work))) for form, r in cases]
        rng = np.random.default_rng(0)
        feeds = []
        for _, _, cfg, _ in sessions:
            t = 2 * cfg.context + 1
            feeds.append({"frame_emb": rng.standard_normal((1, t, 512)).astype(np.float32),
                          "region_emb": rng.standard_normal((1, t, cfg.num_regions, 512)).astype(np.float32)})
        times = [[] for _ in sessions]
        for rep in range(reps):
            order = range(len(sessions)) if rep % 2 == 0 else reversed(range(len(sessions)))
            for i in order:
                start = time.perf_counter()
                sessions[i][3].run(None, feeds[i])
                times[i].append((time.perf_counter() - start) * 1e3)
    rows = []
    for (form, r, cfg, _), ms in zip(sessions, times, strict=True):
        c = cfg.context
        ring = (2 * c + 1) * (1 + cfg.num_regions) * 512 * 4
        q = np.percentile(ms, [25, 50, 75])
        rows.append({"form": form, "radius": r, "context": c, "window_T": 2 * c + 1,
                     "alert_delay_s": c * SNIPPET_FRAMES / FPS, "ring_bytes": ring,
                     "temporal_ms_p25": float(q[0]), "temporal_ms_median": float(q[1]),
                     "temporal_ms_p75": float(q[2])})
    return rows


def _markdown(machine: dict, errors: list[dict], costs: list[dict], sigma: float, tol: float) -> str:
    out = ["# Temporal adapter forms: streaming error and cost", "",
           f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('isa')} "
           "(shared with other jobs, "
           f"load {machine.get('load_avg_1m')}: timings are noisy). "
           f"sigma = {sigma}, tol = {tol}, L = 2 layers, E = 512. Random-weight heads (seeded), synthetic features: "
           "errors show how the forms behave, not a trained model's accuracy.", "",
           "## Windowed / banded model vs the unwindowed form on the whole video", "",
           "Row mass: the share of a middle snippet's unwindowed adapter row that the band / window drops. Mix "
           "error: max over snippets of ||A_window x - A x|| / ||A x|| for the first mix (no weights involved). "
           "Score error: after both layers and the C-branch (random weights).", "",
           "| form | T | radius | row mass beyond radius | max rel. mix error | max abs score error | "
           "mean abs score error |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r['form']} | {r['T']} | {r['radius']} | {r['row_mass_beyond']:.3g} | {r['max_rel_mix_error']:.3g} | "
            f"{r['max_abs_score_error']:.3g} | {r['mean_abs_score_error']:.3g} |" for r in errors]
    out += ["", "## Streaming cost (ONNX Runtime CPU, one thread, temporal graph per emitted snippet)", "",
            "| form | radius | context c (snippets) | window 2c+1 | alert delay at 30 fps | feature ring | "
            "temporal ms median [p25, p75] |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r['form']} | {r['radius']} | {r['context']} | {r['window_T']} | {r['alert_delay_s']:.1f} s | "
            f"{r['ring_bytes'] / 1024:.0f} KiB | {r['temporal_ms_median']:.2f} [{r['temporal_ms_p25']:.2f}, "
            f"{r['temporal_ms_p75']:.2f}] |" for r in costs]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--windows", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from stp_edge.machine import machine_info

    machine = machine_info()
    errors = output_errors(args.lengths, args.windows, args.sigma, args.tol)
    costs = streaming_costs([w for w in args.windows if w <= 32], args.sigma, args.tol, args.reps)
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = _markdown(machine, errors, costs, args.sigma, args.tol)
    (RESULTS / "adapter_forms.md").write_text(md)
    (RESULTS / "adapter_forms.json").write_text(json.dumps(
        {"machine": machine, "sigma": args.sigma, "tol": args.tol, "reps": args.reps, "errors": errors,
         "costs": costs, "note": "shared machine: timings noisy; random-weight heads, synthetic features"},
        indent=2) + "\n")
    print(md)
    assert math.isfinite(sum(r["max_abs_score_error"] for r in errors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
