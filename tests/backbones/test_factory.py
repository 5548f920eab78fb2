"""`build_backbone(family, weights=None, **config)`: every family from a config, presets over it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from loftup.backbones import BACKBONES, FAMILIES, build_backbone, create_backbone
from loftup.errors import ConfigError

FIXTURES2 = Path(__file__).parents[1] / "fixtures" / "backbones2"
SMALL = dict(embed_dim=32, depth=1, num_heads=2)


@pytest.mark.parametrize(
    "name, family, config",
    [
        ("dinov2_tiny", "dinov2", dict(embed_dim=64, depth=2, num_heads=2)),
        ("dinov2_tiny_reg4", "dinov2", dict(embed_dim=64, depth=2, num_heads=2, num_register_tokens=4)),
        ("clip_tiny", "clip", dict(embed_dim=64, depth=2, num_heads=2, output_dim=32)),
    ],
)
def test_dinov2_and_clip_families_match_their_fixtures(official_dir, name, family, config):
    bb = build_backbone(family, official_dir / f"{name}.safetensors", **config)
    io = np.load(official_dir / f"{name}_io.npz")
    key = "x_norm_patchtokens" if family == "dinov2" else "patch_feats"
    img = torch.from_numpy(io["case1_img"])
    with torch.no_grad():
        out = bb(img)
    ref = torch.from_numpy(io[f"case1_{key}"])
    if family == "dinov2":  # tokens (B, N, C) -> (B, C, h, w)
        B, _, H, W = img.shape
        ref = ref.reshape(B, H // 14, W // 14, -1).permute(0, 3, 1, 2)
    assert (out - ref).abs().max() <= 2e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_any_width_and_depth_random(family):
    extra = {"output_dim": 24} if family == "clip" else {"max_img_size": 64} if family == "radio" else {}
    bb = build_backbone(family, name=f"{family}_small", seed=2, **SMALL, **extra)
    p = bb.patch_size
    assert (bb.name, bb.weights_source) == (f"{family}_small", "random init (seed 2)")
    assert not bb.training and not any(t.requires_grad for t in bb.parameters())
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 2 * p, 3 * p))
    assert out.shape == (2, bb.embed_dim, 2, 3) and torch.isfinite(out).all()
    assert bb.embed_dim == (24 if family == "clip" else 32)
    assert len(bb.mean) == len(bb.std) == 3


def test_every_registry_row_is_a_preset_over_the_factory():
    """Each row's config goes through build_backbone's config checker unchanged (meta device)."""
    from loftup.backbones.factory import family_config

    for name, spec in BACKBONES.items():
        assert spec.arch in FAMILIES, name
        assert family_config(spec.arch, **dataclasses.asdict(spec.config)) == spec.config, name


def test_state_dict_weights_and_unknown_family():
    sd = build_backbone("radio", **SMALL, max_img_size=64).model.state_dict()
    again = build_backbone("radio", sd, **SMALL, max_img_size=64)
    assert again.weights_source == "state dict"
    with pytest.raises(ConfigError, match="unknown backbone family 'radoi'.*did you mean 'radio'"):
        build_backbone("radoi")
    with pytest.raises(ConfigError, match="normalization"):
        create_backbone("radio_v2.5_b", weights="random", normalization="imagenet")
