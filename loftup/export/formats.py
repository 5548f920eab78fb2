"""The one table of engine formats: name, file suffix, GPU need, precisions and accepted options.

The CLI validates `loftup export` / `loftup bench` arguments against it, `load_engine` picks
the runtime from a file's suffix with it, and bench reads which precisions a runtime takes.
Only stdlib imports here: the CLI imports this module before any heavy dependency.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, check_choice

SCOPES = ("pipeline", "upsampler")
PRECISIONS = ("fp32", "fp16", "bf16")  # float types: every runtime that computes in them (PyTorch, ONNX, TensorRT)
INT_PRECISIONS = ("int8",)  # quantized engines: a format row that lists one quantizes (and says its tolerance)
ENGINE_PRECISIONS = PRECISIONS + INT_PRECISIONS
# How attention is written into the ONNX graph: "matmul" = MatMul/Softmax/MatMul (opset 18-20,
# what TensorRT < 10.14 fuses itself), "op" = the ONNX `Attention` op (opset >= 23).
ATTENTION_ENCODINGS = ("auto", "matmul", "op")
OPSETS = (18, 19, 20, 21, 22, 23)
ATTENTION_OP_MIN_OPSET = 23
DEFAULT_OPSET = 20


@dataclass(frozen=True)
class PrecisionTolerance:
    """What an engine of one precision in one format must meet against the fp32 PyTorch reference,
    where that is not the float types' rounding (`loftup.export.parity.TOLERANCES`): feature
    parity (export, bench) and probe-metric parity (`loftup eval --engine`: every metric m within
    probe_atol + probe_rtol * |m_reference|). `why`: the measurements the numbers come from."""

    precision: str
    max_abs: float
    mean_cos: float
    min_cos: float
    probe_atol: float
    probe_rtol: float
    why: str = ""


@dataclass(frozen=True)
class EngineFormat:
    """One row of the table. `suffixes[0]` is the suffix export writes."""

    name: str
    suffixes: tuple[str, ...]
    needs_gpu: bool
    exportable: bool
    precisions: tuple[str, ...]
    options: frozenset[str]  # export options this format accepts beyond the common ones
    runtime_module: str  # the Python module that runs the engine
    install_hint: str
    description: str
    # Hooks, as "module:attribute" (imported only when used, so this table stays stdlib-only):
    open: str = ""  # (path, **open_options) -> Engine
    open_options: tuple[str, ...] = ()  # the load_engine options the opener takes
    require: str | None = None  # () -> raises BackendUnavailableError when the runtime is missing
    build: str | None = None  # (onnx_path, out_path, metadata, precision=, **build options) -> metadata
    build_options: tuple[str, ...] = ()  # the export options the builder takes
    write_metadata: str | None = None  # (path, metadata): store the metadata with the engine
    companions: str | None = None  # (path) -> files that travel with the engine (sidecar, external data)
    # The LoftUp graph this format gets: True = the token path (attention, FFN, head) as one loop
    # over blocks of queries, memory bounded at any size (what ONNX Runtime runs best on CPU);
    # False = one whole block, the pattern TensorRT fuses into its own attention kernels.
    query_chunks: bool = False
    quantize: str | None = None  # (onnx_path, out_path, metadata, **calibration) -> metadata, for INT_PRECISIONS
    tolerances: tuple[PrecisionTolerance, ...] = ()  # per quantized precision

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    def tolerance(self, precision: str) -> PrecisionTolerance | None:
        """This format's own tolerance for `precision` (quantized ones), None for the float types."""
        return next((t for t in self.tolerances if t.precision == precision), None)

    def hook(self, name: str):
        """The callable a hook field names, imported now; None when the row has none."""
        import importlib

        spec = getattr(self, name)
        if not spec:
            return None
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)

    def runtime_installed(self) -> bool:
        """True if the runtime module can be imported (checked without importing it)."""
        return importlib.util.find_spec(self.runtime_module) is not None


# INT8 ONNX Runtime engines (QDQ, per-channel int8 weights, uint8 activations; attention, norms and
# Fourier features float32). From measurements (docs/cpu-deploy.md, issue 26): the shipped DINOv2-S/14
# checkpoint's int8 engine against PyTorch fp32 had per-pixel cosine mean 0.9999, min 0.9990-0.9995
# and max abs 0.09-0.45 (parity photos; mini benchmark images); random-init models 0.9985-0.9998 mean,
# min 0.997. On the mini benchmark its largest metric moves were 2.1% relative (Middlebury disparity
# d1 0.765 -> 0.749, RMSE 7.05 -> 7.18 px), 0.3 points of ARC mIoU and 0.25 degrees of normals RMSE -
# 1.6x inside 0.002 + 3% of the reference (the tightest margin), while the benchmark's bilinear ->
# oracle2x gaps it exists to resolve are 5-12% (except normals, 0.8%, which it cannot resolve at
# this precision). The float defaults (1e-3 + 1%) would fail on disparity; a broken quantization moves
# features far below these cosines.
INT8_ONNX_TOLERANCE = PrecisionTolerance(
    precision="int8", max_abs=1.0, mean_cos=0.998, min_cos=0.99, probe_atol=0.002, probe_rtol=0.03,
    why="measured: see the comment above INT8_ONNX_TOLERANCE and docs/cpu-deploy.md",
)

COMMON_OPTIONS = frozenset({"scope", "precision", "min_size", "opt_size", "max_size", "max_batch", "out", "force"})

