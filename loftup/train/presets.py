"""TrainConfig: every training hyper-parameter, the `paper` and `released` presets, YAML files.

Precedence (lowest to highest): TrainConfig defaults < preset (per stage) < YAML file < CLI
flags / keyword overrides. Values no source specifies (schedule, weight decay, gradient
clipping, crop) are our defaults and are marked "ours" below.

`paper` (LoftUp paper, section 3): AdamW, lr 1e-3 (stage 1) / 1e-4 (stage 2), global batch 8,
alpha 0.8, 224 px, teacher scale t in [2, 4], 2 crops per image, affinity loss.
`released` (the authors' later training code): stage 1 NAdam 1e-4 with the MSE taken in a
fixed random 64-d projection; stage 2 AdamW 1e-3, student sizes {224, 336, 448, 518} drawn per
step, teacher at 896 px, teacher alpha 0.5, affinity weight 20. The released code's extra
multi-view reconstruction and TV losses are not implemented.

Other kinds (`upsampler: lift | featup_jbu`, loftup.train.baselines) train in one stage with
their own objective; `KIND_PRESETS` holds their own defaults, applied over the preset:
LiFT (canonical train_lift.py) Adam 1e-3, 448 px, cosine loss; FeatUp-JBU (jbu_upsampler.yaml)
NAdam 1e-3, batch 4, 224 px, 5 jitters (pad 20, zoom up to 2), 30-d projections, CRF weight
0.001. Neither uses masks, weight decay or our gradient clipping.
`offline` (ours, measured on the offline mini benchmark, docs/mini-benchmark.md): stage 1
regresses an *oracle* target - the backbone's own features of the image seen at 2x, channel
normed and resized bilinearly to the output - instead of the mask-bicubic pseudo-GT, whose
superpixel masks (no SA-1B offline) make it score below bilinear; the loss is taken on a random
32 x 32 output window per step (exact: two 3x3 convs need a 2-pixel halo), so a 224 px step on
a CPU costs about a twentieth of the full output; AdamW 1e-3, cosine to 10%, 20 warm-up steps,
random crops and flips. The low-res positional encoding is RoPE (the paper's Table B.3 ablation,
on par with the sine PE) with every attention block started local (`positional_init`: the same
bias on q and k makes q.k a bump at zero query-key offset): with the sine PE and a random init
the attention had found no positions after 200 CPU steps. Stage 2 keeps the paper's values.
Four stage-1 knobs, off in every preset (docs/mini-benchmark.md has their learning curves):
`tv_weight` (a smoothness term on the output), `low_frequency_init` (a fresh model's first
conv starts blind to all but the first N query Fourier frequencies), `target_blend` (a share
of the bilinearly resized low-res features mixed into the oracle target) and `lr_consistency`
(the output's mean over each patch held to that patch's low-res feature).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_choice

PRESETS = ("paper", "released", "offline")
TARGETS = ("pseudo_gt", "oracle")
MASK_SOURCES = ("auto", "sa1b", "coco", "felzenszwalb", "slic", "none")
OPTIMIZERS = ("adamw", "adam", "nadam", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("fp32", "bf16", "fp16")
DISTILL_LOSSES = ("affinity", "l2")
UPSAMPLERS = ("loftup", "lift", "featup_jbu")  # loftup.model.kinds.UPSAMPLER_KINDS
LIFT_LOSSES = ("cosine", "l1", "l2")
CROPS = ("center", "random")

# Fields that define *what* is trained; a resumed run may not change them.
RUN_CONTROL = ("steps", "epochs", "save_every", "log_every", "keep_last", "num_workers", "progress", "device", "cache_dir")


@dataclass
class TrainConfig:
    """Everything a training run needs. Sizes in pixels; batch_size is the *global* batch."""

    stage: int = 1
    preset: str = "paper"
    upsampler: str = "loftup"  # loftup | lift | featup_jbu: the kind trained (the others with their own objective)
    # data
    data: str = ""
    out: str = ""
    masks: str = "auto"  # auto | sa1b | coco | felzenszwalb | slic | none
    coco_json: str | None = None  # COCO instances file (auto: DATA/annotations/instances_*.json)
    max_masks: int = 150
    crop: str = "center"  # ours: center square crop; "random": random square crop (scale crop_scale)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    hflip: bool = False
    num_workers: int = 2
    # model / backbone
    backbone: str = "dinov2_vits14"
    backbone_weights: str = "default"
    init: str | None = None  # LoftUp checkpoint to start from (required for stage 2)
    model: dict[str, Any] = field(default_factory=dict)  # LoftUpConfig overrides for a fresh model
    train_channelnorm: bool = False  # ours: keep the low-res channel norm fixed (the pseudo-GT lives in its space)
    # stage 1
    size: int = 224
    alpha: float = 0.8
    refine_mode: str = "vectorised"  # vectorised | sequential (official)
    target_proj_dim: int = 0  # >0: stage-1 MSE in a fixed random projection to this many dims
    target: str = "pseudo_gt"  # pseudo_gt (the paper) | oracle (ours: the backbone at oracle_scale x, resized)
    oracle_scale: float = 2.0
    window: int = 0  # ours: >0 takes the stage-1 loss on one random window x window of the output per step
    positional_init: float = 0.0  # ours: >0 starts a fresh model's attention local (needs model lr_pe: rope)
    low_frequency_init: int = 0  # ours: >0 starts a fresh model's queries blind to all but this many Fourier frequencies
    tv_weight: float = 0.0  # ours: >0 adds this x the output's mean squared neighbour difference to the stage-1 loss
    target_blend: float = 0.0  # ours: >0 mixes this share of bilinear(low-res features) into the oracle target
    lr_consistency: float = 0.0  # ours: >0 adds this x the MSE of the output's per-patch means to the low-res features
    # stage 2
    student_sizes: list[int] = field(default_factory=list)  # empty: [size]; else drawn per step
    teacher_size: int = 0  # 0: the student size
    teacher_scale: tuple[float, float] = (2.0, 4.0)
    crops_per_image: int = 2
    teacher_alpha: float = 0.8
    ema_decay: float = 0.99
    ema_every: int = 10
    distill_loss: str = "affinity"  # affinity | l2
    distill_weight: float = 1.0
    center_fraction: float = 0.8
    mask_max_res: int = 448  # teacher masks are sampled at min(teacher_size, this)
    # LiFT (upsampler lift)
    lift_loss: str = "cosine"  # cosine | l1 | l2
    # FeatUp JBU (upsampler featup_jbu)
    jitters: int = 5
    jitter_pad: int = 20
    jitter_zoom: float = 2.0
    proj_dim: int = 30
    crf_weight: float = 0.001
    crf_samples: int = 1000
    # optimisation
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01  # ours (torch's AdamW default)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # ours: the paper names none
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # ours; 0 disables
    batch_size: int = 8
    steps: int = 0  # 0: derived from epochs
    epochs: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16: CUDA only)
    seed: int = 0
    device: str = "auto"
    # output
    save_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    progress: bool = True
    cache_dir: str | None = None  # backbone feature cache (content-hashed)

    def __post_init__(self) -> None:
        self.validate()

    # -- checks --------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        check_choice("preset", self.preset, PRESETS)
        check_choice("mask source", self.masks, MASK_SOURCES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("distillation loss", self.distill_loss, DISTILL_LOSSES)
        check_choice("crop", self.crop, CROPS)
        check_choice("stage-1 target", self.target, TARGETS)
        if self.oracle_scale <= 1.0:
            raise ConfigError(f"oracle_scale must be above 1, got {self.oracle_scale}")
        if self.positional_init < 0 or (self.positional_init and self.model.get("lr_pe") != "rope"):
            raise ConfigError("positional_init needs the rope low-res PE: set model lr_pe: rope (or positional_init 0)")
        if self.tv_weight < 0 or self.low_frequency_init < 0 or self.lr_consistency < 0:
            raise ConfigError("tv_weight, low_frequency_init and lr_consistency must be >= 0 (0: off)")
        if not 0 <= self.target_blend < 1 or (self.target_blend and self.target != "oracle"):
            raise ConfigError(f"target_blend must be in [0, 1) and needs target: oracle, got {self.target_blend} "
                              f"with target {self.target}")
        if self.window < 0 or (self.window and self.window >= self.size):
            raise ConfigError(f"window must be 0 (the whole output) or smaller than size {self.size}, got {self.window}")
        check_choice("upsampler kind", self.upsampler, UPSAMPLERS)
        check_choice("LiFT loss", self.lift_loss, LIFT_LOSSES)
        if self.upsampler != "loftup" and self.stage != 1:
            raise ConfigError(f"{self.upsampler} trains in one stage with its own objective; use --stage 1 (stage 2 is LoftUp's)")
        for name in ("jitters", "proj_dim", "crf_samples"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.jitter_pad < 0 or self.jitter_zoom < 1.0 or self.crf_weight < 0:
            raise ConfigError("jitter_pad must be >= 0, jitter_zoom >= 1 and crf_weight >= 0")
        from .masks import REFINE_MODES

        check_choice("mask refinement mode", self.refine_mode, REFINE_MODES)
        for name in ("size", "batch_size", "max_masks", "crops_per_image", "ema_every", "save_every", "log_every", "mask_max_res"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("alpha", "teacher_alpha", "ema_decay"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.center_fraction <= 1.0:
            raise ConfigError(f"center_fraction must be in (0, 1], got {self.center_fraction}")
        lo, hi = self.teacher_scale
        if not 1.0 <= lo <= hi:
            raise ConfigError(f"teacher_scale must be (lo, hi) with 1 <= lo <= hi, got {self.teacher_scale}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.crop_scale}")
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs <= 0):
            raise ConfigError("give a positive number of --steps or --epochs")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if any(int(s) < 1 for s in self.student_sizes) or self.teacher_size < 0:
            raise ConfigError("student_sizes and teacher_size must be positive pixel sizes")
        return self

    # -- derived ------------------------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        """Student sizes drawn from per step (stage 2) - just [size] unless student_sizes is set."""
        return [int(s) for s in self.student_sizes] if (self.stage == 2 and self.student_sizes) else [int(self.size)]

    def teacher_side(self, student_size: int) -> int:
        return int(self.teacher_size) or int(student_size)

    # -- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return cls(**coerce(data))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **coerce(changes))


def coerce(data: dict[str, Any]) -> dict[str, Any]:
    """Check keys against TrainConfig and convert YAML/CLI values to the field types."""
    fields = TrainConfig.fields()
    unknown = sorted(set(data) - set(fields))
    if unknown:
        from ..errors import closest

        hint = closest(unknown[0], fields)
        raise ConfigError(f"unknown training option {unknown[0]!r}{hint}; see `loftup train --help`")
    out: dict[str, Any] = {}
    defaults = TrainConfig.__dataclass_fields__
    for key, value in data.items():
        f = defaults[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        try:
            if value is None or default is None:
                out[key] = None if value is None else str(value)
            elif isinstance(default, bool):
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("true", "1", "yes")
                out[key] = bool(value)
            elif isinstance(default, int):
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                out[key] = int(value)
            elif isinstance(default, float):
                out[key] = float(value)
            elif isinstance(default, tuple):
                seq = _as_list(value)
                if len(seq) != len(default):
                    raise ValueError(value)
                out[key] = tuple(type(d)(v) for d, v in zip(default, seq))
            elif isinstance(default, list):
                out[key] = [int(v) for v in _as_list(value)]
            elif isinstance(default, dict):
                if not isinstance(value, dict):
                    raise ValueError(value)
                out[key] = dict(value)
            else:
                out[key] = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option {key}: cannot use {value!r} (expected something like {default!r})") from None
    return out


def _as_list(value: Any) -> list:
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    return list(value)


PRESET_VALUES: dict[str, dict[int, dict[str, Any]]] = {
    "paper": {
        1: dict(optimizer="adamw", lr=1e-3, batch_size=8, alpha=0.8, size=224),
        2: dict(
            optimizer="adamw", lr=1e-4, batch_size=8, size=224, teacher_alpha=0.8, teacher_scale=(2.0, 4.0),
            crops_per_image=2, ema_decay=0.99, ema_every=10, distill_loss="affinity", distill_weight=1.0,
        ),
    },
    "released": {
        1: dict(optimizer="nadam", lr=1e-4, batch_size=8, alpha=0.8, size=224, target_proj_dim=64),
        2: dict(
            optimizer="adamw", lr=1e-3, batch_size=8, size=224, student_sizes=[224, 336, 448, 518], teacher_size=896,
            teacher_alpha=0.5, teacher_scale=(2.0, 4.0), crops_per_image=2, ema_decay=0.99, ema_every=10,
            distill_loss="affinity", distill_weight=20.0,
        ),
    },
    "offline": {
        1: dict(optimizer="adamw", lr=1e-3, batch_size=8, size=224, target="oracle", oracle_scale=2.0, window=32,
                schedule="cosine", warmup_steps=20, min_lr_ratio=0.1, crop="random", hflip=True, masks="none",
                model={"lr_pe": "rope"}, positional_init=2.0),
        2: dict(
            optimizer="adamw", lr=1e-4, batch_size=8, size=224, teacher_alpha=0.8, teacher_scale=(2.0, 4.0),
            crops_per_image=2, ema_decay=0.99, ema_every=10, distill_loss="affinity", distill_weight=1.0,
        ),
    },
}


# The other kinds' own hyper-parameters (FACTS_BASELINES.md 3.6, 4.5), applied over the preset.
KIND_PRESETS: dict[str, dict[str, Any]] = {
    "loftup": {},
    "lift": dict(optimizer="adam", lr=1e-3, batch_size=8, size=448, masks="none", weight_decay=0.0, grad_clip=0.0,
                 lift_loss="cosine"),
    "featup_jbu": dict(optimizer="nadam", lr=1e-3, batch_size=4, size=224, masks="none", weight_decay=0.0, grad_clip=0.0,
                       jitters=5, jitter_pad=20, jitter_zoom=2.0, proj_dim=30, crf_weight=0.001, crf_samples=1000),
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Options from a YAML mapping (keys = TrainConfig fields, `-` or `_` both accepted)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "parse error"
        raise ConfigError(f"cannot parse {path} as YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(stage: int | None = None, preset: str | None = None, yaml_path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """defaults < preset[stage] < YAML < overrides (None values in overrides are ignored).

    stage / preset may come from the YAML file when not given here (preset default: paper).
    """
    file_values = load_yaml(yaml_path) if yaml_path else {}
    kind = overrides.get("upsampler") or file_values.get("upsampler") or "loftup"
    check_choice("upsampler kind", str(kind), UPSAMPLERS)
    stage = stage if stage is not None else file_values.get("stage")
    if stage is None and kind != "loftup":
        stage = 1  # the other kinds have one stage
    if stage is None:
        raise ConfigError("say which stage to train: --stage 1 or --stage 2")
    try:
        stage = int(stage)
    except (TypeError, ValueError):
        raise ConfigError(f"stage must be 1 or 2, got {stage!r}") from None
    if stage not in (1, 2):
        raise ConfigError(f"stage must be 1 or 2, got {stage}")
    preset = check_choice("preset", str(preset or file_values.get("preset") or "paper"), PRESETS)
    values: dict[str, Any] = dict(PRESET_VALUES[preset][stage])
    values.update(KIND_PRESETS[str(kind)])
    values.update(file_values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["stage"], values["preset"] = stage, preset
    return TrainConfig.from_dict(values)


def dump_yaml(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config (atomically) so a run can be resumed and reproduced."""
    import yaml

    from ..io import atomic_write

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(Path(path), lambda p: p.write_text(text))


