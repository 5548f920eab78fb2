"""Exact scaled_dot_product_attention that never holds the whole N x M matrix.

Two forms:

- `chunked_sdpa_attention`: queries never interact in LoftUp's cross-attention, so splitting
  them into chunks gives the same result as one call. The chunk length comes from a memory
  budget for the score block (B * heads * chunk * M elements, counted three times for scores,
  probabilities and the softmax's temporaries). This is the CPU path: PyTorch's CPU kernels are
  not all tiled, and chunking keeps the memory bounded at any output size.
- `fused_sdpa_attention`: one unchunked call restricted to PyTorch's fused CUDA kernels
  (flash, memory-efficient, cuDNN), which are tiled themselves and never materialise the
  matrix. On a GPU chunking only costs: 1.6-2x slower forward and 6x slower forward+backward
  than one flash call on an H200 (gpu-findings.md). Flash needs fp16/bf16; memory-efficient
  and cuDNN refuse head dims that are not multiples of 8, which is why the model pads its
  heads at the projections on CUDA (`loftup.model.layers.MultiheadCrossAttention`).

`sdpa_attention` (the ``sdpa`` backend) is the fused call on CUDA when a fused kernel accepts
the inputs and the chunked one otherwise. Whether a fused kernel accepts a (device, dtype, head
dim, kernels) combination is learnt from its first call and remembered, with one warning when
it falls back.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

DEFAULT_BUDGET_BYTES = 256 * 2**20
FUSED_KERNELS = ("flash", "efficient", "cudnn")

# (device, dtype, head dim, kernels) -> whether PyTorch ran it fused; learnt on the first call.
_FUSED_OK: dict[tuple, bool] = {}


def chunk_length(batch: int, heads: int, n_keys: int, element_bytes: int = 4, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Queries per chunk so that one chunk's score block stays within `budget_bytes`."""
    per_query = 3 * batch * heads * n_keys * max(element_bytes, 4)
    return max(1, budget_bytes // per_query)


def chunked_sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """softmax(q k^T * scale) v over query chunks. q (B, heads, N, d); k, v (B, heads, M, d)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    B, H, N, _ = q.shape
    step = chunk_length(B, H, k.shape[-2], q.element_size(), budget_bytes)
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and not torch.is_grad_enabled():
        return materialised_chunks(q, k, v, scale, min(step, max(64, 2**20 // k.shape[-2])))
    if step >= N:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    out = [F.scaled_dot_product_attention(q[:, :, i : i + step], k, v, scale=scale) for i in range(0, N, step)]
    return torch.cat(out, dim=2)


def materialised_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, step: int) -> torch.Tensor:
    """softmax(q k^T * scale) v written out per chunk of `step` queries (two GEMMs and a softmax,
    results straight into one output), for inference on CPU in bf16 / fp16. The keys are scaled
    and transposed once per call (one rounding of the keys instead of one per score), and the
    softmax, which accumulates in float32 inside its kernel, runs in place in one score buffer
    the chunks share.

    On LoftUp's shapes (4 heads, head dim 104, 16k queries, 256 / 1024 keys, chunks of ~1M scores
    per head; benchmarks/cpu_attention.py, the Zen 4 machine, quiet, wall time) PyTorch's fused
    CPU kernel ran 154-168 GFLOP/s with two threads and 82-85 with one, this form 262-288 and
    139-147 (2026-12-07, 6577a76; the first version, with a fresh score block, a separate softmax
    output and the keys copied per chunk: 210 / 195 against 133 / 135 on 2026-12-06). In the bf16
    CPU variant that rewrite is 1.014x (224 px) and 1.044x (448 px) faster end to end, and its
    output as close to float64 or closer (relative error 6.9e-3 vs 7.6e-3 with the shipped
    checkpoint, equal with random weights; interleaved in one process, 4-7 rounds). float32 keeps
    the fused call (fused 126 / 155, the first version of this form 92 / 114 with two threads)."""
    out = torch.empty_like(q)
    kt = (k.transpose(-1, -2) * scale).contiguous()  # scaled and transposed once per call, not per chunk
    buf = None
    for i in range(0, q.shape[2], step):
        qi = q[:, :, i : i + step]
        if buf is None or buf.shape[2] != qi.shape[2]:
            buf = q.new_empty(*qi.shape[:3], k.shape[-2])  # (B, heads, step, M), reused by every full chunk
        scores = torch.matmul(qi, kt, out=buf)
        torch.ops.aten._softmax.out(scores, -1, False, out=scores)  # in place: no second score block
        torch.matmul(scores, v, out=out[:, :, i : i + step])
    return out


def _sdp_backends(kernels: tuple[str, ...]) -> list:
    from torch.nn.attention import SDPBackend

    names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION}
    return [names[k] for k in kernels]


def fused_sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    kernels: tuple[str, ...] = FUSED_KERNELS,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """One unchunked call restricted to PyTorch's fused `kernels` (CUDA); falls back to
    `chunked_sdpa_attention` (warning once per combination) when none of them accepts the inputs."""
    from torch.nn.attention import sdpa_kernel

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    key = (str(q.device), q.dtype, q.shape[-1], tuple(kernels))
    if q.device.type == "cuda" and _FUSED_OK.get(key, True):
        try:
            with warnings.catch_warnings():  # PyTorch explains each refusal as a warning; we give one line
                warnings.simplefilter("ignore")
                with sdpa_kernel(_sdp_backends(tuple(kernels))):
                    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
            _FUSED_OK[key] = True
            return out
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:  # "No available kernel": none of `kernels` takes this dtype / head dim
            if _FUSED_OK.get(key) is True:
                raise  # it ran before with these properties: a real error, not a refusal
            _FUSED_OK[key] = False
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            warnings.warn(
                f"loftup: PyTorch's {'/'.join(kernels)} attention refused {q.dtype} with head dim {q.shape[-1]} "
                f"({first[:120]}); using the query-chunked sdpa instead", stacklevel=3,
            )
    return chunked_sdpa_attention(q, k, v, scale, budget_bytes)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """The ``sdpa`` backend: one fused call on CUDA (PyTorch picks flash / memory-efficient /
    cuDNN), query chunks on CPU or where no fused kernel accepts the inputs. Exact either way."""
    if q.device.type == "cuda":
        return fused_sdpa_attention(q, k, v, scale, FUSED_KERNELS, budget_bytes)
    return chunked_sdpa_attention(q, k, v, scale, budget_bytes)
