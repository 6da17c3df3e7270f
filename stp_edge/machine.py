"""The machine a result was measured on, recorded beside the numbers (bench, benchmarks, evaluations)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The matmul instruction sets that decide int8 and fp32 encoder speed on x86 (/proc/cpuinfo flag names).
MATMUL_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def machine_info() -> dict[str, str]:
    """Host, OS, CPU model and cores, its matmul instruction sets, library versions, load average now.

    ONNX Runtime's version is included when it is installed (imported here, never at module import).
    """
    import cv2

    cpu, flags = _cpu_model_and_flags()
    isa = [f for f in MATMUL_ISA if f in flags]
    info = {
        "node": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "isa": " ".join(isa) or "unknown",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "load_avg_1m": f"{os.getloadavg()[0]:.2f}",
    }
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    try:  # read from its metadata: importing openvino sends usage telemetry (stp_edge.backends.openvino)
        info["openvino"] = importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    """The first CPU's model name and feature flags (`cpu_features`); elsewhere the platform's name."""
    cpu = cpu_features()
    return cpu.model or platform.machine(), set(cpu.flags)


# --- precision chosen for the machine ------------------------------------------------------------------------
# Encoder forms a bundle's graph can run as: its ONNX graph ("fp32", "fp16", "int8-static" = Q/DQ,
# "int8-dynamic" = MatMulInteger) and, on OpenVINO, an fp32/fp16 graph computed in bf16 ("bf16").
GRAPH_FORMS = ("fp32", "fp16", "int8-static", "int8-dynamic")
PRECISION_REQUESTS = ("exported", "auto", "fp32", "bf16", "int8")
CPU_BACKENDS = ("ort-cpu", "openvino")


@dataclass(frozen=True)
class CpuFeatures:
    """The instructions that decide int8/bf16 encoder speed on a CPU (from /proc/cpuinfo flags).

    Attributes:
        arch: "x86_64" or "aarch64" (or whatever `platform.machine()` says).
        model: The CPU's model name.
        flags: The feature flags, as /proc/cpuinfo spells them.
    """

    arch: str
    model: str = ""
    flags: frozenset[str] = frozenset()

    @property
    def arm(self) -> bool:
        return self.arch in ("aarch64", "arm64")

    @property
    def vnni(self) -> bool:
        """int8 dot products in one instruction (AVX-512 VNNI or AVX-VNNI; on Arm: dotprod)."""
        return bool({"avx512_vnni", "avx_vnni", "asimddp"} & self.flags)

    @property
    def amx(self) -> bool:
        """Intel AMX tile matmuls (int8 and bf16)."""
        return bool({"amx_int8", "amx_bf16"} & self.flags)

    @property
    def bf16(self) -> bool:
        """bf16 matmul instructions (AVX512_BF16 or AMX-BF16; Arm: bf16)."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags) or (self.arm and "bf16" in self.flags)

    @property
    def i8mm(self) -> bool:
        """Arm int8 matrix multiply (SMMLA)."""
        return "i8mm" in self.flags

    def instructions(self) -> list[str]:
        """The int8/bf16 instructions present, named as users know them (for `bench` and `run`)."""
        names = {"avx2": "AVX2", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                 "avx512_bf16": "AVX512_BF16", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16",
                 "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16"}
        if not self.arm:
            names.pop("bf16")
        else:
            names.pop("avx2")
        return [label for flag, label in names.items() if flag in self.flags]

    def describe(self) -> str:
        """One line: model and its int8/bf16 instructions (or that it has none)."""
        found = self.instructions()
        return f"{self.model or self.arch}: {', '.join(found) if found else 'no int8/bf16 dot-product instructions'}"


def parse_cpu_features(cpuinfo: str, arch: str) -> CpuFeatures:
    """`CpuFeatures` from the text of /proc/cpuinfo (x86 "flags"/"model name", Arm "Features"/"CPU part")."""
    model, flags = "", frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return CpuFeatures(arch=arch, model=model, flags=flags)


