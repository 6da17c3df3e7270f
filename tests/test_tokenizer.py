"""CLIP BPE tokenizer: known ids and agreement with open-clip's own tokenizer (loaded by file path)."""

import importlib.util

import numpy as np
import pytest

from stp_edge.model.tokenizer import Tokenizer, find_bpe_file


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


def test_agrees_with_open_clip_tokenizer(tok):
    path = find_bpe_file().parent / "tokenizer.py"
    if not path.is_file():
        pytest.skip("open_clip's tokenizer.py is not installed beside the vocabulary")
    spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # this file imports only torch/ftfy/regex, not open_clip or torchvision
    ref = mod.SimpleTokenizer()
    texts = ["Hello, world! It's 2024.", "a man is fighting   in the street", "naïve café &amp; rock'n'roll",
             "an object left behind", "X X X X road accident."]
    for text in texts:
        assert tok.encode(text) == ref.encode(text), text
