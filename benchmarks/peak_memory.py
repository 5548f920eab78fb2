"""Peak resident memory of one upsampler forward, each case in a fresh process.

    .venv/bin/python benchmarks/peak_memory.py [--cases 16:896 32:2048] [--backend sdpa] [--tiling auto]

Prints one line per case: lr grid -> output, backend, tiling, wall time, peak RSS (VmHWM).
The model weights, inputs and output are included (a 384 x 2048 x 2048 fp32 output alone is 6.4 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
from loftup.model import LoftUp, LoftUpConfig
lr_side, out_side, backend, tiling = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.manual_seed(0)
model = LoftUp(LoftUpConfig(feat_dim=384, attn_backend=backend, tiling=tiling)).eval()
lr = torch.randn(1, 384, lr_side, lr_side)
img = torch.randn(1, 3, out_side, out_side)
t0 = time.perf_counter()
with torch.no_grad():
    out = model(lr, img)
dt = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
print(json.dumps(dict(lr=lr_side, out=out_side, backend=backend, tiling=tiling, seconds=round(dt, 2),
                      peak_rss_gb=round(hwm / 2**20, 3), output_gb=round(out.numel() * 4 / 2**30, 3))))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["16:896", "32:2048"], help="LR:OUT side lengths")
    ap.add_argument("--backend", default="sdpa")
    ap.add_argument("--tiling", default="auto")
    args = ap.parse_args()
    for case in args.cases:
        lr_side, out_side = case.split(":")
        res = subprocess.run([sys.executable, "-c", CHILD, lr_side, out_side, args.backend, args.tiling], capture_output=True, text=True)
        if res.returncode != 0:
            print(json.dumps(dict(case=case, error=res.stderr.strip().splitlines()[-1:])))
        else:
            print(res.stdout.strip())


if __name__ == "__main__":
    main()
