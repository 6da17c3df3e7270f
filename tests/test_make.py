"""The Makefile's promises (issue 29): `make demo` installs what the demo needs, not the CI set; system packages
are best effort (no root, no apt-get, no ffmpeg: the build goes on), and the tests that need them skip with the
reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import requirement_pins

REPO = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def test_the_demo_set_is_a_smaller_part_of_the_ci_set():
    demo, ci = requirement_pins("demo.txt"), requirement_pins("ci.txt")
    assert {k: ci.get(k) for k in demo} == demo  # the same versions the tests run
    ci_only = {"pytest", "ruff", "ray", "tritonclient", "polygraphy", "hypothesis", "jsonschema", "scikit-learn",
               "vermin"}
    assert ci_only <= set(ci) and not ci_only & set(demo)
    assert {"torch", "onnx", "onnxruntime", "opencv-python-headless", "matplotlib", "av"} <= set(demo)


def _recipe(target: str) -> str:
    """What `make TARGET` would run on a fresh machine (-B: every target out of date; -n: nothing is run)."""
    proc = subprocess.run([MAKE, "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@needs_make
def test_make_demo_installs_the_demo_set_and_make_test_the_ci_set():
    demo, test = _recipe("demo"), _recipe("test")
    assert "-r requirements/demo.txt" in demo and "requirements/ci.txt" not in demo
    assert "stp-edge demo --out out/demo" in demo
    assert "-r requirements/ci.txt" in test and "pytest" in test
    torch_index = subprocess.run([MAKE, "-n", "-B", "demo", "TORCH_INDEX=https://example.invalid/whl/cpu"],
                                 cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    first = torch_index.index("--index-url https://example.invalid/whl/cpu")
    assert first < torch_index.index("-r requirements/demo.txt")  # the CPU build first, then the pins


def _bare_path(tmp: Path) -> str:
    """A PATH with make and id only: no ffmpeg, no apt-get."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in ("make", "id"):
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed")
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


@needs_make
def test_system_deps_are_best_effort(tmp_path):
    """Without ffmpeg and without a way to install it, `make system-deps` says so and succeeds."""
    work = Path(tempfile.mkdtemp(prefix="stp-make-"))  # readable by another user, unlike pytest's tmp_path
    try:
        work.chmod(0o755)
        shutil.copy2(REPO / "Makefile", work / "Makefile")
        env = {"PATH": _bare_path(work), "HOME": str(work)}
        users = [[]]
        if os.geteuid() == 0 and shutil.which("runuser"):
            users.append([shutil.which("runuser"), "-u", "nobody", "--"])  # a user who may not run apt-get
        for prefix in users:
            proc = subprocess.run([*prefix, MAKE, "-s", "system-deps"], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=120)
            assert proc.returncode == 0, (prefix, proc.stdout, proc.stderr)
            assert "ffmpeg is not installed" in proc.stdout and "tests will skip" in proc.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_live_source_tests_skip_with_their_reason_without_ffmpeg(tmp_path):
    env = {**os.environ, "PATH": _bare_path(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/test_live_sources.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "passed" not in proc.stdout.splitlines()[-1] and "skipped" in proc.stdout.splitlines()[-1]
    assert "ffmpeg is not installed" in proc.stdout
