"""Our PyTorch engines on CPU: fp32 and native bf16 against the machine's GEMM peak, measured in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/cpu_precision.py [--sizes 224,448] [--repeats 3]

Engines (all `TorchEngine`, upsampler form, batch 1, default memory budget), timed interleaved:

- `fp32` / `bf16`: what `loftup upsample` runs on CPU - the CPU inference variant
  (`loftup.model.deploy.cpu_variant`: BatchNorm folded, heads padded 101 -> 104, channels-last;
  bf16 natively, `deploy.native_precision`);
- `fp32 as-is` / `bf16 autocast`: the same module run as it is (optimize=False: BatchNorm
  unfolded, no head padding, bf16 under autocast) - the "before" of issue 26.

Ratios are the median of per-round ratios (one round times every engine once, back to back).
Parity: each engine against the fp32 PyTorch reference (`reference_engine`), per-pixel cosine.

Peaks, measured in the same process, before and after the engines: square GEMMs (n = 2048,
fp32 and bf16) and the shapes the model runs - its projections, FFN layers and head as
(tokens x K) @ (K x N) GEMMs, its two 3x3 convs (as the CPU variant runs them: Winograd convs,
`loftup.kernels.winograd`, whose GFLOP/s count the direct conv's FLOPs), and its attention (4 heads, head dim 104, the
key count of the size) - timed at 224 px worth of tokens. From those, the time the model would
take if every matmul and conv ran at its own measured speed ("shape roofline") and the
achieved fraction of it; per-stage times come from `loftup.bench.profile`.

Inputs: a bundled photo and the backbone's features of it (the checkpoint's backbone when its
weights are here offline, else stand-in features). Weights: `--checkpoint` (default the
package's shipped DINOv2-S/14 checkpoint). Writes benchmarks/results/<cpu>/cpu_precision.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

from loftup.bench.results import interleaved_rounds, markdown_table, results_folder, run_environment, write_results
from loftup.kernels.linear import linear
from loftup.kernels.winograd import WinogradConv2d

ENGINES = ("fp32", "bf16", "fp32 as-is", "bf16 autocast")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def timed(fn, *args, repeats: int = 3) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def shape_peaks(cfg, n_keys: int, tokens: int = 224 * 224) -> dict[str, dict[str, float]]:
    """GFLOP/s of the model's own matmul / conv / attention shapes, fp32 and bf16."""
    D, C, F_ = cfg.token_dim, cfg.feat_dim, cfg.image_feat_dim
    Dp = cfg.num_heads * (cfg.head_dim + (-cfg.head_dim % 8))  # padded heads (the CPU variant)
    gemms = {"q projection": (D, Dp), "out projection": (Dp, D), "ffn 1": (D, C), "ffn 2": (C, D), "head": (D, C)}
    side = int(math.isqrt(tokens))
    out: dict[str, dict[str, float]] = {}
    for prec, dtype in DTYPES.items():
        row = {}
        for name, (k, n) in gemms.items():  # as the CPU variant runs them (loftup.kernels.linear)
            x, w = torch.randn(tokens, k).to(dtype), torch.randn(n, k).to(dtype)
            with torch.no_grad():
                row[name] = 2 * tokens * k * n / timed(lambda a, b: linear(a, b, fused=True), x, w) / 1e9
        for name, (ci, co) in {"conv 1": (F_, D), "conv 2": (D, D)}.items():  # Winograd, as the CPU variant runs them
            x = torch.randn(1, ci, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
            conv = WinogradConv2d(ci, co, 3, padding=1, relu=True).to(dtype)
            with torch.no_grad():  # effective GFLOP/s: the direct conv's FLOPs over the time taken
                row[name] = 2 * side * side * ci * co * 9 / timed(conv, x) / 1e9
        from loftup.kernels.sdpa import chunked_sdpa_attention

        d = Dp // cfg.num_heads
        q = torch.randn(1, cfg.num_heads, tokens, d).to(dtype)
        k, v = torch.randn(1, cfg.num_heads, n_keys, d).to(dtype), torch.randn(1, cfg.num_heads, n_keys, d).to(dtype)
        with torch.no_grad():
            row["attention"] = 4 * tokens * n_keys * cfg.token_dim / timed(chunked_sdpa_attention, q, k, v, 0.1) / 1e9
        out[prec] = row
    return out


def roofline_seconds(cfg, size: int, n_keys: int, peaks: dict[str, float]) -> float:
    """Seconds the model's matmuls, convs and attention would take at their measured shape peaks."""
    N, D, C, F_, L = size * size, cfg.token_dim, cfg.feat_dim, cfg.image_feat_dim, cfg.num_blocks
    flops = {"conv 1": 2 * N * F_ * D * 9, "conv 2": 2 * N * D * D * 9, "q projection": 2 * L * N * D * D,
             "out projection": 2 * L * N * D * D, "ffn 1": 2 * L * N * D * C, "ffn 2": 2 * L * N * C * D,
             "head": 2 * N * D * C, "attention": 4 * L * N * n_keys * D}
    return sum(f / (peaks[k] * 1e9) for k, f in flops.items())


def inputs_for(size: int, model, log):
    from loftup.export.parity import photo_batch, photo_features

    image, photos = photo_batch(1, size, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    try:
        from loftup.backbones import create_backbone
        from loftup.pipeline import backbone_input

        backbone = create_backbone(model.cfg.backbone or "dinov2_vits14")
        with torch.no_grad():
            lr = backbone(backbone_input(image, backbone.patch_size)).float()
        return lr, image, f"{photos[0]}, {backbone.name} features"
    except Exception as e:  # no offline weights: stand-in features (latency does not depend on them)
        log(f"  backbone unavailable ({type(e).__name__}); stand-in features")
        return photo_features(image, model.cfg.feat_dim, 14), image, f"{photos[0]}, stand-in features"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="LoftUp checkpoint (default: the shipped DINOv2-S/14 one)")
    ap.add_argument("--sizes", default="224,448")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="cpu_precision")
    args = ap.parse_args(argv)

    from loftup.bench.flops import model_flops
    from loftup.bench.harness import measure_gemm_peak
    from loftup.bench.profile import profile_forward
    from loftup.export.engine import TorchEngine, reference_engine
    from loftup.export.parity import compare
    from loftup.model import load_or_init

    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    model = load_or_init(args.checkpoint, backbone="dinov2_vits14").eval()
    env = run_environment()
    square = {p: measure_gemm_peak(p) for p in DTYPES}
    log(f"square GEMM peaks: {square}")
    rows, shapes = [], {}
    for size in (int(s) for s in args.sizes.split(",")):
        lr, image, what = inputs_for(size, model, log)
        n_keys = lr.shape[-1] * lr.shape[-2]
        shapes[size] = shape_peaks(model.cfg, n_keys)
        reference = reference_engine(model)(lr, image)
        engines = {"fp32": TorchEngine(model), "bf16": TorchEngine(model, precision="bf16"),
                   "fp32 as-is": TorchEngine(model, optimize=False), "bf16 autocast": TorchEngine(model, precision="bf16", optimize=False)}
        outs = {k: e(lr, image) for k, e in engines.items()}  # warm-up, and the outputs compared
        times = interleaved_rounds({k: (lambda e=e: e(lr, image)) for k, e in engines.items()}, args.repeats)
        flops = model_flops(model.cfg, 1, size, size, lr.shape[-2], lr.shape[-1])
        log(f"{size}px ({what}): " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in times.items()))
        for k, e in engines.items():
            prec = "bf16" if "bf16" in k else "fp32"
            med = statistics.median(times[k])
            roof = roofline_seconds(model.cfg, size, n_keys, shapes[size][prec])
            rows.append({
                "size": size, "engine": k, "precision": prec, "inputs": what, "seconds": times[k], "median_s": med,
                "speedup_vs_fp32": statistics.median(a / b for a, b in zip(times["fp32"], times[k])),
                "speedup_vs_fp32_as_is": statistics.median(a / b for a, b in zip(times["fp32 as-is"], times[k])),
                "gflop": flops / 1e9, "achieved_gflops": flops / med / 1e9, "square_peak_gflops": square[prec],
                "fraction_of_square_peak": flops / med / 1e9 / square[prec], "shape_roofline_s": roof,
                "fraction_of_shape_roofline": roof / med, "parity_vs_fp32_reference": compare(outs[k], reference),
                "profile": profile_forward(e.run_eager, (lr, image), iters=1, warmup=0) if k in ("fp32", "bf16") else None,
            })
        del engines, outs
    square_after = {p: measure_gemm_peak(p) for p in DTYPES}
    data = {"benchmark": "cpu_precision", "environment": env, "checkpoint": str(getattr(model, "source_checkpoint", None)),
            "threads": args.threads, "repeats": args.repeats, "square_gemm_peak_gflops": square,
            "square_gemm_peak_gflops_after": square_after, "shape_peak_gflops": shapes, "rows": rows}
    paths = write_results(results_folder(args.out), args.name, data, render(data))
    print("\n".join(map(str, paths)))
    return 0


