"""The Triton adaptive convolution (forward, source and kernel gradients) against the PyTorch version,
under the interpreter (TRITON_INTERPRET=1, set by tests/conftest.py).

Shapes are kept tiny: the interpreter runs every program in Python (a 3 x 5 output with the
7 x 7 taps costs ~2 s forward + backward). They cover channel tails (C not a multiple of
BLOCK_C = 32), width tails (W not a multiple of BLOCK_W = 64), batch 2, k = 3 and FeatUp's k = 7,
and FeatUp's fixture (stored kernel and padded source, stage 1).

Tolerances (fp32): forward <= 2e-6 (observed 0: the interpreter adds the taps in the same
order), gradients <= 1e-5 (observed <= 1e-5 on sums of up to 49 * C products of N(0,1) values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from loftup.errors import InputError
from loftup.kernels import triton_adaptive_conv as tac
from loftup.kernels.adaptive_conv import adaptive_conv_torch
from loftup.kernels.conv_dispatch import AdaptiveConvDispatcher

pytestmark = [pytest.mark.skipif(not tac._interpreted(), reason="needs TRITON_INTERPRET=1 before triton import"),
              pytest.mark.usefixtures("one_thread")]

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "baselines"


def grads(fn, src, ker, go):
    s, k = src.clone().requires_grad_(), ker.clone().requires_grad_()
    out = fn(s, k)
    return (out, *torch.autograd.grad(out, (s, k), go))


@pytest.mark.parametrize("B,C,H,W,k", [(1, 5, 3, 5, 7), (2, 33, 2, 3, 3), (1, 3, 2, 70, 3)])
def test_forward_and_backward_match_pytorch(B, C, H, W, k):
    g = torch.Generator().manual_seed(B * 100 + C)
    src = torch.randn(B, C, H + k - 1, W + k - 1, generator=g)
    ker = torch.randn(B, H, W, k, k, generator=g)
    go = torch.randn(B, C, H, W, generator=g)
    out_t, gs_t, gk_t = grads(tac.triton_adaptive_conv, src, ker, go)
    out_r, gs_r, gk_r = grads(adaptive_conv_torch, src, ker, go)
    assert (out_t - out_r).abs().max().item() <= 2e-6
    assert (gs_t - gs_r).abs().max().item() <= 1e-5
    assert (gk_t - gk_r).abs().max().item() <= 1e-5


def test_featup_fixture_stage_and_dispatcher():
    io = np.load(FIX / "featup_jbu_tiny_io.npz")
    src = torch.from_numpy(io["case1_inter_s1_hr_source_padded"])
    ker = torch.from_numpy(io["case1_inter_s1_kernel"])
    want = torch.from_numpy(io["case1_inter_s1_out"])
    conv = AdaptiveConvDispatcher("triton")
    assert conv.resolve(src.device) == "triton"
    assert (conv(src, ker) - want).abs().max().item() <= 2e-6
    assert AdaptiveConvDispatcher("auto").resolve(src.device) == "torch"  # auto picks Triton on CUDA only


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(InputError, match="does not fit kernel"):
        tac.triton_adaptive_conv(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 3, 7, 7))
    with pytest.raises(InputError, match="dtype"):
        tac.triton_adaptive_conv(torch.zeros(1, 2, 9, 9, dtype=torch.float64), torch.zeros(1, 3, 3, 7, 7, dtype=torch.float64))
