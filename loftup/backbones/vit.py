"""Our own DINOv2 vision transformer, in the official `DinoVisionTransformer` state-dict layout.

Covers ViT-S/B/L/G with patch 14, with and without 4 register tokens. The released
`dinov2_*_pretrain.pth` files load into `DinoViT` with `strict=True`, and the forward pass
follows the official code step by step (FACTS.md section 4), including its position-embedding
interpolation, so outputs agree with the official model to float32 rounding (about 4e-6):

- plain variants: bicubic, `scale_factor=((h0 + 0.1) / 37, (w0 + 0.1) / 37)`, no antialias;
- register variants: bicubic, `size=(h0, w0)`, antialias;
- both in float32; no interpolation at all for a 37x37 grid from a square 518x518 image.

Also converts the Hugging Face `Dinov2Model` key layout to the official one and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loftup.errors import CheckpointError, ConfigError, InputError


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of one DINOv2 ViT. Defaults are ViT-S/14 without registers."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    ffn: str = "mlp"  # "mlp" (fc1/fc2, GELU) or "swiglu" (w12/w3, ViT-G)
    patch_size: int = 14
    img_size: int = 518  # the position grid is img_size / patch_size = 37 per side
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def ffn_hidden(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":
            # Official SwiGLUFFNFused: two thirds of the MLP width, rounded up to a multiple of 8.
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    def with_registers(self, num_register_tokens: int = 4) -> "ViTConfig":
        """The hub's `_reg` variant: registers, antialiased interpolation to an exact size."""
        return ViTConfig(
            **{
                **self.__dict__,
                "num_register_tokens": num_register_tokens,
                "interpolate_antialias": True,
                "interpolate_offset": 0.0,
            }
        )


# The hub factories' settings (dinov2/hub/backbones.py); `.with_registers()` gives `_reg`.
VITS14 = ViTConfig(embed_dim=384, depth=12, num_heads=6)
VITB14 = ViTConfig(embed_dim=768, depth=12, num_heads=12)
VITL14 = ViTConfig(embed_dim=1024, depth=24, num_heads=16)
VITG14 = ViTConfig(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu")


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C), patches row-major


