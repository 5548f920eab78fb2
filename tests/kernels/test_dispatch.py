"""Backend dispatch (auto / forced / fallback / errors) and the sdpa backend's exactness.

CUDA is never available here: a `torch.device("cuda")` object is enough for the resolution
rules (they look at the device type only), and `triton_importable` is mocked where needed.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from loftup import kernels
from loftup.errors import BackendUnavailableError, ConfigError
from loftup.kernels import (
    AttentionDispatcher,
    reference_attention,
    resolve_backend,
    run_backend,
    sdpa_attention,
)
from loftup.kernels.attention_table import AttentionTable
from loftup.kernels.sdpa import chunk_length

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only the object: nothing is allocated on it


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def set_importable(monkeypatch, value: bool):
    monkeypatch.setattr(kernels, "triton_importable", lambda: value)


@pytest.mark.parametrize("importable", [True, False])
@pytest.mark.parametrize("env", ["interpreter", "no_interpreter"])
def test_auto_on_cpu_is_sdpa(request, monkeypatch, env, importable):
    # Even under the interpreter, auto never picks the (slow, test-only) interpreted kernel.
    request.getfixturevalue(env)
    set_importable(monkeypatch, importable)
    assert resolve_backend("auto", CPU) == "sdpa"


# A call the shipped table sends to our kernel: sm90, bf16, head dim 104, 224 output, training.
TRITON_SHAPE = ("sm90", torch.bfloat16, 104, 224 * 224, 256, True)


def test_auto_on_cuda_follows_the_table(monkeypatch, no_interpreter):
    # The full (arch, dtype, shape) cover is in test_attention_table.py; here: the hook-up.
    set_importable(monkeypatch, True)
    assert resolve_backend("auto", CUDA) == "sdpa"  # no shape known: PyTorch's fused kernels
    assert resolve_backend("auto", CUDA, TRITON_SHAPE) == "triton"
    assert resolve_backend("auto", CUDA, ("sm90", torch.bfloat16, 104, 224 * 224, 256, False)) == "flash"


def test_auto_on_cuda_without_triton_falls_back_with_warning(monkeypatch):
    set_importable(monkeypatch, False)
    with pytest.warns(UserWarning, match="falling back to the sdpa.*not installed"):
        assert resolve_backend("auto", CUDA, TRITON_SHAPE) == "sdpa"


@pytest.mark.parametrize("name", ["flash", "efficient", "cudnn"])
def test_fused_pytorch_kernels_need_cuda(name):
    assert resolve_backend(name, CUDA) == name
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors.*backend='sdpa'"):
        resolve_backend(name, CPU)


def test_forced_triton_on_cpu_without_interpreter_errors(monkeypatch, no_interpreter):
    set_importable(monkeypatch, True)
    with pytest.raises(BackendUnavailableError, match="CUDA tensors") as err:
        resolve_backend("triton", CPU)
    message = str(err.value)
    assert "TRITON_INTERPRET=1" in message and "backend='sdpa'" in message


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_forced_triton_not_importable_errors(monkeypatch, interpreter, device):
    set_importable(monkeypatch, False)
    with pytest.raises(BackendUnavailableError, match="Triton is not installed"):
        resolve_backend("triton", device)


def test_forced_triton_allowed_on_cuda_and_under_interpreter(monkeypatch, interpreter):
    set_importable(monkeypatch, True)
    assert resolve_backend("triton", CUDA) == "triton"
    assert resolve_backend("triton", CPU) == "triton"


@pytest.mark.parametrize("name", ["reference", "sdpa"])
def test_concrete_backends_pass_through(name):
    assert resolve_backend(name, CPU) == name
    assert resolve_backend(name, CUDA) == name


def test_unknown_backend_is_config_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"did you mean 'triton'\?.*auto, reference, sdpa, triton"):
        resolve_backend("trition", CPU)
    with pytest.raises(ConfigError, match="unknown attention backend"):
        AttentionDispatcher("xformers")


def cuda_call(monkeypatch, n=224 * 224, m=256, d=104, dtype=torch.bfloat16, grad=True):
    """CPU stand-ins for a CUDA call's q and k (only dtype, shape and requires_grad are read)."""
    from loftup.kernels import attention_table

    monkeypatch.setattr(attention_table, "arch_of", lambda device: "sm90")
    q = torch.empty(1, 4, n, d, dtype=dtype).requires_grad_(grad)
    return q, torch.empty(1, 4, m, d, dtype=dtype)


