"""Memory budget of a run: the bound on the process's peak resident memory that tiling keeps.

`--memory-budget` (upsample, bench, eval, export's parity run) takes a size (`1.5GB`, `800MB`,
`2G`, bytes) or `auto`: the process's resident memory when the engine is made plus
`DEFAULT_HEADROOM` (1 GiB), or plus `DEFAULT_FRACTION` of the machine's available memory
(Linux `MemAvailable`: free memory plus what the kernel can reclaim) when that is less. A deploy
user on a shared machine expects a bounded footprint, not half of what is free; a larger
budget is one `--memory-budget 4GB` away and only changes speed, never the numbers. Without
/proc/meminfo (not Linux) `auto` means resident memory + 1 GiB.

The LoftUp upsampler turns the budget into a tile plan (`loftup.model.upsampler`): what is left
after the resident memory at call time and the output, divided by the working memory per output
pixel, gives the pixels per tile. Tiles are exact (the 2-pixel halo rule), so the budget only
changes speed and memory, never the numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
from pathlib import Path

from ..errors import ConfigError

DEFAULT_HEADROOM = 2**30  # `auto`: at most this much above the resident memory ...
DEFAULT_FRACTION = 0.5  # ... and at most this fraction of MemAvailable
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def proc_kib(path: Path, key: str) -> int:
    """The `key:  N kB` line of a /proc file, in bytes (0 if the file or line is missing)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def current_rss() -> int:
    """Resident set size of this process in bytes (0 if unknown)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except OSError:
        return 0


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, Windows, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the OS (glibc `malloc_trim(0)`); False where unavailable.

    Tensors under glibc's dynamic mmap threshold (up to 32 MB) live on the heap, and the pages
    freed between tiles stay resident: over the twelve tiles of a 448 px run at C = 384 that grew
    the process by 60-170 MB above its live tensors (peak 912-1026 MB against a 1 GiB budget).
    The tiled upsampler calls this after a tile when the process holds more than its plan counted
    on (`LoftUpUpsampler._tiles`). One call: ~0.02 ms; the cost is the next tile faulting the
    pages in again.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def available_memory() -> int:
    """MemAvailable in bytes (Linux), or 0 if unknown."""
    return proc_kib(Path("/proc/meminfo"), "MemAvailable")


def default_memory_budget(fraction: float = DEFAULT_FRACTION, headroom: int = DEFAULT_HEADROOM) -> int:
    """`auto`: resident memory now + the smaller of `headroom` and `fraction` of MemAvailable
    (just `headroom` when MemAvailable is unknown)."""
    avail = available_memory()
    return current_rss() + (min(headroom, int(fraction * avail)) if avail else headroom)


def explicit_memory_budget(text: str | int | None) -> int | None:
    """--memory-budget as the user gave it: bytes, or None for auto / not given, so that the default
    (`default_memory_budget`) is taken each time a model runs, from the resident memory then - not
    from the memory at start-up, which a reference run or a profiler may have outgrown by the time
    the row runs. ConfigError on a bad value."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "auto")):
        return None
    return parse_memory_budget(text)


def parse_memory_budget(text: str | int | None) -> int | None:
    """'auto' / None -> the default budget (`default_memory_budget`); '1.5GB', '800MB', '2G', 123 -> bytes."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "auto")):
        return default_memory_budget()
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _UNITS:
            raise ConfigError(f"--memory-budget takes a size such as 1.5GB, 800MB or auto, got {text!r}")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigError(f"--memory-budget must be positive, got {text!r}")
    return value


def format_bytes(n: int | float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"
