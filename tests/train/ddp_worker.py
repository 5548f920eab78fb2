"""Run by `torchrun --nproc-per-node 2` from test_ddp.py: a tiny stage-1/2 run under DDP (gloo)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import TinyBackbone  # noqa: E402

from loftup.train import build_config, train  # noqa: E402

if __name__ == "__main__":
    stage, data, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    init = sys.argv[4] if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    cfg = build_config(stage, "paper", data=data, out=out, init=init, steps=4, batch_size=4, size=28, num_workers=0,
                       progress=False, log_every=1, optimizer="sgd", lr=0.05, ema_every=2, masks="felzenszwalb")
    train(cfg, backbone=TinyBackbone())
