"""Analytic work of the LoftUp upsampler, counted in multiply-adds (MACs); FLOPs = 2 * MACs.

Per output pixel (the high-resolution query path):

    MACs/pixel = F*D*k^2            first conv on the image Fourier features (F channels -> D)
               + D^2*k^2            second conv (D -> D)
               + L*(2*D^2           per block: query projection and output projection
                    + 2*M*D         attention scores q.k over M tokens, and the weighted sum of v
                    + 2*D*C)        feed-forward D -> C -> D
               + D*C                final 1x1 conv (D -> C)

plus per image L*2*M*D^2 for the key/value projections of the M low-res tokens. With
F = 10*n_freqs + 3 (sin and cos of 5 inputs at n_freqs frequencies, plus RGB), D = C + 4*lr_n_freqs
(the token width), k the image-conv kernel, L the number of blocks, M = h*w. For C=384
(DINOv2-S/14): 0.203 TMAC at 224x224 from 16x16, 1.06 TMAC at 448 from 32x32, 8.2 TMAC at 896.
Norms, softmax, GELU and the Fourier features themselves are left out (under 1%).
"""

from __future__ import annotations

FORMULA = (
    "MACs = B*(H*W*(F*D*k^2 + D^2*k^2 + L*(2*D^2 + 2*M*D + 2*D*C) + D*C) + L*2*M*D^2); FLOPs = 2*MACs; "
    "F = 10*n_freqs+3, D = token width (C + 4*lr_n_freqs), k = image-conv kernel, L = blocks, M = h*w low-res tokens"
)


def upsampler_macs(cfg, batch: int, out_h: int, out_w: int, lr_h: int, lr_w: int) -> dict[str, float]:
    """Multiply-adds of one forward pass, by part, and the total. cfg: a LoftUpConfig."""
    C, D, k, L = cfg.feat_dim, cfg.token_dim, cfg.image_conv_kernel, cfg.num_blocks
    F = cfg.image_feat_dim
    M, N = lr_h * lr_w, out_h * out_w
    parts = {
        "convs": N * (F * D * k * k + D * D * k * k),
        "projections": N * L * 2 * D * D + L * 2 * M * D * D,
        "attention": N * L * 2 * M * D,
        "feed_forward": N * L * 2 * D * C,
        "head": N * D * C,
    }
    parts = {name: float(batch * v) for name, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def upsampler_flops(cfg, batch: int, out_h: int, out_w: int, lr_h: int, lr_w: int) -> float:
    return 2.0 * upsampler_macs(cfg, batch, out_h, out_w, lr_h, lr_w)["total"]
