"""`train` and the labels `extract` reads: every malformed input or option is one line, before any work.

Issue 26 items 3 (training half), 11 (train) and 13 (train -o): conflicting duplicate labels, a 0.7 label, a
later feature file with other shapes, NaN features, a BOM-prefixed labels.csv, malformed `.npz` files,
`--epochs 0`, `--batch-size 0`, `--lr nan`, an output that is a file or exists, and a full disk.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from stp_edge.cli import main
from stp_edge.config import DEMO_CLASSES
from stp_edge.scale.inputs import VideoLabel, resolve_labels

torch = pytest.importorskip("torch", reason="train needs torch ([export] extra)")

E, R2 = 64, 49  # the tiny config's embedding width and 7x7 token regions


def _write_features(root: Path, n: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        t = 6 + i
        np.savez(root / f"v{i}.npz", frame_emb=rng.normal(size=(t, E)).astype(np.float32),
                 region_emb=rng.normal(size=(t, R2, E)).astype(np.float32), label=i % 2)
    return root


@pytest.fixture
def feats(tmp_path) -> Path:
    return _write_features(tmp_path / "feats")


def _train(feats: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(feats), "--config", "tiny", "--epochs", "2", "-o", str(out), *extra]


def _one_line_error(capsys, *needles: str) -> str:
    text = capsys.readouterr().err
    lines = [line for line in text.strip().splitlines() if "error:" in line]  # progress bars, warnings apart
    assert "Traceback" not in text and len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], (needle, text)
    return lines[0]


# --- feature files --------------------------------------------------------------------------------------------


def _crc_damaged(path: Path) -> None:
    """Flip one byte inside frame_emb's data (all 0.25): the archive opens, the member fails its CRC."""
    data = bytearray(path.read_bytes())
    offset = data.find(np.full(8, 0.25, np.float32).tobytes()) + 16
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


MALFORMED = {
    "a 0.7 label": (lambda p: np.savez(p, frame_emb=np.ones((6, E), np.float32) * 0.3,
                                       region_emb=np.ones((6, R2, E), np.float32) * 0.3, label=0.7),
                    "label is 0.7"),
    "a later file with other shapes": (lambda p: np.savez(p, frame_emb=np.ones((6, 32), np.float32) * 0.3,
                                                          region_emb=np.ones((6, R2, 32), np.float32) * 0.3,
                                                          label=1),
                                       "E=32, R2=49 but v0.npz has E=64, R2=49"),
    "NaN features": (lambda p: np.savez(p, frame_emb=np.where(np.eye(6, E) > 0, np.nan, 0.3).astype(np.float32),
                                        region_emb=np.ones((6, R2, E), np.float32) * 0.3, label=1),
                     "frame_emb holds 6 non-finite value(s)"),
    "not an archive": (lambda p: p.write_bytes(b"this is not a zip archive at all"), "not a readable .npz"),
    "a cut archive": (lambda p: (np.savez(p, frame_emb=np.ones((6, E), np.float32),
                                          region_emb=np.ones((6, R2, E), np.float32), label=1),
                                 p.write_bytes(p.read_bytes()[:2000])), "not a readable .npz"),
    "a CRC error": (lambda p: (np.savez(p, frame_emb=np.full((6, E), 0.25, np.float32),
                                        region_emb=np.ones((6, R2, E), np.float32), label=1), _crc_damaged(p)),
                    "not a readable .npz"),
    "pickled objects": (lambda p: np.savez(p, frame_emb=np.array([{"x": 1}], dtype=object),
                                           region_emb=np.ones((6, R2, E), np.float32), label=1),
                        "not a readable .npz"),
    "no snippet": (lambda p: np.savez(p, frame_emb=np.ones((0, E), np.float32),
                                      region_emb=np.ones((0, R2, E), np.float32), label=1), "no snippet (T=0)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_feature_file_is_one_line_naming_it_before_training(feats, tmp_path, capsys, case):
    make, needle = MALFORMED[case]
    bad = feats / "v9.npz"  # sorted last: the files before it are fine
    make(bad)
    out = tmp_path / "ckpt"
    start = time.perf_counter()
    assert main(_train(feats, out, "--epochs", "100000")) == 2
    assert time.perf_counter() - start < 2  # refused at the start, not after (or during) training
    _one_line_error(capsys, "v9.npz", needle)
    assert not out.exists()


def test_unlabelled_features_say_how_to_label_them(feats, tmp_path, capsys):
    np.savez(feats / "v9.npz", frame_emb=np.ones((6, E), np.float32) * 0.2,
             region_emb=np.ones((6, R2, E), np.float32) * 0.2, label=-1)
    assert main(_train(feats, tmp_path / "ckpt")) == 2
    _one_line_error(capsys, "v9: -1", "--labels")


def test_integral_float_labels_are_their_integer(feats, tmp_path, capsys):
    np.savez(feats / "v9.npz", frame_emb=np.ones((6, E), np.float32) * 0.2,
             region_emb=np.ones((6, R2, E), np.float32) * 0.2, label=np.float64(1.0))
    assert main(_train(feats, tmp_path / "ckpt")) == 0
    assert "trained on 5 videos" in capsys.readouterr().out


# --- options --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "needle"), [
    ("--epochs", "0", "epochs must be an integer >= 1 (CLI: --epochs), got 0"),
    ("--epochs", "-3", "(CLI: --epochs), got -3"),
    ("--batch-size", "0", "batch_size must be an integer >= 1 (CLI: --batch-size), got 0"),
    ("--lr", "nan", "lr must be a finite number > 0 (CLI: --lr), got nan"),
    ("--lr", "inf", "(CLI: --lr), got inf"),
    ("--lr", "-0.1", "(CLI: --lr), got -0.1"),
])
def test_a_bad_option_is_one_line_naming_it_before_any_work(tmp_path, capsys, option, value, needle):
    feats = _write_features(tmp_path / "feats", n=2)
    out = tmp_path / "ckpt"
    start = time.perf_counter()
    assert main(_train(feats, out, option, value)) == 2
    assert time.perf_counter() - start < 2
    _one_line_error(capsys, needle)
    assert not out.exists()


