"""`loftup bench --attention`: measure the attention backends on this GPU and write the local table.

For every key of `loftup.kernels.attention_table` on this GPU's architecture (the chosen
precisions, output sizes mapped to size classes, both head-dim classes, forward and training):

1. correctness of each candidate (our Triton kernel, PyTorch's flash / memory-efficient / cuDNN,
   and sdpa = PyTorch's own fused choice) on a reduced shape (2048 queries, the class's keys and
   head dim): forward (and dq, dk, dv when training) against a float64 reference; a candidate
   passes when its error is at most twice PyTorch's own math attention at the same precision
   plus a floor (STYLE.md item 2);
2. the median time of the correct ones at the class's full shape (CUDA events after warm-up);
3. the fastest correct one becomes the key's entry (never Triton for fp32).

The entries are merged into the local table (`attention_table.local_table_path()`), which
`auto` reads over the shipped one from then on, and the whole measurement is written as JSON.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from ..errors import BackendUnavailableError
from ..kernels.attention_table import (
    CANDIDATES,
    CLASS_HEAD_DIMS,
    CLASS_SHAPES,
    HEAD_CLASSES,
    MODES,
    TableEntry,
    arch_of,
    choose_fastest,
    write_local_table,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHECK_QUERIES = 2048
FLOOR = {"fp32": 1e-5, "fp16": 2e-4, "bf16": 2e-3}


def size_class_of(size: int) -> str:
    """The size class of a square output side (224 / 448 / 896; in between to the nearer one)."""
    return min(CLASS_SHAPES, key=lambda c: abs(math.log(size / int(c))))


def candidate_fn(name: str) -> Callable:
    """(q, k, v, scale) -> out for a table candidate; the PyTorch kernels strictly (refusal raises)."""
    if name == "triton_v2":
        from ..kernels.triton_attention_v2 import triton_attention_v2

        return triton_attention_v2
    from ..kernels.triton_bench import attention_method

    return attention_method({"triton": "triton", "flash": "sdpa_flash", "efficient": "sdpa_efficient",
                             "cudnn": "sdpa_cudnn", "sdpa": "loftup_sdpa"}[name])


def _forward_backward(fn, q, k, v, do, grad: bool):
    leaves = [t.detach().clone().requires_grad_(grad) for t in (q, k, v)]
    with torch.set_grad_enabled(grad):
        out = fn(*leaves)
        if not grad:
            return [out.detach()]
        return [out.detach(), *torch.autograd.grad(out, leaves, do)]


def check_candidate(name: str, dtype_name: str, head_class: str, m: int, grad: bool, device) -> dict[str, Any]:
    """Errors of `name` and of PyTorch's math attention (same dtype) against float64, and the verdict."""
    d = CLASS_HEAD_DIMS[head_class]
    dtype = DTYPES[dtype_name]
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, 4, CHECK_QUERIES, d, device=device, generator=gen)
    k, v = (torch.randn(1, 4, m, d, device=device, generator=gen) for _ in range(2))
    do = torch.randn(1, 4, CHECK_QUERIES, d, device=device, generator=gen)
    scale = 1.0 / math.sqrt(d)
    low = [t.to(dtype) for t in (q, k, v, do)]

    def math_attn(a, b, c, s=scale):
        return torch.softmax((a @ b.transpose(-1, -2)) * s, dim=-1) @ c

    ref = _forward_backward(math_attn, *(t.double() for t in low[:3]), low[3].double(), grad)
    base = _forward_backward(math_attn, *low, grad)
    got = _forward_backward(lambda a, b, c: candidate_fn(name)(a, b, c, scale), *low, grad)
    errs = [(g.double() - r).abs().max().item() for g, r in zip(got, ref)]
    base_errs = [(b.double() - r).abs().max().item() for b, r in zip(base, ref)]
    correct = all(e <= 2 * be + FLOOR[dtype_name] for e, be in zip(errs, base_errs))
    return {"max_abs": errs, "torch_max_abs": base_errs, "correct": correct}


