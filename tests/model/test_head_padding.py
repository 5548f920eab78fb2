"""Head padding at the q/k/v projections (the CUDA layout) is exact and invisible to checkpoints.

On CUDA the dispatcher pads each head to a multiple of 8 channels (LoftUp's 101 -> 104) with
zero projection rows; here the same padding is forced on CPU (`head_multiple=8`) and compared
with the unpadded model and with the official fixtures (tests/fixtures/official, FACTS.md 3).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from loftup.model import LoftUp, LoftUpConfig

OFFICIAL_ATOL = 1e-5  # the tolerance of tests/model/test_official_parity.py


def padded(model: LoftUp, multiple: int = 8) -> LoftUp:
    model.upsampler.dispatcher.head_multiple = multiple
    return model


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("case", ["case0", "case1"])
def test_padded_heads_match_official_fixtures(official_dir, case):
    io = dict(np.load(official_dir / "loftup_tiny_io.npz"))
    weights = load_file(official_dir / "loftup_tiny.safetensors")
    model = LoftUp(LoftUpConfig(feat_dim=32, minmax="batch", attn_backend="sdpa"))
    model.load_state_dict(weights, strict=True)  # official layout, unchanged
    model = padded(model).eval()
    assert model.cfg.head_dim == 13 and model.upsampler.dispatcher.head_pad(torch.device("cpu"), 13) == 3
    with torch.no_grad():
        out = model(t(io[f"{case}_lr"]), t(io[f"{case}_img"]))
    assert (out - t(io[f"{case}_out"])).abs().max().item() < OFFICIAL_ATOL
    state = model.state_dict()  # the padding never reaches the state dict
    assert state.keys() == weights.keys()
    assert all(state[k].shape == weights[k].shape for k in weights)


def test_padded_projections_are_exact_at_loftup_head_dim():
    # C = 384: token width 404, 4 heads of 101 channels -> 104 padded.
    torch.manual_seed(0)
    plain = LoftUp(LoftUpConfig(feat_dim=384, attn_backend="sdpa")).eval()
    pad = padded(LoftUp(LoftUpConfig(feat_dim=384, attn_backend="sdpa")).eval())
    pad.load_state_dict(plain.state_dict(), strict=True)
    lr, image = torch.randn(2, 384, 3, 4), torch.randn(2, 3, 20, 26)
    attn = pad.upsampler.ca_transformer.layers[0][0].attention
    with torch.no_grad():
        k, v = attn.project_kv(torch.randn(2, 12, 404))
        assert k.shape == (2, 4, 12, 104) and not k[..., 101:].any() and not v[..., 101:].any()
        want, got = plain(lr, image), pad(lr, image)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_padded_gradients_reach_the_official_parameters():
    torch.manual_seed(1)
    plain = LoftUp(LoftUpConfig(feat_dim=32, attn_backend="sdpa"))
    pad = padded(LoftUp(LoftUpConfig(feat_dim=32, attn_backend="sdpa")))
    pad.load_state_dict(plain.state_dict())
    lr, image = torch.randn(2, 32, 3, 4), torch.randn(2, 3, 12, 16)
    for model in (plain, pad):
        model.train()
        model(lr, image).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), pad.parameters()):
        assert a.grad.shape == b.grad.shape, name
        assert (a.grad - b.grad).abs().max().item() <= 1e-5 * max(1.0, a.grad.abs().max().item()), name


def test_padding_with_rope_and_tiles_is_exact():
    torch.manual_seed(2)
    cfg = LoftUpConfig(feat_dim=30, num_heads=2, lr_pe="rope", tile_size=8, attn_backend="sdpa")  # head dim 15
    plain = LoftUp(cfg).eval()
    pad = padded(LoftUp(cfg).eval())
    pad.load_state_dict(plain.state_dict())
    lr, image = torch.randn(1, 30, 3, 3), torch.randn(1, 3, 19, 21)
    with torch.no_grad():
        want = plain(lr, image, tile=False)
        got = pad(lr, image, tile=True)
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