def test_a_diverging_run_is_one_line_naming_lr_and_writes_nothing(tmp_path, capsys):
    feats = _write_features(tmp_path / "feats", n=2)
    out = tmp_path / "ckpt"
    assert main(_train(feats, out, "--lr", "1e30", "--epochs", "3")) == 2
    _one_line_error(capsys, "training diverged in epoch", "lower the learning rate (lr=1e+30, CLI: --lr)")
    assert not out.exists()


# --- the output -----------------------------------------------------------------------------------------------


def test_the_output_is_checked_before_training(feats, tmp_path, capsys):
    slow = ("--epochs", "100000")  # a check after training would not return for minutes
    a_file = tmp_path / "ckpt.safetensors"
    a_file.write_bytes(b"keep me")
    for out in (a_file, a_file / "ckpt"):  # a file; a directory below a file
        start = time.perf_counter()
        assert main(_train(feats, out, *slow)) == 2
        assert time.perf_counter() - start < 2
        _one_line_error(capsys, f"-o {out}")
    assert a_file.read_bytes() == b"keep me"

    out = tmp_path / "ckpt"
    assert main(_train(feats, out)) == 0
    capsys.readouterr()
    weights = (out / "model.safetensors").read_bytes()
    start = time.perf_counter()
    assert main(_train(feats, out, *slow)) == 2
    assert time.perf_counter() - start < 2
    _one_line_error(capsys, f"-o {out} already exists", "--force")
    assert (out / "model.safetensors").read_bytes() == weights
    assert main(_train(feats, out, "--force", "--seed", "5")) == 0
    assert (out / "model.safetensors").read_bytes() != weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "ckpt.safetensors", "feats"]  # no temporaries


