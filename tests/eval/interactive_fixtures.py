"""Tiny interactive-segmentation datasets in their public layouts, and a tiny ViT backbone.

Scenes are dark, noisy backgrounds with bright squares (the objects); every writer uses the
folder names and file kinds RITM's readers expect (module doc of loftup.eval.interactive_data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from loftup.backbones import register_backbone
from loftup.backbones.vit import DinoViT, ViTConfig
from loftup.pipeline import IMAGENET_MEAN, IMAGENET_STD

S = 32


def tiny_vit(weights: str = "random"):
    """A 2-block DinoViT, 16 channels, patch 4, grid 8 x 8 at 32 px (fixed random weights)."""
    model = DinoViT(ViTConfig(embed_dim=16, depth=2, num_heads=2, patch_size=4, img_size=32))
    model.init_weights(torch.Generator().manual_seed(0))
    model.mean, model.std, model.name = IMAGENET_MEAN, IMAGENET_STD, "tiny_vit"
    return model


register_backbone("tiny_vit", tiny_vit)


def scene(rng: np.random.Generator, n_objects: int = 1, h: int = S, w: int = S) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, instance map 0 / 1..n): bright squares of 10..14 px that do not overlap."""
    image = rng.integers(0, 50, size=(h, w, 3)).astype(np.uint8)
    inst = np.zeros((h, w), dtype=np.int64)
    for k in range(1, n_objects + 1):
        for _ in range(100):
            s = int(rng.integers(10, 15))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            if not inst[y : y + s, x : x + s].any():
                break
        inst[y : y + s, x : x + s] = k
        image[y : y + s, x : x + s] = rng.integers(200, 256, size=(s, s, 3))
    return image, inst


def trimap(obj: np.ndarray) -> np.ndarray:
    """GrabCut-style mask: 255 object, 128 a 1 px band just outside it, 0 background."""
    from scipy.ndimage import binary_dilation

    out = np.where(obj, 255, 0).astype(np.uint8)
    out[binary_dilation(obj) & ~obj] = 128
    return out


def _save(path: Path, array: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)


def write_grabcut(root: Path, n: int = 3, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, inst = scene(rng, h=S, w=S + 8)
        _save(root / "data_GT" / f"img{i}.bmp", image)  # GrabCut ships .jpg / .bmp images, .bmp masks
        _save(root / "boundary_GT" / f"img{i}.bmp", trimap(inst == 1))
    return root


def write_berkeley(root: Path, n: int = 3, seed: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, inst = scene(rng)
        _save(root / "images" / f"{100 + i}.png", image)
        _save(root / "masks" / f"{100 + i}.png", trimap(inst == 1))
    return root


def write_davis(root: Path, n: int = 3, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, inst = scene(rng, h=S, w=S + 16)
        _save(root / "img" / f"bear_{i:05d}.jpg", image, quality=95)
        colour = np.zeros((*inst.shape, 3), dtype=np.uint8)
        colour[inst == 1] = (128, 0, 0)  # DAVIS masks are palette / colour PNGs: any non-zero is the object
        _save(root / "gt" / f"bear_{i:05d}.png", colour)
    return root


def write_sbd(root: Path, n_train: int = 8, n_val: int = 2, seed: int = 4) -> Path:
    """SBD: img/*.jpg (here lossless-ish at quality 95), inst/*.mat (GTinst.Segmentation first), train.txt, val.txt.

    Each image holds two squares, a 3 x 3 speck (under RITM's 80 px) and a thin diagonal
    (under 8% of its box): the last two must be dropped by the reader.
    """
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        names = []
        for i in range(n):
            name = f"2008_{split}_{i:04d}"
            image, inst = scene(rng, n_objects=2)
            inst[0:3, 29:32] = 3  # speck
            for d in range(20):
                if inst[12 + d // 2, d] == 0:
                    inst[12 + d // 2, d] = 4  # diagonal (area 20 > 80? no: dropped by area and by ratio)
            _save(root / "img" / f"{name}.jpg", image, quality=95)
            (root / "inst").mkdir(parents=True, exist_ok=True)
            savemat(root / "inst" / f"{name}.mat", {"GTinst": {"Segmentation": inst.astype(np.uint8),
                                                               "Categories": np.arange(1, 5, dtype=np.uint8)[:, None]}})
            names.append(name)
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root
