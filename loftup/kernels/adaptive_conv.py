"""FeatUp's adaptive convolution (the JBU's per-pixel 7x7 filter) in plain PyTorch.

    out[b, c, y, x] = sum_{i, j} kernel[b, y, x, i, j] * source[b, c, y + i, x + j]

source (B, C, H + k - 1, W + k - 1) is the reflect-padded feature map, kernel (B, H, W, k, k)
one k x k filter per output pixel (k = 7 in FeatUp), shared by all channels.

The PyTorch version (`adaptive_conv_torch`) is exact to FeatUp's CPU operator
(`adaptive_conv_cpp_impl.forward`, featup/adaptive_conv_cuda/adaptive_conv.cpp): the sum starts
from 0 in the input dtype and adds the taps in the same order, i outer, j inner, each product
rounded before it is added (`acc = acc + k * x`, two elementwise ops, no FMA). On the fixtures
it is bit-identical (tests/model/test_featup_jbu.py).

Memory: no (k*k, C, H, W) unfold is ever made. The taps are summed into one accumulator, so a
pass holds the accumulator and one product; in eager mode the output is further computed in
bands of rows whose accumulator and product fit `budget_bytes` (default 16 MiB), so the extra
memory is bounded whatever the resolution. The default is chosen for speed as much as memory:
the 49 multiply-adds of a band then run mostly from the CPU caches (measured on our 2-core CPU,
4 x 384 x 128 x 128 output: 0.45 s with 4 MiB bands, 0.65 s with 16 MiB, 1.4 s with one 64 MiB
band); smaller bands mean more, smaller ops, which suffer most when other processes load the
machine. The kernel is read as (B, k*k, H, W) so each tap's weights are contiguous rows.

Export: while torch.export traces with symbolic sizes, the same ordered sum is written as one
`scan` over the k*k taps (`tap_scan`: each step gathers the shifted source rows/columns with
index_select and adds its product), which the ONNX exporter turns into a single Scan/Loop node:
a 49-step loop instead of 49 unrolled slice/multiply/add groups (those made a FeatUp-JBU graph of
~4000 nodes that took minutes to export). Same order, same roundings: ONNX Runtime matches the
eager op bit for bit in our tests. Memory per step: one gathered (B, C, H, W) copy. ONNX Runtime
runs the loop body op by op, so the exported JBU is several times slower than eager PyTorch on CPU
(docs/baselines.md); a scan over the 7 kernel rows (one gather per row) ran 1.4x faster in ONNX Runtime but
took twice as long to export, so it was not kept.

The dispatcher between this and the Triton kernel (`triton_adaptive_conv.py`, which uses this
file as its reference) is `conv_dispatch.py`.
"""

from __future__ import annotations

import torch

from ..errors import InputError

DEFAULT_BUDGET_BYTES = 16 * 2**20


def check_adaptive_conv_inputs(source: torch.Tensor, kernel: torch.Tensor) -> tuple[int, int, int]:
    """(k, H, W) of a valid (source, kernel) pair; InputError otherwise."""
    if source.dim() != 4 or kernel.dim() != 5:
        raise InputError(
            f"adaptive_conv: source must be (B, C, H+k-1, W+k-1) and kernel (B, H, W, k, k), got "
            f"{tuple(source.shape)} and {tuple(kernel.shape)}"
        )
    B, H, W, k, k2 = kernel.shape
    if k != k2 or source.shape[0] != B or source.shape[2] != H + k - 1 or source.shape[3] != W + k - 1:
        raise InputError(
            f"adaptive_conv: source {tuple(source.shape)} does not fit kernel {tuple(kernel.shape)} "
            "(need source (B, C, H+k-1, W+k-1) for kernel (B, H, W, k, k))"
        )
    if source.dtype != kernel.dtype:
        raise InputError(f"adaptive_conv: source and kernel dtypes differ ({source.dtype}, {kernel.dtype})")
    return k, H, W


def _tap_major(kernel: torch.Tensor) -> torch.Tensor:
    """(B, H, W, k, k) -> (B, k*k, H, W) contiguous: tap 7i + j's weights as one plane."""
    B, H, W, k, _ = kernel.shape
    return kernel.reshape(B, H, W, k * k).permute(0, 3, 1, 2).contiguous()


