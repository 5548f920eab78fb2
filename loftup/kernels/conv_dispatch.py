"""The adaptive convolution's one dispatcher: "torch" (`adaptive_conv.py`, exact, any device),
"triton" (`triton_adaptive_conv.py`, CUDA tensors or the interpreter) or "auto" (Triton on CUDA
when it can run, else PyTorch), resolved once per device type, warning once on fallback.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import BackendUnavailableError, check_choice
from .adaptive_conv import DEFAULT_BUDGET_BYTES, adaptive_conv_torch

CONV_BACKENDS = ("auto", "torch", "triton")


class AdaptiveConvDispatcher:
    """The adaptive convolution's implementation, resolved once per device type (warns once on fallback)."""

    def __init__(self, backend: str = "auto", budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.requested = check_choice("adaptive-conv backend", backend, CONV_BACKENDS)
        self.budget_bytes = budget_bytes
        self._resolved: dict[str, str] = {}

    def resolve(self, device: torch.device) -> str:
        if device.type not in self._resolved:
            self._resolved[device.type] = resolve_conv_backend(self.requested, device)
        return self._resolved[device.type]

    def __call__(self, source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        if self.resolve(source.device) == "triton":
            from .triton_adaptive_conv import triton_adaptive_conv

            return triton_adaptive_conv(source, kernel)
        return adaptive_conv_torch(source, kernel, self.budget_bytes)

    def __repr__(self) -> str:
        return f"AdaptiveConvDispatcher({self.requested!r})"


def resolve_conv_backend(backend: str, device: torch.device) -> str:
    """'torch' or 'triton' for tensors on `device` (BackendUnavailableError when triton cannot run)."""
    from . import triton_can_run

    check_choice("adaptive-conv backend", backend, CONV_BACKENDS)
    if backend == "triton":
        ok, why = triton_can_run(device)
        if not ok:
            raise BackendUnavailableError(f"adaptive-conv backend 'triton' cannot run here: {why}; use backend 'torch'")
        return "triton"
    if backend == "auto" and device.type == "cuda":
        ok, why = triton_can_run(device)
        if ok:
            return "triton"
        warnings.warn(f"loftup: the JBU adaptive convolution falls back to PyTorch: {why}", stacklevel=3)
    return "torch"


__all__ = ["CONV_BACKENDS", "AdaptiveConvDispatcher", "resolve_conv_backend"]