# -- the run folder's config.yaml: paths that survive moving or copying the folder ----------------
PATH_FIELDS = ("data", "init", "coco_json", "cache_dir", "backbone_weights")


def _stored_path(value: str, root: Path) -> str:
    """How config.yaml stores a path: relative to the run folder when inside it, else absolute."""
    p = Path(value).expanduser().resolve()
    try:
        return p.relative_to(root.resolve()).as_posix() or "."
    except ValueError:
        return str(p)


def _is_path(key: str, value: Any) -> bool:
    # backbone_weights is a path only when it names an existing file (else a keyword or a URL)
    return bool(value) and (key != "backbone_weights" or Path(str(value)).expanduser().exists())


def save_run_config(cfg: TrainConfig, root: str | Path) -> None:
    """Write RUN/config.yaml (atomically): `out` is '.', paths are relative to the run folder or absolute.

    So a run started with a relative --out, or copied elsewhere, resumes from any directory.
    """
    root = Path(root)
    values = {k: (_stored_path(v, root) if _is_path(k, v) else v) for k, v in cfg.to_dict().items() if k in PATH_FIELDS}
    dump_yaml(cfg.replace(out=".", **values), root / "config.yaml")


def load_run_config(root: str | Path) -> TrainConfig:
    """RUN/config.yaml with `out` set to `root` (the folder the user named, never the saved one).

    Relative paths are read relative to the run folder; older run folders stored paths relative
    to where the run was started, so such a path is kept as written when it is not found there.
    """
    root = Path(root)
    saved = load_yaml(root / "config.yaml")
    for key in PATH_FIELDS:
        value = saved.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() and (root / value).exists():
            saved[key] = str(root / value)
    saved["out"] = str(root)
    return TrainConfig.from_dict(saved)


def comparable(cfg: TrainConfig) -> dict[str, Any]:
    """cfg.to_dict() with path fields made absolute, to compare a resumed run's config with its saved one."""
    d = cfg.to_dict()
    for key in PATH_FIELDS:
        if _is_path(key, d[key]):
            d[key] = str(Path(d[key]).expanduser().resolve())
    return d
