"""LiFT and FeatUp-JBU against the official code's fixtures (tests/fixtures/baselines/FACTS_BASELINES.md),
their full-size key layouts, train vs eval mode, and their checkpoints (official layouts, ours,
wrong prefix / kind / channels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from loftup.errors import CheckpointError, ConfigError, InputError
from loftup.kernels.adaptive_conv import adaptive_conv_torch
from loftup.model import FeatUpJBU, JbuConfig, LiFT, LiftConfig, build_upsampler, kind_of, load_checkpoint, save_checkpoint

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "baselines"
LIFT_ATOL = 2e-5  # FACTS_BASELINES.md section 5: suggested float32 tolerances
JBU_ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def t(npz, key):
    return torch.from_numpy(npz[key])


@pytest.fixture(scope="module")
def lift_io():
    return np.load(FIX / "lift_tiny_io.npz")


@pytest.fixture(scope="module")
def jbu_io():
    return np.load(FIX / "featup_jbu_tiny_io.npz")


@pytest.fixture(scope="module")
def lift():
    return build_upsampler("lift", 32, weights=FIX / "lift_tiny.safetensors")


@pytest.fixture(scope="module")
def jbu():
    return build_upsampler("featup_jbu", 32, weights=FIX / "featup_jbu_tiny.safetensors", conv_backend="torch")


def max_err(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# -- LiFT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [0, 1, 2])
def test_lift_fixture_outputs(lift, lift_io, case):
    lr, img = t(lift_io, f"case{case}_lr"), t(lift_io, f"case{case}_img")
    with torch.no_grad():
        out = lift(lr, img)
    assert out.shape[-2:] == (2 * lr.shape[-2], 2 * lr.shape[-1])  # always 2x the grid
    assert max_err(out, t(lift_io, f"case{case}_out")) <= LIFT_ATOL


def test_lift_fixture_intermediates(lift, lift_io):
    lr, img = t(lift_io, "case1_lr"), t(lift_io, "case1_img")
    h, w = lr.shape[-2:]
    with torch.no_grad():
        conv = lift.image_convs_1(img)
        a, b = lift.image_branch(img, h, w)
        up_in = torch.cat([lr, b], 1)
        conv_t = lift.up1.up(up_in)
        conv1 = lift.up1.conv_1(torch.cat([conv_t, a], 1))
    for name, ours in (("imgs1_conv", conv), ("imgs1_pooled", a), ("imgs2", b), ("up_in", up_in), ("convT", conv_t), ("conv1", conv1)):
        assert max_err(ours, t(lift_io, f"case1_inter_{name}")) <= LIFT_ATOL, name


def test_lift_train_mode_differs_and_inference_is_eval(lift_io):
    """The stored train-mode output (BatchNorm on batch statistics) is what a forgotten eval()
    would give: far from the eval output. build_upsampler returns eval mode."""
    model = build_upsampler("lift", 32, weights=FIX / "lift_tiny.safetensors")
    assert not model.training
    lr, img = t(lift_io, "case0_lr"), t(lift_io, "case0_img")
    train_out, eval_out = t(lift_io, "case0_out_trainmode"), t(lift_io, "case0_out")
    assert max_err(train_out, eval_out) > 1.0  # the trap: up to ~6 on this fixture
    with torch.no_grad():
        assert max_err(model(lr, img), eval_out) <= LIFT_ATOL
        assert max_err(model.train()(lr, img), train_out) <= LIFT_ATOL  # we reproduce the trap when asked


def test_lift_full_size_layout_on_meta():
    ref = json.loads((FIX / "lift_dinov2s_keys.json").read_text())
    with torch.device("meta"):
        model = LiFT(LiftConfig(feat_dim=384, patch_size=14))
    sd = model.state_dict()
    assert list(sd) == ref["order"]
    assert {k: list(v.shape) for k, v in sd.items()} == {k: v["shape"] for k, v in ref["keys"].items()}
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] == 1_187_280


# -- FeatUp JBU ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_jbu_fixture_outputs(jbu, jbu_io, case):
    lr, g = t(jbu_io, f"case{case}_lr"), t(jbu_io, f"case{case}_guidance")
    with torch.no_grad():
        out = jbu(lr, g)
    assert out.shape[-2:] == (16 * lr.shape[-2], 16 * lr.shape[-1])  # always 16x the grid
    assert max_err(out, t(jbu_io, f"case{case}_out")) <= JBU_ATOL


def test_jbu_fixture_intermediates(jbu, jbu_io):
    lr, g = t(jbu_io, "case1_lr"), t(jbu_io, "case1_guidance")
    x = lr
    with torch.no_grad():
        for k, stage in enumerate(jbu.stages, start=1):
            h, w = x.shape[-2:]
            guidance = jbu.stage_guidance(g, h, w, k - 1)
            assert max_err(guidance, t(jbu_io, f"case1_inter_s{k}_guidance")) <= JBU_ATOL
            if k <= 2:
                assert max_err(stage.spatial_kernel("cpu"), t(jbu_io, f"case1_inter_s{k}_spatial_kernel")) <= JBU_ATOL
                assert max_err(stage.range_kernel(guidance), t(jbu_io, f"case1_inter_s{k}_range_kernel")) <= JBU_ATOL
                assert max_err(stage.kernel(guidance), t(jbu_io, f"case1_inter_s{k}_kernel")) <= JBU_ATOL
                padded = stage.padded_source(x, guidance.shape[-2:])
                assert max_err(padded, t(jbu_io, f"case1_inter_s{k}_hr_source_padded")) <= JBU_ATOL
            x = stage(x, guidance)
            assert max_err(x, t(jbu_io, f"case1_inter_s{k}_out")) <= JBU_ATOL


@pytest.mark.parametrize("stage", [1, 2])
def test_adaptive_conv_is_bit_exact_to_featup_operator(jbu_io, stage):
    """Given the official kernel and padded source, the ordered 49-tap sum gives FeatUp's CPU
    operator's stage output bit for bit - also when computed in row bands."""
    src, ker = t(jbu_io, f"case1_inter_s{stage}_hr_source_padded"), t(jbu_io, f"case1_inter_s{stage}_kernel")
    want = t(jbu_io, f"case1_inter_s{stage}_out")
    assert torch.equal(adaptive_conv_torch(src, ker), want)
    assert torch.equal(adaptive_conv_torch(src, ker, budget_bytes=1), want)  # one row per band


