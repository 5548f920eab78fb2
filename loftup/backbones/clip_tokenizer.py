"""CLIP's byte-level BPE tokenizer, our own code, byte-exact with OpenAI CLIP / open_clip on the
strings in tests/fixtures/clip_tokenizer (ids made with open_clip's `SimpleTokenizer`).

    tok = ClipTokenizer()
    tok.encode("a photo of a cat.")      # [320, 1125, 539, 320, 2368, 269]
    tok(["a photo of a cat."])           # (1, 77) int64: <start_of_text> ids <end_of_text> 0...

The algorithm (OpenAI CLIP, `simple_tokenizer.py`):
1. clean: HTML entities unescaped twice, whitespace runs collapsed to one space, stripped,
   lower-cased;
2. split into words: the special tokens, the contractions 's 't 're 've 'm 'll 'd, runs of
   letters (Unicode category L*), single digits (category N*), runs of anything else that is
   not a space;
3. each word's UTF-8 bytes are mapped to printable characters (GPT-2's byte-to-unicode table),
   the last symbol gets the end-of-word mark `</w>`, and pairs are merged in the order of the
   merge list until no listed pair is left;
4. ids: 256 byte symbols, the same 256 with `</w>`, one id per merge (in file order), then
   `<start_of_text>` (49406) and `<end_of_text>` (49407): 49408 in all. `__call__` adds the
   two markers, truncates to the context length keeping `<end_of_text>` last, and pads with 0.

Step 1 in the originals also runs `ftfy.fix_text` (mojibake repair). We do not depend on ftfy;
we apply the parts of it that reach ordinary text: Unicode NFC composition, curly quotes to
straight ones and the Latin ligatures (ﬁ, ﬂ, ...) spelled out. Text that needs ftfy's mojibake
repair may tokenize differently; class names and prompt templates do not.

The vocabulary `data/bpe_simple_vocab_16e6.txt.gz` (1,356,917 bytes, sha256 924691ac...804a) is
OpenAI's, shipped unchanged; it comes from the MIT-licensed OpenAI CLIP repository
(Copyright (c) 2021 OpenAI) as redistributed, also under MIT, by open_clip
(open_clip_torch 3.3.0 on PyPI).
"""

from __future__ import annotations

import gzip
import html
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

VOCAB_FILE = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # the merge lines OpenAI's vocabulary uses (after the header line)
SOT, EOT = "<start_of_text>", "<end_of_text>"
CONTEXT_LENGTH = 77
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})
_LIGATURES = str.maketrans({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
                            "\ufb05": "st", "\ufb06": "st", "\u0132": "IJ", "\u0133": "ij", "\u01c7": "LJ",
                            "\u01c8": "Lj", "\u01c9": "lj", "\u01ca": "NJ", "\u01cb": "Nj", "\u01cc": "nj"})


@lru_cache()
def byte_symbols() -> dict[int, str]:
    """GPT-2's table: each byte 0..255 -> a printable character (printable Latin-1 bytes map to
    themselves, the others to chr(256 + n) in byte order). Ids 0..255 follow the table's order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}  # insertion order is the vocabulary's id order: kept bytes first
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def clean(text: str) -> str:
    """Step 1 of the module doc: the text the BPE sees."""
    text = unicodedata.normalize("NFC", text).translate(_QUOTES).translate(_LIGATURES)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    cat = unicodedata.category(ch)[0]
    return {"L": "letter", "N": "number"}.get(cat, "other")


def split_words(text: str) -> list[str]:
    """Step 2 of the module doc on cleaned text (what the originals' regular expression finds)."""
    words, i, n = [], 0, len(text)
    while i < n:
        for special in (SOT, EOT):
            if text.startswith(special, i):
                words.append(special)
                i += len(special)
                break
        else:
            found = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
            if found:
                words.append(found)
                i += len(found)
                continue
            kind = _kind(text[i])
            if kind == "space":
                i += 1
                continue
            if kind == "number":
                words.append(text[i])
                i += 1
                continue
            j = i + 1
            while j < n and _kind(text[j]) == kind:
                j += 1
            words.append(text[i:j])
            i = j
    return words


class ClipTokenizer:
    """Text -> CLIP token ids (module doc). `vocab_file`: a gzipped merge list in OpenAI's format."""

    def __init__(self, vocab_file: str | Path = VOCAB_FILE, context_length: int = CONTEXT_LENGTH):
        from ..errors import InputError

        try:
            lines = gzip.open(vocab_file).read().decode("utf-8").split("\n")
        except OSError as exc:
            raise InputError(f"cannot read the CLIP vocabulary {vocab_file} ({exc}); reinstall loftup") from None
        merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
        symbols = list(byte_symbols().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.ranks = {m: r for r, m in enumerate(merges)}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.context_length = int(context_length)
        self.vocab_size = len(vocab)
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    def bpe(self, word: str) -> list[str]:
        """The BPE symbols of one word already mapped to byte symbols (step 3)."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without the start / end markers and without truncation."""
        table = byte_symbols()
        ids: list[int] = []
        for word in split_words(clean(text)):
            mapped = word if word in (SOT, EOT) else "".join(table[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(mapped))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to text (byte-exact up to the cleaning of step 1; `</w>` becomes a space)."""
        inverse = {v: k for k, v in byte_symbols().items()}
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray()
        for part in text.replace("</w>", " "):
            raw.extend(bytes([inverse[part]]) if part in inverse else part.encode("utf-8"))
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str]):
        """(N, context_length) int64 tensor: <start_of_text> ids <end_of_text>, zero-padded;
        a longer text is cut and its last kept position is <end_of_text>."""
        import torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


@lru_cache(maxsize=2)
def default_tokenizer(context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
    """The tokenizer on the shipped vocabulary (built once; reading the merges takes ~0.3 s)."""
    return ClipTokenizer(VOCAB_FILE, context_length)


__all__ = ["CONTEXT_LENGTH", "ClipTokenizer", "VOCAB_FILE", "byte_symbols", "clean", "default_tokenizer", "split_words"]
