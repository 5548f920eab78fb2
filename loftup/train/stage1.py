"""Stage 1: regress the mask-bicubic pseudo-GT (the paper), or an oracle target (ours).

Target "pseudo_gt": the channel-normed low-res features (the model's own `channelnorm`, without
gradient), bicubically upsampled to the training size S, then refined per mask
(`mask_refine`, alpha 0.8). Target "oracle" (the `offline` preset): the backbone's features
of the same image seen at `oracle_scale` x S, channel-normed the same way and resized
bilinearly to S - what the backbone itself sees at a higher resolution (offline, without
SA-1B's masks, superpixel masks make the pseudo-GT worse than bilinear on the mini benchmark;
docs/mini-benchmark.md). Loss: mean squared error between the upsampler output and the target,
over batch, channels and pixels - or, with target_proj_dim > 0 (the released code), in a fixed
random projection of the channels to that many dimensions. With `window` > 0 the loss covers
one random window x window of the output per step (the same window for the batch, drawn from
the seed and the step), which the model computes exactly from the window and its halo.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .masks import mask_refine


@torch.no_grad()
def mask_bicubic_target(lr_normed: torch.Tensor, masks: torch.Tensor | None, size: tuple[int, int], alpha: float = 0.8,
                        mode: str = "vectorised") -> torch.Tensor:
    """Channel-normed lr features (B, C, h, w) + masks (B, M, H, W) -> pseudo-GT (B, C, H, W), float32."""
    up = F.interpolate(lr_normed.float(), size=size, mode="bicubic", align_corners=False)
    if masks is None or masks.shape[1] == 0:
        return up
    return mask_refine(up, masks.to(up.device), alpha, mode)


@torch.no_grad()
def oracle_target(hr_normed: torch.Tensor, size: tuple[int, int], lr_normed: torch.Tensor | None = None,
                  blend: float = 0.0) -> torch.Tensor:
    """Channel-normed features of the image seen at a higher resolution (B, C, h', w') -> (B, C, H, W).

    blend > 0 (ours, `TrainConfig.target_blend`): (1 - blend) x that + blend x the channel-normed
    low-res features (B, C, h, w) resized bilinearly - the patch-level content that, mixed into a
    trained model's output, helps the mini benchmark's probes (docs/mini-benchmark.md)."""
    target = F.interpolate(hr_normed.float(), size=size, mode="bilinear", align_corners=False)
    if not blend:
        return target
    if lr_normed is None:
        raise ValueError("a blended oracle target needs the low-res features")
    smooth = F.interpolate(lr_normed.float(), size=size, mode="bilinear", align_corners=False)
    return (1 - blend) * target + blend * smooth


def window_box(size: tuple[int, int], window: int, seed: int, step: int) -> tuple[int, int, int, int]:
    """(top, left, window, window): a random window of an output of `size`, from (seed, step)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    H, W = size
    top = int(torch.randint(0, H - window + 1, (1,), generator=g))
    left = int(torch.randint(0, W - window + 1, (1,), generator=g))
    return top, left, int(window), int(window)


def tv_penalty(pred: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertically plus horizontally neighbouring pixels of (B, C, H, W):
    a smoothness term against the per-pixel noise a briefly trained model's outputs carry (ours; the
    authors' later training code adds a total-variation loss too)."""
    return (pred[..., 1:, :] - pred[..., :-1, :]).pow(2).mean() + (pred[..., 1:] - pred[..., :-1]).pow(2).mean()


def patch_consistency(pred: torch.Tensor, lr_normed: torch.Tensor, size: tuple[int, int],
                      box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """MSE between the output's mean over each low-res cell that lies wholly inside the window and
    that cell's channel-normed low-res feature (ours, `TrainConfig.lr_consistency`): a pull against
    outputs that blur features across patches and so lose what each patch says.

    pred: the output window (B, C, h, w) at `box` = (top, left, h, w) of an output of `size` (None:
    the whole output); lr_normed: (B, C, gh, gw), each cell size[0] / gh pixels square."""
    H, W = size
    gh, gw = lr_normed.shape[-2:]
    p = H // gh
    if H != p * gh or W != p * gw:
        raise ConfigError(f"lr_consistency needs an output of whole low-res cells: {H} x {W} is not a multiple of "
                          f"the {gh} x {gw} grid (train at a size that is a multiple of the backbone's patch)")
    top, left, h, w = box or (0, 0, H, W)
    r0, c0, r1, c1 = -(-top // p), -(-left // p), (top + h) // p, (left + w) // p  # cells wholly inside
    if r1 <= r0 or c1 <= c0:
        return pred.new_zeros(())
    cells = pred[:, :, r0 * p - top : r1 * p - top, c0 * p - left : c1 * p - left]
    return F.mse_loss(F.avg_pool2d(cells, p), lr_normed[:, :, r0:r1, c0:c1].float())


def stage1_loss(pred: torch.Tensor, target: torch.Tensor, tv_weight: float = 0.0,
                proj: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of float32 pred against target (both (B, C, H, W)), in the (C, d) projection `proj` if
    given, plus tv_weight x `tv_penalty` of pred itself (the features, not a projection)."""
    smooth = tv_weight * tv_penalty(pred) if tv_weight else 0.0
    if proj is not None:
        pred = torch.einsum("bchw,cd->bdhw", pred, proj)
        target = torch.einsum("bchw,cd->bdhw", target, proj)
    return F.mse_loss(pred, target) + smooth


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
        self.target = cfg.target
        self.oracle_scale = float(cfg.oracle_scale)
        self.window = int(cfg.window)
        self.tv_weight = float(cfg.tv_weight)
        self.blend = float(cfg.target_blend)
        self.consistency = float(cfg.lr_consistency)
        self.seed = int(cfg.seed)
        self.proj = random_projection(feat_dim, cfg.target_proj_dim, cfg.seed).to(device) if cfg.target_proj_dim > 0 else None

    def loss(self, trainer, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        image = batch["image"]
        size = tuple(image.shape[-2:])
        lr = trainer.features(image)  # (B, C, h, w) raw backbone features
        norm = trainer.core.channelnorm
        if self.target == "oracle":
            with torch.no_grad():
                hr = trainer.features(image, input_size=round(min(size) * self.oracle_scale))
                target = oracle_target(norm(hr), size, norm(lr), self.blend)
        else:
            target = mask_bicubic_target(norm(lr), batch.get("masks"), size, self.alpha, self.mode)
        box = window_box(size, self.window, self.seed, trainer.step) if self.window else None
        with trainer.autocast():
            pred = trainer.model(lr, image, window=box) if box else trainer.model(lr, image)  # (B, C, H, W) or the window
        pred = pred.float()
        if box:
            top, left, h, w = box
            target = target[:, :, top : top + h, left : left + w]
        loss = stage1_loss(pred, target, self.tv_weight, self.proj)
        if self.consistency:
            loss = loss + self.consistency * patch_consistency(pred, norm(lr), size, box)
        return loss, {"masks": float(batch["masks"].flatten(2).any(-1).sum(1).float().mean()) if "masks" in batch else 0.0}
