"""Frozen-backbone features on the fly, optionally cached on disk by content hash.

The cache key is the SHA-256 of the exact input tensor (shape, dtype, bytes) plus the
backbone's identity (name, weights source) and the autocast dtype, so a cached entry is
only reused for a bit-identical input: a second epoch with deterministic views (center crop,
no flip) reads features instead of running the backbone; random views simply miss.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


def backbone_identity(backbone: nn.Module) -> str:
    """A string naming the backbone and its weights (for cache keys and checkpoint metadata)."""
    name = getattr(backbone, "name", type(backbone).__name__)
    source = getattr(backbone, "weights_source", None)
    if source is None:  # an ad-hoc module: hash its weights
        h = hashlib.sha256()
        for k, v in sorted(backbone.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        source = "sha256:" + h.hexdigest()[:16]
    return f"{name}|{source}"


class FeatureExtractor:
    """images (B, 3, H, W) normalised -> raw backbone features (B, C, H/p, W/p), float32, no grad.

    The backbone input follows the pipeline's rule (`loftup.pipeline.backbone_input`; training
    sizes are patch multiples, so it is an identity there); precision: fp32, bf16 or fp16.
    """

    def __init__(self, backbone: nn.Module, cache_dir: str | Path | None = None, precision: str = "fp32"):
        from ..runtime.devices import autocast_dtype

        self.backbone = backbone.eval().requires_grad_(False)
        self.patch_size = int(getattr(backbone, "patch_size", 1))
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.precision = precision
        self.identity = backbone_identity(backbone) + f"|{autocast_dtype(precision)}"
        self.hits = 0
        self.misses = 0

    def _run(self, images: torch.Tensor, input_size: int | None = None) -> torch.Tensor:
        from ..runtime.devices import autocast
        from ..pipeline import backbone_input

        with torch.no_grad(), autocast(images.device, self.precision):
            return self.backbone(backbone_input(images, self.patch_size, input_size)).float()

    def key(self, image: torch.Tensor, input_size: int | None = None) -> str:
        h = hashlib.sha256(self.identity.encode())
        if input_size is not None:
            h.update(f"|input {int(input_size)}".encode())
        x = image.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(x.shape)).encode())
        h.update(x.numpy().tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    def __call__(self, images: torch.Tensor, input_size: int | None = None) -> torch.Tensor:
        """input_size: the backbone sees the images with this shorter side (the pipeline's rule);
        None: as they are (training sizes are patch multiples)."""
        if self.cache_dir is None:
            return self._run(images, input_size)
        from safetensors.torch import load_file, save_file

        from ..io import atomic_write

        keys = [self.key(x, input_size) for x in images]
        found: dict[int, torch.Tensor] = {}
        for i, k in enumerate(keys):
            p = self._path(k)
            if p.is_file():
                try:
                    found[i] = load_file(str(p))["feats"]
                except Exception:  # a damaged entry: recompute and overwrite
                    pass
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            feats = self._run(images[missing], input_size)
            for j, i in enumerate(missing):
                t = feats[j].detach().cpu().contiguous()
                found[i] = t
                atomic_write(self._path(keys[i]), lambda p, t=t: save_file({"feats": t}, str(p)))
        return torch.stack([found[i] for i in range(len(keys))]).to(images.device)
