"""`loftup bench`: the upsampler's latency, throughput, memory and achieved FLOP/s per backend.

For every (output size, batch, backend, precision): warm-up runs (compilation happens there),
then timed runs (up to `repeats`, within `max_seconds`), reporting median and p90 latency,
throughput, peak memory (process RSS on CPU, CUDA max allocated on GPU), achieved GFLOP/s
from the analytic count in `loftup.bench.flops`, that as a fraction of a matrix-multiply peak
measured on the same device in the same run (before and after the rows: a drift means other
load on the machine, and a warning is printed), the latency ratio to torch-reference, and
parity against PyTorch fp32 (sdpa attention, which is exact) on the same inputs.

Inputs are a bundled photo at each output size and stand-in low-res features of it (see
`loftup.export.parity.photo_features`): latency does not depend on the feature values, and
no backbone weights need to be present. Backends that cannot run here are listed as
skipped with the reason. Results: a rich table, JSON, and a PNG plot of latency vs size,
named after the machine (`bench-<host>-<device>-<time>.json`).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ..errors import BackendUnavailableError, ConfigError, check_choice
from ..export.formats import ENGINE_PRECISIONS, FORMATS, PRECISIONS
from .flops import KIND_FORMULAS, model_flops


@dataclass(frozen=True)
class BenchBackend:
    """One row of the backend table."""

    name: str
    runtime: str  # "torch" | "onnx" | "trt"
    needs_gpu: bool
    precisions: tuple[str, ...]
    description: str
    attn_backend: str = "sdpa"
    compile: bool = False
    compile_stages: bool = False  # Fourier features and FFNs compiled (loftup.model.deploy.compile_stages)
    ort_provider: str | None = None
    unchunked_attention: bool = False  # materialises the whole (HW x hw) score matrix


ONNX_PRECISIONS = FORMATS["onnx"].precisions
ONNX_FLOAT = tuple(p for p in ONNX_PRECISIONS if p in PRECISIONS)  # the GPU providers: int8 engines are CPU (VNNI) engines
BACKENDS: dict[str, BenchBackend] = {
    b.name: b
    for b in (
        BenchBackend("torch-reference", "torch", False, PRECISIONS, "PyTorch, materialised attention", attn_backend="reference", unchunked_attention=True),
        BenchBackend("torch-sdpa", "torch", False, PRECISIONS, "PyTorch, query-chunked SDPA"),
        BenchBackend("torch-compile", "torch", False, PRECISIONS, "torch.compile of the sdpa model", compile=True),
        BenchBackend("torch-auto", "torch", False, PRECISIONS, "PyTorch, attention from the measured table (auto), "
                     "channels-last convs for bf16/fp16 on CUDA", attn_backend="auto"),
        BenchBackend("torch-stages", "torch", False, PRECISIONS, "torch-auto with the Fourier features and FFNs compiled",
                     attn_backend="auto", compile_stages=True),
        BenchBackend("triton", "torch", True, PRECISIONS, "PyTorch with the fused Triton attention kernel", attn_backend="triton"),
        BenchBackend("onnxruntime-cpu", "onnx", False, ONNX_PRECISIONS, "ONNX Runtime, CPU provider (looped graph; int8: "
                     "static quantization, loftup.export.quantize)", ort_provider="CPUExecutionProvider"),
        BenchBackend("onnxruntime-cuda", "onnx", True, ONNX_FLOAT, "ONNX Runtime, CUDA provider (looped graph)",
                     ort_provider="CUDAExecutionProvider"),
        BenchBackend("onnxruntime-tensorrt", "onnx", True, ONNX_FLOAT, "ONNX Runtime, TensorRT provider",
                     ort_provider="TensorrtExecutionProvider"),
        BenchBackend("tensorrt", "trt", True, FORMATS["trt"].precisions, "TensorRT 10 plan"),
    )
}
GROUPS = {
    "all": tuple(BACKENDS),
    "torch": ("torch-reference", "torch-sdpa", "torch-compile", "torch-auto", "torch-stages"),
    "onnxruntime": ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt"),
}


@dataclass
class BenchOptions:
    checkpoint: Optional[Path] = None
    random_init: bool = False
    upsampler: Optional[str] = None  # kind: loftup, lift, featup_jbu (None: the checkpoint's; loftup when random)
    backbone: str = "dinov2_vits14"
    sizes: list[int] = field(default_factory=lambda: [224, 448, 896])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    precisions: Optional[list[str]] = None  # None: DEFAULT_PRECISIONS, less bf16 where it would be emulated
    backends: list[str] = field(default_factory=lambda: ["all"])
    warmup: int = 1
    repeats: int = 5
    max_seconds: float = 60.0
    threads: Optional[int] = None
    device: str = "cpu"
    out: Path = Path("bench_results")
    cuda_graphs: bool = False  # torch rows replay CUDA graphs (CUDA only)
    profile: bool = False  # torch rows also get a per-stage profile (loftup.bench.profile)
    profile_iters: int = 3
    memory_budget: Optional[str] = None  # torch rows: LoftUp's tiling budget ("auto" / None: loftup.runtime.budget's default)
    progress: bool = True
    plot: bool = True
    seed: int = 0


@dataclass
class BenchReport:
    data: dict[str, Any]
    json_path: Path
    plot_path: Optional[Path]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["rows"]


def expand_backends(names: list[str]) -> list[str]:
    """Backend names and groups (all, torch, onnxruntime) -> unique backend names, table order."""
    chosen: list[str] = []
    for name in names:
        check_choice("bench backend", name, [*GROUPS, *BACKENDS])
        for b in GROUPS.get(name, (name,)):
            if b not in chosen:
                chosen.append(b)
    return [b for b in BACKENDS if b in chosen]


# ------------------------------------------------------------------------------------------
# environment and peaks
def environment(device: str) -> dict[str, Any]:
    import torch

    from .._version import __version__
    from .memory import available_memory

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "hostname": platform.node(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loftup": __version__,
        "device": device,
        "available_memory_gb": round(available_memory() / 2**30, 2),
    }
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def measure_gemm_peak(precision: str, device: str = "cpu", n: int | None = None, repeats: int = 5,
                      max_seconds: float = 0.5) -> float:
    """Median GFLOP/s of an n x n x n matrix multiply in `precision` on `device` (2*n^3 FLOPs; int8:
    operations of `torch._int_mm`, int8 x int8 -> int32, the integer GEMM of this machine).

    n defaults to 2048 on a CPU (8192 on a GPU), made smaller where one multiply of that size
    would take over `max_seconds` (estimated from one of n / 4): bf16 on a CPU without bf16
    instructions runs at about 1 GFLOP/s, so n = 2048 would take 20 s a multiply."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}[precision]

    def operands(size: int):
        if dtype == torch.int8:
            return (torch.randint(-128, 128, (size, size), device=device, dtype=dtype) for _ in range(2))
        return (torch.randn(size, size, device=device).to(dtype) for _ in range(2))

    def timed(a, b) -> float:
        _sync(device)
        t = time.perf_counter()
        mm(a, b)
        _sync(device)
        return time.perf_counter() - t

    mm = torch._int_mm if dtype == torch.int8 else torch.matmul
    if n is None:
        n = 2048 if device == "cpu" else 8192
        probe = operands(n // 4)
        seconds = timed(*probe) * 64  # the probe is 64x fewer FLOPs (it also warms the thread pool)
        if seconds > max_seconds:
            n = max(64, int(n * (max_seconds / seconds) ** (1 / 3)) // 64 * 64)
    a, b = operands(n)
    times = [timed(a, b) for _ in range(repeats + 1)][1:]  # the first run warms caches and thread pools
    return 2 * n**3 / statistics.median(times) / 1e9


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------
# availability and engines
def unavailable_reason(backend: BenchBackend, precision: str, device: str) -> str | None:
    """Why `backend` cannot run `precision` here, or None if it can."""
    if backend.needs_gpu and not device.startswith("cuda"):
        what = {"triton": "the Triton kernel", "tensorrt": "TensorRT"}.get(backend.name, "this provider")
        return f"{what} needs an NVIDIA GPU; this run is on {device} (use --device cuda on a GPU machine)"
    if precision not in backend.precisions:
        if backend.runtime == "onnx" and precision == "bf16":
            return "ONNX Runtime has no bf16 kernels for this graph on its CPU provider; bf16 engines are built with --format trt"
        return f"{backend.name} does not run {precision}"
    fmt = FORMATS[backend.runtime]
    if backend.runtime != "trt" and not fmt.runtime_installed():
        return f"{fmt.runtime_module} is not installed ({fmt.install_hint})"
    if backend.runtime == "onnx":
        import onnxruntime as ort

        if backend.ort_provider not in ort.get_available_providers():
            return f"{backend.ort_provider} is not in this onnxruntime build (has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
    if backend.name == "triton":
        from ..kernels import triton_can_run

        import torch

        ok, why = triton_can_run(torch.device(device))
        if not ok:
            return why
    if backend.runtime == "trt":
        try:
            from ..export.tensorrt import require_tensorrt

            require_tensorrt()
        except BackendUnavailableError as e:
            return str(e)
    return None


def estimated_bytes(backend: BenchBackend, cfg, batch: int, size: int, lr: int) -> int:
    """Rough peak working memory: activations, plus the full score matrix (scores and
    probabilities, float32) for backends that materialise it. LiFT / FeatUp-JBU: a few
    feature maps at their native output (2x / 16x the grid) and at the guidance size."""
    kind = getattr(cfg, "kind", "loftup")
    if kind != "loftup":
        native = (2 * lr if kind == "lift" else 16 * lr) ** 2
        return batch * (native * (4 * cfg.feat_dim + 3 * 49 + 64) + size * size * 2 * cfg.feat_dim) * 4
    N, M = size * size, lr * lr
    act = batch * N * (cfg.token_dim * 6 + cfg.feat_dim * 2) * 4
    if backend.unchunked_attention:
        act += 2 * batch * cfg.num_heads * N * M * 4
    return act


class EngineFactory:
    """Builds (and caches) one engine per (backend, precision); ONNX files go to a temp folder."""

    def __init__(self, model, patch: int, opts: BenchOptions, log=lambda msg: None):
        self.model, self.patch, self.opts, self.log = model, patch, opts, log
        self.tmp = Path(tempfile.mkdtemp(prefix="loftup-bench-"))
        self.cache: dict[tuple[str, str], Any] = {}
        sizes = sorted(opts.sizes)
        self.export_sizes = (max(2 * patch, sizes[0] // 2), sizes[len(sizes) // 2], sizes[-1])
        self.max_batch = max(max(opts.batch_sizes), 2)

    def reference(self):
        """The parity reference (`loftup.export.engine.reference_engine`), upsampler form."""
        if ("reference", "fp32") not in self.cache:
            from ..export.engine import reference_engine

            self.cache[("reference", "fp32")] = reference_engine(self.model, device=self.opts.device)
        return self.cache[("reference", "fp32")]

    def get(self, backend: BenchBackend, precision: str):
        key = (backend.name, precision)
        if key not in self.cache:
            self.cache[key] = self._make(backend, precision)
        return self.cache[key]

    def _engine_file(self, fmt: str, precision: str) -> Path:
        """An upsampler-scope engine written by the same `export_model` that `loftup export` uses."""
        from ..export.exporter import export_model
        from ..export.formats import INT_PRECISIONS

        path = self.tmp / f"upsampler_{precision}{FORMATS[fmt].suffix}"
        if not path.exists():
            # an ONNX int8 engine is quantized from the fp32 one when that was already exported
            traced = self.tmp / "upsampler_fp32.onnx"
            traced = traced if fmt == "onnx" and precision in INT_PRECISIONS and traced.exists() else None
            self.log(f"exporting the upsampler to {fmt} ({precision}) for the {fmt} backends"
                     + (" from its fp32 trace" if traced else ""))
            export_model(self.model, None, path, fmt=fmt, scope="upsampler", precision=precision, opset=20,
                         sizes=self.export_sizes, max_batch=self.max_batch, patch_size=self.patch, check=False,
                         timing_cache=self.tmp / "timing.cache" if fmt == "trt" else None, traced=traced)
        return path

    def _make(self, backend: BenchBackend, precision: str):
        from ..export.engine import TorchEngine, load_engine, with_attention_backend

        if backend.runtime == "torch":
            from ..runtime.budget import explicit_memory_budget

            model = with_attention_backend(self.model, backend.attn_backend)
            return TorchEngine(model, None, precision=precision, compile=backend.compile, device=self.opts.device,
                               cuda_graphs=self.opts.cuda_graphs, compile_stages=backend.compile_stages,
                               memory_budget=explicit_memory_budget(self.opts.memory_budget))
        path = self._engine_file(backend.runtime, precision)
        return load_engine(path, providers=[backend.ort_provider] if backend.ort_provider else None,
                           threads=self.opts.threads or _torch_threads())

    def close(self) -> None:
        import shutil

        self.cache.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------
def time_engine(engine, inputs, warmup: int, repeats: int, max_seconds: float, device: str):
    """Warm-up, then timed runs; returns (seconds per run, last output, PeakMemory)."""
    from .memory import PeakMemory

    out = None
    for _ in range(max(0, warmup)):
        out = engine(*inputs)
        _sync(device)
    out = None  # the memory column: one call's working memory and output, not the previous output too
    times: list[float] = []
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        while len(times) < max(1, repeats):
            _sync(device)
            t = time.perf_counter()
            out = None
            out = engine(*inputs)
            _sync(device)
            times.append(time.perf_counter() - t)
            if time.perf_counter() - start + times[-1] > max_seconds:
                break
    return times, out, mem


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


DEFAULT_PRECISIONS = ("fp32", "bf16", "int8")


def default_precisions(device: str) -> list[str]:
    """DEFAULT_PRECISIONS, without bf16 where it is emulated (a CPU without bf16 instructions, a GPU
    before Ampere): tens of times slower than fp32, a row would take minutes and say nothing."""
    from ..runtime.devices import bf16_is_fast

    return [p for p in DEFAULT_PRECISIONS if p != "bf16" or bf16_is_fast(device)]


def check_options(opts: BenchOptions) -> tuple[BenchOptions, list[str]]:
    """Cheap validation before anything is loaded or timed; (options with the device resolved, backends)."""
    from ..runtime.devices import resolve_device

    for p in opts.precisions or ():
        check_choice("precision", p, ENGINE_PRECISIONS)
    if opts.repeats < 1:
        raise ConfigError(f"--repeats must be at least 1 (timed runs per row), got {opts.repeats}")
    if opts.warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {opts.warmup}")
    if not opts.max_seconds > 0:
        raise ConfigError(f"--max-seconds must be positive, got {opts.max_seconds}")
    from ..runtime.budget import explicit_memory_budget

    explicit_memory_budget(opts.memory_budget)  # a bad value is said before any row runs
    if opts.upsampler is not None:
        from ..model import UPSAMPLER_KINDS

        check_choice("upsampler kind", opts.upsampler, UPSAMPLER_KINDS)
    opts = replace(opts, device=str(resolve_device(opts.device)))  # one-line error for a missing / unknown device
    if opts.precisions is None:
        opts = replace(opts, precisions=default_precisions(opts.device))
    if opts.cuda_graphs and not opts.device.startswith("cuda"):
        raise ConfigError("--cuda-graphs needs --device cuda (CUDA graphs replay GPU work)")
    names = expand_backends(opts.backends)
    out = Path(opts.out)
    taken = [p for p in (out, out.with_suffix(".png")) if p.exists()] if out.suffix.lower() == ".json" else []
    if taken:
        raise ConfigError(f"{taken[0]} already exists; bench never overwrites a file (it writes the JSON and a PNG next to it) - "
                          "choose another --out")
    if out.suffix.lower() != ".json" and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder or a new .json path")
    from ..export.exporter import check_writable_folder

    check_writable_folder(out.parent if out.suffix.lower() == ".json" else out)
    return opts, names


@dataclass
class BenchContext:
    """What every row of one run shares: the model, its workload, engines, peaks, the reference."""

    opts: BenchOptions
    model: Any
    spec: Any  # name, embed_dim, patch_size, mean, std
    factory: "EngineFactory"
    peaks: dict[str, float]
    reference: dict[tuple[int, int], Any] = field(default_factory=dict)


def plan_rows(opts: BenchOptions, names: list[str]) -> list[tuple[int, int, str, str]]:
    """(size, batch, backend, precision) for every row, in run order."""
    return [(size, b, name, prec) for size in sorted(opts.sizes) for b in opts.batch_sizes for name in names for prec in opts.precisions]


# What the attention-named torch rows mean for the kinds without attention (None: the row would
# repeat torch-sdpa, so it is skipped with that reason).
KIND_TORCH_ROWS = {
    "lift": {"torch-sdpa": "LiFT, PyTorch eager", "torch-compile": "LiFT, torch.compile"},
    "featup_jbu": {"torch-sdpa": "FeatUp-JBU, PyTorch adaptive convolution (ordered taps, row bands)",
                   "torch-compile": "FeatUp-JBU, torch.compile", "triton": "FeatUp-JBU, Triton adaptive convolution"},
}


def run_row(ctx: BenchContext, size: int, b: int, name: str, prec: str) -> dict[str, Any]:
    """One row: skipped (with the reason), failed (with the error) or timed and compared."""
    from ..export.parity import compare, photo_batch, photo_features, tolerance_for
    from .memory import available_memory

    opts, cfg, p = ctx.opts, ctx.model.cfg, int(ctx.spec.patch_size)
    backend = BACKENDS[name]
    kind = getattr(ctx.model, "kind", "loftup")
    lr_side = max(1, size // p)  # pipeline.DEFAULT_INPUT_SIZE: the output rounded down to whole patches (photo_features' grid)
    row: dict[str, Any] = {"backend": name, "precision": prec, "batch": b, "size": size, "lr_size": lr_side,
                           "description": backend.description, "upsampler": kind}
    reason = unavailable_reason(backend, prec, opts.device)
    if kind != "loftup" and backend.runtime == "torch":
        meaning = KIND_TORCH_ROWS[kind].get(name)
        if meaning is None:
            return {**row, "status": "skipped", "reason": f"{kind} has no attention: this row would repeat torch-sdpa"}
        row["description"] = meaning
    need = estimated_bytes(backend, cfg, b, size, lr_side)
    avail = available_memory()
    if reason is None and opts.device == "cpu" and avail and need > 0.9 * avail:
        reason = (f"needs about {need / 2**30:.0f} GB (the full {size * size}x{lr_side * lr_side} attention matrix per head), "
                  f"{avail / 2**30:.0f} GB available")
    if reason:
        return {**row, "status": "skipped", "reason": reason}
    try:
        image, photos = photo_batch(b, size, size, ctx.spec.mean, ctx.spec.std)
        lr = photo_features(image, cfg.feat_dim, p)
        image, lr = image.to(opts.device), lr.to(opts.device)
        key = (b, size)
        if key not in ctx.reference:
            ctx.reference.clear()  # one size at a time: outputs at 896 are ~1 GB
            ctx.reference[key] = ctx.factory.reference()(lr, image).float().cpu()
        engine = ctx.factory.get(backend, prec)
        times, out, mem = time_engine(engine, (lr, image), opts.warmup, opts.repeats, opts.max_seconds, opts.device)
        med = statistics.median(times)
        flops = model_flops(cfg, b, size, size, lr_side, lr_side)
        err = compare(out, ctx.reference[key])
        err["passed"] = tolerance_for(prec, backend.runtime).passes(err)
        return {
            **row,
            "status": "ok",
            "engine": engine.describe(),
            "photos": photos,
            "warmup": opts.warmup,
            "repeats": len(times),
            "latency_ms": {"median": med * 1e3, "p90": percentile(times, 90) * 1e3, "mean": statistics.fmean(times) * 1e3,
                           "min": min(times) * 1e3, "all": [t * 1e3 for t in times]},
            "throughput": {"images_per_s": b / med, "megapixels_per_s": b * size * size / med / 1e6},
            "memory": {"method": mem.method, "peak_mb": mem.peak_bytes / 2**20,
                       "increase_mb": max(0, mem.peak_bytes - mem.baseline_bytes) / 2**20},
            "work": {"gflop": flops / 1e9, "achieved_gflops": flops / med / 1e9, "peak_gflops": ctx.peaks[prec],
                     "peak_precision": prec, "fraction_of_peak": flops / med / 1e9 / ctx.peaks[prec]},
            "parity": err,
            **({"profile": _profile(engine, lr, image, opts)} if opts.profile and backend.runtime == "torch" else {}),
        }
    except Exception as e:  # one broken backend must not end the run
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        return {**row, "status": "failed", "reason": f"{type(e).__name__}: {first[:300]}"}


def _profile(engine, lr, image, opts: BenchOptions) -> dict[str, Any]:
    """Per-stage profile of one engine on one input (without CUDA-graph replay, which hides stages)."""
    from .profile import profile_forward

    return profile_forward(engine.run_eager, (lr, image), opts.device, iters=opts.profile_iters, warmup=1)


def run_bench(opts: BenchOptions, model=None, backbone_spec=None) -> BenchReport:
    """Run the benchmark matrix and write JSON + PNG; returns the report.

    model / backbone_spec: optional overrides (tests use a small model); backbone_spec needs
    `name`, `embed_dim`, `patch_size`, `mean`, `std`.
    """
    import torch

    asked, (opts, names) = opts.precisions, check_options(opts)
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    model, backbone_spec = _open_model(opts, model, backbone_spec)
    console = _console()
    if asked is None and "bf16" not in opts.precisions:
        console.print(f"bf16 left out: {opts.device} has no bf16 instructions (a CPU without AVX512_BF16, AMX or Arm BF16; "
                      "a GPU before Ampere), so bf16 would run emulated, tens of times slower than fp32; "
                      "--precisions fp32,bf16 times it anyway")
    env = environment(opts.device)
    peaks = {prec: measure_gemm_peak(prec, opts.device) for prec in opts.precisions}
    console.print(f"matrix-multiply peak on {opts.device}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    factory = EngineFactory(model, int(backbone_spec.patch_size), opts, log=lambda m: console.print(m))
    rows = _measure_rows(BenchContext(opts, model, backbone_spec, factory, peaks), plan_rows(opts, names), console)
    _ratios(rows)
    peaks_after = {prec: measure_gemm_peak(prec, opts.device) for prec in opts.precisions}
    drift = max(abs(peaks_after[k] - peaks[k]) / peaks[k] for k in peaks)
    if drift > 0.2:
        console.print(f"[yellow]warning: the matrix-multiply peak changed by {100 * drift:.0f}% during the run "
                      "(other load on the machine?); latencies are not comparable across rows[/yellow]")
    env["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    data = report_data(opts, names, env, model, backbone_spec, peaks, peaks_after, rows)
    from ..model import KINDS

    title = KINDS[getattr(model, "kind", "loftup")].title
    report = write_report(data, opts, env, plot_title=f"{title} C={model.cfg.feat_dim} on {env['cpu'] if opts.device == 'cpu' else env.get('gpu')}")
    _print_tables(console, rows, opts.profile)
    return report


def _open_model(opts: BenchOptions, model, backbone_spec):
    """(model, backbone spec): the given ones or those the options name, checked against each other."""
    from ..model import load_or_init

    if backbone_spec is None:
        from ..backbones import get_spec

        backbone_spec = get_spec(opts.backbone)
    C, p = int(backbone_spec.embed_dim), int(backbone_spec.patch_size)
    if model is None:
        extra = {"patch_size": p} if opts.upsampler == "lift" and opts.checkpoint is None else {}
        model = load_or_init(opts.checkpoint, random_init=opts.random_init, feat_dim=C, backbone=opts.backbone, seed=opts.seed,
                             kind=opts.upsampler, **extra)
    if model.cfg.feat_dim != C:
        raise ConfigError(f"the model upsamples {model.cfg.feat_dim} channels but backbone {backbone_spec.name} gives {C}")
    if min(opts.sizes) < p:
        raise ConfigError(f"sizes must be at least one patch ({p} px); got {min(opts.sizes)}")
    return model, backbone_spec


def _measure_rows(ctx: BenchContext, plan: list, console) -> list[dict[str, Any]]:
    """One row per (size, batch, backend, precision) of the plan, with a progress bar; engines closed after."""
    rows: list[dict[str, Any]] = []
    try:
        with _progress(console, ctx.opts.progress) as progress:
            task = progress.add_task("bench", total=len(plan))
            for size, b, name, prec in plan:
                progress.update(task, description=f"{name} {prec} b{b} {size}px")
                rows.append(run_row(ctx, size, b, name, prec))
                progress.advance(task)
    finally:
        ctx.factory.close()
    return rows


def _print_tables(console, rows: list[dict[str, Any]], profile: bool) -> None:
    """The results table and, with --profile, each PyTorch row's per-stage table."""
    console.print(render_table(rows))
    if profile:
        from .profile import render_profile

        for r in rows:
            if r.get("profile"):
                console.print(render_profile(r["profile"], f"{r['backend']} {r['precision']} b{r['batch']} {r['size']}px"))


def report_data(opts: BenchOptions, names: list[str], env: dict[str, Any], model, spec, peaks, peaks_after,
                rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON document of one run."""
    from ..export.parity import TOLERANCES, tolerance_for

    cfg = model.cfg
    return {
        "loftup_version": env["loftup"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "environment": env,
        "model": {"upsampler": getattr(model, "kind", "loftup"), "feat_dim": cfg.feat_dim,
                  "token_dim": getattr(cfg, "token_dim", None), "backbone": spec.name, "patch_size": int(spec.patch_size),
                  "parameters": sum(t.numel() for t in model.parameters()), "config": cfg.to_dict(),
                  "source": str(opts.checkpoint) if opts.checkpoint else "random init"},
        "flop_formula": KIND_FORMULAS[getattr(model, "kind", "loftup")],
        "gemm_peak_gflops": peaks,
        "gemm_peak_gflops_after": peaks_after,
        "parity_reference": "PyTorch fp32, sdpa attention (exact), same inputs",
        "tolerances": {**{k: vars(v) for k, v in TOLERANCES.items()},
                       **{f"onnx {p}": vars(tolerance_for(p, "onnx")) for p in FORMATS["onnx"].precisions if p not in TOLERANCES}},
        "options": {"sizes": opts.sizes, "batch_sizes": opts.batch_sizes, "precisions": opts.precisions, "backends": names,
                    "warmup": opts.warmup, "repeats": opts.repeats, "max_seconds": opts.max_seconds, "threads": opts.threads,
                    "cuda_graphs": opts.cuda_graphs, "profile": opts.profile, "memory_budget": opts.memory_budget},
        "rows": rows,
    }


def write_report(data: dict[str, Any], opts: BenchOptions, env: dict[str, Any], plot_title: str) -> BenchReport:
    """JSON (atomically; never over an existing file) and the PNG plot next to it."""
    import json

    from ..io import atomic_write

    json_path, plot_path = _output_paths(opts.out, env)
    atomic_write(json_path, lambda path: path.write_text(json.dumps(data, indent=2)))
    if opts.plot:
        plot_latency(data["rows"], plot_path, title=plot_title)
    else:
        plot_path = None
    return BenchReport(data=data, json_path=json_path, plot_path=plot_path)


def _ratios(rows: list[dict[str, Any]]) -> None:
    """latency ratio of each row to torch-reference fp32 at the same batch and size."""
    ref = {(r["batch"], r["size"]): r["latency_ms"]["median"] for r in rows
           if r["status"] == "ok" and r["backend"] == "torch-reference" and r["precision"] == "fp32"}
    for r in rows:
        if r["status"] == "ok":
            base = ref.get((r["batch"], r["size"]))
            r["ratio_to_torch_reference"] = r["latency_ms"]["median"] / base if base else None


def _output_paths(out: Path, env: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(out)
    if out.suffix.lower() == ".json":
        return out, out.with_suffix(".png")
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in env["hostname"] or "host")
    stem = f"bench-{host}-{env['device'].replace(':', '')}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while (out / f"{stem}.json").exists() or (out / f"{stem}.png").exists():  # two runs in one second: never overwrite
        n += 1
        stem = f"{stem.rsplit('~', 1)[0]}~{n}"
    return out / f"{stem}.json", out / f"{stem}.png"


# ------------------------------------------------------------------------------------------
# presentation
def _console():
    import sys

    from rich.console import Console

    # not a terminal (a log file, a pipe): wide enough that the table is not wrapped
    return Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


def _progress(console, enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)


def render_table(rows: list[dict[str, Any]]):
    """A rich Table of the rows that ran, then the skipped / failed ones grouped with their reason."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="loftup bench (upsampler; latency per forward pass)")
    for col in ("backend", "prec", "batch", "size", "median ms", "p90 ms", "img/s", "peak MB", "GFLOP/s", "% peak", "x ref", "parity max|d| / min cos"):
        table.add_column(col, justify="left" if col in ("backend", "prec") else "right")
    notes: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            notes.setdefault((r["status"], r["backend"], r["reason"]), []).append(f"{r['precision']} b{r['batch']} {r['size']}px")
            continue
        lat, w, par = r["latency_ms"], r["work"], r["parity"]
        ratio = r.get("ratio_to_torch_reference")
        table.add_row(
            r["backend"], r["precision"], str(r["batch"]), str(r["size"]), f"{lat['median']:.1f}", f"{lat['p90']:.1f}",
            f"{r['throughput']['images_per_s']:.2f}", f"{r['memory']['peak_mb']:.0f}", f"{w['achieved_gflops']:.1f}",
            f"{100 * w['fraction_of_peak']:.1f}", f"{ratio:.2f}" if ratio else "-",
            f"{par['max_abs']:.1e} / {par['min_cos']:.5f}" + ("" if par["passed"] else " FAIL"),
        )
    lines = [Text(f"{status} {backend} ({', '.join(sorted(set(which)))}): {reason}", style="dim")
             for (status, backend, reason), which in notes.items()]
    return Group(table, *lines)


def plot_latency(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """PNG: median latency vs output size, one line per backend and precision (smallest batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if ok:
        batch = min(r["batch"] for r in ok)
        series: dict[str, list[tuple[int, float]]] = {}
        for r in ok:
            if r["batch"] == batch:
                series.setdefault(f"{r['backend']} {r['precision']}", []).append((r["size"], r["latency_ms"]["median"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", label=label)
        ax.set_yscale("log")
        ax.set_title(f"{title} (batch {batch})", fontsize=9)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no backend ran", ha="center", va="center")
    ax.set_xlabel("output size (pixels per side)")
    ax.set_ylabel("median latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
