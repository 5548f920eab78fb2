"""Position-embedding resizes written as small interpolation matrices.

A separable resize of a (rows, cols, C) grid is `Wr @ grid @ Wc^T`, with one (out, in) matrix
per axis. We build those matrices from `torch.arange` with PyTorch's own formulas, so:

- the numbers match `F.interpolate` to float32 rounding (about 1e-7 relative);
- an output size of the input size gives the identity exactly (both rules below), so the
  "no resize at the native grid" shortcut of the official code needs no branch;
- the output size may be a symbolic size: `torch.export` traces it with dynamic image sizes
  (no size-dependent Python branch), so an exported pipeline keeps dynamic H and W.

Used by SigLIP (timm's antialiased bicubic) and RADIO (CPE: bilinear to a square, then a
top-left crop). Sizes here are in grid cells, not pixels.
"""

from __future__ import annotations

import torch

CUBIC_A = -0.5  # PyTorch's antialiased bicubic uses a = -0.5 (plain bicubic uses -0.75)


def _cubic(x: torch.Tensor, a: float = CUBIC_A) -> torch.Tensor:
    """Keys cubic convolution kernel of |x| (zero for |x| >= 2)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def aa_bicubic_matrix(out_size, in_size: int, device=None) -> torch.Tensor:
    """(out_size, in_size) weights of `F.interpolate(mode="bicubic", antialias=True,
    align_corners=False)` along one axis, float32.

    PyTorch's rule (separable AA kernel): s = in/out, support = 2 max(s, 1), centre
    c_i = s (i + 0.5), taps j in [max(floor(c - support + 0.5), 0), min(floor(c + support + 0.5),
    in)), weight cubic((j - c + 0.5) / max(s, 1)), normalised to sum to one per row.
    """
    i = torch.arange(out_size, dtype=torch.float32, device=device)
    scale = torch.full((1,), in_size, dtype=torch.float32, device=device) / out_size  # (1,)
    stretch = scale.clamp(min=1.0)
    support = 2.0 * stretch
    centre = (i + 0.5) * scale  # (out,)
    lo = torch.floor(centre - support + 0.5).clamp(min=0)
    hi = torch.floor(centre + support + 0.5).clamp(max=in_size)
    j = torch.arange(in_size, dtype=torch.float32, device=device)
    inside = (j >= lo[:, None]) & (j < hi[:, None])  # (out, in)
    w = _cubic((j - centre[:, None] + 0.5) / stretch) * inside
    return w / w.sum(dim=1, keepdim=True)


def bilinear_matrix(count, out_size, in_size: int, device=None) -> torch.Tensor:
    """Rows 0..count-1 of the (out_size, in_size) weights of `F.interpolate(mode="bilinear",
    align_corners=False)` along one axis (no antialias), float32; count <= out_size.

    PyTorch's rule: src = max(s (i + 0.5) - 0.5, 0) with s = in/out; taps floor(src) and
    min(floor(src) + 1, in - 1) with weights 1 - t and t, t = src - floor(src).
    """
    i = torch.arange(count, dtype=torch.float32, device=device)
    scale = torch.full((1,), in_size, dtype=torch.float32, device=device) / out_size  # (1,)
    src = ((i + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().clamp(max=in_size - 1)
    t = (src - i0).clamp(0, 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    j = torch.arange(in_size, dtype=torch.float32, device=device)
    return (1 - t)[:, None] * (j == i0[:, None]) + t[:, None] * (j == i1[:, None])


def resize_grid(grid: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`rows @ grid @ cols^T` for a grid (R, Q, C) and matrices rows (h, R), cols (w, Q):
    (h, w, C) in float32 (rows first; PyTorch's kernel does columns first - a float32
    rounding difference only)."""
    R, Q, C = grid.shape
    h = rows.shape[0]
    # Only static dims are merged or split: a reshape involving a symbolic size next to C
    # makes torch.export emit guards it cannot prove, which pins the size.
    g = rows @ grid.float().reshape(R, Q * C)  # (h, Q * C)
    return cols @ g.reshape(h, Q, C)  # (w, Q) @ (h, Q, C) -> (h, w, C)
