"""What `loftup viz` computes (the supplement's appendix C), with the code paths the toolchain
already has; the pictures are drawn by `loftup.commands.pictures`.

- `panel_features`: several upsamplers on one image (C.1), each an eval feature source, so a
  panel is exactly what `loftup eval` would score;
- `attention_at_pixels`: where chosen high-res pixels attend over the low-res token grid (C.5),
  per block and head, from the queries of those pixels alone (never the full matrix);
- `pseudo_gt`: the stage-1 target (raw bicubic, masks, mask-refined) of training's own sample
  of the image, and with a stage-2 checkpoint the teacher's targets on training's crops (C.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, InputError, closest

BASELINE_PANELS = ("lowres", "nearest", "bilinear", "bicubic")
ENGINE_SUFFIXES = (".onnx", ".plan", ".engine")


@dataclass(frozen=True)
class Panel:
    """One `--upsamplers` entry: a baseline, a checkpoint of an upsampler kind, or an engine file."""

    kind: str  # a baseline name, an upsampler kind, or "engine"
    path: Path | None = None

    @property
    def label(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path.name}"


def upsampler_kinds() -> tuple[str, ...]:
    """The checkpoint kinds a panel may name (LoftUp, and any kind `loftup.model` registers)."""
    from .. import model

    return tuple(getattr(model, "UPSAMPLER_KINDS", ("loftup",)))


def parse_panels(spec: str) -> list[Panel]:
    """'loftup:A.safetensors,bilinear,model.onnx' -> Panels; ConfigError naming what is wrong."""
    kinds = upsampler_kinds()
    panels: list[Panel] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        kind, sep, path = part.partition(":")
        if not sep and Path(part).suffix.lower() in ENGINE_SUFFIXES:
            kind, path = "engine", part
        if kind in BASELINE_PANELS and not sep:
            panels.append(Panel(kind))
            continue
        known = (*kinds, "engine")
        if kind not in known:
            choices = (*BASELINE_PANELS, *known)
            raise ConfigError(f"unknown upsampler {kind!r}{closest(kind, choices)} in --upsamplers; use a baseline "
                              f"({', '.join(BASELINE_PANELS)}), KIND:CHECKPOINT with KIND one of {', '.join(kinds)}, or an .onnx/.plan file")
        if not path:
            raise ConfigError(f"--upsamplers entry {part!r} needs a file: write {kind}:PATH")
        file = Path(path).expanduser()
        if not file.is_file():
            raise InputError(f"{file} (in --upsamplers) does not exist")
        panels.append(Panel(kind, file))
    if not panels:
        raise ConfigError("--upsamplers is empty; e.g. --upsamplers loftup:model.safetensors,bilinear")
    return panels


def feature_sources(panels: list[Panel], runner, device: str) -> dict[str, Any]:
    """Panels -> eval feature sources on one backbone runner (`loftup.eval.upsamplers`)."""
    from ..eval.upsamplers import EngineFeatures, LoftUpFeatures, check_engine_fits, make_baseline, open_engine
    from ..model import kind_of, load_checkpoint

    sources: dict[str, Any] = {}
    for panel in panels:
        if panel.path is None:
            sources[panel.label] = make_baseline(panel.kind, runner)
        elif panel.kind == "engine":
            handle = open_engine(panel.path)
            check_engine_fits(handle, runner.name, runner)
            sources[panel.label] = EngineFeatures(runner, handle, panel.label)
        else:
            model = load_checkpoint(panel.path, feat_dim=runner.embed_dim)
            found = kind_of(model)
            if found != panel.kind:
                raise ConfigError(f"{panel.path.name} holds a {found} upsampler, not {panel.kind}; write {found}:{panel.path}")
            sources[panel.label] = LoftUpFeatures(runner, model.to(device), panel.label)
    return sources


@torch.no_grad()
def panel_features(sources: dict[str, Any], image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each source's features (C, H, W) of a (1, 3, H, W) guidance image; low-res ones stay low-res."""
    return {name: src.features(image).float()[0].cpu() for name, src in sources.items()}


