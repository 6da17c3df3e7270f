"""The hostile-bundle corpus (scripts/make_hostile_bundles.py): every case fails with its exact error and message.

Each outcome is one line, of the asserted `BundleError` class, and never another exception type.
"""

from __future__ import annotations

from pathlib import Path

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
    assert len(cases) == len(HOSTILE.CASES) + 1 >= 45
    assert (corpus[0] / "cases" / "cases.json").is_file()


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
