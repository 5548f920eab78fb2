"""Adaptive max / average pooling that also exports with symbolic sizes (LiFT and FeatUp's JBU use it).

Eager calls (concrete sizes) run PyTorch's own `adaptive_max_pool2d` / `adaptive_avg_pool2d`,
the ops the official code calls, so the numbers are the official ones. While `torch.export`
traces with symbolic sizes those ops pin the sizes (their decompositions need concrete window
lengths), so the traced graph spells the same pooling out: separable (columns, then rows),
output index o takes input indices floor(o*n/m) .. ceil((o+1)*n/m) - 1 (PyTorch's windows).
Max pooling gathers tap by tap up to `max_window` taps (exact); `max_window` must bound the
longest window over the engine's input range, and a deploy variant sets it from the export's
sizes (`LiFT.deploy`). Average pooling multiplies by averaging matrices (no bound needed; the
same values summed in another order, float32 rounding ~1e-7 relative).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def window_bound(n_max: int, out_min: int) -> int:
    """Longest adaptive-pool window for inputs of at most n_max cells pooled to at least out_min."""
    return math.ceil(n_max / max(1, out_min)) + 1


def _pool_axis(x: torch.Tensor, dim: int, out, mode: str, taps: int) -> torch.Tensor:
    n = x.shape[dim]
    idx = torch.arange(out, device=x.device)
    start = torch.div(idx * n, out, rounding_mode="floor")  # (out,)
    end = torch.div((idx + 1) * n + out - 1, out, rounding_mode="floor")
    shape = (-1, 1) if dim == -2 else (-1,)
    acc = None
    for k in range(taps):
        v = x.index_select(dim, torch.minimum(start + k, end - 1))
        if mode == "max":
            acc = v if acc is None else torch.maximum(acc, v)
        else:
            v = v * (start + k < end).to(x.dtype).reshape(shape)
            acc = v if acc is None else acc + v
    if mode == "avg":
        acc = acc / (end - start).to(x.dtype).reshape(shape)
    return acc


def _avg_matrix(n, out, device, dtype) -> torch.Tensor:
    """(out, n): row o averages input cells floor(o*n/out) .. ceil((o+1)*n/out) - 1."""
    idx = torch.arange(out, device=device)
    start = torch.div(idx * n, out, rounding_mode="floor").unsqueeze(1)
    end = torch.div((idx + 1) * n + out - 1, out, rounding_mode="floor").unsqueeze(1)
    j = torch.arange(n, device=device).unsqueeze(0)
    inside = ((j >= start) & (j < end)).to(dtype)
    return inside / (end - start).to(dtype)


def adaptive_pool2d(x: torch.Tensor, size, mode: str, max_window: int | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size), adaptive "max" or "avg" pooling (PyTorch's windows).

    Traced average pooling is two small matrix products (out x n averaging matrices: no window
    bound needed); traced max pooling gathers up to `max_window` taps per axis.
    """
    dims = (*x.shape[-2:], *size)
    if all(isinstance(v, int) for v in dims):
        fn = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
        return fn(x, tuple(size))
    if mode == "avg":
        B, C, H, W = x.shape
        rows = _avg_matrix(H, size[0], x.device, x.dtype)  # (oh, H)
        cols = _avg_matrix(W, size[1], x.device, x.dtype)  # (ow, W)
        # plain 2-D matrix products: a batched matmul's layout heuristics would add size guards
        y = (x.reshape(B * C * H, W) @ cols.transpose(0, 1)).reshape(B, C, H, size[1])
        y = y.transpose(2, 3).reshape(B * C * size[1], H) @ rows.transpose(0, 1)  # (B*C*ow, oh)
        return y.reshape(B, C, size[1], size[0]).transpose(2, 3)
    if not max_window:
        raise ConfigError("adaptive pooling with symbolic sizes needs a window bound; export the model's deploy() variant")
    x = _pool_axis(x, -1, size[1], mode, max_window)
    return _pool_axis(x, -2, size[0], mode, max_window)


__all__ = ["adaptive_pool2d", "window_bound"]
