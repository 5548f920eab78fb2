"""Deploy transforms: variants of the same LoftUp module, not copies of its definition."""

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
