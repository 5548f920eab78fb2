"""GPU benchmark of the attention backends at LoftUp's real shapes (used by benchmarks/ and `loftup bench`).

Work is counted with an explicit formula on the *true* head dim d (padding is overhead, not work):

    forward   FLOPs = 4 * B * heads * N * M * d      (Q K^T and P V, 2 FLOPs per multiply-add)
    backward  FLOPs = 2.5 * forward                  (dV, dP, dQ, dK = 4 matmuls, + the recomputed
                                                      Q K^T = 5 matmuls against the forward's 2)
    fwd+bwd   FLOPs = 3.5 * forward

Each timing is the median of CUDA-event-timed repeats after warm-up. Throughput is reported
against two peaks: the vendor's dense tensor-core figure for the device (``PEAK_TFLOPS``, looked
up from ``torch.cuda.get_device_name()``) and a matmul measured in the same run with the same
dtype (``measure_matmul_peak``), which is what the device actually sustains today (clocks,
power limits). Failures are results, not crashes: a backend that refuses the shape is
``unsupported``, one that runs out of memory is ``oom``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import BackendUnavailableError

# Dense (no sparsity) peaks in TFLOP/s from the vendors' data sheets. fp16/bf16 are tensor-core
# rates with fp32 accumulation (the kernel accumulates in fp32; GeForce halves that rate).
# fp32 = plain CUDA-core FMA (what tl.dot uses with input_precision="ieee").
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"float16": 756.0, "bfloat16": 756.0, "tf32": 378.0, "float32": 51.0},
    "H100 NVL": {"float16": 835.0, "bfloat16": 835.0, "tf32": 418.0, "float32": 60.0},
    "H100": {"float16": 989.4, "bfloat16": 989.4, "tf32": 494.7, "float32": 66.9},  # SXM5
    "A100": {"float16": 312.0, "bfloat16": 312.0, "tf32": 156.0, "float32": 19.5},
    "L4": {"float16": 121.0, "bfloat16": 121.0, "tf32": 60.0, "float32": 30.3},
    "RTX 4090": {"float16": 165.2, "bfloat16": 165.2, "tf32": 82.6, "float32": 82.6},
}

# LoftUp's real shapes: output side (N = side^2 queries), key grid M, head dim d.
OUTPUT_SIDES = (224, 448, 896)
KEY_COUNTS = (256, 1024, 4096)
HEAD_DIMS = (101, 197)
METHODS = ("triton", "sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "loftup_sdpa", "loftup_chunked")
MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Shape:
    """One attention problem: q (batch, heads, n, d), k/v (batch, heads, m, d)."""

    n: int
    m: int
    d: int
    heads: int = 4
    batch: int = 1

    @property
    def label(self) -> str:
        side = math.isqrt(self.n)
        out = f"{side}x{side}" if side * side == self.n else str(self.n)
        return f"out {out} M={self.m} d={self.d}"


def loftup_shapes(paired: bool = False) -> list[Shape]:
    """All (output, M, d) combinations, or only the paired ones (input and output at the same
    resolution with DINOv2 /14: 224 <-> 256 keys, 448 <-> 1024, 896 <-> 4096)."""
    if paired:
        return [Shape(s * s, m, d) for s, m in zip(OUTPUT_SIDES, KEY_COUNTS) for d in HEAD_DIMS]
    return [Shape(s * s, m, d) for s in OUTPUT_SIDES for m in KEY_COUNTS for d in HEAD_DIMS]


def attention_flops(shape: Shape, mode: str) -> float:
    fwd = 4.0 * shape.batch * shape.heads * shape.n * shape.m * shape.d
    return fwd if mode == "fwd" else 3.5 * fwd


def peak_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """Vendor dense peak for `dtype` on a device called `device_name`, or None if unknown."""
    key = str(dtype).removeprefix("torch.")
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        key = "tf32"
    for name, peaks in PEAK_TFLOPS.items():  # most specific names first
        if name in device_name:
            return peaks.get(key)
    return None


def cuda_median_ms(fn: Callable[[], object], warmup: int = 3, budget_ms: float = 400.0, max_reps: int = 50) -> float:
    """Median milliseconds of `fn` on the current CUDA stream (repeats sized to a time budget)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    reps = max(3, min(max_reps, int(budget_ms / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 8192) -> float:
    """TFLOP/s of a (size x size) @ (size x size) matmul in `dtype`: the sustained peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    ms = cuda_median_ms(lambda: torch.matmul(a, b))
    return 2.0 * size**3 / (ms * 1e-3) / 1e12


def _sdpa_with(backend_name: str) -> Callable:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "sdpa_math": SDPBackend.MATH,
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    }[backend_name]

    def run(q, k, v, scale):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

    return run


def attention_method(name: str) -> Callable:
    """(q, k, v, scale) -> out for a method name of METHODS."""
    if name == "triton":
        from .triton_attention import triton_attention

        return triton_attention
    if name == "loftup_chunked":  # the query-chunked sdpa (loftup's CPU path)
        from .sdpa import chunked_sdpa_attention

        return chunked_sdpa_attention
    if name == "loftup_sdpa":  # the sdpa backend: one fused call on CUDA
        from .sdpa import sdpa_attention

        return sdpa_attention
    if name.startswith("sdpa_"):
        return _sdpa_with(name)
    raise BackendUnavailableError(f"unknown benchmark method {name!r}; choose from {', '.join(METHODS)}")


def make_step(method: Callable, shape: Shape, mode: str, device: torch.device, dtype: torch.dtype) -> Callable:
    """A closure running one forward (or forward + backward) of `method` on fresh random inputs."""
    gen = torch.Generator(device=device).manual_seed(0)
    grad = mode != "fwd"
    q = torch.randn(shape.batch, shape.heads, shape.n, shape.d, device=device, dtype=dtype, generator=gen)
    k = torch.randn(shape.batch, shape.heads, shape.m, shape.d, device=device, dtype=dtype, generator=gen)
    v = torch.randn(shape.batch, shape.heads, shape.m, shape.d, device=device, dtype=dtype, generator=gen)
    q, k, v = (t.requires_grad_(grad) for t in (q, k, v))
    do = torch.randn_like(q) if grad else None
    scale = 1.0 / math.sqrt(shape.d)

    def step():
        if not grad:
            with torch.no_grad():
                return method(q, k, v, scale)
        out = method(q, k, v, scale)
        return torch.autograd.grad(out, (q, k, v), do)

    return step


def run_attention_benchmark(
    device: torch.device | str,
    shapes: Iterable[Shape] | None = None,
    methods: Iterable[str] = METHODS,
    modes: Iterable[str] = MODES,
    dtype: torch.dtype = torch.float16,
    budget_ms: float = 400.0,
    measure_peak: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time every (shape, method, mode) on a CUDA `device`; one dict per measurement.

    Keys: device, dtype, method, mode, n, m, d, heads, batch, label, status ("ok",
    "unsupported", "oom", "unavailable"), ms, tflops, peak_tflops (vendor), frac_peak,
    matmul_tflops (measured), frac_matmul, error.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise BackendUnavailableError("the attention benchmark needs an NVIDIA GPU (CUDA); none is available here")
    shapes = list(shapes) if shapes is not None else loftup_shapes()
    name = torch.cuda.get_device_name(device)
    vendor_peak = peak_tflops(name, dtype)
    matmul_peak = measure_matmul_peak(device, dtype) if measure_peak else None
    if log:
        measured = "not measured" if matmul_peak is None else f"{matmul_peak:.1f} TFLOP/s"
        log(f"{name}: vendor peak {vendor_peak} TFLOP/s, measured matmul {measured}")
    rows = []
    for shape in shapes:
        for method_name in methods:
            for mode in modes:
                row = {
                    "device": name, "dtype": str(dtype).removeprefix("torch."), "method": method_name, "mode": mode,
                    "n": shape.n, "m": shape.m, "d": shape.d, "heads": shape.heads, "batch": shape.batch,
                    "label": shape.label, "status": "ok", "ms": None, "tflops": None,
                    "peak_tflops": vendor_peak, "frac_peak": None, "matmul_tflops": matmul_peak,
                    "frac_matmul": None, "error": "",
                }
                try:
                    step = make_step(attention_method(method_name), shape, mode, device, dtype)
                    ms = cuda_median_ms(step, budget_ms=budget_ms)
                    tflops = attention_flops(shape, mode) / (ms * 1e-3) / 1e12
                    row.update(ms=ms, tflops=tflops)
                    if vendor_peak:
                        row["frac_peak"] = tflops / vendor_peak
                    if matmul_peak:
                        row["frac_matmul"] = tflops / matmul_peak
                except torch.cuda.OutOfMemoryError as e:
                    row.update(status="oom", error=str(e).splitlines()[0])
                except (ImportError, BackendUnavailableError) as e:
                    row.update(status="unavailable", error=str(e).splitlines()[0])
                except RuntimeError as e:  # e.g. "No available kernel" for a head dim a backend refuses
                    row.update(status="unsupported", error=str(e).splitlines()[0][:200])
                finally:
                    step = None
                    torch.cuda.empty_cache()
                rows.append(row)
                if log:
                    log(format_row(row))
    return rows


def format_row(row: dict) -> str:
    head = f"{row['label']:<28} {row['method']:<15} {row['mode']:<8}"
    if row["status"] != "ok":
        return f"{head} {row['status']}: {row['error'][:80]}"
    fractions = []
    if row["frac_peak"] is not None:
        fractions.append(f"{100 * row['frac_peak']:.0f}% of vendor peak")
    if row["frac_matmul"] is not None:
        fractions.append(f"{100 * row['frac_matmul']:.0f}% of measured matmul")
    return f"{head} {row['ms']:9.3f} ms {row['tflops']:7.1f} TFLOP/s  " + ", ".join(fractions)
