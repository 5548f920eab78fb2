"""COCO RLE: hand-checked encodings, round trips in both forms, sampling without full decode."""

import numpy as np
import pytest

from loftup.errors import InputError
from loftup.train.rle import (
    counts_from_string,
    counts_to_string,
    polygons_rasterize,
    rle_area,
    rle_counts,
    rle_decode,
    rle_encode,
    rle_sample,
)


def test_hand_example_column_major():
    # h=2, w=3; column-major flat order: col0 (0,0), col1 (1,1), col2 (1,0) -> runs 2 zeros, 3 ones, 1 zero
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=np.uint8)
    rle = rle_encode(mask, compressed=False)
    assert rle == {"size": [2, 3], "counts": [2, 3, 1]}
    assert rle_encode(mask)["counts"] == "231"  # small counts: one character each, value + 48
    assert np.array_equal(rle_decode({"size": [2, 3], "counts": "231"}), mask)
    assert rle_area(rle) == 3


def test_mask_starting_inside_has_leading_zero_run():
    mask = np.ones((2, 2), dtype=np.uint8)
    assert rle_encode(mask, compressed=False)["counts"] == [0, 4]


def test_string_codec_multi_group_and_negative_deltas():
    # 100 needs two 5-bit groups; counts[3] - counts[1] is negative (sign-extended group)
    counts = [100, 3, 5000, 1, 7, 0, 31, 32, 33]
    s = counts_to_string(counts)
    assert counts_from_string(s).tolist() == counts
    # known encodings: 0 -> '0', 15 -> '?', 16 needs a continuation (0x10 is the sign bit)
    assert counts_to_string([0]) == "0" and counts_to_string([15]) == "?"
    assert counts_from_string(counts_to_string([16])).tolist() == [16] and len(counts_to_string([16])) == 2


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_random_masks(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 40, size=2)
    mask = (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
    for compressed in (True, False):
        rle = rle_encode(mask, compressed)
        assert np.array_equal(rle_decode(rle), mask)
        assert rle_area(rle) == int(mask.sum())
    counts, hh, ww = rle_counts(rle_encode(mask))
    ys, xs = rng.integers(0, h, size=7), rng.integers(0, w, size=5)
    assert np.array_equal(rle_sample(counts, hh, ww, ys, xs), mask[np.ix_(ys, xs)].astype(bool))


def test_invalid_rle_is_an_input_error():
    with pytest.raises(InputError, match="sum to"):
        rle_decode({"size": [2, 2], "counts": [1, 1]})
    with pytest.raises(InputError):
        rle_decode({"size": [2, 2], "counts": "2\x7f"})
    with pytest.raises(InputError):
        rle_decode({"counts": [4]})


def test_polygon_rasterize_square():
    # a 4x4 square with corners at pixel edges 1..5 covers pixels 1..4 (COCO puts centres at +0.5)
    m = polygons_rasterize([[1, 1, 5, 1, 5, 5, 1, 5]], 8, 8)
    assert m.sum() == 16 and m[1:5, 1:5].all()
