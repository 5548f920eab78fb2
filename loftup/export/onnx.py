"""ONNX export (torch.export + torch.onnx dynamo exporter) and the ONNX Runtime engine.

What is traced is a deploy variant of the very module that was trained:

- BatchNorm folded into the convs (`loftup.model.fold_batchnorm`), tiling off;
- attention written out once, unchunked, as `softmax((q * scale) @ k^T) @ v` ("matmul": opset
  18-20; Q is pre-scaled so TensorRT recognises and fuses the pattern) or as
  `scaled_dot_product_attention`, which opset 23 turns into one ONNX `Attention` node ("op");
- coordinate grids built from arange while exporting (`loftup.model.layers.coord_grid`), so
  H, W, h and w stay symbolic;
- for the pipeline scope, the backbone's position-embedding resize replaced by precomputed
  separable interpolation matrices (gathered by grid size, applied with MatMul), generated
  from the backbone's own `pos_embed_for`: the same numbers, but traceable for every size up
  to `max_size` (PyTorch's bicubic resize with a size-dependent scale pins the size);
- fp16: weights and activations in half precision except the Fourier featurizers, which keep
  float32 (sin of coordinates times up to e^10 is meaningless in half precision); inputs and
  outputs stay float32 for every precision.

Dynamic axes: batch, image height/width and (upsampler scope) lr height/width, bounded by
the export's min/max sizes; `torch.export` is called directly so a size that would be pinned
is an error, never a silently static graph.

Memory: written whole, attention materialises the (B, heads, H*W, h*w) score matrix (3.3 GB at
448x448 output from 32x32 features in float32, 10-11 GB peak RSS in ONNX Runtime). Formats whose
table row says `query_chunks` (ONNX) get the token path - q projection, attention, FFNs, final
norm and the 1x1 head - as one `scan` over blocks of queries (`LoftUpUpsampler.
_chunked_tokens_out`; an ONNX Scan node), so only one block's scores are alive; the block length
comes from `query_chunk_length` at the export's largest size. Before that loop, the Fourier
features, their channel norm and the two convs run as a second Scan over bands of `row_band_length`
rows (`LoftUpUpsampler._banded_tokens`; each band reads its 2-row halo, rows outside the image
zeroed = the official zero padding), writing the token tensor band by band. Measured (C = 384,
fresh process, one forward, 2-core CPU): ONNX Runtime peaked at 1.66 GB at 448 px with the
query loop alone (issue 18), 1.01 GB with both loops (0.28 GB before the forward: +0.73 GB;
issue 26); what is left is the token tensor, the loop's stacked output and its transposed copy
(about 0.3 GB each at 448 px). TensorRT gets the whole pattern,
which it fuses into its own attention kernels. The scan is traced with parameters that need no
grad (`deploy_upsampler`): torch would otherwise export its backward's saved sizes and fail.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import types
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import BackendUnavailableError, CheckpointError, ConfigError
from ..pipeline import Pipeline
from .engine import Engine
from .metadata import EngineMetadata, base_metadata
from .formats import resolve_attention

METADATA_KEY = "loftup"
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


# ------------------------------------------------------------------------------------------
# deploy variant
class ExportAttention:
    """Attention as the exported graph should spell it. q (B, heads, N, d), k/v (B, heads, M, d)."""

    def __init__(self, encoding: str):
        self.encoding = encoding

    def __call__(self, q, k, v, scale=None):
        import torch.nn.functional as F  # noqa: N812

        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        if self.encoding == "op":
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        scores = torch.matmul(q * scale, k.transpose(-1, -2))  # (B, heads, N, M)
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    def __repr__(self) -> str:
        return f"ExportAttention({self.encoding!r})"


def _featurizer_in_float32(module, dtype) -> None:
    """Keep every ImplicitFeaturizer (Fourier features) in float32 inside a `dtype` model."""
    from ..model.layers import ImplicitFeaturizer

    for sub in module.modules():
        if isinstance(sub, ImplicitFeaturizer):
            sub.float()
            sub.register_forward_pre_hook(lambda m, args: (args[0].float(), *args[1:]))
            sub.register_forward_hook(lambda m, args, out: out.to(dtype))


SCORE_BUDGET_BYTES = 128 * 2**20  # per image: one query block's attention scores and token activations


def query_chunk_length(cfg, max_lr_tokens: int, budget_bytes: int = SCORE_BUDGET_BYTES) -> int:
    """Queries per block of a chunked LoftUp graph: one block's float32 scores and probabilities
    (2 x heads x M) plus its token activations (~8 x D + 2 x C) fit `budget_bytes` per image at the
    export's largest low-res grid (M tokens); a multiple of 256, at least 256."""
    per_query = 4 * (2 * cfg.num_heads * max_lr_tokens + 8 * cfg.token_dim + 2 * cfg.feat_dim)
    return max(256, budget_bytes // per_query // 256 * 256)


BAND_BUDGET_BYTES = 96 * 2**20  # per image: one row band's Fourier features and conv maps


def row_band_length(cfg, max_width: int, min_height: int | None = None, budget_bytes: int = BAND_BUDGET_BYTES) -> int:
    """Rows per band of a banded LoftUp graph (`LoftUpUpsampler._banded_tokens`): one band's float32
    Fourier features (twice: before and after their norm) and three conv maps (~2 x F + 3 x D
    per pixel) fit `budget_bytes` per image at the export's largest width; a multiple of 8 in
    [8, 64] (the two 3x3 convs recompute 2 halo rows per band: 6% of the first conv at 32 rows),
    and below `min_height`: torch.export needs at least two bands at every height it exports for
    (a loop of length 1 would pin the size)."""
    per_row = 4 * max_width * (2 * cfg.image_feat_dim + 3 * cfg.token_dim)
    rows = int(min(64, max(8, budget_bytes // per_row // 8 * 8)))
    return max(1, min(rows, min_height - 1)) if min_height else rows


def deploy_upsampler(model, attention: str, precision: str = "fp32", max_size: int = 448, min_lr: int = 1,
                     query_chunk: int | None = None, row_band: int | None = None):
    """The traced variant of an upsampler.

    LoftUp: BN folded, no tiling, export attention, precision; query_chunk: queries per block of
    the token path's loop (`LoftUpUpsampler._chunked_tokens_out`), None for one whole block; with
    it, the Fourier features and convs loop over bands of row_band rows (default `row_band_length`
    at max_size; `LoftUpUpsampler._banded_tokens`). LiFT / FeatUp-JBU have neither
    attention nor LoftUp's conv-BN head: their own `deploy(max_size, min_lr)` (eval mode, window
    bounds for the traced adaptive pooling, JBU's adaptive convolution in plain ops), then the
    precision. ONNX Runtime and TensorRT fold LiFT's BatchNorms into its convs themselves.
    """
    from ..model import fold_batchnorm

    if getattr(model, "kind", "loftup") != "loftup":
        up = model.deploy(max_size, min_lr)
        if precision == "fp16":  # features and guidance both in half precision
            up = up.half()
            up.register_forward_pre_hook(lambda m, args: tuple(a.to(torch.float16) for a in args))
        return up
    up = fold_batchnorm(model)
    up.cfg = up.cfg.replace(tiling="never")
    up.upsampler.cfg = up.cfg
    up.upsampler.query_chunk = query_chunk
    up.upsampler.row_band = (row_band or row_band_length(up.cfg, max_size)) if query_chunk else None
    up.requires_grad_(False)  # a scan over parameters that need grad is exported with its backward's sizes, which fails
    attn = ExportAttention(attention)
    for module in up.modules():
        if hasattr(module, "dispatcher"):
            module.dispatcher = attn
    if precision == "fp16":
        up = up.half()
        _featurizer_in_float32(up, torch.float16)
    return up


def _pos_param(inner) -> tuple[str, Any]:
    for name in ("pos_embed", "positional_embedding"):
        if isinstance(getattr(inner, name, None), torch.nn.Parameter):
            return name, getattr(inner, name)
    raise ConfigError(f"backbone {type(inner).__name__} has no position embedding this exporter knows")


def _interp_tables(inner, param_name: str, max_cells: int):
    """Row and column interpolation matrices of `inner.pos_embed_for`, for 1..max_cells cells.

    Probes the backbone's own method with a one-hot position embedding: out[i, j, a] is the
    weight of source row a for output row i. Returns (rows, cols), each (max_cells + 1,
    max_cells, M) float32 (entry n holds the n x M matrix, zero padded), and M.
    """
    pos = getattr(inner, param_name).detach()
    n_tokens = pos.shape[-2]
    M = int(round(math.sqrt(n_tokens - 1)))
    p = inner.patch_size
    rows = torch.zeros(max_cells + 1, max_cells, M)
    cols = torch.zeros(max_cells + 1, max_cells, M)
    fn = type(inner).pos_embed_for
    for axis, table in ((0, rows), (1, cols)):
        probe = torch.zeros(*pos.shape[:-1], M)
        grid = probe[..., 1:, :].view(*pos.shape[:-2], M, M, M)  # (..., a, b, channel)
        idx = torch.arange(M)
        if axis == 0:
            grid[..., idx, :, idx] = 1.0  # channel c is one-hot on source row c
        else:
            grid[..., :, idx, idx] = 1.0  # channel c is one-hot on source column c
        ns = types.SimpleNamespace(cfg=inner.cfg, patch_size=p, **{param_name: probe})
        with torch.no_grad():
            for n in range(1, max_cells + 1):
                # the other side is n + 1 cells: never the square "no resize" special case
                h, w = (n, n + 1) if axis == 0 else (n + 1, n)
                out = fn(ns, h * p, w * p).float()
                out = out.reshape(-1, out.shape[-2], M)[0, 1:].reshape(h, w, M)
                table[n, :n] = out[:, 0] if axis == 0 else out[0, :]
    return rows, cols, M


def traceable_backbone(backbone, max_size: int):
    """Copy of `backbone` whose position-embedding resize traces with symbolic image sizes."""
    bb = copy.deepcopy(backbone)
    inner = getattr(bb, "model", bb)
    if not hasattr(inner, "pos_embed_for"):
        return bb
    name, _ = _pos_param(inner)
    p = inner.patch_size
    max_cells = max(2, max_size // p)
    rows, cols, M = _interp_tables(inner, name, max_cells)
    eye = torch.zeros(max_cells + 1, max_cells, M)
    square = torch.zeros(max_cells + 1)
    if M <= max_cells:
        eye[M, :M] = torch.eye(M)
        square[M] = 1.0
    for buf, value in (("_pe_rows", rows), ("_pe_cols", cols), ("_pe_eye", eye), ("_pe_square", square)):
        inner.register_buffer(buf, value, persistent=False)

    def pos_embed_for(self, height, width):
        """Same values as the backbone's own method (see `_interp_tables`), traceable."""
        pos = getattr(self, name)
        h0, w0 = height // p, width // p
        # the backbone skips the resize for a square M x M grid: identity matrices there
        sq = self._pe_square[h0].float() * self._pe_square[w0].float()  # () 1.0 or 0.0
        wy = sq * self._pe_eye[h0, :h0].float() + (1.0 - sq) * self._pe_rows[h0, :h0].float()  # (h0, M)
        wx = sq * self._pe_eye[w0, :w0].float() + (1.0 - sq) * self._pe_cols[w0, :w0].float()  # (w0, M)
        flat = pos.reshape(-1, pos.shape[-1]).float()  # (1 + M*M, C)
        cls, grid = flat[:1], flat[1:]
        C = grid.shape[-1]
        t = (wy @ grid.reshape(M, M * C)).reshape(h0, M, C)  # rows resized
        t = (t.transpose(1, 2) @ wx.t()).transpose(1, 2)  # (h0, w0, C)
        out = torch.cat([cls, t.reshape(h0 * w0, C)], dim=0).to(pos.dtype)
        return out.unsqueeze(0) if pos.dim() == 3 else out

    inner.pos_embed_for = types.MethodType(pos_embed_for, inner)
    return bb


class PipelineGraph(nn.Module):
    """What the pipeline scope exports: float32 image in, float32 hr_feats out."""

    def __init__(self, core):
        super().__init__()
        self.core = core

    def forward(self, image):
        return self.core(image).to(torch.float32)


class UpsamplerGraph(nn.Module):
    """What the upsampler scope exports: float32 lr_feats and image in, float32 hr_feats out;
    lr_feats are cast to the compute dtype, the image stays float32 for the Fourier features."""

    def __init__(self, core, compute_dtype):
        super().__init__()
        self.core = core
        self.compute_dtype = compute_dtype

    def forward(self, lr_feats, image):
        from ..pipeline import upsample_to_guidance

        return upsample_to_guidance(self.core, lr_feats.to(self.compute_dtype), image).to(torch.float32)


def deploy_module(model, backbone, scope: str, precision: str, attention: str, max_size: int, min_lr: int = 1,
                  query_chunk: int | None = None, input_size: int | None = None, min_size: int | None = None,
                  row_band: int | None = None):
    """The module that is traced: float32 image (and lr_feats) in, float32 hr_feats out.

    input_size: the pipeline's backbone input rule (`loftup.pipeline`), traced into the graph; the
    backbone's position tables then cover the largest side it can see (`backbone_max_side`)."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    up = deploy_upsampler(model, attention, precision, max_size, min_lr, query_chunk, row_band)
    if scope == "upsampler":
        return UpsamplerGraph(up, dtype).eval()
    bb = traceable_backbone(backbone, backbone_max_side(max_size, min_size or max_size, input_size))
    for module in bb.modules():  # the backbone's own attention, spelt the same way
        if hasattr(module, "dispatcher"):
            module.dispatcher = ExportAttention(attention)
    if precision == "fp16":
        bb = bb.half()
        bb.register_forward_pre_hook(lambda m, args: (args[0].to(dtype),))
    return PipelineGraph(Pipeline(bb, up, input_size)).eval()


def check_input_size(scope: str, input_size: int | None, patch: int) -> None:
    """ConfigError unless `input_size` is None or a pipeline engine's backbone input of at least one patch."""
    if input_size is None:
        return
    if scope != "pipeline":
        raise ConfigError(f"--input-size {input_size} sets a pipeline engine's backbone input; an upsampler engine takes the "
                          "backbone's features, so drop --input-size (or export --scope pipeline)")
    if int(input_size) < patch:
        raise ConfigError(f"--input-size {input_size} is smaller than one backbone patch ({patch} px); use at least {patch}")


def backbone_max_side(max_size: int, min_size: int, input_size: int | None) -> int:
    """The largest side the backbone sees for images with sides in [min_size, max_size]."""
    if input_size is None:
        return max_size
    from ..pipeline import scaled_sides

    return max(int(input_size), scaled_sides(max_size, min_size, input_size, min_size)[0])


# ------------------------------------------------------------------------------------------
# export
def _example_values(lo: int, hi: int, count: int, avoid: set[int]) -> list[int]:
    """`count` distinct sizes in [lo, hi], away from `avoid` (torch.export unifies equal sizes)."""
    mid = (lo + hi) // 2
    candidates = sorted(range(lo, hi + 1), key=lambda v: (abs(v - mid), v))
    picked = [v for v in candidates if v not in avoid and v > 1][:count]
    if len(picked) < count:
        raise ConfigError(f"the size range [{lo}, {hi}] is too narrow to export with dynamic sizes; widen --min-size/--max-size")
    avoid.update(picked)
    return picked


def input_shapes(scope: str, feat_dim: int, patch: int, sizes: tuple[int, int, int], max_batch: int,
                 min_lr: int = 1) -> dict[str, dict[str, list[int]]]:
    """Valid input ranges (min/opt/max shapes) recorded in metadata and used as TensorRT profiles."""
    lo, opt, hi = sizes
    shapes = {"image": {"min": [1, 3, lo, lo], "opt": [1, 3, opt, opt], "max": [max_batch, 3, hi, hi]}}
    if scope == "upsampler":
        shapes = {
            "lr_feats": {"min": [1, feat_dim, min_lr, min_lr], "opt": [1, feat_dim, max(min_lr, opt // patch), max(min_lr, opt // patch)],
                         "max": [max_batch, feat_dim, max(1, hi // patch), max(1, hi // patch)]},
            **shapes,
        }
    return shapes


def trace(module, scope: str, feat_dim: int, token_dim: int, patch: int, sizes: tuple[int, int, int], max_batch: int,
          min_lr: int = 1):
    """torch.export the deploy module with dynamic batch / sizes; ConfigError if a size gets pinned.

    min_lr: the smallest low-res grid side the upsampler scope accepts."""
    from torch.export import Dim

    lo, _, hi = sizes
    avoid = {feat_dim, token_dim, 3, patch, 1, 2}
    B = Dim("batch", min=1, max=max_batch) if max_batch > 1 else None
    batch = 2 if B is not None else 1
    H, W = _example_values(lo, hi, 2, avoid)
    image = torch.randn(batch, 3, H, W)
    HD, WD = Dim("height", min=lo, max=hi), Dim("width", min=lo, max=hi)
    dyn_image = {2: HD, 3: WD, **({0: B} if B is not None else {})}
    if scope == "pipeline":
        args, dynamic = (image,), {"image": dyn_image}
    else:
        lr_hi = max(2, min_lr + 1, hi // patch)
        h, w = _example_values(max(2, min_lr), max(lr_hi, 8), 2, avoid)
        lr = torch.randn(batch, feat_dim, h, w)
        hd = Dim("lr_height", min=min_lr, max=max(lr_hi, h, w))
        wd = Dim("lr_width", min=min_lr, max=max(lr_hi, h, w))
        args = (lr, image)
        dynamic = {"lr_feats": {2: hd, 3: wd, **({0: B} if B is not None else {})}, "image": dyn_image}
    try:
        with torch.no_grad():
            return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
    except Exception as e:  # torch raises many types; the first line says what got pinned
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ConfigError(f"cannot export this model with dynamic sizes: {first[:300]}") from e


def export_onnx(model, path: str | Path, *, backbone=None, scope: str = "upsampler", precision: str = "fp32", opset: int = 20,
                attention: str = "auto", sizes: tuple[int, int, int] = (224, 448, 896), max_batch: int = 8,
                source: str | Path | None = None, patch_size: int | None = None,
                query_chunk: int | str | None = None, row_band: int | None = None,
                input_size: int | None = None) -> EngineMetadata:
    """Trace `model` (an upsampler of any kind, plus `backbone` for the pipeline scope) and write an ONNX file.

    query_chunk: queries per block of the token path's loop (LoftUp; "auto": `query_chunk_length`
    at the largest size, None: one whole block, as TensorRT wants it; the format table's
    `query_chunks` says which a format gets); with query blocks, the Fourier features and convs
    loop over bands of row_band rows (None: `row_band_length` at the largest size). For the upsampler scope a backbone is optional and only describes the inputs in the
    metadata (name, patch size, normalisation). The graph's output is at the image's size for
    every kind (`loftup.pipeline.fit_output`). LiFT / FeatUp-JBU upsampler-scope engines accept
    low-res grids from min_size // patch cells (at least the kind's minimum): their traced
    adaptive pooling is bounded for that range.

    Writes `path` (and `path.data` for models over 2 GB) with metadata in metadata_props,
    checked by onnx.checker. No parity here (see loftup.export.commands.export_engine, which
    stages, checks parity and only then moves the file into place). Returns the metadata.
    """
    import onnx
    encoding = resolve_attention(attention, opset)
    if scope == "pipeline" and backbone is None:
        raise ConfigError("the pipeline scope needs a backbone (--backbone); or export --scope upsampler")
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"ONNX export takes precision fp32 or fp16, not {precision!r}")
    patch = int(getattr(backbone, "patch_size", None) or patch_size or 14)
    if scope == "pipeline" and sizes[0] < patch:
        raise ConfigError(f"--min-size {sizes[0]} is smaller than one backbone patch ({patch} px)")
    if backbone is not None and getattr(backbone, "embed_dim", model.cfg.feat_dim) != model.cfg.feat_dim:
        raise CheckpointError(
            f"the checkpoint upsamples {model.cfg.feat_dim}-channel features but backbone {backbone.name} gives {backbone.embed_dim}; "
            "use a checkpoint trained for this backbone"
        )
    kind = getattr(model, "kind", "loftup")
    min_lr = int(getattr(model, "min_lr_side", 1))
    if kind != "loftup":
        min_lr = max(min_lr, sizes[0] // patch)
    chunk = None
    if query_chunk == "auto" and kind == "loftup":
        chunk = query_chunk_length(model.cfg, max(1, sizes[2] // patch) ** 2)
    elif isinstance(query_chunk, int) and kind == "loftup":
        chunk = max(1, query_chunk)
    band = (row_band or row_band_length(model.cfg, sizes[2], sizes[0])) if chunk else None
    check_input_size(scope, input_size, patch)
    module = deploy_module(model, backbone if scope == "pipeline" else None, scope, precision, encoding, sizes[2], min_lr, chunk,
                           input_size, sizes[0], band)
    with _quiet_exporter():
        ep = trace(module, scope, model.cfg.feat_dim, getattr(model.cfg, "token_dim", model.cfg.feat_dim), patch, sizes,
                   max_batch, min_lr if scope == "upsampler" else 1)
        # one optimiser pass, ours (the exporter's own, optimize=True, is the same pass with smaller
        # folding limits: running both cost a quarter of a pipeline export for the same graph)
        program = torch.onnx.export(ep, opset_version=opset, dynamo=True, optimize=False, verbose=False)
        fold_weight_expressions(program.model)
    names = ("image",) if scope == "pipeline" else ("lr_feats", "image")
    graph = program.model.graph
    for value, name in zip(graph.inputs, names):
        value.name = name
    graph.outputs[0].name = "hr_feats"
    rename = {}
    axis_names = {"image": ("batch", None, "height", "width"), "lr_feats": ("batch", None, "lr_height", "lr_width")}
    for value, name in zip(graph.inputs, names):
        for axis, dim in enumerate(value.shape):
            want = axis_names[name][axis]
            if want is None:
                continue
            if isinstance(dim, int) and not (axis == 0 and max_batch == 1):
                raise ConfigError(f"export pinned {name} axis {axis} to {dim}; this model cannot be exported with dynamic sizes")
            if not isinstance(dim, int):
                rename[dim] = want
    program.rename_axes(rename)

    md = base_metadata(model, backbone, fmt="onnx", scope=scope, precision=precision, source=source or getattr(model, "source_checkpoint", None))
    md.patch_size = patch
    md.input_size = None if input_size is None else int(input_size)
    md.opset = opset
    md.attention = encoding
    if chunk:
        md.runtime["query_chunk"] = chunk  # the graph's token path loops over blocks of this many queries
        md.runtime["row_band"] = band  # and its full-resolution stages over bands of this many rows
    md.input_shapes = input_shapes(scope, model.cfg.feat_dim, patch, sizes, max_batch, min_lr)
    program.model.metadata_props.update(metadata_props(md))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        path.unlink(missing_ok=True)
        raise ConfigError(f"the exported graph fails onnx.checker: {str(e).splitlines()[0][:300]}") from e
    return md


FOLD_LIMIT = 2**26  # elements: every weight of the supported models


def fold_weight_expressions(model) -> None:
    """The exported graph's optimiser pass (onnxscript's constant folding, rewrites, dead-code and
    duplicate removal), with folding limits large enough for what the exporter's default limits
    leave computed at run time: the transposes, slices and reshapes of weights (q/k/v slices of
    `in_proj_weight`, the 1x1 head's weight), which otherwise run inside the loops on every
    iteration and hide the weights from ONNX Runtime's quantizer (a MatMul whose operand is an
    initializer is a weight MatMul). `model`: the exporter's onnx_ir model, changed in place."""
    from onnxscript import optimizer

    optimizer.optimize(model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notes that are not about our model (missing torchvision ops,
    deprecations inside torch); real errors still raise."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def metadata_props(md: EngineMetadata) -> dict[str, str]:
    """metadata_props entries: the full JSON under 'loftup', plus a few flat keys for viewers."""
    props = {METADATA_KEY: json.dumps(md.to_dict(), sort_keys=True)}
    for key in ("upsampler", "backbone", "feat_dim", "patch_size", "precision", "opset", "scope", "attention", "loftup_version",
                "source_sha256"):
        props[f"loftup.{key}"] = str(getattr(md, key))
    props["loftup.mean"], props["loftup.std"] = json.dumps(md.mean), json.dumps(md.std)
    if md.parity is not None:
        props["loftup.parity_passed"] = str(bool(md.parity.get("passed")))
    return props


def companion_files(path: str | Path) -> list[Path]:
    """Files that travel with an ONNX engine: its external weights (models over 2 GB)."""
    data = Path(path).with_name(Path(path).name + ".data")
    return [data] if data.exists() else []


def write_metadata(path: str | Path, md: EngineMetadata) -> None:
    """Replace the loftup metadata of an ONNX file in place (weights in external data untouched)."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    keep = [p for p in proto.metadata_props if not (p.key == METADATA_KEY or p.key.startswith(METADATA_KEY + "."))]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in metadata_props(md).items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def read_metadata(path: str | Path) -> EngineMetadata:
    """The loftup metadata of an ONNX file; CheckpointError for unreadable / foreign files."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise CheckpointError(f"cannot read ONNX file {path}: {type(e).__name__} (is the file complete? export it again with `loftup export`)") from None
    props = {p.key: p.value for p in proto.metadata_props}
    return _metadata_from_props(props, path)


def _metadata_from_props(props: dict[str, str], path) -> EngineMetadata:
    if METADATA_KEY not in props:
        raise CheckpointError(f"{Path(path).name} is an ONNX file without loftup metadata; export it with `loftup export`")
    try:
        data = json.loads(props[METADATA_KEY])
    except ValueError:
        raise CheckpointError(f"{Path(path).name}: unreadable loftup metadata; export the engine again") from None
    return EngineMetadata.from_dict(data, source=str(path))


def onnx_op_types(path: str | Path) -> dict[str, int]:
    """Op type -> count over the graph (and any subgraphs) of an ONNX file."""
    import collections

    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    counts: collections.Counter = collections.Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(proto.graph)
    return dict(counts)


# ------------------------------------------------------------------------------------------
# runtime
def resolve_providers(requested: list[str] | None = None) -> list[str]:
    """Providers in preference order TensorRT EP, CUDA EP, CPU EP, restricted to those available."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if not requested:
        return [p for p in PROVIDER_ORDER if p in available] or list(available)
    out = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            raise BackendUnavailableError(
                f"ONNX Runtime provider {name!r} is not available here (available: {', '.join(available)}); "
                + ("install onnxruntime-gpu on a machine with an NVIDIA GPU" if full != "CPUExecutionProvider" else "")
            )
        out.append(full)
    return out


_ORT_NUMPY = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


class OnnxEngine(Engine):
    """An exported ONNX file run by ONNX Runtime (onnxruntime or onnxruntime-gpu).

    providers: e.g. ["cuda", "cpu"] (default: every available one, TensorRT EP first);
    threads: intra-op threads (default: ONNX Runtime's choice). With the CUDA or TensorRT
    provider active, inputs and the output are bound on the GPU (IO binding, torch tensors).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailableError("ONNX engines need ONNX Runtime: pip install onnxruntime (or onnxruntime-gpu)") from None
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.requested_providers = resolve_providers(providers)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.requested_providers)
        except Exception as e:
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise CheckpointError(f"cannot load ONNX engine {self.path}: {first[:200]} (is the file complete? export it again with `loftup export`)") from None
        self.providers = self.session.get_providers()
        self.metadata = _metadata_from_props(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.input_types = {i.name: _ORT_NUMPY.get(i.type, "float32") for i in self.session.get_inputs()}
        self.output_type = _ORT_NUMPY.get(self.session.get_outputs()[0].type, "float32")
        self.on_gpu = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")

    def describe(self) -> str:
        return super().describe() + f" [{', '.join(self.providers)}]"

    def _run(self, inputs):
        import numpy as np
        names = self.metadata.input_names
        if self.on_gpu:
            return self._run_gpu(inputs)
        feed = {n: x.detach().to("cpu", getattr(torch, self.input_types[n])).contiguous().numpy() for n, x in zip(names, inputs)}
        (out,) = self.session.run(["hr_feats"], feed)
        return torch.from_numpy(np.ascontiguousarray(out))  # float32 for every export; Engine checks it once

    def _run_gpu(self, inputs):
        import numpy as np
        device = torch.device("cuda", torch.cuda.current_device())
        binding = self.session.io_binding()
        keep = []
        for name, x in zip(self.metadata.input_names, inputs):
            x = x.detach().to(device, getattr(torch, self.input_types[name])).contiguous()
            keep.append(x)
            binding.bind_input(name, "cuda", device.index, np.dtype(self.input_types[name]), tuple(x.shape), x.data_ptr())
        B, _, H, W = inputs[-1].shape
        out = torch.empty((B, self.metadata.feat_dim, H, W), dtype=getattr(torch, self.output_type), device=device)
        binding.bind_output("hr_feats", "cuda", device.index, np.dtype(self.output_type), tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out
