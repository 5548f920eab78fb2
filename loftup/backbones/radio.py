"""Our RADIO v2.5 (B/16, L/16): NVlabs/RADIO's ViT with CPE, as LoftUp calls it (FACTS_BACKBONES2 s4).

State-dict layout = the official `RADIOModel` after `make_preprocessor_external()`:
`summary_idxs` (int64 buffer), then `model.blocks.*`, `model.patch_generator.pos_embed`
(1, G*G, C), `model.patch_generator.embedder.weight` (C, 3*16*16; a Linear WITHOUT bias) and
`model.patch_generator.cls_token.token` (cls tokens, then registers). Forward, eval mode:

    patches: Linear over (c, yy, xx)-ordered 16x16 patches, row-major  (== a bias-free conv)
    + position embedding (CPE): the G x G grid (G = max_img_size / 16 = 128) resized bilinearly
      (align_corners False, no antialias, float32) to a SQUARE of side max(h, w), then its
      top-left h x w window kept ("crop after resize"); unchanged at G x G
    prepend the prefix tokens [cls_0 .. cls_3, reg_0 .. reg_3] (no position embedding)
    ViT blocks (timm `vit_*_patch16_224`: LN eps 1e-6, exact GELU); NO final norm (model_norm False)
    summary = cls tokens `summary_idxs` (clip, siglip, dino_v2) concatenated -> (B, 3C)
    spatial = the patch tokens -> (B, C, H/16, W/16)   (what LoftUp uses)

The official model is a different function in train mode (random CPE viewports, position
dropout); this module computes the eval-mode numbers whatever its mode.

Sizes: H and W must be multiples of 16 (RADIO's `min_resolution_step`); anything else is
refused with the nearest valid size - loftup's pipeline resizes images to multiples of the
patch size before the backbone, so this only fires for direct calls. Any multiple of 16 works
(the official 2048 px maximum is not enforced there either).

Normalisation: RADIO normally normalises [0, 1] images itself (input conditioner, CLIP
mean/std). LoftUp drops that conditioner and feeds ImageNet-normalised images, so nothing is
normalised inside this module; the conditioner's mean/std are read from the checkpoint and
offered as the "native" normalisation.

Checkpoints: the released `.pth.tar` holds `{"state_dict"[_ema]: {"base_model.*",
"input_conditioner.*", teacher heads}, "args": argparse.Namespace}`. `read_radio_weights`
reads it with `torch.load(weights_only=True)` and an allow-list of exactly one extra class,
`argparse.Namespace` (a plain attribute bag: unpickling it sets attributes, runs no code).
The model config (width, depth, CPE grid, cls/register counts, summary tokens) follows from
`args` as hubconf derives it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loftup.backbones.posembed import bilinear_matrix, resize_grid
from loftup.backbones.vit import PreNormBlock, init_vit_weights
from loftup.errors import CheckpointError, ConfigError, InputError

RADIO_URL = "https://huggingface.co/nvidia/RADIO/resolve/main/{file}?download=true"

# timm ViTs a RADIO checkpoint's `args.model` may name: (embed_dim, depth, num_heads, patch)
TIMM_VITS = {
    "vit_base_patch16_224": (768, 12, 12, 16),
    "vit_large_patch16_224": (1024, 24, 16, 16),
    "vit_huge_patch16_224": (1280, 32, 16, 16),
}


@dataclass(frozen=True)
class RADIOConfig:
    """Hyper-parameters of a RADIO ViT with CPE. Defaults are radio_v2.5-b."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    max_img_size: int = 2048  # CPE grid side in pixels: G = max_img_size / patch_size cells
    img_size: int = 224  # timm's input size; the CPE path needs a grid that differs from it
    num_cls_tokens: int = 4  # one per teacher: clip, siglip, dino_v2, sam
    num_registers: int = 4
    summary_idxs: tuple[int, ...] = (0, 1, 2)  # teachers whose cls token forms the summary
    final_norm: bool = False  # args.model_norm

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.grid_size < 1:
            raise ConfigError(f"max_img_size {self.max_img_size} is smaller than one {self.patch_size} px patch")
        if self.grid_size == self.img_size // self.patch_size:
            raise ConfigError(
                f"max_img_size {self.max_img_size} gives the timm grid itself, which selects RADIO's non-CPE "
                "position path; loftup implements the CPE path only - use another max_img_size (radio_v2.5: 2048)"
            )
        if self.num_cls_tokens < 1 or self.num_registers < 0:
            raise ConfigError("RADIO needs num_cls_tokens >= 1 and num_registers >= 0")
        bad = [i for i in self.summary_idxs if not 0 <= i < self.num_cls_tokens]
        if bad:
            raise ConfigError(f"summary_idxs {bad} are not cls-token indices (0..{self.num_cls_tokens - 1})")

    @property
    def grid_size(self) -> int:
        # enable_cpe rounds the maximum size to whole patches
        return int(round(self.max_img_size / self.patch_size))

    @property
    def num_prefix_tokens(self) -> int:
        return self.num_cls_tokens + self.num_registers

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def summary_dim(self) -> int:
        return len(self.summary_idxs) * self.embed_dim


