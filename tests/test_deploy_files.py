"""The service files in deploy/: the Dockerfile's steps and the systemd units, checked as far as this machine can.

Where a Docker daemon answers, the CPU image is built. Here there is none, so its steps are tested instead: what
it copies exists, the extras it installs exist, and its ENTRYPOINT + CMD, STOPSIGNAL and HEALTHCHECK commands are
run for real (in this venv) against a running deployment: the health check says healthy while the cameras
deliver frames, and the stop signal ends the service within Docker's 10 s grace. The systemd units pass
`systemd-analyze verify` (with ExecStart pointed at this venv), and their stop settings match that grace.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import moving_frames, write_avi

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
STP_EDGE = Path(sys.executable).with_name("stp-edge")


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(x for x in path.read_text().splitlines() if not x.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip()]


def setup_extras() -> set[str]:
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "EXTRAS":
            return set(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no EXTRAS")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_copies_what_exists_and_installs_real_extras(name):
    steps = dockerfile(DEPLOY / name)
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and "ENTRYPOINT" in kinds and "HEALTHCHECK" in kinds and "USER" in kinds
    for kind, args in steps:
        if kind == "COPY":
            *sources, _dest = args.split()
            assert all((REPO / s).exists() for s in sources), args
    installs = [re.search(r'pip install "\.\[([^]]+)\]"', args) for kind, args in steps if kind == "RUN"]
    extras = {e for m in installs if m for e in m.group(1).split(",")}
    assert extras and extras <= setup_extras(), extras
    assert "apps" in extras
    assert dict(steps)["STOPSIGNAL"] == "SIGTERM"
    if name == "Dockerfile":
        base = dict(steps)["FROM"]
        m = re.fullmatch(r"python:(\d+)\.(\d+)-slim", base)
        assert m and (int(m.group(1)), int(m.group(2))) >= (3, 10), base


def _command(steps: list[tuple[str, str]], kind: str) -> list[str]:
    args = dict(steps)[kind]
    if kind == "HEALTHCHECK":
        args = args.split("CMD", 1)[1].strip()
    return json.loads(args)


def test_dockerfile_entrypoint_healthcheck_and_stop_signal_work(tmp_path, handmade_bundle):
    """ENTRYPOINT + CMD runs a deployment; HEALTHCHECK says healthy while it runs; STOPSIGNAL ends it in < 10 s."""
    steps = dockerfile(DEPLOY / "Dockerfile")
    entry, cmd, health = _command(steps, "ENTRYPOINT"), _command(steps, "CMD"), _command(steps, "HEALTHCHECK")
    assert entry[:3] == ["stp-edge", "run", "--config"] and cmd == ["/config/cameras.yaml"]
    health_file = Path(health[health.index("health") + 1])
    assert health_file == Path("/run/stp-edge/health.json")
    # The same commands with the image's paths moved into tmp_path, run by this venv's stp-edge, on a live camera
    # (ffmpeg serving a clip in a loop on loopback): it never ends, as a service's cameras do not.
    from test_live_sources import FFMPEG, StreamServer

    from stp_edge.bench.capacity import free_port

    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (make system-deps): no live camera to serve")
    camera = StreamServer(write_avi(tmp_path / "cam.avi", moving_frames(100, seed=2), fps=25.0), free_port(),
                          tmp_path / "ffmpeg.log")
    camera.start()
    mine = tmp_path / "run" / "health.json"
    config = tmp_path / "cameras.yaml"
    config.write_text(f"bundle: {handmade_bundle}\nbackend: ort-cpu\noutput_dir: {tmp_path / 'data'}\n"
                      f"health_file: {mine}\ncameras:\n  door: {{inputs: ['{camera.url}']}}\n")
    proc = subprocess.Popen([str(STP_EDGE), *entry[1:], str(config)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (mine.exists() and json.loads(mine.read_text())["cameras"]["door"]["frames"] > 50):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        check = [str(STP_EDGE), *[str(mine) if a == str(health_file) else a for a in health[1:]]]
        ok = subprocess.run(check, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and ok.stdout == "", ok.stdout + ok.stderr
        stale = subprocess.run([*check, "--max-age", "0.000001"], capture_output=True, text=True, timeout=60)
        assert stale.returncode == 1 and "camera door: last frame" in stale.stdout
        t0 = time.monotonic()
        proc.send_signal(getattr(signal, dict(steps)["STOPSIGNAL"]))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143 and time.monotonic() - t0 < 10.0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        camera.kill()
    after = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert after.returncode == 1 and "the service stopped" in after.stdout and "camera door: offline" in after.stdout


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _docker_works(), reason="no Docker daemon here: the image's steps are tested instead "
                    "(test_dockerfile_entrypoint_healthcheck_and_stop_signal_work)")
def test_cpu_image_builds():
    proc = subprocess.run(["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t", "stp-edge:test", str(REPO)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = subprocess.run(["docker", "run", "--rm", "--entrypoint", "stp-edge", "stp-edge:test", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "run" in run.stdout


UNITS = ("stp-edge.service", "stp-edge-health.service", "stp-edge-health.timer")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    for unit in UNITS:
        text = (DEPLOY / unit).read_text().replace("/opt/stp-edge/venv/bin/stp-edge", str(STP_EDGE))
        (tmp_path / unit).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", *[str(tmp_path / u) for u in UNITS]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_systemd_unit_stops_within_the_grace_and_restarts():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((DEPLOY / "stp-edge.service").read_text())
    svc = unit["Service"]
    assert svc["ExecStart"].split()[1:] == ["run", "--config", "/etc/stp-edge/cameras.yaml"]
    assert svc["KillSignal"] == "SIGTERM" and svc["KillMode"] == "control-group"  # no child outlives it
    assert float(svc["TimeoutStopSec"]) == 10 and svc["SuccessExitStatus"] == "143"
    assert svc["Restart"] == "on-failure" and svc["RuntimeDirectory"] == "stp-edge"
    # The watchdog reads the health file the service's RuntimeDirectory holds.
    assert "/run/stp-edge/health.json" in (DEPLOY / "stp-edge-health.service").read_text()
