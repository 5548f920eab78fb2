"""The Triton attention kernels (forward, dQ, dK/dV) against the reference, under the interpreter.

Runs on CPU tensors through TRITON_INTERPRET=1 (set by tests/conftest.py), which checks the
kernels' indexing, masking and maths - not their speed. Shapes are LoftUp's head dims (64, 101,
133, 197) and key grids (16x16 = 256, 23x31 = 713, 32x32 = 1024) with few queries, batch 2.

Tolerances
- float32: max abs error <= 2e-5 against the float32 reference (observed ~1e-6).
- float16: max abs error <= 2 x (error of the same attention done by PyTorch in float16) + 1e-4,
  both measured against the float32 reference on the same fp16-rounded inputs (STYLE item 2).
  Observed: kernel 1e-4..9e-4, PyTorch fp16 4e-4..1.4e-3.

The default parametrisation is a representative cover (every head dim, every M, tails in N
and M, both dtypes); the full cross product is marked slow (it runs in CI too: 116 s for the 24
cases on 2 cores at load average 8-9).

Speed: the interpreter emulates each `tl.dot` with a small numpy matmul. numpy's bundled
OpenBLAS runs those multi-threaded, and on 2 shared cores a 128x128x128 product then takes
10-30 ms instead of 0.1 ms - 5x this file's run time. `single_thread_numpy_blas` pins it to one
thread for this module (a no-op when OPENBLAS_NUM_THREADS is already set; torch uses MKL and
is unaffected).
"""

from __future__ import annotations

import ctypes
import glob
import math
import os

import numpy as np
import pytest
import torch

from loftup.errors import BackendUnavailableError, InputError, LoftupError
from loftup.kernels import reference_attention
from loftup.kernels import triton_attention as ta_module
from loftup.kernels.triton_attention import triton_attention

pytestmark = pytest.mark.skipif(not ta_module._interpreted(), reason="needs TRITON_INTERPRET=1 before triton import")


@pytest.fixture(scope="module", autouse=True)
def single_thread_numpy_blas():
    lib = None
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas*.so"))
        try:
            lib = ctypes.CDLL(libs[0])
            previous = lib.scipy_openblas_get_num_threads64_()
            lib.scipy_openblas_set_num_threads64_(1)
        except (IndexError, OSError, AttributeError):
            lib = None  # another numpy build: run as is
    yield
    if lib is not None:
        lib.scipy_openblas_set_num_threads64_(previous)


FP32_ATOL = 2e-5
FP16_FLOOR = 1e-4
B, H = 2, 4  # LoftUp's 4 heads


def make_inputs(n, m, d, dtype, heads=H, seed=0, logit_gain=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, heads, n, d, generator=gen) * logit_gain
    k = torch.randn(B, heads, m, d, generator=gen)
    v = torch.randn(B, heads, m, d, generator=gen)
    do = torch.randn(B, heads, n, d, generator=gen)
    return [t.to(dtype) for t in (q, k, v, do)]


def torch_math_attention(q, k, v, scale):
    """The same attention done with plain PyTorch ops in the inputs' dtype (the fp16 baseline)."""
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v  # (B, heads, N, d)


