"""Fused cross-attention for LoftUp's high-res query pass: Triton forward and backward kernels.

``triton_attention(q, k, v, scale)`` computes ``softmax(q k^T * scale) v`` for queries
q (B, heads, N, d) and keys/values k, v (B, heads, M, d) without ever holding the N x M score
matrix, and is differentiable in q, k and v. LoftUp's shape is extreme: N is every output pixel
(50k at 224x224, 200k at 448x448, 800k at 896x896), M is the low-res token grid (256..4096),
heads = 4, and d = 101 / 133 / 197, which stock fused kernels refuse.

Design
------
Head dim. d is padded to ``D_PAD = next_power_of_2(max(d, 16))`` inside the kernels only:
loads and stores along d are masked, so the padded lanes read 0 and contribute nothing to
``q . k``; nothing is copied in HBM. The scale stays ``1/sqrt(true d)`` unless given. Padding
costs MMA work (101 -> 128 is 79% useful, 133 -> 256 only 52%, 197 -> 256 77%), not memory.

Forward (``_attn_fwd_kernel``). One program = one block of BLOCK_N queries of one
(batch, head). It loads its Q tile (BLOCK_N, D_PAD) once into registers and streams the
head's K and V in BLOCK_M-key tiles, keeping a running max ``m``, running denominator ``l``
and an fp32 accumulator (online softmax, FlashAttention-2 style; exponentials in base 2 with
``scale * log2(e)`` folded into the scores). Full key tiles run unmasked; only the tail tile
(M % BLOCK_M) pays for the key mask. At the end it writes O (input dtype) and the per-row
log-sum-exp ``lse = m + log2(l)`` (fp32, base-2 units of the scaled scores) for backward.
Grid = (cdiv(N, BLOCK_N), B * heads) with the query-block index on the fastest axis, so the
programs running at the same time all belong to the same head and read the same K/V: one
head's K+V is at most 4096 x 256 x 2 x 2 bytes = 4 MiB in fp16 (512 KiB at M=1024, d=128),
so it stays resident in L2 (40 MB A100, 50 MB H100) while thousands of query blocks walk it.
HBM traffic is therefore ~one read of Q, one write of O and one read of K/V per head;
arithmetic intensity against HBM is ~M FLOP/byte (compute bound for every LoftUp shape),
and against L2 it is ~BLOCK_N FLOP/byte per program.

Why not the other residency (one program keeps K/V tiles and walks many query blocks)? The
softmax normalises over all M keys, so a program that owns only part of the keys would have to
merge partial (m, l, acc) triples across programs for every one of the N queries (a split-K
"flash-decoding" reduction that doubles O traffic); M is small enough that L2 gives the reuse
for free. Processing all heads of a query block in one program was also rejected: heads share
no operand (each has its own Q, K, V slices), so it would only multiply register pressure by
4 (at D_PAD=256 one head's accumulator already fills the register file) for no data reuse,
and the grid is already tens of thousands of programs.

Backward. ``delta = rowsum(dO * O)`` is fused into the dQ kernel (it loads dO anyway).

- ``_attn_bwd_dq_kernel``: one program = one query block, the same walk as the forward; it
  recomputes ``P = exp2(s - lse)`` from the saved log-sum-exp (no N x M storage), then
  ``dS = P * (dO V^T - delta)`` and accumulates ``dQ = scale * dS K`` in fp32.
- ``_attn_bwd_dkdv_kernel``: dK and dV are sums over *all* N queries. One program = one
  BLOCK_M key tile x one contiguous chunk ("split") of queries: it keeps its K, V tiles and
  fp32 dK, dV accumulators in registers, streams the split's Q, dO, lse and delta, and writes
  its partial dK/dV to a (splits, B, heads, M, d) fp32 buffer. A second pass sums the
  splits (``partial.sum(0)``, a plain deterministic reduction) and casts to the input dtype.

Two-pass split-N reduction instead of atomics, because of the shape. With one program per key
tile walking all N queries (FlashAttention-2's layout) there would only be
B * heads * M / BLOCK_M programs - 16 at M=256 - each walking up to 800k queries: a few percent
of an H100's 132 SMs. With one program per query block adding into dK/dV with fp32 atomics,
every one of the N / BLOCK_N query blocks would issue M x d atomics per head (N=200k,
M=1024, d=128: 1.6e9 atomic adds), serialised on the same few MB, and the result would be
run-to-run nondeterministic. The split count is chosen so the grid covers about four waves of
the GPU's SMs (``_num_splits``) and capped by memory, so the partial buffer stays small
(tens of MB); the second pass reads it once. Results are bitwise deterministic for a fixed
shape, device and tuned config.

Precision. fp32, fp16 and bf16 inputs; all softmax statistics and accumulators are fp32. With
fp16/bf16 inputs, P and dS are rounded to the input dtype before their MMAs (as in
FlashAttention). With fp32 inputs the MMAs use IEEE fp32 unless
``torch.backends.cuda.matmul.allow_tf32`` is set, in which case they use TF32 like torch does.

Hardware and configs. Written for NVIDIA Ampere (sm80, A100) and Hopper (sm90, H100/H200).
There is no compile-everything autotuner (the old 36 + 36 + 54-config space compiled for minutes
per dtype and head dim on an H200, and a first `loftup train` did not finish 30 steps in 100 s).
Instead each kernel launches one config per (arch, dtype, N bucket, M, d, D_PAD):
`default_config` - on sm90 with 16-bit inputs and D_PAD 128 the configs the 8-config search
picked on the H200 (gpu-findings.md), everywhere else (fp32, D_PAD 256, sm80, other GPUs; not
measured) the largest config of the small `TUNING_SPACE` that fits `estimate_resources`
(resident tiles + num_stages streamed tiles of shared memory, fp32 accumulator registers per
thread) against the GPU's opt-in shared memory. So the first call compiles only what it runs.
``LOFTUP_TRITON_AUTOTUNE=1`` (or `set_autotune(True)`) times the fitting configs of the space
once per shape and caches the winner on disk (`tuning_cache_path`, per arch and Triton version).
A config that fails to launch (OutOfResources, a ptxas or compilation error) is skipped with
one warning and the next fitting config runs; when none launches the call is computed by sdpa
(forward and/or backward), warned once - never a crash (the fp32 d=197 backward with 64x64 tiles
needed 278,528 B of shared memory on the H200; the estimate now prunes it). `resource_report()`
lists each launched config's estimate next to the shared memory, registers and spills Triton
reports, the check of the estimate on a real GPU (benchmarks/gpu_suite.py records it). The N
bucket (next power of two, clamped to [2^12, 2^20]) keeps arbitrary output sizes from
multiplying keys.

Caveats
-------
- Measured on one GPU so far (NVIDIA H200, gpu-findings.md; d=101 unpadded, 4 heads, batch 1):
  correct on sm90 against float64 (fp32 fwd 8.8e-7, bf16 2.7e-3..4.1e-3, all below PyTorch's
  own error; backward bitwise repeatable). bf16 forward 0.347 / 2.28 / 29.6 ms at 224 / 448 / 896
  (60 / 146 / 180 TFLOP/s useful, 8-23% of the measured bf16 matmul), 1.3-1.4x slower than
  PyTorch's flash kernel; forward + backward 1.40 / 10.4 / 144 ms (flash: 4.78 / 17.9 / 86). So
  `auto` (attention_table.py) runs flash for inference and this kernel for training at 224 and
  448. IEEE-fp32 is 6x slower than sdpa end to end: `auto` never picks it. Under the interpreter
  (CPU tests) bf16 loads are known to be wrong, so bf16 is only exercised for dispatch there.
- Interpreter figures (tests/kernels/test_triton_attention.py: batch 2, 4 heads, d 64/101/133/197,
  M 256/713/1024, max abs error against the float32 reference): float32 forward, dQ, dK, dV
  all <= 1.6e-6 (tested at 2e-5); float16 1e-4..9e-4, always below PyTorch's own float16
  error on the same inputs (4e-4..1.4e-3; tested at 2x that + 1e-4).
- Per-(batch, head) extents are indexed with 32-bit offsets (N * stride_n < 2^31 elements);
  batch and head offsets are 64-bit.
- d > 256 is rejected (use backend='sdpa'); the padding to 256 for d = 133 wastes half the
  MMA work - a split 128 + 8-lane kernel would be the next step if that head dim matters.
- Partial dK/dV are fp32 and cost splits x B x heads x M x d x 8 bytes of temporary memory.
- The backward runs 7 tile matmuls where FlashAttention-2's runs 5 (Q K^T and dO V^T are
  recomputed in both the dQ and the dK/dV kernel): +40% backward MMA work, bought to avoid
  atomics on dQ (M / BLOCK_M fp32 atomic adds per dQ element) and to stay deterministic.

Expected performance (the estimate made before any GPU run; measured figures under Caveats)
-------------------------------------------------------------------------------------------
H100 SXM, bf16/fp16, 448x448 output (N = 200704), M = 1024, d = 101 (D_PAD = 128), 4 heads:
forward = 332 GFLOP useful (421 GFLOP executed with padding), 0.82e9 exponentials.
HBM traffic ~0.33 GB (Q, O, LSE; K/V 1.7 MB) -> ~1000 FLOP/byte, far above the ~295 FLOP/byte
ridge (989 TFLOP/s / 3.35 TB/s): compute bound. Per program the K/V stream from L2 gives
BLOCK_N = 128 FLOP/byte (~2.6 GB of L2 reads, ~0.4 ms at 6-7 TB/s), the same order as the
MMA time at peak (0.43 ms) and the exp2 time on the MUFU units (0.21 ms). Bounds: >= 0.45 ms
(74% of peak in useful FLOPs); expected for an FA2-style Triton kernel (softmax not overlapped
with the MMAs by warp specialisation): 30-40% of peak on executed work, i.e. ~1.0 ms forward,
~300 TFLOP/s useful. Backward (7 matmuls, ~35% efficiency) ~4 ms; forward + backward
~1.16 TFLOP useful in ~5 ms, ~20-25% of peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl

from ..errors import BackendUnavailableError, InputError
from .reference import reference_attention  # the plain-PyTorch counterpart the kernels are tested against

MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# One small config used when the kernels run under the interpreter (no autotuning there).
_INTERPRETER_CONFIG = {"BLOCK_N": 128, "BLOCK_M": 128}
# Queries per dK/dV split are a multiple of this (the largest BLOCK_N in the tuning space),
# so every split starts on a tile boundary whatever config the autotuner picks.
_SPLIT_ALIGN = 128


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _fwd_key_tiles(
    acc, m_i, l_i, q, k_base, v_base, stride_km, stride_kd, stride_vm, stride_vd,
    offs_d, d_mask, start, end, M, qk_scale,
    BLOCK_M: tl.constexpr, MASK_KEYS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Online-softmax update of (acc, m_i, l_i) with key tiles [start, end)."""
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + offs_m0
        if MASK_KEYS:
            kv_mask = (offs_m < M)[:, None] & d_mask[None, :]
        else:
            kv_mask = d_mask[None, :]
        k = tl.load(k_base + offs_m[:, None] * stride_km + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M), log2 units
        if MASK_KEYS:
            s = tl.where((offs_m < M)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_m[:, None] * stride_vm + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_km, stride_kd,
    stride_vb, stride_vh, stride_vm, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    H, N, M, qk_scale,
    N_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    o_base = O + off_b * stride_ob + off_h * stride_oh

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    n_mask = offs_n < N
    d_mask = offs_d < HEAD_DIM
    q_mask = n_mask[:, None] & d_mask[None, :]
    q = tl.load(q_base + offs_n[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)

    m_i = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    m_full = (M // BLOCK_M) * BLOCK_M
    acc, m_i, l_i = _fwd_key_tiles(acc, m_i, l_i, q, k_base, v_base, stride_km, stride_kd, stride_vm, stride_vd,
                                   offs_d, d_mask, 0, m_full, M, qk_scale, BLOCK_M, False, DOT_PRECISION)
    acc, m_i, l_i = _fwd_key_tiles(acc, m_i, l_i, q, k_base, v_base, stride_km, stride_kd, stride_vm, stride_vd,
                                   offs_d, d_mask, m_full, M, M, qk_scale, BLOCK_M, True, DOT_PRECISION)

    acc = acc / l_i[:, None]
    o_ptrs = o_base + offs_n[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=q_mask)
    tl.store(LSE + pid_bh.to(tl.int64) * N + offs_n, m_i + tl.math.log2(l_i), mask=n_mask)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DELTA,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_km, stride_kd,
    stride_vb, stride_vh, stride_vm, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    H, N, M, qk_scale, sm_scale,
    N_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dQ for one query block; also writes delta = rowsum(dO * O) for the dK/dV kernel."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    n_mask = offs_n < N
    d_mask = offs_d < HEAD_DIM
    q_mask = n_mask[:, None] & d_mask[None, :]
    rows = offs_n[:, None]
    cols = offs_d[None, :]
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + rows * stride_qn + cols * stride_qd, mask=q_mask, other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + rows * stride_don + cols * stride_dod,
                 mask=q_mask, other=0.0)
    o = tl.load(O + off_b * stride_ob + off_h * stride_oh + rows * stride_on + cols * stride_od, mask=q_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # (BLOCK_N,)
    row_base = pid_bh.to(tl.int64) * N
    tl.store(DELTA + row_base + offs_n, delta, mask=n_mask)
    lse = tl.load(LSE + row_base + offs_n, mask=n_mask, other=0.0)

    dq = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(0, M, BLOCK_M):
        offs_m = start_m + offs_m0
        m_mask = offs_m < M
        kv_mask = m_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + offs_m[:, None] * stride_km + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_m[:, None] * stride_vm + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(m_mask[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh + rows * stride_dqn + cols * stride_dqd,
             dq.to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK_PART, DV_PART,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_km, stride_kd,
    stride_vb, stride_vh, stride_vm, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    H, N, M, queries_per_split, qk_scale, sm_scale,
    N_BUCKET,  # autotune key only
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Partial dK, dV of one key tile over one split (contiguous query chunk)."""
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_bh = tl.program_id(2)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DO + off_b * stride_dob + off_h * stride_doh
    row_base = pid_bh.to(tl.int64) * N

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    m_mask = offs_m < M
    d_mask = offs_d < HEAD_DIM
    kv_mask = m_mask[:, None] & d_mask[None, :]
    k = tl.load(K + off_b * stride_kb + off_h * stride_kh + offs_m[:, None] * stride_km + offs_d[None, :] * stride_kd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + off_b * stride_vb + off_h * stride_vh + offs_m[:, None] * stride_vm + offs_d[None, :] * stride_vd,
                mask=kv_mask, other=0.0)

    dk = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    n_start = pid_s * queries_per_split
    n_end = tl.minimum(n_start + queries_per_split, N)
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(n_start, n_end, BLOCK_N):
        offs_n = start_n + offs_n0
        n_mask = offs_n < n_end
        q_mask = n_mask[:, None] & d_mask[None, :]
        q = tl.load(q_base + offs_n[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_n[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=q_mask, other=0.0)
        # lse = +inf on padded query rows makes their probabilities exactly 0.
        lse = tl.load(LSE + row_base + offs_n, mask=n_mask, other=float("inf"))
        delta = tl.load(DELTA + row_base + offs_n, mask=n_mask, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p_t = tl.math.exp2(s_t - lse[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    dk = dk * sm_scale

    # Partial buffers are contiguous (splits, B * heads, M, HEAD_DIM) fp32.
    part = ((pid_s * tl.num_programs(2) + pid_bh).to(tl.int64) * M + offs_m[:, None]) * HEAD_DIM + offs_d[None, :]
    tl.store(DK_PART + part, dk, mask=kv_mask)
    tl.store(DV_PART + part, dv, mask=kv_mask)


# ----------------------------------------------------------------------------------------------
# Configs: per-architecture defaults, a small tuning space, pruning, launch with fallback
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options of one kernel: BLOCK_N queries x BLOCK_M keys per tile."""

    block_n: int
    block_m: int
    num_warps: int = 4
    num_stages: int = 2

    @property
    def label(self) -> str:
        return f"{self.block_n}x{self.block_m}/w{self.num_warps}/s{self.num_stages}"

    def meta(self) -> dict:
        return {"BLOCK_N": self.block_n, "BLOCK_M": self.block_m}

    @classmethod
    def parse(cls, label: str) -> "KernelConfig":
        tiles, w, st = label.split("/")
        bn, bm = tiles.split("x")
        return cls(int(bn), int(bm), int(w[1:]), int(st[1:]))


KERNELS = ("fwd", "dq", "dkdv")

# Per kernel: (resident rows, resident tiles, streamed rows, streamed tiles per stage, fp32
# accumulators). Forward: Q resident, K/V streamed. dQ: Q and dO resident, K/V streamed.
# dK/dV: K and V resident with two accumulators, Q and dO streamed.
_FOOTPRINT = {
    "fwd": ("block_n", 1, "block_m", 2, 1),
    "dq": ("block_n", 2, "block_m", 2, 1),
    "dkdv": ("block_m", 2, "block_n", 2, 2),
}
MAX_ACC_REGS = 128  # fp32 accumulator registers per thread above which a config would spill


def estimate_resources(kernel: str, cfg: KernelConfig, d_pad: int, element_bytes: int) -> dict:
    """Shared memory (bytes) and accumulator registers per thread of `cfg`, estimated: resident
    tiles plus `num_stages` buffered streamed tiles; accumulators spread over the warps' threads.
    Compared with what Triton reports for compiled kernels in `resource_report()`."""
    res_rows, res_tiles, str_rows, str_tiles, accs = _FOOTPRINT[kernel]
    rows_res, rows_str = getattr(cfg, res_rows), getattr(cfg, str_rows)
    smem = (res_tiles * rows_res + cfg.num_stages * str_tiles * rows_str) * d_pad * element_bytes
    regs = accs * rows_res * d_pad / (32 * cfg.num_warps)
    return {"smem_bytes": int(smem), "acc_regs_per_thread": regs}


def fits(kernel: str, cfg: KernelConfig, d_pad: int, element_bytes: int, smem_limit: int) -> bool:
    est = estimate_resources(kernel, cfg, d_pad, element_bytes)
    return est["smem_bytes"] <= smem_limit and est["acc_regs_per_thread"] <= MAX_ACC_REGS


_KC = KernelConfig
# The small tuning space, largest first; also the fallback order after the default.
TUNING_SPACE: dict[str, tuple[KernelConfig, ...]] = {
    "fwd": (_KC(128, 128, 8, 2), _KC(128, 64, 8, 3), _KC(128, 64, 8, 2), _KC(64, 64, 4, 2), _KC(64, 32, 4, 2), _KC(32, 32, 4, 1)),
    "dq": (_KC(128, 64, 8, 2), _KC(64, 128, 4, 2), _KC(64, 64, 4, 2), _KC(64, 32, 4, 2), _KC(32, 32, 4, 1)),
    "dkdv": (_KC(128, 128, 8, 2), _KC(128, 64, 8, 2), _KC(64, 64, 4, 2), _KC(64, 32, 4, 2), _KC(32, 32, 4, 1)),
}


def register_kernel(name: str, space: tuple[KernelConfig, ...], footprint: tuple) -> None:
    """Let another kernel family (triton_attention_v2) launch through this module's config
    machinery (defaults by estimate, fallback chain, resource report): its tuning space, largest
    first, and its `_FOOTPRINT` row. The v1 kernels' tables are not touched."""
    if name in KERNELS:
        raise ValueError(f"{name!r} is a v1 kernel")
    TUNING_SPACE[name] = tuple(space)
    _FOOTPRINT[name] = footprint


def _sm90_measured(kernel: str, n_bucket: int) -> KernelConfig:
    """What the 8-config search picked on an H200 for bf16, d=101 (D_PAD 128): `triton_configs` in
    benchmarks/results/nvidia-h200/2026-11-30-first-run.json (the tests check them against it)."""
    if kernel == "fwd":
        return _KC(128, 64, 8, 3) if n_bucket <= 1 << 16 else _KC(128, 128, 8, 2)
    if kernel == "dq":
        return _KC(128, 64, 8, 2) if n_bucket >= 1 << 20 else _KC(64, 64, 4, 2)
    return _KC(128, 64, 8, 2)  # dK/dV: BLOCK_N 128 queries streamed x BLOCK_M 64 keys resident


def default_config(kernel: str, arch: str, dtype: torch.dtype, d_pad: int, n_bucket: int, smem_limit: int) -> tuple[KernelConfig, str]:
    """The config the first call compiles, and where it comes from ("measured" or "estimate").

    sm90 with 16-bit inputs and D_PAD <= 128: the H200 search's picks (measured). Everything
    else (fp32, D_PAD 256, sm80, other GPUs): the largest config of the tuning space that fits
    the shared-memory / register estimate - not measured.
    """
    element_bytes = torch.empty((), dtype=dtype).element_size()
    if kernel in KERNELS and arch == "sm90" and dtype in (torch.float16, torch.bfloat16) and d_pad <= 128:
        cfg = _sm90_measured(kernel, n_bucket)
        if fits(kernel, cfg, d_pad, element_bytes, smem_limit):
            return cfg, "measured"
    for cfg in TUNING_SPACE[kernel]:
        if fits(kernel, cfg, d_pad, element_bytes, smem_limit):
            return cfg, "estimate"
    return TUNING_SPACE[kernel][-1], "estimate (nothing fits; smallest)"


# -- state of this process: what ran, what failed, what was tuned ------------------------------
_WORKING: dict[tuple, KernelConfig] = {}  # launch key -> the config that launched
_UNLAUNCHABLE: set[tuple] = set()  # launch keys for which no config launched (they run sdpa)
_RESOURCES: dict[tuple, dict] = {}  # (key, label) -> estimate vs what Triton reported
_WARNED: set = set()
_TUNED: dict[str, str] | None = None  # disk cache: "key" -> config label
_AUTOTUNE: bool | None = None  # None: the LOFTUP_TRITON_AUTOTUNE environment variable decides


class NoConfigLaunched(RuntimeError):
    """No config of a kernel could be launched for a shape (the caller falls back to sdpa)."""


def _launch_errors() -> tuple[type, ...]:
    import triton.compiler.errors as compiler_errors
    import triton.runtime.errors as runtime_errors

    names = [(runtime_errors, "OutOfResources"), (runtime_errors, "PTXASError"), (compiler_errors, "CompilationError")]
    return tuple(getattr(mod, name) for mod, name in names if hasattr(mod, name))


def set_autotune(enabled: bool | None) -> None:
    """Tune each new shape over the small space (True), use the per-architecture defaults only
    (False), or follow ``LOFTUP_TRITON_AUTOTUNE=1`` (None, the default). Tunings are cached on
    disk (`tuning_cache_path`), so each shape is tuned once per machine."""
    global _AUTOTUNE
    _AUTOTUNE = enabled


def autotune_enabled() -> bool:
    if _interpreted():
        return False  # nothing to time under the interpreter
    if _AUTOTUNE is not None:
        return _AUTOTUNE
    import os

    return os.environ.get("LOFTUP_TRITON_AUTOTUNE", "0") not in ("", "0", "false", "no")


def _warn_once(key, text: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        import warnings

        warnings.warn(text, stacklevel=4)


def _arch(device: torch.device) -> str:
    if device.type != "cuda":
        return "interpreter"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def _smem_limit(device: torch.device) -> int:
    """Opt-in shared memory per block (A100 163 KiB, H100/H200 227 KiB); nominal H100 under the interpreter."""
    if device.type != "cuda":
        return 232448
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 163 * 1024))


def tuning_cache_path(arch: str) -> "Path":
    from ..io import cache_dir

    return cache_dir() / f"triton-attention-{arch}-triton{triton.__version__}.json"


def _tuned_cache(arch: str) -> dict[str, str]:
    global _TUNED
    if _TUNED is None:
        import json

        path = tuning_cache_path(arch)
        try:
            _TUNED = {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, str)} if path.is_file() else {}
        except (OSError, ValueError, AttributeError):
            _TUNED = {}
    return _TUNED


def _save_tuned(arch: str, key: str, label: str) -> None:
    import json

    from ..io import atomic_write

    cache = _tuned_cache(arch)
    cache[key] = label
    path = tuning_cache_path(arch)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(cache, indent=1, sort_keys=True)))


def _launch_key(kernel: str, q: torch.Tensor, consts: dict, m: int) -> tuple:
    return (kernel, _arch(q.device), str(q.dtype).removeprefix("torch."), consts["N_BUCKET"], m,
            consts["HEAD_DIM"], consts["D_PAD"], consts["DOT_PRECISION"])


def _candidates(kernel: str, key: tuple, dtype: torch.dtype, device: torch.device) -> list[KernelConfig]:
    """Configs to try in order: the one that worked / was tuned / the default, then every other
    config of the space that fits the estimate, then (if none fits) the smallest anyway."""
    if key in _WORKING:
        first = [_WORKING[key]]
    elif _interpreted():
        first = [_KC(_INTERPRETER_CONFIG["BLOCK_N"], _INTERPRETER_CONFIG["BLOCK_M"])]
    else:
        _, arch, _, n_bucket, _, _, d_pad, _ = key
        tuned = _tuned_cache(arch).get("|".join(map(str, key)))
        first = [KernelConfig.parse(tuned)] if tuned else []
        first.append(default_config(kernel, arch, dtype, d_pad, n_bucket, _smem_limit(device))[0])
    element_bytes = torch.empty((), dtype=dtype).element_size()
    limit, d_pad = _smem_limit(device), key[6]
    rest = [c for c in TUNING_SPACE[kernel] if fits(kernel, c, d_pad, element_bytes, limit)] or [TUNING_SPACE[kernel][-1]]
    out: list[KernelConfig] = []
    for c in first + rest:
        if c not in out:
            out.append(c)
    return out


def _run_config(raw, grid: tuple, args: tuple, consts: dict, cfg: KernelConfig):
    """Launch `raw` with one config; returns Triton's compiled kernel (None under the interpreter)."""
    return raw[grid](*args, **consts, **cfg.meta(), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _record(kernel: str, key: tuple, cfg: KernelConfig, compiled, element_bytes: int) -> None:
    est = estimate_resources(kernel, cfg, key[6], element_bytes)
    rec = {"kernel": kernel, "key": "|".join(map(str, key)), "config": cfg.label,
           "estimate_smem_bytes": est["smem_bytes"], "estimate_acc_regs": est["acc_regs_per_thread"]}
    meta = getattr(compiled, "metadata", None)
    if meta is not None:
        rec["triton_smem_bytes"] = getattr(meta, "shared", None)
        rec["triton_regs"] = getattr(compiled, "n_regs", None)
        rec["triton_spills"] = getattr(compiled, "n_spills", None)
        if rec["triton_smem_bytes"] is not None:
            rec["estimate_covers_triton"] = est["smem_bytes"] >= rec["triton_smem_bytes"]
    _RESOURCES[(key, cfg.label)] = rec


def resource_report() -> list[dict]:
    """Every config launched in this process: the shared-memory estimate next to what Triton
    reports (bytes, registers, spills) - the check of the pruning estimate on a real GPU."""
    return list(_RESOURCES.values())


def _tune(kernel: str, key: tuple, raw, grid_fn, args, consts, candidates) -> None:
    """Time each candidate once (triton.testing.do_bench), remember and cache the fastest."""
    from triton.testing import do_bench

    errors = _launch_errors()
    best, best_ms = None, float("inf")
    for cfg in candidates:
        try:
            ms = do_bench(lambda: _run_config(raw, grid_fn(cfg), args, consts, cfg), warmup=5, rep=20)
        except errors:
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is not None:
        _WORKING[key] = best
        _save_tuned(key[1], "|".join(map(str, key)), best.label)


def _launch(kernel: str, raw, grid_fn, args: tuple, consts: dict, q: torch.Tensor, m: int) -> None:
    """Run `kernel` with the first config that launches; NoConfigLaunched if none does.

    grid_fn(cfg) -> launch grid. A config that fails to launch (OutOfResources, a compilation
    or ptxas error) is remembered as failed, with one warning, and the next one is tried.
    """
    key = _launch_key(kernel, q, consts, m)
    if key in _UNLAUNCHABLE:
        raise NoConfigLaunched(f"no {kernel} config launches for {key}")
    candidates = _candidates(kernel, key, q.dtype, q.device)
    if key not in _WORKING and autotune_enabled() and "|".join(map(str, key)) not in _tuned_cache(key[1]):
        _tune(kernel, key, raw, grid_fn, args, consts, candidates)
        candidates = _candidates(kernel, key, q.dtype, q.device)
    errors = _launch_errors()
    failures = []
    for cfg in candidates:
        try:
            compiled = _run_config(raw, grid_fn(cfg), args, consts, cfg)
        except errors as exc:
            failures.append(f"{cfg.label}: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
            continue
        if failures:
            _warn_once((key, "config"), f"loftup: Triton attention {kernel} config(s) failed to launch "
                       f"({'; '.join(failures)}); using {cfg.label}")
        _WORKING[key] = cfg
        _record(kernel, key, cfg, compiled, q.element_size())
        return
    _UNLAUNCHABLE.add(key)
    raise NoConfigLaunched(f"no Triton attention {kernel} config launched for {key}: {'; '.join(failures)}")


def _interpreted() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they then take CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_attn_fwd_kernel, InterpretedFunction)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _n_bucket(n: int) -> int:
    return min(max(triton.next_power_of_2(max(n, 1)), 1 << 12), 1 << 20)


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored by tl.dot for fp16/bf16 operands


def _consts(q: torch.Tensor) -> dict:
    d = q.shape[-1]
    return {
        "N_BUCKET": _n_bucket(q.shape[2]),
        "HEAD_DIM": d,
        "D_PAD": triton.next_power_of_2(max(d, 16)),
        "DOT_PRECISION": _dot_precision(q.dtype),
    }


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 16  # interpreter: a nominal count, so small test shapes still exercise several splits


def _num_splits(n: int, m: int, bh: int, d: int, sm_count: int) -> int:
    """Query splits for dK/dV: enough programs for ~4 waves of SMs (counting 64-key tiles), at
    least _SPLIT_ALIGN queries per split, and at most 256 MiB of fp32 partials."""
    key_tiles = bh * triton.cdiv(m, 64)
    want = triton.cdiv(4 * sm_count, key_tiles)
    by_memory = max(1, (256 << 20) // (bh * m * d * 8))
    return max(1, min(want, triton.cdiv(n, _SPLIT_ALIGN), by_memory))


def _forward(q, k, v, scale: float):
    B, H, N, _ = q.shape
    M = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    if N == 0:
        return o, lse
    args = (q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(), H, N, M, scale * _LOG2E)
    _launch("fwd", _attn_fwd_kernel, lambda c: (triton.cdiv(N, c.block_n), B * H), args, _consts(q), q, M)
    return o, lse


def _backward(do, q, k, v, o, lse, scale: float, num_splits: int | None = None, need_kv: bool = True):
    B, H, N, d = q.shape
    M = k.shape[2]
    if N == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    if do.stride(-1) != 1:
        do = do.contiguous()
    consts = _consts(q)
    dq = torch.empty_like(q)
    delta = torch.empty_like(lse)
    args = (q, k, v, o, do, dq, lse, delta, *q.stride(), *k.stride(), *v.stride(), *o.stride(), *do.stride(),
            *dq.stride(), H, N, M, scale * _LOG2E, scale)
    _launch("dq", _attn_bwd_dq_kernel, lambda c: (triton.cdiv(N, c.block_n), B * H), args, consts, q, M)

    if not need_kv:  # frozen keys/values: the dK/dV pass is skipped entirely
        return dq, None, None
    splits = num_splits or _num_splits(N, M, B * H, d, _sm_count(q.device))
    per_split = triton.cdiv(triton.cdiv(N, splits), _SPLIT_ALIGN) * _SPLIT_ALIGN
    splits = triton.cdiv(N, per_split)
    dk_part = torch.empty((splits, B, H, M, d), device=q.device, dtype=torch.float32)
    dv_part = torch.empty_like(dk_part)
    args = (q, k, v, do, lse, delta, dk_part, dv_part, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            H, N, M, per_split, scale * _LOG2E, scale)
    _launch("dkdv", _attn_bwd_dkdv_kernel, lambda c: (triton.cdiv(M, c.block_m), splits, B * H), args, consts, q, M)
    # Second pass of the split-N reduction: a fixed-order sum, so results are deterministic.
    dk = dk_part[0] if splits == 1 else dk_part.sum(0)
    dv = dv_part[0] if splits == 1 else dv_part.sum(0)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale: float, num_splits: int | None):
        o, lse = _forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        ctx.num_splits = num_splits
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        need_kv = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        try:
            dq, dk, dv = _backward(do, q, k, v, o, lse, ctx.scale, ctx.num_splits, need_kv)
        except NoConfigLaunched as exc:
            dq, dk, dv = _sdpa_backward(do, q, k, v, ctx.scale, exc)
        return dq, dk, dv, None, None


def _fallback_warning(exc: Exception) -> None:
    _warn_once("sdpa-fallback", f"loftup: the Triton attention kernel could not be launched ({exc}); "
               "computing this attention with sdpa instead (warned once)")


def _sdpa_attention(q, k, v, scale):
    from .sdpa import sdpa_attention

    return sdpa_attention(q, k, v, scale)


def _sdpa_backward(do, q, k, v, scale: float, exc: Exception):
    """dq, dk, dv by differentiating sdpa - the backward's fallback when no Triton config launches."""
    _fallback_warning(exc)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = _sdpa_attention(*leaves, scale)
        return torch.autograd.grad(out, leaves, do)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"triton_attention: {name} must be a 4-D tensor (B, heads, length, d), got {shape}")
    if k.shape != v.shape:
        raise InputError(
            f"triton_attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise InputError(
            f"triton_attention: q (B, heads, N, d) = {tuple(q.shape)} does not fit k/v (B, heads, M, d) = "
            f"{tuple(k.shape)}: batch, heads and d must match"
        )
    d = q.shape[3]
    if d == 0 or d > MAX_HEAD_DIM:
        raise InputError(f"triton_attention: head dim {d} is outside 1..{MAX_HEAD_DIM}; use backend='sdpa'")
    if k.shape[2] == 0:
        raise InputError("triton_attention: k/v have no keys (M = 0); softmax over zero keys is undefined")
    if not (q.dtype == k.dtype == v.dtype):
        raise InputError(f"triton_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one")
    if q.dtype not in _SUPPORTED_DTYPES:
        raise InputError(f"triton_attention: dtype {q.dtype} is not supported; use float32, float16 or bfloat16")
    if not (q.device == k.device == v.device):
        raise InputError(f"triton_attention: q, k, v are on different devices ({q.device}, {k.device}, {v.device})")
    if q.device.type == "cuda":
        return
    if q.device.type == "cpu" and _interpreted():
        return
    raise BackendUnavailableError(
        f"triton_attention needs CUDA tensors (got {q.device.type}); CPU tensors only run under the Triton "
        "interpreter (TRITON_INTERPRET=1 set before triton is imported); use backend='sdpa'"
    )


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    # Any strides work; a non-unit stride along d would make every load uncoalesced, so copy.
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Fused ``softmax(q k^T * scale) v``, differentiable in q, k, v.

    q (B, heads, N, d); k, v (B, heads, M, d); any N >= 0, M >= 1, 1 <= d <= 256; float32,
    float16 or bfloat16 (all three the same), CUDA tensors - or CPU tensors under
    ``TRITON_INTERPRET=1``. ``scale`` defaults to 1/sqrt(d). Returns (B, heads, N, d) in q's dtype.
    ``num_splits`` overrides the number of query splits of the dK/dV reduction (None: chosen
    from the shape and the GPU's SM count).
    """
    _check_inputs(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if num_splits is not None and num_splits < 1:
        raise InputError(f"triton_attention: num_splits must be >= 1, got {num_splits}")
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    try:
        return _TritonAttention.apply(q, k, v, scale, num_splits)
    except NoConfigLaunched as exc:  # no config launches on this GPU for this shape: sdpa, warned once
        _fallback_warning(exc)
        return _sdpa_attention(q, k, v, scale)


__all__ = [
    "KERNELS", "MAX_HEAD_DIM", "TUNING_SPACE", "KernelConfig", "NoConfigLaunched", "autotune_enabled", "default_config",
    "estimate_resources", "fits", "reference_attention", "resource_report", "set_autotune", "triton_attention",
    "tuning_cache_path",
]
