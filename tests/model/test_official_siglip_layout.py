"""The official `loftup_siglip` / `loftup_siglip2` hub upsamplers (C=768, lr_size 14) load, and fit
our SigLIP backbones (fixtures/official/loftup_dinov2s_keys.json, entry C768)."""

from __future__ import annotations

import json

import torch

from loftup.backbones import get_spec
from loftup.model import LoftUp, LoftUpConfig, infer_config, load_checkpoint


def _official_768(official_dir) -> tuple[dict[str, torch.Tensor], dict]:
    """A state dict with exactly the keys, shapes and dtypes of the hub's C=768 upsamplers."""
    ref = json.loads((official_dir / "loftup_dinov2s_keys.json").read_text())["C768"]
    assert "loftup_siglip / loftup_siglip2" in ref["hub_entries"] and "lr_size=14" in ref["constructor"]
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, info in ref["state_dict"].items():
        dtype = getattr(torch, info["dtype"])
        if dtype == torch.int64:
            sd[key] = torch.zeros(info["shape"], dtype=dtype)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(info["shape"], generator=g) + 0.5
        else:
            sd[key] = torch.randn(info["shape"], generator=g) * 0.02
    return sd, ref


def test_loftup_siglip_layout_loads_and_fits_the_siglip_backbones(official_dir, tmp_path):
    sd, ref = _official_768(official_dir)
    cfg = infer_config(sd)
    assert (cfg.feat_dim, cfg.token_dim, cfg.lr_pe, cfg.num_blocks) == (768, 788, "sine", 2)
    path = tmp_path / "pytorch_model.bin"  # the hub file name; a plain torch.save state dict
    torch.save(sd, path)
    for name in ("siglip_vitb16", "siglip2_vitb16"):
        model = load_checkpoint(path, feat_dim=get_spec(name).embed_dim)
        assert model.cfg.feat_dim == 768
        assert sum(p.numel() for p in model.parameters()) == ref["num_parameters_total"] == 15_051_286
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in sd.items())


def test_lr_size_14_is_inert_with_the_sine_encoding():
    """hubconf passes lr_size=14 for these entries; with lr_pe "sine" it changes neither keys nor
    outputs (FACTS.md 3.2), so the default lr_pe_size reproduces the official model."""
    torch.manual_seed(0)
    a = LoftUp(LoftUpConfig(feat_dim=24, lr_pe_size=14)).eval()
    b = LoftUp(LoftUpConfig(feat_dim=24, lr_pe_size=16)).eval()
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    lr, img = torch.randn(1, 24, 3, 5), torch.randn(1, 3, 30, 44)
    with torch.no_grad():
        assert torch.equal(a(lr, img), b(lr, img))
