"""The one place a `--device` string becomes a torch.device (or a one-line error), and the one
precision rule (fp32 / bf16 / fp16 -> autocast) every verb uses."""

from __future__ import annotations

import torch

from ..errors import BackendUnavailableError, ConfigError


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """'auto' (or empty): cuda:local_rank when a GPU is visible, else cpu; 'cpu'; 'cuda' (=
    cuda:local_rank) or 'cuda:N'. ConfigError for anything else; BackendUnavailableError when
    CUDA is asked for and this machine has none."""
    if name in ("auto", "", None):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {name!r} is not available (no CUDA build or no visible GPU); use --device cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name ('bf16', 'fp16'), None for 'fp32'; ConfigError otherwise."""
    from ..errors import check_choice

    check_choice("precision", precision, PRECISIONS)
    return None if precision == "fp32" else DTYPES[precision]


def autocast(device: torch.device | str, precision: str, cache_enabled: bool = True):
    """The one precision rule of every verb: weights stay float32, bf16/fp16 run under
    torch.autocast on the device's type, fp32 runs as it is. cache_enabled=False while CUDA
    graphs are captured (a cached weight cast must not outlive the graph that reads it)."""
    import contextlib

    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype, cache_enabled=cache_enabled)
