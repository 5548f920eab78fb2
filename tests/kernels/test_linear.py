"""loftup.kernels.linear: oneDNN linears with a GELU or residual epilogue equal the eager ops (issue 26)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import loftup.kernels.linear as lin


def data(dtype, n=300, k=52, m=40):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, n, k, generator=gen).to(dtype)
    w = (torch.randn(m, k, generator=gen) / k**0.5).to(dtype)
    b = torch.randn(m, generator=gen).to(dtype)
    return x, w, b, torch.randn(2, n, m, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.06)])
def test_fused_equals_eager(dtype, atol):
    x, w, b, res = data(dtype)
    with torch.no_grad():
        for kw, want in (({}, F.linear(x, w, b)), ({"activation": "gelu"}, F.gelu(F.linear(x.float(), w.float(), b.float()))),
                         ({"residual": res}, F.linear(x.float(), w.float(), b.float()) + res.float())):
            got = lin.linear(x, w, b, fused=True, **kw)
            assert got.dtype == dtype and got.shape == (2, 300, 40)
            assert (got.float() - want.float()).abs().max().item() < atol, kw


def test_fused_runs_onednn_in_inference_only():
    x, w, b, res = data(torch.float32)
    x.requires_grad_(True)
    assert not lin._fusable(x, w)  # autograd: the eager ops (oneDNN's op has no backward)
    y = lin.linear(x, w, b, residual=res, fused=True)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    with torch.no_grad():
        assert lin._fusable(x, w) == (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
        assert not lin._fusable(x, w.double())  # mixed dtypes


def test_a_refused_combination_falls_back_once(monkeypatch):
    class Refuse:
        def __call__(self, *a, **k):
            raise RuntimeError("not here")

        binary = __call__

    x, w, b, res = data(torch.float32)
    monkeypatch.setattr(lin, "_BROKEN", set())
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Refuse(), raising=False)
    with torch.no_grad():
        got = lin.linear(x, w, b, activation="gelu", fused=True)
    assert (got - F.gelu(F.linear(x, w, b))).abs().max().item() < 1e-6
    assert (torch.float32, "gelu", False) in lin._BROKEN
