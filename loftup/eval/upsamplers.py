"""The upsamplers under test, all behind one small interface.

    src.features(image, out_size=None) -> (B, C, H', W')

`image` is (B, 3, H, W), normalised with `src.mean` / `src.std`; the features come out at
`out_size` (default: the image's size), except for the low-res baseline, which returns the
backbone's own grid - a probe then brings its *predictions* to the label size with
`src.pred_resize` ("nearest" for low-res, "bilinear" otherwise).

Sources: `LowResFeatures` (no upsampling), `InterpolatedFeatures` (nearest / bilinear /
bicubic), `LoftUpFeatures` (a PyTorch LoftUp model: the reference) and `EngineFeatures` (any
engine from `loftup.export`: ONNX, TensorRT, our checkpoint). Sources built on one
`BackboneRunner` share its backbone pass, so several upsamplers on one batch cost one
backbone forward.

Backbones come from `loftup.backbones.create_backbone` (`loftup.backbones.register_backbone`
adds others, e.g. the tiny conv backbone of the tests). Every backbone input and guidance
image comes from `loftup.pipeline`, the same rule as the exported engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import (
    CheckpointError,
    ConfigError,
    InputError,
    check_choice,
)
from ..pipeline import backbone_input, check_finite, guidance_image

BASELINES = ("lowres", "nearest", "bilinear", "bicubic", "oracle2x", "oracle4x", "pseudo-gt")
# the last three are reference rows rather than upsamplers: the backbone at 2x / 4x the output
# (OracleFeatures) and LoftUp's stage-1 target (PseudoGTFeatures) - they bracket what an upsampler reaches


# ----------------------------------------------------------------------------------------


class BackboneRunner:
    """Runs a frozen backbone on the guidance image of a batch; remembers the last call.

    input_size: the pipeline's backbone input rule (`loftup.pipeline.backbone_input_size`):
    None -> the guidance image's own size rounded down to the patch; int -> shorter side.
    """

    def __init__(self, backbone: nn.Module, input_size: int | tuple[int, int] | None = None):
        self.backbone = backbone
        self.input_size = input_size
        self.patch_size = int(backbone.patch_size)
        self.embed_dim = int(backbone.embed_dim)
        self.mean, self.std = tuple(backbone.mean), tuple(backbone.std)
        self.name = getattr(backbone, "name", type(backbone).__name__)
        self._last: tuple[Any, torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Raw backbone features (B, C, h, w) of a normalised image batch seen at `out_size`."""
        key = (id(image), image._version, tuple(image.shape), tuple(out_size) if out_size else None)
        if self._last is not None and self._last[0] == key and self._last[1] is image:
            return self._last[2]
        x = backbone_input(guidance_image(image, out_size), self.patch_size, self.input_size)
        lr = self.backbone(x).float()
        self._last = (key, image, lr)
        return lr