def render(data: dict) -> str:
    head = ["size", "engine", "median s", "x fp32 (ours)", "x fp32 as-is", "GFLOP/s", "% square peak", "% shape roofline",
            "vs fp32 ref: mean / min cos"]
    rows = [[r["size"], r["engine"], f"{r['median_s']:.2f}", f"{r['speedup_vs_fp32']:.2f}", f"{r['speedup_vs_fp32_as_is']:.2f}",
             f"{r['achieved_gflops']:.0f}", f"{100 * r['fraction_of_square_peak']:.0f}", f"{100 * r['fraction_of_shape_roofline']:.0f}",
             f"{r['parity_vs_fp32_reference']['mean_cos']:.6f} / {r['parity_vs_fp32_reference']['min_cos']:.5f}"]
            for r in data["rows"]]
    sq, sq2 = data["square_gemm_peak_gflops"], data["square_gemm_peak_gflops_after"]
    peak_rows = [[size, prec, *(f"{v:.0f}" for v in vals.values())] for size, by in data["shape_peak_gflops"].items()
                 for prec, vals in by.items()]
    peak_head = ["keys at size", "precision", *next(iter(next(iter(data["shape_peak_gflops"].values())).values())).keys()]
    stages = []
    for r in data["rows"]:
        if r["profile"]:
            stages += [[r["size"], r["engine"], s["stage"], f"{s['cpu_ms']:.0f}", f"{100 * (s['share'] or 0):.0f}%"]
                       for s in r["profile"]["stages"] if s["cpu_ms"] >= 1]
    return "\n\n".join([
        f"# Our CPU engines: fp32 vs native bf16 (batch 1, {data['threads']} threads, interleaved, {data['repeats']} rounds)",
        f"Weights: `{data['checkpoint']}`. Square GEMM peak (n = 2048) before / after: fp32 {sq['fp32']:.0f} / "
        f"{sq2['fp32']:.0f}, bf16 {sq['bf16']:.0f} / {sq2['bf16']:.0f} GFLOP/s. 'x' columns: median of per-round ratios "
        "(> 1: faster than that engine). Shape roofline: the model's GEMMs, convs and attention at the speeds measured "
        "for their own shapes in this run.",
        markdown_table(head, rows),
        "## GFLOP/s of the model's own shapes (224 px worth of tokens; attention with the size's key count)",
        markdown_table(peak_head, peak_rows),
        "## Per-stage time (torch.profiler, one call, CPU ms)",
        markdown_table(["size", "engine", "stage", "ms", "share"], stages),
    ])


if __name__ == "__main__":
    sys.exit(main())