def forward_backward(fn, q, k, v, do, dtype=None):
    """Output and (dq, dk, dv) of fn on leaf copies of q, k, v (cast to `dtype` if given)."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, do.to(out.dtype))
    return [out, *grads]


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


NAMES = ("out", "dq", "dk", "dv")

# (N, M, d): every head dim and every key count appears; N is never a multiple of 128 (tails of 1,
# 74 and 1 queries after 2-3 full 128-query tiles; more queries only repeat full tiles, as in
# test_full_sweep - these were 400-1300, at 2-4x the time) and M = 713 leaves a 73-key tail tile.
FP32_CASES = [(385, 256, 64), (257, 713, 101), (330, 1024, 133), (385, 256, 197)]
FP16_CASES = [(257, 1024, 101), (330, 713, 197), (385, 256, 64), (257, 713, 133)]


def check_fp32(n, m, d, **kw):
    q, k, v, do = make_inputs(n, m, d, torch.float32, **kw)
    got = forward_backward(triton_attention, q, k, v, do)
    want = forward_backward(reference_attention, q, k, v, do)
    errs = {name: max_err(a, b) for name, a, b in zip(NAMES, got, want)}
    assert all(e <= FP32_ATOL for e in errs.values()), errs
    return errs


def check_fp16(n, m, d, **kw):
    q, k, v, do = make_inputs(n, m, d, torch.float16, **kw)
    scale = 1.0 / math.sqrt(d)
    got = forward_backward(triton_attention, q, k, v, do)
    torch_half = forward_backward(lambda a, b, c: torch_math_attention(a, b, c, scale), q, k, v, do)
    want = forward_backward(reference_attention, q, k, v, do, dtype=torch.float32)  # fp16 values, fp32 maths
    for name, a, base, ref in zip(NAMES, got, torch_half, want):
        assert a.dtype == torch.float16, name
        err, base_err = max_err(a, ref), max_err(base, ref)
        assert err <= 2 * base_err + FP16_FLOOR, f"{name}: kernel {err:.2e}, torch fp16 {base_err:.2e}"


@pytest.mark.parametrize("n,m,d", FP32_CASES)
def test_fp32_matches_reference(n, m, d):
    check_fp32(n, m, d)


@pytest.mark.parametrize("n,m,d", FP16_CASES)
def test_fp16_within_twice_torch_error(n, m, d):
    check_fp16(n, m, d)


def test_large_logits_stay_finite_and_exact():
    # Scores of +-100 would overflow a naive exp; the online max subtraction must keep it exact.
    q, k, v, do = make_inputs(150, 300, 101, torch.float32, logit_gain=30.0)
    got = forward_backward(triton_attention, q, k, v, do)
    want = forward_backward(reference_attention, q, k, v, do)
    for name, a, b in zip(NAMES, got, want):
        assert torch.isfinite(a).all(), name
        assert max_err(a, b) <= 1e-4 * max(1.0, b.abs().max().item()), name


def test_backward_is_deterministic():
    # dK/dV use a two-pass split-N reduction (no atomics): repeated runs are bitwise equal.
    q, k, v, do = make_inputs(400, 256, 64, torch.float32)  # 4 splits of 128 queries
    first = forward_backward(triton_attention, q, k, v, do)
    second = forward_backward(triton_attention, q, k, v, do)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def test_split_count_only_changes_summation_order():
    q, k, v, do = make_inputs(400, 200, 48, torch.float32)
    one = forward_backward(lambda a, b, c: triton_attention(a, b, c, num_splits=1), q, k, v, do)
    many = forward_backward(lambda a, b, c: triton_attention(a, b, c, num_splits=3), q, k, v, do)
    for name, a, b in zip(NAMES, one, many):
        assert max_err(a, b) <= 1e-5, name


def test_non_contiguous_inputs_and_explicit_scale():
    # LoftUp's projections give (B, N, heads, d) memory viewed as (B, heads, N, d), and k/v
    # slices of one packed tensor; a non-unit stride along d is also accepted (copied).
    gen = torch.Generator().manual_seed(3)
    n, m, heads, d = 200, 150, 2, 37
    q = torch.randn(B, n, heads, d, generator=gen).transpose(1, 2)
    kv = torch.randn(2, B, heads, m, d, generator=gen)
    k, v = kv[0], kv[1]
    k_strided = torch.randn(B, heads, d, m, generator=gen).transpose(-1, -2)  # stride(-1) != 1
    do = torch.randn(B, heads, n, d, generator=gen)
    for kk in (k, k_strided):
        got = forward_backward(lambda a, b, c: triton_attention(a, b, c, scale=0.3), q, kk, v, do)
        want = forward_backward(lambda a, b, c: reference_attention(a, b, c, 0.3), q, kk, v, do)
        for name, a, b in zip(NAMES, got, want):
            assert max_err(a, b) <= FP32_ATOL, name


def test_frozen_keys_values_skip_their_gradients():
    q, k, v, do = make_inputs(200, 100, 40, torch.float32)
    q = q.clone().requires_grad_()
    out = triton_attention(q, k, v)
    (dq,) = torch.autograd.grad(out, q, do)
    qf = q.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(reference_attention(qf, k, v), qf, do)
    assert max_err(dq, want) <= FP32_ATOL


def test_default_scale_uses_true_head_dim():
    # d = 101 is padded to 128 inside the kernel; the default scale must still be 1/sqrt(101).
    q, k, v, _ = make_inputs(130, 140, 101, torch.float32)
    want = reference_attention(q, k, v, 1.0 / math.sqrt(101))
    assert max_err(triton_attention(q, k, v), want) <= FP32_ATOL


def test_tiny_and_empty_shapes():
    q, k, v, do = make_inputs(1, 1, 1, torch.float32)
    got = forward_backward(triton_attention, q, k, v, do)
    want = forward_backward(reference_attention, q, k, v, do)
    for name, a, b in zip(NAMES, got, want):
        assert max_err(a, b) <= FP32_ATOL, name
    q0 = torch.zeros(B, H, 0, 8, requires_grad=True)
    k0 = torch.randn(B, H, 5, 8, requires_grad=True)
    out = triton_attention(q0, k0, k0)
    assert out.shape == (B, H, 0, 8)
    out.sum().backward()
    assert torch.count_nonzero(k0.grad) == 0


def test_bf16_runs_under_interpreter():
    # The interpreter's bf16 loads are wrong, so only the path (dtypes, shapes) is checked.
    q, k, v, do = make_inputs(130, 100, 48, torch.bfloat16)
    out, dq, dk, dv = forward_backward(triton_attention, q, k, v, do)
    assert out.dtype == dq.dtype == dk.dtype == dv.dtype == torch.bfloat16
    assert out.shape == q.shape and dk.shape == k.shape


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 3, 8)), "same shape"),
        ((torch.zeros(1, 2, 5, 8), torch.zeros(1, 3, 4, 8), torch.zeros(1, 3, 4, 8)), "must match"),
        ((torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 4, 9), torch.zeros(1, 2, 4, 9)), "must match"),
        ((torch.zeros(2, 5, 8), torch.zeros(2, 4, 8), torch.zeros(2, 4, 8)), "4-D"),
        ((torch.zeros(1, 1, 5, 300), torch.zeros(1, 1, 4, 300), torch.zeros(1, 1, 4, 300)), "sdpa"),
        ((torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 0, 8), torch.zeros(1, 1, 0, 8)), "no keys"),
        ((torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 4, 8).half(), torch.zeros(1, 1, 4, 8)), "dtypes differ"),
        ((torch.zeros(1, 1, 5, 8).double(),) * 3, "not supported"),
    ],
)
def test_invalid_inputs_raise_input_error(args, match):
    with pytest.raises(InputError, match=match):
        triton_attention(*args)


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ta_module, "_interpreted", lambda: False)
    x = torch.zeros(1, 1, 4, 8)
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        triton_attention(x, x, x)
    assert issubclass(BackendUnavailableError, LoftupError)


def test_num_splits_must_be_positive():
    x = torch.zeros(1, 1, 4, 8)
    with pytest.raises(InputError, match="num_splits"):
        triton_attention(x, x, x, num_splits=0)


def test_split_heuristic_bounds():
    h100_sms = 132
    assert ta_module._num_splits(100, 256, 4, 101, h100_sms) == 1  # fewer queries than one split
    # 448x448 output, 32x32 keys: 64 key tiles of 64 -> 9 splits = 576 programs (~4 waves)
    assert ta_module._num_splits(200704, 1024, 4, 101, h100_sms) == 9
    # 224 output, 16x16 keys: only 16 key tiles, so many splits; partials stay small
    s = ta_module._num_splits(50176, 256, 4, 101, h100_sms)
    assert s == 33 and s * 4 * 256 * 101 * 8 < 32 << 20
    # the fp32 partials stay within 256 MiB even for the largest LoftUp shape
    s = ta_module._num_splits(802816, 4096, 4, 197, h100_sms)
    assert s * 4 * 4096 * 197 * 8 <= 256 << 20


def test_autotune_key_is_shape_only():
    # The tuning key holds plain integers (N bucket, M, d, D_PAD): persistent-cache friendly,
    # and every output size of one bucket shares one tuning.
    assert ta_module._n_bucket(50176) == ta_module._n_bucket(60000) == 65536
    assert ta_module._n_bucket(10) == 4096 and ta_module._n_bucket(10**7) == 1 << 20
    consts = ta_module._consts(torch.zeros(1, 4, 50176, 133))
    assert consts["D_PAD"] == 256 and consts["HEAD_DIM"] == 133
    assert all(isinstance(consts[name], int) for name in ("N_BUCKET", "HEAD_DIM", "D_PAD"))


@pytest.mark.slow
@pytest.mark.parametrize("d", [64, 101, 133, 197])
@pytest.mark.parametrize("m", [256, 713])  # whole key tiles and 2 dK/dV splits; a 73-key tail and 1 split (as M = 1024,
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])  # which the cases above run)
def test_full_sweep(d, m, dtype):
    # 300 queries: a 44-query tail after two full 128-query tiles, and the same dK/dV splits as any
    # larger N (2 at M = 256, 1 above, at the interpreter's nominal 16 SMs); it was 1500, which
    # only repeated full tiles at 2.6-4.4x the time (measured at M = 1024, d = 197).
    n = 300
    if dtype == torch.float32:
        check_fp32(n, m, d, heads=4)
    else:
        check_fp16(n, m, d, heads=4)