def _taps(source: torch.Tensor, taps: torch.Tensor, y0: int, y1: int, W: int, k: int) -> torch.Tensor:
    """Output rows [y0, y1): the k*k taps added in FeatUp's order (i outer, j inner), each product
    rounded, then added (`acc + w * x`, as FeatUp's operator). taps: (B, k*k, H, W)."""
    acc = torch.zeros_like(source[:, :, y0:y1, :W])  # (B, C, rows, W), the input dtype
    tmp = torch.empty_like(acc)
    for t in range(k * k):
        i, j = divmod(t, k)
        torch.mul(taps[:, t : t + 1, y0:y1], source[:, :, y0 + i : y1 + i, j : j + W], out=tmp)
        acc.add_(tmp)
    return acc


def tap_scan(step, k: int, init: torch.Tensor, *per_tap: torch.Tensor):
    """Run `step(carry, i, j, *tap_slices) -> (carry, y)` over the k*k taps in order (i outer, j inner)
    as one `torch scan` (exports as an ONNX loop); returns (carry, ys stacked on dim 0).

    per_tap: tensors whose dim 0 has one entry per tap.
    """
    from torch._higher_order_ops.scan import scan

    t = torch.arange(k * k, device=init.device)
    ii, jj = torch.div(t, k, rounding_mode="floor"), t % k

    def body(carry, xs):
        return step(carry, xs[0], xs[1], *xs[2:])

    return scan(body, init, (ii, jj, *per_tap))


