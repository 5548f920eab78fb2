"""The one place a `--device` string becomes a torch.device (or a one-line error), and the one
precision rule (fp32 / bf16 / fp16 -> autocast) every verb uses, with whether bf16 is fast here."""

from __future__ import annotations

import functools
from pathlib import Path

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


# /proc/cpuinfo flags of bfloat16 arithmetic in hardware: x86 AVX512_BF16 and AMX-BF16, Arm BF16.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def bf16_in_cpuinfo(text: str) -> bool | None:
    """Whether /proc/cpuinfo's text lists a bf16 arithmetic flag (None: it lists no flags at all)."""
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & BF16_CPU_FLAGS) if flags else None


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (x86 AVX512_BF16 / AMX-BF16, Arm BF16).

    Without it PyTorch emulates bf16 GEMMs and convs, far slower than fp32: on an AMD EPYC Zen 3
    (AVX2 only; 2026-12-07, one thread) a 1024^3 matmul ran at 0.8 GFLOP/s in bf16 against 44 in
    fp32, a 404 -> 404 3x3 conv at 0.26 against 60. Read from /proc/cpuinfo's flags; where there
    are none, oneDNN's own bf16 check."""
    try:
        found = bf16_in_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        found = None
    if found is not None:
        return found
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 runs in hardware on `device`: a CUDA GPU with bf16 (Ampere and later) or a
    CPU with bf16 instructions (`cpu_has_bf16`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_bf16()


def fast_precision(device: torch.device | str) -> str:
    """The precision a default that wants speed takes on `device`: bf16 where it is fast, else fp32."""
    return "bf16" if bf16_is_fast(device) else "fp32"


def emulated_bf16_warning(device: torch.device | str, precision: str) -> str | None:
    """The warning for bf16 asked for on a CPU without bf16 instructions (None otherwise)."""
    if precision != "bf16" or torch.device(device).type != "cpu" or cpu_has_bf16():
        return None
    return ("loftup: this CPU has no bf16 instructions (AVX512_BF16, AMX or Arm BF16), so bf16 runs "
            "emulated, tens of times slower than fp32; use fp32 here")
