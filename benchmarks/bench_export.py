"""ONNX Runtime (CPU provider) vs PyTorch on the same small upsampler, through the Engine interface.

    .venv/bin/pytest benchmarks/bench_export.py --benchmark-enable -o addopts="" \\
        --benchmark-json results/bench_export-$(hostname).json

A C=64 LoftUp (random weights, BatchNorm statistics perturbed so folding matters) exported once
to ONNX (opset 20, MatMul/Softmax attention); each case upsamples 8x8 -> 112x112 features of a
bundled photo. Measures and reports only: no assertion on time.
"""

import pytest
import torch

FEAT_DIM, LR, OUT = 64, 8, 112


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from loftup.export.engine import TorchEngine, with_attention_backend
    from loftup.export.onnx import OnnxEngine, export_onnx
    from loftup.model import LoftUp, LoftUpConfig

    torch.manual_seed(0)
    model = LoftUp(LoftUpConfig(feat_dim=FEAT_DIM)).eval()
    path = tmp_path_factory.mktemp("onnx") / "up.onnx"
    export_onnx(model, path, scope="upsampler", sizes=(56, OUT, 2 * OUT), max_batch=2)
    threads = torch.get_num_threads()
    return {
        "torch-reference": TorchEngine(with_attention_backend(model, "reference")),
        "torch-sdpa": TorchEngine(with_attention_backend(model, "sdpa")),
        "torch-sdpa-bf16": TorchEngine(with_attention_backend(model, "sdpa"), precision="bf16"),
        "onnxruntime-cpu": OnnxEngine(path, providers=["cpu"], threads=threads),
    }


@pytest.fixture(scope="module")
def inputs():
    from loftup.export.parity import photo_batch, photo_features

    image, _ = photo_batch(1, OUT, OUT, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return photo_features(image, FEAT_DIM, OUT // LR), image


@pytest.mark.parametrize("backend", ["torch-reference", "torch-sdpa", "torch-sdpa-bf16", "onnxruntime-cpu"])
def test_engine_latency(benchmark, engines, inputs, backend):
    from loftup.bench.flops import upsampler_flops

    engine = engines[backend]
    out = benchmark.pedantic(lambda: engine(*inputs), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(backend=backend, engine=engine.describe(), threads=torch.get_num_threads(),
                                gflop=upsampler_flops(engines["torch-sdpa"].model.cfg, 1, OUT, OUT, LR, LR) / 1e9)
    assert out.shape == (1, FEAT_DIM, OUT, OUT)
