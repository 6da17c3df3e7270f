"""Spatial query sets: the paper-style ViT-B/16 defaults, several descriptions per class mapped to the right class,
checked forms with named errors, and user sets from a file through `stp-edge export --queries` (with the box rule)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from stp_edge.config import (
    DEFAULT_CLASSES,
    DEFAULT_NORMAL_QUERIES,
    PAPER_NORMAL_QUERIES,
    STPromptConfig,
    load_queries,
)
from stp_edge.errors import UsageError

CLASSES = ("normal", "fighting", "fire")


def test_vit_b_16_has_the_paper_style_sets_and_tiny_keeps_the_generic_ones():
    cfg = STPromptConfig.named("vit-b-16")
    assert cfg.normal_queries == PAPER_NORMAL_QUERIES and len(PAPER_NORMAL_QUERIES) == 12
    assert {"a picture of a desk", "a picture of a cabinet", "a picture of a chair", "a picture of a door"} <= set(
        cfg.normal_queries)
    pairs = cfg.abnormal_query_texts()
    assert Counter(c for _, c in pairs) == {i: 3 for i in range(1, len(DEFAULT_CLASSES))}  # 3 per class, each class
    assert ("a picture of a car crash", DEFAULT_CLASSES.index("road accident")) in pairs
    assert ("a picture of people fighting", DEFAULT_CLASSES.index("fighting")) in pairs
    tiny = STPromptConfig.named("tiny")
    assert tiny.normal_queries == DEFAULT_NORMAL_QUERIES
    assert tiny.abnormal_query_texts()[0] == ("a photo of fighting", 1)
    # other classes than UCF-Crime's: no descriptions exist for them, one generic query each
    own = STPromptConfig.named("vit-b-16", class_names=CLASSES)
    assert own.abnormal_query_texts() == (("a photo of fighting", 1), ("a photo of fire", 2))


def test_several_descriptions_per_class_go_to_their_class_in_any_order():
    cfg = STPromptConfig(class_names=CLASSES, abnormal_queries=(
        "fire: a picture of flames", "Fire : a picture of smoke", "fighting: a picture of people fighting"))
    # i % C cycling would have given the classes 1, 2, 1
    assert cfg.abnormal_query_texts() == (("a picture of flames", 2), ("a picture of smoke", 2),
                                          ("a picture of people fighting", 1))
    mapped = STPromptConfig(class_names=CLASSES, abnormal_queries={"fire": ["a picture of flames", "smoke"]})
    assert mapped.abnormal_queries == ("fire: a picture of flames", "fire: smoke")
    assert STPromptConfig.from_dict(mapped.to_dict()) == mapped  # the stored form round-trips
    # the older form, one plain description per anomaly class in order, keeps its meaning
    assert STPromptConfig(class_names=CLASSES, abnormal_queries=("a brawl", "a blaze")).abnormal_query_texts() == (
        ("a brawl", 1), ("a blaze", 2))


@pytest.mark.parametrize(("queries", "match"), [
    (("fire: flames", "smoke"), r"abnormal_queries\[1\] 'smoke': expected 'class: description' .* got no class"),
    (("dog: a dog",), r"abnormal_queries\[0\] 'dog: a dog': .*class one of \['fighting', 'fire'\], got 'dog'"),
    (("normal: a street",), r"abnormal_queries\[0\] .*'normal' is the normal class; put its scenes in normal_q"),
    (("fire:   ",), r"abnormal_queries\[0\] 'fire:   ': the description after the class is empty"),
    (("a", "b", "c"), r"abnormal_queries\[0\] 'a': .*or exactly 2 plain descriptions"),
])
def test_bad_abnormal_queries_are_named(queries, match):
    with pytest.raises(UsageError, match=match):
        STPromptConfig(class_names=CLASSES, abnormal_queries=queries)


def test_query_file_forms_and_errors(tmp_path):
    f = tmp_path / "q.json"
    f.write_text(json.dumps({"normal": ["a picture of a shop"], "abnormal": {"fire": ["a picture of flames"]}}))
    assert load_queries(f) == {"normal_queries": ("a picture of a shop",),
                               "abnormal_queries": ("fire: a picture of flames",)}
    f.write_text(json.dumps({"abnormal": ["fire: a picture of flames"]}))
    assert load_queries(f) == {"abnormal_queries": ("fire: a picture of flames",)}
    for text, match in [('{"normals": []}', r"q.json: expected a JSON object with keys 'normal' and/or 'abnormal', "
                         r"got \['normals'\]"), ('{"normal": []}', r"q.json: 'normal' must be a list of one or more"),
                        ('{"abnormal": 3}', r"q.json: 'abnormal' must map class"), ("{", r"q.json: cannot read")]:
        f.write_text(text)
        with pytest.raises(UsageError, match=match):
            load_queries(f)


def test_export_takes_queries_and_box_rule_for_a_trained_model(tmp_path, capsys):
    import numpy as np

    from stp_edge.bundle import Bundle
    from stp_edge.cli import main
    from stp_edge.export.verify import verify_bundle
    from stp_edge.model.stprompt import STPrompt
    from stp_edge.model.weights import save_stprompt

    ckpt = save_stprompt(STPrompt(STPromptConfig.named("tiny")).eval(), tmp_path / "ckpt")
    q = tmp_path / "queries.json"
    q.write_text(json.dumps({"normal": ["a picture of a desk", "a picture of a door"],
                             "abnormal": {"fire": ["a picture of flames", "a picture of smoke"],
                                          "fighting": ["a picture of people fighting"]}}))
    out = tmp_path / "m.stp"
    assert main(["export", "--checkpoint", str(ckpt), "-o", str(out), "--queries", str(q), "--box-rule",
                 "best_window", "--no-simplify", "-q"]) == 0
    b = Bundle.load(out)
    assert b.config.box_rule == "best_window"
    fire, fighting = DEMO_INDEX["fire"], DEMO_INDEX["fighting"]
    assert b.manifest["spatial_queries"] == {"normal": ["a picture of a desk", "a picture of a door"], "abnormal": [
        ["a picture of flames", fire], ["a picture of smoke", fire], ["a picture of people fighting", fighting]]}
    assert b.manifest["source"]["overrides"]["normal_queries"] == ["a picture of a desk", "a picture of a door"]
    # the spatial graph scores with the new queries: torch rebuilt from the checkpoint and the manifest agrees
    rep = verify_bundle(out, checkpoint=ckpt, seed=0, report=None)
    assert rep.ok and {r.graph for r in rep.rows} == {"encoder", "temporal", "spatial"}
    assert np.isfinite([r.max_abs for r in rep.rows]).all()
    q.write_text(json.dumps({"abnormal": ["dog: a dog"]}))
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "n.stp"), "--queries", str(q), "-q"]) == 2
    assert "stp-edge export: error: abnormal_queries[0] 'dog: a dog': expected 'class: description'" in (
        capsys.readouterr().err)


DEMO_INDEX = {name: i for i, name in enumerate(STPromptConfig.named("tiny").class_names)}


def test_queries_that_cannot_apply_to_a_trained_model_are_refused(tmp_path):
    from stp_edge.export.bundle_export import export_bundle

    with pytest.raises(UsageError, match=r"scores regions with its class prompts .*queries cannot be set for it"):
        export_bundle(tmp_path / "d.stp", demo=True, config_overrides={"normal_queries": ["a picture of a desk"]},
                      progress=False)
    with pytest.raises(UsageError, match=r"config_overrides \['region_grid'\] apply to a random model only"):
        export_bundle(tmp_path / "c.stp", checkpoint=tmp_path, config_overrides={"region_grid": 3}, progress=False)
    assert not list(tmp_path.iterdir())  # nothing half-written
