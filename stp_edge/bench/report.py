"""What `stp-edge bench` measured: per-stage statistics and the report, saved as JSON, markdown and a plot."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stp_edge.report import plural


@dataclass(frozen=True)
class StageStats:
    """Median and 99th percentile of one stage, ms, over `n` samples."""

    median_ms: float
    p99_ms: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> StageStats:
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return cls(float("nan"), float("nan"), 0)
        return cls(float(np.median(v)), float(np.percentile(v, 99)), int(v.size))


@dataclass
class BenchReport:
    """Everything `run_bench` measured; `to_dict()` is the saved JSON, `markdown()` the saved table."""

    bundle: str
    backend: str
    precision: str
    batch: int
    streams: int
    source: str
    frames_per_stream: int
    snippets: int
    load_s: float
    stages: dict[str, StageStats]
    end_to_end_ms_per_snippet: float
    frames_per_s: float
    cameras_at_25fps: float
    alert_delay: dict[str, dict[str, float]]
    peak_rss_mb: float
    stream_cost: dict[str, Any] | None
    floor: dict[str, Any]
    torch_baseline: dict[str, Any] | None
    machine: dict[str, str]
    notes: list[str] = field(default_factory=list)
    # On a CPU backend: the CPU's int8/bf16 instructions, the backend and encoder form that ran and why
    # (`stp_edge.machine.describe_form`), and the installed CPU backends side by side on this bundle's encoder
    # (`stp_edge.bench.forms.compare_forms` rows).
    form: str | None = None
    backends: list[dict[str, Any]] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list, compare=False)  # files `save` wrote (none unless asked)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("saved")
        return out

    def markdown(self) -> str:
        """The report as markdown tables."""
        m = self.machine
        lines = [f"# stp-edge bench: {Path(self.bundle).name}, {self.backend}, {self.precision}, batch {self.batch}, "
                 f"{self.streams} stream(s)", "",
                 f"Machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('isa')}), load "
                 f"{m.get('load_avg_1m')} at start. Source: {self.source}, {self.frames_per_stream} frames "
                 f"per stream, {self.snippets} final snippets.", ""]
        base = (self.torch_baseline or {}).get("stages", {})
        lines += ["| stage | median ms | p99 ms | plain PyTorch median ms |", "|---|---:|---:|---:|"]
        for k, s in self.stages.items():
            b = base.get(k)
            lines.append(f"| {k} | {s.median_ms:.2f} | {s.p99_ms:.2f} | {'' if b is None else f'{b:.2f}'} |")
        tb = self.torch_baseline
        e2e = f"{self.end_to_end_ms_per_snippet:.2f}"
        if tb:
            e2e += (f" (plain PyTorch {tb['end_to_end_ms_per_snippet']:.2f}; stp-edge/PyTorch "
                    f"{self.end_to_end_ms_per_snippet / tb['end_to_end_ms_per_snippet']:.2f}x)")
        lines += ["", "| measure | value |", "|---|---|", f"| end-to-end ms per snippet | {e2e} |",
                  f"| frames/s (all streams) | {self.frames_per_s:.1f} |",
                  f"| cameras at 25 fps, one process | {self.cameras_at_25fps:.2f} |",
                  f"| peak RSS | {self.peak_rss_mb:.0f} MB |", f"| load (bundle + runners) | {self.load_s:.2f} s |"]
        for name, d in self.alert_delay.items():
            snippets = plural(round(d["snippets"]), "snippet")
            lines.append(f"| alert delay, {name} | {snippets} = {d['frames']:.0f} frames = {d['seconds']:.2f} s at "
                         "25 fps |")
        if self.stream_cost:
            sc = self.stream_cost
            parts = ", ".join(f"{n}: {v:.3f} ms" for n, v in sc["median_ms"].items())
            lines.append(f"| cost per new snippet by stream length | {parts} (ratio {sc['ratio']:.3f}) |")
        f = self.floor
        floor = f"{f['encoder_gflop_per_snippet']:.2f} GFLOP; fp32 {f['fp32_gflops']:.0f} GFLOP/s -> " \
                f"{f['fp32_floor_ms']:.1f} ms"
        if f.get("int8_gops"):
            floor += f"; int8 {f['int8_gops']:.0f} GOP/s -> {f['int8_floor_ms']:.1f} ms"
        lines.append(f"| encoder floor per snippet | {floor} |")
        if self.form:
            lines += ["", f"Ran: {self.form}"]
        if self.backends:
            from stp_edge.bench.forms import forms_markdown

            lines += ["", "Installed CPU backends side by side on this encoder (batch 1, alternated, medians):", "",
                      *forms_markdown(self.backends, self.backends[0]["label"])]
        lines += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"

    def save(self, json_out: str | os.PathLike, *, plot: bool = True) -> list[Path]:
        """Write JSON, markdown (same stem, .md) and, with matplotlib, a stage plot (.png); returns the paths."""
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2, default=float) + "\n")
        md = out.with_suffix(".md")
        md.write_text(self.markdown())
        paths = [out, md]
        if plot:
            paths.append(_plot(self, out.with_suffix(".png")))
        self.saved = paths
        return paths


def _plot(report: BenchReport, out: Path) -> Path:
    """Bars of each stage's median and p99 (and the plain PyTorch median) saved to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.stages)
    ours = [report.stages[k].median_ms for k in names]
    p99 = [report.stages[k].p99_ms for k in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x - 0.27, ours, 0.27, label="stp-edge median")
    ax.bar(x, p99, 0.27, label="stp-edge p99")
    if report.torch_baseline:
        base = [report.torch_baseline["stages"].get(k, np.nan) for k in names]
        ax.bar(x + 0.27, base, 0.27, label="plain PyTorch median")
    ax.set_xticks(x, names)
    ax.set_ylabel("ms")
    ax.set_title(f"{Path(report.bundle).name}: {report.backend} {report.precision}, "
                 f"{report.end_to_end_ms_per_snippet:.1f} ms/snippet end to end")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
