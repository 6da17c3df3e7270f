"""Graph outputs are held to their contract (issue 26.1): never a silent normal, never NaN in JSON.

Every output of every graph slot (encoder, temporal, spatial) is made NaN, +inf, 4.85, -2.5, badly summed or
badly shaped by real ONNX nodes appended to the hand-made bundle's graphs (tests/graph_faults.py). Under
`on_invalid="error"` (the default) the Detector raises `GraphOutputError` naming graph, output and snippet; under
"mark" the snippets come out as invalid results whose JSON line is strict and says why.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from graph_faults import corrupt_graph, detector, stream, summary

from stp_edge.api import Detector
from stp_edge.bundle.contract import OUTPUT_RANGES, PROB_SUM_TOLERANCE, OutputRange
from stp_edge.errors import GraphOutputError, InferenceError
from stp_edge.pipeline.calls import Item, check_outputs

FRAGMENT = {"nan": ": NaN", "inf": ": +inf", "high": ": 4.85 outside [0, 1]", "low": ": -2.5 outside [0, 1]",
            "sum": ": probabilities sum to 0.5, expected 1 within 0.01", "shape": ": shape ["}
CASES = [("encoder", "frame_emb", k) for k in ("nan", "inf", "shape")] + \
        [("encoder", "region_emb", k) for k in ("nan", "inf", "shape")] + \
        [("temporal", "score", k) for k in ("nan", "inf", "high", "low", "shape")] + \
        [("temporal", "class_probs", k) for k in ("nan", "inf", "high", "low", "sum", "shape")] + \
        [("spatial", "region_scores", k) for k in ("nan", "inf", "high", "low", "shape")]


@pytest.fixture(scope="module")
def bad_bundles(handmade_bundle, tmp_path_factory):
    """(graph, output, kind) -> a resealed copy of the hand-made bundle with that output broken."""
    root = tmp_path_factory.mktemp("bad-outputs")
    return {case: corrupt_graph(handmade_bundle, root / "-".join(case), *case) for case in CASES}


def _strict_json(result) -> dict:
    return json.loads(json.dumps(result.to_dict(), allow_nan=False))


@pytest.mark.parametrize(("graph", "output", "kind"), CASES)
def test_a_broken_output_raises_naming_graph_output_and_snippet(bad_bundles, frames_factory, graph, output, kind):
    with Detector.load(bad_bundles[graph, output, kind], backend="ort-cpu", preprocess="cpu",
                       spatial_on="all") as det, pytest.raises(GraphOutputError) as err:
        stream(det, frames_factory(40, seed=4))
    message = str(err.value)
    assert f"{graph}.onnx (ort-cpu) output '{output}' for stream 0 snippet 0{FRAGMENT[kind]}" in message, message
    assert "\n" not in message and "on_invalid='mark'" in message
    assert err.value.exit_code == 1
    # the results of the failing call ride on the error: the snippet is there, invalid, in strict JSON
    bad = [r for r in err.value.results if not r.valid]
    assert bad and bad[0].snippet == 0 and FRAGMENT[kind] in bad[0].invalid_reason
    assert _strict_json(bad[0])["invalid"] == bad[0].invalid_reason


@pytest.mark.parametrize(("graph", "output", "kind"), CASES)
def test_marked_results_are_never_a_silent_normal(bad_bundles, frames_factory, graph, output, kind):
    with Detector.load(bad_bundles[graph, output, kind], backend="ort-cpu", preprocess="cpu", spatial_on="all",
                       on_invalid="mark") as det:
        results = stream(det, frames_factory(40, seed=4))
    assert len(results) == 10  # every snippet is still reported, in order
    assert [r.snippet for r in results] == list(range(10))
    for r in results:
        record = _strict_json(r)  # never NaN in a JSON line
        assert not r.valid and f"{graph}.onnx (ort-cpu) output '{output}' for stream 0 snippet {r.snippet}" \
            in record["invalid"]
        if graph == "spatial":  # the score stands; the localisation is missing
            assert 0.0 <= record["score"] <= 1.0 and record["region_scores"] is None and record["boxes"] == []
        else:  # no score, no class, neither normal nor anomalous
            assert math.isnan(r.score) and r.is_anomaly is None and r.class_id == -1 and r.class_name == ""
            assert record["score"] is None and record["is_anomaly"] is None and record["class_name"] is None
            assert record["class_probs"] is None and record["boxes"] == [] and record["anomaly_map"] is None


def test_offline_scores_checks_the_temporal_graph(bad_bundles, frames_factory):
    with Detector.load(bad_bundles["temporal", "score", "high"], backend="ort-cpu", preprocess="cpu") as det, \
            pytest.raises(GraphOutputError, match=r"output 'score' for snippet 0: 4\.85 outside \[0, 1\]"):
        det.offline_scores(frames_factory(40, seed=4))


def _nan_at(output: str, row: int, position: int | None = None):
    """An `alter` function: NaN at one row (and window position) of one output, the rest as computed."""
    def alter(out):
        out = {k: v.copy() for k, v in out.items()}
        index = (row,) if position is None else (row, position)
        out[output][index] = np.nan
        return out
    return alter


@pytest.mark.parametrize("graph", ["encoder", "temporal", "spatial"])
def test_only_the_snippet_concerned_is_marked(handmade_bundle, frames_factory, graph):
    """NaN in one snippet's values of one call: that snippet alone is invalid; its neighbours are as clean.

    Snippet 5's encoder call is the 6th (one per snippet); its temporal call the 6th (snippet t is emitted alone
    once snippet t + 3 is encoded) with the target at window position 3; its spatial call the 6th.
    """
    frames = frames_factory(60, seed=9)
    clean_det, _ = detector(handmade_bundle)
    with clean_det:
        clean = stream(clean_det, frames)
    output, position = {"encoder": ("frame_emb", None), "temporal": ("score", 3),
                        "spatial": ("region_scores", None)}[graph]
    det, _ = detector(handmade_bundle, faulty=graph, on_invalid="mark", alter={5: _nan_at(output, 0, position)})
    with det:
        got = stream(det, frames)
    assert [r.snippet for r in got] == [r.snippet for r in clean] == list(range(15))
    assert got[5].invalid_reason.startswith(f"{graph}.onnx (ort-cpu) output '{output}' for stream 0 snippet 5: NaN")
    if graph == "encoder":  # snippet 5 has no features: a cut, as at a stream's ends (tests/test_backend_faults.py)
        assert summary(got[:2]) == summary(clean[:2]) and summary(got[9:]) == summary(clean[9:])
    else:
        assert summary(got[:5] + got[6:]) == summary(clean[:5] + clean[6:])


def test_good_outputs_pass_unchanged(handmade_bundle, frames_factory):
    """The checks change nothing on good input: every result valid, JSON as before (no "invalid" key)."""
    with Detector.load(handmade_bundle, backend="ort-cpu", preprocess="cpu", spatial_on="all") as det:
        results = stream(det, frames_factory(40, seed=4))
    assert results and all(r.valid for r in results)
    assert all("invalid" not in _strict_json(r) for r in results)
    assert all(0.0 <= r.score <= 1.0 and abs(float(r.class_probs.sum()) - 1.0) < 1e-5 for r in results)


def test_check_outputs_names_each_item_and_spares_the_others():
    """The one check, on its own: per-item problems, the first one per item, good items untouched."""
    score = np.array([[0.2, 0.3], [0.4, np.inf]], np.float32)
    probs = np.array([[[0.5, 0.5], [0.9, 0.3]], [[0.1, 0.9], [0.5, 0.5]]], np.float32)
    items = [Item("stream 0 snippet 1", (0, 1)), Item("stream 1 snippet 0", (1, 0)), Item("stream 1 snippet 1", (1, 1))]
    expected = {"score": ["B", "T"], "class_probs": ["B", "T", 2]}
    problems = check_outputs("temporal", "temporal.plan", {"score": score, "class_probs": probs}, expected,
                             {"B": 2, "T": 2}, items)
    assert problems == [
        f"temporal.plan output 'class_probs' for stream 0 snippet 1: probabilities sum to 1.2, expected 1 within "
        f"{PROB_SUM_TOLERANCE:g}",
        None,
        "temporal.plan output 'score' for stream 1 snippet 1: +inf",
    ]
    missing = check_outputs("temporal", "t", {"score": score}, expected, {"B": 2, "T": 2}, items[:1])
    assert missing == ["t output 'class_probs' for stream 0 snippet 1: missing (the graph returned ['score'])"]
    wrong_batch = check_outputs("temporal", "t", {"score": score, "class_probs": probs}, expected, {"B": 3, "T": 2},
                                items[:1])
    assert wrong_batch == ["t output 'score' for stream 0 snippet 1: shape [2, 2], expected [B=3, T=2]"]


def test_the_range_table_covers_every_contract_output(handmade_bundle):
    """One table beside the contract: every output the contract declares has its range, and only those."""
    from conftest import handmade_config

    from stp_edge.bundle.contract import expected_io

    cfg = handmade_config()
    declared = {(g, o) for regions in ("encoder", "host") for g, io in expected_io(cfg, regions).items()
                for o in io["outputs"]}
    assert declared == {(g, o) for g, outs in OUTPUT_RANGES.items() for o in outs}
    assert OUTPUT_RANGES["temporal"]["class_probs"] == OutputRange(0.0, 1.0, sums_to_one=True)
    assert all(r == OutputRange() for r in OUTPUT_RANGES["encoder"].values())  # embeddings: finite only


def test_errors_are_inference_errors():
    assert issubclass(GraphOutputError, InferenceError)


def _avi(path, frames):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_cli_run_exits_1_naming_the_broken_output(bad_bundles, frames_factory, tmp_path, capsys):
    """`stp-edge run`: one line naming graph, output and snippet, exit 1; `--on-invalid mark` goes on, prints
    each invalid snippet, and its JSONL lines say "invalid" in strict JSON."""
    from stp_edge.cli import main

    video = _avi(tmp_path / "clip.avi", frames_factory(40, seed=4))
    bad = str(bad_bundles["temporal", "score", "nan"])
    first = tmp_path / "first.jsonl"
    assert main(["run", bad, str(video), "--backend", "ort-cpu", "-q", "--jsonl", str(first)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stp-edge run: error: temporal.onnx (ort-cpu) output 'score' for stream 0 snippet 0: "
                              "NaN"), err
    kept = [json.loads(line) for line in first.read_text().splitlines()]  # what the failing call produced
    assert [(r["snippet"], r["score"], r["invalid"][-5:]) for r in kept if "snippet" in r] == [(0, None, ": NaN")]
    out = tmp_path / "out.jsonl"
    assert main(["run", bad, str(video), "--backend", "ort-cpu", "-q", "--on-invalid", "mark",
                 "--jsonl", str(out)]) == 0
    printed = capsys.readouterr()
    invalid = [line for line in (printed.out + printed.err).splitlines() if line.startswith("INVALID ")]
    assert len(invalid) == 10 and invalid[0].startswith(
        "INVALID stream 0 snippet 0 frames [0, 4): temporal.onnx (ort-cpu) output 'score' for stream 0 snippet 0: NaN")
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in a JSON line"))
               for line in out.read_text().splitlines()]
    snippets = [r for r in records if "snippet" in r]
    assert len(snippets) == 10 and all(r["invalid"].endswith(": NaN") and r["score"] is None for r in snippets)
