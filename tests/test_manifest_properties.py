"""Property tests of the manifest loader (hypothesis) and the agreement of its validator with `jsonschema`.

Any JSON value put anywhere in a valid manifest (resealed, so the digest is not what refuses it) loads or raises a
one-line `BundleError`, never another exception; and the hand-written validator never accepts what the reference
`jsonschema` implementation of the published schema rejects.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
jsonschema = pytest.importorskip("jsonschema")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stp_edge.bundle import Bundle, BundleError, rewrite_manifest  # noqa: E402
from stp_edge.bundle.schema import MANIFEST_SCHEMA, SchemaViolation, validate  # noqa: E402

REFERENCE = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from(["../x", "/etc/passwd", "encoder.onnx", "B", "fp16", "0" * 64]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _paths(value, prefix=()):
    """Every (path, container) location inside a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _set(manifest, path, value):
    if not path:
        return value
    target = manifest
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return manifest


@pytest.fixture(scope="module")
def valid(handmade_bundle):
    manifest = json.loads((handmade_bundle / "manifest.json").read_text())
    return handmade_bundle, manifest, list(_paths(manifest))


def _check_agreement(manifest):
    ours = None
    try:
        validate(manifest)
    except SchemaViolation as exc:
        ours = exc
    reference = list(REFERENCE.iter_errors(manifest))
    if ours is None:
        assert not reference, f"the validator accepts what jsonschema rejects: {reference[0].message}"
    return ours, reference


@SETTINGS
@given(data=st.data(), value=json_values)
def test_any_value_anywhere_loads_or_raises_a_bundle_error(valid, tmp_path_factory, data, value):
    src, manifest, paths = valid
    path = data.draw(st.sampled_from(paths))
    mutated = _set(json.loads(json.dumps(manifest)), path, value)
    bundle = tmp_path_factory.mktemp("prop") / "b.stp"
    shutil.copytree(src, bundle)
    if isinstance(mutated, dict):
        rewrite_manifest(bundle, mutated)
    else:
        (bundle / "manifest.json").write_text(json.dumps(mutated))
    message = ""
    try:
        Bundle.load(bundle)
    except BundleError as exc:
        message = str(exc)
    assert "\n" not in message
    if isinstance(mutated, dict):
        _check_agreement(mutated)


@SETTINGS
@given(data=st.data(), value=json_values)
def test_validator_is_never_looser_than_jsonschema(valid, data, value):
    _, manifest, paths = valid
    mutated = _set(json.loads(json.dumps(manifest)), data.draw(st.sampled_from(paths)), value)
    ours, reference = _check_agreement(mutated)
    if reference and ours is None:  # pragma: no cover - _check_agreement already failed
        pytest.fail("disagreement")
    if ours is not None and not reference:
        # The one intended difference: integers written with a fraction (32.0) are refused.
        assert "expected integer, got" in str(ours) and ".0" in str(ours), str(ours)


@SETTINGS
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_manifest_bytes(valid, tmp_path_factory, raw):
    bundle = tmp_path_factory.mktemp("raw") / "b.stp"
    shutil.copytree(valid[0], bundle)
    (bundle / "manifest.json").write_bytes(raw)
    with pytest.raises(BundleError):
        Bundle.load(bundle)


def test_generated_manifests_pass_both_validators(handmade_bundle, handmade_crops_bundle):
    for b in (handmade_bundle, handmade_crops_bundle):
        manifest = json.loads((Path(b) / "manifest.json").read_text())
        validate(manifest)
        REFERENCE.validate(manifest)


def test_hostile_manifests_fail_both_validators(valid):
    _, manifest, _ = valid
    edits = [
        lambda m: m["config"]["vision"].update(patch_size=0),
        lambda m: m["config"]["vision"].update(patch_size="8"),
        lambda m: m.update(config=[]),
        lambda m: m["files"].update({"../x.onnx": "0" * 64}),
        lambda m: m["files"].update({"/abs.onnx": "0" * 64}),
        lambda m: m["files"].update({"a\\b.onnx": "0" * 64}),
        lambda m: m["files"].update({"encoder.onnx": "not-a-hash"}),
        lambda m: m.update(unknown_key=1),
        lambda m: m.pop("manifest_digest"),
        lambda m: m["thresholds"].update(score=10**30),
        lambda m: m["graphs"]["encoder"].update(inputs={"images": ["B", 0, 32, 32]}),
        lambda m: m.update(engines=[{"dir": "../e", "precision": "fp16", "tensorrt_version": "10.3.0",
                                     "gpu_name": "G", "compute_capability": "8.7"}]),
    ]
    for edit in edits:
        mutated = json.loads(json.dumps(manifest))
        edit(mutated)
        with pytest.raises(SchemaViolation):
            validate(mutated)
        assert not REFERENCE.is_valid(mutated)
