"""Parity with the unmodified official LoftUp code (fixtures: tests/fixtures/official, FACTS.md 3)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from loftup.model import LoftUp, LoftUpConfig

ATOL = 1e-5  # FACTS.md 3.6: float32 re-implementation with the same op order


@pytest.fixture(scope="module")
def io(official_dir):
    return dict(np.load(official_dir / "loftup_tiny_io.npz"))


def tiny_model(official_dir, minmax: str) -> LoftUp:
    model = LoftUp(LoftUpConfig(feat_dim=32, minmax=minmax, attn_backend="sdpa"))
    model.load_state_dict(load_file(official_dir / "loftup_tiny.safetensors"), strict=True)
    return model.eval()


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("case", ["case0", "case1"])
def test_batch_wide_mode_matches_official(official_dir, io, case):
    model = tiny_model(official_dir, "batch")
    with torch.no_grad():
        out = model(t(io[f"{case}_lr"]), t(io[f"{case}_img"]))
    ref = t(io[f"{case}_out"])
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < ATOL


def test_per_image_mode_matches_official_split_calls(official_dir, io):
    """Per-image scaling on a batch == the official model called on each image alone."""
    model = tiny_model(official_dir, "per_image")
    with torch.no_grad():
        out = model(t(io["case0_lr"]), t(io["case0_img"]))
    assert (out - t(io["case0_out_split"])).abs().max().item() < ATOL
    # and batch-wide scaling really differs on this batch (FACTS: up to 0.848)
    assert (t(io["case0_out"]) - t(io["case0_out_split"])).abs().max().item() > 0.1


@pytest.mark.parametrize("case", ["case0", "case1"])
def test_train_mode_matches_official(official_dir, io, case):
    """In train mode BatchNorm uses batch statistics, as in the official code."""
    model = tiny_model(official_dir, "batch").train()
    with torch.no_grad():
        out = model(t(io[f"{case}_lr"]), t(io[f"{case}_img"]))
    assert (out - t(io[f"{case}_out_trainmode"])).abs().max().item() < 1e-4


def test_intermediates_match_official(official_dir, io):
    model = tiny_model(official_dir, "batch")
    up = model.upsampler
    lr, img = t(io["case1_lr"]), t(io["case1_img"])
    with torch.no_grad():
        lr_n = model.channelnorm(lr)
        assert (lr_n - t(io["case1_inter_lr_channelnorm"])).abs().max() < 1e-6
        scaled = up.fourier_feat[0](img)
        assert torch.equal(scaled, t(io["case1_inter_minmax"]))
        fourier = up.fourier_feat(img)
        assert torch.equal(fourier, t(io["case1_inter_fourier"]))
        in_cl = up.fourier_feat[1](scaled, channels_last=True)  # the CPU variants' layout: the same bits
        assert in_cl.is_contiguous(memory_format=torch.channels_last) and not in_cl.is_contiguous()
        assert torch.equal(in_cl, t(io["case1_inter_fourier"]))
        assert torch.equal(up.lr_pe(lr_n), t(io["case1_inter_lr_pe"]))
        first = up.first_conv(fourier)
        assert (first - t(io["case1_inter_first_conv"])).abs().max() < 1e-5
    for n in (4, 5, 6, 7, 45, 61, 70, 98):
        assert torch.equal(torch.linspace(-1, 1, n), t(io[f"const_linspace_m1_1_{n}"]))


def test_state_dict_layout_matches_official_hub(official_dir):
    spec = json.loads((official_dir / "loftup_dinov2s_keys.json").read_text())
    for key, C in (("C384", 384), ("C512", 512), ("C768", 768)):
        model = LoftUp(LoftUpConfig(feat_dim=C))
        sd = model.state_dict()
        expected = spec[key]["state_dict"]
        assert list(sd) == list(expected)
        for name, meta in expected.items():
            assert list(sd[name].shape) == list(meta["shape"]), name
        assert model.num_parameters() == spec[key]["num_parameters_total"]
