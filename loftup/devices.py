"""The one place a `--device` string becomes a torch.device, or a one-line error."""

from __future__ import annotations

import torch

from .errors import BackendUnavailableError, ConfigError


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
