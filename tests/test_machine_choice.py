"""The precision chosen for the machine: a pure function of CPU features, installed backends and the bundle."""

from __future__ import annotations

import re

import pytest

from stp_edge.errors import UsageError
from stp_edge.machine import (
    CpuFeatures,
    choose_cpu_form,
    encoder_form,
    int8_form_for,
    parse_cpu_features,
)

BASE_X86 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi2 avx2"
# Flag sets as /proc/cpuinfo prints them on these CPU kinds (trimmed to the ones that matter plus neighbours).
CPUS = {
    "epyc-avx2": CpuFeatures("x86_64", "AMD EPYC 7B12 64-Core Processor", frozenset(BASE_X86.split())),
    "epyc-vnni-bf16": CpuFeatures("x86_64", "AMD EPYC 9B14 96-Core Processor", frozenset(
        (BASE_X86 + " avx512f avx512bw avx512_vnni avx512_bf16").split())),
    "xeon-icelake-vnni": CpuFeatures("x86_64", "Intel(R) Xeon(R) Platinum 8375C", frozenset(
        (BASE_X86 + " avx512f avx512bw avx512_vnni").split())),
    "xeon-amx": CpuFeatures("x86_64", "Intel(R) Xeon(R) Platinum 8481C", frozenset(
        (BASE_X86 + " avx512f avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8").split())),
    "arm-i8mm": CpuFeatures("aarch64", "", frozenset("fp asimd aes crc32 atomics asimddp sve i8mm bf16".split())),
    "arm-dotprod": CpuFeatures("aarch64", "", frozenset("fp asimd aes crc32 atomics asimddp".split())),
    "arm-a53": CpuFeatures("aarch64", "", frozenset("fp asimd evtstrm aes crc32 cpuid".split())),
}
BOTH, ORT, OV = {"ort-cpu", "openvino"}, {"ort-cpu"}, {"openvino"}

# (cpu, installed, bundle's encoder form) -> (backend, form, OpenVINO hint)
TABLE = [
    # AVX2 only: Q/DQ int8 has no fast kernels; the dynamic form does; fp32 stays on ONNX Runtime (no bf16).
    ("epyc-avx2", BOTH, "fp32", ("ort-cpu", "fp32", None)),
    ("epyc-avx2", BOTH, "int8-static", ("ort-cpu", "int8-static", None)),
    ("epyc-avx2", BOTH, "int8-dynamic", ("ort-cpu", "int8-dynamic", None)),
    ("epyc-avx2", OV, "fp32", ("openvino", "fp32", "f32")),
    # VNNI + AVX512_BF16 EPYC: ORT runs Q/DQ fastest; an fp32 bundle goes bf16 on OpenVINO when installed.
    ("epyc-vnni-bf16", BOTH, "int8-static", ("ort-cpu", "int8-static", None)),
    ("epyc-vnni-bf16", BOTH, "fp32", ("openvino", "bf16", "bf16")),
    ("epyc-vnni-bf16", ORT, "fp32", ("ort-cpu", "fp32", None)),
    ("epyc-vnni-bf16", OV, "int8-static", ("openvino", "int8-static", None)),
    # VNNI without bf16: fp32 stays fp32.
    ("xeon-icelake-vnni", BOTH, "fp32", ("ort-cpu", "fp32", None)),
    ("xeon-icelake-vnni", BOTH, "int8-static", ("ort-cpu", "int8-static", None)),
    # AMX Xeon: OpenVINO uses the tiles for bf16 (int8 stays on ONNX Runtime: see _int8_static).
    ("xeon-amx", BOTH, "int8-static", ("ort-cpu", "int8-static", None)),  # OpenVINO's Q/DQ output shape: machine.py
    ("xeon-amx", ORT, "int8-static", ("ort-cpu", "int8-static", None)),
    ("xeon-amx", BOTH, "fp32", ("openvino", "bf16", "bf16")),
    ("xeon-amx", BOTH, "fp16", ("openvino", "bf16", "bf16")),
    ("xeon-amx", BOTH, "int8-dynamic", ("ort-cpu", "int8-dynamic", None)),
    # Arm: dotprod makes Q/DQ fast on ONNX Runtime; OpenVINO's bf16 is not chosen there.
    ("arm-i8mm", BOTH, "int8-static", ("ort-cpu", "int8-static", None)),
    ("arm-i8mm", ORT, "fp32", ("ort-cpu", "fp32", None)),
    ("arm-dotprod", BOTH, "int8-static", ("ort-cpu", "int8-static", None)),
    ("arm-a53", ORT, "int8-dynamic", ("ort-cpu", "int8-dynamic", None)),
]


@pytest.mark.parametrize(("cpu", "installed", "graph", "expected"), TABLE,
                         ids=[f"{c}-{'+'.join(sorted(i))}-{g}" for c, i, g, _ in TABLE])
