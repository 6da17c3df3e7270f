"""The README's Quick start, run as written: its shell block, line by line in one shell, in a fresh clone.

The clone is `git clone` of this repository plus the working tree's uncommitted changes (none in CI, which runs
in a clean checkout), so a command that leans on a file only this checkout has (a `cam.mp4`, an earlier run's
`out/`) fails here. `make demo`'s pip step is the one thing not re-run (it needs the network and minutes): the
clone's `.venv/bin` is the test's own venv, the one `make` built, and `make demo` finds it up to date. Nothing is
put on PATH: `stp-edge` must come from the block's own `source .venv/bin/activate`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def quick_start_commands(readme: str) -> list[str]:
    """The shell lines of the README's Quick start section (its indented code blocks), in order."""
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [line[4:] for line in section.splitlines() if line.startswith("    ") and line.strip()]


def test_the_quick_start_starts_from_make_demo_and_uses_its_outputs():
    commands = quick_start_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert commands[0].split("#")[0].split() == ["make", "demo"]
    assert commands[1].split("#")[0].split() == ["source", ".venv/bin/activate"]  # before any stp-edge command
    assert all(c.startswith("stp-edge ") for c in commands[2:]), commands
    assert "out/demo/clip.mp4" in " ".join(commands) and "cam.mp4" not in " ".join(commands)


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, timeout=60).stdout


def _fresh_clone(dest: Path) -> None:
    """`git clone` of the repository, then the working tree's uncommitted edits, new files and deletions."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True, capture_output=True, timeout=120)
    for name in filter(None, _git("ls-files", "-z", "--modified", "--others", "--exclude-standard").split(b"\0")):
        src, dst = REPO / os.fsdecode(name), dest / os.fsdecode(name)
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for name in filter(None, _git("ls-files", "-z", "--deleted").split(b"\0")):
        (dest / os.fsdecode(name)).unlink(missing_ok=True)


def _as_after_make_demos_install(clone: Path) -> None:
    """The clone's `.venv/bin` is this venv's, and `make demo`'s install stamp is newer than what it depends on."""
    (clone / ".venv").mkdir()
    (clone / ".venv" / "bin").symlink_to(VENV / "bin", target_is_directory=True)
    (clone / ".venv" / ".installed-demo").touch()
    old = time.time() - 3600
    for dep in ("requirements/demo.txt", "setup.py", "demo_model/setup.py"):
        os.utime(clone / dep, (old, old))


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in (".git", ".venv", "out")}


@pytest.mark.slow
def test_the_quick_start_runs_as_written_in_a_fresh_clone(tmp_path):
    for tool in ("git", "make", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the Quick start cannot be run as written")
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: there is nothing to clone")
    if not (VENV / "bin" / "stp-edge").exists() or not (VENV / "bin" / "activate").exists():
        pytest.skip(f"the tests do not run in the venv `make` builds ({VENV} has no bin/stp-edge or bin/activate)")
    clone = tmp_path / "stp-edge"
    _fresh_clone(clone)
    _as_after_make_demos_install(clone)
    before = _files(clone)
    commands = quick_start_commands((clone / "README.md").read_text(encoding="utf-8"))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != (VENV / "bin").resolve())
    script = "set -euo pipefail\n" + "\n".join(f"echo '$ {c.split('#')[0].strip()}' >&2\n{c}" for c in commands)
    proc = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    log = f"stdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, log
    assert "stp-edge 0." in proc.stdout, log  # --version
    assert "verify: OK" in proc.stdout and "wrote out/run.jsonl" in proc.stdout, log
    out = clone / "out"
    assert (out / "demo" / "demo.stp" / "manifest.json").is_file() and (out / "demo" / "clip.mp4").is_file()
    assert (out / "run.mp4").stat().st_size > 10_000 and len((out / "run.jsonl").read_text().splitlines()) > 10
    # the random bundle says so once, where it is run; the demo model's runs say nothing of the kind
    assert proc.stderr.count("has random weights") == 1, log
    assert _files(clone) == before, "a Quick start command wrote outside out/ (bench writes nothing unasked)"


# --- the camera apps section: each example is what the code takes or gives ---------------------------------------
def _camera_apps() -> str:
    return (REPO / "README.md").read_text().split("\n## Camera apps\n", 1)[1].split("\n## ", 1)[0]


def _fenced(section: str, lang: str) -> list[str]:
    return [block.split("\n```", 1)[0] for block in section.split(f"```{lang}\n")[1:]]


def test_camera_apps_config_loads(tmp_path, monkeypatch):
    from stp_edge.apps.deploy import load_config

    for name in ("MQTT_PASSWORD", "WEBHOOK_SECRET", "CAM_PASS"):
        monkeypatch.setenv(name, "whsec_c3RwLWVkZ2UgdGVzdCBrZXk6IDMyIGJ5dGVzIGxvbmc=" if "WEBHOOK" in name else "pw")
    (config,) = _fenced(_camera_apps(), "yaml")
    (tmp_path / "cameras.yaml").write_text(config)
    cfg = load_config(tmp_path / "cameras.yaml")
    assert list(cfg.cameras) == ["front_door", "dock"]
    door = cfg.cameras["front_door"]
    assert door.detect.path.endswith("/sub") and door.clips.path.endswith("/main") and door.clips_enabled
    assert [z.name for z in door.zones] == ["driveway"] and cfg.mqtt.port == 1883 and len(cfg.webhooks) == 1


def test_camera_apps_event_example_is_a_valid_message():
    import json

    from conftest import validate_record

    (example,) = _fenced(_camera_apps(), "json")
    assert json.loads(example)["schema"] == "stp-edge.event"
    validate_record(json.loads(example))


def test_camera_apps_names_what_the_code_uses():
    section = _camera_apps()
    mqtt = (REPO / "stp_edge" / "apps" / "mqtt.py").read_text()
    for topic in ("available", "events", "state", "score", "snippets"):
        assert f"`<prefix>/{topic}`" in section or f"`<prefix>/<camera>/{topic}`" in section
        assert f'"{topic}"' in mqtt or f"/{topic}" in mqtt
    webhook = (REPO / "stp_edge" / "apps" / "webhook.py").read_text()
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert header in section and f'"{header}"' in webhook
    line = next(x.strip() for x in section.splitlines() if x.strip().startswith("gst-launch-1.0"))
    gst = (REPO / "tests" / "test_apps_gst.py").read_text()
    assert line.split() == ["gst-launch-1.0", "-m", "filesrc", "location=V.avi", "!", "decodebin", "!",
                            "videoconvert", "!", "stpedge", "bundle=B.stp", "!", "fakesink"]
    assert '"filesrc", f"location={video}", "!", "decodebin", "!", "videoconvert", "!",' in gst
