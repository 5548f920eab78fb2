"""Our CLIP BPE tokenizer against ids from open_clip's SimpleTokenizer (tests/fixtures/clip_tokenizer)."""

import json
from pathlib import Path

import pytest

from loftup.backbones.clip_tokenizer import VOCAB_FILE, ClipTokenizer, clean, default_tokenizer, split_words
from loftup.errors import InputError

CASES = json.loads((Path(__file__).parents[1] / "fixtures" / "clip_tokenizer" / "reference_ids.json").read_text())["cases"]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:24] for c in CASES])
def test_ids_are_byte_exact_with_the_reference(tok, case):
    assert tok.encode(case["text"]) == case["ids"]
    row = tok([case["text"]])[0].tolist()
    n = len(case["tokens_77_nonzero"])
    assert row[:n] == case["tokens_77_nonzero"] and all(v == 0 for v in row[n:])


def test_vocabulary_and_markers(tok):
    assert VOCAB_FILE.is_file() and tok.vocab_size == 49408
    assert (tok.sot_id, tok.eot_id) == (49406, 49407)
    batch = tok(["a photo of a cat.", "x " * 200])
    assert batch.shape == (2, 77) and str(batch.dtype) == "torch.int64"
    assert batch[1, -1].item() == tok.eot_id and batch[1, 0].item() == tok.sot_id  # cut, end marker kept
    assert batch.argmax(-1).tolist() == [7, 76]  # the end marker is the largest id: CLIP pools there


def test_cleaning_and_word_split():
    assert clean("  Tom &amp;amp;  JERRY\n") == "tom & jerry"
    assert clean("\ufb01sh \u2018x\u2019") == "fish 'x'"
    assert split_words("it's 12ab!? c") == ["it", "'s", "1", "2", "ab", "!?", "c"]


def test_decode_round_trip(tok):
    assert tok.decode(tok.encode("a photo of a dining table")) == "a photo of a dining table"


def test_missing_vocabulary_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="cannot read the CLIP vocabulary"):
        ClipTokenizer(tmp_path / "missing.txt.gz")
