"""CUDA-graph replay of a PyTorch function for repeated input shapes (`--cuda-graphs`).

At LoftUp's small sizes the GPU waits on Python: a 224 output is ~100 kernel launches of a few
microseconds each. A CUDA graph records those launches once per input shape and replays them
with one call. `GraphRunner(fn)` keys graphs by the inputs' (shape, dtype): the first call of a
shape runs `fn` a few times on a side stream (so lazy work - cuDNN algorithm search, Triton
compilation, our attention backend's first-call checks - happens outside the capture), then
captures one call into static input/output buffers. Later calls of that shape copy the inputs
in, replay, and return a copy of the output (the static buffer is overwritten by the next
replay). All graphs share one memory pool; at most `max_graphs` shapes are kept (least recently
used dropped).

Only for inference (no autograd state is recorded) and for functions whose work depends on the
input shapes alone - true of the LoftUp upsampler (tiling, chunking and backend choices all
follow the shapes). CPU tests pass a fake `capture` (tests/export/test_cuda_graphs.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from ..errors import ConfigError

WARMUP_CALLS = 3


def check_device(device: torch.device) -> None:
    """ConfigError unless CUDA graphs can run on `device`."""
    if device.type != "cuda":
        raise ConfigError(f"--cuda-graphs needs a CUDA device (got {device.type}); use --device cuda or drop --cuda-graphs")


def capture_cuda_graph(fn: Callable, static_inputs: tuple, pool=None):
    """Warm `fn` up on a side stream, then capture one call. Returns (replay, static_output, pool)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_CALLS):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(stream)
    pool = pool if pool is not None else torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        static_output = fn(*static_inputs)
    return graph.replay, static_output, pool


class GraphRunner:
    """Calls `fn(*inputs)` through one captured CUDA graph per input (shape, dtype)."""

    def __init__(self, fn: Callable, max_graphs: int = 8, capture: Callable | None = None):
        self.fn = fn
        self.max_graphs = max(1, int(max_graphs))
        self.capture = capture  # None: capture_cuda_graph
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()  # key -> (replay, static inputs, static output)
        self.pool = None
        self.captures = 0

    @staticmethod
    def key(inputs) -> tuple:
        return tuple((tuple(x.shape), x.dtype, str(x.device)) for x in inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = self.key(inputs)
        entry = self.graphs.get(key)
        if entry is None:
            static = tuple(x.clone() for x in inputs)
            replay, out, self.pool = (self.capture or capture_cuda_graph)(self.fn, static, self.pool)
            entry = (replay, static, out)
            self.captures += 1
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        replay, static, out = entry
        for buf, x in zip(static, inputs):
            buf.copy_(x)
        replay()
        return out.clone()
