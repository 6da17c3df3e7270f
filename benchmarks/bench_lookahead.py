"""Low-latency mode: what a provisional result (`Detector.load(..., lookahead=N)`) costs, per N, on the demo benchmark.

    python benchmarks/bench_lookahead.py [--num-videos 30] [--seed 0] [--work DIR]

A result is final once the adapter's lookahead of c snippets has been encoded; with `lookahead=N < c` the
runtime also emits a provisional result (`final=False`) N snippets after its snippet, computed on the features
available then. This script exports the demo model (`export_bundle(demo=True)`), writes the synthetic test split
(`write_benchmark(split="test")`, as scripts/eval_demo.py), and pushes every video's frames through one
`Detector` per N = 0..c (ONNX Runtime CPU), recording each result and the frame count pushed when it came out.
For each N:
- frame AUC / AP of the first result the user gets for each snippet (the provisional one; at the end of a
  stream, where no provisional one was emitted, the final one) next to the final results' AUC;
- how far provisional scores are from the final ones, and how many alarm decisions (score >= threshold) differ;
- alert delay by design: a result is available (N + 1) snippets after its snippet's first frame, in frames and
  in seconds at 25 fps and at 10 fps (compute time comes on top);
- measured on the anomalous videos: frames from the anomaly's first frame to the first alarm the user sees
  (any result, provisional or final, of a snippet overlapping the anomaly), and alarms on normal videos.
A cross-check runs `stp_edge.eval.evaluate_bundle` on the same bundle and split: its AUC must equal the finals'.
Saves benchmarks/results/lookahead_demo.{md,json} with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FPS = (25.0, 10.0)


def _frames(path: Path) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise OSError(f"{path}: no frame could be decoded")
    return frames


def _stream(det, frames: list[np.ndarray]) -> list[tuple[Any, int]]:
    """(result, frames pushed when it was returned) for every result of one video, in emission order."""
    det.reset()
    out = []
    for i, frame in enumerate(frames):
        out += [(r, i + 1) for r in det.push(frame)]
    return out + [(r, len(frames)) for r in det.flush()]


def _first_and_final(emitted: list[tuple[Any, int]]) -> tuple[list[Any], list[Any]]:
    """Per snippet, in snippet order: the first result the user got, and the final one."""
    first: dict[int, Any] = {}
    final: dict[int, Any] = {}
    for r, _ in emitted:
        first.setdefault(r.snippet, r)
        if r.final:
            final[r.snippet] = r
    if sorted(final) != list(range(len(final))) or set(first) != set(final):
        raise RuntimeError("a snippet has no final result")
    return [first[t] for t in sorted(first)], [final[t] for t in sorted(final)]


def _first_alarm(emitted: list[tuple[Any, int]], start: int, end: int, thr: float) -> int | None:
    """Frames pushed when the first result (any) of a snippet overlapping [start, end) crossed the threshold."""
    hits = [at for r, at in emitted if r.score >= thr and r.frame_end > start and r.frame_start < end]
    return min(hits) if hits else None


def run(num_videos: int, seed: int, work: Path, report=print) -> dict:
    from stp_edge.api import Detector
    from stp_edge.datasets import find_video, load_ground_truth
    from stp_edge.eval import evaluate_bundle
    from stp_edge.eval.metrics import evaluate_videos
    from stp_edge.eval.run import prediction_from_results
    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.synthetic import write_benchmark

    bundle = work / "demo.stp"
    if not bundle.exists():
        export_bundle(bundle, demo=True, progress=False)
    data = work / "synthetic_test"
    if not data.exists():
        write_benchmark(data, split="test", num_videos=num_videos, seed=seed)
    probe = Detector.load(bundle, backend="ort-cpu")
    c, L, thr, names = probe.context, probe.config.snippet_len, probe.score_threshold, probe.config.class_names
    probe.close()
    gts = load_ground_truth(data, "synthetic", None, names)
    dets = {n: Detector.load(bundle, backend="ort-cpu", lookahead=n) for n in range(c + 1)}
    per_n: dict[int, dict[str, Any]] = {n: {"first": {}, "final": {}, "emitted": {}} for n in dets}
    try:
        for k, g in enumerate(gts):
            frames = _frames(find_video(data, g.name))
            if g.num_frames is not None and g.num_frames != len(frames):
                raise RuntimeError(f"{g.name}: decoded {len(frames)} frames, ground truth says {g.num_frames}")
            for n, det in dets.items():
                emitted = _stream(det, frames)
                first, final = _first_and_final(emitted)
                per_n[n]["first"][g.name], per_n[n]["final"][g.name] = first, final
                per_n[n]["emitted"][g.name] = emitted
            if report:
                report(f"[{k + 1}/{len(gts)}] {g.name}: {len(frames)} frames, {len(per_n[0]['final'][g.name])} "
                       f"snippets")
    finally:
        for det in dets.values():
            det.close()
    cross = evaluate_bundle(bundle, data, backend="ort-cpu", report=None)
    rows = []
    reference = None
    for n, d in per_n.items():
        preds = {g: {kind: prediction_from_results(d[kind][g], gt.num_frames)
                     for kind in ("first", "final")} for g, gt in ((gt.name, gt) for gt in gts)}
        res_first = evaluate_videos(gts, {g: p["first"] for g, p in preds.items()}, threshold=thr)
        res_final = evaluate_videos(gts, {g: p["final"] for g, p in preds.items()}, threshold=thr)
        finals = np.array([r.score for g in d["final"] for r in d["final"][g]])
        reference = finals if reference is None else reference
        if not np.array_equal(finals, reference):  # final results do not depend on N (tests/test_streaming.py)
            raise RuntimeError(f"lookahead={n}: final scores differ from lookahead=0's")
        pairs = [(a.score, b.score) for g in d["first"] for a, b in zip(d["first"][g], d["final"][g], strict=True)
                 if not a.final]
        prov = np.array(pairs, float).reshape(-1, 2)
        delta = np.abs(prov[:, 0] - prov[:, 1])
        changed = int(np.sum((prov[:, 0] >= thr) != (prov[:, 1] >= thr)))
        latencies, missed = [], 0
        for gt in gts:
            if not gt.anomalous:
                continue
            onset, end = min(s for s, _ in gt.ranges), max(e for _, e in gt.ranges)
            at = _first_alarm(d["emitted"][gt.name], onset, end, thr)
            if at is None:
                missed += 1
            else:
                latencies.append(at - onset)
        normal = [gt.name for gt in gts if not gt.anomalous]
        normal_snippets = sum(len(d["final"][g]) for g in normal)
        alarmed = sum(len({r.snippet for r, _ in d["emitted"][g] if r.score >= thr}) for g in normal)
        delay = (n + 1) * L
        rows.append({
            "lookahead": n, "provisional_results": len(prov),
            "delay_after_snippet_start": {"snippets": n + 1, "frames": delay,
                                          **{f"seconds_at_{int(f)}fps": delay / f for f in FPS}},
            "auc_first_result": res_first.auc, "ap_first_result": res_first.ap,
            "auc_final": res_final.auc, "ap_final": res_final.ap,
            "auc_loss_points": 100 * (res_final.auc - res_first.auc),
            "score_delta": {"mean": float(delta.mean()) if len(delta) else 0.0,
                            "p95": float(np.percentile(delta, 95)) if len(delta) else 0.0,
                            "max": float(delta.max()) if len(delta) else 0.0},
            "alarm_decisions_changed": changed,
            "anomalous_videos": len(latencies) + missed, "detected": len(latencies), "missed": missed,
            "onset_to_first_alarm_frames": {"median": float(np.median(latencies)) if latencies else None,
                                            "values": latencies},
            "normal_videos": len(normal), "normal_snippets": normal_snippets,
            "normal_snippets_alarmed": alarmed,
        })
    return {"bundle": {"source": "demo", "context": c, "snippet_len": L, "score_threshold": thr},
            "data": {"split": "test", "num_videos": len(gts), "seed": seed, "fps_of_videos": 25,
                     "generator": "stp_edge.synthetic.write_benchmark"},
            "cross_check": {"evaluate_bundle_auc": cross.auc, "finals_auc": rows[0]["auc_final"]},
            "rows": rows}


def markdown(res: dict) -> str:
    m, b, d = res["machine"], res["bundle"], res["data"]
    lines = ["# Low-latency mode on the demo benchmark: provisional results per lookahead N", "",
             f"Machine: {m['node']}, {m['cpu']}, {m['cores']} cores (load {m['load_avg_1m']} at start, "
             f"{res['load_avg_1m_at_end']} at end); onnxruntime {m['onnxruntime']} (CPU). "
             f"Demo model bundle (context c = {b['context']} snippets of {b['snippet_len']} frames, score threshold "
             f"{b['score_threshold']}), synthetic test split: {d['num_videos']} videos (seed {d['seed']}, "
             f"{d['fps_of_videos']} fps). N = c is the final-only stream.", "",
             "| N | result after snippet start: frames / s at 25 fps / s at 10 fps | frame AUC, first result | "
             "AUC loss vs final (points) | mean / max abs score change | alarm decisions changed | "
             "onset -> first alarm, median frames (s at 25 / 10 fps) | alarmed normal snippets |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        dl, lat = r["delay_after_snippet_start"], r["onset_to_first_alarm_frames"]["median"]
        loss = round(r["auc_loss_points"], 2) + 0.0  # no "-0.00"
        lat_s = "n/a" if lat is None else f"{lat:.0f} ({lat / 25:.1f} / {lat / 10:.1f} s)"
        lines.append(
            f"| {r['lookahead']} | {dl['frames']} / {dl['seconds_at_25fps']:.2f} / {dl['seconds_at_10fps']:.1f} | "
            f"{r['auc_first_result']:.4f} | {loss:.2f} | {r['score_delta']['mean']:.3f} / "
            f"{r['score_delta']['max']:.3f} | {r['alarm_decisions_changed']} of {r['provisional_results']} | "
            f"{lat_s}, {r['detected']}/{r['anomalous_videos']} detected | "
            f"{r['normal_snippets_alarmed']}/{r['normal_snippets']} |")
    cc = res["cross_check"]
    lines += ["", f"Final results' frame AUC: {cc['finals_auc']:.4f} (the same for every N; "
              f"`evaluate_bundle` on the same bundle and split: {cc['evaluate_bundle_auc']:.4f}).",
              "First result: the provisional one where one was emitted (the last N snippets of a video get only "
              "their final one, at the end of the stream). Alarm: score >= threshold; onset -> first alarm counts "
              "frames from the anomaly's first frame to the frame after which the first alarming result (of a "
              "snippet overlapping the anomaly) was returned; compute time not included.", "",
              f"Command: `{res['command']}` ({res['seconds']:.0f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--render", type=Path, default=None, help="only rewrite the .md from a saved .json")
    p.add_argument("--num-videos", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="keep (and reuse) the bundle and the test split here")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.render:
        table = markdown(json.loads(args.render.read_text()))
        args.render.with_suffix(".md").write_text(table + "\n")
        print(table)
        return 0

    from stp_edge.machine import machine_info

    t0 = time.monotonic()
    machine = machine_info()  # with the ONNX Runtime version
    with tempfile.TemporaryDirectory(prefix="stp-lookahead-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = run(args.num_videos, args.seed, work)
    res.update(machine=machine, load_avg_1m_at_end=f"{os.getloadavg()[0]:.2f}", seconds=time.monotonic() - t0,
               command="python benchmarks/bench_lookahead.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    table = markdown(res)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lookahead_demo.md").write_text(table + "\n")
    (args.out / "lookahead_demo.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
