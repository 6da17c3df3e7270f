from __future__ import annotations

import json

import cv2
import pytest

from stp_edge.cli import build_parser, main

COMMANDS = ("export", "verify", "build-engines", "run", "info", "train", "eval", "demo", "extract", "score", "serve",
            "bench")


def test_every_command_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    top = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd in top
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        assert exit_.value.code == 0
        assert "usage: stp-edge " + cmd in capsys.readouterr().out


def test_export_arguments_map_to_the_library_call():
    args = build_parser().parse_args(["export", "--random", "--config", "vit-b-16", "--seed", "3", "-o", "m.stp",
                                      "--precision", "fp16", "--no-simplify"])
    assert (args.random, args.config, args.seed, args.precision, args.no_simplify) == (True, "vit-b-16", 3,
                                                                                         "fp16", True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--demo", "--random", "-o", "m.stp"])  # mutually exclusive


def test_info_prints_manifest(handmade_bundle, capsys):
    assert main(["info", str(handmade_bundle)]) == 0
    out = capsys.readouterr().out
    assert "classes       normal, fighting, fire" in out and "graph         temporal" in out
    assert main(["info", str(handmade_bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == 1


def test_library_errors_are_one_line_exit_2(tmp_path, handmade_bundle, capsys):
    assert main(["info", str(tmp_path / "absent.stp")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absent.stp not found" in err and "Traceback" not in err
    assert main(["run", str(handmade_bundle), str(tmp_path / "absent.mp4"),
                 "--backend", "ort-cpu"]) == 2
    assert "video source not found" in capsys.readouterr().err


def test_run_writes_one_json_line_per_snippet(tmp_path, handmade_bundle, frames_factory, capsys):
    video = tmp_path / "clip.avi"
    frames = frames_factory(42, height=60, width=80, seed=4)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (80, 60))
    for f in frames:
        writer.write(f)
    writer.release()
    jsonl = tmp_path / "out.jsonl"
    code = main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu",
                 "--jsonl", str(jsonl), "--spatial-all", "-v"])
    assert code == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["snippet"] for r in lines] == list(range(11))  # 10 snippets of 4 frames + a partial one of 2
    assert [(r["frame_start"], r["frame_end"]) for r in lines][-1] == (40, 42)
    assert all(len(r["class_probs"]) == 3 and len(r["region_scores"]) == 4 for r in lines)
    assert all(set(r["timings"]) == {"decode", "preprocess", "encoder", "temporal", "spatial", "post"}
               for r in lines)
    assert len({round(r["score"], 6) for r in lines}) > 5  # scores vary with the video
    out = capsys.readouterr().out
    assert "11 snippets" in out and "42 frames read, 0 dropped" in out
    assert out.count("stream 0 snippet ") == 11


def test_run_max_frames(tmp_path, handmade_bundle, frames_factory):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for f in frames_factory(30):
        writer.write(f)
    writer.release()
    jsonl = tmp_path / "out.jsonl"
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu",
                 "--jsonl", str(jsonl), "--max-frames", "8"]) == 0
    assert len(jsonl.read_text().splitlines()) == 2


def test_run_overlay_and_plot(tmp_path, handmade_bundle, frames_factory):
    pytest.importorskip("matplotlib")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (80, 48))
    for f in frames_factory(20, height=48, width=80):
        writer.write(f)
    writer.release()
    overlay, plot = tmp_path / "overlay.avi", tmp_path / "scores.png"
    assert main(["run", str(handmade_bundle), str(video), "--backend", "ort-cpu", "--spatial-all",
                 "--overlay", str(overlay), "--plot", str(plot)]) == 0
    cap = cv2.VideoCapture(str(overlay))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape == (48, 80, 3)
    assert cv2.imread(str(plot)) is not None


def test_scale_and_bench_commands_map_to_their_library_calls():
    from stp_edge.cli import cmd_bench, cmd_extract, cmd_score, cmd_serve

    p = build_parser()
    a = p.parse_args(["extract", "vids/", "-o", "feats", "--bundle", "b.stp", "--ray", "--workers", "2",
                      "--batch", "8", "--format", "ucf-crime", "--annotations", "ann.txt"])
    assert (a.func, a.videos, str(a.out), str(a.bundle), a.ray, a.workers, a.batch, a.format) == (
        cmd_extract, "vids/", "feats", "b.stp", True, 2, 8, "ucf-crime")
    with pytest.raises(SystemExit):  # one encoder: a bundle or CLIP weights, not both, not neither
        p.parse_args(["extract", "vids/", "-o", "feats"])
    a = p.parse_args(["score", "vids/", "--bundle", "b.stp", "-o", "res", "--no-resume"])
    assert (a.func, a.no_resume, a.ray) == (cmd_score, True, False)
    a = p.parse_args(["serve", "b.stp", "--port", "8123", "--instances", "2"])
    assert (a.func, a.port, a.instances, a.max_batch) == (cmd_serve, 8123, 2, 16)
    a = p.parse_args(["bench", "b.stp", "--streams", "4", "--batch", "2", "--no-torch", "--lookahead", "1"])
    assert (a.func, a.streams, a.batch, a.no_torch, a.lookahead) == (cmd_bench, 4, 2, True, 1)
    a = p.parse_args(["build-engines", "b.stp", "--opt-batch", "4", "--workspace-mb", "512", "--timing-cache",
                      "t.cache"])
    assert (a.opt_batch, a.workspace_mb, str(a.timing_cache)) == (4, 512, "t.cache")
    a = p.parse_args(["export", "--random", "-o", "m.stp", "--precision", "int8", "--calib", "clips",
                      "--triton", "repo", "--triton-backend", "tensorrt"])
    assert (a.precision, str(a.calib), str(a.triton), a.triton_backend) == ("int8", "clips", "repo", ["tensorrt"])


def test_export_int8_without_calibration_is_one_line(tmp_path, capsys):
    assert main(["export", "--random", "-o", str(tmp_path / "m.stp"), "--precision", "int8", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--calib" in err and err.count("\n") == 1 and not (tmp_path / "m.stp").exists()


def test_export_random_takes_the_region_mode_and_a_trained_model_refuses_it(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "crops.stp"
    assert main(["export", "--random", "--region-mode", "crops", "-o", str(out), "-q"]) == 0
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    assert cfg["region_mode"] == "crops" and cfg["region_grid"] == 3  # crops default to the paper's 3x3
    out2 = tmp_path / "tokens.stp"
    assert main(["export", "--random", "--region-mode", "crops", "--region-grid", "2", "-o", str(out2), "-q"]) == 0
    cfg2 = json.loads((out2 / "manifest.json").read_text())["config"]
    assert cfg2["region_mode"] == "crops" and cfg2["region_grid"] == 2
    assert main(["export", "--demo", "--region-mode", "crops", "-o", str(tmp_path / "d.stp"), "-q"]) == 2
    assert "apply to --random" in capsys.readouterr().err
