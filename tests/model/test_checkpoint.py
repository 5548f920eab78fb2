"""Checkpoint formats: official .bin, safetensors, Lightning, upsampler-only, ours; bad files."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from loftup.errors import CheckpointError
from loftup.model import LoftUp, LoftUpConfig, infer_config, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def official_sd(official_dir):
    return load_file(official_dir / "loftup_tiny.safetensors")


@pytest.fixture(scope="module")
def reference_out(official_sd):
    model = LoftUp(LoftUpConfig(feat_dim=32)).eval()
    model.load_state_dict(official_sd)
    g = torch.Generator().manual_seed(1)
    lr, img = torch.randn(1, 32, 4, 6, generator=g), torch.randn(1, 3, 20, 26, generator=g)
    with torch.no_grad():
        return lr, img, model(lr, img)


def same_output(model, reference_out):
    lr, img, ref = reference_out
    with torch.no_grad():
        return (model(lr, img) - ref).abs().max().item() < 1e-5


def test_official_bin_loads_with_weights_only(tmp_path, official_sd, reference_out):
    path = tmp_path / "pytorch_model.bin"
    torch.save(official_sd, path)
    model = load_checkpoint(path)
    assert model.cfg.feat_dim == 32 and model.cfg.lr_pe == "sine" and model.cfg.num_blocks == 2
    assert not model.training
    assert same_output(model, reference_out)


def test_official_safetensors_and_hub_folder(tmp_path, official_dir, official_sd, reference_out):
    assert same_output(load_checkpoint(official_dir / "loftup_tiny.safetensors"), reference_out)
    (tmp_path / "hub").mkdir()
    torch.save(official_sd, tmp_path / "hub" / "pytorch_model.bin")
    assert same_output(load_checkpoint(tmp_path / "hub"), reference_out)


def test_lightning_checkpoint(tmp_path, official_sd, reference_out):
    sd = {}
    for k, v in official_sd.items():
        sd[k.replace("channelnorm.norm.", "model.1.norm.")] = v
    sd["model.0.backbone_weight"] = torch.zeros(3)  # the frozen backbone, dropped on load
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    assert same_output(load_checkpoint(path), reference_out)


def test_upsampler_only_upload_warns_and_uses_identity_norm(tmp_path, official_sd):
    sd = {k[len("upsampler."):]: v for k, v in official_sd.items() if k.startswith("upsampler.")}
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    with pytest.warns(UserWarning, match="channel-norm"):
        model = load_checkpoint(path)
    assert torch.equal(model.channelnorm.norm.weight, torch.ones(32))


def test_our_format_round_trips_config_and_meta(tmp_path, official_sd, reference_out):
    model = LoftUp(LoftUpConfig(feat_dim=32, backbone="dinov2_vits14"))
    model.load_state_dict(official_sd)
    path = save_checkpoint(model, tmp_path / "run" / "upsampler", meta={"step": 7})
    assert path.name == "upsampler.safetensors"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["config"]["backbone"] == "dinov2_vits14" and sidecar["meta"]["step"] == 7
    loaded = load_checkpoint(path, attn_backend="reference")
    assert loaded.cfg.backbone == "dinov2_vits14" and loaded.cfg.attn_backend == "reference"
    assert loaded.meta["step"] == 7 and "loftup_version" in loaded.meta
    assert same_output(loaded, reference_out)
    assert not list(path.parent.glob("*.tmp"))


def test_ablation_config_survives_round_trip(tmp_path):
    model = LoftUp(LoftUpConfig(feat_dim=16, lr_pe="rope", num_blocks=1))
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "m.safetensors"))
    assert loaded.cfg.lr_pe == "rope" and loaded.cfg.num_blocks == 1


def test_infer_config_for_full_size_layouts():
    for C in (384, 512, 768):
        sd = LoftUp(LoftUpConfig(feat_dim=C)).state_dict()
        cfg = infer_config(sd)
        assert (cfg.feat_dim, cfg.token_dim, cfg.head_dim) == (C, C + 20, (C + 20) // 4)
    learn = LoftUp(LoftUpConfig(feat_dim=16, lr_pe="learnable", lr_pe_size=8)).state_dict()
    assert "upsampler.lr_pe" in learn
    assert infer_config(learn).lr_pe == "learnable" and infer_config(learn).lr_pe_size == 8


def test_channel_mismatch_with_backbone(official_dir):
    with pytest.raises(CheckpointError, match="32-channel features but the backbone gives 384"):
        load_checkpoint(official_dir / "loftup_tiny.safetensors", feat_dim=384)


def test_truncated_and_corrupt_files(tmp_path, official_dir):
    data = (official_dir / "loftup_tiny.safetensors").read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(trunc)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


class PickledThing:
    """An arbitrary class: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(2), "obj": PickledThing()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_wrong_keys_and_shapes(tmp_path, official_sd):
    sd = dict(official_sd)
    sd["upsampler.ca_transformer.norm.weight"] = torch.ones(7)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(path)
    save_file({"foo": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a LoftUp checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
