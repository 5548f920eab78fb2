#!/usr/bin/env python3
"""The GPU suite of issue 12: everything we want to know from one short call on a lent GPU.

    PYTHONPATH=. python3 benchmarks/gpu_suite.py --out benchmarks/results      # on the GPU machine
    .venv/bin/python benchmarks/gpu_suite.py --device cpu --out /tmp/suite     # CPU: interpreter, tiny shapes

Runs from the checkout with no install (torch, triton, rich, safetensors; no imgviz, yaml or
onnx needed). Sections, in priority order; each writes ``<out>/<device-slug>/<section>.json``
(atomically) as soon as it finishes, so a run cut short still leaves what it measured:

1. ``environment``: GPU, capability, SMs, shared memory, versions, bf16/fp32 matmul peaks.
2. ``correctness``: our Triton kernel (true head dims 101/133/197) and PyTorch's flash /
   memory-efficient / cuDNN / sdpa (heads zero-padded to a multiple of 8, as the model pads)
   against a float64 reference, fp16/bf16 then fp32, forward and dq/dk/dv; verdict: error at
   most 2x PyTorch's math attention at the same precision plus a floor; Triton backward run
   twice and compared bitwise.
3. ``e2e``: upsampler latency (CUDA events, median) and peak memory at 224/448/896, fp32 and
   bf16, C=384 random weights, batch 1: "before" (what gpu-findings.md measured: our Triton
   kernel in bf16 / query-chunked sdpa in fp32, unpadded heads, NCHW convs), "after" (auto
   attention from the table, padded heads, channels-last bf16 convs), "after + CUDA graphs",
   and "after + compiled stages" at 448 bf16; each output compared with the fp32 sdpa reference
   (the export parity tolerances).
4. ``throughput``: batch 32 at 224 and batch 8 at 448, bf16, before / after / after + graphs.
5. ``profile``: the per-stage table (`loftup bench --profile`'s) at 448 bf16, before and after.
6. ``train``: 20 steps of the stage-1 objective without masks (bf16 autocast, AdamW, batch 8
   at 224): step time, loss first/last, finite gradients.
7. ``attention_table``: `loftup bench --attention`'s measurement for this GPU (bf16 all keys,
   fp16 and fp32 with d<=128), not written to the user table: the candidate shipped table.
8. ``correctness_fp32``: the fp32 Triton kernel (slow to compile) at d 101 and 197 - the
   latter failed to launch on the H200 before; now it must fall back, never crash.
9. ``triton_resources``: every Triton config launched: our shared-memory estimate next to what
   Triton reports (bytes, registers, spills).

Autotuning is restricted to the per-architecture defaults (`set_autotune(False)`). A global
deadline (``--budget-s``, default 300 s of section time) skips what would not fit, saying so.
On CPU (``--device cpu``) the same code runs at tiny shapes under TRITON_INTERPRET=1 (set
here, before triton is imported); CUDA-only items are recorded as skipped. The CPU mode runs
in the normal test suite (tests/test_gpu_suite.py), so this script cannot rot unnoticed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable


def _interpreter_first(argv: list[str]) -> None:
    """TRITON_INTERPRET must be set before triton is imported, i.e. before torch code runs."""
    if "--device" in argv and argv[argv.index("--device") + 1 :][:1] == ["cpu"]:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


if __name__ == "__main__":
    _interpreter_first(sys.argv[1:])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, if PYTHONPATH was not set

import torch  # noqa: E402

FEAT_DIM = 384  # DINOv2-S: token width 404, 4 heads of 101
PATCH = 14


# ------------------------------------------------------------------------------------------
class Suite:
    """Runs sections against a deadline and writes each one's JSON when it ends."""

    def __init__(self, out: Path, device: str, budget_s: float, log: Callable[[str], None] = print):
        self.device = device
        self.cuda = device.startswith("cuda")
        self.tiny = not self.cuda
        self.deadline = time.monotonic() + budget_s
        self.log = log
        self.slug = device_slug(device)
        self.dir = Path(out) / self.slug
        self.dir.mkdir(parents=True, exist_ok=True)
        self.written: dict[str, Path] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, seconds: float) -> bool:
        return self.left() >= seconds

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, name: str, fn: Callable[["Suite"], dict]) -> dict:
        from loftup.io import atomic_write

        data = run_section(fn, self, self.left())
        data["device"] = self.slug
        path = self.dir / f"{name}.json"
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str)))
        self.written[name] = path
        self.log(f"[{name}] {data['status']} in {data['seconds']:.1f} s -> {path}")
        return data


