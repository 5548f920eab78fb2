"""Run by `torchrun --nproc-per-node 2` from test_baselines_train.py: a tiny LiFT / FeatUp-JBU run under DDP (gloo)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import TinyBackbone  # noqa: E402

from loftup.train import build_config, train  # noqa: E402

if __name__ == "__main__":
    kind, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    size = 56 if kind == "lift" else 28
    cfg = build_config(None, None, upsampler=kind, data=data, out=out, steps=3, batch_size=4, size=size, num_workers=0,
                       progress=False, log_every=1, optimizer="sgd", lr=0.05, crf_samples=100, jitters=2)
    train(cfg, backbone=TinyBackbone())