def time_candidate(name: str, dtype_name: str, size_class: str, head_class: str, grad: bool, device, budget_ms: float) -> float:
    """Median ms of one call (forward, or forward + backward) at the class's full shape."""
    from ..kernels.triton_bench import Shape, cuda_median_ms, make_step

    n, m = CLASS_SHAPES[size_class]
    step = make_step(candidate_fn(name), Shape(n, m, CLASS_HEAD_DIMS[head_class]), "fwd+bwd" if grad else "fwd",
                     torch.device(device), DTYPES[dtype_name])
    return cuda_median_ms(step, budget_ms=budget_ms)


def measure_attention_table(device, precisions=("bf16", "fp16", "fp32"), size_classes=tuple(CLASS_SHAPES),
                            head_classes=HEAD_CLASSES, modes=MODES, candidates=CANDIDATES, arch: str | None = None,
                            check: Callable = check_candidate, timer: Callable = time_candidate, budget_ms: float = 300.0,
                            write: bool = True, device_name: str = "", log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Measure every key; returns {"entries": {key: TableEntry}, "results": [...], "table_path": ...}."""
    arch = arch or arch_of(torch.device(device))
    source = f"loftup bench --attention on {device_name or arch}, {time.strftime('%Y-%m-%d')}"
    entries: dict[str, TableEntry] = {}
    results = []
    for dt in precisions:
        for hc in head_classes:
            for sc in size_classes:
                for mode in modes:
                    key = f"{arch}/{dt}/{hc}/{sc}/{mode}"
                    grad = mode == "train"
                    per: dict[str, dict] = {}
                    for name in candidates:
                        row: dict[str, Any] = {"ms": None, "correct": False}
                        if name in ("triton", "triton_v2") and dt == "fp32":
                            row["status"] = "skipped: the IEEE-fp32 Triton path is never chosen"
                        else:
                            try:
                                row.update(check(name, dt, hc, CLASS_SHAPES[sc][1], grad, device))
                                row["status"] = "ok" if row["correct"] else "incorrect"
                                if row["correct"]:
                                    row["ms"] = timer(name, dt, sc, hc, grad, device, budget_ms)
                            except (RuntimeError, BackendUnavailableError, ImportError) as exc:  # refused / OOM / no triton
                                row["status"] = f"unsupported: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                                row["correct"] = False
                            finally:
                                if str(device).startswith("cuda"):
                                    torch.cuda.empty_cache()
                        per[name] = row
                    entry = choose_fastest(key, per, source)
                    if entry is not None:
                        entries[key] = entry
                    results.append({"key": key, "chosen": entry.backend if entry else None, "candidates": per})
                    log(f"{key}: {entry.backend if entry else 'nothing ran'} "
                        + " ".join(f"{n}={r['ms']:.3f}ms" for n, r in per.items() if r["ms"] is not None))
    path = write_local_table(entries, device_name=device_name) if write and entries else None
    return {"entries": entries, "results": results, "table_path": str(path) if path else None}


def run_attention_bench(opts, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The `--attention` mode of `loftup bench`: measure on opts.device (CUDA), write the local
    table and a JSON record into opts.out; returns the record."""
    import json

    from ..runtime.devices import resolve_device
    from ..io import atomic_write

    device = resolve_device(opts.device)
    if device.type != "cuda":
        raise BackendUnavailableError("bench --attention measures GPU attention kernels; run it with --device cuda on a machine with an NVIDIA GPU")
    name = torch.cuda.get_device_name(device)
    sizes = sorted({size_class_of(s) for s in opts.sizes}, key=int)
    # the floating-point precisions asked for (int8 is an ONNX Runtime row, not an attention kernel); default: all three
    precisions = tuple(p for p in opts.precisions or DTYPES if p in DTYPES)
    record = measure_attention_table(device, precisions=precisions, size_classes=tuple(sizes),
                                     device_name=name, log=log)
    doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": name, "arch": arch_of(device),
           "torch": torch.__version__, "table_path": record["table_path"], "results": record["results"]}
    out = opts.out
    from pathlib import Path

    out = Path(out)
    path = out if out.suffix.lower() == ".json" else out / f"attention-{''.join(c if c.isalnum() else '-' for c in name)}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1)))
    record["json_path"] = str(path)
    return record
