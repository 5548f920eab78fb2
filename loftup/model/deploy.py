"""Deploy transforms: variants of the same LoftUp module, not copies of its definition.

- `fold_batchnorm`: BatchNorm folded into the convs (a copy; for export).
- `use_channels_last`: conv weights and the Fourier features in channels-last layout, which
  cuDNN's bf16/fp16 convolutions prefer; the rest of the data path then needs no layout copies
  (ChannelNorm's permute, the token flattening and the output reshape become views). In place.
- `compile_stages`: the elementwise-heavy stages as compiled functions (torch.compile): min-max
  scaling + Fourier features + channel norm as one, each block's FFN (LayerNorm, Linear, GELU,
  Linear) + residual add as one. Attention stays outside (its own kernels). In place.

Both leave parameters, state-dict keys and eager numerics alone (compiled code may round
differently, within the parity tolerances).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .upsampler import LoftUp


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv equal to bn(conv(x)) in eval mode (computed in float64, cast back)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, bias=True)
    fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    fused.bias.copy_(((bias - bn.running_mean.double()) * scale + bn.bias.double()).to(conv.weight.dtype))
    return fused


def fold_batchnorm(model: LoftUp) -> LoftUp:
    """Copy of `model` (same class, eval mode) with each BatchNorm folded into the conv before it.

    The BatchNorm slots become nn.Identity, so the conv keys keep their official names.
    """
    model = copy.deepcopy(model).eval()
    seq = model.upsampler.first_conv
    for i in range(len(seq) - 1):
        if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
            seq[i] = fold_conv_bn(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()
    model.bn_folded = True
    return model


def _loftup_upsampler(model):
    up = getattr(model, "upsampler", None)
    return up if up is not None and hasattr(up, "compiled") and hasattr(up, "channels_last") else None


def use_channels_last(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Run `model`'s convolutions channels-last (in place; other upsampler kinds are left as they are)."""
    up = _loftup_upsampler(model)
    if up is None:
        return model
    up.channels_last = enabled
    fmt = torch.channels_last if enabled else torch.contiguous_format
    for seq in (up.first_conv, up.final_conv):
        for module in seq.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)
    return model


def compile_stages(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """Compile the Fourier-feature stage and the FFNs of `model` with torch.compile (in place).

    backend/mode: torch.compile's (tests use backend="eager" to check the wiring cheaply). One
    compilation per input shape class; the first call of each pays for it.
    """
    from .layers import ffn_residual
    from .upsampler import image_features

    up = _loftup_upsampler(model)
    if up is None:
        return model
    up.compiled["features"] = torch.compile(image_features, backend=backend, mode=mode)
    up.ca_transformer.compiled["ffn"] = torch.compile(ffn_residual, backend=backend, mode=mode)
    return model