def test_choice_over_cpu_kinds(cpu, installed, graph, expected):
    choice = choose_cpu_form(CPUS[cpu], installed, graph, "auto")
    assert (choice.backend, choice.form, choice.hint) == expected
    assert choice.reason  # says what the form buys there


@pytest.mark.parametrize(("cpu", "installed", "graph", "expected"), TABLE,
                         ids=[f"{c}-{'+'.join(sorted(i))}-{g}" for c, i, g, _ in TABLE])
def test_the_default_keeps_the_bundles_precision(cpu, installed, graph, expected):
    # "exported" (the default): float bundles stay in their precision, on ONNX Runtime where it is installed;
    # int8 bundles run as "auto" would (int8 either way).
    choice = choose_cpu_form(CPUS[cpu], installed, graph)
    if graph.startswith("int8"):
        assert (choice.backend, choice.form, choice.hint) == expected
    else:
        assert choice.form == graph and choice.hint in (None, "f32")
        assert choice.backend == ("ort-cpu" if "ort-cpu" in installed else "openvino")


def test_arm_bf16_flag_is_not_mistaken_for_x86_bf16():
    # OpenVINO's bf16 path is for x86 AVX512_BF16/AMX; on Arm a "bf16" flag means the Armv8.6 extension.
    assert CPUS["arm-i8mm"].bf16 and CPUS["arm-i8mm"].arm
    assert not CPUS["epyc-avx2"].bf16


def test_reasons_name_the_missing_instructions():
    slow = choose_cpu_form(CPUS["epyc-avx2"], BOTH, "int8-static")
    assert "without VNNI" in slow.reason and "--int8-form dynamic" in slow.reason
    assert "AMX-INT8" in choose_cpu_form(CPUS["xeon-amx"], BOTH, "int8-static").reason


@pytest.mark.parametrize(("cpu", "installed", "graph", "requested", "needle"), [
    ("xeon-amx", ORT, "fp32", "bf16", "stp-edge[openvino]"),
    ("xeon-amx", BOTH, "fp32", "int8", "needs an int8 bundle"),
    ("xeon-amx", BOTH, "int8-static", "fp32", "needs an fp32 or fp16 bundle"),
    ("xeon-amx", OV, "int8-dynamic", "auto", "stp-edge[ort]"),
    ("xeon-amx", set(), "fp32", "auto", "no CPU backend"),
    ("xeon-amx", BOTH, "fp64", "auto", "must be one of"),
    ("xeon-amx", BOTH, "fp32", "fp8", "must be one of"),
])
def test_impossible_requests_are_refused_with_the_reason(cpu, installed, graph, requested, needle):
    with pytest.raises(UsageError, match=re.escape(needle)):
        choose_cpu_form(CPUS[cpu], installed, graph, requested)


def test_explicit_requests_override_auto():
    assert choose_cpu_form(CPUS["xeon-amx"], BOTH, "fp32", "fp32").form == "fp32"
    assert choose_cpu_form(CPUS["xeon-amx"], BOTH, "fp32", "fp32").backend == "ort-cpu"
    assert choose_cpu_form(CPUS["epyc-avx2"], BOTH, "fp32", "bf16").hint == "bf16"


def test_int8_export_form_follows_the_cpu():
    assert int8_form_for(CPUS["epyc-avx2"]) == "dynamic"
    assert int8_form_for(CPUS["arm-a53"]) == "dynamic"
    for kind in ("epyc-vnni-bf16", "xeon-amx", "xeon-icelake-vnni", "arm-dotprod"):
        assert int8_form_for(CPUS[kind]) == "static", kind


def test_parse_cpuinfo_x86_and_arm():
    x86 = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
           "flags\t\t: fpu avx2 avx512_vnni amx_int8 amx_bf16 avx512_bf16\n\nprocessor\t: 1\n"
           "model name\t: other\nflags\t\t: fpu\n")
    cpu = parse_cpu_features(x86, "x86_64")
    assert cpu.model == "Intel(R) Xeon(R) Processor" and cpu.amx and cpu.vnni and cpu.bf16
    assert cpu.instructions() == ["AVX2", "AVX-512 VNNI", "AVX512_BF16", "AMX-INT8", "AMX-BF16"]
    arm = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm asimddp i8mm bf16\nCPU part\t: 0xd40\n"
    cpu = parse_cpu_features(arm, "aarch64")
    assert cpu.arm and cpu.vnni and cpu.i8mm and cpu.instructions() == ["dotprod", "i8mm", "bf16"]
    assert "no int8/bf16" in parse_cpu_features("", "x86_64").describe()


def test_encoder_form_from_manifest():
    assert encoder_form({"precision": "fp32"}) == "fp32"
    assert encoder_form({"precision": "int8"}) == "int8-static"  # bundles from before the dynamic form
    assert encoder_form({"precision": "int8", "exporter": {"quantization": {"form": "dynamic"}}}) == "int8-dynamic"
    assert encoder_form({"precision": "fp16", "graph_precision": {"encoder": "fp16"}}) == "fp16"
