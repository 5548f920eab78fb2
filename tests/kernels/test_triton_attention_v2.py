"""triton_attention_v2 under the interpreter (numerics) and by dispatch (what only a GPU runs).

Verified here, on CPU tensors through TRITON_INTERPRET=1: the forward's pointer path and its
TMA-descriptor path (the interpreter emulates `tl.make_tensor_descriptor`, checking 16-byte
alignment), the persistent tile loop, the lazy rescale, and the 5-matmul backward, against the
float32/float64 reference with v1's tolerances (tests/kernels/test_triton_attention.py: fp32
<= 2e-5; fp16 <= 2x PyTorch's own fp16 error + 1e-4), head dims 101/133/197, odd N and M,
bitwise-repeatable gradients. By dispatch only: which path a CUDA call takes (TMA on sm90 with
aligned rows, pointer path otherwise), the TMA -> pointer fallback, warp specialisation's flag,
the backend name and the table. bf16 runs for dtypes and shapes only (interpreter bf16 loads
are wrong). Speed, registers and spills are measured by benchmarks/attention_v2.py on a GPU.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from loftup.errors import InputError
from loftup.kernels import attention_table as at
from loftup.kernels import reference_attention, resolve_backend, run_backend
from loftup.kernels import triton_attention as v1
from loftup.kernels import triton_attention_v2 as v2
from loftup.kernels.triton_attention_v2 import triton_attention_v2

pytestmark = pytest.mark.skipif(not v1._interpreted(), reason="needs TRITON_INTERPRET=1 before triton import")

FP32_ATOL = 2e-5
FP16_FLOOR = 1e-4
NAMES = ("out", "dq", "dk", "dv")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch, tmp_path):
    monkeypatch.setattr(v1, "_WORKING", {})
    monkeypatch.setattr(v1, "_UNLAUNCHABLE", set())
    monkeypatch.setattr(v1, "_RESOURCES", {})
    monkeypatch.setattr(v1, "_WARNED", set())
    monkeypatch.setattr(v2, "_OPTIONS", dict(v2._OPTIONS))
    monkeypatch.setenv("LOFTUP_CACHE", str(tmp_path))


def make_inputs(n, m, d, dtype, batch=2, heads=2, seed=0, logit_gain=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, d, generator=gen) * logit_gain
    k, v = (torch.randn(batch, heads, m, d, generator=gen) for _ in range(2))
    do = torch.randn(batch, heads, n, d, generator=gen)
    return [t.to(dtype) for t in (q, k, v, do)]


def forward_backward(fn, q, k, v, do, dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    return [out, *torch.autograd.grad(out, leaves, do.to(out.dtype))]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def float64_reference(q, k, v, do):
    return forward_backward(reference_attention, q, k, v, do, dtype=torch.float64)


def v2_fn(**options):
    def run(q, k, v):
        previous = v2.set_options(**options)
        try:
            return triton_attention_v2(q, k, v)
        finally:
            v2.set_options(**previous)
    return run


def check_fp32(n, m, d, fn=triton_attention_v2, atol=FP32_ATOL, **kw):
    q, k, v, do = make_inputs(n, m, d, torch.float32, **kw)
    errs = {name: max_err(a, b) for name, a, b in zip(NAMES, forward_backward(fn, q, k, v, do),
                                                     float64_reference(q, k, v, do))}
    assert all(e <= atol for e in errs.values()), errs


def check_fp16(n, m, d, fn=triton_attention_v2, **kw):
    q, k, v, do = make_inputs(n, m, d, torch.float16, **kw)
    scale = 1.0 / math.sqrt(d)
    got = forward_backward(fn, q, k, v, do)
    torch_half = forward_backward(lambda a, b, c: torch.softmax((a @ b.transpose(-1, -2)) * scale, -1) @ c, q, k, v, do)
    for name, a, base, ref in zip(NAMES, got, torch_half, float64_reference(q, k, v, do)):
        assert a.dtype == torch.float16, name
        err, base_err = max_err(a, ref), max_err(base, ref)
        assert err <= 2 * base_err + FP16_FLOOR, f"{name}: kernel {err:.2e}, torch fp16 {base_err:.2e}"


# -- numerics: pointer path (what runs for unaligned heads such as 101) ------------------------------
# (N, M, d): LoftUp's head dims, N never a multiple of the 128-query block, M with tails
# (713 = 5 x 128 + 73) and several key tiles, so the backward's dQ read-add-write runs.
@pytest.mark.parametrize("n,m,d", [(300, 713, 101), (257, 200, 133), (333, 256, 197)])
def test_fp32_matches_float64_reference(n, m, d):
    check_fp32(n, m, d)


@pytest.mark.parametrize("n,m,d", [(300, 713, 101), (200, 256, 197)])
def test_fp16_within_twice_torch_error(n, m, d):
    check_fp16(n, m, d)


# -- numerics: TMA-descriptor forward (aligned rows: heads padded to a multiple of 8) -------------
@pytest.mark.parametrize("n,m,d", [(300, 300, 104), (140, 256, 200)])
def test_tma_path_fp32_matches_reference(n, m, d):
    check_fp32(n, m, d, fn=v2_fn(use_tma=True))


def test_tma_path_fp16_within_twice_torch_error():
    check_fp16(300, 713, 104, fn=v2_fn(use_tma=True))


def test_tma_and_pointer_paths_agree_bitwise():
    q, k, v, _ = make_inputs(260, 300, 104, torch.float32)
    scale = 1 / math.sqrt(104)
    o_ptr, lse_ptr = v2._forward(q, k, v, scale, use_tma=False)
    o_tma, lse_tma = v2._forward(q, k, v, scale, use_tma=True)
    assert torch.equal(o_ptr, o_tma) and torch.equal(lse_ptr, lse_tma)


def test_interpreter_rejects_tma_on_unaligned_rows():
    # d = 101 fp32 rows are 404 bytes: the descriptor's alignment check refuses, which is why
    # tma_usable sends such tensors down the pointer path on a GPU.
    q, k, v, _ = make_inputs(20, 30, 101, torch.float32)
    with pytest.raises(Exception, match="16-byte"):
        v2._v2_fwd_kernel[(1,)](*v2._fwd_args(q, k, v, torch.empty_like(q), torch.empty(2, 2, 20), 0.1),
                                N_BUCKET=4096, HEAD_DIM=101, D_PAD=128, BLOCK_N=32, BLOCK_M=32, DOT_PRECISION="ieee",
                                USE_TMA=True, RESCALE_SLACK=8.0, WARP_SPECIALIZE=False)


# -- persistent grid, lazy rescale ----------------------------------------------------------------
def test_persistent_grid_has_more_tiles_than_programs():
    q = torch.zeros(2, 2, 1000, 64)
    tiles = math.ceil(1000 / 128) * 4
    (programs,) = v2._persistent_grid(q, v1.KernelConfig(128, 128))
    assert programs == v1._sm_count(q.device) == 16 and tiles == 32  # each program runs two tiles
    check_fp32(1000, 150, 64)


@pytest.mark.parametrize("slack", [0.0, 8.0, 60.0])
def test_lazy_rescale_is_exact_for_any_slack(slack):
    # Slack 60: after the first key tile the max is almost never raised (p up to 2^60 in fp32),
    # so the stale-max bookkeeping of l, acc and lse carries the whole result. (Forward only:
    # the backward reads lse, which is checked here.)
    q, k, v, _ = make_inputs(200, 700, 64, torch.float32)
    scale = 1 / math.sqrt(64)
    out, lse = v2._forward(q, k, v, scale, rescale_slack=slack)
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    want_lse = torch.logsumexp(scores, -1) / math.log(2)  # base-2 units, as v1 stores it
    assert max_err(out, reference_attention(q.double(), k.double(), v.double())) <= FP32_ATOL
    assert max_err(lse, want_lse) <= 1e-4


def test_large_logits_force_rescales_and_stay_exact():
    q, k, v, do = make_inputs(150, 300, 101, torch.float32, logit_gain=30.0)
    got = forward_backward(triton_attention_v2, q, k, v, do)
    for name, a, b in zip(NAMES, got, float64_reference(q, k, v, do)):
        assert torch.isfinite(a).all(), name
        assert max_err(a, b) <= 1e-4 * max(1.0, b.abs().max().item()), name


# -- backward -------------------------------------------------------------------------------------
def test_backward_is_bitwise_repeatable():
    q, k, v, do = make_inputs(400, 300, 64, torch.float32)  # 4 splits x 3 key tiles
    first = forward_backward(triton_attention_v2, q, k, v, do)
    second = forward_backward(triton_attention_v2, q, k, v, do)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


def test_split_count_only_changes_summation_order():
    q, k, v, do = make_inputs(400, 200, 48, torch.float32)
    one = forward_backward(lambda a, b, c: triton_attention_v2(a, b, c, num_splits=1), q, k, v, do)
    many = forward_backward(lambda a, b, c: triton_attention_v2(a, b, c, num_splits=3), q, k, v, do)
    for name, a, b in zip(NAMES, one, many):
        assert max_err(a, b) <= 1e-5, name


def test_split_backward_reuses_v1_kernels(monkeypatch):
    seen = []
    real = v1._launch
    monkeypatch.setattr(v1, "_launch", lambda kernel, *a, **kw: (seen.append(kernel), real(kernel, *a, **kw))[1])
    check_fp32(200, 300, 101, fn=lambda q, k, v: triton_attention_v2(q, k, v, backward="split"))
    assert seen == ["v2_fwd", "dq", "dkdv"]


def test_fused_backward_is_one_kernel_after_delta(monkeypatch):
    seen = []
    real = v1._launch
    monkeypatch.setattr(v1, "_launch", lambda kernel, *a, **kw: (seen.append(kernel), real(kernel, *a, **kw))[1])
    check_fp32(130, 100, 40)
    assert seen == ["v2_fwd", "v2_bwd"]


def test_frozen_keys_and_tiny_and_empty_shapes():
    q, k, v, do = make_inputs(200, 100, 40, torch.float32)
    qg = q.clone().requires_grad_()
    (dq,) = torch.autograd.grad(triton_attention_v2(qg, k, v), qg, do)
    qr = q.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference_attention(qr, k, v), qr, do)
    assert max_err(dq, want) <= FP32_ATOL
    check_fp32(1, 1, 1)
    q0 = torch.zeros(1, 2, 0, 8, requires_grad=True)
    k0 = torch.randn(1, 2, 5, 8, requires_grad=True)
    out = triton_attention_v2(q0, k0, k0)
    assert out.shape == (1, 2, 0, 8)
    out.sum().backward()
    assert torch.count_nonzero(k0.grad) == 0


def test_non_contiguous_heads_layout():
    # LoftUp's projections give (B, N, heads, d) memory seen as (B, heads, N, d).
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 150, 2, 40, generator=gen).transpose(1, 2)
    kv = torch.randn(2, 1, 2, 90, 40, generator=gen)
    do = torch.randn(1, 2, 150, 40, generator=gen)
    for fn in (triton_attention_v2, v2_fn(use_tma=True)):
        got = forward_backward(fn, q, kv[0], kv[1], do)
        for name, a, b in zip(NAMES, got, float64_reference(q, kv[0], kv[1], do)):
            assert max_err(a, b) <= FP32_ATOL, name


def test_split_heuristic_bounds():
    h200 = 132
    assert v2._num_splits(100, 256, 4, 104, h200) == 1
    assert v2._num_splits(50176, 256, 4, 104, h200) == 66  # 264 programs: two per SM
    s = v2._num_splits(802816, 4096, 4, 200, h200)  # partials capped at 256 MiB
    assert s * 4 * 4096 * 200 * 8 <= v2.PARTIAL_BUDGET_BYTES


# -- dispatch: what a GPU would run --------------------------------------------------------------------
def test_tma_usable_needs_sm90_and_aligned_rows():
    bf = torch.zeros(1, 4, 64, 104, dtype=torch.bfloat16)
    assert v2.tma_usable(bf, arch="sm90") == (True, "")
    assert not v2.tma_usable(bf, arch="sm80")[0]
    assert "16-byte" in v2.tma_usable(torch.zeros(1, 4, 64, 101, dtype=torch.bfloat16), arch="sm90")[1]
    assert not v2.tma_usable(bf[..., 1:], arch="sm90")[0]  # base pointer off by 2 bytes
    assert "CUDA" in v2.tma_usable(bf)[1]  # CPU tensors: only when asked explicitly


def record_launches(monkeypatch, fail: set[str] = frozenset()):
    seen = []
    real = v1._launch

    def launch(kernel, raw, grid_fn, args, consts, q, m):
        seen.append((kernel, consts.get("USE_TMA"), consts.get("WARP_SPECIALIZE"), consts.get("RESCALE_SLACK")))
        if kernel in fail:
            raise v1.NoConfigLaunched(f"simulated: {kernel}")
        return real(kernel, raw, grid_fn, args, consts, q, m)

    monkeypatch.setattr(v1, "_launch", launch)
    return seen


def test_forward_takes_tma_where_usable(monkeypatch):
    seen = record_launches(monkeypatch)
    monkeypatch.setattr(v2, "tma_usable", lambda *t, arch=None: (True, ""))
    q, k, v, _ = make_inputs(64, 40, 32, torch.float32)
    triton_attention_v2(q, k, v)
    monkeypatch.setattr(v2, "tma_usable", lambda *t, arch=None: (False, "unaligned"))
    triton_attention_v2(q, k, v)
    assert seen == [("v2_fwd_tma", True, False, 8.0), ("v2_fwd", False, False, 8.0)]


def test_tma_launch_failure_falls_back_to_pointer_path_with_one_warning(monkeypatch):
    seen = record_launches(monkeypatch, fail={"v2_fwd_tma"})
    q, k, v, _ = make_inputs(64, 40, 32, torch.float32)
    with pytest.warns(UserWarning, match="pointer-arithmetic"):
        out = v2_fn(use_tma=True)(q, k, v)
    assert [s[0] for s in seen] == ["v2_fwd_tma", "v2_fwd"]
    assert max_err(out, reference_attention(q, k, v)) <= FP32_ATOL


def test_warp_specialize_option_reaches_the_kernel(monkeypatch):
    seen = record_launches(monkeypatch)
    q, k, v, _ = make_inputs(64, 40, 32, torch.float32)
    out = v2_fn(warp_specialize=True, rescale_slack=0.0)(q, k, v)  # the interpreter ignores the loop hint
    assert seen == [("v2_fwd_ws", False, True, 0.0)]
    assert max_err(out, reference_attention(q, k, v)) <= FP32_ATOL


def test_no_config_launches_falls_back_to_sdpa(monkeypatch):
    record_launches(monkeypatch, fail={"v2_fwd", "v2_bwd"})
    q, k, v, do = make_inputs(64, 40, 32, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = forward_backward(triton_attention_v2, q, k, v, do)
    assert any("sdpa" in str(w.message) for w in caught)
    for name, a, b in zip(NAMES, got, float64_reference(q, k, v, do)):
        assert max_err(a, b) <= FP32_ATOL, name


def test_bf16_runs_under_interpreter():
    q, k, v, do = make_inputs(130, 100, 48, torch.bfloat16)
    out, dq, dk, dv = forward_backward(triton_attention_v2, q, k, v, do)
    assert out.dtype == dq.dtype == dk.dtype == dv.dtype == torch.bfloat16
    assert out.shape == q.shape and dk.shape == k.shape


@pytest.mark.parametrize("kwargs,match", [({"num_splits": 0}, "num_splits"), ({"backward": "atomic"}, "backward")])
def test_bad_arguments_raise_input_error(kwargs, match):
    x = torch.zeros(1, 1, 4, 8)
    with pytest.raises(InputError, match=match):
        triton_attention_v2(x, x, x, **kwargs)


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        v2.set_options(tiles=3)


# -- selection: v1 stays the default; v2 only by name or by a measured table entry ------------------
def test_backend_by_name_runs_v2(monkeypatch):
    seen = record_launches(monkeypatch)
    q, k, v, _ = make_inputs(64, 40, 32, torch.float32)
    assert resolve_backend("triton_v2", torch.device("cpu")) == "triton_v2"
    out = run_backend("triton_v2", q, k, v)
    assert seen[0][0] == "v2_fwd" and max_err(out, reference_attention(q, k, v)) <= FP32_ATOL


def test_auto_never_picks_v2_without_a_measured_entry(monkeypatch):
    from loftup import kernels

    monkeypatch.setattr(kernels, "triton_importable", lambda: True)
    cuda = torch.device("cuda")
    shipped = at.AttentionTable()
    assert all(row["backend"] != "triton_v2" for row in shipped.describe())
    measured = at.AttentionTable(local={"sm90/bf16/d128/448/train": at.TableEntry("triton_v2", {"triton_v2": 1.0})})
    train448 = ("sm90", torch.bfloat16, 104, 448 * 448, 1024, True)
    assert resolve_backend("auto", cuda, train448, shipped) == "triton"  # v1, as measured on the H200
    assert resolve_backend("auto", cuda, train448, measured) == "triton_v2"
    fp32 = at.AttentionTable(local={"sm90/fp32/d128/448/train": at.TableEntry("triton_v2")})
    assert resolve_backend("auto", cuda, ("sm90", torch.float32, 104, 448 * 448, 1024, True), fp32) == "sdpa"


def test_fastest_v2_measurement_becomes_the_entry():
    ok = {"triton": {"ms": 2.0, "correct": True}, "triton_v2": {"ms": 1.5, "correct": True},
          "flash": {"ms": 1.7, "correct": True}}
    assert at.choose_fastest("sm90/bf16/d128/448/fwd", ok, "test").backend == "triton_v2"
    wrong = {**ok, "triton_v2": {"ms": 1.0, "correct": False}}
    assert at.choose_fastest("sm90/bf16/d128/448/fwd", wrong, "test").backend == "flash"
    assert at.choose_fastest("sm90/fp32/d128/448/fwd", ok, "test").backend == "flash"


def test_whole_model_with_v2_equals_reference(monkeypatch):
    # LoftUp (C = 32: head dim 13) with attn_backend="triton_v2": forward and every parameter's
    # gradient of one loss against the reference backend, on the same weights.
    from loftup.model import LoftUp, LoftUpConfig

    seen = record_launches(monkeypatch)
    torch.manual_seed(0)
    reference = LoftUp(LoftUpConfig(feat_dim=32, attn_backend="reference"))
    ours = LoftUp(LoftUpConfig(feat_dim=32, attn_backend="triton_v2"))
    ours.load_state_dict(reference.state_dict())
    gen = torch.Generator().manual_seed(1)
    lr_feats, image = torch.randn(1, 32, 4, 5, generator=gen), torch.randn(1, 3, 20, 24, generator=gen)
    outs = []
    for model in (reference, ours):
        out = model(lr_feats, image)
        grads = torch.autograd.grad(out.square().mean(), [p for p in model.parameters() if p.requires_grad])
        outs.append((out, grads))
    (want, want_g), (got, got_g) = outs
    assert {s[0] for s in seen} == {"v2_fwd", "v2_bwd"}
    assert max_err(got, want) <= 1e-5 * max(1.0, want.abs().max().item())
    assert all(max_err(a, b) <= 1e-5 * max(1.0, b.abs().max().item()) for a, b in zip(got_g, want_g))
