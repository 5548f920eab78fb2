"""hubconf.py: the official entry names, each an alias over one registry row, returning the module
`loftup.load` returns - offline (the shipped checkpoint) and online (a local 127.0.0.1 server)."""

import dataclasses
import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch
from local_server import LocalServer, no_proxy  # noqa: F401 (no_proxy is a fixture)

import loftup
from loftup.model import registry

REPO = Path(__file__).resolve().parents[1]
# andrehuang/loftup's hubconf.py (commit 6620d9b, see tests/fixtures/official/FACTS.md) defines these seven
OFFICIAL_ENTRIES = {"loftup_dinov2s", "loftup_dinov2s_reg", "loftup_dinov2b", "loftup_dinov2b_reg", "loftup_clip",
                    "loftup_siglip", "loftup_siglip2"}


def hub_entries() -> set[str]:
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")}


def test_the_entries_are_the_official_names_one_per_registry_row():
    official_rows = {r.name for r in registry.WEIGHTS.values() if r.source == "official"}
    assert hub_entries() == OFFICIAL_ENTRIES == official_rows == set(loftup.api.hub_names())
    backbones = {r.name: r.backbone for r in registry.WEIGHTS.values() if r.source == "official"}
    assert backbones["loftup_dinov2b_reg"] == "dinov2_vitb14_reg" and backbones["loftup_siglip2"] == "siglip2_vitb16"
    from loftup.backbones import list_backbones

    assert set(backbones.values()) <= set(list_backbones())


def test_hub_load_from_a_checkout_is_loftup_load_offline():
    hub = torch.hub.load(str(REPO), "loftup_dinov2s", source="local", upsampler="shipped")
    ref = loftup.load("dinov2_vits14")
    assert type(hub) is type(ref) and hub.weights == ref.weights
    assert hub.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(hub.state_dict().values(), ref.state_dict().values()))
    assert torch.equal(hub("sample:chelsea", size=42), ref("sample:chelsea", size=42))


@pytest.mark.usefixtures("no_proxy")
def test_hub_load_pretrained_downloads_the_official_files(monkeypatch, tmp_path, official_dir):
    """loftup_clip, pointed at a local server serving the tiny official CLIP and LoftUp fixtures (C = 32)."""
    from loftup.backbones import registry as backbones
    from loftup.backbones.clip import CLIP_TINY

    monkeypatch.setenv("LOFTUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    files = {"/clip.pt": (official_dir / "clip_tiny.safetensors").read_bytes(),
             "/haiwen/loftup-clip/resolve/main/pytorch_model.bin": (official_dir / "loftup_tiny.safetensors").read_bytes()}
    with LocalServer(files) as server:
        clip = dataclasses.replace(backbones.BACKBONES["clip_vitb16"], config=CLIP_TINY, embed_dim=32, url=server.url("/clip.pt"),
                                   url_sha256=hashlib.sha256(files["/clip.pt"]).hexdigest())
        monkeypatch.setitem(backbones.BACKBONES, "clip_vitb16", clip)
        up_path = "/haiwen/loftup-clip/resolve/main/pytorch_model.bin"
        monkeypatch.setitem(registry.WEIGHTS, "loftup_clip", dataclasses.replace(registry.WEIGHTS["loftup_clip"], location=server.url(up_path)))
        hub = torch.hub.load(str(REPO), "loftup_clip", source="local", pretrained=True)
        assert dict(server.requests) == {"/clip.pt": 1, up_path: 1}
        again = torch.hub.load(str(REPO), "loftup_clip", source="local")
        assert dict(server.requests) == {"/clip.pt": 1, up_path: 1}  # both files from the caches
        untrained = torch.hub.load(str(REPO), "loftup_clip", source="local", pretrained=False)
    ref = loftup.load("clip_vitb16", upsampler=official_dir / "loftup_tiny.safetensors", weights=str(official_dir / "clip_tiny.safetensors"))
    x = ref.prepare("sample:coffee", size=48)
    assert hub(x).shape == (1, 32, 48, 72)
    assert torch.equal(hub(x), ref(x)) and torch.equal(again(x), ref(x))
    assert "random init" in untrained.weights and not torch.equal(untrained(x), ref(x))