RADIO_V25_B = RADIOConfig()
RADIO_V25_L = RADIOConfig(embed_dim=1024, depth=24, num_heads=16)


class ClsTokens(nn.Module):
    """The prefix tokens: `token` (num_cls + num_registers, C), cls tokens first."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(num_tokens, dim))


class PatchGenerator(nn.Module):
    """Patch embedding, CPE position embedding and prefix tokens (RADIO's `ViTPatchGenerator`)."""

    def __init__(self, cfg: RADIOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, G, p = cfg.embed_dim, cfg.grid_size, cfg.patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, G * G, C))
        self.embedder = nn.Linear(3 * p * p, C, bias=False)  # input index c * p*p + yy * p + xx
        self.cls_token = ClsTokens(cfg.num_prefix_tokens, C)

    def position_embedding(self, rows, cols) -> torch.Tensor:
        """The CPE position embedding of a rows x cols patch grid, eval mode: (1, rows * cols, C).

        Bilinear resize of the G x G grid to max(rows, cols) squared, then the top-left window.
        rows/cols may be symbolic sizes while exporting.
        """
        G = self.cfg.grid_size
        pos = self.pos_embed
        C = pos.shape[-1]
        side = torch.sym_max(rows, cols)
        out = resize_grid(
            pos.reshape(G, G, C),
            bilinear_matrix(rows, side, G, pos.device),
            bilinear_matrix(cols, side, G, pos.device),
        )
        return out.reshape(1, rows * cols, C).to(pos.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) -> tokens (B, prefix + h*w, C)."""
        B, _, H, W = x.shape
        p = self.cfg.patch_size
        h, w = H // p, W // p
        # patch vector index c * p*p + yy * p + xx, patches row-major (RADIO's Im2Patches)
        patches = x.reshape(B, 3, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, 3 * p * p)
        t = self.embedder(patches)  # (B, h*w, C)
        t = t + self.position_embedding(h, w)
        prefix = self.cls_token.token.unsqueeze(0).expand(B, -1, -1).to(t.dtype)
        return torch.cat([prefix, t], dim=1)


class RadioViT(nn.Module):
    """timm ViT with RADIO's CPE patch generator (`RADIOModel.model`)."""

    def __init__(self, cfg: RADIOConfig) -> None:
        super().__init__()
        C = cfg.embed_dim
        self.blocks = nn.ModuleList(PreNormBlock(C, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(C, eps=1e-6) if cfg.final_norm else None
        self.patch_generator = PatchGenerator(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_generator(x)
        for blk in self.blocks:
            t = blk(t)
        return t if self.norm is None else self.norm(t)


def nearest_multiple(size: int, step: int) -> int:
    """RADIO's `get_nearest_supported_resolution` for one side: the closest positive multiple."""
    return max(step, int(round(size / step)) * step)


class RadioModel(nn.Module):
    """RADIO v2.5 backbone. Input (B, 3, H, W), H and W multiples of 16, normalised by the caller."""

    def __init__(self, cfg: RADIOConfig = RADIO_V25_B) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("summary_idxs", torch.tensor(cfg.summary_idxs, dtype=torch.int64))
        self.model = RadioViT(cfg)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random init in RADIO's style (used for `weights=None` / "random")."""
        init_vit_weights(self, generator)
        pg = self.model.patch_generator
        scale = self.cfg.embed_dim**-0.5
        with torch.no_grad():
            nn.init.normal_(pg.pos_embed, std=scale, generator=generator)
            nn.init.normal_(pg.cls_token.token, std=scale, generator=generator)
            self.summary_idxs.copy_(torch.tensor(self.cfg.summary_idxs, dtype=torch.int64))

    def position_embedding(self, rows, cols) -> torch.Tensor:
        """The position embedding added to a rows x cols patch grid: (1, rows * cols, C)."""
        return self.model.patch_generator.position_embedding(rows, cols)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected an image batch (B, 3, H, W), got shape {tuple(x.shape)}")
        p = self.cfg.patch_size
        H, W = x.shape[-2:]
        if H % p or W % p or H < p or W < p:
            raise InputError(
                f"RADIO needs image sides that are multiples of {p}, got {H}x{W}; the nearest valid size is "
                f"{nearest_multiple(H, p)}x{nearest_multiple(W, p)} (resize first; loftup's pipeline does)"
            )

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """summary (B, len(summary_idxs) * C), spatial (B, C, H/16, W/16), tokens (B, prefix + N, C)."""
        self._check_input(x)
        B, _, H, W = x.shape
        p, C = self.cfg.patch_size, self.cfg.embed_dim
        y = self.model(x)
        summary = y[:, self.summary_idxs].reshape(B, -1)  # token-major [cls_i | cls_j | ...]
        patches = y[:, self.cfg.num_prefix_tokens :]
        spatial = patches.transpose(1, 2).reshape(B, C, H // p, W // p)
        return {"summary": summary, "spatial": spatial, "tokens": y}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial features (B, C, H/16, W/16), as LoftUp's RADIO featurizer returns them."""
        return self.forward_features(x)["spatial"]


# ----------------------------------------------------------------------------------------
# checkpoints


@dataclass
class RadioWeights:
    """A RADIO checkpoint brought to our layout."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)  # RADIOConfig fields derived from `args`
    mean: tuple[float, float, float] | None = None  # the input conditioner, when the file has one
    std: tuple[float, float, float] | None = None


def _vars(args: Any) -> dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else {}


def config_from_args(args: Any, source: str = "checkpoint") -> dict[str, Any]:
    """RADIOConfig fields of a checkpoint's `args`, derived as NVlabs/RADIO's hubconf does."""
    a = _vars(args)
    if not a:
        return {}
    model = a.get("model")
    if model not in TIMM_VITS:
        raise CheckpointError(
            f"{source} is a RADIO checkpoint for model {model!r}; loftup supports the ViT RADIO v2.5 models "
            f"({', '.join(TIMM_VITS)})"
        )
    embed_dim, depth, heads, patch = TIMM_VITS[model]
    kwargs = dict(a.get("model_kwargs") or {})
    teachers = list(a.get("teachers") or [])
    names: list[str] = []
    summary: list[int] = []
    for t in teachers:
        name = t.get("name") if isinstance(t, dict) else str(t)
        if name in names:
            continue
        names.append(name)
        if not isinstance(t, dict) or t.get("use_summary", True) is not False:
            summary.append(len(names) - 1)
    num_cls = len(names) if a.get("cls_token_per_teacher", False) and names else 1
    multiple = int(a.get("register_multiple") or 0)
    cfg = {
        "embed_dim": int(kwargs.get("embed_dim", embed_dim)),
        "depth": int(kwargs.get("depth", depth)),
        "num_heads": int(kwargs.get("num_heads", heads)),
        "mlp_ratio": float(kwargs.get("mlp_ratio", 4.0)),
        "patch_size": patch,
        "num_cls_tokens": num_cls,
        "num_registers": multiple - (num_cls % multiple) if multiple else 0,
        "summary_idxs": tuple(i for i in summary if i < num_cls) or (0,),
        "final_norm": bool(a.get("model_norm", False)),
    }
    if a.get("cpe_max_size"):
        cfg["max_img_size"] = int(a["cpe_max_size"])
    return cfg


def _conditioner(sd: dict[str, torch.Tensor], prefix: str) -> tuple[tuple | None, tuple | None]:
    mean, std = sd.get(prefix + "norm_mean"), sd.get(prefix + "norm_std")
    if mean is None or std is None:
        return None, None
    return tuple(float(v) for v in mean.flatten()), tuple(float(v) for v in std.flatten())


def radio_state_dict(sd: dict[str, torch.Tensor]) -> RadioWeights:
    """Bring a RADIO state dict to our layout: the released checkpoint's (`base_model.*` +
    `input_conditioner.*` + teacher heads) or a `RADIOModel.state_dict()` (`model.*`,
    `summary_idxs`, with or without `input_conditioner.*`). Other layouts pass through
    unchanged (the caller reports the mismatch)."""
    sd = dict(sd)
    while sd and all(k.startswith("module.") for k in sd):  # DDP wrapper (timm clean_state_dict)
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if any(k.startswith("_feature_normalizer.") for k in sd):
        raise CheckpointError(
            "this RADIO checkpoint has a PHI-S feature normaliser (_feature_normalizer.*), which loftup does not "
            "apply; use radio_v2.5-b or radio_v2.5-l"
        )
    if any(k.startswith("base_model.") for k in sd):
        mean, std = _conditioner(sd, "input_conditioner.")
        out = {"model." + k[len("base_model.") :]: v for k, v in sd.items() if k.startswith("base_model.")}
        return RadioWeights(out, mean=mean, std=std)
    if any(k.startswith("model.patch_generator.") for k in sd):
        mean, std = _conditioner(sd, "input_conditioner.")
        out = {k: v for k, v in sd.items() if not k.startswith("input_conditioner.")}
        return RadioWeights(out, mean=mean, std=std)
    return RadioWeights(sd)


def read_radio_weights(path: str | Path) -> RadioWeights:
    """A RADIO checkpoint file (`.pth.tar` / `.pth` with `args`, or `.safetensors`) in our layout.

    The config derived from `args` (empty for files without one) lets the caller check that
    the file fits the architecture and fill in the summary-token indices.
    """
    from loftup.io import SAFETENSORS, checkpoint_format, load_weights_only, read_tensors

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}; give the path of a RADIO .pth.tar or .safetensors file")
    if checkpoint_format(path) == SAFETENSORS:
        return radio_state_dict(read_tensors(path)[0])
    # weights only; `args` is an argparse.Namespace, a plain attribute bag (its unpickling sets
    # attributes and runs no code of its own), so it is the one class allowed besides tensors
    obj = load_weights_only(path, "RADIO checkpoint", allow=[argparse.Namespace])
    args = None
    if isinstance(obj, dict) and ("state_dict" in obj or "state_dict_ema" in obj):
        args = obj.get("args")
        obj = obj["state_dict_ema"] if isinstance(obj.get("state_dict_ema"), dict) else obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state dict (got {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        bad = [k for k in obj if k not in tensors][:3]
        raise CheckpointError(f"{path}: entries that are not tensors: {bad}")
    weights = radio_state_dict(tensors)
    weights.config = config_from_args(args, source=str(path))
    return weights

