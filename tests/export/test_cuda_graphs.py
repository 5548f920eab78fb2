"""TorchEngine's GPU runtime options on CPU: CUDA-graph replay (with a fake capture that re-runs
the function), channels-last convolutions and compiled stages (torch.compile's "eager" backend
checks the wiring without a compiler), all equal to the plain engine."""

from __future__ import annotations

import pytest
import torch

from loftup.errors import ConfigError
from loftup.export import cuda_graphs
from loftup.export.engine import TorchEngine, load_engine
from loftup.model import LoftUp, LoftUpConfig
from loftup.model.deploy import compile_stages, use_channels_last


def fake_capture(fn, static_inputs, pool):
    """Stands in for capture_cuda_graph: 'replay' re-runs fn on the static inputs into the static output."""
    out = fn(*static_inputs)

    def replay():
        out.copy_(fn(*static_inputs))

    return replay, out, pool or "pool"


@pytest.fixture
def fake_cuda_graphs(monkeypatch):
    captured = []

    def capture(fn, static, pool):
        captured.append(tuple(tuple(x.shape) for x in static))
        return fake_capture(fn, static, pool)

    monkeypatch.setattr(cuda_graphs, "check_device", lambda device: None)
    monkeypatch.setattr(cuda_graphs, "capture_cuda_graph", capture)
    return captured


def small_model(seed=0):
    torch.manual_seed(seed)
    return LoftUp(LoftUpConfig(feat_dim=32, attn_backend="sdpa"))


def inputs(b=1, h=14, w=18, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 32, 2, 3, generator=gen), torch.randn(b, 3, h, w, generator=gen)


def test_graph_runner_captures_once_per_shape_and_copies_outputs():
    calls = []
    runner = cuda_graphs.GraphRunner(lambda x: calls.append(1) or x * 2, max_graphs=2, capture=fake_capture)
    a, b, c = torch.ones(2), torch.ones(3), torch.ones(4)
    first = runner(a)
    second = runner(a + 1)
    assert torch.equal(first, 2 * a) and torch.equal(second, 2 * (a + 1))  # the first result was not overwritten
    runner(b)
    runner(c)  # third shape: the least recently used (a's) is dropped
    assert runner.captures == 3 and len(runner.graphs) == 2
    assert runner.key((a,)) not in runner.graphs


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(ConfigError, match="--cuda-graphs needs a CUDA device"):
        TorchEngine(small_model(), cuda_graphs=True, device="cpu")


def test_engine_with_cuda_graphs_equals_the_plain_engine(fake_cuda_graphs):
    plain = TorchEngine(small_model())
    graphed = TorchEngine(small_model(), cuda_graphs=True)
    lr, image = inputs()
    for _ in range(3):
        assert torch.equal(graphed(lr, image), plain(lr, image))
    lr2, image2 = inputs(b=2, h=10, w=12, seed=2)
    assert torch.equal(graphed(lr2, image2), plain(lr2, image2))
    assert fake_cuda_graphs == [((1, 32, 2, 3), (1, 3, 14, 18)), ((2, 32, 2, 3), (2, 3, 10, 12))]
    assert torch.equal(graphed.run_eager(lr, image), plain(lr, image))
    assert len(fake_cuda_graphs) == 2  # run_eager never captures


def test_cuda_graphs_only_for_pytorch_engines(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not read")
    with pytest.raises(ConfigError, match="--cuda-graphs applies to PyTorch engines"):
        load_engine(path, cuda_graphs=True)


def test_channels_last_and_compiled_stages_keep_the_outputs():
    lr, image = inputs(b=2)
    want = TorchEngine(small_model())(lr, image)
    fast = TorchEngine(small_model(), channels_last=True, compile_stages="eager", optimize=False)  # these two alone
    conv = fast.model.upsampler.first_conv[1]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert set(fast.model.upsampler.compiled) == {"features"} and set(fast.model.upsampler.ca_transformer.compiled) == {"ffn"}
    got = fast(lr, image)
    assert got.dtype == torch.float32  # in the layout the model produced
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    assert fast.model.state_dict().keys() == small_model().state_dict().keys()


@pytest.fixture
def cuda_device_objects(monkeypatch):
    """Lets a TorchEngine be built for `device="cuda"` on a CPU-only machine: moving a module to a
    CUDA device is a no-op, so the engine's device-dependent defaults run as on a GPU."""
    real_to = torch.nn.Module.to

    def to(module, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "cuda":
            return module
        return real_to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)


@pytest.mark.parametrize("device, precision, optimize, expected", [
    ("cuda", "bf16", True, True), ("cuda", "fp16", True, True), ("cuda", "fp32", True, False),
    ("cpu", "bf16", True, True), ("cpu", "fp16", True, True), ("cpu", "fp32", True, True),  # the CPU inference variant
    ("cpu", "fp32", False, False), ("cpu", "bf16", False, False),  # the module as it is (the parity reference)
])
def test_channels_last_default_cuda_low_precision_and_the_cpu_variant(cuda_device_objects, device, precision, optimize,
                                                                       expected):
    engine = TorchEngine(small_model(), precision=precision, device=device, optimize=optimize)
    assert engine.device.type == device and engine.channels_last is expected
    up = engine.model.upsampler
    assert up.channels_last is expected  # the decision reached the model ...
    assert up.first_conv[1].weight.is_contiguous(memory_format=torch.channels_last) is expected  # ... and its weights


def test_channels_last_can_be_turned_off_on_cuda(cuda_device_objects):
    engine = TorchEngine(small_model(), precision="bf16", device="cuda", channels_last=False)
    assert engine.channels_last is False and engine.model.upsampler.channels_last is False
    model = use_channels_last(compile_stages(small_model(), backend="eager"), False)
    assert model.upsampler.channels_last is False


def test_verbs_refuse_cuda_graphs_on_cpu_in_one_line(capsys, tmp_path):
    from loftup.cli import main

    assert main(["upsample", "sample:astronaut", "--random-init", "--cuda-graphs", "--out", str(tmp_path / "u")]) == 2
    assert "--cuda-graphs needs --device cuda" in capsys.readouterr().err
    assert main(["eval", "--probe", "mini", "--random-init", "--cuda-graphs", "--out", str(tmp_path / "e")]) == 2
    assert "--cuda-graphs needs --device cuda" in capsys.readouterr().err


def test_eval_and_upsample_pass_cuda_graphs_to_the_torch_engine(fake_cuda_graphs):
    from loftup.eval.upsamplers import LoftUpFeatures

    runner = type("Runner", (), {"embed_dim": 32, "name": "tiny", "mean": (0.5,) * 3, "std": (0.2,) * 3})()
    source = LoftUpFeatures(runner, small_model(), "loftup", cuda_graphs=True)
    reference = LoftUpFeatures(runner, small_model(), "reference", reference=True)
    assert source.engine.cuda_graphs and not reference.engine.cuda_graphs  # the reference never replays graphs
