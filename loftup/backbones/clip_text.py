"""OpenAI CLIP's text transformer, and the whole CLIP model (both towers) read from one checkpoint.

    clip = load_clip("ViT-B-16.pt")          # OpenAI's download, a safetensors, or a state dict
    emb = clip.text(tokens)                  # (N, embed_dim), tokens from loftup.backbones.clip_tokenizer
    tokens_in = clip.visual.trunk(image)     # the visual tower (loftup.backbones.clip)

The text tower follows OpenAI CLIP's `encode_text` (facts from the CLIP paper's code): token
embedding + learned position embedding (context 77), residual blocks with causal self-attention
(the same blocks as the visual tower: pre-LayerNorm, QuickGELU MLP of 4x width), `ln_final`,
then the feature at the end-of-text token (the largest id in each row) times `text_projection`.
State-dict keys are OpenAI's top-level ones: `token_embedding.weight`, `positional_embedding`,
`transformer.resblocks.N.*`, `ln_final.*`, `text_projection` (plus `logit_scale`, kept as a
number); the visual tower's are under `visual.` (read by `clip.clip_visual_state_dict`).

Shapes are read from the checkpoint, with OpenAI's rule for the head count (width / 64, in
both towers); files are read with `loftup.io.read_tensors` (safetensors, weights-only torch
files, TorchScript archives as data - never executed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from loftup.backbones.clip import CLIPVisionConfig, CLIPVisionTower, LayerNorm, ResidualAttentionBlock, SelfAttention, clip_visual_state_dict
from loftup.errors import CheckpointError, InputError

TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")


@dataclass(frozen=True)
class CLIPTextConfig:
    """CLIP text tower hyper-parameters. Defaults are OpenAI ViT-B/16's."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    output_dim: int = 512


class CausalSelfAttention(SelfAttention):
    """SelfAttention with the causal mask of CLIP's text tower (token i sees tokens 0..i)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(x.transpose(1, 2).reshape(B, N, C))


class TextBlock(ResidualAttentionBlock):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__(width, heads)
        self.attn = CausalSelfAttention(width, heads)  # same parameters, same state-dict slot


class TextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(TextBlock(cfg.width, cfg.heads) for _ in range(cfg.layers))


class CLIPTextTower(nn.Module):
    """Token ids (N, L <= context_length) -> text embeddings (N, output_dim), not normalised."""

    def __init__(self, cfg: CLIPTextConfig = CLIPTextConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = TextTransformer(cfg)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.output_dim))

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """OpenAI's text-tower init (random weights for tests and smoke runs)."""
        W, L = self.cfg.width, self.cfg.layers
        proj_std, attn_std, fc_std = W**-0.5 * (2 * L) ** -0.5, W**-0.5, (2 * W) ** -0.5
        with torch.no_grad():
            nn.init.normal_(self.token_embedding.weight, std=0.02, generator=generator)
            nn.init.normal_(self.positional_embedding, std=0.01, generator=generator)
            for blk in self.transformer.resblocks:
                nn.init.normal_(blk.attn.in_proj_weight, std=attn_std, generator=generator)
                blk.attn.in_proj_bias.zero_()
                nn.init.normal_(blk.attn.out_proj.weight, std=proj_std, generator=generator)
                blk.attn.out_proj.bias.zero_()
                nn.init.normal_(blk.mlp.c_fc.weight, std=fc_std, generator=generator)
                blk.mlp.c_fc.bias.zero_()
                nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std, generator=generator)
                blk.mlp.c_proj.bias.zero_()
            nn.init.normal_(self.text_projection, std=W**-0.5, generator=generator)
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.cfg.context_length:
            raise InputError(f"{n} tokens exceed the text tower's context of {self.cfg.context_length}; shorten the text")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        for blk in self.transformer.resblocks:
            x = blk(x)
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest in the vocabulary
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


class CLIPModel(nn.Module):
    """Both towers of a CLIP checkpoint; `logit_scale` is the stored (log) temperature, if any."""

    def __init__(self, visual: CLIPVisionTower, text: CLIPTextTower, logit_scale: float | None = None) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = logit_scale

    @property
    def embed_dim(self) -> int:
        return self.text.cfg.output_dim


