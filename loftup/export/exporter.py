"""Export orchestration, driven by the format table: trace to ONNX, build the format's engine,
check parity against the PyTorch reference, then move the files into place.

    report = export_engine(ExportOptions(checkpoint="model.safetensors", backbone="dinov2_vits14"))
    report = export_model(model, backbone, "m.onnx", fmt="onnx", scope="pipeline")  # a model in hand

`loftup export` calls `export_engine`; `loftup bench` calls `export_model` for its ONNX Runtime
and TensorRT rows, so both get their engines from the same code. Every format is an ONNX
export first; a row with a `build` hook (TensorRT) turns that into its own engine file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import ConfigError, InputError, ParityError


@dataclass
class ExportOptions:
    """Everything `loftup export` takes. sizes are square pixel sizes of the guidance image."""

    checkpoint: Optional[Path] = None
    random_init: bool = False
    upsampler: Optional[str] = None  # kind (loftup, lift, featup_jbu): what the checkpoint must hold / the random model; None: the file's
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
    calibration: Optional[Path] = None  # int8: a folder of photos (default: the bundled ones)
    memory_budget: Optional[str] = None  # the parity run's PyTorch reference: its tiling budget (loftup.runtime.budget)
    parity_shapes: Optional[list] = None  # [(batch, H, W), ...]; default from the sizes
    input_size: Optional[int] = None  # the backbone input's shorter side (pipeline scope); None: pipeline.DEFAULT_INPUT_SIZE
    seed: int = 0

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (self.min_size, self.opt_size, self.max_size)


@dataclass
class ExportReport:
    path: Path
    metadata: Any
    parity: Any  # ParityResult, or None when the export was not checked
    extra_files: list = field(default_factory=list)


def load_model_and_backbone(opts: ExportOptions):
    """(model, backbone or None, scope) for the options; the checkpoint names the backbone by default."""
    from ..model import load_or_init

    if opts.upsampler is not None:
        from ..errors import check_choice
        from ..model import UPSAMPLER_KINDS

        check_choice("upsampler kind", opts.upsampler, UPSAMPLER_KINDS)
    if (opts.checkpoint is None) == (not opts.random_init):  # neither or both: load_or_init's one-line error, now
        load_or_init(opts.checkpoint, random_init=opts.random_init)
    model = load_or_init(opts.checkpoint, kind=opts.upsampler) if opts.checkpoint is not None else None
    name = opts.backbone or (model.cfg.backbone if model is not None else None)
    scope = opts.scope or ("pipeline" if name else "upsampler")
    if scope == "pipeline" and not name:
        raise ConfigError("--scope pipeline needs --backbone NAME (see `loftup backbones`); or use --scope upsampler")
    backbone = None
    if name:
        from ..backbones import create_backbone

        backbone = create_backbone(name, weights=opts.weights)
    C = getattr(backbone, "embed_dim", None) or opts.feat_dim
    if model is None:
        if opts.random_init and not C:
            raise ConfigError("--random-init without --backbone needs --feat-dim C")
        extra = {"patch_size": backbone.patch_size} if opts.upsampler == "lift" and backbone is not None else {}
        model = load_or_init(opts.checkpoint, random_init=opts.random_init, feat_dim=C, backbone=name, seed=opts.seed,
                             kind=opts.upsampler, **extra)
    elif backbone is not None and backbone.embed_dim != model.cfg.feat_dim:
        raise ConfigError(
            f"checkpoint {Path(opts.checkpoint).name} upsamples {model.cfg.feat_dim}-channel features but backbone {name} gives "
            f"{backbone.embed_dim}; use the backbone it was trained for"
        )
    return model, backbone, scope


def default_out(opts: ExportOptions, scope: str, suffix: str) -> Path:
    stem = Path(opts.checkpoint).stem if opts.checkpoint else (opts.upsampler or "loftup")
    return Path(f"{stem}_{scope}_{opts.precision}{suffix}")


def check_writable_folder(folder: Path, what: str = "--out") -> None:
    """One clear line, before any work, when `folder` cannot take new files."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"cannot write to {folder}: {probe} is a file; choose another {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {folder}: {probe} is not writable; choose another {what}")


def resolve_out(opts: ExportOptions, scope: str, fmt) -> Path:
    """The engine path `--out` names (a file, or a folder to put the default name in); checked."""
    out = Path(opts.out) if opts.out else default_out(opts, scope, fmt.suffix)
    if out.is_dir():
        out = out / default_out(opts, scope, fmt.suffix).name
    if out.suffix.lower() not in fmt.suffixes:
        raise ConfigError(f"--out {out.name} does not end in {fmt.suffix} (format {fmt.name})")
    if out.exists() and not opts.force:
        raise ConfigError(f"{out} already exists; pass --force to overwrite it")
    check_writable_folder(out.parent)
    return out


def _move_into_place(staged: Path, final: Path) -> None:
    from ..io import atomic_write

    atomic_write(final, lambda tmp: os.replace(staged, tmp))


def export_model(model, backbone, out: str | Path, *, fmt: str = "onnx", scope: str = "upsampler", precision: str = "fp32",
                 opset: int = 20, attention: str = "auto", sizes: tuple[int, int, int] = (112, 224, 448), max_batch: int = 4,
                 source: str | Path | None = None, patch_size: int | None = None, parity_shapes: Sequence | None = None,
                 check: bool = True, force: bool = False, log: Callable[[str], None] = lambda msg: None,
                 calibration: str | Path | None = None, memory_budget: int | None = None,
                 input_size: int | None = None, traced: str | Path | None = None, **build_options) -> ExportReport:
    """Write `model` (+ `backbone` for the pipeline scope) as a `fmt` engine at `out`.

    input_size: the backbone input rule the pipeline graph applies (`loftup.pipeline`; None: the
    default, the image rounded down to whole patches); recorded in the metadata, and the parity
    reference uses the same rule.

    Files are staged next to `out` and renamed into place only after parity passed (check=True;
    or with force=True), so a failed export leaves no engine behind. check=False skips the
    parity run (bench compares every row with the reference itself). build_options: the
    format's own (TensorRT: workspace_mb, timing_cache); None values are dropped. A quantized
    precision (int8) is the fp32 graph through the format's `quantize` hook, calibrated on
    `calibration` (a folder of photos; None: the bundled ones). memory_budget: bytes the parity
    run's PyTorch reference tiles to stay under (None: `loftup.runtime.budget`'s default).
    traced: the fp32 ONNX file an earlier call wrote for the same model, format, scope, sizes
    and batch (`loftup bench` quantizes its int8 engine from its fp32 one); a quantized precision
    starts from a copy of it instead of tracing the model again.
    """
    from ..runtime.interrupts import raise_if_interrupted
    from .formats import INT_PRECISIONS, export_format
    from .onnx import check_input_size, export_onnx

    check_input_size(scope, input_size, int(getattr(backbone, "patch_size", None) or patch_size or 1))
    row = export_format(fmt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _import_native_modules()
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
    try:
        onnx_path = stage / (out.stem + ".onnx")
        quantized = precision in INT_PRECISIONS
        if traced is not None:
            log(f"starting from the fp32 trace {Path(traced).name}")
            md = _reuse_trace(Path(traced), onnx_path, fmt, scope, model.cfg.feat_dim, opset, quantized)
        else:
            log(f"tracing {scope} ({getattr(model, 'kind', 'loftup')}, {model.cfg.feat_dim} channels"
                f"{', backbone ' + backbone.name if backbone is not None else ''}) to ONNX opset {opset} ...")
            md = export_onnx(
                model, onnx_path, backbone=backbone, scope=scope, precision="fp32" if row.build or quantized else precision,
                opset=opset, attention=attention, sizes=sizes, max_batch=max_batch, source=source,
                patch_size=getattr(backbone, "patch_size", None) or patch_size,
                query_chunk="auto" if row.query_chunks else None, input_size=input_size,
            )
        engine_path = onnx_path
        if quantized:
            engine_path = stage / (out.stem + f".{precision}" + row.suffix)
            md = row.hook("quantize")(onnx_path, engine_path, md, model=model, backbone=backbone, calibration=calibration,
                                      size=sizes[1], log=log)
        if row.build is not None:
            engine_path = stage / out.name
            log(f"building {row.name} {precision} engine ...")
            options = {k: v for k, v in build_options.items() if k in row.build_options and v is not None}
            md = row.hook("build")(onnx_path, engine_path, md, precision=precision, **options)
        result = None
        if check:
            result = check_engine(engine_path, model, backbone, sizes, max_batch, precision, parity_shapes, log, memory_budget,
                                  input_size)
            md.parity = result.to_dict()
        row.hook("write_metadata")(engine_path, md)
        if result is not None and not result and not force:
            raise ParityError(
                f"parity failed for {out.name} (worst max abs {result.worst['max_abs']:.3g}, min cos {result.worst['min_cos']:.6f}); "
                "no engine written - pass --force to keep it anyway"
            )
        raise_if_interrupted()  # a signal whose exception was lost on the way must not end in a written engine
        extras = []
        for companion in row.hook("companions")(engine_path):
            final = out.with_name(out.name + companion.name[len(engine_path.name):])
            _move_into_place(companion, final)
            extras.append(final)
        _move_into_place(engine_path, out)
        return ExportReport(path=out, metadata=md, parity=result, extra_files=extras)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _reuse_trace(traced: Path, onnx_path: Path, fmt: str, scope: str, feat_dim: int, opset: int, quantized: bool):
    """Copy an earlier fp32 trace into the staging folder; its metadata must say it is one of this export."""
    from .onnx import read_metadata

    if not quantized:
        raise ValueError("traced= serves the quantized precisions (int8), which start from an fp32 trace")
    md = read_metadata(traced)
    theirs, wanted = (md.format, md.scope, md.feat_dim, md.precision, md.opset), (fmt, scope, feat_dim, "fp32", opset)
    if theirs != wanted:
        raise ValueError(f"{traced.name} is not an fp32 ONNX trace of this export (format, scope, channels, precision, "
                         f"opset: {theirs}; wanted {wanted})")
    shutil.copyfile(traced, onnx_path)
    md.parity = None
    return md


def _import_native_modules() -> None:
    """Import the exporter's and ONNX Runtime's native modules before the staging folder exists.

    Ctrl-C or SIGTERM while such a module initialises aborts the process (onnx's nanobind
    extension terminates on the KeyboardInterrupt), after which no clean-up can run."""
    import onnx  # noqa: F401

    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # the parity run says so itself
        pass


def check_engine(engine_path: Path, model, backbone, sizes, max_batch: int, precision: str, shapes=None, log=print,
                 memory_budget: int | None = None, input_size: int | None = None):
    """Parity of a written engine against the PyTorch reference (`reference_engine`: same backbone
    input rule, tiling to stay under `memory_budget`) on photos."""
    from .engine import load_engine, reference_engine
    from .parity import check_parity, default_parity_shapes

    shapes = shapes or default_parity_shapes(*sizes, max_batch=max_batch)
    log(f"checking parity against PyTorch on {len(shapes)} shapes ...")
    engine = load_engine(engine_path)
    result = check_parity(engine, reference_engine(model, backbone, input_size=input_size, memory_budget=memory_budget),
                          shapes, precision=precision)
    del engine
    log(result.summary())
    return result


def export_engine(opts: ExportOptions, log=print) -> ExportReport:
    """`loftup export`: validate the options, load the model (and backbone), then `export_model`."""
    from .formats import check_export_options, export_format, resolve_attention

    fmt = export_format(opts.format)
    check_export_options(
        fmt, opts.precision, opts.scope or "pipeline", opts.sizes, opts.max_batch,
        opset=opts.opset, attention=opts.attention,
        workspace_mb=opts.workspace_mb, timing_cache=opts.timing_cache, calibration=opts.calibration,
    )
    resolve_attention(opts.attention, opts.opset)
    from ..runtime.budget import explicit_memory_budget

    budget = explicit_memory_budget(opts.memory_budget)  # auto: None, the default at the parity run's time; a bad value: said now
    if opts.calibration is not None:
        from .quantize import calibration_images

        calibration_images(opts.calibration, limit=1)  # a missing or empty folder, before tracing
    if fmt.require:
        fmt.hook("require")()  # fail fast: before loading weights or tracing
    if opts.out is not None:
        check_writable_folder(Path(opts.out) if Path(opts.out).is_dir() else Path(opts.out).parent)
    model, backbone, scope = load_model_and_backbone(opts)
    out = resolve_out(opts, scope, fmt)
    return export_model(
        model, backbone, out, fmt=fmt.name, scope=scope, precision=opts.precision, opset=opts.opset,
        attention=opts.attention, sizes=opts.sizes, max_batch=opts.max_batch, source=opts.checkpoint,
        parity_shapes=opts.parity_shapes, check=True, force=opts.force, log=log, input_size=opts.input_size,
        calibration=opts.calibration, memory_budget=budget, workspace_mb=opts.workspace_mb, timing_cache=opts.timing_cache,
    )


__all__ = ["ExportOptions", "ExportReport", "check_engine", "export_engine", "export_model", "load_model_and_backbone"]
