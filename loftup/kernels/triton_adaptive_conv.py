"""FeatUp's adaptive convolution as Triton kernels: forward, grad of the source, grad of the kernel.

``triton_adaptive_conv(source, kernel)`` computes, for source (B, C, H+k-1, W+k-1) (the
reflect-padded, bicubically upsampled features) and kernel (B, H, W, k, k) (one k x k filter per
output pixel, shared by the C channels),

    out[b, c, y, x] = sum_{i, j} kernel[b, y, x, i, j] * source[b, c, y + i, x + j]

and is differentiable in both. ``adaptive_conv_reference`` (the plain-PyTorch version in
``adaptive_conv.py``, exact to FeatUp's CPU operator) is what the kernels are tested against.

Design
------
Forward (``_fwd_kernel``). One program = one output row y of one image, BLOCK_W pixels of it,
BLOCK_C channels. It walks the k*k taps in FeatUp's order (i outer, j inner; ``tl.static_range``,
so the loop is unrolled), loading per tap the BLOCK_W filter weights of its pixels and the
(BLOCK_C, BLOCK_W) source tile shifted by (i, j), and accumulates in fp32. The filter is read
once per channel block and the source tile rows are re-read by the k neighbouring output rows,
which L1/L2 serve: per output element the kernel reads k*k source values (from cache) and
writes one. Grid = (cdiv(W, BLOCK_W), H, B * cdiv(C, BLOCK_C)), the row segment fastest, so
programs running together share source rows.

Source gradient (``_bwd_source_kernel``). The transpose of the forward, written as a gather so
there are no atomics: each padded source pixel (Y, X) sums kernel[b, Y-i, X-j, i, j] *
grad_out[b, c, Y-i, X-j] over the taps whose output pixel lies inside (H, W). Same tiling as
the forward over the padded grid; deterministic.

Kernel gradient (``_bwd_kernel_kernel``). grad_kernel[b, y, x, i, j] = sum_c grad_out[b, c, y, x]
* source[b, c, y+i, x+j]: one program = one tap (i, j) of BLOCK_W pixels of one row, looping over
the channels in BLOCK_C chunks with an fp32 accumulator. Grid = (cdiv(W, BLOCK_W), H, B * k*k).
grad_out is re-read by the k*k tap programs (from L2).

Precision. fp32, fp16 and bf16 inputs; accumulation in fp32, results cast to the input dtype.
For fp32 the forward is the same sum as the PyTorch version in the same order, but a GPU
compiler may contract ``acc + w * x`` into an FMA, so it is not bitwise equal there (like
FeatUp's own CUDA kernel, which is not bitwise equal to its CPU operator either).

Hardware and caveats
--------------------
- Written for NVIDIA Ampere / Hopper; block sizes are fixed (BLOCK_W 64, BLOCK_C 32, 4 warps),
  not autotuned: no GPU was available while writing this. Every number below comes from the
  Triton interpreter on CPU (``TRITON_INTERPRET=1``), which checks indexing, masking and the
  maths, not speed. Still to be measured on a GPU: forward/backward time against the PyTorch
  version and against FeatUp's CUDA kernel at 224/448/896 px, and whether autotuning BLOCK_W /
  BLOCK_C / warps pays (the forward is bound by the k*k cached source reads: 49 loads per
  multiply-add, so expect it to be limited by L1/L2 bandwidth, not by arithmetic).
- Interpreter figures (tests/kernels/test_triton_adaptive_conv.py: C 5..70, sizes up to 13x21,
  k 3 and 7, fp32): forward max abs error vs the PyTorch version <= 1e-6 (tested at 2e-6);
  gradients <= 2e-6 (tested at 1e-5).
- Offsets within one image are 32-bit (C * (H+k-1) * (W+k-1) < 2^31 elements); batch offsets 64-bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import BackendUnavailableError, InputError
from .adaptive_conv import adaptive_conv_torch as adaptive_conv_reference
from .adaptive_conv import check_adaptive_conv_inputs

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_W = 64
BLOCK_C = 32
NUM_WARPS = 4


@triton.jit
def _fwd_kernel(
    SRC, KER, OUT,
    s_b, s_c, s_h, s_w,
    k_b, k_h, k_w, k_i, k_j,
    o_b, o_c, o_h, o_w,
    C, H, W, n_cblocks,
    KS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_x = tl.program_id(0)
    y = tl.program_id(1)
    pid_bc = tl.program_id(2)
    b = (pid_bc // n_cblocks).to(tl.int64)
    cb = pid_bc % n_cblocks
    xs = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    x_mask = xs < W
    c_mask = cs < C
    tile_mask = c_mask[:, None] & x_mask[None, :]
    src = SRC + b * s_b + cs[:, None] * s_c
    ker = KER + b * k_b + y * k_h + xs * k_w
    acc = tl.zeros([BLOCK_C, BLOCK_W], dtype=tl.float32)
    for i in tl.static_range(KS):
        for j in tl.static_range(KS):
            w = tl.load(ker + i * k_i + j * k_j, mask=x_mask, other=0.0).to(tl.float32)  # (BLOCK_W,)
            v = tl.load(src + (y + i) * s_h + (xs[None, :] + j) * s_w, mask=tile_mask, other=0.0).to(tl.float32)
            acc = acc + w[None, :] * v
    out = OUT + b * o_b + cs[:, None] * o_c + y * o_h + xs[None, :] * o_w
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=tile_mask)


@triton.jit
def _bwd_source_kernel(
    GO, KER, GS,
    g_b, g_c, g_h, g_w,
    k_b, k_h, k_w, k_i, k_j,
    s_b, s_c, s_h, s_w,
    C, H, W, n_cblocks,
    KS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_source[b, c, Y, X] = sum_{i, j} kernel[b, Y-i, X-j, i, j] * grad_out[b, c, Y-i, X-j] (gather)."""
    pid_x = tl.program_id(0)
    Y = tl.program_id(1)
    pid_bc = tl.program_id(2)
    b = (pid_bc // n_cblocks).to(tl.int64)
    cb = pid_bc % n_cblocks
    Xs = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    Wp = W + KS - 1
    c_mask = cs < C
    acc = tl.zeros([BLOCK_C, BLOCK_W], dtype=tl.float32)
    for i in tl.static_range(KS):
        for j in tl.static_range(KS):
            y = Y - i
            xs = Xs - j
            ok = (xs >= 0) & (xs < W) & (Xs < Wp) & (y >= 0) & (y < H)
            w = tl.load(KER + b * k_b + y * k_h + xs * k_w + i * k_i + j * k_j, mask=ok, other=0.0).to(tl.float32)
            g = tl.load(GO + b * g_b + cs[:, None] * g_c + y * g_h + xs[None, :] * g_w,
                        mask=c_mask[:, None] & ok[None, :], other=0.0).to(tl.float32)
            acc = acc + w[None, :] * g
    out = GS + b * s_b + cs[:, None] * s_c + Y * s_h + Xs[None, :] * s_w
    tl.store(out, acc.to(GS.dtype.element_ty), mask=c_mask[:, None] & (Xs < Wp)[None, :])


@triton.jit
def _bwd_kernel_kernel(
    GO, SRC, GK,
    g_b, g_c, g_h, g_w,
    s_b, s_c, s_h, s_w,
    k_b, k_h, k_w, k_i, k_j,
    C, H, W,
    KS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_kernel[b, y, x, i, j] = sum_c grad_out[b, c, y, x] * source[b, c, y+i, x+j]; one tap per program."""
    pid_x = tl.program_id(0)
    y = tl.program_id(1)
    pid_bt = tl.program_id(2)
    b = (pid_bt // (KS * KS)).to(tl.int64)
    t = pid_bt % (KS * KS)
    i = t // KS
    j = t % KS
    xs = pid_x * BLOCK_W + tl.arange(0, BLOCK_W)
    x_mask = xs < W
    acc = tl.zeros([BLOCK_W], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        m = (cs < C)[:, None] & x_mask[None, :]
        g = tl.load(GO + b * g_b + cs[:, None] * g_c + y * g_h + xs[None, :] * g_w, mask=m, other=0.0).to(tl.float32)
        v = tl.load(SRC + b * s_b + cs[:, None] * s_c + (y + i) * s_h + (xs[None, :] + j) * s_w, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(g * v, 0)
    tl.store(GK + b * k_b + y * k_h + xs * k_w + i * k_i + j * k_j, acc.to(GK.dtype.element_ty), mask=x_mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _interpreted() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they then take CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_fwd_kernel, InterpretedFunction)


def _forward(source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    B, C = source.shape[:2]
    _, H, W, k, _ = kernel.shape
    out = torch.empty((B, C, H, W), device=source.device, dtype=source.dtype)
    if out.numel() == 0:
        return out
    n_cb = triton.cdiv(C, BLOCK_C)
    grid = (triton.cdiv(W, BLOCK_W), H, B * n_cb)
    _fwd_kernel[grid](source, kernel, out, *source.stride(), *kernel.stride(), *out.stride(), C, H, W, n_cb,
                      KS=k, BLOCK_W=BLOCK_W, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return out


def _backward(grad_out: torch.Tensor, source: torch.Tensor, kernel: torch.Tensor, need_source: bool, need_kernel: bool):
    B, C = source.shape[:2]
    _, H, W, k, _ = kernel.shape
    grad_source = grad_kernel = None
    if need_source:
        grad_source = torch.empty_like(source)
        n_cb = triton.cdiv(C, BLOCK_C)
        grid = (triton.cdiv(W + k - 1, BLOCK_W), H + k - 1, B * n_cb)
        _bwd_source_kernel[grid](grad_out, kernel, grad_source, *grad_out.stride(), *kernel.stride(), *grad_source.stride(),
                                 C, H, W, n_cb, KS=k, BLOCK_W=BLOCK_W, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    if need_kernel:
        grad_kernel = torch.empty_like(kernel)
        grid = (triton.cdiv(W, BLOCK_W), H, B * k * k)
        _bwd_kernel_kernel[grid](grad_out, source, grad_kernel, *grad_out.stride(), *source.stride(), *grad_kernel.stride(),
                                 C, H, W, KS=k, BLOCK_W=BLOCK_W, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return grad_source, grad_kernel


class _TritonAdaptiveConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source, kernel):
        ctx.save_for_backward(source, kernel)
        return _forward(source, kernel)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        source, kernel = ctx.saved_tensors
        return _backward(grad_out.contiguous(), source, kernel, ctx.needs_input_grad[0], ctx.needs_input_grad[1])


def triton_adaptive_conv(source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The adaptive convolution on the GPU: source (B, C, H+k-1, W+k-1), kernel (B, H, W, k, k) -> (B, C, H, W).

    CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``; float32, float16 or bfloat16
    (both the same). Differentiable in source and kernel.
    """
    check_adaptive_conv_inputs(source, kernel)
    if source.dtype not in _SUPPORTED_DTYPES:
        raise InputError(f"triton_adaptive_conv: dtype {source.dtype} is not supported; use float32, float16 or bfloat16")
    if source.device != kernel.device:
        raise InputError(f"triton_adaptive_conv: source and kernel are on different devices ({source.device}, {kernel.device})")
    if not (source.device.type == "cuda" or (source.device.type == "cpu" and _interpreted())):
        raise BackendUnavailableError(
            f"triton_adaptive_conv needs CUDA tensors (got {source.device.type}); CPU tensors only run under the Triton "
            "interpreter (TRITON_INTERPRET=1 set before triton is imported); use the 'torch' backend"
        )
    return _TritonAdaptiveConv.apply(source, kernel)


__all__ = ["adaptive_conv_reference", "triton_adaptive_conv"]
