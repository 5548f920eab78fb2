"""Our SigLIP / SigLIP2 image trunk: timm's `vit_base_patch16_siglip_224` (FACTS_BACKBONES2 s3).

LoftUp's `siglip` and `siglip2` featurizers both keep open_clip's `.visual.trunk`, which for
ViT-B-16-SigLIP and ViT-B-16-SigLIP2 is the same timm architecture with different weights, so
one module serves both. Forward (`forward_features` in timm):

    tokens = conv16x16(image) (with bias), row-major, + pos_embed  (no cls token, no registers)
    12 x [x + attn(LN(x)); x + mlp(LN(x))]   LN eps 1e-6, exact GELU, no LayerScale
    LN(x) on every token  ->  (B, C, H/16, W/16)

The MAP attention-pool head (`attn_pool`) is in the checkpoints and in this module, so they
load strictly, but LoftUp never runs it (`forward_head` does, for completeness).

Input sizes: the official trunk accepts 224x224 only (open_clip builds it without
`dynamic_img_size`), which is what LoftUp feeds it. We accept any multiple of 16 and resize
the 14x14 position grid the way timm's own `dynamic_img_size` / `set_input_size` options do
(`resample_abs_pos_embed`): antialiased bicubic (a = -0.5), align_corners False, in float32,
rows first in the size, unchanged at 14x14. Written as interpolation matrices
(`loftup.backbones.posembed`) so an exported graph keeps dynamic sizes. One known difference:
for a grid exactly one cell wide and a changed height, PyTorch's antialiased kernel (2.13,
CPU) copies the first output row to every row; we return the true antialiased resize.

Normalisation: SigLIP was trained on (x - 0.5) / 0.5, but LoftUp feeds it ImageNet-normalised
images (its upsamplers were trained that way). Nothing is normalised inside this module.

State-dict keys are timm's (bare, as in timm's own checkpoints); `siglip_state_dict` also
accepts open_clip checkpoints (`visual.trunk.` prefix, text tower dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loftup.backbones.posembed import aa_bicubic_matrix, resize_grid
from loftup.backbones.vit import Mlp, PatchEmbed, PreNormBlock, init_vit_weights
from loftup.errors import ConfigError, InputError

SIGLIP_MEAN = (0.5, 0.5, 0.5)  # SigLIP's own normalisation (open_clip preprocess)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class SigLIPConfig:
    """Hyper-parameters of a SigLIP image trunk. Defaults are ViT-B/16 at 224 (SigLIP and SigLIP2)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224  # the position grid is img_size / patch_size = 14 per side
    attn_pool: bool = True  # MAP head parameters (unused by LoftUp, present in checkpoints)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


SIGLIP_B16 = SigLIPConfig()


class MAPHead(nn.Module):
    """timm `AttentionPoolLatent` (latent_len 1): one learned query attends over all tokens."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # rows [k | v], heads contiguous inside each
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C) -> pooled (B, C)."""
        B, N, C = x.shape
        H, d = self.num_heads, C // self.num_heads
        q = self.q(self.latent.expand(B, -1, -1)).reshape(B, 1, H, d).transpose(1, 2)  # (B, H, 1, d)
        k, v = self.kv(x).reshape(B, N, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, C)
        o = self.proj(o)
        o = o + self.mlp(self.norm(o))
        return o[:, 0]


class SigLIPViT(nn.Module):
    """SigLIP image trunk. Input (B, 3, H, W), H and W multiples of 16, normalised by the caller."""

    def __init__(self, cfg: SigLIPConfig = SIGLIP_B16) -> None:
        super().__init__()
        if cfg.embed_dim % cfg.num_heads:
            raise ConfigError(f"embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}")
        self.cfg = cfg
        C, M = cfg.embed_dim, cfg.grid_size
        # Registration order gives timm's state_dict order.
        self.pos_embed = nn.Parameter(torch.zeros(1, M * M, C))
        self.patch_embed = PatchEmbed(cfg.patch_size, C)
        self.blocks = nn.ModuleList(PreNormBlock(C, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(C, eps=1e-6)
        self.attn_pool = MAPHead(C, cfg.num_heads, cfg.mlp_hidden) if cfg.attn_pool else None

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """timm-style random init (used for `weights=None` / "random")."""
        init_vit_weights(self, generator)
        with torch.no_grad():
            nn.init.normal_(self.pos_embed, std=self.cfg.embed_dim**-0.5, generator=generator)
            w = self.patch_embed.proj.weight
            bound = 1 / math.sqrt(w[0].numel())
            nn.init.uniform_(w, -bound, bound, generator=generator)
            nn.init.zeros_(self.patch_embed.proj.bias)
            if self.attn_pool is not None:
                nn.init.trunc_normal_(self.attn_pool.latent, std=self.cfg.embed_dim**-0.5, generator=generator)

    def position_embedding(self, rows, cols) -> torch.Tensor:
        """The position embedding added for a rows x cols patch grid: (1, rows * cols, C).

        Antialiased bicubic resize of the native grid (see the module doc); exact at the
        native grid. rows/cols may be symbolic sizes while exporting.
        """
        M = self.cfg.grid_size
        pos = self.pos_embed
        grid = pos.reshape(M, M, pos.shape[-1])
        out = resize_grid(grid, aa_bicubic_matrix(rows, M, pos.device), aa_bicubic_matrix(cols, M, pos.device))
        return out.reshape(1, rows * cols, pos.shape[-1]).to(pos.dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        p = self.cfg.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected an image batch (B, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2] % p or x.shape[-1] % p or x.shape[-2] < p or x.shape[-1] < p:
            raise InputError(
                f"image size {tuple(x.shape[-2:])} is not a positive multiple of the patch size {p}; "
                "resize it (see loftup.backbones.image_to_tensor)"
            )

    def forward_tokens(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tokens after the last block (`prenorm`, (B, N, C)) and after the final norm (`tokens`)."""
        self._check_input(x)
        p = self.cfg.patch_size
        rows, cols = x.shape[-2] // p, x.shape[-1] // p
        t = self.patch_embed(x)  # (B, N, C)
        t = t + self.position_embedding(rows, cols)
        for blk in self.blocks:
            t = blk(t)
        return {"prenorm": t, "tokens": self.norm(t)}

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """The MAP-pooled image embedding (B, C) of normed tokens (unused by LoftUp)."""
        if self.attn_pool is None:
            raise ConfigError("this SigLIP trunk was built without its attn_pool head (attn_pool=False)")
        return self.attn_pool(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features (B, C, H/16, W/16), as LoftUp's SigLIP featurizer returns them."""
        tokens = self.forward_tokens(x)["tokens"]
        B, _, H, W = x.shape
        p = self.cfg.patch_size
        return tokens.transpose(1, 2).reshape(B, self.cfg.embed_dim, H // p, W // p)


_OPEN_CLIP_PREFIX = "visual.trunk."


def siglip_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk's entries of a SigLIP checkpoint, in timm's bare layout.

    Accepts timm state dicts (bare keys), open_clip ones (`visual.trunk.*`, the text tower and
    `logit_scale` / `logit_bias` dropped) and either under a `module.` / `model.` prefix.
    """
    sd = dict(sd)
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if any(k.startswith(_OPEN_CLIP_PREFIX) for k in sd):
        return {k[len(_OPEN_CLIP_PREFIX) :]: v for k, v in sd.items() if k.startswith(_OPEN_CLIP_PREFIX)}
    if sd and all(k.startswith("trunk.") for k in sd):  # an open_clip `visual` state dict
        sd = {k[len("trunk.") :]: v for k, v in sd.items()}
    return sd
