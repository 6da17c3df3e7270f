"""Import a script of research/ by path: research/ is not a package, its scripts run against installed stp-edge."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

RESEARCH = Path(__file__).resolve().parents[1] / "research"


def research_script(name: str) -> ModuleType:
    """research/<name>.py as the module `research_<name>` (loaded once per test session)."""
    key = f"research_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, RESEARCH / f"{name}.py")
        assert spec is not None and spec.loader is not None, f"no research/{name}.py"
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]