def _taps_traced(source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The ordered tap sum as one scan (symbolic sizes, for export)."""
    B, H, W, k, _ = kernel.shape
    taps = kernel.reshape(B, H, W, k * k).permute(3, 0, 1, 2).unsqueeze(2)  # (k*k, B, 1, H, W)
    rows = torch.arange(H, device=source.device)
    cols = torch.arange(W, device=source.device)

    def step(acc, i, j, w):
        shifted = source.index_select(2, rows + i).index_select(3, cols + j)  # (B, C, H, W)
        return acc + w * shifted, acc.new_zeros(())

    acc, _ = tap_scan(step, k, source.new_zeros(source.shape[0], source.shape[1], H, W), taps)
    return acc


def band_rows(batch: int, channels: int, width: int, element_bytes: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Output rows per band so that a band's accumulator and product fit `budget_bytes`."""
    per_row = 2 * batch * channels * width * max(element_bytes, 1)
    return max(1, budget_bytes // max(per_row, 1))


def _bands(source: torch.Tensor, H: int, W: int, budget_bytes: int):
    rows = band_rows(source.shape[0], source.shape[1], W, source.element_size(), budget_bytes)
    return [(y0, min(y0 + rows, H)) for y0 in range(0, H, rows)]


def _banded(source: torch.Tensor, kernel: torch.Tensor, budget_bytes: int) -> torch.Tensor:
    B, H, W, k, _ = kernel.shape
    taps = _tap_major(kernel)
    bands = _bands(source, H, W, budget_bytes)
    if len(bands) == 1:
        return _taps(source, taps, 0, H, W, k)
    out = source.new_empty(B, source.shape[1], H, W)
    for y0, y1 in bands:
        out[:, :, y0:y1] = _taps(source, taps, y0, y1, W, k)
    return out


class _AdaptiveConv(torch.autograd.Function):
    """Eager forward in row bands; backward by the same banded tap walk, accumulating the source
    gradient in place (autograd through 49 slices would allocate 49 source-sized zero tensors)."""

    @staticmethod
    def forward(ctx, source, kernel, budget_bytes):
        ctx.save_for_backward(source, kernel)
        ctx.budget_bytes = budget_bytes
        with torch.no_grad():
            return _banded(source, kernel, budget_bytes)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        source, kernel = ctx.saved_tensors
        B, H, W, k, _ = kernel.shape
        taps = _tap_major(kernel)
        grad_source = torch.zeros_like(source) if ctx.needs_input_grad[0] else None
        grad_taps = source.new_empty(B, k * k, H, W) if ctx.needs_input_grad[1] else None
        for y0, y1 in _bands(source, H, W, ctx.budget_bytes):
            go = grad_out[:, :, y0:y1]
            tmp = torch.empty_like(go)
            for t in range(k * k):
                i, j = divmod(t, k)
                if grad_source is not None:  # source rows y+i, columns x+j += w * grad
                    grad_source[:, :, y0 + i : y1 + i, j : j + W].addcmul_(taps[:, t : t + 1, y0:y1], go)
                if grad_taps is not None:
                    torch.mul(go, source[:, :, y0 + i : y1 + i, j : j + W], out=tmp)
                    grad_taps[:, t, y0:y1] = tmp.sum(1)
        grad_kernel = grad_taps.permute(0, 2, 3, 1).reshape(B, H, W, k, k) if grad_taps is not None else None
        return grad_source, grad_kernel, None


def adaptive_conv_torch(source: torch.Tensor, kernel: torch.Tensor, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """The adaptive convolution in plain PyTorch: source (B, C, H+k-1, W+k-1), kernel (B, H, W, k, k) -> (B, C, H, W).

    Exact to FeatUp's CPU operator (module doc); differentiable (a tap-walk backward that adds
    into one source gradient); traceable with symbolic sizes.
    """
    H, W = kernel.shape[1], kernel.shape[2]
    if not (isinstance(H, int) and isinstance(W, int)):  # tracing with symbolic sizes: one scan
        return _taps_traced(source, kernel)
    check_adaptive_conv_inputs(source, kernel)
    if torch.is_grad_enabled() and (source.requires_grad or kernel.requires_grad):
        return _AdaptiveConv.apply(source, kernel, budget_bytes)
    return _banded(source, kernel, budget_bytes)


class _TapDots(torch.autograd.Function):
    """logits[b, 7i+j, y, x] = sum_c padded[b, c, y+i, x+j] * query[b, c, y, x], with an in-place tap-walk backward."""

    @staticmethod
    def forward(ctx, padded, query, k):
        ctx.save_for_backward(padded, query)
        ctx.k = k
        H, W = query.shape[-2:]
        with torch.no_grad():
            return torch.stack([(padded[:, :, i : i + H, j : j + W] * query).sum(1) for i in range(k) for j in range(k)], dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        padded, query = ctx.saved_tensors
        k = ctx.k
        H, W = query.shape[-2:]
        g_padded = torch.zeros_like(padded) if ctx.needs_input_grad[0] else None
        g_query = torch.zeros_like(query) if ctx.needs_input_grad[1] else None
        for t in range(k * k):
            i, j = divmod(t, k)
            g = grad[:, t : t + 1]  # (B, 1, H, W)
            if g_padded is not None:
                g_padded[:, :, i : i + H, j : j + W].addcmul_(g, query)
            if g_query is not None:
                g_query.addcmul_(g, padded[:, :, i : i + H, j : j + W])
        return g_padded, g_query, None


def tap_dots(padded: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k*k, H, W): for each tap (i, j) the channel dot product of the shifted padded map with the
    query map (FeatUp's range logits before the temperature). padded (B, C, H+k-1, W+k-1), query (B, C, H, W).

    Never holds the (k*k, C, H, W) unfold; as one scan when traced with symbolic sizes.
    """
    H, W = query.shape[-2:]
    if not (isinstance(H, int) and isinstance(W, int)):
        rows, cols = torch.arange(H, device=query.device), torch.arange(W, device=query.device)

        def step(carry, i, j):
            return carry.clone(), (padded.index_select(2, rows + i).index_select(3, cols + j) * query).sum(1)

        _, logits = tap_scan(step, k, query.new_zeros(()))  # (k*k, B, H, W)
        return logits.permute(1, 0, 2, 3)
    if torch.is_grad_enabled() and (padded.requires_grad or query.requires_grad):
        return _TapDots.apply(padded, query, k)
    return torch.stack([(padded[:, :, i : i + H, j : j + W] * query).sum(1) for i in range(k) for j in range(k)], dim=1)


__all__ = ["DEFAULT_BUDGET_BYTES", "adaptive_conv_torch", "band_rows", "check_adaptive_conv_inputs", "tap_dots", "tap_scan"]
