"""CLI commands backed by torch: export, verify, train."""

import numpy as np

from stp_edge.cli import main
from stp_edge.model.weights import load_stprompt


def test_cli_verify_passes_and_prints_table(exported_tiny_bundle, capsys):
    assert main(["verify", str(exported_tiny_bundle), "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "seed 7" in out and "temporal  score" in out and "verify: OK" in out


def test_cli_export_refuses_existing_without_force(exported_tiny_bundle, capsys):
    code = main(["export", "--random", "--config", "tiny", "-o", str(exported_tiny_bundle)])
    assert code == 2
    assert "--force" in capsys.readouterr().err


def test_cli_train_on_feature_dir(tmp_path, capsys):
    rng = np.random.default_rng(0)
    feats = tmp_path / "feats"
    feats.mkdir()
    for i in range(4):
        t = 10 + i
        np.savez(feats / f"v{i}.npz", frame_emb=rng.normal(size=(t, 64)).astype(np.float32),
                 region_emb=rng.normal(size=(t, 49, 64)).astype(np.float32), label=i % 2)
    out = tmp_path / "ckpt"
    assert main(["train", str(feats), "--config", "tiny", "--epochs", "2", "-o", str(out)]) == 0
    assert "trained on 4 videos" in capsys.readouterr().out
    model = load_stprompt(out)
    assert model.text_frozen and model.cfg.vision.embed_dim == 64
    # features of the wrong width are refused with both sizes named
    np.savez(feats / "v9.npz", frame_emb=np.ones((5, 32), np.float32) * 0.5,
             region_emb=np.ones((5, 49, 32), np.float32) * 0.5, label=0)
    bad = tmp_path / "bad"
    bad.mkdir()
    (feats / "v9.npz").rename(bad / "v9.npz")
    assert main(["train", str(bad), "--config", "tiny", "--epochs", "1", "-o", str(tmp_path / "x")]) == 2
    assert "E=32" in capsys.readouterr().err
