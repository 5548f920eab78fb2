"""Distributed data parallel plumbing: process group from torchrun, BatchNorm across ranks.

`torchrun --nproc-per-node N -m loftup train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; we
start a process group with gloo on CPU and nccl on CUDA. The upsampler's ChannelNorm /
LayerNorms work per pixel and its min-max scaling is per image by default, so they need
nothing; its two BatchNorms would normalise with each rank's local batch, which makes N ranks
train a different model than one process with the same global batch. So under DDP they are
replaced by `DistributedBatchNorm2d` (statistics over the global batch, gradients through
them exact; gloo and nccl) - or by torch's SyncBatchNorm on CUDA. State-dict keys do not change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..runtime.devices import resolve_device


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistContext:
    """A DistContext for this process; starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend, owns)


def cleanup(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_scalar(ctx: DistContext, value: float, op: str = "sum") -> float:
    """Sum / max / mean of a Python number over ranks (identity on one process)."""
    if not ctx.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    out = float(t.item())
    return out / ctx.world if op == "mean" else out


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the batches of all ranks.

    Mean and (biased) variance are all-reduced in two passes with the autograd-aware
    collective, so the backward pass is the gradient of the global-batch loss (DDP then
    averages). Eval mode, or a single process, is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        n_local = torch.tensor([float(xf.numel() // xf.shape[1])], dtype=torch.float32, device=x.device)
        dist.all_reduce(n_local)
        n = n_local.item()
        mean = all_reduce(xf.sum(dim=(0, 2, 3))) / n  # (C,)
        d = xf - mean.view(1, -1, 1, 1)
        var = all_reduce((d * d).sum(dim=(0, 2, 3))) / n
        y = d * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / max(n - 1, 1)), alpha=factor)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a cross-rank one (in place; parameters and buffers kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = DistributedBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(device=child.weight.device if child.affine else device)
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module