def run_section(fn: Callable[[Any], dict], owner: Any, left_s: float) -> dict:
    """fn(owner) as one section of a deadline-guarded run: {"status": "ok", **its result}, or
    "skipped" when no time is left, or "error" with the traceback (a section that breaks must not
    lose the others); "seconds" in every case. Also used by attention_v2.py."""
    start = time.monotonic()
    if left_s <= 0:
        data = {"status": "skipped", "reason": "time budget used up"}
    else:
        try:
            data = {"status": "ok", **fn(owner)}
        except Exception as exc:
            data = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                    "traceback": traceback.format_exc()[-4000:]}
    data["seconds"] = round(time.monotonic() - start, 2)
    return data


def device_slug(device: str) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = "cpu-" + (platform.machine() or "unknown")
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def median_ms(suite: Suite, fn: Callable[[], Any], warmup: int = 2, budget_s: float = 0.6, min_reps: int = 3,
              max_reps: int = 20) -> dict:
    """Median wall time of fn (CUDA events on a GPU), after warm-up; repeats sized to a budget."""
    for _ in range(warmup):
        fn()
    suite.sync()
    times = []
    start = time.monotonic()
    while len(times) < max_reps and (len(times) < min_reps or time.monotonic() - start < budget_s):
        if suite.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "reps": len(times)}


# ------------------------------------------------------------------------------------------
# 1. environment
def section_environment(suite: Suite) -> dict:
    import loftup

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "loftup": loftup.__version__,
                           "cuda_runtime": torch.version.cuda, "hostname": platform.node()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET")
    if suite.cuda:
        dev = torch.device(suite.device)
        props = torch.cuda.get_device_properties(dev)
        env.update(gpu=torch.cuda.get_device_name(dev), capability=list(torch.cuda.get_device_capability(dev)),
                   sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                   smem_optin_bytes=getattr(props, "shared_memory_per_block_optin", None))
        peaks = {}
        for name, dtype, n in (("bf16", torch.bfloat16, 8192), ("fp32", torch.float32, 4096)):
            a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
            ms = median_ms(suite, lambda: a @ b, warmup=2, budget_s=0.3)["median_ms"]
            peaks[f"{name}_matmul_tflops"] = round(2 * n**3 / ms / 1e9, 1)
        env["peaks"] = peaks
        env["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    else:
        env["cpu_threads"] = torch.get_num_threads()
        env["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return env


# ------------------------------------------------------------------------------------------
# 2. / 8. correctness against float64
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FLOOR = {"fp32": 1e-5, "fp16": 2e-4, "bf16": 2e-3}
NAMES = ("out", "dq", "dk", "dv")


def _math_attention(q, k, v, scale):
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v


def _fwd_bwd(fn, q, k, v, do):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, do)]


def _padded(fn, d: int):
    """fn on q/k/v zero-padded to a multiple of 8 channels (what the model feeds fused kernels)."""
    pad = -d % 8

    def run(q, k, v, scale):
        if not pad:
            return fn(q, k, v, scale)
        p = [torch.nn.functional.pad(t, (0, pad)) for t in (q, k, v)]
        return fn(*p, scale)[..., :d]

    return run


def check_backend(suite: Suite, name: str, fn, dtype_name: str, d: int, shape: tuple[int, int, int, int]) -> dict:
    """Errors of fn and of torch math attention (same dtype) against float64, fwd + bwd."""
    B, H, N, M = shape
    dev = torch.device(suite.device)
    gen = torch.Generator(device=dev).manual_seed(d)
    q = torch.randn(B, H, N, d, device=dev, generator=gen)
    k, v = (torch.randn(B, H, M, d, device=dev, generator=gen) for _ in range(2))
    do = torch.randn(B, H, N, d, device=dev, generator=gen)
    scale = 1.0 / math.sqrt(d)
    low = [t.to(DTYPES[dtype_name]) for t in (q, k, v, do)]
    ref = _fwd_bwd(lambda a, b, c: _math_attention(a, b, c, scale), *(t.double() for t in low[:3]), low[3].double())
    base = _fwd_bwd(lambda a, b, c: _math_attention(a, b, c, scale), *low)
    got = _fwd_bwd(lambda a, b, c: fn(a, b, c, scale), *low)
    row: dict[str, Any] = {"backend": name, "dtype": dtype_name, "d": d, "shape": list(shape)}
    row["max_abs"] = {n: (g.double() - r).abs().max().item() for n, g, r in zip(NAMES, got, ref)}
    row["torch_max_abs"] = {n: (b.double() - r).abs().max().item() for n, b, r in zip(NAMES, base, ref)}
    row["passed"] = all(row["max_abs"][n] <= 2 * row["torch_max_abs"][n] + FLOOR[dtype_name] for n in NAMES)
    if name == "triton":
        again = _fwd_bwd(lambda a, b, c: fn(a, b, c, scale), *low)
        row["backward_bitwise_repeatable"] = all(torch.equal(a, b) for a, b in zip(got[1:], again[1:]))
    return row


