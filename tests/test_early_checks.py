"""Checks that must come before the work they guard (issue 26, item 13): each fails in under 2 s, in one line.

An empty annotation file says so; `eval` without scikit-learn fails before a benchmark is generated or a video
scored; `export --precision int8` checks `--calib-frames` and the calibration videos before exporting a graph.
(`train -o` is checked before training: tests/test_train_inputs.py.)
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stp_edge.cli import main
from stp_edge.datasets import AnnotationError, read_ucf_crime
from stp_edge.errors import StpEdgeError


def _one_line_error(text: str, *needles: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and ": warning: " not in line]
    assert "Traceback" not in text and len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- empty annotation files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n", "# UCF-Crime test annotations\n\n# none yet\n"])
def test_an_empty_annotation_file_says_it_holds_no_entries(handmade_bundle, tmp_path, capsys, content):
    ann = tmp_path / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    ann.write_text(content)
    with pytest.raises(AnnotationError, match=f"annotation file {ann} holds no entries"):
        read_ucf_crime(ann)
    argv = ["eval", str(handmade_bundle), "--data", str(tmp_path), "--format", "ucf-crime", "--annotations",
            str(ann), "--backend", "ort-cpu"]
    assert main(argv) == 2
    err = _one_line_error(capsys.readouterr().err, f"annotation file {ann} holds no entries")
    assert "no video of 0" not in err


# --- eval without scikit-learn ----------------------------------------------------------------------------------


def _fresh_cli(argv: list[str], *, block: str | None = None) -> subprocess.CompletedProcess:
    """Run `stp-edge ARGV` in a fresh interpreter (optionally with module `block` impossible to import, as if not
    installed); it prints the seconds `main` took and whether torch was imported, on its last stdout line."""
    script = textwrap.dedent(f"""
        import sys, time
        if {block!r}:
            sys.modules[{block!r}] = None  # `import {block}` now fails as it does where the package is absent
        from stp_edge.cli import main
        start = time.perf_counter()
        code = main({argv!r})
        print(f"ELAPSED {{time.perf_counter() - start:.3f}} torch={{'torch' in sys.modules}}")
        sys.exit(code)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def _elapsed(proc: subprocess.CompletedProcess) -> float:
    return float(proc.stdout.splitlines()[-1].split()[1])


def test_eval_without_scikit_learn_fails_before_scoring_any_video(handmade_bundle, tmp_path):
    from stp_edge.synthetic import write_benchmark

    data = tmp_path / "data"
    write_benchmark(data, split="test", num_videos=2, seed=3, width=96, height=72, num_frames=24, classes=("fire",))
    generated = tmp_path / "out"
    for argv in (["eval", str(handmade_bundle), "--data", str(data), "--backend", "ort-cpu"],
                 ["eval", str(handmade_bundle), "--backend", "ort-cpu", "--out", str(generated)]):
        proc = _fresh_cli(argv, block="sklearn")
        assert proc.returncode == 2, proc.stderr
        _one_line_error(proc.stderr, "sklearn.metrics is not installed", "pip install 'stp-edge[eval]'")
        assert len(proc.stdout.splitlines()) == 1 and _elapsed(proc) < 2, proc.stdout  # no per-video line
    assert not generated.exists()  # no synthetic benchmark generated either


# --- int8 export ----------------------------------------------------------------------------------------------


def _clips(root: Path, num_frames: int, seeds=(11, 12)) -> Path:
    from stp_edge.synthetic import generate_clip, write_video

    root.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        clip = generate_clip(seed, width=96, height=72, num_frames=max(num_frames, 16), anomaly="fire")
        frames = itertools.islice(clip.frames, num_frames)
        write_video(root / f"clip_{seed}.avi", frames, 25.0, (96, 72), "MJPG", num_frames)
    return root


def _export_int8(out: Path, calib: Path, *extra: str) -> list[str]:
    return ["export", "--random", "--config", "tiny", "-o", str(out), "--precision", "int8", "--calib", str(calib),
            "-q", *extra]


@pytest.mark.parametrize(("case", "needle"), [
    ("--calib-frames 0", "calib_frames must be an integer >= 1 (CLI: --calib-frames), got 0"),
    ("--calib-frames -5", "(CLI: --calib-frames), got -5"),
    ("a broken video", "broken.avi"),
    ("videos shorter than a snippet", "no full snippet (16 frames)"),
])
def test_int8_export_checks_calibration_before_exporting(tmp_path, case, needle):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime.quantization")
    extra: list[str] = []
    if case.startswith("--calib-frames"):
        calib = _clips(tmp_path / "calib", 32)
        extra = case.split()
    elif case == "a broken video":
        calib = _clips(tmp_path / "calib", 32)
        (calib / "broken.avi").write_bytes(b"RIFF, but not really a video")
    else:
        calib = _clips(tmp_path / "calib", 10)
    out = tmp_path / "int8.stp"
    proc = _fresh_cli(_export_int8(out, calib, *extra))
    assert proc.returncode == 2, proc.stderr
    assert _elapsed(proc) < 2 and proc.stdout.endswith("torch=False\n"), proc.stdout  # before torch, before export
    _one_line_error(proc.stderr, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]  # no bundle, no temporary directory

    from stp_edge.export.bundle_export import export_bundle  # the library call checks the same, before exporting

    start = time.perf_counter()
    with pytest.raises(StpEdgeError, match=re.escape(needle)):
        export_bundle(out, random_config="tiny", precision="int8", calib=calib, progress=False,
                      calib_frames=int(extra[1]) if extra else None)
    assert time.perf_counter() - start < 2


def test_calib_frames_without_int8_is_refused(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["export", "--random", "--config", "tiny", "-o", str(tmp_path / "a.stp"), "--calib-frames", "8",
                 "-q"]) == 2
    _one_line_error(capsys.readouterr().err, "--calib-frames", "only used with precision='int8'")
