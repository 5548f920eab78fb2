"""Our SigLIP / SigLIP2 trunk against the official open_clip/timm fixtures (FACTS_BACKBONES2 s3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from loftup.backbones import SIGLIP_B16, SigLIPConfig, SigLIPViT, build_backbone, create_backbone, get_spec
from loftup.backbones.factory import normalisation
from loftup.errors import CheckpointError, ConfigError, InputError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "backbones2"
TINY = dict(embed_dim=64, depth=2, num_heads=2)
ATOL = 2e-5
NAMES = ("siglip_tiny", "siglip2_tiny")
MAX_ERR: dict[str, float] = {}  # printed at the end (pytest -s) for the record


@pytest.fixture(scope="module", params=NAMES)
def tiny(request):
    """(fixture name, Backbone built through the public factory from the fixture file, io arrays)."""
    name = request.param
    bb = build_backbone("siglip", FIXTURES / f"{name}.safetensors", name=name, **TINY)
    return name, bb, np.load(FIXTURES / f"{name}_io.npz")


def _err(key: str, a: torch.Tensor, b: np.ndarray) -> float:
    assert tuple(a.shape) == b.shape, key
    err = float((a - torch.from_numpy(b)).abs().max())
    MAX_ERR[key] = max(err, MAX_ERR.get(key, 0.0))
    return err


@pytest.mark.parametrize("case", range(4))
def test_matches_official_fixture(tiny, case):
    name, bb, io = tiny
    img = torch.from_numpy(io[f"case{case}_img"])
    vit = bb.model
    with torch.no_grad():
        feats = bb(img)
        p = 16
        pos = vit.position_embedding(img.shape[-2] // p, img.shape[-1] // p)
    assert feats.shape == (img.shape[0], 64, img.shape[2] // p, img.shape[3] // p)
    assert _err(f"{name} feats", feats, io[f"case{case}_feats"]) <= ATOL
    if case == 0:  # native 224x224: the official path, pos_embed used unchanged
        assert torch.equal(pos, vit.pos_embed)
        with torch.no_grad():
            tokens = vit.forward_tokens(img)
            pooled = vit.forward_head(tokens["tokens"])
        assert _err(f"{name} prenorm", tokens["prenorm"], io["case0_prenorm"]) <= ATOL
        assert _err(f"{name} MAP head", pooled, io["case0_map_pooled"]) <= ATOL
    else:
        assert _err(f"{name} pos_embed", pos, io[f"case{case}_pos_embed_used"]) <= ATOL


def test_batch_and_train_mode_do_not_change_results(tiny):
    _, bb, io = tiny
    img = torch.cat([torch.from_numpy(io["case0_img"])] * 2)
    with torch.no_grad():
        a = bb(img)
        bb.model.train()
        b = bb.model(img[:1])
        bb.model.eval()
    assert torch.allclose(a[0], a[1], atol=1e-6) and torch.allclose(a[:1], b, atol=1e-6)


@pytest.mark.parametrize("keys", ["siglip_vitb16_keys.json", "siglip2_vitb16_keys.json"])
def test_full_size_key_layout(keys):
    ref = next(iter(json.loads((FIXTURES / keys).read_text()).values()))
    with torch.device("meta"):
        sd = SigLIPViT(SIGLIP_B16).state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == list(ref["keys"].items())
    assert sum(v.numel() for v in sd.values()) == ref["params"] == 92_884_224
    spec = get_spec("siglip_vitb16")
    assert spec.config == get_spec("siglip2_vitb16").config == SIGLIP_B16


def test_registry_rows_and_normalisation():
    for name in ("siglip_vitb16", "siglip2_vitb16"):
        spec = get_spec(name)
        assert (spec.arch, spec.embed_dim, spec.patch_size) == ("siglip", 768, 16)
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)  # LoftUp's quirk
        assert spec.url.startswith("https://huggingface.co/timm/ViT-B-16-SigLIP")
    from loftup.backbones.registry import cache_name

    # both repos name their file open_clip_pytorch_model.bin: the cache keeps them apart
    names = {cache_name(get_spec(n).url) for n in ("siglip_vitb16", "siglip2_vitb16")}
    assert names == {"ViT-B-16-SigLIP_open_clip_pytorch_model.bin", "ViT-B-16-SigLIP2_open_clip_pytorch_model.bin"}
    assert normalisation("siglip", "native") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_preset_over_the_factory(monkeypatch):
    """A registry row is build_backbone with its config: the tiny fixture through the row."""
    import dataclasses

    import loftup.backbones.registry as registry

    row = registry.BACKBONES["siglip2_vitb16"]
    tiny_row = dataclasses.replace(row, config=SigLIPConfig(**TINY), embed_dim=64)
    monkeypatch.setitem(registry.BACKBONES, "siglip2_vitb16", tiny_row)
    path = FIXTURES / "siglip2_tiny.safetensors"
    bb = create_backbone("siglip2_vitb16", weights=str(path))
    native = create_backbone("siglip2_vitb16", weights=str(path), normalization="native")
    ref = build_backbone("siglip", path, **TINY)
    assert (bb.name, bb.embed_dim, bb.patch_size, bb.weights_source) == ("siglip2_vitb16", 64, 16, str(path))
    assert bb.mean == (0.485, 0.456, 0.406) and native.mean == native.std == (0.5, 0.5, 0.5)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(bb(x), ref(x)) and bb(x).shape == (1, 64, 2, 3)
    with pytest.raises(ConfigError, match="normalization"):
        create_backbone("siglip2_vitb16", weights=str(path), normalization="openai")


def test_open_clip_layout_and_optional_map_head(tmp_path):
    sd = load_file(FIXTURES / "siglip_tiny.safetensors")
    open_clip = {f"visual.trunk.{k}": v for k, v in sd.items()}
    open_clip.update({"text.token_embedding.weight": torch.zeros(4, 8), "logit_scale": torch.zeros(1)})
    full = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(open_clip, full)
    no_head = tmp_path / "trunk_only.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("attn_pool.")}, no_head)
    ref = build_backbone("siglip", sd, **TINY)
    x = torch.randn(1, 3, 48, 32)
    for path in (full, no_head):
        bb = build_backbone("siglip", path, **TINY)
        with torch.no_grad():
            assert torch.equal(bb(x), ref(x))
    assert build_backbone("siglip", no_head, **TINY).model.attn_pool is None


def test_any_multiple_of_16_and_clear_errors(tiny):
    _, bb, _ = tiny
    with torch.no_grad():
        assert bb(torch.zeros(1, 3, 16, 400)).shape == (1, 64, 1, 25)  # pos grid resized, 1 x 25
    with pytest.raises(InputError, match=r"\(100, 224\) is not a positive multiple of the patch size 16"):
        bb(torch.zeros(1, 3, 100, 224))
    with pytest.raises(ConfigError, match="unknown siglip config key 'depht'.*did you mean 'depth'"):
        build_backbone("siglip", depht=2)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        build_backbone("siglip", FIXTURES / "siglip_tiny.safetensors", embed_dim=64, depth=2, num_heads=2, img_size=192)


def test_random_init_is_seeded():
    a = build_backbone("siglip", **{**TINY, "depth": 1}, seed=3)
    b = build_backbone("siglip", **{**TINY, "depth": 1}, seed=3)
    assert a.weights_source == "random init (seed 3)" and not a.training
    assert torch.equal(a.model.pos_embed, b.model.pos_embed) and a.model.pos_embed.std() > 0


@pytest.mark.export
def test_onnx_pipeline_export_with_parity(tmp_path):
    """SigLIP + LoftUp as one ONNX graph with dynamic sizes: the antialiased bicubic resize of
    the position grid (4x4 here, so both directions) is traced as interpolation matrices."""
    from wave2_export import check_report, export_pipeline

    bb = build_backbone("siglip", name="siglip_tiny", embed_dim=32, depth=1, num_heads=2, img_size=64, seed=1)
    check_report(export_pipeline(bb, tmp_path))


def teardown_module():
    print("\nmax abs error vs the official SigLIP fixtures:", {k: f"{v:.2e}" for k, v in sorted(MAX_ERR.items())})
