"""The runtime stands without its wings: it never pulls in demo/, eval/ or the PyTorch model."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "stp_edge"
WINGS = ("stp_edge.demo", "stp_edge.eval")
# Not runtime: the wings themselves, the PyTorch model, the offline archive jobs of scale/ (extract/score over a
# data set), and the CLI, whose `train`/`eval`/`demo` commands call into them (lazily, inside the command). A new
# package is runtime, and checked, unless it is named here: the synthetic benchmark (synthetic/) and the data-set
# readers and metrics (datasets.py, metrics.py) stand below the wings and are checked like the runtime.
NOT_RUNTIME = ("demo", "eval", "model", "scale", "cli.py")


def test_importing_the_runtime_loads_no_wing_and_no_model():
    code = textwrap.dedent("""
        import sys
        import stp_edge.api, stp_edge.backends, stp_edge.bundle, stp_edge.video
        print(" ".join(sorted(m for m in sys.modules
                              if m.startswith(("stp_edge.demo", "stp_edge.eval", "stp_edge.model")))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


def _imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_runtime_module_imports_a_wing_even_lazily():
    runtime = [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in NOT_RUNTIME]
    assert PACKAGE / "api.py" in runtime  # the scan sees the runtime
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.startswith(WINGS))
                 for p in runtime}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_runtime_module_imports_export_even_lazily():
    """export/ is a layer above the runtime: the torch backend rebuilds models through stp_edge.model.sources."""
    runtime = [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in NOT_RUNTIME]
    assert PACKAGE / "backends" / "torch.py" in runtime and PACKAGE / "bench" / "run.py" in runtime
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.startswith("stp_edge.export"))
                 for p in [*runtime, *sorted((PACKAGE / "model").rglob("*.py"))]}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_model_does_not_import_the_wings():
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.startswith(WINGS))
                 for p in sorted((PACKAGE / "model").rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_eval_wing_imports_without_torch_or_onnxruntime():
    code = textwrap.dedent("""
        import sys
        import stp_edge.eval
        print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime"))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


def test_the_floors_under_the_wings_load_no_wing_and_no_torch():
    """The generator, the data-set readers and the primitive metrics are shared by the wings, so they sit below them."""
    code = textwrap.dedent("""
        import sys
        import stp_edge.datasets, stp_edge.metrics, stp_edge.synthetic
        print(" ".join(sorted(m for m in sys.modules if m.startswith(("stp_edge.demo", "stp_edge.eval",
              "stp_edge.bench", "stp_edge.scale", "stp_edge.model")) or m.split(".")[0] in ("torch", "onnxruntime"))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


def test_missing_demo_model_package_says_how_to_install_it(monkeypatch):
    from stp_edge._deps import MissingDependencyError
    from stp_edge.demo import demo_checkpoint_dir

    monkeypatch.setitem(sys.modules, "stp_edge_demo_model", None)  # makes `import stp_edge_demo_model` fail
    with pytest.raises(MissingDependencyError, match=r"pip install \./demo_model"):
        demo_checkpoint_dir()

