"""`loftup bench`: latency / throughput / memory / achieved-FLOP harness over every backend.

    from loftup.bench import BenchOptions, run_bench
    report = run_bench(BenchOptions(random_init=True, sizes=[224, 448]))

Modules: harness (backend table, timing loop, table / JSON / plot), flops (the analytic
FLOP formula), memory (peak RSS / CUDA memory). Imported lazily: the CLI loads this package
without torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "BACKENDS": "harness",
    "BenchOptions": "harness",
    "BenchReport": "harness",
    "run_bench": "harness",
    "measure_gemm_peak": "harness",
    "upsampler_flops": "flops",
    "upsampler_macs": "flops",
    "FORMULA": "flops",
    "PeakMemory": "memory",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
