"""CLIP BPE tokenizer: known ids, agreement with open-clip's tokenizer, and the packaged vocabulary."""

import hashlib

import numpy as np
import pytest

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