# ------------------------------------------------------------------------------------------
@dataclass
class AttentionMaps:
    """weights[block][head]: (n_pixels, h, w), each map summing to 1 over the token grid."""

    pixels: list[tuple[int, int]]
    grid: tuple[int, int]
    weights: list[list[torch.Tensor]] = field(default_factory=list)


def check_pixels(pixels: list[tuple[int, int]], H: int, W: int) -> None:
    for y, x in pixels:
        if not (0 <= y < H and 0 <= x < W):
            raise InputError(f"pixel ({y}, {x}) is outside the {H}x{W} output; give y in [0, {H - 1}] and x in [0, {W - 1}]")


def parse_pixels(text: str) -> list[tuple[int, int]]:
    """'y1,x1;y2,x2' -> [(y1, x1), (y2, x2)]."""
    pixels = []
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        try:
            y, x = (int(v) for v in part.split(","))
        except ValueError:
            raise ConfigError(f"--pixels takes 'y,x' pairs separated by ';' (e.g. '10,20;40,8'), got {part!r}") from None
        pixels.append((y, x))
    if not pixels:
        raise ConfigError("--pixels is empty; give at least one 'y,x' pair")
    return pixels


@torch.no_grad()
def attention_at_pixels(model, lr: torch.Tensor, image: torch.Tensor, pixels: list[tuple[int, int]]) -> AttentionMaps:
    """Cross-attention weights of chosen output pixels over the low-res token grid, every block and head.

    model: a LoftUp (eval mode); lr (1, C, h, w) raw backbone features; image (1, 3, H, W) the
    guidance image. The query path (Fourier features, convs) runs on the whole image, then only
    the chosen pixels' queries go through the blocks: each block's weights are
    softmax(q k^T / sqrt(d)) for those n pixels against the h*w keys, so memory is n x h*w per
    head whatever the output size. The blocks' own outputs for those pixels carry on to the next
    block exactly as in the full forward pass (queries never attend to each other).
    """
    from ..model.layers import coord_grid
    from ..model.upsampler import image_features

    up = model.upsampler
    H, W = image.shape[-2:]
    check_pixels(pixels, H, W)
    kv = up.ca_transformer.project_kv(up.kv_tokens(model.channelnorm(lr)))  # per block: (k, v), (1, heads, M, d)
    ys, xs = coord_grid(H, image.device), coord_grid(W, image.device)
    lo, hi = up.fourier_feat[0].extrema(image)
    x = image_features(up, image, lo, hi, ys, xs)
    for layer in list(up.first_conv)[1:]:  # the same query path as LoftUpUpsampler._queries_and_out
        x = layer(x)
    idx = torch.tensor([py * W + px for py, px in pixels], device=x.device)
    q = x.flatten(2).transpose(1, 2)[:, idx]  # (1, n, D): the chosen pixels' query tokens
    rope = None
    if up.ca_transformer.rope is not None:  # the same positions as LoftUpUpsampler.forward
        hy, wx = torch.meshgrid(coord_grid(lr.shape[2], lr.device), coord_grid(lr.shape[3], lr.device), indexing="ij")
        q_pos = torch.stack([ys[[py for py, _ in pixels]], xs[[px for _, px in pixels]]], dim=1)
        rope = (up.ca_transformer.rope, q_pos, torch.stack([hy.flatten(), wx.flatten()], dim=1))
    maps = AttentionMaps(pixels, tuple(lr.shape[-2:]))
    for (block, ff), (k, v) in zip(up.ca_transformer.layers, kv):
        w = block.attention.attention_weights(block.norm_q(q), k, rope)  # (1, heads, n, M)
        maps.weights.append([w[0, h].reshape(len(pixels), *maps.grid) for h in range(w.shape[1])])
        q = block(q, k, v, rope) + q  # as CATransformer.forward: attention, then the FFN, both residual
        q = ff(q) + q
    return maps


