"""Per-stage time of one upsampler forward, from torch.profiler (`loftup bench --profile`).

The model marks its stages (`loftup.runtime.profiling.STAGES`); inside `stage_markers()` each is a
`record_function` range, and the profiler gives per range its CPU time and the time of the GPU
kernels launched inside it (`device_time_total`, CUDA only). One extra range spans each whole
call, so "other" is whatever no stage covers: residual adds, layout copies between stages,
the engine's input/output conversions. On a GPU the device column is the one that matters (CPU
time there is launch overhead); on a CPU there is only the CPU column. Profiling adds its own
overhead, so the total is not the benchmark's latency - the shares are the point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..runtime.profiling import PREFIX, STAGES, stage_markers

FORWARD = PREFIX + "forward"


def profile_forward(fn: Callable, inputs: tuple, device: str = "cpu", iters: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Profile `iters` calls of fn(*inputs) after `warmup` calls; per-forward stage times in ms."""
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = str(device).startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(max(0, warmup)):
        fn(*inputs)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    iters = max(1, int(iters))
    with stage_markers(), profile(activities=activities) as prof:
        for _ in range(iters):
            with record_function(FORWARD):
                fn(*inputs)
            sync()
    return summarize(prof.events(), iters, cuda)


def summarize(events, iters: int, cuda: bool) -> dict[str, Any]:
    """Stage table from profiler events (CPU-side ranges named loftup::STAGE)."""
    totals: dict[str, dict[str, float]] = {}
    for e in events:
        name = getattr(e, "name", "")
        if not name.startswith(PREFIX) or str(getattr(e, "device_type", "")).split(".")[-1] != "CPU":
            continue  # GPU-side annotation copies of the same ranges would count twice
        t = totals.setdefault(name[len(PREFIX):], {"calls": 0, "cpu_us": 0.0, "device_us": 0.0})
        t["calls"] += 1
        t["cpu_us"] += e.cpu_time_total
        t["device_us"] += e.device_time_total if cuda else 0.0
    whole = totals.pop("forward", {"calls": iters, "cpu_us": 0.0, "device_us": 0.0})
    basis = "device" if cuda else "cpu"
    total_ms = whole[f"{basis}_us"] / 1e3 / iters
    rows = []
    for name in [*STAGES, *sorted(set(totals) - set(STAGES))]:
        if name not in totals:
            continue
        t = totals[name]
        rows.append({"stage": name, "calls_per_forward": t["calls"] / iters, "cpu_ms": t["cpu_us"] / 1e3 / iters,
                     "device_ms": t["device_us"] / 1e3 / iters if cuda else None})
    covered = sum(r[f"{basis}_ms"] for r in rows)
    rows.append({"stage": "other (not in a stage)", "calls_per_forward": 1.0,
                 "cpu_ms": max(0.0, whole["cpu_us"] / 1e3 / iters - sum(r["cpu_ms"] for r in rows)),
                 "device_ms": max(0.0, total_ms - covered) if cuda else None})
    for r in rows:
        r["share"] = (r[f"{basis}_ms"] / total_ms) if total_ms > 0 else None
    return {"basis": basis, "iters": iters, "total_ms": total_ms, "total_cpu_ms": whole["cpu_us"] / 1e3 / iters,
            "stages": rows}


def render_profile(profile: dict[str, Any], title: str):
    """A rich Table of one profile."""
    from rich.table import Table

    table = Table(title=f"{title} - per forward, {profile['basis'].upper()} time {profile['total_ms']:.2f} ms")
    for col in ("stage", "calls", "CPU ms", "GPU ms", "share"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in profile["stages"]:
        table.add_row(r["stage"], f"{r['calls_per_forward']:g}", f"{r['cpu_ms']:.3f}",
                      "-" if r["device_ms"] is None else f"{r['device_ms']:.3f}",
                      "-" if r["share"] is None else f"{100 * r['share']:.1f}%")
    return table
