"""The hostile-bundle corpus (scripts/make_hostile_bundles.py): every case fails with its exact error and message.

Each outcome is one line, of the asserted `BundleError` class, and never another exception type. The corpus holds
edited manifests, unsafe paths, unimplemented preprocessing, and hostile graphs (external data in every kind of
tensor, control flow, custom domains, huge allocations). Every entry point refuses each case with the one error
`Bundle.load` gives: `run`, `info`, `score`, `extract`, `verify`, `serve` (before any server starts), the Triton
repository writer and `Detector.load`.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import pytest
from conftest import handmade_config, write_handmade_bundle
from research_scripts import repo_script

import stp_edge.bundle as bundle_api
from stp_edge.bundle import Bundle, BundleError

ROOT = Path(__file__).resolve().parents[1]


HOSTILE = repo_script("make_hostile_bundles")


@pytest.fixture(scope="module")
def corpus(handmade_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    other = write_handmade_bundle(out / "donor" / "other.stp", handmade_config(region_grid=4, motion_topk=2))
    return out, {c.name: c for c in HOSTILE.make_cases(handmade_bundle, out / "cases", other)}


def test_corpus_is_complete(corpus):
    _, cases = corpus
    assert len(cases) == len(HOSTILE.CASES) + 1 >= 80
    assert (corpus[0] / "cases" / "cases.json").is_file()
    # external data in every kind of tensor (initializers, sparse ones, tensor attributes), in every kind of subgraph
    external = " ".join(c[3] for c in HOSTILE.GRAPH_CASES if c[0].startswith("ext_"))
    for holder in ("(initializer) keeps", "(sparse initializer (values)) keeps", "(Constant) attribute 'value')",
                   "(Constant) attribute 'sparse_value' (values))", "(ConstantOfShape) attribute 'value')",
                   "attribute 'weights')", "(Loop) attribute 'body' >", "(If) attribute 'then_branch' >",
                   "(Scan) attribute 'body' >", "function 'f' >"):
        assert holder in external, holder


@pytest.mark.parametrize("name", [c[0] for c in HOSTILE.CASES] + [HOSTILE.SWAP[0]])
def test_hostile_bundle_is_refused_exactly(corpus, name):
    out, cases = corpus
    case = cases[name]
    with pytest.raises(BundleError) as err:
        Bundle.load(out / "cases" / f"{name}.stp")
    assert type(err.value) is getattr(bundle_api, case.error), f"{name}: {type(err.value).__name__}: {err.value}"
    message = str(err.value)
    assert case.fragment in message, f"{name}: {message}"
    assert "\n" not in message and len(message) < 1000, f"{name}: message is not one short line"


def test_valid_bundle_and_detector_load(handmade_bundle):
    from stp_edge.api import Detector

    Bundle.load(handmade_bundle)
    Detector.load(handmade_bundle, backend="ort-cpu").close()


# --- every entry point: one loader, one set of checks ---------------------------------------------------------
@pytest.fixture(scope="module")
def video(tmp_path_factory, handmade_bundle) -> Path:
    from conftest import moving_frames

    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48))
    for f in moving_frames(8):
        writer.write(f)
    writer.release()
    return path


def _cli_error(argv: list[str], capsys) -> str:
    """The one-line error `stp-edge` prints for `argv` (it must exit 2 with exactly one error line)."""
    from stp_edge.cli import main

    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    found = re.findall(rf"^stp-edge {argv[0]}: error: (.*)$", err, flags=re.M)
    assert code == 2 and len(found) == 1, f"{argv[0]} exit {code}: {err}"
    return found[0]


@pytest.mark.parametrize("name", [c[0] for c in HOSTILE.CASES] + [HOSTILE.SWAP[0]])
def test_every_entry_point_refuses_it_with_the_same_error(corpus, name, video, tmp_path, capsys):
    """run, info, score, extract, verify, serve, the Triton writer, Detector.load: the error `Bundle.load` gives."""
    from stp_edge.api import Detector
    from stp_edge.scale.triton_repo import write_triton_repository

    b = corpus[0] / "cases" / f"{name}.stp"
    with pytest.raises(BundleError) as err:
        Bundle.load(b)
    expected = str(err.value)
    assert _cli_error(["run", str(b), str(video), "--backend", "ort-cpu"], capsys) == expected
    assert _cli_error(["info", str(b)], capsys) == expected
    assert _cli_error(["score", str(video), "--bundle", str(b), "-o", str(tmp_path / "scores"),
                       "--backend", "ort-cpu"], capsys) == expected
    assert _cli_error(["extract", str(video), "--bundle", str(b), "-o", str(tmp_path / "feats")], capsys) == expected
    assert _cli_error(["verify", str(b)], capsys) == expected
    # A server interpreter that does not exist: had serve got past the checks, starting it would fail otherwise.
    assert _cli_error(["serve", str(b), "--python", str(tmp_path / "no-python"), "--port", "1"], capsys) == expected
    for call in (lambda: write_triton_repository(b, tmp_path / "repo"),
                 lambda: Detector.load(b, backend="ort-cpu")):
        with pytest.raises(BundleError) as err:
            call()
        assert type(err.value) is getattr(bundle_api, corpus[1][name].error) and str(err.value) == expected
    assert not (tmp_path / "repo").exists()  # the writer wrote nothing
