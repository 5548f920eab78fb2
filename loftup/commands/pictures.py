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
    return titled_row(panels, titles)


def titled_row(panels: list[np.ndarray], titles) -> Image.Image:
    """uint8 (H, W, 3) pictures side by side, each with its title above, on white."""
    H = max(p.shape[0] for p in panels)
    pad, top = 4, 18
    canvas = Image.new("RGB", (sum(p.shape[1] for p in panels) + pad * (len(panels) - 1), H + top), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, title in zip(panels, titles):
        canvas.paste(Image.fromarray(panel), (x, top))
        draw.text((x + 2, 3), str(title)[: max(4, panel.shape[1] // 6)], fill="black")
        x += panel.shape[1] + pad
    return canvas


def shared_pca_panels(image: np.ndarray, feats: dict[str, torch.Tensor], size: tuple[int, int]) -> Image.Image:
    """input | one panel per upsampler, all in ONE PCA basis and colour range fitted on every panel's
    pixels together, so colours mean the same thing across panels. feats: name -> (C, h, w), shown
    at `size` (H, W); a low-res map is enlarged with nearest so its grid stays visible."""
    H, W = size
    shown = {name: F.interpolate(f.float()[None], size=(H, W), mode="nearest")[0] if tuple(f.shape[-2:]) != (H, W) else f.float()
             for name, f in feats.items()}
    pooled = torch.cat([f.flatten(1) for f in shown.values()], dim=1)  # (C, n_panels * H * W)
    mean, basis = pca_basis(pooled[:, :, None])
    proj = torch.einsum("cn,ck->nk", pooled - mean[:, None], basis)
    lo, hi = torch.quantile(proj[:: max(1, proj.shape[0] // 50000)], torch.tensor([0.01, 0.99]), dim=0)
    panels = [np.asarray(Image.fromarray(image).resize((W, H)))]
    panels += [project_rgb(f, mean, basis, lo, hi) for f in shown.values()]
    return titled_row(panels, ["input", *shown])


def attention_panels(image: np.ndarray, maps: torch.Tensor, pixels: list[tuple[int, int]], title: str = "") -> Image.Image:
    """One panel per pixel: the image, the pixel (a red cross), and a dot on every low-res token
    whose area grows with the pixel's attention weight on it. maps (n, h, w), rows summing to 1."""
    H, W = image.shape[:2]
    n, h, w = maps.shape
    panels = []
    for i, (py, px) in enumerate(pixels):
        canvas = Image.fromarray(image).convert("RGB")
        dim = Image.new("RGB", canvas.size, "black")
        canvas = Image.blend(canvas, dim, 0.45)
        draw = ImageDraw.Draw(canvas)
        weights = maps[i] / maps[i].max().clamp_min(1e-12)
        cell = min(H / h, W / w)
        for ty in range(h):
            for tx in range(w):
                r = 0.5 * cell * float(weights[ty, tx]) ** 0.5  # dot area proportional to the weight
                if r < 0.4:
                    continue
                cy, cx = (ty + 0.5) * H / h, (tx + 0.5) * W / w
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 215, 0))
        s = max(3, int(cell / 3))
        draw.line((px - s, py, px + s, py), fill=(255, 40, 40), width=2)
        draw.line((px, py - s, px, py + s), fill=(255, 40, 40), width=2)
        panels.append(np.asarray(canvas))
    return titled_row(panels, [f"{title} ({y},{x})" for y, x in pixels])


def mask_picture(masks: torch.Tensor) -> np.ndarray:
    """(M, H, W) bool masks -> uint8 (H, W, 3), one colour per mask (later masks on top), black elsewhere."""
    M, H, W = masks.shape
    g = torch.Generator().manual_seed(0)
    colours = (torch.rand(max(M, 1), 3, generator=g) * 200 + 55).to(torch.uint8)
    out = torch.zeros(H, W, 3, dtype=torch.uint8)
    for m in range(M):
        out[masks[m].bool()] = colours[m]
    return out.numpy()


def write_html(path, pictures: list, title: str) -> None:
    """One page that embeds the PNGs (base64), for a quick look in a browser; written atomically."""
    import base64
    import html
    from pathlib import Path

    from ..io import atomic_write

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"]
    for pic in pictures:
        data = base64.b64encode(Path(pic).read_bytes()).decode()
        parts.append(f"<h3>{html.escape(Path(pic).name)}</h3><img src='data:image/png;base64,{data}'>")
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(parts)))
