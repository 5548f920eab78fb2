"""The looped LoftUp graph: the token path as one Scan over blocks of queries (issue 18), and the
full-resolution stages (Fourier features, channel norm, convs) as one Scan over bands of rows
before it (issue 26).

ONNX Runtime gets it (memory bounded: one block's scores, one band's conv maps at a time),
TensorRT the whole pattern; the format table says which. Looped and whole graphs give the same
numbers in fp32.
"""

from __future__ import annotations

import pytest
import torch
from export_helpers import MAX_BATCH, PARITY_SHAPES, SIZES

from loftup.export.formats import FORMATS
from loftup.export.onnx import (BAND_BUDGET_BYTES, OnnxEngine, SCORE_BUDGET_BYTES, export_onnx, onnx_op_types,
                                query_chunk_length, row_band_length)
from loftup.model import LoftUpConfig

CHUNK = 256  # odd parity sizes (57x57 = 3249 queries) end in a partial block
BAND = 8  # and in a partial last band of rows (57, 61, 111 rows), with halo rows outside the image at both ends


@pytest.fixture(scope="module")
def chunked(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("chunked") / "upsampler_chunked.onnx"
    md = export_onnx(model, path, scope="upsampler", sizes=SIZES, max_batch=MAX_BATCH, patch_size=14, query_chunk=CHUNK,
                     row_band=BAND)
    return path, md


def test_looped_onnx_equals_the_whole_graph_at_odd_sizes(chunked, exports):
    path, md = chunked
    whole = exports[("upsampler", "matmul", "fp32")]
    assert md.runtime["query_chunk"] == CHUNK and md.runtime["row_band"] == BAND
    ops, whole_ops = onnx_op_types(path), onnx_op_types(whole)
    assert ops.get("Scan", 0) + ops.get("Loop", 0) == 2  # row bands, then query blocks
    assert "Scan" not in whole_ops and "Loop" not in whole_ops
    a, b = OnnxEngine(path), OnnxEngine(whole)
    gen = torch.Generator().manual_seed(0)
    for batch, H, W in PARITY_SHAPES:
        lr = torch.randn(batch, model_dim(a), max(1, H // 14), max(1, W // 14), generator=gen)
        image = torch.randn(batch, 3, H, W, generator=gen)
        assert (H * W) % CHUNK and H % BAND  # a partial last block and band
        out, ref = a(lr, image), b(lr, image)
        assert out.shape == ref.shape == (batch, model_dim(a), H, W)
        assert (out - ref).abs().max().item() < 1e-5


def model_dim(engine) -> int:
    return engine.metadata.feat_dim


@pytest.mark.parametrize("band", [None, 1, 7, 40, 64])
def test_eager_looped_path_equals_whole(model, band):
    """Query blocks alone, and with row bands: one row, a partial last band, one band past the image."""
    up = model.upsampler
    lr, image = torch.randn(2, model.cfg.feat_dim, 3, 4), torch.randn(2, 3, 41, 59)
    with torch.no_grad():
        whole = model(lr, image, tile=False)
        up.query_chunk, up.row_band = 100, band
        try:
            blocks = model(lr, image, tile=False)
        finally:
            up.query_chunk = up.row_band = None
    assert (whole - blocks).abs().max().item() < 1e-5


def test_row_bands_fit_their_budget_and_leave_two_bands_at_the_smallest_size():
    cfg = LoftUpConfig()  # C = 384: D = 404, 203 Fourier channels
    R = row_band_length(cfg, 448)
    assert R % 8 == 0 and 8 <= R <= 64
    per_row = 4 * 448 * (2 * cfg.image_feat_dim + 3 * cfg.token_dim)
    assert R * per_row <= BAND_BUDGET_BYTES or R == 8
    assert row_band_length(cfg, 448, min_height=20) == 19  # ceil(20 / 19) = 2 bands: a loop torch.export keeps symbolic
    assert row_band_length(cfg, 4096) == 8  # a floor


def test_format_table_picks_the_graph(monkeypatch, tmp_path, model):
    """ONNX files get the chunked graph, TensorRT plans the whole one (it fuses that pattern)."""
    import loftup.export.onnx as lo
    from loftup.export.exporter import export_model

    assert FORMATS["onnx"].query_chunks and not FORMATS["trt"].query_chunks
    seen = {}

    class Stop(Exception):
        pass

    def fake_export(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(lo, "export_onnx", fake_export)
    with pytest.raises(Stop):
        export_model(model, None, tmp_path / "m.onnx", fmt="onnx", patch_size=14)
    assert seen["query_chunk"] == "auto"
    assert not list(tmp_path.glob("*.onnx"))  # nothing written when the export fails


def test_chunk_length_keeps_one_block_within_the_budget():
    cfg = LoftUpConfig()  # C = 384, D = 404, 4 heads
    M = (448 // 14) ** 2
    S = query_chunk_length(cfg, M)
    assert S % 256 == 0 and S >= 256
    per_query = 4 * (2 * cfg.num_heads * M + 8 * cfg.token_dim + 2 * cfg.feat_dim)
    assert S * per_query <= SCORE_BUDGET_BYTES < (S + 256) * per_query
    assert query_chunk_length(cfg, 10**7) == 256  # a floor: blocks never vanish
