"""CLIP's byte-level BPE tokenizer.

The merges file (`bpe_simple_vocab_16e6.txt.gz`, 49,152 lines) ships as package data in `assets/`, unchanged
from openai/CLIP under its MIT license (assets/LICENSE-CLIP), as CLIP implementations ship it. Set
STP_EDGE_BPE_PATH to use another copy.
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from stp_edge.errors import MissingInputError, UsageError

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BPE_PATH = Path(__file__).parent / "assets" / BPE_FILENAME
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# Words are letters runs, single digits, or runs of other non-space symbols; contractions are split off.
_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def find_bpe_file() -> Path:
    """Locate CLIP's BPE merges file: STP_EDGE_BPE_PATH when set, else the copy packaged in assets/."""
    env = os.environ.get("STP_EDGE_BPE_PATH")
    if env:
        if not Path(env).is_file():
            raise MissingInputError(f"STP_EDGE_BPE_PATH={env} does not exist")
        return Path(env)
    if not BPE_PATH.is_file():
        raise MissingInputError(f"{BPE_PATH} is missing: stp-edge was installed without its package data")
    return BPE_PATH


@functools.lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character so BPE works on strings (GPT-2/CLIP convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(word))


class Tokenizer:
    """Text -> CLIP token ids ([SOT] ... [EOT], zero-padded to the context length)."""

    def __init__(self, bpe_path: str | os.PathLike | None = None) -> None:
        import regex  # CLIP's pattern needs \\p{L}; the stdlib re module lacks it

        path = Path(bpe_path) if bpe_path else find_bpe_file()
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        byte_chars = list(_bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self._cache = {SOT: SOT, EOT: EOT}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            best = min(_pairs(word), key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self._cache[token] = out
        return out

    @staticmethod
    def clean(text: str) -> str:
        """CLIP's text normalisation: fix mojibake, unescape HTML twice, collapse whitespace, lowercase."""
        try:
            import ftfy

            text = ftfy.fix_text(text)
        except ImportError:  # ftfy only repairs broken unicode; plain text tokenizes identically without it
            pass
        text = html.unescape(html.unescape(text)).strip()
        return " ".join(text.split()).lower()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without SOT/EOT."""
        ids: list[int] = []
        for token in self.pattern.findall(self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: str | Iterable[str], context_length: int = 77) -> np.ndarray:
        """Tokenize to an int64 array [N, context_length]; raises when a text does not fit."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > context_length:
                raise UsageError(
                    f"text {row} ({text[:40]!r}...) is {len(ids)} tokens, longer than context_length={context_length}"
                )
            out[row, : len(ids)] = ids
        return out


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The process-wide tokenizer (the vocabulary file is read once)."""
    return Tokenizer()
