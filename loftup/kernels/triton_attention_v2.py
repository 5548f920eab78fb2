"""Cross-attention kernels, second generation: written for Hopper (sm90), unmeasured on any GPU.

``triton_attention_v2(q, k, v, scale)`` computes the same thing as v1's ``triton_attention``
(``softmax(q k^T * scale) v``, q (B, heads, N, d), k/v (B, heads, M, d), differentiable in q, k,
v, head dims up to 256 padded inside the kernels to ``D_PAD = next_power_of_2(max(d, 16))``)
and accepts the same inputs. v1 (``triton_attention.py``) stays the default everywhere: `auto`
picks this backend (``triton_v2``) only where a measured entry of ``attention_table.py`` names
it, or a caller names it. Issue 13 lists the leads this kernel implements; none is measured
yet (this task had no GPU), so each is a switch the benchmark ``benchmarks/attention_v2.py``
can time against v1, flash and cuDNN in one call.

What is new against v1
----------------------
Forward (``_v2_fwd_kernel``):

- Persistent grid: ``min(tiles, SMs)`` programs walk the (query block, batch*head) tiles
  ``pid, pid + programs, ...``; the query block is the fast index, so the tiles in flight at
  one time belong to one head and share its K/V in L2 (v1's reasoning), and the per-program
  set-up (descriptors, index maths) is paid once per SM instead of once per tile.
- Tensor-memory-accelerator loads (``USE_TMA``): q, k, v and o go through 4-D
  ``tl.make_tensor_descriptor`` s over (B, heads, length, d) with block (1, 1, rows, D_PAD), so
  any (batch, head) strides work (LoftUp's q is a (B, N, heads, d) buffer seen as
  (B, heads, N, d)); rows past N/M and lanes past d read zero from the hardware. TMA needs
  16-byte aligned base pointers and strides: true for fp16/bf16 heads padded to a multiple of 8
  (the dispatcher's ``head_pad`` on CUDA) and not for d = 101, so `tma_usable` checks the actual
  tensors and the pointer-arithmetic path (v1's masked loads) runs otherwise. Descriptors need a
  scratch allocator (`_ensure_allocator`, torch memory). sm90+ only.
- Lazy rescale (``RESCALE_SLACK``, log2 units, default 8): the running max of a row is raised
  only when some row of the key tile exceeds it by more than the slack; then the whole tile
  rescales acc and l (one branch per tile, not per element). Otherwise the probabilities are
  taken against the stale max, so they may reach 2^slack = 256 - far from fp16/bf16/fp32
  overflow - and l, acc and lse = m + log2(l) stay exact because all three use the same m.
  Slack 0 is the plain rule (rescale whenever a max grows). With slack 0 nearly every tile of
  LoftUp's shapes would rescale (with 128 rows some row's max grows in most of the few key
  tiles), hence the slack.
- Configs: 128x128 tiles, 8 warps, 2 or 3 pipeline stages first (``V2_SPACE``), launched
  through v1's machinery (`triton_attention.register_kernel`: estimate pruning, next config on
  a launch failure, sdpa when none launches, `resource_report()` with Triton's registers /
  shared memory / spills). ``WARP_SPECIALIZE`` puts ``warp_specialize=True`` on the key loop
  (``tl.range``); Triton 3.6's Hopper support for it is partial, so it is off unless asked for
  (`set_options(warp_specialize=True)`, the benchmark's ``v2_ws`` row).

Backward (``_v2_bwd_kernel``): 5 tile matmuls per (query block, key tile) pair instead of v1's
7, deterministic, no atomics. One program owns one contiguous split of queries of one
(batch, head) and walks the key tiles in order; per key tile it keeps K, V and fp32 dK, dV in
registers while it streams the split's query blocks, computing S = Q K^T, P, dP = dO V^T,
dS, then dV += P^T dO, dK += dS^T Q and dQ += dS K. dQ of the split's rows belongs to this
program alone: the first key tile writes it (fp32), later tiles read-add-write it in key order,
the last one scales and writes dQ in the input dtype (a single key tile never touches the fp32
buffer). dK, dV of each split go to a (splits, B, heads, M, d) fp32 buffer summed in a fixed
order afterwards, as in v1. So two runs are bitwise equal. ``delta = rowsum(dO * O)`` is one
small kernel before it (``_v2_delta_kernel``).

The price of the two saved matmuls is traffic: dQ makes (key tiles - 1) fp32 read-write
round trips per query row (cheap while a split's rows stay in L2, which the split size aims
for), and more splits mean more dK/dV partials. For LoftUp's 224 shape (M = 256: 2-4 key
tiles) that is small; at M = 4096 (64 key tiles of 64) it may cost more than the two matmuls
- ``backward="split"`` runs v1's two backward kernels on v2's forward instead, and the
benchmark times both, so the table can pick per size class.

Precision and validity are v1's: fp32 statistics and accumulators; fp16/bf16 P and dS rounded
to the input dtype before their matmuls; IEEE fp32 unless TF32 is allowed; bad inputs raise
v1's errors (`_check_inputs`), and a shape no config launches for falls back to sdpa (warned
once).

Verified / not verified
-----------------------
Under ``TRITON_INTERPRET=1`` (tests/kernels/test_triton_attention_v2.py): forward through both
the pointer path and the TMA-descriptor path, the persistent loop (more tiles than programs),
lazy rescale with slack 0 and 8, and the fused backward, in fp32 and fp16 against the float64
reference (fp16 within 2x PyTorch's own fp16 error), head dims 101/133/197, odd N and M,
bitwise-repeatable backward. Path selection (TMA on/off, warp specialisation) by dispatch tests.
Not verified: anything about speed, register use, spills, whether Triton 3.6 compiles the TMA
and warp-specialised variants for sm90, and bf16 numerics (the interpreter's bf16 loads are
wrong). ``benchmarks/attention_v2.py`` measures all of that in one call.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import triton_attention as v1
from .triton_attention import KernelConfig, NoConfigLaunched

_LOG2E = 1.4426950408889634
_SPLIT_ALIGN = 128  # queries per backward split are a multiple of the largest BLOCK_N
PARTIAL_BUDGET_BYTES = 256 << 20  # fp32 dK/dV partials, as v1

_KC = KernelConfig
# Largest first (also the fallback order). Forward: BLOCK_N queries x BLOCK_M keys per tile.
# Backward: BLOCK_N queries streamed x BLOCK_M keys resident (dK, dV accumulators).
V2_SPACE: dict[str, tuple[KernelConfig, ...]] = {
    "v2_fwd": (_KC(128, 128, 8, 2), _KC(128, 128, 8, 3), _KC(128, 64, 8, 3), _KC(128, 64, 8, 2), _KC(64, 64, 4, 2),
               _KC(64, 32, 4, 2), _KC(32, 32, 4, 1)),
    "v2_bwd": (_KC(128, 64, 8, 2), _KC(64, 64, 4, 2), _KC(64, 32, 8, 2), _KC(64, 32, 4, 2), _KC(32, 32, 4, 1)),
}
# v1's footprint rows: (resident rows, resident tiles, streamed rows, streamed tiles per stage,
# fp32 accumulators). The backward holds dK, dV and a transient dQ tile (counted as a third).
_V2_FOOTPRINT = {"v2_fwd": ("block_n", 1, "block_m", 2, 1), "v2_bwd": ("block_m", 2, "block_n", 2, 3)}
for _name, _space in V2_SPACE.items():
    v1.register_kernel(_name, _space, _V2_FOOTPRINT[_name])
# The forward's variants (TMA descriptors, warp-specialised key loop) are launch keys of their
# own: a TMA failure falls back to the pointer path, not to sdpa, and each variant's resources
# are reported separately.
FWD_KERNELS = ("v2_fwd", "v2_fwd_tma", "v2_fwd_ws", "v2_fwd_tma_ws")
for _name in FWD_KERNELS[1:]:
    v1.register_kernel(_name, V2_SPACE["v2_fwd"], _V2_FOOTPRINT["v2_fwd"])

# Options the benchmark switches (None: automatic).
_OPTIONS = {"use_tma": None, "warp_specialize": False, "rescale_slack": 8.0, "backward": "fused"}
BACKWARDS = ("fused", "split")


def set_options(**options) -> dict:
    """Set module-wide defaults (use_tma: None = when `tma_usable`; warp_specialize; rescale_slack;
    backward: 'fused' | 'split'); returns the previous values (for restoring)."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown triton_attention_v2 option(s) {unknown}; known: {sorted(_OPTIONS)}")
    previous = {k: _OPTIONS[k] for k in options}
    _OPTIONS.update(options)
    return previous


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _v2_key_tiles(
    acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, off_b, off_h,
    stride_km, stride_kd, stride_vm, stride_vd, offs_d, d_mask, start, end, M, qk_scale,
    BLOCK_M: tl.constexpr, D_PAD: tl.constexpr, MASK_KEYS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, RESCALE_SLACK: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    """Online softmax over key tiles [start, end), raising the running max only past the slack."""
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in tl.range(start, end, BLOCK_M, warp_specialize=WARP_SPECIALIZE):
        offs_m = start_m + offs_m0
        if USE_TMA:  # rows past M and lanes past d come back as zeros
            k = k_desc.load([off_b, off_h, start_m, 0]).reshape(BLOCK_M, D_PAD)
            v = v_desc.load([off_b, off_h, start_m, 0]).reshape(BLOCK_M, D_PAD)
        else:
            if MASK_KEYS:
                kv_mask = (offs_m < M)[:, None] & d_mask[None, :]
            else:
                kv_mask = d_mask[None, :]
            k = tl.load(k_base + offs_m[:, None] * stride_km + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_m[:, None] * stride_vm + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M), log2 units
        if MASK_KEYS:
            s = tl.where((offs_m < M)[None, :], s, float("-inf"))
        m_tile = tl.max(s, 1)
        if tl.max(m_tile - m_i, 0) > RESCALE_SLACK:  # one branch for the whole tile
            m_new = tl.maximum(m_i, m_tile)
            alpha = tl.math.exp2(m_i - m_new)
            acc = acc * alpha[:, None]
            l_i = l_i * alpha
            m_i = m_new
        p = tl.math.exp2(s - m_i[:, None])  # <= 2^RESCALE_SLACK
        l_i = l_i + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def _v2_fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_km, stride_kd,
    stride_vb, stride_vh, stride_vm, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    B, H, N, M, qk_scale,
    N_BUCKET,  # launch key only
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, RESCALE_SLACK: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    """Persistent forward: this program computes tiles pid, pid + programs, ... of (query block, b*h)."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    n_blocks = tl.cdiv(N, BLOCK_N)
    tiles = n_blocks * B * H
    if USE_TMA:  # made once per program; block (1, 1, rows, D_PAD) at (b, h, row, 0)
        q_desc = tl.make_tensor_descriptor(Q, shape=[B, H, N, HEAD_DIM], strides=[stride_qb, stride_qh, stride_qn, 1],
                                           block_shape=[1, 1, BLOCK_N, D_PAD])
        o_desc = tl.make_tensor_descriptor(O, shape=[B, H, N, HEAD_DIM], strides=[stride_ob, stride_oh, stride_on, 1],
                                           block_shape=[1, 1, BLOCK_N, D_PAD])
        k_desc = tl.make_tensor_descriptor(K, shape=[B, H, M, HEAD_DIM], strides=[stride_kb, stride_kh, stride_km, 1],
                                           block_shape=[1, 1, BLOCK_M, D_PAD])
        v_desc = tl.make_tensor_descriptor(V, shape=[B, H, M, HEAD_DIM], strides=[stride_vb, stride_vh, stride_vm, 1],
                                           block_shape=[1, 1, BLOCK_M, D_PAD])
    else:
        q_desc = None
        o_desc = None
        k_desc = None
        v_desc = None
    offs_d = tl.arange(0, D_PAD)
    d_mask = offs_d < HEAD_DIM
    m_full = (M // BLOCK_M) * BLOCK_M
    for tile in range(pid, tiles, programs):
        pid_n = tile % n_blocks
        pid_bh = tile // n_blocks
        b = pid_bh // H
        h = pid_bh % H
        off_b = b.to(tl.int64)
        off_h = h.to(tl.int64)
        k_base = K + off_b * stride_kb + off_h * stride_kh
        v_base = V + off_b * stride_vb + off_h * stride_vh
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        q_mask = n_mask[:, None] & d_mask[None, :]
        if USE_TMA:
            q = q_desc.load([b, h, pid_n * BLOCK_N, 0]).reshape(BLOCK_N, D_PAD)
        else:
            q_base = Q + off_b * stride_qb + off_h * stride_qh
            q = tl.load(q_base + offs_n[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)

        m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
        acc, m_i, l_i = _v2_key_tiles(acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, b, h,
                                      stride_km, stride_kd, stride_vm, stride_vd, offs_d, d_mask, 0, m_full, M,
                                      qk_scale, BLOCK_M, D_PAD, False, DOT_PRECISION, USE_TMA, RESCALE_SLACK,
                                      WARP_SPECIALIZE)
        acc, m_i, l_i = _v2_key_tiles(acc, m_i, l_i, q, k_base, v_base, k_desc, v_desc, b, h,
                                      stride_km, stride_kd, stride_vm, stride_vd, offs_d, d_mask, m_full, M, M,
                                      qk_scale, BLOCK_M, D_PAD, True, DOT_PRECISION, USE_TMA, RESCALE_SLACK,
                                      False)
        out = (acc / l_i[:, None]).to(O.dtype.element_ty)
        if USE_TMA:  # rows past N and lanes past d are not written
            o_desc.store([b, h, pid_n * BLOCK_N, 0], out.reshape(1, 1, BLOCK_N, D_PAD))
        else:
            o_base = O + off_b * stride_ob + off_h * stride_oh
            tl.store(o_base + offs_n[:, None] * stride_on + offs_d[None, :] * stride_od, out, mask=q_mask)
        tl.store(LSE + pid_bh.to(tl.int64) * N + offs_n, m_i + tl.math.log2(l_i), mask=n_mask)


@triton.jit
def _v2_delta_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    H, N, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """delta = rowsum(dO * O) in fp32, (B * heads, N)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    n_mask = offs_n < N
    mask = n_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(O + off_b * stride_ob + off_h * stride_oh + offs_n[:, None] * stride_on + offs_d[None, :] * stride_od,
                mask=mask, other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + offs_n[:, None] * stride_don
                 + offs_d[None, :] * stride_dod, mask=mask, other=0.0)
    tl.store(DELTA + pid_bh.to(tl.int64) * N + offs_n, tl.sum(do.to(tl.float32) * o.to(tl.float32), 1), mask=n_mask)


@triton.jit
def _v2_bwd_kernel(
    Q, K, V, DO, DQ, DQ_ACC, LSE, DELTA, DK_PART, DV_PART,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_km, stride_kd,
    stride_vb, stride_vh, stride_vm, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    H, N, M, queries_per_split, qk_scale, sm_scale,
    N_BUCKET,  # launch key only
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dQ of one query split (complete) and its partial dK, dV: 5 tile matmuls per tile pair."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DO + off_b * stride_dob + off_h * stride_doh
    dq_base = DQ + off_b * stride_dqb + off_h * stride_dqh
    row_base = pid_bh.to(tl.int64) * N
    acc_base = DQ_ACC + row_base * HEAD_DIM  # contiguous (B * heads, N, HEAD_DIM) fp32

    offs_d = tl.arange(0, D_PAD)
    d_mask = offs_d < HEAD_DIM
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    n_start = pid_s * queries_per_split
    n_end = tl.minimum(n_start + queries_per_split, N)
    for start_m in range(0, M, BLOCK_M):
        offs_m = start_m + offs_m0
        kv_mask = (offs_m < M)[:, None] & d_mask[None, :]
        k = tl.load(K + off_b * stride_kb + off_h * stride_kh + offs_m[:, None] * stride_km + offs_d[None, :] * stride_kd,
                    mask=kv_mask, other=0.0)
        v = tl.load(V + off_b * stride_vb + off_h * stride_vh + offs_m[:, None] * stride_vm + offs_d[None, :] * stride_vd,
                    mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
        dv = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
        for start_n in range(n_start, n_end, BLOCK_N):
            offs_n = start_n + offs_n0
            n_mask = offs_n < n_end
            q_mask = n_mask[:, None] & d_mask[None, :]
            q = tl.load(q_base + offs_n[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
            do = tl.load(do_base + offs_n[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
            # lse = +inf on padded query rows makes their probabilities exactly 0; keys past M
            # have zero K/V rows, so their dQ terms vanish and their dK/dV rows are not stored.
            lse = tl.load(LSE + row_base + offs_n, mask=n_mask, other=float("inf"))
            delta = tl.load(DELTA + row_base + offs_n, mask=n_mask, other=0.0)
            s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
            p_t = tl.math.exp2(s_t - lse[None, :])
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
            dk = tl.dot(ds_t, q, dk, input_precision=DOT_PRECISION)
            dq = tl.dot(tl.trans(ds_t), k, input_precision=DOT_PRECISION)  # (BLOCK_N, D_PAD), this key tile's share
            acc_ptrs = acc_base + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
            if start_m > 0:  # in key order, written by this program only: deterministic
                dq += tl.load(acc_ptrs, mask=q_mask, other=0.0)
            if start_m + BLOCK_M >= M:  # the last key tile
                tl.store(dq_base + offs_n[:, None] * stride_dqn + offs_d[None, :] * stride_dqd,
                         (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)
            else:
                tl.store(acc_ptrs, dq, mask=q_mask)
        # The next key tile re-reads these dQ rows, possibly from other threads of this program.
        tl.debug_barrier()
        part = ((pid_s * tl.num_programs(1) + pid_bh).to(tl.int64) * M + offs_m[:, None]) * HEAD_DIM + offs_d[None, :]
        tl.store(DK_PART + part, dk * sm_scale, mask=kv_mask)
        tl.store(DV_PART + part, dv, mask=kv_mask)


# ----------------------------------------------------------------------------------------------
# Path selection
# ----------------------------------------------------------------------------------------------


def _aligned16(t: torch.Tensor) -> bool:
    item = t.element_size()
    return (t.data_ptr() % 16 == 0 and t.stride(-1) == 1
            and all((s * item) % 16 == 0 for s in t.stride()[:-1]))


def tma_usable(*tensors: torch.Tensor, arch: str | None = None) -> tuple[bool, str]:
    """Whether the forward can load/store these tensors through TMA descriptors, and why not.

    Needs sm90 or newer (`arch`, default: the tensors' device; under the interpreter the
    descriptors are emulated and this says no unless asked for explicitly), 16-byte aligned
    base pointers, every stride but the last a multiple of 16 bytes, the last stride 1 and
    D_PAD * element size >= 16 bytes.
    """
    t0 = tensors[0]
    if arch is None:
        if t0.device.type != "cuda":
            return False, "not a CUDA tensor (the interpreter runs TMA only when asked: use_tma=True)"
        arch = v1._arch(t0.device)
    major = int(arch.removeprefix("sm")[:-1] or 0) if arch.startswith("sm") else 0
    if major < 9:
        return False, f"{arch} has no tensor memory accelerator (sm90+)"
    if not all(_aligned16(t) for t in tensors):
        return False, ("rows are not 16-byte aligned (e.g. head dim 101 in 16-bit: 202 bytes); "
                       "pad heads to a multiple of 8 (the dispatcher does on CUDA)")
    return True, ""


def _allocator(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def _ensure_allocator() -> None:
    """Device-made TMA descriptors need scratch global memory: give Triton a torch allocator,
    unless the application already set one."""
    try:
        from triton.runtime import _allocation

        unset = isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
    except (ImportError, AttributeError):  # another Triton layout: set ours
        unset = True
    if unset:
        triton.set_allocator(_allocator)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _fwd_args(q, k, v, o, lse, scale):
    B, H, N, _ = q.shape
    return (q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(), B, H, N, k.shape[2], scale * _LOG2E)


def _persistent_grid(q: torch.Tensor, cfg: KernelConfig) -> tuple[int]:
    B, H, N, _ = q.shape
    tiles = triton.cdiv(N, cfg.block_n) * B * H
    return (max(1, min(tiles, v1._sm_count(q.device))),)


def _forward(q, k, v, scale: float, use_tma: bool | None = None, warp_specialize: bool | None = None,
             rescale_slack: float | None = None):
    """O and lse (base-2 units of the scaled scores, v1's format) with the v2 forward."""
    B, H, N, _ = q.shape
    M = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    if N == 0:
        return o, lse
    use_tma = _OPTIONS["use_tma"] if use_tma is None else use_tma
    if use_tma is None:
        use_tma = tma_usable(q, k, v, o)[0]
    ws = bool(_OPTIONS["warp_specialize"] if warp_specialize is None else warp_specialize)
    consts = {**v1._consts(q), "WARP_SPECIALIZE": ws,
              "RESCALE_SLACK": float(_OPTIONS["rescale_slack"] if rescale_slack is None else rescale_slack)}
    args = _fwd_args(q, k, v, o, lse, scale)
    suffix = "_ws" if ws else ""
    if use_tma:
        if q.device.type == "cuda":
            _ensure_allocator()
        try:
            v1._launch("v2_fwd_tma" + suffix, _v2_fwd_kernel, lambda c: _persistent_grid(q, c), args,
                       {**consts, "USE_TMA": True}, q, M)
            return o, lse
        except NoConfigLaunched as exc:
            v1._warn_once(("v2-tma", q.dtype, q.shape[-1]), f"loftup: the TMA forward of triton_attention_v2 did not "
                          f"launch ({exc}); using its pointer-arithmetic path")
    v1._launch("v2_fwd" + suffix, _v2_fwd_kernel, lambda c: _persistent_grid(q, c), args,
               {**consts, "USE_TMA": False}, q, M)
    return o, lse


def _num_splits(n: int, m: int, bh: int, d: int, sm_count: int) -> int:
    """Query splits of the fused backward: about two programs per SM, at least _SPLIT_ALIGN
    queries per split, and at most PARTIAL_BUDGET_BYTES of fp32 dK/dV partials."""
    want = triton.cdiv(2 * sm_count, bh)
    by_memory = max(1, PARTIAL_BUDGET_BYTES // (bh * m * d * 8))
    return max(1, min(want, triton.cdiv(n, _SPLIT_ALIGN), by_memory))


def _delta(o, do):
    B, H, N, d = o.shape
    delta = torch.empty((B, H, N), device=o.device, dtype=torch.float32)
    block = 64
    _v2_delta_kernel[(triton.cdiv(N, block), B * H)](o, do, delta, *o.stride(), *do.stride(), H, N,
                                                     HEAD_DIM=d, D_PAD=triton.next_power_of_2(max(d, 16)),
                                                     BLOCK_N=block)
    return delta


def _fused_backward(do, q, k, v, o, lse, scale: float, num_splits: int | None = None):
    B, H, N, d = q.shape
    M = k.shape[2]
    if N == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    if do.stride(-1) != 1:
        do = do.contiguous()
    delta = _delta(o, do)
    splits = num_splits or _num_splits(N, M, B * H, d, v1._sm_count(q.device))
    per_split = triton.cdiv(triton.cdiv(N, splits), _SPLIT_ALIGN) * _SPLIT_ALIGN
    splits = triton.cdiv(N, per_split)
    dq = torch.empty_like(q)
    # fp32 running dQ for multi-key-tile shapes (a single key tile writes dQ directly; the
    # smallest BLOCK_M of the space decides whether the buffer may be needed).
    min_block_m = min(c.block_m for c in V2_SPACE["v2_bwd"])
    dq_acc = torch.empty((B * H, N, d) if M > min_block_m else (1,), device=q.device, dtype=torch.float32)
    dk_part = torch.empty((splits, B, H, M, d), device=q.device, dtype=torch.float32)
    dv_part = torch.empty_like(dk_part)
    args = (q, k, v, do, dq, dq_acc, lse, delta, dk_part, dv_part, *q.stride(), *k.stride(), *v.stride(),
            *do.stride(), *dq.stride(), H, N, M, per_split, scale * _LOG2E, scale)
    v1._launch("v2_bwd", _v2_bwd_kernel, lambda c: (splits, B * H), args, v1._consts(q), q, M)
    dk = dk_part[0] if splits == 1 else dk_part.sum(0)  # fixed-order reduction: deterministic
    dv = dv_part[0] if splits == 1 else dv_part.sum(0)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


class _TritonAttentionV2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale: float, num_splits: int | None, backward: str):
        o, lse = _forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        ctx.num_splits = num_splits
        ctx.backward_kind = backward
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        need_kv = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        try:
            if ctx.backward_kind == "split":  # v1's dQ and dK/dV kernels on v2's forward
                dq, dk, dv = v1._backward(do, q, k, v, o, lse, ctx.scale, ctx.num_splits, need_kv)
            else:
                dq, dk, dv = _fused_backward(do, q, k, v, o, lse, ctx.scale, ctx.num_splits)
        except NoConfigLaunched as exc:
            dq, dk, dv = v1._sdpa_backward(do, q, k, v, ctx.scale, exc)
        if not need_kv:
            dk = dv = None
        return dq, dk, dv, None, None, None


def triton_attention_v2(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    backward: str | None = None,
) -> torch.Tensor:
    """Fused ``softmax(q k^T * scale) v``, differentiable in q, k, v: v1's contract, v2's kernels.

    q (B, heads, N, d); k, v (B, heads, M, d); any N >= 0, M >= 1, 1 <= d <= 256; float32,
    float16 or bfloat16; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``. ``scale``
    defaults to 1/sqrt(d). ``num_splits``: query splits of the backward (None: from the shape
    and the SM count). ``backward``: ``"fused"`` (5 matmuls, the default) or ``"split"`` (v1's
    two kernels).
    """
    from ..errors import InputError

    v1._check_inputs(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if num_splits is not None and num_splits < 1:
        raise InputError(f"triton_attention_v2: num_splits must be >= 1, got {num_splits}")
    backward = backward or _OPTIONS["backward"]
    if backward not in BACKWARDS:
        raise InputError(f"triton_attention_v2: backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")
    q, k, v = (v1._unit_last_stride(t) for t in (q, k, v))
    try:
        return _TritonAttentionV2.apply(q, k, v, scale, num_splits, backward)
    except NoConfigLaunched as exc:
        v1._fallback_warning(exc)
        return v1._sdpa_attention(q, k, v, scale)


__all__ = ["BACKWARDS", "FWD_KERNELS", "V2_SPACE", "set_options", "tma_usable", "triton_attention_v2"]
