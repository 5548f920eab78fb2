"""COCO run-length encoded masks, without pycocotools.

A COCO RLE is `{"size": [h, w], "counts": ...}` over the mask in column-major (Fortran) order:
counts alternate runs of 0s and 1s, starting with 0s (a mask starting with 1 has counts[0] = 0).
`counts` is either a list of ints (the "uncompressed" form COCO uses for crowd annotations) or
a string (the compressed form used by SA-1B and most tools): each count is written as
little-endian groups of 5 bits, one character per group (value + 48, bit 0x20 = "more groups
follow", sign-extended from the last group's bit 0x10), and from the fourth count on the
difference to the count two places earlier is stored instead of the count itself.

Also: sampling an RLE at arbitrary pixel positions without decoding it (`rle_sample`), which
is how training resizes and crops a full-resolution SA-1B mask straight to the training grid,
and rasterising COCO polygons.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import InputError


def _rle_error(msg: str) -> InputError:
    return InputError(f"invalid COCO RLE: {msg}")


def counts_from_string(s: str | bytes) -> np.ndarray:
    """Decode the compressed COCO counts string into run lengths (int64)."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise _rle_error("counts string ends in the middle of a number")
            c = data[p] - 48
            if c < 0 or c > 63:
                raise _rle_error(f"character {chr(data[p])!r} outside the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # negative number: sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    arr = np.asarray(counts, dtype=np.int64)
    if (arr < 0).any():
        raise _rle_error("negative run length")
    return arr


def counts_to_string(counts: Sequence[int]) -> str:
    """Encode run lengths in the compressed COCO counts string (inverse of counts_from_string)."""
    out = bytearray()
    counts = [int(c) for c in counts]
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: -1 stays -1
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(c + 48)
    return out.decode("ascii")


def rle_counts(rle: dict[str, Any]) -> tuple[np.ndarray, int, int]:
    """(run lengths, h, w) of an RLE dict in either form; InputError if it is malformed."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise _rle_error("expected {'size': [h, w], 'counts': ...}") from None
    if isinstance(counts, (str, bytes)):
        arr = counts_from_string(counts)
    elif isinstance(counts, (list, tuple, np.ndarray)):
        arr = np.asarray(counts, dtype=np.int64).reshape(-1)
        if (arr < 0).any():
            raise _rle_error("negative run length")
    else:
        raise _rle_error(f"counts must be a string or a list, got {type(counts).__name__}")
    if h < 0 or w < 0 or int(arr.sum()) != h * w:
        raise _rle_error(f"run lengths sum to {int(arr.sum())}, but size {h}x{w} has {h * w} pixels")
    return arr, h, w


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE dict to a (h, w) uint8 mask of 0/1."""
    counts, h, w = rle_counts(rle)
    values = (np.arange(len(counts)) % 2).astype(np.uint8)
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T.copy()  # column-major


def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """Encode a (h, w) mask (any dtype, nonzero = inside) as a COCO RLE dict."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"rle_encode expects a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    flat = (mask.T.reshape(-1) != 0).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    if flat.size == 0:
        runs = []
    return {"size": [h, w], "counts": counts_to_string(runs) if compressed else runs}


def rle_area(rle: dict[str, Any]) -> int:
    """Number of pixels inside the mask."""
    counts, _, _ = rle_counts(rle)
    return int(counts[1::2].sum())


def rle_sample(counts: np.ndarray, h: int, w: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Mask values at integer pixel positions (ys (H',), xs (W',)) -> (H', W') bool, no full decode.

    Positions are clipped to the mask. Cost is O(H' * W' * log(runs)) instead of O(h * w).
    """
    ends = np.cumsum(counts)  # run r covers linear indices [ends[r-1], ends[r])
    ys = np.clip(np.asarray(ys, dtype=np.int64), 0, max(h - 1, 0))
    xs = np.clip(np.asarray(xs, dtype=np.int64), 0, max(w - 1, 0))
    linear = xs[None, :] * h + ys[:, None]  # column-major index, (H', W')
    run = np.searchsorted(ends, linear, side="right")
    return (run % 2) == 1


def polygons_rasterize(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    """COCO polygons ([[x0, y0, x1, y1, ...], ...], pixel coordinates) -> (h, w) bool mask."""
    from skimage.draw import polygon as draw_polygon

    mask = np.zeros((h, w), dtype=bool)
    for poly in polygons:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(pts) < 3:
            continue
        # COCO polygon coordinates put pixel centres at +0.5
        rr, cc = draw_polygon(pts[:, 1] - 0.5, pts[:, 0] - 0.5, shape=(h, w))
        mask[rr, cc] = True
    return mask
