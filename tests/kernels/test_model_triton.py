"""The whole LoftUp model with the Triton attention backend equals the reference backend.

Small config (C = 32, so the token width is 52 and the head dim 13, padded to 16 inside the
kernel), 4x5 low-res tokens and a 24x30 image, batch 2: forward in eval mode and one training
step's gradients for every parameter. Runs under the Triton interpreter on CPU.
"""

from __future__ import annotations

import pytest
import torch

from loftup.kernels import triton_attention as ta_module
from loftup.model import LoftUp, LoftUpConfig

pytestmark = pytest.mark.skipif(not ta_module._interpreted(), reason="needs TRITON_INTERPRET=1 before triton import")

ATOL = 1e-5  # relative to max(1, |reference|); fp32 throughout


def build_pair():
    torch.manual_seed(0)
    reference = LoftUp(LoftUpConfig(feat_dim=32, attn_backend="reference"))
    triton = LoftUp(LoftUpConfig(feat_dim=32, attn_backend="triton"))
    triton.load_state_dict(reference.state_dict())
    return reference, triton


def inputs(seed=1):
    gen = torch.Generator().manual_seed(seed)
    lr_feats = torch.randn(2, 32, 4, 5, generator=gen)  # (B, C, h, w): M = 20 keys
    image = torch.randn(2, 3, 24, 30, generator=gen)  # (B, 3, H, W): N = 720 queries
    return lr_feats, image


@pytest.fixture
def count_kernel_calls(monkeypatch):
    calls = []
    real = ta_module.triton_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(ta_module, "triton_attention", counting)
    return calls


def close(got, want):
    return (got - want).abs().max().item() <= ATOL * max(1.0, want.abs().max().item())


def test_forward_matches_reference(count_kernel_calls):
    reference, triton = build_pair()
    reference.eval()
    triton.eval()
    lr_feats, image = inputs()
    with torch.no_grad():
        want = reference(lr_feats, image)
        got = triton(lr_feats, image)
    assert got.shape == want.shape == (2, 32, 24, 30)
    assert close(got, want), (got - want).abs().max().item()
    assert triton.attention_backend.resolve(torch.device("cpu")) == "triton"
    assert count_kernel_calls and all(shape[1:] == (4, 720, 13) for shape in count_kernel_calls)


def test_training_step_gradients_match_reference(count_kernel_calls):
    reference, triton = build_pair()
    lr_feats, image = inputs()
    target = torch.randn(2, 32, 24, 30, generator=torch.Generator().manual_seed(2))
    grads = {}
    for name, model in (("reference", reference), ("triton", triton)):
        model.train()
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(lr_feats, image), target)
        loss.backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert count_kernel_calls, "the triton model never called the kernel"
    assert grads["reference"].keys() == grads["triton"].keys()
    missing = [n for n, g in grads["triton"].items() if g is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = {n: (grads["triton"][n] - g).abs().max().item() for n, g in grads["reference"].items()
           if not close(grads["triton"][n], g)}
    assert not bad, bad
