"""FeatUp's JBU upsampler (`JBUStack`, Fu et al. 2024): four learned joint-bilateral 2x stages.

    lr_feats (B, C, h, w) raw backbone features (h, w >= 2), image (B, 3, H, W) normalised guidance
        -> (B, C, 16h, 16w): always 16x the low-res grid; the guidance size only sets what each
           stage sees (every stage average-pools the full guidance to its own output size).

State-dict keys are the official ones (`up1..up4.*`, `fixup_proj.1.*`), no buffers, so a bare
JBUStack state dict loads strictly; the released Lightning checkpoints hold them as
`state_dict["upsampler.<key>"]` (see loftup.model.kinds). `use_norm=True` adds FeatUp's
ChannelNorm (`channelnorm.norm.*`, from `model.1.norm.*`) in front; the default is the
no-norm model that LoftUp compares with, applied to raw features.

One stage (`JBUStage`, official JBULearnedRange), guidance g (B, 3, H=2h, W=2w):
1. spatial kernel S[7i+j] = exp(-(d_i^2 + d_j^2) / (2 sigma^2)), d = linspace(-1, 1, 7) in float32;
2. range kernel: P = range_proj(g) (B, 32, H, W); for each of the 49 taps the logit
   T * sum_c P_pad[c, y+i, x+j] * P[c, y, x] with T = exp(range_temp) clamped to [1e-4, 1e4],
   P_pad = reflect_pad(P, 3); softmax over the taps;
3. K = R * S / clamp(sum_taps(R * S), 1e-7); K += 0.1 * fixup_proj(cat[K, g]) (not renormalised);
4. out = adaptive_conv(reflect_pad(bicubic(source, (H, W)), 3), K) (loftup.kernels.adaptive_conv).
After four stages: out = s16 + 0.1 * fixup_proj(s16).

Where this differs from FeatUp's code, and why: FeatUp forms the range logits from an Unfold
of P (a 49 x 32 x H x W tensor, 1.6 GB per image at a 448 px output) and an einsum; here each
tap's logits are a channel sum of two shifted views, so nothing larger than 49 x H x W is
held, and the graph exports to ONNX. The sums then round differently (<= 1e-6 on the fixtures,
tolerance 1e-5). The adaptive convolution itself is exact to FeatUp's operator (bit-identical
on the fixture's stored kernels and sources).

Dropout2d layers (0.1 in every stage, 0.2 before the last conv) make train-mode outputs random:
`build_upsampler` and every inference verb use eval mode.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, InputError, check_choice
from ..kernels.adaptive_conv import tap_dots
from ..kernels.conv_dispatch import CONV_BACKENDS, AdaptiveConvDispatcher
from .layers import ChannelNorm
from .pooling import adaptive_pool2d

RADIUS = 3
DIAMETER = 2 * RADIUS + 1
KEY_DIM = 32
STAGES = 4


@dataclass
class JbuConfig:
    """FeatUp JBU hyper-parameters. feat_dim: C; use_norm: FeatUp's ChannelNorm in front (the
    released use_norm checkpoint); conv_backend: adaptive convolution, auto | torch | triton."""

    feat_dim: int = 384
    use_norm: bool = False
    conv_backend: str = "auto"
    conv_budget_mb: int = 16
    backbone: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    kind = "featup_jbu"

    def __post_init__(self) -> None:
        check_choice("adaptive-conv backend", self.conv_backend, CONV_BACKENDS)
        if int(self.feat_dim) < 1:
            raise ConfigError(f"feat_dim must be a positive integer, got {self.feat_dim}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JbuConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown FeatUp-JBU config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "JbuConfig":
        return dataclasses.replace(self, **changes)


class JBUStage(nn.Module):
    """One learned-range joint bilateral 2x stage (official `JBULearnedRange`, keys `range_temp`,
    `sigma_spatial`, `range_proj.{0,3}`, `fixup_proj.{0,3}`)."""

    def __init__(self, conv: AdaptiveConvDispatcher, guidance_dim: int = 3):
        super().__init__()
        taps = DIAMETER * DIAMETER
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, KEY_DIM, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(KEY_DIM, KEY_DIM, 1)
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(taps + guidance_dim, taps, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(taps, taps, 1)
        )
        self.conv = conv

    def spatial_kernel(self, device) -> torch.Tensor:
        """(1, 49, 1, 1): the Gaussian over tap offsets, float32 as in FeatUp."""
        d = torch.linspace(-1, 1, DIAMETER, device=device)  # fixed length 7: traceable
        y, x = torch.meshgrid(d, d, indexing="ij")
        dist = (y.square() + x.square()).reshape(1, DIAMETER * DIAMETER, 1, 1)
        return torch.exp(-dist / (2 * self.sigma_spatial**2))

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """(B, 49, H, W) softmax over taps of the temperature-scaled key similarities."""
        H, W = guidance.shape[-2:]
        proj = self.range_proj(guidance)  # (B, 32, H, W)
        padded = F.pad(proj, [RADIUS] * 4, mode="reflect")
        logits = tap_dots(padded, proj, DIAMETER)  # (B, 49, H, W), tap 7i + j; no 49 x 32 x H x W unfold
        temp = self.range_temp.exp().clamp_min(1e-4).clamp_max(1e4)
        return F.softmax(temp * logits, dim=1)

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 7, 7): the per-pixel filter handed to the adaptive convolution."""
        B, _, H, W = guidance.shape
        k = self.range_kernel(guidance) * self.spatial_kernel(guidance.device)
        k = k / k.sum(1, keepdim=True).clamp(1e-7)
        k = k + 0.1 * self.fixup_proj(torch.cat([k, guidance], dim=1))
        return k.permute(0, 2, 3, 1).reshape(B, H, W, DIAMETER, DIAMETER)

    def padded_source(self, source: torch.Tensor, size) -> torch.Tensor:
        """Bicubic upsampling of the source to the guidance size, reflect-padded by 3."""
        hr = F.interpolate(source, size=tuple(size), mode="bicubic", align_corners=False)
        return F.pad(hr, [RADIUS] * 4, mode="reflect")

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """source (B, C, h, w), guidance (B, 3, 2h, 2w) -> (B, C, 2h, 2w)."""
        kernel = self.kernel(guidance)
        return self.conv(self.padded_source(source, guidance.shape[-2:]), kernel.to(source.dtype))


