"""`stp-edge bench` (stp_edge.bench.run_bench) on tiny bundles: every field present and sane; no timing thresholds."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from stp_edge.bench import STAGES, alert_delays, encoder_flops, run_bench


def _sane(report, *, streams: int) -> None:
    assert set(report.stages) == set(STAGES)
    for name, s in report.stages.items():
        assert s.n == report.snippets > 0, name
        assert 0 <= s.median_ms <= s.p99_ms < 60_000, name
    assert report.stages["encoder"].median_ms > 0 and report.stages["decode"].median_ms > 0
    assert report.end_to_end_ms_per_snippet > 0 and report.frames_per_s > 0
    assert math.isclose(report.cameras_at_25fps, report.frames_per_s / 25)
    assert report.peak_rss_mb > 10
    assert report.streams == streams and report.frames_per_stream > 0
    f = report.floor
    assert f["encoder_gflop_per_snippet"] > 0 and f["fp32_gflops"] > 0 and f["fp32_floor_ms"] > 0
    sc = report.stream_cost
    assert set(sc["median_ms"]) == {"8", "24"} and all(v > 0 for v in sc["median_ms"].values()) and sc["ratio"] > 0
    assert report.machine["cpu"] and report.machine["cores"]


def test_bench_on_the_handmade_bundle_saves_json_markdown_and_plot(handmade_bundle, tmp_path):
    out = tmp_path / "res" / "bench_handmade.json"
    cfg_len = 4  # snippet_len of the handmade config; c = 3
    report = run_bench(handmade_bundle, backend="ort-cpu", batch=2, streams=2, frames=cfg_len * 12,
                       json_out=out, stream_lengths=(8, 24), lookahead=1, progress=False)
    _sane(report, streams=2)
    assert report.snippets == 2 * 12  # every snippet of both streams got its final result
    assert report.precision == "fp32" and report.backend == "ort-cpu"
    assert report.alert_delay["final"] == {"snippets": 4, "frames": 16, "seconds": 16 / 25}
    assert report.alert_delay["provisional (lookahead 1)"]["frames"] == 8
    assert report.torch_baseline is None and any("baseline skipped" in n for n in report.notes)
    saved = json.loads(out.read_text())
    assert saved["stages"]["encoder"]["n"] == report.snippets and saved["alert_delay"]
    assert "| encoder |" in out.with_suffix(".md").read_text()
    if importlib.util.find_spec("matplotlib"):
        assert out.with_suffix(".png").stat().st_size > 1000


def test_bench_refuses_a_precision_the_bundle_does_not_have(handmade_bundle):
    with pytest.raises(ValueError, match="--precision int8"):
        run_bench(handmade_bundle, backend="ort-cpu", precision="int8", progress=False)
    with pytest.raises(ValueError, match="batch"):
        run_bench(handmade_bundle, backend="ort-cpu", batch=2, streams=1, progress=False)


def test_bench_runs_the_plain_pytorch_pipeline_on_the_same_weights(exported_tiny_bundle):
    pytest.importorskip("torch")
    from stp_edge.bundle import Bundle

    cfg = Bundle.load(exported_tiny_bundle).config
    report = run_bench(exported_tiny_bundle, backend="ort-cpu", frames=cfg.snippet_len * 6,
                       stream_lengths=(8, 24), progress=False)
    _sane(report, streams=1)
    tb = report.torch_baseline
    assert tb is not None and tb["snippets"] == 6 and tb["end_to_end_ms_per_snippet"] > 0
    assert set(tb["stages"]) == {"decode", "preprocess", "encoder", "temporal", "spatial"}
    assert all(v > 0 for v in tb["stages"].values())
    assert "plain PyTorch" in report.markdown()


def test_alert_delay_and_flops_follow_the_config():
    from stp_edge.config import STPromptConfig

    cfg = STPromptConfig.named("vit-b-16")
    d = alert_delays(cfg.context, cfg.snippet_len, 2)
    assert d["final"]["frames"] == (cfg.context + 1) * 16
    assert d["provisional (lookahead 2)"] == {"snippets": 3, "frames": 48, "seconds": 48 / 25}
    # ViT-B/16 at 224 px: ~17.6 G multiply-adds per image (the "17.6 GFLOPs" usually quoted) = ~35 GFLOP.
    assert 34e9 < encoder_flops(cfg) < 37e9
