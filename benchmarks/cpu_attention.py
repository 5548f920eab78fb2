"""bf16 / fp32 attention on CPU at LoftUp's shapes: PyTorch's fused kernel vs `materialised_chunks`.

    PYTHONPATH=. .venv/bin/python benchmarks/cpu_attention.py [--threads 2] [--dtype bf16]

4 heads, head dim 104 (LoftUp-S's 101 padded, `deploy.CPU_HEAD_MULTIPLE`), 16384 queries (a
tile), 256 and 1024 keys (224 / 448 px with a /14 backbone). Interleaved rounds, median wall
time, printed as GFLOP/s (4 * heads * queries * keys * dim). This is the measurement behind
`loftup.kernels.sdpa.chunked_sdpa_attention`'s choice on CPU (issue 26).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from loftup.bench.results import interleaved_rounds
from loftup.kernels.sdpa import materialised_chunks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    for keys in (256, 1024):
        q = torch.randn(1, 4, 16384, 104, generator=gen).to(dtype)
        k, v = (torch.randn(1, 4, keys, 104, generator=gen).to(dtype) for _ in range(2))
        ways = {"fused": lambda: F.scaled_dot_product_attention(q, k, v),
                "materialised": lambda: materialised_chunks(q, k, v, 104**-0.5, max(64, 2**20 // keys))}
        with torch.inference_mode():
            for fn in ways.values():
                fn()
            times = interleaved_rounds(ways, a.repeats)
        flop = 4 * 4 * 16384 * keys * 104
        print(f"{a.dtype}, {a.threads} threads, {keys} keys: "
              + ", ".join(f"{n} {flop / statistics.median(t) / 1e9:.0f} GFLOP/s" for n, t in times.items()))


if __name__ == "__main__":
    main()
