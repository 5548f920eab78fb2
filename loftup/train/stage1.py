"""Stage 1: regress the mask-bicubic pseudo-GT.

Target: the channel-normed low-res features (the model's own `channelnorm`, without
gradient), bicubically upsampled to the training size S, then refined per mask
(`mask_refine`, alpha 0.8). Loss: mean squared error between the upsampler output and that
target, over batch, channels and pixels - or, with target_proj_dim > 0 (the released code),
in a fixed random projection of the channels to that many dimensions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .masks import mask_refine


@torch.no_grad()
def mask_bicubic_target(lr_normed: torch.Tensor, masks: torch.Tensor | None, size: tuple[int, int], alpha: float = 0.8,
                        mode: str = "vectorised") -> torch.Tensor:
    """Channel-normed lr features (B, C, h, w) + masks (B, M, H, W) -> pseudo-GT (B, C, H, W), float32."""
    up = F.interpolate(lr_normed.float(), size=size, mode="bicubic", align_corners=False)
    if masks is None or masks.shape[1] == 0:
        return up
    return mask_refine(up, masks.to(up.device), alpha, mode)


def random_projection(feat_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A fixed (C, d) Gaussian projection scaled by 1/sqrt(d), from a seed (same on every rank)."""
    g = torch.Generator().manual_seed(int(seed) + 104729)
    return torch.randn(feat_dim, out_dim, generator=g) / math.sqrt(out_dim)


class StatelessObjective:
    """An objective that keeps no state besides the model and optimiser (stage 1, LiFT)."""

    def after_step(self, trainer, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Stage1Objective(StatelessObjective):
    """Loss of one stage-1 batch: the model's output vs the mask-bicubic pseudo-GT."""

    name = "stage1"

    def __init__(self, cfg, feat_dim: int, device: torch.device):
        self.alpha = float(cfg.alpha)
        self.mode = cfg.refine_mode
        self.proj = random_projection(feat_dim, cfg.target_proj_dim, cfg.seed).to(device) if cfg.target_proj_dim > 0 else None

    def loss(self, trainer, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        image = batch["image"]
        lr = trainer.features(image)  # (B, C, h, w) raw backbone features
        target = mask_bicubic_target(trainer.core.channelnorm(lr), batch.get("masks"), tuple(image.shape[-2:]), self.alpha, self.mode)
        with trainer.autocast():
            pred = trainer.model(lr, image)  # (B, C, H, W)
        pred = pred.float()
        if self.proj is not None:
            pred = torch.einsum("bchw,cd->bdhw", pred, self.proj)
            target = torch.einsum("bchw,cd->bdhw", target, self.proj)
        loss = F.mse_loss(pred, target)
        return loss, {"masks": float(batch["masks"].flatten(2).any(-1).sum(1).float().mean()) if "masks" in batch else 0.0}
