"""Attention backends for LoftUp's high-res query pass, behind one dispatcher.

- ``reference``: materialises the attention matrix (tests only).
- ``sdpa``: exact and memory-bounded: one fused PyTorch call on CUDA (flash / memory-efficient /
  cuDNN, PyTorch's pick), query chunks on CPU or where no fused kernel accepts the inputs.
- ``flash``, ``efficient``, ``cudnn``: one of PyTorch's fused CUDA kernels (``sdpa`` if it refuses).
- ``triton``: fused forward + backward kernel (``triton_attention.py``), CUDA tensors, or CPU
  tensors under ``TRITON_INTERPRET=1``.
- ``triton_v2``: the Hopper-oriented second generation (``triton_attention_v2.py``, unmeasured);
  the same contract; `auto` runs it only where a measured table entry names it.
- ``auto``: ``sdpa`` on CPU; on CUDA the backend a measured table names for the call's GPU
  architecture, dtype, head dim, size and mode (``attention_table.py``; unmeasured keys get
  ``sdpa``; fp32 never gets the IEEE-fp32 Triton path).

A model builds its `AttentionDispatcher` once, at construction; each (device, dtype, shape
class, mode) is resolved once, on its first call, and remembered (warning once on fallback).
On CUDA the dispatcher also asks the model to pad head dims to a multiple of 8 at the q/k/v
projections (`head_pad`), so rows are 16-byte aligned for the fused kernels.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings

import torch

from ..errors import BackendUnavailableError, check_choice
from .reference import reference_attention
from .sdpa import DEFAULT_BUDGET_BYTES, FUSED_KERNELS, chunked_sdpa_attention, fused_sdpa_attention, sdpa_attention

TRITON_BACKENDS = ("triton", "triton_v2")
BACKENDS = ("auto", "reference", "sdpa", *TRITON_BACKENDS, *FUSED_KERNELS)
CUDA_HEAD_MULTIPLE = 8  # head dims padded to this on CUDA: 16-byte rows in fp16/bf16 (32 in fp32)


def triton_importable() -> bool:
    """True if the `triton` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_can_run(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton kernel can run on tensors of `device`, and why not."""
    if not triton_importable():
        return False, "Triton is not installed (pip install 'loftup[triton]')"
    if device.type == "cuda":
        return True, ""
    if device.type == "cpu" and triton_interpreting():
        return True, ""
    return False, (
        f"Triton kernels need CUDA tensors (got {device.type}); on CPU they only run under the "
        "interpreter (TRITON_INTERPRET=1, set before triton is imported)"
    )


class AttentionDispatcher:
    """Holds the requested backend; resolves it per (device, dtype, shape class, mode) once.

    backend: one of BACKENDS. budget_bytes: memory for one chunk's score block (chunked sdpa).
    head_multiple: pad head dims to a multiple of this at the projections; None = 8 on CUDA, 1
    (no padding) elsewhere. table: the `AttentionTable` for ``auto`` on CUDA (None: the shipped
    table with the local one over it, read on the first CUDA call).
    """

    def __init__(self, backend: str = "auto", budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 head_multiple: int | None = None, table=None):
        self.requested = check_choice("attention backend", backend, BACKENDS)
        self.budget_bytes = budget_bytes  # sdpa: memory for one chunk's score block
        self.head_multiple = head_multiple
        self.table = table
        self._resolved: dict[tuple, str] = {}

    def head_pad(self, device: torch.device, head_dim: int) -> int:
        """Zero channels to add per head for tensors on `device` (0 when rows are already aligned)."""
        multiple = self.head_multiple
        if multiple is None:
            multiple = CUDA_HEAD_MULTIPLE if device.type == "cuda" and self.requested != "reference" else 1
        return -head_dim % max(int(multiple), 1)

    def resolve(self, device: torch.device, q: torch.Tensor | None = None, k: torch.Tensor | None = None) -> str:
        """The concrete backend for a call on `device` (with q (B, heads, N, d), k (B, heads, M, d)
        for ``auto`` on CUDA, where the table is keyed by dtype, head dim, size and mode)."""
        key: tuple = (device.type,)
        shape = None
        if self.requested == "auto" and device.type == "cuda" and q is not None and k is not None:
            from .attention_table import arch_of, table_key

            grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
            shape = (arch_of(device), q.dtype, q.shape[-1], q.shape[-2], k.shape[-2], grad)
            key = (device.type, device.index, table_key(*shape))  # one resolution per table key
        if key not in self._resolved:
            if shape is not None and self.table is None:
                from .attention_table import AttentionTable

                self.table = AttentionTable.load()
            self._resolved[key] = resolve_backend(self.requested, device, shape, self.table)
        return self._resolved[key]

    def __call__(self, q, k, v, scale: float | None = None) -> torch.Tensor:
        return run_backend(self.resolve(q.device, q, k), q, k, v, scale, self.budget_bytes)

    def __repr__(self) -> str:
        return f"AttentionDispatcher({self.requested!r})"


def resolve_backend(backend: str, device: torch.device, shape: tuple | None = None, table=None) -> str:
    """Turn a requested backend name into the concrete one used for tensors on `device`.

    shape: (arch, dtype, head dim, N, M, grad) of the call, for ``auto`` on CUDA; without it
    ``auto`` on CUDA is ``sdpa`` (PyTorch's fused kernels). table: an AttentionTable (default:
    shipped + local).
    """
    check_choice("attention backend", backend, BACKENDS)
    if backend in TRITON_BACKENDS:
        ok, why = triton_can_run(device)
        if not ok:
            raise BackendUnavailableError(f"attention backend {backend!r} cannot run here: {why}; use backend='sdpa'")
        return backend
    if backend in FUSED_KERNELS and device.type != "cuda":
        raise BackendUnavailableError(
            f"attention backend {backend!r} is one of PyTorch's fused CUDA kernels and needs CUDA tensors "
            f"(got {device.type}); use backend='sdpa'"
        )
    if backend != "auto":
        return backend
    if device.type != "cuda" or shape is None:
        return "sdpa"
    from .attention_table import AttentionTable

    arch, dtype, d, n, m, grad = shape
    choice = (table or AttentionTable.load()).lookup(arch, dtype, d, n, m, grad)
    if choice in TRITON_BACKENDS:
        ok, why = triton_can_run(device)
        if not ok:
            warnings.warn(f"loftup: falling back to the sdpa attention backend: {why}", stacklevel=3)
            return "sdpa"
    return choice


def run_backend(name: str, q, k, v, scale: float | None = None, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """Run a concrete backend: q (B, heads, N, d), k/v (B, heads, M, d) -> (B, heads, N, d)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if name == "sdpa":
        return sdpa_attention(q, k, v, scale, budget_bytes)
    if name in FUSED_KERNELS:
        return fused_sdpa_attention(q, k, v, scale, (name,), budget_bytes)
    if name == "reference":
        return reference_attention(q, k, v, scale)
    if name == "triton":
        from .triton_attention import triton_attention

        return triton_attention(q, k, v, scale)
    if name == "triton_v2":
        from .triton_attention_v2 import triton_attention_v2

        return triton_attention_v2(q, k, v, scale)
    raise BackendUnavailableError(f"unknown concrete attention backend {name!r}")


def attention(q, k, v, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """One-off attention call with backend resolution (models hold an AttentionDispatcher instead)."""
    return AttentionDispatcher(backend)(q, k, v, scale)


__all__ = [
    "BACKENDS",
    "AttentionDispatcher",
    "CUDA_HEAD_MULTIPLE",
    "attention",
    "chunked_sdpa_attention",
    "fused_sdpa_attention",
    "reference_attention",
    "resolve_backend",
    "run_backend",
    "sdpa_attention",
    "triton_can_run",
]
