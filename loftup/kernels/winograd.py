"""Winograd 3x3 convolutions for LoftUp's two full-resolution convs on CPU (inference only).

Design. F(m x m, 3 x 3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
CVPR 2016) computes an m x m block of a stride-1 3x3 convolution from an a x a input tile
(a = m + 2) as Y = A^T [(G g G^T) * (B^T d B)] A. Across channels the elementwise product becomes
a^2 independent GEMMs (tiles x C_in) @ (C_in x C_out), so the multiply count per output pixel
drops from 9 to a^2 / m^2 per channel pair: 2.25 for F(4x4) (4x fewer), 4 for F(2x2) (2.25x).
Here the tile transforms are matrices too: kron(B^T, B^T) (a^2 x a^2) maps a band's tiles in
one GEMM, kron(A^T, A^T) (m^2 x a^2) maps them back, so every step is a PyTorch GEMM and the
transforms cost 3-9% of the main product.

The image is processed in bands of whole tile rows, sized so that one band's tile buffer stays
near `BAND_BYTES` (cache-sized; every buffer is allocated once per call), with its zero
padding built per band - no padded copy of the whole input, and the working memory beyond
input and output is a few band buffers (about 5 x BAND_BYTES) whatever the image size.
The bias rides in the output transform's GEMM (addmm) and the optional ReLU is applied to each
band while it is in cache; whole tiles go straight into the output.

Precision. float32 uses F(4x4, 3x3): max abs error ~5e-5 against float64 on unit-variance
inputs (direct oneDNN convs: ~1e-5), far inside the fp32 engine tolerance. bfloat16 uses
F(2x2, 3x3), whose transforms only add and subtract: per-output cosine to float64 0.99999, max abs
error 1.6x the direct bf16 conv's; F(4x4) in bf16 erred 20x more (0.57 on outputs of scale 7,
the transformed tiles' roundings amplified by A's coefficients up to 8), so it is not used. (On
the shipped model's own activations F(4x4) bf16 errs 2.0-2.6x the direct conv in RMS and 4-10x
at the maximum; at the model's output that vanishes under the token path's bf16 rounding with
trained weights, but not with random ones - docs/cpu-deploy.md, "Not reached yet", has the
figures and why STYLE's error rule still keeps F(2x2).)

Measured (2026-12-07, the project's 2-core AMD EPYC Zen 4 VM, 2 threads, one call each after a
warm-up; `benchmarks/cpu_precision.py` has the in-model figures): 404 -> 404 channels on a
224 x 224 map, fp32 705 ms direct (oneDNN, ~190 GFLOP/s, the machine's GEMM peak) vs 352 ms
Winograd (2.0x), bf16 345 vs 235 ms (1.5x). (A first version, 115 x 115 maps: fp32 203 -> 404
channels 90 vs 58 ms, bf16 47 vs 35 ms.)

Used where `loftup.model.deploy.cpu_variant` put `WinogradConv2d` in place of a 3x3 conv; any
call it does not cover (autograd, CUDA, another dtype or geometry) runs the ordinary conv.
`conv3x3_reference` is the plain PyTorch definition the tests hold it to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# One band's tile buffer (a^2 x tiles x channels), in bytes: ~144 tiles at C = 404 in fp32 F(4x4),
# ~320 in bf16 F(2x2). In-model A/B at 224 px (2026-12-07): 4 / 8 / 12 / 24 MB within 5% of each
# other (this machine's noise), 8 MB among the fastest in both precisions.
BAND_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Winograd:
    """F(m x m, 3 x 3): output block m, input tile a = m + 2; B^T (a x a), G (a x 3), A^T (m x a)."""

    m: int
    BT: tuple
    G: tuple
    AT: tuple

    @property
    def a(self) -> int:
        return self.m + 2

    def input_transform(self, dtype) -> torch.Tensor:  # (a^2, a^2): vec(B^T d B) for row-major vec(d)
        bt = torch.tensor(self.BT, dtype=torch.float64)
        return torch.kron(bt, bt).to(dtype)

    def output_transform(self, dtype) -> torch.Tensor:  # (m^2, a^2): vec(A^T M A)
        at = torch.tensor(self.AT, dtype=torch.float64)
        return torch.kron(at, at).to(dtype)

    def weight_transform(self, weight: torch.Tensor, dtype) -> torch.Tensor:
        """(C_out, C_in, 3, 3) -> U = G g G^T per channel pair, (a^2, C_in, C_out), computed in float64."""
        g = torch.tensor(self.G, dtype=torch.float64)
        u = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().to(torch.float64), g)
        return u.reshape(self.a**2, weight.shape[1], weight.shape[0]).to(dtype).contiguous()


# Interpolation points 0, -1, 1, -2, 2 and infinity (Lavin & Gray's F(4x4, 3x3)).
F4X4 = Winograd(
    4,
    BT=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
    G=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
       (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
    AT=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
)
# Points 0, -1, 1 and infinity: transforms of 0 / +-1 only.
F2X2 = Winograd(
    2,
    BT=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
    G=((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
    AT=((1, 1, 1, 0), (0, 1, -1, -1)),
)
ALGORITHMS = {torch.float32: F4X4, torch.bfloat16: F2X2}


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, alg: Winograd, relu: bool = False,
            band_bytes: int | None = None) -> torch.Tensor:
    """Zero-padded, stride-1 3x3 convolution of x (B, C_in, H, W) with U = alg.weight_transform(w)
    (a^2, C_in, C_out), + bias (C_out,), then ReLU if asked -> (B, C_out, H, W), channels-last
    (the layout the CPU variant's convs and token path use). Any input layout; x's dtype throughout."""
    B, C, H, W = x.shape
    m, a = alg.m, alg.a
    Co = u.shape[2]
    tx = -(-W // m)
    band_bytes = BAND_BYTES if band_bytes is None else band_bytes
    bands = max(1, min(-(-H // m), band_bytes // (a * a * tx * max(C, Co) * x.element_size())))  # tile rows per band
    rows_in, cols_in = bands * m + 2, tx * m + 2
    kb, ka = alg.input_transform(x.dtype), alg.output_transform(x.dtype)
    src = x.new_zeros(rows_in, cols_in, C)  # one band's padded input; columns 0 and > W stay zero
    tiles = x.new_empty(a * a, bands * tx * C)
    v = torch.empty_like(tiles)
    prod = x.new_empty(a * a, bands * tx, Co)
    blocks = x.new_empty(m * m, bands * tx * Co)
    band_out = x.new_empty(bands, m, tx, m, Co)
    bias_rows = bias.to(x.dtype).repeat(bands * tx) if bias is not None else None  # (tiles * C_out,)
    out = x.new_empty(B, H, W, Co)
    xl = x.permute(0, 2, 3, 1)  # (B, H, W, C), a view
    for b in range(B):
        for y0 in range(0, H, bands * m):
            n = min(bands, -(-(H - y0) // m))  # tile rows in this band
            lo, hi = y0 - 1, min(y0 + n * m + 1, H)  # input rows this band reads (row -1 / H: padding)
            src[: max(0, -lo)].zero_()
            src[max(0, -lo) : hi - lo, 1 : W + 1] = xl[b, max(lo, 0) : hi]
            src[hi - lo : n * m + 2].zero_()
            count = n * tx
            t = tiles[:, : count * C]
            t.view(a, a, n, tx, C).copy_(src.as_strided((a, a, n, tx, C), (cols_in * C, C, m * cols_in * C, m * C, 1)))
            vt = v[:, : count * C]
            torch.matmul(kb, t, out=vt)  # B^T d B for every tile and channel
            p = prod[:, :count]
            torch.bmm(vt.view(a * a, count, C), u, out=p)  # a^2 GEMMs over channels
            yt = blocks[:, : count * Co]
            if bias is None:
                torch.matmul(ka, p.view(a * a, count * Co), out=yt)  # A^T M A
            else:  # A^T M A + bias: addmm adds it to every output pixel (no separate pass)
                torch.addmm(bias_rows[: count * Co], ka, p.view(a * a, count * Co), out=yt)
            rows = min(n * m, H - y0)
            dest = out[b, y0 : y0 + rows]
            blocks_view = yt.view(m, m, n, tx, Co).permute(2, 0, 3, 1, 4)  # (n, m, tx, m, Co)
            if rows == n * m and W == tx * m:  # whole tiles: straight into the output
                dest.view(n, m, tx, m, Co).copy_(blocks_view)
            else:
                o = band_out[:n]
                o.copy_(blocks_view)
                dest.copy_(o.view(n * m, tx * m, Co)[:rows, :W])
            if relu:
                dest.clamp_(min=0)
    return out.permute(0, 3, 1, 2)


def conv3x3_reference(x, weight, bias, relu: bool = False) -> torch.Tensor:
    """The definition: F.conv2d with padding 1 (then ReLU)."""
    y = F.conv2d(x, weight, bias, padding=1)
    return y.relu() if relu else y


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 conv (the same `weight` / `bias` parameters and state-dict keys)
    that runs `conv3x3` for CPU float32 / bfloat16 inference and the ordinary conv otherwise;
    `relu`: a ReLU after it, applied in the same pass (the Sequential's own ReLU is then an Identity).
    The transformed weights are cached and rebuilt when the weight changes (version or storage)."""

    def __init__(self, *args, relu: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = relu
        self._u_key, self._u = None, None  # the transformed weight's cache (not state)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: bool = False) -> "WinogradConv2d":
        """A WinogradConv2d sharing `conv`'s parameters."""
        if not covered_geometry(conv):
            raise ValueError(f"Winograd covers 3x3 stride-1 padding-1 convs, not {conv}")
        new = cls(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None, relu=relu, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        return new.train(conv.training)

    def transformed_weight(self, alg: Winograd, dtype) -> torch.Tensor:
        w = self.weight
        key = (alg.m, dtype, w._version, w.data_ptr(), w.dtype)
        if self._u_key != key:
            self._u, self._u_key = alg.weight_transform(w, dtype), key
        return self._u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alg = ALGORITHMS.get(x.dtype)
        if (alg is not None and x.device.type == "cpu" and x.dim() == 4 and self.weight.dtype == x.dtype
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()):
            bias = self.bias.detach() if self.bias is not None else None
            return conv3x3(x, self.transformed_weight(alg, x.dtype), bias, alg, self.relu)
        y = super().forward(x)
        return F.relu(y) if self.relu else y


def covered_geometry(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def use_winograd(seq: nn.Sequential) -> int:
    """Replace each covered 3x3 conv of `seq` (in place) by a `WinogradConv2d` sharing its
    parameters; a ReLU right after it (past Identity slots, e.g. folded BatchNorms) moves into
    the conv and its slot becomes an Identity. Returns how many convs were replaced."""
    replaced = 0
    for i, layer in enumerate(seq):
        if type(layer) is not nn.Conv2d or not covered_geometry(layer):
            continue
        j = i + 1
        while j < len(seq) and isinstance(seq[j], nn.Identity):
            j += 1
        relu = j < len(seq) and type(seq[j]) is nn.ReLU
        seq[i] = WinogradConv2d.from_conv(layer, relu)
        if relu:
            seq[j] = nn.Identity()
        replaced += 1
    return replaced
