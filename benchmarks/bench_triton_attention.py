"""Benchmark: LoftUp's Triton attention vs torch SDPA at the real high-res query-pass shapes.

Needs an NVIDIA GPU. Two ways to run it:

    python benchmarks/bench_triton_attention.py [--paired] [--dtype float16] [--out bench_results]
        every (output 224/448/896, M 256/1024/4096, d 101/197) shape, 4 heads, batch 1, forward
        and forward+backward, for the Triton kernel, SDPA's math / flash / efficient / cuDNN
        backends (whichever accepts the shape), loftup's sdpa backend (one fused call on CUDA)
        and its query-chunked SDPA (the CPU path). Prints a table
        with TFLOP/s and fraction of the device's peak, and saves JSON + CSV named after the
        device, torch and triton versions (results are recorded, never asserted).

    pytest benchmarks/bench_triton_attention.py --benchmark-enable
        pytest-benchmark functions over the paired shapes.

Without CUDA, main() prints that a GPU is needed and exits 0; the pytest functions skip.
FLOP formula and peaks: see loftup/kernels/triton_bench.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import sys
from pathlib import Path

import pytest
import torch

from loftup.kernels.triton_bench import (
    METHODS,
    MODES,
    attention_flops,
    attention_method,
    format_row,
    loftup_shapes,
    make_step,
    run_attention_benchmark,
)

NEEDS_CUDA = "needs an NVIDIA GPU (CUDA); none is available on this machine"
RESULTS = Path("bench_results")  # next to `loftup bench` output


def environment_tag() -> str:
    """'h100-80gb-hbm3_torch2.13.0_triton3.7.1': names result files after what produced them."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu.lower().replace("nvidia", "")).strip("-")
    return f"{gpu}_torch{torch.__version__.split('+')[0]}_triton{triton_version}"


def save(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"attention_{environment_tag()}"
    meta = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps({"environment": meta, "results": rows}, indent=1))
    csv_path = stem.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paired", action="store_true", help="only 224/256, 448/1024, 896/4096 (x both head dims)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--budget-ms", type=float, default=400.0, help="timing budget per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON / CSV results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"bench_triton_attention: {NEEDS_CUDA}; skipping.")
        return 0
    rows = run_attention_benchmark(
        torch.device("cuda"),
        loftup_shapes(paired=args.paired),
        methods=args.methods,
        modes=args.modes,
        dtype=getattr(torch, args.dtype),
        budget_ms=args.budget_ms,
        log=print,
    )
    json_path, csv_path = save(rows, args.out)
    print("\nsummary (ok rows):")
    for row in rows:
        if row["status"] == "ok":
            print(format_row(row))
    print(f"\nsaved {json_path} and {csv_path}")
    return 0


# -- pytest-benchmark functions ----------------------------------------------------------------

gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_CUDA)


@gpu_only
@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["triton", "sdpa_math", "loftup_sdpa"])
@pytest.mark.parametrize("shape", loftup_shapes(paired=True), ids=lambda s: s.label.replace(" ", "_"))
def test_attention(benchmark, shape, method, mode):
    step = make_step(attention_method(method), shape, mode, torch.device("cuda"), torch.float16)

    def synced():
        step()
        torch.cuda.synchronize()

    try:
        synced()
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"{method} runs out of memory at {shape.label}")
    benchmark.extra_info.update(flops=attention_flops(shape, mode), n=shape.n, m=shape.m, d=shape.d)
    benchmark.pedantic(synced, rounds=10, warmup_rounds=2)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["tflops"] = attention_flops(shape, mode) / benchmark.stats.stats.median / 1e12


if __name__ == "__main__":
    sys.exit(main())