def rope_rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of the last `len(sin)` tokens of x (B, heads, N, d); the tokens
    before them (cls, registers) pass unchanged. sin / cos are (n, d), halves repeated
    ([a, b, a, b]), and rotate element i with element i + d/2 (DINOv3's `rope_apply`). The
    rotation runs in float32 whatever x's dtype (as the official code), the result has x's dtype.
    """
    n = sin.shape[-2]
    prefix, patches = x[..., : x.shape[-2] - n, :], x[..., x.shape[-2] - n :, :].float()
    first, second = patches.chunk(2, dim=-1)
    rotated = patches * cos + torch.cat([-second, first], dim=-1) * sin
    return torch.cat([prefix, rotated.to(x.dtype)], dim=-2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused `qkv` Linear (rows [q | k | v]) and `proj`.

    qkv_layer builds the qkv Linear (DINOv3 passes its masked-k-bias Linear); forward's `rope`
    is an optional (sin, cos) pair applied to q and k (`rope_rotate`).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qkv_layer=nn.Linear) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = qkv_layer(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, N, C = x.shape
        # qkv rows are [q | k | v], each split into contiguous head slices.
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        if rope is not None:
            q, k = rope_rotate(q, *rope), rope_rotate(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v)  # scale d^-0.5, as the official code
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward: silu(x W1) * (x W2), then W3. DINOv2's ViT-G fuses W1 and W2 as `w12`
    (fused=True); DINOv3 keeps them as `w1` and `w2`."""

    def __init__(self, dim: int, hidden: int, fused: bool = True) -> None:
        super().__init__()
        if fused:
            self.w12 = nn.Linear(dim, 2 * hidden)
        else:
            self.w1 = nn.Linear(dim, hidden)
            self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "w12"):
            x1, x2 = self.w12(x).chunk(2, dim=-1)
        else:
            x1, x2 = self.w1(x), self.w2(x)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """The DINOv2 / DINOv3 block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).

    State-dict keys norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.*, ls2.gamma (the official
    `Block` / `SelfAttentionBlock`); layerscale=False drops ls1 / ls2 (identity, no keys).
    """

    def __init__(self, dim: int, num_heads: int, mlp: nn.Module, *, eps: float = 1e-6, layerscale: bool = True,
                 qkv_bias: bool = True, qkv_layer=nn.Linear) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, qkv_layer)
        self.ls1 = LayerScale(dim) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = mlp
        self.ls2 = LayerScale(dim) if layerscale else nn.Identity()

    @classmethod
    def dinov2(cls, cfg: "ViTConfig") -> "Block":
        ffn = SwiGLUFFN if cfg.ffn == "swiglu" else Mlp
        return cls(cfg.embed_dim, cfg.num_heads, ffn(cfg.embed_dim, cfg.ffn_hidden))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PreNormBlock(nn.Module):
    """timm's plain ViT block (SigLIP, RADIO): x + attn(norm1(x)), then x + mlp(norm2(x)).

    No LayerScale; LayerNorm eps 1e-6, exact GELU. State-dict keys norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2 (timm `Block`).
    """

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """timm-style random init of every Linear (trunc normal 0.02, zero bias) and LayerNorm."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class DinoViT(nn.Module):
    """DINOv2 ViT. Input: (B, 3, H, W), ImageNet-normalised, H and W multiples of 14."""

    def __init__(self, cfg: ViTConfig = VITS14) -> None:
        super().__init__()
        if cfg.ffn not in ("mlp", "swiglu"):
            raise ConfigError(f"unknown ViT ffn {cfg.ffn!r}; choose 'mlp' or 'swiglu'")
        if cfg.embed_dim % cfg.num_heads:
            raise ConfigError(
                f"embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}"
            )
        self.cfg = cfg
        C, R = cfg.embed_dim, cfg.num_register_tokens
        # Registration order gives the official state_dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid_size**2, C))
        if R:
            self.register_tokens = nn.Parameter(torch.zeros(1, R, C))
        # Only used for masked-image training; kept so the official key set loads strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, C))
        self.patch_embed = PatchEmbed(cfg.patch_size, C)
        self.blocks = nn.ModuleList(Block.dinov2(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(C, eps=1e-6)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Official-style random init (truncated normal 0.02, cls 1e-6, LayerScale 1.0)."""
        with torch.no_grad():
            nn.init.trunc_normal_(self.pos_embed, std=0.02, generator=generator)
            nn.init.normal_(self.cls_token, std=1e-6, generator=generator)
            if self.cfg.num_register_tokens:
                nn.init.normal_(self.register_tokens, std=1e-6, generator=generator)
            self.mask_token.zero_()
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02, generator=generator)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, LayerScale):
                    m.gamma.fill_(1.0)
            w = self.patch_embed.proj.weight
            bound = 1 / math.sqrt(w[0].numel())
            nn.init.uniform_(w, -bound, bound, generator=generator)
            nn.init.uniform_(self.patch_embed.proj.bias, -bound, bound, generator=generator)

    def pos_embed_for(self, height: int, width: int) -> torch.Tensor:
        """Position embedding for an (height, width) image: (1, 1 + h0*w0, C), cls row first."""
        cfg = self.cfg
        h0, w0 = height // cfg.patch_size, width // cfg.patch_size
        M = cfg.grid_size
        if h0 * w0 == M * M and height == width:
            return self.pos_embed
        dtype = self.pos_embed.dtype
        pos = self.pos_embed.float()  # the official code always interpolates in float32
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        grid = patch_pos.reshape(1, M, M, -1).permute(0, 3, 1, 2)  # (1, C, M, M)
        if cfg.interpolate_offset:
            # The official quirk: the scale (not the output size) carries a +0.1 offset, and
            # the kernel samples with that scale. First entry applies to rows.
            scale = ((h0 + cfg.interpolate_offset) / M, (w0 + cfg.interpolate_offset) / M)
            grid = F.interpolate(
                grid, scale_factor=scale, mode="bicubic", antialias=cfg.interpolate_antialias
            )
        else:
            grid = F.interpolate(
                grid, size=(h0, w0), mode="bicubic", antialias=cfg.interpolate_antialias
            )
        assert grid.shape[-2:] == (h0, w0)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([cls_pos, patch_pos], dim=1).to(dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        p = self.cfg.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected an image batch (B, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2] % p or x.shape[-1] % p or x.shape[-2] < p or x.shape[-1] < p:
            raise InputError(
                f"image size {tuple(x.shape[-2:])} is not a positive multiple of the patch size "
                f"{p}; resize it (see loftup.pipeline.backbone_input)"
            )

    accepts_patch_bias = True  # forward(x, patch_bias=...): see `forward_features`

    def forward_features(self, x: torch.Tensor, patch_bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Official `forward_features` outputs for an image batch (B, 3, H, W).

        patch_bias: an optional (B, C, H/p, W/p) or (B, N, C) tensor added to the patch tokens
        after the patch and position embeddings, before the registers and the blocks (where
        SimpleClick adds its click embedding); None leaves the official computation untouched.
        """
        self._check_input(x)
        B, _, H, W = x.shape
        R = self.cfg.num_register_tokens
        t = self.patch_embed(x)  # (B, N, C)
        t = torch.cat([self.cls_token.expand(B, -1, -1), t], dim=1)
        t = t + self.pos_embed_for(H, W)
        if patch_bias is not None:
            t = torch.cat([t[:, :1], t[:, 1:] + self._patch_tokens(patch_bias, t.shape[1] - 1)], dim=1)
        if R:  # registers go between cls and patches, after the position embedding
            t = torch.cat([t[:, :1], self.register_tokens.expand(B, -1, -1), t[:, 1:]], dim=1)
        for blk in self.blocks:
            t = blk(t)
        t_norm = self.norm(t)
        return {
            "x_norm_clstoken": t_norm[:, 0],
            "x_norm_regtokens": t_norm[:, 1 : 1 + R],
            "x_norm_patchtokens": t_norm[:, 1 + R :],
            "x_prenorm": t,
        }

    def _patch_tokens(self, bias: torch.Tensor, n: int) -> torch.Tensor:
        """A patch bias as (B, N, C) tokens, row-major like the patches; InputError if it does not fit."""
        if bias.dim() == 4:
            bias = bias.flatten(2).transpose(1, 2)
        if bias.dim() != 3 or bias.shape[1] != n or bias.shape[2] != self.cfg.embed_dim:
            raise InputError(f"patch_bias of shape {tuple(bias.shape)} does not fit {n} patch tokens of "
                             f"{self.cfg.embed_dim} channels; give (B, C, H/p, W/p) or (B, N, C)")
        return bias

    def forward(self, x: torch.Tensor, patch_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Patch features (B, C, H/14, W/14), as LoftUp's DINOv2 featurizer returns them
        (patch_bias: see `forward_features`)."""
        tokens = self.forward_features(x, patch_bias)["x_norm_patchtokens"]  # (B, h*w, C)
        B, _, H, W = x.shape
        p = self.cfg.patch_size
        return tokens.reshape(B, H // p, W // p, -1).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------
# Hugging Face `Dinov2Model` layout <-> official layout

_HF_BLOCK = {  # official name inside blocks.{i} -> HF name inside encoder.layer.{i}
    "norm1": "norm1",
    "attn.proj": "attention.output.dense",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
    "ls2.gamma": "layer_scale2.lambda1",
}
_HF_TOP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "mask_token": "embeddings.mask_token",
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "norm": "layernorm",
}
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "dinov2.")


def strip_wrapper_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a `module.` / `model.` / `backbone.` / `dinov2.` prefix shared by every key."""
    while sd:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            break
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def is_hf_dinov2(sd: dict[str, torch.Tensor]) -> bool:
    """True when the keys follow the Hugging Face `Dinov2Model` naming."""
    return any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd)


def _rename(key: str, table: dict[str, str]) -> str | None:
    for src, dst in table.items():
        if key == src or key.startswith(src + "."):
            return dst + key[len(src) :]
    return None


def hf_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a Hugging Face `Dinov2Model` state dict to the official DINOv2 layout.

    query/key/value Linear layers are concatenated (in that order) into `attn.qkv`.
    Raises CheckpointError for a key it does not know or an incomplete q/k/v triple.
    """
    top = {v: k for k, v in _HF_TOP.items()}
    block = {v: k for k, v in _HF_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.startswith("encoder.layer."):
            idx, rest = key[len("encoder.layer.") :].split(".", 1)
            if rest.startswith("attention.attention."):
                proj, kind = rest[len("attention.attention.") :].split(".", 1)
                qkv.setdefault((idx, kind), {})[proj] = value
                continue
            new = _rename(rest, block)
            new = None if new is None else f"blocks.{idx}.{new}"
        else:
            new = _rename(key, top)
        if new is None:
            raise CheckpointError(
                f"unexpected key {key!r} in a Hugging Face DINOv2 state dict; "
                "pass a Dinov2Model / Dinov2WithRegistersModel checkpoint"
            )
        out[new] = value
    for (idx, kind), parts in sorted(qkv.items(), key=lambda item: (int(item[0][0]), item[0][1])):
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(
                f"layer {idx} has attention {kind} for {sorted(parts)} only; "
                "query, key and value are all needed"
            )
        out[f"blocks.{idx}.attn.qkv.{kind}"] = torch.cat(
            [parts["query"], parts["key"], parts["value"]], dim=0
        )
    return out


def official_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `hf_to_official`: `attn.qkv` is split into query/key/value."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith("blocks."):
            idx, rest = key[len("blocks.") :].split(".", 1)
            base = f"encoder.layer.{idx}."
            if rest.startswith("attn.qkv."):
                kind = rest[len("attn.qkv.") :]
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{base}attention.attention.{name}.{kind}"] = part.clone()
                continue
            new = _rename(rest, _HF_BLOCK)
            new = None if new is None else base + new
        else:
            new = _rename(key, _HF_TOP)
        if new is None:
            raise CheckpointError(f"unexpected key {key!r} in an official DINOv2 state dict")
        out[new] = value
    return out
