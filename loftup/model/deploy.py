"""Deploy transforms: variants of the same LoftUp module, not copies of its definition.

- `fold_batchnorm`: BatchNorm folded into the convs (a copy; for export).
- `use_channels_last`: conv weights and the Fourier features in channels-last layout, which
  cuDNN's bf16/fp16 convolutions prefer; the rest of the data path then needs no layout copies
  (ChannelNorm's permute, the token flattening and the output reshape become views). In place.
- `compile_stages`: the elementwise-heavy stages as compiled functions (torch.compile): min-max
  scaling + Fourier features + channel norm as one, each block's FFN (LayerNorm, Linear, GELU,
  Linear) + residual add as one. Attention stays outside (its own kernels). In place.
- `compile_query_path`: a tile's whole query path compiled, the tile loop eager (`TorchEngine`'s
  compile=True for LoftUp). In place.
- `native_precision`: a copy with BatchNorm folded and the convs, the token path (projections,
  attention, FFNs, norms) and the head in bfloat16 / float16 weights and activations, without
  autocast's float32 round trips; the Fourier featurizers and the channel norms stay float32
  (sin of coordinates times up to e^10 means nothing in 8 mantissa bits). What `TorchEngine`
  runs for bf16 on CPU.
- `cpu_variant`: what `TorchEngine` runs on CPU: BatchNorm folded (fp32), or `native_precision`
  (bf16 / fp16); heads padded to a multiple of 8; the token path's linears as oneDNN linears
  with GELU / residual epilogues (`loftup.kernels.linear`); the two 3x3 convs as Winograd
  convs with their ReLU (`loftup.kernels.winograd`: F(4x4) in fp32, F(2x2) in bf16); the engine
  adds channels-last.

Channels-last and compiling leave parameters, state-dict keys and eager numerics alone (compiled
code may round differently, within the parity tolerances); the copies keep the official keys.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .upsampler import LoftUp

# Head dims padded to a multiple of this on CPU (zero channels, exact; layers.MultiheadCrossAttention):
# LoftUp-S's 101 -> 104 makes the q/k/v projections 416 wide, and GEMMs whose output width is a
# multiple of 16 ran 1.2x faster (fp32, 404 vs 416 outputs: 62 vs 75 GFLOP/s per core; the fused
# fp32 attention 66 vs 78), measured on the Zen 4 machine (one thread, CPU time, issue 26).
CPU_HEAD_MULTIPLE = 8
# Queries per block of the CPU variants' token path (`LoftUpUpsampler._token_blocks`; exact).
CPU_TOKEN_CHUNK = 4096


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


def compile_query_path(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """Compile LoftUp's per-tile query path (Fourier features, convs, token path, head) with
    torch.compile (in place); the tile loop stays eager, so the memory budget's tile plan (which
    reads the process's resident memory) still bounds the memory of a compiled model. Other
    kinds: unchanged (compile them whole)."""
    up = _loftup_upsampler(model)
    if up is not None:
        up.compiled["query_path"] = torch.compile(up._queries_and_out, backend=backend, mode=mode)
    return model


def native_precision(model: LoftUp, dtype: torch.dtype = torch.bfloat16) -> LoftUp:
    """Copy of `model` (eval mode, BatchNorm folded) computing in `dtype` natively: the convs, the
    transformer and the output head hold `dtype` weights, so tokens stay in `dtype` from the first
    conv to the head (layer norms and softmax accumulate in float32 inside their kernels). The
    image and low-res Fourier featurizers and both channel norms keep float32 weights and run in
    float32; their outputs are cast once. An outer autocast (the pipeline form's, for the
    backbone) changes nothing in it: its tensors already have the dtypes autocast would pick."""
    model = fold_batchnorm(model)
    up = model.upsampler
    for module in (*list(up.first_conv)[1:], up.ca_transformer, up.final_conv):
        module.to(dtype)
    return model


def cpu_variant(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """The inference variant of a LoftUp model on CPU (`TorchEngine`, which also turns channels-last
    on): fp32 - BatchNorm folded; bf16 / fp16 - `native_precision`. Other kinds: unchanged."""
    if _loftup_upsampler(model) is None:
        return model
    from ..kernels.winograd import use_winograd
    from ..runtime.devices import DTYPES

    model = fold_batchnorm(model) if precision == "fp32" else native_precision(model, DTYPES[precision])
    use_winograd(model.upsampler.first_conv)  # 3x3 convs (+ ReLU) as Winograd convs on CPU, exact up to rounding
    model.upsampler.token_chunk = CPU_TOKEN_CHUNK
    for module in model.modules():
        if getattr(getattr(module, "dispatcher", None), "head_multiple", 0) is None:
            module.dispatcher.head_multiple = CPU_HEAD_MULTIPLE  # heads 101 -> 104: 416-wide q/k/v GEMMs (exact)
        if hasattr(module, "fused_linear"):
            module.fused_linear = True  # oneDNN linears with GELU / residual epilogues (kernels.linear)
    return model
