"""The CPU inference variants TorchEngine runs (issue 26): fp32 with BatchNorm folded and heads padded,
native bf16 (no autocast round trips), and the bf16 attention as materialised chunks."""

from __future__ import annotations

import warnings

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from loftup.export.engine import TorchEngine, reference_engine
from loftup.export.parity import compare, photo_batch, photo_features
from loftup.kernels.sdpa import chunked_sdpa_attention, materialised_chunks
from loftup.kernels.winograd import WinogradConv2d
from loftup.model import LoftUp, LoftUpConfig
from loftup.model.deploy import CPU_HEAD_MULTIPLE, cpu_variant, native_precision

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def trained_looking(C: int = 32, **cfg) -> LoftUp:
    torch.manual_seed(0)
    model = LoftUp(LoftUpConfig(feat_dim=C, **cfg)).eval()
    with torch.no_grad():  # BatchNorm statistics that make folding matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def photo(size: int, C: int = 32):
    image, _ = photo_batch(1, size, size + 14, MEAN, STD)
    return photo_features(image, C, 14), image


def test_native_bf16_keeps_parity_with_fp32():
    """cosine >= 0.999 against the fp32 reference (the issue's bar), like autocast's bf16."""
    model = trained_looking()
    lr, image = photo(70)
    reference = reference_engine(model)(lr, image)
    native = TorchEngine(model, precision="bf16")
    assert native.model.upsampler.compute_dtype == torch.bfloat16
    out = native(lr, image)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    err = compare(out, reference)
    assert err["mean_cos"] >= 0.999 and err["min_cos"] >= 0.99, err
    autocast = TorchEngine(model, precision="bf16", optimize=False)(lr, image)
    assert compare(autocast, reference)["mean_cos"] >= 0.999


