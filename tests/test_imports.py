"""`import stp_edge` and every runtime module work with torch, TensorRT, pycuda, cuda-python, CuPy, onnxruntime,
openvino unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "tensorrt", "tensorrt_lean", "tensorrt_lean_bindings", "pycuda", "cuda", "cupy", "onnxruntime",
           "openvino")  # "cuda": cuda-python's cuda.bindings


def test_runtime_imports_without_heavy_dependencies():
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        BLOCKED = {BLOCKED!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked for the test: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import stp_edge
        assert stp_edge.Detector.__name__ == "Detector"
        names = ["stp_edge.backends", "stp_edge.cuda", "stp_edge.pipeline"]
        for pkg in (stp_edge, *map(importlib.import_module, names)):
            names += [m.name for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + ".")]
        names = [n for n in names if n.split(".")[1] not in ("model", "export", "demo")]
        for n in names:
            importlib.import_module(n)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print(len(names), " ".join(sorted(names)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _count, names = proc.stdout.split(" ", 1)
    stages = [f"stp_edge.pipeline.{s}" for s in ("snippets", "encode", "temporal", "spatial", "boxes")]
    for required in ("stp_edge.api", "stp_edge.bundle", "stp_edge.cli", "stp_edge.backends.ort",
                     "stp_edge.backends.openvino", "stp_edge.backends.trt", "stp_edge.video", "stp_edge.frames",
                     *stages):
        assert required in names.split()
