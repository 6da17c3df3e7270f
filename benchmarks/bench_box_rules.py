"""What each box rule costs per anomaly map: `boxes_from_map` with "components" and "best_window", on this CPU.

    python benchmarks/bench_box_rules.py [--reps 300]

In one process, the two rules alternate call by call (the order swapped every repetition, so machine noise hits
both alike) on the same random maps of the grids the configs use: 3x3 (crops, the ViT-B/16 default with
pretrained weights), 7x7 (tokens) and 14x14 (one region per ViT-B/16 patch). Reported: the median and quartiles
of one call in microseconds, and best_window / components. Saves benchmarks/results/box_rules.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

GRIDS = (3, 7, 14)


def _time(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1e6


def measure(reps: int) -> list[dict]:
    """One row per grid: per-call microseconds of each rule, medians and quartiles."""
    from stp_edge.pipeline.boxes import boxes_from_map

    rng = np.random.default_rng(0)
    rows = []
    for R in GRIDS:
        mode = "crops" if R == 3 else "tokens"
        times: dict[str, list[float]] = {"components": [], "best_window": []}
        for k in range(reps):
            amap = rng.random((R, R)).astype(np.float32)
            order = ("components", "best_window") if k % 2 == 0 else ("best_window", "components")
            for rule in order:
                times[rule].append(_time(boxes_from_map, amap, (1080, 1920), 224, threshold=0.5, class_id=1,
                                         mode=mode, rule=rule))
        row = {"grid": R, "mode": mode}
        for rule, t in times.items():
            row[rule] = {"median_us": float(np.median(t)), "p25_us": float(np.percentile(t, 25)),
                         "p75_us": float(np.percentile(t, 75))}
        row["ratio"] = row["best_window"]["median_us"] / row["components"]["median_us"]
        rows.append(row)
    return rows


def table(rows: list[dict], machine: dict) -> str:
    lines = [f"Box rules, one anomaly map per call (`boxes_from_map`), {machine.get('cpu', '?')}; medians of "
             "alternated calls, [p25, p75]. A shared, noisy machine: read the ratios, not the absolute numbers.", "",
             "| grid | mode | components (us) | best_window (us) | best_window / components |", "|---|---|---|---|---|"]
    for r in rows:
        c, b = r["components"], r["best_window"]
        lines.append(f"| {r['grid']}x{r['grid']} | {r['mode']} | {c['median_us']:.0f} [{c['p25_us']:.0f}, "
                     f"{c['p75_us']:.0f}] | {b['median_us']:.0f} [{b['p25_us']:.0f}, {b['p75_us']:.0f}] | "
                     f"{r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from stp_edge.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    args = ap.parse_args()
    machine = machine_info()
    rows = measure(args.reps)
    text = table(rows, machine)
    print(text)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "box_rules.md").write_text(text)
    (out / "box_rules.json").write_text(json.dumps({"machine": machine, "reps": args.reps, "rows": rows}, indent=2)
                                        + "\n")


if __name__ == "__main__":
    main()
