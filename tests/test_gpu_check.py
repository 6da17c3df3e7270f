"""scripts/gpu_check.sh, the prepared GPU check: what it would run (dry run) and what it leaves behind.

The GPU machine returns at most 8 files: the check writes one results file (JSON) and one log, nothing else.
Run here (no GPU), the phases fail, which is what lets the file count and the records be checked for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_ORDER = ["env", "install", "kernels", "timings", "encoder", "nvdec", "thread", "sanitizer"]


def _gpu_phases():
    spec = importlib.util.spec_from_file_location("gpu_phases", REPO / "scripts/gpu_phases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(tmp_path: Path, *args: str, deadline: int = 330) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESULTS": str(tmp_path / "results"), "WORK": str(tmp_path / "work"),
           "PYTHON": str(REPO / ".venv/bin/python"), "DEADLINE": str(deadline)}
    return subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=240, check=False)


def test_dry_run_lists_phases_in_value_order_two_outputs_and_six_minutes(tmp_path):
    res = _check(tmp_path, "--dry-run", "all")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    phases = [ln.split()[2] for ln in lines if ln.startswith("== phase ")]
    assert phases == ["fetch-pycuda", "fatbin", "fetch-nvdec", *RUN_ORDER]
    outputs = [ln.split(": ", 1)[1] for ln in lines if ln.startswith("== output: ")]
    results = str(tmp_path / "results")
    assert outputs == [f"{results}/gpu-check.json", f"{results}/gpu-check.log"]
    run_lines = [ln for ln in lines if ln.startswith("== phase ") and ln.split()[2] in RUN_ORDER]
    for ln in run_lines:  # no phase writes into the results folder itself: scratch goes to WORK
        assert results not in ln, ln
    limits = [int(ln.split("(timeout ")[1].split("s)")[0]) for ln in run_lines]
    assert all(limits) and sum(limits) <= 360  # one full run <= 6 minutes, so a rerun fits 15
    assert "-m gpu tests/test_cuda_gpu.py tests/test_gpu_path.py" in res.stdout
    assert "compute-sanitizer --tool memcheck" in res.stdout and "venv" not in res.stdout.replace(".venv/", "")
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()


def test_a_run_leaves_exactly_one_results_file_and_one_log(tmp_path):
    """On this machine (no GPU) every phase fails or is cut by the deadline; still two files, all phases named."""
    res = _check(tmp_path, "run", deadline=25)
    assert res.returncode != 0
    files = sorted(p.name for p in (tmp_path / "results").rglob("*"))
    assert files == ["gpu-check.json", "gpu-check.log"]
    report = json.loads((tmp_path / "results/gpu-check.json").read_text())
    assert list(report["phases"]) == RUN_ORDER
    assert report["ok"] is False and report["failed"] == RUN_ORDER
    assert report["phases"]["sanitizer"]["rc"] != 0
    log = (tmp_path / "results/gpu-check.log").read_text()
    assert "== phase env" in log and "== summary: 8 failed" in log


def test_junit_summary_counts_a_skip_as_a_failure(tmp_path):
    gpu_phases = _gpu_phases()
    xml = tmp_path / "k.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a"/>'
                   '<testcase classname="t" name="b"><skipped message="no CUDA"/></testcase>'
                   '</testsuite></testsuites>')
    result = gpu_phases.phase_junit(xml)
    assert result["ok"] is False and result["skipped"] == ["t::b"] and result["tests"] == 2
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a"/></testsuite></testsuites>')
    assert gpu_phases.phase_junit(xml)["ok"] is True


def test_merge_keeps_run_order_and_fails_a_phase_whose_result_says_not_ok(tmp_path):
    gpu_phases = _gpu_phases()
    for name, rc in (("thread", 0), ("env", 0), ("encoder", 0)):
        (tmp_path / f"{name}.run.json").write_text(json.dumps({"phase": name, "rc": rc, "seconds": 3}))
    (tmp_path / "env.json").write_text(json.dumps({"devices": [{"name": "NVIDIA H100 80GB HBM3"}]}))
    (tmp_path / "encoder.json").write_text(json.dumps({"ok": False, "pixel_max_abs_diff": 0.5}))
    report = gpu_phases.phase_merge(tmp_path)
    assert list(report["phases"]) == ["env", "encoder", "thread"]
    assert report["failed"] == ["encoder"] and report["ok"] is False
    assert report["devices"] == [{"name": "NVIDIA H100 80GB HBM3"}]
