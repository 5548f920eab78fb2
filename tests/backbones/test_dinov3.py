"""Our DINOv3 ViT against the official facebookresearch/dinov3 fixtures and transformers'
DINOv3ViTModel (tests/fixtures/official/DINOV3_FIXTURES.md), its key layouts, rows and errors."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from loftup.backbones import BACKBONES, build_backbone, create_backbone, get_spec
from loftup.backbones.dinov3 import VIT7B16, VITL16, VITS16, DINOv3Config, DINOv3ViT, RopeEmbedding
from loftup.backbones.vit import official_to_hf, rope_rotate
from loftup.errors import CheckpointError, ConfigError, InputError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "official"
ATOL = 2e-5
TINY = dict(embed_dim=16, depth=2, num_heads=2)
VARIANTS = {  # fixture -> our config keys over TINY (the official arguments: DINOV3_FIXTURES.md)
    "dinov3_tiny": dict(mlp_ratio=4, num_register_tokens=0, mask_k_bias=False, norm_eps=1e-6),
    "dinov3_tiny_reg4": dict(mlp_ratio=4),
    "dinov3_tiny_swiglu": dict(mlp_ratio=6, ffn="swiglu"),
    "dinov3_tiny_7b": dict(mlp_ratio=3, ffn="swiglu", swiglu_align=64, qkv_bias=False),
}
HF = ("dinov3_tiny_reg4_hf", "dinov3_tiny_swiglu_hf")
CASES = ("224x224 (training size)", "2x 80x128 (non-square)", "176x176 (not the training size)")
MAX_ERR: dict[tuple[str, str], float] = {}  # (model, case) -> max abs, printed at the end for the record


def decode(half: np.ndarray) -> torch.Tensor:
    """The fixture image: half-resolution uint8, each value over 2x2 pixels, then u8 / 64 - 2."""
    u8 = half.repeat(2, axis=2).repeat(2, axis=3)
    return torch.from_numpy(u8.astype(np.float32) / 64.0 - 2.0)


@pytest.fixture(scope="module")
def images():
    inputs = np.load(FIXTURES / "dinov3_inputs.npz")
    return [decode(inputs[f"case{i}_half_u8"]) for i in range(len(CASES))]


def tiny(name: str, path: Path | None = None, **extra):
    config = {**TINY, **VARIANTS[name.removesuffix("_hf")], **extra}
    return build_backbone("dinov3", path or FIXTURES / f"{name}.safetensors", name=name, **config)


def _err(a: torch.Tensor, b: np.ndarray) -> float:
    assert tuple(a.shape) == b.shape
    return float((a - torch.from_numpy(b)).abs().max())


@pytest.mark.parametrize("name", [*VARIANTS, *HF])
def test_matches_the_official_and_transformers_outputs(name, images):
    bb = tiny(name)
    io = np.load(FIXTURES / f"{name}_io.npz")
    R = bb.model.cfg.num_register_tokens
    for i, img in enumerate(images):
        with torch.no_grad():
            out = bb.model.forward_features(img)
            feats = bb(img)
        errs = [_err(out["x_norm_patchtokens"], io[f"case{i}_patch"]), _err(out["x_norm_clstoken"], io[f"case{i}_cls"])]
        if f"case{i}_storage" in io:
            errs.append(_err(out["x_storage_tokens"], io[f"case{i}_storage"]))
        MAX_ERR[name, CASES[i]] = max(errs)
        assert max(errs) <= ATOL, (name, CASES[i], errs)
        B, _, H, W = img.shape
        assert feats.shape == (B, 16, H // 16, W // 16)  # the patch tokens, (B, C, h, w)
        assert torch.equal(feats.flatten(2).transpose(1, 2), out["x_norm_patchtokens"])
        assert out["x_storage_tokens"].shape == (B, R, 16)


def test_rope_tables_match_the_official_ones():
    io = np.load(FIXTURES / "dinov3_tiny_reg4_io.npz")
    sin, cos = RopeEmbedding(head_dim=8, base=100.0)(80 // 16, 128 // 16)
    assert _err(sin, io["case1_rope_sin"]) <= 1e-6 and _err(cos, io["case1_rope_cos"]) <= 1e-6


def test_rope_rotation_runs_in_float32_for_low_precision_inputs():
    torch.manual_seed(0)
    sin, cos = RopeEmbedding(head_dim=8, base=100.0)(3, 5)
    x = torch.randn(2, 2, 1 + 15, 8)
    ref = rope_rotate(x, sin, cos)
    low = rope_rotate(x.bfloat16(), sin, cos)
    assert low.dtype == torch.bfloat16 and torch.equal(low[:, :, :1], x[:, :, :1].bfloat16())  # cls: not rotated
    assert torch.equal(low, rope_rotate(x.bfloat16().float(), sin, cos).bfloat16())  # rotated in fp32, rounded once


def test_low_precision_models_keep_rope_in_float32():
    bb = build_backbone("dinov3", seed=0, **TINY)
    low = build_backbone("dinov3", seed=0, dtype=torch.bfloat16, **TINY)
    assert low.model.rope_embed.periods.dtype == torch.float32 and low.model.cls_token.dtype == torch.bfloat16
    assert torch.equal(low.model.rope_embed.periods, bb.model.rope_embed.periods)
    assert tiny("dinov3_tiny_reg4").model.rope_embed.periods.dtype == torch.float32  # read from a float16 file
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref, out = bb(x), low(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.float().flatten(), dim=0) > 0.999


def test_transformers_in_memory_layout_and_fp16_files_load_the_same(tmp_path, images):
    """transformers >= 5 names blocks `model.layer.N` in memory (the Hub files: `layer.N`)."""
    sd = load_file(FIXTURES / "dinov3_tiny_reg4_hf.safetensors")
    assert next(iter(sd.values())).dtype == torch.float16 and "layer.0.attention.q_proj.weight" in sd
    renamed = {("model." + k if k.startswith("layer.") else k): v.float() for k, v in sd.items()}
    a, b = tiny("dinov3_tiny_reg4_hf"), build_backbone("dinov3", renamed, **TINY, **VARIANTS["dinov3_tiny_reg4"])
    assert b.model.patch_embed.proj.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(a(images[1]), b(images[1]))


def test_full_size_key_layouts_of_s16_and_l16():
    for arch, cfg in (("dinov3_vits16", VITS16), ("dinov3_vitl16", VITL16)):
        ref = json.loads((FIXTURES / f"{arch}_keys.json").read_text())
        with torch.device("meta"):
            model = DINOv3ViT(cfg)
        assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == list(ref["keys"].items())
        assert sum(p.numel() for p in model.parameters()) == ref["params"]
        assert get_spec(arch).config == cfg


def test_every_registry_row_has_the_official_layout():
    """Key names, shapes and order of all six released ViTs (sha256 of the layout) and their
    parameter counts, against the official hub factories built on the meta device."""
    ref = json.loads((FIXTURES / "dinov3_layouts.json").read_text())
    rows = {n: s for n, s in BACKBONES.items() if s.arch == "dinov3"}
    assert list(rows) == list(ref)
    for name, spec in rows.items():
        with torch.device("meta"):
            model = DINOv3ViT(spec.config)
        text = "".join(f"{k}:{tuple(v.shape)}\n" for k, v in model.state_dict().items())
        assert hashlib.sha256(text.encode()).hexdigest() == ref[name]["sha256"], name
        assert sum(p.numel() for p in model.parameters()) == ref[name]["params"], name
        assert (spec.embed_dim, spec.patch_size, spec.mean) == (spec.config.embed_dim, 16, (0.485, 0.456, 0.406))
        assert spec.url.endswith(".pth") and spec.licence and spec.hf_repo.startswith("facebook/dinov3-vit")
    assert ref["dinov3_vit7b16"]["params"] == 6_716_043_264  # the README's 6,716M
    assert VIT7B16.ffn_hidden == 8192 and get_spec("dinov3_vith16plus").config.ffn_hidden == 5120


def test_random_init_exercises_attention_and_rope():
    bb = build_backbone("dinov3", seed=3, **TINY)
    again = build_backbone("dinov3", seed=3, **TINY)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        out = bb(x)
        assert torch.equal(out, again(x)) and torch.allclose(out[1:], bb(x[1:]), atol=1e-5)  # seeded, per image
        bb.model.rope_embed.periods.mul_(2)  # RoPE must matter for a random backbone (export tests rely on it)
        assert (bb(x) - out).abs().max() > 1e-2
    assert bb.model.blocks[0].attn.qkv.bias_mask.tolist() == [1.0] * 16 + [0.0] * 16 + [1.0] * 16


def test_local_cls_norm_follows_the_file(tmp_path):
    """7B/16 and the SAT L/16 carry an unused local-crop cls norm; HF files drop it."""
    sd = load_file(FIXTURES / "dinov3_tiny_7b.safetensors")
    assert any(k.startswith("local_cls_norm.") for k in sd)
    with_norm = tiny("dinov3_tiny_7b")
    without = build_backbone("dinov3", {k: v for k, v in sd.items() if not k.startswith("local_cls_norm.")},
                             **TINY, **VARIANTS["dinov3_tiny_7b"])
    assert hasattr(with_norm.model, "local_cls_norm") and not hasattr(without.model, "local_cls_norm")
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(with_norm(x), without(x))


def test_one_line_errors(tmp_path):
    reg4 = FIXTURES / "dinov3_tiny_reg4.safetensors"
    with pytest.raises(CheckpointError, match=r"is a DINOv2 checkpoint but backbone 'dinov3_vits16' is DINOv3; use dinov2_vits14"):
        create_backbone("dinov3_vits16", weights=str(FIXTURES / "dinov2_tiny.safetensors"))
    dinov2_hf = tmp_path / "dinov2_hf.safetensors"  # transformers' Dinov2Model layout
    save_file(official_to_hf(load_file(FIXTURES / "dinov2_tiny.safetensors")), dinov2_hf)
    with pytest.raises(CheckpointError, match=r"is a DINOv2 checkpoint but backbone 'dinov3_vitb16' is DINOv3"):
        create_backbone("dinov3_vitb16", weights=str(dinov2_hf))
    for src in (reg4, FIXTURES / "dinov3_tiny_reg4_hf.safetensors"):
        with pytest.raises(CheckpointError, match=r"is a DINOv3 checkpoint but backbone 'dinov2_vits14' is DINOv2; use dinov3_vits16"):
            create_backbone("dinov2_vits14", weights=str(src))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(reg4.read_bytes()[:20000])
    pth = tmp_path / "cut.pth"
    torch.save(load_file(reg4), pth)
    pth.write_bytes(pth.read_bytes()[:20000])
    for path in (truncated, pth):
        with pytest.raises(CheckpointError, match="cannot read checkpoint .*cut.* damaged.*truncated"):
            create_backbone("dinov3_vits16", weights=str(path))
    unknown = tmp_path / "unknown.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, unknown)
    with pytest.raises(CheckpointError, match="does not fit backbone 'dinov3_vits16'.*missing keys"):
        create_backbone("dinov3_vits16", weights=str(unknown))
    hf = load_file(FIXTURES / "dinov3_tiny_reg4_hf.safetensors")
    with pytest.raises(CheckpointError, match="unexpected key 'layer.0.attention.rotary.weight' in a Hugging Face DINOv3"):
        build_backbone("dinov3", {**hf, "layer.0.attention.rotary.weight": torch.zeros(1)}, **TINY)
    with pytest.raises(CheckpointError, match="layer 1 has attention weights for .'k', 'q'. only"):
        build_backbone("dinov3", {k: v for k, v in hf.items() if k != "layer.1.attention.v_proj.weight"}, **TINY)
    with pytest.raises(CheckpointError, match="does not fit backbone 'dinov3_tiny_reg4'.*shape mismatches"):
        tiny("dinov3_tiny_reg4", mlp_ratio=2)


def test_size_and_config_errors():
    from loftup.pipeline import backbone_input

    bb = build_backbone("dinov3", seed=0, **TINY)
    with pytest.raises(InputError, match="image 40x12 px is smaller than one 16x16 backbone patch"):
        backbone_input(torch.zeros(1, 3, 12, 40), bb.patch_size)
    with pytest.raises(InputError, match="backbone input size 8 is smaller than one patch .16 px"):
        backbone_input(torch.zeros(1, 3, 64, 64), bb.patch_size, input_size=8)
    assert backbone_input(torch.zeros(1, 3, 50, 77), bb.patch_size).shape[-2:] == (48, 64)  # rounded down
    with torch.no_grad():
        assert bb(torch.zeros(1, 3, 16, 400)).shape == (1, 16, 1, 25)
    with pytest.raises(InputError, match=r"\(100, 224\) is not a positive multiple of the patch size 16"):
        bb(torch.zeros(1, 3, 100, 224))
    with pytest.raises(ConfigError, match="multiple of 4 x num_heads"):
        build_backbone("dinov3", embed_dim=24, depth=1, num_heads=4)
    with pytest.raises(ConfigError, match="unknown dinov3 config key 'n_storage_tokens'"):
        build_backbone("dinov3", n_storage_tokens=4)
    assert DINOv3Config().ffn_hidden == 1536 and get_spec("dinov3_vits16plus").config.ffn_hidden == 1536


class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_error(403, "Forbidden")

    def log_message(self, *args):
        pass


def test_a_refused_download_says_the_weights_are_licence_gated(monkeypatch, tmp_path):
    import dataclasses

    import loftup.backbones.registry as registry

    server = http.server.HTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
        monkeypatch.setitem(registry.BACKBONES, "dinov3_vits16", dataclasses.replace(get_spec("dinov3_vits16"), url=url))
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        with pytest.raises(CheckpointError) as exc:
            create_backbone("dinov3_vits16", weights="online")
    finally:
        server.shutdown()
    line = str(exc.value)
    assert "\n" not in line and "licence-gated" in line and "HTTP 403" in line
    assert "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/" in line and "weights=<path>" in line
    assert not list(tmp_path.rglob("*.pth"))  # nothing half-written in the cache


def teardown_module():
    if MAX_ERR:
        print("\nmax abs error vs the official DINOv3 / transformers fixtures:")
        for (name, case), err in MAX_ERR.items():
            print(f"  {name:22s} {case:32s} {err:.2e}")