def _strip_wrappers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = dict(sd)
    for prefix in ("module.", "model.", "clip."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def clip_text_state_dict(sd: Mapping[str, torch.Tensor], source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The text tower's entries of a full OpenAI CLIP state dict; CheckpointError when it has none."""
    sd = _strip_wrappers(sd)
    missing = [k for k in TEXT_KEYS if k not in sd]
    if missing:
        raise CheckpointError(
            f"{source} has no CLIP text tower (no {', '.join(missing[:2])}); ovseg needs the whole CLIP model, "
            "e.g. OpenAI's ViT-B-16.pt (--clip online downloads it)"
        )
    return {k: v for k, v in sd.items() if not k.startswith("visual.") and k not in ("logit_scale", "input_resolution",
                                                                                    "context_length", "vocab_size")}


def text_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> CLIPTextConfig:
    width = sd["ln_final.weight"].shape[0]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    return CLIPTextConfig(vocab_size=sd["token_embedding.weight"].shape[0], context_length=sd["positional_embedding"].shape[0],
                          width=width, layers=layers, heads=max(1, width // 64), output_dim=sd["text_projection"].shape[1])


def vision_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> CLIPVisionConfig:
    """The visual tower's shape from its (un-prefixed) state dict; heads by OpenAI's width / 64."""
    width, _, patch, _ = sd["conv1.weight"].shape
    grid = math.isqrt(sd["positional_embedding"].shape[0] - 1)
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    return CLIPVisionConfig(width=width, layers=layers, heads=max(1, width // 64), patch_size=patch,
                            input_resolution=grid * patch, output_dim=sd["proj"].shape[1])


def _load(module: nn.Module, sd: dict[str, torch.Tensor], what: str, source: str) -> nn.Module:
    from loftup.io import state_dict_mismatch

    problems = state_dict_mismatch(module, sd, optional=())
    if problems:
        raise CheckpointError(f"{source} does not fit a CLIP {what} tower: {problems}; pass an OpenAI-layout CLIP checkpoint")
    module.load_state_dict(sd, strict=True, assign=True)
    return module


def load_clip(weights: str | Path | Mapping[str, torch.Tensor], device: str | torch.device = "cpu") -> CLIPModel:
    """Both CLIP towers from a checkpoint file or a state dict in OpenAI's layout (module doc),
    frozen, in eval mode, float32. CheckpointError (one line) when the text tower is missing."""
    from loftup.io import read_tensors

    source = "the state dict" if isinstance(weights, Mapping) else f"CLIP checkpoint {weights}"
    sd = _strip_wrappers(weights if isinstance(weights, Mapping) else read_tensors(weights)[0])
    text_sd = clip_text_state_dict(sd, source)
    vis_sd = clip_visual_state_dict(sd)
    if "conv1.weight" not in vis_sd:
        raise CheckpointError(f"{source} has no CLIP visual tower (no visual.conv1.weight); pass the whole CLIP model")
    vis_sd = {k: v.float() for k, v in vis_sd.items()}
    text_sd = {k: v.float() for k, v in text_sd.items()}
    with torch.device("meta"):
        visual = CLIPVisionTower(vision_config_from_state_dict(vis_sd))
        text = CLIPTextTower(text_config_from_state_dict(text_sd))
    _load(visual, vis_sd, "visual", source)
    _load(text, text_sd, "text", source)
    scale = sd.get("logit_scale")
    model = CLIPModel(visual, text, float(scale) if scale is not None else None)
    return model.to(device).eval().requires_grad_(False)


def random_clip(vision: CLIPVisionConfig, text: CLIPTextConfig, seed: int = 0) -> CLIPModel:
    """A seeded random-weight CLIP (tests, smoke runs)."""
    g = torch.Generator().manual_seed(seed)
    visual, tower = CLIPVisionTower(vision), CLIPTextTower(text)
    visual.init_weights(g)
    tower.init_weights(g)
    return CLIPModel(visual, tower, math.log(100.0)).eval().requires_grad_(False)


def clip_state_dict(model: CLIPModel) -> dict[str, torch.Tensor]:
    """`model` in OpenAI's layout (text keys at the top, `visual.` for the image tower)."""
    sd = {k: v for k, v in model.text.state_dict().items()}
    sd.update({f"visual.{k}": v for k, v in model.visual.state_dict().items()})
    if model.logit_scale is not None:
        sd["logit_scale"] = torch.tensor(model.logit_scale)
    return sd


__all__ = ["CLIPModel", "CLIPTextConfig", "CLIPTextTower", "clip_state_dict", "clip_text_state_dict", "load_clip",
           "random_clip", "text_config_from_state_dict", "vision_config_from_state_dict"]
