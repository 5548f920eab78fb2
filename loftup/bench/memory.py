"""Peak memory of a block of code: process RSS on CPU, max allocated memory on CUDA.

CPU: a sampling thread reads the resident set size from /proc/self/statm every `interval`
seconds; where the kernel allows it the high-water mark VmHWM is also reset before
(/proc/self/clear_refs, value 5) and read after, which catches peaks between samples.
Without /proc (not Linux), the process-lifetime peak from getrusage is reported instead.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ..runtime.budget import available_memory, current_rss, proc_kib

__all__ = ["PeakMemory", "available_memory", "current_rss"]

_PROC = Path("/proc/self")


def _hwm() -> int:
    return proc_kib(_PROC / "status", "VmHWM")


def _reset_hwm() -> bool:
    try:
        (_PROC / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """with PeakMemory(device) as pm: ...; then pm.peak_bytes, pm.baseline_bytes, pm.method."""

    def __init__(self, device: str = "cpu", interval: float = 0.002):
        self.device = str(device)
        self.interval = interval
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, current_rss())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline_bytes = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated"
            return self
        self.baseline_bytes = current_rss()
        self._hwm_reset = _reset_hwm()
        self.peak_bytes = self.baseline_bytes
        self.method = "process RSS (sampled /proc/self/statm" + (" + VmHWM)" if self._hwm_reset else ")")
        if not self.baseline_bytes:
            self.method = "getrusage ru_maxrss (process lifetime peak)"
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, current_rss(), _hwm() if self._hwm_reset else 0)
        else:
            import resource

            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
