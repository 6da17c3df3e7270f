"""The `stpedge` GStreamer element: where its plugin file lies, and the environment GStreamer needs to load it.

The element itself is `python/stpedge.py`, a Python element loaded by GStreamer's python plugin loader
(Debian: python3-gst-1.0 and gstreamer1.0-python3-plugin-loader), which embeds the *system* Python. Put
`plugin_path()` on GST_PLUGIN_PATH, and this interpreter's site-packages (where numpy, OpenCV and onnxruntime
live) first on PYTHONPATH: `plugin_env()` gives both, `python -m stp_edge.apps.gst --env` prints them as shell
lines. Nothing here imports GStreamer; `stp_edge.apps.gst.meta` reads the results the element attaches to buffers.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Mapping
from pathlib import Path

ELEMENT = "stpedge"
META = "StpEdgeMeta"  # the custom buffer meta the element attaches (`stp_edge.apps.gst.meta`)
SNIPPET_MESSAGE = "stpedge-snippet"  # element message, one per snippet result
EVENT_MESSAGE = "stpedge-event"  # element message, type begin / update / end


def plugin_path() -> Path:
    """The directory to put on GST_PLUGIN_PATH: the loader reads every `python/*.py` under it."""
    return Path(__file__).resolve().parent


def package_root() -> Path:
    """The directory holding the `stp_edge` package (a source checkout, or site-packages when installed)."""
    return Path(__file__).resolve().parents[3]


def python_path() -> list[str]:
    """Directories the loader's embedded Python needs, in order: this interpreter's site-packages, then stp_edge's.

    Site-packages come first so that the embedded Python imports this environment's numpy (the one OpenCV and
    onnxruntime were built against), not a system copy.
    """
    dirs = [p for p in site.getsitepackages() if Path(p).is_dir()] if hasattr(site, "getsitepackages") else []
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user and Path(user).is_dir():
        dirs.append(user)
    dirs.append(str(package_root()))
    return list(dict.fromkeys(dirs))


def plugin_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with GST_PLUGIN_PATH and PYTHONPATH set so GStreamer finds `stpedge`.

    Existing entries are kept after ours. VIRTUAL_ENV is dropped: the loader ignores it, and an activated venv
    without system site-packages hides `gi` from the embedded Python.
    """
    env = dict(os.environ if base is None else base)
    env.pop("VIRTUAL_ENV", None)

    def join(key: str, first: list[str]) -> str:
        rest = [p for p in env.get(key, "").split(os.pathsep) if p and p not in first]
        return os.pathsep.join(first + rest)

    env["GST_PLUGIN_PATH"] = join("GST_PLUGIN_PATH", [str(plugin_path())])
    env["PYTHONPATH"] = join("PYTHONPATH", python_path())
    return env


def shell_lines() -> str:
    """`export` lines for a shell: GST_PLUGIN_PATH and PYTHONPATH as `plugin_env` sets them."""
    import shlex

    env = plugin_env({})
    return "\n".join(f"export {k}={shlex.quote(env[k])}" for k in ("GST_PLUGIN_PATH", "PYTHONPATH"))


def main(argv: list[str] | None = None) -> int:
    """`python -m stp_edge.apps.gst`: print the plugin path; `--env`: the shell lines of `shell_lines`."""
    args = sys.argv[1:] if argv is None else argv
    if args in ([], ["--env"]):
        print(shell_lines() if args else plugin_path())
        return 0
    print("usage: python -m stp_edge.apps.gst [--env]\n  prints the directory for GST_PLUGIN_PATH, or with --env "
          "the export lines for GST_PLUGIN_PATH and PYTHONPATH", file=sys.stderr)
    return 2
