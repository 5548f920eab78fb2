"""loftup.kernels.winograd: the CPU variants' Winograd 3x3 convs against F.conv2d (issue 26)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from loftup.kernels.winograd import ALGORITHMS, F2X2, F4X4, WinogradConv2d, conv3x3, conv3x3_reference, use_winograd


def conv_and_input(ci, co, H, W, B=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(ci, co, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(co, ci, 3, 3, generator=gen) / (9 * ci) ** 0.5)
        conv.bias.copy_(torch.randn(co, generator=gen))
    return conv, torch.randn(B, ci, H, W, generator=gen)


def exact(conv, x, relu):
    """The definition in float64."""
    return conv3x3_reference(x.double(), conv.weight.double(), conv.bias.double(), relu)


def error(got, want) -> float:
    return (got.double() - want).abs().max().item()


# Shapes: a single pixel, sizes that are not multiples of the tile (partial tiles and bands),
# batch > 1, several bands (the tiny band budget forces one tile row per band), LoftUp-S's channels.
SHAPES = [(5, 7, 1, 1, 2), (5, 7, 3, 9, 2), (6, 8, 17, 6, 1), (4, 3, 13, 30, 3), (203, 404, 23, 21, 1)]


@pytest.mark.parametrize("alg", [F4X4, F2X2], ids=["F4x4", "F2x2"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_float32_equals_the_convolution(alg, shape, relu):
    ci, co, H, W, B = shape
    conv, x = conv_and_input(ci, co, H, W, B)
    want = exact(conv, x, relu)
    direct = error(conv3x3_reference(x, conv.weight, conv.bias, relu), want)
    u = alg.weight_transform(conv.weight, torch.float32)
    for band_bytes in (1, 2**20):  # one tile row per band / many
        got = conv3x3(x, u, conv.bias.detach(), alg, relu, band_bytes=band_bytes)
        assert got.shape == (B, co, H, W) and got.is_contiguous(memory_format=torch.channels_last)
        # fp32 Winograd rounds more than the direct conv (its transforms scale values by up to 100):
        # within 1e-5 of the output's scale plus a few times the direct conv's error
        assert error(got, want) < 1e-5 * want.abs().max().item() + 10 * direct, (error(got, want), direct)


def test_bfloat16_errs_at_most_about_twice_the_direct_conv():
    """STYLE 2: a low-precision kernel may err about twice as much as PyTorch at the same precision."""
    conv, x = conv_and_input(64, 96, 37, 41, 1)
    want = exact(conv, x, True)
    xb, wb, bb = x.bfloat16(), conv.weight.detach().bfloat16(), conv.bias.detach().bfloat16()
    direct = conv3x3_reference(xb, wb, bb, True)
    got = conv3x3(xb, F2X2.weight_transform(wb, torch.bfloat16), bb, F2X2, relu=True)
    assert got.dtype == torch.bfloat16
    assert error(got, want) < 2.5 * error(direct, want)
    cos = F.cosine_similarity(got.double().flatten(), want.flatten(), dim=0).item()
    assert cos > 0.99995, cos


def test_bfloat16_uses_the_small_tile():
    """F(4x4) in bf16 rounds its transformed tiles too coarsely (20x the direct error measured)."""
    assert ALGORITHMS[torch.bfloat16] is F2X2 and ALGORITHMS[torch.float32] is F4X4
    conv, x = conv_and_input(32, 32, 20, 20)
    xb, wb = x.bfloat16(), conv.weight.detach().bfloat16()
    want = exact(conv, x, False)
    small = conv3x3(xb, F2X2.weight_transform(wb, torch.bfloat16), conv.bias.detach().bfloat16(), F2X2)
    large = conv3x3(xb, F4X4.weight_transform(wb, torch.bfloat16), conv.bias.detach().bfloat16(), F4X4)
    assert error(large, want) > 3 * error(small, want)


def test_module_shares_the_parameters_and_keys_and_fuses_the_relu():
    conv, x = conv_and_input(8, 12, 15, 15)
    seq = nn.Sequential(nn.Identity(), conv, nn.Identity(), nn.ReLU(), nn.Conv2d(12, 12, 1), nn.ReLU())
    keys = list(seq.state_dict())
    with torch.no_grad():
        before = seq(x)
    assert use_winograd(seq) == 1  # the 1x1 conv is not covered
    assert isinstance(seq[1], WinogradConv2d) and seq[1].relu and isinstance(seq[3], nn.Identity)
    assert type(seq[4]) is nn.Conv2d and type(seq[5]) is nn.ReLU
    assert seq[1].weight is conv.weight and seq[1].bias is conv.bias
    assert list(seq.state_dict()) == keys
    with torch.no_grad():
        after = seq(x)
    assert (after - before).abs().max().item() < 1e-5


def test_module_follows_weight_changes():
    conv, x = conv_and_input(6, 6, 9, 9)
    wc = WinogradConv2d.from_conv(conv)
    with torch.no_grad():
        wc(x)
        conv.weight.mul_(2)  # in place: the cached transform must not be reused
        got = wc(x)
        want = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert (got - want).abs().max().item() < 1e-4  # a stale transform would be off by the output's scale (~3)


def test_module_falls_back_where_winograd_does_not_run(monkeypatch):
    """Autograd (training), float16 and float64 run the ordinary conv; the ReLU still applies."""
    import loftup.kernels.winograd as wg

    calls = []
    real = wg.conv3x3
    monkeypatch.setattr(wg, "conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv, x = conv_and_input(4, 5, 8, 8)
    wc = WinogradConv2d.from_conv(conv, relu=True)
    y = wc(x)  # grad enabled, weight requires grad
    y.sum().backward()
    assert calls == [] and conv.weight.grad is not None and (y >= 0).all()
    with torch.no_grad():
        assert calls == [] and torch.equal(wc.double()(x.double()), F.relu(F.conv2d(x.double(), wc.weight, wc.bias, padding=1)))
        wc.float()(x)
    assert calls == [1]


def test_covered_geometry_only():
    for conv in (nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3, padding=1, stride=2), nn.Conv2d(3, 3, 5, padding=2),
                 nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")):
        seq = nn.Sequential(copy.deepcopy(conv))
        assert use_winograd(seq) == 0 and type(seq[0]) is nn.Conv2d
        with pytest.raises(ValueError, match="3x3 stride-1 padding-1"):
            WinogradConv2d.from_conv(conv)
