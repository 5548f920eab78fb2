"""Triton attention configs: per-architecture defaults, pruning by estimate, the on-disk tuning
cache, and the fallback chain (next config, then sdpa, warned once) - with launch failures
simulated on CPU (the kernels run under TRITON_INTERPRET=1)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from loftup.kernels import reference_attention
from loftup.kernels.attention_table import RESULTS_H200
from loftup.kernels import triton_attention as ta
from loftup.kernels.triton_attention import KernelConfig, default_config, estimate_resources, fits, triton_attention

pytestmark = pytest.mark.skipif(not ta._interpreted(), reason="needs TRITON_INTERPRET=1 before triton import")

H200 = json.loads((Path(__file__).resolve().parents[2] / RESULTS_H200).read_text())  # the first GPU run's figures
H200_SMEM = H200["device"]["smem_optin_bytes_per_block"]
A100_SMEM = 166912


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch, tmp_path):
    monkeypatch.setattr(ta, "_WORKING", {})
    monkeypatch.setattr(ta, "_UNLAUNCHABLE", set())
    monkeypatch.setattr(ta, "_RESOURCES", {})
    monkeypatch.setattr(ta, "_WARNED", set())
    monkeypatch.setattr(ta, "_TUNED", None)
    monkeypatch.setenv("LOFTUP_CACHE", str(tmp_path))


def out_of_resources(required=278528):
    from triton.runtime.errors import OutOfResources

    return OutOfResources(required, H200_SMEM, "shared memory")


def small_qkv(grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, 24, generator=gen) for n in (150, 40, 40))
    return [t.requires_grad_(grad) for t in (q, k, v)]


def fail_configs(monkeypatch, kernels: set[str], labels: set[str] | None = None):
    """Make launches of `kernels` raise OutOfResources (only configs in `labels`, if given)."""
    real = ta._run_config
    names = {"fwd": ta._attn_fwd_kernel, "dq": ta._attn_bwd_dq_kernel, "dkdv": ta._attn_bwd_dkdv_kernel}
    tried = []

    def run(raw, grid, args, consts, cfg):
        kernel = next(k for k, fn in names.items() if fn is raw)
        tried.append((kernel, cfg.label))
        if kernel in kernels and (labels is None or cfg.label in labels):
            raise out_of_resources()
        return real(raw, grid, args, consts, cfg)

    monkeypatch.setattr(ta, "_run_config", run)
    return tried


# -- defaults and pruning --------------------------------------------------------------------------
@pytest.mark.parametrize("row", H200["triton_configs"]["search_picks"], ids=lambda r: str(r["output"]))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sm90_defaults_are_the_h200_search_picks(row, dtype):
    """The defaults for sm90 at D_PAD 128 are what the H200 search picked (the committed results file)."""
    n_bucket = ta._n_bucket(row["queries"])
    for kernel in ("fwd", "dq", "dkdv"):
        cfg, origin = default_config(kernel, "sm90", dtype, 128, n_bucket, H200_SMEM)
        pick = row[kernel]
        got = {"block_n": cfg.block_n, "block_m": cfg.block_m, "warps": cfg.num_warps, "stages": cfg.num_stages}
        assert {k: v for k, v in got.items() if pick[k] is not None} == {k: v for k, v in pick.items() if v is not None}, kernel
        assert origin == "measured"


@pytest.mark.parametrize("arch,limit", [("sm90", H200_SMEM), ("sm80", A100_SMEM)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d_pad", [128, 256])
@pytest.mark.parametrize("kernel", ["fwd", "dq", "dkdv"])
def test_only_the_h200_search_picks_are_called_measured(arch, limit, dtype, d_pad, kernel):
    # The H200 search measured sm90, 16-bit inputs, D_PAD 128 only; every other default is an estimate and says so.
    _, origin = default_config(kernel, arch, dtype, d_pad, 1 << 18, limit)
    assert origin == ("measured" if (arch, dtype, d_pad) == ("sm90", torch.bfloat16, 128) else "estimate")


def test_when_nothing_fits_the_smallest_config_is_used_and_said():
    cfg, origin = default_config("fwd", "sm80", torch.float32, 256, 1 << 18, smem_limit=1024)
    assert cfg == ta.TUNING_SPACE["fwd"][-1] and origin == "estimate (nothing fits; smallest)"


def test_the_config_that_crashed_on_the_h200_is_pruned():
    # fp32, head dim 197 (D_PAD 256), backward with 64x64 tiles, 4 warps, 2 stages: Triton needed
    # 278,528 B of shared memory against 232,448 (the committed results file). The estimate must refuse it.
    (crash,) = H200["triton_configs"]["launch_failures"]
    c = crash["config"]
    crashed = KernelConfig(c["block_n"], c["block_m"], c["warps"], c["stages"])
    assert (crash["dtype"], crash["head_dim"], crash["pass"]) == ("fp32", 197, "backward")
    for kernel in ("dq", "dkdv"):
        est = estimate_resources(kernel, crashed, 256, 4)["smem_bytes"]
        assert est >= crash["required_bytes"] and not fits(kernel, crashed, 256, 4, crash["limit_bytes"])


def test_label_round_trip():
    cfg = KernelConfig(128, 64, 8, 3)
    assert cfg.label == "128x64/w8/s3" and KernelConfig.parse(cfg.label) == cfg


# -- fallback chain --------------------------------------------------------------------------------
def test_failed_config_falls_back_to_the_next_with_one_warning(monkeypatch):
    tried = fail_configs(monkeypatch, {"fwd"}, {"128x128/w4/s2"})  # the first candidate
    q, k, v = small_qkv()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        outs = [triton_attention(q, k, v) for _ in range(2)]
    want = reference_attention(q, k, v)
    assert all((o - want).abs().max().item() <= 2e-5 for o in outs)
    fwd = [label for kernel, label in tried if kernel == "fwd"]
    assert fwd[0] == "128x128/w4/s2" and fwd[1] != fwd[0] and fwd[2] == fwd[1]  # the working one is remembered
    messages = [str(r.message) for r in record]
    assert len(messages) == 1 and "failed to launch" in messages[0] and "OutOfResources" in messages[0]
    assert ta.resource_report()[0]["config"] == fwd[1]


def test_no_config_launches_forward_falls_back_to_sdpa(monkeypatch):
    tried = fail_configs(monkeypatch, {"fwd"})
    q, k, v = small_qkv(grad=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = triton_attention(q, k, v)
        out2 = triton_attention(q, k, v)
    want = reference_attention(q, k, v)
    assert (out - want).abs().max().item() <= 1e-5 and torch.equal(out, out2)
    n_configs = len(tried)
    assert n_configs == len({label for _, label in tried}) >= 2  # each tried once, none retried
    sdpa_warnings = [r for r in record if "computing this attention with sdpa" in str(r.message)]
    assert len(sdpa_warnings) == 1
    out.sum().backward()  # gradients through sdpa
    assert q.grad is not None and k.grad is not None


def test_backward_without_a_launchable_config_uses_sdpa_gradients(monkeypatch):
    fail_configs(monkeypatch, {"dkdv"})
    q, k, v = small_qkv(grad=True)
    do = torch.randn_like(q)
    with pytest.warns(UserWarning, match="with sdpa instead"):
        got = torch.autograd.grad(triton_attention(q, k, v), (q, k, v), do)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(reference_attention(*leaves), leaves, do)
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= 1e-5


def test_real_errors_are_not_swallowed(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a bug, not a launch failure")

    monkeypatch.setattr(ta, "_run_config", broken)
    with pytest.raises(ValueError, match="a bug"):
        triton_attention(*small_qkv())


# -- tuning: off by default, small space, cached on disk --------------------------------------------
def test_autotune_switch(monkeypatch):
    assert not ta.autotune_enabled()  # interpreter: never
    monkeypatch.setattr(ta, "_interpreted", lambda: False)
    monkeypatch.setattr(ta, "_AUTOTUNE", None)
    monkeypatch.delenv("LOFTUP_TRITON_AUTOTUNE", raising=False)
    assert not ta.autotune_enabled()
    monkeypatch.setenv("LOFTUP_TRITON_AUTOTUNE", "1")
    assert ta.autotune_enabled()
    ta.set_autotune(False)
    assert not ta.autotune_enabled()


def test_tuning_picks_the_fastest_fitting_config_and_caches_it(monkeypatch, tmp_path):
    import triton.testing

    monkeypatch.setattr(ta, "_interpreted", lambda: False)
    q = torch.empty(1, 4, 448 * 448, 104, dtype=torch.bfloat16)
    consts = {"N_BUCKET": 1 << 18, "HEAD_DIM": 104, "D_PAD": 128, "DOT_PRECISION": "tf32"}
    key = ta._launch_key("fwd", q, consts, 1024)
    candidates = ta._candidates("fwd", key, q.dtype, q.device)
    assert candidates[0].label == "128x128/w8/s2"  # the default (no tuning yet)
    timings = {"128x128/w8/s2": 2.3, "128x64/w8/s3": 1.9, "64x64/w4/s2": 2.8}
    timed = []

    def fake_bench(fn, warmup, rep):
        label = next(c.label for c in candidates if c.label == fake_bench.current)
        timed.append(label)
        return timings.get(label, 9.0)

    def tune_one(raw, grid, args, consts_, cfg):
        fake_bench.current = cfg.label

    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, warmup, rep: (fn(), fake_bench(fn, warmup, rep))[1])
    monkeypatch.setattr(ta, "_run_config", tune_one)
    ta._tune("fwd", key, None, lambda c: (1,), (), consts, candidates)
    assert ta._WORKING[key].label == "128x64/w8/s3"
    assert set(timed) == {c.label for c in candidates}  # only configs that fit were timed
    path = ta.tuning_cache_path("interpreter")
    assert path.parent == tmp_path and "128x64/w8/s3" in path.read_text()
    monkeypatch.setattr(ta, "_WORKING", {})
    monkeypatch.setattr(ta, "_TUNED", None)  # a new process reads the cache from disk
    assert ta._candidates("fwd", key, q.dtype, q.device)[0].label == "128x64/w8/s3"