def test_adaptive_conv_bands_bound_memory_and_keep_gradients():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(1, 6, 13, 10, generator=g, requires_grad=True)
    ker = torch.randn(1, 7, 4, 7, 7, generator=g, requires_grad=True)
    whole = adaptive_conv_torch(src, ker)
    banded = adaptive_conv_torch(src, ker, budget_bytes=2 * 6 * 4 * 4 * 2)  # two rows per band
    assert torch.equal(whole, banded)
    gw = torch.autograd.grad(whole.square().sum(), (src, ker))
    gb = torch.autograd.grad(banded.square().sum(), (src, ker))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(gw, gb))  # halo rows add in another order
    with pytest.raises(InputError, match="does not fit kernel"):
        adaptive_conv_torch(src[:, :, :-1], ker)


def test_jbu_train_mode_is_random_inference_is_eval(jbu_io):
    model = build_upsampler("featup_jbu", 32, weights=FIX / "featup_jbu_tiny.safetensors")
    assert not model.training
    lr, g = t(jbu_io, "case1_lr"), t(jbu_io, "case1_guidance")
    with torch.no_grad():
        torch.manual_seed(0)
        a = model.train()(lr, g)
        b = model(lr, g)
        model.eval()
        assert max_err(a, b) > 1e-3 and max_err(a, t(jbu_io, "case1_out")) > 1e-3  # dropout: random in train mode
        assert max_err(model(lr, g), t(jbu_io, "case1_out")) <= JBU_ATOL


