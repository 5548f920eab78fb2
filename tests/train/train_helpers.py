"""Builders shared by the training tests: a tiny frozen backbone, photo folders and SA-1B files.

A uniquely named module: several test folders have a conftest.py, so `from conftest import ...`
resolves to whichever was imported first."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


class TinyBackbone(nn.Module):
    """A fixed random patch embedding + a 1x1 mixing layer: (B, 3, H, W) -> (B, C, H/p, W/p)."""

    def __init__(self, embed_dim: int = 16, patch_size: int = 7, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed_dim, self.patch_size = embed_dim, patch_size
        self.name, self.weights_source = f"tiny{embed_dim}p{patch_size}", f"random seed {seed}"
        self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.mix = nn.Conv2d(embed_dim, embed_dim, 1)
        with torch.no_grad():
            for m in (self.proj, self.mix):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / np.sqrt(m.weight[0].numel()))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.nn.functional.gelu(self.proj(x)))


def photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return img[..., :3].astype(np.uint8)


def write_photos(folder: Path, n: int = 8, side: int = 96, seed: int = 0) -> list[Path]:
    """n JPEG/PNG crops of the bundled scikit-image photos, side x (side * 4/3) px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = photo(PHOTOS[i % len(PHOTOS)])
        h, w = src.shape[:2]
        ch = int(min(h, w) * rng.uniform(0.5, 0.9))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - ch + 1)
        im = Image.fromarray(src[y : y + ch, x : x + ch]).resize((side * 4 // 3, side), Image.BICUBIC)
        p = folder / f"img_{i:03d}.{'jpg' if i % 2 == 0 else 'png'}"
        im.save(p)
        paths.append(p)
    return paths


def sa1b_json(image_name: str, masks: list[np.ndarray], image_id: int = 1) -> dict:
    """A per-image annotation file in SA-1B's public layout (COCO RLE, compressed counts)."""
    from loftup.train.rle import rle_encode

    h, w = masks[0].shape
    anns = []
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if len(xs) else [0, 0, 0, 0]
        anns.append({
            "id": i, "segmentation": rle_encode(m), "area": int(m.sum()), "bbox": bbox, "predicted_iou": 0.9,
            "point_coords": [[bbox[0] + 0.5, bbox[1] + 0.5]], "stability_score": 0.95, "crop_box": [0, 0, w, h],
        })
    return {"image": {"image_id": image_id, "width": w, "height": h, "file_name": image_name}, "annotations": anns}


def write_sa1b(folder: Path, stem: str, image: np.ndarray, masks: list[np.ndarray], quality: int = 95) -> tuple[Path, Path]:
    import json

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    jpg, js = folder / f"{stem}.jpg", folder / f"{stem}.json"
    Image.fromarray(image).save(jpg, quality=quality, subsampling=0)
    js.write_text(json.dumps(sa1b_json(jpg.name, masks)))
    return jpg, js


def load_script(name: str):
    """scripts/NAME.py imported as a module (the scripts folder is not a package)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
