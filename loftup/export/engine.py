"""One Engine interface for every runnable form of LoftUp, and `load_engine(path)`.

    engine = load_engine("loftup.onnx")          # or .plan, or a PyTorch checkpoint
    hr = engine(images)                          # pipeline form: (B, 3, H, W) -> (B, C, H, W)
    hr = engine(lr_feats, image)                 # upsampler form: raw backbone features + guidance
    engine.metadata.feat_dim, engine.metadata.parity, ...

Images are RGB in [0, 1] normalised with `metadata.mean` / `metadata.std`; `lr_feats` are raw
backbone patch features (before LoftUp's channel norm). Inputs and outputs are torch tensors;
the output is float32 whatever the engine computes in.
Training, bench and eval talk to this interface only, so they never branch on the runtime.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..backbones.preprocess import resize_for_backbone
from ..errors import CheckpointError, InputError, check_choice
from .formats import PRECISIONS, SCOPES, format_for_path

IMAGE_VALUES = "RGB in [0, 1], normalised per channel as (x - mean) / std"
LR_VALUES = "raw backbone patch features (B, C, h, w), before LoftUp's channel norm"


@dataclass
class EngineMetadata:
    """What an engine is and what it accepts; stored with every exported engine.

    input_shapes: per input name {"min": [...], "opt": [...], "max": [...]} - the valid range
    (empty for PyTorch engines, which take any size).
    """

    format: str
    scope: str
    feat_dim: int
    backbone: str | None = None
    patch_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    precision: str = "fp32"
    opset: int | None = None
    attention: str | None = None
    input_shapes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    input_values: dict[str, str] = field(default_factory=dict)
    source_checkpoint: str | None = None
    source_sha256: str | None = None
    loftup_version: str = ""
    torch_version: str = ""
    created: str = ""
    model_config: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    runtime: dict[str, Any] = field(default_factory=dict)  # e.g. TensorRT version and GPU of a .plan

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("image",) if self.scope == "pipeline" else ("lr_feats", "image")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "engine") -> "EngineMetadata":
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("format", "scope", "feat_dim") if k not in data]
        if missing:
            raise CheckpointError(f"{source}: metadata lacks {', '.join(missing)}; re-export the engine with `loftup export`")
        return cls(**{k: v for k, v in data.items() if k in known})


def now_iso() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def base_metadata(model, backbone=None, *, fmt: str, scope: str, precision: str, source: str | Path | None = None) -> EngineMetadata:
    """Metadata common to every engine made from `model` (a LoftUp) and an optional backbone."""
    from .. import __version__
    from ..io import file_sha256

    check_choice("scope", scope, SCOPES)
    src = Path(source) if source else None
    cfg = model.cfg
    return EngineMetadata(
        format=fmt,
        scope=scope,
        feat_dim=int(cfg.feat_dim),
        backbone=getattr(backbone, "name", None) or cfg.backbone,
        patch_size=getattr(backbone, "patch_size", None),
        mean=list(getattr(backbone, "mean", None) or IMAGENET_MEAN),
        std=list(getattr(backbone, "std", None) or IMAGENET_STD),
        precision=precision,
        input_values={"image": IMAGE_VALUES, **({"lr_feats": LR_VALUES} if scope == "upsampler" else {})},
        source_checkpoint=src.name if src else None,
        source_sha256=file_sha256(src) if src and src.is_file() else None,
        loftup_version=__version__,
        torch_version=torch.__version__,
        created=now_iso(),
        model_config=cfg.to_dict(),
    )


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------
class Engine:
    """Base class: validates inputs against the metadata, then runs `_run`.

    Subclasses set `self.metadata` and implement `_run(inputs) -> torch.Tensor`.
    """

    metadata: EngineMetadata
    name: str = "engine"

    @property
    def scope(self) -> str:
        return self.metadata.scope

    def accepts(self, n_inputs: int) -> bool:
        """Whether the engine takes the 1-input pipeline form or the 2-input upsampler form."""
        return n_inputs == len(self.metadata.input_names)

    def __call__(self, *inputs):
        """engine(images) or engine(lr_feats, image) -> hr feats (B, C, H, W)."""
        self.check_inputs(inputs)
        return self._run(inputs)

    def check_inputs(self, inputs) -> None:
        md = self.metadata
        if not self.accepts(len(inputs)):
            form = "engine(images)" if md.scope == "pipeline" else "engine(lr_feats, image)"
            raise InputError(f"this {md.scope} engine is called as {form}, got {len(inputs)} input(s)")
        names = ("image",) if len(inputs) == 1 else ("lr_feats", "image")
        for name, x in zip(names, inputs):
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                raise InputError(f"{name} must be a 4-D torch tensor (B, C, H, W), got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
            if not x.is_floating_point():
                raise InputError(f"{name} must be a floating-point tensor, got {x.dtype}")
        image = inputs[-1]
        if image.shape[1] != 3:
            raise InputError(f"image must have 3 channels (RGB), got shape {tuple(image.shape)}")
        if len(inputs) == 2:
            lr = inputs[0]
            if lr.shape[1] != md.feat_dim:
                raise InputError(
                    f"lr_feats has {lr.shape[1]} channels but this engine upsamples {md.feat_dim}-channel features; "
                    "use the engine built for your backbone"
                )
            if lr.shape[0] != image.shape[0]:
                raise InputError(f"batch sizes differ: lr_feats {lr.shape[0]}, image {image.shape[0]}")
        for name, x in zip(names, inputs):
            rng = md.input_shapes.get(name)
            if not rng:
                continue
            lo, hi = rng["min"], rng["max"]
            for axis in (0, 2, 3):
                if not lo[axis] <= x.shape[axis] <= hi[axis]:
                    what = {0: "batch", 2: "height", 3: "width"}[axis]
                    raise InputError(
                        f"{name} {what} {x.shape[axis]} is outside this engine's range [{lo[axis]}, {hi[axis]}] "
                        f"(shape {tuple(x.shape)}); resize the input or export again with other --min-size/--max-size/--max-batch"
                    )

    def _run(self, inputs):  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        md = self.metadata
        return f"{self.name}: {md.format} {md.scope} C={md.feat_dim} {md.precision}" + (f" backbone={md.backbone}" if md.backbone else "")


# ------------------------------------------------------------------------------------------
class LoftUpPipeline(nn.Module):
    """Backbone + upsampler: image (B, 3, H, W) normalised -> hr feats (B, C, H, W).

    The backbone sees the image resized (`resize_for_backbone`: bilinear) to the largest
    multiples of its patch size (an identity when H and W already are multiples), the upsampler
    the image itself.
    """

    def __init__(self, backbone, upsampler):
        super().__init__()
        self.backbone = backbone
        self.upsampler = upsampler
        self.patch_size = int(backbone.patch_size)

    def forward(self, image):
        p = self.patch_size
        H, W = image.shape[-2:]
        if H < p or W < p:
            raise InputError(f"image {H}x{W} is smaller than one {p}x{p} backbone patch")
        x = resize_for_backbone(image, (H // p * p, W // p * p))
        return self.upsampler(self.backbone(x), image)


def make_pipeline(backbone, upsampler) -> LoftUpPipeline:
    """The pipeline module (shared by the PyTorch engine and the ONNX export), eval mode."""
    return LoftUpPipeline(backbone, upsampler).eval()


def with_attention_backend(model, backend: str):
    """Copy of a LoftUp model whose attention runs on `backend` (reference, sdpa, triton, auto)."""
    from ..kernels import AttentionDispatcher

    model = copy.deepcopy(model)
    dispatcher = AttentionDispatcher(backend)
    for module in model.modules():
        if hasattr(module, "dispatcher"):
            module.dispatcher = dispatcher
    model.cfg = model.cfg.replace(attn_backend=backend)
    model.upsampler.cfg = model.cfg
    return model


class TorchEngine(Engine):
    """The PyTorch reference as an engine: a LoftUp model, optionally with its backbone.

    With a backbone it takes both forms (pipeline and upsampler). precision "bf16"/"fp16" runs
    under autocast (the Fourier features stay float32, as autocast keeps sin/cos in float32);
    compile=True wraps the forward in torch.compile (one compilation per input shape).
    """

    name = "torch"

    def __init__(self, model, backbone=None, precision: str = "fp32", compile: bool = False, device: str = "cpu",
                 metadata: EngineMetadata | None = None, source: str | Path | None = None):
        check_choice("precision", precision, PRECISIONS)
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.backbone = backbone.eval().to(self.device) if backbone is not None else None
        self.pipeline = make_pipeline(self.backbone, self.model) if backbone is not None else None
        self.precision = precision
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.compiled = compile
        self._up = torch.compile(self.model) if compile else self.model
        self._pipe = (torch.compile(self.pipeline) if compile else self.pipeline) if self.pipeline is not None else None
        scope = "pipeline" if backbone is not None else "upsampler"
        self.metadata = metadata or base_metadata(model, backbone, fmt="torch", scope=scope, precision=precision, source=source)

    def accepts(self, n_inputs: int) -> bool:
        return n_inputs == 2 or (n_inputs == 1 and self.pipeline is not None)

    def check_inputs(self, inputs) -> None:
        if len(inputs) == 1 and self.pipeline is None:
            raise InputError("this PyTorch engine has no backbone, so it is called as engine(lr_feats, image); pass backbone= to load_engine for the pipeline form")
        super().check_inputs(inputs)

    def _run(self, inputs):
        import contextlib

        inputs = [x.to(self.device, torch.float32) for x in inputs]
        ctx = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = self._pipe(*inputs) if len(inputs) == 1 else self._up(*inputs)
        return out.float()


# ------------------------------------------------------------------------------------------
def load_engine(path: str | Path, *, backbone=None, providers: list[str] | None = None, threads: int | None = None,
                device: str = "cpu", precision: str = "fp32", attn_backend: str | None = None, compile: bool = False) -> Engine:
    """Open any engine file; the runtime is chosen from the suffix (see formats.FORMATS).

    .onnx -> OnnxEngine (providers: ONNX Runtime providers in preference order; threads: intra-op
    threads); .plan -> TensorRTEngine; a PyTorch checkpoint -> TorchEngine (backbone: a name
    from `loftup backbones`, a Backbone module, or None for the upsampler form only;
    precision/attn_backend/compile apply to it).
    """
    path = Path(path)
    fmt = format_for_path(path)
    if not path.exists():
        raise InputError(f"engine file {path} does not exist")
    if fmt.name == "onnx":
        from .onnx import OnnxEngine

        return OnnxEngine(path, providers=providers, threads=threads)
    if fmt.name == "trt":
        from .tensorrt import TensorRTEngine

        return TensorRTEngine(path)
    from ..model import load_checkpoint

    overrides = {"attn_backend": attn_backend} if attn_backend else {}
    if isinstance(backbone, str):
        from ..backbones import create_backbone

        backbone = create_backbone(backbone, device=device)
    feat_dim = getattr(backbone, "embed_dim", None)
    model = load_checkpoint(path, feat_dim=feat_dim, **overrides)
    if threads:
        torch.set_num_threads(int(threads))
    return TorchEngine(model, backbone, precision=precision, compile=compile, device=device, source=path)

