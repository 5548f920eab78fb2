"""Helpers for the eval tests: tiny backbones, oracle features, dataset writers (public layouts).

Every dataset is written by the test itself, small (32 x 32 images), in the same on-disk
layout as the real dataset. Images encode their ground truth in their colours, so an
*oracle* source that decodes the colours gives perfect features and must score perfectly.
(A module of its own, not conftest.py, so `from eval_fixtures import ...` is unambiguous.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from loftup.backbones import register_backbone
from loftup.pipeline import IMAGENET_MEAN, IMAGENET_STD

S = 32  # fixture image size

# colours of the classes in the fixtures (far apart, so decoding is exact)
PALETTE = np.array([(0, 0, 0), (250, 20, 20), (20, 250, 20), (20, 20, 250), (250, 250, 20)], dtype=np.uint8)


class TinyConvBackbone(nn.Module):
    """A fixed random conv 'backbone': patch-p strided conv + tanh + 1x1 conv -> (B, C, H/p, W/p)."""

    def __init__(self, embed_dim: int = 16, patch_size: int = 4, seed: int = 0, name: str = "tiny_conv"):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed_dim, self.patch_size, self.name = embed_dim, patch_size, name
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.patch = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.mix = nn.Conv2d(embed_dim, embed_dim, 1)
        with torch.no_grad():
            for m in (self.patch, self.mix):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / (m.weight[0].numel() ** 0.5))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)

    def forward(self, x):
        return self.mix(torch.tanh(self.patch(x)))


register_backbone("tiny_conv", lambda weights: TinyConvBackbone(16, 4, name="tiny_conv"))
register_backbone("tiny_conv_wide", lambda weights: TinyConvBackbone(32, 4, name="tiny_conv_wide"))


def denormalise(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(B, 3, H, W) normalised -> (B, H, W, 3) float in 0..255."""
    x = image * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return (x * 255).permute(0, 2, 3, 1)


class OracleSource:
    """'Perfect features' decoded from the fixture colours.

    kind="onehot": one-hot of the nearest PALETTE colour (seg, video); "rgb": the colour
    itself scaled to [0, 1] (depth in red, normals in rgb, alpha in grey).
    """

    pred_resize = "bilinear"

    def __init__(self, kind: str = "onehot", name: str = "oracle"):
        self.kind, self.name = kind, name
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.feat_dim = len(PALETTE) if kind == "onehot" else 3

    def features(self, image, out_size=None):
        rgb = denormalise(image)
        if self.kind == "onehot":
            d = ((rgb[..., None, :] - torch.tensor(PALETTE, dtype=torch.float32)) ** 2).sum(-1)  # (B, H, W, K)
            f = F.one_hot(d.argmin(-1), len(PALETTE)).permute(0, 3, 1, 2).float()
        else:
            f = (rgb / 255).permute(0, 3, 1, 2)
        if out_size is not None and tuple(out_size) != tuple(f.shape[-2:]):
            f = F.interpolate(f, size=tuple(out_size), mode="nearest")
        return f


