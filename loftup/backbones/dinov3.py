"""Our own DINOv3 ViT (facebookresearch/dinov3, `DinoVisionTransformer`), in the official
state-dict layout; the Hugging Face `DINOv3ViTModel` layout is converted on load.

What differs from DINOv2 (vit.py, whose Block, Attention, Mlp, SwiGLU, LayerScale and patch
embedding are reused here), as the official code does it (DINOV3_FIXTURES.md lists the source):

- patch 16; no position table: RoPE inside every attention block, on q and k of the patch
  tokens only (cls and the 4 storage tokens are not rotated). For an h x w patch grid the
  coordinates are the patch centres, normalised per axis ("separate"):
  c_y = 2 (i + 0.5) / h - 1, c_x = 2 (j + 0.5) / w - 1, so every size is handled the same way
  and nothing is interpolated. Angles 2 pi c / period with periods base^(2k / (d/2)), base 100,
  k < d/4 (d = head dim; stored as the `rope_embed.periods` buffer), laid out
  [y-angles, x-angles] and repeated twice along the head dim; x * cos + rotate_half(x) * sin.
  All in float32. The coordinate shift / jitter / rescale are training-only and not built.
- `mask_k_bias`: the qkv Linear's bias is multiplied by a stored `bias_mask` buffer (1 for q
  and v, 0 for k) - the released models carry a k bias that is never used.
- 4 storage (register) tokens after cls; no position embedding on either.
- LayerNorm eps 1e-5 in the released models ("layernormbf16"); LayerScale in every block.
- SwiGLU FFN (S+/16, H+/16, 7B/16) with separate w1 / w2 / w3, hidden width
  int(int(dim * ratio) * 2 / 3) rounded up to a multiple of `swiglu_align` (8; 64 for 7B).
- one final norm over all tokens; the patch features are its patch tokens. `local_cls_norm`
  (7B/16, L/16 SAT) only normalises training-time local crops' cls tokens: it is kept so those
  files load strictly, and never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loftup.backbones.vit import Block, LayerScale, Mlp, PatchEmbed, SwiGLUFFN
from loftup.errors import CheckpointError, ConfigError, InputError

FFNS = ("mlp", "swiglu")


@dataclass(frozen=True)
class DINOv3Config:
    """Hyper-parameters of one DINOv3 ViT. Defaults are the released ViT-S/16."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0  # official `ffn_ratio`
    ffn: str = "mlp"  # "mlp" (fc1/fc2, GELU) or "swiglu" (w1/w2/w3, SiLU)
    swiglu_align: int = 8  # SwiGLU hidden width rounded up to this (64 for 7B/16)
    patch_size: int = 16
    num_register_tokens: int = 4  # official `n_storage_tokens`
    qkv_bias: bool = True
    mask_k_bias: bool = True
    layerscale: bool = True
    norm_eps: float = 1e-5
    rope_base: float = 100.0
    local_cls_norm: bool = False  # official `untie_global_and_local_cls_norm` (unused at inference)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":
            d = int(hidden * 2 / 3)
            hidden = d + (-d % self.swiglu_align)
        return hidden


# The hub factories' settings (dinov3/hub/backbones.py), LVD-1689M weights.
VITS16 = DINOv3Config()
VITSP16 = DINOv3Config(mlp_ratio=6.0, ffn="swiglu")
VITB16 = DINOv3Config(embed_dim=768, num_heads=12)
VITL16 = DINOv3Config(embed_dim=1024, depth=24, num_heads=16)
VITHP16 = DINOv3Config(embed_dim=1280, depth=32, num_heads=20, mlp_ratio=6.0, ffn="swiglu")
VIT7B16 = DINOv3Config(embed_dim=4096, depth=40, num_heads=32, mlp_ratio=3.0, ffn="swiglu", swiglu_align=64,
                       qkv_bias=False, local_cls_norm=True)