def test_jbu_full_size_layout_on_meta():
    ref = json.loads((FIX / "featup_jbu_dinov2s_keys.json").read_text())
    with torch.device("meta"):
        model = FeatUpJBU(JbuConfig(feat_dim=384))
    sd = model.state_dict()
    assert list(sd) == ref["order"]
    assert {k: list(v.shape) for k, v in sd.items()} == {k: v["shape"] for k, v in ref["keys"].items()}
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] == 172_772


def test_jbu_needs_two_cells():
    model = build_upsampler("featup_jbu", 8)
    with pytest.raises(InputError, match="at least 2x2"):
        model(torch.randn(1, 8, 1, 3), torch.randn(1, 3, 16, 48))


# -- checkpoints ----------------------------------------------------------------------------
def test_official_lightning_featup_checkpoint_loads(tmp_path, jbu_io):
    """FeatUp's released file: a Lightning checkpoint, JBU under state_dict['upsampler.*'], next
    to backbone, ChannelNorm, downsampler and scale_net keys."""
    sd = load_file(FIX / "featup_jbu_tiny.safetensors")
    ckpt = {"state_dict": {**{f"upsampler.{k}": v for k, v in sd.items()},
                           "model.model.blocks.0.weight": torch.zeros(2), "downsampler.w": torch.ones(14, 14),
                           "scale_net.net.weight": torch.zeros(1, 32, 1, 1)}, "epoch": 0}
    torch.save(ckpt, tmp_path / "dinov2_jbu_stack_cocostuff.ckpt")
    model = load_checkpoint(tmp_path / "dinov2_jbu_stack_cocostuff.ckpt", feat_dim=32)
    assert kind_of(model) == "featup_jbu" and not model.training and not model.cfg.use_norm
    with torch.no_grad():
        out = model(t(jbu_io, "case0_lr"), t(jbu_io, "case0_guidance"))
    assert max_err(out, t(jbu_io, "case0_out")) <= JBU_ATOL
    # the use_norm release: model.1.norm.* is FeatUp's ChannelNorm in front of the JBU
    ckpt["state_dict"]["model.1.norm.weight"] = torch.ones(32)
    ckpt["state_dict"]["model.1.norm.bias"] = torch.zeros(32)
    torch.save(ckpt, tmp_path / "norm.ckpt")
    assert load_checkpoint(tmp_path / "norm.ckpt").cfg.use_norm


def test_wrong_prefix_is_an_error_not_a_silent_partial_load(tmp_path):
    sd = load_file(FIX / "featup_jbu_tiny.safetensors")
    torch.save({"state_dict": {f"model.upsampler.{k}": v for k, v in sd.items()}}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="under prefix 'model.upsampler.', expected no prefix or 'upsampler.'"):
        load_checkpoint(tmp_path / "bad.ckpt")
    lift_sd = load_file(FIX / "lift_tiny.safetensors")
    save_file({f"upsampler.{k}": v for k, v in lift_sd.items()}, str(tmp_path / "lift_bad.safetensors"))
    with pytest.raises(CheckpointError, match="LiFT keys are under prefix 'upsampler.', expected no prefix"):
        load_checkpoint(tmp_path / "lift_bad.safetensors")