def _correctness(suite: Suite, dtypes: tuple[str, ...], dims: tuple[int, ...], backends: tuple[str, ...]) -> dict:
    import warnings

    from loftup.bench.attention import candidate_fn

    shape = (2, 4, 2745, 713) if suite.cuda else (1, 2, 150, 40)
    rows, skipped = [], []
    for dt in dtypes:
        for d in dims:
            for name in backends:
                if not suite.cuda and name != "triton" and name != "sdpa":
                    skipped.append({"backend": name, "dtype": dt, "d": d, "reason": "PyTorch's fused kernels need CUDA"})
                    continue
                if not suite.cuda and dt == "bf16":
                    skipped.append({"backend": name, "dtype": dt, "d": d, "reason": "the Triton interpreter's bf16 loads are wrong"})
                    continue
                need = 60.0 if (name == "triton" and dt == "fp32" and suite.cuda) else 5.0
                if not suite.fits(need):
                    skipped.append({"backend": name, "dtype": dt, "d": d, "reason": "time budget"})
                    continue
                fn = candidate_fn(name) if name == "triton" else _padded(candidate_fn(name), d)
                t0 = time.monotonic()
                try:
                    with warnings.catch_warnings(record=True) as record:
                        warnings.simplefilter("always")
                        row = check_backend(suite, name, fn, dt, d, shape)
                    row["warnings"] = sorted({str(w.message)[:300] for w in record})
                except Exception as exc:  # a refusal (e.g. flash in fp32) is a result
                    row = {"backend": name, "dtype": dt, "d": d, "passed": None,
                           "unsupported": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
                row["seconds"] = round(time.monotonic() - t0, 2)
                rows.append(row)
                suite.log(f"  {name:9s} {dt} d={d}: " + ("passed" if row.get("passed") else
                          ("unsupported" if row.get("passed") is None else "FAILED")) + f" ({row['seconds']} s)")
                if suite.cuda:
                    torch.cuda.empty_cache()
    return {"shape_B_H_N_M": list(shape), "rule": "max abs error <= 2 x torch math attention (same dtype) + floor, vs float64",
            "floors": FLOOR, "rows": rows, "skipped": skipped}


def section_correctness(suite: Suite) -> dict:
    return _correctness(suite, ("bf16", "fp16") if suite.cuda else ("fp16",), (101, 133, 197),
                        ("triton", "flash", "efficient", "cudnn", "sdpa"))


def section_correctness_fp32(suite: Suite) -> dict:
    return _correctness(suite, ("fp32",), (101, 197), ("triton", "efficient", "sdpa"))


# ------------------------------------------------------------------------------------------
# 3.-6. the upsampler
class _ChunkedUnpadded:
    """The attention gpu-findings.md measured for sdpa: query-chunked, heads not padded."""

    def head_pad(self, device, head_dim):
        return 0

    def __call__(self, q, k, v, scale=None):
        from loftup.kernels import chunked_sdpa_attention

        return chunked_sdpa_attention(q, k, v, scale)


def make_model(suite: Suite):
    from loftup.model import LoftUp, LoftUpConfig

    torch.manual_seed(0)
    return LoftUp(LoftUpConfig(feat_dim=FEAT_DIM if suite.cuda else 32)).eval()


def make_engine(suite: Suite, model, variant: str, precision: str):
    """before / after / after+graphs / after+compile as a TorchEngine."""
    from loftup.export.engine import TorchEngine, with_attention_backend
    from loftup.kernels import AttentionDispatcher

    if variant == "before":
        if precision == "fp32" or not suite.cuda:
            m = with_attention_backend(model, "sdpa")
            for module in m.modules():
                if hasattr(module, "dispatcher"):
                    module.dispatcher = _ChunkedUnpadded()
        else:
            m = with_attention_backend(model, "triton")
            dispatcher = AttentionDispatcher("triton", head_multiple=1)
            for module in m.modules():
                if hasattr(module, "dispatcher"):
                    module.dispatcher = dispatcher
        return TorchEngine(m, precision=precision, device=suite.device, channels_last=False)
    m = with_attention_backend(model, "auto")
    compile_stages = (True if suite.cuda else "eager") if variant == "after+compile" else False  # CPU: wiring only
    return TorchEngine(m, precision=precision, device=suite.device, cuda_graphs=variant == "after+graphs",
                       compile_stages=compile_stages)


def make_inputs(suite: Suite, batch: int, size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    C = FEAT_DIM if suite.cuda else 32
    lr = torch.randn(batch, C, size // PATCH, size // PATCH, generator=gen)
    image = torch.randn(batch, 3, size, size, generator=gen)
    return lr.to(suite.device), image.to(suite.device)


def time_engine(suite: Suite, engine, inputs, budget_s: float) -> dict:
    if suite.cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    out = engine(*inputs)
    result = median_ms(suite, lambda: engine(*inputs), warmup=2, budget_s=budget_s)
    if suite.cuda:
        result["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["peak_above_inputs_gb"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 3)
    return result, out


def _upsampler_rows(suite: Suite, cases, variants, reference_at: dict | None, item_s: float) -> list[dict]:
    from loftup.export.parity import TOLERANCES, compare

    model = make_model(suite)
    rows = []
    for batch, size, precision in cases:
        inputs = make_inputs(suite, batch, size)
        ref = reference_at.get((batch, size)) if reference_at is not None else None
        for variant in variants:
            row = {"batch": batch, "size": size, "precision": precision, "variant": variant}
            if variant == "after+graphs" and not suite.cuda:
                rows.append({**row, "status": "skipped", "reason": "CUDA graphs need CUDA"})
                continue
            if not suite.fits(item_s):
                rows.append({**row, "status": "skipped", "reason": "time budget"})
                continue
            try:
                engine = make_engine(suite, model, variant, precision)
                timing, out = time_engine(suite, engine, inputs, budget_s=0.5 if suite.cuda else 0.05)
                row.update(status="ok", **timing, images_per_s=batch * 1e3 / timing["median_ms"])
                if ref is not None:
                    err = compare(out, ref)
                    row["parity_vs_fp32_sdpa"] = {**err, "passed": TOLERANCES[precision].passes(err)}
                if variant != "before":
                    row["attention"] = _resolved(engine)
            except Exception as exc:
                row.update(status="failed", error=f"{type(exc).__name__}: {str(exc)[:500]}")
            finally:
                engine = out = None
                if suite.cuda:
                    torch.cuda.empty_cache()
            rows.append(row)
            suite.log(f"  {variant:14s} {precision} b{batch} {size}: " +
                      (f"{row['median_ms']:.2f} ms" if row.get("status") == "ok" else row.get("reason", row.get("error", ""))[:120]))
    return rows


def _resolved(engine) -> list[str]:
    """The concrete attention backends the engine's dispatcher resolved (auto's choices)."""
    for module in engine.model.modules():
        dispatcher = getattr(module, "dispatcher", None)
        if dispatcher is not None and hasattr(dispatcher, "_resolved"):
            return sorted(f"{k[-1]} -> {v}" for k, v in dispatcher._resolved.items())
    return []


def _references(suite: Suite, cases) -> dict:
    from loftup.export.engine import reference_engine

    model = make_model(suite)
    engine = reference_engine(model, device=suite.device)
    refs = {}
    for batch, size in cases:
        if suite.fits(10.0):
            refs[(batch, size)] = engine(*make_inputs(suite, batch, size)).cpu()
    return refs


def section_e2e(suite: Suite) -> dict:
    sizes = (224, 448, 896) if suite.cuda else (28,)
    refs = _references(suite, [(1, s) for s in sizes])
    variants = ("before", "after", "after+graphs")
    cases = [(1, s, p) for s in sizes for p in ("bf16", "fp32")]
    rows = _upsampler_rows(suite, cases, variants, refs, item_s=20.0 if suite.cuda else 1.0)
    compiled_case = [(1, 448 if suite.cuda else 28, "bf16")]
    rows += _upsampler_rows(suite, compiled_case, ("after+compile",), refs, item_s=90.0 if suite.cuda else 1.0)
    return {"model": {"feat_dim": FEAT_DIM if suite.cuda else 32, "weights": "random (latency does not depend on them)"},
            "findings_before_ms": {"224": 5.6, "448": 21.5, "896": 132, "note": "H200 bf16 triton, gpu-findings.md"},
            "rows": rows}


def section_throughput(suite: Suite) -> dict:
    cases = [(32, 224, "bf16"), (8, 448, "bf16")] if suite.cuda else [(2, 28, "bf16")]
    return {"rows": _upsampler_rows(suite, cases, ("before", "after", "after+graphs"), None, item_s=20.0 if suite.cuda else 1.0)}


def section_profile(suite: Suite) -> dict:
    from loftup.bench.profile import profile_forward

    size, precision = (448, "bf16") if suite.cuda else (28, "fp32")
    model = make_model(suite)
    inputs = make_inputs(suite, 1, size)
    out = {"size": size, "precision": precision}
    for variant in ("before", "after"):
        if not suite.fits(15.0 if suite.cuda else 1.0):
            out[variant] = {"status": "skipped", "reason": "time budget"}
            continue
        engine = make_engine(suite, model, variant, precision)
        out[variant] = profile_forward(engine.run_eager, inputs, suite.device, iters=5 if suite.cuda else 2, warmup=2)
    return out


def section_train(suite: Suite) -> dict:
    import torch.nn.functional as F

    from loftup.runtime.devices import autocast
    from loftup.train.stage1 import mask_bicubic_target

    batch, size, steps = (8, 224, 20) if suite.cuda else (1, 28, 2)
    model = make_model(suite).to(suite.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lr, image = make_inputs(suite, batch, size, seed=3)
    losses, times, finite = [], [], True
    for _ in range(steps):
        if not suite.fits(5.0 if suite.cuda else 0.5):
            break
        suite.sync()
        t = time.perf_counter()
        target = mask_bicubic_target(model.channelnorm(lr).detach(), None, (size, size))
        with autocast(suite.device, "bf16"):
            pred = model(lr, image)
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        suite.sync()
        times.append((time.perf_counter() - t) * 1e3)
        losses.append(loss.item())
        if not finite:
            break
    steady = times[len(times) // 2:] or times
    return {"batch": batch, "size": size, "precision": "bf16", "objective": "stage 1 without masks (bicubic target)",
            "steps": len(losses), "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "grads_finite": bool(losses) and finite, "step_ms_median_second_half": statistics.median(steady) if steady else None,
            "images_per_s": batch * 1e3 / statistics.median(steady) if steady else None,
            "attention": _resolved(type("E", (), {"model": model})())}


def section_attention_table(suite: Suite) -> dict:
    if not suite.cuda:
        return {"status": "skipped", "reason": "measures CUDA kernels (tests/bench covers the loop on CPU)"}
    from loftup.bench.attention import measure_attention_table

    plan = [("bf16", ("d128", "d256")), ("fp16", ("d128",)), ("fp32", ("d128",))]
    results, entries = [], {}
    for dt, heads in plan:
        for hc in heads:
            if not suite.fits(25.0):
                results.append({"dtype": dt, "head_class": hc, "status": "skipped", "reason": "time budget"})
                continue
            rec = measure_attention_table(suite.device, precisions=(dt,), head_classes=(hc,), budget_ms=100.0,
                                          write=False, device_name=torch.cuda.get_device_name(), log=suite.log)
            results += rec["results"]
            entries.update({k: vars(e) for k, e in rec["entries"].items()})
    return {"entries": entries, "results": results}


def section_triton_resources(suite: Suite) -> dict:
    from loftup.kernels import triton_attention as ta

    return {"autotune": ta.autotune_enabled(), "launched": ta.resource_report(),
            "failed_keys": ["|".join(map(str, k)) for k in sorted(ta._UNLAUNCHABLE, key=str)],
            "working": {"|".join(map(str, k)): c.label for k, c in ta._WORKING.items()}}


SECTIONS: dict[str, Callable[[Suite], dict]] = {
    "environment": section_environment,
    "correctness": section_correctness,
    "e2e": section_e2e,
    "throughput": section_throughput,
    "profile": section_profile,
    "train": section_train,
    "attention_table": section_attention_table,
    "correctness_fp32": section_correctness_fp32,
    "triton_resources": section_triton_resources,
}


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="results folder; a sub-folder named after the device is written inside")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (interpreter, tiny shapes)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="seconds of section time before items are skipped")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ", ".join(SECTIONS))
    args = parser.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu for the interpreter run")
    chosen = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    from loftup.kernels import triton_attention as ta

    ta.set_autotune(False)  # per-architecture defaults only: the first call compiles what it runs
    suite = Suite(args.out, device, args.budget_s)
    suite.log(f"gpu suite on {suite.slug}, writing to {suite.dir}, budget {args.budget_s:.0f} s")
    threads = torch.get_num_threads()
    if not suite.cuda:
        torch.set_num_threads(1)  # tiny shapes: one thread is faster and steadier on a shared machine
    try:
        for name in SECTIONS:
            if name in chosen:
                suite.run(name, SECTIONS[name])
    finally:
        torch.set_num_threads(threads)
    return suite.written


if __name__ == "__main__":
    main()
