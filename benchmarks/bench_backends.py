"""Encoder ms per image on this CPU: ONNX Runtime fp32 / int8 static / int8 dynamic vs OpenVINO fp32 / bf16 / int8.

    nice -n 10 python benchmarks/bench_backends.py [--config vit-b-16] [--threads 2] [--reps 15] \
        [--fp32 B.stp] [--int8-static B.stp]

In one process, on this machine, through the runtime's own runners (`OrtRunner`, `OpenVinoRunner`):
1. the graphs: the fp32 encoder of a random-weight bundle, its Q/DQ INT8 twin (the exporter's
   `quantize_encoder`, min-max calibrated on synthetic clips) and its dynamic INT8 twin
   (`quantize_encoder_dynamic`, no calibration); bundles given with --fp32/--int8-static are used as they are;
2. `stp_edge.bench.forms.compare_forms` (what `stp-edge bench` runs): every (backend, form) at batch 1 with
   the same thread count, called in turn round by round so machine noise hits all alike; medians and each
   one's ratio to ONNX Runtime fp32; worst cosine of frame and region embeddings against ONNX Runtime fp32 on
   preprocessed frames of synthetic clips the calibration never saw;
4. what `stp_edge.machine.choose_cpu_form` picks on this CPU for each bundle form, beside what was measured.
Saves benchmarks/results/backends_<config>_<cpu tag>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import _clips, _frames  # the same calibration and held-out clips


def cpu_tag(cpu) -> str:
    """Short name of the CPU kind for file names: vendor + the best int8/bf16 instructions."""
    vendor = "xeon" if "Xeon" in cpu.model else "epyc" if "EPYC" in cpu.model else cpu.arch
    isa = "amx" if cpu.amx else "vnni" if cpu.vnni else "arm" if cpu.arm else "avx2"
    return f"{vendor}-{isa}"


def graphs(cfg: str, work: Path, fp32: Path | None, int8_static: Path | None, calib: Path,
           calib_frames: int) -> tuple[dict[str, Path], dict]:
    """The three encoder graphs by form (exported or quantized under `work` where not given), and how."""
    from stp_edge.bundle import Bundle
    from stp_edge.export.bundle_export import export_bundle
    from stp_edge.export.quantize import quantize_encoder, quantize_encoder_dynamic

    if fp32 is None:
        fp32 = export_bundle(work / f"{cfg}_fp32.stp", random_config=cfg, seed=0, progress=False)
    out = {"fp32": fp32 / "encoder.onnx", "int8-dynamic": work / f"{cfg}_encoder_int8_dynamic.onnx"}
    how = {"int8-dynamic": quantize_encoder_dynamic(out["fp32"], out["int8-dynamic"])}  # seconds, no calibration
    if int8_static is not None:
        out["int8-static"] = int8_static / "encoder.onnx"
        how["int8-static"] = Bundle.load(int8_static).manifest["exporter"]["quantization"]
    else:  # the exporter's quantizer, min-max calibration (the histogram methods need GBs for ViT-B/16 here)
        out["int8-static"] = work / f"{cfg}_encoder_int8_static.onnx"
        settings = out["int8-static"].with_suffix(".json")
        if settings.exists() and settings.stat().st_mtime > out["fp32"].stat().st_mtime:  # cached under --work
            how["int8-static"] = json.loads(settings.read_text())
        else:
            images = _frames(calib, Bundle.load(fp32).config, calib_frames)
            how["int8-static"] = quantize_encoder(out["fp32"], out["int8-static"], images)
            settings.write_text(json.dumps(how["int8-static"], default=str))
    return out, how


def markdown(res: dict) -> str:
    m, cpu = res["machine"], res["cpu"]
    from stp_edge.bench.forms import forms_markdown

    lines = [f"# Encoder per image, {res['config']} random weights: ONNX Runtime vs OpenVINO, by form", "",
             f"Machine: {m['cpu']} ({cpu}), {m['cores']} cores, load {m['load_avg_1m']} at start; onnxruntime "
             f"{m.get('onnxruntime', '-')}, openvino {m.get('openvino', '-')}. A shared, noisy machine (other jobs "
             f"ran beside this one): compare rows of this table, not with other tables.", "",
             f"Batch 1, {res['threads']} threads each, {res['reps']} rounds with every case called in turn; "
             f"medians. Cosine: worst row of frame/region embeddings against ORT fp32 on {res['images']} "
             f"held-out synthetic frames.", "",
             *forms_markdown(res["rows"], "ORT fp32")]
    lines += ["", "`--precision auto` (stp_edge.machine.choose_cpu_form) on this CPU, both backends installed:", "",
              "| bundle's encoder | runs on | form | why |", "|---|---|---|---|"]
    for form, ch in res["auto_choice"].items():
        lines.append(f"| {form} | {ch['backend']} | {ch['form']} | {ch['reason']} |")
    lines += ["", f"Command: `{res['command']}` ({res['seconds']:.0f} s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="vit-b-16", choices=("tiny", "vit-b-16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15, help="rounds (every case once per round)")
    p.add_argument("--fp32", type=Path, help="an fp32 bundle of --config (default: exported under --work)")
    p.add_argument("--int8-static", type=Path, help="its Q/DQ INT8 twin (default: exported under --work)")
    p.add_argument("--calib-frames", type=int, default=32, help="static INT8 calibration frames")
    p.add_argument("--work", type=Path, default=Path("/tmp/stp-backends"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)

    from stp_edge.bench.forms import compare_forms, installed_cpu_backends
    from stp_edge.machine import choose_cpu_form, cpu_features, machine_info

    t0 = time.monotonic()
    args.work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_features()
    installed = installed_cpu_backends()
    res = {"machine": machine_info(), "cpu": cpu.describe(), "config": args.config, "threads": args.threads,
           "reps": args.reps, "installed": sorted(installed),
           "command": "python benchmarks/bench_backends.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    calib = args.work / "calib"
    if not calib.exists() and args.int8_static is None:
        _clips(calib, "int8-calib", 4, 7, 256)
    held_out = args.work / "held_out"
    if not held_out.exists():
        _clips(held_out, "int8-held-out", 4, 8, 128)
    paths, res["quantization"] = graphs(args.config, args.work, args.fp32, args.int8_static, calib,
                                        args.calib_frames)
    from stp_edge.bundle import Bundle

    images = _frames(held_out, Bundle.load(paths["fp32"].parent).config, 16)
    res["images"] = len(images)
    res["rows"] = compare_forms(paths, images, threads=args.threads, reps=args.reps, installed=installed)
    res["auto_choice"] = {form: vars(choose_cpu_form(cpu, {"ort-cpu", "openvino"}, form))
                          for form in ("fp32", "int8-static", "int8-dynamic")}
    res["seconds"] = time.monotonic() - t0
    table = markdown(res)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"backends_{args.config}_{cpu_tag(cpu)}"
    stem.with_suffix(".md").write_text(table + "\n")
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    print(f"saved {stem}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
