"""Attention backends for LoftUp's high-res query pass, behind one dispatcher.

- ``reference``: materialises the attention matrix (tests only).
- ``sdpa``: query-chunked ``scaled_dot_product_attention``; exact, memory-bounded.
- ``triton``: fused forward + backward kernel (``triton_attention.py``), CUDA tensors, or CPU
  tensors under ``TRITON_INTERPRET=1``.

A model resolves its backend once, at construction (`AttentionDispatcher`); ``auto`` picks
``triton`` for CUDA tensors when Triton is importable and ``sdpa`` otherwise.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings

import torch

from ..errors import BackendUnavailableError, check_choice
from .reference import reference_attention
from .sdpa import DEFAULT_BUDGET_BYTES, sdpa_attention

BACKENDS = ("auto", "reference", "sdpa", "triton")


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
    """Holds the requested backend and resolves it per device type, once, warning once on fallback."""

    def __init__(self, backend: str = "auto", budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.requested = check_choice("attention backend", backend, BACKENDS)
        self.budget_bytes = budget_bytes  # sdpa: memory for one chunk's score block
        self._resolved: dict[str, str] = {}

    def resolve(self, device: torch.device) -> str:
        key = device.type
        if key not in self._resolved:
            self._resolved[key] = resolve_backend(self.requested, device)
        return self._resolved[key]

    def __call__(self, q, k, v, scale: float | None = None) -> torch.Tensor:
        return run_backend(self.resolve(q.device), q, k, v, scale, self.budget_bytes)

    def __repr__(self) -> str:
        return f"AttentionDispatcher({self.requested!r})"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn a requested backend name into the concrete one used for tensors on `device`."""
    check_choice("attention backend", backend, BACKENDS)
    if backend == "triton":
        ok, why = triton_can_run(device)
        if not ok:
            raise BackendUnavailableError(f"attention backend 'triton' cannot run here: {why}; use backend='sdpa'")
        return "triton"
    if backend == "auto":
        if device.type == "cuda":
            ok, why = triton_can_run(device)
            if ok:
                return "triton"
            warnings.warn(f"loftup: falling back to the sdpa attention backend: {why}", stacklevel=3)
        return "sdpa"
    return backend


def run_backend(name: str, q, k, v, scale: float | None = None, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """Run a concrete backend: q (B, heads, N, d), k/v (B, heads, M, d) -> (B, heads, N, d)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if name == "sdpa":
        return sdpa_attention(q, k, v, scale, budget_bytes)
    if name == "reference":
        return reference_attention(q, k, v, scale)
    if name == "triton":
        from .triton_attention import triton_attention

        return triton_attention(q, k, v, scale)
    raise BackendUnavailableError(f"unknown concrete attention backend {name!r}")


def attention(q, k, v, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """One-off attention call with backend resolution (models hold an AttentionDispatcher instead)."""
    return run_backend(resolve_backend(backend, q.device), q, k, v, scale)


__all__ = [
    "BACKENDS",
    "AttentionDispatcher",
    "attention",
    "reference_attention",
    "resolve_backend",
    "run_backend",
    "sdpa_attention",
    "triton_can_run",
]
