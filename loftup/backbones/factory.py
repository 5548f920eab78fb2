"""`build_backbone(family, weights=None, **config)`: any width or depth of our five ViT families.

    bb = build_backbone("radio", embed_dim=64, depth=2, num_heads=2, max_img_size=192,
                        weights="radio_tiny.safetensors")
    feats = bb(image)            # (B, C, H/p, W/p), the features LoftUp upsamples

Families and their config keys (every family takes embed_dim, depth, num_heads, patch_size):

- dinov2: mlp_ratio, ffn ("mlp" | "swiglu"), img_size (position grid = img_size / patch),
  num_register_tokens (> 0 also selects the `_reg` position resize unless interpolate_*
  are given), interpolate_antialias, interpolate_offset;
- clip: output_dim, img_size (embed_dim / depth / num_heads are the tower's width / layers /
  heads; OpenAI's own names are accepted too);
- siglip: mlp_ratio, img_size, attn_pool;
- radio: mlp_ratio, max_img_size (CPE grid side in pixels), num_cls_tokens, num_registers,
  summary_idxs, final_norm, img_size;
- dinov3: mlp_ratio, ffn ("mlp" | "swiglu"), swiglu_align, num_register_tokens (storage tokens),
  qkv_bias, mask_k_bias, layerscale, norm_eps, rope_base, local_cls_norm (follows the file).

`weights`: None (seeded random init), a local checkpoint file in any layout the family's
reader knows (see loftup.backbones.registry), or a state dict. DINOv2 and DINOv3 files may be in
the official or the Hugging Face layout (detected). A RADIO `.pth.tar` also
supplies its own config (from `args`): keys you do not pass come from the file, keys you pass
must agree with it. The registry's named backbones are presets over this function.

Normalisation (`normalization`): "loftup" (default) is what LoftUp's upsamplers were trained
with - ImageNet mean/std for DINOv2, DINOv3, SigLIP and RADIO (the official quirk), CLIP's own for
CLIP; "native" is each model's own - SigLIP 0.5/0.5, RADIO its input conditioner (CLIP
mean/std unless the checkpoint says otherwise). The backbone never normalises inside; its
`mean` / `std` say what the caller must apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loftup.backbones import dinov3
from loftup.backbones.clip import CLIPVisionConfig, CLIPVisionTower, clip_visual_state_dict
from loftup.backbones.radio import RADIOConfig, RadioModel, radio_state_dict, read_radio_weights
from loftup.backbones.specs import BACKBONES, Backbone, BackboneSpec
from loftup.backbones.siglip import SIGLIP_MEAN, SIGLIP_STD, SigLIPConfig, SigLIPViT, siglip_state_dict
from loftup.backbones.vit import DinoViT, ViTConfig, hf_to_official, is_hf_dinov2, strip_wrapper_prefix
from loftup.errors import CheckpointError, ConfigError, check_choice, closest
from loftup.io import read_tensors, state_dict_mismatch
from loftup.pipeline import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

FAMILIES = ("dinov2", "clip", "siglip", "radio", "dinov3")
NORMALIZATIONS = ("loftup", "native")

_CONFIGS = {"dinov2": ViTConfig, "clip": CLIPVisionConfig, "siglip": SigLIPConfig, "radio": RADIOConfig,
            "dinov3": dinov3.DINOv3Config}
_MODULES = {"dinov2": DinoViT, "clip": CLIPVisionTower, "siglip": SigLIPViT, "radio": RadioModel,
            "dinov3": dinov3.DINOv3ViT}
_CLIP_ALIASES = {"embed_dim": "width", "depth": "layers", "num_heads": "heads", "img_size": "input_resolution"}
_LABELS = {"dinov2": "DINOv2", "clip": "CLIP", "siglip": "SigLIP (timm / open_clip)", "radio": "RADIO",
           "dinov3": "DINOv3"}
# (family -> (loftup mean/std, native mean/std))
_NORMS = {
    "dinov2": ((IMAGENET_MEAN, IMAGENET_STD), (IMAGENET_MEAN, IMAGENET_STD)),
    "clip": ((CLIP_MEAN, CLIP_STD), (CLIP_MEAN, CLIP_STD)),
    "siglip": ((IMAGENET_MEAN, IMAGENET_STD), (SIGLIP_MEAN, SIGLIP_STD)),
    "radio": ((IMAGENET_MEAN, IMAGENET_STD), (CLIP_MEAN, CLIP_STD)),  # RADIO's default conditioner
    "dinov3": ((IMAGENET_MEAN, IMAGENET_STD), (IMAGENET_MEAN, IMAGENET_STD)),  # the LVD-1689M weights
}
_ARCH_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size")  # checked against a RADIO file's args


@dataclasses.dataclass
class LoadedWeights:
    """A checkpoint in our module layout, plus what a RADIO file says about itself."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # from RADIO `args`
    mean: tuple[float, ...] | None = None  # RADIO's input conditioner, when stored
    std: tuple[float, ...] | None = None
    layout: str = "official"  # "hf" when converted from a Hugging Face layout


