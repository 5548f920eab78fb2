"""LiFT (Suri et al. 2024) as the LoftUp repository uses it: a small U-Net step that doubles the feature grid.

    lr_feats (B, C, h, w) raw backbone features, image (B, 3, H, W) normalised guidance (any size)
        -> (B, C, 2h, 2w): always exactly twice the low-res grid, whatever the image size.

The call order (features first) and the image branch's adaptive max pooling are those of
andrehuang/loftup upsamplers/lift.py; the canonical saksham-s/lift takes (image, tokens) and
pools with a patch-dependent MaxPool, which gives bit-identical numbers for patch 8 and 16
(tests/fixtures/baselines/FACTS_BASELINES.md section 3.5). State-dict keys are the official
ones, so the released LiFT checkpoints (a plain state dict, `module.` prefixes stripped) load
strictly.

Forward, with E = (C + 32) / 2 and F = C / 2 (C must be even):
    a = image_convs_1(image)            conv3x3 s2 + BN + ReLU, twice: H -> ceil(ceil(H/2)/2)
    a = adaptive_max_pool2d(a, (2h, 2w))   the only place the image size meets the feature grid
    b = image_convs_2(a)                 conv3x3 s2 + BN + ReLU: 2h -> h
    y = up1.up(cat[lr, b])               ConvTranspose2d(C+32 -> E, k 2, s 2): h -> 2h
    y = up1.conv_1(cat[y, a])            conv3x3 (no bias) + BN + ReLU, twice: -> F channels
    out = outc(y)                        conv1x1 F -> C
There is no residual, no normalisation of the features and no resize of the output; the
toolchain brings the output to the guidance size where a verb needs it
(`loftup.pipeline.fit_output`, bilinear).

BatchNorm makes train and eval mode differ (up to ~6 on the fixture, `case0_out_trainmode`):
`build_upsampler` and every inference verb put the module in eval mode.

`patch_size` is recorded in the config (training sizes must be multiples of 4 x patch for the
2x / 4x subsampled views of LiFT's objective); the forward does not depend on it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError, InputError
from .pooling import adaptive_pool2d, window_bound

IMAGE_DIM = 32  # channels of LiFT's image branch


@dataclass
class LiftConfig:
    """LiFT's hyper-parameters. feat_dim: C (even); patch_size: the backbone's patch (recorded)."""

    feat_dim: int = 384
    patch_size: int = 14
    backbone: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.feat_dim) < 2 or int(self.feat_dim) % 2:
            raise ConfigError(f"LiFT needs an even number of feature channels (its decoder halves them), got {self.feat_dim}")
        if int(self.patch_size) < 1:
            raise ConfigError(f"patch_size must be a positive integer, got {self.patch_size}")

    kind = "lift"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LiftConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown LiFT config keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "LiftConfig":
        return dataclasses.replace(self, **changes)


class DoubleConv(nn.Module):
    """(conv3x3 no bias -> BN -> ReLU) x 2, under the official name `double_conv`."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class LiftUp(nn.Module):
    """The decoder step `up1`: transposed conv (2x), then a DoubleConv on [upsampled, image branch]."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, mid_ch, 2, stride=2)
        self.conv_1 = DoubleConv(mid_ch + IMAGE_DIM, out_ch)


def _image_block(in_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, IMAGE_DIM, 3, stride=2, padding=1), nn.BatchNorm2d(IMAGE_DIM), nn.ReLU(inplace=True)]


class LiFT(nn.Module):
    """LiFT with the official keys (`up1.*`, `outc.*`, `image_convs_1.*`, `image_convs_2.*`)."""

    kind = "lift"
    output_at_guidance_size = False  # the output is the 2h x 2w grid
    min_lr_side = 1

    def __init__(self, cfg: LiftConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or LiftConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        self.cfg = cfg
        C = int(cfg.feat_dim)
        self.up1 = LiftUp(C + IMAGE_DIM, (C + IMAGE_DIM) // 2, C // 2)
        self.outc = nn.Conv2d(C // 2, C, 1)
        self.image_convs_1 = nn.Sequential(*_image_block(3), *_image_block(IMAGE_DIM))
        self.image_convs_2 = nn.Sequential(*_image_block(IMAGE_DIM))
        self.pool_window: int | None = None  # set by deploy(): bound for the traced adaptive pooling

    def check_inputs(self, lr_feats: torch.Tensor, image: torch.Tensor) -> None:
        C = self.cfg.feat_dim
        if not isinstance(lr_feats, torch.Tensor) or lr_feats.dim() != 4 or lr_feats.shape[1] != C:
            raise InputError(
                f"lr_feats must be a (B, {C}, h, w) tensor, got {tuple(getattr(lr_feats, 'shape', ()))}; "
                "use a LiFT trained for this backbone"
            )
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            raise InputError(f"image must be a (B, 3, H, W) tensor, got shape {tuple(getattr(image, 'shape', ()))}")
        if image.shape[0] != lr_feats.shape[0]:
            raise InputError(f"batch sizes differ: lr_feats {lr_feats.shape[0]}, image {image.shape[0]}")

    def image_branch(self, image: torch.Tensor, h, w) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b): image features pooled to (2h, 2w), and those convolved down to (h, w)."""
        a = self.image_convs_1(image)  # (B, 32, ceil(ceil(H/2)/2), ...)
        a = adaptive_pool2d(a, (2 * h, 2 * w), "max", self.pool_window)  # (B, 32, 2h, 2w)
        return a, self.image_convs_2(a)  # (B, 32, h, w)

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """lr_feats (B, C, h, w) raw features, image (B, 3, H, W) normalised -> (B, C, 2h, 2w)."""
        if not torch.compiler.is_exporting():
            self.check_inputs(lr_feats, image)
        h, w = lr_feats.shape[-2:]
        a, b = self.image_branch(image, h, w)
        y = self.up1.up(torch.cat([lr_feats, b], dim=1))  # (B, E, 2h, 2w), features first
        y = self.up1.conv_1(torch.cat([y, a], dim=1))  # (B, F, 2h, 2w)
        return self.outc(y)

    def deploy(self, max_image: int, min_lr: int) -> "LiFT":
        """Eval-mode copy that traces with symbolic sizes: the adaptive pooling gets a window bound
        for images up to `max_image` px and low-res grids of at least `min_lr` cells."""
        up = copy.deepcopy(self).eval().requires_grad_(False)
        n_max = -(-(-(-max_image // 2)) // 2)  # ceil(ceil(H / 2) / 2): the image branch's size
        up.pool_window = window_bound(n_max, 2 * max(1, min_lr))
        return up

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["LiFT", "LiftConfig"]