class FeatUpJBU(nn.Module):
    """FeatUp's JBUStack with the official keys; optional FeatUp ChannelNorm in front (use_norm)."""

    kind = "featup_jbu"
    output_at_guidance_size = False  # the output is the 16h x 16w grid
    min_lr_side = 2  # reflect padding by 3 at the first stage needs 2h > 3

    def __init__(self, cfg: JbuConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or JbuConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        self.cfg = cfg
        self.conv = AdaptiveConvDispatcher(cfg.conv_backend, int(cfg.conv_budget_mb) * 2**20)
        if cfg.use_norm:
            self.channelnorm = ChannelNorm(cfg.feat_dim)
        for k in range(1, STAGES + 1):
            setattr(self, f"up{k}", JBUStage(self.conv))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(cfg.feat_dim, cfg.feat_dim, 1))

    @property
    def stages(self) -> list[JBUStage]:
        return [getattr(self, f"up{k}") for k in range(1, STAGES + 1)]

    def check_inputs(self, lr_feats: torch.Tensor, image: torch.Tensor) -> None:
        C = self.cfg.feat_dim
        if not isinstance(lr_feats, torch.Tensor) or lr_feats.dim() != 4 or lr_feats.shape[1] != C:
            raise InputError(
                f"lr_feats must be a (B, {C}, h, w) tensor, got {tuple(getattr(lr_feats, 'shape', ()))}; "
                "use a FeatUp JBU trained for this backbone"
            )
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            raise InputError(f"image must be a (B, 3, H, W) tensor, got shape {tuple(getattr(image, 'shape', ()))}")
        if image.shape[0] != lr_feats.shape[0]:
            raise InputError(f"batch sizes differ: lr_feats {lr_feats.shape[0]}, image {image.shape[0]}")
        if min(lr_feats.shape[-2:]) < self.min_lr_side:
            raise InputError(
                f"FeatUp's JBU needs low-res features of at least 2x2 cells (reflect padding by 3 at its first 2x stage), "
                f"got {tuple(lr_feats.shape[-2:])}; use a larger image"
            )

    def stage_guidance(self, image: torch.Tensor, h, w, stage: int) -> torch.Tensor:
        """The full guidance average-pooled to stage `stage`'s output (2h x 2w of its input)."""
        return adaptive_pool2d(image, (2 * h, 2 * w), "avg")

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """lr_feats (B, C, h, w) raw features, image (B, 3, H, W) normalised -> (B, C, 16h, 16w)."""
        if not torch.compiler.is_exporting():
            self.check_inputs(lr_feats, image)
        x = self.channelnorm(lr_feats) if self.cfg.use_norm else lr_feats
        for k, stage in enumerate(self.stages):
            h, w = x.shape[-2:]
            x = stage(x, self.stage_guidance(image, h, w, k))  # (B, C, 2h, 2w)
        return self.fixup_proj(x) * 0.1 + x

    def lr_space(self, lr_feats: torch.Tensor) -> torch.Tensor:
        """The low-res features in the space the upsampler works in (after the ChannelNorm, if any)."""
        return self.channelnorm(lr_feats) if self.cfg.use_norm else lr_feats

    def deploy(self, max_image: int = 0, min_lr: int = 0) -> "FeatUpJBU":
        """Eval-mode copy for export: the PyTorch adaptive convolution, whose traced form is one
        scan over the taps (loftup.kernels.adaptive_conv). The size bounds (used by LiFT's deploy)
        are not needed here: the traced average pooling works for any sizes. Parameters are frozen:
        the ONNX exporter cannot decompose a scan over tensors that require grad."""
        return self.with_backend("torch").eval().requires_grad_(False)

    def with_backend(self, backend: str) -> "FeatUpJBU":
        """Copy whose adaptive convolution runs on `backend` (auto | torch | triton)."""
        up = copy.deepcopy(self)
        conv = AdaptiveConvDispatcher(backend, int(self.cfg.conv_budget_mb) * 2**20)
        up.conv = conv
        for stage in up.stages:
            stage.conv = conv
        up.cfg = up.cfg.replace(conv_backend=backend)
        return up

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["FeatUpJBU", "JBUStage", "JbuConfig"]
