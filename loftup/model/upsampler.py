"""The LoftUp model: channel norm on the low-res features + the coordinate cross-attention upsampler.

    lr_feats (B, C, h, w) raw backbone features, image (B, 3, H, W) ImageNet-normalised guidance
        -> hr_feats (B, C, H, W), in a layer-normed feature space.

State-dict keys are those of the official hub wrapper (`upsampler.*`, `channelnorm.*`), so a
released `pytorch_model.bin` loads with strict=True (see loftup.model.checkpoint).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..kernels import AttentionDispatcher
from ..profiling import stage
from .config import LoftUpConfig
from .layers import (
    CATransformer,
    ChannelNorm,
    ImplicitFeaturizer,
    LayerNorm2d,
    MinMaxScaler,
    Rope2d,
    coord_grid,
)

HALO = 2  # two 3x3 convs: an output pixel sees a 5x5 neighbourhood of Fourier features


def image_features(up: "LoftUpUpsampler", image, lo, hi, ys, xs) -> torch.Tensor:
    """Min-max scaling (extrema given), Fourier features and their channel norm of an image window:
    (B, 3, H, W) -> (B, 203, H, W). One function so `torch.compile` can fuse it into one pass
    (loftup.model.deploy.compile_stages); channels-last output when the upsampler runs so."""
    x = up.fourier_feat[1](MinMaxScaler.apply(image, lo, hi), ys, xs)
    if up.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return up.first_conv[0](x)


class LoftUpUpsampler(nn.Module):
    """The upsampler proper (official `LoftUp`): expects channel-normed low-res features."""

    def __init__(self, cfg: LoftUpConfig):
        super().__init__()
        self.cfg = cfg
        C, D, k = cfg.feat_dim, cfg.token_dim, cfg.image_conv_kernel
        self.dispatcher = AttentionDispatcher(cfg.attn_backend, cfg.attn_budget_mb * 2**20)
        # registration order = the official state-dict order
        if cfg.lr_pe == "sine":
            self.lr_pe = ImplicitFeaturizer(False, cfg.lr_n_freqs)
        elif cfg.lr_pe == "learnable":  # ablation; a bare Parameter, as in the official code
            self.lr_pe = nn.Parameter(torch.randn(1, C, cfg.lr_pe_size, cfg.lr_pe_size) * 0.02)
        self.fourier_feat = nn.Sequential(MinMaxScaler(cfg.minmax == "batch"), ImplicitFeaturizer(True, cfg.n_freqs))
        self.first_conv = nn.Sequential(
            ChannelNorm(cfg.image_feat_dim),
            nn.Conv2d(cfg.image_feat_dim, D, k, padding=k // 2),
            nn.BatchNorm2d(D),
            nn.ReLU(),
            nn.Conv2d(D, D, k, padding=k // 2),
            nn.BatchNorm2d(D),
            nn.ReLU(),
        )
        self.final_conv = nn.Sequential(nn.Conv2d(D, C, 1), LayerNorm2d(C))
        rope = Rope2d(cfg.head_dim, cfg.lr_pe_size) if cfg.lr_pe == "rope" else None
        self.ca_transformer = CATransformer(D, C, cfg.num_blocks, cfg.num_heads, self.dispatcher, rope)
        # Run-time variants (loftup.model.deploy): Fourier features written channels-last, and
        # compiled stage functions ("features") that replace the eager ones.
        self.channels_last = False
        self.compiled: dict = {}

    @property
    def halo(self) -> int:
        return HALO if self.cfg.image_conv_kernel == 3 else 0

    # -- key/value path ------------------------------------------------------------------
    def kv_tokens(self, lr: torch.Tensor) -> torch.Tensor:
        """Channel-normed lr (B, C, h, w) -> key/value tokens (B, h*w, D), row-major."""
        if self.cfg.lr_pe == "sine":
            lr = torch.cat([lr, self.lr_pe(lr)], dim=1)
        elif self.cfg.lr_pe == "learnable":
            lr = lr + F.interpolate(self.lr_pe, size=lr.shape[-2:], mode="bicubic", align_corners=False).to(lr.dtype)
        return lr.flatten(2).transpose(1, 2)

    # -- query path ----------------------------------------------------------------------
    def _queries_and_out(self, image, lo, hi, ys, xs, kv, k_pos, crop) -> torch.Tensor:
        """Fourier feats of a window of the image (scaled by lo/hi) -> convs -> crop halo -> attention -> head."""
        with stage("fourier features"):
            x = self.compiled.get("features", image_features)(self, image, lo, hi, ys, xs)
        with stage("convs"):
            for layer in list(self.first_conv)[1:]:  # [0], the channel norm, is in image_features
                x = layer(x)
        top, left, h, w = crop
        x = x[:, :, top : top + h, left : left + w]
        B, D = x.shape[:2]
        q_pos = None
        if k_pos is not None:
            yy, xx = torch.meshgrid(ys[top : top + h], xs[left : left + w], indexing="ij")
            q_pos = torch.stack([yy.flatten(), xx.flatten()], dim=1)
        q = self.ca_transformer(x.flatten(2).transpose(1, 2), kv, q_pos, k_pos)  # (B, h*w, D), no copy when channels-last
        with stage("output head"):
            return self.final_conv(q.transpose(1, 2).reshape(B, D, h, w))

    def use_tiling(self, H: int, W: int) -> bool:
        if self.cfg.tiling == "never" or self.training:
            return False
        return self.cfg.tiling == "always" or H * W > self.cfg.tile_threshold

    def forward(self, lr: torch.Tensor, image: torch.Tensor, tile: bool | None = None) -> torch.Tensor:
        """lr (B, C, h, w) channel-normed features, image (B, 3, H, W) -> (B, C, H, W).

        tile: None = decide from the config; True/False forces (tiling is exact, eval mode only).
        """
        B, _, H, W = image.shape
        with stage("min-max"):
            lo, hi = self.fourier_feat[0].extrema(image)  # over the whole image (or batch), before any tiling
        with stage("kv projection"):
            kv = self.ca_transformer.project_kv(self.kv_tokens(lr))
        k_pos = None
        if self.cfg.lr_pe == "rope":
            hy, wx = torch.meshgrid(coord_grid(lr.shape[2], lr.device), coord_grid(lr.shape[3], lr.device), indexing="ij")
            k_pos = torch.stack([hy.flatten(), wx.flatten()], dim=1)
        ys, xs = coord_grid(H, image.device), coord_grid(W, image.device)
        tile = self.use_tiling(H, W) if tile is None else tile
        if tile and self.training:
            raise ConfigError("tiled inference needs eval mode (BatchNorm uses batch statistics in train mode)")
        if not tile:
            return self._queries_and_out(image, lo, hi, ys, xs, kv, k_pos, (0, 0, H, W))
        out = None
        t, halo = self.cfg.tile_size, self.halo
        for y0 in range(0, H, t):
            for x0 in range(0, W, t):
                y1, x1 = min(y0 + t, H), min(x0 + t, W)
                wy0, wx0 = max(y0 - halo, 0), max(x0 - halo, 0)
                wy1, wx1 = min(y1 + halo, H), min(x1 + halo, W)
                piece = self._queries_and_out(
                    image[:, :, wy0:wy1, wx0:wx1], lo, hi, ys[wy0:wy1], xs[wx0:wx1], kv, k_pos,
                    (y0 - wy0, x0 - wx0, y1 - y0, x1 - x0),
                )
                if out is None:
                    out = piece.new_empty(B, piece.shape[1], H, W)
                out[:, :, y0:y1, x0:x1] = piece
        return out


class LoftUp(nn.Module):
    """Hub-compatible wrapper: `channelnorm` on raw low-res features, then `upsampler`.

    lr_feats (B, C, h, w) raw backbone patch features; image (B, 3, H, W) normalised guidance
    image whose size sets the output size -> (B, C, H, W).
    """

    kind = "loftup"  # loftup.model.kinds
    output_at_guidance_size = True
    min_lr_side = 1

    def __init__(self, cfg: LoftUpConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or LoftUpConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        self.cfg = cfg
        self.upsampler = LoftUpUpsampler(cfg)
        self.channelnorm = ChannelNorm(cfg.feat_dim)

    def check_inputs(self, lr_feats: torch.Tensor, image: torch.Tensor) -> None:
        C = self.cfg.feat_dim
        if not isinstance(lr_feats, torch.Tensor) or lr_feats.dim() != 4:
            raise InputError(f"lr_feats must be a (B, {C}, h, w) tensor, got shape {tuple(getattr(lr_feats, 'shape', ()))}")
        if lr_feats.shape[1] != C:
            raise InputError(
                f"lr_feats has {lr_feats.shape[1]} channels but this upsampler was built for {C}; "
                "use a checkpoint trained for this backbone"
            )
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            raise InputError(f"image must be a (B, 3, H, W) tensor, got shape {tuple(getattr(image, 'shape', ()))}")
        if image.shape[0] != lr_feats.shape[0]:
            raise InputError(f"batch sizes differ: lr_feats {lr_feats.shape[0]}, image {image.shape[0]}")
        if min(image.shape[2:]) < 1 or min(lr_feats.shape[2:]) < 1:
            raise InputError("lr_feats and image need at least one pixel in each dimension")
        if not (lr_feats.is_floating_point() and image.is_floating_point()):
            raise InputError("lr_feats and image must be floating-point tensors")

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, tile: bool | None = None) -> torch.Tensor:
        self.check_inputs(lr_feats, image)
        with stage("lr channel norm"):
            lr = self.channelnorm(lr_feats)
        return self.upsampler(lr, image, tile=tile)

    @torch.no_grad()
    def upsample(self, lr_feats: torch.Tensor, image: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Inference helper: resize the guidance image to `size` (bilinear) and upsample to it."""
        if size is not None and tuple(image.shape[-2:]) != tuple(size):
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return self(lr_feats, image)

    @property
    def attention_backend(self) -> AttentionDispatcher:
        return self.upsampler.dispatcher

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
