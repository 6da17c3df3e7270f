"""CLIP BPE tokenizer: known ids, agreement with open_clip's tokenizer and vocabulary (its real files), packaging."""

import hashlib

import numpy as np
import pytest

from stp_edge.config import DEFAULT_CLASSES, DEFAULT_NORMAL_QUERIES, PAPER_NORMAL_QUERIES
from stp_edge.model import tokenizer as tokenizer_mod
from stp_edge.model.tokenizer import BPE_PATH, Tokenizer, find_bpe_file

# sha256 of openai/CLIP's clip/bpe_simple_vocab_16e6.txt.gz (also in stp_edge/model/assets/README)
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# Ids from open_clip 3.3.0's SimpleTokenizer().encode(text) (recorded once; open_clip is no longer installed).
OPEN_CLIP_IDS = {
    "Hello, world! It's 2024.": [3306, 267, 1002, 256, 585, 568, 273, 271, 273, 275, 269],
    "a man is fighting   in the street": [320, 786, 533, 4652, 530, 518, 2012],
    "naïve café &amp; rock'n'roll": [1097, 35689, 563, 15304, 261, 2172, 262, 333, 262, 3341],
    "an object left behind": [550, 14115, 1823, 2403],
    "X X X X road accident.": [343, 343, 343, 343, 1759, 6608, 269],
}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def test_known_ids(tok):
    ids = tok("a photo of a dog", context_length=10)
    assert ids.dtype == np.int64
    assert ids[0].tolist() == [49406, 320, 1125, 539, 320, 1929, 49407, 0, 0, 0]
    assert tok.vocab_size == 49408


def test_round_trip_and_too_long(tok):
    assert tok.decode(tok.encode("A photo of the ROAD")) == "a photo of the road"
    with pytest.raises(ValueError, match="longer than context_length=4"):
        tok("a photo of a dog", context_length=4)


@pytest.mark.parametrize("text", list(OPEN_CLIP_IDS))
def test_agrees_with_open_clip_tokenizer(tok, text):
    assert tok.encode(text) == OPEN_CLIP_IDS[text]


def test_vocabulary_is_packaged_with_its_license(monkeypatch):
    monkeypatch.delenv("STP_EDGE_BPE_PATH", raising=False)
    assert find_bpe_file() == BPE_PATH
    assert hashlib.sha256(BPE_PATH.read_bytes()).hexdigest() == BPE_SHA256
    assert "Copyright (c) 2021 OpenAI" in (BPE_PATH.parent / "LICENSE-CLIP").read_text()


def test_env_override(tmp_path, monkeypatch):
    copy = tmp_path / "vocab.txt.gz"
    copy.write_bytes(BPE_PATH.read_bytes())
    monkeypatch.setenv("STP_EDGE_BPE_PATH", str(copy))
    assert find_bpe_file() == copy
    monkeypatch.setenv("STP_EDGE_BPE_PATH", str(tmp_path / "missing.gz"))
    with pytest.raises(FileNotFoundError, match="STP_EDGE_BPE_PATH"):
        find_bpe_file()


def test_missing_package_data_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("STP_EDGE_BPE_PATH", raising=False)
    monkeypatch.setattr(tokenizer_mod, "BPE_PATH", tmp_path / "assets" / "gone.txt.gz")
    with pytest.raises(FileNotFoundError, match="package data"):
        find_bpe_file()


# --- against open_clip's own files (scripts/fetch_real_assets.py: the open-clip-torch 3.3.0 wheel, pinned by
# sha256; its tokenizer.py is run from the extracted file, the package is never installed or imported) ---

CORPUS = (
    "a photo of a dog", "Hello, world! It's 2024.", "naïve café &amp; rock'n'roll", "X X X X road accident.",
    "a man is fighting   in the street", "don't STOP-believing!!! #1 (really?)", "ÀÉÎÕÜ façade — “quotes” …",
    "emoji 🚒🔥 fire truck", "a  b\tc\nd", "3.14159 km/h, 1,000,000 people; 50%", "pipes | and <angles>",
    "Ünïcödé wörds ünd ßtraße", "日本語のテキスト", "supercalifragilisticexpialidocious", "a" * 60, "",
    "&lt;b&gt;bold&lt;/b&gt; &amp;amp;", "x" + "-" * 30 + "y",
)


@pytest.fixture(scope="module")
def open_clip_files():
    from real_assets import fetcher, real_assets

    paths = real_assets()
    return paths["bpe_simple_vocab_16e6.txt.gz"], paths["tokenizer.py"], fetcher()


@pytest.fixture(scope="module")
def open_clip_ref(open_clip_files):
    """open_clip 3.3.0's SimpleTokenizer, loaded from its source file beside its own vocabulary."""
    import importlib.util
    import sys

    pytest.importorskip("torch")  # open_clip's tokenizer.py imports torch at its top
    pytest.importorskip("ftfy")
    bpe, source, _ = open_clip_files
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_reference", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module, module.SimpleTokenizer(str(bpe))


def test_packaged_vocabulary_is_open_clips_bit_for_bit(open_clip_files):
    bpe, _, _ = open_clip_files
    assert bpe.read_bytes() == BPE_PATH.read_bytes()
    assert hashlib.sha256(bpe.read_bytes()).hexdigest() == BPE_SHA256


def test_vocabulary_and_merge_ranks_equal_open_clips(tok, open_clip_ref):
    _, ref = open_clip_ref
    # open_clip 3.x spells the two special tokens <start_of_text>/<end_of_text>; OpenAI's (ours) <|...|>: same ids
    assert (ref.sot_token_id, ref.eot_token_id) == (tok.sot, tok.eot) == (49406, 49407)
    special = {tok.sot, tok.eot}
    assert {k: v for k, v in tok.encoder.items() if v not in special} == {
        k: v for k, v in ref.encoder.items() if v not in special} and len(tok.encoder) == len(ref.encoder) == 49408
    assert tok.ranks == ref.bpe_ranks


@pytest.mark.parametrize("text", CORPUS + DEFAULT_CLASSES + DEFAULT_NORMAL_QUERIES + PAPER_NORMAL_QUERIES)
def test_ids_equal_open_clips_tokenizer(tok, open_clip_ref, text):
    module, ref = open_clip_ref
    assert tok.encode(text) == ref.encode(text)
    if len(ref.encode(text)) <= 75:  # open_clip truncates longer texts; ours refuses them (test_round_trip...)
        want = module.tokenize([text], context_length=77).numpy()
        np.testing.assert_array_equal(tok([text], context_length=77), want)
