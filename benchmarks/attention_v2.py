#!/usr/bin/env python3
"""Issue 13 in one GPU call: Triton attention v1 vs v2 vs PyTorch's flash and cuDNN kernels.

    PYTHONPATH=. python3 benchmarks/attention_v2.py                     # on the GPU machine, <= 5 min
    .venv/bin/python benchmarks/attention_v2.py --cpu-smoke --out /tmp/a2   # interpreter, tiny shapes

Everything runs in one process, in priority order, against a deadline (``--budget-s``, default
240 s of measurement time; what does not fit is recorded as skipped). After every section the
whole record is rewritten (atomically) as ``<out>/<device-slug>/attention_v2.json``, and at the
end ``attention_v2.md`` holds the short tables. Sections:

1. ``environment``: GPU, capability, SMs, opt-in shared memory, torch / Triton versions, the
   measured bf16 matmul ceiling.
2. ``correctness``: v1, flash, cuDNN, then v2 (safest first) at a reduced shape (2048 queries)
   per dtype and head dim: output and dq, dk, dv against float64, passing at <= 2x PyTorch's math
   attention in the same dtype plus a floor (STYLE item 2); the Triton backwards run twice and
   are compared bitwise.
3. ``timing``: the issue's shapes (4 heads, batch 1; output 224/448/896 with 256/1024/4096 keys,
   head dim 101, and 448/1024/197), bf16 then fp16, forward and forward+backward, for v1, v2,
   flash and cuDNN: median ms (CUDA events, after warm-up), TFLOP/s on the *true* head dim,
   fraction of the measured matmul ceiling. Heads run zero-padded to a multiple of 8 (104, 200),
   as the model pads them on CUDA: that is what makes TMA and cuDNN usable.
4. ``variants`` (448 / 1024 / 101, bf16), each checked like section 2 and then timed: v2 without
   TMA (``v2_ptr``), with a warp-specialised key loop (``v2_ws``), and with v1's backward kernels
   (``v2_split``).
5. ``sweep``: the few v2 configs worth trying (forward 128x128/w8/s2, 128x128/w8/s3, 128x64/w8/s3;
   backward 128x64/w8/s2, 64x64/w4/s2) at 448 and 896, bf16 - no autotuner (`set_autotune(False)`).
6. ``calibration``: v1 and flash at the *unpadded* 448 / 1024 / 101 bf16 forward, to tie this run
   to the gpu-findings.md figures.
7. ``resources``: every Triton config launched: registers, spills and shared memory from the
   compiled kernels' metadata (``n_regs``, ``n_spills``, ``metadata.shared``) next to our
   estimate (`triton_attention.resource_report`).

``--safe`` (a rerun if the first call crashed the process, e.g. on a TMA or warp-specialisation
miscompile): v2 on its pointer path only, no ``v2_ws``. The first call writes its JSON after
every section, so what ran before a crash comes back.

``--cpu-smoke`` runs the same code under ``TRITON_INTERPRET=1`` at tiny shapes in fp16 (the
interpreter's bf16 loads are wrong), timing with the wall clock; flash and cuDNN are then
"unsupported" rows. tests/kernels/test_attention_v2_bench.py runs it.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import platform
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable


def _interpreter_first(argv: list[str]) -> None:
    """TRITON_INTERPRET must be set before triton is imported."""
    if "--cpu-smoke" in argv:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


if __name__ == "__main__":
    _interpreter_first(sys.argv[1:])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, if PYTHONPATH was not set

import torch  # noqa: E402

HEAD_MULTIPLE = 8
METHODS = ("v1", "flash", "cudnn", "v2")  # the safest first: a crash in v2 loses only what follows
VARIANTS = ("v2_ptr", "v2_ws", "v2_split")
TRITON_METHODS = ("v1", "v2", *VARIANTS)
MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Case:
    """One attention problem of the issue: n queries, m keys, true head dim d (4 heads, batch 1)."""

    n: int
    m: int
    d: int

    @property
    def label(self) -> str:
        side = math.isqrt(self.n)
        return f"{side}^2 q, {self.m} k, d {self.d}" if side * side == self.n else f"{self.n} q, {self.m} k, d {self.d}"

    @property
    def d_run(self) -> int:
        return -(-self.d // HEAD_MULTIPLE) * HEAD_MULTIPLE


# The issue's table and goals (ms, bf16; fp16 has the same goals). "flash": faster than flash.
CASES = (Case(224 * 224, 256, 101), Case(448 * 448, 1024, 101), Case(896 * 896, 4096, 101), Case(448 * 448, 1024, 197))
GOALS = {CASES[0]: {"fwd": 0.20, "fwd+bwd": 1.0}, CASES[1]: {"fwd": 1.2, "fwd+bwd": 6.0},
         CASES[2]: {"fwd": 14.0, "fwd+bwd": 60.0}, CASES[3]: {"fwd": "flash", "fwd+bwd": "flash"}}
ISSUE_MS = {CASES[0]: {"v1": (0.347, 1.40), "flash": (0.282, 4.78)}, CASES[1]: {"v1": (2.28, 10.4), "flash": (1.65, 17.9)},
            CASES[2]: {"v1": (29.6, 144.0), "flash": (21.7, 86.0)}, CASES[3]: {"v1": (3.98, 29.9), "flash": (3.66, 24.4)}}
SMOKE_CASES = (Case(150, 40, 101), Case(70, 33, 197))


@dataclass(frozen=True)
class Plan:
    cases: tuple[Case, ...]
    dtypes: tuple[str, ...]
    check_n: int  # queries of the correctness shape
    fwd_sweep: tuple[str, ...]
    bwd_sweep: tuple[str, ...]
    sweep_cases: tuple[Case, ...]
    variants: tuple[str, ...] = VARIANTS


GPU_PLAN = Plan(CASES, ("bf16", "fp16"), 2048, ("128x128/w8/s2", "128x128/w8/s3", "128x64/w8/s3"),
                ("128x64/w8/s2", "64x64/w4/s2"), (CASES[1], CASES[2]))
# (The interpreter launches every config with 4 warps and 2 stages: the smoke sweep says so.)
SMOKE_PLAN = Plan(SMOKE_CASES, ("fp16",), 64, ("64x64/w4/s2", "32x32/w4/s2"), ("32x32/w4/s2",), (SMOKE_CASES[0],))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ------------------------------------------------------------------------------------------
class Run:
    """The record being built, the deadline, and where it is written."""

    def __init__(self, out: Path, device: torch.device, budget_s: float, log: Callable[[str], None] = print):
        self.device = device
        self.cuda = device.type == "cuda"
        self.deadline = time.monotonic() + budget_s
        self.log = log
        self.dir = Path(out) / _device_slug(str(device))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.doc: dict[str, Any] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_s": budget_s, "sections": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> Path:
        from loftup.io import atomic_write

        path = self.dir / "attention_v2.json"
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(self.doc, indent=1, default=str)))
        return path

    def section(self, name: str, fn: Callable[["Run"], dict]) -> dict:
        data = _gpu_suite().run_section(fn, self, self.left())
        self.doc["sections"][name] = data
        self.save()
        self.log(f"[{name}] {data['status']} in {data['seconds']:.1f} s")
        return data


@functools.lru_cache(maxsize=1)
def _gpu_suite():
    """gpu_suite.py (a sibling script, loaded once): its results-folder rule and section runner."""
    spec = importlib.util.spec_from_file_location("loftup_gpu_suite", Path(__file__).with_name("gpu_suite.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _device_slug(device: str) -> str:
    """The results folder name gpu_suite.py uses for this device (one rule for both scripts)."""
    return _gpu_suite().device_slug(device)


# ------------------------------------------------------------------------------------------
def v2_module():
    from loftup.kernels import triton_attention_v2

    return triton_attention_v2


def method_fn(name: str) -> Callable:
    """(q, k, v, scale) -> out for a method or variant name."""
    from loftup.kernels.triton_attention import triton_attention

    v2 = v2_module()
    options = {"v2_ptr": {"use_tma": False}, "v2_ws": {"warp_specialize": True}}.get(name, {})

    def run_v2(q, k, v, scale):
        previous = v2.set_options(**options)
        try:
            return v2.triton_attention_v2(q, k, v, scale, backward="split" if name == "v2_split" else None)
        finally:
            v2.set_options(**previous)

    if name == "v1":
        return triton_attention
    if name in ("v2", *VARIANTS):
        return run_v2
    from loftup.bench.attention import candidate_fn

    return candidate_fn(name)  # flash / cudnn, strictly (a refusal raises)


_UNSUPPORTED = (RuntimeError, ImportError)


def _padded_inputs(case: Case, n: int, dtype: torch.dtype, device, seed: int = 0, pad: bool = True):
    """q, k, v, do (1, 4, n / m, d_run) in `dtype`, zero beyond the true head dim."""
    gen = torch.Generator().manual_seed(seed)
    d_run = case.d_run if pad else case.d
    out = []
    for rows in (n, case.m, case.m, n):
        t = torch.zeros(1, 4, rows, d_run)
        t[..., : case.d] = torch.randn(1, 4, rows, case.d, generator=gen)
        out.append(t.to(device=device, dtype=dtype))
    return out


def check_method(run: Run, name: str, case: Case, dtype_name: str, n: int) -> dict:
    """Errors of `name` vs float64 next to PyTorch's math attention in the same dtype; verdict;
    for the Triton methods, whether two backward runs are bitwise equal."""
    from loftup.bench.attention import FLOOR, _forward_backward

    q, k, v, do = _padded_inputs(case, n, DTYPES[dtype_name], run.device)
    scale = 1.0 / math.sqrt(case.d)

    def math_attn(a, b, c):
        return torch.softmax((a @ b.transpose(-1, -2)) * scale, dim=-1) @ c

    fn = method_fn(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _forward_backward(lambda a, b, c: fn(a, b, c, scale), q, k, v, do, True)
        again = _forward_backward(lambda a, b, c: fn(a, b, c, scale), q, k, v, do, True) if name in TRITON_METHODS else None
    ref = _forward_backward(math_attn, q.double(), k.double(), v.double(), do.double(), True)
    base = _forward_backward(math_attn, q, k, v, do, True)
    errs = [(g.double() - r).abs().max().item() for g, r in zip(got, ref)]
    base_errs = [(b.double() - r).abs().max().item() for b, r in zip(base, ref)]
    row = {"max_abs": dict(zip(("out", "dq", "dk", "dv"), errs)), "torch_max_abs": dict(zip(("out", "dq", "dk", "dv"), base_errs)),
           "passed": all(e <= 2 * be + FLOOR[dtype_name] for e, be in zip(errs, base_errs)),
           "warnings": sorted({str(w.message)[:300] for w in caught})}
    if again is not None:
        row["backward_bitwise_repeatable"] = all(torch.equal(a, b) for a, b in zip(got, again))
    return row


def section_correctness(run: Run, plan: Plan) -> dict:
    rows = []
    heads = sorted({c.d for c in plan.cases})
    for dt in plan.dtypes:
        for d in heads:
            case = next(c for c in plan.cases if c.d == d)
            rows += [_check_row(run, name, case, dt, plan.check_n) for name in METHODS]
    return {"rows": rows}


def _check_row(run: Run, name: str, case: Case, dt: str, n: int) -> dict:
    row = {"method": name, "dtype": dt, "d": case.d, "d_run": case.d_run, "n": n, "m": case.m}
    if run.left() < 10:
        row.update(status="skipped", reason="time budget")
    else:
        try:
            row.update(status="ok", **check_method(run, name, case, dt, n))
        except _UNSUPPORTED as exc:
            row.update(status="unsupported", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    run.log(f"  check {name:<8} {dt} d={case.d}: {row['status']} {row.get('passed', '')}")
    return row


# ------------------------------------------------------------------------------------------
def time_method(run: Run, name: str, case: Case, dtype_name: str, mode: str, pad: bool = True) -> dict:
    """Median ms of one call (forward, or forward + backward) of `name` at `case`."""
    from loftup.kernels.triton_bench import Shape, attention_flops, make_step

    d = case.d_run if pad else case.d
    row: dict[str, Any] = {"method": name, "case": case.label, "n": case.n, "m": case.m, "d": case.d, "d_run": d,
                           "dtype": dtype_name, "mode": mode, "ms": None}
    step = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step = make_step(method_fn(name), Shape(case.n, case.m, d), mode, run.device, DTYPES[dtype_name])
            ms = _median_ms(run, step)
        flops = attention_flops(Shape(case.n, case.m, case.d), "fwd" if mode == "fwd" else "fwd+bwd")
        row.update(status="ok", ms=ms, tflops=flops / (ms * 1e-3) / 1e12,
                   warnings=sorted({str(w.message)[:300] for w in caught}), unlaunchable=_unlaunchable(case, d, dtype_name))
        peak = run.doc.get("matmul_tflops", {}).get(dtype_name)
        if peak:
            row["frac_matmul"] = row["tflops"] / peak
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="oom", error=str(exc).splitlines()[0][:200])
    except _UNSUPPORTED as exc:
        row.update(status="unsupported", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    finally:
        step = None
        if run.cuda:
            torch.cuda.empty_cache()
    return row


def _unlaunchable(case: Case, d: int, dtype_name: str) -> list[str]:
    """Triton kernels that found no launchable config at this (dtype, M, head dim) so far in this
    process: a Triton row listing its own kernels here timed a fallback (sdpa, or v2's pointer
    path for a TMA kernel), not the kernel."""
    from loftup.kernels import triton_attention as v1

    dtype = str(DTYPES[dtype_name]).removeprefix("torch.")
    return sorted({k[0] for k in v1._UNLAUNCHABLE if k[2] == dtype and k[4] == case.m and k[5] == d})


def _median_ms(run: Run, step: Callable) -> float:
    if run.cuda:
        from loftup.kernels.triton_bench import cuda_median_ms

        return cuda_median_ms(step, warmup=2, budget_ms=150.0, max_reps=20)
    start = time.perf_counter()  # the interpreter: one run, wall clock (meaningless as speed)
    step()
    return (time.perf_counter() - start) * 1e3


def _timed_rows(run: Run, jobs: list[tuple], reserve_s: float = 5.0) -> list[dict]:
    rows = []
    for name, case, dt, mode in jobs:
        if run.left() < reserve_s:
            rows.append({"method": name, "case": case.label, "dtype": dt, "mode": mode, "status": "skipped",
                         "reason": "time budget"})
            continue
        row = time_method(run, name, case, dt, mode)
        rows.append(row)
        run.log(f"  {name:<8} {case.label:<24} {dt} {mode:<8} " + (f"{row['ms']:.3f} ms" if row["ms"] else row["status"]))
    return rows


def section_timing(run: Run, plan: Plan) -> dict:
    jobs = [(name, case, dt, mode) for dt in plan.dtypes for case in plan.cases for mode in MODES for name in METHODS]
    return {"rows": _timed_rows(run, jobs)}


def section_variants(run: Run, plan: Plan) -> dict:
    """v2's variants at one shape: checked first (the warp-specialised one is the least certain
    to compile correctly), then timed."""
    case, dt = plan.cases[1] if len(plan.cases) > 1 else plan.cases[0], plan.dtypes[0]
    checks = [_check_row(run, name, case, dt, plan.check_n) for name in plan.variants]
    jobs = [(name, case, dt, mode) for mode in MODES for name in plan.variants]
    return {"checks": checks, "rows": _timed_rows(run, jobs)}


@contextmanager
def only_config(kernels: tuple[str, ...], label: str):
    """Launch `kernels` with one config (the benchmark's restricted tuning), restoring the
    launcher's state afterwards (so a config that failed here does not stick)."""
    from loftup.kernels import triton_attention as v1

    cfg = v1.KernelConfig.parse(label)
    saved = {k: v1.TUNING_SPACE[k] for k in kernels}
    working, unlaunchable, interp = dict(v1._WORKING), set(v1._UNLAUNCHABLE), dict(v1._INTERPRETER_CONFIG)
    for k in kernels:
        v1.TUNING_SPACE[k] = (cfg,)
    for key in [key for key in v1._WORKING if key[0] in kernels]:
        del v1._WORKING[key]
    v1._INTERPRETER_CONFIG.update(cfg.meta())
    try:
        yield cfg
    finally:
        v1.TUNING_SPACE.update(saved)
        v1._WORKING.clear()
        v1._WORKING.update(working)
        v1._UNLAUNCHABLE.clear()
        v1._UNLAUNCHABLE.update(unlaunchable)
        v1._INTERPRETER_CONFIG.clear()
        v1._INTERPRETER_CONFIG.update(interp)


def _launched_with(kernels: tuple[str, ...], label: str) -> bool:
    from loftup.kernels import triton_attention as v1

    return any(key[0] in kernels and cfg.label == label for key, cfg in v1._WORKING.items())


def section_sweep(run: Run, plan: Plan) -> dict:
    v2 = v2_module()
    rows = []
    dt = plan.dtypes[0]
    for kernels, labels, mode in ((v2.FWD_KERNELS, plan.fwd_sweep, "fwd"), (("v2_bwd",), plan.bwd_sweep, "fwd+bwd")):
        for case in plan.sweep_cases:
            for label in labels:
                if run.left() < 8:
                    rows.append({"kernel": kernels[0], "config": label, "case": case.label, "status": "skipped",
                                 "reason": "time budget"})
                    continue
                with only_config(kernels, label):
                    row = time_method(run, "v2", case, dt, mode)
                    launched = _launched_with(kernels, label)
                row.update(kernel=kernels[0], config=label, launched=launched)
                if not launched and row["status"] == "ok":
                    row["status"] = "did not launch (fell back)"
                rows.append(row)
                run.log(f"  sweep {kernels[0]} {label:<14} {case.label}: {row.get('ms')}")
    return {"rows": rows}


def section_calibration(run: Run, plan: Plan) -> dict:
    case = plan.cases[1] if len(plan.cases) > 1 else plan.cases[0]
    rows = []
    for name in ("v1", "flash"):
        if run.left() < 5:
            break
        rows.append(time_method(run, name, case, plan.dtypes[0], "fwd", pad=False))
    issue = ISSUE_MS.get(case, {})
    return {"rows": rows, "gpu_findings_ms": {k: v[0] for k, v in issue.items()}}


def section_resources(run: Run, plan: Plan) -> dict:
    from loftup.kernels import triton_attention as v1

    return {"launched": v1.resource_report(),
            "failed_keys": ["|".join(map(str, k)) for k in sorted(v1._UNLAUNCHABLE, key=str)]}


def section_environment(run: Run, plan: Plan) -> dict:
    import triton

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "triton": triton.__version__, "device": str(run.device),
                           "interpreter": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")}
    if run.cuda:
        from loftup.kernels.triton_bench import measure_matmul_peak

        props = torch.cuda.get_device_properties(run.device)
        env.update(name=props.name, capability=list(torch.cuda.get_device_capability(run.device)),
                   sms=props.multi_processor_count,
                   smem_optin=getattr(props, "shared_memory_per_block_optin", None))
        peaks = {dt: measure_matmul_peak(run.device, DTYPES[dt], size=8192) for dt in plan.dtypes}
        run.doc["matmul_tflops"] = peaks
        env["matmul_tflops"] = peaks
    return env


SECTIONS = {"environment": section_environment, "correctness": section_correctness, "timing": section_timing,
            "variants": section_variants, "sweep": section_sweep, "calibration": section_calibration,
            "resources": section_resources}


# ------------------------------------------------------------------------------------------
def _fmt(ms) -> str:
    return "-" if ms is None else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def markdown(doc: dict, plan: Plan) -> str:
    """The issue's table filled in (ms; v2's TFLOP/s on the true head dim), goals, and occupancy."""
    timing = doc["sections"].get("timing", {}).get("rows", [])
    ms = {(r["method"], r["case"], r["dtype"], r["mode"]): r for r in timing if r.get("status") == "ok"}
    interpreted = doc["sections"].get("environment", {}).get("interpreter", False)
    clock = "one wall-clock run under the Triton interpreter (not a speed)" if interpreted else \
        "median of CUDA-event-timed runs after warm-up"
    lines = [f"# Attention v1 / v2 / flash / cuDNN on {doc.get('device_name', doc.get('device', '?'))}", "",
             f"ms; heads zero-padded to a multiple of 8 (as the model runs them on CUDA); TFLOP/s on the true head "
             f"dim; 4 heads, batch 1; {clock}. `*`: a Triton kernel of that row did not launch (a fallback ran).", ""]
    methods = METHODS
    head = "| shape | dtype | " + " | ".join(f"{m} fwd" for m in methods) + " | " + " | ".join(f"{m} f+b" for m in methods)
    lines += [head + " | v2 fwd TFLOP/s | goal (fwd / f+b) | met |", "|" + "---|" * (4 + 2 * len(methods)) + "---|"]
    for dt in plan.dtypes:
        for case in plan.cases:
            cells = [_cell(ms.get((m, case.label, dt, mode), {})) for mode in MODES for m in methods]
            v2f = ms.get(("v2", case.label, dt, "fwd"), {})
            goal = GOALS.get(case, {})
            lines.append(f"| {case.label} | {dt} | " + " | ".join(cells)
                         + f" | {v2f.get('tflops', 0):.0f} | {goal.get('fwd', '-')} / {goal.get('fwd+bwd', '-')} | "
                         + _goal_verdict(ms, case, dt, goal) + " |")
    lines += _correctness_lines(doc) + _extra_lines(doc)
    res = doc["sections"].get("resources", {}).get("launched", [])
    if res:
        lines += ["", "| kernel | key | config | registers | spills | shared memory (B) | our estimate (B) |",
                  "|---|---|---|---|---|---|---|"]
        for r in res:
            lines.append(f"| {r['kernel']} | {r['key'].replace('|', ' ')} | {r['config']} | {r.get('triton_regs')} | {r.get('triton_spills')} "
                         f"| {r.get('triton_smem_bytes')} | {r['estimate_smem_bytes']} |")
    return "\n".join(lines) + "\n"


def _cell(row: dict) -> str:
    own = {"v1": ("fwd", "dq", "dkdv")}.get(row.get("method"), ("v2_fwd", "v2_fwd_ws", "v2_bwd", "dq", "dkdv"))
    fell_back = row.get("method") in TRITON_METHODS and set(row.get("unlaunchable", [])) & set(own)
    return _fmt(row.get("ms")) + ("*" if fell_back else "")


def _correctness_lines(doc: dict) -> list[str]:
    rows = doc["sections"].get("correctness", {}).get("rows", []) + doc["sections"].get("variants", {}).get("checks", [])
    if not rows:
        return []
    lines = ["", "Correctness (max abs error vs float64: ours / PyTorch math in the same dtype; pass = <= 2x + floor):", "",
             "| method | dtype | d | out | dq | dk | dv | pass | backward bitwise |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['method']} | {r['dtype']} | {r['d']} | {r.get('status')} | | | | | |")
            continue
        errs = " | ".join(f"{r['max_abs'][k]:.1e} / {r['torch_max_abs'][k]:.1e}" for k in ("out", "dq", "dk", "dv"))
        lines.append(f"| {r['method']} | {r['dtype']} | {r['d']} | {errs} | {r['passed']} | "
                     f"{r.get('backward_bitwise_repeatable', '-')} |")
    return lines


def _extra_lines(doc: dict) -> list[str]:
    lines = []
    for name in ("variants", "sweep", "calibration"):
        rows = doc["sections"].get(name, {}).get("rows", [])
        if rows:
            lines += ["", f"{name}:", ""]
            for r in rows:
                what = " ".join(str(r[k]) for k in ("method", "kernel", "config", "case", "dtype", "mode") if r.get(k))
                lines.append(f"- {what}: " + (_cell(r) + " ms" if r.get("ms") else str(r.get("status"))))
    return lines


def _goal_verdict(ms: dict, case: Case, dt: str, goal: dict) -> str:
    verdicts = []
    for mode in MODES:
        v2 = ms.get(("v2", case.label, dt, mode), {}).get("ms")
        target = goal.get(mode)
        if v2 is None or target is None:
            verdicts.append("?")
            continue
        if target == "flash":
            flash = ms.get(("flash", case.label, dt, mode), {}).get("ms")
            verdicts.append("?" if flash is None else "yes" if v2 < flash else "no")
        else:
            verdicts.append("yes" if v2 <= target else "no")
    return " / ".join(verdicts)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="results folder; a sub-folder named after the device is written inside")
    parser.add_argument("--cpu-smoke", action="store_true", help="interpreter, tiny shapes, fp16 (tests the script)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="seconds of measurement before items are skipped")
    parser.add_argument("--safe", action="store_true",
                        help="v2 without TMA descriptors and without the warp-specialised variant (a rerun after a crash)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ", ".join(SECTIONS))
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --cpu-smoke for the interpreter run")
    chosen = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    from loftup.kernels import triton_attention as v1

    v1.set_autotune(False)  # restricted tuning: per-arch defaults, plus the sweep's few configs
    plan = SMOKE_PLAN if args.cpu_smoke else GPU_PLAN
    if args.safe:
        plan = replace(plan, variants=tuple(v for v in plan.variants if v != "v2_ws"))
    previous = v2_module().set_options(use_tma=False) if args.safe else {}
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    run = Run(args.out, device, args.budget_s)
    run.doc.update(device=run.dir.name, safe=args.safe, plan={k: [asdict(c) if isinstance(c, Case) else c for c in v]
                                              for k, v in asdict(plan).items() if isinstance(v, (tuple, list))})
    if run.cuda:
        run.doc["device_name"] = torch.cuda.get_device_name(device)
    run.log(f"attention_v2 benchmark on {run.dir.name}, writing to {run.dir}, budget {args.budget_s:.0f} s")
    threads = torch.get_num_threads()
    if not run.cuda:
        torch.set_num_threads(1)
    try:
        for name, fn in SECTIONS.items():
            if name in chosen:
                run.section(name, lambda r, fn=fn: fn(r, plan))
    finally:
        torch.set_num_threads(threads)
        v2_module().set_options(**previous)
        from loftup.io import atomic_write

        md = run.dir / "attention_v2.md"
        atomic_write(md, lambda tmp: tmp.write_text(markdown(run.doc, plan)))
    return {"json": run.save(), "markdown": md}


if __name__ == "__main__":
    main()
