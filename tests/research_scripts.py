"""Import a script of research/ or scripts/ by path: neither is a package; the scripts run against stp-edge."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def research_script(name: str) -> ModuleType:
    """research/<name>.py as the module `research_<name>` (loaded once per test session)."""
    return load_script("research", name, f"research_{name}")


def repo_script(name: str) -> ModuleType:
    """scripts/<name>.py as the module `<name>` (loaded once per test session)."""
    return load_script("scripts", name, name)


def load_script(folder: str, name: str, key: str) -> ModuleType:
    """<folder>/<name>.py registered in sys.modules as `key` (dataclasses look their module up there)."""
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / folder / f"{name}.py")
        assert spec is not None and spec.loader is not None, f"no {folder}/{name}.py"
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]