class FeatureSource:
    """Base class: an upsampler under test (see the module doc for the contract)."""

    name = "source"
    pred_resize = "bilinear"

    def __init__(self, runner: BackboneRunner, name: str | None = None):
        self.runner = runner
        self.name = name or self.name
        self.mean, self.std = runner.mean, runner.std

    @property
    def feat_dim(self) -> int:
        return self.runner.embed_dim

    def features(self, image: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": type(self).__name__, "backbone": self.runner.name}

    guidance = staticmethod(guidance_image)  # the normalised image at the output size, LoftUp's guidance


class LowResFeatures(FeatureSource):
    """No upsampling: the backbone grid itself; predictions are upsampled nearest."""

    name = "lowres"
    pred_resize = "nearest"

    @torch.no_grad()
    def features(self, image, out_size=None):
        return self.runner(image, out_size)


class InterpolatedFeatures(FeatureSource):
    """Backbone features resized with F.interpolate (nearest, bilinear or bicubic)."""

    def __init__(self, runner: BackboneRunner, mode: str, name: str | None = None):
        check_choice("interpolation", mode, ("nearest", "bilinear", "bicubic"))
        super().__init__(runner, name or mode)
        self.mode = mode

    @torch.no_grad()
    def features(self, image, out_size=None):
        lr = self.runner(image, out_size)
        size = tuple(out_size or image.shape[-2:])
        kwargs = {} if self.mode == "nearest" else {"align_corners": False}
        return F.interpolate(lr, size=size, mode=self.mode, **kwargs)


class OracleFeatures(FeatureSource):
    """A reference row, not an upsampler: the backbone run on the image at `scale` x the
    output size (shorter side), its features resized bilinearly to the output. What an
    upsampler could reach if it recovered what the backbone sees at that resolution."""

    def __init__(self, runner: BackboneRunner, scale: float, name: str | None = None):
        if not scale > 1:
            raise ConfigError(f"the oracle's scale must be above 1, got {scale}")
        super().__init__(runner, name or f"oracle{scale:g}x")
        self.scale = float(scale)

    @torch.no_grad()
    def features(self, image, out_size=None):
        size = tuple(out_size or image.shape[-2:])
        x = backbone_input(guidance_image(image, size), self.runner.patch_size, round(min(size) * self.scale))
        hr = self.runner.backbone(x).float()
        return F.interpolate(hr, size=size, mode="bilinear", align_corners=False)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": self.scale}


class PseudoGTFeatures(FeatureSource):
    """A reference row: LoftUp's stage-1 training target itself - the channel-normed low-res
    features upsampled bicubically and refined per mask (`loftup.train.stage1.mask_bicubic_target`),
    with the masks stage 1 computes for an image without annotations (SLIC superpixels by
    default, as `loftup demo` trains)."""

    name = "pseudo-gt"

    def __init__(self, runner: BackboneRunner, masks: str = "slic", alpha: float = 0.8, max_masks: int = 150,
                 name: str | None = None):
        super().__init__(runner, name)
        self.masks, self.alpha, self.max_masks = masks, float(alpha), int(max_masks)

    @torch.no_grad()
    def features(self, image, out_size=None):
        import numpy as np

        from ..train.masks import superpixel_masks
        from ..train.stage1 import mask_bicubic_target

        size = tuple(out_size or image.shape[-2:])
        g = guidance_image(image, size)
        lr = self.runner(image, size)
        lr = F.layer_norm(lr.permute(0, 2, 3, 1), lr.shape[1:2]).permute(0, 3, 1, 2)  # LoftUp's channel norm (unit affine)
        mean = torch.tensor(self.mean, dtype=g.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=g.dtype).view(3, 1, 1)
        out = []
        for i in range(g.shape[0]):
            rgb = ((g[i].cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            m = torch.from_numpy(superpixel_masks(np.ascontiguousarray(rgb), self.masks, self.max_masks))[None]
            out.append(mask_bicubic_target(lr[i : i + 1], m, size, self.alpha))
        return torch.cat(out).to(image.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "masks": self.masks, "alpha": self.alpha}


class LoftUpFeatures(FeatureSource):
    """A PyTorch upsampler of any kind (LoftUp, LiFT, FeatUp-JBU; `loftup.model.build_upsampler`)
    on the runner's features, run as a `TorchEngine` in upsampler form, so its output comes at
    the guidance size (LiFT's 2x and JBU's 16x grids resized bilinearly by the engine, see
    `loftup.pipeline.fit_output`) and in eval mode; reference=True makes it the parity reference
    (`loftup.export.engine.reference_engine`, the same one export and bench compare with).
    memory_budget: bytes of process RSS LoftUp's tiling keeps under (None: the default)."""

    def __init__(self, runner: BackboneRunner, model: nn.Module, name: str = "loftup", reference: bool = False,
                 cuda_graphs: bool = False, memory_budget: int | None = None):
        from ..export.engine import TorchEngine, reference_engine

        super().__init__(runner, name)
        device = next(model.parameters()).device
        self.engine = (reference_engine(model, device=str(device), memory_budget=memory_budget) if reference
                       else TorchEngine(model, device=str(device), cuda_graphs=cuda_graphs, memory_budget=memory_budget))
        self.kind = getattr(model, "kind", "loftup")
        C = model.cfg.feat_dim
        if C != runner.embed_dim:
            raise InputError(
                f"{name}: the {self.kind} model upsamples {C}-channel features but backbone {runner.name!r} gives "
                f"{runner.embed_dim}; use a checkpoint trained for this backbone"
            )

    @torch.no_grad()
    def features(self, image, out_size=None):
        hr = self.engine(self.runner(image, out_size), self.guidance(image, out_size))
        return check_finite(hr, f"{self.name}'s features").to(image.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "upsampler": self.kind}


class EngineFeatures(FeatureSource):
    """An exported engine (see `open_engine`) on the runner's features, or on the image for
    a whole-pipeline engine."""

    def __init__(self, runner: BackboneRunner, handle: EngineHandle, name: str = "engine"):
        super().__init__(runner, name)
        self.handle = handle

    @torch.no_grad()
    def features(self, image, out_size=None):
        size = tuple(out_size or image.shape[-2:])
        if self.handle.scope == "pipeline":  # the engine resizes for its backbone itself
            hr = self.handle.run_pipeline(self.guidance(image, size))
        else:
            hr = self.handle.run_upsampler(self.runner(image, size), self.guidance(image, size))
        return check_finite(hr, f"{self.name}'s features").to(image.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine": str(self.handle.path), "scope": self.handle.scope}


def make_baseline(name: str, runner: BackboneRunner) -> FeatureSource:
    """One of BASELINES on a shared runner."""
    check_choice("baseline", name, BASELINES)
    if name == "lowres":
        return LowResFeatures(runner)
    if name.startswith("oracle"):
        return OracleFeatures(runner, float(name[len("oracle"):-1]), name)
    if name == "pseudo-gt":
        return PseudoGTFeatures(runner)
    return InterpolatedFeatures(runner, name)


def parse_baselines(text: str | None) -> list[str]:
    """'bilinear,lowres' -> ['bilinear', 'lowres'] (validated, order kept, duplicates dropped)."""
    names: list[str] = []
    for part in (text or "").replace(" ", "").split(","):
        if part and part not in names:
            names.append(check_choice("baseline", part, BASELINES))
    return names


# ----------------------------------------------------------------------------------------
# engines: the one adapter onto loftup.export


@dataclass
class EngineHandle:
    """What eval needs from an engine, whatever its format (`loftup.export.engine.load_engine`).

    From its metadata: backbone, feat_dim, scope ("upsampler" | "pipeline"), reference (the
    source checkpoint's file name) and its sha256, mean / std (the image normalisation a
    pipeline engine expects). A pipeline engine is called on the image at the output size and
    resizes it for its backbone itself; an upsampler engine on raw backbone features + the
    guidance image.
    """

    path: Path
    engine: Any
    backbone: str | None
    feat_dim: int | None
    scope: str
    reference: str | None
    reference_sha256: str | None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def run_upsampler(self, lr: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return self.engine(lr, guidance).float()

    def run_pipeline(self, image: torch.Tensor) -> torch.Tensor:
        return self.engine(image).float()


def open_engine(path: str | Path, cuda_graphs: bool = False) -> EngineHandle:
    """An engine file (.onnx, .plan or a LoftUp checkpoint) opened with `load_engine` (cuda_graphs:
    PyTorch checkpoints only)."""
    from ..export.engine import load_engine

    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"engine {path} does not exist; pass --engine with an .onnx, .plan or checkpoint file")
    engine = load_engine(path, cuda_graphs=cuda_graphs)
    md = engine.metadata
    return EngineHandle(
        path=path, engine=engine, backbone=md.backbone, feat_dim=int(md.feat_dim), scope=md.scope,
        reference=md.source_checkpoint, reference_sha256=md.source_sha256,
        mean=tuple(md.mean) if md.mean else None, std=tuple(md.std) if md.std else None, metadata=md.to_dict(),
    )


def check_engine_fits(handle: EngineHandle, backbone_name: str, runner: BackboneRunner | None = None) -> None:
    """ConfigError / InputError when the engine was built for another backbone or channel count.

    The image normalisation is checked for pipeline engines, and for upsampler engines of the
    kinds that read the normalised guidance as it is (LiFT, FeatUp-JBU); LoftUp's guidance is
    min-max scaled per channel, which undoes any per-channel normalisation.
    """
    if handle.backbone and backbone_name and handle.backbone != backbone_name:
        raise ConfigError(
            f"engine {handle.path.name} was exported for backbone {handle.backbone!r} but the data pipeline uses "
            f"{backbone_name!r}; pass --backbone {handle.backbone} (or an engine exported for {backbone_name})"
        )
    if runner is None:
        return
    if handle.feat_dim is not None and handle.feat_dim != runner.embed_dim:
        raise InputError(
            f"engine {handle.path.name} upsamples {handle.feat_dim}-channel features but backbone {backbone_name!r} "
            f"gives {runner.embed_dim}; use an engine exported for this backbone"
        )
    recorded = handle.metadata.get("input_size")
    if handle.scope == "pipeline" and runner.input_size != recorded:
        rule = f"input size {recorded}" if recorded is not None else "input (the image rounded down to whole patches)"
        raise ConfigError(
            f"engine {handle.path.name} is a pipeline engine: its graph applies the backbone {rule} it was exported with, so "
            f"--input-size {runner.input_size} cannot apply to it; drop --input-size, or export again with --input-size {runner.input_size}"
        )
    for what, theirs, ours in (("mean", handle.mean, runner.mean), ("std", handle.std, runner.std)):
        reads_norm = handle.scope == "pipeline" or handle.metadata.get("upsampler", "loftup") != "loftup"
        if reads_norm and theirs is not None and any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(theirs, ours)):
            raise ConfigError(
                f"engine {handle.path.name} expects images normalised with {what} {list(theirs)} but backbone "
                f"{backbone_name!r} uses {list(ours)}; use the backbone the engine was exported with"
            )


def resolve_reference(handle: EngineHandle, explicit: str | Path | None = None) -> Path:
    """The engine's reference checkpoint: `explicit`, else the path in its metadata.

    A relative metadata path is also looked up next to the engine. When the metadata holds
    the checkpoint's sha256, the file found must match it.
    """
    if explicit is not None:
        ref = Path(explicit).expanduser()
        if not ref.is_file():
            raise CheckpointError(f"reference checkpoint {ref} does not exist; pass --reference with the checkpoint the engine was exported from")
    else:
        if handle.metadata.get("format") == "torch":  # a checkpoint is its own reference
            return handle.path
        if not handle.reference:
            raise CheckpointError(
                f"engine {handle.path.name} names no reference checkpoint in its metadata; pass --reference CKPT"
            )
        candidates = [Path(handle.reference).expanduser(), handle.path.parent / Path(handle.reference).name]
        ref = next((c for c in candidates if c.is_file()), None)
        if ref is None:
            raise CheckpointError(
                f"engine {handle.path.name} was exported from {handle.reference}, which is not here; pass --reference CKPT"
            )
    if handle.reference_sha256 and explicit is None:
        from ..io import file_sha256

        digest = file_sha256(ref)
        if digest != handle.reference_sha256:
            raise CheckpointError(
                f"reference {ref} (sha256 {digest[:12]}) is not the checkpoint engine {handle.path.name} was exported from "
                f"(sha256 {str(handle.reference_sha256)[:12]}); pass --reference with the right file"
            )
    return ref


__all__ = [
    "BASELINES",
    "BackboneRunner",
    "EngineFeatures",
    "EngineHandle",
    "FeatureSource",
    "InterpolatedFeatures",
    "LoftUpFeatures",
    "LowResFeatures",
    "OracleFeatures",
    "PseudoGTFeatures",
    "check_engine_fits",
    "make_baseline",
    "open_engine",
    "parse_baselines",
    "resolve_reference",
]