def _from_radio(w) -> LoadedWeights:
    return LoadedWeights(w.state_dict, w.config, w.mean, w.std)


def family_config(family: str, **config: Any):
    """The family's config dataclass from generic and family keys; ConfigError for unknown keys."""
    check_choice("backbone family", family, FAMILIES)
    cls = _CONFIGS[family]
    known = [f.name for f in dataclasses.fields(cls)]
    fields: dict[str, Any] = {}
    for key, value in config.items():
        name = _CLIP_ALIASES.get(key, key) if family == "clip" else key
        if name not in known:
            accepted = sorted(set(known) | (set(_CLIP_ALIASES) if family == "clip" else set()))
            raise ConfigError(
                f"unknown {family} config key {key!r}{closest(key, accepted)}; accepted: {', '.join(accepted)}"
            )
        fields[name] = tuple(value) if name == "summary_idxs" else value
    if family == "dinov2" and fields.get("num_register_tokens"):
        # the hub's `_reg` variants resize their position grid differently (vit.ViTConfig.with_registers)
        fields.setdefault("interpolate_antialias", True)
        fields.setdefault("interpolate_offset", 0.0)
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"bad {family} config: {exc}") from None


def guess_family(sd: Mapping[str, Any]) -> str | None:
    """Which family (or "loftup" for an upsampler) a state dict in any known layout belongs to."""
    keys = list(sd)

    def anywhere(part: str) -> bool:
        return any(k.startswith(part) or f".{part}" in k for k in keys)

    if any(k.startswith(("upsampler.", "channelnorm.")) for k in keys):
        return "loftup"
    if anywhere("patch_generator."):
        return "radio"
    if anywhere("attn_pool."):
        return "siglip"
    if anywhere("rope_embed.") or anywhere("storage_tokens") or anywhere("attention.q_proj.") \
            or anywhere("attention.o_proj."):
        return "dinov3"  # official (RoPE periods, storage tokens) or Hugging Face DINOv3ViTModel
    if anywhere("mask_token") or anywhere("embeddings.patch_embeddings."):
        return "dinov2"
    if anywhere("class_embedding") or anywhere("conv1.weight"):
        return "clip"
    return None


def _wrong_family(sd: Mapping[str, Any], family: str, source: str, name: str) -> str:
    """A one-line message when `sd` clearly belongs to another family (or is an upsampler), else ''."""
    found = guess_family(sd)
    if found is None or found == family:
        return ""
    if found == "loftup":
        return f"{source} is a LoftUp upsampler checkpoint, not backbone weights; pass it as the upsampler checkpoint"
    names = [n for n, s in BACKBONES.items() if s.arch == found][:3]
    return (
        f"{source} is a {_LABELS[found]} checkpoint but backbone {name!r} is {_LABELS[family]}; "
        f"use {' / '.join(names) or 'a ' + found + ' backbone'}"
    )


def to_family_layout(family: str, sd: Mapping[str, torch.Tensor]) -> LoadedWeights:
    """A state dict in any layout the family knows, brought to our module's keys."""
    sd = dict(sd)
    if family == "radio":
        return _from_radio(radio_state_dict(sd))
    if family == "clip":
        return LoadedWeights(clip_visual_state_dict(sd))
    if family == "siglip":
        return LoadedWeights(siglip_state_dict(sd))
    sd = strip_wrapper_prefix(sd)
    if family == "dinov3":
        if dinov3.is_hf_dinov3(sd) and guess_family(sd) == "dinov3":
            return LoadedWeights(dinov3.hf_to_official(sd), layout="hf")
        return LoadedWeights(sd)
    # another family's file is left as it is: the fit check names that family
    return LoadedWeights(hf_to_official(sd) if is_hf_dinov2(sd) and guess_family(sd) == "dinov2" else sd)


def read_weights(family: str, path: str | Path) -> LoadedWeights:
    """Tensors of a checkpoint file in the family's module layout (plus RADIO's args config and
    conditioner). Pickles are read weights-only; see loftup.io.read_tensors and radio.py."""
    path = Path(path).expanduser()
    if family == "radio":
        return _from_radio(read_radio_weights(path))
    try:
        sd = read_tensors(path)[0]
    except CheckpointError:
        try:  # a RADIO .pth.tar (its `args` needs the Namespace allow-list): the fit check says so
            return _from_radio(read_radio_weights(path))
        except CheckpointError:
            pass
        raise
    return to_family_layout(family, sd)


def _merge_radio_config(config: dict[str, Any], from_file: dict[str, Any], source: str, name: str | None,
                        preset: bool) -> dict[str, Any]:
    """The file's args fill the keys not given; keys given must agree with the file."""
    clash = [
        f"{k} {config[k]!r} (file: {from_file[k]!r})"
        for k in _ARCH_KEYS + ("max_img_size", "num_cls_tokens", "num_registers", "summary_idxs", "final_norm")
        if k in config and k in from_file and _norm_value(config[k]) != _norm_value(from_file[k])
    ]
    if clash:
        what = f"backbone {name!r}" if name else "the requested radio config"
        fix = "" if preset else " or leave those keys out (the file's args give them)"
        raise CheckpointError(
            f"{source} does not fit {what}: {'; '.join(clash[:3])}; use the RADIO backbone of that size "
            f"(radio_v2.5_b / radio_v2.5_l){fix}"
        )
    return {**from_file, **config}


