"""OpenAI CLIP ViT visual tower producing MaskCLIP patch features (FACTS.md section 6).

This is how LoftUp's `loftup_clip` featurizer sees CLIP ViT-B/16: all residual blocks but the
last run normally; the last block is replaced by its value path (v = ln_1(x) Wv + bv, then
out_proj; no attention, no residual, no MLP); the class token is dropped; ln_post and `proj`
map every patch token to the joint embedding space. Output: (B, output_dim, H/16, W/16).

State-dict keys are those of an OpenAI CLIP state dict's `visual.` part, without the prefix
(`clip_visual_state_dict` strips it and drops the text tower).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loftup.errors import InputError


@dataclass(frozen=True)
class CLIPVisionConfig:
    """CLIP visual tower hyper-parameters. Defaults are OpenAI ViT-B/16."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    patch_size: int = 16
    input_resolution: int = 224  # 14x14 position grid
    output_dim: int = 512

    @property
    def grid_size(self) -> int:
        return self.input_resolution // self.patch_size


CLIP_VITB16 = CLIPVisionConfig()
CLIP_TINY = CLIPVisionConfig(width=64, layers=2, heads=2, output_dim=32)  # the parity fixture


class LayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm: always computed in float32 (eps 1e-5), cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters and maths, written with SDPA so it exports to ONNX."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows [q | k | v]
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        return self.out_proj(x.transpose(1, 2).reshape(B, N, C))

    def value_path(self, x: torch.Tensor) -> torch.Tensor:
        """MaskCLIP: out_proj(x Wv^T + bv) for every token, without attention."""
        C = x.shape[-1]
        v = F.linear(x, self.in_proj_weight[2 * C :], self.in_proj_bias[2 * C :])
        return self.out_proj(v)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, 4 * width),
                gelu=QuickGELU(),
                c_proj=nn.Linear(4 * width, width),
            )
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads) for _ in range(cfg.layers)
        )


class CLIPVisionTower(nn.Module):
    """CLIP visual tower with MaskCLIP patch output. Input (B, 3, H, W), CLIP-normalised."""

    def __init__(self, cfg: CLIPVisionConfig = CLIP_VITB16) -> None:
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        scale = W**-0.5
        # Registration order gives the OpenAI state_dict order.
        self.conv1 = nn.Conv2d(3, W, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(W))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + cfg.grid_size**2, W))
        self.ln_pre = LayerNorm(W)
        self.transformer = Transformer(cfg)
        self.ln_post = LayerNorm(W)
        self.proj = nn.Parameter(scale * torch.randn(W, cfg.output_dim))

    @property
    def embed_dim(self) -> int:
        return self.cfg.output_dim

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """OpenAI-style random init (used for `weights="random"`)."""
        W = self.cfg.width
        with torch.no_grad():
            nn.init.normal_(self.class_embedding, std=W**-0.5, generator=generator)
            nn.init.normal_(self.positional_embedding, std=0.01, generator=generator)
            nn.init.normal_(self.proj, std=W**-0.5, generator=generator)
            nn.init.normal_(self.conv1.weight, std=0.02, generator=generator)
            for blk in self.transformer.resblocks:
                nn.init.normal_(blk.attn.in_proj_weight, std=W**-0.5, generator=generator)
                blk.attn.in_proj_bias.zero_()
                nn.init.normal_(blk.attn.out_proj.weight, std=W**-0.5, generator=generator)
                blk.attn.out_proj.bias.zero_()
                nn.init.normal_(blk.mlp.c_fc.weight, std=(2 * W) ** -0.5, generator=generator)
                blk.mlp.c_fc.bias.zero_()
                nn.init.normal_(blk.mlp.c_proj.weight, std=W**-0.5, generator=generator)
                blk.mlp.c_proj.bias.zero_()
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def pos_embed_for(self, height: int, width: int) -> torch.Tensor:
        """Positional embedding for an (height, width) image: (1 + h0*w0, width), cls row first.

        Same rule as DINOv2's plain variant: bicubic with scale ((h0 + 0.1)/14, (w0 + 0.1)/14),
        skipped for a 14x14 grid from a square image. Unlike DINOv2, no float32 cast is forced.
        """
        p, M = self.cfg.patch_size, self.cfg.grid_size
        h0, w0 = height // p, width // p
        pos = self.positional_embedding
        if h0 * w0 == M * M and height == width:
            return pos
        grid = pos[1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)  # (1, W, M, M)
        grid = F.interpolate(
            grid,
            scale_factor=((h0 + 0.1) / M, (w0 + 0.1) / M),
            mode="bicubic",
            align_corners=False,
            recompute_scale_factor=False,
        )
        assert grid.shape[-2:] == (h0, w0)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h0 * w0, -1)], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """MaskCLIP patch features (B, output_dim, H/16, W/16)."""
        p = self.cfg.patch_size
        B, _, H, W = x.shape
        t = self.trunk(x)
        last = self.transformer.resblocks[-1]
        t = last.attn.value_path(last.ln_1(t))  # (B, 1 + N, width)
        t = self.ln_post(t[:, 1:]) @ self.proj  # (B, N, output_dim)
        return t.reshape(B, H // p, W // p, -1).permute(0, 3, 1, 2)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, width) after every block but the last (class token first), the input
        of the last block; ProxyCLIP (loftup.eval.ovseg) replaces that block's attention."""
        p = self.cfg.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected an image batch (B, 3, H, W), got shape {tuple(x.shape)}")
        B, _, H, W = x.shape
        if H % p or W % p or H < p or W < p:
            raise InputError(
                f"image size {(H, W)} is not a positive multiple of the patch size {p}; "
                "resize it (see loftup.pipeline.backbone_input)"
            )
        t = self.conv1(x).flatten(2).transpose(1, 2)  # (B, N, width), patches row-major
        cls = self.class_embedding.to(t.dtype).expand(B, 1, -1)
        t = torch.cat([cls, t], dim=1)
        t = t + self.pos_embed_for(H, W).to(t.dtype)
        t = self.ln_pre(t)
        for blk in self.transformer.resblocks[:-1]:
            t = blk(t)
        return t


def clip_visual_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The visual tower's entries of a CLIP state dict, without the `visual.` prefix.

    Accepts a full OpenAI CLIP state dict (the text tower is dropped), a `visual.`-only one,
    or one without the prefix; a `module.`/`model.` wrapper prefix is removed first.
    """
    for prefix in ("module.", "model.", "clip."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if any(k.startswith("visual.") for k in sd):
        return {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    return dict(sd)

