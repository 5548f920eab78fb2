"""Our DINOv2 ViT against the official fixtures (FACTS.md section 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from loftup.backbones import VITB14, VITG14, VITL14, VITS14, DinoViT, ViTConfig
from loftup.backbones.vit import hf_to_official, official_to_hf
from loftup.errors import CheckpointError, InputError

TINY = ViTConfig(embed_dim=64, depth=2, num_heads=2, mlp_ratio=4)
VARIANTS = {"dinov2_tiny": TINY, "dinov2_tiny_reg4": TINY.with_registers()}
ATOL = 2e-5  # FACTS.md 4.5: float32 re-implementation


def _tiny(official_dir, name: str) -> DinoViT:
    model = DinoViT(VARIANTS[name]).eval()
    model.load_state_dict(load_file(official_dir / f"{name}.safetensors"), strict=True)
    return model


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("case", range(4))
def test_matches_official_fixture(official_dir, name, case):
    model = _tiny(official_dir, name)
    io = np.load(official_dir / f"{name}_io.npz")
    img = torch.from_numpy(io[f"case{case}_img"])
    with torch.no_grad():
        out = model.forward_features(img)
        pos = model.pos_embed_for(*img.shape[-2:])
        feats = model(img)
    keys = ["x_norm_clstoken", "x_norm_patchtokens"]
    if VARIANTS[name].num_register_tokens:
        keys.append("x_norm_regtokens")
    for key in keys:
        ref = torch.from_numpy(io[f"case{case}_{key}"])
        assert out[key].shape == ref.shape
        assert (out[key] - ref).abs().max() <= ATOL, key
    ref_pos = torch.from_numpy(io[f"case{case}_pos_embed_used"])
    assert (pos - ref_pos).abs().max() <= ATOL
    # forward() is the patch tokens as a feature map (B, C, H/14, W/14).
    B, _, H, W = img.shape
    tokens = out["x_norm_patchtokens"]
    assert feats.shape == (B, 64, H // 14, W // 14)
    assert torch.equal(feats, tokens.reshape(B, H // 14, W // 14, 64).permute(0, 3, 1, 2))
    n_tokens = 1 + VARIANTS[name].num_register_tokens + tokens.shape[1]
    assert out["x_prenorm"].shape == (B, n_tokens, 64)


def test_native_grid_skips_interpolation(official_dir):
    model = _tiny(official_dir, "dinov2_tiny")
    assert model.pos_embed_for(518, 518) is model.pos_embed


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg4"])
def test_full_size_key_layout(official_dir, name):
    ref = json.loads((official_dir / "dinov2_vits14_keys.json").read_text())[name]
    cfg = VITS14.with_registers() if name.endswith("reg4") else VITS14
    with torch.device("meta"):
        model = DinoViT(cfg)
    sd = model.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, v) for k, v in ref["keys"].items()]
    assert sum(v.numel() for v in sd.values()) == ref["params"]


def test_tiny_key_layout(official_dir):
    ref = json.loads((official_dir / "dinov2_tiny_keys.json").read_text())
    for name, cfg in VARIANTS.items():
        sd = DinoViT(cfg).state_dict()
        assert {k: list(v.shape) for k, v in sd.items()} == ref[name]["keys"]
        assert sum(v.numel() for v in sd.values()) == ref[name]["params"]


@pytest.mark.parametrize(
    "cfg, depth, dim, ffn_keys",
    [
        (VITB14, 12, 768, {"mlp.fc1.weight": (3072, 768)}),
        (VITL14, 24, 1024, {"mlp.fc1.weight": (4096, 1024)}),
        # ViT-g: SwiGLU, hidden int(6144 * 2 / 3) rounded up to a multiple of 8 = 4096.
        (VITG14, 40, 1536, {"mlp.w12.weight": (8192, 1536), "mlp.w3.weight": (1536, 4096)}),
    ],
)
def test_larger_sizes(cfg, depth, dim, ffn_keys):
    with torch.device("meta"):
        sd = DinoViT(cfg).state_dict()
    assert sd["pos_embed"].shape == (1, 1370, dim)
    assert f"blocks.{depth - 1}.ls2.gamma" in sd and f"blocks.{depth}.norm1.weight" not in sd
    for key, shape in ffn_keys.items():
        assert sd[f"blocks.0.{key}"].shape == shape
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * dim, dim)


def _hf_by_hand(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The Hugging Face Dinov2Model layout, written out independently of the converter."""
    hf = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    if "register_tokens" in sd:
        hf["embeddings.register_tokens"] = sd["register_tokens"]
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        C = sd[b + "norm1.weight"].shape[0]
        for kind in ("weight", "bias"):
            qkv = sd[b + f"attn.qkv.{kind}"]
            for j, part in enumerate(("query", "key", "value")):
                hf[h + f"attention.attention.{part}.{kind}"] = qkv[j * C : (j + 1) * C]
            hf[h + f"attention.output.dense.{kind}"] = sd[b + f"attn.proj.{kind}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                hf[h + f"{n}.{kind}"] = sd[b + f"{n}.{kind}"]
        hf[h + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        hf[h + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    return hf


@pytest.mark.parametrize("name", list(VARIANTS))
def test_hf_layout_round_trip(official_dir, name):
    sd = load_file(official_dir / f"{name}.safetensors")
    hf = _hf_by_hand(sd, depth=2)
    back = hf_to_official(hf)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    to_hf = official_to_hf(sd)
    assert to_hf.keys() == hf.keys()
    assert all(torch.equal(to_hf[k], hf[k]) for k in hf)
    DinoViT(VARIANTS[name]).load_state_dict(back, strict=True)


def test_hf_swiglu_names():
    sd = {"blocks.0.mlp.w12.weight": torch.zeros(1), "blocks.0.mlp.w3.bias": torch.zeros(1)}
    hf = official_to_hf(sd)
    assert set(hf) == {
        "encoder.layer.0.mlp.weights_in.weight",
        "encoder.layer.0.mlp.weights_out.bias",
    }
    assert hf_to_official(hf).keys() == sd.keys()


def test_hf_incomplete_qkv_is_a_checkpoint_error():
    hf = {"encoder.layer.0.attention.attention.query.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match="query, key and value"):
        hf_to_official(hf)


def test_bad_input_size(official_dir):
    model = _tiny(official_dir, "dinov2_tiny")
    with pytest.raises(InputError, match="multiple of the patch size 14"):
        model(torch.zeros(1, 3, 30, 28))
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(3, 28, 28))
