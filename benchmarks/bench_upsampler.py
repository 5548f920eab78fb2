"""CPU latency of the upsampler alone (C=384, DINOv2-S/14 size): reference vs sdpa, fp32 vs bf16.

    .venv/bin/pytest benchmarks/bench_upsampler.py --benchmark-enable -o addopts="" \
        --benchmark-json results/bench_upsampler-$(hostname).json

Peak memory at large outputs is measured in fresh processes: `python benchmarks/peak_memory.py`.
"""

import contextlib

import pytest
import torch

from loftup.model import LoftUp, LoftUpConfig

CASES = {"16x16->224": (16, 224), "32x32->448": (32, 448)}


def make(backend: str) -> LoftUp:
    torch.manual_seed(0)
    return LoftUp(LoftUpConfig(feat_dim=384, attn_backend=backend, tiling="never")).eval()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("case", list(CASES))
def test_upsampler_latency(benchmark, case, backend, dtype):
    lr_side, out_side = CASES[case]
    model = make(backend)
    lr = torch.randn(1, 384, lr_side, lr_side)
    img = torch.randn(1, 3, out_side, out_side)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def run():
        with torch.no_grad(), ctx:
            return model(lr, img)

    rounds = 3 if out_side <= 224 else 2
    out = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(case=case, backend=backend, dtype=dtype, threads=torch.get_num_threads())
    assert out.shape == (1, 384, out_side, out_side)
