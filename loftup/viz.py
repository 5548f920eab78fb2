"""Pictures people would rather look at than read: PCA of features, side by side."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


def pca_basis(feats: torch.Tensor, k: int = 3, max_samples: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and top-k principal directions (C, k) of feats (C, H, W), from a pixel sample."""
    x = feats.float().flatten(1).T  # (HW, C)
    if x.shape[0] > max_samples:
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_samples]
        x = x[idx]
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, v[:k].T


def project_rgb(feats: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> np.ndarray:
    """feats (C, H, W) -> uint8 (H, W, 3) in a fixed PCA basis and colour range."""
    proj = torch.einsum("chw,ck->hwk", feats.float() - mean[:, None, None], basis)
    return ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1).mul(255).byte().numpy()


def pca_panel(image: np.ndarray, lr: torch.Tensor | None, hr: torch.Tensor, titles=("input", "low-res", "bilinear", "LoftUp")) -> Image.Image:
    """input | low-res (nearest) | bilinear | LoftUp, all in one PCA basis fitted on the LoftUp features.

    image uint8 (H, W, 3); lr (C, h, w) channel-normed low-res features (the space LoftUp is
    trained to output, see Stage 1), or None (an exported engine gives only its output): then
    input | LoftUp; hr (C, H, W) LoftUp features.
    """
    H, W = hr.shape[-2:]
    if lr is None:
        shown, titles = [hr], (titles[0], titles[-1])
    else:
        lr = lr.float()[None]
        nearest = F.interpolate(lr, size=(H, W), mode="nearest")[0]
        bilinear = F.interpolate(lr, size=(H, W), mode="bilinear", align_corners=False)[0]
        shown = [nearest, bilinear, hr]
    mean, basis = pca_basis(hr)
    proj = torch.einsum("chw,ck->hwk", hr.float() - mean[:, None, None], basis).reshape(-1, 3)
    lo, hi = torch.quantile(proj[:: max(1, proj.shape[0] // 50000)], torch.tensor([0.01, 0.99]), dim=0)
    panels = [np.asarray(Image.fromarray(image).resize((W, H)))]
    panels += [project_rgb(f, mean, basis, lo, hi) for f in shown]
    pad, top = 4, 18
    canvas = Image.new("RGB", (len(panels) * (W + pad) - pad, H + top), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        canvas.paste(Image.fromarray(panel), (i * (W + pad), top))
        draw.text((i * (W + pad) + 2, 3), title, fill="black")
    return canvas