def test_native_precision_is_a_transformation_of_the_same_module():
    model = trained_looking()
    bf = native_precision(model, torch.bfloat16)
    up = bf.upsampler
    assert type(bf) is type(model) and set(bf.state_dict()) <= set(model.state_dict())
    assert {p.dtype for p in up.ca_transformer.parameters()} == {torch.bfloat16}
    assert up.first_conv[1].weight.dtype == up.final_conv[0].weight.dtype == torch.bfloat16
    for fp32_part in (up.fourier_feat, up.lr_pe, up.first_conv[0], bf.channelnorm):  # featurizers and channel norms
        assert {p.dtype for p in fp32_part.parameters()} == {torch.float32}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bf.modules())  # folded
    assert model.upsampler.compute_dtype == torch.float32  # the source is left alone
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_native_bf16_is_unchanged_by_an_outer_autocast():
    """The pipeline form runs the backbone under autocast, and the upsampler inside it: a native
    bf16 model gives the same numbers there as without (its tokens stay bf16, its Fourier
    features float32) - no float32 round trips come back through autocast."""
    model = native_precision(trained_looking(), torch.bfloat16)
    lr, image = photo(42)
    with torch.no_grad():
        plain = model(lr, image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = model(lr, image)
    assert plain.dtype == inside.dtype == torch.bfloat16
    assert torch.equal(plain, inside)


def test_fp32_cpu_variant_matches_the_reference():
    model = trained_looking()
    lr, image = photo(56)
    variant = cpu_variant(model, "fp32")
    assert variant.upsampler.dispatcher.head_multiple == CPU_HEAD_MULTIPLE
    flags = [m.fused_linear for m in variant.modules() if hasattr(m, "fused_linear")]
    assert len(flags) == 2 * 2 + 1 and all(flags)  # per block attention + FFN, and the head
    assert not any(m.fused_linear for m in model.modules() if hasattr(m, "fused_linear"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in variant.modules())
    engine = TorchEngine(model)
    assert engine.channels_last and engine.model.upsampler.channels_last
    err = compare(engine(lr, image), reference_engine(model)(lr, image))
    assert err["max_abs"] < 1e-4 and err["min_cos"] > 0.99999, err
    reference = reference_engine(model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in reference.model.modules())  # the reference runs as it is
    assert reference.model.upsampler.dispatcher.head_multiple is None


def test_cpu_variants_run_their_3x3_convs_as_winograd_convs_with_the_relu():
    """Both 3x3 convs become Winograd convs carrying their ReLU (the ReLU slots Identities), with the
    official keys; the banded full-resolution path (the ONNX graphs' form) still applies the ReLU."""
    model = trained_looking()
    lr, image = photo(42)
    reference = reference_engine(model)(lr, image)
    for precision, tol in (("fp32", 1e-4), ("bf16", None)):
        variant = cpu_variant(model, precision)
        seq = variant.upsampler.first_conv
        assert [i for i, m in enumerate(seq) if isinstance(m, WinogradConv2d) and m.relu] == [1, 4]
        assert not any(isinstance(m, torch.nn.ReLU) for m in seq)
        assert set(variant.state_dict()) <= set(model.state_dict())
        with torch.no_grad():
            plain = variant(lr, image)
            variant.upsampler.query_chunk, variant.upsampler.row_band = 100, 8
            banded = variant(lr, image, tile=False)
        assert (banded.float() - plain.float()).abs().max().item() < (1e-4 if tol else 0.1)
        err = compare(plain.float(), reference)
        assert err["max_abs"] < tol if tol else err["mean_cos"] > 0.999, (precision, err)


@pytest.mark.parametrize("lr_pe", ["sine", "rope"])  # rope: each block gets its queries' positions
def test_cpu_variants_run_the_token_path_in_blocks_exactly(lr_pe):
    """The CPU variants run the token path over blocks of CPU_TOKEN_CHUNK queries (cache-sized):
    the same numbers as the whole tile at once, and the whole tile while compiling (no unrolled loop)."""
    from loftup.model.deploy import CPU_TOKEN_CHUNK

    model = trained_looking(lr_pe=lr_pe)
    lr, image = photo(56)  # 56 x 70: 3920 queries, blocks of 1000 leave a partial last block
    variant = cpu_variant(model, "fp32")
    up = variant.upsampler
    assert up.token_chunk == CPU_TOKEN_CHUNK and model.upsampler.token_chunk is None
    calls = []
    real = up.ca_transformer.forward
    up.ca_transformer.forward = lambda x, *a, **k: calls.append(x.shape[1]) or real(x, *a, **k)
    with torch.no_grad():
        up.token_chunk = 1000
        blocks = variant(lr, image, tile=False)
        assert calls == [1000, 1000, 1000, 920]
        up.token_chunk = None
        whole = variant(lr, image, tile=False)
    assert calls[-1] == 56 * 70
    if lr_pe == "sine":  # as inside torch.compile: one whole-tile call
        up.token_chunk = 1000
        with torch.no_grad(), mock.patch.object(torch.compiler, "is_compiling", lambda: True):
            up._queries_and_out(*query_path_args(up, lr, image))
        assert calls[-1] == 56 * 70 and len(calls) == 6
    assert torch.allclose(blocks, whole, atol=1e-6, rtol=0), (blocks - whole).abs().max()


def test_tiles_are_assembled_in_the_pieces_layout():
    """Channels-last tiles go into a channels-last output (no transposing copy per tile), equal to
    the untiled pass; the engine hands it on as float32 in that layout (bf16: no contiguous copy)."""
    model = trained_looking()
    lr, image = photo(56)
    for precision in ("fp32", "bf16"):
        engine = TorchEngine(model, precision=precision)
        up = engine.model.upsampler
        with torch.no_grad():
            whole = engine.model(lr, image, tile=False)
            up.cfg = up.cfg.replace(tile_size=24)
            tiled = engine.model(lr, image, tile=True)
        assert tiled.is_contiguous(memory_format=torch.channels_last) and not tiled.is_contiguous()
        # exact up to rounding (the Winograd tile grid starts at each tile's own halo)
        assert (tiled.float() - whole.float()).abs().max() < (1e-4 if precision == "fp32" else 0.05)
        out = engine(lr, image)
        assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)


def query_path_args(up, lr, image):
    """The arguments LoftUpUpsampler.forward gives `_queries_and_out` for one untiled pass."""
    from loftup.model.layers import coord_grid

    lo, hi = up.fourier_feat[0].extrema(image)
    H, W = image.shape[-2:]
    kv = up.ca_transformer.project_kv(up.kv_tokens(lr))
    return image, lo, hi, coord_grid(H, image.device), coord_grid(W, image.device), kv, None, (0, 0, H, W)


def test_padded_heads_give_the_same_attention():
    """Heads 101 -> 104 style padding (here 13 -> 16) at the projections changes no number."""
    model = trained_looking(C=32, num_heads=4)  # D = 52, head dim 13
    lr, image = photo(42)
    with torch.no_grad():
        plain = model(lr, image)
        model.upsampler.dispatcher.head_multiple = 8
        try:
            padded = model(lr, image)
        finally:
            model.upsampler.dispatcher.head_multiple = None
    assert (plain - padded).abs().max().item() < 1e-5


def test_materialised_chunks_equal_sdpa():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 13, generator=gen) for n in (100, 37, 37))
    want = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    got = materialised_chunks(q, k, v, 0.3, step=32)  # 100 = 3 x 32 + 4: a partial last chunk
    assert (got - want).abs().max().item() < 1e-5


def test_materialised_chunks_in_bf16_round_as_the_plain_form():
    """Queries as the model hands them over (heads as a view of the projection's (B, N, heads * d)
    output); the in-place softmax and the reused score buffer give the plain form's bits (the
    scale is a power of two, so scaling the keys or the scores rounds the same)."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 70, 3 * 16, generator=gen).bfloat16().unflatten(-1, (3, 16)).transpose(1, 2)
    k, v = (torch.randn(2, 3, 41, 16, generator=gen).bfloat16() for _ in range(2))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PyTorch's warning on resizing an out= tensor of the wrong shape
        want = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)).mul_(0.25), dim=-1), v)
        got = materialised_chunks(q, k, v, 0.25, step=32)  # 70 = 2 x 32 + 6
    assert torch.equal(got, want)
    assert got.transpose(1, 2).is_contiguous()  # q's layout: the output projection reads it without a copy


def test_bf16_attention_on_cpu_takes_the_materialised_form(monkeypatch):
    import loftup.kernels.sdpa as sdpa

    calls = []
    real = sdpa.materialised_chunks
    monkeypatch.setattr(sdpa, "materialised_chunks", lambda *a: calls.append(a[-1]) or real(*a))
    q, k, v = (torch.randn(1, 2, n, 8).bfloat16() for n in (50, 20, 20))
    with torch.no_grad():
        out = chunked_sdpa_attention(q, k, v, 0.5)
        chunked_sdpa_attention(q.float(), k.float(), v.float(), 0.5)  # fp32: the fused kernel
    chunked_sdpa_attention(q, k, v, 0.5)  # with autograd (training): the fused kernel
    assert len(calls) == 1 and out.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.5)
    assert (out.float() - want).abs().max().item() < 0.05