def cpu_features() -> CpuFeatures:
    """This machine's `CpuFeatures` (Linux /proc/cpuinfo; elsewhere no flags, so every choice is fp32)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    features = parse_cpu_features(text, platform.machine())
    return features if features.model else CpuFeatures(features.arch, platform.processor(), features.flags)


@dataclass(frozen=True)
class FormChoice:
    """Which CPU backend runs a bundle's encoder, in which form, and why.

    Attributes:
        backend: "ort-cpu" or "openvino".
        form: What the encoder computes in: "fp32", "fp16", "bf16", "int8-static" or "int8-dynamic".
        hint: OpenVINO's INFERENCE_PRECISION_HINT ("f32" or "bf16"); None on ONNX Runtime.
        reason: One line: what this form buys on this CPU.
    """

    backend: str
    form: str
    hint: str | None
    reason: str


def choose_cpu_form(cpu: CpuFeatures, installed: frozenset[str] | set[str], graph_form: str,
                    requested: str = "exported") -> FormChoice:
    """The CPU backend and form for a bundle whose encoder graph is `graph_form`, on `cpu`, with `installed`.

    A pure function (tests/test_machine_choice.py runs it over a table of CPUs). The rules follow what was
    measured (issue 27; benchmarks/results/backends_*.md):
    - int8 Q/DQ ("int8-static") is fast only with int8 dot products (VNNI/dotprod); ONNX Runtime ran it fastest
      on an AVX-512 VNNI EPYC; OpenVINO's int8 (AMX tiles) is not chosen while it mis-shapes the Q/DQ encoder's
      frame_emb (see `_int8_static`).
      Without VNNI it runs at about fp32 speed: the dynamic form (MatMulInteger) is the fast one there.
    - an fp32 graph runs in bf16 on OpenVINO where the CPU has AVX512_BF16 or AMX (no calibration; 1.8x on the
      EPYC), else fp32 on ONNX Runtime (faster than OpenVINO fp32 there).
    - "int8-dynamic" graphs run on ONNX Runtime (its fused DynamicQuantizeMatMul kernel).

    Args:
        cpu: The CPU's features (`cpu_features()`).
        installed: Installed CPU backends among "ort-cpu" and "openvino".
        graph_form: The bundle's encoder graph form (`bundle_graph_form`), one of `GRAPH_FORMS`.
        requested: "exported" (the default: the bundle's own precision, so an fp32 bundle's numbers stay fp32; an
            int8 bundle runs as "auto" would), "auto" (the fastest form here, bf16 included), or "fp32" / "bf16" /
            "int8" to insist on one (refused when impossible).

    Raises:
        UsageError: Unknown names, nothing installed, or `requested` cannot run with this bundle and backends.
    """
    from stp_edge.errors import UsageError

    if graph_form not in GRAPH_FORMS:
        raise UsageError(f"bundle encoder form must be one of {GRAPH_FORMS}, got {graph_form!r}")
    if requested not in PRECISION_REQUESTS:
        raise UsageError(f"precision must be one of {PRECISION_REQUESTS}, got {requested!r}")
    ort, ov = "ort-cpu" in installed, "openvino" in installed
    if not (ort or ov):
        raise UsageError("no CPU backend is installed: pip install 'stp-edge[ort]' or 'stp-edge[openvino]'")
    int8 = graph_form.startswith("int8")
    if requested == "exported":
        requested = "auto" if int8 else "fp32"
    if requested == "int8" and not int8:
        raise UsageError(f"--precision int8 needs an int8 bundle (this one is {graph_form}): "
                         f"stp-edge export --precision int8")
    if requested in ("fp32", "bf16") and int8:
        raise UsageError(f"--precision {requested} needs an fp32 or fp16 bundle; this one's encoder is {graph_form}")
    if requested == "bf16" and not ov:
        raise UsageError("--precision bf16 runs on OpenVINO, which is not installed: pip install 'stp-edge[openvino]'")
    if graph_form == "int8-dynamic":
        return _int8_dynamic(cpu, ort)
    if int8:
        return _int8_static(cpu, ort, ov)
    return _float_form(cpu, ort, ov, graph_form, requested)


def _int8_dynamic(cpu: CpuFeatures, ort: bool) -> FormChoice:
    from stp_edge.errors import UsageError

    if not ort:
        raise UsageError("this bundle's encoder is dynamic int8 (MatMulInteger), which runs on ONNX Runtime: "
                         "pip install 'stp-edge[ort]'")
    gain = "integer matmuls with fused dequantization (fast without VNNI)"
    return FormChoice("ort-cpu", "int8-dynamic", None, f"{gain}; {_int8_isa(cpu)}")


def _int8_static(cpu: CpuFeatures, ort: bool, ov: bool) -> FormChoice:
    isa = _int8_isa(cpu)
    # OpenVINO 2026.4 runs the exported Q/DQ encoder with frame_emb shaped [1, B, E] instead of [B, E] (ONNX
    # Runtime: [B, E]; the contract check refuses it), so an int8 bundle goes to OpenVINO only when ONNX Runtime
    # is absent (and then fails that check with the reason) until that is understood.
    if not ort:
        return FormChoice("openvino", "int8-static", None, f"Q/DQ int8 on OpenVINO; {isa}")
    if not cpu.vnni:
        return FormChoice("ort-cpu", "int8-static", None,
                          f"Q/DQ int8 without VNNI runs at about fp32 speed ({isa}): export with "
                          f"--int8-form dynamic for the fast form on this CPU")
    return FormChoice("ort-cpu", "int8-static", None, f"Q/DQ int8 on ONNX Runtime; {isa}")


def _float_form(cpu: CpuFeatures, ort: bool, ov: bool, graph_form: str, requested: str) -> FormChoice:
    if ov and (requested == "bf16" or (requested == "auto" and cpu.bf16)):
        how = "AMX-BF16" if "amx_bf16" in cpu.flags else "AVX512_BF16" if cpu.bf16 else "no bf16 instructions (slow)"
        return FormChoice("openvino", "bf16", "bf16", f"bf16 on OpenVINO with {how}: no calibration needed")
    if ort:
        return FormChoice("ort-cpu", graph_form, None, f"{graph_form} on ONNX Runtime"
                          + ("" if cpu.bf16 else " (no bf16 instructions on this CPU)"))
    return FormChoice("openvino", graph_form, "f32", f"{graph_form} on OpenVINO (computed in f32)")


def _int8_isa(cpu: CpuFeatures) -> str:
    if cpu.amx:
        return "AMX-INT8 tiles"
    if cpu.vnni:
        return "VNNI int8 dot products" if not cpu.arm else "dotprod" + (" + i8mm" if cpu.i8mm else "")
    return "no VNNI/dotprod on this CPU"


def int8_form_for(cpu: CpuFeatures) -> str:
    """The int8 export form fast on `cpu`: "static" (Q/DQ) with int8 dot products, else "dynamic"."""
    return "static" if cpu.vnni or cpu.amx else "dynamic"


def encoder_form(manifest: dict) -> str:
    """A bundle's encoder graph form (one of `GRAPH_FORMS`) from its manifest.

    int8 bundles record their form under exporter.quantization.form; bundles from before dynamic int8 have none
    and are Q/DQ ("int8-static").
    """
    precision = manifest.get("graph_precision", {}).get("encoder", manifest.get("precision", "fp32"))
    if precision != "int8":
        return precision
    quant = manifest.get("exporter", {}).get("quantization", {})
    return f"int8-{quant.get('form', 'static')}"


def describe_form(form: FormChoice, cpu: CpuFeatures | None = None) -> str:
    """One line for `run` and `bench`: the CPU's int8/bf16 instructions, the backend and form that run, and why."""
    cpu = cpu or cpu_features()
    return f"cpu {cpu.describe()}; encoder {form.form} on {form.backend}: {form.reason}"
