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

The other kinds (`kind_macs`, chosen by the config's kind), per image, for an H x W guidance
image and an h x w low-res grid; both include the bilinear resize of their output to H x W
(4*C per guidance pixel) that the engine applies:

- LiFT (E = (C+32)/2, F = C/2): image convs 27*32 at ceil(H/2) x ceil(W/2) and 9*32*32 at the
  next halving, 9*32*32 at h x w; the transposed conv 4*(C+32)*E at h x w; at 2h x 2w the
  DoubleConv 9*(E+32)*F + 9*F^2 and the 1x1 head F*C.
- FeatUp-JBU, at each stage's output (2h x 2w, 4h x 4w, 8h x 8w, 16h x 16w) per pixel: range
  projection 3*32 + 32*32, range logits 49*32, kernel fixup 52*49 + 49*49, bicubic upsampling
  16*C, adaptive convolution 49*C; then the final 1x1 conv C*C at 16h x 16w. For C = 384 at
  224 px (16 x 16 grid): 9.6 GMAC conv head + 2.8 GMAC stages.
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


KIND_FORMULAS = {
    "loftup": FORMULA,
    "lift": ("MACs = B*(ceil(H/2)*ceil(W/2)*27*32 + H4*W4*9*32^2 + h*w*(9*32^2 + 4*(C+32)*E) + 4*h*w*(9*(E+32)*F + 9*F^2 + F*C) "
             "+ H*W*4*C); E = (C+32)/2, F = C/2, H4 = ceil(ceil(H/2)/2)"),
    "featup_jbu": ("MACs = B*(sum over stages s=1..4 of (2^s h)(2^s w)*(3*32 + 32^2 + 49*32 + 52*49 + 49^2 + 16*C + 49*C) "
                   "+ 256*h*w*C^2 + H*W*4*C)"),
}


def kind_macs(kind: str, C: int, batch: int, out_h: int, out_w: int, lr_h: int, lr_w: int) -> float:
    """Multiply-adds of one forward pass of a LiFT / FeatUp-JBU at output (guidance) size out_h x out_w."""
    resize = out_h * out_w * 4 * C
    if kind == "lift":
        E, F = (C + 32) // 2, C // 2
        h1, w1 = -(-out_h // 2), -(-out_w // 2)
        h2, w2 = -(-h1 // 2), -(-w1 // 2)
        macs = (h1 * w1 * 27 * 32 + h2 * w2 * 9 * 32 * 32 + lr_h * lr_w * (9 * 32 * 32 + 4 * (C + 32) * E)
                + 4 * lr_h * lr_w * (9 * (E + 32) * F + 9 * F * F + F * C) + resize)
    else:
        per_pixel = 3 * 32 + 32 * 32 + 49 * 32 + 52 * 49 + 49 * 49 + 16 * C + 49 * C
        macs = sum((2**s * lr_h) * (2**s * lr_w) * per_pixel for s in range(1, 5)) + 256 * lr_h * lr_w * C * C + resize
    return float(batch * macs)


def model_flops(cfg, batch: int, out_h: int, out_w: int, lr_h: int, lr_w: int) -> float:
    """FLOPs of one forward pass of any kind (cfg: its config; LoftUpConfig has no `kind`)."""
    kind = getattr(cfg, "kind", "loftup")
    if kind == "loftup":
        return upsampler_flops(cfg, batch, out_h, out_w, lr_h, lr_w)
    return 2.0 * kind_macs(kind, int(cfg.feat_dim), batch, out_h, out_w, lr_h, lr_w)
