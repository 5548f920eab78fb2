"""Training both LoftUp stages: mask-bicubic pseudo-GT (stage 1), EMA self-distillation (stage 2).

    from loftup.train import build_config, train
    cfg = build_config(stage=1, preset="paper", data="photos/", out="runs/s1", backbone="dinov2_vits14", steps=2000)
    result = train(cfg)                     # runs/s1/model.safetensors
    cfg2 = build_config(stage=2, data="photos/", out="runs/s2", init="runs/s1/model.safetensors", steps=2000)
    train(cfg2)                             # runs/s2/model.safetensors (student), teacher.safetensors (EMA)

Modules: data (SA-1B folders / tar shards, COCO, superpixels), rle (COCO RLE), masks (mask
refinement, superpixels), stage1, stage2 (EmaTeacher, affinity loss), loop (Trainer: AMP,
DDP, logs, checkpoints, resume), presets (TrainConfig, `paper` / `released`), commands (CLI).

This package imports torch lazily: `loftup.train.commands` is imported by the CLI at startup.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "presets", "build_config": "presets", "PRESETS": "presets", "load_yaml": "presets",
    "Trainer": "loop", "TrainResult": "loop", "train": "loop", "resume_config": "loop",
    "mask_refine": "masks", "superpixel_masks": "masks",
    "rle_decode": "rle", "rle_encode": "rle",
    "discover": "data", "MaskedImageDataset": "data", "SampleSpec": "data", "StepSampler": "data",
    "mask_bicubic_target": "stage1", "Stage1Objective": "stage1",
    "EmaTeacher": "stage2", "affinity_loss": "stage2", "Stage2Objective": "stage2",
    "FeatureExtractor": "features",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
