"""Mask refinement (the "mask-bicubic" pseudo-GT) and unsupervised mask sources.

`mask_refine(feats, masks, alpha)` moves every pixel inside a mask toward the mask's mean
feature: `F = alpha * mean_mask(F) + (1 - alpha) * F` (alpha = 0.8 in the paper). The paper does
not say what happens where masks overlap (SA-1B masks overlap a lot: parts inside wholes), so
two modes are offered:

- "vectorised" (default, order-independent): every mask mean is taken over the *unrefined*
  features; a pixel covered by k >= 1 masks moves alpha of the way toward the average of those
  k means, `F' = alpha * (1/k) * sum_j mean_j(F) + (1 - alpha) * F`; pixels in no mask keep F.
  For non-overlapping masks this is exactly the paper's formula. Two batched matmuls, no loop.
- "sequential" (the official training code): masks are applied one after the other, in
  place, in the given order; a later mask's mean is taken over features earlier masks already
  refined, and a pixel in k masks is refined k times. The result depends on mask order.

Empty masks (all False, e.g. padding) are ignored in both modes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, check_choice

REFINE_MODES = ("vectorised", "sequential")
SUPERPIXEL_METHODS = ("felzenszwalb", "slic")


def mask_refine(feats: torch.Tensor, masks: torch.Tensor, alpha: float = 0.8, mode: str = "vectorised") -> torch.Tensor:
    """Refine features per mask (see module doc). feats (B, C, H, W); masks (B, M, H, W) bool.

    Returns a new tensor (B, C, H, W) in feats' dtype; computed in float32 at least.
    """
    check_choice("mask refinement mode", mode, REFINE_MODES)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"mask alpha must be in [0, 1], got {alpha}")
    B, C, H, W = feats.shape
    if masks.dim() != 4 or masks.shape[0] != B or tuple(masks.shape[2:]) != (H, W):
        raise ConfigError(f"masks {tuple(masks.shape)} do not match features {tuple(feats.shape)}: need (B, M, H, W)")
    out_dtype = feats.dtype
    work = torch.promote_types(feats.dtype, torch.float32)
    f = feats.reshape(B, C, H * W).to(work)
    m = masks.reshape(B, masks.shape[1], H * W).to(work)  # (B, M, N)
    if m.shape[1] == 0:
        return feats.clone()
    if mode == "vectorised":
        area = m.sum(-1)  # (B, M)
        means = torch.bmm(m, f.transpose(1, 2)) / area.clamp_min(1.0).unsqueeze(-1)  # (B, M, C)
        cover = m.sum(1)  # (B, N) masks covering each pixel
        pooled = torch.bmm(means.transpose(1, 2), m) / cover.clamp_min(1.0).unsqueeze(1)  # (B, C, N)
        refined = alpha * pooled + (1.0 - alpha) * f
        out = torch.where(cover.unsqueeze(1) > 0, refined, f)
    else:
        out = f.clone()
        for j in range(m.shape[1]):
            mj = m[:, j]  # (B, N)
            area = mj.sum(-1)  # (B,)
            if not bool((area > 0).any()):
                continue
            mean = torch.einsum("bcn,bn->bc", out, mj) / area.clamp_min(1.0).unsqueeze(-1)  # (B, C)
            # inside the mask: out = alpha * mean + (1 - alpha) * out  ==  out + alpha * (mean - out)
            out = out + alpha * mj.unsqueeze(1) * (mean.unsqueeze(-1) - out)
    return out.reshape(B, C, H, W).to(out_dtype)


# -- unsupervised masks ------------------------------------------------------------------------
def labels_to_masks(labels: np.ndarray, max_masks: int | None = None) -> np.ndarray:
    """A (H, W) label map -> (M, H, W) bool masks, one per label, largest first."""
    ids, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    ids = ids[order]
    if max_masks is not None:
        ids = ids[:max_masks]
    return labels[None, :, :] == ids[:, None, None]


def superpixel_masks(image: np.ndarray, method: str = "felzenszwalb", max_masks: int | None = 150, **params) -> np.ndarray:
    """Masks for an image without annotations: (H, W, 3) uint8 RGB -> (M, H, W) bool, largest first.

    felzenszwalb: scale (default 100 * side / 224), sigma 0.8, min_size (default side^2 / 400).
    slic: n_segments 64, compactness 10, sigma 1. Parameters scale with the image so a 224 px
    image gives a few dozen segments, like object-part masks rather than pixel noise.
    """
    check_choice("superpixel method", method, SUPERPIXEL_METHODS)
    from skimage.segmentation import felzenszwalb, slic

    h, w = image.shape[:2]
    side = float(min(h, w))
    if method == "felzenszwalb":
        kw = {"scale": 100.0 * side / 224.0, "sigma": 0.8, "min_size": max(4, int(side * side / 400))}
        kw.update(params)
        labels = felzenszwalb(image, **kw)
    else:
        kw = {"n_segments": 64, "compactness": 10.0, "sigma": 1.0, "start_label": 0}
        kw.update(params)
        labels = slic(image, channel_axis=-1, **kw)
    return labels_to_masks(labels, max_masks)
