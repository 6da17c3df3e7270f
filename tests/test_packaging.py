"""Packaging: bounded dependency ranges that hold CI's exact pins, extras named by missing-module errors, and the
clean-venv, non-editable install check (scripts/check_install.sh)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requirement_pins
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stp_edge._deps import EXTRA_FOR, explain

ROOT = Path(__file__).resolve().parents[1]
UPPER = {"<", "<=", "==", "===", "~="}
# import name -> distribution, where they differ; None: a distribution outside the extras (TensorRT's lean
# runtime comes with JetPack or its own wheels)
DISTRIBUTION = {"sklearn": "scikit-learn", "tensorrt_lean": None, "yaml": "pyyaml", "paho": "paho-mqtt",
                "cuda": "cuda-bindings"}


def _setup_constants() -> dict:
    """RUNTIME, EXTRAS and setup()'s package_data, read from setup.py's syntax tree (setup() is not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("RUNTIME", "EXTRAS"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                if kw.arg == "package_data":
                    found["package_data"] = ast.literal_eval(kw.value)
    return found


SETUP = _setup_constants()


def _setup_requirements() -> list[tuple[str, Requirement]]:
    reqs = [("install_requires", Requirement(r)) for r in SETUP["RUNTIME"]]
    return reqs + [(f"[{extra}]", Requirement(r)) for extra, rs in SETUP["EXTRAS"].items() for r in rs]


def test_setup_declares_what_this_test_reads():
    assert SETUP["RUNTIME"] and {"ort", "trt", "cuda", "export", "eval", "dev"} <= set(SETUP["EXTRAS"])


@pytest.mark.parametrize(("where", "req"), _setup_requirements(), ids=lambda v: str(v))
def test_every_requirement_has_an_upper_bound(where, req):
    assert any(s.operator in UPPER for s in req.specifier), f"{where} {req} has no upper bound"


def test_ci_pins_lie_inside_setup_ranges():
    pins = requirement_pins("ci.txt")
    checked = 0
    for where, req in _setup_requirements():
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is not None:
            assert req.specifier.contains(pinned, prereleases=True), f"ci.txt pins {req.name}=={pinned}; {where} {req}"
            checked += 1
    assert checked >= 15  # the runtime, export, eval and dev requirements are all pinned in CI


def test_missing_modules_name_an_extra_that_provides_them():
    extras = {name: {canonicalize_name(Requirement(r).name) for r in reqs} for name, reqs in SETUP["EXTRAS"].items()}
    for module, extra in EXTRA_FOR.items():
        assert extra in extras, f"EXTRA_FOR[{module!r}] = {extra!r} is not an extra in setup.py"
        dist = DISTRIBUTION.get(module, module)
        if dist is not None:
            assert canonicalize_name(dist) in extras[extra], f"[{extra}] does not install {dist} ({module})"
    assert {"torch": "export", "onnx": "export", "onnxruntime": "ort", "tensorrt": "trt", "pycuda": "cuda",
            "sklearn": "eval", "matplotlib": "eval"}.items() <= EXTRA_FOR.items()


def test_explain_names_the_extra_of_a_missing_module():
    msg = explain(ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert "pip install 'stp-edge[export]'" in msg and "\n" not in msg
    assert "stp-edge[cuda]" in explain(ModuleNotFoundError("No module named 'pycuda'", name="pycuda.driver"))
    assert explain(ModuleNotFoundError("No module named 'foo'", name="foo")) == "No module named 'foo'"
    assert explain(ValueError("bad clip")) == "bad clip"


def test_clip_vocabulary_is_package_data():
    patterns = SETUP["package_data"].get("stp_edge.model", [])
    assert any(ROOT.joinpath("stp_edge", "model").glob(p) for p in patterns)
    assert (ROOT / "stp_edge" / "model" / "assets" / "bpe_simple_vocab_16e6.txt.gz").is_file()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STP_EDGE_INSTALL_TEST") != "1" and os.environ.get("CI") != "true",
                    reason="builds the wheel and installs it into fresh venvs (2-4 minutes on 2 cores, downloads "
                           "from PyPI); set STP_EDGE_INSTALL_TEST=1 or CI=true to run it")
def test_clean_venv_non_editable_install(tmp_path):
    env = {**os.environ, "BUILD_PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "check_install.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "[check-install" in proc.stdout and "passed" in proc.stdout.splitlines()[-1]
