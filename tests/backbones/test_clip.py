"""CLIP ViT visual tower with MaskCLIP patch output against the official fixture (FACTS.md 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from loftup.backbones import CLIP_TINY, CLIP_VITB16, CLIPVisionTower, read_state_dict
from loftup.backbones.clip import clip_visual_state_dict
from loftup.errors import InputError

ATOL = 2e-5


@pytest.fixture(scope="module")
def tiny(official_dir) -> CLIPVisionTower:
    model = CLIPVisionTower(CLIP_TINY).eval()
    sd = clip_visual_state_dict(load_file(official_dir / "clip_tiny.safetensors"))
    model.load_state_dict(sd, strict=True)
    return model


@pytest.mark.parametrize("case", range(3))
def test_matches_official_fixture(official_dir, tiny, case):
    io = np.load(official_dir / "clip_tiny_io.npz")
    img = torch.from_numpy(io[f"case{case}_img"])
    ref = torch.from_numpy(io[f"case{case}_patch_feats"])
    with torch.no_grad():
        out = tiny(img)
    assert out.shape == ref.shape == (1, 32, img.shape[2] // 16, img.shape[3] // 16)
    assert (out - ref).abs().max() <= ATOL


def test_key_layout(official_dir):
    ref = json.loads((official_dir / "clip_tiny_keys.json").read_text())["clip_tiny"]
    sd = CLIPVisionTower(CLIP_TINY).state_dict()
    ours = {f"visual.{k}": list(v.shape) for k, v in sd.items()}
    assert list(ours.items()) == list(ref.items())


def test_vitb16_shapes():
    with torch.device("meta"):
        sd = CLIPVisionTower(CLIP_VITB16).state_dict()
    assert sd["positional_embedding"].shape == (197, 768)
    assert sd["proj"].shape == (768, 512)
    assert sd["conv1.weight"].shape == (768, 3, 16, 16)
    assert "conv1.bias" not in sd
    assert "transformer.resblocks.11.mlp.c_proj.weight" in sd
    assert "transformer.resblocks.12.ln_1.weight" not in sd


def test_full_clip_state_dict_keeps_only_the_visual_tower(official_dir):
    sd = load_file(official_dir / "clip_tiny.safetensors")
    full = {**sd, "token_embedding.weight": torch.zeros(3, 4), "logit_scale": torch.zeros(())}
    visual = clip_visual_state_dict(full)
    assert set(visual) == {k[len("visual.") :] for k in sd}
    assert clip_visual_state_dict(visual).keys() == visual.keys()  # already unprefixed


class _OpenAIStyle(nn.Module):
    """Stand-in for OpenAI's TorchScript CLIP archive: a module with a `visual` tower."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.logit_scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.visual(x) * self.logit_scale


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_torchscript_archive_is_read(tmp_path, tiny):
    path = tmp_path / "ViT-tiny.pt"
    with torch.no_grad():  # native 224x224 grid: the trace needs no interpolation
        traced = torch.jit.trace(_OpenAIStyle(tiny), torch.zeros(1, 3, 224, 224))
    traced.save(str(path))
    sd = clip_visual_state_dict(read_state_dict(path))
    ref = tiny.state_dict()
    assert sd.keys() == ref.keys()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_bad_input_size(tiny):
    with pytest.raises(InputError, match="multiple of the patch size 16"):
        tiny(torch.zeros(1, 3, 32, 40))