# ------------------------------------------------------------------------------------------
@dataclass
class PseudoGT:
    """Training's view of one image and its targets (all float32, CPU)."""

    image: torch.Tensor  # (3, S, S) normalised, as training renders it
    masks: torch.Tensor  # (M, S, S) bool
    raw: torch.Tensor  # (C, S, S) bicubic upsampling of the channel-normed low-res features
    refined: torch.Tensor  # (C, S, S) the stage-1 target
    teacher_images: torch.Tensor | None = None  # (K, 3, T, T) stage-2 teacher crops
    teacher_masks: torch.Tensor | None = None  # (K, M, m, m)
    teacher_targets: torch.Tensor | None = None  # (K, C, m, m) the stage-2 targets
    boxes: list[tuple[int, int, int]] = field(default_factory=list)  # each crop's (oy, ox, side) in the student view
    key: tuple[int, int, int] = (0, 0, 0)  # the dataset key training's first step uses


@torch.no_grad()
def pseudo_gt(image: str | Path, backbone, masks: str = "slic", size: int = 224, seed: int = 0, model=None,
              teacher=None, preset: str = "paper", **overrides) -> PseudoGT:
    """The targets training computes for `image` at its first step (same seed, masks, crops).

    The sample is rendered by the training dataset (`train.data.MaskedImageDataset`) from the
    training config (`train.build_config`: preset + overrides), with the key the step sampler
    gives step 0; the stage-1 target is `train.stage1.mask_bicubic_target` on the channel norm of
    `model` (a fresh identity channel norm without one, as at the start of training); with a
    `teacher` (a stage-2 checkpoint's model) the teacher targets are `train.stage2.teacher_targets`.
    """
    from ..runtime.devices import autocast
    from ..model.layers import ChannelNorm
    from ..train import build_config
    from ..train.data import MaskedImageDataset, SampleSpec, StepSampler, discover
    from ..train.features import FeatureExtractor
    from ..train.stage1 import mask_bicubic_target
    from ..train.stage2 import teacher_targets

    def training_sample(stage: int):
        """(config, item) of training's first step at this stage: same sampler key, same rendering."""
        cfg = build_config(stage, preset, data=str(image), out="unused", backbone=getattr(backbone, "name", "custom"),
                           size=size, batch_size=1, masks=masks, seed=seed, **overrides)
        dataset = MaskedImageDataset(discover(image, masks).records[:1], SampleSpec.from_config(cfg, backbone))
        return cfg, dataset[key]

    key = StepSampler(1, 1, [size], seed).batch(0)[0]
    cfg, item = training_sample(1)
    features = FeatureExtractor(backbone, None, cfg.precision)
    norm = model.channelnorm if model is not None else ChannelNorm(int(backbone.embed_dim)).eval()
    lr_n = norm(features(item["image"][None]))
    S = tuple(item["image"].shape[-2:])
    raw = mask_bicubic_target(lr_n, None, S, cfg.alpha, cfg.refine_mode)
    refined = mask_bicubic_target(lr_n, item["masks"][None], S, cfg.alpha, cfg.refine_mode)
    out = PseudoGT(item["image"], item["masks"], raw[0], refined[0], key=tuple(key))
    if teacher is not None:
        cfg2, item2 = training_sample(2)
        out.teacher_images, out.teacher_masks = item2["t_images"], item2["t_masks"]
        out.teacher_targets = teacher_targets(teacher.eval(), features, lambda: autocast("cpu", cfg2.precision),
                                              item2["t_images"], item2["t_masks"], cfg2.teacher_alpha, cfg2.refine_mode)
        out.boxes = [tuple(b) for b in item2["t_boxes"].tolist()]
    return out


__all__ = ["AttentionMaps", "Panel", "PseudoGT", "attention_at_pixels", "feature_sources", "panel_features",
           "parse_panels", "parse_pixels", "pseudo_gt"]