def random_layout(rng: np.random.Generator, n_classes: int, size: int = S, block: int = 8) -> np.ndarray:
    """A label map of size x size made of block x block tiles of random classes."""
    tiles = rng.integers(0, n_classes, size=(size // block, size // block))
    return np.kron(tiles, np.ones((block, block), dtype=np.int64)).astype(np.int64)


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


# COCO-Stuff fine labels used by the fixture and the coarse class each maps to
COCO_FINE = (0, 2, 156, 123)  # person -> 9, car -> 11 (vehicle), sky-other -> 23, grass -> 22 (plant)
COCO_COARSE = (9, 11, 23, 22)
CITY_IDS = (7, 11, 23, 26)  # road -> 0, building -> 2, sky -> 10, car -> 13
CITY_TRAIN = (0, 2, 10, 13)


def write_cocostuff(root: Path, n_train: int = 6, n_val: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            lab = random_layout(rng, len(COCO_FINE))
            fine = np.array(COCO_FINE, dtype=np.uint8)[lab]
            fine[:4, :4] = 255  # an unlabelled corner
            rgb = PALETTE[lab + 1]
            stem = f"{i:012d}"
            # PNG, not JPEG: the colours must stay exact (the reader takes any image suffix)
            save_png(root / "images" / f"{split}2017" / f"{stem}.png", rgb)
            save_png(root / "annotations" / f"{split}2017" / f"{stem}.png", fine)
    return root


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def write_cityscapes(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            lab = random_layout(rng, len(CITY_IDS))
            ids = np.array(CITY_IDS, dtype=np.uint8)[lab]
            ids[-4:, -4:] = 0  # 'unlabeled' -> ignored
            stem = f"aachen_{i:06d}_000019"
            save_png(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", PALETTE[lab + 1])
            save_png(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", ids)
    return root


def depth_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rgb encoding depth in red, depth in metres 0.5..2.0) with a few invalid pixels."""
    tiles = rng.uniform(0.5, 2.0, size=(S // 8, S // 8))
    depth = np.kron(tiles, np.ones((8, 8))).astype(np.float32)
    depth = np.round(depth * 1000) / 1000
    red = np.round(depth / 2.0 * 255).astype(np.uint8)
    rgb = np.stack([red, np.full_like(red, 128), np.full_like(red, 64)], -1)
    depth[:2, :2] = 0
    return rgb, depth


def write_rgbd(root: Path, n: int = 10, seed: int = 0, with_normals: bool = True) -> Path:
    """Generic RGB-D layout; depth as 16-bit PNG in mm; normals .npy; colours encode the targets.

    Depth is decoded from red, normals from the full colour: for the normals probe the
    image *is* the normal map (rgb = (n + 1) / 2 * 255).
    """
    rng = np.random.default_rng(seed)
    for i in range(n):
        rgb, depth = depth_image(rng)
        save_png(root / "images" / f"{i:03d}.png", rgb)
        save_png(root / "depth" / f"{i:03d}.png", (depth * 1000).astype(np.uint16))
        if with_normals:
            v = rng.normal(size=(S // 8, S // 8, 3))
            v[..., 2] = -np.abs(v[..., 2]) - 0.5
            v /= np.linalg.norm(v, axis=-1, keepdims=True)
            normals = np.kron(v, np.ones((8, 8, 1))).astype(np.float32)
            enc = np.round((normals + 1) / 2 * 255).astype(np.uint8)
            normals = enc.astype(np.float32) / 127.5 - 1  # exactly what the colour encodes
            _mk(root / "normals")
            np.save(root / "normals" / f"{i:03d}.npy", normals)
            _mk(root / "normal_images")
            Image.fromarray(enc).save(root / "normal_images" / f"{i:03d}.png")
    return root


def write_navi(root: Path, seed: int = 0) -> Path:
    """NAVI layout: OBJECT/SCENE/{annotations.json, images/, depth/ (mm PNG)}."""
    rng = np.random.default_rng(seed)
    for obj in ("obj_a", "obj_b"):
        for scene in ("multiview_00_pixel", "wild_set"):
            d = root / obj / scene
            anns = []
            for i in range(3):
                rgb, depth = depth_image(rng)
                Image.fromarray(rgb).save(_mk(d / "images") / f"{i:03d}.jpg", quality=100)
                save_png(d / "depth" / f"{i:03d}.png", (depth * 1000).astype(np.uint16))
                anns.append({"object_id": obj, "filename": f"{i:03d}.jpg", "image_size": [S, S], "split": "val" if i == 2 else "train",
                             "camera": {"q": [1, 0, 0, 0], "t": [0, 0, 0], "focal_length": 40.0, "camera_model": "pixel"}})
            (d / "annotations.json").write_text(json.dumps(anns))
    return root


def write_davis(root: Path, videos: int = 2, frames: int = 6, seed: int = 0) -> Path:
    """DAVIS-2017 layout: 40 x 40 frames, object 1 moving down and object 2 moving right by 2 px a frame.

    Everything sits on even coordinates, so features at image / 2 see pure classes.
    """
    rng = np.random.default_rng(seed)
    H = W = 40
    names = [f"video{v}" for v in range(videos)]
    for name in names:
        y1 = 2 + 2 * int(rng.integers(0, 3))
        x2 = 2 + 2 * int(rng.integers(0, 3))
        for t in range(frames):
            lab = np.zeros((H, W), dtype=np.uint8)
            lab[y1 + 2 * t : y1 + 2 * t + 10, 26:36] = 1
            lab[28:38, x2 + 2 * t : x2 + 2 * t + 10] = 2
            img = Image.fromarray(lab, mode="P")
            img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
            img.save(_mk(root / "Annotations" / "480p" / name) / f"{t:05d}.png")
            save_png(root / "JPEGImages" / "480p" / name / f"{t:05d}.png", PALETTE[lab])
    _mk(root / "ImageSets" / "2017")
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return root


def write_matting(root: Path, n: int = 10, seed: int = 0) -> Path:
    """images/ + alpha/ (greyscale PNG); the image's grey level is the alpha."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        tiles = rng.uniform(0, 1, size=(S // 8, S // 8))
        alpha = np.kron(tiles, np.ones((8, 8)))
        a8 = np.round(alpha * 255).astype(np.uint8)
        save_png(root / "images" / f"{i:03d}.png", np.stack([a8] * 3, -1))
        save_png(root / "alpha" / f"{i:03d}.png", a8)
    return root
