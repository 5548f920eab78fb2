"""Linear layers with their elementwise epilogue (GELU, or a residual add) in one call on CPU.

`linear(x, w, b, activation=..., residual=..., fused=True)` runs oneDNN's linear with a fused
post-op (`torch.ops.mkldnn._linear_pointwise`, the op PyTorch's own inductor emits for CPU
linears) when it can: CPU tensors, float32 or bfloat16, no autograd, not while tracing or
compiling; otherwise - and always with fused=False - the eager ops `F.linear`, `F.gelu`, `+`,
which it equals up to rounding (float32: ~5e-6 on LoftUp's shapes; bf16 rounds the product
once instead of twice).

Why: PyTorch's CPU `F.linear` goes through MKL, which on the AMD Zen 4 machines this project
runs on reached 62-78 GFLOP/s per core on LoftUp-S's token shapes (outputs 404 wide are the
slow ones), where oneDNN's linear reached 81-86 at every width; fusing the GELU of the FFN and
the residual adds after the output projection and the FFN saves a pass over the tokens each:
the FFN's two layers took 0.095 + 0.102 s instead of 0.127 + 0.133 s (fp32, 25k tokens, one
thread, CPU time; bf16 -28% / -31%). Measured 2026-12-06 on the loaded 2-core machine (issue 26).
The model uses it where `loftup.model.deploy.cpu_variant` switched it on; the parity reference
never does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BROKEN: set[tuple] = set()  # (dtype, activation, residual?) combinations oneDNN refused once


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None,
           residual: torch.Tensor | None = None, fused: bool = False) -> torch.Tensor:
    """x @ weight^T + bias, then GELU (activation="gelu", exact erf form) or + residual (not both)."""
    if fused and _fusable(x, weight):
        key = (x.dtype, activation, residual is not None)
        if key not in _BROKEN:
            try:
                if residual is not None:
                    return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation or "none", [], "none" if activation else "")
            except RuntimeError:  # a build or shape oneDNN does not take: the eager ops from now on
                _BROKEN.add(key)
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y)
    return y + residual if residual is not None else y


def _fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16)
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