FORMATS: dict[str, EngineFormat] = {
    f.name: f
    for f in (
        EngineFormat(
            name="onnx",
            suffixes=(".onnx",),
            needs_gpu=False,
            exportable=True,
            # bf16 ONNX graphs have no kernels in ONNX Runtime's CPU provider; TensorRT gets bf16
            # from an fp32 graph plus a builder flag instead. int8: ONNX Runtime's static
            # quantization of the fp32 graph (loftup.export.quantize), calibrated on photos.
            precisions=("fp32", "fp16", "int8"),
            options=COMMON_OPTIONS | {"opset", "attention", "calibration"},
            runtime_module="onnxruntime",
            install_hint="pip install onnxruntime (or onnxruntime-gpu on a machine with an NVIDIA GPU)",
            description="ONNX graph with metadata, run by ONNX Runtime (CPU, CUDA or TensorRT provider)",
            open="loftup.export.onnx:OnnxEngine",
            open_options=("providers", "threads"),
            write_metadata="loftup.export.onnx:write_metadata",
            companions="loftup.export.onnx:companion_files",
            query_chunks=True,
            quantize="loftup.export.quantize:quantize_engine",
            tolerances=(INT8_ONNX_TOLERANCE,),
        ),
        EngineFormat(
            name="trt",
            suffixes=(".plan", ".engine"),
            needs_gpu=True,
            exportable=True,
            precisions=("fp32", "fp16", "bf16"),
            options=COMMON_OPTIONS | {"opset", "attention", "workspace_mb", "timing_cache"},
            runtime_module="tensorrt",
            install_hint="pip install tensorrt (TensorRT 10, on a Linux or Windows machine with an NVIDIA GPU and driver)",
            description="TensorRT 10 engine (.plan) plus a JSON sidecar with its metadata",
            open="loftup.export.tensorrt:TensorRTEngine",
            require="loftup.export.tensorrt:require_tensorrt",
            build="loftup.export.tensorrt:build_plan",
            build_options=("workspace_mb", "timing_cache"),
            write_metadata="loftup.export.tensorrt:write_sidecar",
            companions="loftup.export.tensorrt:companion_files",
        ),
        EngineFormat(
            name="torch",
            suffixes=(".safetensors", ".bin", ".pth", ".pt", ".ckpt"),
            needs_gpu=False,
            exportable=False,
            precisions=PRECISIONS,
            options=frozenset(),
            runtime_module="torch",
            install_hint="pip install torch",
            description="a LoftUp checkpoint (ours, official .bin, Lightning .ckpt) run by PyTorch",
            open="loftup.export.engine:open_checkpoint",
            open_options=("backbone", "threads", "device", "precision", "attn_backend", "compile", "cuda_graphs"),
        ),
    )
}
EXPORT_FORMATS = tuple(name for name, f in FORMATS.items() if f.exportable)


def get_format(name: str) -> EngineFormat:
    """The table row for `name`; ConfigError with a did-you-mean hint otherwise."""
    return FORMATS[check_choice("format", name, FORMATS)]


def export_format(name: str) -> EngineFormat:
    """Like get_format, but only formats `loftup export` writes."""
    return FORMATS[check_choice("export format", name, EXPORT_FORMATS)]


def format_for_path(path: str | Path) -> EngineFormat:
    """The format a file belongs to, from its suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    raise ConfigError(f"cannot tell the engine format of {Path(path).name!r} from its suffix; use one of: {known}")


def resolve_attention(encoding: str, opset: int) -> str:
    """'auto' -> 'op' at opset >= 23, else 'matmul'; an explicit 'op' needs opset >= 23."""
    check_choice("attention encoding", encoding, ATTENTION_ENCODINGS)
    if opset not in OPSETS:
        raise ConfigError(f"opset {opset} is not supported; choose one of {', '.join(map(str, OPSETS))}")
    if encoding == "auto":
        return "op" if opset >= ATTENTION_OP_MIN_OPSET else "matmul"
    if encoding == "op" and opset < ATTENTION_OP_MIN_OPSET:
        raise ConfigError(
            f"the ONNX Attention op needs opset >= {ATTENTION_OP_MIN_OPSET} (got {opset}); "
            f"use --opset {ATTENTION_OP_MIN_OPSET} or --attention matmul"
        )
    return encoding


def check_export_options(fmt: EngineFormat, precision: str, scope: str, sizes: tuple[int, int, int], max_batch: int, **given) -> None:
    """Validate options against the format's row; ConfigError saying what to change."""
    check_choice("scope", scope, SCOPES)
    check_choice("precision", precision, ENGINE_PRECISIONS)
    if precision not in fmt.precisions:
        others = [f.name for f in FORMATS.values() if f.exportable and precision in f.precisions]
        raise ConfigError(
            f"--format {fmt.name} does not take precision {precision!r} (it takes {', '.join(fmt.precisions)})"
            + (f"; {precision} is available with --format {others[0]}" if others else "")
        )
    unknown = sorted(k for k, v in given.items() if v is not None and k not in fmt.options)
    if unknown:
        raise ConfigError(f"--format {fmt.name} does not accept option(s) {', '.join(unknown)}")
    if given.get("calibration") is not None and precision not in INT_PRECISIONS:
        raise ConfigError(f"--calibration sets the photos an int8 engine is calibrated on; it does nothing for {precision} "
                          "(add --precision int8, or drop --calibration)")
    lo, opt, hi = sizes
    if not (0 < lo <= opt <= hi):
        raise ConfigError(f"sizes must satisfy 0 < min-size <= opt-size <= max-size, got {lo}, {opt}, {hi}")
    if max_batch < 1:
        raise ConfigError(f"max batch must be at least 1, got {max_batch}")
