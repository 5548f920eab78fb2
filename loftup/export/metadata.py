"""What an engine is and accepts: `EngineMetadata`, stored with every exported engine
(ONNX `metadata_props`, a JSON sidecar next to a TensorRT `.plan`). Stdlib + torch only."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, check_choice
from ..pipeline import IMAGENET_MEAN, IMAGENET_STD
from .formats import SCOPES

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
    upsampler: str = "loftup"  # the kind (loftup.model.kinds); engines written before kinds existed are LoftUp
    backbone: str | None = None
    patch_size: int | None = None
    input_size: int | list[int] | None = None  # backbone input rule (loftup.pipeline): None, the default, or export's --input-size
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
    """Metadata common to every engine made from `model` (an upsampler of any kind) and an optional backbone."""
    from .._version import __version__
    from ..io import file_sha256

    check_choice("scope", scope, SCOPES)
    src = Path(source) if source else None
    cfg = model.cfg
    return EngineMetadata(
        format=fmt,
        scope=scope,
        feat_dim=int(cfg.feat_dim),
        upsampler=getattr(model, "kind", "loftup"),
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