class MaskedKBiasLinear(nn.Linear):
    """The official `LinearKMaskedBias`: bias * bias_mask (a stored buffer; 0 over the k rows)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if bias:
            self.register_buffer("bias_mask", torch.ones(out_features))

    def reset_mask(self) -> None:
        if self.bias is not None:
            third = self.out_features // 3
            self.bias_mask.fill_(1.0)
            self.bias_mask[third : 2 * third] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.bias_mask.to(self.bias.dtype)
        return F.linear(x, self.weight, bias)


class RopeEmbedding(nn.Module):
    """Axial RoPE sin / cos for an h x w patch grid, from patch-centre coordinates (module doc)."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("periods", self.default_periods())

    def _apply(self, fn, recurse=True):
        """Device moves apply; dtype casts (model.half(), .to(bfloat16)) leave the periods in float32,
        so the RoPE angles stay float32 whatever the model's dtype (the official buffer would be cast)."""
        periods = self.periods
        super()._apply(fn, recurse)
        if self.periods.dtype != torch.float32:  # from a float32 buffer, else (a low-precision file) upcast
            source = periods if periods.dtype == torch.float32 else self.periods
            self.periods = source.to(device=self.periods.device, dtype=torch.float32)
        return self

    def default_periods(self) -> torch.Tensor:
        """base^(2k / (d/2)) for k < d/4, in float32 (what the official init stores)."""
        quarter = self.head_dim // 4
        return self.base ** (2 * torch.arange(quarter, dtype=torch.float32) / (self.head_dim // 2))

    def forward(self, h, w) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each (h * w, head_dim) float32; h and w may be symbolic sizes while exporting."""
        device = self.periods.device
        coords_h = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h  # (h,)
        coords_w = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w  # (w,)
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)  # (h*w, 2)
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # (h*w, 2, d/4)
        angles = angles.flatten(1, 2)  # (h*w, d/2): y-angles then x-angles
        angles = torch.cat([angles, angles], dim=-1)  # (h*w, d); cat, not tile(2), exports
        return torch.sin(angles), torch.cos(angles)


class DINOv3ViT(nn.Module):
    """DINOv3 ViT. Input (B, 3, H, W), normalised by the caller, H and W positive multiples of 16."""

    def __init__(self, cfg: DINOv3Config = VITS16) -> None:
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        C, R = cfg.embed_dim, cfg.num_register_tokens
        # Registration order gives the official state_dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        if R:
            self.storage_tokens = nn.Parameter(torch.zeros(1, R, C))
        self.mask_token = nn.Parameter(torch.zeros(1, C))  # masked-image training only; kept for strict loading
        self.patch_embed = PatchEmbed(cfg.patch_size, C)
        self.rope_embed = RopeEmbedding(cfg.head_dim, cfg.rope_base)
        qkv_layer = MaskedKBiasLinear if cfg.mask_k_bias else nn.Linear
        self.blocks = nn.ModuleList(
            Block(C, cfg.num_heads, self._ffn(), eps=cfg.norm_eps, layerscale=cfg.layerscale, qkv_bias=cfg.qkv_bias,
                  qkv_layer=qkv_layer)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        if cfg.local_cls_norm:
            self.local_cls_norm = nn.LayerNorm(C, eps=cfg.norm_eps)

    def _ffn(self) -> nn.Module:
        cfg = self.cfg
        if cfg.ffn == "swiglu":
            return SwiGLUFFN(cfg.embed_dim, cfg.ffn_hidden, fused=False)
        return Mlp(cfg.embed_dim, cfg.ffn_hidden)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random init for `weights=None` / "random": tokens normal 0.02, zero biases, the k-bias
        masks and RoPE periods as the official init; but Linear weights at std 1/sqrt(fan_in)
        (official: 0.02) and LayerScale 1.0 (official: 1e-5), so that attention is far from
        uniform and a random backbone's features depend on RoPE (what its export tests check)."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=m.in_features**-0.5, generator=generator)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                    if isinstance(m, MaskedKBiasLinear):
                        m.reset_mask()
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, LayerScale):
                    m.gamma.fill_(1.0)
            nn.init.normal_(self.cls_token, std=0.02, generator=generator)
            if self.cfg.num_register_tokens:
                nn.init.normal_(self.storage_tokens, std=0.02, generator=generator)
            self.mask_token.zero_()
            w = self.patch_embed.proj.weight
            bound = 1 / math.sqrt(w[0].numel())
            nn.init.uniform_(w, -bound, bound, generator=generator)
            nn.init.uniform_(self.patch_embed.proj.bias, -bound, bound, generator=generator)
            self.rope_embed.periods.copy_(self.rope_embed.default_periods())

    def _check_input(self, x: torch.Tensor) -> None:
        p = self.cfg.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected an image batch (B, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2] % p or x.shape[-1] % p or x.shape[-2] < p or x.shape[-1] < p:
            raise InputError(
                f"image size {tuple(x.shape[-2:])} is not a positive multiple of the patch size {p}; "
                "resize it (see loftup.pipeline.backbone_input)"
            )

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the last block, before the final norm: (B, 1 + R + h*w, C)."""
        self._check_input(x)
        B = x.shape[0]
        p = self.cfg.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.cfg.num_register_tokens:
            prefix.append(self.storage_tokens.expand(B, -1, -1))
        t = torch.cat([*prefix, self.patch_embed(x)], dim=1)
        rope = self.rope_embed(h, w)
        for blk in self.blocks:
            t = blk(t, rope)
        return t

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The official `forward_features` outputs (inference) for an image batch (B, 3, H, W)."""
        t = self.forward_tokens(x)
        t_norm = self.norm(t)
        R = self.cfg.num_register_tokens
        return {
            "x_norm_clstoken": t_norm[:, 0],
            "x_storage_tokens": t_norm[:, 1 : 1 + R],
            "x_norm_patchtokens": t_norm[:, 1 + R :],
            "x_prenorm": t,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features (B, C, H/16, W/16): the final norm of the patch tokens."""
        tokens = self.norm(self.forward_tokens(x)[:, 1 + self.cfg.num_register_tokens :])  # (B, h*w, C)
        B, _, H, W = x.shape
        p = self.cfg.patch_size
        return tokens.transpose(1, 2).reshape(B, self.cfg.embed_dim, H // p, W // p)


def _check_config(cfg: DINOv3Config) -> None:
    if cfg.ffn not in FFNS:
        raise ConfigError(f"unknown DINOv3 ffn {cfg.ffn!r}; choose 'mlp' or 'swiglu'")
    if cfg.embed_dim % (4 * cfg.num_heads):
        raise ConfigError(
            f"embed_dim {cfg.embed_dim} must be a multiple of 4 x num_heads ({4 * cfg.num_heads}) for DINOv3's 2-D RoPE"
        )


# ----------------------------------------------------------------------------------------
# Hugging Face `DINOv3ViTModel` layout -> official layout

_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "storage_tokens",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_HF_BLOCK = {  # HF name inside layer.{i} -> official name inside blocks.{i}
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.down_proj": "mlp.fc2",  # mlp.w3 when gated
    "mlp.gate_proj": "mlp.w1",
}


def is_hf_dinov3(sd) -> bool:
    """True when the keys follow transformers' `DINOv3ViTModel` naming (`layer.N` on the Hub,
    `model.layer.N` inside transformers >= 5)."""
    return any(k.startswith(("embeddings.", "layer.", "model.layer.")) for k in sd)


def hf_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `DINOv3ViTModel` state dict in the official layout, without the two tensors the HF layout
    does not store (rope periods, k-bias masks): `complete_state_dict` adds them from the config.

    q/k/v are concatenated into `attn.qkv`; HF files drop the (always masked) k bias, which
    becomes zeros. The gated MLP's gate / up / down are w1 / w2 / w3; the plain one's up / down
    are fc1 / fc2. CheckpointError for a key it does not know or an incomplete q/k/v set.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    gated = any(".mlp.gate_proj." in k for k in sd)
    block = {**_HF_BLOCK, "mlp.up_proj": "mlp.w2" if gated else "mlp.fc1"}
    if gated:
        block["mlp.down_proj"] = "mlp.w3"
    for key, value in sd.items():
        name = key[len("model."):] if key.startswith("model.layer.") else key
        if name == "embeddings.mask_token":
            out["mask_token"] = value.reshape(1, -1)
            continue
        if name.startswith("layer."):
            idx, rest = name[len("layer."):].split(".", 1)
            proj = rest[len("attention."):].split("_proj.", 1) if rest.startswith("attention.") else None
            if proj and len(proj) == 2 and proj[0] in ("q", "k", "v"):
                qkv.setdefault(f"{idx}.{proj[1]}", {})[proj[0]] = value
                continue
            new = next((f"blocks.{idx}.{dst}{rest[len(src):]}" for src, dst in block.items()
                        if rest.startswith(src + ".") or rest == src), None)
        else:
            new = _HF_TOP.get(name)
        if new is None:
            raise CheckpointError(f"unexpected key {key!r} in a Hugging Face DINOv3 state dict; "
                                  "pass a DINOv3ViTModel checkpoint (model.safetensors)")
        out[new] = value
    for slot, parts in qkv.items():
        idx, kind = slot.split(".", 1)
        if kind == "weight" and set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"layer {idx} has attention weights for {sorted(parts)} only; q, k and v are all needed")
        like = next(iter(parts.values()))
        out[f"blocks.{idx}.attn.qkv.{kind}"] = torch.cat([parts.get(n, torch.zeros_like(like)) for n in "qkv"], dim=0)
    return out


def complete_state_dict(sd: dict[str, torch.Tensor], cfg: DINOv3Config) -> dict[str, torch.Tensor]:
    """Add what a converted HF state dict lacks for `cfg`: the RoPE periods and the k-bias masks."""
    sd = dict(sd)
    sd.setdefault("rope_embed.periods", RopeEmbedding(cfg.head_dim, cfg.rope_base).default_periods())
    if cfg.mask_k_bias:
        for i in range(cfg.depth):
            bias = sd.get(f"blocks.{i}.attn.qkv.bias")
            if bias is not None:
                mask = torch.ones_like(bias)
                mask[bias.shape[0] // 3 : 2 * bias.shape[0] // 3] = 0
                sd.setdefault(f"blocks.{i}.attn.qkv.bias_mask", mask)
    return sd