def test_the_library_checks_the_output_before_training(feats, tmp_path):
    """`train_from_features` itself (what Python callers use) checks `out` before reading a feature file."""
    from stp_edge.errors import OutputExistsError
    from stp_edge.model.train import train_from_features

    a_file = tmp_path / "ckpt.safetensors"
    a_file.write_bytes(b"keep me")
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_bytes(b"an older checkpoint")
    for out, error, match in ((a_file, ValueError, "is a file; a checkpoint is a directory"),
                              (a_file / "ckpt", ValueError, "cannot create it in"),
                              (full, OutputExistsError, r"already exists; pass overwrite=True \(CLI: --force\)")):
        start = time.perf_counter()
        with pytest.raises(error, match=match):
            train_from_features(feats, out, config="tiny", epochs=100000, progress=False)
        assert time.perf_counter() - start < 2
    assert a_file.read_bytes() == b"keep me" and (full / "model.safetensors").read_bytes() == b"an older checkpoint"


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(feats, tmp_path):
    """The file-size limit makes the kernel refuse the checkpoint's writes, as a full disk does (EFBIG/ENOSPC)."""
    out = tmp_path / "ckpt"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from stp_edge.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        sys.exit(main({_train(feats, out)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and err[-1].startswith("stp-edge train: error: -o "), proc.stderr
    assert "cannot write the checkpoint (" in err[-1] and "free disk space" in err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats"]  # no checkpoint, no half-written temporary


# --- labels.csv (read by extract) -----------------------------------------------------------------------------


def test_labels_csv_with_a_byte_order_mark_reads_as_without(tmp_path):
    vids = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    csv = tmp_path / "labels.csv"
    csv.write_bytes("\ufeffvideo,label\na.mp4,0\nb.mp4,fire\n".encode())
    assert resolve_labels(vids, DEMO_CLASSES, labels=csv) == {vids[0]: VideoLabel(0, "normal"),
                                                               vids[1]: VideoLabel(5, "fire")}
    csv.write_bytes("\ufeffa.mp4,0\nb.mp4,fire\n".encode())  # no header: the first video keeps its name
    assert resolve_labels(vids, DEMO_CLASSES, labels=csv)[vids[0]] == VideoLabel(0, "normal")
    csv.write_bytes(b"a.mp4,0\nb\xe9.mp4,1\n")  # Latin-1
    with pytest.raises(ValueError, match=r"labels.csv: not UTF-8 text .* save it as UTF-8"):
        resolve_labels(vids, DEMO_CLASSES, labels=csv)


@pytest.mark.parametrize(("rows", "match"), [
    ("a.mp4,0\nb.mp4,1\na.mp4,fire\n", r"labels.csv:3: video 'a.mp4' is labelled 5 \(fire\) here but 0 \(normal\) "
                                       r"on line 1"),
    ("a.mp4,0\nb.mp4,1\na,2\n", r"labels video .*a.mp4 differently: 'a.mp4' -> 0 \(normal\); 'a' -> 2 \(falling\)"),
    ("/x/a.mp4,1\na.mp4,0\nb.mp4,1\n", r"labels video .*a.mp4 differently"),
])
def test_conflicting_duplicate_labels_are_refused(tmp_path, rows, match):
    vids = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    csv = tmp_path / "labels.csv"
    csv.write_text(rows)
    with pytest.raises(ValueError, match=match):
        resolve_labels(vids, DEMO_CLASSES, labels=csv)
    csv.write_text("a.mp4,0\nb.mp4,1\na.mp4,normal\na,0\n")  # the same label twice is one label
    assert resolve_labels(vids, DEMO_CLASSES, labels=csv)[vids[0]] == VideoLabel(0, "normal")


def test_extract_checks_labels_before_encoding(handmade_bundle, tmp_path, capsys):
    import cv2
    from conftest import moving_frames

    videos = tmp_path / "videos"
    videos.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        w = cv2.VideoWriter(str(videos / f"{name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
        for f in moving_frames(8, seed=seed):
            w.write(f)
        w.release()
    csv = tmp_path / "labels.csv"
    csv.write_text("a.avi,0\nb.avi,1\na.avi,2\n")
    out = tmp_path / "feats"
    argv = ["extract", str(videos), "--bundle", str(handmade_bundle), "-o", str(out), "--labels", str(csv),
            "--backend", "ort-cpu"]
    assert main(argv) == 2
    _one_line_error(capsys, "labels.csv:3: video 'a.avi' is labelled 2")
    assert not list(out.glob("*.npz"))