def test_dispatcher_resolves_once_per_device_type_and_call_class(monkeypatch):
    calls = []
    real = kernels.resolve_backend

    def counting(backend, device, shape=None, table=None):
        calls.append(device.type)
        return real(backend, device, shape, table)

    monkeypatch.setattr(kernels, "resolve_backend", counting)
    set_importable(monkeypatch, True)
    dispatcher = AttentionDispatcher("auto", table=AttentionTable())
    q, k = cuda_call(monkeypatch)
    for _ in range(3):
        assert dispatcher.resolve(CPU, q, k) == "sdpa"
        assert dispatcher.resolve(torch.device("cuda", 1), q, k) == "triton"
        with torch.no_grad():
            assert dispatcher.resolve(torch.device("cuda", 1), q, k) == "flash"
    assert calls == ["cpu", "cuda", "cuda"]


def test_dispatcher_warns_once_on_fallback(monkeypatch):
    set_importable(monkeypatch, False)
    dispatcher = AttentionDispatcher("auto", table=AttentionTable())
    q, k = cuda_call(monkeypatch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        resolved = [dispatcher.resolve(CUDA, q, k) for _ in range(3)]
    assert resolved == ["sdpa"] * 3
    assert len(record) == 1 and "falling back" in str(record[0].message)


def test_head_pad_is_eight_on_cuda_only():
    dispatcher = AttentionDispatcher("auto")
    assert [dispatcher.head_pad(CUDA, d) for d in (101, 133, 197, 104, 13)] == [3, 3, 3, 0, 3]
    assert dispatcher.head_pad(CPU, 101) == 0
    assert AttentionDispatcher("reference").head_pad(CUDA, 101) == 0
    assert AttentionDispatcher("sdpa", head_multiple=8).head_pad(CPU, 101) == 3


def test_bf16_cpu_through_triton_path_under_interpreter(monkeypatch, interpreter):
    # Dispatch only: the interpreter's bf16 loads are wrong, so values are not checked.
    from loftup.kernels import triton_attention as ta

    if not ta._interpreted():
        pytest.skip("triton was imported without TRITON_INTERPRET=1")
    calls = []
    real = ta.triton_attention
    monkeypatch.setattr(ta, "triton_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    q = torch.randn(2, 2, 150, 24, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 2, 35, 24, dtype=torch.bfloat16)
    dispatcher = AttentionDispatcher("triton")
    out = dispatcher(q, k, k)
    assert dispatcher.resolve(CPU) == "triton" and calls == [1]
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.shape == q.shape and q.grad.dtype == torch.bfloat16


# -- sdpa backend: exact against the reference ------------------------------------------------


def qkv(n, m, d, heads=4, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, heads, n, d, generator=gen),
        torch.randn(batch, heads, m, d, generator=gen),
        torch.randn(batch, heads, m, d, generator=gen),
    )


@pytest.mark.parametrize("d", [101, 133, 197])
@pytest.mark.parametrize("budget", [None, 1 << 20], ids=["one_call", "many_chunks"])
def test_sdpa_matches_reference(d, budget):
    q, k, v = qkv(45 * 61, 23 * 31, d)  # 45x61 queries, 23x31 keys, batch 2, 4 heads
    scale = 1.0 / math.sqrt(d)
    want = reference_attention(q, k, v, scale)
    if budget is None:
        got = sdpa_attention(q, k, v, scale)
    else:
        assert math.ceil(q.shape[2] / chunk_length(2, 4, k.shape[2], 4, budget)) > 100  # really chunked
        got = sdpa_attention(q, k, v, scale, budget_bytes=budget)
    assert (got - want).abs().max().item() <= 1e-5


def test_sdpa_gradients_match_reference_when_chunked():
    q, k, v = qkv(300, 23 * 31, 101, heads=2)
    do = torch.randn_like(q)
    grads = []
    for fn in (lambda a, b, c: sdpa_attention(a, b, c, budget_bytes=1 << 18), reference_attention):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        grads.append(torch.autograd.grad(fn(*leaves), leaves, do))
    for got, want in zip(*grads):
        assert (got - want).abs().max().item() <= 1e-5


def test_run_backend_and_dispatcher_budget_reach_sdpa():
    q, k, v = qkv(500, 713, 101, heads=2)
    want = reference_attention(q, k, v)
    assert (run_backend("sdpa", q, k, v, None, 1 << 18) - want).abs().max().item() <= 1e-5
    assert (AttentionDispatcher("sdpa")(q, k, v) - want).abs().max().item() <= 1e-5
    with pytest.raises(BackendUnavailableError, match="unknown concrete"):
        run_backend("auto", q, k, v)
