"""CLIP text tower (ours) vs open_clip's TextTransformer, and loading both towers from one checkpoint."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loftup.backbones.clip import CLIPVisionConfig
from loftup.backbones.clip_text import (
    CLIPTextConfig,
    CLIPTextTower,
    clip_state_dict,
    load_clip,
    random_clip,
    text_config_from_state_dict,
)
from loftup.errors import CheckpointError, InputError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "clip_tokenizer" / "clip_text_tiny.safetensors"
TINY_VISION = CLIPVisionConfig(width=64, layers=2, heads=1, patch_size=8, input_resolution=32, output_dim=32)
TINY_TEXT = CLIPTextConfig(vocab_size=49408, context_length=77, width=64, layers=2, heads=1, output_dim=32)


def test_text_tower_matches_open_clip():
    sd = load_file(FIXTURE)
    tokens, expected = sd.pop("ref_tokens"), sd.pop("ref_output")
    cfg = text_config_from_state_dict(sd)
    assert cfg == CLIPTextConfig(vocab_size=512, context_length=77, width=64, layers=2, heads=1, output_dim=32)
    tower = CLIPTextTower(cfg)
    tower.load_state_dict(sd, strict=True)
    with torch.no_grad():
        out = tower(tokens)
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)
    with torch.no_grad():  # the causal mask: tokens after the end marker change nothing
        changed = tokens.clone()
        changed[0, 10:] = 7
        torch.testing.assert_close(tower(changed)[0], out[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(tower(tokens[:1, :5])[0], out[0], atol=1e-5, rtol=1e-5)  # nor does cutting them off


def test_both_towers_round_trip_through_a_file(tmp_path):
    model = random_clip(TINY_VISION, TINY_TEXT, seed=3)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip_state_dict(model).items()}, path)
    loaded = load_clip(path)
    assert loaded.visual.cfg == TINY_VISION and loaded.text.cfg == TINY_TEXT
    assert loaded.logit_scale == pytest.approx(model.logit_scale)
    tokens = torch.tensor([[49406, 320, 1125, 49407] + [0] * 73])
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.text(tokens), model.text(tokens))
        torch.testing.assert_close(loaded.visual(image), model.visual(image))


def test_checkpoint_without_text_tower_is_a_one_line_error(tmp_path):
    model = random_clip(TINY_VISION, TINY_TEXT)
    vis_only = {k: v.contiguous() for k, v in clip_state_dict(model).items() if k.startswith("visual.")}
    path = tmp_path / "visual_only.safetensors"
    save_file(vis_only, path)
    with pytest.raises(CheckpointError) as err:
        load_clip(path)
    msg = str(err.value)
    assert "has no CLIP text tower" in msg and "ViT-B-16.pt" in msg and "\n" not in msg


def test_too_many_tokens():
    tower = CLIPTextTower(CLIPTextConfig(vocab_size=16, context_length=4, width=64, layers=1, heads=1, output_dim=8))
    tower.init_weights(torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="context"):
        tower(torch.ones(1, 5, dtype=torch.long))