def _norm_value(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _check_fit(model: nn.Module, sd: dict[str, torch.Tensor], family: str, source: str, name: str) -> None:
    problems = state_dict_mismatch(model, sd, optional=())
    if problems:
        raise CheckpointError(
            _wrong_family(sd, family, source, name)
            or f"{source} does not fit backbone {name!r}: {problems}; "
            "pass a checkpoint of this architecture or choose the matching backbone"
        )


def normalisation(family: str, kind: str = "loftup") -> tuple[tuple, tuple]:
    """(mean, std) the family's images are normalised with: "loftup" or "native" (module doc)."""
    check_choice("backbone family", family, FAMILIES)
    check_choice("normalization", kind, NORMALIZATIONS)
    return _NORMS[family][kind == "native"]


def _make(
    family: str,
    weights: str | Path | Mapping[str, torch.Tensor] | None,
    config: dict[str, Any],
    *,
    name: str | None,
    normalization: str,
    device: str | torch.device,
    dtype: torch.dtype,
    seed: int,
    source: str | None,
    spec=None,
):
    """Shared by `build_backbone` and the registry's `create_backbone` (which passes its row)."""
    check_choice("backbone family", family, FAMILIES)
    check_choice("normalization", normalization, NORMALIZATIONS)
    label = name or f"{family} (custom)"
    loaded: LoadedWeights | None = None
    if weights is None:
        source = source or f"random init (seed {seed})"
    elif isinstance(weights, Mapping):
        loaded = to_family_layout(family, weights)
        source = source or "state dict"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"weights {str(weights)!r} is not a file; pass a checkpoint path (or None for random init)")
        loaded = read_weights(family, path)
        source = source or str(path)
    if family == "radio" and loaded is not None and loaded.config:
        config = _merge_radio_config(config, loaded.config, source, name, preset=spec is not None)
    cfg = family_config(family, **config)

    if loaded is not None:
        sd = dict(loaded.state_dict)
        if family == "siglip" and cfg.attn_pool and not any(k.startswith("attn_pool.") for k in sd):
            cfg = dataclasses.replace(cfg, attn_pool=False)  # the unused MAP head is optional in files
        if family == "radio" and "summary_idxs" not in sd:
            sd["summary_idxs"] = torch.tensor(cfg.summary_idxs, dtype=torch.int64)
        if family == "dinov3":  # the unused local-crop cls norm is optional in files (HF drops it)
            cfg = dataclasses.replace(cfg, local_cls_norm=any(k.startswith("local_cls_norm.") for k in sd))
            if loaded.layout == "hf":
                sd = dinov3.complete_state_dict(sd, cfg)
        with torch.device("meta"):  # no wasted random init; tensors come from the file
            model = _MODULES[family](cfg)
        _check_fit(model, sd, family, source, label)
        model.load_state_dict(sd, strict=True, assign=True)
    else:
        with torch.device("meta"):  # skip PyTorch's default init; init_weights sets every tensor
            model = _MODULES[family](cfg)
        model = model.to_empty(device="cpu")
        model.init_weights(torch.Generator().manual_seed(seed))
    model = model.to(device=device, dtype=dtype)

    mean, std = normalisation(family, normalization)
    if normalization == "native" and loaded is not None and loaded.mean is not None:
        mean, std = loaded.mean, loaded.std  # RADIO's conditioner, as stored in the checkpoint
    if spec is None:
        spec = BackboneSpec(
            name=label, arch=family, config=cfg, embed_dim=model.embed_dim, patch_size=model.patch_size,
            mean=tuple(mean), std=tuple(std), url="", description=f"{_LABELS[family]} built from a config",
        )
    else:
        spec = dataclasses.replace(spec, config=cfg, mean=tuple(mean), std=tuple(std))
    return Backbone(spec, model, source)


def build_backbone(
    family: str,
    weights: str | Path | Mapping[str, torch.Tensor] | None = None,
    *,
    name: str | None = None,
    normalization: str = "loftup",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **config: Any,
):
    """Build a frozen backbone of `family` ("dinov2" | "clip" | "siglip" | "radio" | "dinov3") from `config`.

    weights: None (random init with `seed`), a local checkpoint file, or a state dict.
    Returns a `Backbone` in eval mode whose forward maps an image batch (B, 3, H, W),
    normalised with its `mean` / `std`, to features (B, embed_dim, H/p, W/p).
    """
    return _make(
        family, weights, config, name=name, normalization=normalization, device=device, dtype=dtype,
        seed=seed, source=None,
    )