def test_official_lift_pth_with_ddp_prefix(tmp_path, lift_io):
    sd = load_file(FIX / "lift_tiny.safetensors")
    torch.save({f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp_path / "lift.pth")
    model = load_checkpoint(tmp_path / "lift.pth", kind="lift")
    with torch.no_grad():
        assert max_err(model(t(lift_io, "case0_lr"), t(lift_io, "case0_img")), t(lift_io, "case0_out")) <= LIFT_ATOL


def test_wrong_kind_channels_and_missing_keys(tmp_path, official_dir):
    with pytest.raises(CheckpointError, match="holds a lift upsampler, not featup_jbu; pass --upsampler lift"):
        build_upsampler("featup_jbu", 32, weights=FIX / "lift_tiny.safetensors")
    with pytest.raises(CheckpointError, match="holds a loftup upsampler, not lift"):
        load_checkpoint(official_dir / "loftup_tiny.safetensors", kind="lift")
    with pytest.raises(CheckpointError, match="upsamples 32-channel features but the backbone gives 384"):
        build_upsampler("lift", 384, weights=FIX / "lift_tiny.safetensors")
    sd = load_file(FIX / "featup_jbu_tiny.safetensors")
    save_file({k: v for k, v in sd.items() if not k.startswith("up4.")}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(tmp_path / "partial.safetensors")
    save_file({"foo": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="holds no LiFT weights"):
        load_checkpoint(tmp_path / "foreign.safetensors", kind="lift")
    with pytest.raises(ConfigError, match="even number of feature channels"):
        build_upsampler("lift", 33)
    with pytest.raises(ConfigError, match="unknown upsampler kind 'lfit'.*did you mean 'lift'"):
        build_upsampler("lfit", 32)


@pytest.mark.parametrize("kind,config", [("lift", {"patch_size": 16}), ("featup_jbu", {"use_norm": True})])
def test_our_format_records_the_kind(tmp_path, kind, config):
    torch.manual_seed(0)
    model = build_upsampler(kind, 16, backbone="tiny", **config)
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"role": "test"})
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["kind"] == kind and sidecar["config"]["backbone"] == "tiny"
    back = load_checkpoint(path)
    assert kind_of(back) == kind and back.cfg == model.cfg and back.meta["role"] == "test"
    g = torch.Generator().manual_seed(1)
    lr, img = torch.randn(1, 16, 3, 4, generator=g), torch.randn(1, 3, 40, 50, generator=g)
    with torch.no_grad():
        assert torch.equal(back(lr, img), model(lr, img))
    assert kind_of(load_checkpoint(path, kind=kind)) == kind
    with pytest.raises(CheckpointError, match=f"holds a {kind} upsampler, not loftup"):
        load_checkpoint(path, kind="loftup")


def test_loftup_files_load_unchanged(official_dir, tmp_path):
    model = load_checkpoint(official_dir / "loftup_tiny.safetensors")
    assert kind_of(model) == "loftup" and model.cfg.feat_dim == 32
    ours = load_checkpoint(save_checkpoint(model, tmp_path / "l.safetensors"), kind="loftup")
    assert kind_of(ours) == "loftup" and ours.cfg == model.cfg


def test_tap_walk_gradients_equal_autograd():
    """The adaptive convolution's and the range logits' hand-written backward (one in-place gradient
    buffer) equal autograd through the plain slicing version."""
    from loftup.kernels.adaptive_conv import tap_dots

    g = torch.Generator().manual_seed(3)
    src = torch.randn(2, 5, 10, 11, generator=g, requires_grad=True)
    ker = torch.randn(2, 4, 5, 7, 7, generator=g, requires_grad=True)
    query = torch.randn(2, 5, 4, 5, generator=g, requires_grad=True)
    go = torch.randn(2, 5, 4, 5, generator=g)
    plain_conv = sum(ker[..., i, j].unsqueeze(1) * src[:, :, i : i + 4, j : j + 5] for i in range(7) for j in range(7))
    plain_dots = torch.stack([(src[:, :, i : i + 4, j : j + 5] * query).sum(1) for i in range(7) for j in range(7)], 1)
    gl = torch.randn_like(plain_dots)
    for ours, plain, grad_out, inputs in ((adaptive_conv_torch(src, ker), plain_conv, go, (src, ker)),
                                          (tap_dots(src, query, 7), plain_dots, gl, (src, query))):
        assert torch.allclose(ours, plain, atol=1e-5)
        a = torch.autograd.grad(ours, inputs, grad_out)
        b = torch.autograd.grad(plain, inputs, grad_out)
        assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))
