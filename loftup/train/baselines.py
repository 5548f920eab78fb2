"""The other kinds' own training objectives, on the same loop (data, checkpoints, resume, DDP, AMP).

`loftup train --upsampler lift|featup_jbu` picks one of these instead of LoftUp's stage 1 / 2
(`objective_for`). Both train from scratch against a frozen backbone; hyper-parameter defaults
are each method's own (presets.KIND_PRESETS). Sources: tests/fixtures/baselines/FACTS_BASELINES.md
sections 3.6 and 4.5.

LiFT (`LiftObjective`, canonical train_lift.py): self-distillation across scales. For a training
image I (S x S, S a multiple of 4 x patch): f1 = backbone(I), f2 = backbone(I[::2, ::2]),
f3 = backbone(I[::4, ::4]) (plain strided subsampling: these are LiFT's training views, the
pipeline input at another size, not a backbone-input resize); loss = d(LiFT(f2, I[::2, ::2]), f1)
+ d(LiFT(f3, I[::4, ::4]), f2) with d = mean(1 - cosine) over positions (`lift_loss`: cosine,
l1 or l2). The canonical code distils layer-11 "key" descriptors; here the backbone's own output
features are both input and target (what LiFT upsamples in this toolchain).

FeatUp JBU (`FeatUpObjective`, featup/train_jbu_upsampler.py + configs/jbu_upsampler.yaml):
multi-view reconstruction. hr = JBU(lr, I) brought to the image size (`pipeline.fit_output`,
bilinear: FeatUp resizes 16h -> 224 the same way); for each of `jitters` (5) random jitters
(reflect pad `jitter_pad`, with p 0.5 a bilinear zoom U[1, `jitter_zoom`], a random crop back to
S, with p 0.5 a horizontal flip), applied alike to I and hr:
    lr_jit = backbone(jittered I); down = AttentionDownsampler(jittered hr) (p x p patches,
    stride p: the backbone grid); P = `proj_dim` (30) random unit vectors per image;
    s = ScaleNet(lr_jit) = exp(conv1x1(lr_jit) + 0.1).clamp_min(1e-4);
    rec = mean((P.lr_jit - P.down)^2 / (2 s^2) + log s) / jitters
plus `crf_weight` (0.001) x SampledCRFLoss on `crf_samples` (1000) random pixels of the first
jitter (guidance: the un-jittered I; features: the projected jittered hr). The downsampler and
ScaleNet are trained with the JBU (NAdam 1e-3) and saved in the run's state file; the gradient
norm is clipped to 1e-4 for the first 10 steps. With use_norm the JBU's ChannelNorm (not
optimised) normalises lr and lr_jit, as FeatUp's does. FeatUp backpropagates each jitter
separately; here the jitters' losses are summed into one backward (the same gradient; memory
holds the five graphs). The CRF's pairwise squared distances are computed as |a|^2 + |b|^2 -
2 a.b (no (B, D, n, n) difference tensor).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..pipeline import fit_output
from .stage1 import StatelessObjective

LIFT_LOSSES = ("cosine", "l1", "l2")


def _check_views(cfg, patch: int, factor: int, what: str) -> None:
    for s in cfg.sizes:
        if s % (factor * patch):
            good = max(factor * patch, s // (factor * patch) * factor * patch)
            raise ConfigError(f"{what}: training size {s} must be a multiple of {factor} x the patch size ({factor * patch}); "
                              f"use --size {good}")


# -- LiFT -------------------------------------------------------------------------------------
class LiftObjective(StatelessObjective):
    """LiFT's self-supervised 2x reconstruction across scales (module doc)."""

    name = "lift"

    def __init__(self, cfg, trainer):
        _check_views(cfg, trainer.patch_size, 4, "LiFT trains on 2x and 4x subsampled views")
        self.loss_name = cfg.lift_loss

    def distance(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        if self.loss_name == "cosine":  # CosineEmbeddingLoss(target +1) over every position
            return (1.0 - F.cosine_similarity(pred, target, dim=1)).mean()
        return F.l1_loss(pred, target) if self.loss_name == "l1" else F.mse_loss(pred, target)

    def loss(self, trainer, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        image = batch["image"]  # (B, 3, S, S)
        half, quarter = image[:, :, ::2, ::2].contiguous(), image[:, :, ::4, ::4].contiguous()
        f1, f2, f3 = trainer.features(image), trainer.features(half), trainer.features(quarter)
        with trainer.autocast():
            gen1 = trainer.model(f2, half)  # (B, C, S/p, S/p)
            gen2 = trainer.model(f3, quarter)  # (B, C, S/2p, S/2p)
        l1, l2 = self.distance(gen1, f1), self.distance(gen2, f2)
        return l1 + l2, {"distill": float((l1 + l2).detach())}


# -- FeatUp JBU ---------------------------------------------------------------------------------
class ScaleNet(nn.Module):
    """FeatUp's predicted uncertainty: exp(conv1x1(lr) + 0.1), at least 1e-4. (B, C, h, w) -> (B, 1, h, w)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Conv2d(dim, 1, 1)
        with torch.no_grad():
            self.net.weight.mul_(0.1)
            self.net.bias.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.net(x) + 0.1).clamp_min(1e-4)


def gaussian_blur(x: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Depthwise Gaussian blur with reflect borders (what FeatUp's kornia call does)."""
    r = size // 2
    t = torch.arange(size, device=x.device, dtype=x.dtype) - r
    g = torch.exp(-(t * t) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(x.shape[1], 1, size, size)
    return F.conv2d(F.pad(x, [r] * 4, mode="reflect"), k, groups=x.shape[1])


class AttentionDownsampler(nn.Module):
    """FeatUp's learned downsampler: per p x p patch (stride p), a softmax over its pixels of
    (dropout -> linear) logits times a learned p x p weight plus a learned p x p bias; 20% of the
    output locations get zero logits (a uniform average before w, b). (B, C, H, W) -> (B, C, H/p, W/p)."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.kernel = int(kernel)
        self.attention_net = nn.Sequential(nn.Dropout(0.2), nn.Linear(dim, 1))
        self.w = nn.Parameter(torch.ones(kernel, kernel) + 0.01 * torch.randn(kernel, kernel))
        self.b = nn.Parameter(torch.zeros(kernel, kernel) + 0.01 * torch.randn(kernel, kernel))

    def forward(self, hr: torch.Tensor) -> torch.Tensor:
        B, C, H, W = hr.shape
        k = self.kernel
        h, w = H // k, W // k
        x = gaussian_blur(hr)[:, :, : h * k, : w * k]
        patches = x.reshape(B, C, h, k, w, k).permute(0, 2, 4, 3, 5, 1).reshape(B, h, w, k * k, C)
        logits = self.attention_net(patches).squeeze(-1)  # (B, h, w, k*k)
        keep = (torch.rand(B, h, w, 1, device=hr.device) > 0.2).to(logits.dtype)
        attn = F.softmax(logits * keep * self.w.flatten() + self.b.flatten(), dim=-1)
        return torch.einsum("bhwpc,bhwp->bchw", patches, attn)


def sampled_crf_loss(guidance: torch.Tensor, feats: torch.Tensor, n: int, alpha: float = 0.1, beta: float = 0.15,
                     gamma: float = 0.005, w1: float = 10.0, w2: float = 3.0, shift: float = 0.0) -> torch.Tensor:
    """FeatUp's SampledCRFLoss: a bilateral (position + colour) and a spatial kernel weight the squared
    feature distances between `n` random pixels. guidance (B, 3, H, W), feats (B, D, H, W)."""

    def sqdist(x: torch.Tensor) -> torch.Tensor:  # (B, D, n) -> (B, n, n), without a (B, D, n, n) tensor
        sq = x.square().sum(1)
        return (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * x.transpose(1, 2) @ x).clamp_min(0)

    H, W = guidance.shape[-2:]
    ys = torch.randint(0, H, (n,), device=feats.device)
    xs = torch.randint(0, W, (n,), device=feats.device)
    coords = torch.stack([ys / H, xs / W]).unsqueeze(0)  # (1, 2, n)
    coord_d = sqdist(coords.float())  # (1, n, n)
    guide_d = sqdist(guidance[:, :, ys, xs].float())
    sim = w1 * torch.exp(-coord_d / (2 * alpha) - guide_d / (2 * beta)) + w2 * torch.exp(-coord_d / (2 * gamma)) - shift
    return (sqdist(feats[:, :, ys, xs].float()) * sim).mean()


def sample_jitter(height: int, width: int, pad: int, max_zoom: float) -> dict[str, Any]:
    """One random jitter (FeatUp's sample_transform), drawn from torch's RNG (so a resumed run repeats it)."""
    flip = bool(torch.rand(()) > 0.5)
    zoom = 1.0 + float(torch.rand(())) * (max_zoom - 1.0) if bool(torch.rand(()) > 0.5) else 1.0
    top = int(torch.randint(0, int((height + 2 * pad) * zoom) - height + 1, ()))
    left = int(torch.randint(0, int((width + 2 * pad) * zoom) - width + 1, ()))
    return {"zoom": zoom, "top": top, "left": left, "flip": flip}


def apply_jitter(x: torch.Tensor, pad: int, jitter: dict[str, Any]) -> torch.Tensor:
    """Reflect pad, zoom (bilinear), crop back to the input size, flip: for the image and its features alike."""
    H, W = x.shape[-2:]
    x = F.pad(x, [pad] * 4, mode="reflect")
    if jitter["zoom"] > 1.0:
        x = F.interpolate(x, scale_factor=jitter["zoom"], mode="bilinear", align_corners=False)
    x = x[:, :, jitter["top"] : jitter["top"] + H, jitter["left"] : jitter["left"] + W]
    return torch.flip(x, [3]) if jitter["flip"] else x


class FeatUpObjective:
    """FeatUp's multi-view reconstruction for the JBU, with its downsampler and ScaleNet (module doc)."""

    name = "featup_jbu"

    def __init__(self, cfg, trainer):
        p = trainer.patch_size
        _check_views(cfg, p, 1, "FeatUp's downsampler maps p x p patches onto the backbone grid")
        for s in cfg.sizes:
            if s <= cfg.jitter_pad:
                raise ConfigError(f"training size {s} must exceed --set jitter_pad={cfg.jitter_pad} (reflect padding); use a larger --size")
        self.cfg = cfg
        self.extra = nn.ModuleDict({
            "downsampler": AttentionDownsampler(trainer.feat_dim, p),
            "scale_net": ScaleNet(trainer.feat_dim),
        }).to(trainer.device)

    def parameters(self):
        return list(self.extra.parameters())

    def _lr_space(self, trainer, lr: torch.Tensor) -> torch.Tensor:
        return trainer.core.lr_space(lr)

    def loss(self, trainer, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        image = batch["image"]  # (B, 3, S, S)
        B, _, S, S2 = image.shape
        lr = trainer.features(image)  # raw backbone features; the JBU applies its own ChannelNorm, if any
        self.extra.train()
        total = rec_sum = crf = 0.0
        for i in range(cfg.jitters):
            with trainer.autocast():
                hr = fit_output(trainer.model(lr, image), (S, S2)).float()  # FeatUp: 16h -> S, bilinear
            jitter = sample_jitter(S, S2, cfg.jitter_pad, cfg.jitter_zoom)
            with torch.no_grad():
                lr_jit = self._lr_space(trainer, trainer.features(apply_jitter(image, cfg.jitter_pad, jitter)))
            hr_jit = apply_jitter(hr, cfg.jitter_pad, jitter)
            proj = torch.randn(B, lr.shape[1], cfg.proj_dim, device=image.device)
            proj = proj / proj.square().sum(1, keepdim=True).sqrt()  # unit vectors
            down = self.extra["downsampler"](hr_jit)  # (B, C, h, w)
            scales = self.extra["scale_net"](lr_jit)  # (B, 1, h, w)
            diff = torch.einsum("bchw,bcd->bdhw", lr_jit - down, proj)
            rec = (diff.square() / (2 * scales**2) + scales.log()).mean() / cfg.jitters
            loss = rec
            if i == 0 and cfg.crf_weight > 0:
                crf_term = sampled_crf_loss(image, torch.einsum("bchw,bcd->bdhw", hr_jit, proj), cfg.crf_samples)
                crf = float(crf_term.detach())
                loss = loss + cfg.crf_weight * crf_term
            total = loss if isinstance(total, float) else total + loss
            rec_sum += float(rec.detach())
        return total, {"distill": rec_sum, "crf": crf}

    def grad_clip(self, step: int, default: float) -> float:
        """FeatUp clips the gradient norm to 1e-4 for its first 10 steps."""
        return 1e-4 if step < 10 else default

    def after_backward(self, trainer) -> None:
        """Average the downsampler's and ScaleNet's gradients over the ranks (DDP covers the JBU)."""
        if not trainer.ctx.distributed:
            return
        import torch.distributed as dist

        for p in self.extra.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(trainer.ctx.world)

    def after_step(self, trainer, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"extra": {k: v.detach().clone() for k, v in self.extra.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.extra.load_state_dict(state["extra"])


def objective_for(cfg, trainer):
    """The training objective of `cfg.upsampler` (not LoftUp, whose stages live in stage1 / stage2)."""
    if cfg.upsampler == "lift":
        return LiftObjective(cfg, trainer)
    if cfg.upsampler == "featup_jbu":
        return FeatUpObjective(cfg, trainer)
    raise ConfigError(f"no baseline objective for upsampler {cfg.upsampler!r}")


__all__ = ["AttentionDownsampler", "FeatUpObjective", "LiftObjective", "ScaleNet", "apply_jitter", "objective_for",
           "sample_jitter", "sampled_crf_loss"]
